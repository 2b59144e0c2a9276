"""Review (planning): choosing how much to prune — sensitivity, `auto` targets, validate's plan."""

from __future__ import annotations

from click.testing import CliRunner
from conftest import assert_bad_input

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
