"""Max-norm constraint (Srivastava et al., 2014, "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting", section 5.1): each output unit's incoming weights have L2 norm
at most ``max_value``.

After every optimizer step (and once at the start, so the constraint holds from the first forward),
every row of a Linear weight and every output channel of a Conv or ConvTranspose weight (for a
ConvTranspose, ``weight[:, c]`` with ``groups=1``: its weight is ``[in, out/groups, *k]``) is rescaled:
``w_u <- w_u * min(1, max_value / ||w_u||)``. Biases are not part of the norm.

It never creates zeros: rescaling by a positive factor keeps every weight's sign and keeps zeros
zero, so it composes with any masking method on the same layers (``masks_weights = False``).
Rows already within the bound are left untouched, bit for bit. The norm is that of the weights a mask
keeps (a masking method's pruned weights, which the optimizer step may have moved, count as zeros).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..layers import (
    computed_left_out,
    computed_weight,
    output_dim,
    select_layers,
    tied_aliases,
    unit_broadcast,
    unit_view,
)
from ..masks import apply_mask, get_mask, weight_of
from ..stats import asked_vs_achieved
from .base import UNCHANGED, Changes, Setup, outside_sparsekit, refuse_frozen


def _unit_norms(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """L2 norm of each output unit's incoming weights (:func:`~sparsekit.layers.unit_view`: dim 0 of a
    Linear/Conv weight, dim 1 of a ConvTranspose weight), accumulated in at least float32 (half weights
    would overflow) and in float64 for float64 weights."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    return torch.linalg.vector_norm(unit_view(weight.detach(), module), dim=1, dtype=dtype)


def _bound_remedy(module: nn.Module, bound: float) -> str:
    """How to bound the unit norms of a layer whose weight is computed, or give it its parameter back."""
    from torch.nn.utils import parametrize

    how = computed_weight(module)
    assert how is not None
    remove = f"or remove it ({how[1]}) before building the Pruner"
    # Under weight_norm (dim 0) a unit's weight is g_u * v_u / ||v_u||: its norm is |g_u|, which can be bounded as is.
    if how[0] == "torch.nn.utils.weight_norm" and getattr(module, "_forward_pre_hooks", None):
        hook = next((h for h in module._forward_pre_hooks.values() if getattr(h, "name", None) == "weight"), None)
        if getattr(hook, "dim", None) == 0:
            return (
                "its units' norms are |weight_g|: bound them after each optimizer step with "
                f"layer.weight_g.data.clamp_({-bound:g}, {bound:g}), {remove}"
            )
    if parametrize.is_parametrized(module, "weight"):
        plist: Any = module.parametrizations.weight  # type: ignore[union-attr]
        if len(plist) == 1 and type(plist[0]).__name__ == "_WeightNorm" and getattr(plist[0], "dim", None) == 0:
            return (
                "its units' norms are |g| (layer.parametrizations.weight.original0): bound them after each optimizer "
                f"step with layer.parametrizations.weight.original0.data.clamp_({-bound:g}, {bound:g}), {remove}"
            )
    return remove[3:]


def _warn_computed(model: nn.Module, spec: Any, chosen: dict[str, nn.Module], where: str, bound: float) -> None:
    """Warn of the layers the selection would take but for a weight computed in the forward pass (weight_norm,
    spectral_norm): their norms go unbounded, which only ``validate`` listed (left_out) before."""
    for name, module, how in computed_left_out(model, spec.layers, chosen):
        warnings.warn(
            f"{where} (max_norm): {name!r} is left out, its units' norms unbounded: its weight is computed in the "
            f"forward pass ({how[0]}); {_bound_remedy(module, bound)}",
            stacklevel=outside_sparsekit(),
        )


