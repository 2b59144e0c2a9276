"""An ONNX file that does not compute what the torch model does is said so loudly: a Warning from
``sparsekit export`` and a summary warning from ``prune`` (which ``--strict`` turns into exit 2), not only
'FAILED' inside a line of figures that exits 0."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import fast_prune, user_module

from sparsekit.cli import main

# forward depends on Python state: every call multiplies by how often it ran, so the exported graph holds
# one call's constant and onnxruntime disagrees with torch on the very same inputs.
COUNTER = """
from torch import nn

class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * float(self.calls)

def build():
    return Counter()
"""


@pytest.fixture
def counter_weights(tmp_path, monkeypatch):
    mod = user_module(tmp_path, monkeypatch, "counter_net", COUNTER)
    path = tmp_path / "counter.pt"
    torch.save(mod.build().state_dict(), path)
    return path


@pytest.mark.parametrize("exporter, other", [("torchscript", "dynamo")])
def test_export_warns_when_parity_fails(tmp_path, counter_weights, exporter, other):
    out = tmp_path / "c.onnx"
    args = ["export", str(counter_weights), "--arch", "counter_net:build", "--input-shape", "1,8", "-o", str(out)]
    res = CliRunner().invoke(main, [*args, "--exporter", exporter])
    assert res.exit_code == 0, res.output
    assert "(FAILED)" in res.stdout
    warnings = [line for line in res.stderr.splitlines() if line.startswith("Warning:")]
    assert any(str(out) in w and "does not compute what the torch model does" in w for w in warnings), res.stderr
    assert any(f"--exporter {other}" in w for w in warnings), res.stderr


def test_export_of_a_faithful_model_has_no_parity_warning(tmp_path, mlp_checkpoint):
    res = CliRunner().invoke(
        main,
        [
            "export",
            str(mlp_checkpoint),
            "--arch",
            "examples.models:mlp",
            "-o",
            str(tmp_path / "m.onnx"),
            "--exporter",
            "torchscript",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Warning:" not in res.stderr, res.stderr


def test_prune_summary_warns_and_strict_fails(tmp_path, counter_weights):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 8]}\ndata: {source: synthetic, batch_size: 16}\nfinetune: {epochs: 1}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, layers: [fc]}\nbenchmark: {batch_sizes: [1]}\n"
    )
    out = tmp_path / "out"
    res = fast_prune(counter_weights, recipe, out, "--arch", "counter_net:build", "--strict")
    assert res.exit_code == 2, res.output
    assert "model.onnx does not compute what the torch model does" in res.stderr
    warnings = json.loads((out / "report.json").read_text())["summary"]["warnings"]
    assert any(w.startswith("model.onnx does not compute") for w in warnings), warnings
    assert any(w.startswith("dense.onnx (the benchmark's baseline) does not compute") for w in warnings), warnings
    assert "does not compute what the torch model does" in (out / "report.md").read_text()
