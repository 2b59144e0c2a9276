from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from examples.models import mlp
from sparsekit.data import load_data
from sparsekit.errors import ExportError
from sparsekit.onnx import (
    entropy_bound_bytes,
    export_onnx,
    onnx_accuracy,
    onnx_sizes,
    quantize_int8,
    quantized_zeros,
    top1_agreement,
)


def prune_global_(model: torch.nn.Module, fraction: float) -> None:
    """Zero the globally smallest ``fraction`` of all Linear weights (magnitude pruning)."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        scores = torch.cat([w.abs().flatten() for w in weights])
        threshold = scores.kthvalue(int(fraction * scores.numel())).values
        for w in weights:
            w[w.abs() <= threshold] = 0.0


def batches(n: int, features: int = 64, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((size, features), dtype=np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def pruned_mlp(tmp_path_factory):
    """An untrained digits-sized MLP, 80% pruned, exported to fp32 ONNX.

    Positive weights are doubled so each row's range is lopsided ([-a, 2a]): asymmetric quantization
    would then pick a nonzero zero point, which the zero checks must catch (with the symmetric
    init, an asymmetric zero point rounds to 0 and a wrong setting would go unnoticed).
    """
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=[128, 64])
    prune_global_(model, 0.8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight[m.weight > 0] *= 2
    path = tmp_path_factory.mktemp("q") / "pruned.onnx"
    export_onnx(model, path, [1, 64], exporter="torchscript")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits MLP trained briefly, pruned 80% and fine-tuned with the mask held; ONNX + val data."""
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=[64, 32])
    data = load_data("digits", batch_size=64, seed=0, input_shape=[1, 64])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only add contention (10x slower on a busy box)
    for epoch in range(6):
        if epoch == 3:
            prune_global_(model, 0.8)
            masks = [(m.weight, m.weight != 0) for m in model.modules() if isinstance(m, torch.nn.Linear)]
        for x, y in data.train:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if epoch >= 3:
                with torch.no_grad():
                    for w, mask in masks:
                        w.mul_(mask)
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("trained") / "model.onnx"
    export_onnx(model, path, [1, 64], exporter="torchscript")
    x_val = torch.cat([x for x, _ in data.val]).numpy()
    y_val = torch.cat([y for _, y in data.val]).numpy()
    return {"path": path, "model": model, "train": data.train, "x": x_val, "y": y_val}


def int8_weights(path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}


def dequantize_inputs(graph, quantized: str) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    """The scale and zero point initializers of the DequantizeLinear that reads ``quantized``, found by the graph's
    structure (the file's names for them are short, arbitrary ones)."""
    inits = {t.name: t for t in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantized)
    return inits[node.input[1]], inits[node.input[2]]


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_static_int8_keeps_every_pruned_weight_exactly_zero(pruned_mlp, tmp_path, capsys, per_channel):
    out = tmp_path / "int8.onnx"
    info = quantize_int8(pruned_mlp, out, calibration=batches(4), per_channel=per_channel)

    assert capsys.readouterr().out == ""  # stdout stays clean for --json
    assert info["mode"] == "static" and info["calibration_batches"] == 4 and info["path"] == str(out)
    assert info["per_channel"] is per_channel
    assert info["zeros"]["zeros_ok"]
    graph = onnx.load(str(out)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # QDQ format
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(pruned_mlp)).graph.initializer}
    q = int8_weights(out)
    for layer in info["zeros"]["layers"]:
        name = layer["name"]
        w, qw = fp32[name], q[f"{name}_quantized"]
        # Checked on the file, independently of quantized_zeros: every pruned weight is the integer 0
        # and its zero point is 0, so it dequantizes to exactly 0.0.
        assert np.all(qw[w == 0] == 0)
        assert np.all(numpy_helper.to_array(dequantize_inputs(graph, f"{name}_quantized")[1]) == 0)
        assert layer["fp32_zeros"] == int((w == 0).sum()) > 0
        assert layer["int8_zeros"] == int((qw == 0).sum()) >= layer["fp32_zeros"]
        assert layer["zero_point_zero"] and layer["ok"]
    # Per-channel: one scale per output row of the first layer. (onnxruntime makes per-channel int8
    # weights symmetric on its own; per-tensor ones are symmetric only because we ask for it.)
    scale = dequantize_inputs(graph, "fc1.weight_quantized")[0]
    assert list(scale.dims) == ([128] if per_channel else [])
    assert info["bytes"] == onnx_sizes(out)["bytes"] < info["fp32_bytes"] / 2  # small model: scales add up
    assert info["gzip_bytes"] < info["fp32_gzip_bytes"]
    assert info["bytes_per_nonzero"] == pytest.approx(info["bytes"] / info["nonzero_params"])


