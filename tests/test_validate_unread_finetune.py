"""``sparsekit validate`` names the finetune keys a recipe writes that the run will not read (momentum beside
adam, gamma beside a constant schedule, the optimizer and distill with no training): they validated without a
word, and the user expected a decay, a momentum or a teacher that never came."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sparsekit.cli import main
from sparsekit.recipe import unread_finetune_keys, validate_recipe

PRUNE = {"pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}]}


def _unread(finetune: dict) -> list[str]:
    return unread_finetune_keys(validate_recipe({**PRUNE, "finetune": finetune}).finetune)


@pytest.mark.parametrize(
    ("finetune", "named"),
    [
        ({"epochs": 2, "optimizer": {"name": "adam", "momentum": 0.5}}, ["finetune.optimizer.momentum"]),
        ({"epochs": 2, "optimizer": {"name": "adamw", "momentum": 0.9}}, ["finetune.optimizer.momentum"]),
        ({"epochs": 2, "lr_schedule": {"name": "constant", "gamma": 0.5}}, ["finetune.lr_schedule.gamma"]),
        (
            {"epochs": 2, "lr_schedule": {"name": "cosine", "step_size": 2, "gamma": 0.5}},
            ["finetune.lr_schedule.step_size and finetune.lr_schedule.gamma"],
        ),
        ({"epochs": 0, "distill": {"weight": 0.5}}, ["finetune.distill"]),
        ({"epochs": 0, "optimizer": {"lr": 0.1}, "lr_schedule": {"name": "cosine"}}, ["finetune.optimizer, finetune"]),
    ],
)
def test_keys_the_run_will_not_read_are_named(finetune, named):
    words = _unread(finetune)
    assert len(words) == len(named), words
    for text, name in zip(words, named, strict=True):
        assert text.startswith(name), words


@pytest.mark.parametrize(
    "finetune",
    [
        {"epochs": 2, "optimizer": {"name": "sgd", "momentum": 0.5}},
        {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.001}},
        {"epochs": 3, "lr_schedule": {"name": "step", "step_size": 2, "gamma": 0.5}},  # (2 epochs: no decay, noted)
        {"epochs": 2, "distill": {"weight": 0.5}},
        {"epochs": 0},
        {"epochs": 0, "distill": None},
    ],
)
def test_keys_the_run_reads_are_not_named(finetune):
    assert _unread(finetune) == []


def test_validate_prints_them_and_lists_them_in_json(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nfinetune: {epochs: 1, optimizer: {name: adam, momentum: 0.5}}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    text = CliRunner().invoke(main, ["validate", str(recipe)])
    assert text.exit_code == 0, text.output
    assert "Note: finetune.optimizer.momentum: read by sgd only" in text.output
    doc = CliRunner().invoke(main, ["validate", str(recipe), "--json"])
    assert doc.exit_code == 0, doc.output
    assert [n.split(":")[0] for n in json.loads(doc.stdout)["notes"]] == ["finetune.optimizer.momentum"]
