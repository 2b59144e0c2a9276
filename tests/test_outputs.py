"""No run loses the user's files: the output folder's manifest, staging and swap, the -o guards, disk
errors, and export's refusal to replace files sparsekit did not write."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, InterruptOnEvaluate, assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import OutputError
from sparsekit.fsutil import TEMP_SUFFIX, atomic_path
from sparsekit.outputs import RunFolder

MLP = ("--arch", "examples.models:mlp")
RECIPE = (
    "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\n"
    "finetune: {epochs: 2, max_steps_per_epoch: 3, optimizer: {name: adam, lr: 0.001}}\n"
    "pruning: [{method: magnitude, sparsity: 0.6, schedule: {start_epoch: 0, end_epoch: 1},"
    " layers: {exclude: [fc3]}}]\n"
    "benchmark: {enabled: false}\n"
)


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder (hidden ones too) -> SHA-256 of its content."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def results(folder: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(folder).items() if not k.startswith(".sparsekit/")}


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path


def test_a_run_publishes_its_files_and_a_manifest_of_them(tmp_path, mlp_checkpoint, recipe):
    out = tmp_path / "out"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    manifest = json.loads((out / ".sparsekit" / "manifest.json").read_text())
    listed = manifest["files"]
    assert set(listed) == set(results(out))
    assert {"model.pt", "model.onnx", "dense.onnx", "report.json", "report.md", "checkpoints/last.pt"} <= set(listed)
    for rel, info in listed.items():
        assert info["sha256"] == hashlib.sha256((out / rel).read_bytes()).hexdigest()
    assert not (out / ".sparsekit" / "next").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # Paths in the report name the published files, not the staging folder.
    assert ".sparsekit" not in (out / "report.json").read_text()


def test_overwrite_refuses_a_folder_with_files_sparsekit_did_not_write(tmp_path, mlp_checkpoint, recipe):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_text("my own model")
    (out / "report.md").write_text("my notes")
    before = snapshot(out)
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST), str(out), "model.pt")
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", *FAST), "no sparsekit run")
    assert snapshot(out) == before


def test_overwrite_of_a_run_refuses_added_or_changed_files(tmp_path, mlp_checkpoint, recipe):
    out = tmp_path / "out"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST), "notes.txt")
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", *FAST), "notes.txt")
    (out / "notes.txt").unlink()
    (out / "report.md").write_text("edited by the user")  # a file sparsekit wrote, changed since
    assert_bad_input(
        run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST), "report.md", "changed"
    )
    (out / "report.md").unlink()
    (out / "sub").mkdir()
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST), "sub")
    (out / "sub").rmdir()
    (out / "model.onnx").unlink()
    (out / "model.onnx").symlink_to(mlp_checkpoint)  # a link where a result was: never followed or replaced
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST), "model.onnx")
    (out / "model.onnx").unlink()
    assert before["model.pt"] == snapshot(out)["model.pt"]
    # Only sparsekit's own files left (some deleted by the user): --overwrite replaces them.
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST).exit_code == 0
    assert (out / "report.md").is_file() and (out / "model.onnx").is_file()


@pytest.mark.parametrize("where", ["model-folder", "recipe-folder", "is-model"])
def test_output_may_not_hold_the_inputs(tmp_path, mlp_checkpoint, recipe, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    target = {"model-folder": mlp_checkpoint.parent, "recipe-folder": recipe.parent, "is-model": mlp_checkpoint}[where]
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", target, *flags, *FAST), "input")
        assert_bad_input(run("prune", mlp_checkpoint.name, *MLP, recipe.name, "-o", ".", *flags, *FAST), "input")
    assert snapshot(tmp_path) == before


def test_output_may_not_be_root_or_home(tmp_path, mlp_checkpoint, recipe, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", "/", "--overwrite", *FAST), "root folder")
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", home, "--overwrite", *FAST), "home folder")
    assert list(home.iterdir()) == []


def test_current_folder_with_other_files_is_refused(tmp_path, mlp_checkpoint, recipe, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("1,2")
    monkeypatch.chdir(work)
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", ".", "--overwrite", *FAST), "data.csv")
    assert snapshot(work) == {"data.csv": hashlib.sha256(b"1,2").hexdigest()}


def test_interrupted_or_failed_overwrite_leaves_the_previous_results(tmp_path, mlp_checkpoint, recipe, monkeypatch):
    import sparsekit.pipeline as pipeline_mod

    out = tmp_path / "out"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    first = snapshot(out)
    interrupt = InterruptOnEvaluate(monkeypatch, 3)  # Ctrl-C after the first epoch
    changed = ("--set", "pruning.0.sparsity=0.7")
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *changed, *FAST).exit_code == 130
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".sparsekit/next/")} == first

    # A failure late in the run (export) leaves them too.
    interrupt.restore()

    def broken_zeros(*a, **k):
        raise sparsekit.ExportError("simulated export failure")

    monkeypatch.setattr(pipeline_mod, "check_zeros", broken_zeros, raising=False)
    import sparsekit.onnx.export as export_mod

    monkeypatch.setattr(export_mod, "check_zeros", broken_zeros)
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", *changed, *FAST), "simulated")
    assert results(out) == {k: v for k, v in first.items() if not k.startswith(".sparsekit/")}
    monkeypatch.undo()
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv("SPARSEKIT_CONFIG_DIR", str(tmp_path / "cfg"))

    # --resume finishes the interrupted run and only then replaces the results.
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", *changed, *FAST)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["pruning"][0]["sparsity"] == 0.7
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert results(out)["model.pt"] != first["model.pt"]
    assert not (out / ".sparsekit" / "next").exists()


def test_a_link_inside_the_sparsekit_folder_is_refused_and_its_target_untouched(tmp_path, mlp_checkpoint, recipe):
    """Found by review: a link at .sparsekit/old made --overwrite move the earlier results into its target
    (replacing the user's report.md there) and the target's other files into DIR; links inside .sparsekit/next
    made --resume write last.pt and append metric rows through them. sparsekit writes no links: any is refused."""
    out = tmp_path / "out"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "report.md").write_text("my own report")
    (victim / "notes.txt").write_text("notes")
    (victim / "steps.csv").write_text("step,precious\n1,mine\n")
    before_victim, before_out = snapshot(victim), snapshot(out)
    meta = out / ".sparsekit"
    for link, target, args in (
        (meta / "old", victim, ("--overwrite",)),
        (meta / "next" / "checkpoints", victim, ("--resume",)),
        (meta / "next" / "logs" / "steps.csv", victim / "steps.csv", ("--resume", "--set", "finetune.log=true")),
    ):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        rel = link.relative_to(out).as_posix()
        assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *args, *FAST), rel)
        assert snapshot(victim) == before_victim
        link.unlink()
        assert results(out) == {k: v for k, v in before_out.items() if not k.startswith(".sparsekit/")}
    (meta / "old").write_text("not a folder")  # old/ is only ever a folder of ours
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST), ".sparsekit/old")
    (meta / "old").unlink()
    shutil.rmtree(meta / "next", ignore_errors=True)
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST).exit_code == 0
    assert snapshot(victim) == before_victim


def test_resume_of_a_finished_run_republishes(tmp_path, mlp_checkpoint, recipe):
    out = tmp_path / "out"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", *FAST)
    assert result.exit_code == 0, result.stderr
    assert set(json.loads((out / ".sparsekit" / "manifest.json").read_text())["files"]) == set(results(out))


def test_report_rerender_only_in_a_run_folder(tmp_path, mlp_checkpoint, recipe):
    out = tmp_path / "out"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    assert run("report", out).exit_code == 0
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST).exit_code == 0  # still ours
    (out / "report.md").write_text("my edits")
    assert_bad_input(run("report", out), "report.md")
    assert (out / "report.md").read_text() == "my edits"


# --- disks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_disk_errors_name_the_path(tmp_path, monkeypatch, code):
    import sparsekit.modelio as modelio

    def failing_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(code, os.strerror(code))

    target = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1)}, target)  # a checkpoint: save_model refuses to replace a file that is none
    previous = target.read_bytes()
    monkeypatch.setattr(modelio.torch, "save", failing_save)
    with pytest.raises(OutputError, match=str(target)):
        sparsekit.save_model(torch.nn.Linear(2, 2), target, "examples.models:mlp")
    assert target.read_bytes() == previous  # the old file, never half a new one
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_torch_writer_without_errno_on_a_full_disk(tmp_path, monkeypatch):
    import sparsekit.fsutil as fsutil

    monkeypatch.setattr(fsutil, "_free_bytes", lambda folder: 1024)
    with pytest.raises(OutputError, match="no space left"), atomic_path(tmp_path / "x.bin"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(fsutil, "_free_bytes", lambda folder: 10 << 30)
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin"):
        raise RuntimeError("a bug, not the disk")


@pytest.fixture
def small_disk(tmp_path):
    """A 600 kB tmpfs (Linux, root only): a real full disk."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_prune_onto_a_full_disk_is_bad_input(tmp_path, small_disk, mlp_checkpoint, recipe):
    from examples.models import lenet_300_100

    # LeNet-300-100 (1 MB of weights) cannot fit: some write fails with ENOSPC.
    big = sparsekit.save_model(lenet_300_100(), tmp_path / "lenet.pt", "examples.models:lenet_300_100",
                               input_shape=[1, 784])  # fmt: skip
    out = small_disk / "out"
    result = run("prune", big, "lenet-gradual-magnitude-90", "--arch", "examples.models:lenet_300_100", "-o", out,
                 "--set", "finetune.epochs=1", "--set", "pruning.0.schedule=oneshot", *FAST)  # fmt: skip
    assert_bad_input(result, "no space left on device", str(small_disk))
    # Nothing half-written where a finished file belongs: the run failed before any checkpoint, so the
    # folder it created is gone again.
    assert not out.exists()


def test_read_only_filesystem_is_bad_input(tmp_path, small_disk, mlp_checkpoint, recipe):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", small_disk / "out", *FAST), "read-only")
    assert_bad_input(run("export", mlp_checkpoint, *MLP, "-o", small_disk / "m.onnx", "--exporter", "torchscript"),
              "read-only")  # fmt: skip


# --- export's own outputs ------------------------------------------------------------------------


def test_export_never_replaces_a_file_it_did_not_write(tmp_path, mlp_checkpoint):
    theirs = tmp_path / "theirs.onnx"
    theirs.write_text("not mine")
    assert_bad_input(run("export", mlp_checkpoint, *MLP, "-o", theirs), str(theirs), "did not write")
    assert theirs.read_text() == "not mine"
    # The input itself as -o: refused before anything is read (not an .onnx name), the model kept.
    assert_bad_input(run("export", mlp_checkpoint, *MLP, "-o", mlp_checkpoint), "name the output file NAME.onnx")
    assert torch.load(mlp_checkpoint, weights_only=True)["format"] == "sparsekit/1"
    fp32_theirs = tmp_path / "m.fp32.onnx"
    fp32_theirs.write_text("mine too")
    assert_bad_input(
        run("export", mlp_checkpoint, *MLP, "-o", tmp_path / "m.onnx", "--quantize", "int8", "--keep-fp32"),
        "m.fp32.onnx",
    )
    assert not (tmp_path / "m.onnx").exists() and fp32_theirs.read_text() == "mine too"
    # A file sparsekit wrote is replaced on request ...
    ours = tmp_path / "ours.onnx"
    for _ in range(2):
        result = run("export", mlp_checkpoint, *MLP, "-o", ours, "--exporter", "torchscript")
        assert result.exit_code == 0, result.stderr
    # ... but not once the user edited it (the mark survives an onnx edit; its hash does not).
    import onnx

    edited = onnx.load(str(ours))
    edited.doc_string = "my notes"
    onnx.save(edited, str(ours))
    before = ours.read_bytes()
    assert_bad_input(run("export", mlp_checkpoint, *MLP, "-o", ours, "--exporter", "torchscript"), "changed since")
    assert ours.read_bytes() == before
    # Nor a user's file where the external data of a large model would go (a model file over half the 1.8 GB limit:
    # its weights may be float16 in the file, float32 in the model) ...
    (tmp_path / "big.onnx.data").write_text("user data")
    import sparsekit.onnx.files as onnx_files

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 2 * mlp_checkpoint.stat().st_size - 2)
        assert_bad_input(run("export", mlp_checkpoint, *MLP, "-o", tmp_path / "big.onnx"), "big.onnx.data")
    assert not (tmp_path / "big.onnx").exists()
    # ... while a smaller model's export, which never writes one, leaves a file of that name alone.
    result = run("export", mlp_checkpoint, *MLP, "-o", tmp_path / "big.onnx", "--exporter", "torchscript")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.onnx.data").read_text() == "user data"


