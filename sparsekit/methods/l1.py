"""L1-induced sparsity: an L1 / group-lasso penalty in the loss, or a proximal soft-threshold.

L1 regularization (Tibshirani, 1996, the lasso) for unstructured zeros; group lasso (Yuan & Lin, 2006)
over output units for structured sparsity, as in structured sparsity learning (Wen et al., 2016).

- ``mode: penalty`` adds ``strength * sum|w|`` (``group: none``) or ``strength * sum_g ||w_g||_2``
  (group lasso, ``group: row`` = each output unit of a Linear layer, ``group: channel`` = each output
  channel of a Conv layer) to the loss through :meth:`L1.penalty`.
- ``mode: proximal`` soft-thresholds after every optimizer step: ``w <- sign(w) * max(|w| - strength, 0)``
  or, per group, ``w_g <- w_g * max(0, 1 - strength / ||w_g||)``. Here ``strength`` is the shrinkage
  per step, i.e. the ``lambda * lr`` of proximal gradient descent: the user picks it directly, so it
  does not change when the learning-rate schedule does.

Both are active for the steps inside ``schedule`` (default: the whole run; an empty window is an
error). The zeros the proximal step makes become masked zeros, so optimizer momentum cannot revive
them (a penalty alone rarely makes exact zeros: use ``threshold``). At :meth:`L1.finalize`, weights with
``|w| < threshold`` become masked zeros, and with ``remove_dead`` the neurons/channels left all-zero
are removed physically (see :func:`sparsekit.surgery.remove_dead_units`); :meth:`L1.finalize` returns
that removal's history, which the Pruner records for checkpoints.

L1 never owns a mask (``masks_weights = False``): it only AND-s zeros into the shared mask, so it
composes with a magnitude or gradient method on the same weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..errors import RecipeError
from ..layers import prunable_layers, select_layers, unit_broadcast, unit_view
from ..masks import MASK, bake, count_true, ensure_mask, get_mask, mark_applied, mask_factor, set_mask, weight_of
from ..schedule import Schedule
from ..stats import asked_vs_achieved
from ..surgery import last_layer, remove_dead_units
from .base import UNCHANGED, Changes, Setup


def _check_group(group: str, layers: dict[str, nn.Module], where: str) -> None:
    # The conv kinds actually selected, so the suggested layers.types fits this model.
    conv_kinds = ", ".join(sorted({type(m).__name__ for m in layers.values() if isinstance(m, _ConvNd)})) or "Conv2d"
    for name, module in layers.items():
        kind = type(module).__name__
        if group == "row" and not isinstance(module, nn.Linear):
            raise RecipeError(
                f"{where}.group: 'row' groups the rows of Linear weights, but layer {name!r} is a {kind}: "
                "use group: channel for conv layers, or set layers.types: [Linear] (add a second l1 entry "
                f"with group: channel and layers.types: [{conv_kinds}] for the convolutions)"
            )
        if group == "channel" and not isinstance(module, _ConvNd):
            raise RecipeError(
                f"{where}.group: 'channel' groups the output channels of Conv weights, but layer {name!r} "
                f"is a {kind}: use group: row for Linear layers, or set layers.types: [{conv_kinds}] (add a second "
                "l1 entry with group: row and layers.types: [Linear] for the fully connected layers)"
            )


def _clear_mask_bits(module: nn.Module, alive: torch.Tensor) -> None:
    """AND ``alive`` into the module's mask; no mask is created while every weight is alive."""
    mask = get_mask(module)
    if mask is None:
        # uint8 view: a reduction over a bool tensor is ~50x slower on CPU than over its bytes
        if bool(alive.view(torch.uint8).all()):
            return
        mask = ensure_mask(module)
    mask.logical_and_(alive)


