"""`export --logits PART` for a model that returns several tensors: the file holds that output alone and int8
accuracy is scored on it; a prune run records the recipe's model.output in its checkpoint, and export uses it.
Without a selection, int8 accuracy of a multi-output model is not scored (an embedding's argmax against the
labels was printed as an accuracy)."""

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


class EmbedThenLogits(nn.Module):
    def __init__(self, width=32, kind="tuple"):
        super().__init__()
        self.kind = kind
        self.body = nn.Linear(64, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        e = torch.relu(self.body(x.flatten(1)))
        if self.kind == "tuple":
            return e, self.head(e)
        return {"embedding": e, "logits": self.head(e)}


def build(width=32, kind="tuple"):
    return EmbedThenLogits(width, kind)
"""


@pytest.fixture
def model(tmp_path, monkeypatch):
    (tmp_path / "embed_first_mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("embed_first_mod")
    torch.manual_seed(0)
    net = mod.build()
    # Trained a little on digits, so the class scores beat chance and an embedding's "accuracy" would not.
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x)[1], y).backward()
        opt.step()
    return tmp_path, sparsekit.save_model(net, tmp_path / "m.pt", "embed_first_mod:build", input_shape=[1, 64])


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--arch", "embed_first_mod:build"])


def widths(path):
    return [[d.dim_value for d in o.type.tensor_type.shape.dim][1:] for o in onnx.load(str(path)).graph.output]


INT8 = ["--quantize", "int8", "--data", "digits", "--exporter", "torchscript", "--json"]


def test_without_logits_a_multi_output_model_is_exported_whole_and_not_scored(model):
    tmp, path = model
    result = run("export", path, "-o", tmp / "q.onnx", *INT8)
    assert result.exit_code == 0, result.stderr
    ev = json.loads(result.stdout)["int8"]["eval"]
    assert ev["int8_accuracy"] is None and ev["fp32_accuracy"] is None and "2 outputs" in ev["note"]
    assert sorted(widths(tmp / "q.onnx")) == [[10], [32]]


def test_logits_selects_the_class_scores_and_int8_accuracy_is_scored_on_them(model):
    tmp, path = model
    result = run("export", path, "-o", tmp / "q.onnx", *INT8, "--logits", "1")
    assert result.exit_code == 0, result.stderr
    ev = json.loads(result.stdout)["int8"]["eval"]
    assert ev["fp32_accuracy"] > 0.5 and ev["int8_accuracy"] > 0.5 and ev["top1_agreement"] > 0.9
    assert widths(tmp / "q.onnx") == [[10]]


@pytest.mark.parametrize(("part", "fix"), [("2", "to one of 0, 1"), ("logitz", "to one of 0, 1")])
def test_a_logits_part_the_model_does_not_have_exits_2_naming_the_option(model, part, fix):
    tmp, path = model
    line = assert_bad_input(run("export", path, "-o", tmp / "q.onnx", "--logits", part), "--logits", fix)
    assert "model.output" not in line and "tuple(tensor [2, 32], tensor [2, 10])" in line
    assert not (tmp / "q.onnx").exists()


@pytest.mark.parametrize("part", ["1001", "a" * 201])
def test_a_malformed_logits_value_is_a_usage_error(model, part):
    tmp, path = model
    result = run("export", path, "-o", tmp / "q.onnx", "--logits", part)
    assert result.exit_code == 2 and "--logits" in result.stderr and "Traceback" not in result.stderr


def test_a_prune_run_records_model_output_and_export_of_its_checkpoint_uses_it(model):
    tmp, path = model
    (tmp / "r.yaml").write_text(
        "model: {input_shape: [1, 64], output: 1}\ndata: {source: digits}\n"
        "finetune: {epochs: 1, max_steps_per_epoch: 5, optimizer: {name: adam, lr: 0.002}}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, layers: {include: [body]}}]\nbenchmark: {enabled: false}\n"
    )
    pruned = run("prune", path, tmp / "r.yaml", "-o", tmp / "o", *FAST)
    assert pruned.exit_code == 0, pruned.output + pruned.stderr
    assert torch.load(tmp / "o" / "model.pt", weights_only=True)["extra"] == {"output": 1, "normalize": "none"}
    result = run("export", tmp / "o" / "model.pt", "-o", tmp / "q.onnx", *INT8)
    assert result.exit_code == 0, result.stderr
    assert "Logits: output 1" in result.stderr
    assert json.loads(result.stdout)["int8"]["eval"]["int8_accuracy"] is not None
    assert widths(tmp / "q.onnx") == widths(tmp / "o" / "model.onnx") == [[10]]
    # Pruning the pruned checkpoint again with a recipe that does not say model.output: the recorded part
    (tmp / "r2.yaml").write_text((tmp / "r.yaml").read_text().replace(", output: 1", ""))
    again = run("prune", tmp / "o" / "model.pt", tmp / "r2.yaml", "-o", tmp / "o2", *FAST)
    assert again.exit_code == 0, again.output + again.stderr
    report = json.loads((tmp / "o2" / "report.json").read_text())
    assert report["recipe"]["model"]["output"] == 1 and report["parity"]["ok"]
    assert any("model.output: 1, as the run that wrote" in n for n in report["notes"])
    # --logits beats the recorded part
    emb = run("export", tmp / "o" / "model.pt", "-o", tmp / "e.onnx", "--logits", "0", "--exporter", "torchscript")
    assert emb.exit_code == 0, emb.stderr
    assert widths(tmp / "e.onnx") == [[32]]
    whole = run("export", tmp / "o" / "model.pt", "-o", tmp / "w.onnx", "--logits", ":all", "--exporter", "torchscript")
    assert whole.exit_code == 0, whole.stderr
    assert sorted(widths(tmp / "w.onnx")) == [[10], [32]] and "Logits:" not in whole.stderr


@pytest.mark.parametrize("bad", [-1, True, "", 1.5, [0]])
def test_a_damaged_recorded_output_is_refused_naming_the_file(model, bad):
    tmp, path = model
    ckpt = torch.load(path, weights_only=True)
    ckpt["extra"] = {"output": bad}
    torch.save(ckpt, tmp / "bad.pt")
    assert_bad_input(run("export", tmp / "bad.pt", "-o", tmp / "q.onnx"), "bad.pt", "its extra 'output'", "damaged")
