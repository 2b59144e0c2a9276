"""A new user's first hour with their own models (review 19): what the summary and report.md say must be
what happened to each layer."""

from __future__ import annotations

import pytest
import torch

from examples.models import mlp
from sparsekit.report import render_markdown, render_summary, summarize
from tests.test_report_summary import _prune, _recipe, _report

MLP_SHAPE = [1, 64]


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"method": "structured", "ratio": 0.5, "schedule": "oneshot", "round_to": None}, "classifier head"),
        ({"method": "structured", "ratio": 0.5, "schedule": "oneshot", "round_to": None, "ignore": ["fc3"]}, "ignore"),
        ({"method": "l1", "strength": 1e-3, "group": "row"}, "output layer"),
    ],
)
def test_the_head_an_entry_selected_but_left_out_is_not_said_to_be_selected_by_no_entry(entry, words):
    # layers: '*' (the default) selects fc3; the entry leaves it out (structured's ignore, group lasso's head).
    # Saying "no pruning entry selects it" sent the user to widen a glob that already matched it.
    torch.manual_seed(0)
    recipe = _recipe([entry], model={"input_shape": MLP_SHAPE})
    dense, model, pruner = _prune(mlp(), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    s = summarize(report)
    assert s.excluded == ["fc3"]
    assert words in s.excluded_why["fc3"] and "pruning[0]" in s.excluded_why["fc3"]
    for text in (render_summary(report, "out"), render_markdown(report)):
        assert "no pruning entry selects" not in text
        assert words in text


def test_a_layer_no_entry_selects_is_still_said_so():
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "layers": ["fc1"]}], model={"input_shape": MLP_SHAPE})
    dense, model, pruner = _prune(mlp(), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    s = summarize(report)
    assert s.excluded == ["fc2", "fc3"] and s.excluded_why == {}
    assert "not pruned: fc2, fc3 (no pruning entry selects them)" in render_summary(report, "out")
