"""Found by review as a user of the installed wheel: what its text points at, and which problem a refused run
names first."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import ModelFileError

# --- a factory written as a call (mynet:LeNet(), as one builds it in Python) says how to write it ---------------------


@pytest.mark.parametrize(
    ("arch", "needles"),
    [
        ("mynet:LeNet()", ["without the parentheses ('mynet:LeNet')"]),
        ("mynet:LeNet(width=64, act='relu')", ["'mynet:LeNet'", """--kwargs '{"width": 64, "act": "relu"}'"""]),
        ("mynet:LeNet(64)", ["'mynet:LeNet'", "each by its parameter name", "--kwargs"]),
    ],
)
def test_an_arch_written_as_a_call_says_to_drop_the_parentheses(tmp_path, arch, needles):
    path = tmp_path / "sd.pt"
    torch.save({"fc.weight": torch.zeros(2, 3)}, path)
    assert_bad_input(CliRunner().invoke(main, ["inspect", str(path), "--arch", arch]), "--arch", *needles)


def test_a_call_in_the_python_api_is_told_its_kwargs_parameter(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"fc.weight": torch.zeros(2, 3)}, path)
    with pytest.raises(ModelFileError, match=r"\('mynet:LeNet'\).*kwargs=\{\"n\": 2\}"):
        sparsekit.load_model(path, arch="mynet:LeNet(n=2)")


def test_a_recipe_factory_written_as_a_call_points_to_model_kwargs(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text('version: 1\nmodel: {factory: "mynet:LeNet(n=2)"}\n')
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "model.factory", "'mynet:LeNet'")
    assert "model.kwargs" in line and "--kwargs" not in line


# --- text a user of the wheel reads points at clone-only files only where it says so ---------------------------------

# Files only a clone of the repository has: the wheel holds the sparsekit package alone.
CLONE_ONLY = re.compile(r"\bbenchmarks[/.]|\bREADME\b|\bexamples[./]|\bdocs/|\btests/")
# How a text says that a file is the repository's (or a clone's), not the installed package's.
MARKED = re.compile(r"repository|clone|source checkout|source tree")
PACKAGE = Path(sparsekit.__file__).resolve().parent


def _units(text: str) -> list[str]:
    """Paragraphs (blank-line separated); each Markdown table row on its own, as it describes one key."""
    units: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        rows = [line for line in para.splitlines() if line.lstrip().startswith("|")]
        units += rows
        units.append("\n".join(line for line in para.splitlines() if not line.lstrip().startswith("|")))
    return [u for u in units if u.strip()]


def _unmarked(where: str, text: str) -> list[str]:
    return [f"{where}: {u.strip()[:200]!r}" for u in _units(text) if CLONE_ONLY.search(u) and not MARKED.search(u)]


def _cli_texts() -> list[tuple[str, str]]:
    runner = CliRunner()
    commands = [[], *([name] for name in sorted(main.commands))]
    texts = [(f"sparsekit {' '.join(c)} --help", runner.invoke(main, [*c, "--help"]).output) for c in commands]
    texts.append(("sparsekit recipes --reference", runner.invoke(main, ["recipes", "--reference"]).output))
    # The listing: each recipe's entry on its own; the "(for examples.models:...)" of its first line counts as
    # marked when a line of the listing marks examples.models (one note for all, not one per recipe).
    listing = runner.invoke(main, ["recipes"]).output
    entries = re.split(r"\n(?=\S)", listing)
    noted = any(e.startswith("examples.models:") and MARKED.search(e) for e in entries)
    texts += [("sparsekit recipes", re.sub(r"\(for examples\.models:\w+\)", "", e) if noted else e) for e in entries]
    return texts


def _string_literals() -> list[tuple[str, str]]:
    """The package's string literals that are sentences (messages, help), not docstrings nor bare paths."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bodies = [node.body for node in ast.walk(tree) if isinstance(getattr(node, "body", None), list)]
        docs = {id(st.value) for body in bodies for st in body if isinstance(st, ast.Expr)}
        for node in ast.walk(tree):
            sentence = isinstance(node, ast.Constant) and isinstance(node.value, str) and " " in node.value.strip()
            if sentence and id(node) not in docs:
                found.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node.value))
    return found


def test_text_a_wheel_user_reads_marks_clone_only_files():
    texts = _cli_texts()
    assert all(text for _, text in texts)
    for recipe in sorted((PACKAGE / "recipes").glob("*")):
        # The header comment (what `sparsekit recipes` prints) is one text, each line below it another.
        lines = recipe.read_text(encoding="utf-8").splitlines()
        n = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        texts += [(f"{recipe.name} (shipped)", text) for text in ["\n".join(lines[:n]), *lines[n:]]]
    texts += _string_literals()
    bad = [line for where, text in texts for line in _unmarked(where, text)]
    assert not bad, "\n".join(bad)


def test_the_scan_sees_an_unmarked_path():
    # The scan itself can fail: an unmarked mention is found, a marked one is not.
    assert _unmarked("x", "chosen with python -m benchmarks.results.tune lenet")
    assert not _unmarked("x", "chosen with benchmarks/results/tune.py in the sparsekit repository")


# --- prune names the model file's problem before the output folder's ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "needle"), [("bad.py", b"import torch\n", "text file"), ("m.onnx", b"\x08\x07", "ONNX")]
)
def test_a_wrong_model_file_is_named_before_an_occupied_output_folder(tmp_path, name, content, needle):
    model = tmp_path / name
    model.write_bytes(content)
    out = tmp_path / "sparsekit-out"
    out.mkdir()
    (out / "old.txt").write_text("an earlier run's notes")
    args = ["prune", str(model), "lenet-gradual-magnitude-90", "--arch", "m:f", "-o", str(out)]
    assert_bad_input(CliRunner().invoke(main, args), name, needle)


def test_a_missing_data_file_is_named_before_an_occupied_output_folder(tmp_path, monkeypatch):
    model = tmp_path / "sd.pt"
    torch.save({"fc.weight": torch.zeros(2, 3)}, model)
    out = tmp_path / "sparsekit-out"
    out.mkdir()
    (out / "old.txt").write_text("an earlier run's notes")
    monkeypatch.chdir(tmp_path)
    args = ["prune", str(model), "lenet-gradual-magnitude-90", "--arch", "m:f", "--data", "nosuch.npz", "-o", str(out)]
    assert_bad_input(CliRunner().invoke(main, args), "--data nosuch.npz", "not found")
