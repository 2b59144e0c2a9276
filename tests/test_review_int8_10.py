"""Review (int8 angle): faults found by shipping int8 models with sparsekit export / bench."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.models import mlp
from sparsekit.onnx import export_onnx, quantize_int8, weight_entropy
from sparsekit.onnx.files import load_onnx
from sparsekit.onnx.tensors import count_params


@pytest.fixture(scope="module")
def dynamic_int8(tmp_path_factory):
    """A 75%-pruned MLP exported to fp32 and quantized without calibration data (dynamic int8:
    MatMulInteger with integer weights that no DequantizeLinear reads)."""
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=[64])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight[torch.rand_like(m.weight) < 0.75] = 0.0
    folder = tmp_path_factory.mktemp("dyn")
    export_onnx(model, folder / "fp32.onnx", [1, 64], exporter="torchscript")
    quantize_int8(folder / "fp32.onnx", folder / "q.onnx")
    return folder / "fp32.onnx", folder / "q.onnx"


def test_entropy_estimate_counts_dynamic_int8_weights(dynamic_int8):
    # The entropy estimate chose weights on its own and missed MatMulInteger's int8 weights: it saw the
    # biases alone, so `sparsekit export --quantize int8` (no --data) reported a storage bound of ~150 B
    # and a gzip size "78x the bound" for a 16 kB model.
    fp32, q = dynamic_int8
    model = load_onnx(q)
    assert {n.op_type for n in model.graph.node} & {"MatMulInteger"}
    counted = count_params(model)
    e = weight_entropy(q)
    assert (e["params"], e["nonzero_params"]) == (counted["params"], counted["nonzero_params"])
    assert e["params"] == count_params(load_onnx(fp32))["params"]
    # int8 values carry at most 8 bits each: the estimate is at least the mask plus a bit per nonzero.
    assert e["bound_bytes"] > counted["nonzero_params"] / 8
    assert np.isfinite(e["bound_bytes"])
