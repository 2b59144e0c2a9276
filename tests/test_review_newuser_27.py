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


@pytest.mark.parametrize(
    ("schedule", "epochs", "noted"),
    [
        (
            {"name": "cosine", "hold_epochs": 3},
            4,
            "lower hold_epochs to at most 2, or raise finetune.epochs to at least 5",
        ),
        ({"name": "step", "step_size": 2, "hold_epochs": 2}, 4, "lower step_size to at most 1, or lower hold_epochs"),
        ({"name": "step", "step_size": 4}, 4, "lower step_size to at most 3, or raise finetune.epochs to at least 5"),
        ({"name": "cosine", "hold_epochs": 2}, 4, None),
        ({"name": "step", "step_size": 2, "hold_epochs": 1}, 4, None),
    ],
)
def test_a_decay_that_lowers_no_epoch_of_the_run_is_noted(schedule, epochs, noted):
    # A decay's own first epoch trains at the full rate (cosine's factor starts at 1; step keeps the rate for
    # step_size epochs), so `hold_epochs: 3` over 4 cosine epochs trained all 4 at the full rate: validate noted
    # only hold_epochs >= epochs, and said nothing here.
    import torch

    from sparsekit.recipe import unread_finetune_keys
    from sparsekit.train import make_scheduler

    spec = sparsekit.Recipe(finetune={"epochs": epochs, "optimizer": {"lr": 0.1}, "lr_schedule": schedule}).finetune
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer, spec)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    notes = [n for n in unread_finetune_keys(spec) if n.startswith("finetune.lr_schedule:")]
    assert (min(rates) == 0.1) == (noted is not None)  # the note is there exactly when no epoch is lowered
    if noted is None:
        assert notes == []
    else:
        assert len(notes) == 1 and "every epoch trains at the full rate" in notes[0] and noted in notes[0]


def test_the_summary_does_not_call_a_run_without_a_lowered_epoch_a_decay(tmp_path, mlp_checkpoint):
    # hold_epochs: 1 of 2 cosine epochs lowers the rate in neither; the summary said "cosine schedule after 1
    # epoch(s) at the full rate", read as a decay over the second.
    from test_train_schedule import held_summary

    text = held_summary(tmp_path, mlp_checkpoint, epochs=2, hold=1)
    assert "cosine schedule: the full rate in every epoch (the decay would start after the last)" in text
    assert "after 1 epoch(s) at the full rate" not in text
