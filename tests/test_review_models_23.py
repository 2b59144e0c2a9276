"""Review round 23, models in unusual states: lazy modules, parametrizations, wrappers, dtypes, forwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit

MAGNITUDE = {
    "version": 1,
    "model": {"input_shape": [1, 16]},
    "finetune": {"epochs": 1},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": {"exclude": ["fc2"]}}],
}


class _Lazy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.LazyLinear(8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("call", ["Pruner", "export_onnx", "save_model", "rehearse", "finetune"])
def test_a_lazy_layer_before_its_first_forward_is_refused_naming_it(tmp_path, call):
    # A LazyLinear's uninitialized weight raises on any tensor call: each of these failed deep inside with torch's
    # "Attempted to use an uninitialized parameter in <method 'is_inference' ...>", naming neither the layer nor
    # what to do.
    model = _Lazy()
    batch = [(torch.randn(4, 16), torch.randint(0, 4, (4,)))]
    calls = {
        "Pruner": lambda: sparsekit.Pruner(model, MAGNITUDE, steps_per_epoch=1),
        "export_onnx": lambda: sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 16)),
        "save_model": lambda: sparsekit.save_model(model, tmp_path / "m.pt", factory="pkg.mod:build"),
        "rehearse": lambda: sparsekit.rehearse(model, MAGNITUDE, (1, 16), 1, export=False),
        "finetune": lambda: sparsekit.finetune(model, MAGNITUDE, batch, batch),
    }
    with pytest.raises(sparsekit.SparsekitError, match=rf"^{call}\(model=...\): layer 'fc1' \(LazyLinear\).*forward"):
        calls[call]()
    assert not any(tmp_path.iterdir())
    # after one batch it is an ordinary Linear, and the Pruner takes it
    model(torch.randn(2, 16))
    pruner = sparsekit.Pruner(model, MAGNITUDE, steps_per_epoch=1)
    pruner.step()
    assert float((model.fc1.weight == 0).float().mean()) == 0.5
