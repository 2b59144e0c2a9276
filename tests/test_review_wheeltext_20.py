"""Found by review as a user of the installed wheel: what its text points at, and which problem a refused run
names first."""

from __future__ import annotations

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
