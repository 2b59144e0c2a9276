"""l1's "could not find the classifier head" warning on a model whose forward takes several inputs.

It told the user to set model.input_shape or pass context={'input_shape': ...}, which no single shape can satisfy
for forward(image, meta) (a model traced with one tensor of that shape fails); only layers.exclude works.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

import sparsekit


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 + 5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        x = self.conv(image).mean((2, 3))
        return self.head(self.fc(torch.cat([x, meta], 1)).relu())


def _warnings(entry: dict) -> list[str]:
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [entry]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparsekit.Pruner(Two(), recipe, steps_per_epoch=4)
    return [str(w.message) for w in caught if "classifier head" in str(w.message)]


def test_the_head_warning_for_several_inputs_leads_with_layers_exclude_not_a_shape() -> None:
    entry = {"method": "l1", "strength": 1e-3, "remove_dead": False, "group": "row", "layers": {"types": ["Linear"]}}
    (message,) = _warnings(entry)
    assert "several inputs" in message, message
    assert "input_shape" not in message and "context=" not in message, message
    assert "leave the head out with layers.exclude" in message, message


def test_a_given_exclude_still_silences_it() -> None:
    entry = {"method": "l1", "strength": 1e-3, "remove_dead": False, "group": "row"}
    entry["layers"] = {"types": ["Linear"], "exclude": ["head"]}
    assert _warnings(entry) == []
