"""Precision review: models and files in float16 / bfloat16 / float64, autocast, non-finite weights."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from sparsekit.cli import main


def _gemm_file(path, elem: int, np_dtype) -> str:
    """A Linear 8 -> 4 as one Gemm whose input, weights and output are of ``elem`` (float16 / float64)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np_dtype), "w")
    b = numpy_helper.from_array(np.zeros(4, np_dtype), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", elem, ["batch", 8])],
        [helper.make_tensor_value_info("y", elem, ["batch", 4])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize(("elem", "np_dtype"), [(TensorProto.FLOAT16, np.float16), (TensorProto.DOUBLE, np.float64)])
def test_bench_times_a_float16_or_float64_onnx_file(tmp_path, elem, np_dtype):
    # A model exported in float16 for deployment was refused ("the benchmark feeds one float32 ... tensor"), though
    # onnxruntime runs it and its inputs are drawn as easily as float32's.
    path = _gemm_file(tmp_path / "m.onnx", elem, np_dtype)
    args = ["bench", path, "--batch-size", "1", "--batch-size", "4", "--runs", "3", "--warmup", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["files"][0]["latency_ms"]) == {"1", "4"}
