"""Per-layer targets chosen from a sensitivity analysis: a recipe's ``sparsity: auto`` / ``ratio: auto``
entries get explicit ``layer_sparsity`` / ``layer_ratio`` values that meet their target.

The measurements are :mod:`sparsekit.sensitivity`'s: :func:`~sparsekit.sensitivity.analyze` prunes each layer
alone, one shot, at a grid of values and records the validation loss and accuracy in a
:class:`~sparsekit.sensitivity.SensitivityTable`. This module reads such a table and allocates.

**Allocation** (:func:`allocate`). An ``auto`` entry gets explicit per-layer values that meet its target
with the least predicted loss increase. The prediction treats layers as independent: the loss increase of
a configuration is the sum of each layer's increase alone, read off its measured curve (linear between grid
points, from 0 at 0; made non-decreasing and replaced by its lower convex hull, so each further unit of
pruning costs at least as much as the previous one). Then:

- ``sparsity: auto, target: t`` (magnitude, gradient): exactly ``round(t * N)`` of the entry's ``N``
  weights are pruned, distributed by marginal cost ("water filling": the cheapest loss increase per
  pruned weight first; optimal for convex curves), no layer past ``max_layer_sparsity`` and every layer
  keeping one weight. Result: ``layer_sparsity`` with values ``k / weights`` so each layer loses exactly
  ``k`` weights and the entry exactly ``round(t * N)``.
- ``ratio: auto, target_macs: m`` (structured): channels are removed greedily, a small block at a time,
  from the group whose next block costs the least predicted loss increase per multiply-accumulate saved,
  until the model's MACs (over its Linear/Conv layers, per sample, counted from torch-pruning's groups:
  a layer's MACs scale with its kept output and input channels) are at most ``m`` of the dense model's,
  counted after the channels every earlier structured entry (fixed or allocated) removes.
  This is NetAdapt's (Yang et al., 2018) and AMC's (He et al., 2018) budgeted per-layer search, with the
  measured sensitivity curves in place of their short fine-tunes / learnt agent. No group loses more than
  the largest ratio analysed (extrapolating the curves is not trusted) or goes below ``min_channels``.
  Every group keeps a multiple of the entry's ``round_to`` channels, as a ``ratio`` entry's groups do
  (:func:`sparsekit.tp_adapter.alignment`: 16 by default, 8 in groups of 16-31 channels, any count in
  narrower ones): exact counts can run slower than dense in onnxruntime (see :func:`latency_align`).
  ``round_to: null`` removes channel by channel, and so does the fallback when whole blocks cannot reach
  ``m``, land more than :data:`MACS_ALIGN_SLACK` under it or above it by more than :data:`MACS_OVER_TOLERANCE`
  (the entry's ``note`` says so).
- ``ratio: auto, target_latency: l``: onnxruntime latency is measured, not predicted: the dense model
  and a uniform sweep (every group at 25%, 50%, 75% of its channels removed) are exported (TorchScript
  exporter) and timed together (:func:`sparsekit.onnx.benchmark`, the recipe's largest benchmark batch
  size and threads). The latency target becomes a MACs target by interpolating the sweep's
  (latency ratio, MACs ratio) pairs (running minimum of the latencies, so timing noise cannot make it
  rise), and the MACs allocation above runs on it, keeping every group at a multiple of
  :func:`latency_align` channels (the sweep too). The result is exported and timed against the dense model;
  a non-uniform model's latency does not follow its MACs exactly, so while it is above the target the MACs
  target is scaled by target / measured and the allocation redone (NetAdapt's measure-and-adjust loop), at
  most :data:`LATENCY_ROUNDS` allocations: at most 4 + 2 x 3 exports and 4 timed runs in all.

Typical use (what ``sparsekit prune`` does before training when the recipe holds ``auto``)::

    recipe, table = auto_allocate(model, recipe, val_loader, input_shape=[1, 1, 28, 28])
    pruner = Pruner(model, recipe, steps_per_epoch=len(train_loader))

``placeholder_recipe(recipe)`` replaces each ``auto`` entry by a uniform stand-in, for dry runs without data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .errors import TargetError
from .fsutil import scratch_folder
from .layers import select_layers, tied_aliases
from .masks import layer_cap, weight_of
from .methods.base import Setup
from .recipe import GradientSpec, MagnitudeSpec, Recipe, RecipeLike, ScheduleSpec, StructuredSpec, as_recipe
from .report import MACS_OVER_TOLERANCE
from .sensitivity import (
    Kind,
    LayerSensitivity,
    Probe,
    SensitivityTable,
    _layer_macs,
    _shape,
    _structured_method,
    _StructuredPlan,
    analyze,
    auto_entries,
    check_arguments,
)
from .tp_adapter import alignment
from .wrappers import checked_input_shape, copy_model, float32_model, require_module, unwrap

__all__ = [
    "LATENCY_ROUNDS",
    "LATENCY_SWEEP",
    "EntryAllocation",
    "allocate",
    "allocate_with_details",
    "auto_allocate",
    "latency_align",
    "placeholder_recipe",
]

LATENCY_SWEEP: tuple[float, ...] = (0.25, 0.5, 0.75)
"""Uniform channel ratios exported and timed to turn ``target_latency`` into a MACs target."""
LATENCY_ROUNDS = 3
"""``target_latency``: allocations timed at most (each one export of the result, timed against dense)."""


def latency_align() -> int:
    """Channel multiple every group keeps under ``target_latency`` (or all its channels; narrower groups any
    count): onnxruntime's CPU convolutions (MLAS NCHWc) work in blocks of 16 channels with AVX-512 and 8
    otherwise, and fall off their fast path on other counts. 16 when this CPU has AVX-512F (Linux
    ``/proc/cpuinfo``), else 8. Measured on an AVX-512 machine, small_cnn (width 32, 8x8 inputs, batch 32),
    latency / dense: channels 29/26/65/78 2.07x, 24/24/48/128 0.81x, 16/32/32/128 0.37x."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return 16 if "avx512f" in line.split() else 8
    except OSError:
        pass
    return 8


