"""Review (int8 angle): faults found by shipping int8 models with sparsekit export / bench."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_bad_input

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


@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
    """ONNX files a user exported with torch.onnx.export themselves: a fixed batch of 1, two inputs,
    an integer (token id) input."""
    folder = tmp_path_factory.mktemp("own")

    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 4), torch.nn.Linear(2, 4)

        def forward(self, x, z):
            return self.a(x) + self.b(z)

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e = torch.nn.Embedding(20, 4)

        def forward(self, ids):
            return self.e(ids).mean(1)

    x, z, ids = torch.randn(1, 8), torch.randn(1, 2), torch.randint(0, 20, (1, 5))
    with pytest.warns(Warning):  # the legacy exporter's deprecation notice
        torch.onnx.export(torch.nn.Linear(8, 4), (x,), folder / "fixed.onnx", dynamo=False)
        torch.onnx.export(Two(), (x, z), folder / "two.onnx", dynamo=False)
        torch.onnx.export(Tokens(), (ids,), folder / "ids.onnx", dynamo=False)
    return folder


def _bench(*args: str):
    from click.testing import CliRunner

    from sparsekit.cli import main

    return CliRunner().invoke(main, ["bench", "--no-progress", "--budget", "0.05", *args])


def test_bench_input_errors_say_what_to_do(own_files):
    # The errors named the file and the problem but not the remedy, and the fixed-batch one told the user
    # to "use batch 1" without naming the option (they had not passed one: 1 and 32 are the default).
    line = assert_bad_input(_bench(str(own_files / "fixed.onnx")), "fixed.onnx", "--batch-size 1", "32")
    assert "dynamic" in line
    assert_bad_input(_bench(str(own_files / "two.onnx")), "two.onnx", "onnxruntime_perf_test")
    # A model taking token ids (int64) is benchmarked on ids since 2026-12-06; its batch is fixed at 1 here.
    assert_bad_input(_bench(str(own_files / "ids.onnx"), "--input-shape", "1,5"), "ids.onnx", "--batch-size 1")
    ran = _bench(str(own_files / "ids.onnx"), "-b", "1")
    assert ran.exit_code == 0 and "ids.onnx" in ran.output, (ran.output, ran.stderr)
    # The Python API spells the option its own way.
    from sparsekit import benchmark
    from sparsekit.errors import ExportError

    with pytest.raises(ExportError, match=r"batch_sizes=\[1\]"):
        benchmark(own_files / "fixed.onnx", batch_sizes=[1, 8])


def test_bench_shape_mismatch_names_the_option(tmp_path):
    model = torch.nn.Linear(8, 4)
    export_onnx(model, tmp_path / "m.onnx", [1, 8], exporter="torchscript")
    assert_bad_input(_bench(str(tmp_path / "m.onnx"), "--input-shape", "1,6"), "m.onnx", "--input-shape")


def test_integer_options_say_a_comma_list_is_given_by_repeating(tmp_path):
    # `-b 1,8` (how one writes several sizes) was answered "'1,8' is not a valid integer range", as if a range
    # were wanted; every integer option said so for a non-integer.
    result = _bench(str(tmp_path / "any.onnx"), "-b", "1,8")
    assert_bad_input(result, "--batch-size", "not a whole number", "--batch-size 1 --batch-size 8")
    assert "integer range" not in result.stderr
    assert_bad_input(_bench(str(tmp_path / "any.onnx"), "--threads", "1.5"), "--threads", "'1.5' is not a whole number")


def test_inspect_counts_an_int8_norm_scale_as_bench_does(tmp_path):
    # Static int8 quantizes a BatchNorm/LayerNorm scale too (a DequantizeLinear feeds it): bench and
    # report.json counted it, `sparsekit inspect` counted float tensors only beside the layers, so its
    # totals for the same file were smaller.
    from sparsekit.inspection import inspect
    from sparsekit.onnx import param_counts

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[3].weight.uniform_(0.5, 2.0)
    export_onnx(model, tmp_path / "fp32.onnx", [1, 16], exporter="torchscript")
    rng = np.random.default_rng(0)
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "q.onnx", [rng.standard_normal((8, 16), dtype=np.float32)] * 4)
    graph = load_onnx(tmp_path / "q.onnx").graph
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert any(t.name in dequantized and len(t.dims) == 1 and t.data_type != 1 for t in graph.initializer)
    counted = param_counts(tmp_path / "q.onnx")
    got = inspect(tmp_path / "q.onnx")
    assert (got["params"], got["nonzero_params"]) == (counted["params"], counted["nonzero_params"])
