"""Runs that hold when stopped part way (review 21, angle: kills)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import sparsekit.report as report_module
from sparsekit.cli import main

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


def test_a_report_rerender_stopped_part_way_leaves_the_folder_its_own(finished, monkeypatch):
    # A newer sparsekit words report.md differently; Ctrl-C lands once it is written, before the manifest is.
    render, write = report_module.render_markdown, report_module.write_report
    monkeypatch.setattr(report_module, "render_markdown", lambda rep: render(rep) + "\nnewer wording\n")

    def interrupted(*args, **kwargs):
        write(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "write_report", interrupted)
    result = run("report", finished)
    assert result.exit_code == 130, result.output + result.stderr
    assert "newer wording" in (finished / "report.md").read_text()
    monkeypatch.undo()
    # The half-done re-render's files are sparsekit's own: report again, and a resume, take the folder.
    again = run("report", finished)
    assert again.exit_code == 0, again.output + again.stderr
    assert "newer wording" not in (finished / "report.md").read_text()


def test_a_stop_just_after_the_pending_manifest_is_written_leaves_no_half_swap(tmp_path, monkeypatch):
    # A Ctrl-C landing between writing manifest.next.json and the swap left it behind: the earlier results, not
    # touched, then read as a swap a kill cut short ('sparsekit report' refused the folder).
    from sparsekit import outputs

    out = tmp_path / "out"
    folder = outputs.RunFolder(out)
    (folder.begin() / "report.md").write_text("run 1\n")
    folder.publish()
    folder.unlock()
    again = outputs.RunFolder(out, resume=True)
    (again.begin() / "report.md").write_text("run 2\n")
    write = outputs._write_manifest

    def stopped(path, files):
        write(path, files)
        if path.name == outputs.PENDING:
            raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "_write_manifest", stopped)
    with pytest.raises(KeyboardInterrupt):
        again.publish()
    again.unlock()
    assert not outputs.RunFolder(out).swap_unfinished()
    assert (out / "report.md").read_text() == "run 1\n"
