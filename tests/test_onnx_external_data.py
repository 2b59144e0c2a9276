"""External data of an ONNX file must be a file inside the model's own folder, for every reader.

A hostile ``location`` (absolute, ``..``, a symlink leading out, a directory, empty) is refused with
an :class:`ExportError` naming the file, the tensor and the location before anything reads it; and
every ONNX file sparsekit writes carries a ``sparsekit`` metadata mark.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import ExportError
from sparsekit.onnx import (
    benchmark,
    check_external_data,
    export_onnx,
    load_onnx,
    onnx_macs,
    onnx_sizes,
    param_counts,
    quantize_int8,
    size_report,
    to_sparse_storage,
    written_by_sparsekit,
)

WEIGHT = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5) / 10


def linear_model() -> onnx.ModelProto:
    """``output = input @ fc.weight + fc.bias``, input ``[batch, 4]``: small but real enough to run."""
    inits = [numpy_helper.from_array(WEIGHT, "fc.weight"), numpy_helper.from_array(np.ones(3, np.float32), "fc.bias")]
    nodes = [
        helper.make_node("MatMul", ["input", "fc.weight"], ["mm"]),
        helper.make_node("Add", ["mm", "fc.bias"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # any onnxruntime reads it
    return model


def save_external(path, location: str = "model.onnx.data") -> None:
    """Save :func:`linear_model` at ``path`` with all its weights in ``location`` beside it."""
    model = linear_model()
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location, size_threshold=0)
    onnx.save_model(model, str(path))


def relocate(path, name: str, location: str) -> None:
    """Point tensor ``name`` of the ONNX file at ``path`` to ``location`` (offset and length kept)."""
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.name == name:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
    onnx.save_model(model, str(path))


def make_external(tensor: onnx.TensorProto, location: str) -> None:
    """Turn an in-memory tensor into one that claims its bytes live at ``location``."""
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)


# --- hostile locations ----------------------------------------------------------------------------

CASES = [
    "absolute", "dotdot", "sub_dotdot", "symlink_out", "directory", "empty", "hidden_dir", "hidden_file",
    "link_to_hidden_file", "link_to_hidden_dir",
]  # fmt: skip


@pytest.fixture(params=CASES)
def hostile(request, tmp_path, tmp_path_factory):
    """``(model path, location)``: a model whose ``fc.weight`` claims data at a hostile location.

    The canary beside the attack holds the very bytes the model expects, so a reader that follows
    the location would succeed silently instead of failing on its own.
    """
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    save_external(path)
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "secret.bin"
    shutil.copy(folder / "model.onnx.data", canary)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "secret.bin"
    shutil.copy(canary, elsewhere)
    if request.param == "absolute":
        location = str(elsewhere)
    elif request.param == "dotdot":
        location = "../outside/secret.bin"
    elif request.param == "sub_dotdot":  # would land inside, on the real data file: still refused
        (folder / "sub").mkdir()
        location = "sub/../model.onnx.data"
    elif request.param == "symlink_out":
        os.symlink(canary, folder / "weights.bin")
        location = "weights.bin"
    elif request.param == "hidden_dir":  # a model saved in a home folder must not read ~/.ssh/id_rsa
        (folder / ".ssh").mkdir()
        shutil.copy(canary, folder / ".ssh" / "id_rsa")
        location = ".ssh/id_rsa"
    elif request.param == "hidden_file":
        shutil.copy(canary, folder / ".netrc")
        location = ".netrc"
    elif request.param == "link_to_hidden_file":  # weights.bin -> .ssh/id_rsa, all inside the folder
        (folder / ".ssh").mkdir()
        shutil.copy(canary, folder / ".ssh" / "id_rsa")
        os.symlink(folder / ".ssh" / "id_rsa", folder / "weights.bin")
        location = "weights.bin"
    elif request.param == "link_to_hidden_dir":  # keys -> .ssh, location keys/id_rsa
        (folder / ".ssh").mkdir()
        shutil.copy(canary, folder / ".ssh" / "id_rsa")
        os.symlink(folder / ".ssh", folder / "keys")
        location = "keys/id_rsa"
    elif request.param == "directory":
        (folder / "weights.d").mkdir()
        location = "weights.d"
    else:
        location = ""
    relocate(path, "fc.weight", location)
    return path, location


def assert_refused(excinfo_or_text, path, location: str) -> None:
    text = excinfo_or_text if isinstance(excinfo_or_text, str) else str(excinfo_or_text.value)
    assert path.name in text
    assert "'fc.weight'" in text
    assert repr(location) in text
    assert "external data must be a file beside the model" in text


CALLERS = {
    "onnx_sizes": onnx_sizes,
    "size_report": size_report,
    "load_onnx": load_onnx,
    "load_onnx_no_data": lambda p: load_onnx(p, load_external_data=False),
    "check_external_data": check_external_data,
    "onnx_macs": onnx_macs,
    "param_counts": param_counts,
    "benchmark": lambda p: benchmark([p], [1], runs=1, warmup=0, progress=False),
}


@pytest.mark.parametrize("caller", list(CALLERS))
def test_readers_refuse_hostile_location(hostile, caller):
    path, location = hostile
    with pytest.raises(ExportError) as excinfo:
        CALLERS[caller](path)
    assert_refused(excinfo, path, location)


def test_benchmark_refuses_hostile_second_file(hostile, tmp_path):
    good = tmp_path / "good.onnx"
    onnx.save_model(linear_model(), str(good))
    path, location = hostile
    with pytest.raises(ExportError) as excinfo:
        benchmark([good, path], [1], runs=1, warmup=0, progress=False)
    assert_refused(excinfo, path, location)


@pytest.mark.parametrize("writer", ["quantize_int8", "to_sparse_storage"])
def test_writers_refuse_hostile_location_and_write_nothing(hostile, writer, tmp_path):
    path, location = hostile
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "result.onnx"
    before = sorted(os.listdir(path.parent))
    with pytest.raises(ExportError) as excinfo:
        if writer == "quantize_int8":
            quantize_int8(path, out)
        else:
            to_sparse_storage(path, out)
    assert_refused(excinfo, path, location)
    assert not out.exists() and os.listdir(out_dir) == []  # no output, no staging folder left behind
    assert sorted(os.listdir(path.parent)) == before


@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_cli_refuses_hostile_location(hostile, command):
    path, location = hostile
    args = [command, str(path)] + (["--runs", "1", "--warmup", "0", "--no-progress"] if command == "bench" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert_refused(errors[0], path, location)


# --- every kind of stored tensor is checked --------------------------------------------------------


def _save_bare(tmp_path, model: onnx.ModelProto):
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    return path


def _assert_all_refuse(path, name: str, location: str = "/etc/passwd") -> None:
    for call in (load_onnx, onnx_sizes, check_external_data, onnx_macs):
        with pytest.raises(ExportError) as excinfo:
            call(path)
        text = str(excinfo.value)
        assert repr(name) in text and repr(location) in text and path.name in text, text


def test_constant_node_tensor_is_checked(tmp_path):
    model = linear_model()
    value = numpy_helper.from_array(np.zeros(3, np.float32), "const.value")
    make_external(value, "/etc/passwd")
    model.graph.node.append(helper.make_node("Constant", [], ["unused"], value=value))
    _assert_all_refuse(_save_bare(tmp_path, model), "const.value")


def test_unnamed_constant_tensor_is_named_by_its_node(tmp_path):
    model = linear_model()
    value = numpy_helper.from_array(np.zeros(3, np.float32), "")
    make_external(value, "/etc/passwd")
    model.graph.node.append(helper.make_node("Constant", [], ["unused"], value=value, name="k"))
    _assert_all_refuse(_save_bare(tmp_path, model), "attribute 'value' of node 'k'")


@pytest.mark.parametrize("part", ["values", "indices"])
def test_sparse_initializer_parts_are_checked(tmp_path, part):
    model = linear_model()
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp.weight")
    indices = numpy_helper.from_array(np.array([0, 5], np.int64), "sp.indices")
    make_external(values if part == "values" else indices, "/etc/passwd")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4, 3]))
    _assert_all_refuse(_save_bare(tmp_path, model), "sp.weight" if part == "values" else "sp.indices")


def test_subgraph_initializer_is_checked(tmp_path):
    model = linear_model()
    inner = numpy_helper.from_array(np.zeros(3, np.float32), "branch.value")
    make_external(inner, "../secret.bin")
    branch = helper.make_graph(
        [helper.make_node("Identity", ["branch.value"], ["b"])],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])],
        initializer=[inner],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    model.graph.initializer.append(cond)
    model.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch))
    _assert_all_refuse(_save_bare(tmp_path, model), "branch.value", "../secret.bin")


def test_local_function_tensor_is_checked(tmp_path):
    model = linear_model()
    value = numpy_helper.from_array(np.zeros(3, np.float32), "fn.value")
    make_external(value, "/etc/passwd")
    fn = helper.make_function(
        "local", "F", [], ["y"], [helper.make_node("Constant", [], ["y"], value=value)], [helper.make_opsetid("", 17)]
    )
    model.functions.append(fn)
    _assert_all_refuse(_save_bare(tmp_path, model), "fn.value")


def test_missing_location_entry_is_refused(tmp_path):
    model = linear_model()
    value = numpy_helper.from_array(np.zeros(3, np.float32), "nowhere")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    model.graph.node.append(helper.make_node("Constant", [], ["unused"], value=value))
    _assert_all_refuse(_save_bare(tmp_path, model), "nowhere", "")


# --- legitimate external data ----------------------------------------------------------------------


def test_external_data_beside_the_model_is_accepted_and_counted(tmp_path):
    path = tmp_path / "model.onnx"
    save_external(path)
    data = tmp_path / "model.onnx.data"
    assert data.stat().st_size == (12 + 3) * 4
    sizes = onnx_sizes(path)
    assert sizes["bytes"] == path.stat().st_size + data.stat().st_size
    check_external_data(path)
    weight = {t.name: numpy_helper.to_array(t) for t in load_onnx(path).graph.initializer}["fc.weight"]
    np.testing.assert_array_equal(weight, WEIGHT)
    assert param_counts(path)["params"] == 15
    assert onnx_macs(path)["macs"] == 12
    res = benchmark([path], [1], runs=1, warmup=0, progress=False)
    assert res["files"][0]["bytes"] == sizes["bytes"]


def test_symlink_inside_the_folder_is_accepted(tmp_path):
    path = tmp_path / "model.onnx"
    save_external(path)
    (tmp_path / "weights").mkdir()
    shutil.move(tmp_path / "model.onnx.data", tmp_path / "weights" / "all.bin")
    os.symlink(tmp_path / "weights" / "all.bin", tmp_path / "link.bin")
    relocate(path, "fc.weight", "link.bin")
    relocate(path, "fc.bias", "weights/all.bin")  # a subfolder is inside the folder too
    sizes = onnx_sizes(path)  # one data file reached two ways counts once
    assert sizes["bytes"] == path.stat().st_size + (12 + 3) * 4
    np.testing.assert_array_equal(numpy_helper.to_array(load_onnx(path).graph.initializer[0]), WEIGHT)
    assert param_counts(path)["nonzero_params"] == 15


def test_model_reached_through_symlinked_folder_is_accepted(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    save_external(real / "model.onnx")
    os.symlink(real, tmp_path / "alias")
    alias = tmp_path / "alias" / "model.onnx"
    assert onnx_sizes(alias)["bytes"] == onnx_sizes(real / "model.onnx")["bytes"]
    assert param_counts(alias)["params"] == 15


def test_sparse_initializer_data_is_read_from_the_models_folder(tmp_path, monkeypatch):
    # onnx's own loader skips sparse initializers; numpy_helper would then read them from the cwd.
    folder = tmp_path / "model"
    folder.mkdir()
    model = linear_model()
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp.weight")
    indices = numpy_helper.from_array(np.array([0, 5], np.int64), "sp.indices")
    (folder / "sp.bin").write_bytes(values.raw_data)
    make_external(values, "sp.bin")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4, 3]))
    path = _save_bare(folder, model)
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "sp.bin").write_bytes(np.zeros(2, np.float32).tobytes())
    monkeypatch.chdir(decoy)
    loaded = load_onnx(path).graph.sparse_initializer[0].values
    assert loaded.data_location == TensorProto.DEFAULT
    np.testing.assert_array_equal(numpy_helper.to_array(loaded), [1.0, 2.0])
    assert param_counts(path) == {"params": 15 + 12, "nonzero_params": 15 + 2}
    assert onnx_sizes(path)["bytes"] == path.stat().st_size + 8


# --- the sparsekit mark ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[:, :2] = 0.0  # half zeros: sparse storage has something to store sparse
    path = tmp_path_factory.mktemp("exported") / "model.onnx"
    export_onnx(model, path, input_shape=[1, 4], exporter="torchscript")
    return path


def _mark(path) -> list[str]:
    return [p.value for p in onnx.load(str(path), load_external_data=False).metadata_props if p.key == "sparsekit"]


def test_export_output_is_marked(exported):
    assert written_by_sparsekit(exported)
    assert [m.split()[0] for m in _mark(exported)] == [sparsekit.__version__]


def test_int8_output_is_marked(exported, tmp_path):
    out = tmp_path / "model.int8.onnx"
    quantize_int8(exported, out)
    assert written_by_sparsekit(out) and [m.split()[0] for m in _mark(out)] == [sparsekit.__version__]


def test_sparse_storage_output_is_marked(exported, tmp_path):
    out = tmp_path / "model.sparse.onnx"
    info = to_sparse_storage(exported, out)
    assert info["verified"] == {"ok": True, "reason": None}
    assert written_by_sparsekit(out) and [m.split()[0] for m in _mark(out)] == [sparsekit.__version__]


def test_unmarked_and_unreadable_files_are_not_ours(tmp_path):
    hand_made = tmp_path / "hand.onnx"
    onnx.save_model(linear_model(), str(hand_made))
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert not written_by_sparsekit(hand_made)
    assert not written_by_sparsekit(text)
    assert not written_by_sparsekit(empty)
    assert not written_by_sparsekit(tmp_path / "missing.onnx")
    assert not written_by_sparsekit(tmp_path)  # a folder


def test_written_by_sparsekit_reads_no_external_data(tmp_path):
    # The mark is read from the .onnx file alone; a hostile location makes it "not ours", not an error.
    path = tmp_path / "model.onnx"
    save_external(path)
    model = onnx.load(str(path), load_external_data=False)
    from sparsekit.onnx.files import mark as stamp

    stamp(model, at=path)
    onnx.save_model(model, str(path))
    assert written_by_sparsekit(path)
    relocate(path, "fc.weight", "/etc/passwd")
    assert not written_by_sparsekit(path)


def test_a_marked_file_edited_since_is_not_ours(tmp_path):
    """The mark holds a hash of the rest of the graph: a user's edit keeps the mark but not the hash."""
    path = tmp_path / "m.onnx"
    export_onnx(torch.nn.Linear(4, 3), path, [1, 4], exporter="torchscript")
    assert written_by_sparsekit(path)
    model = onnx.load(str(path))
    model.doc_string = "tuned by hand"
    onnx.save(model, str(path))
    assert any(p.key == "sparsekit" for p in onnx.load(str(path)).metadata_props)
    assert not written_by_sparsekit(path)
