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


RECIPE = """version: 1
model: {factory: "examples.models:mlp", kwargs: {in_features: 64, hidden: [64, 32]}, input_shape: [1, 64]}
data: {source: digits, batch_size: 32}
finetune: {epochs: 1}
pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot, layers: {exclude: [fc3]}}]
benchmark: {enabled: false}
"""


@pytest.fixture
def mlp_file(tmp_path):
    """An untrained digits MLP as a sparsekit checkpoint (what is checked here comes before any training)."""
    import sparsekit
    from examples.models import mlp

    path = tmp_path / "mlp.pt"
    kwargs = {"in_features": 64, "hidden": [64, 32]}
    sparsekit.save_model(mlp(**kwargs), path, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    return path


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


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_an_integer_npz_for_a_float_model_is_refused_naming_the_dtype(tmp_path, mlp_file, dtype):
    # Raw 8-bit pixels were cast to float32 without a word: a model trained on [0, 1] saw 0..255.
    data = tmp_path / "pixels.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 255, (40, 64)).astype(dtype), y=rng.integers(0, 10, 40))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    for args in (
        ["prune", str(mlp_file), str(recipe), "-o", str(tmp_path / "out")],
        ["sensitivity", str(mlp_file), str(recipe), "-o", str(tmp_path / "sens")],
        ["export", str(mlp_file), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8"],
    ):
        result = CliRunner().invoke(main, [*args, "--arch", "examples.models:mlp", "--data", str(data)])
        assert_bad_input(result, "--data", np.dtype(dtype).name, "floating-point", "astype(np.float32)")
    assert not (tmp_path / "out").exists() and not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("command", ["validate", "prune"])
def test_an_npz_given_as_the_recipe_is_called_data_not_a_model_file(tmp_path, mlp_file, command):
    recipe = tmp_path / "digits.npz"
    np.savez(recipe, x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))
    args = [command, str(recipe)] if command == "validate" else [command, str(mlp_file), str(recipe)]
    line = assert_bad_input(CliRunner().invoke(main, args), str(recipe), ".npz", "data.source")
    assert "torch.save" not in line and "model file" not in line


@pytest.mark.parametrize(
    "args",
    [["prune", "-", "lenet-gradual-magnitude-90"], ["inspect", "-"], ["bench", "-"], ["validate", "-"],
     ["prune", "{model}", "-"], ["export", "{model}", "-o", "-"]],
)  # fmt: skip
def test_a_dash_is_said_to_be_no_standard_input(tmp_path, mlp_file, args):
    # '-' read as a file name was answered "model file not found" / "no such file", as if a file were missing.
    filled = [str(mlp_file) if a == "{model}" else a for a in args]
    assert_bad_input(CliRunner().invoke(main, filled), "standard input")


def test_finetune_on_integer_batches_names_the_dtype_and_the_fix():
    # The Python API's own loaders: torch's "mat1 and mat2 must have the same dtype" was all the user read.
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import sparsekit
    from examples.models import mlp
    from sparsekit.errors import DataError

    data = TensorDataset(torch.randint(0, 255, (16, 64)), torch.randint(0, 10, (16,)))
    loader = DataLoader(data, batch_size=8)
    recipe = sparsekit.Recipe(**{"version": 1, "finetune": {"epochs": 1}, "pruning": []})
    with pytest.raises(DataError) as caught:
        sparsekit.finetune(mlp(), recipe, loader, loader)
    assert "torch.int64" in str(caught.value) and "x.float()" in str(caught.value)


@pytest.mark.parametrize(("content", "said"), [(b"", "the file is empty"), (b"version: 1\nseed: 0\n", "text file")])
@pytest.mark.parametrize("command", ["bench", "inspect"])
def test_an_onnx_file_that_is_empty_or_text_is_said_to_be(tmp_path, content, said, command):
    # An empty file was "no IR version or no graph outputs", a recipe "Wire format was corrupt".
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    assert_bad_input(CliRunner().invoke(main, [command, str(path)]), str(path), said)


@pytest.mark.parametrize("command", ["prune", "export", "sensitivity"])
def test_an_unreadable_model_file_is_named_before_the_output(tmp_path, mlp_file, occupied, monkeypatch, command):
    import builtins

    real_open = builtins.open

    def no_read(file, *args, **kwargs):  # chmod 000 as a test run by root would not see it
        if str(file) == str(mlp_file):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_read)
    out = ["-o", str(occupied / "mine.onnx")] if command == "export" else ["-o", str(occupied)]
    recipe = [] if command == "export" else ["lenet-gradual-magnitude-90"]
    result = CliRunner().invoke(main, [command, str(mlp_file), *recipe, *out])
    assert_bad_input(result, str(mlp_file), "Permission denied")


def test_sensitivity_names_a_missing_data_file_before_an_occupied_folder(tmp_path, mlp_file, occupied):
    # prune checked its --data .npz before the folder; sensitivity named the folder first.
    args = ["sensitivity", str(mlp_file), "lenet-gradual-magnitude-90", "-o", str(occupied)]
    result = CliRunner().invoke(main, [*args, "--data", str(tmp_path / "missing.npz")])
    assert_bad_input(result, "--data", "missing.npz", "not found")
