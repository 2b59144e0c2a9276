"""validate's note on a model factory set with --set on its command line: prune given the same --set runs it
(code named on the command line is confirmed, as prune --help says); the note said it would run only once confirmed
with --arch, --trust-code or sparsekit trust (found by review 21's contract angle)."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from examples.models import mlp
from sparsekit.cli import main

RECIPE = "finetune: {epochs: 1, max_steps_per_epoch: 2}\npruning: [{method: magnitude, sparsity: 0.5}]\n"
SET = ["--set", "model.factory=examples.models:mlp", "--set", "model.input_shape=[1,64]", "--set", "data.source=digits"]


def test_validate_says_prune_runs_a_factory_given_with_set_and_prune_does(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    checked = CliRunner().invoke(main, ["validate", str(recipe), *SET])
    assert checked.exit_code == 0, checked.output + checked.stderr
    assert (
        "set with --set here" in checked.output and "prune given the same --set imports and calls it" in checked.output
    )
    assert "only once you confirm it" not in checked.output
    weights = tmp_path / "w.pt"
    torch.save(mlp().state_dict(), weights)
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["prune", str(weights), str(recipe), *SET, "-o", str(out), "--no-progress",
                                    "--set", "benchmark.runs=5"])  # fmt: skip
    assert run.exit_code == 0, run.output + run.stderr
    assert (out / "model.pt").is_file()