_EPS = 1e-6  # tie-breaker: among layers of equal (e.g. zero) predicted cost, prefer spreading evenly
_STRUCTURED_STEPS = 50  # a structured group is allocated in blocks of ~1/50 of its channels (at least one)


@dataclass
class EntryAllocation:
    """How one ``auto`` entry was allocated (JSON-able through :meth:`as_dict`).

    ``values``: layer -> sparsity (magnitude/gradient) or channel ratio (structured) written into the
    recipe; ``predicted_loss_increase``: sum of the layers' interpolated loss increases (nats/sample, the
    additive prediction the allocation minimised); ``uniform_loss_increase``: the same prediction for
    every layer at one value (the target sparsity, or the uniform ratio meeting the same MACs), for
    comparison; ``target``: what the recipe asked (``{"sparsity": t}``, ``{"macs": m}``,
    ``{"latency": l}``); ``reached``: ``{"sparsity"}`` exact, or ``{"macs"}`` measured by pruning a copy
    (fraction of the dense model's), plus ``{"latency"}`` for target_latency (p50 ratio to dense, timed
    once); ``latency_sweep``: for target_latency, ``[{"ratio", "macs", "latency"}]`` as measured (fractions
    of dense); ``macs_target``: the MACs fraction aimed at (target_macs, or what the sweep implied)."""

    index: int
    method: str
    target: dict[str, float]
    values: dict[str, float]
    predicted_loss_increase: float
    uniform_loss_increase: float | None
    reached: dict[str, float]
    latency_sweep: list[dict[str, float]] | None = None
    macs_target: float | None = None
    note: str | None = None
    spec: Any = None  # the allocated recipe entry (not in as_dict: the recipe holds it)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return json.loads(json.dumps({k: v for k, v in self.__dict__.items() if k != "spec"}))


def _envelope(points: Sequence[tuple[float, float]], upto: float | None = None) -> list[tuple[float, float]]:
    """The non-decreasing envelope of ``points`` (``(value, loss increase)``, with (0, 0) included, negatives
    as 0): the running maximum. With ``upto`` beyond the last value, extended along the last segment's slope;
    cut at ``upto`` when it is inside."""
    pts = sorted({(float(v), float(d)) for v, d in [(0.0, 0.0), *points]})
    env: list[tuple[float, float]] = []
    top = 0.0
    for v, d in pts:
        top = max(top, d, 0.0)
        if env and abs(env[-1][0] - v) < 1e-12:
            env[-1] = (v, top)
        else:
            env.append((v, top))
    if upto is not None:
        if upto > env[-1][0] + 1e-12:
            slope = (env[-1][1] - env[-2][1]) / (env[-1][0] - env[-2][0]) if len(env) > 1 else 0.0
            env.append((upto, env[-1][1] + max(slope, 0.0) * (upto - env[-1][0])))
        else:
            cut = _interp(env, upto)
            env = [p for p in env if p[0] < upto - 1e-12] + [(upto, cut)]
    return env


