"""Per-layer sensitivity analysis, and per-layer targets chosen from it (``sparsity: auto``, ``ratio: auto``).

**Analysis** (:func:`analyze`). For every layer a recipe entry selects, the model is pruned at that layer
*alone*, one shot and without fine-tuning, at each value of a grid, and evaluated on validation data:

- ``magnitude`` / ``gradient`` entries (unstructured): the layer's smallest ``|w|`` are zeroed to each
  sparsity of :data:`GRID_UNSTRUCTURED` (``round(s * weights)`` of them, ranked within the layer) and the
  weights restored afterwards;
- ``structured`` entries: each group torch-pruning roots at a selected layer loses each ratio of
  :data:`GRID_STRUCTURED` of its output channels (with the entry's importance; ``taylor``, which needs
  gradients, is replaced by ``l2`` here), on a deep copy of the model. Layers the entry never prunes (the
  head or ``ignore``, layers whose channels go with another layer's group) are listed in
  ``left_out`` with the reason.

The result is a :class:`SensitivityTable`: dense accuracy/loss, and per layer its weights, MACs share and
``(value, accuracy, loss)`` points with their drop from dense. This is the per-layer sensitivity analysis
of Han et al. (2015, "Learning both Weights and Connections", Fig. 6) and Li et al. (2017, "Pruning
Filters for Efficient ConvNets", Sec. 3.3), as Distiller's ``sensitivity_analysis`` runs it. The model
passed in is never changed.

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
  a layer's MACs scale with its kept output and input channels) are at most ``m`` of the dense model's.
  This is NetAdapt's (Yang et al., 2018) and AMC's (He et al., 2018) budgeted per-layer search, with the
  measured sensitivity curves in place of their short fine-tunes / learnt agent. No group loses more than
  the largest ratio analysed (extrapolating the curves is not trusted) or goes below ``min_channels``.
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

``write_outputs(table, out_dir)`` writes ``sensitivity.json`` (the table), ``sensitivity.png`` and
``sensitivity.md``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .errors import SparsekitError, TargetError, one_line
from .fsutil import atomic_path, write_text
from .layers import num_units, prunable_layers, select_layers, unselected_layers
from .masks import global_topk_masks, layer_cap, weight_of
from .methods.base import Setup
from .recipe import GradientSpec, MagnitudeSpec, Recipe, ScheduleSpec, StructuredSpec
from .stats import layer_macs
from .train import evaluate

__all__ = [
    "GRID_STRUCTURED",
    "GRID_UNSTRUCTURED",
    "LATENCY_ROUNDS",
    "LATENCY_SWEEP",
    "EntryAllocation",
    "LayerSensitivity",
    "LeftOut",
    "Point",
    "Probe",
    "SensitivityTable",
    "allocate",
    "allocate_with_details",
    "analyze",
    "auto_allocate",
    "auto_entries",
    "latency_align",
    "placeholder_recipe",
    "write_outputs",
]

GRID_UNSTRUCTURED: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
"""Default sparsities probed for magnitude / gradient layers (fraction of the layer's weights zeroed)."""
GRID_STRUCTURED: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Default channel ratios probed for structured layers (fraction of the group's output channels removed)."""
LATENCY_SWEEP: tuple[float, ...] = (0.25, 0.5, 0.75)
"""Uniform channel ratios exported and timed to turn ``target_latency`` into a MACs target."""
FORMAT = "sparsekit-sensitivity/1"
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

Kind = Literal["unstructured", "structured"]


# ----------------------------------------------------------------------------- the table


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Point(_Data):
    """One probe: the layer pruned alone to ``value`` (sparsity, or channel ratio for structured), then
    evaluated. ``accuracy`` is top-1 (0..1), ``loss`` mean cross-entropy (nats per sample); the drops are
    from the dense model (``accuracy_drop = dense - accuracy``, ``loss_increase = loss - dense``).
    ``achieved``: the fraction actually pruned (weights, or the group root's channels)."""

    value: float
    accuracy: float
    loss: float
    accuracy_drop: float
    loss_increase: float
    achieved: float


class LayerSensitivity(_Data):
    """The probes of one layer of one recipe entry.

    ``entry``: index in ``recipe.pruning``; ``kind``: ``unstructured`` (magnitude/gradient) or
    ``structured``; ``type``: module class (``Linear``, ``Conv2d``...); ``params``: its weight count;
    ``macs``: dense multiply-accumulates per sample of the layer (structured: of every layer whose shape
    the group changes) and ``macs_share`` their fraction of the model's; structured only: ``channels``
    (output channels), ``blocks`` (channels per removal unit: a grouped conv's ``groups``, else 1) and
    ``coupled`` (other layers whose output channels go with this one's, e.g. through a residual add).
    ``error``: a grid value that could not be probed and why (e.g. it would empty the layer)."""

    name: str
    entry: int
    method: str
    kind: Kind
    type: str
    params: int
    macs: int
    macs_share: float
    channels: int | None = None
    blocks: int = 1
    coupled: list[str] = Field(default_factory=list)
    points: list[Point] = Field(default_factory=list)
    errors: dict[str, str] = Field(default_factory=dict)

    def point(self, value: float) -> Point | None:
        """The probe at ``value`` (within 1e-9), or None."""
        return next((p for p in self.points if abs(p.value - value) < 1e-9), None)

    def curve(self) -> list[tuple[float, float]]:
        """``[(value, loss_increase)]`` sorted by value, starting at ``(0.0, 0.0)``."""
        return [(0.0, 0.0), *sorted((p.value, p.loss_increase) for p in self.points)]

    def score(self) -> float:
        """Sensitivity score: the mean loss increase (nats per sample) over the probed range ``[0, largest
        value probed]``, by the trapezoid rule from ``(0, 0)``, increases below 0 (pruning that happened
        to help) counted as 0. Area under the loss-increase curve divided by its width, so layers probed
        on the same grid compare directly. 0.0 without probes."""
        pts = [(v, max(d, 0.0)) for v, d in self.curve()]
        width = pts[-1][0]
        if width <= 0:
            return 0.0
        area = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:], strict=False))
        return area / width


