"""A new user's review: README followed from a wheel, with models, recipes and files of one's own."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main


@pytest.mark.parametrize(
    ("written", "remedy"),
    [
        ('model: {input_shape: "1,1,8,8"}', "write [1, 1, 8, 8]"),
        ("model: {input_shape: 1x1x8x8}", "write [1, 1, 8, 8]"),
        ('model: {input_shape: "1 1 8 8"}', "write [1, 1, 8, 8]"),
        ('benchmark: {batch_sizes: "1,32"}', "write [1, 32]"),
    ],
)
def test_a_number_list_written_as_text_is_told_as_numbers(tmp_path, written, remedy):
    # The remedy said `write ['1', '1', '8', '8']` (a list of texts, refused in turn) or `write [1x1x8x8]`.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\n{written}\npruning: [{{method: magnitude, sparsity: 0.5}}]\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert_bad_input(result, "r.yaml", remedy)


def _external_model(folder):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = folder / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    return path


@pytest.mark.parametrize("command", ["inspect", "bench"])
@pytest.mark.parametrize(("damage", "needles"), [("missing", ["not in the model's folder", "copy"]),
                                                 ("short", ["holds 10 bytes", "cut short"])])  # fmt: skip
def test_external_data_missing_or_cut_short_is_named_with_its_remedy(tmp_path, command, damage, needles):
    # A model copied without its data file: inspect said "... should be stored in ..., but it is not regular file"
    # (onnx's words), bench onnxruntime's "External data path does not exist"; one cut short, "out of bounds".
    path = _external_model(tmp_path)
    data = tmp_path / "m.data"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[:10])
    args = [command, str(path)] + (["-b", "1", "--runs", "5"] if command == "bench" else [])
    result = CliRunner().invoke(main, args)
    assert_bad_input(result, "m.onnx", "'m.data'", *needles)


def test_trust_given_an_arch_callable_names_its_module(tmp_path, monkeypatch):
    # `sparsekit trust mynet:CNN` (as --arch names it) said only "not a module name (e.g. mypkg.nets)".
    monkeypatch.setenv("SPARSEKIT_CONFIG_DIR", str(tmp_path / "config"))
    result = CliRunner().invoke(main, ["trust", "mynet:CNN"])
    assert_bad_input(result, "mynet:CNN", "trust its module, 'mynet'")


@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_an_onnx_file_cut_short_says_to_copy_it_again(tmp_path, command):
    # A .onnx cut short (an unfinished download) said only protobuf's "Wire format was corrupt": no remedy.
    path = _external_model(tmp_path)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:40])
    assert_bad_input(CliRunner().invoke(main, [command, str(cut)]), "cut.onnx", "cut short", "copy or export it again")


def test_prune_into_a_sensitivity_folder_says_what_it_holds(tmp_path):
    # `prune -o` a `sensitivity -o` folder said "holds files sparsekit did not write (first:
    # .sensitivity-manifest.json)": sparsekit wrote them, and naming its manifest hid what the folder is.
    from sparsekit.analysis import MANIFEST_FILE
    from sparsekit.errors import OutputError
    from sparsekit.outputs import RunFolder

    out = tmp_path / "sens"
    out.mkdir()
    (out / MANIFEST_FILE).write_text("{}")
    (out / "sensitivity.json").write_text("{}")
    with pytest.raises(OutputError, match="holds a sensitivity analysis") as caught:
        RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    assert "did not write" not in str(caught.value) and "choose another output folder" in str(caught.value)


def test_export_to_a_folder_says_it_is_one(tmp_path):
    # `export weights.pt -o out` (a folder) said "name the output file NAME.onnx", as for `-o notes.txt`.
    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(main, ["export", str(tmp_path / "weights.pt"), "-o", str(tmp_path / "out")])
    assert_bad_input(result, "is a folder", str(tmp_path / "out" / "weights.onnx"))


def test_an_empty_list_where_items_are_needed_is_told_in_plain_words(tmp_path):
    # `batch_sizes: []` said pydantic's "List should have at least 1 item after validation, not 0".
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nbenchmark: {batch_sizes: []}\n")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "benchmark.batch_sizes")
    assert "must hold at least 1 item (got 0)" in line and "after validation" not in line


@pytest.mark.parametrize("given", ["1 1 8 8", " 1  1 8 8 ", "[1 1 8 8]"])
def test_an_input_shape_split_at_spaces_is_taken_as_1x1x8x8_is(given):
    # `--input-shape "1 1 8 8"` was refused while 1x1x8x8 and [1,1,8,8] were taken (z1's find).
    from sparsekit.cli import _shape

    assert _shape(given) == [1, 1, 8, 8]
    with pytest.raises(click.BadParameter):
        _shape("1,,8")  # an empty dimension between commas is still refused
