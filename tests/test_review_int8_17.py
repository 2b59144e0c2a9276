"""Review of int8 quantization, calibration and benchmarking (helper y1, round 17): a user's own models
(an MLP, a conv net with BatchNorm, 1-D CNNs) exported with ``--quantize int8`` and benchmarked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
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


class _BatchOne(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(1, 64))  # traced: a Reshape to the constant [1, 64]


def test_bench_of_a_graph_that_fixes_the_batch_inside_says_batch_size_not_input_shape(tmp_path, one_thread):
    # A file whose input takes any batch ('n') but whose graph reshapes to [1, 64] failed at batch 32 with advice
    # to pass --input-shape 1,3,32,32; its sample dims are fixed (1, 8, 8), so that option could change nothing.
    from click.testing import CliRunner

    from sparsekit.cli import main
    from tests.conftest import assert_bad_input

    path = tmp_path / "b1.onnx"
    torch.onnx.export(
        _BatchOne().eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
    )  # fmt: skip
    result = CliRunner().invoke(main, ["bench", str(path), "--runs", "3", "--warmup", "0", "--no-progress"])
    line = assert_bad_input(result, "b1.onnx", "at batch size 32", "--batch-size 1")
    assert "--input-shape" not in line


def test_int8_json_per_nonzero_sizes_are_of_the_file_as_stored(tmp_path, mlp_checkpoint, one_thread):
    # export --quantize int8 --storage sparse --json gave int8.bytes 7,162 (the sparse-stored file) beside
    # bytes_per_nonzero 6.708 = 7,218 / 1,076: the dense-stored file's bytes, before storage was chosen.
    import json
    import os

    from click.testing import CliRunner

    import sparsekit
    from sparsekit.cli import main
    from sparsekit.masks import bake

    model = sparsekit.load_model(mlp_checkpoint, arch="examples.models:mlp")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(p.abs() > p.abs().flatten().kthvalue(int(p.numel() * 0.9)).values)
    pt = tmp_path / "sparse.pt"
    kwargs = {"in_features": 64, "hidden": [64, 32]}
    sparsekit.save_model(bake(model), pt, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    out = tmp_path / "q.onnx"
    args = ["export", str(pt), "--arch", "examples.models:mlp", "-o", str(out), "--quantize", "int8"]
    args += ["--storage", "sparse", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    q = res["int8"]
    assert res["storage"]["encoding"] == "sparse" and q["bytes"] == os.path.getsize(out) == res["bytes"]
    assert q["bytes_per_nonzero"] == pytest.approx(q["bytes"] / q["nonzero_params"])
    assert q["gzip_bytes_per_nonzero"] == pytest.approx(q["gzip_bytes"] / q["nonzero_params"])


def test_int8_gzip_size_is_at_the_fp32_files_level(tmp_path, mlp_checkpoint, monkeypatch, one_thread):
    # Past 16 MiB the fp32 file's gzip size is at level 6; its int8 file, a quarter of the bytes, was then printed
    # at level 9 on its own ("gzip 3,361 B" beside the fp32's level-6 figure): quantize_int8 measured it at the fp32
    # file's level, and the storage step measured it again at its own. The threshold is lowered to see it on a
    # small model: the fp32 file (26 kB) is then sized at level 6, the int8 one (9 kB) would get 9.
    import json

    from click.testing import CliRunner

    import sparsekit.onnx.files as files
    from sparsekit.cli import main

    monkeypatch.setattr(files, "GZIP9_MAX_BYTES", 12_000)
    out = tmp_path / "q.onnx"
    args = ["export", str(mlp_checkpoint), "--arch", "examples.models:mlp", "-o", str(out), "--quantize", "int8"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    assert res["fp32"]["bytes"] > 12_000 > res["bytes"] and res["gzip_level"] == 6
    at6 = files.onnx_sizes(out, 6)["gzip_bytes"]
    assert at6 != files.onnx_sizes(out, 9)["gzip_bytes"]
    assert res["gzip_bytes"] == res["int8"]["gzip_bytes"] == at6


def test_dict_calibration_batches_may_carry_labels(tmp_path, one_thread):
    # A dict batch, as dataset-style loaders yield, with its labels beside the model's input: onnxruntime was fed
    # every key and quantization failed with "Invalid input name: labels"; the (x, y) pair's y is ignored, so are
    # such keys now (and a text field, which could never be fed, no longer fails the batch either).
    export_onnx(nn.Sequential(nn.Linear(8, 4)), tmp_path / "m.onnx", [1, 8], exporter="torchscript")
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    name = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].name
    batches = [{name: x[:10], "labels": np.arange(10), "text": np.array(["a"] * 10)}, {name: x[10:], "labels": [0]}]
    info = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", calibration=batches)
    assert info["mode"] == "static" and info["calibration_batches"] == 2


def test_a_file_with_a_fixed_batch_is_calibrated_and_scored_on_loader_batches(tmp_path, one_thread):
    # torch.onnx.export without dynamic axes fixes the batch at the traced one (1): quantize_int8 with a DataLoader
    # of 16-sample batches failed ("Got: 16 Expected: 1"), and so did eval_data and onnx_accuracy on N samples.
    # Batches are now fed in slices of the fixed batch, and the scores match a sample-by-sample onnxruntime run.
    import onnxruntime as ort
    from torch.utils.data import DataLoader, TensorDataset

    from sparsekit.errors import ExportError
    from sparsekit.onnx import onnx_accuracy

    torch.manual_seed(0)
    path = tmp_path / "fixed1.onnx"
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    torch.onnx.export(model, (torch.randn(1, 4),), str(path), dynamo=False)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    xv, yv = x.numpy()[:37], y.numpy()[:37]  # not a multiple of any batch
    info = quantize_int8(path, tmp_path / "q.onnx", calibration=loader, eval_data=(xv, yv))

    def one_by_one(p):
        s = ort.InferenceSession(str(p))
        return np.array([s.run(None, {s.get_inputs()[0].name: xv[i : i + 1]})[0][0].argmax() for i in range(len(xv))])

    fp32, int8 = one_by_one(path), one_by_one(tmp_path / "q.onnx")
    ev = info["eval"]
    assert info["calibration_batches"] == 4 and ev["samples"] == 37
    assert ev["fp32_accuracy"] == pytest.approx(np.mean(fp32 == yv))
    assert ev["int8_accuracy"] == pytest.approx(np.mean(int8 == yv))
    assert ev["top1_agreement"] == pytest.approx(np.mean(fp32 == int8))
    assert onnx_accuracy(path, xv, yv) == pytest.approx(np.mean(fp32 == yv))
    # A batch smaller than the fixed one cannot be fed: said so, not onnxruntime's dimension error.
    fixed3 = tmp_path / "fixed3.onnx"
    torch.onnx.export(model, (torch.randn(3, 4),), str(fixed3), dynamo=False)
    with pytest.raises(ExportError, match="has 2 sample.* fixed at 3: give batches of 3 samples"):
        quantize_int8(fixed3, tmp_path / "q3.onnx", calibration=[x[:2].numpy()])
