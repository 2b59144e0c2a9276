"""Review (int8 angle, round 25): export, int8 and bench of users' own models and files."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from sparsekit.onnx import export_onnx

torch.set_num_threads(1)


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.h1, self.h2 = nn.Linear(8, 4), nn.Linear(8, 3)

    def forward(self, x):
        z = self.body(x)
        return self.h1(z), self.h2(z)


@pytest.mark.parametrize("opset", [17, 21])  # auto picks the TorchScript exporter at 17, dynamo at 21
def test_a_tuple_models_outputs_have_the_same_names_whatever_the_exporter(tmp_path, opset):
    torch.manual_seed(0)
    model = _TwoHeads().eval()
    path = tmp_path / "heads.onnx"
    export_onnx(model, path, (1, 6), opset=opset)
    # The second head was "16" (TorchScript) or "linear_2" (dynamo): a name that changed with the opset.
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["output", "output1"]
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["output1"], {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x))[1].numpy(), atol=1e-5)


def test_bench_asks_for_a_shape_of_the_files_own_rank_and_fixed_dims(tmp_path):
    from click.testing import CliRunner

    from sparsekit.cli import main

    conv = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten()).eval()
    path = tmp_path / "seq.onnx"
    axes = {"x": {0: "n", 2: "length"}}
    torch.onnx.export(conv, torch.randn(2, 3, 16), str(path), dynamo=False, input_names=["x"], dynamic_axes=axes)
    res = CliRunner().invoke(main, ["bench", str(path), "--runs", "1", "--warmup", "0", "-b", "1"])
    assert res.exit_code == 2, res.output
    # It said "e.g. --input-shape 1,3,32,32", a 4-D shape that the file's 3-D input then refused.
    assert "with a size for length: e.g. --input-shape 1,3,32\n" in res.output
    given = ["bench", str(path), "--runs", "1", "--warmup", "0", "-b", "1", "--input-shape", "1,3,32", "--json"]
    assert CliRunner().invoke(main, given).exit_code == 0


def test_the_per_tensor_retry_reads_the_batches_not_read_yet_as_the_first_attempt_did():
    from sparsekit.onnx.quantize import _Reader

    ids = onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", 5])
    batches = (np.arange(10).reshape(2, 5) + i for i in range(3))  # a generator: each batch given once
    first = _Reader(batches, [ids], limit=3)
    assert first.get_next() is not None  # the per-channel attempt failed after one batch
    retry = first.again()
    # The retry replays that batch, then reads the rest, which raised AttributeError ('ints' was not shared).
    feeds = [retry.get_next() for _ in range(3)]
    assert [f["ids"].dtype for f in feeds] == [np.int64] * 3
    assert [int(f["ids"][0, 0]) for f in feeds] == [0, 1, 2]
    assert retry.get_next() is None


def test_calibration_batches_of_the_wrong_feature_count_are_named_in_one_line(tmp_path):
    from sparsekit.errors import ExportError
    from sparsekit.onnx import quantize_int8

    torch.manual_seed(0)
    path = tmp_path / "a.onnx"
    export_onnx(nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3)), path, (1, 20))
    good = np.zeros((4, 20), np.float32)
    bad = np.zeros((4, 21), np.float32)
    # It was onnxruntime's "Got invalid dimensions for input: ... index: 1 Got: 21 Expected: 20" over three lines.
    with pytest.raises(ExportError) as err:
        quantize_int8(path, tmp_path / "q.onnx", [good, bad])
    assert str(err.value) == (
        "calibration batch 2 for input 'input' has shape [4, 21]; the model takes ['batch', 20]: give batches of "
        "the model's input"
    )
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize(
    ("labels", "said"),
    [
        (np.full(8, 0.5), r"eval_data: labels must be integer class indices .* float64 with values such as \[0\.5"),
        (np.eye(3)[np.arange(8) % 3], r"eval_data: labels of shape \[8, 3\] for 8 inputs; .*y\.argmax\(1\)"),
    ],
    ids=["fractions", "one-hot"],
)
def test_eval_labels_that_are_no_class_indices_are_refused_not_scored(tmp_path, labels, said):
    from sparsekit.errors import ExportError
    from sparsekit.onnx import quantize_int8

    torch.manual_seed(0)
    path = tmp_path / "a.onnx"
    export_onnx(nn.Sequential(nn.Linear(4, 3)), path, (1, 4))
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    # Fractions were compared with the argmax as they were: "accuracy 0.0", no word why.
    with pytest.raises(ExportError, match=said):
        quantize_int8(path, tmp_path / "q.onnx", [x], eval_data=(x, labels))
    whole = quantize_int8(path, tmp_path / "q.onnx", [x], eval_data=(x, np.arange(8.0) % 3))  # 0.0, 1.0: fine
    assert whole["eval"]["samples"] == 8 and whole["eval"]["fp32_accuracy"] is not None


def test_nan_calibration_or_eval_inputs_are_named_not_an_onnxruntime_assertion(tmp_path):
    from sparsekit.errors import ExportError
    from sparsekit.onnx import quantize_int8

    torch.manual_seed(0)
    path = tmp_path / "a.onnx"
    export_onnx(nn.Sequential(nn.Linear(4, 3)), path, (1, 4))
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    bad = x.copy()
    bad[2, 1] = np.nan
    # onnxruntime's "AssertionError: scale issue".
    with pytest.raises(ExportError, match=r"^calibration batch 2 for input 'input' holds NaN or infinite values"):
        quantize_int8(path, tmp_path / "q.onnx", [x, bad])
    # Every NaN row's argmax is class 0: scored as an accuracy.
    with pytest.raises(ExportError, match=r"^eval_data: the inputs hold NaN or infinite values"):
        quantize_int8(path, tmp_path / "q.onnx", [x], eval_data=(bad, np.zeros(8, np.int64)))
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("static", [False, True])
def test_the_int8_file_declares_only_the_operator_sets_its_nodes_use(tmp_path, static):
    from sparsekit.onnx import quantize_int8

    torch.manual_seed(0)
    path = tmp_path / "a.onnx"
    export_onnx(nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)), path, (1, 2, 5))
    x = np.random.default_rng(0).standard_normal((8, 2, 5)).astype(np.float32)
    out = tmp_path / "q.onnx"
    quantize_int8(path, out, [x] if static else None)
    model = onnx.load(str(out))
    # onnxruntime's pre-processing declared com.microsoft.nchwc, ai.onnx.training, org.pytorch.aten, ...: bytes
    # that made a small int8 file read larger than its fp32 model.
    used = {n.domain for n in model.graph.node} | {""}
    assert {o.domain for o in model.opset_import} == used
    onnx.checker.check_model(model)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.shape == (8, 3)


def test_export_of_an_onnx_file_says_how_to_quantize_one(tmp_path):
    from click.testing import CliRunner

    from sparsekit.cli import main

    path = tmp_path / "mine.onnx"
    export_onnx(nn.Sequential(nn.Linear(4, 3)), path, (1, 4))
    res = CliRunner().invoke(main, ["export", str(path), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8"])
    assert res.exit_code == 2
    # A user with their own ONNX file was told only what cannot read it, not what quantizes it.
    assert "sparsekit.onnx.quantize_int8(FILE, OUT, calibration) makes an int8 model of one" in res.output
    assert not (tmp_path / "q.onnx").exists()


def test_a_batchnorm_without_running_stats_is_named_not_the_input_shape(tmp_path):
    from click.testing import CliRunner

    from sparsekit.cli import main

    state = tmp_path / "bn_state.pt"
    torch.save(_bn_nostats().state_dict(), state)
    args = ["export", str(state), "--arch", "tests.test_review_int8_25:_bn_nostats", "-o", str(tmp_path / "o.onnx")]
    res = CliRunner().invoke(main, [*args, "--input-shape", "1,20"])
    assert res.exit_code == 2, res.output
    # It said "--input-shape [1, 20]: the model does not accept it ...; give the shape it takes", of the right shape.
    assert "BatchNorm layer(s) '1' keep no running statistics (track_running_stats=False)" in res.output
    assert "give the shape it takes" not in res.output
    assert not (tmp_path / "o.onnx").exists()


def _bn_nostats() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.ReLU(), nn.Linear(16, 5))
