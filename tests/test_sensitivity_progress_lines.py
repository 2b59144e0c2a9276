"""``sparsekit sensitivity`` without a terminal (a log file, a pipe, a batch job) prints a line per layer as it
goes, as fine-tuning prints one per epoch; before, nothing showed until the analysis ended."""

import re

from click.testing import CliRunner

from sparsekit.cli import main

RECIPE = (
    "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
    "pruning: [{method: magnitude, sparsity: auto, target: 0.8, layers: [fc1, fc2]}]\n"
)


def test_a_line_per_layer_when_stderr_is_no_terminal(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    args = ["sensitivity", str(mlp_checkpoint), str(recipe), "--arch", "examples.models:mlp", "-o", str(tmp_path / "s")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = re.findall(r"^sensitivity: (\w+) probed \((\d+)/(\d+) probes", res.stderr, re.MULTILINE)
    assert [layer for layer, _, _ in lines] == ["fc1", "fc2"], res.stderr
    done = [int(d) for _, d, _ in lines]
    total = int(lines[-1][2])
    assert done[-1] == total and 0 < done[0] < total  # each layer's line counts the probes done by then

    quiet = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "q"), "--no-progress"])
    assert quiet.exit_code == 0, quiet.output
    assert "probed (" not in quiet.stderr
