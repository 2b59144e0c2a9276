"""``sparsekit.Recipe(...)``'s errors spell their remedies as keys of its arguments: it takes no
``overrides=[...]``, which its message told the user to pass (found by d2)."""

from __future__ import annotations

import pytest

import sparsekit
from sparsekit.errors import RecipeError


def test_a_schedule_past_the_epochs_names_keys_not_overrides():
    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 4.5}}
    with pytest.raises(RecipeError) as info:
        sparsekit.Recipe(finetune={"epochs": 2}, pruning=[entry])
    message = str(info.value)
    assert "overrides=" not in message, message
    assert "finetune.epochs: 5 in the recipe dict" in message, message
