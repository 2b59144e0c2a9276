"""Hostile and malformed input files a review found accepted with wrong values or reported with misleading numbers:
.npz labels that wrap when cast to int64, inputs beyond float32's range reported as infinite values."""

from __future__ import annotations

import numpy as np
import pytest

from sparsekit.data import load_data
from sparsekit.errors import DataError


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


@pytest.mark.parametrize(
    "label, shown",
    [(np.uint64(2**64 - 1), "18446744073709551615"), (np.float64(2.0**63), "9.22e+18"), (np.float64(1e30), "1e+30")],
)
def test_an_npz_label_too_large_for_int64_is_named_not_wrapped(tmp_path, label, shown):
    # The cast to int64 wrapped these to -1 or -2**63: a label the file does not hold, refused later as "label -1"
    # without naming the file (or, with no model to check against, kept as a negative class index).
    y = np.arange(8, dtype=np.asarray(label).dtype) % 2
    y[0] = label
    path = _npz(tmp_path / "big.npz", np.zeros((8, 4), np.float32), y)
    with pytest.raises(DataError) as info:
        load_data(path, input_shape=[1, 4])
    said = str(info.value)
    assert "big.npz" in said and f"label of {shown}" in said


def test_npz_inputs_beyond_float32_are_named_as_such_not_as_infinite(tmp_path):
    x = np.ones((8, 4), np.float64)
    x[3, 1] = -1e300  # finite in the file; inf only after the cast to float32
    path = _npz(tmp_path / "wide.npz", x, np.arange(8) % 2)
    with pytest.raises(DataError) as info:
        load_data(path, input_shape=[1, 4])
    said = str(info.value)
    assert "wide.npz" in said and "float32's range" in said and "1e+300" in said and "NaN" not in said
    x[3, 1] = np.inf  # really infinite: said so
    path = _npz(tmp_path / "inf.npz", x, np.arange(8) % 2)
    with pytest.raises(DataError, match="NaN or infinite"):
        load_data(path, input_shape=[1, 4])


def test_an_onnx_input_too_large_for_one_sample_names_the_file_not_the_batch_size(tmp_path):
    # A 1 kB file declaring a 2**40-value input: "batch size 1 needs 8192 GiB; use a smaller batch size" named
    # neither the file nor a remedy that could work.
    import onnx
    from click.testing import CliRunner
    from conftest import assert_bad_input
    from onnx import TensorProto, helper

    from sparsekit.cli import main

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2**40])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "wide.onnx")
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "wide.onnx"), "--batch-size", "1", "--runs", "1"])
    line = assert_bad_input(result, "wide.onnx", "any batch size", "--input-shape")
    assert "smaller batch size" not in line


@pytest.mark.parametrize("dims, said", [([4, 3], "declares shape [4, 3] (12 values) but holds 4 bytes"),
                                        ([4, 2**40], "which no tensor can have")])  # fmt: skip
def test_a_damaged_constant_tensor_is_refused_by_inspect_as_by_bench(tmp_path, dims, said):
    # Only initializers were checked: a Constant node's value declaring more than it holds passed inspect (exit 0)
    # while onnxruntime refused the same file in bench.
    import onnx
    from click.testing import CliRunner
    from conftest import assert_bad_input
    from onnx import TensorProto, helper

    from sparsekit.cli import main

    value = TensorProto(data_type=TensorProto.FLOAT, dims=dims, raw_data=b"\0" * 4)  # unnamed, as Constants often are
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=value, name="c"),
        helper.make_node("MatMul", ["X", "W"], ["Y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "const.onnx")
    assert_bad_input(
        CliRunner().invoke(main, ["inspect", str(tmp_path / "const.onnx")]), "const.onnx", "node 'c'", said
    )


def test_a_layer_name_with_a_line_break_stays_on_its_line_in_the_summary_and_report_md():
    # The layers table escaped names, but the summary's "not pruned:" line and the whole-model sparsity row of
    # report.md did not: a name with a line break (add_module takes one; so does an edited report.json, which
    # `sparsekit report` re-renders) started a heading of its own and cut the table row in two.
    import torch

    import sparsekit
    from examples.models import mlp
    from tests.test_report_summary import MLP_SHAPE, _prune, _recipe, _report

    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"include": ["fc2"]}}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    layer = next(r for r in report.layers if r.name == "fc1")
    layer.name = "fc1\n# injected"
    md = sparsekit.report.render_markdown(report)
    assert "# injected" in md  # the name is shown ...
    assert not [ln for ln in md.splitlines() if ln.startswith("# injected")], md  # ... never as a line of its own
    assert not [ln for ln in sparsekit.report.render_summary(report, "out").splitlines() if "injected" in ln[:12]]


@pytest.mark.parametrize("kind", ["zip", "legacy", "text"])
def test_a_file_named_safetensors_that_is_another_format_says_what_it_is(tmp_path, kind):
    # safetensors reads another format's first 8 bytes as its header length: "header too large" was all it said.
    import torch
    from click.testing import CliRunner
    from conftest import assert_bad_input

    from sparsekit.cli import main

    path = tmp_path / "w.safetensors"
    if kind == "text":
        path.write_text("version: 1\npruning: []\n")
    else:
        torch.save({"fc1.weight": torch.zeros(2, 2)}, path, _use_new_zipfile_serialization=kind == "zip")
    result = CliRunner().invoke(main, ["inspect", str(path), "--arch", "examples.models:mlp"])
    said = "a torch.save file, named .safetensors: rename it to .pt" if kind != "text" else "text file"
    assert_bad_input(result, "w.safetensors", "not a valid safetensors file", said)


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_a_model_file_holding_no_tensors_says_so(tmp_path, name):
    # "holds a dict, not a state_dict (a mapping of parameter names to tensors)": an empty dict is such a mapping.
    import torch
    from click.testing import CliRunner
    from conftest import assert_bad_input
    from safetensors.torch import save_file

    from sparsekit.cli import main

    path = tmp_path / name
    save_file({}, str(path)) if name.endswith(".safetensors") else torch.save({"state_dict": {}}, path)
    result = CliRunner().invoke(main, ["inspect", str(path), "--arch", "examples.models:mlp"])
    assert_bad_input(result, name, "no weights at all")
