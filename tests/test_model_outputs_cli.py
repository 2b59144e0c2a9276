"""Models whose forward returns a tuple or a dict (auxiliary heads, {"logits": ...}): `model.output`
names the logits, and prune, validate and sensitivity work; without it, exit 2 names the structure."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, assert_bad_input

import sparsekit
from sparsekit.cli import main

MODULE = """
import torch
from torch import nn


class Heads(nn.Module):
    def __init__(self, kind="tuple"):
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)
        self.aux = nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        if self.kind == "tuple":
            return self.head(h), self.aux(h)
        return {"aux": self.aux(h), "logits": self.head(h)}


def build(kind="tuple"):
    return Heads(kind)
"""

RECIPE = """
model: {input_shape: [1, 64]}
data: {source: digits}
finetune: {epochs: 1, max_steps_per_epoch: 5, optimizer: {name: adam, lr: 0.002}}
pruning: [{method: magnitude, sparsity: 0.5, layers: {include: [fc1]}}]
benchmark: {enabled: false}
"""


@pytest.fixture
def heads(tmp_path, monkeypatch):
    (tmp_path / "heads_mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "r.yaml").write_text(RECIPE)
    paths = {}
    for kind in ("tuple", "dict"):
        import importlib

        mod = importlib.import_module("heads_mod")
        torch.manual_seed(0)
        paths[kind] = sparsekit.save_model(
            mod.build(kind), tmp_path / f"{kind}.pt", "heads_mod:build", kwargs={"kind": kind}, input_shape=[1, 64]
        )
    return tmp_path, paths


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize(("kind", "fix"), [("tuple", "model.output to one of 0, 1"), ("dict", "model.output: logits")])
def test_without_model_output_prune_and_validate_name_the_structure(heads, kind, fix):
    tmp, paths = heads
    args = [paths[kind], tmp / "r.yaml", "--arch", "heads_mod:build", "--kwargs", json.dumps({"kind": kind})]
    for result in (run("prune", *args, "-o", tmp / "o", *FAST), run("validate", tmp / "r.yaml", *args[:1], *args[2:])):
        line = assert_bad_input(result, "not one tensor of logits", fix)
        assert "tensor [2, 10]" in line and "tensor [2, 3]" in line
    assert not (tmp / "o").exists()


@pytest.mark.parametrize(("kind", "output"), [("tuple", "0"), ("dict", "logits")])
def test_with_model_output_the_run_prunes_exports_the_logits_and_keeps_parity(heads, kind, output):
    tmp, paths = heads
    out = tmp / "o"
    result = run("prune", paths[kind], tmp / "r.yaml", "--arch", "heads_mod:build", "--kwargs",
                 json.dumps({"kind": kind}), "--set", f"model.output={output}", "-o", out, *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["ok"] and report["pruned"]["accuracy"] > 0.1
    (method,) = report["methods"]
    assert method["achieved"] == pytest.approx(0.5, abs=1e-3)
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [list(d.dim_value for d in o.type.tensor_type.shape.dim)[1:] for o in graph.output] == [[10]]
    # The saved model is the user's own: it returns its tuple / dict again when loaded.
    loaded = sparsekit.load_model(out / "model.pt", arch="heads_mod:build")
    assert not isinstance(loaded(torch.zeros(2, 64)), torch.Tensor)


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_export_writes_every_output_and_checks_parity_on_each(heads, kind):
    tmp, paths = heads
    result = run("export", paths[kind], "--arch", "heads_mod:build", "--kwargs", json.dumps({"kind": kind}),
                 "-o", tmp / "m.onnx", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.output)["parity"]["ok"]
    shapes = [
        [d.dim_value for d in o.type.tensor_type.shape.dim][1:] for o in onnx.load(str(tmp / "m.onnx")).graph.output
    ]
    assert sorted(shapes) == [[3], [10]]


def test_a_misspelt_model_output_is_named_as_such_not_as_an_input_shape_problem(heads):
    tmp, paths = heads
    result = run("validate", tmp / "r.yaml", paths["dict"], "--arch", "heads_mod:build", "--kwargs",
                 '{"kind": "dict"}', "--set", "model.output=logitz")  # fmt: skip
    line = assert_bad_input(result, "model.output: 'logitz' is not a part of the output", "did you mean 'logits'")
    assert "input shape" not in line


TWO_INPUTS = """
import torch
from torch import nn


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 16)
        self.b = nn.Linear(64, 16)
        self.head = nn.Linear(32, 10)

    def forward(self, x, y):
        return self.head(torch.cat([self.a(x.flatten(1)), self.b(y.flatten(1))], 1))


def build():
    return Two()
"""


def test_a_model_taking_several_inputs_is_told_so_not_asked_for_a_shape(tmp_path, monkeypatch):
    # The error asked for "the shape it takes", which no single tensor is (found by review).
    (tmp_path / "two_mod.py").write_text(TWO_INPUTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    path = sparsekit.save_model(importlib.import_module("two_mod").build(), tmp_path / "m.pt", "two_mod:build")
    (tmp_path / "r.yaml").write_text(RECIPE.replace("include: [fc1]", "include: [a]"))
    args = [path, tmp_path / "r.yaml", "--arch", "two_mod:build"]
    for result in (
        run("prune", *args, "-o", tmp_path / "o", *FAST),
        run("validate", tmp_path / "r.yaml", path, *args[2:]),
    ):
        line = assert_bad_input(result, "takes several inputs", "sparsekit.Pruner from your own training loop")
        assert "give the shape" not in line
    assert not (tmp_path / "o").exists()
