"""A float16/bfloat16 state_dict goes into the model's float32 layers: the run trains and saves in float32, a
model.pt twice the user's weights; the run says so (once, and in the report) rather than leaving it to be found."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fast_prune

from examples.models import mlp
from sparsekit.modelio import read_model

ARCH = "examples.models:mlp"
KW = {"in_features": 64, "hidden": [32], "num_classes": 10}


def _save(tmp_path, dtype):
    torch.manual_seed(0)
    model = mlp(**KW)
    path = tmp_path / f"w_{str(dtype)[6:]}.pt"
    torch.save({k: v.to(dtype) for k, v in model.state_dict().items()}, path)
    return path


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_narrow_weights_are_noted_when_read(tmp_path, dtype):
    name = str(dtype).removeprefix("torch.")
    loaded = read_model(_save(tmp_path, dtype), ARCH, kwargs=KW)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    (note,) = [n for n in loaded.notes if "float32" in n]
    assert f"its weights are {name}" in note and f"model.to(torch.{name})" in note, note


def test_float32_weights_get_no_note(tmp_path):
    loaded = read_model(_save(tmp_path, torch.float32), ARCH, kwargs=KW)
    assert not [n for n in loaded.notes if "its weights are" in n]


def test_prune_says_model_pt_is_float32(tmp_path, caplog):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: synthetic, batch_size: 16}\nfinetune: {epochs: 1}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, layers: [fc1]}\nbenchmark: {batch_sizes: [1]}\n"
    )
    out = tmp_path / "out"
    kwargs = json.dumps(KW)
    res = fast_prune(_save(tmp_path, torch.float16), recipe, out, "--arch", ARCH, "--kwargs", kwargs)
    assert res.exit_code == 0, res.output
    assert "its weights are float16" in caplog.text  # logged as a warning at the start
    report = json.loads((out / "report.json").read_text())
    assert any("its weights are float16" in n for n in report["notes"]), report["notes"]
    saved = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}  # as the note says
