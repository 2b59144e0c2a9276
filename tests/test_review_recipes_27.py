"""Review 27, angle "recipes": hand-written recipes at their limits, and `validate RECIPE` agreeing with `prune`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import RecipeError

HEAD = "version: 1\nfinetune: {epochs: 1}\npruning:\n"


def _validate(tmp_path, text: str, *options: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return CliRunner().invoke(main, ["validate", str(path), *options])


@pytest.mark.parametrize(
    ("layers", "needle"),
    [
        ("{include: []}", "layers: include is empty"),
        ("[]", "layers: include is empty"),
        ("{types: []}", "layers: types is empty"),
    ],
)
def test_a_layer_selection_that_is_empty_is_refused_by_validate_of_the_recipe_alone(tmp_path, layers, needle):
    # `layers: {include: []}` (or `types: []`) selects no layer of any model: `validate RECIPE` said "valid"
    # ("the layers matching  ", with no pattern), and prune refused the same recipe once the model was loaded.
    result = _validate(
        tmp_path, HEAD + f"  - {{method: magnitude, sparsity: 0.5, schedule: oneshot, layers: {layers}}}\n"
    )
    assert result.exit_code == 2, result.output
    assert f"pruning[0].{needle}" in result.output, result.output
    assert "Traceback" not in result.output
    # the same for an override, and in Python
    ok = _validate(tmp_path, HEAD + "  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n")
    assert ok.exit_code == 0, ok.output
    over = CliRunner().invoke(main, ["validate", str(tmp_path / "r.yaml"), "--set", "pruning.0.layers.include=[]"])
    assert over.exit_code == 2 and "pruning[0].layers: include is empty" in over.output, over.output
    with pytest.raises(RecipeError, match="include is empty"):
        sparsekit.Recipe(pruning=[{"method": "l1", "strength": 1e-3, "layers": {"include": []}}])


@pytest.mark.parametrize("value", ["1.0e-300", "1.0e-40", "0"])
def test_a_max_norm_bound_so_small_the_weights_vanish_is_refused(tmp_path, value):
    # max_value 1e-300 is 0.0 in float32: every weight of every selected layer became an exact zero (sparsity 1.0,
    # accuracy at chance) from a method validate described as "makes no zeros".
    result = _validate(tmp_path, HEAD + f"  - {{method: max_norm, max_value: {value}}}\n")
    assert result.exit_code == 2, result.output
    assert "pruning[0].max_value: must be >= 0.0001" in result.output, result.output
    assert _validate(tmp_path, HEAD + "  - {method: max_norm, max_value: 0.0001}\n").exit_code == 0


def test_max_norm_at_its_smallest_bound_makes_no_zeros():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    recipe = sparsekit.Recipe(pruning=[{"method": "max_norm", "max_value": 1e-4}])
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    pruner.step()
    for layer in (model[0], model[2]):
        assert bool((layer.weight != 0).all())
        assert float(layer.weight.norm(dim=1).max()) <= 1e-4 * (1 + 1e-5)


@pytest.mark.parametrize(("written", "number"), [("08", 8), ("09", 9), ("'010'", 10)])
def test_a_whole_number_with_a_leading_zero_is_not_told_to_lose_quotes_it_does_not_have(tmp_path, written, number):
    # `epochs: 08` is text to YAML 1.1 (no octal has an 8), so the field refused "the text '08': write it without
    # quotes" of a value written without any.
    result = _validate(tmp_path, f"version: 1\nfinetune: {{epochs: {written}}}\n")
    assert result.exit_code == 2, result.output
    assert "finetune.epochs: must be a number" in result.output
    assert f"write it as {number}, without a leading 0" in result.output, result.output
    assert "without quotes" not in result.output
    # a quoted number with no leading zero keeps its hint
    quoted = _validate(tmp_path, "version: 1\nfinetune: {epochs: '8'}\n")
    assert quoted.exit_code == 2 and "write it without quotes" in quoted.output, quoted.output


def test_an_l1_threshold_above_every_weight_does_not_report_a_layer_kept_alive_that_ended_all_zero():
    # threshold: 100 zeroes every weight; each layer's floor keeps its largest weight, but the next layer's kept
    # weight read a unit removed as dead, so it went too: the report said "kept one unit alive" beside
    # "achieved 1.000" and the note that every weight of the layer is zero.
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    recipe = sparsekit.Recipe(
        model={"input_shape": [1, 64]}, pruning=[{"method": "l1", "strength": 1e-3, "threshold": 100}]
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    pruner.step()
    model = pruner.finalize()
    per_layer = pruner.methods[0].report()["per_layer"]
    layers = dict(model.named_modules())
    assert int((layers["0"].weight != 0).sum()) == 1  # the first layer's floor held
    assert per_layer["0"]["reason"].startswith("kept one unit alive")
    for name in ("2", "4"):
        assert not bool(layers[name].weight.any())
        assert per_layer[name]["achieved"] == 1.0
        assert "kept one unit alive" not in per_layer[name]["reason"]
        assert per_layer[name]["reason"].startswith("every weight is zero"), per_layer[name]["reason"]


@pytest.mark.parametrize(
    ("layers", "needle"),
    [
        ("{exclude: [fc3]}", "which is left out by the layers.exclude pattern 'fc3'"),
        ("['conv*']", "which matches no layers.include pattern ('conv*')"),
    ],
)
def test_a_layer_sparsity_name_its_own_entry_leaves_out_is_refused_by_validate_of_the_recipe_alone(
    tmp_path, layers, needle
):
    # `layer_sparsity: {fc3: 0.5}` beside `layers: {exclude: [fc3]}`: `validate RECIPE` said "valid", and prune
    # refused the recipe once the model was loaded ("'fc3' is not a layer this entry selects").
    entry = (
        f"  - {{method: magnitude, sparsity: 0.5, layer_sparsity: {{fc3: 0.5}}, schedule: oneshot, layers: {layers}}}\n"
    )
    result = _validate(tmp_path, HEAD + entry)
    assert result.exit_code == 2, result.output
    assert "pruning[0]: layer_sparsity names 'fc3', " + needle in result.output, result.output
    # a name the patterns may select stays for the model to decide
    fine = "  - {method: magnitude, sparsity: 0.5, layer_sparsity: {fc3: 0.5}, schedule: oneshot, layers: ['fc*']}\n"
    assert _validate(tmp_path, HEAD + fine).exit_code == 0


def test_a_named_pipe_nothing_writes_to_is_named_as_a_pipe_not_an_empty_recipe(tmp_path):
    # `mkfifo r.yaml` (or a writer not started yet): read without waiting, it was "the recipe is empty; start from a
    # shipped one", about a file that is no recipe file at all.
    import os

    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)
    result = CliRunner().invoke(main, ["validate", str(fifo)])
    assert result.exit_code == 2, result.output
    assert "r.yaml: a pipe with nothing written to it" in result.output, result.output
    assert "the recipe is empty" not in result.output
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    result = CliRunner().invoke(main, ["validate", str(empty)])
    assert result.exit_code == 2 and "empty.yaml: the recipe is empty" in result.output, result.output


def test_a_glob_given_where_a_list_goes_is_told_a_list_yaml_reads_back(tmp_path):
    # `include: "*"` was told "write [*]": YAML reads `[*]` as an alias and refuses it ("expected alphabetic or
    # numeric character"), so the remedy given was itself a broken recipe.
    import yaml

    entry = "  - {method: magnitude, sparsity: 0.5, schedule: oneshot, layers: {include: '*', exclude: 'fc3, 0'}}\n"
    result = _validate(tmp_path, HEAD + entry)
    assert result.exit_code == 2, result.output
    assert "pruning[0].layers.include: must be a list" in result.output
    assert "write ['*']" in result.output and "write [fc3, '0']" in result.output, result.output
    assert yaml.safe_load("['*']") == ["*"] and yaml.safe_load("[fc3, '0']") == ["fc3", "0"]
