"""A wheel user's review: the README's commands for an installed wheel, run as a shell runs them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_readme_wheel_extras_command_names_the_wheel_file(tmp_path):
    # pip expands no glob: the shell must turn `sparsekit-*.whl` into the file's name before pip sees it,
    # which a `*` inside quotes never is ('./sparsekit-*.whl[lightning]' failed: "not a valid wheel filename")
    commands = [c.replace("\n", " ") for c in re.findall(r"`(pip install[^`]*\.whl[^`]*\[lightning\][^`]*)`", README)]
    assert commands, "the README shows how to install the wheel with an extra"
    wheel = "sparsekit-0.0.0-py3-none-any.whl"
    (tmp_path / wheel).write_bytes(b"")
    for command in commands:
        argv = command.replace("pip install", "printf '%s\\n'", 1)
        out = subprocess.run(["bash", "-c", argv], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        assert out.split() == [f"./{wheel}[lightning]"], (command, out)


def test_the_readme_says_when_run_prune_returns_none():
    # run_prune is typed `Report | None` (None on torchrun ranks other than 0): a user who types the README's
    # `report.pruned.accuracy` under mypy --strict gets union-attr errors unless the README says why and what to do
    import typing

    import sparsekit

    returns = typing.get_type_hints(sparsekit.run_prune)["return"]
    assert type(None) in typing.get_args(returns)
    (row,) = [line for line in README.splitlines() if line.startswith("| `report = sparsekit.run_prune(")]
    assert "None" in row and "is not None" in row, row
