"""The bad-input corpus: every CLI command fed malformed recipes, model files, ONNX files, data files,
report folders and option values. Each must end in exit 0 or a clear exit 2: never exit 1 (the CLI's
catch-all for sparsekit's own bugs), never a traceback, never a half-written output, never a canary
file created by code named inside an input.

Add every new fault found to CORPUS (one entry per class of input), with the command that showed it.
Run just this suite with ``pytest -q tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import pickle
import shlex
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sparsekit
from examples.models import mlp
from sparsekit.cli import main

ARCH = ["--arch", "examples.models:mlp"]
QUICK = ["--set", "finetune.epochs=1", "--set", "finetune.max_steps_per_epoch=2", "--set", "benchmark.enabled=false"]


# --- inputs -------------------------------------------------------------------------------------------


class Os:  # unpickling this runs os.system: a model file must never be unpickled without consent
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.canary}",)


def _model(tmp: Path) -> Path:
    torch.manual_seed(0)
    return sparsekit.save_model(mlp(), tmp / "ok.pt", factory="examples.models:mlp", input_shape=[1, 64])


def _malformed_onnx() -> dict[str, Any]:
    """ONNX files that parse but whose tensors lie: sparse indices outside the shape, a shape that does
    not match the data, a shape no tensor can have."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as h

    def model(inits=(), sparse=()):
        x = h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
        y = h.make_tensor_value_info("y", TensorProto.FLOAT, None)
        nodes = [h.make_node("MatMul", ["x", "W"], ["y"])]
        g = h.make_graph(nodes, "g", [x], [y], list(inits), sparse_initializer=list(sparse))
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
        m.ir_version = 8
        return m

    values = numpy_helper.from_array(np.array([1.0], np.float32), "W")
    far = h.make_sparse_tensor(values, numpy_helper.from_array(np.array([999_999], np.int64), "i"), [64, 10])
    lying = numpy_helper.from_array(np.ones((64, 10), np.float32), "W")
    lying.dims[:] = [64, 1000]
    huge = numpy_helper.from_array(np.ones((64, 10), np.float32), "W")
    huge.dims[:] = [2**31, 2**31]
    return {"sparse-out-of-range.onnx": model(sparse=[far]), "shape-lies.onnx": model([lying]),
            "shape-huge.onnx": model([huge])}  # fmt: skip


def _onnx(tmp: Path) -> Path:
    sparsekit.export_onnx(mlp().eval(), tmp / "ok.onnx", input_shape=[1, 64])
    return tmp / "ok.onnx"


RECIPES: dict[str, str] = {
    "empty": "",
    "not a mapping": "- 1\n- 2\n",
    "scalar": "42\n",
    "tabs": "finetune:\n\tepochs: 1\n",
    "deep lists": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep maps": "".join(f"{'  ' * i}k{i}:\n" for i in range(400)) + "  " * 400 + "x: 1\n",
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    "python tag": "seed: !!python/object/apply:os.system ['touch CANARY']\n",
    "duplicate keys": "seed: 1\nseed: 2\n",
    "huge seed": "seed: 1180591620717411303424\n",
    "negative epochs": "finetune: {epochs: -1}\n",
    "nan lr": "finetune: {optimizer: {lr: .nan}}\n",
    "inf lr": "finetune: {optimizer: {lr: .inf}}\n",
    "sparsity above 1": "pruning: [{method: magnitude, sparsity: 1.5}]\n",
    "unknown method": "pruning: [{method: lottery, sparsity: 0.5}]\n",
    "pruning not a list": "pruning: {method: magnitude}\n",
    "structured with sparsity": "pruning: [{method: structured, sparsity: 0.5}]\n",
    "init above final": "finetune: {epochs: 2}\npruning: [{method: magnitude, sparsity: 0.5, "
    "schedule: {start_epoch: 0, end_epoch: 1, init_sparsity: 0.8}}]\n",
    "infinite threshold": "pruning: [{method: l1, strength: 0.001, threshold: .inf}]\n",
    "schedule without epochs": "finetune: {epochs: 0}\npruning: [{method: magnitude, sparsity: 0.5, "
    "schedule: {start_epoch: 0, end_epoch: 3}}]\n",
    "version 2": "version: 2\n",
    "binary": "\x00\x01\x02\xff",
    "long key": "x" * 100_000 + ": 1\n",
    "unknown top key": "finetun: {epochs: 1}\n",
    "data outside": "data: {source: ../../../../etc/passwd.npz}\n",
    "callable data": "data: {source: 'os:system'}\n",
    "factory": "model: {factory: 'os:system', kwargs: {command: 'touch CANARY'}}\n",
    "huge batch": "data: {batch_size: 99999999999}\n",
    "input shape without batch": "model: {input_shape: [64]}\n",
}


