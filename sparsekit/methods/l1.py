"""L1-induced sparsity: an L1 / group-lasso penalty in the loss, or its proximal step, optionally to a target.

L1 regularization (Tibshirani, 1996, the lasso) for unstructured zeros; group lasso (Yuan & Lin, 2006,
"Model selection and estimation in regression with grouped variables") over output units for structured
sparsity, as in structured sparsity learning (Wen et al., 2016, "Learning Structured Sparsity in Deep
Neural Networks"). ``strength`` is lambda in the objective ``loss + lambda * R(w)``, on the scale of
Keras' ``l1(0.01)`` or PyTorch's ``weight_decay`` (typical values 1e-5..1e-2):

- ``mode: penalty`` adds ``lambda * sum|w|`` (``group: none``) or ``lambda * sum_g ||w_g||_2`` (group lasso,
  ``group: row`` = each output unit of a Linear layer, ``group: channel`` = each output channel of a Conv
  layer) to the loss through :meth:`L1.penalty` (its subgradient ``lambda * sign(w)``, resp. ``lambda * w_g /
  ||w_g||``, through :meth:`sparsekit.Pruner.regularize`).
- ``mode: proximal`` takes the proximal-gradient step for the same objective (Parikh & Boyd, 2014,
  "Proximal Algorithms", sections 4.2 and 6.5): after every optimizer step with learning rate ``lr``,
  ``w <- sign(w) * max(|w| - lr * lambda, 0)`` or, per group, ``w_g <- w_g * max(0, 1 - lr * lambda /
  ||w_g||)``. ``lr`` is the rate the optimizer just used (:mod:`sparsekit.learning_rate`), so a learning-rate
  schedule scales the shrink as it scales the gradient step; for plain SGD away from zero the step is the
  penalty's subgradient step exactly. Unlike the penalty it makes exact zeros.

Migration: before issue 16 proximal ``strength`` was the shrink per step itself (``lr * lambda``), the same at every
step whatever the learning-rate schedule did. A recipe written that way gets the same run with ``strength: old / lr``
under a constant rate only: under a schedule the shrink now follows the rate (a cosine schedule over the run gives
about half the old total), so ``old / mean lr`` keeps the total, and ``pruner.step(lr=lr0)`` in a user's loop keeps
every step's shrink.

``target`` (a fraction of the weights, or of the units with groups) adapts lambda on the schedule, as
Distiller's and NNI's automated regularization do: every ``adapt_every`` steps lambda is set to what zeroes
the weakest units still missing by ``end_epoch`` (the ``k``-th smallest unit norm over ``lr`` times the steps
left), times a gain that grows by 1.25 while the zero fraction is behind the curve (the schedule's ``curve``
from ``init_sparsity`` at ``start_epoch`` to ``target`` at ``end_epoch``) and falls by 1.25 when it is
ahead; in proximal mode no step
may zero more than the curve allows one adaptation ahead (the strongest of the would-be zeros skip that
step's shrink). In both modes lambda above ``strength`` shrinks (penalizes) only the units (weights) marked at the
last adaptation as the weakest still to be zeroed, the others taking ``strength`` alone (growing regularization,
Wang et al., 2021). No layer may have more than ``(1 + target) / 2`` of its units at zero (weights: the larger of that
and 0.99, magnitude's default ``max_layer_sparsity``): unit norms of different layers are not comparable, and one
ranking over them emptied layers. At ``end_epoch`` the weakest weights/units are zeroed until exactly the target is
(what training left missing; ``topped_up`` in the report), and every one under ``threshold`` too (they count as zero),
after which l1 stops and the masked zeros stay.

With ``group: row | channel`` a unit's group holds every parameter its removal takes away, as DepGraph's group-level
sparsity regularizes every parameter of a dependency group (Fang et al., 2023, "DepGraph: Towards Any Structural
Pruning", section 3.3): the ``gamma_u`` and ``beta_u`` of each affine BatchNorm or InstanceNorm on it (Conv ->
BatchNorm, Linear -> BatchNorm1d; over a concatenation, at the layer's offset in it), and unit ``u`` of every
selected layer coupled to it, whose output channel ``u`` is the same channel (the convs feeding one residual add, a
depthwise conv and the conv before it). The group lasso and its proximal step act on that joint vector: the coupled
layers' units go to zero together (the first layer owns the group and the count; the report's ``coupled`` maps the
others to it) and are removed from all of them at finalize. A unit whose weights alone were zero would still emit
BatchNorm's shift, a constant that a zero-padded consumer cannot absorb (it differs at the borders), and a channel
zeroed in one of the layers of a residual add still carries the others': neither could be removed. Once a unit is
dead (masked), its BatchNorms' ``gamma_u`` and ``beta_u`` are set back to zero after every optimizer step for the
rest of the run, as masks hold weights; before a BatchNorm or InstanceNorm without them, the unit's bias in the
layer it follows and its running mean are (the norm subtracts a constant's mean in training; in eval mode the
decaying running statistics left a shift). With ``remove_dead``, a dead unit's own bias (in the owning layer and
its coupled members) is held at 0 too, whatever follows: the group lasso is over weights, and a unit left with its
bias still sent ``act(b)``, a constant a zero-padded or transposed conv cannot absorb, so finalize kept it while a
target counted it as gone. The groups come from torch-pruning's trace on the pruner's input shape (a Pruner given none
builds the entry again on the first batch's); without one, each layer's groups are its own weights. Layers whose
zeroed units still cannot be removed (a tied or reused weight, units coupled at other indices as by a GLU, or to
a layer the entry does not select, units a
GroupNorm or LayerNorm normalizes together, a norm without gamma and beta reached through other operations, a
grouped conv, a layer the forward pass runs more than once, or one feeding a tied weight) are named in
``cannot_remove`` (with ``remove_dead``), which ``validate`` shows before training (with a target they are left
out of the entry instead, ``target_left_out``: a target counts units finalize removes); after :meth:`L1.finalize` it
also names every other layer that kept zeroed units, with why (e.g. a positive bias through ReLU into a zero-padded
conv: only the values tell).

With ``group: row | channel`` the classifier head (the prunable layer a forward pass calls last; found on the
pruner's input shape, or one guessed from a first Linear layer) is left out unless ``layers.include`` names
it: a head row at zero leaves its class only a bias, and the head's outputs are never removed.

Both modes are active for the steps inside ``schedule`` (default: the whole run; an empty window is an
error). To keep ``pruner.step()`` cheap the proximal step runs every ``proximal_every`` optimizer steps
(default 4) with the shrink those steps owe (truncated gradient, Langford, Li & Zhang, 2009); ``1``: after
every step. The zeros it makes become masked zeros, so optimizer momentum cannot revive them; without a
target, masking and the never-empty-a-layer check run at every 8th step, and the proximal steps between
take one fused pass over all layers (as long as no layer's largest weight is near the shrink).
At :meth:`L1.finalize`, weights with ``|w| < threshold`` become masked zeros, and with
``remove_dead`` the neurons/channels left all-zero are removed physically (see
:func:`sparsekit.surgery.remove_dead_units`); :meth:`L1.finalize` returns that removal's history, which
the Pruner records for checkpoints.

L1 never owns a mask (``masks_weights = False``): it only AND-s zeros into the shared mask, so it
composes with a magnitude or gradient method on the same weights.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from .. import tp_adapter as tpa
from ..errors import RecipeError, TargetError, one_line, shorten
from ..layers import (
    computed_tensor,
    num_units,
    output_dim,
    prunable_layers,
    select_layers,
    tied_aliases,
    unit_broadcast,
    unit_view,
)
from ..learning_rate import LearningRates
from ..masks import (
    apply_mask,
    bake,
    count_true,
    ensure_mask,
    get_mask,
    mark_applied,
    mask_factor,
    multiply_in_place,
    set_mask,
    weight_of,
)
from ..schedule import Schedule
from ..stats import asked_vs_achieved
from ..surgery import (
    build_graph,
    forward_calls,
    mixes_units,
    output_layers,
    remove_dead_units,
    reused_parameters,
    takes_several_inputs,
    tied_parameters,
    trace_advice,
)
from .base import UNCHANGED, Changes, Setup, outside_sparsekit, refuse_frozen, warn_computed


def _check_group(group: str, layers: dict[str, nn.Module], where: str, model_layers: dict[str, nn.Module]) -> None:
    """Refuse a selected layer whose kind ``group`` does not fit, suggesting what fits ``model_layers`` (the model's
    prunable layers but the heads left out): the conv kinds it has, a second entry only where it has the other kind."""
    convs = sorted({type(m).__name__ for m in model_layers.values() if isinstance(m, _ConvNd)})
    for name, module in layers.items():
        kind = type(module).__name__
        if group == "row" and not isinstance(module, nn.Linear):
            fix = (
                f"set layers.types: [Linear] (add a second l1 entry with group: channel and layers.types: "
                f"[{', '.join(convs)}] for the convolutions)"
                if any(isinstance(m, nn.Linear) for m in model_layers.values())
                else "this model's prunable layers (the head left out) are convolutions: use group: channel"
            )
            raise RecipeError(
                f"{where}.group: 'row' groups the rows of Linear weights, but layer {name!r} is a {kind}: {fix}"
            )
        if group == "channel" and not isinstance(module, _ConvNd):
            fix = (
                f"use group: row for Linear layers, or set layers.types: [{', '.join(convs)}] (add a second l1 "
                "entry with group: row and layers.types: [Linear] for the fully connected layers)"
                if convs
                else "this model has no convolutions: use group: row"
            )
            raise RecipeError(
                f"{where}.group: 'channel' groups the output channels of Conv weights, but layer {name!r} is a "
                f"{kind}: {fix}"
            )


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


def _max_abs(w: torch.Tensor) -> float:
    """``max |w|`` (``w`` not empty) in one pass with no copy: ``aminmax``, ~10x faster on CPU than ``vector_norm(w,
    inf)`` (not vectorized there: ~1 ms for LeNet-300-100's first layer), and the same value."""
    lo, hi = torch.aminmax(w)
    return max(float(hi), -float(lo))


class _NormSum(torch.autograd.Function):
    """``strength * (sum_u ||r_1[u]||_2 + sum_u ||r_2[u]||_2 + ...)`` over the unit rows ``r_i`` (``[units, rest]``,
    :func:`~sparsekit.layers.unit_view`) of each layer, the group-lasso penalty, with a cheaper backward.

    Autograd's backward of ``vector_norm`` (``norm_backward``) computes ``grad * (r / norm).masked_fill_(norm == 0,
    0)`` with ``grad`` a broadcast ``[units, 1]``: two broadcast passes and a strided multiply over every weight, ~5x
    this backward on LeNet-300-100's first layer (1.4 ms of a 3 ms training step). Here: ``r * (c / norm)`` with
    ``c = grad * strength``, one broadcast pass, 0 for a unit at zero. The values are bit for bit those of
    ``strength * (vector_norm(r_1, dim=1).sum() + ...)``, the gradients the same up to rounding (~1e-7 relative,
    tested). Under ``create_graph=True`` (a Hessian-vector product) the norms are measured again where autograd
    sees them, so second derivatives are right."""

    @staticmethod
    def forward(ctx: Any, strength: float, *rows: torch.Tensor) -> torch.Tensor:
        norms = [torch.linalg.vector_norm(r, dim=1) for r in rows]
        ctx.strength = strength
        ctx.save_for_backward(*rows, *norms)
        total: Any = None
        for n in norms:
            term = n.sum()
            total = term if total is None else total + term
        return total * strength

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        c = grad * ctx.strength
        saved = ctx.saved_tensors
        k = len(saved) // 2
        out: list[torch.Tensor | None] = [None]
        for r, n, need in zip(saved[:k], saved[k:], ctx.needs_input_grad[1:], strict=True):
            if not need:
                out.append(None)
                continue
            if torch.is_grad_enabled():  # create_graph: the gradient must be differentiable in r through the norm
                n = torch.linalg.vector_norm(r, dim=1)
            scale = (c / n).masked_fill_(n == 0, 0)  # a unit at exact zero: 0/0, whose (sub)gradient is 0
            out.append(r * scale.unsqueeze(1))
        return tuple(out)


_HEAD_REASON = "its outputs are the model's outputs: removing units would change what the model returns"


def _maps_past(module: Any, channels: int | None, idxs: list[int] | None) -> bool:
    """Whether a consumer layer's input indices for a producer's last unit (``idxs``, from torch-pruning's graph) lie
    past its ``channels`` inputs: the graph joins the producer's units in a way it does not model (``F.glu`` over
    channels halves them; each is gated by another)."""
    if not isinstance(module, nn.Linear | _ConvNd) or channels is None or not idxs:
        return False
    return max(idxs) >= channels


def _norm_kind(norm: nn.Module) -> str:
    """How a message names a norm with running statistics: an InstanceNorm that tracks them, or a BatchNorm."""
    return "an InstanceNorm" if isinstance(norm, nn.modules.instancenorm._InstanceNorm) else "a BatchNorm"


def _grouped(module: Any) -> bool:
    """A convolution with groups that is not depthwise (ResNeXt, ShuffleNet): channels go only whole groups at a
    time there, which removing single units does not respect. A depthwise one (a group per input channel, one
    output each) is coupled channel by channel instead, and handled so. A depthwise one with a channel multiplier
    (``Conv2d(8, 16, groups=8)``) is grouped here: each input channel owns several outputs, and removing its units
    failed at finalize after the target had counted them."""
    return (
        isinstance(module, _ConvNd)
        and module.groups > 1
        and not (module.groups == module.in_channels == module.out_channels)
    )


def _grouped_words(module: Any) -> str:
    """How an error names a conv that ``_grouped`` holds: a depthwise multiplier is not what users call grouped."""
    if module.groups == module.in_channels:
        return (
            f"a depthwise convolution with channel multiplier {module.out_channels // module.in_channels} "
            f"(groups={module.groups})"
        )
    return f"a grouped convolution (groups={module.groups})"


class _UnitCover:
    """Which output units of a layer the mask still has any weight of: cached until the mask changes, so
    group-lasso units found dead again (every step while they stay masked) cost no pass over the mask."""

    __slots__ = ("alive_units", "any_dead", "dead_units", "mask", "version")

    def __init__(self, mask: torch.Tensor, module: nn.Module) -> None:
        self.mask, self.version = mask, mask._version
        self.alive_units = unit_view(mask.view(torch.uint8), module).amax(dim=1).bool()
        self.dead_units = self.alive_units.logical_not()
        self.any_dead = bool(self.dead_units.any())

    def holds(self, mask: torch.Tensor) -> bool:
        return self.mask is mask and self.version == mask._version


_REFRESH = 8  # without a target: steps between exact proximal steps (masks, floors); the others are one fused pass
_GUARD = (
    4.0  # fused steps only while every layer's peak |w| (unit norm) passes _GUARD x the shrink until the next exact
)
PENALTY_MAX_GAIN = 10.0  # mode: penalty with a target: lambda adapts up to this many times strength
_TARGET_SLACK = 0.005  # the report's SPARSITY_TOLERANCE, on top of a target's rounding to whole units (weights)
_GROW = 1.25  # target: the gain on lambda's estimate grows by this when behind the curve, falls by it when ahead


class L1:
    """L1 / group-lasso regularization (``method: l1``), optionally driven to a ``target`` fraction of zeros.

    ``strength`` is lambda in ``loss + lambda * R(w)`` (``R``: ``sum|w|``, or ``sum_g ||w_g||_2`` with
    ``group``); the proximal step shrinks by ``lr * lambda`` with the learning rate of the optimizer step it
    follows (:attr:`learning_rates`, set by the Pruner; 1.0 when unset), and none on a step no optimizer took
    (``GradScaler`` skipped it on inf/NaN gradients; see :meth:`~sparsekit.learning_rate.LearningRates.took_step`).

    Raises RecipeError at construction when ``group`` does not fit a selected layer's type or the
    schedule window is empty, TargetError when ``spec.layers`` selects no layer."""

    name = "l1"
    masks_weights = False
    zeroes_weights = True
    needs_grad = False
    structural = False  # units are removed at finalize only, after masks are baked

    def __init__(self, spec: Any, model: nn.Module, setup: Setup) -> None:
        setup.refuse_scorer(self.name)
        self.spec = spec
        self.where = setup.where
        self.input_shape = list(setup.input_shape) if setup.input_shape else None
        self.layers = select_layers(model, spec.layers, f"{self.where}.layers")
        warn_computed(model, spec, self.layers, self.where, self.name)
        # A proximal shrink would still move a frozen weight (by the recipe's rate, since no optimizer steps it), and a
        # target would zero its weakest units at end_epoch: not what freezing it meant. (A plain penalty leaves it be:
        # no gradient reaches it, and its norm still counts in the penalty's value.)
        if spec.mode == "proximal" or spec.target is not None:
            refuse_frozen(self.layers, self.where, "a proximal step" if spec.mode == "proximal" else "a target")
        self.touched: list[str] = []  # no shape changes before finalize
        self.head_left_out: list[str] = []
        self._heads_kept: list[str] = []  # heads still selected (named in layers.include, or a model all head)
        if spec.group != "none":
            self._leave_out_head(model, spec, setup.shape_later)  # first: the head's kind does not matter once left out
        others = {n: m for n, m in prunable_layers(model).items() if n not in self.head_left_out}
        try:
            _check_group(spec.group, self.layers, self.where, others)
        except RecipeError as err:
            if spec.group == "none" or self._input_shape(model) or takes_several_inputs(model):
                raise  # (a forward of several inputs runs on no one input shape: setting one cannot help)
            # Without a shape the model runs on, the head could not be found, so it was not left out: say so,
            # since the usual mismatch is that head (a CNN's last Linear under group: channel).
            raise RecipeError(
                f"{err} (the classifier head is left out by itself only when the model can be run: set "
                "model.input_shape in the recipe, or pass context={'input_shape': [1, C, H, W]} to Pruner)"
            ) from None
        self.schedule = Schedule.from_spec(spec.schedule, 1.0, setup.steps_per_epoch)
        if self.schedule.end <= self.schedule.start:
            # `schedule: oneshot` (or end_epoch == start_epoch) would make l1 silently do nothing. The recipe check
            # refuses those; a window that only rounds to one optimizer step (0 to 0.4 at 1 step per epoch) reaches
            # here, where "empty (start_epoch=0, end_epoch=0.4)" left the user to guess why.
            first, last = spec.schedule.start_epoch, spec.schedule.end_epoch
            per = setup.steps_per_epoch
            why = (
                f"epochs {first:g} and {last:g} are the same optimizer step ({self.schedule.start}) at {per} "
                f"step{'s' if per != 1 else ''} per epoch: give end_epoch {(self.schedule.start + 1) / per:g} or more, "
                "or leave schedule out to regularize the whole run"
                if last > first
                else "leave schedule out to regularize the whole run"
            )
            raise RecipeError(
                f"{self.where}.schedule: l1 acts on every step from start_epoch up to end_epoch, and this "
                f"window is empty (start_epoch={first:g}, end_epoch={last:g}): {why}"
            )
        self.steps_per_epoch = setup.steps_per_epoch
        self.step = 0  # optimizer steps completed
        self.floored: set[str] = set()  # layers kept from going all-zero (one unit or weight left alive)
        self.units = spec.group != "none"
        self.target: float | None = None if spec.target is None else float(spec.target)
        # A penalty with no target and no threshold makes no exact zeros (tied-weight rules: base.Method).
        self.zeroes_weights = spec.mode == "proximal" or spec.target is not None or float(spec.threshold) > 0
        self.lam = float(spec.strength)  # lambda now: the target's controller moves it
        self.lam_max = self.lam
        self.gain = 1.0  # the target's feedback on top of the lambda its estimate asks for
        self.topped_up = 0  # zeroed at end_epoch to meet the target
        self.settled = False  # the target's end_epoch step ran
        self.learning_rates: LearningRates | None = None  # the Pruner's watch over the optimizer's lr
        # Adapt lambda every `every` epochs when the schedule says so, else 16 times per epoch.
        every = spec.schedule.every if "every" in spec.schedule.model_fields_set else 1 / 16
        self.adapt_every = max(1, round(every * setup.steps_per_epoch))
        # One entry per weight: modules sharing one (tied weights) are shrunk, counted and penalized once.
        self._own = _distinct(self.layers)
        # With groups, layers whose units are coupled (a residual add, a depthwise conv after a conv) share one group
        # per unit: the first of them owns it (in self._own), the others are its members; a BatchNorm on any of them
        # joins with its gamma and beta.
        self.coupled: dict[str, str] = {}  # member layer -> the layer owning its units' groups
        self.batchnorm: dict[str, list[str]] = {}  # owning layer -> the BatchNorms in its units' groups
        self._member_names: dict[str, list[str]] = {}
        # Layers whose zeroed units finalize cannot remove (a tie, a coupling the groups do not span) -> why.
        self.cannot_remove: dict[str, str] = {}
        self._bn_modules: dict[str, list[tuple[_NormBase, int]]] = {}  # (norm, the unit 0's index in it)
        # owning layer -> (a BatchNorm or InstanceNorm without gamma and beta, the layer whose output it normalizes):
        # a dead unit's bias there and running mean are held at 0, so the unit emits exactly 0 in eval mode too.
        self._stat_modules: dict[str, list[tuple[_NormBase, nn.Module]]] = {}
        self._held: dict[str, nn.Module] = {}  # those norms by name (see rebind)
        self._traced = False  # whether _couple traced the model: without it, heads and ties are not known
        if self.units:
            self._couple(model)
        self.target_left_out: dict[str, str] = {}  # layer -> why its units cannot count toward the target
        if self.target is not None and self.units and spec.remove_dead:
            self._count_removable_units_only()
        self._modules = list(self._own.values())
        self._names = list(self._own)
        self._members = [[self.layers[m] for m in self._member_names.get(n, [])] for n in self._names]
        self._bns = [self._bn_modules.get(n, []) for n in self._names]
        self._stats = [self._stat_modules.get(n, []) for n in self._names]
        # some group spans more than one weight, or a dead unit has a running mean to hold
        self._joint = any(self._members) or any(self._bns) or any(self._stats)
        self._bias_held = self._bias_layers()
        self._weights = [weight_of(m) for m in self._modules]
        self._sizes = [
            num_units(m) if self.units else w.numel() for m, w in zip(self._modules, self._weights, strict=True)
        ]
        self.total = sum(self._sizes)
        # With a target: per layer, the most units (weights) it may have at zero, so that one ranking over all
        # layers cannot take a layer down to a unit or two (their norms are not comparable across layers: other
        # fan-in, other activation scales, a BatchNorm after it) while the others stay whole.
        self.layer_cap = 0.0 if self.target is None else layer_cap_for(self.target, self.units)
        self._quota = [min(size - 1, math.floor(self.layer_cap * size)) for size in self._sizes]
        if self.target is not None and round(self.target * self.total) == 0:
            what = "units" if self.units else "weights"
            raise RecipeError(
                f"{self.where}.target: {self.target:g} of the {self.total} {what} this entry selects rounds to none "
                f"(the target is met in whole {what}): ask for at least {1 / self.total:.3g} (one of them), or "
                "select more layers"
            )
        self.dead = 0  # units (weights) at zero over all layers, as of the last exact step or adapt point
        self._fused_until = 0  # steps up to this one may take the fused pass (no target only)
        self.proximal_every = int(spec.proximal_every)
        self._owed = [0.0] * len(self._modules)  # per layer: lr * lambda summed since the last proximal step
        self._owed_all = 0.0  # the same, owed by every layer alike (one learning rate for all)
        # With a target: per layer, lr * strength summed (the shrink of units not marked), and per layer the units
        # (weights) marked at the last adaptation as the weakest still to be zeroed, the only ones lambda's raise
        # shrinks (None before the first adaptation: every unit takes strength).
        self._owed_base = [0.0] * len(self._modules)
        self._marked: list[torch.Tensor] | None = None
        self._covers: dict[str, _UnitCover] = {}  # per layer, the units its mask still has (group proximal)
        self._alive: tuple[list[_UnitCover | None], torch.Tensor] | None = None  # those covers, concatenated
        self._fused: _Fused | None = None
        self._grad_fused: _Fused | None = None  # the all-layer pass add_penalty_grad uses (its own norm buffers)
        self._grad_unfused: list[Any] | None = None  # the weights it could not be built for, as last seen
        # What counts as zero for the target: threshold, or in penalty mode without one (a penalty makes no exact
        # zeros) 1e-3 of the mean unit norm (|w|) at the start.
        self.zero_below = float(spec.threshold)
        if self.target is not None and spec.mode == "penalty" and self.zero_below <= 0:
            with torch.no_grad():
                scores = torch.cat([s.float().reshape(-1) for s in self._scores()])  # (a channels_last weight's too)
            self.zero_below = 1e-3 * float(scores.mean()) if scores.numel() else 0.0
        # Weight and unit counts before remove_dead shrinks layers: removed units count as pruned in the report.
        self.initial = {n: weight_of(m).numel() for n, m in self.layers.items()}
        self.initial_units = {n: num_units(m) for n, m in self.layers.items()}

    def check_reachable(self) -> None:
        """RecipeError when the target asks for more zero units (weights) than the layer caps allow (each layer at most
        ``layer_cap`` of its own, and one kept): short of it beyond the report's tolerance, it could only be missed.
        The Pruner calls it when no other entry's zeros count toward this one's (see ``Pruner._check_reachable``)."""
        if self.target is None or not self.total or self._reachable(self.target):
            return
        what = "units" if self.units else "weights"
        most = sum(self._quota)
        per = ", ".join(f"{n}: {q} of {size}" for n, q, size in zip(self._names, self._quota, self._sizes, strict=True))
        # The largest target (in thousandths) met in full: a lower target lowers the cap too, so search, not divide.
        fits = next(
            (t / 1000 for t in range(math.floor(self.target * 1000), 0, -1) if self._reachable(t / 1000, slack=0.0)),
            None,
        )
        raise RecipeError(
            f"{self.where}.target: {self.target:g} asks for {round(self.target * self.total)} of the {self.total} "
            f"{what} this entry selects at zero, but at most {most} ({most / self.total:.3g}) can be: no layer may "
            f"have more than {self.layer_cap:g} of its {what} at zero, and every layer keeps one ({per}); "
            # (with the count it stands for: 0.812 of 8 units reads as contradicting "at most 6 (0.75)" until it
            # says it is 6 of them, round(6.5))
            + (
                f"ask for at most {fits:g} ({round(fits * self.total)} of them), or select more layers"
                if fits
                else "select more layers"
            )
        )

    def _reachable(self, target: float, slack: float | None = None) -> bool:
        """Whether the zeros ``target`` asks for are within ``slack`` (default: the report's tolerance) of what its
        layer caps let this entry zero."""
        cap = layer_cap_for(target, self.units)
        most = sum(min(size - 1, math.floor(cap * size)) for size in self._sizes)
        if slack is None:
            return most / self.total >= target - (0.5 / self.total + _TARGET_SLACK)
        return most >= round(target * self.total) - slack * self.total

    def _leave_out_head(self, model: nn.Module, spec: Any, shape_later: bool = False) -> None:
        """Group lasso leaves the classifier head out unless ``layers.include`` names it: a head row at zero
        leaves its class only its bias (the class can no longer be predicted from the input), and a head's
        outputs are never removed, so it would count toward the target with nothing to show for it. The head
        is every prunable layer whose output is one of the model's outputs (each head of a multi-output model),
        else the one a forward pass calls last, on the pruner's input shape (or one guessed from a first Linear
        layer); without a shape the model runs on, nothing is left out (registration order need not be call
        order).

        Raises RecipeError when the head was all the entry selected (a recipe ``layers.types: [Linear]`` on a CNN
        whose only Linear is the head): grouping it alone would zero whole classes. A model whose every prunable
        layer is a head keeps them. TargetError when the shape was given (the recipe's, or the Pruner's context)
        and the model does not run on it: going on without the head and the groups would train a different entry."""
        shape = self._input_shape(model)
        why = "" if shape else "the input shape is unknown"
        # what to do: give the shape, unless no shape can help (a forward of several inputs, say)
        advice = "set model.input_shape in the recipe or pass context={'input_shape': [1, ...]} to the Pruner"
        if not shape and takes_several_inputs(model):
            # forward(image, meta): no one input shape runs it, so the shape advice cannot be followed
            why, advice = "a forward of several inputs gives no one input shape to find it with", ""
        try:
            heads = output_layers(model, shape) if shape else []
        except Exception as err:
            if self.input_shape and not takes_several_inputs(model):
                # The shape the user gave: going on without it trained with the head's rows pruned and no BatchNorm
                # in the groups, and only finalize said (its remove_dead skipped) that the model never ran on it.
                raise TargetError(
                    f"{self.where}: group: {spec.group} runs the model on its input_shape {shape} to find the "
                    f"classifier head and the units' groups, and the model does not run on it ({one_line(err, 200)}); "
                    + (trace_advice(err) or "check model.input_shape (the whole input, batch first)")
                ) from None
            heads = []
            why = f"the model does not run on the guessed input shape {shape} ({one_line(err)})"
            advice = trace_advice(err) or advice
        named = spec.layers.include or []
        explicit = bool(named) and all(isinstance(n, str) and not _GLOB.search(n) for n in named)
        # An entry whose layers.exclude already leaves a layer out has followed the warning's own advice: the head
        # cannot be told, but the user named what to keep whole, so repeating the advice would only mislead.
        excluded = any(fnmatchcase(n, p) for n in prunable_layers(model) for p in spec.layers.exclude or [])
        if why and not self.input_shape and not explicit and not excluded and not shape_later:
            # No shape given and none guessed that runs: the head cannot be told from the other layers (registration
            # order need not be call order), so a pattern selects it and the target zeroes its rows like any
            # layer's, leaving those classes only their bias. Silent until finalize's remove_dead, too late.
            warnings.warn(
                f"{self.where}: group: {spec.group} could not find the classifier head to leave it out ({why}), so "
                f"it is pruned like any other layer (a head unit at zero leaves its class only its bias); "
                + (f"{advice}, or leave" if advice else "leave")
                + " the head out with layers.exclude",
                stacklevel=outside_sparsekit(),  # the user's Pruner(...) line
            )
        for head in heads:
            if head in self.layers:
                self._heads_kept.append(head)  # (until left out below)
        if set(prunable_layers(model)) <= set(heads):
            return  # a model that is all head (a logistic regression): nothing else could be pruned
        for head in heads:
            if head in self.layers and head not in named:
                del self.layers[head]
                self._heads_kept.remove(head)
                self.head_left_out.append(head)
        if self.head_left_out and not self.layers:
            heads_named = ", ".join(repr(h) for h in self.head_left_out)
            linear = spec.group == "channel" and isinstance(
                prunable_layers(model).get(self.head_left_out[0]), nn.Linear
            )
            raise RecipeError(
                f"{self.where}.layers: with group: {spec.group} the classifier head ({heads_named}) is left out (a "
                "head unit at zero leaves its class only its bias: the class can no longer be predicted), and it is "
                "all this entry selects: select the hidden layers instead, or name the head exactly in "
                "layers.include (a pattern does not count)"
                + (" with group: row" if linear else "")
                + " to zero its units anyway"
            )

    def _couple(self, model: nn.Module) -> None:
        """Find, by torch-pruning's trace on the pruner's input shape, the layers whose output unit ``u`` is
        another selected layer's unit ``u`` (removing one removes the other: a residual add, a depthwise conv)
        and the normalization layers on them; fills ``coupled``, ``batchnorm``, ``cannot_remove`` and drops members
        from ``_own``.
        Without an input shape, or when the model does not trace, every layer's groups are its own weights."""
        shape = self._input_shape(model)
        if not shape:
            return
        try:
            graph = build_graph(model, shape)
        except Exception:  # noqa: BLE001 - a model the trace cannot follow: its units' groups are their weights
            return
        self._traced = True
        names = {id(m): n for n, m in model.named_modules()}
        own = {id(m): n for n, m in self._own.items()}
        try:
            calls, fed_by = forward_calls(model, shape)
        except Exception:  # noqa: BLE001 - (the trace above ran the same forward)
            calls, fed_by = {}, {}
        untie: set[str] = set()  # layers whose weight is tied or used outside them: their shapes must stay
        for holders in tied_parameters(model):
            untie.update(n for n, _ in holders)
            for n, _ in holders:
                if n in self.layers:
                    others = ", ".join(h for h, _ in holders if h != n)
                    self.cannot_remove[n] = f"its weight is tied to {others}: removing units would untie them"
        try:
            for n, _, _ in reused_parameters(model, shape):
                untie.add(n)
                if n in self.layers:  # (a tied weight is used by its other module: said above)
                    self.cannot_remove.setdefault(n, "the forward pass uses its weight outside the layer too")
        except Exception:  # noqa: BLE001 - (the trace below fails the same way)
            pass
        for name, module in list(self._own.items()):
            if name in self.coupled or not tpa.in_graph(graph, module):
                continue
            units = num_units(module)
            try:  # a member's unit u must be this layer's unit u: both ends of the range map to themselves
                first = tpa.group_members(graph, tpa.channel_group(graph, module, [0]))
                last = {
                    id(m.module): m.idxs
                    for m in tpa.group_members(graph, tpa.channel_group(graph, module, [units - 1]))
                }
            except Exception:  # noqa: BLE001 - a layer tp cannot remove channels of: its groups are its weights
                continue
            members: list[str] = []
            bns: list[tuple[_NormBase, int]] = []
            stats: list[_NormBase] = []
            blocked = ""
            own_computed = computed_tensor(module)  # (its weight is a parameter: it was selected; its bias may not be)
            if own_computed is not None:
                blocked = (
                    f"its {own_computed[0]} is computed in the forward pass ({own_computed[1]}), which removing units "
                    f"cannot resize (remove it before pruning with {own_computed[2]})"
                )
            elif calls.get(module, 1) > 1:
                blocked = (
                    f"it runs {calls[module]} times in one forward pass (a shared layer): removing its units would "
                    "change every call at once"
                )
            elif _grouped(module):
                blocked = f"it is {_grouped_words(module)}: removing single output channels would break its groups"
            if first[0].idxs != [0]:  # e.g. a GLU or a chunk: unit 0 of this layer goes only with another of its units
                blocked = "its units are paired with other units of the layer (a GLU, a chunk or a split)"
                ops = {m.op for m in first}
                # A view of the units into fewer, wider channels ([32] -> [4, 8] for a Conv1d) also ties several units
                # together; without a split or GLU in the group that is the reason, and the user should read it.
                if "_ReshapeOp" in ops and not ops & {"_SplitOp", "GluBackward0"}:
                    blocked = (
                        "its units are viewed (view/reshape) as channels of the layer after it, several units to a "
                        "channel: removing single units would break that layout"
                    )
            if not blocked and any(tpa.splits_channels(graph, m.module) for m in first):
                # torch.split(x, 16, 1) / chunk: the sizes are written into the forward code, so a removed unit shifts
                # every later channel into the wrong part (or the parts no longer add up). Only finalize found it, after
                # the target had counted these zeros as units it removes.
                blocked = (
                    "its units pass through a split or chunk of the channels (torch.split / chunk), whose sizes the "
                    "forward code fixes: removing single units would shift them"
                )
            for member in first[1:]:
                mod = member.module
                label = names.get(id(mod))
                if isinstance(mod, nn.Parameter):  # (a weight the forward uses outside any layer)
                    blocked = "its units meet a parameter the forward pass uses outside a layer"
                    continue
                # A weight or bias (a layer's, a BatchNorm's) computed in the forward pass: a parametrized bias failed
                # the removal at finalize as a weight did ("attribute 'bias' already exists"), the target counted met.
                computed = (
                    computed_tensor(mod, inputs=not member.out_channels)
                    if mod is not module and isinstance(mod, nn.Module)
                    else None
                )
                if computed is not None:  # (the removal failed at finalize with "attribute 'weight' already exists")
                    blocked = (
                        f"its units reach {label}, whose {computed[0]} is computed in the forward pass "
                        f"({computed[1]}), which removing units cannot resize (remove it before pruning with "
                        f"{computed[2]})"
                    )
                    continue
                if mod is not module and label in untie:
                    blocked = (
                        f"its units reach {label}, whose weight is tied or used outside it: removing them would untie "
                        "it"
                    )
                    continue
                if mod is not module and isinstance(mod, nn.Linear | _ConvNd) and calls.get(mod, 1) > 1:
                    blocked = (
                        f"its units reach {label}, which runs {calls[mod]} times in one forward pass (a shared "
                        "layer): removing them would change every call at once"
                    )
                    continue
                if not member.out_channels:
                    if _grouped(mod):
                        blocked = (
                            f"its units feed {names.get(id(mod), '?')}, {_grouped_words(mod)}: removing single "
                            "input channels would break its groups"
                        )
                    elif _maps_past(mod, member.channels, last.get(id(mod))):
                        # torch-pruning does not model F.glu over channels (nor other splits): it maps the layer's
                        # last units past the consumer's inputs, where each unit is in fact gated by another
                        blocked = (
                            "its units are paired with other units of the layer (F.glu over its channels, a chunk "
                            f"or a split) before {names.get(id(mod), '?')}"
                            if any(m.op.startswith("Glu") for m in first)
                            else f"its units map past the inputs of {names.get(id(mod), '?')} (a layout the removal "
                            "does not model)"
                        )
                    continue
                # A norm over a concatenation (DenseNet) holds the units at an offset, in the same order.
                offset = member.idxs[0] if isinstance(mod, _NormBase) and len(member.idxs) == 1 else 0
                if member.idxs != [offset] or last.get(id(mod)) != [offset + units - 1]:
                    if isinstance(mod, nn.Linear | _ConvNd):  # (other ops past a flatten list many indices)
                        blocked = f"its units are coupled to other units of {names.get(id(mod), '?')}"
                    continue
                where = f"{names.get(id(mod), '?')} ({type(mod).__name__})"
                if isinstance(mod, _NormBase):  # BatchNorm, InstanceNorm: each unit is normalized on its own
                    if offset + units > mod.num_features:
                        continue
                    if mod.affine and mod.weight is not None and mod.bias is not None:
                        bns.append((mod, offset))
                    elif offset == 0 and mod.num_features == units:
                        stats.append(mod)
                    elif mod.running_mean is not None:
                        blocked = (
                            f"its units reach {where}, a norm without affine parameters over more units (a "
                            "concatenation): a dead unit's running mean cannot be set to what it receives"
                        )
                    continue
                if not isinstance(mod, nn.Linear | _ConvNd):
                    if mixes_units(mod, member.op):  # (affine or not; a module or F.layer_norm / F.group_norm)
                        what = where if label is not None else f"a functional normalization ({member.op})"
                        blocked = (
                            f"its units pass through {what}, which normalizes them together: a zero unit still "
                            "enters the others' statistics"
                        )
                    elif not isinstance(mod, nn.Module) or isinstance(mod, nn.PReLU):
                        continue  # a stand-in for an operation, or a PReLU (its slopes go with the units)
                    elif next(mod.parameters(recurse=False), None) is not None or any(
                        b is not None for b in mod._buffers.values()
                    ):  # as remove_dead_units, which keeps units such a module sees
                        blocked = (
                            f"its units pass through {where}, whose per-unit parameters or buffers the removal "
                            "cannot adjust"
                        )
                    continue
                if mod is module:
                    continue
                other = own.get(id(mod))
                if other is None or other in self.coupled or other in self._member_names or num_units(mod) != units:
                    why = "which this entry does not select" if other is None else "in another group"
                    blocked = (
                        f"its units are coupled to {names.get(id(mod), '?')}'s (the graph joins their channels, as "
                        f"a residual add or a depthwise conv does), {why}"
                    )
                    continue
                # The member's own reasons bind the group too, whichever layer the loop reached first: a grouped conv
                # reached as a member (registered after the depthwise conv it feeds) had its units counted toward the
                # target, then stayed at finalize; one reached first is in cannot_remove (and indexing it failed).
                member_why = self.cannot_remove.get(other) or (
                    f"it is {_grouped_words(mod)}: removing single output channels would break its groups"
                    if _grouped(mod)
                    else ""
                )
                if member_why:  # (a reason of this layer's own says more: it is kept)
                    blocked = blocked or f"its units are coupled to {other}'s, which cannot lose units ({member_why})"
                    continue
                members.append(other)
            producers = [module, *(self.layers[o] for o in members)]
            sources: list[tuple[_NormBase, nn.Module]] = []
            for bn in stats:
                fed = fed_by.get(bn)
                if fed is not None and any(fed is p for p in producers):
                    sources.append((bn, fed))
                elif bn.running_mean is not None:  # (what a dead unit sends it through other ops is not known here)
                    blocked = (
                        f"its units reach {names.get(id(bn), '?')}, {_norm_kind(bn)} without affine parameters, "
                        "through other operations: a dead unit's running mean cannot be set to what it receives"
                    )
            if blocked:
                # The units cannot go, so they are no group: a joint group would only shrink (and silence) the
                # coupled layer or the BatchNorms of a layer this entry leaves alone.
                self.cannot_remove.setdefault(name, blocked)  # (a tie, said above, says more)
                continue
            for other in members:
                self.coupled[other] = name
                self._member_names.setdefault(name, []).append(other)
            if bns:
                self._bn_modules[name] = bns
                self.batchnorm[name] = [names.get(id(bn), "") for bn, _ in bns]
            if sources:
                self._stat_modules[name] = sources
            for norm in [*(bn for bn, _ in bns), *(bn for bn, _ in sources)]:
                self._held[names.get(id(norm), "")] = norm
        for joined in self.coupled:
            del self._own[joined]
        for head in self._heads_kept:
            self.cannot_remove.setdefault(head, _HEAD_REASON)
        if not self.spec.remove_dead:
            self.cannot_remove = {}  # nothing is removed: nothing to warn about

    def _count_removable_units_only(self) -> None:
        """With a target, groups and ``remove_dead`` the target is a fraction of units finalize removes: a layer
        whose zeroed units cannot be removed (``cannot_remove``: one feeding a grouped conv or a computed weight,
        a tied weight, ...) is left out of the entry, so that its units neither count toward the target nor take
        the adaptive lambda (they were zeroed, counted as met, and all kept). A head named in ``layers.include``
        stays: zeroing its units was asked for by name. RecipeError when no layer is left."""
        blocked = {n: why for n, why in self.cannot_remove.items() if n not in self._heads_kept and n in self.layers}
        if not blocked:
            return
        for name in blocked:
            del self.layers[name]
            self._own.pop(name, None)
            del self.cannot_remove[name]  # (no units are zeroed there now: target_left_out says why)
        self.target_left_out = blocked
        whys = "; ".join(f"{n!r}: {why}" for n, why in blocked.items())
        if not self._own:
            raise RecipeError(
                f"{self.where}.target: with group: {self.spec.group} and remove_dead the target is a fraction of the "
                f"units finalize removes, and no layer this entry selects can lose units ({shorten(whys, 1500)}): fix "
                "that, select layers that can, or set remove_dead: false to have the target count units held at "
                "zero by masks (none removed)"
            )
        warnings.warn(
            f"{self.where}: with group: {self.spec.group} and remove_dead the target counts the units finalize "
            f"removes, so these layers are left out of it and left as they are ({shorten(whys, 1500)})",
            stacklevel=outside_sparsekit(),
        )

    def _unit_norms(
        self, i: int, w: torch.Tensor, dtype: torch.dtype | None = None, masked: bool = False
    ) -> torch.Tensor:
        """Group ``i``'s unit norms ``[units]``: ``||w_u||_2`` over the owning layer's weight ``w`` and, where units
        are coupled, every member layer's weights and each BatchNorm's ``gamma_u``, ``beta_u``; differentiable in
        all of them (the group-lasso penalty). ``masked``: masked weights count as 0, and so do the BatchNorm
        entries of units the owner's mask holds at zero."""
        module = self._modules[i]
        if not self._joint:
            return torch.linalg.vector_norm(self._groups(w, module), dim=1, dtype=dtype)
        parts = [self._groups(w, module)]
        for m in self._members[i]:
            mw = weight_of(m)
            mask = get_mask(m) if masked else None
            parts.append(self._groups(mw if mask is None else mw * mask, m))
        n = num_units(module)
        extra = [p[at : at + n].view(-1, 1) for bn, at in self._bns[i] for p in (bn.weight, bn.bias) if p is not None]
        if extra:
            bns = torch.cat(extra, dim=1).to(parts[0].dtype)
            mask = get_mask(module) if masked else None
            parts.append(bns if mask is None else bns * unit_view(mask, module).any(dim=1, keepdim=True))
        return torch.linalg.vector_norm(torch.cat(parts, dim=1), dim=1, dtype=dtype)

    def _cover(self, i: int) -> _UnitCover | None:
        """Group ``i``'s units its owner's mask still has any weight of (cached until the mask changes); None
        while the owner has no mask."""
        module = self._modules[i]
        mask = get_mask(module)
        if mask is None:
            return None
        name = self._names[i]
        cover = self._covers.get(name)
        if cover is None or not cover.holds(mask):
            cover = self._covers[name] = _UnitCover(mask, module)
        return cover

    @torch.no_grad()
    def _zero_batchnorms(self, scale: dict[int, torch.Tensor] | None = None) -> None:
        """Scale each paired BatchNorm's ``gamma`` and ``beta`` per unit by ``scale[i]`` (the block
        soft-threshold's factors), else set those of the units whose weights the mask holds at zero to zero:
        after every optimizer step, so neither the gradient on ``beta`` nor momentum revives a dead unit's
        shift. For a BatchNorm or InstanceNorm without ``gamma`` and ``beta`` right after the layer, a dead unit's
        bias in that layer and running mean are set to 0: the normalization subtracts a constant input's mean in
        training, so the unit's output was 0 there up to rounding, and is exactly 0 in eval mode too (where the
        decaying running mean and variance left ``(bias - mean) / sqrt(var + eps)``, a shift a zero-padded
        consumer cannot absorb)."""
        for i, (bns, stats) in enumerate(zip(self._bns, self._stats, strict=True)):
            if not bns and not stats:
                continue
            if scale is not None:
                if i not in scale or not bns:
                    continue
                keep = scale[i]
            else:
                cover = self._cover(i)
                if cover is None:
                    continue
                if bool(cover.alive_units.all()):
                    continue
                keep = cover.alive_units
                for bn, producer in stats:
                    dead = ~keep.to(torch.bool)
                    for t in (getattr(producer, "bias", None), bn.running_mean):
                        if isinstance(t, torch.Tensor):
                            t.masked_fill_(dead.to(t.device), 0.0)
            for bn, at in bns:
                for p in (bn.weight, bn.bias):
                    if p is not None:
                        p[at : at + keep.numel()].mul_(keep.to(p.dtype))

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1, 2, ...) lies in the schedule window.

        Step ``start + 1`` is the first step of ``start_epoch``, step ``end`` the last one before
        ``end_epoch`` (the same boundaries at which magnitude masks change)."""
        return self.schedule.start < step <= self.schedule.end

    def curve(self, step: int) -> float:
        """The target's schedule: the fraction to be zero at ``step``, rising from ``init_sparsity`` at the
        window's start to ``target`` at its end (Zhu & Gupta's cubic, or linear), continuously (0 without a
        target)."""
        if self.target is None:
            return 0.0
        start, end = self.schedule.start, self.schedule.end
        frac = min(max((step - start) / (end - start), 0.0), 1.0)
        power = 3 if self.spec.schedule.curve == "cubic" else 1
        init = float(self.spec.schedule.init_sparsity)
        if frac >= 1.0:
            return self.target
        # From init, as Schedule.target: exactly init_sparsity at the window's start.
        return init + (self.target - init) * (1.0 - (1.0 - frac) ** power)

    @staticmethod
    def _groups(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
        # One row per output unit: Linear rows, Conv output channels (dim 1 of a ConvTranspose weight).
        return unit_view(weight, module)

    def penalty(self) -> torch.Tensor | float:
        """``lambda * sum|w|`` (or ``lambda * sum_g ||w_g||_2`` per output unit) over the layers, a scalar
        tensor, in ``mode: penalty`` while the window is active; else 0.0."""
        # The penalty enters the loss of the step being taken now, step ``self.step + 1``.
        if self.spec.mode != "penalty" or not self.active(self.step + 1):
            return 0.0
        lam = self.lam
        if self.target is not None and lam > self.spec.strength:
            if self._marked is not None:
                return self._raised_penalty(self._marked)
            lam = self.spec.strength  # none marked (the target is met): every unit takes the recipe's strength
        if not self._modules:
            return 0.0
        if not self.units:
            # One autograd node for all layers, with a cheaper backward (see _AbsSum); the same values.
            return _AbsSum.apply(lam, *(weight_of(m) for m in self._modules))
        if not self._joint:
            # One autograd node for all layers, with a cheaper backward (see _NormSum); the same values.
            return _NormSum.apply(lam, *(self._groups(weight_of(m), m) for m in self._modules))
        total: Any = None  # not 0.0 + ...: one op and one autograd node less per step, the same value
        for i, module in enumerate(self._modules):
            term = self._unit_norms(i, weight_of(module)).sum()
            total = term if total is None else total + term
        return 0.0 if total is None else lam * total

    def adds_penalty(self) -> bool:
        """Whether :meth:`penalty` (and :meth:`add_penalty_grad`) add anything at the coming optimizer step."""
        return self.spec.mode == "penalty" and self.active(self.step + 1) and bool(self._modules)

    # (no_grad: sign(w) and w * factor of a weight that requires grad would carry autograd's graph into .grad)
    @torch.no_grad()
    def add_penalty_grad(self) -> bool:
        """Add the gradient of :meth:`penalty` to each weight's ``.grad`` in place, without autograd:
        ``lambda * sign(w)``, or ``lambda * w_g / ||w_g||_2`` per unit (0 for a unit at zero). One pass over each
        weight where autograd's graph took three or four (:meth:`~sparsekit.pruner.Pruner.regularize` uses it).
        True when done (or when there is nothing to add), False where autograd must do it: a target's raised
        penalty, coupled groups. Weights that do not require grad are left alone, as autograd leaves them."""
        if not self.adds_penalty():
            return True
        lam = self.lam
        if self.target is not None and lam > self.spec.strength:
            if self._marked is not None:
                return False
            lam = self.spec.strength
        if self.units and self._joint:
            return False
        if self.units and self._add_group_grad_fused(lam):
            return True
        if not self.units:
            ws = [weight_of(m) for m in self._modules]
            if all(w.requires_grad and w.grad is not None for w in ws):
                # two foreach calls for all layers; sign(w) is +-1 or 0, so lambda * sign(w) is exact and the sum is
                # rounded once, as autograd's (AbsBackward's product, then the gradient's accumulation)
                torch._foreach_add_([w.grad for w in ws], torch._foreach_sign(ws), alpha=lam)  # type: ignore[misc]
                return True
        for i, module in enumerate(self._modules):
            w = weight_of(module)
            if not w.requires_grad:
                continue
            if self.units:
                norms = self._unit_norms(i, w)
                scale = (lam / norms).masked_fill_(norms == 0, 0)
                factor = unit_broadcast(scale, module, w)
                if w.grad is None:
                    w.grad = w * factor
                else:
                    w.grad.addcmul_(w, factor)
            elif w.grad is None:
                w.grad = torch.sign(w).mul_(lam)
            else:
                w.grad.add_(torch.sign(w), alpha=lam)
        return True

    def _add_group_grad_fused(self, lam: float) -> bool:
        """:meth:`add_penalty_grad` for groups on CPU in a few calls for all layers (each unit's norm into one
        buffer, ``lambda / norm`` in numpy on its view, one foreach ``addcmul_``): on a small model the ~20 torch
        calls of the per-layer path cost more than their arithmetic. False where it does not apply (a weight
        without ``.grad`` or not requiring it, or where :class:`_Fused` is not built)."""
        ws = [weight_of(m) for m in self._modules]
        if not all(w.requires_grad and w.grad is not None for w in ws):
            return False
        fused = self._grad_fused
        if fused is None or not fused.fits(ws):
            key = [(w.data_ptr(), w.shape, w.stride(), w.dtype) for w in ws]
            if key == self._grad_unfused:
                return False  # these weights were tried: _Fused does not apply to them (not built again each step)
            fused = self._grad_fused = _Fused.build(ws, self._modules, True)
            self._grad_unfused = key if fused is None else None
        if fused is None or fused._host is None:
            return False
        fused._norms()
        norms, scale = fused._host
        alive = norms != 0
        scale[~alive] = 0  # a unit at zero: its (sub)gradient is 0
        np.divide(np.float32(lam), norms, out=scale, where=alive)
        torch._foreach_addcmul_([w.grad for w in ws], fused.weights, fused.views)  # type: ignore[misc]
        return True

    def _raised_penalty(self, marked: list[torch.Tensor]) -> torch.Tensor:
        """With a target that raised lambda above ``strength``: ``strength * R(w)`` over every unit (weight) plus
        ``(lambda - strength) * R`` over those the last adaptation marked as the weakest still to be zeroed, as the
        proximal step shrinks them (growing regularization on the units to remove alone, see :meth:`_adapt`).
        Raised on every unit, lambda (up to 10x strength) took a model trained with Adam to chance accuracy."""
        base, extra = self.spec.strength, self.lam - self.spec.strength
        total: Any = None
        for i, module in enumerate(self._modules):
            w = weight_of(module)
            values = self._unit_norms(i, w) if self.units else w.abs()
            term = base * values.sum()
            if marked[i].shape == values.shape:  # (marks for a layer another entry has since resized wait for the next)
                term = term + extra * (values * marked[i]).sum()
            total = term if total is None else total + term
        return total

    # --- the proximal step ---------------------------------------------------------------------------

    def rate_weights(self) -> list[torch.Tensor]:
        """The weights whose optimizer learning rate sets the proximal shrink, one per group (layer) in the
        order of the shrinks: a layer's own, or for layers coupled into one group (a residual add), its owner's,
        which the whole group follows when an optimizer gives them different rates."""
        return list(self._weights)

    def _shrinks(self) -> list[float]:
        """``lr * lambda`` per layer: the soft-threshold of this step."""
        rates = self.learning_rates.rates() if self.learning_rates is not None else [1.0] * len(self._modules)
        lam = self.lam
        return [lr * lam for lr in rates]

    @torch.no_grad()
    def _proximal(self, step: int, flush: bool = False) -> None:
        """``prox_{lr * lambda * R}`` after the optimizer step (Parikh & Boyd, 2014, section 6.5.1 and 6.5.4):
        soft-threshold each weight (``group: none``) or scale each unit by ``max(0, 1 - lr * lambda /
        ||w_g||)`` (block soft-threshold, group lasso). Every ``proximal_every`` steps (and at the window's
        last), by the sum of ``lr * lambda`` over those steps: Langford, Li & Zhang's truncated gradient
        (2009, "Sparse Online Learning via Truncated Gradient", JMLR 10), the same objective at a fraction of
        the per-step cost. ``flush`` (at :meth:`finalize`): apply what the steps since the last proximal step owe,
        adding no step of its own."""
        rates = self.learning_rates
        # A step no optimizer took (GradScaler skipped it on an overflow) owes no shrink: the proximal step is the
        # second half of the update the optimizer did not make. Owed shrinks are still applied on schedule below.
        taken = rates.took_step() if rates is not None and not flush else True
        lr = rates.uniform() if rates is not None else 1.0
        if flush:
            if not any(self._owed) and not self._owed_all:
                return
        elif taken and lr is not None:
            self._owed_all += lr * self.lam  # the usual case: one rate for every layer, one float added
            if self.target is not None:
                self._owed_base = [t + lr * self.spec.strength for t in self._owed_base]
        elif taken:
            owed = self._owed
            for i, t in enumerate(self._shrinks()):
                owed[i] += t
                if self.target is not None:
                    self._owed_base[i] += t / self.lam * self.spec.strength if self.lam > 0 else 0.0
        every = self.proximal_every
        if every > 1 and (step - self.schedule.start) % every and step != self.schedule.end and not flush:
            return
        if self.units:
            self._mask_first()
        shrinks = [t + self._owed_all for t in self._owed]
        self._owed, self._owed_all = [0.0] * len(self._owed), 0.0
        base, self._owed_base = self._owed_base, [0.0] * len(self._owed_base)
        moved = self.params_replaced()
        if not all(w.requires_grad for w in self._weights):
            # A layer frozen during training (requires_grad=False after the Pruner was built, which refuses one frozen
            # from the start): the optimizer no longer steps it, so its proximal step is none either.
            shrinks = [t if w.requires_grad else 0.0 for t, w in zip(shrinks, self._weights, strict=True)]
            base = [t if w.requires_grad else 0.0 for t, w in zip(base, self._weights, strict=True)]
        if self.target is None and step <= self._fused_until and not moved and not self._joint:
            fused = self._fused_pass()
            if fused is not None:
                fused.shrink(shrinks)
                return
        self._exact(step, shrinks, base)

    def params_replaced(self) -> bool:
        """Follow the current parameter objects when another entry replaced them (a structured removal, or a
        Pruner's load_state_dict replaying one); returns whether they moved. The Pruner calls it right after such a
        removal, so the learning rates of the optimizer steps before the next proximal step are read for the new
        weights (an optimizer updated to them holds none of the old)."""
        moved = any(w is not weight_of(m) for w, m in zip(self._weights, self._modules, strict=True))
        if moved:
            self._weights = [weight_of(m) for m in self._modules]
            self._fused = None
            self._marked = None  # marked for the old shapes; the next adaptation marks again
            if self.learning_rates is not None:
                self.learning_rates.watch(self._weights)
        return moved

    def _fused_pass(self) -> _Fused | None:
        """The all-layer pass over the current weights (built again when they moved), or None where it does not
        apply (see :class:`_Fused`)."""
        fused = self._fused
        if fused is None or not fused.fits(self._weights):
            fused = self._fused = _Fused.build(self._weights, self._modules, self.units)
        return fused

    def _exact(self, step: int, shrinks: list[float], base: list[float]) -> None:
        """The per-layer step: shrink, mask the zeros it made (so momentum cannot revive them), keep every
        layer alive, and with a target never let more than the curve allows (one step ahead) be zero.

        ``shrinks``: ``lr * lambda`` summed per layer; ``base``: ``lr * strength`` summed, the shrink of the
        units not marked as still to be zeroed (with a target; see :meth:`_adapt`)."""
        if self.units and self.target is None and not self._joint:
            fused = self._fused_pass()
            if fused is not None:
                self._exact_units(step, fused, shrinks)
                return
        budget = None
        marked = self._marked
        if self.target is not None:
            allowed = round(self.curve(min(step + self.adapt_every, self.schedule.end)) * self.total)
            budget = max(allowed - self.dead - sum(self._gone()), 0)
        dead = 0
        peak = math.inf
        for i, (name, module) in enumerate(self._own.items()):
            t: float | torch.Tensor = shrinks[i]
            if self.target is not None and shrinks[i] > base[i]:
                # lambda's raise shrinks only the marked units; the others (all of them once none is marked: the
                # target is met) take the recipe's strength
                t = base[i] if marked is None else torch.where(marked[i], shrinks[i], base[i])
            if self.units:
                n_dead, new, top = self._shrink_groups(i, module, t, budget)
            else:
                n_dead, new, top = self._shrink(name, module, t, budget)
            if budget is not None:
                budget = max(budget - new, 0)
            dead += n_dead
            if shrinks[i] > 0:
                peak = min(peak, top / shrinks[i])  # (read without a target only)
        self.dead = dead
        self._plan_fused(step, peak)

    def _plan_fused(self, step: int, peak: float) -> None:
        """Fused passes until the next exact step, unless a layer could come near zero before it (``peak``: the
        smallest over layers of the largest |w| (unit norm) left, in shrinks of this step, which covered
        ``proximal_every`` optimizer steps)."""
        ahead = (_REFRESH + self.proximal_every) / self.proximal_every
        self._fused_until = step + _REFRESH - 1 if peak > _GUARD * ahead else step

    def _exact_units(self, step: int, fused: _Fused, shrinks: list[float]) -> None:
        """:meth:`_exact` for groups without a target or coupled layers, every layer in one pass
        (:meth:`_Fused.exact`): a few calls in all instead of ~20 per layer, which on a small model's ~0.5 ms
        training step cost more than the step's own arithmetic."""
        found = fused.exact(shrinks, self._alive_units(fused.counts))
        for i in found.floored:
            self.floored.add(self._names[i])
        for i, module in enumerate(self._modules):
            if found.new[i] > 0:
                w = weight_of(module)
                ensure_mask(module).logical_and_(unit_broadcast(~found.dead_units(i), module, w))
        self.dead = found.total_dead
        peak = min((top / t for top, t in zip(found.tops, shrinks, strict=True) if t > 0), default=math.inf)
        self._plan_fused(step, peak)

    def _alive_units(self, counts: list[int]) -> torch.Tensor | None:
        """Per unit of every layer in order (``[sum of units]``, bool): whether its mask still holds any weight of
        it; None when no layer has a mask. ``counts``: each layer's units now (another entry may have removed some).
        Rebuilt only when a mask or a count changed (:class:`_UnitCover`)."""
        covers = [self._cover(i) for i in range(len(self._modules))]
        if all(c is None for c in covers):
            return None
        known = self._alive
        if (
            known is None
            or known[1].numel() != sum(counts)
            or any(a is not b for a, b in zip(known[0], covers, strict=True))
        ):
            device = self._weights[0].device
            parts = [
                c.alive_units if c is not None else torch.ones(n, dtype=torch.bool, device=device)
                for c, n in zip(covers, counts, strict=True)
            ]
            known = self._alive = (covers, torch.cat(parts))
        return known[1]

    def _shrink(
        self, name: str, module: nn.Module, t: float | torch.Tensor, budget: int | None
    ) -> tuple[int, int, float]:
        """Soft-threshold one layer by ``t`` (a float, or one per weight) and mask the zeros it makes: (weights
        at zero, newly zero, the largest |w| left)."""
        w = weight_of(module)
        mask = get_mask(module)
        if budget is None and not isinstance(t, torch.Tensor):
            done = self._shrink_in_place(name, module, w, mask, t)
            if done is not None:
                return done
        if isinstance(t, torch.Tensor):
            shrunk = w.abs().sub_(t.to(w.dtype)).clamp_min_(0).mul_(w.sign())
        else:
            shrunk = torch.nn.functional.softshrink(w, t)
        # Flat views of it are written below: a channels_last weight's (model.to(memory_format=...)) has none. (Its
        # copy_ back into the weight keeps the weight's own layout.)
        shrunk = shrunk.contiguous()
        if mask is not None:
            factor = mask_factor(shrunk, mask)  # (the mask's cached 0/1 copy: float * bool is ~4x slower on CPU)
            if factor is not None:
                multiply_in_place(shrunk, factor)  # masked weights moved with the optimizer step: they stay zero
        before = w.numel() if mask is None else count_true(mask)
        alive = shrunk.bool()  # shrunk != 0, ~8x faster on CPU (a cast, where != with a scalar is a slow kernel)
        n_alive = count_true(alive)
        new = before - n_alive
        flat_s, flat_w = shrunk.view(-1), w.reshape(-1)  # (flat_w is only read)
        if budget is not None and new > budget:
            # More would die than the target's curve allows: the strongest of them skip this shrink.
            was = torch.ones_like(alive) if mask is None else mask
            candidates = torch.where((~alive & was).reshape(-1), flat_w.abs(), -1.0)
            spare = torch.topk(candidates, new - budget).indices
            flat_s[spare] = flat_w[spare]
            alive.view(-1)[spare] = flat_w[spare] != 0
            n_alive = count_true(alive)
            new = before - n_alive
        if n_alive == 0:
            # Never empty a layer: the shrink would zero every weight, so the largest one stays.
            strongest = int((flat_w.abs() if mask is None else flat_w.abs() * mask.reshape(-1)).argmax())
            flat_s[strongest] = flat_w[strongest]
            alive.view(-1)[strongest] = True
            n_alive, new = 1, before - 1
            self.floored.add(name)
        w.copy_(shrunk)
        if n_alive < w.numel() and (mask is None or new > 0):
            ensure_mask(module).logical_and_(alive)
        mark_applied(module)  # the weight is masked as it is: apply_masks may skip it this step
        top = _max_abs(shrunk) if n_alive else 0.0
        return w.numel() - n_alive, new, top

    def _shrink_in_place(
        self, name: str, module: nn.Module, w: torch.Tensor, mask: torch.Tensor | None, t: float
    ) -> tuple[int, int, float] | None:
        """:meth:`_shrink` without a budget, written over the weight (no copy of it, ~3x faster on LeNet-300-100):
        masked weights zeroed first, then the soft-threshold in place. None, with the weight masked but not shrunk,
        when the largest ``|w|`` left is not clearly above ``t`` (1%), so that the layer could lose every weight: the
        copying path then keeps the strongest (the floor). The same values as that path; a masked weight may be +0.0
        where it had -0.0."""
        factor = None if mask is None else mask_factor(w, mask)
        if factor is not None:
            multiply_in_place(w, factor)  # masked weights moved with the optimizer step: they stay zero
        top = _max_abs(w) if w.numel() else 0.0
        # 1% above t: softshrink compares |w| with t rounded to the weight's arithmetic (float32, or coarser for
        # bfloat16), so a max |w| just above t in double precision could still go to zero and empty the layer.
        if top <= t * 1.01:
            return None
        torch.ops.aten.softshrink.out(w, t, out=w)
        before = w.numel() if mask is None else count_true(mask)
        alive = w.bool()
        n_alive = count_true(alive)
        new = before - n_alive
        if n_alive < w.numel() and (mask is None or new > 0):
            ensure_mask(module).logical_and_(alive)
        mark_applied(module)
        # The strongest weight survived (top > t) and lost exactly t: the largest |w| left, up to rounding, without a
        # second pass (it only plans the next fused steps, see _plan_fused).
        return w.numel() - n_alive, new, top - t

    def _shrink_groups(
        self, i: int, module: nn.Module, t: float | torch.Tensor, budget: int | None
    ) -> tuple[int, int, float]:
        """Block soft-threshold of layer ``i``, ``w_g <- w_g * max(0, 1 - t / ||w_g||)`` (``t`` a float, or one
        per unit; a paired BatchNorm's ``gamma_g``, ``beta_g`` are in ``w_g``), masking dead units: (units at
        zero, newly zero, the largest unit norm left)."""
        name = self._names[i]
        w = weight_of(module)
        dtype = torch.promote_types(w.dtype, torch.float32)
        norms = self._unit_norms(i, w, dtype)
        mask = get_mask(module)
        if mask is not None:
            cover = self._cover(i)
            assert cover is not None  # (the same mask)
            was = cover.alive_units
            norms = norms * was  # a masked unit is dead whatever the optimizer step did to it
        else:
            was = torch.ones_like(norms, dtype=torch.bool)
        # Norm 0 gives scale 0 (not nan): the group is already dead.
        scale = (1 - t / norms.clamp_min(torch.finfo(dtype).tiny)).clamp_min(0)
        dead = scale == 0
        new_dead = dead & was
        new = int(new_dead.sum())
        if budget is not None and new > budget:
            # More units would die than the target's curve allows: the strongest of them skip this shrink.
            spare = torch.topk(torch.where(new_dead, norms, -1.0), new - budget).indices
            scale[spare], dead[spare] = 1.0, False
            new = budget
        if bool(dead.all()):
            # Never empty a layer (it would pass on only a constant): its strongest unit skips this shrink.
            strongest = int(norms.argmax())
            scale[strongest], dead[strongest] = 1.0, False
            new = int((dead & was).sum())
            self.floored.add(name)
        w.mul_(unit_broadcast(scale.to(w.dtype), module, w))
        for m in self._members[i]:  # coupled layers: the same factor per unit (the prox of the joint group)
            mw = weight_of(m)
            mw.mul_(unit_broadcast(scale.to(mw.dtype), m, mw))
        if self._bns[i]:
            self._zero_batchnorms({i: scale})
        if new > 0:
            for m in (module, *self._members[i]):
                ensure_mask(m).logical_and_(unit_broadcast(~dead, m, weight_of(m)))
        # (not mark_applied: another method's mask may hold zeros inside the units that stay)
        return int(dead.sum()), new, float((norms * ~dead).max())

    # --- the target ----------------------------------------------------------------------------------

    def _zero_fraction(self) -> float:
        """Units (weights) that count as zero now: masked, exactly zero, or under ``threshold``."""
        gone = sum(self._gone())
        if self.spec.mode == "proximal" and self.spec.threshold <= 0:
            return (self.dead + gone) / self.total
        with torch.no_grad():
            # Under threshold, or exactly zero when threshold is 0.
            dead = sum(count_true(s < max(self.zero_below, torch.finfo(s.dtype).tiny)) for s in self._scores())
        self.dead = dead
        return (dead + gone) / self.total

    def _gone(self) -> list[int]:
        """Per layer, the units (weights) another entry removed since the start (structured removal): they count
        as zero toward the target, as the report counts them, so a target is not met a second time on top."""
        return [
            size - (num_units(m) if self.units else weight_of(m).numel())
            for size, m in zip(self._sizes, self._modules, strict=True)
        ]

    def _scores(self) -> list[torch.Tensor]:
        """Per layer, one score per unit (its norm) or weight (|w|); masked ones score 0."""
        out = []
        for i, module in enumerate(self._modules):
            w = weight_of(module).detach()
            mask = get_mask(module)
            if mask is not None:
                w = w * mask
            out.append(self._unit_norms(i, w, masked=True).detach() if self.units else w.abs())
        return out

    def _adapt(self, step: int) -> None:
        """Set lambda so the weakest units (weights) still to be zeroed reach zero by end_epoch: the
        ``k``-th smallest norm (|w|) left, ``k`` the zeros still missing, over ``lr`` times the steps left
        (the shrink a proximal step takes, ``lr * lambda``, summed to the end), times a gain that grows by
        _GROW while the zero fraction is behind the curve and falls by it when ahead (the loss gradient
        pushes back; with Adam a penalty's step is not ``lr * lambda``).

        Those ``k`` weakest are marked, and lambda above ``strength`` shrinks (penalizes) only them until the
        next adaptation re-ranks: the regularization grows on the units to be removed alone, as in growing
        regularization (Wang et al., 2021, "Neural Pruning via Growing Regularization", ICLR). Raised for every
        unit, it shrank the units meant to stay as much: under Adam, whose gradient step does not grow with the
        gradient, or with few optimizer steps per epoch, the gain climbed until every layer's norms collapsed
        and accuracy fell to chance with the target met."""
        achieved = self._zero_fraction()
        wanted = self.curve(step)
        tol = 0.5 / self.total + 0.005 * (self.target or 0.0)
        if achieved < wanted - tol:
            self.gain = min(self.gain * _GROW, 100.0)
        elif achieved > wanted + tol:
            self.gain = max(self.gain / _GROW, 0.01)
        gone = self._gone()
        missing = round((self.target or 0.0) * self.total) - self.dead - sum(gone)
        if missing <= 0:
            self._marked = None
            return
        floor = max(self.zero_below, torch.finfo(torch.float32).tiny)
        with torch.no_grad():
            per_layer = self._scores()
            # Per layer, the weakest units it may still lose (its quota less those at zero); the k-th of them all.
            alive = [s >= floor for s in per_layer]
            weakest: list[torch.Tensor] = []
            for s, a, quota, out in zip(per_layer, alive, self._quota, gone, strict=True):
                room = quota - out - (s.numel() - count_true(a))
                values = s[a].float().view(-1)
                take = min(max(room, 0), values.numel())
                weakest.append(torch.topk(values, take, largest=False).values)
            pool = torch.cat(weakest)
            if pool.numel() == 0:
                self._marked = None
                return
            kth = float(torch.kthvalue(pool.cpu(), min(missing, pool.numel())).values)
            self._marked = [
                a & (s <= min(kth, float(w.max()))) if w.numel() else torch.zeros_like(a)
                for s, a, w in zip(per_layer, alive, weakest, strict=True)
            ]
        rates = self.learning_rates.rates() if self.learning_rates is not None else [1.0]
        lr = sum(rates) / len(rates)
        left = max(self.schedule.end - step, 1)
        if lr > 0:
            lam = self.gain * kth / (lr * left)
            if self.spec.mode == "penalty":
                # A subgradient step of lr * lambda makes a unit swing around zero by that much: past threshold,
                # no unit would ever count as zero. The weakest are zeroed at end_epoch instead (_settle).
                # And at most PENALTY_MAX_GAIN x the recipe's lambda: under Adam a penalty's pull does not
                # scale with lr, and 1000x lambda was seen to take a trained MLP to chance accuracy.
                lam = min(lam, self.zero_below / lr, self.spec.strength * PENALTY_MAX_GAIN)
            self.lam = min(max(lam, self.spec.strength * 1e-3), self.spec.strength * 1e6)
        self.lam_max = max(self.lam_max, self.lam)

    @torch.no_grad()
    def _settle(self) -> None:
        """At end_epoch: exactly ``round(target * total)`` units (weights) zero and masked or removed by another
        entry, the weakest ones
        (every one already at zero first), no layer past its quota (:func:`layer_cap_for`). Weights already at
        zero stay so, so a proximal run that overshot keeps its extra zeros."""
        scores = self._scores()
        gone = self._gone()
        want = round((self.target or 0.0) * self.total) - sum(gone)
        flat = torch.cat([s.float().reshape(-1) for s in scores])  # in index order, a channels_last weight's too
        order = torch.argsort(flat, stable=True)
        bounds = [0]
        for s in scores:
            bounds.append(bounds[-1] + s.numel())
        owner = torch.bucketize(order, torch.tensor(bounds[1:-1]), right=True)
        # never more than a layer's quota (less what another entry removed from it), never a layer emptied
        left = [quota - out for quota, out in zip(self._quota, gone, strict=True)]
        # a layer frozen during training keeps its weights: only its units already at zero count
        trained = [weight_of(m).requires_grad for m in self._modules]
        left = [n if t else 0 for n, t in zip(left, trained, strict=True)]
        # Units (weights) under `threshold` count as zero, as the controller counted them, and the recipe says they
        # become masked zeros here: past the target too (as a proximal run's extra exact zeros stay), else they
        # were left unmasked, and finalize neither zeroed nor removed them. Never a layer's last one.
        kept = [s.numel() for s in scores]
        below = self.zero_below
        chosen: list[int] = []
        for idx, layer, score in zip(order.tolist(), owner.tolist(), flat[order].tolist(), strict=True):
            counted = score < below and trained[layer] and kept[layer] > 1
            if len(chosen) >= want and score > 0 and not counted:
                break
            if left[layer] <= 0 and score > 0 and not counted:
                continue  # (a unit already at zero stays so)
            left[layer] -= 1
            kept[layer] -= 1
            chosen.append(idx)
        dead_before = self.dead if self.spec.mode == "proximal" else flat.numel() - count_true(flat)
        kill = torch.zeros(flat.numel(), dtype=torch.bool)
        if chosen:
            kill[torch.tensor(chosen)] = True
        for i, (module, s) in enumerate(zip(self._modules, scores, strict=True)):
            part = kill[bounds[i] : bounds[i + 1]].view(s.shape).to(s.device)
            if not bool(part.any()):
                continue
            w = weight_of(module)
            keep = unit_broadcast(~part, module, w).expand_as(w) if self.units else ~part
            set_mask(module, keep)
            for m in self._members[i]:
                set_mask(m, unit_broadcast(~part, m, weight_of(m)).expand_as(weight_of(m)))
        self._zero_batchnorms()
        self.dead = len(chosen)
        self.topped_up = max(len(chosen) - dead_before, 0)
        self.settled = True

    # --- hooks ---------------------------------------------------------------------------------------

    def after_step(self, step: int) -> Changes:
        """While the window is active: in ``mode: proximal`` the proximal step; with a target, lambda adapts
        every ``adapt_every`` steps, and at the window's last step the target is settled (:meth:`_settle`)."""
        self.step = step
        if not self.active(step):
            if self._joint:
                self._zero_batchnorms()  # a dead unit's BatchNorm shift stays zero, as its masked weights do
            if self._bias_held:
                self._hold_biases()
            return UNCHANGED
        if self.spec.mode == "proximal":
            self._proximal(step)
        if self.target is not None:
            if step == self.schedule.end:
                self._mask_first()
                self._settle()
            elif (step - self.schedule.start) % self.adapt_every == 0:
                self._mask_first()
                self._adapt(step)
        if self._joint:
            self._zero_batchnorms()
        if self._bias_held:
            self._hold_biases()
        return UNCHANGED

    def _mask_first(self) -> None:
        """Zero the layers' masked weights: the optimizer step moved them and the Pruner zeroes them only after every
        hook, so a unit's norm (a weight's rank) counted them while its mask keeps them at zero."""
        for module in self._modules:
            if get_mask(module) is not None:
                apply_mask(module)

    def start(self) -> None:
        """Nothing acts before the first step."""
        self.step = 0

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Mask weights (or units) under ``threshold`` (with a target whose end_epoch was reached, that was
        done there); with ``remove_dead``, remove all-zero units and return their removal history
        (``structure_changed`` when any went). Warns and skips the removal when the input shape is unknown."""
        if self.spec.mode == "proximal" and self.proximal_every > 1:
            # The steps after the last proximal step (a run that ended between two, with no end_epoch to close the
            # window on) are owed their shrink: without it they would have trained with less of the penalty.
            self._proximal(self.step, flush=True)
        if self.spec.threshold > 0 and not self.settled:
            with torch.no_grad():
                for i, (name, module) in enumerate(self._own.items()):
                    w = weight_of(module)
                    if not w.requires_grad:
                        # A frozen layer keeps its weights, as the target's counting already has it: a penalty left it
                        # be all run (no gradient reaches it), and the threshold zeroed its small weights at the end.
                        continue
                    if not self.units:
                        keep = (w.abs() >= self.spec.threshold).contiguous()  # (written through a flat view below)
                        if not bool(keep.any()):  # never empty a layer: its largest weight stays
                            keep.view(-1)[int(w.abs().argmax())] = True
                            self.floored.add(name)
                        set_mask(module, keep)
                    else:
                        # Group lasso shrinks whole rows: the threshold applies to each row's norm.
                        norms = self._unit_norms(i, w)
                        alive = norms >= self.spec.threshold
                        if not bool(alive.any()):  # never empty a layer: its strongest unit stays
                            alive[int(norms.argmax())] = True
                            self.floored.add(name)
                        for m in (module, *self._members[i]):
                            set_mask(m, unit_broadcast(alive, m, weight_of(m)).expand_as(weight_of(m)))
                self._zero_batchnorms()
        if self._joint:
            self._zero_batchnorms()
        # (no _hold_biases here: units the threshold masks now keep their bias, which the removal folds where it
        # can, so finalize changes the outputs no more than the threshold does)
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
        # Only this entry's layers lose units, and never a head (it would change the output shape).
        ignore = [n for n in prunable_layers(model) if n not in self.layers]
        try:
            heads = output_layers(model, input_shape)
        except Exception as err:  # noqa: BLE001 - a guessed shape the model does not take
            # "set model.input_shape" told a user who had set it to do what they did: a given shape is to be checked.
            fix = (
                "check model.input_shape (the whole input, batch first) or the input_shape given to the Pruner"
                if self.input_shape
                else "set model.input_shape in the recipe or pass context={'input_shape': [1, ...]} to the Pruner"
            )
            warnings.warn(
                f"{self.where}.remove_dead: skipped, the model does not run on the input shape {input_shape} "
                f"({one_line(err, 120)}); " + (trace_advice(err) or fix),
                stacklevel=2,
            )
            return model, []
        ignore += [h for h in heads if h not in ignore]
        # Nor a layer whose units cannot go (a GLU's pairs, a tie): the removal's self-check would fail on it and
        # keep every other layer's units too.
        blocked = [*self.cannot_remove, *(m for n in self.cannot_remove for m in self._member_names.get(n, []))]
        ignore += [n for n in blocked if n not in ignore]
        # Surgery changes weight shapes; mask buffers would no longer fit, so zero for good first.
        bake(model)
        dead_before = self._dead_units()
        failures: dict[str, str] = {}
        model, history = remove_dead_units(model, input_shape, ignore=ignore, failures=failures)
        self.rebind(model)  # the removal may hand back another model object (a copy when it went layer by layer)
        self.dead_units = {"found": dead_before, "kept": self._dead_units()}
        self._explain_kept(failures)
        return model, history

    def rebind(self, model: nn.Module) -> None:
        """Point every module this entry holds (its layers, the coupled members, the norms in its groups) at
        ``model``'s modules of the same names: after a finalize handed back another model object."""
        modules = dict(model.named_modules())
        names = {id(m): n for n, m in {**self.layers, **self._held}.items()}

        def same(m: nn.Module) -> Any:
            return modules.get(names.get(id(m), ""), m)

        self.layers = {n: modules[n] for n in self.layers if n in modules}
        self._own = {n: modules[n] for n in self._own if n in modules}
        self._modules = list(self._own.values())
        self._names = list(self._own)
        self._members = [
            [self.layers[m] for m in self._member_names.get(n, []) if m in self.layers] for n in self._names
        ]
        self._bn_modules = {n: [(same(bn), at) for bn, at in v] for n, v in self._bn_modules.items()}
        self._stat_modules = {n: [(same(bn), same(p)) for bn, p in v] for n, v in self._stat_modules.items()}
        self._bns = [self._bn_modules.get(n, []) for n in self._names]
        self._stats = [self._stat_modules.get(n, []) for n in self._names]
        self._weights = [weight_of(m) for m in self._modules]
        self._held = {n: modules[n] for n in self._held if n in modules}
        self._covers = {}
        self._bias_held = self._bias_layers()

    def _bias_layers(self) -> list[int]:
        """The groups whose dead units' biases :meth:`_hold_biases` holds at 0: with ``remove_dead``, those of
        layers finalize may remove units from (not a kept head, not a layer in ``cannot_remove``) that have a
        bias in the owner or a coupled member. None when the model was not traced on an input shape: finalize's
        removal needs that trace too, and the heads and ties are not known without it."""
        if not (self.units and self.spec.remove_dead and self._traced):
            return []
        return [
            i
            for i, (name, module) in enumerate(zip(self._names, self._modules, strict=True))
            if name not in self.cannot_remove
            and any(isinstance(getattr(m, "bias", None), torch.Tensor) for m in (module, *self._members[i]))
        ]

    @torch.no_grad()
    def _hold_biases(self) -> None:
        """Set the bias of every dead unit (all its weights masked at zero) to 0, in the owning layer and its coupled
        members, after every optimizer step from the unit's death on, as masks hold its weights.

        The group lasso zeroes a unit's weights, not its bias (``R`` is over weights, as in Wen et al., 2016): the
        unit would still emit ``act(b_u)``, a constant that a zero-padded convolution after it cannot absorb (it
        differs at the borders), so finalize could not remove it and a target counted it as gone. Dropping the
        bias when the unit dies is what removing the unit then does; the rest of training adapts to it, and
        finalize's removal leaves the outputs unchanged. One dict lookup per layer a step while nothing died."""
        for i in self._bias_held:
            cover = self._cover(i)
            if cover is None or not cover.any_dead:
                continue
            for m in (self._modules[i], *self._members[i]):
                bias = getattr(m, "bias", None)
                if isinstance(bias, torch.Tensor) and bias.shape == cover.dead_units.shape:
                    bias.masked_fill_(cover.dead_units.to(bias.device), 0.0)

    def _explain_kept(self, failures: dict[str, str]) -> None:
        """Name in ``cannot_remove`` every layer that still holds zeroed units after the removal, with why:
        what the removal reported, else what keeps such units (a constant that cannot be folded exactly)."""
        for name, why in failures.items():
            owner = self.coupled.get(name, name)
            if owner in self._own:
                self.cannot_remove.setdefault(owner, why)
        for name, module in self._own.items():
            if name in self.cannot_remove:
                continue
            zero = self._zero_units(module)
            if zero == 0:
                continue
            if zero == num_units(module) == 1:
                self.cannot_remove[name] = "every unit was zero: one stays, as a layer needs an output"
                continue
            self.cannot_remove[name] = (
                f"{zero} zeroed unit(s) stayed: the constant each still sends on (its bias, a shift after it) "
                "cannot be folded exactly into what follows (a zero-padded convolution, an operation over the "
                "units)"
            )

    dead_units: dict[str, int] | None = None

    def _dead_units(self) -> int:
        return sum(self._zero_units(m) for m in self._modules)

    def _zero_units(self, module: nn.Module) -> int:
        """How many of ``module``'s output units have all their weights at zero."""
        return int((torch.linalg.vector_norm(self._groups(weight_of(module).detach(), module), dim=1) == 0).sum())

    def _floor_reason(self, name: str) -> str:
        """Why a layer L1 kept from going all-zero (``floored``) is short of what L1 would have made of it."""
        if bool(weight_of(self.layers[name]).detach().any()):
            return "kept one unit alive: L1 would have zeroed the whole layer"
        # Each layer's floor is its own: the weight kept alive may read an earlier layer's unit that went all-zero
        # and was removed at finalize, and goes with it. "kept one unit alive" then stood beside "achieved 1.000".
        return (
            "every weight is zero: L1 zeroed the whole layer, and the weight kept alive read an input removed as "
            "dead; lower strength or threshold, or exclude the layer"
        )

    def report(self) -> dict[str, Any]:
        """Asked vs achieved: ``asked`` is ``target`` (None without one); ``achieved`` the fraction of the
        weights at zero or, with ``group: row | channel``, of the output units at zero or removed
        (``"unit": "weights" | "units"``; with groups ``weights_zero`` gives the fraction of the layers' weights at
        the start that are zero or were removed with their units, as ``achieved`` counts units); per
        layer the same (``asked`` None: lambda is shared). Also ``strength`` (lambda at the start, at the end
        and its largest value), ``topped_up`` (units or weights the target's last step zeroed) and, after a
        dead-unit removal, ``{"dead_units": {"found": n, "kept": k}}``, ``channels`` (``[units at the start,
        now]`` of every layer) and ``tied`` (a layer sharing an earlier one's weight -> that layer); ``batchnorm``
        (layer -> the BatchNorms whose gamma and beta are in its units' groups) and ``coupled`` (a layer whose units
        are another layer's, through a residual add or a depthwise conv -> that layer, whose groups hold both and
        whose count covers both) when there are any; with groups and ``remove_dead``, ``cannot_remove`` (layer -> why
        its zeroed units will stay: a tied or reused weight, a coupling no group spans; ``{}`` when none); with a
        target, ``tolerance``: how far short of it ``achieved`` still counts as met (half a unit or weight, the
        nearest whole count, plus 0.005)."""
        reasons = {n: self._floor_reason(n) for n in self.floored if n in self.layers}
        out = asked_vs_achieved(self.layers, None, reasons=reasons, initial=self.initial)
        out["unit"] = "weights"
        if self.units:
            out["weights_zero"] = out["achieved"]
            out["unit"] = "units"
            dead_all = total_all = 0
            aliases = {**tied_aliases(self.layers), **self.coupled}
            for name, module in self.layers.items():
                norms = torch.linalg.vector_norm(self._groups(weight_of(module).detach(), module), dim=1)
                n = max(int(norms.numel()), self.initial_units.get(name, 0))
                dead = n - int((norms != 0).sum())
                if name not in aliases:  # a tied weight's units count once
                    dead_all, total_all = dead_all + dead, total_all + n
                out["per_layer"][name]["achieved"] = dead / n if n else 0.0
            out["achieved"] = dead_all / total_all if total_all else 0.0
        out["asked"] = self.target
        if self.target is not None:
            # How far short of the target still counts as met: half a unit (weight), as the nearest count the
            # target can be (8 of 33 units for 0.25 is 0.242), plus the report's usual 0.005.
            out["tolerance"] = 0.5 / max(self.total, 1) + _TARGET_SLACK
        if self.target is not None and out["achieved"] + 0.5 / max(self.total, 1) < self.target:
            out["reason"] = (
                "the run stopped before schedule.end_epoch, where the target is settled"
                if not self.settled
                else f"no layer may have more than {self.layer_cap:g} of its {out['unit']} at zero (and every layer "
                "keeps one): that left fewer to zero than asked"
            )
        out["strength"] = {"start": float(self.spec.strength), "end": self.lam, "max": self.lam_max}
        out["topped_up"] = self.topped_up
        if self.target is not None:
            out["layer_cap"] = self.layer_cap
        if self.head_left_out:
            out["head_left_out"] = list(self.head_left_out)
        if self.batchnorm:
            out["batchnorm"] = {n: list(bns) for n, bns in self.batchnorm.items()}
        if self.coupled:
            out["coupled"] = dict(self.coupled)
        if self.units and self.spec.remove_dead:
            out["cannot_remove"] = dict(self.cannot_remove)  # ({} : every zeroed unit can go)
        if self.target_left_out:
            out["target_left_out"] = dict(self.target_left_out)  # (left as they are: see _count_removable_units_only)
        if self.dead_units:
            out["dead_units"] = self.dead_units
            # Units at the start and now, per layer, once remove_dead ran: every layer of the entry, those that
            # lost none too, so the entry's total is over all its layers (a tied weight's once: "tied").
            out["channels"] = {
                n: [self.initial_units.get(n, num_units(m)), num_units(m)] for n, m in self.layers.items()
            }
            aliases = tied_aliases(self.layers)
            if aliases:
                out["tied"] = aliases
        return out

    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        """With a target, the curve's value at the end of each epoch (of units with groups); else empty: how many
        weights L1 zeroes is only known after training."""
        if self.target is None:
            return []
        return [self.curve((e + 1) * steps_per_epoch) for e in range(max(epochs, 0))]

    def state_dict(self) -> dict[str, Any]:
        """The optimizer steps completed, lambda, the layers kept from going all-zero and the target's state."""
        return {
            "step": self.step,
            "floored": sorted(self.floored),
            "lam": self.lam,
            "lam_max": self.lam_max,
            "gain": self.gain,
            "dead": self.dead,
            "topped_up": self.topped_up,
            "settled": self.settled,
            "fused_until": self._fused_until,
            "owed": [t + self._owed_all for t in self._owed],
            "owed_base": list(self._owed_base),
            "marked": None if self._marked is None else [m.cpu().clone() for m in self._marked],
            # Measured on the weights at the start (penalty mode with a target): a resumed run builds its Pruner on a
            # fresh model, before the checkpoint's weights are loaded, so it cannot measure it again.
            "zero_below": self.zero_below,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a state saved before lambda adapted holds only step and floored)."""
        self.step = int(state["step"])
        self.floored = {str(n) for n in state.get("floored", [])}
        self.lam = float(state.get("lam", self.spec.strength))
        self.lam_max = float(state.get("lam_max", self.lam))
        self.gain = float(state.get("gain", 1.0))
        self.dead = int(state.get("dead", 0))
        self.topped_up = int(state.get("topped_up", 0))
        self.settled = bool(state.get("settled", False))
        self._fused_until = int(state.get("fused_until", 0))
        if state.get("zero_below") is not None:  # (absent from a state saved before it was kept)
            self.zero_below = float(state["zero_below"])
        owed = state.get("owed")
        if owed is not None and len(owed) == len(self._owed):
            self._owed, self._owed_all = [float(v) for v in owed], 0.0
        base = state.get("owed_base")
        if base is not None and len(base) == len(self._owed_base):
            self._owed_base = [float(v) for v in base]
        marked = state.get("marked")
        self._marked = None
        if marked is not None and len(marked) == len(self._weights):
            like = self._scores()  # a marked tensor has its layer's score shape (units, or the weight's)
            if all(m.shape == s.shape for m, s in zip(marked, like, strict=True)):
                self._marked = [m.to(s.device) for m, s in zip(marked, like, strict=True)]


_GLOB = re.compile(r"[*?\[]")  # a layers.include entry that is a pattern, not a layer's name


def layer_cap_for(target: float, units: bool) -> float:
    """The largest fraction of one layer's units (``units``) or weights that an l1 ``target`` may zero: halfway
    between the target and 1 (0.75 at 0.5, 0.85 at 0.7), for weights at least 0.99 as magnitude pruning's
    ``max_layer_sparsity`` default; a layer always keeps one unit (weight)."""
    half = (1 + target) / 2
    return half if units else max(0.99, half)


def _distinct(layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """``layers`` with one module per weight tensor (the first of tied ones): lambda applies once per weight,
    as a regularizer on parameters does."""
    aliases = tied_aliases(layers)
    return {n: m for n, m in layers.items() if n not in aliases}


@dataclass
class _Found:
    """What :meth:`_Fused.exact` found, per layer in order: units at zero (``n_dead``), newly so (``new``), the
    largest unit norm left (``tops``), the layers kept from losing every unit (``floored``, indices); ``dead``:
    ``[sum of units]`` bool on the weights' device, layer ``i``'s from ``starts[i]`` for ``counts[i]``."""

    dead: torch.Tensor
    starts: list[int]
    counts: list[int]
    n_dead: list[int]
    new: list[int]
    tops: list[float]
    floored: list[int]

    @property
    def total_dead(self) -> int:
        return sum(self.n_dead)

    def dead_units(self, i: int) -> torch.Tensor:
        """Layer ``i``'s flags, ``[units]``."""
        return self.dead[self.starts[i] : self.starts[i] + self.counts[i]]


class _Fused:
    """The proximal step over all layers at once: :meth:`shrink` between exact steps (no masking or counting) and,
    with groups, :meth:`exact` (masks, counts, floors in a few calls).

    ``group: none``: the soft-threshold written over each weight in place.
    Groups: each unit's norm into one buffer, ``max(0, 1 - t / norm)`` on that buffer, one foreach multiply.
    Built only for float32 weights on one device and no ConvTranspose (whose units are not a view)."""

    def __init__(
        self,
        weights: list[torch.Tensor],
        rows: list[torch.Tensor],
        norms: torch.Tensor,
        scale: torch.Tensor,
        views: list[torch.Tensor],
        counts: list[int],
        units: bool,
    ) -> None:
        self.weights, self.rows, self.norms, self.scale, self.views = weights, rows, norms, scale, views
        self.outs = []
        at = 0
        for n in counts if units else []:
            self.outs.append(norms[at : at + n])
            at += n
        self.counts, self.units = counts, units
        self.starts = np.cumsum([0, *counts[:-1]], dtype=np.int64)  # each layer's first unit in norms and scale
        # numpy views of norms and scale (CPU): the per-unit arithmetic runs there (see _scale)
        self._host = (norms.numpy(), scale.numpy()) if units and norms.device.type == "cpu" else None
        self._t: torch.Tensor | None = None
        self._key: tuple[float, ...] = ()

    @classmethod
    def build(cls, weights: list[torch.Tensor], modules: list[nn.Module], units: bool) -> _Fused | None:
        ws = [w.detach() for w in weights]
        if not ws or any(w.dtype != torch.float32 or w.device != ws[0].device for w in ws):
            return None
        if not units:
            return cls(ws, [], torch.empty(0), torch.empty(0), [], [w.numel() for w in ws], units)
        if any(output_dim(m) for m in modules):
            return None
        rows = [w if w.dim() == 2 else w.flatten(1) for w in ws]
        if any(r.data_ptr() != w.data_ptr() or not r.is_contiguous() for r, w in zip(rows, ws, strict=True)):
            return None  # a rows copy (channels_last weights) would be measured as it was when built
        counts = [r.shape[0] for r in rows]
        norms = torch.empty(sum(counts), dtype=torch.float32, device=ws[0].device)
        scale = torch.empty_like(norms)
        views, at = [], 0
        for w, n in zip(ws, counts, strict=True):
            views.append(scale[at : at + n].view(n, *([1] * (w.dim() - 1))))
            at += n
        return cls(ws, rows, norms, scale, views, counts, units)

    def fits(self, weights: list[torch.Tensor]) -> bool:
        return len(weights) == len(self.weights) and all(
            w.data_ptr() == f.data_ptr() and w.shape == f.shape for w, f in zip(weights, self.weights, strict=True)
        )

    def shrink(self, shrinks: list[float]) -> None:
        if not self.units:
            # softshrink written over its input, then + 0.0, which turns the -0.0 its scalar loop leaves in [-t, 0) into
            # +0.0 and changes nothing else: two passes over each weight in place, the bits of w - clamp(w, -t, t),
            # which took three foreach passes and a copy of every weight at once (tested)
            for w, t in zip(self.weights, shrinks, strict=True):
                torch.ops.aten.softshrink.out(w, t, out=w)
            torch._foreach_add_(self.weights, 0.0)
            return
        self._scale(shrinks)
        torch._foreach_mul_(self.weights, self.views)

    def exact(self, shrinks: list[float], alive: torch.Tensor | None) -> _Found:
        """The exact group step of every layer: units whose scale is 0 are dead, a unit ``alive`` says its mask
        no longer holds (``[sum of units]`` bool, or None) counts as norm 0, and a layer that would lose every
        unit keeps its strongest (unscaled). Scales the weights and returns what it found. The counts and peaks
        are read on the host: on CPU numpy views the tensors (nothing is copied), elsewhere one copy of the
        norms and scales each."""
        self._norms()
        if alive is not None:
            self.norms.mul_(alive)  # a masked unit is dead whatever the optimizer step did to it
        self._scale(shrinks, norms_ready=True)
        host = self._host
        norms_h = host[0] if host else self.norms.cpu().numpy()
        scale_h = host[1] if host else self.scale.cpu().numpy()
        dead_h = scale_h == 0
        starts = self.starts
        n_dead = np.add.reduceat(dead_h, starts, dtype=np.int64)
        was_h = None if alive is None else alive.cpu().numpy()
        new = n_dead.copy() if was_h is None else np.add.reduceat(dead_h & was_h, starts, dtype=np.int64)
        floored = [i for i, (d, n) in enumerate(zip(n_dead.tolist(), self.counts, strict=True)) if d == n]
        for i in floored:
            at = int(starts[i])
            strongest = at + int(np.argmax(norms_h[at : at + self.counts[i]]))
            self.scale[strongest] = 1.0  # (on CPU, scale_h sees it)
            dead_h[strongest] = False
            n_dead[i] -= 1
            new[i] = n_dead[i] if was_h is None else int((dead_h & was_h)[at : at + self.counts[i]].sum())
        tops = np.maximum.reduceat(np.where(dead_h, np.float32(0), norms_h), starts)
        torch._foreach_mul_(self.weights, self.views)
        dead = torch.from_numpy(dead_h).to(self.norms.device)
        return _Found(dead, starts.tolist(), self.counts, n_dead.tolist(), new.tolist(), tops.tolist(), floored)

    def _norms(self) -> None:
        for rows, out in zip(self.rows, self.outs, strict=True):
            torch.linalg.vector_norm(rows, 2, 1, out=out)

    def _scale(self, shrinks: list[float], norms_ready: bool = False) -> None:
        """``scale <- max(0, 1 - t / norm)`` per unit (``t``: the layer's shrink), from :attr:`norms`, measured
        here unless ``norms_ready``: ``1 + (-t) * (1 / max(norm, tiny))`` in float32 (norm 0: scale 0, not nan).
        On CPU in numpy on views of the tensors: the same float32 operations, each correctly rounded, so the
        same bits as torch's (tested), at ~1 us a call where a torch call costs ~5-10 (a few hundred units)."""
        if not norms_ready:
            self._norms()
        factor: float | torch.Tensor = -shrinks[0]
        if any(t != shrinks[0] for t in shrinks):
            key = tuple(shrinks)
            if self._t is None or key != self._key:
                self._t = torch.repeat_interleave(
                    torch.tensor([-t for t in shrinks], dtype=torch.float32), torch.tensor(self.counts)
                ).to(self.scale.device)
                self._key = key
            factor = self._t
        tiny = torch.finfo(torch.float32).tiny
        if self._host:
            norms_h, scale_h = self._host
            np.maximum(norms_h, np.float32(tiny), out=scale_h)
            np.reciprocal(scale_h, out=scale_h)
            by = factor.numpy() if isinstance(factor, torch.Tensor) else np.float32(factor)
            # a dead unit's 1 / tiny times a shrink over ~4 is -inf, clamped to 0 below, as torch does without a word
            with np.errstate(over="ignore"):
                np.multiply(scale_h, by, out=scale_h)
            np.add(scale_h, np.float32(1), out=scale_h)
            np.maximum(scale_h, np.float32(0), out=scale_h)
            return
        scale = self.scale
        torch.clamp_min(self.norms, tiny, out=scale)
        scale.reciprocal_()
        scale.mul_(factor)
        scale.add_(1.0).clamp_min_(0.0)
