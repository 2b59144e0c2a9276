"""The data a user brings (review 28): int8 calibration reads the training batches as a run's training does."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input, user_module

from sparsekit.cli import main

LOADERS = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

def mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

def _xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.arange(64) % 3

class Breaks:
    # A loader whose second batch cannot be read (a shard gone): len() 2, one batch, then OSError.
    def __init__(self, first):
        self.first = first
    def __len__(self):
        return 2
    def __iter__(self):
        yield self.first
        raise OSError("read error on shard 2")

def breaks():
    x, y = _xy()
    return Breaks((x[:32], y[:32])), DataLoader(TensorDataset(x, y), batch_size=32)

def label_past_outputs_later():
    # The validation loader's second batch holds label 7 for a model of 3 outputs.
    x, y = _xy()
    val_y = y.clone()
    val_y[40] = 7
    return DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(TensorDataset(x, val_y), batch_size=32)

def raw_pixels_later():
    # The second training batch holds 8-bit pixels (0..255) where the first held floats in [0, 1].
    x, y = _xy()
    train = [(x[:32].abs(), y[:32]), ((x[32:].abs() * 100).to(torch.uint8), y[32:])]
    return train, DataLoader(TensorDataset(x, y), batch_size=32)
"""


def _model(tmp_path, monkeypatch):
    import sparsekit

    mod = user_module(tmp_path, monkeypatch, "sk_review28_calib", LOADERS)
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    sparsekit.save_model(mod.mlp(), path, factory="sk_review28_calib:mlp", input_shape=[1, 8])
    return path


def test_a_training_loader_that_fails_mid_calibration_is_a_data_error_not_a_per_tensor_fallback(tmp_path, monkeypatch):
    # The loader's OSError was taken for onnxruntime's per-channel failure: the per-tensor retry calibrated on the one
    # batch read before it, exit 0, the fault named only in report.json's int8 "fallback".
    model = _model(tmp_path, monkeypatch)
    out = tmp_path / "q.onnx"
    args = ["export", str(model), "-o", str(out), "--arch", "sk_review28_calib:mlp", "--quantize", "int8"]
    result = CliRunner().invoke(main, [*args, "--data", "sk_review28_calib:breaks", "--exporter", "torchscript"])
    assert_bad_input(
        result, "--data sk_review28_calib:breaks: the training loader: reading a batch raised OSError: read error"
    )
    assert not out.exists()


def test_calibration_batches_that_cannot_be_read_are_named_by_quantize_int8(tmp_path, monkeypatch):
    from sparsekit import export_onnx
    from sparsekit.errors import ExportError
    from sparsekit.onnx import quantize_int8

    mod = user_module(tmp_path, monkeypatch, "sk_review28_calib", LOADERS)
    export_onnx(mod.mlp(), tmp_path / "m.onnx", [1, 8], exporter="torchscript")
    with pytest.raises(ExportError, match=r"^calibration batch 2: reading it raised OSError: read error on shard 2$"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", calibration=mod.breaks()[0])
    assert not (tmp_path / "q.onnx").exists()


def test_integer_calibration_batches_for_a_float_input_are_refused_as_training_refuses_them(tmp_path, monkeypatch):
    # Only the first training batch was checked: a later one of raw 8-bit pixels was cast to float and set the
    # activation ranges of a model trained on [0, 1], exit 0 (quantize_int8 cast integer calibration arrays alike).
    import numpy as np

    from sparsekit import export_onnx
    from sparsekit.errors import ExportError
    from sparsekit.onnx import quantize_int8

    model = _model(tmp_path, monkeypatch)
    out = tmp_path / "q.onnx"
    args = ["export", str(model), "-o", str(out), "--arch", "sk_review28_calib:mlp", "--quantize", "int8"]
    result = CliRunner().invoke(
        main, [*args, "--data", "sk_review28_calib:raw_pixels_later", "--exporter", "torchscript"]
    )
    assert_bad_input(
        result,
        "--data sk_review28_calib:raw_pixels_later: the training loader's calibration batch 2 for input 'input' holds "
        "uint8 values, and the model takes floating-point inputs",
    )
    assert not out.exists()
    mod = __import__("sk_review28_calib")
    export_onnx(mod.mlp(), tmp_path / "m.onnx", [1, 8], exporter="torchscript")
    with pytest.raises(ExportError, match=r"^calibration batch 1 for input 'input' holds int64 values"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q8.onnx", calibration=[np.ones((4, 8), dtype=np.int64)])


def test_sensitivity_names_the_data_option_for_a_fault_in_a_later_validation_batch(tmp_path, monkeypatch):
    # "Error: data: label 7 is outside the model's 3 outputs" named neither --data nor the recipe, as prune's run does.
    model = _model(tmp_path, monkeypatch)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n")
    args = ["sensitivity", str(model), str(recipe), "--arch", "sk_review28_calib:mlp", "--no-progress"]
    result = CliRunner().invoke(
        main, [*args, "--data", "sk_review28_calib:label_past_outputs_later", "-o", str(tmp_path / "s")]
    )
    assert_bad_input(
        result, "Error: --data sk_review28_calib:label_past_outputs_later: label 7 is outside the model's 3 outputs"
    )


@pytest.mark.parametrize("trailing", ["", "/"])
def test_a_folder_named_as_the_data_source_is_told_how_to_become_one(tmp_path, trailing):
    # A folder of images (one subfolder per class) was "not a known source; did you mean 'digits'?" (for `imgs`), or
    # got no hint at all (for `imgs/`).
    from sparsekit.recipe import source_problem

    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    told = source_problem(str(tmp_path / "imgs") + trailing)
    assert told is not None and "did you mean" not in told
    assert "a folder is not read as data: save its samples with numpy.savez(path, x=..., y=...), or name a " in told
    assert "did you mean 'digits'" in (source_problem("digit") or "")
