"""Only the CLI knows the command line: library code words its remedies neutrally.

Library messages point to a caller's option with :func:`sparsekit.errors.option`, which ``str(err)``
spells as the Python API does (``overwrite=True``) and the CLI as its flag (``--overwrite``). A flag
written into a string literal of any other module (a message, a docstring, an f-string part) would
show a Python caller an option that does not exist for them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sparsekit"
CLI = PACKAGE / "cli.py"
ENTRY = PACKAGE / "__main__.py"  # the command's entry point: it reads the command line before cli.py is loaded
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p not in (CLI, ENTRY))


def flags_in(path: Path) -> list[str]:
    """``line: flag in 'text'`` for each command-line flag inside a string literal of ``path``: plain
    strings, docstrings and the literal parts of f-strings (comments are not strings, so not checked)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for m in FLAG.finditer(node.value):
                start = max(m.start() - 40, 0)
                line = node.lineno + node.value.count("\n", 0, m.start())  # exact for literals without escapes
                found.append(f"{line}: {m.group()} in {node.value[start : m.end() + 40]!r}")
    return found


def test_the_pattern_finds_flags_and_only_flags(tmp_path):
    text = "pass --arch m:f or --trust-code; x--y, a-b --, e.g. -o DIR, ---x"
    assert FLAG.findall(text) == ["--arch", "--trust-code"]
    probe = tmp_path / "probe.py"
    probe.write_text('def f():\n    """Docs: --overwrite."""\n    raise E(f"{x}: use --resume {y}")  # --no-string\n')
    assert [f.split(" in ")[0] for f in flags_in(probe)] == ["2: --overwrite", "3: --resume"]


def test_every_module_is_checked():
    names = {p.relative_to(PACKAGE).as_posix() for p in MODULES}
    assert {"train.py", "modelio.py", "errors.py"} <= names and not {"cli.py", "__main__.py"} & names
    assert any(n.startswith("methods/") for n in names)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_command_line_flag_in_library_strings(path):
    found = flags_in(path)
    assert not found, (
        f"{path.relative_to(PACKAGE.parent)} names command-line flags; word the remedy neutrally or use "
        "sparsekit.errors.option(name, value), which the CLI alone renders as its flag:\n  " + "\n  ".join(found)
    )
