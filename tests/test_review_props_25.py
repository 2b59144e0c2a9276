"""Property tests (hypothesis) of the Python API's Pruner on random small models and every method.

Each property here failed on the code before the fix it came with; the ones that already held are in the
review report, not here."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit
from sparsekit.errors import TargetError

FEW = settings(max_examples=15, deadline=None)


def _mlp(widths: list[int]) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@settings(max_examples=8, deadline=None)
@given(
    widths=st.lists(st.integers(2, 6), min_size=3, max_size=5),
    masking=st.sampled_from(["magnitude", "gradient"]),
    structured_on=st.integers(0, 3),
    first=st.booleans(),
)
def test_following_an_overlap_error_s_remedy_once_is_enough(widths, masking, structured_on, first):
    # A structured entry removing channels under a masking entry's masks named one layer per error: a user who
    # excluded it met the same error for the next layer (three tries on a 3-layer MLP), every layer named at once.
    linear = [str(2 * k) for k in range(len(widths) - 1)]
    roots = linear[: max(1, min(structured_on + 1, len(linear) - 1))]
    structured = {"method": "structured", "ratio": 0.5, "round_to": None, "layers": roots, "schedule": "oneshot"}
    exclude: list[str] = []

    def build() -> None:
        entry = {"method": masking, "sparsity": 0.5, "schedule": "oneshot", "layers": {"exclude": exclude}}
        entries = [structured, entry] if first else [entry, structured]
        recipe = {"version": 1, "model": {"input_shape": [1, widths[0]]}, "finetune": {"epochs": 1}, "pruning": entries}
        sparsekit.Pruner(_mlp(widths), recipe, steps_per_epoch=1)

    with pytest.raises(TargetError, match="the masks would no longer fit") as err:
        build()
    named = re.findall(r"'(\d+)'", str(err.value).split("whose weights")[0])
    if set(named) == set(linear):  # every layer: the error says excluding them leaves the entry nothing
        assert "selects no other layer" in str(err.value)
        return
    assert f"Exclude {', '.join(repr(n) for n in named)} from" in str(err.value)
    exclude.extend(named)
    build()  # the one remedy given is the whole of it


def test_an_overlap_of_two_masking_entries_names_every_shared_layer():
    recipe = {
        "version": 1,
        "finetune": {"epochs": 1},
        "pruning": [
            {"method": "magnitude", "sparsity": 0.5, "layers": ["0", "2", "4"]},
            {"method": "gradient", "sparsity": 0.5, "layers": ["2", "4", "6"]},
        ],
    }
    with pytest.raises(TargetError, match=r"both mask the weights of '2', '4': exclude them"):
        sparsekit.Pruner(_mlp([3, 4, 4, 4, 2]), recipe, steps_per_epoch=1)
