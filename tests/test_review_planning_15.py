"""Review (planning): choosing how much to prune — sensitivity, `auto` targets, validate's plan."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input, fast_prune

from sparsekit.cli import main

MLP = ("--arch", "examples.models:mlp")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_unreachable_target_macs_names_the_recipe_file_and_the_models_fraction(tmp_path, mlp_checkpoint):
    """fc1 (64 -> 64) alone, at most the analysed grid's largest ratio (45 of its 64 channels): the model keeps at
    least 1 - 45/64 * (4096 + 2048) / 6464 = 0.3317 of its MACs. The error said 'the pruned layers would keep 0.297
    of theirs' (fc1 and fc2's MACs only), a number below the target 0.32 it called unreachable, and named no file."""
    recipe = tmp_path / "macs.yaml"
    recipe.write_text(
        "data: {source: digits}\nfinetune: {epochs: 0}\nbenchmark: {enabled: false}\n"
        "pruning: [{method: structured, ratio: auto, target_macs: 0.32, layers: [fc1]}]\n"
    )
    result = run("validate", recipe, mlp_checkpoint, *MLP)
    line = assert_bad_input(result, "pruning[0].target_macs", "cannot be reached")
    assert line.startswith(f"Error: {recipe}: pruning[0].target_macs"), line
    assert "keeps at least 0.332 of its MACs" in line and "raise target_macs to 0.332" in line, line
    # the value suggested is reached
    result = run("validate", recipe, mlp_checkpoint, *MLP, "--set", "pruning.0.target_macs=0.332")
    assert result.exit_code == 0, result.output
    # an override holding the value is named instead of the file
    line = assert_bad_input(run("validate", recipe, mlp_checkpoint, *MLP, "--set", "pruning.0.target_macs=0.1"))
    assert line.startswith("Error: --set pruning.0.target_macs=0.1: pruning[0].target_macs"), line


def test_sensitivity_resume_on_another_setup_names_the_table_and_the_option_to_start_over(tmp_path, mlp_checkpoint):
    """`sensitivity --resume` with another validation split said only 'analyse from scratch': no file, no option."""
    recipe = tmp_path / "sens.yaml"
    recipe.write_text("data: {source: digits}\npruning: [{method: magnitude, sparsity: 0.5, layers: [fc3]}]\n")
    out = tmp_path / "sens"
    assert run("sensitivity", mlp_checkpoint, recipe, *MLP, "-o", out, "--no-progress").exit_code == 0
    before = (out / "sensitivity.json").read_bytes()
    again = run("sensitivity", mlp_checkpoint, recipe, *MLP, "-o", out, "--resume", "--set", "data.val_fraction=0.3")
    line = assert_bad_input(again, "another setup", "validation data differ", "--overwrite")
    assert line.startswith(f"Error: {out / 'sensitivity.json'}: "), line
    assert "analyse from scratch" not in line
    assert (out / "sensitivity.json").read_bytes() == before


@pytest.mark.parametrize(
    "first",
    [
        {"method": "structured", "ratio": "auto", "target_macs": 0.8, "layers": ["fc1"], "round_to": None},
        {"method": "structured", "ratio": 0.25, "layers": ["fc1"], "round_to": None},
    ],
    ids=["auto-then-auto", "fixed-then-auto"],
)
def test_a_later_target_macs_counts_the_channels_earlier_entries_removed(first, one_thread):
    """fc2's inputs are fc1's outputs: an earlier entry removing fc1's channels shrinks fc2's MACs too. The
    allocation counted fc2 at its dense MACs (and a fixed-ratio entry not at all), so the model landed far under
    target_macs (0.38 for 0.5 on a CNN), with a note about 'round_to None' blocks under round_to: null."""
    from torch.utils.data import DataLoader, TensorDataset

    from examples.models import mlp
    from sparsekit.allocation import allocate_with_details, analyze
    from sparsekit.pruner import Pruner
    from sparsekit.recipe import validate_recipe
    from sparsekit.stats import layer_macs

    torch.manual_seed(0)
    model = mlp(in_features=16, hidden=[64, 32], num_classes=4)
    val = DataLoader(TensorDataset(torch.randn(64, 16), torch.randint(0, 4, (64,))), batch_size=64)
    second = {"method": "structured", "ratio": "auto", "target_macs": 0.5, "layers": ["fc2"], "round_to": None}
    recipe = validate_recipe({"model": {"input_shape": [1, 16]}, "finetune": {"epochs": 0}, "pruning": [first, second]})
    table = analyze(model, recipe, val, input_shape=[1, 16])
    allocated, details = allocate_with_details(model, recipe, table, input_shape=[1, 16])
    dense = sum(layer_macs(model, [1, 16]).values())
    pruned = Pruner(copy.deepcopy(model), allocated, steps_per_epoch=1).finalize()
    reached = sum(layer_macs(pruned, [1, 16]).values()) / dense
    # channel by channel: just under the target (one fc2 channel is about 0.02 of the model's MACs)
    assert 0.47 <= reached <= 0.5, reached
    assert details[-1].reached["macs"] == pytest.approx(reached)
    assert details[-1].note is None or "round_to None" not in details[-1].note


def test_validate_says_the_macs_an_auto_entry_reaches_and_prune_reaches_them(tmp_path, mlp_checkpoint):
    """validate's plan of a `ratio: auto, target_macs` entry listed the chosen ratios but not the MACs they reach,
    the one number prune's report then checks against the target."""
    recipe = tmp_path / "macs.yaml"
    recipe.write_text(
        "data: {source: digits}\nfinetune: {epochs: 0}\n"
        "pruning: [{method: structured, ratio: auto, target_macs: 0.6, round_to: null}]\n"
    )
    result = run("validate", recipe, mlp_checkpoint, *MLP)
    assert result.exit_code == 0, result.output
    found = re.search(r"pruning\[0\]: auto -> .*; MACs (0\.\d{3}) of dense \(target_macs 0\.6\)", result.stdout)
    assert found, result.stdout
    pruned = fast_prune(mlp_checkpoint, recipe, tmp_path / "out", *MLP)
    assert pruned.exit_code == 0, pruned.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert f"{report['summary']['macs']['ratio']:.3f}" == found.group(1)


