"""Review round 12, export/bench/inspect on user models and user ONNX files."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input
from onnx import TensorProto, helper, numpy_helper

from sparsekit.cli import main
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


def test_bench_of_a_file_with_no_input_says_so(tmp_path):
    # A graph that computes from constants alone was refused with "...; the model takes . Time it with ...".
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 2), np.float32), "w")],
    )
    path = tmp_path / "const.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    result = CliRunner().invoke(main, ["bench", "--no-progress", str(path)])
    line = assert_bad_input(result, "const.onnx", "no input at all")
    assert "takes ." not in line
