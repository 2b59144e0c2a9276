"""Runs killed at random moments, then run again (review 26, angle: kills)."""

from __future__ import annotations

from click.testing import CliRunner

from sparsekit import analysis
from sparsekit.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_the_next_analysis_removes_the_temp_files_a_killed_one_left(tmp_path):
    # An analysis SIGKILLed while writing its plot (seconds) or a partial table leaves its temp files in the folder;
    # no later analysis removed them, so each kill left more hidden files beside the results. The next analysis
    # into the folder, once it holds the folder's lock, removes them, and nothing else.
    out = tmp_path / "sens"
    out.mkdir()
    (out / "sensitivity.json").write_text("{}")
    left = [out / ".sensitivity.png.k3x9a0b1.sparsekit.tmp", out / ".sensitivity.partial.json.ab12cd34.sparsekit.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    kept = [out / ".report.md.k3x9a0b1.sparsekit.tmp", out / ".sensitivity.png.draft.tmp"]  # not an analysis's own
    for path in kept:
        path.write_text("mine")
    lock = analysis._FolderLock(out)
    lock.take()
    lock.release()
    assert sorted(p.name for p in out.iterdir()) == sorted(["sensitivity.json", *(p.name for p in kept)])


def test_an_analysis_killed_between_writing_its_files_and_its_manifest_can_be_rerun(tmp_path, monkeypatch):
    # A SIGKILL after the finished files (or a probe's partial table) replaced the earlier ones but before the manifest
    # recorded them left files whose hashes the manifest did not know: --overwrite and --resume then refused the
    # folder as holding files "sparsekit sensitivity did not write", and only deleting them by hand went on.
    import torch

    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    model_path = tmp_path / "mlp.pt"
    kwargs = {"in_features": 64, "hidden": [16]}
    sparsekit.save_model(mlp(**kwargs), model_path, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: digits}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    out = tmp_path / "sens"
    args = ["sensitivity", model_path, recipe, "--arch", "examples.models:mlp", "-o", out, "--max-batches", "1"]
    note = analysis._note_written

    def killed(folder, names, dropped=()):
        if "sensitivity.json" in names:  # the files are in place, their manifest entries not yet
            raise KeyboardInterrupt
        note(folder, names, dropped)

    monkeypatch.setattr(analysis, "_note_written", killed)
    killed_run = run(*args, "--no-progress")
    assert killed_run.exit_code == 130, killed_run.stderr
    monkeypatch.setattr(analysis, "_note_written", note)
    again = run(*args, "--overwrite", "--no-progress")
    assert again.exit_code == 0, again.stderr
    assert sorted(analysis._manifest(out)) == ["sensitivity.json", "sensitivity.md", "sensitivity.png"]
