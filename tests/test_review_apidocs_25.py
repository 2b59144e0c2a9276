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


def test_update_optimizer_is_typed_to_return_the_optimizer_given() -> None:
    # It updates the optimizer in place and returns it: `optimizer = pruner.update_optimizer(optimizer)` with an SGD
    # was a mypy error ("Optimizer" assigned to "SGD") while the hint said any Optimizer came back.
    import typing

    hints = typing.get_type_hints(sparsekit.Pruner.update_optimizer)
    assert isinstance(hints["return"], typing.TypeVar)
    assert hints["return"] is hints["optimizer"]
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    pruner = sparsekit.Pruner(model, RECIPE, steps_per_epoch=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert pruner.update_optimizer(optimizer) is optimizer


@pytest.mark.parametrize(("steps", "error"), [(0, ValueError), (1.5, TypeError)])
def test_rehearse_names_its_own_steps_per_epoch(steps: object, error: type[Exception]) -> None:
    # A bad steps_per_epoch was reported as "Pruner(steps_per_epoch=...)", a call the user of rehearse never made.
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(error, match=r"^rehearse\(steps_per_epoch=\.\.\.\)"):
        sparsekit.rehearse(model, RECIPE, [1, 8], steps)  # type: ignore[arg-type]
