"""Runs, outputs and files under adverse conditions (review 14): concurrent commands into one folder, refusals
under the lock, and what each leaves behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sparsekit.errors import OutputError
from sparsekit.outputs import RunFolder

SENS_RECIPE = """\
version: 1
seed: 0
data: {source: digits, batch_size: 64}
finetune: {epochs: 1}
pruning:
  - {method: magnitude, sparsity: 0.5, schedule: oneshot, layers: {include: [fc1]}}
"""


def test_a_run_refused_under_its_lock_leaves_no_sparsekit_folder(tmp_path):
    # Two commands started into one new folder: the prune run checked it empty, then found the other's file there
    # once it held the lock, and refused; but its empty .sparsekit stayed, so the folder then refused a sensitivity
    # analysis (and any tool expecting only the user's files) as holding files not its own.
    out = tmp_path / "out"
    folder = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        folder.begin()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_refused_run_into_a_new_folder_removes_the_folder_it_made(tmp_path, monkeypatch):
    out = tmp_path / "new" / "out"
    folder = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)

    def refuse() -> None:
        raise OutputError(f"{out}: refused")

    monkeypatch.setattr(folder, "_check_state", refuse)
    with pytest.raises(OutputError, match="refused"):
        folder.begin()
    assert not out.exists()


def test_prune_and_sensitivity_into_one_folder_exclude_each_other(tmp_path):
    # A prune run and a sensitivity analysis started into one folder both wrote there (each its own lock, which
    # the other never looked at) and then both failed, each on the other's files: no result at all, and a folder
    # neither command would take again. Now each takes the folder's lock: the second one stops at once, naming it.
    from sparsekit.analysis import _FolderLock

    out = tmp_path / "out"
    out.mkdir()
    analysis = _FolderLock(out)
    analysis.take()
    try:
        folder = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
        with pytest.raises(OutputError, match="another sparsekit run"):
            folder.begin()
    finally:
        analysis.release()
    assert list(out.iterdir()) == []

    folder = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    folder.begin()
    try:
        with pytest.raises(
            OutputError, match=r"another sparsekit sensitivity run is writing this folder \(or a prune run"
        ):
            _FolderLock(out).take()
    finally:
        folder.unlock()


def test_sensitivity_rechecks_its_folder_once_it_holds_the_lock(tmp_path, mlp_checkpoint, monkeypatch):
    # The analysis judged its folder before loading the model and data (seconds to minutes); a prune run that
    # finished there meanwhile got the analysis's partial table and manifest written among its results, and a later
    # prune --overwrite of that folder was refused over them. Under the lock the folder is looked at again.
    import sparsekit.analysis as analysis
    from sparsekit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(SENS_RECIPE)
    out = tmp_path / "sens"
    real = analysis._check_writable

    def meanwhile(folder: Path) -> None:
        real(folder)
        folder.mkdir()
        (folder / "model.pt").write_text("another run's result")

    monkeypatch.setattr(analysis, "_check_writable", meanwhile)
    args = ["sensitivity", str(mlp_checkpoint), str(recipe), "-o", str(out), "--arch", "examples.models:mlp"]
    result = CliRunner().invoke(main, [*args, "--max-batches", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "model.pt" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]


def test_a_run_refused_on_bad_data_leaves_no_empty_log_folder(tmp_path, mlp_checkpoint):
    # prune --log-dir L with data whose labels the model cannot take: exit 2, and an empty L/sparsekit-DATE-TIME
    # (and L itself when the run had made it) stayed behind, one more after every corrected attempt.
    import numpy as np
    from conftest import fast_prune

    data = tmp_path / "bad.npz"
    np.savez(data, x=np.zeros((40, 64), dtype="float32"), y=np.full(40, 12))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SENS_RECIPE)
    kept, made = tmp_path / "kept", tmp_path / "made"
    kept.mkdir()
    for logs in (kept, made):
        result = fast_prune(
            mlp_checkpoint, recipe, tmp_path / "out", "--arch", "examples.models:mlp", "--data", str(data),
            "--log-dir", str(logs),
        )  # fmt: skip
        assert result.exit_code == 2, result.output
    assert list(kept.iterdir()) == []
    assert not made.exists()
    assert not (tmp_path / "out").exists()


def test_a_plot_the_disk_cannot_take_is_reported_by_the_worker(tmp_path):
    # The plot worker's write fails as a disk error (here: the output path runs through a file): finish() says so
    # apart from other plot failures, so the run can end as it does when report.md hits a full disk.
    from sparsekit.plots import PlotWorker

    (tmp_path / "notes.txt").write_text("mine")
    with PlotWorker(tmp_path / "notes.txt" / "run") as worker:
        worker.start()
        worker.draw({"layers": [{"name": "fc1", "sparsity": 0.5}], "history": []})
        worker.finish({})
    assert worker.disk_error is not None and "notes.txt" in worker.disk_error, worker.error
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_full_disk_while_drawing_the_plots_fails_the_run(tmp_path, mlp_checkpoint, monkeypatch):
    # On a tmpfs of 120 KiB, prune ended exit 0 with "note  plots not drawn: sparsekit.errors.OutputError: ...
    # no space left on device" in the summary, while the same full disk met at report.md was exit 2 with the
    # checkpoint kept. Now both are exit 2, one Error line, and --resume (once there is room) finishes the run.
    from conftest import assert_bad_input, fast_prune

    import sparsekit.plots as plots

    full = (
        "import sys; sys.path[:] = [p for p in sys.argv[1].split(chr(31)) if p]; "
        "from sparsekit.errors import OutputError; sys.stdin.readline(); "
        "raise OutputError(sys.argv[2] + '/finetune.png: cannot write it: no space left on device')"
    )
    monkeypatch.setattr(plots, "_WORKER", full)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SENS_RECIPE)
    out = tmp_path / "out"
    args = ("--arch", "examples.models:mlp", "--set", "data.source=digits")
    assert_bad_input(fast_prune(mlp_checkpoint, recipe, out, *args), "finetune.png", "no space left on device")
    assert not (out / "model.pt").exists()
    monkeypatch.undo()
    assert fast_prune(mlp_checkpoint, recipe, out, *args, "--resume").exit_code == 0
    assert (out / "finetune.png").is_file()


def test_a_full_disk_at_the_sensitivity_plot_names_the_plot_not_a_temp_file(tmp_path, mlp_checkpoint, monkeypatch):
    # On a 40 KiB tmpfs: "Error: OUT/.sensitivity.png.576z07pz.tmp: cannot write it: no space left on device", a
    # file that was already gone when the user looked.
    import errno

    from conftest import assert_bad_input
    from matplotlib.figure import Figure

    from sparsekit.cli import main

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SENS_RECIPE)
    out = tmp_path / "sens"
    args = ["sensitivity", str(mlp_checkpoint), str(recipe), "-o", str(out), "--arch", "examples.models:mlp"]
    line = assert_bad_input(CliRunner().invoke(main, [*args, "--max-batches", "1", "--no-progress"]), "no space left")
    assert f"{out / 'sensitivity.png'}: cannot write it" in line
    assert ".tmp" not in line
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
