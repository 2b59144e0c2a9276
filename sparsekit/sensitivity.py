"""Per-layer sensitivity analysis: how much each layer hurts the model when pruned alone.

**Analysis** (:func:`analyze`). For every layer a recipe entry selects, the model is pruned at that layer
*alone*, one shot and without fine-tuning, at each value of a grid, and evaluated on validation data:

- ``magnitude`` / ``gradient`` entries (unstructured): the layer's smallest ``|w|`` are zeroed to each
  sparsity of :data:`GRID_UNSTRUCTURED` (``round(s * weights)`` of them, ranked within the layer) and the
  weights restored afterwards; a layer sharing an earlier layer's weight (tied) is that layer's row, and is
  listed in ``left_out`` saying so;
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

Per-layer targets chosen from the table (``sparsity: auto``, ``ratio: auto``) are
:mod:`sparsekit.allocation`'s.

``write_outputs(table, out_dir)`` writes ``sensitivity.json`` (the table), ``sensitivity.png`` and
``sensitivity.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .data import batches
from .errors import DataError, SparsekitError, TargetError, interrupted_while, naming_recipe, one_line
from .fsutil import atomic_path, write_text
from .layers import NORM_REASON, num_units, select_layers, tied_aliases, unselected_layers, weighted_layers
from .logits import recipe_output, selected
from .masks import count_true, global_topk_masks, weight_of
from .methods.base import Setup
from .recipe import GradientSpec, MagnitudeSpec, Recipe, RecipeLike, ScheduleSpec, StructuredSpec, as_recipe
from .stats import layer_macs
from .train import evaluate
from .wrappers import SAMPLES_NOT_BATCHES, checked_input_shape, copy_model, is_torch_dataset, require_module, unwrap

__all__ = [
    "GRID_STRUCTURED",
    "GRID_UNSTRUCTURED",
    "LayerSensitivity",
    "LeftOut",
    "Point",
    "Probe",
    "SensitivityTable",
    "analyze",
    "auto_entries",
    "write_outputs",
]

GRID_UNSTRUCTURED: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
"""Default sparsities probed for magnitude / gradient layers (fraction of the layer's weights zeroed)."""
GRID_STRUCTURED: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Default channel ratios probed for structured layers (fraction of the group's output channels removed)."""
FORMAT = "sparsekit-sensitivity/1"

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


FEW_SAMPLES = 100  # validation samples below which an analysis is warned of as noise (SensitivityTable.noise_warning)


class SensitivityTable(_Data):
    """What :func:`analyze` measured (JSON round-trip: :meth:`to_json` / :meth:`from_json`).

    ``dense_accuracy`` (0..1) and ``dense_loss`` (nats per sample) on ``val_samples`` validation samples
    (the first ``max_batches`` batches when set); ``fingerprint`` identifies the model's weights (sha256 of
    its state_dict) so a resumed analysis cannot mix models; ``input_shape`` batch first; ``grid``: the
    values probed per kind; ``model_macs``: dense MACs per sample over all Linear/Conv layers; ``layers``
    in recipe and model order; ``left_out``: layers not analysed, with the reason; ``classes``: the model's
    outputs per sample (None in tables written before it was recorded)."""

    format: Literal["sparsekit-sensitivity/1"] = "sparsekit-sensitivity/1"
    dense_accuracy: float
    dense_loss: float
    val_samples: int
    classes: int | None = Field(None, description="the model's outputs per sample: chance accuracy is 1 / classes")
    max_batches: int | None = None
    fingerprint: str
    setup: str | None = Field(
        None, description="sha256 of the validation data and the analysed entries' settings (what a resume must match)"
    )
    data_digest: str | None = Field(None, description="sha256 of the evaluated validation batches alone")
    data_settings: dict[str, Any] | None = Field(
        None, description="the recipe's seed and data settings the validation batches were drawn with"
    )
    measured: dict[str, dict[str, Any]] | None = Field(
        None, description="per analysed entry (its index): the settings that change what a probe measures"
    )
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

    def noise_warning(self) -> str | None:
        """A warning when the table's sensitivities rank noise, None otherwise: the dense model's accuracy is near
        chance (within a tenth of the way from ``1 / classes`` to 1: an untrained model's loss hardly moves
        whichever layer is pruned), or fewer than :data:`FEW_SAMPLES` validation samples were evaluated (each probe's
        accuracy moves in steps of ``1 / val_samples``). An ``auto`` allocation read from such a table is a guess."""
        k = self.classes
        if k and k >= 2:
            chance = 1 / k
            if self.dense_accuracy < chance + 0.1 * (1 - chance):
                return (
                    f"the dense model's validation accuracy {self.dense_accuracy:.4f} is near chance (1/{k} = "
                    f"{chance:.3f} with {k} outputs): it looks untrained, so its per-layer sensitivities (and "
                    "per-layer values chosen from them) are noise; analyse the trained model"
                )
        if self.val_samples < FEW_SAMPLES:
            return (
                f"the analysis evaluated only {self.val_samples} validation sample(s) (accuracy in steps of "
                f"{1 / max(self.val_samples, 1):.3f}): per-layer sensitivities this close to noise (and per-layer "
                f"values chosen from them) are a guess; give it at least {FEW_SAMPLES} (a larger data.val_fraction, "
                "or more data)"
            )
        return None

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
        Agg renderer only (no display, no change to pyplot's backend), with matplotlib's own settings where a
        matplotlibrc file in the current folder would set them (:func:`sparsekit.plots.own_settings`). Returns the
        path."""
        from .plots import own_settings

        with own_settings():
            return self._draw_plot(path)

    def _draw_plot(self, path: str | Path) -> Path:
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


RESUME_REFUSED = "the sensitivity table to resume was measured on another setup"
"""How :func:`analyze`'s refusal of a ``resume_from`` table measured otherwise begins (the command names its file)."""


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
NOTHING_TO_ANALYSE = (
    "pruning: no magnitude, gradient or structured entry to analyse (l1 and max_norm have no per-layer target); "
    "add one, e.g. {method: magnitude, sparsity: auto, target: 0.9}, whose layers the analysis then probes"
)


def auto_entries(recipe: Recipe) -> list[int]:
    """Indices of ``recipe.pruning`` entries still holding ``auto`` (``sparsity: auto`` / ``ratio: auto``)."""
    return [i for i, spec in enumerate(recipe.pruning) if bool(getattr(spec, "auto", False))]


def _grid(grid: Mapping[str, Sequence[float]] | None) -> dict[str, list[float]]:
    out = {"unstructured": list(GRID_UNSTRUCTURED), "structured": list(GRID_STRUCTURED)}
    if grid is not None and not isinstance(grid, Mapping):  # a bare list failed as "'list' object has no attribute"
        raise TypeError(f"grid: expected a dict such as {{'unstructured': [0.5, 0.9]}}, got {type(grid).__name__}")
    for kind, values in (grid or {}).items():
        if kind not in out:
            raise ValueError(f"grid: unknown kind {kind!r}; use 'unstructured' and/or 'structured'")
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):  # "0.5" was read as '0', '.', '5'
            raise TypeError(f"grid[{kind!r}]: expected a list of values between 0 and 1, got {values!r}")
        try:
            vals = sorted({float(v) for v in values})
        except (TypeError, ValueError):
            raise TypeError(f"grid[{kind!r}]: expected a list of values between 0 and 1, got {values!r}") from None
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
    # Through batches(): a batch that is not an (inputs, labels) pair is the DataError analyze documents, not
    # "too many values to unpack".
    for i, (_, y) in enumerate(batches(loader, _VAL_LOADER)):
        if max_batches is not None and i >= max_batches:
            break
        n += len(y)
    return n


# Settings that do not change what a probe measures (targets, schedules): a resume may differ in them.
_NOT_MEASURED = {
    "target", "target_macs", "target_latency", "sparsity", "ratio", "layer_sparsity", "layer_ratio",
    "schedule", "max_layer_sparsity", "calibration_batches", "criterion", "scope", "steps",
}  # fmt: skip


def _setup_digest(loader: Iterable, max_batches: int | None, specs: list[tuple[int, Any]]) -> tuple[str, str]:
    """``(setup, data)``: sha256 of the evaluated validation batches (inputs and labels) and of what each
    analysed entry measures (method, layers, importance, ignore, ...), and of the batches alone: two tables
    with the same setup digest come from the same data and settings."""
    h = hashlib.sha256()
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        for t in (x, y):
            if isinstance(t, torch.Tensor):
                data = t.detach().cpu().contiguous()
                h.update(f"{tuple(data.shape)}:{data.dtype}".encode())
                h.update((data.float() if data.dtype == torch.bfloat16 else data).numpy().tobytes())
    data_digest = h.hexdigest()
    for index, kept in _measured(specs).items():
        h.update(f"{index}:{sorted(kept.items())!r}".encode())
    return h.hexdigest(), data_digest


def _measured(specs: list[tuple[int, Any]]) -> dict[str, dict[str, Any]]:
    """Per analysed entry (index as a string): its settings that change what a probe measures."""
    return {
        str(index): {k: v for k, v in spec.model_dump(mode="json").items() if k not in _NOT_MEASURED}
        for index, spec in specs
    }


def _differences(old: SensitivityTable, data_digest: str, data_settings: dict[str, Any], measured: dict) -> list[str]:
    """What differs between the table to resume and this run, by field, where the table recorded it (tables
    written before 0.3.4 hold only the combined digest: then the caller words it generally)."""
    problems = []
    if old.data_digest is not None and old.data_digest != data_digest:
        changed = [
            f"{key} {old.data_settings.get(key)!r} then, {value!r} now"
            for key, value in data_settings.items()
            if old.data_settings is not None and old.data_settings.get(key) != value
        ]
        problems.append(
            "the validation batches differ ("
            + ("; ".join(changed) if changed else "other data in the same settings")
            + ")"
        )
    if old.measured is not None:
        for index in sorted(set(old.measured) | set(measured), key=int):
            then, now = old.measured.get(index), measured.get(index)
            if then is None or now is None:
                problems.append(
                    f"pruning[{index}] is {'analysed now, not then' if then is None else 'not analysed now'}"
                )
                continue
            then, now = _flat(then), _flat(now)
            problems += [
                f"pruning[{index}].{key}: {then.get(key)!r} then, {now.get(key)!r} now"
                for key in sorted(set(then) | set(now))
                if then.get(key) != now.get(key)
            ]
    return problems


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"layers": {"exclude": [...]}}`` as ``{"layers.exclude": [...]}``, so a difference names its leaf."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shape(model: nn.Module, recipe: Recipe, loader: Iterable, input_shape: Sequence[int] | None) -> list[int]:
    if input_shape is not None:
        return checked_input_shape(input_shape, "input_shape")
    if recipe.model.input_shape:
        return list(recipe.model.input_shape)
    for x, _ in batches(loader, _VAL_LOADER):
        return [1, *(int(d) for d in x.shape[1:])]
    raise TargetError("sensitivity: cannot tell the input shape; set model.input_shape in the recipe")


_VAL_LOADER = "data: the validation loader"


def check_arguments(
    call: str,
    model: object,
    val_loader: object,
    max_batches: object,
    progress: object,
    resume_from: object,
) -> None:
    """The checks of :func:`analyze`'s (and ``auto_allocate``'s) arguments that are not data, naming ``call``: each
    failed deep inside (a None model as "'NoneType' object has no attribute 'modules'", a negative ``max_batches`` as
    islice's "Stop argument", ``progress=True`` after the first probe's evaluation), and ``max_batches=0`` was
    taken as an analysis on no data, which allocated on nothing without a word."""
    require_module(model, call)
    if val_loader is None or isinstance(val_loader, str | bytes | Mapping) or not isinstance(val_loader, Iterable):
        # A DataError, as finetune(val_loader=None) says it
        raise DataError(
            f"{call}(val_loader=...): got a {type(val_loader).__name__}, "
            + (
                f"which holds {SAMPLES_NOT_BATCHES}"
                if is_torch_dataset(val_loader)
                else "which yields no batches; pass a re-iterable of (inputs, labels) batches (a DataLoader, a list)"
            )
        )
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)):
        raise TypeError(f"{call}(max_batches=...): expected an int or None, got {max_batches!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"{call}(max_batches=...): must be at least 1 (None: every batch), got {max_batches}")
    if progress is not None and not callable(progress):
        raise TypeError(f"{call}(progress=...): expected a function called with each Probe, or None, got {progress!r}")
    if resume_from is not None and not isinstance(resume_from, SensitivityTable):
        raise TypeError(
            f"{call}(resume_from=...): expected a SensitivityTable (SensitivityTable.load(path) reads a saved one), "
            f"got {type(resume_from).__name__}"
        )


def _structured_method(
    model: nn.Module, spec: StructuredSpec, index: int, shape: list[int], *, verify: bool = True, **update: Any
) -> Any:
    """A Structured method built on ``model`` for ``spec`` (auto replaced by a placeholder ratio), with
    ``update`` applied to the spec (unvalidated copy: probes use per-layer ratios of 0). ``verify=False`` skips
    the channel-equivalence probe (:mod:`sparsekit.equivalence`) for a model whose plan was already built with it."""
    from .methods.structured import Structured

    changes: dict[str, Any] = {"target_macs": None, "target_latency": None}
    if spec.auto:
        changes.update(ratio=GRID_STRUCTURED[0], layer_ratio=None)
    if spec.importance == "taylor":
        changes["importance"] = "l2"  # probes have no gradients: rank by magnitude
    changes.update(update)
    probe = spec.model_copy(update=changes)
    return Structured(probe, model, Setup(index=index, steps_per_epoch=1, input_shape=shape), verify=verify)


def _layer_macs(model: nn.Module, shape: list[int]) -> dict[str, int]:
    """:func:`sparsekit.stats.layer_macs` (dense MACs per sample and layer), for a model on any device (it
    counts on the CPU: a model elsewhere is counted on a CPU copy)."""
    param = next(iter(model.parameters()), None)
    if param is None or param.device.type == "cpu":
        return layer_macs(model, shape)
    return layer_macs(copy_model(model).cpu(), shape)


def _inputs(module: nn.Module) -> int:
    """A Linear's input features, a convolution's input channels (0 for anything else)."""
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    return int(module.in_channels) if isinstance(module, _ConvNd) else 0


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, _ConvNd) and 1 < int(module.groups) == int(module.in_channels)