def test_run_folder_guard_is_read_only(tmp_path):
    out = tmp_path / "o"
    RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    assert not out.exists()
    with pytest.raises(OutputError, match="no run to resume"):
        RunFolder.prepare(out, inputs=[], overwrite=False, resume=True)


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, mlp_checkpoint, recipe):
    out = tmp_path / "out"
    (out / ".sparsekit").mkdir(parents=True)
    lock = out / ".sparsekit" / "lock"
    import socket

    sleeper = subprocess.Popen(["sleep", "60"])  # a live process standing in for the first run
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "time": time.time()}))
        for flags in ([], ["--overwrite"], ["--resume"]):
            assert_bad_input(
                run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *flags, *FAST), f"pid {sleeper.pid}", "another"
            )
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [".sparsekit", ".sparsekit/lock"]
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its process is gone: the lock is stale and taken over; a finished run leaves no lock behind.
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", *FAST)
    assert result.exit_code == 0, result.stderr
    assert not lock.exists() and (out / "model.pt").is_file()


def test_a_failed_swap_puts_the_previous_results_back(tmp_path, mlp_checkpoint, recipe, monkeypatch):
    import sparsekit.outputs as outputs_mod

    out = tmp_path / "out"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    first = results(out)
    real_replace = os.replace
    failed = []

    def replace(src, dst, *a, **k):
        if Path(dst) == out / "report.md" and not failed:  # an I/O error halfway through the swap
            failed.append(dst)
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(outputs_mod.os, "replace", replace)
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--overwrite", "--set", "seed=3", *FAST)
    assert_bad_input(result, "report.md")
    assert results(out) == first
    assert not (out / ".sparsekit" / "lock").exists()
    monkeypatch.undo()
    # The finished run is still staged: --resume publishes it.
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", "--set", "seed=3", *FAST)
    assert result.exit_code == 0, result.stderr
    assert results(out)["model.pt"] != first["model.pt"]


