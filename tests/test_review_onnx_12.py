"""Review round 12, export/bench/inspect on user models and user ONNX files."""

from __future__ import annotations

import warnings

import pytest
import torch

from sparsekit.onnx import onnx_macs
from sparsekit.stats import model_stats


class _Tokens(torch.nn.Module):
    """A Linear applied per position ([batch, 5, 6] -> MatMul rows batch * 5), then a conv, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 4)
        self.conv = torch.nn.Conv1d(5, 3, 3, padding=1)
        self.head = torch.nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.conv(self.proj(x)).flatten(1))


@pytest.mark.parametrize("batch", [1, 8])
def test_macs_of_a_fixed_batch_file_are_per_sample(tmp_path, batch):
    # A file the user exported with torch.onnx.export and no dynamic_axes fixes its batch: inspect and bench
    # counted the Linear layers' MACs for that whole batch (8x at batch 8) and the convs' for one sample,
    # under a footer that says "MACs: per sample".
    model = _Tokens().eval()
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(batch, 5, 6),), path, dynamo=False)
    assert onnx_macs(path)["macs"] == model_stats(model, [1, 5, 6])["macs"]
