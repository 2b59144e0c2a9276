"""Files sparsekit reads from folders others can write into (a run's manifests, report.json, the trust store)
may be named pipes: reading one waits for a writer forever. Each is refused like any unreadable file."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_read_regular_refuses_a_pipe_and_a_device_without_blocking(tmp_path):
    from sparsekit.fsutil import read_regular

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OSError, match="not a regular file"):
        read_regular(tmp_path / "pipe")
    with pytest.raises(OSError, match="not a regular file"):
        read_regular("/dev/zero")
    (tmp_path / "f").write_bytes(b"abc")
    assert read_regular(tmp_path / "f") == b"abc"
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")


def test_pipes_at_a_runs_manifests_report_and_trust_store_do_not_hang(tmp_path):
    out = tmp_path / "out"
    (out / ".sparsekit").mkdir(parents=True)
    for name in ("manifest.json", "manifest.next.json"):
        os.mkfifo(out / ".sparsekit" / name)
    os.mkfifo(out / "report.json")
    cfg = tmp_path / "cfg"
    cfg.mkdir(mode=0o700)
    os.mkfifo(cfg / "trusted_modules.json")
    # In a child with a time limit: the old reads blocked forever, which would hang the suite itself.
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from sparsekit.errors import SparsekitError
        from sparsekit.outputs import RunFolder
        from sparsekit.report import load_report
        from sparsekit.trust import trusted_locations

        run = RunFolder(Path({str(out)!r}))
        print("owned", run.owned(), "unfinished", run.swap_unfinished())
        print("trusted", trusted_locations())
        try:
            load_report(Path({str(out)!r}) / "report.json")
        except SparsekitError as err:
            print("report", err)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARSEKIT_CONFIG_DIR": str(cfg)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "owned {} unfinished False"  # nothing counts as ours: nothing is replaced
    assert lines[1] == "trusted {}"
    assert lines[2].startswith("report ") and "report.json" in lines[2]