def test_a_run_that_finished_meanwhile_is_not_replaced_without_overwrite(tmp_path):
    """Both runs pass the read-only check of an empty folder; the one that starts writing second
    checks again under the lock and finds the first one's results."""
    out = tmp_path / "out"
    first = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    second = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    (first.begin() / "report.json").write_text("{}")
    first.publish()
    first.unlock()
    with pytest.raises(OutputError, match="earlier sparsekit run"):
        second.begin()
    assert (out / "report.json").read_text() == "{}" and not (out / ".sparsekit" / "lock").exists()


def test_export_keeps_a_users_data_file_beside_its_own_output(tmp_path, mlp_checkpoint):
    ours = tmp_path / "own.onnx"
    args = ("export", mlp_checkpoint, *MLP, "-o", ours, "--exporter", "torchscript")
    assert run(*args).exit_code == 0
    (tmp_path / "own.onnx.data").write_text("user data")  # not named by own.onnx: not sparsekit's
    # A model this small writes no external data: its export replaces its own file and leaves the user's alone (a
    # model near the 1.8 GB limit is refused instead, test_export_never_replaces_a_file_it_did_not_write).
    assert run(*args).exit_code == 0
    assert (tmp_path / "own.onnx.data").read_text() == "user data"


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
def test_a_killed_runs_temp_files_are_removed_by_the_next_run_and_nothing_else(tmp_path, resume):
    out = tmp_path / "out"
    done = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    (done.begin() / "report.json").write_text("{}")  # an earlier run's result, rewritten in place below
    done.publish()
    done.unlock()
    first = RunFolder.prepare(out, inputs=[], overwrite=True, resume=False)
    stage = first.begin()
    (stage / "checkpoints").mkdir()
    (stage / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    # What SIGKILL leaves mid-write: atomic_path's temp files, and a temp folder (ONNX external data).

    stale = [
        Path(tempfile.mkstemp(prefix=".model.onnx.", suffix=TEMP_SUFFIX, dir=stage)[1]),
        Path(tempfile.mkstemp(prefix=".last.pt.", suffix=TEMP_SUFFIX, dir=stage / "checkpoints")[1]),
        Path(tempfile.mkdtemp(prefix=".model.onnx.", suffix=TEMP_SUFFIX, dir=stage)),
        Path(tempfile.mkstemp(prefix=".report.json.", suffix=TEMP_SUFFIX, dir=out)[1]),  # killed mid-rewrite
    ]
    first.unlock()  # the process died: its lock is stale (here: released)
    mine = [stage / ".notes.tmp", stage / "scratch.tmp"]  # not sparsekit's pattern: left alone
    for path in mine:
        path.write_text("user")
    again = RunFolder.prepare(out, inputs=[], overwrite=not resume, resume=resume)
    new_stage = again.begin()
    again.unlock()
    assert sorted(again.removed_temps) == sorted(p.relative_to(out).as_posix() for p in stale)
    assert not any(p.exists() for p in stale)
    if resume:  # the interrupted run's own files stay for --resume
        assert (new_stage / "checkpoints" / "last.pt").read_bytes() == b"ckpt"
        assert all(p.read_text() == "user" for p in mine)


def test_a_run_into_a_folder_inside_a_busy_run_folder_is_refused(tmp_path):
    # The outer run would publish with the inner run's folder in it, and then refuse it as not its own.
    import socket

    lock = tmp_path / "out" / ".sparsekit" / "lock"
    lock.parent.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process standing in for the outer run
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "time": time.time()}))
        inner = RunFolder.prepare(tmp_path / "out" / "sub" / "inner", inputs=[], overwrite=False, resume=False)
        with pytest.raises(OutputError, match=rf"lies inside {tmp_path / 'out'}, which another sparsekit run"):
            inner.begin()
        assert not (tmp_path / "out" / "sub").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    inner = RunFolder.prepare(tmp_path / "out" / "sub" / "inner", inputs=[], overwrite=False, resume=False)
    inner.begin()  # the outer run is over: nothing holds the folder
    inner.unlock()


