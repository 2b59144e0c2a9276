"""Architectures users bring, end to end (review round 28, angle: arch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import TargetError


class _NoGradBackbone(nn.Module):
    """A backbone kept fixed in forward (run under torch.no_grad()), its parameters still requires_grad=True."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.neck = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.backbone(x)
        return self.head(torch.relu(self.neck(f)))


def _taylor_recipe(**layers: object) -> sparsekit.Recipe:
    entry: dict[str, object] = {"method": "structured", "ratio": 0.5, "importance": "taylor", "steps": 1}
    entry["schedule"] = {"start_epoch": 0, "end_epoch": 0}
    if layers:
        entry["layers"] = layers
    return sparsekit.Recipe(version=1, model={"input_shape": [1, 16]}, finetune={"epochs": 1}, pruning=[entry])


def _train(model: nn.Module, pruner: sparsekit.Pruner, steps: int) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 16)), torch.randint(0, 3, (4,))).backward()
        opt.step()
        pruner.step()


def test_structured_taylor_names_layers_off_the_gradient_path_not_the_loop_order(one_thread):
    # Users saw "got none before the removal: give the recipe fine-tuning epochs ... call pruner.step() after
    # loss.backward()" for a backbone their forward runs under no_grad: their recipe had epochs and their loop the
    # right order. The error names the layers as off the gradient path and the two ways out.
    torch.manual_seed(0)
    model = _NoGradBackbone()
    pruner = sparsekit.Pruner(model, _taylor_recipe(), steps_per_epoch=2)
    with pytest.raises(TargetError) as err:
        _train(model, pruner, 2)
    text = str(err.value)
    assert "'backbone.0', 'backbone.2' get none" in text and "off the path" in text
    assert "layers.exclude" in text and "fine-tuning epochs" not in text
    # The way out it names works: the layers left out, the neck's channels are ranked and removed.
    model = _NoGradBackbone()
    pruner = sparsekit.Pruner(model, _taylor_recipe(exclude=["backbone.*"]), steps_per_epoch=2)
    _train(model, pruner, 2)
    assert pruner.finalize().neck.out_features == 4


def test_structured_taylor_on_layers_off_the_gradient_path_is_refused_before_training(one_thread):
    # Users saw `prune` fine-tune a whole epoch before the taylor removal failed for a backbone run under
    # torch.no_grad() (the rehearsal's placeholder gradients reach every layer); the up-front gradient-reach check
    # that gradient entries had now covers structured taylor too: the rehearsal refuses it, naming the layers.
    with pytest.raises(TargetError, match=r"'backbone.0', 'backbone.2' get no gradient .*torch.no_grad\(\)"):
        sparsekit.rehearse(_NoGradBackbone(), _taylor_recipe(), input_shape=[1, 16], steps_per_epoch=2)
    # Left out, the same entry rehearses.
    sparsekit.rehearse(
        _NoGradBackbone(), _taylor_recipe(exclude=["backbone.*"]), input_shape=[1, 16], steps_per_epoch=2
    )
