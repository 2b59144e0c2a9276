"""A sensitivity analysis of a model at chance accuracy says so: its per-layer ranking is noise."""

from __future__ import annotations

import json

import pytest
import torch
from test_sensitivity_cli import AUTO, MLP, run

import sparsekit
import sparsekit.sensitivity as sens
from examples.models import mlp


def table(accuracy: float, classes: int | None) -> sens.SensitivityTable:
    return sens.SensitivityTable(
        dense_accuracy=accuracy,
        dense_loss=2.3,
        val_samples=100,
        classes=classes,
        fingerprint="x",
        input_shape=[1, 64],
        model_macs=1,
        grid={},
    )


@pytest.mark.parametrize(
    ("accuracy", "classes", "warned"),
    [
        (0.12, 10, True),
        (0.18, 10, True),  # 0.1 + a tenth of the way to 1 is 0.19
        (0.20, 10, False),
        (0.90, 10, False),
        (0.52, 2, True),  # two classes: chance 0.5, the bound 0.55
        (0.60, 2, False),
        (0.05, None, False),  # an older table without the class count: nothing to compare with
        (0.0, 1, False),  # one output is no classifier
    ],
)
def test_untrained_warning_compares_dense_accuracy_with_chance(accuracy, classes, warned):
    text = table(accuracy, classes).noise_warning()
    assert (text is not None) == warned
    if warned:
        assert f"1/{classes}" in text and f"{accuracy:.4f}" in text


@pytest.fixture
def untrained(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "untrained.pt"
    sparsekit.save_model(mlp(), path, factory="examples.models:mlp", input_shape=[1, 64])
    return path


@pytest.fixture
def auto_recipe(tmp_path):
    path = tmp_path / "auto.yaml"
    path.write_text(AUTO)
    return path


def test_sensitivity_of_an_untrained_model_warns_and_records_the_classes(tmp_path, untrained, auto_recipe):
    result = run("sensitivity", untrained, auto_recipe, *MLP, "-o", tmp_path / "s", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["table"]["classes"] == 10
    assert len(doc["warnings"]) == 1 and "near chance" in doc["warnings"][0]
    assert "near chance" in doc["allocation"]["warning"]
    assert json.loads((tmp_path / "s" / "allocation.json").read_text())["warning"] == doc["warnings"][0]
    text = run("sensitivity", untrained, auto_recipe, *MLP, "-o", tmp_path / "t")
    assert text.exit_code == 0, text.output
    assert sum(line.startswith("Warning: ") and "near chance" in line for line in text.stderr.splitlines()) == 1
    assert "near chance" not in text.stdout  # warnings go to stderr, as every command's


def test_sensitivity_of_a_trained_model_does_not_warn(tmp_path, mlp_checkpoint, auto_recipe):
    result = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", tmp_path / "s", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["table"]["dense_accuracy"] > 0.5 and doc["warnings"] == []
    assert "warning" not in doc["allocation"]


def test_prune_with_auto_values_from_an_untrained_model_says_so_in_the_report(tmp_path, untrained, auto_recipe):
    from conftest import FAST

    out = tmp_path / "run"
    result = run("prune", untrained, auto_recipe, *MLP, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "near chance" in result.output
    report = json.loads((out / "report.json").read_text())
    assert sum("near chance" in note for note in report["notes"]) == 1
