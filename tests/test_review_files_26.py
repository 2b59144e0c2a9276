"""File safety review (files, round 26): what sparsekit writes into folders a caller names."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import sparsekit
from sparsekit.errors import OutputError


def _tiny() -> tuple[torch.nn.Module, sparsekit.Recipe, DataLoader]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    loader = DataLoader(TensorDataset(torch.randn(16, 8), torch.randint(0, 3, (16,))), batch_size=8)
    recipe = sparsekit.Recipe(
        version=1,
        finetune={"epochs": 1},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"include": ["*"]}}],
    )
    return model, recipe, loader


def test_finetune_never_replaces_a_callers_own_last_pt(tmp_path):
    # last.pt is what many training scripts call their own checkpoint: the first epoch's replaced it silently.
    folder = tmp_path / "ckpts"
    folder.mkdir()
    mine = folder / "last.pt"
    torch.save({"my_model": torch.ones(3)}, mine)
    before = mine.read_bytes()
    model, recipe, loader = _tiny()
    with pytest.raises(OutputError, match=r"last\.pt: exists and is not a checkpoint"):
        sparsekit.finetune(model, recipe, loader, loader, checkpoint_dir=folder, progress=False)
    assert mine.read_bytes() == before
    # A checkpoint an earlier finetune wrote there is its own: a new run (no resume) starts it over.
    mine.unlink()
    sparsekit.finetune(model, recipe, loader, loader, checkpoint_dir=folder, progress=False)
    model, recipe, loader = _tiny()
    sparsekit.finetune(model, recipe, loader, loader, checkpoint_dir=folder, progress=False)
    assert set(torch.load(mine, weights_only=True)) >= {"epoch", "model", "optimizer", "pruner"}
