"""Contract review 9: what INTERFACE.md and README.md promise about the recipe and the Python API, checked."""

from __future__ import annotations

import pytest
from torch import nn

import sparsekit


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize(
    ("assign", "needle"),
    [
        (lambda r: setattr(r.pruning[0], "sparsity", 1.5), r"pruning\[0\]\.sparsity: must be < 1"),
        (lambda r: setattr(r.pruning[0], "sparsity", float("nan")), r"pruning\[0\]\.sparsity: must be a finite"),
        (lambda r: setattr(r.finetune, "epochs", 1), r"end_epoch \(2\) is after the last fine-tuning epoch"),
    ],
)
def test_a_recipe_changed_in_python_is_checked_again_by_the_pruner(assign, needle):
    # A Recipe is a mutable pydantic model, and pydantic checks no assignment: a sweep's
    # `recipe.pruning[0].sparsity = 1.5` was clamped to what the layers allowed (a TargetMissedWarning at the end),
    # NaN was a ValueError from inside the mask code, and `recipe.finetune.epochs = 1` under a schedule ending at 2
    # was taken, though README says a schedule ending after finetune.epochs is a RecipeError.
    spec = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 2}}
    recipe = sparsekit.load_recipe({"version": 1, "finetune": {"epochs": 2}, "pruning": [spec]})
    sparsekit.Pruner(_mlp(), recipe, steps_per_epoch=2)  # valid as loaded
    assign(recipe)
    with pytest.raises(sparsekit.RecipeError, match=needle) as info:
        sparsekit.Pruner(_mlp(), recipe, steps_per_epoch=2)
    assert "--set" not in str(info.value) and "in the recipe dict" not in str(info.value)


def test_a_trainer_recipe_without_finetune_stays_unbound_by_epochs_when_handed_on():
    # A trainer callback's recipe (no finetune section: the trainer sets the epochs) is checked again without
    # being held to finetune.epochs = 0, and a valid change to it is taken.
    from sparsekit.recipe import as_recipe

    spec = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 2}}
    recipe = as_recipe({"version": 1, "pruning": [spec]}, trainer=True)
    recipe.pruning[0].sparsity = 0.6
    assert as_recipe(recipe) is recipe


def test_setting_an_item_of_a_list_the_recipe_leaves_at_its_default_says_so(tmp_path):
    # INTERFACE §2: --set reaches list items by index. For a list the recipe does not write (benchmark.batch_sizes
    # at its default [1, 32]), item 0 made a mapping {'0': 8}, refused as "must be a list ... (got a mapping)".
    from click.testing import CliRunner
    from conftest import assert_bad_input

    from sparsekit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    for item, whole in [
        ("benchmark.batch_sizes.0=8", "benchmark.batch_sizes=[1, 32]"),
        ("pruning.0.layers.include.0=fc1", 'pruning.0.layers.include=["*"]'),
    ]:
        result = CliRunner().invoke(main, ["validate", str(recipe), "--set", item])
        assert_bad_input(result, item, "is not written in the recipe", whole)
    # a mapping with free keys still takes a digit as a key (a layer of an nn.Sequential is named "0")
    ok = sparsekit.load_recipe(str(recipe), overrides=["pruning.0.layer_sparsity.0=0.3"])
    assert ok.pruning[0].layer_sparsity == {"0": 0.3}


def test_saving_or_exporting_onto_the_current_folder_is_an_output_error(tmp_path, monkeypatch):
    # export_onnx and save_model say a path they cannot write is an OutputError; "." (the rename onto the folder in
    # use fails with EBUSY, not EISDIR as for another folder) was a bare OSError, exit 1 for a program's user.
    from torch import nn

    monkeypatch.chdir(tmp_path)
    model = nn.Linear(8, 3)
    with pytest.raises(sparsekit.OutputError, match=r"^\.: cannot write it: it is a folder; give a file name"):
        sparsekit.save_model(model, ".", factory="examples.models:mlp")
    with pytest.raises(sparsekit.OutputError, match=r"^\.: cannot write it: it is a folder; give a file name"):
        sparsekit.export_onnx(model, ".", input_shape=(1, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("factory", "input_shape", "needle"),
    [
        ("lenet", None, r"save_model\(factory=\.\.\.\): 'lenet' is not of the form pkg\.module:callable"),
        (None, None, r"save_model\(factory=\.\.\.\): None is not of the form"),
        ("examples.models:mlp", (0, 8), r"save_model\(input_shape=\.\.\.\): .*positive integers.*got \(0, 8\)"),
        ("examples.models:mlp", (1.5, 8), r"save_model\(input_shape=\.\.\.\): .*got \(1\.5, 8\)"),
        ("examples.models:mlp", "1,8", r"save_model\(input_shape=\.\.\.\): .*got '1,8'"),
    ],
)
def test_save_model_refuses_what_load_model_would_call_damaged(tmp_path, factory, input_shape, needle):
    # save_model wrote these without a word, and every later command refused the file as damaged ("'lenet' is not
    # of the form pkg.module:callable", "its 'input_shape' [0, 8] is not a list of positive integers"); 1.5 was
    # cut to 1. Nothing is written.
    with pytest.raises(sparsekit.ModelFileError, match=needle):
        sparsekit.save_model(nn.Linear(8, 3), tmp_path / "m.pt", factory=factory, input_shape=input_shape)
    assert list(tmp_path.iterdir()) == []


def test_save_model_takes_a_torch_size_and_numpy_integers_as_the_input_shape(tmp_path):
    import numpy as np
    import torch

    for shape in (torch.zeros(2, 8).shape, (np.int64(2), 8)):
        sparsekit.save_model(nn.Linear(8, 3), tmp_path / "m.pt", factory="examples.models:mlp", input_shape=shape)
        assert torch.load(tmp_path / "m.pt", weights_only=True)["input_shape"] == [2, 8]


def test_a_layer_name_yaml_reads_as_a_number_is_said_to_need_quotes(tmp_path):
    # An nn.Sequential's layers are named "0", "1", ...: `include: [0]` or `ignore: [2]` are numbers to YAML, and the
    # error was pydantic's "Input should be a valid string", not the remedy (quote it) layer_sparsity's keys get.
    from click.testing import CliRunner
    from conftest import assert_bad_input

    from sparsekit.cli import main

    for entry, where in [
        ("{method: magnitude, sparsity: 0.5, layers: {include: [0]}}", "pruning[0].layers.include[0]"),
        ("{method: structured, ratio: 0.5, ignore: [2]}", "pruning[0].ignore[0]"),
    ]:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"version: 1\npruning: [{entry}]\n")
        result = CliRunner().invoke(main, ["validate", str(recipe)])
        assert_bad_input(result, f"{where}: must be text, not a number", "write it in quotes")
    recipe.write_text("version: 1\nfinetune: {device: no}\n")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "finetune.device", "a boolean", "yes/no")
