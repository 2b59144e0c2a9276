"""Review (int8 angle, round 20): int8 quantization of files and models a user brings."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sparsekit.errors import ExportError
from sparsekit.onnx import export_onnx, quantize_int8

torch.set_num_threads(1)


def _fp32(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    path = tmp_path / "fp32.onnx"
    export_onnx(model, path, (1, 12))
    return path


@pytest.mark.parametrize("static", [False, True])
def test_an_already_quantized_file_is_refused_not_quantized_again(tmp_path, static):
    fp32 = _fp32(tmp_path)
    calibration = [np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)] if static else None
    once = tmp_path / "q.onnx"
    quantize_int8(fp32, once, calibration=calibration)
    before = once.read_bytes()
    # Quantizing the int8 file again wrote a file larger than its input, with "fp32_bytes" those of an int8 file.
    with pytest.raises(ExportError, match=r"q\.onnx: is quantized already .*fp32 model"):
        quantize_int8(once, tmp_path / "twice.onnx", calibration=calibration)
    assert not (tmp_path / "twice.onnx").exists()
    assert once.read_bytes() == before
    assert {n.op_type for n in onnx.load(str(fp32)).graph.node}.isdisjoint({"QuantizeLinear", "MatMulInteger"})


@pytest.mark.parametrize("spelling", ["same", "dotted", "link"])
def test_the_int8_file_may_not_replace_the_fp32_model_it_is_made_from(tmp_path, spelling):
    fp32 = _fp32(tmp_path)
    before = fp32.read_bytes()
    out = {"same": fp32, "dotted": tmp_path / "." / "fp32.onnx", "link": tmp_path / "link.onnx"}[spelling]
    if spelling == "link":
        out.symlink_to(fp32)
    # It replaced the fp32 model with the int8 one (the only copy of the model the int8 file is checked against).
    with pytest.raises(ExportError, match=r"fp32\.onnx|link\.onnx"):
        quantize_int8(fp32, out)
    assert fp32.read_bytes() == before
