from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import sparsekit.onnx.export as export_mod
from sparsekit.errors import ExportError
from sparsekit.onnx import check_zeros, count_initializer_stats, export_onnx, onnx_sizes


def mlp(hidden: int = 32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 5))


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)
    )
    bn = model[1]
    with torch.no_grad():  # non-trivial statistics, so a wrong BatchNorm fold would show in parity
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return model


def prune_(weight: torch.Tensor, fraction: float) -> int:
    """Zero the smallest ``fraction`` of a weight; returns the number of zeros."""
    with torch.no_grad():
        k = int(weight.numel() * fraction)
        idx = weight.abs().flatten().argsort()[:k]
        weight.view(-1)[idx] = 0.0
    return int((weight == 0).sum())


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize(("make", "shape"), [(mlp, [1, 20]), (cnn, [1, 3, 8, 8])], ids=["mlp", "cnn_bn"])
def test_export_matches_torch_with_dynamic_batch(tmp_path, capsys, exporter, make, shape):
    model = make()
    zeros = prune_(model[0].weight, 0.5)
    model.train()
    path = tmp_path / "m.onnx"

    info = export_onnx(model, path, shape, exporter=exporter)

    assert info["parity"]["ok"] and info["parity"]["max_abs_diff"] < 1e-5
    assert info["zeros"]["zeros_ok"]
    assert info["zeros"]["layers"][0]["torch_zeros"] == info["zeros"]["layers"][0]["onnx_zeros"] == zeros
    assert info["bytes"] == path.stat().st_size and info["gzip_bytes"] > 0
    assert model.training and model[1].training  # the caller's mode is restored
    assert capsys.readouterr().out == ""  # the dynamo exporter's progress lines stay off stdout
    assert info["opset"] == 18 and info["exporter"] == exporter and info["fallback"] is None
    assert next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) == 18

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["output"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # The exporter's debug metadata (stack traces, torch.export's signature) is not shipped.
    holders = [graph, *graph.input, *graph.output, *graph.value_info]
    assert not any(p.key.startswith("pkg.torch.") for h in holders for p in h.metadata_props)
    assert not any(len(n.metadata_props) for n in graph.node)
    x = torch.randn(3, *shape[1:])  # a batch size that was never traced
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x), expected, rtol=1e-4, atol=1e-5)


def test_ninety_percent_zeros_survive_and_shrink_gzip(tmp_path):
    dense, sparse = mlp(256), mlp(256)
    zeros = prune_(sparse[0].weight, 0.9)
    assert zeros == int(0.9 * 20 * 256)

    d = export_onnx(dense, tmp_path / "dense.onnx", [1, 20], exporter="torchscript")
    s = export_onnx(sparse, tmp_path / "sparse.onnx", [1, 20], exporter="torchscript")

    layer = s["zeros"]["layers"][0]
    assert s["zeros"]["zeros_ok"] and layer["torch_zeros"] == layer["onnx_zeros"] == zeros
    stats = count_initializer_stats(s["path"])
    total = sum(p.numel() for p in sparse.parameters())
    assert stats["params"] == total and stats["nonzero_params"] == total - zeros
    # ONNX stores dense tensors: the raw size barely moves, the compressed size is what shrinks.
    assert abs(s["bytes"] - d["bytes"]) < 0.02 * d["bytes"]
    assert s["gzip_bytes"] < 0.5 * d["gzip_bytes"]


def negative_zeros(path) -> int:
    """How many float32 initializers' elements of the ONNX file are -0.0 (the sign bit alone)."""
    model = onnx.load(str(path))
    return sum(
        int((np.frombuffer(t.raw_data, "<u4") == 0x80000000).sum())
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    )


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_zeros_are_stored_positive_and_compress_better(tmp_path, exporter):
    # A mask applied by multiplication leaves -0.0 where the weight was negative; a BatchNorm with a
    # negative scale folded into a conv turns +0.0 into -0.0. Equal values, worse gzip: stored as +0.0.
    model = cnn()
    with torch.no_grad():
        model[1].weight[:4] *= -1  # four channels with a negative BatchNorm scale
        for layer in (model[0], model[4]):
            w = layer.weight
            w.mul_(w.abs() > w.abs().flatten().kthvalue(int(0.9 * w.numel())).values)
    assert torch.signbit(model[4].weight[model[4].weight == 0]).any()
    x = torch.randn(2, 3, 8, 8)
    raw = tmp_path / "torch.onnx"  # torch's own export, for comparison: it keeps the signs
    torch.onnx.export(model.eval(), (x,), str(raw), dynamo=False)
    assert negative_zeros(raw) > 0

    info = export_onnx(model, tmp_path / "m.onnx", [1, 3, 8, 8], exporter=exporter)

    assert negative_zeros(info["path"]) == 0
    assert info["parity"]["ok"] and info["zeros"]["zeros_ok"]
    assert info["gzip_bytes"] < onnx_sizes(raw)["gzip_bytes"]
    got = run_onnx(info["path"], x)
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("make", "shape"), [(mlp, [1, 20]), (cnn, [1, 3, 8, 8])], ids=["name", "shape"])
def test_check_zeros_detects_tampered_initializer(tmp_path, make, shape):
    model = make()
    prune_(model[0].weight, 0.5)
    info = export_onnx(model, tmp_path / "m.onnx", shape, exporter="torchscript", check_parity=False)
    # The BatchNorm-folded conv weight gets its torch name back; renamed as an exporter may leave it
    # (`onnx::Conv_*`), it is matched by shape.
    target = info["zeros"]["layers"][0]["onnx_name"]
    assert target == "0.weight"

    proto = onnx.load(info["path"])
    if make is cnn:
        next(i for i in proto.graph.initializer if i.name == target).name = "onnx::Conv_7"
        for node in proto.graph.node:
            node.input[:] = ["onnx::Conv_7" if n == target else n for n in node.input]
        target = "onnx::Conv_7"
    init = next(i for i in proto.graph.initializer if i.name == target)
    arr = numpy_helper.to_array(init).copy()
    arr[arr == 0] = 1.0  # a "lost" mask: the zeros came back
    init.CopyFrom(numpy_helper.from_array(arr, target))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))

    result = check_zeros(model, tampered)
    assert not result["zeros_ok"]
    bad = result["layers"][0]
    assert not bad["ok"] and bad["onnx_zeros"] == 0 < bad["torch_zeros"]
    assert all(layer["ok"] for layer in result["layers"][1:])


