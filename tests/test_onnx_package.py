"""The ``sparsekit.onnx`` package: one module per concern, public names only between them, per-file
statistics computed once per version of a file, one session constructor, one input maker."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data

import sparsekit.onnx as skx
import sparsekit.onnx.files as files_mod
import sparsekit.onnx.sessions as sessions_mod
from sparsekit.errors import ExportError
from sparsekit.onnx.files import clear_memo, publish, save_onnx, staging
from sparsekit.onnx.sessions import open_session, random_array, random_feeds

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sparsekit" / "onnx"
MODULES = sorted(PACKAGE.glob("*.py"))
WEIGHT = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0], [0.0, 0.0, 0.5], [3.0, 0.0, 0.0]], np.float32)


def linear_model(weight: np.ndarray = WEIGHT) -> onnx.ModelProto:
    """``output = input @ fc.weight + fc.bias`` with input ``[batch, 4]`` (``weight``: 4 x n)."""
    n = weight.shape[1]
    inits = [numpy_helper.from_array(weight, "fc.weight"), numpy_helper.from_array(np.ones(n, np.float32), "fc.bias")]
    nodes = [
        helper.make_node("MatMul", ["input", "fc.weight"], ["mm"]),
        helper.make_node("Add", ["mm", "fc.bias"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(path: Path, weight: np.ndarray = WEIGHT, external: bool = False) -> Path:
    model = linear_model(weight)
    if external:
        convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=f"{path.name}.data", size_threshold=0
        )
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def counted(monkeypatch):
    """Counts of ``onnx.load`` calls (every parse of a file) and of gzip passes, per file name."""
    clear_memo()
    calls: dict[str, list[str]] = {"load": [], "gzip": []}
    real_load, real_gzip = onnx.load, files_mod.gzip_size

    def load(f, *args, **kwargs):
        calls["load"].append(Path(f).name)
        return real_load(f, *args, **kwargs)

    def gzip(paths, level=None):
        calls["gzip"].append(Path(paths[0]).name)
        return real_gzip(paths, level)

    monkeypatch.setattr(onnx, "load", load)
    monkeypatch.setattr(files_mod, "gzip_size", gzip)
    yield calls
    clear_memo()


# --- statistics computed once per file -------------------------------------------------------------


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_sizes_and_counts_are_computed_once_per_file(tmp_path, counted, external):
    path = save(tmp_path / "m.onnx", external=external)
    first = skx.size_report(path)
    nonzero = int(np.count_nonzero(WEIGHT)) + 3  # and 3 biases of 1
    assert first["params"] == 15 and first["nonzero_params"] == nonzero == 8
    for _ in range(3):  # what the pipeline, `inspect` and the benchmark all ask of one file
        assert skx.size_report(path) == first
        assert skx.size_report(path, nonzero_params=first["nonzero_params"]) == first
        assert skx.param_counts(path) == {"params": 15, "nonzero_params": nonzero}
        assert skx.count_initializer_stats(path)["initializers"] == 2
        assert skx.onnx_sizes(path) == {"bytes": first["bytes"], "gzip_bytes": first["gzip_bytes"], "gzip_level": 9}
    assert counted["gzip"] == ["m.onnx"]
    assert counted["load"] == ["m.onnx", "m.onnx"]  # sizes (graph only), then counts (with the data)
    if external:
        assert first["bytes"] == path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size


def test_checks_parse_once_and_run_every_time(tmp_path, counted):
    path = save(tmp_path / "m.onnx", external=True)
    for _ in range(3):
        skx.check_external_data(path)
        assert skx.external_data_files(path) == {"m.onnx.data"}
    open_session(path)
    assert counted["load"] == ["m.onnx"]
    (tmp_path / "m.onnx.data").unlink()
    os.mkdir(tmp_path / "m.onnx.data")  # the file's location now names a folder: refused again
    with pytest.raises(ExportError, match="which is a directory"):
        skx.check_external_data(path)


def test_a_changed_file_is_read_again(tmp_path, counted):
    path = save(tmp_path / "m.onnx")
    before = skx.size_report(path)
    dense = np.arange(1, 13, dtype=np.float32).reshape(4, 3)  # same size on disk, no zeros
    save(path, dense)
    after = skx.size_report(path)
    assert after["nonzero_params"] == 15 != before["nonzero_params"]
    assert counted["gzip"] == ["m.onnx", "m.onnx"]


def test_changed_external_data_alone_is_read_again(tmp_path, counted):
    path = save(tmp_path / "m.onnx", external=True)
    data = tmp_path / "m.onnx.data"
    assert skx.param_counts(path)["nonzero_params"] == 8
    st = data.stat()
    data.write_bytes(np.ones(15, np.float32).tobytes())  # same length, every weight now 1
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old modification time
    assert skx.param_counts(path)["nonzero_params"] == 15


def test_a_hit_never_bypasses_the_location_check(tmp_path, counted):
    """A data file swapped for a link leading out of the folder is checked (and refused), not served
    from the memo."""
    folder = tmp_path / "model"
    folder.mkdir()
    path = save(folder / "m.onnx", external=True)
    skx.onnx_sizes(path)
    outside = tmp_path / "secret.bin"
    os.replace(folder / "m.onnx.data", outside)
    os.symlink(outside, folder / "m.onnx.data")
    with pytest.raises(ExportError, match="external data must be a file beside the model"):
        skx.onnx_sizes(path)


def test_results_are_copies(tmp_path, counted):
    path = save(tmp_path / "m.onnx")
    skx.onnx_macs(path)["layers"].clear()
    skx.size_report(path)["params"] = -1
    assert skx.onnx_macs(path)["layers"] and skx.size_report(path)["params"] == 15


def test_errors_are_not_kept(tmp_path, counted):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="m.onnx"):
        skx.onnx_sizes(path)
    save(path)
    assert skx.onnx_sizes(path)["bytes"] == path.stat().st_size


# --- sessions and inputs ---------------------------------------------------------------------------


def test_open_session_honours_the_provider_and_threads(tmp_path, monkeypatch):
    path = save(tmp_path / "m.onnx")
    session = open_session(path, provider="CPUExecutionProvider", threads=2, spinning=False)
    assert session.get_providers() == ["CPUExecutionProvider"]
    opts = session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"

    # The provider asked for is the one passed to onnxruntime, not a fixed CPU default.
    seen = {}

    class Recorder:
        def __init__(self, model_path, sess_options=None, providers=None, **kwargs):
            seen.update(path=model_path, providers=providers, threads=sess_options.intra_op_num_threads)
            self.providers = providers

        def get_providers(self):
            return self.providers

    monkeypatch.setattr(sessions_mod.ort, "get_available_providers", lambda: ["FancyExecutionProvider"])
    monkeypatch.setattr(sessions_mod.ort, "InferenceSession", Recorder)
    open_session(path, provider="FancyExecutionProvider", threads=3)
    assert seen == {"path": str(path), "providers": ["FancyExecutionProvider"], "threads": 3}
    with pytest.raises(
        ExportError,
        match="'CPUExecutionProvider': not an execution provider onnxruntime has here; available: Fancy",
    ):
        open_session(path)


def test_a_provider_listed_but_not_started_is_an_error_not_a_cpu_timing(tmp_path, monkeypatch):
    # onnxruntime-gpu without a usable GPU lists CUDAExecutionProvider; a session asked for it would run on the
    # CPU (falling back, or dropping it), and bench would time the CPU under the GPU's name
    path = save(tmp_path / "m.onnx")
    real = sessions_mod.ort.InferenceSession
    asked = {}

    def on_cpu(model_path, sess_options=None, providers=None, **kwargs):
        asked.update(kwargs)
        return real(model_path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(
        sessions_mod.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(sessions_mod.ort, "InferenceSession", on_cpu)
    with pytest.raises(ExportError, match="lists CUDAExecutionProvider but could not start it .*runs on CPU"):
        open_session(path, provider="CUDAExecutionProvider")
    assert asked.get("enable_fallback") == 0  # no silent retry on the CPU (and no banner on stdout)


def test_open_session_checks_external_data_before_onnxruntime(tmp_path, monkeypatch):
    path = save(tmp_path / "m.onnx", external=True)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../elsewhere.bin"
    onnx.save_model(model, str(path))
    monkeypatch.setattr(sessions_mod.ort, "InferenceSession", lambda *a, **k: pytest.fail("onnxruntime was reached"))
    with pytest.raises(ExportError, match="'..' is not allowed"):
        open_session(path)


def test_the_one_input_maker_is_seeded_and_follows_the_declared_inputs(tmp_path):
    a, b = random_array([2, 4], seed=3), random_array([2, 4], seed=3)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, random_array([2, 4], seed=4))
    assert random_array([3], np.int64).tolist() == [0, 0, 0]
    assert random_array([2], np.float16).dtype == np.float16
    feeds = random_feeds(open_session(save(tmp_path / "m.onnx")), batch=5)
    assert list(feeds) == ["input"] and feeds["input"].shape == (5, 4)


def test_every_session_comes_from_open_session():
    """No module but sessions.py constructs an onnxruntime session (anywhere in sparsekit)."""
    offenders = []
    for path in sorted((ROOT / "sparsekit").rglob("*.py")):
        if path == PACKAGE / "sessions.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and "InferenceSession" in (
                getattr(node.func, "attr", None),
                getattr(node.func, "id", None),
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


# --- publishing -------------------------------------------------------------------------------------


def test_publish_moves_the_graph_with_its_external_data(tmp_path):
    final = tmp_path / "out" / "m.onnx"
    weight = np.arange(4 * 100, dtype=np.float32).reshape(4, 100)  # 1.6 kB: goes to external data
    with staging(final) as work:
        staged = work / final.name
        save_onnx(linear_model(weight), staged, external_data=True)
        (work / "intermediate.onnx").write_bytes(b"scratch")  # not referenced: stays behind
        publish(staged, final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert skx.written_by_sparsekit(final) and skx.external_data_files(final) == {"m.onnx.data"}
    loaded = {t.name: numpy_helper.to_array(t) for t in skx.load_onnx(final).graph.initializer}["fc.weight"]
    np.testing.assert_array_equal(loaded, weight)


def test_sparse_storage_over_the_protobuf_limit_is_still_marked(tmp_path, monkeypatch):
    """Dense tensors go to external data before the mark hashes the graph, so the mark verifies."""
    import sparsekit.onnx.sparse_storage as storage_mod

    monkeypatch.setattr(storage_mod, "EXTERNAL_DATA_BYTES", 0)  # pretend the dense part is over 1.8 GB
    weight = np.zeros((4, 300), np.float32)
    weight[0, ::7] = 1.0  # sparse: stored as a sparse initializer; the 1.2 kB bias stays dense
    src = save(tmp_path / "m.onnx", weight)
    out = tmp_path / "m.sparse.onnx"
    info = skx.to_sparse_storage(src, out)
    assert info["sparse_initializers"] == 1 and info["verified"]["ok"]
    assert skx.external_data_files(out) == {"m.sparse.onnx.data"}
    assert skx.written_by_sparsekit(out)


# --- structure --------------------------------------------------------------------------------------


def test_modules_import_only_public_names_from_each_other():
    """Between the package's modules, and from anywhere in sparsekit into the package: public names only."""
    offenders = []
    for path in sorted((ROOT / "sparsekit").rglob("*.py")):
        inside = path.parent == PACKAGE
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = node.module or ""
            ours = module.startswith("sparsekit.onnx") or (
                node.level and (inside or module == "onnx" or module.startswith("onnx."))
            )
            if ours:
                offenders += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not offenders, offenders


