"""Own review, session 11: what a killed writer leaves is cleaned up without touching what the user had."""

from __future__ import annotations

import os
import time

import pytest
from torch import nn

import sparsekit
from sparsekit.outputs import RunFolder


def _age(path, seconds=3600):
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_an_export_killed_before_its_staging_mark_leaves_nothing_the_next_export_keeps(tmp_path):
    # SIGKILL between mkdtemp and writing the mark left `.m.onnx.XXXXXXXX.tmp/` empty and unmarked: no later export
    # removed it. An empty private one goes now; a user's of the same shape holding a file stays.
    killed = tmp_path / ".m.onnx.k1lled00.tmp"
    killed.mkdir(mode=0o700)
    _age(killed)
    mine = tmp_path / ".m.onnx.backup01.tmp"
    mine.mkdir(mode=0o700)
    (mine / "notes.txt").write_text("precious")
    _age(mine)
    shared = tmp_path / ".m.onnx.shared00.tmp"  # empty, but made under the usual umask: not mkdtemp's
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    _age(shared)
    sparsekit.export_onnx(nn.Sequential(nn.Linear(4, 3)), tmp_path / "m.onnx", input_shape=(1, 4))
    assert (tmp_path / "m.onnx").is_file()
    assert not killed.exists()
    assert (mine / "notes.txt").read_text() == "precious"
    assert shared.is_dir()


def _finished_run(out):
    done = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    (done.begin() / "model.onnx").write_bytes(b"onnx")
    done.publish()
    done.unlock()
    return out


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
def test_a_run_folder_with_an_empty_unmarked_staging_folder_is_not_refused(tmp_path, resume):
    # `.model.onnx.XXXXXXXX.tmp/`, empty and 0700, is what an export killed before its mark leaves beside the run's
    # model.onnx: --overwrite and --resume refused the folder as holding a file no run wrote.
    out = _finished_run(tmp_path / "out")
    killed = out / ".model.onnx.k1lled00.tmp"
    killed.mkdir(mode=0o700)
    run = RunFolder.prepare(out, inputs=[], overwrite=not resume, resume=resume)
    run.begin()
    run.unlock()
    assert not killed.exists()
    assert run.removed_temps == [".model.onnx.k1lled00.tmp"]


def test_a_users_private_folder_that_gains_a_file_is_never_removed_by_the_empty_folder_rule(tmp_path):
    # The empty-folder rule removes with rmdir: a folder holding anything is the user's and stays, reported.
    out = _finished_run(tmp_path / "out")
    mine = out / ".model.onnx.mybackup.tmp"
    mine.mkdir(mode=0o700)
    (mine / "x").write_text("mine")
    with pytest.raises(sparsekit.errors.OutputError, match=r"\.model\.onnx\.mybackup\.tmp"):
        RunFolder.prepare(out, inputs=[], overwrite=True, resume=False).begin()
    assert (mine / "x").read_text() == "mine"
