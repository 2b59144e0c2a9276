"""sparsekit.finetune's loaders are read once per epoch and sized by len(): what cannot be is refused up front,
as a DataError naming the argument. Before, an empty val_loader reported val_accuracy 0.0 and val_loss 0.0 for
every epoch, and a generator or an IterableDataset's DataLoader failed with a bare TypeError."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import sparsekit
from sparsekit.errors import DataError

RECIPE = {"version": 1, "finetune": {"epochs": 2}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}


def _data():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    return x, (x[:, 0] > 0).long()


def _model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


class _Stream(IterableDataset):
    def __iter__(self):
        x, y = _data()
        return iter(zip(x, y, strict=True))


def _loaders(kind):
    x, y = _data()
    good = DataLoader(TensorDataset(x, y), batch_size=16)
    return {
        "generator": ((b for b in good), good, "train_loader", "only once"),
        "iterator": (good, iter(good), "val_loader", "only once"),
        "iterable dataset": (DataLoader(_Stream(), batch_size=16), good, "train_loader", "no len()"),
        "empty train": ([], good, "train_loader", "no batches"),
        "empty val": (good, [], "val_loader", "no batches"),
    }[kind]


@pytest.mark.parametrize("kind", ["generator", "iterator", "iterable dataset", "empty train", "empty val"])
def test_unusable_loaders_are_named(kind, one_thread):
    train, val, name, why = _loaders(kind)
    with pytest.raises(DataError) as err:
        sparsekit.finetune(_model(), RECIPE, train, val, progress=False)
    assert f"finetune({name}=...)" in str(err.value) and why in str(err.value), str(err.value)


def test_a_list_of_batches_still_trains(one_thread):
    x, y = _data()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    model, history, pruner = sparsekit.finetune(_model(), RECIPE, batches, batches, progress=False)
    assert len(history) == 2 and history[-1]["val_accuracy"] > 0