def test_nonzero_weight_zero_point_is_detected(pruned_mlp, tmp_path):
    good = tmp_path / "good.onnx"
    quantize_int8(pruned_mlp, good, calibration=batches(2))
    model = onnx.load(str(good))
    zp = dequantize_inputs(model.graph, "fc2.weight_quantized")[1]
    zp.CopyFrom(numpy_helper.from_array(np.ones(zp.dims, np.int8), zp.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))

    report = quantized_zeros(pruned_mlp, bad)

    # The stored integers at pruned positions are still 0, but with zero point 1 they dequantize
    # to -scale, not 0: the check must look at the zero point, not just the stored zeros.
    layers = {r["name"]: r for r in report["layers"]}
    assert not report["zeros_ok"]
    assert layers["fc2.weight"]["zero_point_zero"] is False and not layers["fc2.weight"]["ok"]
    assert layers["fc2.weight"]["int8_zeros"] >= layers["fc2.weight"]["fp32_zeros"]
    assert layers["fc1.weight"]["ok"] and layers["fc3.weight"]["ok"]
    assert quantized_zeros(pruned_mlp, good)["zeros_ok"]


def test_asymmetric_quantization_is_detected(pruned_mlp, tmp_path):
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches(2))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    bad = tmp_path / "asym.onnx"
    # What quantize_int8 must not do: asymmetric uint8 weights, where a pruned weight is stored as
    # its row's zero point (~128), so zeros neither read as 0 nor compress as 0.
    quantize_static(
        str(pruned_mlp), str(bad), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QUInt8, activation_type=QuantType.QUInt8,
        extra_options={"WeightSymmetric": False},
    )  # fmt: skip

    report = quantized_zeros(pruned_mlp, bad)

    assert not report["zeros_ok"]
    fc1 = next(r for r in report["layers"] if r["name"] == "fc1.weight")
    assert fc1["quantized_name"] == "fc1.weight_quantized"
    assert fc1["zero_point_zero"] is False and not fc1["ok"]
    assert fc1["int8_zeros"] < fc1["fp32_zeros"]


def test_dynamic_quantization_without_calibration(pruned_mlp, tmp_path):
    out = tmp_path / "dyn.onnx"
    info = quantize_int8(pruned_mlp, out, calibration=None)

    assert info["mode"] == "dynamic" and info["calibration_batches"] is None
    assert info["latency_note"] is None  # MatMulInteger: no slow convolution to warn of
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert info["zeros"]["zeros_ok"]
    # Dynamic MatMul weights are stored transposed; the zeros must line up after un-transposing.
    layers = {r["name"]: r for r in info["zeros"]["layers"]}
    assert layers["fc1.weight"]["quantized_name"] == "fc1.weight_Transposed_quantized"
    assert all(r["int8_zeros"] >= r["fp32_zeros"] > 0 for r in layers.values())
    x = batches(1, size=200, seed=1)[0]
    assert top1_agreement(pruned_mlp, out, x) > 0.9


def test_int8_agrees_with_fp32_on_a_trained_model(trained, tmp_path):
    out = tmp_path / "int8.onnx"
    # A DataLoader of (x, y) batches is accepted as calibration data as is.
    info = quantize_int8(trained["path"], out, calibration=trained["train"], eval_data=(trained["x"], trained["y"]))

    with torch.no_grad():
        torch_acc = float((trained["model"](torch.from_numpy(trained["x"])).argmax(1).numpy() == trained["y"]).mean())
    fp32_acc = onnx_accuracy(trained["path"], trained["x"], trained["y"], batch_size=50)
    assert fp32_acc == pytest.approx(torch_acc, abs=1e-9)
    assert fp32_acc > 0.85  # trained, so the agreement below is about real decisions
    ev = info["eval"]
    assert ev["fp32_accuracy"] == pytest.approx(fp32_acc)
    assert ev["top1_agreement"] == top1_agreement(trained["path"], out, trained["x"]) >= 0.97
    assert abs(ev["int8_accuracy"] - ev["fp32_accuracy"]) <= 0.03
    assert info["zeros"]["zeros_ok"]


