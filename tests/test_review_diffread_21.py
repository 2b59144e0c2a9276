"""Review of this session's changes, read as a diff (faults found reading the code, each with its test)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.data import FLOAT_INPUTS_FIX, _unpack
from sparsekit.errors import DataError, ExportError, RecipeError
from sparsekit.onnx.files import load_onnx


def _error(recipe: dict) -> str:
    with pytest.raises(RecipeError) as err:
        sparsekit.load_recipe({"version": 1, **recipe})
    return str(err.value)


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        # Not fractions: "write it as the fraction 0.5" offered a value refused as well (or meaning other than meant).
        ({"finetune": {"epochs": "50%"}}, "finetune.epochs"),
        ({"data": {"batch_size": "10%"}}, "data.batch_size"),
        ({"pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": {"end_epoch": "50%"}}]}, "end_epoch"),
    ],
)
def test_a_percentage_in_a_field_that_is_no_fraction_is_not_offered_as_one(recipe, field):
    message = _error(recipe)
    assert field in message
    assert "write it as the fraction" not in message
    assert "a percentage, which this field does not take" in message


@pytest.mark.parametrize(
    ("entry", "offered"),
    [
        # The bounds are the field's own: ratio's exclude 0, max_layer_sparsity's include 1.
        ({"method": "structured", "ratio": "0%"}, None),
        ({"method": "magnitude", "sparsity": "0%"}, "0"),
        ({"method": "magnitude", "sparsity": 0.9, "max_layer_sparsity": "100%"}, "1"),
        ({"method": "magnitude", "sparsity": 0.9, "schedule": {"end_epoch": 2, "init_sparsity": "10%"}}, "0.1"),
    ],
)
def test_a_percentage_is_offered_as_a_fraction_only_within_the_fields_range(entry, offered):
    message = _error({"pruning": [entry], "finetune": {"epochs": 3}})
    if offered is None:
        assert "write it as the fraction" not in message and "out of range" in message
    else:
        assert f"write it as the fraction {offered} " in f"{message} "


@pytest.mark.parametrize(
    ("recipe", "fraction"),
    [
        ({"finetune": {"optimizer": {"name": "sgd", "momentum": "90%"}}}, "0.9"),
        ({"finetune": {"epochs": 1, "distill": {"weight": "100%"}}}, "1"),
        ({"benchmark": {"precision": "2%"}}, "0.02"),
    ],
)
def test_other_fields_holding_a_fraction_still_offer_it(recipe, fraction):
    assert f"a percentage; write it as the fraction {fraction}" in _error(recipe)


def test_a_pruner_is_copied_by_copy_copy_as_before_pickling_was_refused():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    recipe = sparsekit.load_recipe({"version": 1, "pruning": [{"method": "magnitude", "sparsity": 0.5}]})
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
    shallow = copy.copy(pruner)  # was TypeError: "a sparsekit.Pruner cannot be pickled"
    assert shallow is not pruner and shallow.model is pruner.model and shallow.methods is pruner.methods
    assert copy.deepcopy(pruner).model is not pruner.model
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(pruner)


def test_an_onnx_file_that_is_a_git_lfs_pointer_is_named_as_one(tmp_path):
    # The ONNX reader had its own copy of the model reader's text check, without its Git LFS case: a pointer left
    # by a clone without git-lfs was told to "give the .onnx file an export wrote".
    path = tmp_path / "model.onnx"
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    with pytest.raises(ExportError) as err:
        load_onnx(path)
    assert "Git LFS pointer" in str(err.value) and "git lfs pull" in str(err.value)
    assert "an export wrote" not in str(err.value)


def test_a_callables_integer_inputs_are_told_the_scale_as_an_npz_and_finetune_tell_it():
    # The callable's check said only "convert them with x.float()", which keeps raw pixels at 0..255: the fault an
    # .npz's integer x and finetune's loader are now told about (/ 255), in the same words.
    batch = (torch.randint(0, 256, (4, 8), dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError) as err:
        _unpack(batch, "data.source 'mod:loaders': the train loader")
    assert "torch.uint8" in str(err.value) and "/ 255" in str(err.value)
    assert FLOAT_INPUTS_FIX in str(err.value)


def test_a_layer_replaced_after_a_resume_is_refused_on_the_resumed_runs_first_steps():
    # The check ran on steps 1 to 8 of the global count: a resumed run (step 11 on) that fused or replaced a layer
    # after load_state_dict trained it dense until the epoch's end, unchecked.
    recipe = {
        "version": 1,
        "finetune": {"epochs": 2},
        "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
    }

    def mlp() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def train(model: nn.Module, pruner: sparsekit.Pruner, steps: int) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
            optimizer.step()
            pruner.step()

    model = mlp()
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=100)
    train(model, pruner, steps=10)
    state, weights = pruner.state_dict(), model.state_dict()
    again = mlp()
    resumed = sparsekit.Pruner(again, recipe, steps_per_epoch=100)
    resumed.load_state_dict(state)
    again.load_state_dict(weights)
    again[2] = nn.Linear(32, 4)  # e.g. a new head, after the resume
    with pytest.raises(sparsekit.TargetError, match="prunes layer '2', but the model now holds another module"):
        train(again, resumed, steps=1)
