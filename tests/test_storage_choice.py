"""choose_storage (the encoding of the shipped model.onnx) and weight_entropy (the bound it is
compared against): parity with torch, exact zeros, the smaller file after gzip, honest bounds."""

from __future__ import annotations

import gzip
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import sparsekit.onnx.sparse_storage as storage_mod
from examples.models import mlp
from sparsekit.errors import ExportError
from sparsekit.onnx import (
    choose_storage,
    count_params,
    entropy_bound_bytes,
    export_onnx,
    load_onnx,
    onnx_sizes,
    to_sparse_storage,
    weight_entropy,
)
from sparsekit.onnx.stats import _weight_arrays

RTOL, ATOL = 1e-4, 1e-5  # export_onnx's parity tolerance


def pruned_mlp(sparsity: float, seed: int = 0, hidden=(256, 128)) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = mlp(in_features=64, hidden=list(hidden)).eval()
    with torch.no_grad():  # per layer, so no layer is pruned away entirely (constant outputs)
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                w = m.weight.view(-1)
                w.mul_(w.abs() > w.abs().kthvalue(max(1, int(sparsity * w.numel()))).values)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``{sparsity: (torch model, dense-stored ONNX path)}``. Sparsities where sparse storage wins: the
    exporter stores every zero as +0.0, and then deflate codes a 90-95% sparse dense-stored file about as
    small as sparse initializers (LeNet-300-100: within 3%)."""
    folder = tmp_path_factory.mktemp("choice")
    out = {}
    for sparsity in (0.0, 0.98, 0.99):
        model = pruned_mlp(sparsity)
        path = folder / f"m{int(sparsity * 100)}.onnx"
        info = export_onnx(model, path, [1, 64], exporter="torchscript")
        assert info["parity"]["ok"] and info["zeros"]["zeros_ok"]
        out[sparsity] = (model, path)
    return out


def ort_run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def shipped_weights(path) -> dict[str, np.ndarray]:
    model = load_onnx(path)
    from sparsekit.onnx import densify

    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights.update({t.values.name: densify(t) for t in model.graph.sparse_initializer})
    return weights


@pytest.mark.parametrize("sparsity", [0.98, 0.99])
def test_auto_ships_sparse_when_smaller_with_parity_and_exact_zeros(exported, tmp_path, sparsity):
    model, src = exported[sparsity]
    out = tmp_path / "model.onnx"
    info = choose_storage(src, out)

    assert info["mode"] == "auto" and info["encoding"] == "sparse" and info["path"] == str(out)
    graph = onnx.load(str(out)).graph
    assert len(graph.sparse_initializer) == info["sparse"]["sparse_initializers"] > 0
    # Spec-valid: int64 indices, so onnx.checker accepts the shipped file.
    assert info["sparse"]["onnx_checker_ok"]
    onnx.checker.check_model(str(out))
    # Smaller after gzip than the alternative, and the sizes reported are the files' sizes.
    assert info["gzip_bytes"] == onnx_sizes(out)["gzip_bytes"] < info["dense"]["gzip_bytes"]
    assert info["dense"] == {k: v for k, v in onnx_sizes(src).items() if k != "gzip_level"}
    assert info["gzip_level"] == 9  # a small file: gzip -9 (sparsekit.onnx.files.gzip_level)
    assert info["gzip_bytes"] == pytest.approx(len(gzip.compress(out.read_bytes(), 9)), abs=32)  # header bytes
    # Loads in onnxruntime; outputs bit-identical to the dense file and within tolerance of torch.
    x = np.random.default_rng(3).standard_normal((17, 64), dtype=np.float32)
    got = ort_run(out, x)
    assert got.tobytes() == ort_run(src, x).tobytes() and info["outputs_identical"] is True
    want = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # Every zero exact, every weight the same value.
    stored = shipped_weights(out)
    for name, w in model.state_dict().items():
        if name.endswith("weight"):
            assert np.array_equal(stored[name] == 0, w.numpy() == 0), name
            assert np.array_equal(stored[name], w.numpy()), name
    # The bound is below what was shipped, and the ratios are the shipped gzip size over the bounds.
    assert info["entropy_bound_bytes"] < info["verbatim_bound_bytes"] < info["gzip_bytes"]
    assert info["bound_ratio"] == pytest.approx(info["gzip_bytes"] / weight_entropy(src)["bound_bytes"])


def test_auto_keeps_a_dense_model_dense_as_a_byte_copy(exported, tmp_path):
    _, src = exported[0.0]
    info = choose_storage(src, tmp_path / "model.onnx")
    assert info["encoding"] == "dense" and "no weight is smaller" in info["reason"]
    assert (tmp_path / "model.onnx").read_bytes() == src.read_bytes()
    assert info["gzip_bytes"] == info["dense"]["gzip_bytes"] and info["outputs_identical"] is True
    # Dense fp32 values compress a little (their exponents take few values): gzip lands under the
    # verbatim bound, but not under the entropy estimate.
    assert info["entropy_bound_bytes"] < info["gzip_bytes"]


def test_auto_writes_no_candidate_when_no_weight_would_go_sparse(exported, tmp_path, monkeypatch):
    # Re-saving and gzipping the same tensors cost ~3 s on a 135 MB model for a known answer.
    _, src = exported[0.0]

    def written(*a, **kw):
        raise AssertionError("a candidate was written")

    monkeypatch.setattr(storage_mod, "_write", written)
    info = choose_storage(src, tmp_path / "model.onnx")
    assert info["encoding"] == "dense" and info["reason"] == "no weight is smaller stored sparse"
    assert info["sparse"] is None and (tmp_path / "model.onnx").read_bytes() == src.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_auto_picks_dense_when_sparse_is_larger_after_gzip(exported, tmp_path, monkeypatch):
    _, src = exported[0.98]
    real = storage_mod.onnx_sizes

    def inflated(path, level=None):  # the candidate (in the staging folder) made to look bigger than dense
        sizes = real(path, level)
        return {**sizes, "gzip_bytes": sizes["gzip_bytes"] * 10} if ".tmp" in str(path) else sizes

    monkeypatch.setattr(storage_mod, "onnx_sizes", inflated)
    info = choose_storage(src, tmp_path / "model.onnx")
    assert info["encoding"] == "dense" and "not smaller after gzip" in info["reason"]
    assert (tmp_path / "model.onnx").read_bytes() == src.read_bytes()
    assert info["sparse"]["gzip_bytes"] > info["dense"]["gzip_bytes"]


def test_auto_falls_back_to_dense_when_the_candidate_fails_but_forced_sparse_raises(exported, tmp_path, monkeypatch):
    _, src = exported[0.98]

    def broken(*a, **kw):
        raise ExportError("onnxruntime cannot run the sparse-storage model: boom")

    monkeypatch.setattr(storage_mod, "_write", broken)  # writing and checking the candidate
    info = choose_storage(src, tmp_path / "a.onnx")
    assert info["encoding"] == "dense" and "boom" in info["reason"] and info["sparse"] is None
    assert (tmp_path / "a.onnx").read_bytes() == src.read_bytes()
    with pytest.raises(ExportError, match="boom"):
        choose_storage(src, tmp_path / "b.onnx", "sparse")
    assert not (tmp_path / "b.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]  # no staging folder left behind


def test_unverifiable_outputs_keep_auto_dense(exported, tmp_path, monkeypatch):
    _, src = exported[0.98]
    monkeypatch.setattr(storage_mod, "_verify", lambda a, b: {"ok": None, "reason": "symbolic dims"})
    info = choose_storage(src, tmp_path / "m.onnx")
    assert info["encoding"] == "dense" and "symbolic dims" in info["reason"]
    forced = choose_storage(src, tmp_path / "f.onnx", True)  # forced: shipped, and it says it is unchecked
    assert forced["encoding"] == "sparse" and forced["outputs_identical"] is None


@pytest.mark.parametrize(
    ("mode", "encoding"), [("dense", "dense"), (False, "dense"), ("sparse", "sparse"), (True, "sparse")]
)
def test_forced_modes(exported, tmp_path, mode, encoding):
    _, src = exported[0.0 if encoding == "dense" else 0.98]
    info = choose_storage(src, tmp_path / "m.onnx", mode)
    assert info["encoding"] == encoding and info["mode"] == encoding
    assert bool(onnx.load(str(tmp_path / "m.onnx")).graph.sparse_initializer) == (encoding == "sparse")
    x = np.random.default_rng(0).standard_normal((3, 64), dtype=np.float32)
    assert ort_run(tmp_path / "m.onnx", x).tobytes() == ort_run(src, x).tobytes()


@pytest.mark.parametrize("mode", ["sparse", True])
def test_forced_sparse_with_nothing_that_shrinks_sparse_stays_dense_and_says_so(exported, tmp_path, mode):
    # It reported encoding "sparse" for a re-saved dense file without one sparse initializer.
    _, src = exported[0.0]
    info = choose_storage(src, tmp_path / "m.onnx", mode)
    assert info["mode"] == "sparse" and info["encoding"] == "dense"
    assert info["reason"] == "no weight is smaller stored sparse"
    assert not onnx.load(str(tmp_path / "m.onnx")).graph.sparse_initializer
    assert (tmp_path / "m.onnx").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("mode", ["Auto", "on", "", None, 1, "sparse "])
def test_bad_modes_are_refused_before_any_work(exported, tmp_path, mode):
    _, src = exported[0.98]
    with pytest.raises(ExportError, match="auto, sparse, dense"):
        choose_storage(src, tmp_path / "m.onnx", mode)
    assert list(tmp_path.iterdir()) == []


def test_in_place_and_not_onnx(exported, tmp_path):
    _, src = exported[0.99]
    copy = tmp_path / "model.onnx"
    copy.write_bytes(src.read_bytes())
    info = choose_storage(copy, copy)  # what the pipeline does at the end: replace model.onnx
    assert info["encoding"] == "sparse" and onnx_sizes(copy)["gzip_bytes"] == info["gzip_bytes"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ExportError, match="bad.onnx"):
        choose_storage(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_bad_objective(exported, tmp_path):
    with pytest.raises(ExportError, match="objective"):
        to_sparse_storage(exported[0.98][1], tmp_path / "o.onnx", objective="zstd")


# --------------------------------------------------------------------------- the bound


def weights_model(tmp_path, arrays: dict[str, np.ndarray]):
    """An ONNX file whose graph sums Identity of each weight (so each is used) with these initializers."""
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in arrays]
    outs = [
        helper.make_tensor_value_info(f"{n}_out", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in arrays.items()
    ]
    graph = helper.make_graph(nodes, "g", [], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "w.onnx"
    onnx.save(model, str(path))
    return path


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sparsity=st.floats(0.0, 0.99),
    rows=st.integers(8, 300),
    cols=st.integers(8, 300),
    scale=st.sampled_from([1e-3, 0.05, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_bound_is_below_gzip_for_random_sparse_weights(tmp_path_factory, sparsity, rows, cols, scale, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    w[rng.random(w.shape) < sparsity] = 0.0
    bias = rng.standard_normal(cols).astype(np.float32)
    path = weights_model(tmp_path_factory.mktemp("b"), {"w": w, "b": bias})
    e = weight_entropy(path)
    # The estimate is a lower bound for the file as dense-stored, as gzip'd dense and as gzip'd sparse.
    assert e["bound_bytes"] <= e["verbatim_bound_bytes"] <= onnx_sizes(path)["bytes"]
    assert e["bound_bytes"] <= onnx_sizes(path)["gzip_bytes"]
    sparse = path.with_name("s.onnx")
    to_sparse_storage(path, sparse, verify=False)
    assert e["bound_bytes"] <= onnx_sizes(sparse)["gzip_bytes"]
    # Per-tensor density never charges more mask bits than one global density.
    n, k = w.size + bias.size, int(np.count_nonzero(w)) + int(np.count_nonzero(bias))
    assert e["verbatim_bound_bytes"] <= entropy_bound_bytes(n, k, 32) + 1e-6
    assert (e["params"], e["nonzero_params"]) == (n, k)


def test_bound_accounts_for_repeated_and_low_entropy_values(tmp_path):
    ones = np.ones((64, 64), np.float32)  # a LayerNorm scale never trained: gzip codes it in bytes
    levels = np.random.default_rng(0).choice(np.float32([-0.5, 0.25, 0.5]), size=(128, 128))
    path = weights_model(tmp_path, {"ones": ones, "levels": levels})
    e = weight_entropy(path)
    assert e["bound_bytes"] <= onnx_sizes(path)["gzip_bytes"]
    # ones: 32 bits once; levels: 3 values verbatim + log2(3) bits each (uniform draw, within 1%).
    assert e["value_bytes"] == pytest.approx(4 + 3 * 4 + 128 * 128 * math.log2(3) / 8, rel=0.01)
    assert e["mask_bytes"] == 0.0


def test_int8_weights_use_their_empirical_entropy(tmp_path):
    q = np.random.default_rng(0).integers(-3, 4, size=(50, 40)).astype(np.int8)  # 7 levels, ~2.8 bits
    inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(np.float32(0.1), "s"),
             numpy_helper.from_array(np.int8(0), "z")]  # fmt: skip
    node = helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"])
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, q.shape)], inits
    )
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    e = weight_entropy(path)
    nz = q[q != 0]
    _, counts = np.unique(nz, return_counts=True)
    p = counts / counts.sum()
    assert e["value_bytes"] == pytest.approx((nz.size * -(p * np.log2(p)).sum() + 6 * 8) / 8)
    assert e["params"] == q.size and e["verbatim_bound_bytes"] == pytest.approx(e["mask_bytes"] + nz.size)
    assert e["bound_bytes"] <= onnx_sizes(path)["gzip_bytes"]


def test_weights_are_chosen_as_count_params_chooses_them(exported, tmp_path):
    _, src = exported[0.98]
    for path in (src, to_sparse_storage(src, tmp_path / "s.onnx")["path"]):
        model = load_onnx(path)
        arrays = list(_weight_arrays(model))
        counted = count_params(model)
        assert (len(arrays), sum(a.size for a in arrays)) == (counted["tensors"], counted["params"])
        assert sum(int(np.count_nonzero(a)) for a in arrays) == counted["nonzero_params"]


def test_structured_nearly_dense_file_stays_above_the_bound(tmp_path):
    # Issue 13: a dense (structurally pruned) file's gzip size beat the old "bound" of 32 bits per value.
    model = pruned_mlp(0.0, hidden=(96, 48))
    src = tmp_path / "d.onnx"
    export_onnx(model, src, [1, 64], exporter="torchscript")
    e, sizes = weight_entropy(src), onnx_sizes(src)
    assert sizes["gzip_bytes"] < e["verbatim_bound_bytes"]  # gzip compresses fp32 exponents
    assert e["bound_bytes"] < sizes["gzip_bytes"]  # the estimate accounts for that


def test_both_files_are_compared_at_the_dense_files_gzip_level(over_16mib, tmp_path):
    # Dense-stored over 16 MiB (reported at gzip level 6), its sparse form under it (level 9 on its own): the
    # choice and the reported ratio must count both at one level, or sparse looks 1-2% smaller than it is.
    from sparsekit.onnx.files import gzip_size

    src = over_16mib
    info = choose_storage(src, tmp_path / "model.onnx")
    assert info["encoding"] == "sparse" and info["bytes"] < 16 << 20 < info["dense"]["bytes"]
    assert info["gzip_level"] == 6
    assert info["gzip_bytes"] == info["sparse"]["gzip_bytes"] == gzip_size([tmp_path / "model.onnx"], 6)
    assert f"{info['gzip_bytes'] / info['dense']['gzip_bytes']:.3f}x" in info["reason"]


@pytest.fixture(scope="module")
def over_16mib(tmp_path_factory):
    """A 2200x2000 float32 MatMul weight (17.6 MB, 95% zeros): over the 16 MiB where sizes switch to level 6."""
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    w = rng.standard_normal((2200, 2000)).astype(np.float32)
    w[np.abs(w) < np.quantile(np.abs(w), 0.95)] = 0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2200])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2000])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("big") / "dense.onnx"
    onnx.save(model, str(path))
    return path


def test_sizes_at_an_asked_level_share_the_files_own_computation(over_16mib, monkeypatch):
    from sparsekit.onnx import files

    files.clear_memo()
    calls = []
    real = files.gzip_size
    monkeypatch.setattr(files, "gzip_size", lambda f, level=None: calls.append(level) or real(f, level))
    own = files.onnx_sizes(over_16mib)
    assert own["gzip_level"] == 6 and files.onnx_sizes(over_16mib, 6) == own and calls == [6]
    at9 = files.onnx_sizes(over_16mib, 9)
    assert at9["gzip_level"] == 9 and at9["gzip_bytes"] < own["gzip_bytes"] and calls == [6, 9]
    with pytest.raises(ExportError, match="gzip level"):
        files.onnx_sizes(over_16mib, 10)


def test_an_int8_file_is_sized_at_its_fp32_files_level(over_16mib, tmp_path):
    from sparsekit.onnx import quantize_int8
    from sparsekit.onnx.files import gzip_size

    info = quantize_int8(over_16mib, tmp_path / "q.onnx")  # dynamic: no calibration data
    # The int8 file is under 16 MiB; on its own it would be counted at level 9, the fp32 one at 6.
    assert info["bytes"] < 16 << 20 < info["fp32_bytes"]
    assert info["gzip_bytes"] == gzip_size([tmp_path / "q.onnx"], 6)


def test_a_benchmark_sizes_every_file_at_the_largest_files_level(over_16mib, tmp_path):
    from sparsekit.onnx import benchmark

    small = tmp_path / "small.onnx"
    choose_storage(over_16mib, small, "sparse")  # the same weights stored sparse: 2.7 MB
    res = benchmark([over_16mib, small], batch_sizes=(1,), runs=2, warmup=0)
    assert [f["gzip_level"] for f in res["files"]] == [6, 6]
