"""Wrappers are unwrapped by class everywhere a layer name is read: a child of one's own called ``module`` keeps its
place (found by review: save_model, sparsity(), the inspection and the sensitivity scan dropped every layer beside
it), and a torch.compile'd model is saved under the names its architecture loads."""

from __future__ import annotations

import torch
from torch import nn

import sparsekit
from sparsekit.wrappers import unwrap


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.module(x)))


def test_a_child_called_module_is_not_taken_for_a_wrapper(tmp_path):
    model = Holder()
    assert unwrap(model) is model
    with torch.no_grad():
        model.head.weight.zero_()  # 18 of the 82 weights
    assert sparsekit.sparsity(model) == 18 / (32 + 48 + 18)
    path = sparsekit.save_model(model, tmp_path / "m.pt", factory="x:y")
    keys = set(torch.load(path, weights_only=True)["state_dict"])
    assert {"module.0.weight", "module.2.weight", "head.weight"} <= keys


def test_data_parallel_and_compiled_wrappers_are_unwrapped(tmp_path):
    model = Holder()
    wrapped = nn.DataParallel(torch.compile(model))
    assert unwrap(wrapped) is model
    path = sparsekit.save_model(torch.compile(model), tmp_path / "m.pt", factory="x:y")
    keys = set(torch.load(path, weights_only=True)["state_dict"])
    assert "head.weight" in keys and not [k for k in keys if k.startswith("_orig_mod")]
