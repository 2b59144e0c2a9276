"""Bad and odd inputs in the order a user meets them: what each command says first when several things are wrong,
and data of the wrong dtype."""

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main


@pytest.fixture
def occupied(tmp_path):
    """An output folder (and an .onnx file in it) holding a file of the user's, which every command refuses."""
    folder = tmp_path / "occupied"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "mine.onnx").write_bytes(b"mine")
    return folder


def _damaged(tmp_path, kind: str):
    """A model file no reader takes, whose first bytes already show it (not text, which was caught before)."""
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(b"\x00\x13garbage" * 20)
    elif kind == "npz":
        np.savez(path.with_suffix(".npz"), x=np.zeros((4, 64), np.float32))
        path.with_suffix(".npz").rename(path)
    return path


@pytest.mark.parametrize("kind", ["garbage", "npz"])
def test_prune_names_a_damaged_model_file_before_an_occupied_output_folder(tmp_path, occupied, kind):
    model = _damaged(tmp_path, kind)
    result = CliRunner().invoke(main, ["prune", str(model), "lenet-gradual-magnitude-90", "-o", str(occupied)])
    assert_bad_input(result, str(model), "not a readable PyTorch checkpoint")


@pytest.mark.parametrize("kind", ["missing", "text", "garbage"])
@pytest.mark.parametrize("command", ["export", "sensitivity"])
def test_export_and_sensitivity_name_the_model_file_before_their_output(tmp_path, occupied, kind, command):
    model = tmp_path / "model.pt"
    if kind == "text":
        model.write_text("version: 1\nseed: 0\n")  # a recipe given as the model
    elif kind == "garbage":
        model = _damaged(tmp_path, "garbage")
    if command == "export":
        args = ["export", str(model), "-o", str(occupied / "mine.onnx")]
    else:
        args = ["sensitivity", str(model), "lenet-gradual-magnitude-90", "-o", str(occupied)]
    line = assert_bad_input(CliRunner().invoke(main, args), str(model))
    assert "did not write" not in line