def _convex_cost(points: Sequence[tuple[float, float]], upto: float | None = None) -> list[tuple[float, float]]:
    """The lower convex hull of :func:`_envelope`: the cost curve the allocation minimises, so each further
    unit of pruning costs at least as much as the one before (greedy is then optimal)."""
    env = _envelope(points, upto)
    hull: list[tuple[float, float]] = []
    for p in env:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or above the chord from hull[-2] to p
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _interp(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear interpolation through sorted ``points``, clamped to the end values."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def _raw_increase(row: LayerSensitivity, value: float) -> float:
    """The predicted loss increase of ``row``'s layer alone at ``value``: its measured curve (non-decreasing
    envelope), linear between probes, extended along its last slope past the last probe."""
    pts = _achieved(row)
    last = max((v for v, _ in pts), default=0.0)
    return _interp(_envelope(pts, value if value > last else None), value)


def _achieved(row: LayerSensitivity) -> list[tuple[float, float]]:
    """``(fraction actually pruned, loss increase)`` of each probe: the allocation's curve (a narrow layer
    cannot lose exactly the grid's ratio: 0.4 of 8 channels removes 4)."""
    return [(p.achieved, p.loss_increase) for p in row.points]


def _rows_for(
    table: SensitivityTable, index: int, names: Iterable[str], where: str, kind: Kind
) -> dict[str, LayerSensitivity]:
    """The table's row of each layer (this entry's, else any of the same kind); TargetError when one is missing."""
    rows = {}
    for name in names:
        row = table.layer(name, index)
        if row is None or row.kind != kind:
            row = next((r for r in table.layers if r.name == name and r.kind == kind), None)
        if row is None or not (row.points or row.errors):
            raise TargetError(
                f"{where}: the sensitivity table has no probes for layer {name!r}; analyse this model with this "
                "recipe (sparsekit.sensitivity.analyze) before allocating"
            )
        rows[name] = row
    return rows


def _allocate_unstructured(
    model: nn.Module, spec: MagnitudeSpec | GradientSpec, index: int, table: SensitivityTable
) -> tuple[Any, EntryAllocation]:
    where = f"pruning[{index}]"
    target = float(spec.target or 0.0)
    selected = select_layers(model, spec.layers, f"{where}.layers")
    # A layer sharing an earlier one's weight (tied) is that weight: allocated once, as its first layer, and given
    # the same value (the method ranks and counts it once; two values for one tensor would miss the target).
    tied = tied_aliases(selected)
    layers = {n: m for n, m in selected.items() if n not in tied}
    rows = _rows_for(table, index, layers, where, "unstructured")
    sizes = {n: weight_of(m).numel() for n, m in layers.items()}
    caps = {n: min(layer_cap(sizes[n], spec.layer_cap), sizes[n] - 1) for n in layers}
    total = sum(sizes.values())
    budget = round(target * total)
    if sum(caps.values()) < budget:
        most = sum(caps.values()) / total
        if total - len(layers) < budget:
            # No max_layer_sparsity helps: every layer keeps a weight (an allocated value is below 1), and small
            # layers keep a large share. "raise max_layer_sparsity" was offered even at max_layer_sparsity: 1.
            smallest = min(layers, key=lambda n: sizes[n])
            raise TargetError(
                f"{where}.target: {target:g} of the selected weights cannot be reached: every layer keeps at least "
                f"one of its weights, so at most {sum(caps.values()):,} of {total:,} can go ({most:.4f}; the smallest "
                f"layer, {smallest!r}, has {sizes[smallest]:,}); lower target to {math.floor(most * 1e4) / 1e4:g} "
                "or less, or leave the smallest layers out (layers.exclude)"
            )
        raise TargetError(
            f"{where}.target: {target:g} of the selected weights is more than max_layer_sparsity "
            f"({spec.layer_cap:g}) lets these layers lose ({most:.4f}); lower target or raise max_layer_sparsity"
        )
    # Marginal cost of each small segment of each layer's convexified curve, per weight pruned; the cheapest
    # first (water filling), which is optimal for convex costs. A tiny quadratic term spreads ties evenly.
    segments: list[tuple[float, str, int, int]] = []  # (cost per weight, layer, from count, to count)
    for name, row in rows.items():
        n, cap = sizes[name], caps[name]
        if cap <= 0:
            continue
        hull = _convex_cost(_achieved(row), upto=cap / n)
        cuts = sorted({0, cap, *(min(cap, round(v * n)) for v, _ in hull), *(round(cap * k / 200) for k in range(201))})
        for a, b in zip(cuts, cuts[1:], strict=False):
            if b <= a:
                continue
            # the tie term is n * s^2 * eps: per weight 2 * s * eps whatever the layer's size, so equal costs
            # level the sparsities
            cost = _interp(hull, b / n) - _interp(hull, a / n) + _EPS * n * ((b / n) ** 2 - (a / n) ** 2)
            segments.append((cost / (b - a), name, a, b))
    segments.sort(key=lambda s: (s[0], s[2]))  # within a layer, cheaper segments come first (convex)
    counts = dict.fromkeys(layers, 0)
    left = budget
    for _, name, a, b in segments:
        if left <= 0:
            break
        take = min(b - a, left)
        counts[name] += take
        left -= take
    values = {n: counts[n] / sizes[n] for n in layers}
    values = {n: values[tied.get(n, n)] for n in selected}  # in model order, tied layers with their weight's value
    allocated = spec.model_copy(update={"sparsity": target, "target": None, "scope": "layer", "layer_sparsity": values})
    allocated = type(spec).model_validate(allocated.model_dump())
    predicted = sum(_raw_increase(rows[n], values[n]) for n in layers)
    uniform = sum(_raw_increase(rows[n], target) for n in layers)
    reached = sum(counts.values()) / total
    info = EntryAllocation(index, spec.method, {"sparsity": target}, values, predicted, uniform, {"sparsity": reached})
    # A layer the forward pass never runs (an unused module, a head run in training mode only) costs no loss in the
    # analysis, so it took the most sparsity and counted toward the target while the layers that run kept more.
    idle = [n for n in layers if rows[n].macs == 0 and counts[n] > 0]
    # A layer that runs but does not feed the evaluated output (an auxiliary head beside the part model.output picks,
    # a branch into another dict key) is as free: every probe left the loss and accuracy exactly as dense, and it took
    # max_layer_sparsity (0.99) toward the target without a word while the logits' layers kept more.
    unseen = [n for n in layers if n not in idle and counts[n] > 0 and _never_measured(rows[n])]
    notes = []
    if idle:
        notes.append(
            f"{', '.join(repr(n) for n in idle)} did not run in the model's forward pass (eval mode) in the analysis, "
            f"so losing weights there cost nothing measured: it takes sparsity {max(values[n] for n in idle):.3f} "
            f"toward target {target:g} while the layers that run keep more; exclude it in {where}.layers.exclude"
        )
    if unseen:
        notes.append(
            f"pruning {', '.join(repr(n) for n in unseen)} alone left the validation loss and accuracy exactly as "
            "dense at every probed sparsity: its output does not reach the evaluated logits (another output than "
            f"model.output's part, or unused), so it takes sparsity {max(values[n] for n in unseen):.3f} toward "
            f"target {target:g} unmeasured while the logits' layers keep more; exclude it in {where}.layers.exclude"
        )
    info.note = "; ".join(notes) or None
    return allocated, info


def _never_measured(row: LayerSensitivity | None) -> bool:
    """Whether every probe of ``row`` changed nothing the analysis measures (loss and accuracy exactly as dense):
    a layer feeding the logits changes the loss in some bit by its largest probe (0.98 of its weights gone)."""
    if row is None or not row.points:
        return False
    return all(p.loss_increase == 0.0 and p.accuracy_drop == 0.0 for p in row.points)


def _feasible(units: int, blocks: int, limit: int, align: int, round_to: int | None = None) -> list[int]:
    """Units a group may lose, ascending from 0, up to ``limit``: every count, or with ``align`` > 1 those
    leaving a multiple of ``align`` channels (``units * blocks`` channels in all; a group no wider than
    ``align`` aligns to the largest power-of-two fraction of ``align`` below its width). ``round_to``
    instead: the multiple a ``ratio`` entry's group keeps (:func:`sparsekit.tp_adapter.alignment`: 16-31
    channels to 8 under 16, narrower groups any count)."""
    counts = range(0, max(limit, 0) + 1)
    if round_to is not None:
        step = alignment(units * blocks, round_to)
        return [x for x in counts if x == 0 or ((units - x) * blocks) % step == 0]
    # A group of at most `align` channels could only be kept whole: it aligns to half as many (16 channels
    # at align 16 may keep 8), down to every count for the narrowest.
    while align > 1 and units * blocks <= align:
        align //= 2
    if align <= 1:
        return list(counts)
    return [x for x in counts if x == 0 or ((units - x) * blocks) % align == 0]


def _greedy_channels(
    plan: _StructuredPlan,
    rows: Mapping[str, LayerSensitivity],
    budget_saved: float,
    where: str,
    what: str,
    align: int = 1,
    round_to: int | None = None,
    dense: float | None = None,
    already: float = 0.0,
) -> dict[str, int]:
    """Units removed per root so that at least ``budget_saved`` MACs are saved (``plan.macs``: the layers' MACs
    once earlier entries removed their channels), cheapest predicted loss increase per MAC saved first,
    then single steps given back while the budget still holds (so the MACs land just past the target).
    ``align`` > 1: every group keeps a multiple of ``align`` channels (or all of them). ``dense``: the whole
    model's MACs, which the target is a fraction of (default: those of the layers the entry's groups touch);
    ``already``: the MACs earlier entries saved (for the message)."""
    units, removed = plan.units, dict.fromkeys(plan.blocks, 0)
    allowed: dict[str, list[int]] = {}
    hulls = {}
    for root, row in rows.items():
        top = max((p.achieved for p in row.points), default=0.0)
        limit = max(0, min(units[root] - plan.min_units[root], math.floor(top * units[root] + 1e-9)))
        allowed[root] = _feasible(units[root], plan.blocks[root], limit, align, round_to)
        hulls[root] = _convex_cost(_achieved(row))
    pos = dict.fromkeys(rows, 0)  # index into allowed[root] of removed[root]
    # Steps of ~1/50 of the group (whole aligned blocks when aligning): few rounds, fine enough to stop near
    # the target, where the step is cut to what the budget needs.
    jump = {r: 1 if align > 1 or round_to else max(1, units[r] // _STRUCTURED_STEPS) for r in rows}

    def keep_with(root: str | None = None, count: int = 0) -> dict[str, float]:
        keep = {}
        for r in plan.blocks:
            n = count if r == root else removed[r]
            keep[r] = (units[r] - n) / units[r]
        return keep

    def cost(root: str, n_from: int, n_to: int) -> float:
        a, b = n_from / units[root], n_to / units[root]
        return _interp(hulls[root], b) - _interp(hulls[root], a) + _EPS * (b * b - a * a)

    def enough(root: str, count: int) -> bool:
        return plan.saved(keep_with(root, count)) >= budget_saved - 1e-6

    saved = plan.saved(keep_with())
    while saved < budget_saved - 1e-6:
        best: tuple[float, float, str, int] | None = None
        for root in rows:
            i = min(pos[root] + jump[root], len(allowed[root]) - 1)
            if i <= pos[root]:
                continue
            gain = plan.saved(keep_with(root, allowed[root][i])) - saved
            if gain <= 0:
                continue
            key = (cost(root, removed[root], allowed[root][i]) / gain, -gain)
            if best is None or key < best[:2]:
                best = (key[0], key[1], root, i)
        if best is None:
            # The fraction the target is compared with: of the whole model's MACs (the target's own measure), not
            # of the touched layers' alone, which read below an unreachable target (0.297 for target_macs 0.3).
            total = dense if dense is not None else sum(plan.macs.values())
            saved += already
            reach = 1 - saved / max(total, 1)
            aim = 1 - (budget_saved + already) / max(total, 1)
            if what == "target_macs":  # rounded up, so the value suggested is one that is reached
                asks, remedy = (
                    f"target_macs {aim:g}",
                    f"raise target_macs to {math.ceil(reach * 1000 - 1e-6) / 1000:g} or more",
                )
            else:  # a latency target, turned into a MACs one by the timed sweep
                asks, remedy = f"{what}'s MACs equivalent {aim:.3f}", f"raise {what}"
            raise TargetError(
                f"{where}.{what}: cannot be reached: removing up to the largest analysed ratio of every group's "
                f"channels (within min_channels) saves only {saved:,.0f} MACs per sample, so the model keeps at "
                f"least {reach:.3f} of its MACs (asked: {asks}); {remedy} (or lower min_channels where it "
                "binds), or give a fixed ratio instead of auto: the analysis tries ratios up to its grid's largest "
                "(0.7 unless sparsekit.allocation.auto_allocate(grid=...) is called from Python with others)"
            )
        _, _, root, i = best
        if enough(root, allowed[root][i]):  # the smallest step of this group that reaches the budget
            i = next(k for k in range(pos[root] + 1, i + 1) if enough(root, allowed[root][k]))
        pos[root], removed[root] = i, allowed[root][i]
        saved = plan.saved(keep_with())
    while True:  # give back the step whose return lowers the predicted cost most, while the budget holds
        best_back: tuple[float, str] | None = None
        for root in rows:
            i = pos[root]
            if i == 0 or not enough(root, allowed[root][i - 1]):
                continue
            relief = cost(root, allowed[root][i - 1], removed[root])
            if best_back is None or relief > best_back[0]:
                best_back = (relief, root)
        if best_back is None:
            return removed
        root = best_back[1]
        pos[root] -= 1
        removed[root] = allowed[root][pos[root]]


def _check_prunable(plan: _StructuredPlan, where: str, what: str) -> None:
    """TargetError when no layer the entry selects can lose output channels: no target is reachable then, and
    "raise target_macs" or "give a fixed ratio" (the unreachable target's remedies) would not help."""
    # A root already at its floor (a 1-channel layer, min_channels) loses nothing either: with only such roots the
    # unreachable target's "raise target_macs to 1 or more" was all the error said, and no layer was named.
    floor = {
        n: f"{plan.channels[n]} channel(s), at min_channels {plan.method.spec.min_channels}"
        for n in plan.blocks
        if plan.units[n] <= plan.min_units[n]
    }
    if len(floor) < len(plan.blocks):
        return
    coupled = {n: f"coupled to {o!r}" for n, o in plan.owner.items() if n not in plan.fixed}
    reasons = {**plan.fixed, **floor, **coupled}
    why = "; ".join(f"{n!r}: {r}" for n, r in reasons.items()) or "it selects no layer whose channels can go"
    raise TargetError(
        f"{where}.{what}: no layer this entry selects can lose output channels ({why}), so no ratio reaches it: "
        "select the layers their channels are coupled to as well (take them out of ignore), or use an unstructured "
        "method"
    )


def _measuring(spec: StructuredSpec) -> StructuredSpec:
    """``spec`` as a measurement on a copy removes its channels: all in one event, at once. Taylor ranks by the
    fine-tuning's gradients, and a copy measured before any training has none (the removal refused the recipe,
    telling the user to fine-tune, which it did): which channels go does not change how many (each group's count is
    the allocation's), so l2 ranks them here, as in the sensitivity probes."""
    update: dict[str, Any] = {"schedule": ScheduleSpec(), "steps": 1}
    if spec.importance == "taylor":
        update["importance"] = "l2"
    return spec.model_copy(update=update)


def _measured_macs(model: nn.Module, recipe_specs: Sequence[tuple[int, StructuredSpec]], shape: list[int]) -> float:
    """MACs of a copy of ``model`` after every (index, allocated spec) removal, as a fraction of dense."""
    dense = sum(_layer_macs(model, shape).values()) or 1
    return sum(_macs_after(model, recipe_specs, shape).values()) / dense


def _macs_after(
    model: nn.Module, recipe_specs: Sequence[tuple[int, StructuredSpec]], shape: list[int]
) -> dict[str, int]:
    """Per-layer MACs of a copy of ``model`` after every (index, spec) removal (the dense ones without any)."""
    from .methods.structured import Structured

    if not recipe_specs:
        return _layer_macs(model, shape)
    work = copy_model(model)
    for index, spec in recipe_specs:
        method = Structured(
            _measuring(spec),
            work,
            Setup(index=index, steps_per_epoch=1, input_shape=shape),
            verify=False,  # the plan's own Structured probed the model's wiring
        )
        method.finalize(work)
    return _layer_macs(work, shape)


def _allocate_structured(
    model: nn.Module,
    spec: StructuredSpec,
    index: int,
    table: SensitivityTable,
    shape: list[int],
    macs_target: float,
    done: Sequence[tuple[int, StructuredSpec]],
    what: str,
    align: int = 1,
    round_to: int | None = None,
) -> tuple[StructuredSpec, dict[str, float], float, float | None, float]:
    where = f"pruning[{index}]"
    macs = _layer_macs(model, shape)
    dense = sum(macs.values()) or 1
    plan = _StructuredPlan(model, spec, index, shape, macs)
    _check_prunable(plan, where, what)
    rows = _rows_for(table, index, plan.blocks, where, "structured")
    # The earlier structured entries (fixed ratios as well as allocated ones) remove their channels first: this
    # entry's layers start from the MACs they leave, inputs included. Only the earlier entries' own roots were
    # scaled before, so a layer fed by one (c2 after c1's entry) counted its dense MACs and the model landed
    # far under the target (0.386 for target_macs 0.5); a fixed-ratio entry was not counted at all.
    after = _macs_after(model, done, shape)
    already = dense - sum(after.values())
    plan.macs = {n: after.get(n, 0) for n in plan.macs}
    budget = dense * (1 - macs_target) - already
    removed = _greedy_channels(plan, rows, budget, where, what, align, round_to, dense, already)
    ratios = {r: removed[r] / plan.units[r] for r in plan.blocks}
    # A selected layer no group can prune (coupled to an ignored layer) is asked nothing: without a value of
    # its own it took the entry's ratio, a mean over the other layers the allocation never meant for it, and the
    # report showed it (and the entry) short of that ratio while the target was met.
    held = {n: 0.0 for n in plan.held if n not in ratios}
    channels_total = sum(plan.channels.values()) + sum(int(plan.method.initial[n]) for n in held)
    overall = sum(removed[r] * plan.blocks[r] for r in plan.blocks) / channels_total
    order = {n: i for i, n in enumerate(plan.layers)}  # layer_ratio in model order
    allocated = spec.model_copy(
        update={
            "ratio": max(overall, 1e-6),
            "target_macs": None,
            "target_latency": None,
            "scope": "layer",
            "layer_ratio": dict(sorted({**ratios, **held}.items(), key=lambda kv: order.get(kv[0], len(order)))),
        }
    )
    allocated = StructuredSpec.model_validate(allocated.model_dump())
    predicted = sum(_raw_increase(rows[r], ratios[r]) for r in plan.blocks)
    # Uniform comparison: one ratio for every group meeting the same MACs (bisection on the predictor).
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        keep = {r: 1 - mid for r in plan.blocks}
        lo, hi = (mid, hi) if plan.saved(keep) < budget else (lo, mid)
    uniform = sum(_raw_increase(rows[r], hi) for r in plan.blocks) if hi < 0.999 else None
    reached = _measured_macs(model, [*done, (index, allocated)], shape)
    return allocated, ratios, predicted, uniform, reached


# How far under target_macs whole blocks of round_to channels may land before exact counts are used instead.
MACS_ALIGN_SLACK = 0.05


def _allocate_macs(
    model: nn.Module,
    spec: StructuredSpec,
    index: int,
    table: SensitivityTable,
    shape: list[int],
    done: Sequence[tuple[int, StructuredSpec]],
) -> EntryAllocation:
    """``target_macs``: kept counts aligned as a ``ratio`` entry's are (``round_to``, default 16: exact counts
    can run slower than dense in onnxruntime, see :func:`latency_align`). Channel by channel instead, with a
    ``note`` saying so, when whole blocks cannot reach the target (narrow groups, ``min_channels``), land
    more than :data:`MACS_ALIGN_SLACK` under it (a few narrow groups have only coarse steps) or above it by more
    than the report's tolerance (:data:`MACS_OVER_TOLERANCE`)."""
    aim = float(spec.target_macs or 0.0)
    round_to = spec.round_to if spec.round_to and spec.round_to > 1 else None
    note = None
    try:
        allocated, ratios, predicted, uniform, reached = _allocate_structured(
            model, spec, index, table, shape, aim, done, "target_macs", round_to=round_to
        )
        coarse = (
            None  # already channel by channel: no blocks to fall back from
            if round_to is None
            else f"would reach MACs {reached:.3f}"
            if reached < aim - MACS_ALIGN_SLACK
            else f"would reach MACs {reached:.3f}, above it"  # (units coupled across layers move in larger steps)
            if reached > aim * (1 + MACS_OVER_TOLERANCE)
            else None
        )
    except TargetError:
        if round_to is None:
            raise
        coarse = "cannot reach it"
    if coarse:
        allocated, ratios, predicted, uniform, reached = _allocate_structured(
            model, spec, index, table, shape, aim, done, "target_macs"
        )
        note = (
            f"whole blocks of round_to {round_to} channels {coarse} (target_macs {aim:g}): exact channel counts "
            "are used, which onnxruntime's CPU kernels may run slower than aligned ones"
        )
    if note is None and uniform is not None and predicted > uniform:
        # The greedy choice works in whole blocks and may land under the target; the uniform comparison keeps
        # exact counts at the target. Say why the allocation's prediction is the worse one, rather than let the
        # line that compares them stand unexplained.
        blocks = (
            f"in whole blocks of round_to {round_to} channels it reaches MACs {reached:.3f}, the uniform ratio exact "
            f"counts at {aim:g}; round_to: null allocates exact counts"
            if round_to
            else f"the uniform ratio reaches MACs {aim:g} with exact counts; one ratio may serve this model better"
        )
        digits = 3
        while digits < 8 and f"{predicted:.{digits}f}" == f"{uniform:.{digits}f}":
            digits += 1  # "0.000 is above 0.000" reads as nonsense: show the digits where they differ
        note = (
            f"the allocation's predicted loss increase ({predicted:.{digits}f}) is above one uniform ratio's "
            f"({uniform:.{digits}f}) for target_macs {aim:g}: {blocks}"
        )
    # A group feeding only another output than the logits (an auxiliary branch) costs no measured loss: the target was
    # met by emptying it, MACs the exported logits-only model.onnx does not even compute, without a word.
    rows = [table.layer(n, index) for n, r in ratios.items() if r > 0] if table is not None else []  # (None: a stub)
    unseen = [row.name for row in rows if row is not None and _never_measured(row)]
    if unseen:
        free = (
            f"pruning {', '.join(repr(n) for n in unseen)} alone left the validation loss and accuracy exactly as "
            "dense at every probed ratio: its output does not reach the evaluated logits (another output than "
            f"model.output's part, or unused), so its channels go toward target_macs {aim:g} unmeasured while the "
            f"logits' layers keep more; exclude it in pruning[{index}].layers.exclude"
        )
        note = free if note is None else f"{note}; {free}"
    info = EntryAllocation(
        index, "structured", {"macs": aim}, ratios, predicted, uniform, {"macs": reached}, None, aim, note
    )
    info.spec = allocated
    return info


def _latency_to_macs(
    model: nn.Module, spec: StructuredSpec, index: int, recipe: Recipe, shape: list[int], target: float
) -> tuple[float, list[dict[str, float]]]:
    """Export the dense model and a uniform sweep (:data:`LATENCY_SWEEP`), time them together in onnxruntime
    and interpolate the MACs fraction at which the latency ratio reaches ``target``."""
    from .onnx import benchmark, export_onnx

    model = float32_model(model)  # the exported files are float32, whatever dtype the model trains in
    where = f"pruning[{index}].target_latency"
    macs = _layer_macs(model, shape)
    dense = sum(macs.values()) or 1
    plan = _StructuredPlan(model, spec, index, shape, macs)
    _check_prunable(plan, f"pruning[{index}]", "target_latency")
    batch = max(recipe.benchmark.batch_sizes)
    sweep: list[dict[str, float]] = [{"ratio": 0.0, "macs": 1.0}]
    with scratch_folder("sparsekit-latency-") as tmp:
        files = [Path(tmp) / "dense.onnx"]
        export_onnx(model, files[0], shape, opset=17, exporter="torchscript", check_parity=False)
        for u in LATENCY_SWEEP:
            ratios = {}
            for r in plan.blocks:
                options = _feasible(plan.units[r], plan.blocks[r], plan.units[r] - plan.min_units[r], latency_align())
                ratios[r] = min(options, key=lambda x: (abs(x - u * plan.units[r]), x)) / plan.units[r]
            work = copy_model(model)
            method = _structured_method(
                work, spec, index, shape, verify=False, ratio=u, layer_ratio=ratios, scope="layer", steps=1,
                schedule=ScheduleSpec(),
            )  # fmt: skip
            method.finalize(work)
            path = Path(tmp) / f"uniform-{u:g}.onnx"
            export_onnx(work, path, shape, opset=17, exporter="torchscript", check_parity=False)
            files.append(path)
            sweep.append({"ratio": u, "macs": sum(_layer_macs(work, shape).values()) / dense})
        result = benchmark(files, [batch], threads=recipe.benchmark.threads, warmup=5, runs=60)
    sweep[0]["latency"] = 1.0
    for i, f in enumerate(result["files"][1:], 1):
        sweep[i]["latency"] = float(f["ratio_to_first"][str(batch)]["p50"])
    # Latency should fall with the ratio; noise may make it wobble: use the running minimum.
    pairs: list[tuple[float, float]] = []
    low = math.inf
    for s in sweep:
        low = min(low, s["latency"])
        pairs.append((low, s["macs"]))
    if target < pairs[-1][0] - 1e-9:
        raise TargetError(
            f"{where}: {target:g} is below what removing {LATENCY_SWEEP[-1]:.0%} of every group's channels reached "
            f"({pairs[-1][0]:.3f} of the dense latency at batch {batch}, MACs {pairs[-1][1]:.3f}): onnxruntime has "
            "fixed costs that channel removal does not cut; raise target_latency, or use target_macs"
        )
    for (l0, m0), (l1, m1) in zip(pairs, pairs[1:], strict=False):
        if l1 <= target <= l0:
            macs_target = m1 if l0 - l1 < 1e-12 else m0 + (m1 - m0) * (l0 - target) / (l0 - l1)
            return float(min(max(macs_target, 1e-3), 0.999)), sweep
    return float(pairs[-1][1]), sweep


def _measured_latency(
    model: nn.Module, allocated: Sequence[tuple[int, StructuredSpec]], recipe: Recipe, shape: list[int]
) -> float:
    """onnxruntime p50 latency of ``model`` after the allocated removals over the dense model's, timed together
    (one more export of each)."""
    from .methods.structured import Structured
    from .onnx import benchmark, export_onnx

    batch = max(recipe.benchmark.batch_sizes)
    model = float32_model(model)  # the exported files are float32, whatever dtype the model trains in
    work = copy_model(model)
    for index, spec in allocated:
        method = Structured(
            _measuring(spec),
            work,
            Setup(index=index, steps_per_epoch=1, input_shape=shape),
            verify=False,  # the plan's own Structured probed the model's wiring
        )
        method.finalize(work)
    with scratch_folder("sparsekit-latency-") as tmp:
        files = [Path(tmp) / "dense.onnx", Path(tmp) / "allocated.onnx"]
        export_onnx(model, files[0], shape, opset=17, exporter="torchscript", check_parity=False)
        export_onnx(work, files[1], shape, opset=17, exporter="torchscript", check_parity=False)
        result = benchmark(files, [batch], threads=recipe.benchmark.threads, warmup=5, runs=60)
    return float(result["files"][1]["ratio_to_first"][str(batch)]["p50"])


def _allocate_latency(
    model: nn.Module,
    spec: StructuredSpec,
    index: int,
    table: SensitivityTable,
    recipe: Recipe,
    shape: list[int],
    done: Sequence[tuple[int, StructuredSpec]],
) -> EntryAllocation:
    """``target_latency``: the sweep's MACs target, allocated (aligned channels), then timed; while the
    measured latency is above the target (by more than 0.02), the MACs target is scaled by target / measured
    and allocated and timed again, at most :data:`LATENCY_ROUNDS` times in all (latency of a non-uniform
    model does not follow MACs exactly: a wide first layer costs more time than its MACs say). The last
    allocation is kept; ``note`` says when it stays above the target."""
    target = float(spec.target_latency or 0.0)
    macs_target, sweep = _latency_to_macs(model, spec, index, recipe, shape, target)
    info: EntryAllocation | None = None
    aim = macs_target
    rounds = 0
    for _ in range(LATENCY_ROUNDS):
        try:
            allocated, ratios, predicted, uniform, reached = _allocate_structured(
                model, spec, index, table, shape, aim, done, "target_latency", latency_align()
            )
        except TargetError:
            if info is None:
                raise
            break  # a smaller MACs target cannot be met: keep the last allocation
        latency = _measured_latency(model, [*done, (index, allocated)], recipe, shape)
        rounds += 1
        # (no uniform comparison: the allocation is channel-aligned, a uniform ratio is not)
        info = EntryAllocation(
            index, "structured", {"latency": target}, ratios, predicted, None,
            {"macs": reached, "latency": latency}, sweep, aim,
        )  # fmt: skip
        info.spec = allocated
        if latency <= target + 0.02:
            return info
        aim = aim * target / latency
    assert info is not None
    info.note = (
        f"measured latency {info.reached['latency']:.3f} of dense is above target_latency {target:g} after "
        f"{rounds} timed allocation(s) (a lower MACs target could not be met, or timings on a busy machine are "
        "noisy; onnxruntime has fixed costs channel removal does not cut)"
    )
    return info


def allocate_with_details(
    model: nn.Module, recipe: Recipe, table: SensitivityTable, *, input_shape: Sequence[int]
) -> tuple[Recipe, list[EntryAllocation]]:
    """:func:`allocate`, also returning how each ``auto`` entry was allocated (:class:`EntryAllocation`,
    in recipe order). TypeError for a ``model`` that is not an ``nn.Module`` or a ``table`` that is not a
    :class:`SensitivityTable`; ValueError for an ``input_shape`` that is not batch-first positive integers."""
    # Each failed deep inside: a None table as "'NoneType' object has no attribute 'layer'", a shape of 8 as
    # "'int' object is not iterable" and [1, 8.5] was cut to [1, 8].
    require_module(model, "allocate")
    if not isinstance(table, SensitivityTable):
        raise TypeError(
            f"allocate(table=...): expected the SensitivityTable sparsekit.sensitivity.analyze returns (or "
            f"SensitivityTable.load(path) reads), got {type(table).__name__}"
        )
    shape = checked_input_shape(input_shape, "allocate(input_shape=...)")
    model = unwrap(model)
    entries = list(recipe.pruning)
    details: list[EntryAllocation] = []
    done: list[tuple[int, StructuredSpec]] = []
    modes = [(m, m.training) for m in model.modules()]  # each module's own (a frozen BatchNorm stays frozen)
    model.eval()
    wanted = set(auto_entries(recipe))
    try:
        for index, spec in enumerate(entries):
            if index not in wanted:
                if isinstance(spec, StructuredSpec):  # its channels go before any later auto entry's
                    done.append((index, spec))
                continue
            if isinstance(spec, MagnitudeSpec | GradientSpec):
                entries[index], info = _allocate_unstructured(model, spec, index, table)
                details.append(info)
                continue
            assert isinstance(spec, StructuredSpec)
            if spec.target_latency is not None:
                info = _allocate_latency(model, spec, index, table, recipe, shape, done)
            else:
                info = _allocate_macs(model, spec, index, table, shape, done)
            assert info.spec is not None
            entries[index] = info.spec
            done.append((index, info.spec))
            details.append(info)
    except TargetError as err:
        # An unreachable target is the recipe's field: name the file (or the override) holding it, as every
        # other recipe error does; the message named the field alone.
        where = recipe.blame(err.raw_message) if err.raw_message.startswith("pruning[") else None
        if where is None:
            raise
        raise TargetError(f"{where}: {err.raw_message}") from None
    finally:
        for module, training in modes:
            module.training = training
    new = Recipe.model_validate({**recipe.model_dump(), "pruning": [e.model_dump() for e in entries]})
    return recipe.keep_origin(new), details


def allocate(model: nn.Module, recipe: RecipeLike, table: SensitivityTable, *, input_shape: Sequence[int]) -> Recipe:
    """A copy of ``recipe`` whose ``auto`` entries carry explicit per-layer values chosen from ``table`` (the
    algorithms are in the module doc); other entries are unchanged, and a recipe without ``auto`` comes back
    equal. ``model`` (not changed) must be the one ``table`` was measured on; ``input_shape`` batch first.

    - ``sparsity: auto, target: t`` becomes ``sparsity: t, scope: layer, layer_sparsity: {layer: k / n}``
      with ``sum(k) == round(t * N)`` over the entry's ``N`` weights;
    - ``ratio: auto, target_macs: m`` / ``target_latency: l`` becomes ``ratio: <channel-weighted mean>,
      scope: layer, layer_ratio: {root: removed / units}`` for every group the entry ranks (0.0: kept whole),
      and 0.0 for each selected layer no group can prune (coupled to an ignored layer).

    Raises TypeError / ValueError for arguments of the wrong type or form (see :func:`allocate_with_details`),
    TargetError when the table lacks a layer the entry selects, or a target cannot be met (the caps,
    ``min_channels``, the largest analysed ratio, or onnxruntime's fixed costs for ``target_latency``).
    """
    return allocate_with_details(model, as_recipe(recipe), table, input_shape=input_shape)[0]


def auto_allocate(
    model: nn.Module,
    recipe: RecipeLike,
    val_loader: Iterable,
    *,
    input_shape: Sequence[int] | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
    max_batches: int | None = None,
    progress: Callable[[Probe], None] | None = None,
    resume_from: SensitivityTable | None = None,
) -> tuple[Recipe, SensitivityTable | None]:
    """:func:`analyze` the ``auto`` entries of ``recipe`` only, then :func:`allocate`; returns the allocated
    recipe and the table. A recipe without ``auto`` entries is returned as it is, with None, and nothing is
    evaluated. Arguments and errors as for those two functions."""
    check_arguments("auto_allocate", model, val_loader, max_batches, progress, resume_from)
    recipe = as_recipe(recipe)
    wanted = auto_entries(recipe)
    if not wanted:
        return recipe, None
    model = unwrap(model)
    shape = _shape(model, recipe, val_loader, input_shape)
    table = analyze(
        model,
        recipe,
        val_loader,
        grid=grid,
        max_batches=max_batches,
        progress=progress,
        resume_from=resume_from,
        input_shape=shape,
        entries=wanted,
    )
    return allocate(model, recipe, table, input_shape=shape), table


def placeholder_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` with each ``auto`` entry replaced by a uniform stand-in, for dry runs that have no data
    (``sparsekit validate``): ``sparsity: auto, target: t`` -> ``sparsity: t`` (``scope: layer``);
    ``ratio: auto`` -> ``ratio: 1 - sqrt(m)`` for ``target_macs: m`` (a layer between two pruned ones keeps
    ``(1 - r)^2`` of its MACs), likewise for ``target_latency``. Layer selection, tracing and every structural
    check then run as for the real allocation; the per-layer values will differ."""
    entries = []
    for spec in recipe.pruning:
        if isinstance(spec, MagnitudeSpec | GradientSpec) and spec.auto:
            spec = spec.model_copy(update={"sparsity": spec.final_sparsity, "target": None, "scope": "layer"})
        elif isinstance(spec, StructuredSpec) and spec.auto:
            aim = float(spec.target_macs if spec.target_macs is not None else spec.target_latency or 0.5)
            ratio = min(max(1 - math.sqrt(aim), 0.01), 0.9)
            spec = spec.model_copy(update={"ratio": round(ratio, 4), "target_macs": None, "target_latency": None})
        entries.append(spec.model_dump())
    new = Recipe.model_validate({**recipe.model_dump(), "pruning": entries})
    return recipe.keep_origin(new)