class _AbsSum(torch.autograd.Function):
    """``strength * (sum|w_1| + sum|w_2| + ...)``, the ``group: none`` penalty, with a cheaper backward.

    Autograd's own graph for it (abs, sum, add, mul) multiplies each weight's ``sgn(w)`` by a broadcast
    scalar, which on CPU is a slow strided kernel (~1.7x this backward's in-place multiply by a scalar), and
    walks one node per op and layer; this backward is one foreach ``sign`` and one foreach ``mul_`` over
    all layers. The forward runs the same ops as before and the gradient is the same product ``c *
    sgn(w)`` (c = grad * strength, as MulBackward computes it; times +-1 or 0 it is exact), so values and
    gradients are bit for bit those of ``strength * (w_1.abs().sum() + ...)``."""

    @staticmethod
    def forward(ctx: Any, strength: float, *weights: torch.Tensor) -> torch.Tensor:
        ctx.strength = strength
        ctx.save_for_backward(*weights)
        total: Any = None
        for w in weights:
            term = w.abs().sum()
            total = term if total is None else total + term
        return total * strength

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        c = grad * ctx.strength
        needs = ctx.needs_input_grad[1:]
        ws = [w for w, need in zip(ctx.saved_tensors, needs, strict=True) if need]
        signs = list(torch._foreach_sign(ws)) if ws else []  # torch.sgn is sign for real dtypes; one call
        if signs:
            torch._foreach_mul_(signs, c)
        it = iter(signs)
        return (None, *(next(it) if need else None for need in needs))


class _UnitCover:
    """Which output units of a layer the mask still has any weight of: cached until the mask changes, so
    group-lasso units found dead again (every step while they stay masked) cost no pass over the mask."""

    __slots__ = ("alive_units", "mask", "version")

    def __init__(self, mask: torch.Tensor, module: nn.Module) -> None:
        self.mask, self.version = mask, mask._version
        self.alive_units = unit_view(mask.view(torch.uint8), module).amax(dim=1).bool()

    def holds(self, mask: torch.Tensor) -> bool:
        return self.mask is mask and self.version == mask._version


_BUFFER_MAX_NUMEL = 1 << 24  # a kept buffer costs the layer's weight size again in memory: 64 MB at most


