"""Runs killed at random moments, then run again (review 26, angle: kills)."""

from __future__ import annotations

import pytest
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


def test_a_resume_drops_the_log_row_a_killed_run_was_writing(tmp_path):
    # steps.csv rows are flushed at each epoch's end, many rows in several writes: a SIGKILL between two writes leaves
    # the last row cut short. A row cut inside its step ("52" -> "5") read as step 5, before the resume step, and
    # stayed in the log for good, a row of one field.
    from sparsekit.metrics_log import MetricsLog

    log = MetricsLog(tmp_path)
    for step in range(1, 7):
        log.step(step, step / 3, 1.0 / step, 0.1)
        if step % 3 == 0:
            log.epoch({"epoch": step // 3, "val_accuracy": 0.5, "sparsity": 0.1}, step, {"a": 0.1}, 5)
    log.close()
    with open(tmp_path / "steps.csv", "a") as fh:
        fh.write("5")  # the start of epoch 3's step 52, say
    with open(tmp_path / "epochs.csv", "a") as fh:
        fh.write("3,5")
    MetricsLog(tmp_path, resume_step=6).close()
    steps = (tmp_path / "steps.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in steps] == ["step", "1", "2", "3", "4", "5", "6"]
    assert all(len(line.split(",")) == 4 for line in steps)
    assert [line.split(",")[:2] for line in (tmp_path / "epochs.csv").read_text().splitlines()[1:]] == [
        ["1", "3"],
        ["2", "6"],
    ]


def test_a_cache_write_removes_the_temp_files_killed_writes_of_it_left(tmp_path):
    # Cache files (parsed datasets, the names of installed packages, the last sensitivity table of a model file) are
    # written to a temp file and renamed; a run killed in between left the temp file in the cache folder for good,
    # one more with every kill. The next write of the same file removes those over an hour old (a live write's is
    # seconds old), and nothing else.
    import os
    import time

    import numpy as np

    from sparsekit import data

    target = tmp_path / "mnist5k-0123456789abcdef.npz"
    old = tmp_path / ".mnist5k-0123456789abcdef.npz.k3x9a0b1.sparsekit.tmp"
    young = tmp_path / ".mnist5k-0123456789abcdef.npz.ab12cd34.sparsekit.tmp"
    other = tmp_path / ".other.npz.k3x9a0b1.sparsekit.tmp"
    for path in (old, young, other):
        path.write_bytes(b"half")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    data._write_cache(target, (np.zeros((2, 3), np.uint8), np.zeros(2, np.uint8)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, young.name, other.name])


def test_a_ctrl_c_after_a_probe_line_leaves_the_interrupted_line_on_its_own(monkeypatch):
    # The per-layer line was print()ed: the text, then its newline, two writes; a Ctrl-C between them left the
    # newline unwritten, and the command's "Interrupted: ..." line went on the end of "sensitivity: fc3 probed (...)".
    import io
    import sys
    from types import SimpleNamespace

    class Stderr(io.StringIO):
        def isatty(self):
            return False

        def write(self, text):
            super().write(text)
            if "probed" in text:
                raise KeyboardInterrupt  # the Ctrl-C lands right after this write

    stream = Stderr()
    monkeypatch.setattr(sys, "stderr", stream)
    bar, advance = analysis._analysis_bar(True)
    table = SimpleNamespace(to_json=lambda: "{}")
    with bar:
        advance(SimpleNamespace(layer="fc1", value=0.3, done=1, total=2, table=table))
        with pytest.raises(KeyboardInterrupt):
            advance(SimpleNamespace(layer="fc2", value=0.3, done=2, total=2, table=table))
    assert stream.getvalue().startswith("sensitivity: fc1 probed (1/2 probes")
    assert stream.getvalue().endswith("\n")
