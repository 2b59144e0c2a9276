"""A new user's first steps, from the README, with models and files of their own."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main
from sparsekit.trust import trusted_modules


@pytest.fixture
def own_code(tmp_path, monkeypatch):
    """A folder holding mynets.py (a plain module) and mypkg/nets.py (a package's module), as the current folder."""
    (tmp_path / "mynets.py").write_text("X = 1\n")
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("mynets.py", ["a file name, not a module name", "trust its module, mynets"]),
        ("mypkg.nets.py", ["a file name, not a module name", "trust its module, mypkg.nets"]),
        ("mynets.sub", ["mynets is a module, not a package"]),
        ("mypkg.nots", ["package mypkg has no module 'nots'"]),
    ],
)
def test_trust_refuses_a_module_that_cannot_be_imported(own_code, name, needles):
    # Trust is recorded as the top-level file, so `sparsekit trust mynets.py` (the file's name) or a misspelt
    # submodule was listed as trusted, exit 0, though no --arch can name it and the real module stayed untrusted.
    assert_bad_input(CliRunner().invoke(main, ["trust", name]), name, *needles)
    assert name not in trusted_modules()


def test_trust_still_takes_real_modules(own_code):
    for name in ("mynets", "mypkg", "mypkg.nets"):
        result = CliRunner().invoke(main, ["trust", name])
        assert result.exit_code == 0, result.output
    assert {"mynets", "mypkg", "mypkg.nets"} <= set(trusted_modules())


def test_a_run_folder_given_as_the_model_names_the_model_in_it(tmp_path):
    # `sparsekit prune ... -o out` then `sparsekit inspect out` (or export, prune, validate): the error said only
    # "expected a model file (.pt or .safetensors)"; it now names the file the run wrote.
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\n")
    for args in (["inspect", out], ["export", out, "-o", tmp_path / "m.onnx"], ["validate", recipe, out]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert_bad_input(result, f"{out}: is a folder", str(out / "model.pt"))


def test_validate_of_a_recipe_alone_says_its_npz_file_is_missing(tmp_path, monkeypatch):
    # `sparsekit validate my.yaml` printed "valid" for a recipe whose data.source .npz is not there; only prune, after
    # building and checking the model, said so. The recipe alone still loads nothing: the file is only looked up.
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: mydata.npz}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "data.source file 'mydata.npz' is not found from this folder" in result.output
    (tmp_path / "mydata.npz").write_bytes(b"")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0 and "not found" not in result.output, result.output
