"""Review (new-user angle): faults found following the README from an installed wheel, outside the repository."""

from __future__ import annotations

import pytest

import sparsekit


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("epochs", None, "finetune.epochs: must be a whole number (got null)"),
        ("epochs", [3], "finetune.epochs: must be a whole number (got a list [3])"),
        ("optimizer", {"lr": None}, "finetune.optimizer.lr: must be a number (got null)"),
        ("lr_schedule", {"name": "cosine", "hold_epochs": None}, "hold_epochs: must be a whole number (got null)"),
    ],
)
def test_a_number_field_given_null_or_a_list_says_what_it_got(key, value, said):
    # `epochs: null` (or a bare `epochs:`) was answered with pydantic's "Input should be a valid integer", which did
    # not say that the value written was null (or a list).
    with pytest.raises(sparsekit.RecipeError) as err:
        sparsekit.load_recipe({"version": 1, "finetune": {"epochs": 4, key: value}})
    assert said in str(err.value)
    assert "Input should be" not in str(err.value)


def test_a_required_number_given_null_says_so_without_offering_a_default():
    with pytest.raises(sparsekit.RecipeError) as err:
        sparsekit.load_recipe({"version": 1, "pruning": [{"method": "max_norm", "max_value": None}]})
    assert "pruning[0].max_value: must be a number (got null)" in str(err.value)
    assert "leave the key out" not in str(err.value)