def test_an_auto_target_past_one_weight_per_layer_is_not_blamed_on_max_layer_sparsity(one_thread):
    """fc3 (128 weights) and every other layer keep one weight, so at most 3197 of 3200 can go (0.9991). The
    error said max_layer_sparsity (1) was what stopped 0.9995 and to raise it: no value could."""
    from torch.utils.data import DataLoader, TensorDataset

    from examples.models import mlp
    from sparsekit.allocation import allocate, analyze
    from sparsekit.errors import TargetError
    from sparsekit.recipe import validate_recipe

    torch.manual_seed(0)
    model = mlp(in_features=16, hidden=[64, 32], num_classes=4)
    val = DataLoader(TensorDataset(torch.randn(32, 16), torch.randint(0, 4, (32,))), batch_size=32)

    def recipe(target: float):
        entry = {"method": "magnitude", "sparsity": "auto", "target": target, "max_layer_sparsity": 1}
        return validate_recipe({"finetune": {"epochs": 0}, "pruning": [entry]})

    table = analyze(model, recipe(0.9995), val, input_shape=[1, 16])
    with pytest.raises(TargetError) as err:
        allocate(model, recipe(0.9995), table, input_shape=[1, 16])
    message = str(err.value)
    assert "every layer keeps at least one" in message and "3,197 of 3,200" in message, message
    assert "raise max_layer_sparsity" not in message and "lower target to 0.999 " in message, message
    allocated = allocate(model, recipe(0.999), table, input_shape=[1, 16])  # the value suggested is reached
    layer_sparsity = allocated.pruning[0].layer_sparsity
    assert layer_sparsity is not None and max(layer_sparsity.values()) < 1
