"""A writer killed mid-export (SIGKILL: no clean-up runs) leaves its staging folder ``.NAME.XXXXXXXX.tmp`` beside
the target; the next export to that target removes it, and never a live writer's or anything else."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from sparsekit.cli import main

ROOT = Path(__file__).resolve().parent.parent
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from sparsekit.onnx.files import staging
with staging(Path(sys.argv[1])) as work:
    (work / "model.onnx").write_bytes(b"half an export")
    print(work, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_export(target: Path) -> Path:
    """The staging folder a writer of ``target`` left when it was killed, dated two minutes back."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True, text=True, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = Path(proc.stdout.strip())
    assert left.is_dir() and left.parent == target.parent and (left / "model.onnx").exists()
    old = time.time() - 120
    os.utime(left, (old, old))
    return left


def test_the_next_export_removes_what_a_killed_one_left_and_nothing_else(tmp_path, mlp_checkpoint):
    target = tmp_path / "q.onnx"
    dead = _killed_export(target)
    # Kept: a live writer's folder (locked, however old), a young one not yet locked, a user's folders of other
    # names, and another target's leftover.
    live = tmp_path / ".q.onnx.live0000.sparsekit.tmp"
    young = tmp_path / ".q.onnx.young000.sparsekit.tmp"
    mine = [
        tmp_path / ".q.onnx.sparsekit.tmp",
        tmp_path / ".q.onnx.notes.sparsekit.tmp",
        tmp_path / "q.onnx.abcdefgh.sparsekit.tmp",
        tmp_path / ".q.onnx.abcdefgh.tmp",  # tempfile's shape without sparsekit's suffix: a user's
    ]
    other = _killed_export(tmp_path / "other.onnx")
    for folder in (live, young, *mine):
        folder.mkdir()
        (folder / "keep").write_text("x")
    for folder in (live, *mine):
        os.utime(folder, (time.time() - 120,) * 2)
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        result = CliRunner().invoke(
            main, ["export", str(mlp_checkpoint), "-o", str(target), "--arch", "examples.models:mlp"]
        )
    finally:
        os.close(held)
    assert result.exit_code == 0, result.output
    assert target.is_file() and not dead.exists()
    for folder in (live, young, *mine, other):
        assert folder.is_dir(), folder
    assert sorted(p.name for p in tmp_path.glob(".q.onnx.*.tmp")) == sorted(
        [live.name, young.name, mine[0].name, mine[1].name, mine[3].name]
    )
