"""pruner.regularize(): the L1 / group-lasso gradient added to .grad, so the user's loss needs no edit;
with mixed precision (CPU autocast bfloat16, GradScaler) and gradient accumulation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))


def l1_recipe(group: str = "none", strength: float = 3e-3, epochs: int = 2) -> sparsekit.Recipe:
    return sparsekit.Recipe(
        finetune={"epochs": epochs},
        pruning=[{"method": "l1", "strength": strength, "group": group, "remove_dead": False}],
    )


def run(model: nn.Module, recipe: sparsekit.Recipe, how: str, steps: int = 6) -> list[torch.Tensor]:
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if how == "penalty":
            (loss + pruner.penalty()).backward()
        else:
            loss.backward()
            pruner.regularize()
        opt.step()
        pruner.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("group", ["none", "row"])
def test_regularize_follows_the_same_trajectory_as_adding_the_penalty_to_the_loss(group):
    recipe = l1_recipe(group)
    by_penalty = run(mlp(), recipe, "penalty")
    by_regularize = run(mlp(), recipe, "regularize")
    dense = run(mlp(), sparsekit.Recipe(finetune={"epochs": 2}, pruning=[]), "penalty")
    for a, b in zip(by_penalty, by_regularize, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # ... and the penalty did something: the weights differ from training without it.
    assert any(not torch.allclose(a, d, atol=1e-4) for a, d in zip(by_penalty, dense, strict=True))


def test_regularize_adds_exactly_the_penalty_gradient():
    model = mlp()
    pruner = sparsekit.Pruner(model, l1_recipe("none", strength=0.01), steps_per_epoch=3)
    model(torch.randn(4, 12)).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    pruner.regularize()
    for (name, p), g in zip(model.named_parameters(), before, strict=True):
        expected = g + 0.01 * p.detach().sign() if name.endswith("weight") else g
        torch.testing.assert_close(p.grad, expected)


def test_regularize_sets_grad_of_a_parameter_that_had_none_and_is_a_noop_without_l1():
    model = mlp()
    pruner = sparsekit.Pruner(model, l1_recipe("none", strength=0.01), steps_per_epoch=3)
    pruner.regularize()
    torch.testing.assert_close(model[0].weight.grad, 0.01 * model[0].weight.detach().sign())

    plain = mlp()
    magnitude = sparsekit.Recipe(pruning=[{"method": "magnitude", "sparsity": 0.5}])
    sparsekit.Pruner(plain, magnitude, steps_per_epoch=3).regularize()
    assert all(p.grad is None for p in plain.parameters())


def test_autocast_bfloat16_gradscaler_and_accumulation_keep_zeros_and_reach_the_sparsity():
    """The documented loop: autocast forward, scaled backward per micro-batch, then once per real
    optimizer step: unscale_, regularize, scaler.step, pruner.step."""
    model = mlp()
    recipe = sparsekit.Recipe(
        finetune={"epochs": 2},
        pruning=[
            {
                "method": "gradient",
                "sparsity": 0.6,
                "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5},
                "layers": {"include": ["0"]},
            },
            {"method": "l1", "strength": 1e-3, "remove_dead": False, "layers": {"include": ["2", "4"]}},
        ],
    )
    accumulate, real_steps_per_epoch = 2, 4
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=real_steps_per_epoch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    g = torch.Generator().manual_seed(2)
    for _ in range(2 * real_steps_per_epoch):
        opt.zero_grad()
        for _ in range(accumulate):
            x, y = torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y) / accumulate
            scaler.scale(loss).backward()
        scaler.unscale_(opt)
        pruner.regularize()
        scaler.step(opt)
        scaler.update()
        pruner.step()
        mask = pruner.masks()["0"]
        assert bool((model[0].weight[~mask] == 0).all())  # zeros stay zero under bf16 and scaling
    assert pruner.step_count == 2 * real_steps_per_epoch
    assert pruner.epoch == 2
    model = pruner.finalize()
    zeros = int((model[0].weight == 0).sum())
    assert zeros == round(0.6 * model[0].weight.numel())
    assert all(torch.isfinite(p).all() for p in model.parameters())