def test_failed_export_leaves_nothing_behind(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous good file")
    with pytest.raises(ExportError, match=r"shape \[1, 21\]"):
        export_onnx(mlp(), path, [1, 21], exporter="torchscript")  # 21 features, model takes 20
    assert path.read_bytes() == b"previous good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]

    export_onnx(mlp(), path, [1, 20], exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files either


def test_large_model_uses_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)  # pretend every model is > 1.8 GB
    path = tmp_path / "m.onnx"
    info = export_onnx(mlp(), path, [1, 20])
    data = tmp_path / "m.onnx.data"
    assert data.is_file() and info["parity"]["ok"]
    assert info["bytes"] == path.stat().st_size + data.stat().st_size
    assert onnx_sizes(path) == {"bytes": info["bytes"], "gzip_bytes": info["gzip_bytes"], "gzip_level": 9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    with pytest.raises(ExportError, match="dynamo"):
        export_onnx(mlp(), tmp_path / "t.onnx", [1, 20], exporter="torchscript")


def test_external_data_zeros_are_stored_positive(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)  # pretend every model is > 1.8 GB
    model = mlp(64)
    with torch.no_grad():
        w = model[0].weight
        w.mul_(w.abs() > w.abs().median())  # a mask's multiply: -0.0 where the weight was negative
    assert torch.signbit(w[w == 0]).any()
    info = export_onnx(model, tmp_path / "m.onnx", [1, 20])
    data = np.fromfile(tmp_path / "m.onnx.data", dtype="<u4")
    assert info["parity"]["ok"] and info["zeros"]["zeros_ok"]
    assert int((data == 0).sum()) >= int((w == 0).sum()) and not (data == 0x80000000).any()


def test_positive_zeros_covers_every_float_type_and_constants():
    from onnx import helper

    from sparsekit.onnx.tensors import positive_zeros

    tensors = [
        numpy_helper.from_array(np.array([-0.0, 1.5, 0.0, -2.0], dtype=dtype), f"w_{np.dtype(dtype).name}")
        for dtype in (np.float32, np.float16, np.float64)
    ]
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array([-0.0], np.float32)))
    graph = helper.make_graph([const], "g", [], [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1])])
    graph.initializer.extend(tensors)
    model = helper.make_model(graph)

    assert positive_zeros(model) == 4  # one per initializer, one in the Constant
    for t in [*model.graph.initializer, model.graph.node[0].attribute[0].t]:
        values = numpy_helper.to_array(t)
        assert not np.signbit(values[values == 0]).any(), t.name
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), [0.0, 1.5, 0.0, -2.0])
    assert positive_zeros(model) == 0


@pytest.mark.parametrize("content", [b"", b"not an onnx model\n", b"\x00\x01garbage" * 10])
def test_non_onnx_file_is_an_export_error(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    for func in (onnx_sizes, count_initializer_stats, lambda p: check_zeros(mlp(), p)):
        with pytest.raises(ExportError, match="bad.onnx"):
            func(bad)
    with pytest.raises(ExportError, match="no such file"):
        onnx_sizes(tmp_path / "missing.onnx")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": [20]}, "batch dim"),
        ({"input_shape": [1, 0]}, "positive"),
        ({"input_shape": [1, 20], "exporter": "jit"}, "exporter must be"),
        ({"input_shape": [1, 20], "opset": "18"}, "opset must be an integer"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export_onnx(mlp(), tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_weight_without_zeros_may_be_unmatched(tmp_path):
    model = mlp()
    info = export_onnx(model, tmp_path / "m.onnx", [1, 20], exporter="torchscript", check_parity=False)
    extra = nn.Sequential(model, nn.Linear(5, 7))  # a layer that is not in the file and has no zeros
    result = check_zeros(extra, info["path"])
    assert result["zeros_ok"] and result["layers"][-1]["onnx_name"] is None
    prune_(extra[1].weight, 0.5)  # now it had zeros that the file cannot show
    assert not check_zeros(extra, info["path"])["zeros_ok"]
