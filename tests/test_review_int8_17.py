"""Review of int8 quantization, calibration and benchmarking (helper y1, round 17): a user's own models
(an MLP, a conv net with BatchNorm, 1-D CNNs) exported with ``--quantize int8`` and benchmarked."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sparsekit.onnx import export_onnx
from sparsekit.onnx.quantize import output_agreement, quantize_int8


class _PerStep(nn.Module):
    """A 1-D CNN that scores 10 classes at every time step: output [batch, 10, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 4, 3, padding=1)
        self.c2 = nn.Conv1d(4, 10, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)))


def test_a_per_position_output_is_not_scored_as_class_scores(tmp_path, one_thread):
    # export --quantize int8 --data printed "accuracy fp32 0.0000, int8 0.0000, top-1 agreement 1.0000" for a
    # [batch, 10, 64] per-step output: the argmax over all 640 values against labels 0..9, a number of nothing.
    torch.manual_seed(0)
    export_onnx(_PerStep(), tmp_path / "m.onnx", [1, 1, 16], exporter="torchscript")
    x = np.random.default_rng(0).standard_normal((40, 1, 16)).astype(np.float32)
    y = np.arange(40) % 10
    info = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", calibration=[x[:20]], eval_data=(x, y))
    ev = info["eval"]
    assert ev["fp32_accuracy"] is None and ev["int8_accuracy"] is None and ev["top1_agreement"] is None
    assert "['batch', 10, 16], not one row of class scores per sample" in ev["note"]
    # Without data (dynamic int8) the random-input comparison gives no top-1 agreement either, only the difference.
    check = output_agreement(tmp_path / "m.onnx", tmp_path / "q.onnx", x)
    assert check["top1_agreement"] is None and check["max_abs_diff"] >= 0