class _StructuredPlan:
    """The groups of a structured entry on a model and how each layer's MACs follow their channels."""

    def __init__(self, model: nn.Module, spec: StructuredSpec, index: int, shape: list[int], macs: dict[str, int]):
        method = _structured_method(copy_model(model), spec, index, shape)
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        self.method = method
        self.blocks = dict(sorted(method.roots().items(), key=lambda kv: order.get(kv[0], 0)))
        self.channels = {n: int(method.initial[n]) for n in self.blocks}
        self.units = {n: self.channels[n] // max(self.blocks[n], 1) for n in self.blocks}
        modules = dict(model.named_modules())
        self.flow = method.channel_roots()  # layer -> (out root, in root)
        # layer -> {root: inputs it shrinks}, and the layer's input count: a concatenation's parts follow their roots
        self.inputs = method.input_roots()
        self.in_total = {n: _inputs(modules[n]) for n in self.inputs if n in modules}
        self.macs = {n: macs.get(n, 0) for n in self.flow}
        self.depthwise = {n for n in self.flow if n in modules and _depthwise(modules[n])}
        self.coupled = {r: [n for n, o in method._owner.items() if o == r] for r in self.blocks}
        self.min_units = {
            n: max(1, math.ceil(min(spec.min_channels, self.channels[n]) / max(self.blocks[n], 1))) for n in self.blocks
        }
        self.heads = list(method.heads)
        self.layers = list(method.layers)
        self.owner = dict(method._owner)
        self.fixed = dict(method._fixed)
        self.held = dict(method.held)  # selected layers coupled to an ignored one: they cannot lose channels

    def touched_macs(self, root: str) -> int:
        """Dense MACs of every layer whose shape removing ``root``'s channels changes."""
        return sum(m for n, m in self.macs.items() if root in self.flow[n] or root in self.inputs.get(n, {}))

    def saved(self, keep: Mapping[str, float]) -> float:
        """Dense MACs minus MACs after keeping fraction ``keep[root]`` of each group's channels."""
        lost = 0.0
        for name, dense in self.macs.items():
            out_root, in_root = self.flow[name]
            if name in self.depthwise:
                factor = keep.get(out_root or in_root or "", 1.0)
            else:
                factor = keep.get(out_root or "", 1.0) * self._kept_inputs(name, in_root, keep)
            lost += dense * (1.0 - factor)
        return lost

    def _kept_inputs(self, name: str, in_root: str | None, keep: Mapping[str, float]) -> float:
        """The fraction of ``name``'s inputs kept: each part of a concatenation by its own root."""
        parts, total = self.inputs.get(name), self.in_total.get(name, 0)
        if not parts or total <= 0 or sum(parts.values()) > total:
            return keep.get(in_root or "", 1.0)  # parts not countable: the one root, as a whole
        return 1.0 - sum(count * (1.0 - keep.get(root, 1.0)) for root, count in parts.items()) / total


def analyze(
    model: nn.Module,
    recipe: RecipeLike,
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
    ``max_batches`` batches when given (read once, so every probe sees the same ones). ``grid``:
    ``{"unstructured": [...], "structured": [...]}`` (values in
    (0, 1); a missing kind keeps its default :data:`GRID_UNSTRUCTURED` / :data:`GRID_STRUCTURED`).
    ``progress(probe)`` is called after each probe with a :class:`Probe`. ``resume_from``: a table from an
    earlier, interrupted run on the same model and data: its probes (and dense metrics) are kept and not
    run again. ``input_shape``: batch first (default: ``recipe.model.input_shape``, else the first
    batch's). ``entries``: indices of the entries to analyse (default: every magnitude, gradient and
    structured entry).

    Cost: one evaluation per (layer, grid value), plus one for the dense model; a structured probe also
    traces and copies the model. Raises TargetError when the recipe's selections do not fit the model, when
    ``resume_from`` was measured on another model, data or input shape, or when no entry can be analysed;
    :class:`~sparsekit.errors.DataError` for bad batches (as :func:`~sparsekit.train.evaluate`) or a loader that
    gives no samples (or is not iterable); TypeError for arguments of the wrong type (a ``model`` that is not an
    ``nn.Module``, a ``progress`` that is not callable, a ``resume_from`` that is not a
    :class:`SensitivityTable`, an ``entries`` or ``grid`` that is not a list or dict); ValueError for a bad
    ``grid`` value, ``input_shape`` or index in ``entries``, or a ``max_batches`` below 1.
    """
    check_arguments("analyze", model, val_loader, max_batches, progress, resume_from)
    recipe = as_recipe(recipe)
    model = unwrap(model)
    if recipe.model.output is not None and selected(model) is None:
        # A dict / tuple model analysed from Python: the recipe's model.output was not applied, so the dense evaluation
        # refused the whole output with "set model.output: logits in the recipe", which the recipe had set.
        with recipe_output(model, recipe.model.output):
            return analyze(
                model, recipe, val_loader, grid=grid, max_batches=max_batches, progress=progress,
                resume_from=resume_from, input_shape=input_shape, entries=entries,
            )  # fmt: skip
    grids = _grid(grid)
    if max_batches is not None:
        # Read once: a loader that shuffles would give the dense model and each probe other batches to compare.
        val_loader = list(itertools.islice(batches(val_loader, _VAL_LOADER), max_batches))
    shape = _shape(model, recipe, val_loader, input_shape)
    if entries is not None and (isinstance(entries, str | bytes) or not isinstance(entries, Iterable)):
        raise TypeError(f"entries: expected a list of indices into the recipe's pruning list, got {entries!r}")
    chosen = list(range(len(recipe.pruning))) if entries is None else [int(i) for i in entries]
    bad = [i for i in chosen if not 0 <= i < len(recipe.pruning)]
    if bad:
        raise ValueError(
            f"entries: {bad[0]} is not an index of the recipe's pruning list ({len(recipe.pruning)} entries)"
        )
    specs = [(i, recipe.pruning[i]) for i in chosen if recipe.pruning[i].method in _ANALYSED]
    if not specs:
        raise TargetError(NOTHING_TO_ANALYSE)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        data_settings = {
            "seed": recipe.seed,
            **{f"data.{k}": v for k, v in recipe.data.model_dump(mode="json").items()},
        }
        # A layer selection or layout the model refuses is the recipe's field: name its file (or the override), as
        # prune and validate do; `sparsekit sensitivity` said "pruning[0].layers.include: ..." alone.
        with naming_recipe(recipe):
            table, plans = _new_table(model, val_loader, grids, shape, specs, max_batches, resume_from, data_settings)
        total = table.probes_total()
        done = table.probes_done()
        modules = dict(model.named_modules())
        for row in table.layers:
            for value in table.grid[row.kind]:
                if row.point(value) is not None or _key(value) in row.errors:
                    continue
                point: Point | None
                # Ctrl-C says which probe it stopped (the finished ones are kept for --resume)
                probing = f"probing {row.name} at {_key(value)} (probe {done + 1} of {total})"
                if row.kind == "unstructured":
                    with interrupted_while(probing):
                        point = _probe_unstructured(
                            model, modules[row.name], row.name, value, val_loader, max_batches, table
                        )
                else:
                    spec = recipe.pruning[row.entry]
                    assert isinstance(spec, StructuredSpec)
                    with interrupted_while(probing):
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
    data_settings: dict[str, Any],
) -> tuple[SensitivityTable, dict[int, _StructuredPlan]]:
    """The table's skeleton (dense metrics, one row per layer, the left-out layers), with ``resume_from``'s
    probes copied in when it matches this model, data and shape; and the plan of each structured entry."""
    fp = fingerprint(model)
    samples = _samples(loader, max_batches)
    if not samples:  # every probe would score 0 of 0 samples: the allocation chose on nothing, without a word
        raise DataError(f"{_VAL_LOADER} gave no samples; give it at least one (inputs, labels) batch")
    setup, data_digest = _setup_digest(loader, max_batches, specs)
    measured = _measured(specs)
    if resume_from is not None:
        problems = []
        if resume_from.fingerprint != fp:
            problems.append("the model's weights differ")
        if resume_from.val_samples != samples or resume_from.max_batches != max_batches:
            problems.append(
                f"the validation data differ ({resume_from.val_samples} samples then, {samples} now; "
                f"max_batches {resume_from.max_batches} then, {max_batches} now)"
            )
        elif resume_from.setup is not None and resume_from.setup != setup:
            problems += _differences(resume_from, data_digest, data_settings, measured) or [
                "the validation data (e.g. another seed's split) or the analysed entries' settings differ"
            ]
        if list(resume_from.input_shape) != shape:
            problems.append(f"the input shape differs ({resume_from.input_shape} then, {shape} now)")
        if problems:
            raise TargetError(
                f"{RESUME_REFUSED} ({'; '.join(problems)}); "
                "analyse from scratch, or resume with the same model, data, seed and recipe settings"
            )
        dense = {"accuracy": resume_from.dense_accuracy, "loss": resume_from.dense_loss}
        classes = resume_from.classes
    else:
        counts: dict[str, int] = {}
        with interrupted_while("measuring the dense model"):  # Ctrl-C says where the analysis was
            dense = evaluate(model, loader, max_batches, counts=counts)
        classes = counts.get("classes")
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
            # A layer sharing an earlier one's weight (tied) is probed by that row: zeroing the one tensor twice
            # doubled the probes, showed two rankings and two weight counts for one weight, and the allocation
            # gives it the first layer's value anyway (allocation.tied_aliases).
            tied = tied_aliases(selected)
            for name, module in selected.items():
                seen.add(name)
                if name in tied:
                    reason = f"shares its weight with {tied[name]!r} (tied): that row's probes are this weight's"
                    left.append(LeftOut(name=name, type=type(module).__name__, entry=index, reason=reason))
                    continue
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
            if name in plan.heads and spec.ignore is None:
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
    # Every Linear/Conv: one whose weight is computed (weight_norm, spectral_norm) is no prunable layer, yet it may
    # hold most of the MACs; it was named nowhere. Its reason is unselected_layers' (how to make it prunable).
    # An embedding (a text model's largest weight, often) or another weighted module of no prunable kind: validate
    # lists it as left out, and the table said nothing of it. Norms stay unnamed: they are never weights to prune.
    weighted = weighted_layers(model)
    for name, module in model.named_modules():
        listed = name in why_not and not why_not[name].endswith(NORM_REASON)
        if name in seen or not (name in weighted or listed):
            continue
        reason = why_not.get(name, "selected by no analysed entry")
        left.append(LeftOut(name=name, type=type(module).__name__, entry=None, reason=reason))
    table = SensitivityTable(
        dense_accuracy=float(dense["accuracy"]),
        dense_loss=float(dense["loss"]),
        val_samples=samples,
        classes=classes,
        max_batches=max_batches,
        fingerprint=fp,
        setup=setup,
        data_digest=data_digest,
        data_settings=data_settings,
        measured=measured,
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
        achieved = (mask.numel() - count_true(mask)) / mask.numel()
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
    from .tp_adapter import kept_units  # (torch-pruning: imported only where a structured probe runs)

    units = plan.units[row.name]
    if kept_units(units, value) < plan.min_units[row.name]:  # what the probe's removal keeps
        return None, f"would leave fewer than {plan.min_units[row.name] * row.blocks} channel(s) (min_channels)"
    work = copy_model(model)
    ratios = dict.fromkeys(plan.blocks, 0.0)
    ratios[row.name] = value
    try:
        method = _structured_method(
            work, spec, row.entry, shape, verify=False, ratio=value, layer_ratio=ratios, scope="layer", steps=1,
            schedule=ScheduleSpec(),
        )  # fmt: skip
        method.finalize(work)
    except TargetError as err:
        return None, one_line(err, 200)
    channels = num_units(dict(work.named_modules())[row.name])
    metrics = evaluate(work, loader, max_batches)
    initial = int(row.channels or channels)
    return _point(value, (initial - channels) / initial, metrics, table), None
