"""sparsekit's logged warnings on the command line read like its other warnings: one ``Warning: ...`` line.

They printed as ``WARNING sparsekit: ...`` (logging's level and logger names), while README says every
command prints its warnings as ``Warning: ...`` lines on stderr; ``--debug`` keeps the names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _trust(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    store = tmp_path / "trusted_modules.json"
    store.write_text("[1]\n")  # not a mapping: trust.py logs a warning and trusts none
    store.chmod(0o600)
    env = {**os.environ, "SPARSEKIT_CONFIG_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "sparsekit", "trust", *extra]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_logged_warning_is_one_warning_line_on_stderr(tmp_path: Path) -> None:
    done = _trust(tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if "not a mapping of module names" in ln]
    assert len(lines) == 1 and lines[0].startswith("Warning: "), done.stderr
    assert "WARNING" not in done.stderr and "Warning" not in done.stdout


def test_debug_keeps_the_level_and_logger_names(tmp_path: Path) -> None:
    done = _trust(tmp_path, "--debug")
    assert done.returncode == 0, done.stderr
    assert "WARNING sparsekit" in done.stderr and "not a mapping" in done.stderr, done.stderr
