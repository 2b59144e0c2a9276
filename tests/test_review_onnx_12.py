"""Review round 12, export/bench/inspect on user models and user ONNX files."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input, user_module
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


class _SmallCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.fc = torch.nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def uint8_files(tmp_path_factory):
    """A pruned model's fp32 file and the uint8-weight (asymmetric) files onnxruntime's own quantizer writes of
    it: dynamic (ConvInteger / MatMulInteger) and static QDQ, per tensor and per channel."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from sparsekit.onnx import export_onnx

    folder = tmp_path_factory.mktemp("uint8")
    torch.manual_seed(0)
    model = _SmallCnn().eval()
    with torch.no_grad():
        for p in (model.conv.weight, model.fc.weight):
            p.mul_((torch.rand_like(p) > 0.7).float())
    fp32 = folder / "fp32.onnx"
    export_onnx(model, fp32, [1, 1, 6, 6], exporter="torchscript")
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"input": rng.standard_normal((1, 1, 6, 6)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for per_channel in (False, True):
            files[f"dynamic{int(per_channel)}"] = path = folder / f"dynamic{int(per_channel)}.onnx"
            quantize_dynamic(fp32, path, weight_type=QuantType.QUInt8, per_channel=per_channel)
            for kind, fmt in (("qdq", QuantFormat.QDQ), ("qop", QuantFormat.QOperator)):
                files[f"{kind}{int(per_channel)}"] = path = folder / f"{kind}{int(per_channel)}.onnx"
                quantize_static(
                    fp32, path, Reader(), quant_format=fmt, weight_type=QuantType.QUInt8,
                    activation_type=QuantType.QUInt8, per_channel=per_channel,
                )  # fmt: skip
    return fp32, files


@pytest.mark.parametrize("name", ["dynamic0", "dynamic1", "qdq0", "qdq1", "qop0", "qop1"])
def test_uint8_weights_count_their_zero_point_as_zero(uint8_files, name):
    # An int8 file whose weights are uint8 with a zero point (onnxruntime's quantizer with QuantType.QUInt8) stores
    # a pruned weight as its zero point, not 0: inspect called a 70%-sparse model 0.2% sparse, with every MAC
    # nonzero, and bench/report's nonzero_params counted every weight.
    from sparsekit.inspection import inspect as inspect_model
    from sparsekit.onnx import onnx_macs, param_counts

    fp32, files = uint8_files
    path = files[name]
    want, got = inspect_model(fp32), inspect_model(path)
    for a, b in zip(want["layers"], got["layers"], strict=True):
        # rounding may zero a few tiny weights more, never revive a pruned one
        assert a["sparsity"] <= b["sparsity"] <= a["sparsity"] + 0.03, (a, b)
    assert got["sparsity"] >= want["sparsity"]
    assert 0.97 * param_counts(fp32)["nonzero_params"] <= param_counts(path)["nonzero_params"]
    assert param_counts(path)["nonzero_params"] <= param_counts(fp32)["nonzero_params"]
    assert onnx_macs(path)["effective_macs"] <= onnx_macs(fp32)["effective_macs"]
    assert onnx_macs(path)["effective_macs"] >= 0.97 * onnx_macs(fp32)["effective_macs"]
    assert onnx_macs(path)["macs"] == onnx_macs(fp32)["macs"]
    assert [r["name"] for r in got["layers"]] == [r["name"] for r in want["layers"]]
    assert [r["shape"] for r in got["layers"]] == [r["shape"] for r in want["layers"]]


def test_qoperator_int8_layers_are_rows_with_their_weights(tmp_path):
    # A QOperator-format int8 file (onnxruntime's quantize_static with QuantFormat.QOperator: QLinearConv,
    # QLinearMatMul, QGemm) had no rows for its layers and left their weights out of every count: inspect listed
    # "(other initializers) 2" params for a model of 1,497, bench's nonzero_params and MACs missed them too.
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from sparsekit.inspection import inspect as inspect_model
    from sparsekit.onnx import export_onnx, param_counts

    model = _Tokens().eval()
    fp32, q = tmp_path / "fp32.onnx", tmp_path / "q.onnx"
    export_onnx(model, fp32, [1, 5, 6], exporter="torchscript")
    feeds = iter([{"input": np.ones((1, 5, 6), np.float32) * i} for i in range(3)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(fp32, q, Reader(), quant_format=QuantFormat.QOperator, weight_type=QuantType.QInt8)
    got = inspect_model(q)
    assert {r["type"] for r in got["layers"]} >= {"QLinearMatMul", "QLinearConv"}
    assert got["params"] == inspect_model(fp32)["params"] == param_counts(q)["params"]
    # onnx's shape inference does not know QLinearAdd (com.microsoft): the layers after it get no MACs
    known = {r["name"]: r["macs"] for r in got["layers"] if r["macs"] is not None}
    assert known and all(known[k] == r["macs"] for r in inspect_model(fp32)["layers"] if (k := r["name"]) in known)


def test_a_zip_that_is_no_torch_file_is_not_called_one(tmp_path):
    # Any zip given as .onnx was "a PyTorch model file (torch.save), not ONNX: export it to ONNX first", a
    # downloaded archive holding the .onnx file the user wanted too.
    import zipfile

    holding, other = tmp_path / "download.onnx", tmp_path / "other.onnx"
    with zipfile.ZipFile(holding, "w") as archive:
        archive.writestr("net/model.onnx", b"\x08\x07")
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes.txt", "hello")
    for command in ("inspect", "bench"):
        line = assert_bad_input(CliRunner().invoke(main, [command, str(holding)]), "download.onnx", "'net/model.onnx'")
        assert "PyTorch" not in line and "unzip" in line
        line = assert_bad_input(CliRunner().invoke(main, [command, str(other)]), "other.onnx", "zip archive")
        assert "PyTorch" not in line


def test_a_json_file_is_read_as_onnx_bytes_and_called_json(tmp_path):
    # `sparsekit bench out/report.json` (a slip for model.onnx): onnx guessed its JSON text format from the name and
    # the error was a ParseError listing ModelProto's fields. ONNX files are read as the binary format onnxruntime
    # takes, whatever their name, and a JSON file is called one.
    report = tmp_path / "report.json"
    report.write_text('{"schema": 1, "summary": {}}\n')
    line = assert_bad_input(CliRunner().invoke(main, ["bench", str(report)]), "report.json", "it is JSON text")
    assert "Available Fields" not in line and "ParseError" not in line
    named_onnx = tmp_path / "m.onnx"  # (inspect reads a .json as a model file; an .onnx name goes to ONNX)
    named_onnx.write_text('{"schema": 1}\n')
    assert_bad_input(CliRunner().invoke(main, ["inspect", str(named_onnx)]), "m.onnx", "it is JSON text")


class _WithNone(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(6, 4), torch.nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(h), None, {"aux": None, "feat": h}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_parity_is_checked_for_a_model_that_returns_none_parts(tmp_path, exporter):
    # A model returning an optional part as None (a dict's 'aux': None) had its file written with parity "n/a
    # (outputs not finite) (FAILED: ... holds something other than tensors)": the exporters leave None out of the
    # graph, and the check now does too.
    from sparsekit.onnx import export_onnx

    res = export_onnx(_WithNone().eval(), tmp_path / "m.onnx", [1, 6], exporter=exporter)
    assert res["parity"]["ok"] and res["parity"]["error"] is None and res["parity"]["max_abs_diff"] < 1e-5


def test_parity_that_could_not_be_checked_does_not_blame_non_finite_outputs(tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, "strout", STR_OUT)
    torch.save({"fc.weight": torch.ones(4, 6), "fc.bias": torch.zeros(4)}, tmp_path / "w.pt")
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tmp_path / "w.pt"),
            "-o",
            str(tmp_path / "w.onnx"),
            "--arch",
            "strout:build",
            "--input-shape",
            "1,6",
            "--exporter",
            "torchscript",
        ],
    )
    assert "holds something other than tensors" in result.output
    assert "not finite" not in result.output


STR_OUT = """
import torch


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        return {"logits": self.fc(x), "tag": "v1"}


def build():
    return M()
"""


@pytest.mark.parametrize("under", ["m.onnx", "a/b/m.onnx"])
def test_export_under_a_file_names_that_file(tmp_path, monkeypatch, under):
    # `-o notes.txt/m.onnx` said "notes.txt: File exists; check the path and its permissions" (mkdir's words),
    # and a deeper path "cannot write it: Not a directory" without naming the file that is in the way.
    user_module(tmp_path, monkeypatch, "strout2", STR_OUT)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    torch.save({"fc.weight": torch.ones(4, 6), "fc.bias": torch.zeros(4)}, tmp_path / "w.pt")
    args = [
        "export",
        str(tmp_path / "w.pt"),
        "-o",
        str(notes / under),
        "--arch",
        "strout2:build",
        "--input-shape",
        "1,6",
    ]
    line = assert_bad_input(CliRunner().invoke(main, args), f"{notes}: is a file, not a folder")
    assert "File exists" not in line
    assert notes.read_text() == "mine"
