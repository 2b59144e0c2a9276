"""Review of issue 16 (L1 on a scale users know) from held-out training loops: what a user reads about an l1 entry
that could not zero anything, and the other checks that review made."""

from __future__ import annotations

import pytest
import torch

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
