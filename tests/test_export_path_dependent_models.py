"""Models whose forward takes a data-dependent path. When the dynamo exporter fails, the error's remedy is
spelled the way the caller chooses the exporter: ``--exporter torchscript`` for ``sparsekit export``,
``--set export.exporter=torchscript`` for ``prune`` (which has no exporter option), ``exporter='torchscript'``
from Python; when the TorchScript tracer warns, prune's report says so."""

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input, fast_prune, user_module

from sparsekit.cli import main
from sparsekit.errors import ExportError

# A data-dependent branch: torch.export (the dynamo exporter) refuses it, TorchScript tracing does not.
BRANCHY = """
from torch import nn

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.sum().item() > 0:
            return self.fc(x)
        return -self.fc(x)

def build():
    return Branchy()
"""


@pytest.fixture
def branchy(tmp_path, monkeypatch):
    mod = user_module(tmp_path, monkeypatch, "branchy_net", BRANCHY)
    path = tmp_path / "branchy.pt"
    torch.save(mod.build().state_dict(), path)
    return mod, path


def test_export_names_its_exporter_option(tmp_path, branchy):
    _, path = branchy
    args = ["export", str(path), "--arch", "branchy_net:build", "--input-shape", "1,8", "-o", str(tmp_path / "b.onnx")]
    line = assert_bad_input(CliRunner().invoke(main, [*args, "--exporter", "dynamo"]), "--exporter torchscript")
    assert "exporter='torchscript'" not in line


def test_prune_names_the_recipe_field(tmp_path, branchy):
    _, path = branchy
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 8]}\ndata: {source: synthetic, batch_size: 16}\nfinetune: {epochs: 1}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, layers: [fc]}\nexport: {exporter: dynamo}\n"
    )
    args = [
        "prune",
        str(path),
        str(recipe),
        "--arch",
        "branchy_net:build",
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    line = assert_bad_input(CliRunner().invoke(main, args), "--set export.exporter=torchscript")
    assert "--exporter" not in line


def test_python_api_spelling(tmp_path, branchy):
    from sparsekit.onnx import export_onnx

    mod, _ = branchy
    with pytest.raises(ExportError, match=r"exporter='torchscript' may succeed"):
        export_onnx(mod.build(), tmp_path / "b.onnx", [1, 8], exporter="dynamo")


def test_prune_reports_tracer_warnings(tmp_path, branchy):
    """The TorchScript exporter traces one path through the data-dependent branch: prune says so in the
    report's notes, as sparsekit export does, instead of only parity on random inputs that happened to agree."""
    import json

    _, path = branchy
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 8]}\ndata: {source: synthetic, batch_size: 16}\nfinetune: {epochs: 1}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, layers: [fc]}\nbenchmark: {batch_sizes: [1]}\n"
    )
    out = tmp_path / "out"
    res = fast_prune(path, recipe, out, "--arch", "branchy_net:build")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["tracer_warnings"] and report["dense"]["tracer_warnings"]
    assert any("TorchScript tracer warned" in n and "export.exporter: dynamo" in n for n in report["notes"])
    assert "TorchScript tracer warned" in res.stdout
