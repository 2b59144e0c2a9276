"""A recipe with no pruning entries: a dense baseline run in the CLI (said as "no method here creates zeros"), a
warning from a Pruner or trainer built on it (a `pruning:` key misspelt or indented under another section), and a
note from validate."""

from __future__ import annotations

import warnings

import pytest
from click.testing import CliRunner

import sparsekit
from examples.models import mlp
from sparsekit.cli import main


def test_a_pruner_on_a_recipe_without_entries_warns():
    recipe = {"model": {"input_shape": [1, 64]}, "finetune": {"epochs": 1}}
    with pytest.warns(UserWarning, match="the recipe has no pruning entries, so nothing is pruned"):
        sparsekit.Pruner(mlp(), recipe, steps_per_epoch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsekit.Pruner(mlp(), {**recipe, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}, steps_per_epoch=2)


def test_validate_notes_a_recipe_without_entries(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\nfinetune: {epochs: 1}\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "no pruning entries: prune would fine-tune, export and benchmark the model dense" in result.output


def test_prune_says_it_once_in_its_own_words(tmp_path, mlp_checkpoint):
    from conftest import fast_prune

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {input_shape: [1, 64]}\ndata: {source: digits}\nfinetune: {epochs: 1, max_steps_per_epoch: 2}\n"
    )
    result = fast_prune(mlp_checkpoint, recipe, tmp_path / "out", "--arch", "examples.models:mlp")
    assert result.exit_code == 0, result.output
    assert "no method here creates zeros" in result.output
    assert "no pruning entries" not in result.output  # the Pruner's warning, for API users, is not repeated