def _write_model_files(tmp: Path, canary: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = tmp / name
        files[name].write_bytes(data)

    put("empty.pt", b"")
    put("random.pt", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    put("text.pt", b"hello, I am not a model\n")
    put("pickle-os.pt", pickle.dumps(Os(canary)))
    with zipfile.ZipFile(tmp / "zip.pt", "w") as z:
        z.writestr("archive/data.pkl", b"not a pickle")
    files["zip.pt"] = tmp / "zip.pt"
    torch.save(mlp(hidden=[7, 7]).state_dict(), tmp / "shapes.pt")
    files["shapes.pt"] = tmp / "shapes.pt"
    torch.save({"format": "sparsekit/1", "factory": 42, "state_dict": {}}, tmp / "odd-checkpoint.pt")
    files["odd-checkpoint.pt"] = tmp / "odd-checkpoint.pt"
    torch.save([1, 2, 3], tmp / "list.pt")
    files["list.pt"] = tmp / "list.pt"
    # A checkpoint damaged after it was written (bytes flipped mid-file): torch.load would read it.
    sparsekit.save_model(mlp(), tmp / "whole.pt", factory="examples.models:mlp", input_shape=[1, 64])
    damaged = bytearray((tmp / "whole.pt").read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 200] = bytes(b ^ 0xFF for b in damaged[middle : middle + 200])
    put("flipped.pt", bytes(damaged))
    ok = _onnx(tmp)
    put("garbage.onnx", b"\x08\x07garbage" * 50)
    put("truncated.onnx", ok.read_bytes()[: ok.stat().st_size // 2])
    put("empty.onnx", b"")
    for name, model in _malformed_onnx().items():
        onnx.save(model, tmp / name)
        files[name] = tmp / name
    (tmp / "folder.pt").mkdir()
    files["folder.pt"] = tmp / "folder.pt"
    # A device that reads forever: the zip reader asked it for its end, and memory grew by GBs a second.
    (tmp / "device.pt").symlink_to("/dev/zero")
    files["device.pt"] = tmp / "device.pt"
    files["missing.pt"] = tmp / "missing.pt"
    return files


def _write_data_files(tmp: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}

    def npz(name: str, **arrays: object) -> None:
        out[name] = tmp / name
        np.savez(out[name], **arrays)  # type: ignore[arg-type]

    x = np.zeros((40, 64), np.float32)
    npz("no-y.npz", x=x)
    npz("lengths.npz", x=x, y=np.zeros(39, np.int64))
    npz("negative-labels.npz", x=x, y=-np.ones(40, np.int64))
    npz("nan-x.npz", x=np.full((40, 64), np.nan, np.float32), y=np.zeros(40, np.int64))
    npz("object.npz", x=np.array([object()] * 40, dtype=object), y=np.zeros(40, np.int64))
    npz("wrong-size.npz", x=np.zeros((40, 63), np.float32), y=np.zeros(40, np.int64))
    npz("float-labels.npz", x=x, y=np.linspace(0, 1, 40))
    out["garbage.npz"] = tmp / "garbage.npz"
    out["garbage.npz"].write_bytes(b"PK\x03\x04 broken")
    return out


def _check(result, out: Path | None = None) -> None:
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code in (0, 2), f"exit {result.exit_code}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    if result.exit_code == 2:
        assert any(line.startswith("Error:") for line in text.splitlines()), text[-3000:]
    if out is not None and out.exists():
        leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers, leftovers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("corpus")
    canary = tmp / "CANARY"
    files = {"model": _model(tmp), "onnx": tmp / "ok.onnx", "canary": canary}
    files.update(_write_model_files(tmp, canary))
    for name, text in RECIPES.items():
        path = tmp / f"recipe-{name.replace(' ', '-')}.yaml"
        path.write_text(text.replace("CANARY", str(canary)), encoding="utf-8", errors="surrogateescape")
        files[f"recipe:{name}"] = path
    files.update({f"data:{k}": v for k, v in _write_data_files(tmp).items()})
    report = tmp / "reports"
    for name, content in {"empty": None, "garbage": "{not json", "wrong": json.dumps({"x": 1}), "list": "[]"}.items():
        (report / name).mkdir(parents=True)
        if content is not None:
            (report / name / "report.json").write_text(content)
    files["reports"] = report
    return files


def _run(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def _no_canary(corpus):
    yield
    assert not corpus["canary"].exists(), "code named inside an input ran"


# --- the corpus, command by command -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_validate_and_prune_with_a_bad_recipe(corpus, name, tmp_path):
    recipe = corpus[f"recipe:{name}"]
    _check(_run(["validate", recipe]))
    _check(_run(["validate", recipe, corpus["model"], *ARCH]))
    out = tmp_path / "out"
    _check(_run(["prune", corpus["model"], recipe, *ARCH, "-o", out, *QUICK, "--no-progress"]), out)


MODEL_FILES = ["empty.pt", "random.pt", "text.pt", "pickle-os.pt", "zip.pt", "shapes.pt", "odd-checkpoint.pt",
               "flipped.pt", "list.pt", "garbage.onnx", "truncated.onnx", "empty.onnx", "sparse-out-of-range.onnx",
               "shape-lies.onnx", "shape-huge.onnx", "folder.pt", "device.pt", "missing.pt"]  # fmt: skip


@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_command_with_a_bad_model_file(corpus, name, tmp_path):
    path = corpus[name]
    _check(_run(["inspect", path, *ARCH]))
    _check(_run(["export", path, *ARCH, "-o", tmp_path / "x.onnx"]), tmp_path)
    _check(_run(["prune", path, "lenet-gradual-magnitude-90", *ARCH, "-o", tmp_path / "o", *QUICK]), tmp_path)
    _check(_run(["sensitivity", path, "lenet-gradual-magnitude-90", *ARCH, "-o", tmp_path / "s"]), tmp_path)
    if name.endswith(".onnx"):
        _check(_run(["bench", path, "--runs", "2", "--warmup", "0"]))
    if name != "pickle-os.pt":  # (that one runs code when trusted: that is what trusting a file means)
        _check(_run(["inspect", path, "--trust-model-file"]))


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("flipped.pt", "does not match its checksum"),
        ("sparse-out-of-range.onnx", "sparse initializer 'W': its indices do not fit its shape [64, 10]"),
        ("shape-lies.onnx", "initializer 'W' declares shape [64, 1000] (64,000 values) but holds 2,560 bytes"),
        ("shape-huge.onnx", "which no tensor can have"),
    ],
)
def test_damaged_files_are_refused_naming_the_file_and_the_fault(corpus, name, needle):
    """Files that parse but lie (a bad checksum, tensors whose shape and data disagree) are exit 2, never
    a result computed from wrong weights nor an IndexError."""
    result = _run(["inspect", corpus[name], *([] if name.endswith(".onnx") else ARCH)])
    assert result.exit_code == 2, result.output + result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert name in line and needle in line


def test_a_torch_archive_whose_pickle_calls_os_system_is_refused_as_code_not_as_garbage(tmp_path):
    # torch 2.13's weights-only loader words this refusal "Trying to load unsupported GLOBAL posix.system whose module
    # posix is blocked": it was read as "not a readable PyTorch checkpoint (its bytes are not a pickle ...)".
    canary = tmp_path / "CANARY"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": Os(canary)}}, path)
    for command in (
        ["inspect", path],
        ["export", path, "-o", tmp_path / "x.onnx"],
        ["validate", "lenet-gradual-magnitude-90", path],
    ):
        result = _run(command)
        assert result.exit_code == 2, result.output + result.stderr
        (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
        assert "names posix.system" in line and "refused" in line and "--trust-model-file" in line, line
    assert not canary.exists()


def test_a_trusted_pickle_whose_class_cannot_be_imported_is_bad_input(tmp_path):
    """A whole module pickled from a script's class: trusted, it still needs that code (exit 2 naming it)."""
    src = tmp_path / "gone_mod.py"
    src.write_text("from torch import nn\n\nclass Net(nn.Linear):\n    pass\n")
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        torch.save(importlib.import_module("gone_mod").Net(4, 2), tmp_path / "whole.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gone_mod", None)
    src.unlink()
    result = _run(["inspect", tmp_path / "whole.pt", "--trust-model-file"])
    _check(result)
    assert result.exit_code == 2 and "needs the code of 'gone_mod'" in result.output + result.stderr


@pytest.mark.parametrize("name", ["no-y.npz", "lengths.npz", "negative-labels.npz", "nan-x.npz", "object.npz",
                                  "wrong-size.npz", "float-labels.npz", "garbage.npz"])  # fmt: skip
def test_prune_and_int8_export_with_bad_data(corpus, name, tmp_path):
    data = corpus[f"data:{name}"]
    out = tmp_path / "o"
    _check(
        _run(["prune", corpus["model"], "lenet-gradual-magnitude-90", *ARCH, "--data", data, "-o", out, *QUICK]), out
    )
    _check(_run(["export", corpus["model"], *ARCH, "--quantize", "int8", "--data", data, "-o", tmp_path / "q.onnx"]))


@pytest.mark.parametrize("name", ["empty", "garbage", "wrong", "list", "missing"])
def test_report_with_a_bad_folder(corpus, name):
    _check(_run(["report", corpus["reports"] / name]))


OPTIONS: list[list[str]] = [
    ["export", "{model}", *ARCH, "--input-shape", "0,64"],
    ["export", "{model}", *ARCH, "--input-shape", "1,64,99999,99999"],
    ["export", "{model}", *ARCH, "--input-shape", "a,b"],
    ["export", "{model}", *ARCH, "--opset", "5"],
    ["export", "{model}", *ARCH, "--opset", "99"],
    ["export", "{model}", *ARCH, "--kwargs", "{bad"],
    ["export", "{model}", *ARCH, "--kwargs", "[1]"],
    ["export", "{model}", *ARCH, "--kwargs", '{"hidden": [1e400]}'],
    ["bench", "{onnx}", "-b", "0"],
    ["bench", "{onnx}", "--threads", "-1"],
    ["bench", "{onnx}", "--runs", "0"],
    ["bench", "{onnx}", "--precision", "1"],
    ["bench", "{onnx}", "--precision", "-0.5"],
    ["bench", "{onnx}", "--budget", "inf"],
    ["bench", "{onnx}", "--budget", "1e300"],
    ["bench", "{onnx}", "--runs", "99999999999999999999"],
    ["bench", "{onnx}", "--runs", "1000000000000"],
    ["bench", "{onnx}", "--threads", "99999999999999"],
    ["bench", "{onnx}", "--warmup", "99999999999999"],
    ["bench", "{onnx}", "--input-shape", "1,65", "--runs", "1"],
    ["bench", "{onnx}", "--provider", "NoSuchExecutionProvider", "--runs", "1"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--set", "seed=2**70"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--set", "seed=1180591620717411303424"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--set", "nope=1"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--set", "finetune"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--set", "pruning.7.sparsity=0.5"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--device", "cuda:99"],
    ["prune", "{model}", "no-such-recipe", *ARCH],
    ["inspect", "{model}", "--arch", "no_such_module:build"],
    ["inspect", "{model}", "--arch", "os:system"],
    ["sensitivity", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--max-batches", "0"],
]


# Values that must be refused (exit 2), not merely end without a traceback.
REFUSED: list[list[str]] = [
    ["export", "{model}", *ARCH, "--input-shape", "1,x"],
    ["export", "{model}", *ARCH, "--input-shape", "1,64,"],
    ["export", "{model}", *ARCH, "--input-shape", "1,1,20000,20000"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--data", ""],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--set", "finetune.epochs='3'"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--set", "pruning.0.sparsity=90"],
    ["prune", "{model}", "lenet-gradual-magnitude-90", *ARCH, "--set", "benchmark.precision=1"],
]


@pytest.mark.parametrize("args", REFUSED, ids=[" ".join(a[:1] + a[-2:]) for a in REFUSED])
def test_option_values_that_must_be_refused(corpus, args, tmp_path):
    filled = [a.replace("{model}", str(corpus["model"])) for a in args]
    out = tmp_path / ("x.onnx" if filled[0] == "export" else "out")
    result = _run([*filled, "-o", str(out)])
    assert result.exit_code == 2, result.output + result.stderr
    assert not out.exists()


@pytest.mark.parametrize("args", OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a in OPTIONS])
def test_bad_option_values(corpus, args, tmp_path):
    filled = [a.replace("{model}", str(corpus["model"])).replace("{onnx}", str(corpus["onnx"])) for a in args]
    if filled[0] in ("prune", "sensitivity", "export"):
        filled += ["-o", str(tmp_path / ("x.onnx" if filled[0] == "export" else "out"))]
    _check(_run(filled), tmp_path)


# --- property-based: option values -----------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.one_of(_text, st.lists(st.integers(-5, 2**40), max_size=6).map(lambda v: ",".join(map(str, v)))))
@example(shape="¹")  # a digit to str.isdigit(), not to int(): exit 1 (found by CI)
@example(shape="1,²,8")
def test_any_input_shape_string_is_accepted_or_refused_cleanly(corpus, shape):
    result = _run(["inspect", str(corpus["model"]), *ARCH, "--input-shape", shape])
    _check(result)
    if result.exit_code == 2:  # a refusal names the option it refuses (a bad string said only "Invalid value")
        assert "--input-shape" in result.stderr, result.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["seed", "finetune.epochs", "data.batch_size", "pruning.0.sparsity", "finetune.optimizer.lr",
                            "benchmark.runs", "export.opset", "pruning.0.schedule.every", "model.input_shape"]),
       value=st.one_of(_text, st.integers(-(2**80), 2**80).map(str), st.floats().map(str)))  # fmt: skip
def test_any_set_value_is_accepted_or_refused_cleanly(corpus, key, value):
    _check(_run(["validate", "lenet-gradual-magnitude-90", "--set", f"{key}={value}"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kwargs=st.one_of(_text, st.recursive(st.none() | st.integers() | st.floats() | _text,
                                            lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
                                            max_leaves=8).map(json.dumps)))  # fmt: skip
def test_any_kwargs_json_is_accepted_or_refused_cleanly(corpus, kwargs, tmp_path_factory):
    _check(_run(["inspect", str(corpus["model"]), *ARCH, "--kwargs", kwargs]))


def test_integers_past_pythons_digit_limit_and_duplicate_keys_are_refused_as_bad_input(corpus, tmp_path):
    # int() of over 4,300 digits raises a ValueError of its own: --kwargs, --input-shape and a report.json with
    # such a number exited 1 ("unexpected failure"); --kwargs kept the last of two equal keys without a word.
    huge = "9" * 5000
    for args, needle in (
        (["inspect", corpus["model"], *ARCH, "--kwargs", f'{{"in_features": {huge}}}'], "--kwargs"),
        (["inspect", corpus["model"], *ARCH, "--input-shape", f"1,{huge}"], "--input-shape"),
        (["inspect", corpus["model"], *ARCH, "--kwargs", '{"hidden": [8], "hidden": [16]}'], "'hidden' is given twice"),
    ):
        result = _run(args)
        _check(result)
        assert result.exit_code == 2 and needle in result.stderr, result.stderr
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 1, max_steps_per_epoch: 2}\nbenchmark: {enabled: false}\n")
    assert _run(["prune", corpus["model"], recipe, *ARCH, "-o", out, "--no-progress"]).exit_code == 0
    report = out / "report.json"
    report.write_text(report.read_text().replace('"schema": 1', f'"schema": {huge}', 1))
    from sparsekit.errors import SparsekitError
    from sparsekit.report import load_report

    with pytest.raises(SparsekitError, match="not valid JSON"):
        load_report(report)


def test_report_with_a_broken_matplotlib_writes_the_text_and_exits_2(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 1, max_steps_per_epoch: 2}\nbenchmark: {enabled: false}\n")
    assert _run(["prune", corpus["model"], recipe, *ARCH, "-o", out, "--no-progress"]).exit_code == 0
    (out / "report.md").unlink()
    for name in ("matplotlib", "matplotlib.figure"):  # `import matplotlib` now fails, as in a broken install
        monkeypatch.setitem(__import__("sys").modules, name, None)
    result = _run(["report", out])
    _check(result)
    assert result.exit_code == 2 and "plots could not be drawn: matplotlib fails" in result.output + result.stderr
    assert (out / "report.md").is_file()
    monkeypatch.undo()
    assert _run(["report", out]).exit_code == 0  # the rewritten files are still known as sparsekit's own


def test_a_checkpoint_saved_with_an_input_shape_its_model_does_not_take_is_named(tmp_path):
    """The shape came from the file: the error names the file and its field, not just "input shape"."""
    path = sparsekit.save_model(mlp(), tmp_path / "wrong-shape.pt", factory="examples.models:mlp", input_shape=[1, 32])
    needle = f"{path}: its saved input_shape [1, 32]: the model does not accept it"
    assert_bad_input(_run(["inspect", path, *ARCH]), needle, "--input-shape")
    assert_bad_input(_run(["export", path, *ARCH, "-o", tmp_path / "x.onnx"]), needle, "--input-shape")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: digits}\npruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n")
    # the first layer (a Linear of 64 inputs) tells the shape the model takes: it is suggested
    # (quoted as a shell needs it: zsh refuses an unmatched [1,64] glob, and bash would expand a matching one)
    fix = "the model takes [1, 64] (--set 'model.input_shape=[1,64]')"
    assert_bad_input(_run(["validate", recipe, path, *ARCH]), needle, fix)
    assert_bad_input(_run(["prune", path, recipe, *ARCH, "-o", tmp_path / "o", *QUICK]), needle, fix)
    # ... and that fix, pasted as shown, works: a recipe shape the model takes replaces a saved one it does not take.
    fixed = shlex.split(fix.partition("(")[2].rstrip(")"))
    assert fixed == ["--set", "model.input_shape=[1,64]"]
    assert _run(["validate", recipe, path, *ARCH, *fixed]).exit_code == 0
    assert _run(["prune", path, recipe, *ARCH, "-o", tmp_path / "o", *QUICK, *fixed]).exit_code == 0
    # A saved shape the model does take still wins over a different recipe shape (the recipe is for another model).
    good = sparsekit.save_model(mlp(), tmp_path / "good.pt", factory="examples.models:mlp", input_shape=[1, 64])
    assert_bad_input(
        _run(["validate", recipe, good, *ARCH, "--set", "model.input_shape=[1,32]"]), "was saved for input"
    )
    # Given on the command line, the option is named instead, and it replaces the saved shape.
    assert_bad_input(_run(["export", path, *ARCH, "--input-shape", "1,33"]), "--input-shape [1, 33]")
    assert _run(["export", path, *ARCH, "--input-shape", "1,64", "-o", tmp_path / "y.onnx"]).exit_code == 0


def test_a_pipe_or_a_device_given_as_a_model_or_a_recipe_is_refused_without_reading_it(tmp_path):
    # A FIFO blocked forever (open waits for a writer); /dev/zero as a recipe read up to the size limit. In a
    # process of its own, so that a regression fails on the timeout instead of hanging the suite.
    import os
    import subprocess
    import sys

    os.mkfifo(tmp_path / "model.pt")
    os.mkfifo(tmp_path / "recipe.yaml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    root = Path(__file__).resolve().parent.parent
    cli = [sys.executable, "-m", "sparsekit"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    for args, needle in (
        (["inspect", tmp_path / "model.pt", *ARCH], "model.pt: is not a regular file"),
        (
            ["validate", tmp_path / "recipe.yaml"],
            "recipe.yaml: a pipe with nothing written to it",
        ),  # a pipe nobody writes to: read without waiting, and named as a pipe
        (["validate", tmp_path / "zero.yaml"], "zero.yaml: is not a regular file"),
    ):
        done = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, timeout=120, env=env, cwd=root)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], done.stderr
    # a pipe someone writes to is a recipe like any other: `sparsekit validate <(cat recipe.yaml)`
    shell = f"{sys.executable} -m sparsekit validate <(printf 'version: 1\\n')"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120, env=env, cwd=root)
    assert done.returncode == 0, done.stderr


def test_report_whose_values_matplotlib_cannot_draw_says_so(corpus, tmp_path):
    # A report.json edited to hold a loss of 1e308 (its manifest updated too) made matplotlib's tick code fail;
    # the error told the user only to reinstall matplotlib.
    import hashlib
    import json

    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 1, max_steps_per_epoch: 2}\nbenchmark: {enabled: false}\n")
    assert _run(["prune", corpus["model"], recipe, *ARCH, "-o", out, "--no-progress"]).exit_code == 0
    doc = json.loads((out / "report.json").read_text())
    doc["history"][0]["train_loss"] = 1e308
    (out / "report.json").write_text(json.dumps(doc))
    manifest = out / ".sparsekit" / "manifest.json"
    files = json.loads(manifest.read_text())
    data = (out / "report.json").read_bytes()
    files["files"]["report.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest.write_text(json.dumps(files))
    result = _run(["report", out])
    _check(result)
    assert result.exit_code == 2 and "a value in the report too large to plot" in result.output + result.stderr


@pytest.fixture(scope="module")
def model_files(corpus, tmp_path_factory) -> dict[str, bytes]:
    """Sound files of every kind ``inspect`` reads, as bytes to damage: a sparsekit checkpoint, a state_dict .pt, a
    .safetensors file and an ONNX file."""
    from safetensors.torch import save_file

    from sparsekit.onnx import export_onnx

    tmp = tmp_path_factory.mktemp("sound")
    torch.manual_seed(0)
    model = mlp()
    torch.save(model.state_dict(), tmp / "sd.pt")
    save_file(model.state_dict(), str(tmp / "w.safetensors"))
    export_onnx(model, tmp / "m.onnx", [1, 64], exporter="torchscript")
    paths = {"ck.pt": corpus["model"], "sd.pt": tmp / "sd.pt", "w.safetensors": tmp / "w.safetensors"}
    return {name: Path(p).read_bytes() for name, p in {**paths, "m.onnx": tmp / "m.onnx"}.items()}


_damage = st.tuples(
    st.sampled_from(["truncate", "flip", "zero", "insert"]),
    st.floats(0, 1, exclude_max=True),  # where, as a fraction of the file
    st.integers(1, 300),  # how many bytes (bits, for flip)
    st.binary(min_size=1, max_size=16),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["ck.pt", "sd.pt", "w.safetensors", "m.onnx"]), damage=_damage, seed=st.integers(0, 2**32))
def test_any_damaged_model_file_is_read_or_refused_cleanly(model_files, tmp_path_factory, name, damage, seed):
    """A model file with bytes cut, flipped, zeroed or inserted anywhere (a bad copy or disk): ``inspect`` reads it
    or refuses it with one Error line, exit 2 (a damaged zip end once raised from zipfile.is_zipfile: exit 1)."""
    kind, where, n, extra = damage
    data = bytearray(model_files[name])
    at = int(where * len(data))
    if kind == "truncate":
        del data[at:]
    elif kind == "flip":
        rng = np.random.default_rng(seed)
        for i in rng.integers(0, len(data), size=n):
            data[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "zero":
        data[at : at + n] = bytes(len(data[at : at + n]))
    else:
        data[at:at] = extra
    path = tmp_path_factory.mktemp("damaged") / name
    path.write_bytes(bytes(data))
    _check(_run(["inspect", str(path), *([] if name in ("ck.pt", "m.onnx") else [*ARCH, "--input-shape", "1,64"])]))
