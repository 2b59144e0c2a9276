"""The digits split and tiny training loop the sensitivity and allocation tests share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset


def digits(image: bool = False):
    """scikit-learn's digits split 1000 train / 400 validation / 397 test (fixed permutation)."""
    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x / 16.0, dtype=torch.float32)
    xt = xt.view(-1, 1, 8, 8) if image else xt
    yt = torch.tensor(y)
    perm = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))
    parts = perm[:1000], perm[1000:1400], perm[1400:]
    return [TensorDataset(xt[p], yt[p]) for p in parts]


class single_thread:
    """torch on one thread inside a module fixture (the one_thread fixture is per test)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def loader(ds, shuffle=False, seed=0):
    return DataLoader(ds, batch_size=64, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def train(model, ds, epochs, lr=3e-3, seed=0, pruner=None):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for x, y in loader(ds, shuffle=True, seed=seed):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if pruner is not None:
                pruner.step()
    return pruner.finalize().eval() if pruner is not None else model.eval()