def test_racing_takeovers_of_a_stale_lock_leave_one_holder(tmp_path):
    # Four processes find the same stale lock at once. Taking it over is read, judge, remove, create; without the
    # flock around it, one could remove another's fresh lock and both go on. Judging is slowed down here so the
    # processes overlap there for certain.
    import socket
    import sys

    out = tmp_path / "out"
    (out / ".sparsekit").mkdir(parents=True)
    (out / ".sparsekit" / "lock").write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname(), "time": 0}))
    script = f"""
import sys, time
from pathlib import Path
import sparsekit.outputs as outputs
from sparsekit.errors import OutputError
judge = outputs._live_holder
def slow(path):
    time.sleep(0.3)
    return judge(path)
outputs._live_holder = slow
f = outputs.RunFolder(Path({str(out)!r}))
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
try:
    f.lock()
except OutputError:
    print("refused")
else:
    print("held", flush=True)
    time.sleep(6)  # holds it until every other process has tried
"""
    start = time.time() + 10
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outcomes = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outcomes) == ["held", "refused", "refused", "refused"]


def test_a_lock_whose_pid_now_belongs_to_a_later_process_is_stale(tmp_path):
    # The run that wrote the lock was killed and its pid reused by a process started after the lock was written.
    import socket

    lock = tmp_path / "out" / ".sparsekit" / "lock"
    lock.parent.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "time": time.time() - 3600}))
        folder = RunFolder.prepare(tmp_path / "out", inputs=[], overwrite=True, resume=False)
        folder.begin()  # taken over, not "another sparsekit run (pid N)"
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        folder.unlock()
    finally:
        sleeper.kill()
        sleeper.wait()


