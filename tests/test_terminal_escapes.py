"""Names sparsekit prints come from the user's files (ONNX nodes and initializers, layer names, an edited
report.json): an escape sequence in one is shown as text, never passed to the terminal, and a ``|`` or line
break in a layer name does not break report.md's tables."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import sparsekit
from examples.models import mlp
from sparsekit.errors import printable
from tests.test_report_summary import MLP_SHAPE, _prune, _recipe, _report

ROOT = Path(__file__).resolve().parent.parent
EVIL = "fc\x1b]0;pwned\x07\x1b[31m\u202e"


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sparsekit", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=180,
    )  # fmt: skip


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if c in "\x1b\x07\r\u202e" or (ord(c) < 32 and c not in "\n\t")]


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_the_rest():
    assert printable("a\x1b[31mb\tc\nd\u202ee\rf\x9bg") == "a\\x1b[31mb\tc\nd\\u202ee\\x0df\\x9bg"
    assert printable("plain layer.0 — ü") == "plain layer.0 — ü"


def test_inspect_of_an_onnx_file_with_escapes_in_its_names_prints_them_escaped(tmp_path):
    weight = numpy_helper.from_array(np.random.rand(4, 3).astype(np.float32), f"{EVIL}.weight")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), f"{EVIL}.bias")
    node = helper.make_node("Gemm", ["x", weight.name, bias.name], ["y"], name=EVIL, transB=1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight, bias],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "evil.onnx")
    done = _cli("inspect", "evil.onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not _raw_controls(done.stdout), done.stdout
    assert "fc\\x1b]0;pwned\\x07\\x1b[31m" in done.stdout  # shown, as text


def test_an_error_line_quoting_a_name_with_escapes_is_escaped(tmp_path):
    done = _cli("inspect", f"{EVIL}.pt", cwd=tmp_path)  # a file that does not exist: its name is quoted
    assert done.returncode == 2
    assert done.stderr.startswith("Error:") and len(done.stderr.strip().splitlines()) == 1
    assert not _raw_controls(done.stderr), repr(done.stderr)
    assert "fc\\x1b]0;pwned" in done.stderr


def test_report_md_keeps_its_tables_whole_whatever_the_layer_names():
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    names = ["a|b", "line\nbreak", EVIL]
    for layer, name in zip(report.layers, names, strict=False):
        layer.name = name  # as an edited report.json (which `sparsekit report` re-renders) could say
    md = sparsekit.report.render_markdown(report)
    assert not _raw_controls(md)
    lines = md.splitlines()
    start = lines.index("## Layers") + 2
    table = [ln for ln in lines[start:] if ln.startswith("|")][: len(report.layers) + 1]
    header_cells = table[0].count("|") - table[0].count("\\|")
    assert all(row.count("|") - row.count("\\|") == header_cells for row in table), table
    assert "| a\\|b |" in md and "| line break |" in md