def test_the_old_top_level_modules_are_gone():
    for name in ("export", "quantize", "sparse_storage", "onnx_macs", "bench"):
        assert importlib.util.find_spec(f"sparsekit.{name}") is None, name


def test_one_float_type_set():
    """The floating-point ONNX element types are spelled out in tensors.py alone."""
    spelled = [p.name for p in (ROOT / "sparsekit").rglob("*.py") if "BFLOAT16" in p.read_text(encoding="utf-8")]
    assert spelled == ["tensors.py"]


def test_public_names_resolve_and_are_documented():
    assert sorted(skx.__all__) == sorted(skx._LAZY) and set(skx.__all__) <= set(dir(skx))
    for name in skx.__all__:
        value = getattr(skx, name)
        if callable(value):
            assert value.__module__.startswith("sparsekit.onnx."), name
            assert inspect.getdoc(value), f"{name} has no docstring"
    for path in MODULES:
        module = importlib.import_module(f"sparsekit.onnx.{path.stem}") if path.stem != "__init__" else skx
        assert module.__doc__, path.name
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            if inspect.isfunction(value) or inspect.isclass(value):
                assert inspect.getdoc(value), f"{path.name}: {name} has no docstring"
    import sparsekit

    assert sparsekit.benchmark is skx.benchmark and sparsekit.export_onnx is skx.export_onnx


def test_reading_onnx_files_needs_neither_torch_nor_onnxruntime():
    code = (
        "import sys; from sparsekit.onnx import size_report, onnx_macs, param_counts, load_onnx; "
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_onnxruntime_writes_no_files_of_its_own_into_the_home_folder(tmp_path):
    # onnxruntime 1.32 writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,onnxruntime.db} when imported
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    code = "import sparsekit.onnx as o; o.benchmark; import onnxruntime"
    subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(tmp_path)}, check=True, timeout=120)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