class MaxNorm:
    """Project each output unit's incoming weight vector onto the ball of radius ``max_value``
    (``method: max_norm``). Raises TargetError at construction when ``spec.layers`` selects no layer."""

    name = "max_norm"
    masks_weights = False
    zeroes_weights = False
    makes_masks = False  # the Pruner need not look for masks after each step for this method's sake
    needs_grad = False
    structural = False

    def __init__(self, spec: Any, model: nn.Module, setup: Setup) -> None:
        setup.refuse_scorer(self.name)
        self.spec = spec
        self.where = setup.where
        self.max_value = float(spec.max_value)
        self.layers = select_layers(model, spec.layers, f"{self.where}.layers")
        _warn_computed(model, spec, self.layers, self.where, self.max_value)
        # The projection rescales a frozen layer's units all the same (no optimizer step is needed for it), which is
        # not what freezing it meant; l1's proximal step refuses a frozen layer for the same reason.
        refuse_frozen(self.layers, self.where, "the max-norm projection")
        self.touched: list[str] = []
        # One entry per weight tensor: layers sharing one (tied, dec.weight = enc.weight) were each rescaled by the
        # norms taken before either, so the shared weight shrank twice, far below the bound.
        tied = tied_aliases(self.layers)
        self._own = {n: m for n, m in self.layers.items() if n not in tied}
        # (module, whether its output units index dim 0): a 2-D such weight is its own [units, rest] view
        self._layout = [(m, not output_dim(m)) for m in self._own.values()]
        self._fused: _NormBuffer | None = None
        self._norms: list[torch.Tensor] = []  # the plain path's unit norms, per layer, from the last _over_bound

    def project(self) -> None:
        """Rescale, in place, every output unit whose incoming-weight norm exceeds ``max_value``: ``w_u <- w_u *
        (max_value / ||w_u||)``, bit for bit; units within the bound are left untouched. The norm is that of the
        weights a mask keeps: the optimizer step may have moved a masking method's pruned weights, which the
        Pruner zeroes after this hook, and counted they would shrink the unit's real weights by more than the
        bound asks. They can only add to a norm, so the layers are masked only when a unit is over the bound."""
        if not self._over_bound():  # the usual case, no pass over the weights but the norms
            return
        masked = [module for module, _ in self._layout if get_mask(module) is not None]
        for module in masked:
            apply_mask(module)
        if masked and not self._over_bound():
            return
        # _over_bound left the norms of the weights as they are now (masked) for the rescale
        if self._fused is not None:
            for (module, _), n in zip(self._layout, self._fused.outs, strict=True):
                over = n > self.max_value
                if bool(over.any()):  # (a NaN norm is not over: its unit is left as it is, as below)
                    self._rescale(module, n.clone(), over)
            return
        if all(n.is_cpu for n in self._norms):
            for module, n in zip(self._own.values(), self._norms, strict=True):
                if not float(n.numpy().max()) <= self.max_value:  # (a NaN norm: its layer's other units still count)
                    self._rescale(module, n, n > self.max_value)
        else:
            # Elsewhere reading a scalar waits for the device: rescale every layer, units within the bound
            # by exactly 1 (the same bits), and never wait.
            for module, n in zip(self._own.values(), self._norms, strict=True):
                self._rescale(module, n, n > self.max_value)

    def _over_bound(self) -> bool:
        """Compute every unit's norm (kept for the rescale: in ``self._fused`` or ``self._norms``) and say whether
        one may be over the bound (NaN counts: its layer goes on to the per-layer checks)."""
        # Runs after every optimizer step, so it makes few calls: on CPU every layer's unit norms go into one
        # buffer through views kept between steps, and one max over it decides the usual case (no unit over
        # the bound); the plain path below is taken for other devices and mixed dtypes.
        fused = self._fused
        if fused is None or not fused.holds(self._layout):
            fused = self._fused = _NormBuffer.build(self._layout)
        if fused is not None:
            with torch.no_grad():
                fused.compute()
                return not float(fused.norms.max()) <= self.max_value  # (NaN compares False: it goes on)
        norms = self._norms = []
        for module, own_rows in self._layout:
            w = weight_of(module).detach()
            rows = w if own_rows and w.dim() == 2 else unit_view(w, module)
            norms.append(torch.linalg.vector_norm(rows, dim=1, dtype=torch.promote_types(w.dtype, torch.float32)))
        if not norms:
            return False
        if all(n.is_cpu for n in norms):
            # numpy's max of these few norms per layer costs a fraction of a torch call (NaN propagates).
            return not all(float(n.numpy().max()) <= self.max_value for n in norms)
        return True  # elsewhere reading a scalar waits for the device: every layer is rescaled (by 1 within bound)

    def _rescale(self, module: nn.Module, norms: torch.Tensor, over: torch.Tensor) -> None:
        """Scale the units ``over`` the bound (bool, one per unit) by ``max_value / norm``, the others by 1."""
        w = weight_of(module).detach()
        # max_value / norms is reciprocal(norms) * max_value (Tensor.__rdiv__), as it always was; computed for
        # every unit, kept for those over the bound (indexing them first gives the same values).
        if w.dtype.itemsize < 4:
            # bfloat16 / float16: a scale rounded to the weights' dtype, then each product rounded, left rescaled rows
            # up to ~0.4% over the bound (0.5011 for 0.5, bf16). The products are taken in float32 and rounded once,
            # toward a bound lowered by twice the unit roundoff u, so that rounding (at most a factor 1 + u on every
            # weight) cannot lift a row's norm above max_value.
            lowered = self.max_value * (1 - torch.finfo(w.dtype).eps)
            scale = torch.where(over, lowered / norms.float(), 1.0)
            w.copy_(w.float() * unit_broadcast(scale, module, w))
            return
        scale = torch.where(over, self.max_value / norms, 1.0)
        # A rescaled row lands on the bound up to float rounding (a few ulps of max_value).
        w.mul_(unit_broadcast(scale.to(w.dtype), module, w))

    def report(self) -> dict[str, Any]:
        """``norms``: per layer ``{"max": ..., "mean": ...}`` of the output units' incoming-weight norms (the
        constraint holds when every ``max`` is at most ``max_value``), and asked vs achieved as every method
        gives them (:func:`~sparsekit.stats.asked_vs_achieved`): ``asked`` None (a constraint sets no sparsity
        target), ``achieved`` and ``per_layer`` the fraction of weights zero, which other entries made (this one
        makes none)."""
        norms = {}
        for name, module in self.layers.items():
            unit = _unit_norms(weight_of(module), module)
            norms[name] = {"max": float(unit.max()), "mean": float(unit.mean())}
        return {**asked_vs_achieved(self.layers, None), "max_value": self.max_value, "norms": norms}

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