class LeftOut(_Data):
    """A layer of the model an entry does not analyse, and why (``entry`` None: no entry selects it)."""

    name: str
    type: str
    entry: int | None
    reason: str


class SensitivityTable(_Data):
    """What :func:`analyze` measured (JSON round-trip: :meth:`to_json` / :meth:`from_json`).

    ``dense_accuracy`` (0..1) and ``dense_loss`` (nats per sample) on ``val_samples`` validation samples
    (the first ``max_batches`` batches when set); ``fingerprint`` identifies the model's weights (sha256 of
    its state_dict) so a resumed analysis cannot mix models; ``input_shape`` batch first; ``grid``: the
    values probed per kind; ``model_macs``: dense MACs per sample over all Linear/Conv layers; ``layers``
    in recipe and model order; ``left_out``: layers not analysed, with the reason."""

    format: Literal["sparsekit-sensitivity/1"] = "sparsekit-sensitivity/1"
    dense_accuracy: float
    dense_loss: float
    val_samples: int
    max_batches: int | None = None
    fingerprint: str
    input_shape: list[int]
    model_macs: int
    grid: dict[str, list[float]]
    layers: list[LayerSensitivity] = Field(default_factory=list)
    left_out: list[LeftOut] = Field(default_factory=list)

    def layer(self, name: str, entry: int | None = None) -> LayerSensitivity | None:
        """The row of layer ``name`` (of entry ``entry`` when given), or None."""
        return next((r for r in self.layers if r.name == name and (entry is None or r.entry == entry)), None)

    def probes_total(self) -> int:
        """Probes the table's grid asks for, over all its layers."""
        return sum(len(self.grid[r.kind]) for r in self.layers)

    def probes_done(self) -> int:
        """Probes measured (or found impossible) so far."""
        return sum(
            sum(1 for v in self.grid[r.kind] if r.point(v) is not None or _key(v) in r.errors) for r in self.layers
        )

    def complete(self) -> bool:
        """Whether every probe of the grid was measured (or found impossible)."""
        return self.probes_done() == self.probes_total()

    def ranking(self) -> list[LayerSensitivity]:
        """Layers from most to least sensitive by :meth:`LayerSensitivity.score` (mean loss increase over
        the probed range); ties keep table order."""
        order = {id(r): i for i, r in enumerate(self.layers)}
        return sorted(self.layers, key=lambda r: (-r.score(), order[id(r)]))

    def to_json(self) -> str:
        """The table as a JSON document (:meth:`from_json` reads it back)."""
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> SensitivityTable:
        """Read :meth:`to_json`'s output; SparsekitError (naming the problem) for anything else."""
        try:
            return cls.model_validate_json(text)
        except ValueError as err:
            raise SparsekitError(f"sensitivity table: not a {FORMAT} JSON document ({one_line(err, 200)})") from None

    @classmethod
    def load(cls, path: str | Path) -> SensitivityTable:
        """:meth:`from_json` of the file ``path`` (SparsekitError naming it when unreadable or invalid)."""
        try:
            text = Path(path).read_bytes()
        except OSError as err:
            raise SparsekitError(f"{path}: cannot read the sensitivity table ({one_line(err)})") from None
        try:
            return cls.from_json(text)
        except SparsekitError as err:
            raise SparsekitError(f"{path}: {err}") from None

    def to_markdown(self) -> str:
        """A report: dense metrics, the ranking with scores, then per kind a table of accuracy drop
        (percentage points) and loss increase (nats per sample) at each grid value, and the left-out layers."""
        lines = [
            "# Sensitivity analysis",
            "",
            f"Each layer pruned alone, one shot, no fine-tuning; {self.val_samples:,} validation samples. "
            f"Dense accuracy {self.dense_accuracy:.4f}, loss {self.dense_loss:.4f} nats/sample.",
            "",
            "## Ranking (most sensitive first)",
            "",
            "Score: mean validation-loss increase (nats/sample) over the probed range (area under the curve "
            "divided by its width, from 0 at 0).",
            "",
            "| # | layer | entry | kind | weights | MACs share | score |",
            "|---:|---|---:|---|---:|---:|---:|",
        ]
        for i, r in enumerate(self.ranking(), 1):
            lines.append(
                f"| {i} | {r.name} | {r.entry} ({r.method}) | {r.kind} | {r.params:,} | {r.macs_share:.3f} | "
                f"{r.score():.4f} |"
            )
        for kind, what in (("unstructured", "sparsity"), ("structured", "channel ratio")):
            rows = [r for r in self.layers if r.kind == kind]
            if not rows:
                continue
            grid = self.grid[kind]
            lines += [
                "",
                f"## {kind.capitalize()}: accuracy drop (points) / loss increase (nats) by {what}",
                "",
                "| layer | " + " | ".join(f"{v:g}" for v in grid) + " |",
                "|---|" + "---:|" * len(grid),
            ]
            for r in rows:
                cells = []
                for v in grid:
                    p = r.point(v)
                    cells.append(
                        f"{100 * p.accuracy_drop:+.1f} / {p.loss_increase:+.3f}"
                        if p
                        else ("n/a" if _key(v) in r.errors else "–")
                    )
                lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
        if self.left_out:
            lines += ["", "## Not analysed", ""]
            lines += [
                f"- {r.name} ({r.type}){'' if r.entry is None else f', pruning[{r.entry}]'}: {r.reason}"
                for r in self.left_out
            ]
        return "\n".join(lines) + "\n"

    def write_plot(self, path: str | Path) -> Path:
        """A PNG (written atomically): for each kind analysed, the loss increase (nats/sample) and the
        accuracy drop (percentage points) against the value probed, one curve per layer. Uses matplotlib's
        Agg renderer only (no display, no change to pyplot's backend). Returns the path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        kinds = [k for k in ("unstructured", "structured") if any(r.kind == k for r in self.layers)] or ["unstructured"]
        fig = Figure(figsize=(5.5 * len(kinds), 7.5))
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, len(kinds), squeeze=False)
        for col, kind in enumerate(kinds):
            rows = [r for r in self.layers if r.kind == kind]
            xlabel = (
                "sparsity of the layer (fraction of weights zeroed)"
                if kind == "unstructured"
                else ("channel ratio (fraction of output channels removed)")
            )
            top, bottom = axes[0][col], axes[1][col]
            for r in rows:
                pts = sorted(r.points, key=lambda p: p.value)
                xs = [0.0, *(p.value for p in pts)]
                top.plot(xs, [0.0, *(p.loss_increase for p in pts)], "o-", ms=3, label=r.name)
                bottom.plot(xs, [0.0, *(100 * p.accuracy_drop for p in pts)], "o-", ms=3, label=r.name)
            top.set_title(f"{kind}: each layer pruned alone")
            top.set_ylabel("validation loss increase (nats/sample)")
            bottom.set_ylabel("validation accuracy drop (percentage points)")
            for ax in (top, bottom):
                ax.set_xlabel(xlabel)
                ax.axhline(0, color="gray", lw=0.6)
                ax.grid(alpha=0.3)
            if rows:
                top.legend(fontsize=7, loc="upper left", ncol=1 + len(rows) // 12)
        fig.suptitle(f"Sensitivity (dense accuracy {self.dense_accuracy:.3f}, loss {self.dense_loss:.3f})")
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": "sparsekit sensitivity"})
        return path


def write_outputs(table: SensitivityTable, out_dir: str | Path) -> dict[str, Path]:
    """Write ``sensitivity.json`` (:meth:`SensitivityTable.to_json`), ``sensitivity.png``
    (:meth:`~SensitivityTable.write_plot`) and ``sensitivity.md`` (:meth:`~SensitivityTable.to_markdown`) into
    ``out_dir`` (created when missing), each atomically. Returns ``{"json", "plot", "markdown"}`` -> path.
    Raises :class:`~sparsekit.errors.OutputError` naming the file when the disk is full or not writable."""
    out = Path(out_dir)
    paths = {"json": out / "sensitivity.json", "plot": out / "sensitivity.png", "markdown": out / "sensitivity.md"}
    write_text(paths["json"], table.to_json())
    table.write_plot(paths["plot"])
    write_text(paths["markdown"], table.to_markdown())
    return paths


def _key(value: float) -> str:
    return f"{value:g}"


# ----------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Probe:
    """What the ``progress`` callback of :func:`analyze` receives after each probe: ``done`` of ``total``
    probes (skipped ones, already in ``resume_from``, count as done), the layer and value just probed, the
    measured :class:`Point` (None when the value could not be probed) and the table so far (save it to
    resume after an interruption: ``write_text(path, probe.table.to_json())``)."""

    done: int
    total: int
    layer: str
    entry: int
    value: float
    point: Point | None
    table: SensitivityTable


_ANALYSED = ("magnitude", "gradient", "structured")


def auto_entries(recipe: Recipe) -> list[int]:
    """Indices of ``recipe.pruning`` entries still holding ``auto`` (``sparsity: auto`` / ``ratio: auto``)."""
    return [i for i, spec in enumerate(recipe.pruning) if bool(getattr(spec, "auto", False))]


def _grid(grid: Mapping[str, Sequence[float]] | None) -> dict[str, list[float]]:
    out = {"unstructured": list(GRID_UNSTRUCTURED), "structured": list(GRID_STRUCTURED)}
    for kind, values in (grid or {}).items():
        if kind not in out:
            raise ValueError(f"grid: unknown kind {kind!r}; use 'unstructured' and/or 'structured'")
        vals = sorted({float(v) for v in values})
        if not vals or any(not (0 < v < 1) or not math.isfinite(v) for v in vals):
            raise ValueError(f"grid[{kind!r}]: give values strictly between 0 and 1, got {list(values)}")
        out[kind] = vals
    return out


def fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state_dict (names, shapes, dtypes and values), hex: identifies its weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        data = t.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        h.update(data.numpy().tobytes())
    return h.hexdigest()


def _samples(loader: Iterable, max_batches: int | None) -> int:
    n = 0
    for i, (_, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        n += len(y)
    return n


def _shape(model: nn.Module, recipe: Recipe, loader: Iterable, input_shape: Sequence[int] | None) -> list[int]:
    if input_shape:
        return [int(d) for d in input_shape]
    if recipe.model.input_shape:
        return list(recipe.model.input_shape)
    for x, _ in loader:
        return [1, *(int(d) for d in x.shape[1:])]
    raise TargetError("sensitivity: cannot tell the input shape; set model.input_shape in the recipe")


def _structured_method(model: nn.Module, spec: StructuredSpec, index: int, shape: list[int], **update: Any) -> Any:
    """A Structured method built on ``model`` for ``spec`` (auto replaced by a placeholder ratio), with
    ``update`` applied to the spec (unvalidated copy: probes use per-layer ratios of 0)."""
    from .methods.structured import Structured

    changes: dict[str, Any] = {"target_macs": None, "target_latency": None}
    if spec.auto:
        changes.update(ratio=GRID_STRUCTURED[0], layer_ratio=None)
    if spec.importance == "taylor":
        changes["importance"] = "l2"  # probes have no gradients: rank by magnitude
    changes.update(update)
    probe = spec.model_copy(update=changes)
    return Structured(probe, model, Setup(index=index, steps_per_epoch=1, input_shape=shape))


def _layer_macs(model: nn.Module, shape: list[int]) -> dict[str, int]:
    """:func:`sparsekit.stats.layer_macs` (dense MACs per sample and layer), for a model on any device (it
    counts on the CPU: a model elsewhere is counted on a CPU copy)."""
    param = next(iter(model.parameters()), None)
    if param is None or param.device.type == "cpu":
        return layer_macs(model, shape)
    return layer_macs(copy.deepcopy(model).cpu(), shape)


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, _ConvNd) and 1 < int(module.groups) == int(module.in_channels)


class _StructuredPlan:
    """The groups of a structured entry on a model and how each layer's MACs follow their channels."""

    def __init__(self, model: nn.Module, spec: StructuredSpec, index: int, shape: list[int], macs: dict[str, int]):
        method = _structured_method(copy.deepcopy(model), spec, index, shape)
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        self.method = method
        self.blocks = dict(sorted(method.roots().items(), key=lambda kv: order.get(kv[0], 0)))
        self.channels = {n: int(method.initial[n]) for n in self.blocks}
        self.units = {n: self.channels[n] // max(self.blocks[n], 1) for n in self.blocks}
        modules = dict(model.named_modules())
        self.flow = method.channel_roots()  # layer -> (out root, in root)
        self.macs = {n: macs.get(n, 0) for n in self.flow}
        self.depthwise = {n for n in self.flow if n in modules and _depthwise(modules[n])}
        self.coupled = {r: [n for n, o in method._owner.items() if o == r] for r in self.blocks}
        self.min_units = {
            n: max(1, math.ceil(min(spec.min_channels, self.channels[n]) / max(self.blocks[n], 1))) for n in self.blocks
        }
        self.head = method.head
        self.layers = list(method.layers)
        self.owner = dict(method._owner)
        self.fixed = dict(method._fixed)

    def touched_macs(self, root: str) -> int:
        """Dense MACs of every layer whose shape removing ``root``'s channels changes."""
        return sum(m for n, m in self.macs.items() if root in self.flow[n])

    def saved(self, keep: Mapping[str, float]) -> float:
        """Dense MACs minus MACs after keeping fraction ``keep[root]`` of each group's channels."""
        lost = 0.0
        for name, dense in self.macs.items():
            out_root, in_root = self.flow[name]
            if name in self.depthwise:
                factor = keep.get(out_root or in_root or "", 1.0)
            else:
                factor = keep.get(out_root or "", 1.0) * keep.get(in_root or "", 1.0)
            lost += dense * (1.0 - factor)
        return lost


def analyze(
    model: nn.Module,
    recipe: Recipe,
    val_loader: Iterable,
    *,
    grid: Mapping[str, Sequence[float]] | None = None,
    max_batches: int | None = None,
    progress: Callable[[Probe], None] | None = None,
    resume_from: SensitivityTable | None = None,
    input_shape: Sequence[int] | None = None,
    entries: Sequence[int] | None = None,
) -> SensitivityTable:
    """Measure how much each layer of ``recipe``'s magnitude, gradient and structured entries hurts the model
    when pruned alone (see the module doc); ``model`` is left exactly as it was (weights restored after each
    unstructured probe, structured probes on deep copies; train/eval mode restored).

    ``val_loader``: a re-iterable (a DataLoader, a list) of ``(inputs [N, ...], labels [N])`` batches,
    evaluated with
    :func:`sparsekit.train.evaluate` (top-1 accuracy, mean cross-entropy) on the model's device, the first
    ``max_batches`` batches when given. ``grid``: ``{"unstructured": [...], "structured": [...]}`` (values in
    (0, 1); a missing kind keeps its default :data:`GRID_UNSTRUCTURED` / :data:`GRID_STRUCTURED`).
    ``progress(probe)`` is called after each probe with a :class:`Probe`. ``resume_from``: a table from an
    earlier, interrupted run on the same model and data: its probes (and dense metrics) are kept and not
    run again. ``input_shape``: batch first (default: ``recipe.model.input_shape``, else the first
    batch's). ``entries``: indices of the entries to analyse (default: every magnitude, gradient and
    structured entry).

    Cost: one evaluation per (layer, grid value), plus one for the dense model; a structured probe also
    traces and copies the model. Raises TargetError when the recipe's selections do not fit the model, when
    ``resume_from`` was measured on another model, data or input shape, or when no entry can be analysed;
    :class:`~sparsekit.errors.DataError` for bad batches (as :func:`~sparsekit.train.evaluate`);
    ValueError for a bad ``grid``.
    """
    model = getattr(model, "module", model)
    grids = _grid(grid)
    shape = _shape(model, recipe, val_loader, input_shape)
    chosen = list(range(len(recipe.pruning))) if entries is None else [int(i) for i in entries]
    bad = [i for i in chosen if not 0 <= i < len(recipe.pruning)]
    if bad:
        raise ValueError(
            f"entries: {bad[0]} is not an index of the recipe's pruning list ({len(recipe.pruning)} entries)"
        )
    specs = [(i, recipe.pruning[i]) for i in chosen if recipe.pruning[i].method in _ANALYSED]
    if not specs:
        raise TargetError(
            "sensitivity: the recipe has no magnitude, gradient or structured entry to analyse (l1 and max_norm "
            "have no per-layer target)"
        )
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        table, plans = _new_table(model, val_loader, grids, shape, specs, max_batches, resume_from)
        total = table.probes_total()
        done = table.probes_done()
        modules = dict(model.named_modules())
        for row in table.layers:
            for value in table.grid[row.kind]:
                if row.point(value) is not None or _key(value) in row.errors:
                    continue
                point: Point | None
                if row.kind == "unstructured":
                    point = _probe_unstructured(
                        model, modules[row.name], row.name, value, val_loader, max_batches, table
                    )
                else:
                    spec = recipe.pruning[row.entry]
                    assert isinstance(spec, StructuredSpec)
                    point, error = _probe_structured(
                        model, spec, row, plans[row.entry], value, shape, val_loader, max_batches, table
                    )
                    if error:
                        row.errors[_key(value)] = error
                if point is not None:
                    row.points.append(point)
                    row.points.sort(key=lambda p: p.value)
                done += 1
                if progress is not None:
                    progress(Probe(done, total, row.name, row.entry, value, point, table))
    finally:
        for module, training in modes:  # each module's own flag (a frozen BatchNorm may sit in a training model)
            module.training = training
    return table


def _new_table(
    model: nn.Module,
    loader: Iterable,
    grids: dict[str, list[float]],
    shape: list[int],
    specs: list[tuple[int, Any]],
    max_batches: int | None,
    resume_from: SensitivityTable | None,
) -> tuple[SensitivityTable, dict[int, _StructuredPlan]]:
    """The table's skeleton (dense metrics, one row per layer, the left-out layers), with ``resume_from``'s
    probes copied in when it matches this model, data and shape; and the plan of each structured entry."""
    fp = fingerprint(model)
    samples = _samples(loader, max_batches)
    if resume_from is not None:
        problems = []
        if resume_from.fingerprint != fp:
            problems.append("the model's weights differ")
        if resume_from.val_samples != samples or resume_from.max_batches != max_batches:
            problems.append(f"the validation data differ ({resume_from.val_samples} samples then, {samples} now)")
        if list(resume_from.input_shape) != shape:
            problems.append(f"the input shape differs ({resume_from.input_shape} then, {shape} now)")
        if problems:
            raise TargetError(
                f"resume_from: the sensitivity table was measured on another setup ({'; '.join(problems)}); "
                "analyse from scratch (leave resume_from out) or resume with the same model and data"
            )
        dense = {"accuracy": resume_from.dense_accuracy, "loss": resume_from.dense_loss}
    else:
        dense = evaluate(model, loader, max_batches)
    macs = _layer_macs(model, shape)
    total_macs = sum(macs.values()) or 1
    rows: list[LayerSensitivity] = []
    left: list[LeftOut] = []
    seen: set[str] = set()
    plans: dict[int, _StructuredPlan] = {}
    why_not: dict[str, str] = {}  # layer -> why the first analysed entry does not select it
    modules = dict(model.named_modules())
    for index, spec in specs:
        selected = select_layers(model, spec.layers, f"pruning[{index}].layers")
        for unsel in unselected_layers(model, spec.layers):
            why_not.setdefault(unsel["name"], f"pruning[{index}]: {unsel['reason']}")
        if isinstance(spec, MagnitudeSpec | GradientSpec):
            for name, module in selected.items():
                seen.add(name)
                rows.append(
                    LayerSensitivity(
                        name=name,
                        entry=index,
                        method=spec.method,
                        kind="unstructured",
                        type=type(module).__name__,
                        params=weight_of(module).numel(),
                        macs=macs.get(name, 0),
                        macs_share=macs.get(name, 0) / total_macs,
                    )
                )
            continue
        plan = plans[index] = _StructuredPlan(model, spec, index, shape, macs)
        for name in selected:
            if name in plan.blocks:
                continue
            seen.add(name)
            if name == plan.head and spec.ignore is None:
                reason = "the classifier head keeps its outputs (structured ignore's default)"
            elif name in plan.owner:
                reason = f"its output channels go with those of {plan.owner[name]!r} (coupled); see that row"
            elif name not in plan.layers:
                reason = "in ignore: its output channels are kept"
            else:
                reason = plan.fixed.get(name, "torch-pruning does not rank its channels")
            left.append(LeftOut(name=name, type=type(selected[name]).__name__, entry=index, reason=reason))
        for root in plan.blocks:
            seen.add(root)
            touched = plan.touched_macs(root)
            rows.append(
                LayerSensitivity(
                    name=root,
                    entry=index,
                    method="structured",
                    kind="structured",
                    type=type(modules[root]).__name__,
                    params=weight_of(modules[root]).numel(),
                    macs=touched,
                    macs_share=touched / total_macs,
                    channels=plan.channels[root],
                    blocks=plan.blocks[root],
                    coupled=plan.coupled.get(root, []),
                )
            )
    for name, module in prunable_layers(model).items():
        if name not in seen:
            reason = why_not.get(name, "selected by no analysed entry")
            left.append(LeftOut(name=name, type=type(module).__name__, entry=None, reason=reason))
    table = SensitivityTable(
        dense_accuracy=float(dense["accuracy"]),
        dense_loss=float(dense["loss"]),
        val_samples=samples,
        max_batches=max_batches,
        fingerprint=fp,
        input_shape=shape,
        model_macs=sum(macs.values()),
        grid=grids,
        layers=rows,
        left_out=left,
    )
    if resume_from is not None:
        for row in table.layers:
            old = resume_from.layer(row.name, row.entry)
            if old is not None and old.kind == row.kind:
                row.points = [p.model_copy() for p in old.points]
                row.errors = dict(old.errors)
    return table, plans


def _point(value: float, achieved: float, metrics: Mapping[str, float], table: SensitivityTable) -> Point:
    acc, loss = float(metrics["accuracy"]), float(metrics["loss"])
    return Point(
        value=value,
        accuracy=acc,
        loss=loss,
        accuracy_drop=table.dense_accuracy - acc,
        loss_increase=loss - table.dense_loss,
        achieved=achieved,
    )


@torch.no_grad()
def _probe_unstructured(
    model: nn.Module,
    module: nn.Module,
    name: str,
    value: float,
    loader: Iterable,
    max_batches: int | None,
    table: SensitivityTable,
) -> Point:
    """Zero the ``round(value * n)`` smallest ``|w|`` of ``module`` (ranked within it), evaluate ``model``,
    put the weights back (in place: the parameter object stays the same)."""
    weight = weight_of(module)
    saved = weight.detach().clone()
    try:
        mask = global_topk_masks({name: saved.abs().float()}, value)[name]
        weight.mul_(mask.to(weight.dtype))
        achieved = (mask.numel() - int(mask.sum())) / mask.numel()
        metrics = evaluate(model, loader, max_batches)
    finally:
        weight.copy_(saved)
    return _point(value, achieved, metrics, table)


def _probe_structured(
    model: nn.Module,
    spec: StructuredSpec,
    row: LayerSensitivity,
    plan: _StructuredPlan,
    value: float,
    shape: list[int],
    loader: Iterable,
    max_batches: int | None,
    table: SensitivityTable,
) -> tuple[Point | None, str | None]:
    units = plan.units[row.name]
    if int(units * (1 - value) + 1e-9) < plan.min_units[row.name]:
        return None, f"would leave fewer than {plan.min_units[row.name] * row.blocks} channel(s) (min_channels)"
    work = copy.deepcopy(model)
    ratios = dict.fromkeys(plan.blocks, 0.0)
    ratios[row.name] = value
    try:
        method = _structured_method(
            work, spec, row.entry, shape, ratio=value, layer_ratio=ratios, scope="layer", steps=1,
            schedule=ScheduleSpec(),
        )  # fmt: skip
        method.finalize(work)
    except TargetError as err:
        return None, one_line(err, 200)
    channels = num_units(dict(work.named_modules())[row.name])
    metrics = evaluate(work, loader, max_batches)
    initial = int(row.channels or channels)
    return _point(value, (initial - channels) / initial, metrics, table), None


# ----------------------------------------------------------------------------- allocation


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
    layers = select_layers(model, spec.layers, f"{where}.layers")
    rows = _rows_for(table, index, layers, where, "unstructured")
    sizes = {n: weight_of(m).numel() for n, m in layers.items()}
    caps = {n: min(layer_cap(sizes[n], spec.layer_cap), sizes[n] - 1) for n in layers}
    total = sum(sizes.values())
    budget = round(target * total)
    if sum(caps.values()) < budget:
        raise TargetError(
            f"{where}.target: {target:g} of the selected weights is more than max_layer_sparsity "
            f"({spec.layer_cap:g}) lets these layers lose ({sum(caps.values()) / total:.4f}); lower target or raise "
            "max_layer_sparsity"
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
    allocated = spec.model_copy(update={"sparsity": target, "target": None, "scope": "layer", "layer_sparsity": values})
    allocated = type(spec).model_validate(allocated.model_dump())
    predicted = sum(_raw_increase(rows[n], values[n]) for n in layers)
    uniform = sum(_raw_increase(rows[n], target) for n in layers)
    reached = sum(counts.values()) / total
    info = EntryAllocation(index, spec.method, {"sparsity": target}, values, predicted, uniform, {"sparsity": reached})
    return allocated, info


def _feasible(units: int, blocks: int, limit: int, align: int) -> list[int]:
    """Units a group may lose, ascending from 0, up to ``limit``: every count, or with ``align`` > 1 those
    leaving a multiple of ``align`` channels (``units * blocks`` channels in all; a group narrower than
    ``align`` keeps the every-count steps)."""
    counts = range(0, max(limit, 0) + 1)
    if align <= 1 or units * blocks < align:
        return list(counts)
    return [x for x in counts if x == 0 or ((units - x) * blocks) % align == 0]


def _greedy_channels(
    plan: _StructuredPlan,
    rows: Mapping[str, LayerSensitivity],
    budget_saved: float,
    kept_before: Mapping[str, float],
    where: str,
    what: str,
    align: int = 1,
) -> dict[str, int]:
    """Units removed per root so that at least ``budget_saved`` MACs are saved (with ``kept_before``'s
    channel fractions of earlier entries applied), cheapest predicted loss increase per MAC saved first,
    then single steps given back while the budget still holds (so the MACs land just past the target).
    ``align`` > 1: every group keeps a multiple of ``align`` channels (or all of them)."""
    units, removed = plan.units, dict.fromkeys(plan.blocks, 0)
    allowed: dict[str, list[int]] = {}
    hulls = {}
    for root, row in rows.items():
        top = max((p.achieved for p in row.points), default=0.0)
        limit = max(0, min(units[root] - plan.min_units[root], math.floor(top * units[root] + 1e-9)))
        allowed[root] = _feasible(units[root], plan.blocks[root], limit, align)
        hulls[root] = _convex_cost(_achieved(row))
    pos = dict.fromkeys(rows, 0)  # index into allowed[root] of removed[root]
    # Steps of ~1/50 of the group (whole aligned blocks when aligning): few rounds, fine enough to stop near
    # the target, where the step is cut to what the budget needs.
    jump = {r: 1 if align > 1 else max(1, units[r] // _STRUCTURED_STEPS) for r in rows}

    def keep_with(root: str | None = None, count: int = 0) -> dict[str, float]:
        keep = dict(kept_before)
        for r in plan.blocks:
            n = count if r == root else removed[r]
            keep[r] = keep.get(r, 1.0) * (units[r] - n) / units[r]
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
            reach = 1 - saved / max(sum(plan.macs.values()), 1)
            raise TargetError(
                f"{where}.{what}: cannot be reached: removing up to the largest analysed ratio of every group's "
                f"channels (within min_channels) saves only {saved:,.0f} MACs per sample (the pruned layers would "
                f"keep {reach:.3f} of theirs); raise {what}, or analyse larger ratios (grid) and allow them"
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


def _measured_macs(model: nn.Module, recipe_specs: Sequence[tuple[int, StructuredSpec]], shape: list[int]) -> float:
    """MACs of a copy of ``model`` after every (index, allocated spec) removal, as a fraction of dense."""
    from .methods.structured import Structured

    dense = sum(_layer_macs(model, shape).values()) or 1
    work = copy.deepcopy(model)
    for index, spec in recipe_specs:
        method = Structured(
            spec.model_copy(update={"schedule": ScheduleSpec(), "steps": 1}),
            work,
            Setup(index=index, steps_per_epoch=1, input_shape=shape),
        )
        method.finalize(work)
    return sum(_layer_macs(work, shape).values()) / dense


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
) -> tuple[StructuredSpec, dict[str, float], float, float | None, float]:
    where = f"pruning[{index}]"
    macs = _layer_macs(model, shape)
    dense = sum(macs.values()) or 1
    plan = _StructuredPlan(model, spec, index, shape, macs)
    rows = _rows_for(table, index, plan.blocks, where, "structured")
    kept_before: dict[str, float] = {}
    for _, earlier in done:  # earlier auto entries' ratios, as channel fractions kept
        for root, r in (earlier.layer_ratio or {}).items():
            kept_before[root] = kept_before.get(root, 1.0) * (1 - r)
    budget = dense * (1 - macs_target)
    removed = _greedy_channels(plan, rows, budget, kept_before, where, what, align)
    ratios = {r: removed[r] / plan.units[r] for r in plan.blocks}
    channels_total = sum(plan.channels.values())
    overall = sum(removed[r] * plan.blocks[r] for r in plan.blocks) / channels_total
    allocated = spec.model_copy(
        update={
            "ratio": max(overall, 1e-6),
            "target_macs": None,
            "target_latency": None,
            "scope": "layer",
            "layer_ratio": ratios,
        }
    )
    allocated = StructuredSpec.model_validate(allocated.model_dump())
    predicted = sum(_raw_increase(rows[r], ratios[r]) for r in plan.blocks)
    # Uniform comparison: one ratio for every group meeting the same MACs (bisection on the predictor).
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        keep = {r: kept_before.get(r, 1.0) * (1 - mid) for r in plan.blocks}
        lo, hi = (mid, hi) if plan.saved(keep) < budget else (lo, mid)
    uniform = sum(_raw_increase(rows[r], hi) for r in plan.blocks) if hi < 0.999 else None
    reached = _measured_macs(model, [*done, (index, allocated)], shape)
    return allocated, ratios, predicted, uniform, reached


def _latency_to_macs(
    model: nn.Module, spec: StructuredSpec, index: int, recipe: Recipe, shape: list[int], target: float
) -> tuple[float, list[dict[str, float]]]:
    """Export the dense model and a uniform sweep (:data:`LATENCY_SWEEP`), time them together in onnxruntime
    and interpolate the MACs fraction at which the latency ratio reaches ``target``."""
    from .onnx import benchmark, export_onnx

    where = f"pruning[{index}].target_latency"
    macs = _layer_macs(model, shape)
    dense = sum(macs.values()) or 1
    plan = _StructuredPlan(model, spec, index, shape, macs)
    batch = max(recipe.benchmark.batch_sizes)
    sweep: list[dict[str, float]] = [{"ratio": 0.0, "macs": 1.0}]
    with tempfile.TemporaryDirectory(prefix="sparsekit-latency-") as tmp:
        files = [Path(tmp) / "dense.onnx"]
        export_onnx(model, files[0], shape, opset=17, exporter="torchscript", check_parity=False)
        for u in LATENCY_SWEEP:
            ratios = {}
            for r in plan.blocks:
                options = _feasible(plan.units[r], plan.blocks[r], plan.units[r] - plan.min_units[r], latency_align())
                ratios[r] = min(options, key=lambda x: (abs(x - u * plan.units[r]), x)) / plan.units[r]
            work = copy.deepcopy(model)
            method = _structured_method(
                work, spec, index, shape, ratio=u, layer_ratio=ratios, scope="layer", steps=1, schedule=ScheduleSpec()
            )
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
    work = copy.deepcopy(model)
    for index, spec in allocated:
        method = Structured(
            spec.model_copy(update={"schedule": ScheduleSpec(), "steps": 1}),
            work,
            Setup(index=index, steps_per_epoch=1, input_shape=shape),
        )
        method.finalize(work)
    with tempfile.TemporaryDirectory(prefix="sparsekit-latency-") as tmp:
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
    in recipe order)."""
    model = getattr(model, "module", model)
    shape = [int(d) for d in input_shape]
    entries = list(recipe.pruning)
    details: list[EntryAllocation] = []
    done: list[tuple[int, StructuredSpec]] = []
    was_training = model.training
    model.eval()
    try:
        for index in auto_entries(recipe):
            spec = entries[index]
            if isinstance(spec, MagnitudeSpec | GradientSpec):
                entries[index], info = _allocate_unstructured(model, spec, index, table)
                details.append(info)
                continue
            assert isinstance(spec, StructuredSpec)
            if spec.target_latency is not None:
                info = _allocate_latency(model, spec, index, table, recipe, shape, done)
            else:
                aim = float(spec.target_macs or 0.0)
                allocated, ratios, predicted, uniform, reached = _allocate_structured(
                    model, spec, index, table, shape, aim, done, "target_macs"
                )
                info = EntryAllocation(
                    index, "structured", {"macs": aim}, ratios, predicted, uniform, {"macs": reached}, None, aim
                )
                info.spec = allocated
            assert info.spec is not None
            entries[index] = info.spec
            done.append((index, info.spec))
            details.append(info)
    finally:
        model.train(was_training)
    new = Recipe.model_validate({**recipe.model_dump(), "pruning": [e.model_dump() for e in entries]})
    new._source = recipe.source
    return new, details


def allocate(model: nn.Module, recipe: Recipe, table: SensitivityTable, *, input_shape: Sequence[int]) -> Recipe:
    """A copy of ``recipe`` whose ``auto`` entries carry explicit per-layer values chosen from ``table`` (the
    algorithms are in the module doc); other entries are unchanged, and a recipe without ``auto`` comes back
    equal. ``model`` (not changed) must be the one ``table`` was measured on; ``input_shape`` batch first.

    - ``sparsity: auto, target: t`` becomes ``sparsity: t, scope: layer, layer_sparsity: {layer: k / n}``
      with ``sum(k) == round(t * N)`` over the entry's ``N`` weights;
    - ``ratio: auto, target_macs: m`` / ``target_latency: l`` becomes ``ratio: <channel-weighted mean>,
      scope: layer, layer_ratio: {root: removed / units}`` for every group the entry ranks (0.0: kept whole).

    Raises TargetError when the table lacks a layer the entry selects, or a target cannot be met (the caps,
    ``min_channels``, the largest analysed ratio, or onnxruntime's fixed costs for ``target_latency``).
    """
    return allocate_with_details(model, recipe, table, input_shape=input_shape)[0]


def auto_allocate(
    model: nn.Module,
    recipe: Recipe,
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
    wanted = auto_entries(recipe)
    if not wanted:
        return recipe, None
    model = getattr(model, "module", model)
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
    new._source = recipe.source
    return new
