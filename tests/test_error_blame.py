"""Errors name what holds the faulty value: the recipe file, the caller's override (--set, --device) that set
the field, or the file together with the overrides an error across fields involves; a model file given where
the recipe goes is named as one."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import _flag, main
from sparsekit.errors import RecipeError, render
from sparsekit.recipe import OptionOverride, load_recipe
from sparsekit.recipe import blame as blame_of

MLP = ("--arch", "examples.models:mlp")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({
        "version": 1,
        "data": {"source": "digits"},
        "finetune": {"epochs": 3, "max_steps_per_epoch": 2},
        "pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": {"include": ["*"]},
                     "schedule": {"start_epoch": 0, "end_epoch": 3, "every": 1}}],
        "benchmark": {"enabled": False},
    }))  # fmt: skip
    return path


def test_a_field_an_override_set_is_blamed_on_the_override_after_the_recipe_was_read(tmp_path, mlp_checkpoint, recipe):
    """Checks against the model run after the recipe was read; they named the file for a value --set gave."""
    line = assert_bad_input(
        run("validate", recipe, mlp_checkpoint, *MLP, "--set", "pruning.0.layers.include=[nomatch]"),
        "--set 'pruning.0.layers.include=[nomatch]': pruning[0].layers.include: 'nomatch' matches no layer",
    )
    assert str(recipe) not in line
    # Without the override the file holds the value and is named.
    (tmp_path / "bad.yaml").write_text(recipe.read_text().replace('["*"]', '["nomatch"]'))
    bad = tmp_path / "bad.yaml"
    assert_bad_input(run("validate", bad, mlp_checkpoint, *MLP), f"{bad}: pruning[0]")


@NO_CUDA
def test_a_missing_device_is_blamed_on_the_option_that_asked_for_it(tmp_path, mlp_checkpoint, recipe):
    out = tmp_path / "o"
    line = assert_bad_input(run("prune", mlp_checkpoint, recipe, *MLP, "-o", out, "--device", "cuda:7"),
                            "--device cuda:7: finetune.device: 'cuda:7'", "--device cpu")  # fmt: skip
    assert "--set" not in line
    assert_bad_input(run("prune", mlp_checkpoint, recipe, *MLP, "-o", out, "--set", "finetune.device=cuda"),
                     "--set finetune.device=cuda: finetune.device")  # fmt: skip
    # validate with MODEL is prune's dry run: it refuses the device prune refuses (it said the recipe was fine).
    result = run("validate", recipe, mlp_checkpoint, *MLP, "--device", "cuda")
    assert_bad_input(result, "--device cuda: finetune.device")
    assert_bad_input(run("validate", recipe, mlp_checkpoint, *MLP, "--set", "finetune.device=cuda:1"), "--set finetune")
    assert run("validate", recipe, mlp_checkpoint, *MLP, "--device", "cpu").exit_code == 0
    assert run("validate", recipe, "--device", "cuda").exit_code == 0  # the recipe alone: may be for another machine
    assert not out.exists()


def test_an_error_across_fields_names_the_file_and_the_override_involved(recipe, mlp_checkpoint):
    # end_epoch 3 is the file's, finetune.epochs 2 the override's: both are named.
    assert_bad_input(run("validate", recipe, "--set", "finetune.epochs=2"),
                     f"{recipe} with --set finetune.epochs=2: pruning[0].schedule.end_epoch")  # fmt: skip
    # The override changed the entry's method, so the file's sparsity no longer fits it.
    assert_bad_input(run("validate", recipe, "--set", "pruning.0.method=structured"),
                     f"{recipe} with --set pruning.0.method=structured: pruning[0].sparsity")  # fmt: skip
    # An override that has nothing to do with the fault is not named.
    line = assert_bad_input(run("validate", recipe, "--set", "finetune.epochs=2", "--set", "seed=3"), str(recipe))
    assert "seed=3" not in line


def test_blame_rules():
    def blame(*args):  # as the command line spells it
        found = blame_of(*args)
        return found if found is None else render(found, _flag)

    over = ["finetune.epochs=2", "pruning.0.method=structured", OptionOverride("finetune.device", "device", "cuda")]
    assert blame("r.yaml", over, "finetune.epochs: must be >= 1") == "--set finetune.epochs=2"
    assert blame("r.yaml", over, "finetune.device: no CUDA") == "--device cuda"
    assert blame("r.yaml", over, "pruning[0].ratio: too large") == "r.yaml with --set pruning.0.method=structured"
    assert blame("r.yaml", over, "pruning[1].sparsity: too large") == "r.yaml"
    assert blame("r.yaml", over, "pruning[1].schedule.end_epoch (4) is after finetune.epochs=2") == (
        "r.yaml with --set finetune.epochs=2"
    )
    assert blame("r.yaml", [], "finetune.lr: bad") == "r.yaml"
    assert blame(None, [], "finetune.lr: bad") is None  # a recipe built in Python: nothing to name
    # A one-word key is named only where it is the field at fault, not wherever the word appears.
    assert blame("r.yaml", ["seed=3"], "pruning[0].schedule: the seed would change it") == "r.yaml"
    # The later of two overrides of one field holds the value.
    assert blame("r.yaml", ["seed=1", "seed=2"], "seed: bad") == "--set seed=2"


@pytest.mark.parametrize("kind", ["torch", "pickle", "safetensors", "onnx"])
def test_a_model_file_where_the_recipe_goes_says_so(tmp_path, mlp_checkpoint, kind):
    import pickle

    import sparsekit
    from examples.models import mlp

    path = tmp_path / f"model.{kind}"
    if kind == "torch":
        path = mlp_checkpoint
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(3)}, str(path))
    else:
        sparsekit.export_onnx(mlp().eval(), path, input_shape=[1, 64])
    needle = "not a recipe; check the order of the arguments"
    assert_bad_input(run("validate", path), f"{path}: ", needle)
    recipe = "sparsekit/recipes/lenet-gradual-magnitude-90.yaml"
    assert_bad_input(run("prune", recipe, path, "-o", tmp_path / "o"), needle)
    with pytest.raises(RecipeError, match="not a recipe"):
        load_recipe(path)


def test_a_data_error_from_a_recipes_source_names_the_recipe(tmp_path, mlp_checkpoint, recipe, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "src.yaml"
    bad.write_text(recipe.read_text().replace('"digits"', '"link.npz"'))
    assert_bad_input(run("validate", bad, mlp_checkpoint, *MLP), f"{bad}: data.source file 'link.npz' not found")
    line = assert_bad_input(run("validate", recipe, mlp_checkpoint, *MLP, "--data", "link.npz"), "--data link.npz")
    assert str(recipe) not in line


def test_an_overridden_source_a_bad_method_and_bracketed_keys_are_named_as_given(recipe, mlp_checkpoint, tmp_path):
    # a data error about a source --set gave named neither the override nor the file
    assert_bad_input(run("validate", recipe, mlp_checkpoint, *MLP, "--set", "data.source=/nonexistent.npz"),
                     "--set data.source=/nonexistent.npz: data.source file '/nonexistent.npz' not found")  # fmt: skip
    # the unknown method is the override's alone, not the file's nor the other override's
    line = assert_bad_input(
        run("validate", recipe, "--set", "pruning.0.method=taylor", "--set", "pruning.0.schedule.every=1"),
        "--set pruning.0.method=taylor: pruning[0]: unknown method 'taylor'",
    )
    assert str(recipe) not in line and "every" not in line
    # keys as errors print them, and errors in an override's key spelled as the option
    assert run("validate", recipe, "--set", "pruning[0].sparsity=0.7").exit_code == 0
    assert_bad_input(run("validate", recipe, "--set", "finetune.epoch=2"), "--set finetune.epoch=2: finetune.epoch")
    # YAML 1.1 reads 010 as octal 8: said nothing and trained 8 epochs
    assert_bad_input(run("validate", recipe, "--set", "finetune.epochs=010"), "YAML reads as an octal number")
    octal = tmp_path / "octal.yaml"
    octal.write_text(recipe.read_text().replace('"epochs": 3', '"epochs": 010'))
    assert_bad_input(run("validate", octal), "010 starts with 0", "write 10")