def test_calibration_batches_are_capped(pruned_mlp, tmp_path):
    info = quantize_int8(pruned_mlp, tmp_path / "q.onnx", calibration=iter(batches(10)), max_calibration_batches=3)
    assert info["calibration_batches"] == 3


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all \x00\x01\x02", b"\x08\x07" * 100])
def test_non_onnx_file_is_an_export_error(tmp_path, content):
    src = tmp_path / "model.onnx"
    src.write_bytes(content)
    out = tmp_path / "out.onnx"
    with pytest.raises(ExportError, match="model.onnx"):
        quantize_int8(src, out, calibration=None)
    assert not out.exists()
    with pytest.raises(ExportError, match="no such file"):
        quantize_int8(tmp_path / "missing.onnx", out)


@pytest.mark.parametrize(
    ("calibration", "match"),
    [([], "empty"), ([np.zeros((4, 8, 8), np.float32)], "rank"), (np.zeros((4, 64), np.float32), "iterable")],
    ids=["empty", "wrong-rank", "bare-array"],
)
def test_bad_calibration_data_is_an_export_error(pruned_mlp, tmp_path, calibration, match):
    out = tmp_path / "out.onnx"
    with pytest.raises(ExportError, match=match):
        quantize_int8(pruned_mlp, out, calibration=calibration)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging leftovers


def test_wrong_feature_count_in_calibration_is_an_export_error(pruned_mlp, tmp_path):
    with pytest.raises(ExportError, match=r"has shape \[4, 10\]; the model takes \['batch', 64\]"):
        quantize_int8(pruned_mlp, tmp_path / "out.onnx", calibration=[np.zeros((4, 10), np.float32)])
    assert list(tmp_path.iterdir()) == []


def test_accuracy_helpers_check_their_inputs(pruned_mlp):
    x = batches(1, size=10)[0]
    with pytest.raises(ExportError, match="labels"):
        onnx_accuracy(pruned_mlp, x, np.zeros(9, np.int64), 4)
    with pytest.raises(ExportError, match="cannot run"):
        top1_agreement(pruned_mlp, pruned_mlp, np.zeros((3, 5), np.float32))
    assert top1_agreement(pruned_mlp, pruned_mlp, x, batch_size=3) == 1.0


def test_entropy_bound():
    n = 266_200
    # 90% sparse: 0.1 * 32 value bits + H(0.1) = 0.469 mask bits per weight, over 32 bits dense.
    fp32 = entropy_bound_bytes(n, n // 10, 32) / (4 * n)
    int8 = entropy_bound_bytes(n, n // 10, 8) / (4 * n)
    h = -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))
    assert fp32 == pytest.approx((3.2 + h) / 32, rel=1e-4) and 0.114 < fp32 < 0.116
    assert int8 == pytest.approx((0.8 + h) / 32, rel=1e-4) and 0.039 < int8 < 0.041
    assert entropy_bound_bytes(100, 0, 32) == 0.0
    assert entropy_bound_bytes(100, 100, 32) == 400.0
    with pytest.raises(ValueError):
        entropy_bound_bytes(10, 11, 8)


def test_dynamic_zero_check_on_square_weights(tmp_path):
    """Dynamic MatMul weights are stored transposed; a square one must still be compared transposed."""
    import sparsekit
    from sparsekit.onnx import quantize_int8

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10)
    )
    recipe = sparsekit.Recipe(pruning=[{"method": "magnitude", "sparsity": 0.8, "schedule": "oneshot"}])
    model = sparsekit.Pruner(model, recipe, steps_per_epoch=1).finalize()
    sparsekit.export_onnx(model, tmp_path / "m.onnx", [1, 64], exporter="torchscript")
    res = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx")
    assert res["mode"] == "dynamic"
    square = next(row for row in res["zeros"]["layers"] if row["name"] == "2.weight")
    assert square["fp32_zeros"] > 1000 and square["ok"] and square["int8_zeros"] >= square["fp32_zeros"]
    assert res["zeros"]["zeros_ok"]


