"""`sparsekit export -o FILE.onnx --quantize int8`: the file at -o is the int8 model; the fp32 model it
was quantized from is written (as FILE.fp32.onnx) only with --keep-fp32, and no file sparsekit did not
write is replaced (issue 12, "Export naming")."""

from __future__ import annotations

import json
import os

import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input
from onnx import TensorProto

import sparsekit
from examples.models import lenet_300_100, mlp
from sparsekit.cli import _sparse_storage_line, main
from sparsekit.errors import ExportError
from sparsekit.onnx import written_by_sparsekit
from sparsekit.onnx.export import export_int8

LENET = ("--arch", "examples.models:lenet_300_100", "--exporter", "torchscript")
# LeNet-300-100's Linear weights, as torch stores them ([out, in]) or transposed (MatMul's layout).
LENET_WEIGHTS = {(300, 784), (100, 300), (10, 100)}


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """A seeded LeNet-300-100 with 90% of each weight pruned to zero, saved as a sparsekit checkpoint."""
    torch.manual_seed(0)
    model = lenet_300_100()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p[p.abs() <= p.abs().flatten().kthvalue(int(0.9 * p.numel())).values] = 0.0
    path = tmp_path_factory.mktemp("lenet") / "lenet.pt"
    sparsekit.save_model(model, path, "examples.models:lenet_300_100", input_shape=[1, 784])
    return path


def weight_types(path) -> dict[tuple[int, ...], int]:
    """Element type of each weight matrix (rank-2 initializer) of the ONNX file, by its torch shape."""
    graph = onnx.load(str(path)).graph
    out = {}
    for t in graph.initializer:
        if len(t.dims) == 2:
            shape = tuple(t.dims) if tuple(t.dims) in LENET_WEIGHTS else tuple(t.dims)[::-1]
            out[shape] = t.data_type
    return out


