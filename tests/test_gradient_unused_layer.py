"""A gradient-criterion layer that never gets a gradient while the entry's others do is a layer the forward pass
skips: say that, not "call pruner.step() after loss.backward()" (the loop's order was right)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import TargetError


class Skips(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)  # c: never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).relu())


def train(model: nn.Module, pruner: sparsekit.Pruner, steps: int) -> list[str]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(8, 8)), torch.randint(0, 4, (8,))).backward()
            opt.step()
            pruner.step()
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("criterion", ["taylor", "movement"])
def test_a_layer_the_forward_pass_skips_is_named_as_such(criterion):
    model = Skips()
    recipe = {
        "version": 1,
        "pruning": [{"method": "gradient", "criterion": criterion, "sparsity": 0.5, "schedule": "oneshot"}],
    }
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    said = [m for m in train(model, pruner, 4) if "no gradient" in m]
    assert len(said) == 1 and "'c'" in said[0] and "no part in the forward pass" in said[0]
    assert "call it after loss.backward()" not in said[0]
    with pytest.raises(TargetError, match=r"layer 'c', while the entry's other layers got theirs.*layers\.exclude"):
        pruner.finalize()


def test_a_loop_that_zeroes_every_gradient_still_hears_about_call_order():
    model = Skips()
    recipe = {"version": 1, "pruning": [{"method": "gradient", "sparsity": 0.5, "layers": {"include": ["a", "b"]}}]}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(8):
            nn.functional.cross_entropy(model(torch.randn(8, 8)), torch.randint(0, 4, (8,))).backward()
            opt.step()
            opt.zero_grad()  # before pruner.step(): every layer's gradient is gone
            pruner.step()
    said = [str(w.message) for w in caught if "no gradient" in str(w.message)]
    assert said and "call it after loss.backward()" in said[0] and "forward pass" not in said[0]