class _NormBuffer:
    """Every selected layer's unit norms in one float32 CPU buffer, written through slices of it (views of the
    weights kept between steps): one norm call per layer and a single max per step. Built only for float32
    CPU weights whose units are views (not ConvTranspose); rebuilt when a layer's weight is replaced."""

    def __init__(self, weights: list[torch.Tensor], rows: list[torch.Tensor], norms: torch.Tensor) -> None:
        self.weights, self.rows, self.norms = weights, rows, norms
        self.outs: list[torch.Tensor] = []
        at = 0
        for r in rows:
            self.outs.append(norms[at : at + r.shape[0]])
            at += r.shape[0]

    @classmethod
    def build(cls, layout: list[tuple[nn.Module, bool]]) -> _NormBuffer | None:
        weights = [weight_of(m) for m, _ in layout]
        if not weights or not all(
            own and w.dtype == torch.float32 and w.is_cpu for (_, own), w in zip(layout, weights, strict=True)
        ):
            return None
        if not all(w.is_contiguous() for w in weights):
            # flatten(1) of a channels_last weight is a copy: its norms, read as they were when built, bounded nothing
            # (and rescaled the weights by them at every step). Told before any copy is made: build runs again at
            # every step while it finds none (copying every weight there cost ~45% of the step's norm check).
            return None
        rows = [w.detach() if w.dim() == 2 else w.detach().flatten(1) for w in weights]
        return cls(weights, rows, torch.empty(sum(r.shape[0] for r in rows), dtype=torch.float32))

    def holds(self, layout: list[tuple[nn.Module, bool]]) -> bool:
        # The same parameter over the same memory: model.to(memory_format=...) or .to(device) swaps a parameter's
        # .data in place, away from the rows kept.
        return all(
            m._parameters.get("weight") is w and w.data_ptr() == r.data_ptr()
            for (m, _), w, r in zip(layout, self.weights, self.rows, strict=True)
        )

    def compute(self) -> None:
        for rows, out in zip(self.rows, self.outs, strict=True):
            torch.linalg.vector_norm(rows, 2, 1, out=out)