def op_types(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_int8_is_written_at_o_and_fp32_only_on_request(tmp_path, lenet):
    q = tmp_path / "q.onnx"
    # Dynamic (no --data): only q.onnx appears.
    result = run("export", lenet, *LENET, "-o", q, "--quantize", "int8", "--json")
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    assert listing(tmp_path) == ["q.onnx"]  # no fp32 copy, no q.int8.onnx, no temp files
    assert weight_types(q) == dict.fromkeys(LENET_WEIGHTS, TensorProto.INT8)
    assert "MatMulInteger" in op_types(q) and written_by_sparsekit(q)
    assert res["int8"]["path"] == str(q) and res["int8"]["mode"] == "dynamic"
    # The top level is the file at -o, as without --quantize; the fp32 model was not kept.
    assert res["path"] == str(q) and res["bytes"] == q.stat().st_size and res["fp32"]["path"] is None
    assert res["fp32"]["bytes"] > 3 * res["bytes"]
    assert res["int8"]["bytes"] == q.stat().st_size and res["int8"]["zeros"]["zeros_ok"]
    assert res["parity"]["ok"] and res["zeros"]["zeros_ok"]  # the fp32 export was checked all the same
    # int8 zeros stored sparsely are larger after gzip than int8 stored densely: auto keeps it dense.
    assert res["storage"]["encoding"] == "dense" and res["storage"]["bytes"] == q.stat().st_size
    # --storage sparse stores the file at -o, so the int8 weights, sparsely.
    qs = tmp_path / "sub" / "qs.onnx"
    qs.parent.mkdir()
    result = run("export", lenet, *LENET, "-o", qs, "--quantize", "int8", "--storage", "sparse", "--json")
    assert result.exit_code == 0, result.stderr
    assert listing(qs.parent) == ["qs.onnx"]
    sparse = onnx.load(str(qs)).graph.sparse_initializer
    assert {t.values.data_type for t in sparse if len(t.dims) == 2} == {TensorProto.INT8}

    # Static with --data and --keep-fp32: q.onnx (sparsekit's) is replaced by the new int8 model, and the
    # fp32 model appears beside it; parity and accuracy are reported as for any int8 export.
    before = q.stat().st_ino
    result = run("export", lenet, *LENET, "-o", q, "--quantize", "int8", "--data", "mnist5k", "--keep-fp32")
    assert result.exit_code == 0, result.stderr
    fp32 = tmp_path / "q.fp32.onnx"
    assert listing(tmp_path) == ["q.fp32.onnx", "q.onnx", "sub"]
    assert q.stat().st_ino != before  # published by rename, not rewritten in place
    assert weight_types(q) == dict.fromkeys(LENET_WEIGHTS, TensorProto.INT8)
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(q)
    assert weight_types(fp32) == dict.fromkeys(LENET_WEIGHTS, TensorProto.FLOAT)
    assert not op_types(fp32) & {"QuantizeLinear", "DequantizeLinear", "MatMulInteger"}
    assert written_by_sparsekit(q) and written_by_sparsekit(fp32)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Wrote {fp32} (fp32, ") and "parity max diff" in lines[0] and "(ok)" in lines[0]
    assert lines[1].startswith(f"Wrote {q} (static int8, {q.stat().st_size:,} B")
    assert "pruned zeros still zero: True" in lines[1]
    assert lines[2].strip().startswith("accuracy fp32") and "top-1 agreement" in lines[2]

    ratio = q.stat().st_size / fp32.stat().st_size
    print(f"LeNet-300-100 int8/fp32 file size: {q.stat().st_size:,} / {fp32.stat().st_size:,} B = {ratio:.4f}")
    assert ratio <= 0.3
    assert f"= {ratio:.2f}x fp32" in lines[1]


def test_a_dynamic_int8_export_states_how_its_outputs_agree_with_fp32(tmp_path, lenet):
    # Without --data the only parity printed was the fp32 file's (not written); the int8 file's own agreement with
    # it went unstated. Now both are measured on 32 seeded random normal inputs and said to be so.
    import numpy as np
    import onnxruntime as ort

    q, fp32 = tmp_path / "q.onnx", tmp_path / "q.fp32.onnx"
    result = run("export", lenet, *LENET, "-o", q, "--quantize", "int8", "--keep-fp32")
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "int8 vs fp32 on 32 random normal inputs" in x)
    assert "max diff" in line and "top-1 agreement" in line and "--data" in line
    res = json.loads(run("export", lenet, *LENET, "-o", q, "--quantize", "int8", "--keep-fp32", "--json").stdout)
    check = res["int8"]["check"]
    assert check["samples"] == 32 and check["inputs"] == "random normal"
    x = np.random.default_rng(0).standard_normal((32, 784)).astype(np.float32)
    outs = []
    for f in (fp32, q):
        session = ort.InferenceSession(str(f))
        name = session.get_inputs()[0].name
        outs.append(np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(32)]))
    assert check["max_abs_diff"] == pytest.approx(float(np.abs(outs[0] - outs[1]).max()), rel=1e-6)
    assert 0 < check["max_abs_diff"] < 1  # int8 rounds, but stays close
    assert check["top1_agreement"] == pytest.approx(float(np.mean(outs[0].argmax(1) == outs[1].argmax(1))))


def test_export_never_replaces_a_users_file_among_its_targets(tmp_path, lenet):
    q, fp32 = tmp_path / "q.onnx", tmp_path / "q.fp32.onnx"
    old_int8 = tmp_path / "q.int8.onnx"  # the name int8 went to before: no longer a target
    fp32.write_text("my fp32 model")
    old_int8.write_text("my int8 model")
    result = run("export", lenet, *LENET, "-o", q, "--quantize", "int8", "--keep-fp32")
    assert_bad_input(result, str(fp32), "did not write")
    assert not q.exists() and fp32.read_text() == "my fp32 model"
    assert listing(tmp_path) == ["q.fp32.onnx", "q.int8.onnx"]  # nothing written, no temp folders either

    # Without --keep-fp32 the user's q.fp32.onnx is not a target: left alone, and the export goes ahead.
    result = run("export", lenet, *LENET, "-o", q, "--quantize", "int8")
    assert result.exit_code == 0, result.stderr
    assert fp32.read_text() == "my fp32 model" and old_int8.read_text() == "my int8 model"
    assert weight_types(q) == dict.fromkeys(LENET_WEIGHTS, TensorProto.INT8)

    theirs = tmp_path / "theirs.onnx"
    theirs.write_text("not sparsekit's")
    assert_bad_input(run("export", lenet, *LENET, "-o", theirs, "--quantize", "int8"), str(theirs), "did not write")
    assert theirs.read_text() == "not sparsekit's" and not (tmp_path / "theirs.fp32.onnx").exists()


