"""Review (int8 angle, round 20): int8 quantization of files and models a user brings."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import sparsekit
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


class _FakeQuantInput(nn.Module):
    """Fake-quantizes its input (as quantization-aware training does): its export holds QuantizeLinear and
    DequantizeLinear on a computed tensor, with float weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.fake_quantize_per_tensor_affine(x, 0.05, 128, 0, 255))


def test_a_model_that_fake_quantizes_its_activations_is_still_quantized(tmp_path):
    fp32 = tmp_path / "fq.onnx"
    export_onnx(_FakeQuantInput(), fp32, (1, 12), exporter="torchscript")
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(fp32)).graph.node}
    quantize_int8(fp32, tmp_path / "q.onnx", calibration=[np.ones((4, 12), np.float32)])
    weights = [t for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer if len(t.dims) == 2]
    assert [t.data_type for t in weights] == [onnx.TensorProto.INT8]


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


def _run_report(shipped_bytes: int, shipped_gzip: int, encoding: str = "sparse"):
    """A pipeline report of a 95%-sparse MLP with its int8 file (a quarter of the dense file, slower at batch 1) and
    model.onnx shipped at the given sizes."""
    from examples.models import mlp
    from sparsekit.report import Storage, notes
    from tests.test_report_summary import MLP_SHAPE, _prune, _recipe, _report

    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.95, "schedule": "oneshot"}], export={"quantize": "int8"})
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[48, 32]), recipe, MLP_SHAPE)
    report = _report(
        dense, model, pruner, recipe, MLP_SHAPE, latency={"1": (1.0, 0.01)}, int8_latency={"1": (1.5, 0.01)}
    )
    d = {"bytes": report.dense.onnx_bytes, "gzip_bytes": report.dense.onnx_gzip_bytes}
    report.storage = Storage.model_validate(
        {
            "mode": "auto", "encoding": encoding, "reason": "smaller after gzip", "path": "model.onnx",
            "bytes": shipped_bytes, "gzip_bytes": shipped_gzip, "dense": d,
            "entropy_bound_bytes": 1, "verbatim_bound_bytes": 1, "outputs_identical": True,
        }
    )  # fmt: skip
    report.notes = notes(report)
    return report


def test_an_int8_file_larger_than_the_sparse_stored_model_onnx_is_not_shipped_for_its_size():
    probe = _run_report(1, 1)
    q = probe.int8
    # model.onnx with sparse initializers a little smaller raw than the int8 file, larger after gzip (as at 98%:
    # 86,637 B vs int8 90,724 B): the report said only "0.266x: smaller" (of dense) and "Ship model.int8.onnx for
    # its size".
    report = _run_report(q.onnx_bytes - 100, q.onnx_gzip_bytes * 2)
    text = " ".join(report.notes)
    assert "Ship model.int8.onnx for its size" not in text
    assert f"model.int8.onnx ({q.onnx_bytes:,} B" in text and "is not smaller raw than" in text
    assert "after gzip" not in text.split("is not smaller")[1].split(":")[0]
    assert "sparse initializers" in text


def test_an_int8_file_smaller_than_model_onnx_is_still_shipped_for_its_size():
    probe = _run_report(1, 1)
    q = probe.int8
    report = _run_report(q.onnx_bytes * 3, q.onnx_gzip_bytes * 3, encoding="dense")
    text = " ".join(report.notes)
    assert "Ship model.int8.onnx for its size, model.onnx for speed" in text
    assert "is not smaller" not in text


class _Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 16, 5, padding=2)
        self.c2 = nn.Conv1d(16, 16, 3, padding=1, groups=16)  # depthwise
        self.c3 = nn.Conv1d(16, 24, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = h + torch.relu(self.c2(h))  # a residual add
        return self.fc(torch.relu(self.c3(h)).mean(-1))


def test_export_says_when_the_int8_file_is_larger_after_gzip(tmp_path):
    from click.testing import CliRunner

    from sparsekit.cli import main

    torch.manual_seed(0)
    model = _Conv1dNet()
    with torch.no_grad():  # 98% of each conv's weights zero: the fp32 file's zeros gzip away
        for conv in (model.c1, model.c2, model.c3):
            w = conv.weight
            w[w.abs() <= w.abs().flatten().kthvalue(int(0.98 * w.numel())).values] = 0.0
    path = tmp_path / "c1d.pt"
    sparsekit.save_model(model, path, "tests.test_review_int8_20:_Conv1dNet", input_shape=[1, 3, 32])
    args = ["export", str(path), "--arch", "tests.test_review_int8_20:_Conv1dNet", "-o", str(tmp_path / "q.onnx")]
    args += ["--quantize", "int8", "--data", "synthetic"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    q = json.loads(result.stdout)["int8"]
    assert q["bytes"] < q["fp32_bytes"] and q["gzip_bytes"] >= q["fp32_gzip_bytes"]  # the case: smaller raw only
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.stderr
    assert "the int8 file is not smaller than fp32 (after gzip)" in text.stdout


class _WeightNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.utils.parametrizations.weight_norm(nn.Linear(20, 32))
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_prune_says_a_weight_normed_layer_is_left_out(tmp_path, caplog):
    from conftest import fast_prune

    torch.manual_seed(0)
    path = tmp_path / "wn.pt"
    torch.save(_WeightNormed().state_dict(), path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((64, 20)).astype(np.float32), y=rng.integers(0, 3, 64))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 20]}\n"
        f"data: {{source: {tmp_path / 'd.npz'}, batch_size: 32}}\nfinetune: {{epochs: 0}}\n"
        "pruning: [{method: magnitude, sparsity: 0.9, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    res = fast_prune(path, recipe, tmp_path / "out", "--arch", "tests.test_review_int8_20:_WeightNormed")
    assert res.exit_code == 0, res.stderr
    # fc1 was left as it was with no word on stderr, stdout or in report.md (the summary's "not pruned" omits it).
    # (the CLI logs to stderr; under pytest the log goes to caplog)
    assert "'fc1' is left out, not pruned" in res.stderr + caplog.text