def test_constants_without_zeros_do_not_fail_the_zero_check(tmp_path):
    """Found by review: GroupNorm's affine constants are quantized with a nonzero zero point; they hold no
    zeros to keep, so the check must not report the pruned model's zeros as lost."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 16, 5),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[0].weight[:, :, 0] = 0
        model[4].weight[:, ::2] = 0
    export_onnx(model, tmp_path / "m.onnx", [1, 2, 16], exporter="torchscript")
    calibration = [np.random.default_rng(0).standard_normal([8, 2, 16]).astype(np.float32)]
    q = quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", calibration=calibration)
    assert q["zeros"]["zeros_ok"], [r for r in q["zeros"]["layers"] if not r["ok"]]
    assert q["zeros"]["int8_zeros"] >= q["zeros"]["fp32_zeros"] > 0


def test_dynamic_int8_of_a_cnn_says_it_is_smaller_not_faster(tmp_path):
    """Dynamic quantization writes ConvInteger, which onnxruntime's CPU provider runs 8-16x slower than fp32
    (benchmarks in the README): the result says so; a static (calibrated) one has no such note."""
    import sparsekit
    from sparsekit.onnx import quantize_int8

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)
    )
    sparsekit.export_onnx(model, tmp_path / "c.onnx", [1, 1, 8, 8], exporter="torchscript")
    dyn = quantize_int8(tmp_path / "c.onnx", tmp_path / "d.onnx")
    assert "ConvInteger" in {n.op_type for n in onnx.load(str(tmp_path / "d.onnx")).graph.node}
    assert "ConvInteger" in dyn["latency_note"] and "static" in dyn["latency_note"]
    calibration = [np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32) for _ in range(2)]
    static = quantize_int8(tmp_path / "c.onnx", tmp_path / "s.onnx", calibration=calibration)
    assert static["latency_note"] is None


def test_static_int8_file_keeps_float_biases_short_names_and_onnxruntimes_fusions(tmp_path):
    """The int8 file holds float biases (no int32 copy with a scale and zero point per channel), short names for
    what no reader looks up (the weights and the graph's input and output keep theirs) and no inferred shapes;
    onnxruntime still fuses every Conv and Gemm into its int8 kernels, and the outputs are those of the file
    onnxruntime's quantizer writes with its defaults (int32 biases, its own names), which is larger."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 10)
    )
    export_onnx(model, tmp_path / "c.onnx", [1, 1, 8, 8], exporter="torchscript")
    calibration = [np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32) for _ in range(2)]
    info = quantize_int8(tmp_path / "c.onnx", tmp_path / "q.onnx", calibration=calibration)
    assert info["zeros"]["zeros_ok"]
    m = onnx.load(str(tmp_path / "q.onnx"))
    fp32 = onnx.load(str(tmp_path / "c.onnx")).graph
    types = {t.name: t.data_type for t in m.graph.initializer}
    assert onnx.TensorProto.INT32 not in types.values()
    assert {"0.weight_quantized", "3.weight_quantized"} <= set(types)
    assert [v.name for v in m.graph.input] == [v.name for v in fp32.input]
    assert [v.name for v in m.graph.output] == [v.name for v in fp32.output]
    weights = {n for n in types if n.endswith("_quantized")}
    assert all(len(n) <= 3 for node in m.graph.node for n in [*node.input, *node.output, node.name]
               if n not in weights | {v.name for v in [*m.graph.input, *m.graph.output]})  # fmt: skip
    assert len(m.graph.value_info) == 0
    onnx.checker.check_model(m, full_check=True)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops and not ops & {"Conv", "Gemm", "MatMul"}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{fp32.input[0].name: b} for b in calibration])

        def get_next(self):
            return next(self.batches, None)

    quant_pre_process(str(tmp_path / "c.onnx"), str(tmp_path / "pre.onnx"))
    quantize_static(
        str(tmp_path / "pre.onnx"), str(tmp_path / "default.onnx"), Reader(), quant_format=QuantFormat.QDQ,
        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=True,
        calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True},
    )  # fmt: skip
    assert info["bytes"] < (tmp_path / "default.onnx").stat().st_size
    x = np.random.default_rng(1).standard_normal((8, 1, 8, 8)).astype(np.float32)
    outs = []
    for name in ("q.onnx", "default.onnx"):
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_short_names_never_take_a_name_that_stays(tmp_path):
    """A graph whose input and weight are named like the short names ("0", "1"): the renamed file is still valid
    (no value defined twice) and computes the same."""
    import onnxruntime as ort

    from sparsekit.onnx.quantize import _short_names

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "1")
    b = numpy_helper.from_array(np.ones(3, np.float32), "a_long_bias_name")
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Gemm", ["0", "1", "a_long_bias_name"], ["a_long_hidden_name"], transB=1),
            onnx.helper.make_node("Relu", ["a_long_hidden_name"], ["2"]),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("0", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.helper.make_tensor_value_info("2", onnx.TensorProto.FLOAT, [2, 3])],
        [w, b],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    _short_names(renamed.graph)
    onnx.checker.check_model(renamed, full_check=True)
    names = [n for node in renamed.graph.node for n in node.output]
    assert len(names) == len(set(names)) and "a_long_hidden_name" not in names
    assert {t.name for t in renamed.graph.initializer} >= {"1"} and "a_long_bias_name" not in str(renamed)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    outs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"0": x})[0]
        for m in (model, renamed)
    ]
    np.testing.assert_array_equal(outs[0], outs[1])


