"""Review of the public Python API as a library user reads it (signatures, type hints, documented errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.analysis import run_sensitivity

RECIPE = {
    "version": 1,
    "model": {"input_shape": [1, 8]},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": {"include": ["*"]}}],
}


def test_run_sensitivity_takes_a_path_for_data(tmp_path: Path) -> None:
    # data= is typed and documented like run_prune's: a pathlib.Path to a missing .npz is the DataError naming it,
    # not AttributeError "'PosixPath' object has no attribute 'strip'".
    model_file = tmp_path / "m.pt"
    torch.save(nn.Linear(8, 2).state_dict(), model_file)
    missing = tmp_path / "nothere.npz"
    with pytest.raises(sparsekit.DataError, match="nothere.npz"):
        run_sensitivity(model_file, RECIPE, tmp_path / "out", data=missing, progress=False)
    with pytest.raises(TypeError, match="run_sensitivity"):
        run_sensitivity(model_file, RECIPE, tmp_path / "out", data=3, progress=False)  # type: ignore[arg-type]
