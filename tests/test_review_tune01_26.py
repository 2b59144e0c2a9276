"""Review (tune01): the results suite's baselines fine-tune on the batch order the sparsekit arm gets."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

import sparsekit
from benchmarks.results import arms


class _Recorder(nn.Module):
    """A linear layer that notes which samples each batch held (column 0 carries the sample's index)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x[:, 0].long().tolist())
        return self.fc(x)


def test_plain_finetune_draws_each_epochs_batches_from_one_loader() -> None:
    # 200 samples in batches of 64: 4 batches per epoch. sparsekit.finetune (the sparsekit arm) iterates one loader
    # every epoch, so epoch 2 is shuffled anew; the baselines built a fresh loader per epoch and replayed epoch 1's
    # order, so the two arms did not train on "the same images in the same batch order" past the first epoch.
    x = torch.stack([torch.arange(200.0), torch.zeros(200)], dim=1)
    data = TensorDataset(x, torch.zeros(200, dtype=torch.long))
    split = arms.Split(data, data, data, seed=3)
    overrides = ["finetune.epochs=2", "pruning.0.schedule=oneshot", "seed=3"]
    recipe = sparsekit.load_recipe("lenet-gradual-magnitude-90", overrides=overrides)
    model = _Recorder()
    arms._plain_finetune(model, recipe, split)
    loader = split.train_loader()
    expected = [y[:, 0].long().tolist() for _ in range(2) for y, _ in loader]
    assert model.seen == expected
    assert model.seen[:4] != model.seen[4:]  # epoch 2 is not epoch 1 again