class _Residual(torch.nn.Module):
    """A ResNet basic block with a 1x1 projection shortcut, then pooling and a head (as examples.models'
    resnet_small has three of)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.conv2 = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 1), torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))
        return self.head(y.mean(dim=(2, 3)))


def _optimized_ops(path, tmp_path) -> list[str]:
    """The op types of the graph onnxruntime's CPU provider runs for the file at ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_static_int8_of_a_residual_cnn_runs_every_layer_in_int8(tmp_path):
    """Calibrated int8 of a residual block: onnxruntime fuses every Conv and the Gemm into its int8 kernels (with
    int8 activations it left the first conv and the shortcut as DequantizeLinear + fp32 Conv, which ran
    resnet_small 1.7x slower than fp32), and the outputs stay close to fp32's."""
    torch.manual_seed(0)
    model = _Residual().eval()
    with torch.no_grad():  # BatchNorm statistics other than 0/1, as a trained model has
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    export_onnx(model, tmp_path / "r.onnx", [1, 1, 8, 8], exporter="torchscript")
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((8, 1, 8, 8), dtype=np.float32) for _ in range(4)]
    info = quantize_int8(tmp_path / "r.onnx", tmp_path / "q.onnx", calibration=calibration)
    assert info["zeros"]["zeros_ok"]
    ops = _optimized_ops(tmp_path / "q.onnx", tmp_path)
    assert ops.count("QLinearConv") == 3 and ops.count("QGemm") == 1, ops
    assert not {"Conv", "Gemm", "MatMul"} & set(ops), ops
    x = rng.standard_normal((16, 1, 8, 8), dtype=np.float32)
    agreement = top1_agreement(tmp_path / "r.onnx", tmp_path / "q.onnx", x)
    assert agreement >= 0.9


def test_static_int8_sums_do_not_saturate(tmp_path):
    """A layer whose int8 products are all large and of one sign: onnxruntime's uint8 x int8 kernels on x86 CPUs
    without VNNI add pairs of products in 16 bits, which 8-bit weights overflow (255 * 127 * 2 > 2^15; the sum is
    clamped) and 7-bit ones cannot. The int8 output stays within a few quantization steps of fp32's. (On a CPU
    with VNNI no pair is clamped whatever the weights: there this test passes either way.)"""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.uniform_(0.9, 1.0)  # every weight quantizes to the top of its row's range
        model[0].bias.zero_()
    export_onnx(model, tmp_path / "s.onnx", [1, 64], exporter="torchscript")
    rng = np.random.default_rng(0)
    # inputs in [0, 1], the all-ones one among them: every calibrated range reaches what that input gives
    calibration = [rng.uniform(0.0, 1.0, (8, 64)).astype(np.float32) for _ in range(4)]
    calibration.append(np.ones((1, 64), np.float32))
    info = quantize_int8(tmp_path / "s.onnx", tmp_path / "q.onnx", calibration=calibration)
    assert info["zeros"]["zeros_ok"]
    x = rng.uniform(0.95, 1.0, (32, 64)).astype(np.float32)  # near the calibrated maximum: activations near 255
    import onnxruntime as ort

    outs = []
    for name in ("s.onnx", "q.onnx"):
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    scale = float(np.abs(outs[0]).max())
    assert float(np.abs(outs[1] - outs[0]).max()) <= 0.05 * scale, (outs[0][:2], outs[1][:2])


