"""Runs that hold (review 7): resumes, locks and interruptions in situations the other tests leave out."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import InterruptOnEvaluate, fast_prune

from sparsekit.onnx import files
from sparsekit.outputs import RunFolder

MLP = ("--arch", "examples.models:mlp")
RECIPE = (
    "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\n"
    "finetune: {epochs: 2, max_steps_per_epoch: 3, optimizer: {name: adam, lr: 0.001}}\n"
    "pruning: [{method: magnitude, sparsity: 0.6, schedule: oneshot, layers: {exclude: [fc3]}}]\n"
    "benchmark: {enabled: false}\n"
)


def test_an_overwrite_stopped_before_its_first_epoch_resumes_by_training_over(tmp_path, mlp_checkpoint, monkeypatch):
    # The stopped run says "no epoch was checkpointed: `--resume` starts the training over"; the resume compared
    # with (and would have continued from) the checkpoint of the finished run it was about to replace instead.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert fast_prune(mlp_checkpoint, recipe, out, *MLP).exit_code == 0
    lr = ("--set", "finetune.optimizer.lr=0.01")
    stop = InterruptOnEvaluate(monkeypatch, 1)  # the dense model's evaluation: before training started
    stopped = fast_prune(mlp_checkpoint, recipe, out, *MLP, "--overwrite", *lr)
    assert stopped.exit_code == 130 and "`--resume` starts the training over" in stopped.stderr, stopped.stderr
    stop.restore()
    assert not RunFolder(out).checkpointed()
    resumed = fast_prune(mlp_checkpoint, recipe, out, *MLP, "--resume", *lr)
    assert resumed.exit_code == 0, resumed.stderr
    assert "training starts at epoch 1" in resumed.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["finetune"]["optimizer"]["lr"] == 0.01 and len(report["history"]) == 2


def test_a_ctrl_c_while_an_onnx_staging_folder_is_removed_still_removes_it(tmp_path, monkeypatch):
    # A SIGINT handled by sparsekit (exit 130) left `.model.onnx.XXXXXXXX.tmp/` behind when it arrived as the
    # export's private folder was being removed (seen with a Ctrl-C right after dense.onnx was written).
    real = shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt at its next instruction
        real(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt), files.staging(tmp_path / "model.onnx") as work:
        (work / "model.onnx").write_bytes(b"graph")
    assert list(tmp_path.iterdir()) == []


def _staged_run(out: Path, n: int) -> RunFolder:
    folder = RunFolder.prepare(out, inputs=[], overwrite=n > 0, resume=False)
    stage = folder.begin()
    (stage / "checkpoints").mkdir()
    (stage / "checkpoints" / "last.pt").write_text(f"run {n}")
    (stage / "report.json").write_text(f"run {n}")
    return folder


def test_a_ctrl_c_during_the_swap_leaves_no_staging_folder_behind(tmp_path, monkeypatch):
    # The Ctrl-C held during the swap was raised before the emptied next/ and the earlier results in old/ were
    # removed: the finished run's folder kept both, and a --resume took the empty next/ for an unfinished run that
    # had checkpointed no epoch (training started over instead of skipping to what follows it).
    out = tmp_path / "out"
    first = _staged_run(out, 0)
    first.publish()
    first.unlock()
    second = _staged_run(out, 1)
    real = os.replace

    def replace(src, dst):  # Ctrl-C as the manifest goes in: the swap finishes first
        if Path(dst).name == "manifest.json":
            os.kill(os.getpid(), signal.SIGINT)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    try:
        with pytest.raises(KeyboardInterrupt):
            second.publish()
    finally:
        monkeypatch.setattr(os, "replace", real)
        second.unlock()
    assert (out / "report.json").read_text() == "run 1"
    assert sorted(p.name for p in (out / ".sparsekit").iterdir()) == ["manifest.json"]
    assert RunFolder(out, resume=True).resume_checkpoint() == out / "checkpoints" / "last.pt"


def _finished_run(out: Path) -> None:
    """A finished run in ``out`` with an epoch checkpoint, published as prune publishes one."""
    run = RunFolder(out)
    stage = run.begin()
    (stage / "checkpoints").mkdir()
    (stage / "checkpoints" / "last.pt").write_bytes(b"epoch 1")
    (stage / "report.json").write_text("{}")
    run.publish()
    run.unlock()


def test_a_staging_folder_publish_could_not_remove_is_not_taken_for_a_run_that_checkpointed_nothing(
    tmp_path, monkeypatch
):
    # A kill (or a failed removal: rmtree runs with ignore_errors) after the swap left the emptied next/, which a
    # --resume then took for an unfinished run with no epoch: it ignored the finished run's checkpoint and trained
    # over.
    from sparsekit import outputs

    out = tmp_path / "out"
    real = shutil.rmtree

    def removes_nothing_of_the_stage(path, *args, **kwargs):
        if Path(path).parent.name != ".sparsekit" or Path(path).name == "old":
            real(path, *args, **kwargs)

    monkeypatch.setattr(outputs.shutil, "rmtree", removes_nothing_of_the_stage)
    _finished_run(out)
    monkeypatch.undo()
    ckpt = out / "checkpoints" / "last.pt"
    run = RunFolder(out, resume=True)
    assert not run.stage.exists() and run.resume_checkpoint() == ckpt and run.checkpointed()
    stage = run.begin()  # the leftover goes, the finished run's checkpoint is continued from
    try:
        assert (stage / "checkpoints" / "last.pt").read_bytes() == b"epoch 1"
        assert sorted(p.name for p in run.meta.iterdir()) == ["lock", "manifest.json", "next"]
    finally:
        run.unlock()


def test_a_resume_stopped_while_it_copies_the_finished_checkpoint_still_resumes_from_it(tmp_path, monkeypatch):
    # begin() made next/ and then copied the finished run's checkpoint in: stopped between the two, next/ was left
    # empty, and the next --resume trained over.
    from sparsekit import outputs

    out = tmp_path / "out"
    _finished_run(out)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.shutil, "copyfile", stopped)
    with pytest.raises(KeyboardInterrupt):
        RunFolder(out, resume=True).begin()
    monkeypatch.undo()
    again = RunFolder(out, resume=True)
    assert again.resume_checkpoint() == out / "checkpoints" / "last.pt"
    stage = again.begin()
    try:
        assert (stage / "checkpoints" / "last.pt").read_bytes() == b"epoch 1"
        assert [p.name for p in again.meta.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        again.unlock()
