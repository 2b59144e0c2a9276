"""Review of issue 16 (L1 on a scale users know) from held-out training loops: what a user reads about an l1 entry
that could not zero anything, and the other checks that review made."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from examples.models import mlp
from sparsekit.planning import describe
from sparsekit.report import render_summary
from tests.test_report_summary import MLP_SHAPE, _prune, _recipe, _report

# --- a penalty with no threshold and no target makes no exact zeros ------------------------------------------


def _penalty_run(spec: dict):
    torch.manual_seed(0)
    recipe = _recipe([{"method": "l1", "strength": 1e-2, **spec}], model={"input_shape": MLP_SHAPE})
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32, 16]), recipe, MLP_SHAPE, steps=3)
    return recipe, render_summary(_report(dense, model, pruner, recipe, MLP_SHAPE), "out")


@pytest.mark.parametrize("group", ["row", "none"])
def test_penalty_without_threshold_is_not_told_to_raise_strength(group):
    """`mode: penalty` (the default) with threshold 0 and no target: a subgradient never lands on an exact zero, so
    the run zeroed nothing, and the summary said "raise strength, or set target": no strength would have helped.
    It now says why and names the three ways out; validate's plan says it before training."""
    recipe, text = _penalty_run({"mode": "penalty", "group": group})
    assert "achieved nothing" in text
    assert "raise strength" not in text
    assert "a penalty makes no exact zeros" in text and "set threshold" in text and "mode: proximal" in text
    assert "under 0 zeroed at the end" not in text  # the recipe line no longer promises a zeroing it cannot do
    plan = describe(recipe.pruning[0], ["fc1", "fc2"], steps_per_epoch=10, epochs=1)
    assert "no weight will end at zero" in plan and "known only after training" not in plan


@pytest.mark.parametrize(
    "spec",
    [{"mode": "proximal", "group": "row"}, {"mode": "penalty", "group": "row", "threshold": 1e-9}],
)
def test_an_entry_that_could_zero_is_still_told_to_raise_strength(spec):
    """Proximal mode, or a penalty with a threshold, can zero with more strength: that advice stands."""
    recipe, text = _penalty_run(spec)
    assert "achieved nothing" in text and "raise strength" in text
    assert "a penalty makes no exact zeros" not in text
    assert "no weight will end at zero" not in describe(recipe.pruning[0], ["fc1", "fc2"], 10, 1)


# --- the migration note for proximal strength from sparsekit 0.1.0 -------------------------------------------


def _proximal_shrink(strength: float, cosine: bool, override: float | None = None) -> float:
    """The mean drop of fc1's unit norms after 40 steps of proximal group L1 with zero gradients: the shrink alone."""
    torch.manual_seed(0)
    model = mlp(in_features=8, hidden=[6])
    with torch.no_grad():
        model.fc1.weight.mul_(50)  # far from zero: no unit dies, every step's shrink shows in full
    before = model.fc1.weight.norm(dim=1).clone()
    lr, epochs, steps = 0.05, 4, 10
    recipe = sparsekit.Recipe(
        version=1,
        model={"input_shape": [1, 8]},
        finetune={"epochs": epochs, "optimizer": {"name": "sgd", "lr": lr}},
        pruning=[{"method": "l1", "mode": "proximal", "group": "row", "strength": strength, "proximal_every": 1}],
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if cosine else None
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=steps)
    for _ in range(epochs):
        for _ in range(steps):
            opt.zero_grad()
            (model(torch.randn(2, 8)).sum() * 0).backward()
            opt.step()
            pruner.step(lr=override)
        if sched is not None:
            sched.step()
    return float((before - model.fc1.weight.norm(dim=1)).mean())


def test_migration_note_says_old_over_lr_is_the_old_run_under_a_constant_rate_only():
    """sparsekit 0.1.0's proximal strength was the shrink per step, the same at every step. The note said "divide
    such a value by the learning rate to keep the old run": under the cosine schedule the shipped recipes use, that
    gives about half the old total shrink (0.56x over 4 epochs here). The note now says when the division keeps the
    run and what keeps it otherwise (the mean rate for the total; pruner.step(lr=lr0) for every step)."""
    from pathlib import Path

    from sparsekit.recipe import L1Spec

    old, lr = 2e-4, 0.05
    assert _proximal_shrink(old / lr, cosine=False) == pytest.approx(old * 40, rel=1e-3)  # constant rate: kept
    assert _proximal_shrink(old / lr, cosine=True) == pytest.approx(old * 40 * 0.625, rel=1e-3)  # cosine: not
    assert _proximal_shrink(old / lr, cosine=True, override=lr) == pytest.approx(old * 40, rel=1e-3)
    note = L1Spec.model_fields["strength"].description or ""
    assert "constant rate only" in note and "mean rate" in note and "pruner.step(lr=" in note
    page = (Path(__file__).resolve().parent.parent / "docs" / "recipe.md").read_text()
    assert "keeps the old run under a constant rate only" in page
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "keeps the old run under a constant rate only" in readme


# --- group lasso without an input shape: the head it could not find ------------------------------------------


class _HeadFirst(nn.Module):
    """The head registered first: a first-Linear guess of the input shape takes its 16 inputs, which do not run."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 4)
        self.body = nn.Linear(20, 32)
        self.mid = nn.Linear(32, 16)

    def forward(self, x):
        return self.head(torch.relu(self.mid(torch.relu(self.body(x)))))


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.c1(x))).mean((2, 3))


def _group_recipe(group: str, **extra) -> sparsekit.Recipe:
    entry = {"method": "l1", "mode": "proximal", "group": group, "strength": 1e-3, "target": 0.5}
    entry["schedule"] = {"start_epoch": 0, "end_epoch": 1}
    return sparsekit.Recipe(version=1, finetune={"epochs": 1}, pruning=[{**entry, **extra}])


@pytest.mark.parametrize(("model", "group"), [(_HeadFirst, "row"), (_ConvNet, "channel")])
def test_group_l1_that_cannot_find_the_head_when_built_finds_it_on_the_first_batch(model, group):
    """A Pruner given no input shape, on a model whose head is registered first (the first-Linear guess does not
    run) or whose first layer is a conv (no guess), selected the head with the rest: the target zeroed 2 of its 4
    rows, leaving those classes only their bias, and nothing was said until finalize skipped remove_dead. The
    Pruner then warned when it was built; it now builds group lasso on the first batch (review l1_23), which finds
    the head and leaves it out, so there is nothing to warn about."""
    import warnings

    net = model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = sparsekit.Pruner(net, _group_recipe(group), steps_per_epoch=4)
        net(torch.randn(2, 20) if group == "row" else torch.randn(2, 1, 8, 8))
    assert not [w for w in caught if "classifier head" in str(w.message)]
    assert pruner.methods[0].head_left_out == ["head"]


@pytest.mark.parametrize(
    ("model", "recipe", "context"),
    [
        (_HeadFirst, _group_recipe("row"), {"input_shape": [1, 20]}),  # a shape: the head is found and left out
        (_HeadFirst, _group_recipe("row", layers={"include": ["body", "mid"]}), None),  # the user named the layers
        (_ConvNet, _group_recipe("channel"), {"input_shape": [1, 1, 8, 8]}),
    ],
)
def test_no_head_warning_where_the_head_is_known_or_the_layers_named(model, recipe, context):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparsekit.Pruner(model(), recipe, steps_per_epoch=4, context=context)
    assert not [w for w in caught if "classifier head" in str(w.message)]