class _TiedAutoencoder(torch.nn.Module):
    """An encoder whose decoder is its own weight transposed (read along two axes: no per-channel scale fits both)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.enc(x))
        return self.head(torch.nn.functional.linear(h, self.enc.weight.t()))


def test_per_tensor_fallback_calibrates_on_the_same_batches_from_a_generator(tmp_path):
    """Per-channel quantization fails on a weight read along two axes; the per-tensor retry calibrates on the very
    batches the first attempt read, even when they come from a generator (as quantize_on_data passes them), which
    gives them only once (it said "calibration data is empty")."""
    torch.manual_seed(0)
    export_onnx(_TiedAutoencoder(), tmp_path / "t.onnx", [1, 64], exporter="torchscript")
    data = batches(3, size=8)
    seen = []

    def once():
        for b in data:
            seen.append(b)
            yield b

    info = quantize_int8(tmp_path / "t.onnx", tmp_path / "q.onnx", calibration=once())
    assert info["per_channel"] is False and "per-tensor" in info["fallback"]
    assert info["calibration_batches"] == 3 and len(seen) == 3  # each batch read once, used by both attempts
    quantize_int8(tmp_path / "t.onnx", tmp_path / "l.onnx", calibration=data)  # the same batches as a list
    a, b = onnx.load(str(tmp_path / "q.onnx")), onnx.load(str(tmp_path / "l.onnx"))
    assert {t.name: t.raw_data for t in a.graph.initializer} == {t.name: t.raw_data for t in b.graph.initializer}


class _EmbeddingFirst(torch.nn.Module):
    """An embedding as the first output (``width`` values), the 10 class scores second; ``alone``: the embedding
    only."""

    def __init__(self, width=8, alone=False):
        super().__init__()
        self.body, self.head, self.alone = torch.nn.Linear(16, width), torch.nn.Linear(width, 10), alone

    def forward(self, x):
        e = torch.relu(self.body(x))
        return e if self.alone else (e, self.head(e))


def test_an_output_narrower_than_the_classes_is_not_scored(tmp_path):
    # export --quantize int8 --data printed an "accuracy" of an 8-wide embedding against labels 0..9 (0.0056),
    # where prune and validate refuse that pairing.
    torch.manual_seed(0)
    export_onnx(_EmbeddingFirst(alone=True), tmp_path / "m.onnx", [1, 16], exporter="torchscript")
    x = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    y = np.arange(40) % 10
    info = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", calibration=[x[:20]], eval_data=(x, y))
    ev = info["eval"]
    assert ev["fp32_accuracy"] is None and ev["int8_accuracy"] is None and ev["top1_agreement"] is None
    assert "has 8 values per sample, fewer than the data's 10 classes" in ev["note"]
    scored = quantize_int8(tmp_path / "m.onnx", tmp_path / "q2.onnx", calibration=[x[:20]], eval_data=(x, y % 8))
    assert scored["eval"]["fp32_accuracy"] is not None  # labels an 8-wide output can hold: scored as before


@pytest.mark.parametrize("width", [8, 32])
def test_one_of_several_outputs_is_not_scored_whatever_its_width(tmp_path, width):
    # A 32-wide embedding first, the 10 class scores second: its argmax against labels 0..9 was printed as an
    # int8 "accuracy" (0.0000). Which output holds the classes is not known, so none is scored.
    torch.manual_seed(0)
    export_onnx(_EmbeddingFirst(width), tmp_path / "m.onnx", [1, 16], exporter="torchscript")
    x = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    info = quantize_int8(
        tmp_path / "m.onnx", tmp_path / "q.onnx", calibration=[x[:20]], eval_data=(x, np.arange(40) % 10)
    )
    ev = info["eval"]
    assert ev["fp32_accuracy"] is None and ev["int8_accuracy"] is None and ev["top1_agreement"] is None
    assert "the model has 2 outputs" in ev["note"] and len(ev["outputs"]) == 2
