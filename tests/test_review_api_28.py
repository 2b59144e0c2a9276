"""Review of the Python API as a user's own training script calls it (misuse gives a clear error naming the fix)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sparsekit

RECIPE: dict[str, Any] = {
    "version": 1,
    "finetune": {"epochs": 1},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}],
}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


_CALLS: dict[str, tuple[Callable[[nn.Module, Path], object], type[Exception]]] = {
    "Pruner": (lambda m, d: sparsekit.Pruner(m, RECIPE, 2), sparsekit.TargetError),
    "sparsity": (lambda m, d: sparsekit.sparsity(m), ValueError),
    "layer_report": (lambda m, d: sparsekit.layer_report(m), ValueError),
    "export_onnx": (lambda m, d: sparsekit.export_onnx(m, d / "m.onnx", input_shape=[1, 8]), sparsekit.ExportError),
    "save_model": (lambda m, d: sparsekit.save_model(m, d / "m.pt", factory="pkg.mod:build"), sparsekit.ModelFileError),
    "rehearse": (lambda m, d: sparsekit.rehearse(m, RECIPE, [1, 8], steps_per_epoch=2), sparsekit.TargetError),
}


@pytest.mark.parametrize("call", sorted(_CALLS))
@pytest.mark.parametrize("where", ["whole", "one layer"])
def test_a_model_on_the_meta_device_is_refused_naming_the_layer_and_how_to_load_weights(
    call: str, where: str, tmp_path: Path
) -> None:
    # A model built under torch.device("meta") (shapes only, weights to be loaded later) failed deep inside torch:
    # "Tensor.item() cannot be called on meta tensors" (sparsity, layer_report, the Pruner's first step) or
    # "Cannot copy out of meta tensor; no data!" (export_onnx, save_model), naming neither the model nor the fix.
    model = _mlp()
    if where == "whole":
        model = model.to("meta")
    else:
        model[2].to("meta")
    fn, error = _CALLS[call]
    with pytest.raises(error, match="meta device") as caught:
        fn(model, tmp_path)
    message = str(caught.value)
    assert f"{call}(model=...)" in message
    assert ("'0'" if where == "whole" else "'2'") in message
    assert "load_state_dict(state, assign=True)" in message
    assert not list(tmp_path.iterdir())


def test_a_meta_model_given_its_weights_is_taken() -> None:
    real = _mlp()
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    model.load_state_dict(real.state_dict(), assign=True)
    assert sparsekit.sparsity(model) == 0.0
    pruner = sparsekit.Pruner(model, RECIPE, 2)
    pruner.step()
    assert sparsekit.sparsity(pruner.finalize()) == pytest.approx(0.5, abs=0.02)
