"""`sparsekit report` checks only the files it replaces: a file of the user's beside them is no reason to refuse."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sparsekit.cli import main
from tests.conftest import assert_bad_input

MLP = ["--arch", "examples.models:mlp", "--data", "digits"]
RECIPE = "finetune: {epochs: 1, max_steps_per_epoch: 2}\npruning: [{method: magnitude, sparsity: 0.5}]\n"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def finished(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    result = run("prune", mlp_checkpoint, recipe, *MLP, "-o", out, "--no-progress", "--set", "benchmark.runs=5")
    assert result.exit_code == 0, result.output + result.stderr
    return out


def test_a_users_own_file_beside_the_report_does_not_block_a_rerender(finished):
    (finished / "notes.txt").write_text("my notes")
    (finished / "extra").mkdir()
    (finished / "extra" / "plot.png").write_bytes(b"mine")
    (finished / "report.md").unlink()  # re-rendered afresh
    result = run("report", finished)
    assert result.exit_code == 0, result.output + result.stderr
    assert (finished / "report.md").is_file()
    assert (finished / "notes.txt").read_text() == "my notes"
    assert (finished / "extra" / "plot.png").read_bytes() == b"mine"


@pytest.mark.parametrize("name", ["report.md", "report.json", "finetune.png"])
def test_an_edited_file_that_report_would_replace_is_refused_with_a_remedy_for_report(finished, name):
    path = finished / name
    if name == "report.json":
        doc = json.loads(path.read_text())
        doc["notes"] = [*doc.get("notes", []), "my edit"]
        path.write_text(json.dumps(doc))
    else:
        path.write_bytes(path.read_bytes() + b"\nmy edit")
    before = path.read_bytes()
    line = assert_bad_input(run("report", finished), name)
    assert "move yours away and report again" in line and "choose another output folder" not in line
    assert path.read_bytes() == before


def test_every_plot_file_name_is_listed():
    from sparsekit.plots import FILES, figures

    data = {
        "layers": [{"name": "fc1", "sparsity": 0.5, "params": 10}],
        "history": [{"epoch": 1, "val_accuracy": 0.5, "sparsity": 0.5, "train_loss": 1.0}],
        "latency": {"dense": {"1": 1.0}, "pruned": {"1": 0.9}},
    }
    assert set(figures(data)) <= set(FILES)