def test_keep_fp32_needs_quantize(tmp_path, lenet):
    assert_bad_input(run("export", lenet, *LENET, "-o", tmp_path / "q.onnx", "--keep-fp32"), "--keep-fp32", "int8")
    assert listing(tmp_path) == []


def test_help_names_the_files():
    text = " ".join(run("export", "--help").output.split())
    assert "--keep-fp32" in text and "FILE.fp32.onnx" in text
    assert "the file at -o is the int8 model" in text


# --- the library function --------------------------------------------------------------------------


def small_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return mlp(in_features=64, hidden=[32])


def test_export_int8_keeps_fp32_only_where_asked(tmp_path):
    out = tmp_path / "int8" / "m.onnx"
    keep = tmp_path / "fp32" / "m.onnx"  # another folder, the same name: staged beside its own target
    info = export_int8(small_mlp(), out, [1, 64], fp32_path=keep, exporter="torchscript")
    assert listing(out.parent) == ["m.onnx"] and listing(keep.parent) == ["m.onnx"]
    assert info["path"] == str(keep) and info["int8"]["path"] == str(out)
    assert info["bytes"] == keep.stat().st_size and info["int8"]["bytes"] == out.stat().st_size
    assert {t.data_type for t in onnx.load(str(out)).graph.initializer if len(t.dims) == 2} == {TensorProto.INT8}
    assert {t.data_type for t in onnx.load(str(keep)).graph.initializer if len(t.dims) == 2} == {TensorProto.FLOAT}

    alone = tmp_path / "alone"
    info = export_int8(small_mlp(), alone / "m.onnx", [1, 64], exporter="torchscript")
    assert info["path"] is None and listing(alone) == ["m.onnx"]


def test_export_int8_failure_writes_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous file")
    with pytest.raises(ExportError, match="shape"):
        export_int8(small_mlp(), out, [1, 65], fp32_path=tmp_path / "m.fp32.onnx", exporter="torchscript")
    with pytest.raises(ExportError, match="int8 model goes"):
        export_int8(small_mlp(), out, [1, 64], fp32_path=tmp_path / "." / "m.onnx", exporter="torchscript")
    assert out.read_bytes() == b"previous file" and listing(tmp_path) == ["m.onnx"]
    assert not os.path.exists(tmp_path / "m.fp32.onnx")


def test_int8_export_notes_say_how_to_compare_and_when_the_file_is_not_smaller(tmp_path):
    # A tiny model: quantization's scales and QDQ nodes outweigh its weights; the output says so, and the
    # latency hint names a real command, not a placeholder.
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    arch = ["--arch", "torch.nn:Linear", "--kwargs", '{"in_features": 4, "out_features": 3}', "--input-shape", "1,4"]
    result = run("export", path, *arch, "-o", tmp_path / "q.onnx", "--quantize", "int8", "--data", "synthetic")
    assert result.exit_code == 0, result.stderr
    assert "the int8 file is not smaller than fp32" in result.stdout
    assert "FILE.fp32.onnx" not in result.stdout and "export again with --keep-fp32" in result.stdout


