"""Review (interruption, resume and torchrun angle, round 24): the methods with the richest state, stopped and resumed,
in one process and under torchrun."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

import sparsekit
from examples.models import mlp


def test_a_gradient_entry_after_a_taylor_structured_entry_keeps_this_steps_gradients():
    # Seen in a DDP loop of structured (importance taylor, fc1) + gradient taylor (fc3): at every structured removal
    # the structured entry set every parameter's .grad to None, so the gradient entry after it saw no gradient on
    # fc3 ("had no gradient ... call it after loss.backward()", though the loop did) and put off its mask update.
    torch.manual_seed(0)
    model = mlp()
    recipe = sparsekit.Recipe(
        finetune={"epochs": 2},
        pruning=[
            {"method": "structured", "ratio": 0.5, "importance": "taylor", "schedule": "oneshot",
             "layers": {"include": ["fc1"]}},
            {"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "schedule": "oneshot",
             "layers": {"include": ["fc3"]}},
        ],
    )  # fmt: skip
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2, context={"input_shape": [1, 64]})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deferral warning
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grad = model.fc3.weight.grad.clone()
        optimizer.step()
        pruner.step()
    assert pruner.structure_changed and model.fc1.out_features == 64
    assert float((model.fc3.weight == 0).float().mean()) == 0.5  # the oneshot mask, on its step
    assert torch.equal(model.fc3.weight.grad, grad)  # the step's own gradient, not the structured entry's mean