def _finished_run(out: Path, checkpointed: bool) -> Path:
    """A folder holding a finished run's report.json (and its last checkpoint, so that it can be resumed)."""
    done = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    (done.begin() / "report.json").write_text("{}")
    if checkpointed:
        (done.stage / "checkpoints").mkdir()
        (done.stage / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    done.publish()
    done.unlock()
    return out


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
def test_a_users_file_named_like_a_temp_file_is_never_removed(tmp_path, resume):
    # ".NAME.XXXXXXXX.tmp" is the shape of sparsekit's temp files; beside no file of a run's, it is the user's.
    out = _finished_run(tmp_path / "out", resume)
    notes = out / ".thesis.20261130.tmp"
    notes.write_text("my notes")
    with pytest.raises(OutputError, match=r"holds \.thesis\.20261130\.tmp, which no sparsekit run into"):
        RunFolder.prepare(out, inputs=[], overwrite=not resume, resume=resume).begin()
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
def test_a_users_file_named_like_a_temp_of_a_run_file_is_never_removed(tmp_path, resume):
    # Beside report.json, which the manifest lists, ".report.json.XXXXXXXX.sparsekit.tmp" has the shape of a killed
    # rewrite of it. One that tempfile made (private, 0600) is sparsekit's and goes; one with the user's usual mode
    # stays, and so does a private one of tempfile's plain shape (a user's under umask 077: it was deleted).
    out = _finished_run(tmp_path / "out", resume)
    ours = Path(tempfile.mkstemp(prefix=".report.json.", suffix=TEMP_SUFFIX, dir=out)[1])
    drafts = ((out / ".report.json.draft_v2.sparsekit.tmp", 0o644), (out / ".report.json.draft001.tmp", 0o600))
    for theirs, mode in drafts:
        theirs.write_text("my draft")
        theirs.chmod(mode)
        with pytest.raises(OutputError, match=rf"holds {re.escape(theirs.name)}, which no sparsekit run into"):
            RunFolder.prepare(out, inputs=[], overwrite=not resume, resume=resume).begin()
        assert theirs.read_text() == "my draft"
        theirs.unlink()
    again = RunFolder.prepare(out, inputs=[], overwrite=not resume, resume=resume)
    again.begin()
    again.unlock()
    assert again.removed_temps == [ours.name] and not ours.exists()


# --- a run that fails on bad input leaves the folder as it found it --------------------------------

FAILING_DATA = """
import torch
from torch.utils.data import DataLoader, Dataset


class Samples(Dataset):
    def __init__(self, fail_on_pass, passes):
        self.fail_on_pass, self.passes = fail_on_pass, passes

    def __len__(self):
        return 128

    def __getitem__(self, i):
        if i == 0:
            self.passes["n"] += 1
        if self.fail_on_pass and self.passes["n"] >= self.fail_on_pass and i == 70:
            raise RuntimeError("sample 70 is broken")
        return torch.randn(64), i % 10


def first_epoch():
    return DataLoader(Samples(1, {"n": 0}), batch_size=32), DataLoader(Samples(0, {"n": 0}), batch_size=32)


def second_epoch():
    # pass 1: the loader check (one batch); pass 2: epoch 1 (checkpointed); pass 3: epoch 2 fails
    return DataLoader(Samples(3, {"n": 0}), batch_size=32), DataLoader(Samples(0, {"n": 0}), batch_size=32)
"""


FAILING_RECIPE = (
    "version: 1\nmodel: {input_shape: [1, 64]}\nfinetune: {epochs: 2}\n"
    "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
)


@pytest.mark.parametrize("existing", [False, True])
def test_bad_input_found_before_any_checkpoint_leaves_nothing(tmp_path, mlp_checkpoint, monkeypatch, existing):
    (tmp_path / "sk_failing_data.py").write_text(FAILING_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(FAILING_RECIPE)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    args = ["prune", mlp_checkpoint, *MLP, recipe, "--data", "sk_failing_data:first_epoch", "-o", out, *FAST]
    assert_bad_input(run(*args), "sample 70 is broken")
    # As before the run: no folder, or the user's empty folder still empty; the same command runs again.
    assert (sorted(p.name for p in out.iterdir()) == []) if existing else not out.exists()
    assert_bad_input(run(*args), "sample 70 is broken")  # not "holds an earlier sparsekit run"


def test_bad_input_found_after_a_checkpoint_keeps_it_and_says_so(tmp_path, mlp_checkpoint, monkeypatch):
    (tmp_path / "sk_failing_data.py").write_text(FAILING_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(FAILING_RECIPE)
    out = tmp_path / "out"
    result = run("prune", mlp_checkpoint, *MLP, recipe, "--data", "sk_failing_data:second_epoch", "-o", out, *FAST)
    assert_bad_input(result, "sample 70 is broken", f"last checkpoint is kept in {out}", "--resume", "--overwrite")
    assert torch.load(out / ".sparsekit" / "next" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


def test_a_lock_that_cannot_be_removed_does_not_hide_the_error_that_ended_the_run(tmp_path, monkeypatch, caplog):
    """A folder turned read-only mid-run: the publish fails, and releasing the lock fails too. The run's error
    must be the write that failed, not the lock (unlock raised PermissionError from the finally)."""
    out = tmp_path / "out"
    run = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    (run.begin() / "report.json").write_text("{}")
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name == "lock":
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(OSError, match="the write"):
        try:
            raise OSError("the write that failed")
        finally:
            run.unlock()
    assert "could not remove the run lock" in caplog.text


KILLED_IN_THE_SWAP = """
import os, signal, sys
sys.argv = ["sparsekit", *sys.argv[1:]]
import sparsekit.outputs as outputs
publish, replace, moves = outputs.RunFolder.publish, os.replace, []
def killing(a, b, *args, **kwargs):
    moves.append(1)
    if len(moves) == 6:  # a kill -9 half way through the swap: nothing the process can catch
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(a, b, *args, **kwargs)
def publishing(self):
    outputs.os.replace = killing
    return publish(self)
outputs.RunFolder.publish = publishing
from sparsekit.__main__ import entry
entry()
"""


def test_a_folder_left_half_swapped_by_a_kill_is_refused_by_report_and_finished_by_resume(
    tmp_path, mlp_checkpoint, recipe
):
    # `sparsekit report` re-rendered a folder holding part of the earlier results and part of the new ones.
    import sys

    out = tmp_path / "out"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    args = ["prune", str(mlp_checkpoint), *MLP, str(recipe), "-o", str(out), "--overwrite", *FAST]
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_THE_SWAP, *args], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=600)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert RunFolder(out).swap_unfinished()
    assert_bad_input(run("report", out), "killed while it moved its results in", "--resume")
    resumed = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", *FAST)
    assert resumed.exit_code == 0, resumed.stderr
    assert not RunFolder(out).swap_unfinished()
    assert run("report", out).exit_code == 0


def test_export_never_replaces_a_copy_or_a_moved_file_of_its_own(tmp_path, mlp_checkpoint):
    # The mark said only that sparsekit wrote the bytes: a user's copy of an export (a deliverable) or a copied
    # prune folder's model.onnx was replaced as if it were sparsekit's own file there.
    import shutil

    ours = tmp_path / "ours.onnx"
    export = ("export", mlp_checkpoint, *MLP, "--exporter", "torchscript", "-o")
    assert run(*export, ours).exit_code == 0
    copied, moved = tmp_path / "deliverable.onnx", tmp_path / "sub" / "ours.onnx"
    shutil.copy(ours, copied)
    moved.parent.mkdir()
    shutil.copy(ours, moved)
    for theirs in (copied, moved):
        before = theirs.read_bytes()
        assert_bad_input(run(*export, theirs), str(theirs), "a copy or a moved file is yours")
        assert theirs.read_bytes() == before
    int8 = tmp_path / "q.onnx"  # staged twice over (export, then quantization): still marked where it goes
    for _ in range(2):
        result = run(*export, int8, "--quantize", "int8", "--keep-fp32")
        assert result.exit_code == 0, result.output
    assert run(*export, ours).exit_code == 0  # its own file, where it wrote it: replaced on request