class L1:
    """L1 / group-lasso regularization (``method: l1``).

    Raises RecipeError at construction when ``group`` does not fit a selected layer's type or the
    schedule window is empty, TargetError when ``spec.layers`` selects no layer."""

    name = "l1"
    masks_weights = False
    needs_grad = False
    structural = False  # units are removed at finalize only, after masks are baked

    def __init__(self, spec: Any, model: nn.Module, setup: Setup) -> None:
        setup.refuse_scorer(self.name)
        self.spec = spec
        self.where = setup.where
        self.input_shape = list(setup.input_shape) if setup.input_shape else None
        self.layers = select_layers(model, spec.layers, f"{self.where}.layers")
        self.touched: list[str] = []  # no shape changes before finalize
        _check_group(spec.group, self.layers, self.where)
        self.schedule = Schedule.from_spec(spec.schedule, 1.0, setup.steps_per_epoch)
        if self.schedule.end <= self.schedule.start:
            # `schedule: oneshot` (or end_epoch == start_epoch) would make l1 silently do nothing.
            raise RecipeError(
                f"{self.where}.schedule: l1 acts on every step from start_epoch up to end_epoch, and this "
                f"window is empty (start_epoch={spec.schedule.start_epoch:g}, end_epoch="
                f"{spec.schedule.end_epoch:g}); leave schedule out to regularize the whole run"
            )
        self.step = 0  # optimizer steps completed
        self.floored: set[str] = set()  # layers kept from going all-zero (one unit or weight left alive)
        self._buffers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per layer, _shrink's scratch
        self._counts: dict[str, tuple[torch.Tensor, int, int]] = {}  # per layer: mask, its version, its ones
        self._covers: dict[str, _UnitCover] = {}  # per layer, the units its mask still has (group proximal)
        # Weight counts before remove_dead shrinks layers: removed units count as pruned in the report.
        self.initial = {n: weight_of(m).numel() for n, m in self.layers.items()}

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1, 2, ...) lies in the schedule window.

        Step ``start + 1`` is the first step of ``start_epoch``, step ``end`` the last one before
        ``end_epoch`` (the same boundaries at which magnitude masks change)."""
        return self.schedule.start < step <= self.schedule.end

    @staticmethod
    def _groups(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
        # One row per output unit: Linear rows, Conv output channels (dim 1 of a ConvTranspose weight).
        return unit_view(weight, module)

    def penalty(self) -> torch.Tensor | float:
        """``strength * sum|w|`` (or ``strength * sum_g ||w_g||_2`` per output unit) over the layers, a
        scalar tensor, in ``mode: penalty`` while the window is active; else 0.0."""
        # The penalty enters the loss of the step being taken now, step ``self.step + 1``.
        if self.spec.mode != "penalty" or not self.active(self.step + 1):
            return 0.0
        if self.spec.group == "none":
            # One autograd node for all layers, with a cheaper backward (see _AbsSum); the same values.
            return _AbsSum.apply(self.spec.strength, *(weight_of(m) for m in self.layers.values()))
        total: Any = None  # not 0.0 + ...: one op and one autograd node less per step, the same value
        for module in self.layers.values():
            w = weight_of(module)
            term = torch.linalg.vector_norm(self._groups(w, module), dim=1).sum()
            total = term if total is None else total + term
        return 0.0 if total is None else self.spec.strength * total

    @torch.no_grad()
    def _soft_threshold(self) -> None:
        # Runs after every optimizer step, so it is written for speed (see _shrink and _shrink_groups).
        lam = self.spec.strength
        for name, module in self.layers.items():
            if self.spec.group == "none":
                self._shrink(name, module, lam)
            else:
                self._shrink_groups(name, module, lam)

    def _shrink(self, name: str, module: nn.Module, lam: float) -> None:
        """Soft-threshold one layer's weights and mask the zeros it makes, bit for bit as ``w.copy_(softshrink(w,
        lam))``, ``mask &= w != 0`` and the Pruner's ``w *= mask`` did (tests/test_step_cost.py checks).

        Few passes over the weights, into buffers kept between steps, and none of torch's bool kernels on
        whole weights (slow on CPU): the shrink goes to a buffer, its nonzeros are cast to a bool buffer and
        counted through numpy, the masked result is written in one multiply, and the mask is written only
        when that count says it changed. The layer is then marked applied, so the Pruner's apply_masks skips
        it. A shrink that would leave no weight alive takes the plain path (:meth:`_shrink_to_floor`)."""
        w = weight_of(module)
        mask = get_mask(module)
        shrunk, alive = self._scratch(name, w)
        # sign(w) * max(|w| - lam, 0) (zeros keep w's sign): F.softshrink, into `shrunk` (F has no out=)
        torch._C._nn.softshrink(w, lam, out=shrunk)  # type: ignore[call-arg]
        alive.copy_(shrunk)  # the cast is `!= 0` (NaN counts as alive, as w.bool() did), and fast
        if mask is not None:
            # Masked weights moved with the optimizer step but are zeroed right after: never alive.
            alive.view(torch.uint8).bitwise_and_(mask.view(torch.uint8))
        n_alive = count_true(alive)
        if n_alive == 0:
            self._shrink_to_floor(name, module, w, shrunk, mask)
            return
        factor = None if mask is None else mask_factor(w, mask)
        if factor is None:
            w.copy_(shrunk)
        else:
            # shrunk * old mask = shrunk * new mask: where only the new one is 0, shrunk is +-0 already.
            torch.mul(shrunk, factor, out=w)
        if mask is None:
            if n_alive < alive.numel():  # no mask is created while every weight is alive
                module.register_buffer(MASK, alive.clone(), persistent=False)
        else:
            known = self._counts.get(name)
            n_mask = known[2] if known is not None and known[0] is mask and known[1] == mask._version else None
            if n_alive != (count_true(mask) if n_mask is None else n_mask):
                mask.copy_(alive)  # alive lies within the mask: equal counts, equal masks
            self._counts[name] = (mask, mask._version, n_alive)
        mark_applied(module)

    def _scratch(self, name: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffers like ``w`` (its dtype, and bool) for :meth:`_shrink`, kept between steps (no allocation per
        step) for layers up to ``_BUFFER_MAX_NUMEL`` weights; bigger layers get fresh ones each step."""
        bufs = self._buffers.get(name)
        if bufs is None or bufs[0].shape != w.shape or bufs[0].dtype != w.dtype or bufs[0].device != w.device:
            shrunk = torch.empty(w.shape, dtype=w.dtype, device=w.device)
            bufs = (shrunk, torch.empty(w.shape, dtype=torch.bool, device=w.device))
            if w.numel() <= _BUFFER_MAX_NUMEL:
                self._buffers[name] = bufs
        return bufs

    def _shrink_groups(self, name: str, module: nn.Module, lam: float) -> None:
        """Group soft-threshold of one layer: ``w_g <- w_g * max(0, 1 - lam / ||w_g||)``, masking dead units."""
        w = weight_of(module)
        dtype = torch.promote_types(w.dtype, torch.float32)
        norms = torch.linalg.vector_norm(self._groups(w, module), dim=1, dtype=dtype)
        # Norm 0 gives scale 0 (not nan): the group is already dead.
        scale = (1 - lam / norms.clamp_min(torch.finfo(dtype).tiny)).clamp_min(0)
        dead = scale == 0  # one entry per group: cheap to test
        any_dead = bool(dead.any())
        if any_dead and bool(dead.all()):
            # Never empty a layer (it would pass on only a constant): its strongest unit skips
            # this shrink, so at least one unit lives.
            unit_mask = get_mask(module)
            alive_rows = None if unit_mask is None else unit_view(unit_mask, module).any(dim=1)
            strongest_unit = int((norms if alive_rows is None else norms * alive_rows).argmax())
            scale[strongest_unit], dead[strongest_unit] = 1.0, False
            self.floored.add(name)
            any_dead = bool(dead.any())
        w.mul_(unit_broadcast(scale.to(w.dtype), module, w))
        if any_dead:
            mask = get_mask(module)
            if mask is not None:
                # A masked unit is dead again at every step (its weights are zero but for the optimizer's
                # last move): AND-ing its zeros in again changes nothing, so only newly dead units do it.
                cover = self._covers.get(name)
                if cover is None or not cover.holds(mask):
                    cover = self._covers[name] = _UnitCover(mask, module)
                if not bool((dead & cover.alive_units).any()):
                    return
            ensure_mask(module).logical_and_(unit_broadcast(~dead, module, w))

    def _shrink_to_floor(
        self, name: str, module: nn.Module, w: torch.Tensor, shrunk: torch.Tensor, mask: torch.Tensor | None
    ) -> None:
        """The shrink (``shrunk``, ``w`` still unchanged) would leave no weight of the layer alive."""
        flat = w.view(-1)
        magnitude = flat.abs() if mask is None else flat.abs() * mask.view(-1)
        strongest = int(magnitude.argmax())
        if float(flat[strongest].abs()) <= self.spec.strength:
            # Never empty a layer: the shrink would zero every weight, so the largest one stays.
            keep = flat[strongest].clone()
            w.copy_(shrunk)
            flat[strongest] = keep
            self.floored.add(name)
        else:
            w.copy_(shrunk)
        _clear_mask_bits(module, w.bool())

    def after_step(self, step: int) -> Changes:
        """In ``mode: proximal`` while the window is active: soft-threshold the weights, masking the zeros."""
        self.step = step
        if self.spec.mode == "proximal" and self.active(step):
            self._soft_threshold()
        return UNCHANGED

    def start(self) -> None:
        """Nothing acts before the first step."""
        self.step = 0

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Mask weights (or units) under ``threshold``; with ``remove_dead``, remove all-zero units and
        return their removal history (``structure_changed`` when any went). Warns and skips the removal
        when the input shape is unknown."""
        if self.spec.threshold > 0:
            with torch.no_grad():
                for name, module in self.layers.items():
                    w = weight_of(module)
                    if self.spec.group == "none":
                        keep = w.abs() >= self.spec.threshold
                        if not bool(keep.any()):  # never empty a layer: its largest weight stays
                            keep.view(-1)[int(w.abs().argmax())] = True
                            self.floored.add(name)
                        set_mask(module, keep)
                    else:
                        # Group lasso shrinks whole rows: the threshold applies to each row's norm.
                        norms = torch.linalg.vector_norm(self._groups(w, module), dim=1)
                        alive = norms >= self.spec.threshold
                        if not bool(alive.any()):  # never empty a layer: its strongest unit stays
                            alive[int(norms.argmax())] = True
                            self.floored.add(name)
                        set_mask(module, unit_broadcast(alive, module, w).expand_as(w))
        if self.spec.remove_dead:
            model, history = self._remove_dead(model)
            return model, Changes(history=tuple(history), structure_changed=bool(history))
        return model, UNCHANGED

    def _input_shape(self, model: nn.Module) -> list[int] | None:
        """The pruner's shape (context, or the recipe's ``model.input_shape``), else a Linear-first guess."""
        shape = self.input_shape
        if not shape:
            from ..modelio import infer_input_shape

            shape = infer_input_shape(model)
        return list(shape) if shape else None

    def _remove_dead(self, model: nn.Module) -> tuple[nn.Module, list[list[Any]]]:
        input_shape = self._input_shape(model)
        if not input_shape:
            warnings.warn(
                f"{self.where}.remove_dead: skipped, the input shape is unknown; set model.input_shape in "
                "the recipe or pass context={'input_shape': [1, ...]} to the Pruner",
                stacklevel=2,
            )
            return model, []
        # Only this entry's layers lose units, and never the head (it would change the output shape).
        ignore = [n for n in prunable_layers(model) if n not in self.layers]
        head = last_layer(model, input_shape)
        if head is not None and head not in ignore:
            ignore.append(head)
        # Surgery changes weight shapes; mask buffers would no longer fit, so zero for good first.
        bake(model)
        dead_before = self._dead_units()
        model, history = remove_dead_units(model, input_shape, ignore=ignore)
        # The removal may hand back another model object (an untouched copy when its self-check failed).
        modules = dict(model.named_modules())
        self.layers = {n: modules[n] for n in self.layers if n in modules}
        # Units that stay are all-zero but tied to a residual add, a depthwise conv or zero padding:
        # removing them would change the outputs. Reported so a missing speedup is explained.
        self.dead_units = {"found": dead_before, "kept": self._dead_units()}
        return model, history

    dead_units: dict[str, int] | None = None

    def _dead_units(self) -> int:
        return sum(
            int((torch.linalg.vector_norm(self._groups(weight_of(m).detach(), m), dim=1) == 0).sum())
            for m in self.layers.values()
        )

    def report(self) -> dict[str, Any]:
        """Asked vs achieved (:func:`~sparsekit.stats.asked_vs_achieved`; ``asked`` is None: l1 sets no
        target, its zeros come from training) and, after a dead-unit removal,
        ``{"dead_units": {"found": n, "kept": k}}``."""
        reasons = {
            n: "kept one unit alive: L1 would have zeroed the whole layer" for n in self.floored if n in self.layers
        }
        out = asked_vs_achieved(self.layers, None, reasons=reasons, initial=self.initial)
        if self.dead_units:
            out["dead_units"] = self.dead_units
        return out

    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        """Empty: how many weights L1 zeroes is only known after training."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """The optimizer steps completed, and the layers kept from going all-zero (for the report)."""
        return {"step": self.step, "floored": sorted(self.floored)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.step = int(state["step"])
        self.floored = {str(n) for n in state.get("floored", [])}
