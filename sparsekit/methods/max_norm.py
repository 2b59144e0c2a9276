"""Max-norm constraint (Srivastava et al., 2014, "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting", section 5.1): each output unit's incoming weights have L2 norm
at most ``max_value``.

After every optimizer step (and once at the start, so the constraint holds from the first forward),
every row of a Linear weight and every output channel of a Conv or ConvTranspose weight (for a
ConvTranspose, ``weight[:, c]`` with ``groups=1``: its weight is ``[in, out/groups, *k]``) is rescaled:
``w_u <- w_u * min(1, max_value / ||w_u||)``. Biases are not part of the norm.

It never creates zeros: rescaling by a positive factor keeps every weight's sign and keeps zeros
zero, so it composes with any masking method on the same layers (``masks_weights = False``).
Rows already within the bound are left untouched, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import select_layers, unit_broadcast, unit_view
from ..masks import weight_of
from .base import UNCHANGED, Changes, Setup


def _unit_norms(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """L2 norm of each output unit's incoming weights (:func:`~sparsekit.layers.unit_view`: dim 0 of a
    Linear/Conv weight, dim 1 of a ConvTranspose weight), accumulated in at least float32 (half weights
    would overflow) and in float64 for float64 weights."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    return torch.linalg.vector_norm(unit_view(weight.detach(), module), dim=1, dtype=dtype)


class MaxNorm:
    """Project each output unit's incoming weight vector onto the ball of radius ``max_value``
    (``method: max_norm``). Raises TargetError at construction when ``spec.layers`` selects no layer."""

    name = "max_norm"
    masks_weights = False
    needs_grad = False
    structural = False

    def __init__(self, spec: Any, model: nn.Module, setup: Setup) -> None:
        setup.refuse_scorer(self.name)
        self.spec = spec
        self.where = setup.where
        self.max_value = float(spec.max_value)
        self.layers = select_layers(model, spec.layers, f"{self.where}.layers")
        self.touched: list[str] = []

    @torch.no_grad()
    def project(self) -> None:
        """Rescale, in place, every output unit whose incoming-weight norm exceeds ``max_value``."""
        for module in self.layers.values():
            w = weight_of(module)
            norms = _unit_norms(w, module)
            if float(norms.max()) <= self.max_value:  # the usual case, decided by one scalar
                continue
            # Only rows over the bound are touched, so the others stay identical bit for bit.
            over = norms > self.max_value
            scale = torch.ones_like(norms)
            scale[over] = self.max_value / norms[over]
            # A rescaled row lands on the bound up to float rounding (a few ulps of max_value).
            w.mul_(unit_broadcast(scale.to(w.dtype), module, w))

    def report(self) -> dict[str, dict[str, float]]:
        """Per-layer ``{"max": ..., "mean": ...}`` of the output units' incoming-weight norms."""
        out = {}
        for name, module in self.layers.items():
            norms = _unit_norms(weight_of(module), module)
            out[name] = {"max": float(norms.max()), "mean": float(norms.mean())}
        return out

    def start(self) -> None:
        """Project once, so the constraint holds from the first forward pass."""
        self.project()

    def penalty(self) -> torch.Tensor | float:
        """No loss term."""
        return 0.0

    def after_step(self, step: int) -> Changes:
        """Project after every optimizer step."""
        self.project()
        return UNCHANGED

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Nothing to finish: the last step's projection holds."""
        return model, UNCHANGED

    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        """Empty: a constraint, not a sparsity target."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Empty: the constraint is a function of the current weights."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
