"""Review (numerics): the numbers a run reports are of the model the user gave, or the run says how they differ."""

from __future__ import annotations

import torch

from examples.models import mlp
from sparsekit.modelio import read_model

ARCH = "examples.models:mlp"
KW = {"in_features": 64, "hidden": [32], "num_classes": 10}


def test_float64_weights_rounded_to_float32_are_noted(tmp_path):
    # A float64 checkpoint went into the architecture's float32 layers without a word: every value rounded, and the
    # run's accuracy, parity and model.pt were of that rounded float32 model while the file said float64.
    torch.manual_seed(0)
    path = tmp_path / "w64.pt"
    torch.save({k: v.double() for k, v in mlp(**KW).state_dict().items()}, path)
    loaded = read_model(path, ARCH, kwargs=KW)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    (note,) = [n for n in loaded.notes if "float64" in n]
    assert "rounded to the model's float32 layers" in note and "model.to(torch.float64)" in note, note
