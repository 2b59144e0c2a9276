"""`prune --resume` names the checkpoint where the user finds it (OUT/checkpoints/last.pt), not the run's staging
copy under OUT/.sparsekit/, which is gone once the run ends (found by reviews 21's kills and contract angles)."""

from __future__ import annotations

from click.testing import CliRunner

from sparsekit.cli import main

MLP = ["--arch", "examples.models:mlp", "--data", "digits", "--no-progress", "--set", "benchmark.runs=5"]
RECIPE = "finetune: {epochs: 1, max_steps_per_epoch: 2}\npruning: [{method: magnitude, sparsity: 0.5}]\n"


def test_resuming_a_finished_run_names_the_published_checkpoint(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["prune", str(mlp_checkpoint), str(recipe), *MLP, "-o", str(out)])
    assert first.exit_code == 0, first.output + first.stderr
    again = CliRunner().invoke(main, ["prune", str(mlp_checkpoint), str(recipe), *MLP, "-o", str(out), "--resume"])
    assert again.exit_code == 0, again.output + again.stderr
    assert f"resuming from {out / 'checkpoints' / 'last.pt'}: 1 of 1 epochs finished" in again.stderr
    assert ".sparsekit" not in again.stderr
