"""Unstructured pruning criteria as scorers: one function per criterion, higher score = keep.

A scorer is any callable ``scorer(weight, grad) -> scores``:

- ``weight``: one layer's weight, detached (e.g. ``[out, in]`` for Linear, ``[out, in, kh, kw]`` for
  Conv2d), float32 for gradient methods;
- ``grad``: ``dL/dweight`` of the current step, same shape, or ``None`` under ``method: magnitude``
  (which scores the weights at each mask update and reads no gradients);
- ``scores``: a tensor of ``weight``'s shape; the lowest scores are pruned. Already-pruned weights are
  ranked lowest whatever their score, so masks only ever lose ones.

A scorer must not modify its arguments (``weight`` shares storage with the model's parameter).

How the scores are used is the method's business: ``method: magnitude`` ranks ``scorer(w, None)`` at
every mask update; ``method: gradient`` calls ``scorer(w, g)`` after every optimizer step and ranks the
sum since the last mask update (``criterion: taylor``) or since the start (``criterion: movement``).

The built-in criteria (what the recipe's ``criterion`` names) are :func:`magnitude`, :func:`taylor`
and :func:`movement`. From Python, a scorer of your own replaces an entry's criterion::

    def small_first(weight, grad):           # keep the smallest weights (a silly example)
        return -weight.abs()

    pruner = Pruner(model, recipe, steps_per_epoch, scorers={0: small_first})   # pruning[0]

Recipes (YAML) name criteria only; file data never names code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Scorer = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``scorer(weight, grad_or_None) -> scores`` of ``weight``'s shape, higher = keep."""


def magnitude(weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
    """``|w|``: magnitude pruning (Han et al., 2015, "Learning both Weights and Connections"; with the
    gradual schedule of Zhu & Gupta, 2017). Ignores ``grad``."""
    return weight.abs()


def taylor(weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """``|w * dL/dw|``: the first-order Taylor estimate of the loss change when ``w`` is removed
    (Molchanov et al., 2017, "Pruning Convolutional Neural Networks for Resource Efficient Inference";
    2019, "Importance Estimation for Neural Network Pruning"). Needs ``grad`` (ValueError without)."""
    return (weight * _needs(grad, "taylor")).abs_()


def movement(weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """``-w * dL/dw``: movement pruning (Sanh et al., 2020, "Movement Pruning: Adaptive Sparsity by
    Fine-Tuning"): summed over training, positive for weights moving away from zero (kept) and
    negative for weights shrinking toward zero (pruned). Needs ``grad`` (ValueError without)."""
    return (weight * _needs(grad, "movement")).neg_()


BUILTIN: dict[str, Scorer] = {"magnitude": magnitude, "taylor": taylor, "movement": movement}
"""The scorers a recipe may name, by name."""


def _needs(grad: torch.Tensor | None, name: str) -> torch.Tensor:
    if grad is None:
        raise ValueError(f"the {name} scorer needs gradients; use it with method: gradient")
    return grad


def check(scorer: object, where: str) -> Scorer:
    """``scorer`` itself if it is callable; otherwise TypeError naming ``where`` (e.g. ``scorers[0]``)."""
    if not callable(scorer):
        raise TypeError(
            f"{where}: a scorer must be a callable scorer(weight, grad) -> scores of the weight's shape "
            f"(higher = keep), not {type(scorer).__name__}"
        )
    return scorer


def name_of(scorer: Callable[..., object]) -> str:
    """A readable name for reports: ``module.qualname`` of a function, the class name of an object."""
    qual = getattr(scorer, "__qualname__", None) or type(scorer).__qualname__
    module = getattr(scorer, "__module__", None) or type(scorer).__module__
    return f"{module}.{qual}" if module else str(qual)