def test_forced_sparse_storage_says_what_it_did_in_figures(tmp_path, mlp_checkpoint):
    # It printed "Stored ... with sparse initializers ... saves disk" for a file with no sparse initializer in it,
    # and "saves disk" beside a gzip size 1.105x the dense one.
    half = tmp_path / "half.onnx"
    result = run("export", mlp_checkpoint, "--arch", "examples.models:mlp", "-o", half, "--storage", "sparse")
    assert result.exit_code == 0, result.stderr
    assert not onnx.load(str(half)).graph.sparse_initializer  # a trained, unpruned model: nothing shrinks sparse
    assert f"Stored {half} with dense initializers after all: no weight is smaller stored sparse" in result.stdout
    res = json.loads(
        run(
            "export", mlp_checkpoint, "--arch", "examples.models:mlp", "-o", half, "--storage", "sparse", "--json"
        ).stdout
    )
    assert res["storage"]["mode"] == "sparse" and res["storage"]["encoding"] == "dense"

    from sparsekit.masks import bake

    model = sparsekit.load_model(mlp_checkpoint, arch="examples.models:mlp")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(p.abs() > p.abs().flatten().kthvalue(int(p.numel() * 0.97)).values)
    sparse_pt = tmp_path / "sparse.pt"
    kwargs = {"in_features": 64, "hidden": [64, 32]}
    sparsekit.save_model(bake(model), sparse_pt, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    out = tmp_path / "sparse.onnx"
    result = run("export", sparse_pt, "--arch", "examples.models:mlp", "-o", out, "--storage", "sparse", "--json")
    assert result.exit_code == 0, result.stderr
    st = json.loads(result.stdout)["storage"]
    assert st["encoding"] == "sparse" and onnx.load(str(out)).graph.sparse_initializer
    line = _sparse_storage_line(out, st)
    raw, gz = st["bytes"] / st["dense"]["bytes"], st["gzip_bytes"] / st["dense"]["gzip_bytes"]
    assert f"({raw:.3f}x of dense storage)" in line and f"({gz:.3f}x)" in line
    assert ("saves disk" in line) == (raw < 1 and gz < 1)
    assert ("larger after gzip" in line) == (gz >= 1)
    bigger = {**st, "gzip_bytes": st["dense"]["gzip_bytes"] + 1}  # the wording follows the figures
    assert "saves disk" not in _sparse_storage_line(out, bigger) and "larger after gzip" in _sparse_storage_line(
        out, bigger
    )


class AuxFirst(torch.nn.Module):
    """A model whose first output is one value per sample (an auxiliary score), its class scores second."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(64, 32)
        self.aux = torch.nn.Linear(32, 1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.aux(h), self.head(h)


def aux_first() -> AuxFirst:
    return AuxFirst()


def test_int8_accuracy_is_not_claimed_on_an_output_of_one_value_per_sample(tmp_path):
    # The argmax of a single value is always 0: it printed "top-1 agreement 1.0000" and an accuracy of the labels
    # equal to 0 for a model whose first output is not its class scores.
    torch.manual_seed(0)
    path = tmp_path / "aux.pt"
    torch.save(AuxFirst().state_dict(), path)
    arch = ["--arch", f"{__name__}:aux_first", "--input-shape", "1,64", "--exporter", "torchscript"]
    result = run("export", path, *arch, "-o", tmp_path / "q.onnx", "--quantize", "int8", "--data", "digits", "--json")
    assert result.exit_code == 0, result.stderr
    ev = json.loads(result.stdout)["int8"]["eval"]
    assert ev["top1_agreement"] is None and ev["int8_accuracy"] is None and len(ev["outputs"]) == 2
    text = run("export", path, *arch, "-o", tmp_path / "q.onnx", "--quantize", "int8", "--data", "digits")
    assert text.exit_code == 0, text.stderr
    assert "accuracy not measured: the model has 2 outputs" in text.stdout and "--logits PART" in text.stdout
    assert "top-1 agreement" not in text.stdout
    aux = run("export", path, *arch, "-o", tmp_path / "a.onnx", "--quantize", "int8", "--data", "digits", "--json",
              "--logits", "0")  # fmt: skip
    assert aux.exit_code == 0, aux.stderr
    ev = json.loads(aux.stdout)["int8"]["eval"]  # the one-value output alone: still nothing to compare
    assert ev["top1_agreement"] is None and "one value per sample" in ev["note"]


def test_int8_that_no_longer_agrees_with_fp32_is_flagged(tmp_path):
    # One calibration sample of extreme values stretches every int8 range: the int8 model predicts one class
    # for everything. It was written with exit 0 and no word beyond the figures.
    import numpy as np
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):  # a model that predicts several classes, so agreement can fall
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    path = tmp_path / "m.pt"
    sparsekit.save_model(model, path, "examples.models:mlp", input_shape=[1, 64])
    x_out = x.copy()
    x_out[0] *= 1e30
    np.savez(tmp_path / "outlier.npz", x=x_out, y=y)
    np.savez(tmp_path / "clean.npz", x=x, y=y)
    base = ["export", path, "--arch", "examples.models:mlp", "-o", tmp_path / "q.onnx", "--quantize", "int8"]
    bad = run(*base, "--data", tmp_path / "outlier.npz")
    assert bad.exit_code == 0, bad.stderr
    assert "Warning: int8 predicts the same class as fp32 on only" in bad.stderr
    clean = run(*base, "--data", tmp_path / "clean.npz")
    assert clean.exit_code == 0, clean.stderr
    assert "Warning: int8 predicts" not in clean.stderr
