"""The run report: its typed schema (report.json), and every sentence a user reads about a run.

:class:`Report` is what :func:`sparsekit.pipeline.run_prune` returns and what ``report.json`` holds
(:func:`report_schema`, which the ``report`` command prints, gives its JSON schema). All wording
lives here: the up-front expectation (:func:`what_it_buys`), the headline (:func:`summarize`: the
recipe, asked vs achieved per entry and per layer, dense -> pruned figures with their verdicts, which
report.json holds as ``summary``), the notes (:func:`notes`: only what the headline does not say), the
terminal summary (:func:`render_summary`), ``report.md`` (:func:`render_markdown`) and the PNG plots.
``sparsekit report DIR`` re-renders the last two from report.json.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SparsekitError, one_line, option, printable
from .fsutil import read_regular, write_text
from .wrappers import require_path

ADVICE = (
    "Unstructured zeros make the compressed (gzip) file smaller but do not make onnxruntime's CPU "
    "kernels faster; removing whole neurons/channels (structured pruning, L1 groups) or int8 "
    "quantization is what buys latency."
)


# --------------------------------------------------------------------------- schema


class _Closed(BaseModel):
    """A part of the report whose keys are all listed here."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class _Open(BaseModel):
    """A part whose listed keys are always there; the module that measures it may add more."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, validate_assignment=True)


class ModelInfo(_Closed):
    """The model file that was pruned and the architecture its checkpoint names."""

    path: str = Field(description="MODEL as given")
    factory: str = Field(description="pkg.module:callable that builds the architecture")
    kwargs: dict[str, Any] | None = Field(None, description="keyword arguments of the factory")
    input_shape: list[int] = Field(description="input shape, batch first")


class DataInfo(_Closed):
    """The data source and how many batches each split had."""

    source: str
    train_batches: int = Field(
        description="batches of data.batch_size in the training split, all processes together (under torchrun each "
        "process stepped train_batches / processes of them per epoch, rounded up)"
    )
    val_batches: int
    processes: int = Field(1, description="training processes (torchrun ranks); each trained 1/processes of the data")
    val_samples: int | None = Field(
        None, description="validation samples the accuracies were measured on; null in reports written before it"
    )
    classes: int | None = Field(None, description="the model's outputs (classes); null in reports written before it")
    device: str = Field("cpu", description="where the model trained (cpu, cuda:0, ...)")
    normalize: str | None = Field(
        None,
        description="the recipe's data.normalize: the preprocessing the built-in image sources got (none: pixels "
        "scaled to [0, 1]; standard: also standardized); .npz files and callables are used as given. Null in "
        "reports written before it existed",
    )


class Latency(_Open):
    """onnxruntime latency at one batch size, in milliseconds."""

    p50: float
    p90: float
    p99: float


class Result(_Closed):
    """The dense or the pruned model: accuracy on the validation split, counts, ONNX file sizes
    (external data included) and, when benchmarked, latency per batch size (keys are batch sizes)."""

    accuracy: float = Field(description="top-1 accuracy on the validation split, 0..1")
    loss: float = Field(description="mean cross-entropy on the validation split")
    params: int = Field(description="all parameters of the model as saved")
    nonzero_params: int
    sparsity: float = Field(description="fraction of zeros among the weights of prunable layers")
    macs: int | None = Field(None, description="multiply-accumulates per sample, dense count")
    effective_macs: int | None = Field(None, description="MACs of nonzero weights only")
    onnx_bytes: int = Field(
        description="ONNX file size in bytes, external data included, with dense initializers (dense.onnx; the "
        "pruned model as exported, so dense and pruned compare like with like): model.onnx on disk is this file "
        "unless storage.encoding is sparse, whose size is storage.bytes"
    )
    onnx_gzip_bytes: int = Field(description="the same file gzipped (at storage.gzip_level), bytes")
    onnx_params: int = Field(description="weights stored in the ONNX file (quantized ones included)")
    onnx_nonzero_params: int
    bytes_per_nonzero: float | None = Field(None, description="onnx_bytes / onnx_nonzero_params (biases included)")
    gzip_bytes_per_nonzero: float | None = Field(
        None, description="onnx_gzip_bytes / onnx_nonzero_params (biases included)"
    )
    entropy_estimate_bytes: int | None = Field(
        None,
        description="estimated information in the weights, bytes (sparsekit.onnx.weight_entropy): each tensor's zero "
        "mask at its entropy plus the nonzero values at their measured per-tensor (zeroth-order) entropy. An estimate, "
        "not a bound: a compressor that finds structure between weights (repeated rows, zero blocks, value runs) "
        "can go below it. Null in reports written before it had this name",
    )
    entropy_bound_bytes: int = Field(
        description="the same number as entropy_estimate_bytes under its former name, kept for readers of older "
        "reports: it was never a bound on the gzip size"
    )
    verbatim_bound_bytes: int | None = Field(
        None,
        description="zero masks at their entropy, nonzero values verbatim (all their bits): a floor for the raw "
        "(uncompressed) bytes of encodings that store values as they are; gzip, which compresses the values' "
        "exponents, can land below it",
    )
    opset: int | None = Field(None, description="ONNX opset of the written file, read back from it")
    exporter: str | None = Field(None, description="the exporter that wrote it: dynamo or torchscript")
    export_fallback: str | None = Field(None, description="why another exporter than the recipe's was used")
    tracer_warnings: list[str] = Field(
        default_factory=list,
        description="what the TorchScript tracer warned about while writing the file (a data-dependent branch or "
        "Python value baked in): the file may follow only the path the example input took; empty for dynamo",
    )
    latency_ms: dict[str, Latency] = Field(default_factory=dict)
    throughput_per_s: dict[str, float] = Field(default_factory=dict)


class EntryAim(_Closed):
    """One more pruning entry's asked vs achieved on a layer row (``Layer.others``): as the row's own fields."""

    entry: int
    method: str
    measure: str
    asked: float | None = None
    achieved: float | None = None
    reason: str | None = None


class Layer(_Closed):
    """One prunable layer (Linear/Conv): weight shape, counts, sparsity and MACs per sample."""

    name: str
    type: str
    shape: list[int]
    params: int = Field(description="the layer's weights (its weight tensor; the bias is not counted, as sparsity "
                        "is over weights: `sparsekit inspect` counts weight + bias)")  # fmt: skip
    nonzero_params: int = Field(description="nonzero weights (of params)")
    sparsity: float
    macs: int | None = None
    effective_macs: int | None = None
    # Set on report.json's layers (the pruned model's) by fill_layer_aims: which pruning entry selected the layer
    # and its asked vs achieved there (fractions of weights zero, or of output channels removed / units zero;
    # asked null when that entry sets no per-layer target), with why they differ. Null for a layer no entry selects.
    entry: int | None = None
    measure: str | None = None
    asked: float | None = None
    achieved: float | None = None
    reason: str | None = None
    others: list[EntryAim] | None = Field(
        None,
        description="where several pruning entries select this layer, the others' asked vs achieved (the row's own "
        "fields are the first entry stating a per-layer target, else the first entry); null where one or none does",
    )


def fill_layer_aims(report: Report) -> None:
    """Put each pruning entry's asked vs achieved on the rows of ``report.layers`` it selected (the first entry
    stating a per-layer target on the row itself where several select a layer, else the first entry; the others
    under ``others``, in entry order)."""
    outcomes = _outcomes(report.methods, report.recipe, report.dense_layers, report.layers, report.recipe_asked)[0]
    rows = {r.name: r for r in report.layers}
    found: dict[str, list[EntryAim]] = {}
    for o in outcomes:
        for aim in o.layers:
            if aim.name in rows:
                found.setdefault(aim.name, []).append(
                    EntryAim(
                        entry=o.entry,
                        method=o.method,
                        measure=o.measure,
                        asked=aim.asked,
                        achieved=aim.achieved,
                        reason=aim.reason,
                    )
                )
    for name, aims in found.items():
        first = next((a for a in aims if a.asked is not None), aims[0])
        row = rows[name]
        row.entry, row.measure, row.asked, row.achieved, row.reason = (
            first.entry,
            first.measure,
            first.asked,
            first.achieved,
            first.reason,
        )
        row.others = [a for a in aims if a is not first] or None


class Epoch(_Open):
    """One fine-tuning epoch: sparsity reached, mean train loss, validation accuracy, learning rate."""

    epoch: int | float = Field(description="from 1; fractional when a run reports part of an epoch")
    sparsity: float
    train_loss: float
    val_accuracy: float
    lr: float
    params: int | None = Field(None, description="parameters left after the epoch (falls as channels are removed)")


class Parity(_Open):
    """ONNX output against torch output on the same seeded inputs (batches of 1, 3 and 4)."""

    max_abs_diff: float | None = Field(
        description="max |onnx - torch|; null when the outputs are not finite or could not be compared"
    )
    ok: bool
    error: str | None = Field(None, description="why the outputs could not be compared (onnxruntime failed, shapes)")
    max_abs_output: float | None = Field(
        None, description="the largest |torch output| on those inputs: the scale the relative tolerance applies to"
    )


class ZeroCheck(_Open):
    """One prunable weight: its exact zero count in torch and in the ONNX file."""

    name: str
    torch_zeros: int
    onnx_zeros: int | None
    ok: bool


class DeadUnits(_Closed):
    """Units (rows/channels) left all-zero by L1: how many were found and how many had to stay."""

    found: int
    kept: int


class LayerAim(_Closed):
    """One selected layer: the fraction asked (weights zeroed, or output channels removed for
    ``structured``; null when the method ranks globally), the fraction achieved, and why they differ."""

    asked: float | None = None
    achieved: float
    reason: str | None = None


class MethodResult(_Open):
    """What one ``pruning`` entry did; each method adds its own keys (see its ``report()``).

    ``asked`` / ``achieved``: over all the layers the entry selected, the fraction asked and reached
    (weights zeroed; output channels removed for ``structured``); ``per_layer``: the same per layer."""

    method: str
    layers: list[str]
    target_sparsity: float | None = None
    asked: float | None = None
    achieved: float | None = None
    reason: str | None = Field(None, description="why achieved falls short of asked, when it does")
    per_layer: dict[str, LayerAim] = Field(default_factory=dict)
    dead_units: DeadUnits | None = None
    channels: dict[str, list[int]] | None = Field(
        None,
        description="structured, and l1 after remove_dead: [output channels (units) at the start, now] per selected "
        "layer",
    )
    tied: dict[str, str] | None = Field(
        None, description="a layer sharing an earlier selected layer's weight (tied) -> that layer: counted once"
    )


class Speedup(_Closed):
    """Latency ratio (other / dense, p50) at one batch size, with the noise measured in the same run. Despite
    the key's name (``speedup``, kept so report.json readers keep working) ``ratio`` is a time ratio: below 1
    is faster, 0.5 runs in half the time (a 2x speedup), 1.66 is slower."""

    ratio: float = Field(description="p50 latency of this file / the dense file's: below 1 is faster")
    spread: list[float]
    noise: float = Field(
        description="half-width of the band within which a ratio is not a change: the A/A control's distance "
        "from 1, the ratio's own block spread, and never under 1/0.95 - 1 = 0.0526, so that every ratio from 0.95 "
        "to 1.05 lies inside (two sessions of one file differ that much)"
    )
    aa_ratio: float = Field(description="the A/A control: the dense file timed against itself")
    significant: bool


class Benchmark(_Closed):
    """How latency was measured (onnxruntime threads, timed runs, warm-up runs, provider) and the
    pruned/dense speedup per batch size with the A/A control per batch size."""

    threads: int
    runs: int = Field(description="the most timed runs per model and batch size")
    warmup: int
    provider: str
    speedup: dict[str, Speedup] = Field(
        description="per batch size, the pruned file's latency as a ratio of dense (below 1 is faster)"
    )
    control: dict[str, dict[str, Any]]
    runs_done: dict[str, int] | None = Field(
        None,
        description="timed runs per model at each batch size (fewer than runs when the time budget ran out or the "
        "ratios were known to within precision)",
    )
    budget_s: float | None = Field(None, description="seconds of timed runs per model and batch size (null: none)")
    precision: float | None = Field(
        None,
        description="the early-stop setting: timing could stop once every ratio was known to within this fraction "
        "(null: off); runs_done says whether it did",
    )


def _runs_words(b: Benchmark) -> str:
    """``"200 timed runs"``, or the runs each batch size did when the budget or the precision stopped them."""
    done = b.runs_done or {}
    if not done or all(n == b.runs for n in done.values()):
        return f"{b.runs} timed runs"
    per = ", ".join(f"{n} at batch {bs}" for bs, n in done.items())
    return f"timed runs per model: {per} (of at most {b.runs})"


class Int8(_Open):
    """The int8 (QDQ) model: sizes, whether every pruned zero stayed zero, and accuracy when data was given."""

    path: str
    mode: str
    onnx_bytes: int
    onnx_gzip_bytes: int
    entropy_estimate_bytes: int | None = Field(None, description="as in Result")
    entropy_bound_bytes: int = Field(description="former name of entropy_estimate_bytes, as in Result")
    zeros: dict[str, Any]
    eval: dict[str, Any] | None = None
    fallback: str | None = Field(None, description="why per-tensor scales were used instead of per-channel")
    latency_ms: dict[str, Latency] = Field(default_factory=dict)
    throughput_per_s: dict[str, float] = Field(default_factory=dict)
    speedup: dict[str, Speedup] | None = Field(
        None, description="per batch size, the int8 file's latency as a ratio of dense fp32 (below 1 is faster)"
    )


class StoredSizes(_Closed):
    """One candidate encoding of model.onnx: raw and gzip bytes (at the run's gzip level, ``Storage.gzip_level``),
    external data included."""

    bytes: int
    gzip_bytes: int
    sparse_initializers: int | None = Field(None, description="weights stored as sparse initializers")
    onnx_checker_ok: bool | None = Field(None, description="onnx.checker accepts the file")


class Storage(_Closed):
    """How the shipped model.onnx stores its weights (``export.sparse_storage``), what each candidate
    weighs after gzip, and how close the shipped file comes to the weights' entropy bound. The run
    itself (parity, int8, benchmark) used the dense file; a sparse one gives bit-identical outputs."""

    mode: Literal["auto", "sparse", "dense"]
    encoding: Literal["sparse", "dense"] = Field(description="what model.onnx holds")
    reason: str = Field(description="why this encoding")
    path: str
    bytes: int = Field(description="model.onnx as shipped, bytes")
    gzip_bytes: int
    gzip_level: int = Field(
        9,
        description="the gzip level of every size in the run: the dense ONNX file's (9 up to 16 MiB, else 6), "
        "so a smaller file is counted at the same level as the one it is set against",
    )
    dense: StoredSizes
    sparse: StoredSizes | None = Field(None, description="the sparse candidate; null when none was built")
    entropy_estimate_bytes: int | None = Field(
        None, description="as in Result: masks and values at their measured entropy (an estimate, not a bound)"
    )
    estimate_ratio: float | None = Field(None, description="gzip_bytes / entropy_estimate_bytes")
    entropy_bound_bytes: int = Field(description="former name of entropy_estimate_bytes")
    verbatim_bound_bytes: int = Field(
        description="masks at their entropy, nonzero values verbatim: a floor for raw (uncompressed) bytes"
    )
    raw_verbatim_ratio: float | None = Field(
        None, description="bytes / verbatim_bound_bytes: how close the raw file comes to its floor (>= 1)"
    )
    bound_ratio: float | None = Field(None, description="former name of estimate_ratio")
    verbatim_bound_ratio: float | None = Field(
        None,
        description="gzip_bytes / verbatim_bound_bytes: compressed over a floor for uncompressed bytes, so it may be "
        "below 1; kept for readers of older reports",
    )
    outputs_identical: bool | None = Field(
        description="onnxruntime outputs bit-identical to the dense file's; null when no input could be made"
    )


class SparseStorage(_Open):
    """``model.sparse.onnx``: sizes in bytes before and after storing initializers as sparse tensors."""

    path: str
    bytes_before: int
    bytes_after: int


class Timings(_Closed):
    """Wall time of a run by phase, in seconds: ``load`` (model file and its checks), ``data``,
    ``plan`` (allocation, rehearsal), ``dense_eval``/``pruned_eval`` (accuracy and counts), ``finetune``
    (pruning while fine-tuning, finalize), ``save``, ``export`` (both ONNX files), ``checks`` (parity,
    zeros), ``int8``, ``sizes``, ``bench``, ``storage`` (choosing how model.onnx stores its weights),
    ``report`` (notes, plots), ``free`` (releasing the torch model before onnxruntime runs); phases a run
    skips are absent. Process start-up and imports come before the run and are not in ``total``."""

    seconds: dict[str, float]
    total: float = Field(description="from the start of the run to the report, seconds")
    untimed: float | None = Field(
        None,
        description="total minus the sum of the phases, seconds: the steps between phases (the output folder, the "
        "run's provenance, building the report), so the phases and this add up to total. Null in older reports",
    )
    outside_finetune: float = Field(description="total minus finetune, seconds")
    outside_finetune_ratio: float | None = Field(
        description="everything but fine-tuning over fine-tuning: outside_finetune / seconds.finetune (None "
        "without fine-tuning (finetune.epochs 0: the finetune phase is then only the pruner's set-up and finalize), "
        "and on a resumed run: see resumed_after_epoch); 1.0 means the run costs twice its "
        "fine-tuning"
    )
    resumed_after_epoch: int | None = Field(
        None,
        description="the run was resumed from a checkpoint holding this many finished epochs: seconds and total are "
        "the resuming process's, whose finetune covers only the epochs after it (the earlier ones ran in an earlier "
        "process), while every other phase ran in full. Null for a run that trained every epoch in one process",
    )


class Change(_Closed):
    """One figure of the dense and the pruned model, their ratio (pruned / dense) and the plain word for
    the change (``smaller``/``bigger``/``same size``, ``fewer``/``more``/``same``, ``more accurate``/
    ``less accurate``/``same accuracy``)."""

    dense: float | None
    pruned: float | None
    ratio: float | None = None
    verdict: str


class LatencyChange(_Closed):
    """p50 latency at one batch size against the dense model: the ratio, the noise band measured in the
    same run (a ratio inside ``band`` = [1 / (1 + noise), 1 + noise] is not a change) and the verdict:
    ``faster``, ``slower`` or ``within noise``."""

    dense_ms: float | None
    ms: float | None
    ratio: float
    noise: float
    band: list[float]
    verdict: Literal["faster", "slower", "within noise"]


class LayerOutcome(_Closed):
    """One layer a pruning entry selected: the fraction asked (null when the entry sets no per-layer target)
    and achieved (weights zero, or output channels removed), and output channels kept of the layer's own at the
    start when units were removed."""

    name: str
    asked: float | None
    achieved: float
    channels_kept: int | None = None
    channels_total: int | None = None
    reason: str | None = None


class MethodOutcome(_Closed):
    """One ``pruning`` entry: what the recipe asked (``target``, in words), what it measures, asked vs
    achieved over the layers it selected (``asked`` null when it sets no target) and per layer,
    ``nothing``: it achieved nothing of what it is for, and ``remarks``: plain words on what fell short."""

    entry: int
    method: str
    target: str
    measure: Literal["weights zero", "output channels removed", "units zero", "constraint"]
    asked: float | None
    achieved: float | None
    channels_kept: int | None = None
    channels_total: int | None = None
    # group l1: layers whose units are another layer's (a residual add, a depthwise conv), counted once in achieved
    coupled: int = 0
    # ratio: auto: sparsekit chose the ratio (``asked``) for the entry's MACs or latency target
    allocated: bool = False
    nothing: bool = False
    remarks: list[str] = Field(default_factory=list)
    layers: list[LayerOutcome]


class TargetCheck(_Closed):
    """One target a ``pruning`` entry states, checked when the run ends (:func:`check_targets`).

    ``target``: the recipe field (``sparsity``, ``ratio``, ``target``, ``target_macs``,
    ``target_latency``, ``max_value``; ``effect`` for an entry with no number that achieved nothing);
    ``asked`` / ``achieved``: fractions (of weights zeroed, of output channels removed; ratios to the
    dense model for ``target_macs`` / ``target_latency``; the largest unit norm for ``max_value``);
    ``tolerance``: how far from ``asked`` still counts as met: either side of it for the targets to reach
    (``sparsity``, ``ratio``, ``target``: rounding to whole weights, channels or channel blocks; short of it only
    for ``l1``, whose zeros come from training), above it for
    the ceilings (``target_macs``, ``target_latency`` (latency noise), ``max_value``), where anything below
    is met; ``met``; ``message``: the warning when not met."""

    entry: int
    method: str
    target: str
    asked: float | None
    achieved: float | None
    tolerance: float
    met: bool
    message: str = ""


#: How far below its asked sparsity an unstructured entry may end and still count as met: the rounding
#: of a fraction to whole weights, per layer.
SPARSITY_TOLERANCE = 0.005
# How far above target_macs (a fraction of it) the MACs reached still meet it (allocation aims within it too).
MACS_OVER_TOLERANCE = 0.02


class Int8Outcome(_Closed):
    """The int8 model against the dense fp32 one: sizes, accuracy against the pruned fp32 model, latency."""

    onnx_bytes: Change
    onnx_gzip_bytes: Change
    accuracy: Change | None = Field(None, description="dense: the fp32 pruned model's accuracy on the same samples")
    latency: dict[str, LatencyChange] = Field(default_factory=dict)
    vs_pruned_fp32: dict[str, float] = Field(
        default_factory=dict,
        description="per batch size, int8 p50 latency / the pruned fp32 model's (same benchmark run); above 1: "
        "int8 is slower than not quantizing",
    )
    vs_pruned_fp32_verdict: dict[str, str] = Field(
        default_factory=dict,
        description="per batch size, vs_pruned_fp32 in words (faster / slower / within noise), against the larger "
        "of the two ratios' measured noise",
    )


class Summary(_Closed):
    """What the terminal summary and report.md lead with, as data: the recipe in words, asked vs achieved
    per entry and per layer, the layers no entry prunes, and dense -> pruned accuracy, MACs, sizes and
    latency, each with its plain-word verdict. ``whole_model_sparsity`` counts every prunable layer, the
    excluded ones too, which is why it can differ from the ``achieved`` of the entries."""

    recipe: list[str]
    data: str = Field("", description="the data source and its preprocessing (data.normalize), in words")
    methods: list[MethodOutcome]
    excluded: list[str] = Field(description="prunable layers no pruning entry prunes")
    excluded_why: dict[str, str] = Field(
        default_factory=dict,
        description="an excluded layer an entry selected but left out -> why (the classifier head kept whole by "
        "structured's ignore or left out by group lasso, ...); a layer not in it is one no pruning entry selects",
    )
    accuracy: Change
    macs: Change | None = None
    effective_macs: Change | None = None
    params: Change
    whole_model_sparsity: Change
    onnx_bytes: Change
    onnx_gzip_bytes: Change
    latency: dict[str, LatencyChange] = Field(default_factory=dict)
    int8: Int8Outcome | None = None
    targets: list[TargetCheck] = Field(
        default_factory=list, description="every target the recipe states, checked at the end (see TargetCheck)"
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="one line per target missed beyond its tolerance, and one when accuracy fell to chance level (an "
        "error with strict)",
    )


class Report(_Closed):
    """report.json of a ``sparsekit prune`` run. Keys of ``latency_ms``, ``speedup`` and the like are
    batch sizes as strings (JSON object keys)."""

    schema_version: Literal[1] = Field(1, alias="schema")
    summary: Summary | None = Field(
        None, description="the headline, derived from the rest (see Summary); null in reports written before it"
    )
    model: ModelInfo
    data: DataInfo
    dense: Result
    pruned: Result
    layers: list[Layer] = Field(description="prunable layers of the pruned model")
    dense_layers: list[Layer]
    history: list[Epoch] = Field(description="one row per fine-tuning epoch")
    parity: Parity
    dense_parity: Parity
    zeros_preserved: bool = Field(description="every pruned weight is still exactly zero in model.onnx")
    zeros: list[ZeroCheck]
    methods: list[MethodResult]
    recipe: dict[str, Any] = Field(description="the resolved recipe, overrides applied")
    recipe_asked: list[dict[str, Any]] | None = Field(
        None,
        description="the recipe's pruning section as written, when sparsity: auto / ratio: auto entries were "
        "allocated per layer (recipe then holds the allocated values); its targets are the ones checked",
    )
    versions: dict[str, str]
    int8: Int8 | None = None
    sparse_storage: SparseStorage | None = Field(
        None,
        description="reports of runs before `storage` (model.sparse.onnx beside model.onnx); kept to re-render them",
    )
    storage: Storage | None = Field(None, description="the encoding of the shipped model.onnx and its sizes")
    benchmark: Benchmark | None = None
    expectation: str = Field(description="what this recipe can buy, said before the run")
    notes: list[str] = Field(default_factory=list)
    plots: list[str] = Field(default_factory=list)
    timings: Timings | None = None

    def to_json(self) -> dict[str, Any]:
        """report.json's content: plain JSON types, ``schema`` spelled as in the file."""
        return self.model_dump(mode="json", by_alias=True)


def report_schema() -> dict[str, Any]:
    """The JSON schema of report.json (draft 2020-12)."""
    return Report.model_json_schema(by_alias=True)


def load_report(path: str | Path) -> Report:
    """Read a report.json, or the one in a prune run's output folder (``load_report("out")``, as
    ``sparsekit report out`` takes it). Raises :class:`~sparsekit.errors.SparsekitError` naming the file and
    the first field at fault when it is missing, not JSON, or not a report sparsekit wrote; TypeError when ``path`` is
    not a path."""
    require_path(path, "load_report(path=...)")
    src = Path(path)
    if src.is_dir():
        # The run's folder is what prune's -o and `sparsekit report DIR` name: it said "out: not found; run
        # sparsekit's prune first" about a folder that exists and holds the finished run.
        src = src / "report.json"
        if not src.exists():
            # The folder a run writes is the command's -o and run_prune's out=: each caller's own word for it.
            raise SparsekitError(
                f"{src}: not found: {path} holds no finished prune run (the {option('output')} folder of one has it)"
            )
    if not src.is_file():
        if src.exists():  # a pipe or a device: "not found" sent the user looking for a file that is there
            raise SparsekitError(
                f"{src}: is not a regular file (a folder, device, pipe or socket); give the report.json itself"
            )
        raise SparsekitError(f"{src}: not found; run sparsekit's prune first")
    try:
        data = json.loads(read_regular(src).decode("utf-8"))
    except RecursionError:
        raise SparsekitError(f"{src}: nested too deeply to be a report.json written by sparsekit; {_DAMAGED}") from None
    except (ValueError, OSError) as err:  # not JSON, not UTF-8, an integer of over 4,300 digits
        # A report.json cut short (a full disk, a copy stopped half-way) said only where the JSON broke: the line
        # names nothing to do, and no command rebuilds the file from the rest of the folder.
        raise SparsekitError(f"{src}: not valid JSON ({one_line(err, 120)}); {_DAMAGED}") from None
    try:
        return Report.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        other = _other_version(data, first["type"])
        if other:
            raise SparsekitError(f"{src}: {other} ({where}: {first['msg']})") from None
        raise SparsekitError(
            f"{src}: not a report.json written by sparsekit prune ({where}: {first['msg']}); run prune again"
        ) from None


_DAMAGED = (
    "the file is damaged (cut short or edited) and only a prune run writes one: put back the run's own copy, "
    "or run prune again"
)


def _other_version(data: Any, error: str) -> str:
    """Why a report.json that fails validation may be sound: written by a newer sparsekit (a higher ``schema``) or
    by another version whose report holds a field this one does not know. ``run prune again`` was the advice there,
    which repeats a whole run (hours of fine-tuning) where upgrading sparsekit reads the file as it is. "" otherwise.
    """
    from . import __version__

    if not isinstance(data, dict):
        return ""
    schema = data.get("schema")
    versions = data.get("versions")
    wrote = versions.get("sparsekit") if isinstance(versions, dict) else None
    by = f"sparsekit {printable(str(wrote))[:40]}" if isinstance(wrote, str) and wrote else "a newer sparsekit"
    if wrote == __version__:  # this very version writes schema 1 and knows its fields: the file was altered
        return ""
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > 1:
        return (
            f"written by {by} in report schema {schema}, which this sparsekit ({__version__}) cannot read: it reads "
            "schema 1; read or re-render it with a sparsekit that reads that schema (pip install -U sparsekit)"
        )
    if error == "extra_forbidden" and schema == 1 and isinstance(wrote, str) and wrote:
        return (
            f"written by {by}, whose report holds a field this sparsekit ({__version__}) does not know; read or "
            f"re-render it with sparsekit {printable(wrote)[:40]} (or a newer one than both: pip install -U sparsekit)"
        )
    return ""


# --------------------------------------------------------------------------- wording


def what_it_buys(recipe: Any) -> str:
    """Say plainly, before the run, what this recipe's sparsity can buy on onnxruntime's CPU kernels,
    from what each entry says it does (``spec.effects()`` in :mod:`sparsekit.recipe`)."""
    effects: set[str] = set().union(*(spec.effects() for spec in recipe.pruning))
    structural = "units" in effects
    parts = []
    if "zeros" in effects:
        parts.append("unstructured zeros shrink the compressed (gzip) file but not onnxruntime CPU latency")
    if not structural and "some_units" in effects:
        parts.append("neurons whose weights all reach zero are removed, which buys latency only if many do")
    if structural:
        parts.append("removing whole neurons/channels shrinks the model and its latency (up to the MACs ratio)")
    if recipe.export.quantize == "int8":
        parts.append(
            "int8 quantization cuts size about 4x, and latency where onnxruntime's int8 kernels beat fp32 (MLPs "
            "more often than CNNs; compared with the pruned fp32 model in the results)"
        )
    if not parts:
        parts.append("no method here creates zeros or removes units: expect no size or latency change")
    return "What this recipe can buy: " + "; ".join(parts) + "."


# --------------------------------------------------------------------------- the headline (Summary)

SIZE = ("smaller", "bigger", "same size")
COUNT = ("fewer", "more", "same")
ACCURACY = ("less accurate", "more accurate", "same accuracy")
NORMALIZE = {
    "none": "pixels scaled to [0, 1], not standardized",
    "standard": "pixels scaled to [0, 1], then standardized with the source's mean and std",
}
BUILT_IN_IMAGES = ("digits", "mnist5k")


def noise_band(noise: float) -> list[float]:
    """The latency ratios that are no change, ``[1 / (1 + noise), 1 + noise]``: log-symmetric, the way
    the benchmark (:mod:`sparsekit.onnx.bench`) calls a ratio significant."""
    return [1 / (1 + noise), 1 + noise]


def latency_verdict(ratio: float, noise: float) -> Literal["faster", "slower", "within noise"]:
    """The word for a latency ratio (other / dense, p50) given the noise measured in the same run (a
    :class:`Speedup`'s ``noise``): ``within noise`` inside :func:`noise_band`, else ``faster`` or ``slower``.

    >>> latency_verdict(1.28, 0.05), latency_verdict(0.9, 0.2), latency_verdict(0.5, 0.1)
    ('slower', 'within noise', 'faster')
    """
    lo, hi = noise_band(noise)
    if lo <= ratio <= hi:
        return "within noise"
    return "faster" if ratio < 1 else "slower"


def _change(dense: float | None, pruned: float | None, words: tuple[str, str, str], *, ratio: bool = True) -> Change:
    """``words``: what to say when the pruned figure is lower, higher, equal. ``ratio=False`` for a fraction
    (sparsity), where pruned / dense means nothing: one zero in a 32M-weight dense model made it 29,048,832x."""
    if dense is None or pruned is None:
        return Change(dense=dense, pruned=pruned, verdict="not measured")
    lower, higher, same = words
    verdict = same if pruned == dense else lower if pruned < dense else higher
    return Change(dense=dense, pruned=pruned, ratio=pruned / dense if dense and ratio else None, verdict=verdict)


def _latency(dense: Result, latency: dict[str, Latency], speedup: dict[str, Speedup]) -> dict[str, LatencyChange]:
    out = {}
    for bs, s in speedup.items():
        d, o = dense.latency_ms.get(bs), latency.get(bs)
        out[bs] = LatencyChange(
            dense_ms=d.p50 if d else None,
            ms=o.p50 if o else None,
            ratio=s.ratio,
            noise=s.noise,
            band=noise_band(s.noise),
            verdict=latency_verdict(s.ratio, s.noise),
        )
    return out


def _names(names: list[str], limit: int = 6) -> str:
    # A layer name may hold a line break (add_module accepts one, an edited report.json too): in a summary line it
    # would start a new line, in report.md a heading or list item of its own.
    names = [" ".join(str(n).splitlines()) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit - 1]) + f", ... ({len(names)} layers)"


def _when(schedule: Any) -> str:
    if not isinstance(schedule, dict):
        return ""
    start, end = float(schedule.get("start_epoch", 0)), float(schedule.get("end_epoch", 0))
    if start == end:
        return "all at once" + (f" at epoch {start:g}" if start else " at the start")
    return f"from epoch {start:g} to {end:g}"


def target_words(spec: dict[str, Any], row: MethodResult | None = None) -> str:
    """What one ``pruning`` entry of the resolved recipe asks, in words (``row``: its report row, for
    an entry the recipe no longer shows)."""
    method = spec.get("method") or (row.method if row else "")
    when = _when(spec.get("schedule"))
    when = f", {when}" if when else ""
    if method in ("magnitude", "gradient"):
        value = spec.get("sparsity", row.target_sparsity if row else None)
        if value == "auto":
            value = spec.get("target")
        how = f"{spec.get('criterion', 'taylor')} saliency, " if method == "gradient" else ""
        scope = (
            "ranked globally (no per-layer target: layers end at different sparsities)"
            if spec.get("scope", "global") == "global"
            else "each layer on its own"
        )
        own = spec.get("layer_sparsity") or {}
        own_words = f"; own values for {len(own)} layer(s) (layer_sparsity)" if own else ""
        total = "–" if value is None else f"{float(value):.3f}"
        return f"sparsity {total} of the selected weights, {how}{scope}{own_words}{when}"
    if method == "structured":
        ratio = spec.get("ratio", row.model_extra.get("ratio") if row and row.model_extra else None)
        scope = "ranked globally" if spec.get("scope") == "global" else "each layer on its own"
        extra = [f"{spec.get('importance', 'l2')} importance", f"{spec.get('steps', 1)} step(s)"]
        own = spec.get("layer_ratio") or {}
        # layer_ratio layers keep the exact count their fraction gives: rounding speaks only of the other groups
        # (their roots; a layer coupled to a root follows it).
        roots = (row.model_extra or {}).get("roots") if row else None
        units = roots if isinstance(roots, list) and roots else (row.layers if row else [])
        rounded = not units or any(name not in own for name in units)
        if spec.get("round_to") and spec["round_to"] > 1 and rounded:
            r = int(spec["round_to"])
            # Layers narrower than the multiple they could keep are not rounded at all (tp_adapter.alignment): an
            # 8-channel layer keeps 4 under round_to 16, which "8 in layers narrower than 32" seemed to forbid.
            half = (
                f" ({r // 2} in layers {r} to {2 * r - 1} wide; narrower ones are not rounded)"
                if r % 2 == 0 and r > 2
                else f" (layers narrower than {2 * r} are not rounded)"
            )
            extra.append(f"kept channels rounded to multiples of {r}{half}")
        if spec.get("target_macs"):
            extra.append(f"ratios chosen for MACs {spec['target_macs']:g}x")
        if spec.get("target_latency"):
            extra.append(f"ratios chosen for latency {spec['target_latency']:g}x")
        if own:
            extra.append(f"own ratios for {len(own)} layer(s), their counts kept as given")
        if ratio == "auto" and (spec.get("target_macs") or spec.get("target_latency")):
            aim = (
                f"MACs {spec['target_macs']:g}x" if spec.get("target_macs") else f"latency {spec['target_latency']:g}x"
            )
            # (the per-layer ratios are the allocation's, not the user's layer_ratio)
            extra = [e for e in extra if not e.startswith(("ratios chosen for", "own ratios for"))]
            return f"remove output channels down to {aim} of dense, {scope} ({', '.join(extra)}){when}"
        value = "–" if ratio in (None, "auto") else f"{float(ratio):.3f}"
        return f"remove {value} of the output channels, {scope} ({', '.join(extra)}){when}"
    if method == "l1":
        group = spec.get("group", "none")
        unit = {"row": "rows (neurons)", "channel": "channels"}.get(group, "weights")
        lam = f"{spec.get('mode', 'penalty')} L1, lambda {spec.get('strength', 0):g}" + (
            f", group lasso over {unit}" if group != "none" else ""
        )
        if spec.get("target") is not None:
            words = (
                f"{float(spec['target']):.3f} of the {unit} zero by epoch "
                f"{(spec.get('schedule') or {}).get('end_epoch', 0):g} ({lam}, adapted on the way)"
            )
        else:
            threshold = spec.get("threshold") or 0
            if threshold:
                words = f"no target (the zeros come from training): {lam}; {unit} under {threshold:g} zeroed at the end"
            elif spec.get("mode", "penalty") == "penalty":
                # (a threshold of 0 zeroes nothing, and a penalty makes no exact zeros itself)
                words = f"no target, no threshold: {lam} (a penalty makes no exact zeros)"
            else:
                words = f"no target (the zeros come from training): {lam}; its exact zeros only (no threshold)"
        return words + ("; all-zero units removed" if spec.get("remove_dead") else "")
    if method == "max_norm":
        limit = spec.get("max_value", 0)
        return f"a constraint, no sparsity target: each unit's incoming weight norm at most {limit:g}"
    target = row.target_sparsity if row else None
    return f"sparsity {target:.3f}" if target is not None else "no target stated"


def _l1_advice(spec: dict[str, Any], epochs: Any = None) -> str:
    """What to change in an l1 entry that zeroed nothing. A penalty's subgradient makes no exact zeros, so without a
    threshold or a target no strength would have zeroed anything: "raise strength" sent users round in circles. Nor
    would it with no fine-tuning (``epochs``: the recipe's ``finetune.epochs``, 0): l1 then takes no step at all."""
    if epochs == 0:
        fix = "raise threshold" if spec.get("threshold") else "set threshold"
        return (
            "with no fine-tuning (finetune.epochs: 0) l1 takes no step, so no strength zeroes anything: give it "
            f"fine-tuning epochs, or {fix} (what lies below it is zeroed at the end)"
        )
    if spec.get("mode", "penalty") == "penalty" and not spec.get("threshold") and spec.get("target") is None:
        return (
            "a penalty makes no exact zeros and no threshold was set, so no strength zeroes anything: set threshold "
            "(what ends below it is zeroed), use mode: proximal, or set target (the fraction to reach)"
        )
    return "raise strength, or set target (the fraction to reach)"


def _unit_norm_maxima(m: MethodResult) -> list[float]:
    """A max_norm entry's largest unit norm per layer: from its ``norms`` (``{layer: {"max", "mean"}}``), or from
    the layer-named keys of reports written before it gave ``asked`` / ``achieved`` / ``per_layer``."""
    extra = m.model_extra or {}
    own = extra.get("norms")
    rows: dict[str, Any] = own if isinstance(own, dict) else extra
    return [float(v["max"]) for v in rows.values() if isinstance(v, dict) and "max" in v]


def _channels(m: MethodResult, dense: dict[str, Layer], pruned: dict[str, Layer]) -> dict[str, list[int]]:
    """[output channels at the start, now] per layer of ``m``: the method's own count (structured; l1 after
    remove_dead), else, in reports written before l1 gave it, read off the weight shapes once a layer lost units
    (then every layer of an l1 entry, so its total covers them all)."""
    if m.channels:
        return {n: list(v) for n, v in m.channels.items()}
    out = {}
    for name in m.layers:
        a, b = dense.get(name), pruned.get(name)
        # dim 0 is the output channels of Linear/Conv weights (a ConvTranspose's is its inputs)
        if a and b and a.shape and b.shape and not a.type.startswith("ConvTranspose"):
            out[name] = [a.shape[0], b.shape[0]]
    if not any(a != b for a, b in out.values()):
        return {}
    return out if m.method == "l1" else {n: v for n, v in out.items() if v[0] != v[1]}


def _outcome(
    i: int,
    m: MethodResult,
    spec: dict[str, Any],
    dense: dict[str, Layer],
    pruned: dict[str, Layer],
    epochs: Any = None,
) -> MethodOutcome:
    measure: Literal["weights zero", "output channels removed", "units zero", "constraint"] = "weights zero"
    if m.method in ("structured", "max_norm"):
        measure = "output channels removed" if m.method == "structured" else "constraint"
    elif m.method == "l1" and spec.get("group", "none") != "none":
        measure = "units zero"  # group l1 reports the fraction of its units (rows/channels) at zero
    channels = _channels(m, dense, pruned)
    layers = [
        LayerOutcome(
            name=name,
            asked=aim.asked,
            achieved=aim.achieved,
            channels_kept=channels[name][1] if name in channels else None,
            channels_total=channels[name][0] if name in channels else None,
            reason=aim.reason,
        )
        for name, aim in m.per_layer.items()
    ]
    # The entry's units: every layer it covers, a tied weight's once (as its first layer's); for structured, those
    # its method counts: a layer coupled to another's group (a depthwise conv after its pointwise) loses the same
    # channels, so only that group's are counted.
    extra_fields = m.model_extra or {}
    roots = (extra_fields.get("counted") or extra_fields.get("roots")) if m.method == "structured" else None
    counted = [r for r in roots if r in channels] if isinstance(roots, list) else list(channels)
    if m.method == "l1" and isinstance(members := extra_fields.get("coupled"), dict):
        # group l1's coupled layers (a residual add's) zero and lose their owner's units: counted once, as the
        # ratio it reports counts them
        counted = [name for name in counted if name not in members] or counted
    own = [channels[name] for name in (counted or list(channels)) if name not in (m.tied or {})]
    followers = len(channels) - len(counted) if counted and m.method == "structured" else 0
    kept = sum(v[1] for v in own) if channels else None
    total = sum(v[0] for v in own) if channels else None
    remarks: list[str] = []
    nothing = False
    n = len(m.layers)
    if measure == "output channels removed":
        if m.achieved is not None and m.achieved <= 0:
            nothing = True
            remarks.append(
                f"achieved nothing: removed no output channel of its {n} layer(s)"
                + (f" ({m.reason})" if m.reason else "")
            )
        extra = m.model_extra or {}
        done, events = extra.get("events_done"), extra.get("events")
        if isinstance(done, int) and isinstance(events, int) and done < events:
            remarks.append(f"only {done} of its {events} removal steps ran, so less was asked by the end")
    elif measure == "units zero" and m.achieved is not None and m.achieved <= 0:
        nothing = True
        remarks.append(
            f"achieved nothing: no unit (whole {spec['group']}) of its {n} layer(s) reached zero: none zeroed or "
            f"removed: {_l1_advice(spec, epochs)}"
        )
    elif measure == "weights zero" and m.achieved is not None:
        before = sum(r.params - r.nonzero_params for name in m.layers if (r := dense.get(name)))
        weights = sum(r.params for name in m.layers if (r := dense.get(name)))
        new_zeros = m.achieved * weights - before if weights else m.achieved
        tol = (m.model_extra or {}).get("tolerance")
        tol = float(tol) if isinstance(tol, (int, float)) else SPARSITY_TOLERANCE
        if weights and abs(new_zeros) < 0.5 and m.asked is not None and m.achieved >= m.asked - tol:
            # A model that came already pruned to the target (torch.nn.utils.prune's, then fine-tuned here with its
            # zeros held): nothing was left for the entry to zero. "Target missed ... achieved nothing", an exit 2
            # under --strict, called a target met a miss.
            remarks.append(
                f"zeroed no weight itself: its {n} layer(s) already held {before:,} zeros ({before / weights:.3f}), "
                f"as many as the {m.asked:g} asked"
            )
        elif new_zeros < 0.5 if weights else m.achieved <= 0:
            nothing = True
            had = f" beyond the {before:,} zeros the dense model had" if before else ""
            advice = f": {_l1_advice(spec, epochs)}" if m.method == "l1" else ""
            if m.method == "l1" and spec.get("group", "none") != "none":
                what = f"no unit (whole {spec['group']}) of its {n} layer(s) reached zero: none zeroed or removed"
            else:
                what = f"zeroed no weight of its {n} layer(s){had}"
            if weights and new_zeros <= -0.5:  # fewer zeros than the model came with: it got denser
                what += (
                    f"; its layers are denser than the model it was given: sparsity {before / weights:.3f} -> "
                    f"{m.achieved:.3f} (fine-tuning revived zeros it did not hold at zero"
                    + (f": it asked for {m.asked:g})" if m.asked is not None else ")")
                )
            remarks.append(f"achieved nothing: {what}{advice}")
    if measure == "constraint":
        norms = _unit_norm_maxima(m)
        if norms and spec.get("max_value") is not None:
            remarks.append(f"largest unit norm now {max(norms):.3f} (at most {spec['max_value']:g} asked)")
    if m.method == "l1" and m.dead_units is not None and not nothing:
        du = m.dead_units
        tol = (m.model_extra or {}).get("tolerance")
        reached = (
            m.asked is not None
            and m.achieved is not None
            and m.achieved >= m.asked - (float(tol) if isinstance(tol, (int, float)) else SPARSITY_TOLERANCE)
        )
        if du.found == 0 and spec.get("group", "none") != "none" and reached:
            # Its count includes units another entry removed from its layers (a structured entry on the same
            # layer): those met the target before this one had to zero any. Not "nothing": nothing was asked of it.
            remarks.append(
                f"zeroed no unit itself: the {m.achieved:.3f} reached counts units another entry removed from its "
                f"layers, already as many as its target {m.asked:g}"
            )
        elif du.found == 0 and spec.get("group", "none") != "none":
            nothing = True
            remarks.append(
                "achieved nothing: no unit's weights all reached zero, so no unit was removed: "
                + _l1_advice(spec, epochs)
            )
        elif du.found == 0:
            remarks.append("zeroed no whole unit, so remove_dead removed none: the model is no smaller and no faster")
    extra = m.model_extra or {}
    if m.method == "l1" and m.asked is not None:
        topped = extra.get("topped_up")
        if isinstance(topped, int) and topped > 0:
            what = "units" if spec.get("group", "none") != "none" else "weights"
            # A penalty's subgradient makes no exact zeros, and with a target its lambda stays within 10x strength
            # (and under threshold / lr): no schedule or strength lets training zero the units, so only proximal
            # mode is advice that can change this line.
            how = (
                "mode: penalty makes no exact zeros (its subgradient swings each weight around zero), so this is how "
                "it meets a target, the penalty having shrunk those units first; mode: proximal lets training do it"
                if spec.get("mode", "penalty") == "penalty"
                else "a longer schedule or a higher strength lets training do it"
            )
            remarks.append(
                f"{topped:,} {what} were zeroed at end_epoch to meet the target, not by training: the target was met "
                f"by cutting the weakest; {how}"
            )
        lam = extra.get("strength")
        start, peak = (lam.get("start"), lam.get("max")) if isinstance(lam, dict) else (None, None)
        if start and peak and peak > 100 * start:
            remarks.append(
                f"lambda rose to {peak:.3g} ({peak / start:.0f}x strength) to keep up with the target: check the "
                "accuracy, and prefer a longer schedule"
            )
    emptied = [r.name for r in layers if r.achieved >= 0.9] if measure == "units zero" else []
    if emptied:
        remarks.append(
            f"{', '.join(emptied)}: 90% or more of its units are zero: one lambda is shared by all layers, and a "
            "layer whose units hold fewer weights (a thin first conv) falls first; exclude it or prune it with its "
            "own entry"
        )
    if m.dead_units is not None and m.dead_units.found and m.dead_units.kept:
        du = m.dead_units
        blocked = extra.get("cannot_remove")
        named = ""
        if isinstance(blocked, dict) and blocked:
            shown = [f"{n} ({why})" for n, why in list(blocked.items())[:3]]
            more = f" and {len(blocked) - 3} more" if len(blocked) > 3 else ""
            named = f"; units of these layers cannot go: {'; '.join(shown)}{more}"
        remarks.append(
            f"{du.found - du.kept} of {du.found} all-zero units removed; {du.kept} kept because removing them would "
            "change the outputs or the layout does not allow it (a residual add, depthwise conv, zero padding, a norm "
            f"over the units such as LayerNorm, tied weights, or a graph the removal cannot trace){named}"
        )
    apart = extra.get("target_left_out")  # l1: layers whose units a target could not count (their units stay)
    if isinstance(apart, dict) and apart:
        shown = [f"{n} ({why})" for n, why in list(apart.items())[:3]]
        more = f" and {len(apart) - 3} more" if len(apart) > 3 else ""
        remarks.append(
            f"left out of the entry, their units being ones finalize cannot remove: {'; '.join(shown)}{more}"
        )
    if not nothing and m.asked is not None and m.achieved is not None and m.achieved + 0.005 < m.asked:
        remarks.append(f"short of the {m.asked:.3f} asked" + (f": {m.reason}" if m.reason else ""))
    elif not nothing and m.reason:
        remarks.append(m.reason)
    return MethodOutcome(
        entry=i,
        method=m.method,
        target=target_words(spec, m),
        measure=measure,
        asked=m.asked,
        achieved=m.achieved,
        channels_kept=kept,
        channels_total=total,
        coupled=len(coupled) if isinstance(coupled := extra.get("coupled"), dict) else followers,
        nothing=nothing,
        remarks=remarks,
        layers=layers,
    )


def _excluded_why(methods: list[MethodResult], excluded: list[str]) -> dict[str, str]:
    """Why each excluded layer that an entry selected was left out of it (from the entries' reports); a layer
    not here is one no entry selects. Without this the classifier head that ``layers: '*'`` selects read as
    "no pruning entry selects it", which sent users to widen a glob that already matched."""
    why: dict[str, str] = {}

    def names(value: Any) -> list[str]:  # report.json may be edited: only a list of names counts
        return [n for n in value if isinstance(n, str)] if isinstance(value, (list, dict)) else []

    for i, m in enumerate(methods):
        extra = m.model_extra or {}
        ignored = extra.get("ignored")
        for name in names(ignored):
            how = printable(str(ignored[name])) if isinstance(ignored, dict) else "in its ignore"
            why.setdefault(name, f"pruning[{i}] {m.method} keeps its output channels: {how}")
        for name in names(extra.get("head_left_out")):
            why.setdefault(name, f"pruning[{i}] {m.method} leaves it out: an output layer, which group lasso skips")
        apart = extra.get("target_left_out")
        if isinstance(apart, dict):
            for name in names(apart):
                why.setdefault(name, f"pruning[{i}] {m.method} leaves it out: {printable(str(apart[name]))}")
    return {n: why[n] for n in excluded if n in why}


def _recipe_lines(report: Report, methods: list[MethodOutcome], excluded: list[str]) -> list[str]:
    rows = {o.entry: o for o in methods}
    lines = []
    for i, m in enumerate(report.methods):
        lines.append(f"pruning[{i}] {m.method}: {rows[i].target}; layers {_names(list(m.layers))}")
    why = _excluded_why(report.methods, excluded)
    by_reason: dict[str, list[str]] = {}  # one line per reason, as the layers no entry selects share one
    for name, reason in why.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, layers in by_reason.items():
        lines.append(f"not pruned: {_names(layers)} ({reason})")
    unselected = [n for n in excluded if n not in why]
    if unselected:
        them = "them" if len(unselected) > 1 else "it"
        lines.append(f"not pruned: {_names(unselected)} (no pruning entry selects {them})")
    ft = report.recipe.get("finetune") or {}
    epochs = ft.get("epochs")
    if epochs == 0:
        # No optimizer, LR schedule or distillation ran: naming them read as if the model had been trained so.
        lines.append("fine-tuning: none (finetune.epochs: 0)")
    elif epochs is not None:
        opt = ft.get("optimizer") or {}
        sched = (ft.get("lr_schedule") or {}).get("name")
        from .recipe import first_lowered_epoch

        hold = (ft.get("lr_schedule") or {}).get("hold_epochs") or 0
        step_size = (ft.get("lr_schedule") or {}).get("step_size") or 1
        decays = sched in ("cosine", "step") and all(isinstance(v, int) for v in (hold, step_size, epochs))
        held = ""  # (report.json may be edited: other values are left unsaid)
        if decays and first_lowered_epoch(str(sched), hold, step_size) >= epochs:
            # (A decay's own first epoch is at the full rate: hold 1 of 2 cosine epochs lowers the rate in none, which
            # "after 1 epoch(s) at the full rate" read as a decay over the second.)
            held = ": the full rate in every epoch (the decay would start after the last)"
        elif decays and hold:
            held = f" after {hold} epoch(s) at the full rate"
        how = ", ".join(
            x
            for x in (
                opt.get("name") and f"{opt['name']} lr {opt.get('lr', 0):g}",
                sched and f"{sched} schedule{held}",
                ft.get("distill") and "distilled from the dense model",
            )
            if x
        )
        lines.append(f"fine-tuning: {epochs} epoch(s)" + (f" ({how})" if how else ""))
    return lines


def _data_words(report: Report) -> str:
    data = report.data
    if data.normalize is None:
        return f"{data.source}"
    if data.source in BUILT_IN_IMAGES:
        return f"{data.source}, normalize {data.normalize} ({NORMALIZE.get(data.normalize, data.normalize)})"
    return f"{data.source}, used as given (normalize applies to the built-in image sources only)"


def _outcomes(
    methods: list[MethodResult],
    recipe: dict[str, Any],
    dense_layers: list[Layer],
    layers: list[Layer],
    asked: list[dict[str, Any]] | None = None,
) -> tuple[list[MethodOutcome], list[str]]:
    """Each entry's :class:`MethodOutcome`, and the prunable layers no entry selects. ``asked``: the pruning
    section as written (report.json's ``recipe_asked``), whose ``ratio: auto`` entries are worded by their
    MACs or latency target, not by the placeholder ratio the allocated entry holds."""
    specs = [e if isinstance(e, dict) else {} for e in (recipe.get("pruning") or [])]
    dense = {r.name: r for r in dense_layers}
    pruned = {r.name: r for r in layers}
    epochs = (recipe.get("finetune") or {}).get("epochs")
    outcomes = [
        _outcome(i, m, specs[i] if i < len(specs) else {}, dense, pruned, epochs) for i, m in enumerate(methods)
    ]
    for o, m in zip(outcomes, methods, strict=True):
        written = asked[o.entry] if asked and o.entry < len(asked) and isinstance(asked[o.entry], dict) else {}
        if o.method == "structured" and written.get("ratio") == "auto":
            keys = ("ratio", "target_macs", "target_latency")
            o.target = target_words({**specs[o.entry], **{k: written.get(k) for k in keys}}, m)
            o.allocated = True
    covered = {name for m in methods for name in m.layers}
    names = list(dense) + [n for n in pruned if n not in dense]
    return outcomes, [n for n in names if n not in covered]


def summarize(report: Report) -> Summary:
    """The headline of ``report`` (see :class:`Summary`): computed from the rest, so report.json's
    ``summary``, the terminal summary and report.md say the same."""
    d, p = report.dense, report.pruned
    methods, excluded = _outcomes(
        report.methods, report.recipe, report.dense_layers, report.layers, report.recipe_asked
    )
    q = report.int8
    int8 = None
    if q is not None:
        ev = q.eval or {}
        fp32, acc = ev.get("fp32_accuracy"), ev.get("int8_accuracy")
        int8 = Int8Outcome(
            onnx_bytes=_change(d.onnx_bytes, q.onnx_bytes, SIZE),
            onnx_gzip_bytes=_change(d.onnx_gzip_bytes, q.onnx_gzip_bytes, SIZE),
            accuracy=_change(fp32, acc, ACCURACY) if fp32 is not None and acc is not None else None,
            latency=_latency(d, q.latency_ms, q.speedup or {}),
            vs_pruned_fp32=_int8_vs_fp32(report),
            vs_pruned_fp32_verdict=_int8_verdicts(report),
        )
    targets = check_targets(report, methods)
    return Summary(
        targets=targets,
        warnings=[t.message for t in targets if not t.met] + _collapsed(report) + _onnx_mismatch(report),
        recipe=_recipe_lines(report, methods, excluded),
        data=_data_words(report),
        methods=methods,
        excluded=excluded,
        excluded_why=_excluded_why(report.methods, excluded),
        accuracy=_change(d.accuracy, p.accuracy, ACCURACY),
        macs=_change(d.macs, p.macs, COUNT) if d.macs is not None else None,
        effective_macs=_change(d.effective_macs, p.effective_macs, COUNT) if d.effective_macs is not None else None,
        params=_change(d.params, p.params, COUNT),
        whole_model_sparsity=_change(d.sparsity, p.sparsity, ("lower", "higher", "same"), ratio=False),
        onnx_bytes=_change(d.onnx_bytes, p.onnx_bytes, SIZE),
        onnx_gzip_bytes=_change(d.onnx_gzip_bytes, p.onnx_gzip_bytes, SIZE),
        latency=_latency(d, p.latency_ms, report.benchmark.speedup) if report.benchmark else {},
        int8=int8,
    )


def _collapsed(report: Report) -> list[str]:
    """A warning when pruning took a model that was well above chance down to about chance (1 / classes):
    every target may be met and the model useless."""
    k = report.data.classes
    d, p = report.dense.accuracy, report.pruned.accuracy
    if not k or k < 2:
        return []
    chance = 1 / k
    # The dense model at least half-way from chance to perfect, the pruned one keeping at most a fifth of that
    # margin (for 10 classes: from 0.55 or more down to 0.1 + a fifth of the dense margin; for 2: 0.75 -> ~0.55).
    if d - chance < 0.5 * (1 - chance) or p - chance > 0.2 * (d - chance):
        return []
    return [
        f"accuracy fell to chance level: {d:.4f} -> {p:.4f} with {k} classes (1/{k} = {1 / k:.3f}); the pruned model "
        "has lost what it learned: prune less, over more of the schedule, or with a gentler strength"
    ]


def parity_warning(parity: dict[str, Any], what: str, exporter: str) -> str:
    """A warning when onnxruntime's outputs for ``what`` differ from torch's (``parity``: an export's
    ``{"max_abs_diff", "ok", "rtol", "atol", "error"}``), else ``""``: the file does not compute what the
    model does, so its sizes and latency describe another model. ``exporter``: how the caller's user
    chooses the other exporter."""
    if parity.get("ok"):
        return ""
    if parity.get("error"):
        return f"{what} could not be checked against torch: {parity['error']}"
    diff = parity.get("max_abs_diff")
    return (
        f"{what} does not compute what the torch model does: onnxruntime's outputs differ from torch's by up to "
        f"{'a non-finite amount' if diff is None else f'{diff:.3g}'} on the same inputs (a forward that depends on "
        "Python state, randomness or a data-dependent branch exports as one fixed path): make forward depend only "
        f"on its input, or try the other exporter ({exporter})"
    )


def _onnx_mismatch(report: Report) -> list[str]:
    """Warnings when model.onnx or dense.onnx disagree with torch, or model.onnx lost pruned zeros."""
    how = "the recipe's export.exporter: dynamo or torchscript"
    found = [parity_warning(report.parity.model_dump(), "model.onnx", how)]
    found.append(parity_warning(report.dense_parity.model_dump(), "dense.onnx (the benchmark's baseline)", how))
    if not report.zeros_preserved:
        found.append(
            "model.onnx holds nonzero values where the pruned model has zeros: its sizes overstate what the pruning "
            "saved; see report.json's zeros for the weights"
        )
    return [w for w in found if w]


def check_targets(report: Report, outcomes: list[MethodOutcome] | None = None) -> list[TargetCheck]:
    """Every target the recipe's ``pruning`` entries state, against what the run achieved: sparsity
    (asked vs achieved zeros, within :data:`SPARSITY_TOLERANCE` or the method's own ``tolerance``),
    structured ``ratio`` (within one rounding unit per layer: a channel, or ``round_to`` channels),
    ``target_macs`` (the pruned model's MACs at most 2% above the asked fraction of the dense model's),
    ``target_latency`` (the largest benchmarked batch, within the run's noise band (at least 5%, see
    :data:`sparsekit.onnx.bench.SESSION_FLOOR`) plus 10%),
    ``max_value`` (every unit's norm at most 0.1% above it); an entry that achieved nothing of what it
    is for misses even without a number. ``outcomes``: :func:`summarize`'s, when already computed."""
    if outcomes is None:
        outcomes = _outcomes(report.methods, report.recipe, report.dense_layers, report.layers)[0]
    specs = [e if isinstance(e, dict) else {} for e in (report.recipe.get("pruning") or [])]
    asked = [e if isinstance(e, dict) else {} for e in (report.recipe_asked or [])]
    checks = []
    for o, m in zip(outcomes, report.methods, strict=True):
        spec = specs[o.entry] if o.entry < len(specs) else {}
        if o.method == "structured" and o.entry < len(asked) and asked[o.entry].get("ratio") == "auto":
            o.allocated = True  # its ratios are sparsekit's choice for the target: the target is what is checked
        if o.entry < len(asked):
            # An allocated entry holds the per-layer values chosen for its target: the target as written is the one
            # to check (target_macs / target_latency are gone from the allocated entry).
            spec = {
                **spec,
                **{k: asked[o.entry].get(k) for k in ("target_macs", "target_latency") if k in asked[o.entry]},
            }
        # Zeros another entry places on the same layers (an l1 entry's dead units on a magnitude entry's layer) are
        # in this entry's count too, so only those layers' own asks bound it from above. A structured entry counts
        # the channels its own events removed, never another entry's (an l1 entry's dead units), so its excess is
        # its own even on shared layers: exempting it hid a ratio rounded past what was asked.
        others = {
            r.name
            for p in outcomes
            if p.entry != o.entry and p.method != "max_norm" and (o.method != "structured" or p.method == "structured")
            for r in p.layers
        }
        shared = any(r.name in others for r in o.layers)
        checks += _entry_targets(o, m, spec, report, shared)
    return checks


def _entry_targets(
    o: MethodOutcome, m: MethodResult, spec: dict[str, Any], report: Report, shared: bool = False
) -> list[TargetCheck]:
    """The checks of one entry (see :func:`check_targets`); ``shared``: another entry that zeroes or removes
    weights selects one of its layers, so zeros past its own target are no miss of its own."""
    head = f"entry {o.entry} ({o.method})"

    def check(target: str, asked: float | None, achieved: float | None, tol: float, met: bool, why: str) -> TargetCheck:
        return TargetCheck(
            entry=o.entry, method=o.method, target=target, asked=asked, achieved=achieved, tolerance=tol, met=met,
            message="" if met else f"target missed: {head} {why}",
        )  # fmt: skip

    extra = m.model_extra or {}
    out = []
    field = {"structured": "ratio", "max_norm": "max_value"}.get(o.method, "sparsity")
    if o.method == "l1" or spec.get("sparsity") == "auto":
        field = "target" if spec.get("target") is not None else field
    if o.nothing:
        words = next((r for r in o.remarks if r.startswith("achieved nothing")), "achieved nothing")
        out.append(check(field if o.asked is not None else "effect", o.asked, o.achieved, 0.0, False, words))
    elif o.asked is not None and o.achieved is not None and o.method != "max_norm" and not o.allocated:
        asked, tol = o.asked, float(extra.get("tolerance", SPARSITY_TOLERANCE))
        if o.method == "structured":
            done, events = extra.get("events_done"), extra.get("events")
            if isinstance(done, int) and isinstance(events, int) and 0 < done < events:
                asked = o.asked * events / done  # the report's asked is scaled by the removal steps run
            tol = _rounding_tolerance(o, spec.get("round_to"))
        ceiling = asked
        if o.measure == "weights zero":
            tol, ceiling = _weight_slack(o, report, asked, tol)
        met = o.achieved >= asked - tol
        why = f"asked {field} {asked:.3f}, achieved {o.achieved:.3f}"
        # Methods that place every zero themselves miss too by going past the target: a 0.3 ratio rounded to
        # half a small model's channels is another model than the one asked for. (L1's zeros come from
        # training, and more of them than its target is what a stronger penalty does: short is the miss.)
        if met and o.method != "l1" and not shared and o.achieved > ceiling + tol:
            met = False
            why += " (more than asked)"
        if o.method == "structured" and not met:
            why += _structured_miss(o, spec, short=o.achieved < asked)
        out.append(check(field, asked, o.achieved, tol, met, why))
    if o.method == "structured" and spec.get("target_macs") is not None and report.dense.macs:
        asked, achieved = float(spec["target_macs"]), (report.pruned.macs or 0) / report.dense.macs
        met = achieved <= asked * (1 + MACS_OVER_TOLERANCE)
        out.append(check("target_macs", asked, achieved, asked * MACS_OVER_TOLERANCE, met,
                         f"asked MACs {asked:.3f}x of dense, reached {achieved:.3f}x"))  # fmt: skip
    if o.method == "structured" and spec.get("target_latency") is not None:
        speedup = report.benchmark.speedup if report.benchmark else None
        if not speedup:
            # No benchmark (benchmark.enabled: false) left the target out of summary.targets altogether: no warning,
            # and --strict passed a target nothing had checked. Unchecked is said, as a miss is.
            asked = float(spec["target_latency"])
            bench = report.recipe.get("benchmark")
            off = isinstance(bench, dict) and bench.get("enabled") is False
            why = "benchmark.enabled: false" if off else "the benchmark timed no batch size of both models"
            message = (
                f"target not checked: {head} asked latency {asked:.3f}x of dense, but the pruned model's latency was "
                f"not measured at the end ({why}); enable the benchmark to check it"
            )
            out.append(
                TargetCheck(
                    entry=o.entry,
                    method=o.method,
                    target="target_latency",
                    asked=asked,
                    achieved=None,
                    tolerance=0.0,
                    met=False,
                    message=message,
                )
            )
        else:
            batch = max(speedup, key=lambda b: int(b) if b.isascii() and b.isdigit() else 0)
            asked, achieved, noise = float(spec["target_latency"]), speedup[batch].ratio, speedup[batch].noise
            tol = asked * noise + 0.1 * asked
            met = achieved <= asked + tol
            why = f"asked latency {asked:.3f}x of dense, measured {achieved:.3f}x at batch {batch}"
            out.append(check("target_latency", asked, achieved, tol, met, why))
    if o.method == "max_norm" and spec.get("max_value") is not None:
        norms = _unit_norm_maxima(m)
        if norms:
            asked, achieved = float(spec["max_value"]), max(norms)
            met = achieved <= asked * 1.001
            out.append(check("max_value", asked, achieved, asked * 0.001, met,
                             f"asked unit norms at most {asked:g}, the largest is {achieved:.4g}"))  # fmt: skip
    return out


_COUPLED = re.compile(r"coupled to ignored layer '([^']+)'")


def _structured_miss(o: MethodOutcome, spec: dict[str, Any], *, short: bool) -> str:
    """Why a structured entry missed its ratio, as its layers' reasons say: layers whose output channels are
    coupled to a layer the entry keeps whole (in ``ignore``, or not selected by ``layers``), which then keep
    them all, and ``round_to`` where it moved a layer's count (or, where no layer says why, the one cause a
    ratio alone can have)."""
    coupled: dict[str, str] = {}
    for r in o.layers:
        found = _COUPLED.search(r.reason or "") if short else None
        if found:
            coupled[r.name] = found.group(1)
    rounded = [r.name for r in o.layers if "round_to" in (r.reason or "")]
    words = ""
    if coupled:
        partners = list(dict.fromkeys(coupled.values()))
        patterns = spec.get("ignore") or []
        ignored = [p for p in partners if any(fnmatch.fnmatchcase(p, g) or p.startswith(g + ".") for g in patterns)]
        unselected = [p for p in partners if p not in ignored]
        where = " and ".join(
            w
            for w in (
                f"{_names(ignored)} in ignore" if ignored else "",
                f"{_names(unselected)} not selected by layers" if unselected else "",
            )
            if w
        )
        fix = " or ".join(
            w
            for w in (
                f"take {_names(ignored)} out of ignore" if ignored else "",
                f"select {_names(unselected)} too" if unselected else "",
            )
            if w
        )
        its, it = ("its", "it is") if len(coupled) == 1 else ("their", "they are")
        words += (
            f"; {_names(list(coupled))} kept all {its} output channels because {it} coupled (e.g. by a "
            f"residual add) to layers this entry keeps whole ({where}): {fix}, or "
            f"leave {_names(list(coupled))} out of its layers"
        )
    round_to = spec.get("round_to")
    unexplained = not any(r.reason for r in o.layers)
    if (round_to or 1) > 1 and (rounded or unexplained):
        words += (
            f"; channel counts are rounded to multiples of {round_to} (per_layer reasons say where): "
            "a smaller round_to, or null, keeps them nearer the ratio"
        )
    elif not words and not unexplained:
        words += "; per_layer reasons say why, layer by layer"
    return words


def _weight_slack(o: MethodOutcome, report: Report, asked: float, tol: float) -> tuple[float, float]:
    """``(tolerance, ceiling)`` for an entry measured in weights zero: the tolerance widened by one weight per
    layer (each layer's count is a whole number of weights: 22 of a 72-weight layer asked 0.3 is 0.306), and
    the most zeros it may end with without having placed more than asked: per layer, the asked fraction or
    the zeros the dense model already had there, whichever is more (a model that came with zeros keeps them)."""
    dense = {r.name: r for r in report.dense_layers}
    rows = [(r, dense[r.name]) for r in o.layers if r.name in dense and dense[r.name].params]
    total = sum(d.params for _, d in rows)
    if not total:
        return tol, asked
    before = sum(max((asked if r.asked is None else r.asked) * d.params, d.params - d.nonzero_params) for r, d in rows)
    return tol + len(rows) / total, max(asked, before / total)


# The most a structured ratio may miss by rounding (short of it or past it) before it counts as missed
# (fraction of channels).
STRUCTURED_MAX_TOLERANCE = 0.05


def _rounded_layers(report: Report) -> str:
    """A note naming the layers of structured entries that ended further from their ratio than
    :data:`STRUCTURED_MAX_TOLERANCE` (the entry's total within its tolerance: a layer rounded to whole
    ``round_to`` blocks, e.g. ``ratio: 0.3`` taking 16 of a 32-channel stem's channels), else ``""``. A note, not
    a target miss: it is what the recipe's ``round_to`` does by design (a shipped recipe's 48-channel layers
    keep 32 at ``ratio: 0.5``), but the per-layer lines alone hid it."""
    outcomes = _outcomes(report.methods, report.recipe, report.dense_layers, report.layers)[0]
    specs = [e if isinstance(e, dict) else {} for e in (report.recipe.get("pruning") or [])]
    # An entry whose total missed has its WARNING line; this note speaks only of totals within tolerance.
    missed = {c.entry for c in check_targets(report, outcomes) if c.target == "ratio" and not c.met}
    off: list[LayerOutcome] = []
    for o in outcomes:
        spec = specs[o.entry] if o.entry < len(specs) else {}
        if o.method != "structured" or o.nothing or spec.get("scope", "layer") == "global" or o.entry in missed:
            continue
        off += [
            r
            for r in o.layers
            if r.asked is not None and r.channels_total and abs(r.achieved - r.asked) > STRUCTURED_MAX_TOLERANCE
        ]
    if not off:
        return ""
    shown = ", ".join(
        f"{r.name} {r.achieved:.3f} of {r.asked:.3f} ({r.channels_kept} of {r.channels_total} kept)" for r in off[:4]
    )
    more = f" and {len(off) - 4} more" if len(off) > 4 else ""
    return (
        f"Layers ended more than {STRUCTURED_MAX_TOLERANCE} from their ratio while the entry's total is within "
        f"tolerance: {shown}{more}; per_layer reasons say why (counts rounded to round_to blocks: a smaller "
        "round_to keeps them nearer the ratio, at some latency)."
    )


def _rounding_tolerance(o: MethodOutcome, round_to: int | None) -> float:
    """How far from its ratio a structured entry may end from rounding alone: each layer's count goes to
    the nearest multiple of its alignment (:func:`sparsekit.tp_adapter.alignment`), so half of it, or one
    channel, per layer, over all channels; at most :data:`STRUCTURED_MAX_TOLERANCE`, so coarse rounding on
    small layers is reported rather than hidden."""
    return rounding_tolerance([r.channels_total for r in o.layers if r.channels_total], o.channels_total, round_to)


def rounding_tolerance(layer_channels: list[int], counted: int | None, round_to: int | None) -> float:
    """:func:`_rounding_tolerance` from channel counts: ``layer_channels``, each selected layer's initial
    output channels; ``counted``, the channels the entry's ratio is over (coupled followers once)."""
    from .tp_adapter import alignment

    if not counted:
        return SPARSITY_TOLERANCE
    slack = sum(max(1.0, alignment(c, round_to) / 2) for c in layer_channels)
    return min(SPARSITY_TOLERANCE + slack / counted, STRUCTURED_MAX_TOLERANCE)


def _estimate(r: Result | Int8 | Storage) -> int:
    """The weights' entropy estimate, under its name or (older reports) its former one."""
    return r.entropy_estimate_bytes if r.entropy_estimate_bytes is not None else r.entropy_bound_bytes


def _slower_after_removal(report: Report) -> str:
    """``"batch 32: 1.210x of dense"`` for the batch sizes where a run that removed channels measured
    slower than dense (outside the noise band), else ``""``."""
    bench = report.benchmark
    removed = any(m.method == "structured" or m.channels for m in report.methods)
    if not bench or not removed:
        return ""
    # Not where the A/A control swung past NOISY: "made the model slower" would state what the too-noisy note says no
    # figure of the run can tell.
    slow = [f"batch {b}: {sp.ratio:.3f}x of dense" for b, sp in bench.speedup.items()
            if latency_verdict(sp.ratio, sp.noise) == "slower" and sp.noise <= NOISY]  # fmt: skip
    return ", ".join(slow)


def _structured_speed_advice(report: Report) -> str:
    """What to change in the structured entries of a run measured slower than dense. "Keep round_to: 16 (the
    default)" was said to a run that kept it, whose ``target_macs`` had fallen back to exact channel counts (whole
    blocks could not reach it), and to one whose counts were all aligned: the advice follows what the entries did."""
    entries = [e if isinstance(e, dict) else {} for e in report.recipe.get("pruning") or []]
    asked = [e if isinstance(e, dict) else {} for e in report.recipe_asked or []] or entries
    causes = []
    for i, m in enumerate(report.methods):
        if m.method != "structured" or i >= len(entries):
            continue
        entry, first = entries[i], asked[i] if i < len(asked) else entries[i]
        round_to = entry.get("round_to")
        step = round_to if isinstance(round_to, int) and round_to > 1 else None
        exact = step is None or any(
            kept != width and kept % (step if width >= 2 * step else step // 2 if width >= step else 1)
            for width, kept in (m.channels or {}).values()
        )
        if not exact:
            continue
        if step is None:
            causes.append(f"pruning[{i}]'s round_to: null keeps exact counts: set round_to: 16 (the default)")
        elif first.get("target_macs") is not None:
            causes.append(
                f"pruning[{i}]'s target_macs fell back to exact counts, as whole blocks of round_to could not reach "
                "it (its note above): ask a target_macs that whole blocks reach"
            )
        elif first.get("layer_ratio"):
            causes.append(
                f"pruning[{i}]'s layer_ratio keeps the exact counts its fractions give: write fractions that keep "
                "multiples of round_to"
            )
    if causes:
        return "; ".join(causes) + "; or use target_latency (ratio: auto), which measures the counts it keeps."
    return (
        "The kept channel counts are already multiples of round_to: use target_latency (ratio: auto), which "
        "measures the counts it keeps, or remove fewer channels."
    )


#: Below this many validation samples the report says its accuracies are coarse (a step of 1/n is >= 1 point).
FEW_VAL_SAMPLES = 100


def notes(report: Report) -> list[str]:
    """What the summary does not already say and the user should know or do: one sentence each.
    Asked vs achieved, a method that achieved nothing, and every dense -> pruned figure with its verdict
    are in :func:`summarize` instead."""
    d, p = report.dense, report.pruned
    out = []
    n = report.data.val_samples
    if n is not None and 0 < n < FEW_VAL_SAMPLES:
        out.append(
            f"The validation split holds only {n} sample(s): accuracy moves in steps of {1 / n:.3f}, so the dense -> "
            "pruned accuracies say little; give more data or a larger data.val_fraction."
        )
    if report.recipe_asked is not None:
        out.append(
            "The auto entries' per-layer values were chosen by a sensitivity analysis on the validation split, the "
            "split these accuracies are measured on: they may be slightly optimistic; check the pruned model on "
            "data it has not seen."
        )
    from .recipe import unread_schedule_words

    for i, entry in enumerate(report.recipe.get("pruning") or []):
        unread = unread_schedule_words(entry) if isinstance(entry, dict) else ""
        if unread:
            out.append(f"pruning[{i}]: {unread}.")
    dead = [r.name for r in report.layers if r.params and r.nonzero_params == 0]
    if dead:
        out.append(
            f"Every weight of {', '.join(dead)} is zero, so its output is a constant (its bias, if it has one): "
            "lower the pruning strength/sparsity there, lower max_layer_sparsity, or exclude it (layers.exclude)."
        )
    drop = d.accuracy - p.accuracy
    if drop > 0.03:
        epochs = (report.recipe.get("finetune") or {}).get("epochs")
        out.append(
            f"To win accuracy back: fine-tune longer ({epochs} epoch(s) now), prune less, or spread pruning over "
            "more of the schedule."
        )
    slower = _slower_after_removal(report)
    if slower:
        advice = []
        if any(m.method == "structured" for m in report.methods):
            advice.append(_structured_speed_advice(report))
        if any(m.method == "l1" and m.channels for m in report.methods):
            advice.append(
                "Group l1 removes the units training zeroed, whatever their count (it has no round_to): for speed, "
                "remove channels with structured (round_to: 16), or add a structured entry after the l1 one to round "
                "the widths it leaves."
            )
        out.append(
            f"Channel removal made the model slower in onnxruntime ({slower}): its CPU kernels work in blocks of 8 "
            f"or 16 channels and run other counts poorly. {' '.join(advice)}".rstrip()
        )
    rounded = _rounded_layers(report)
    if rounded:
        out.append(rounded)
    for label, r in (("dense", d), ("pruned", p)):
        if r.export_fallback:
            out.append(f"{label} ONNX written by the {r.exporter} exporter at opset {r.opset}: {r.export_fallback}.")
        if r.tracer_warnings:
            said = " ".join(r.tracer_warnings[0].split()).split(". ")[0]  # its first sentence
            out.append(
                f"{label} ONNX: the TorchScript tracer warned that the file may follow only the path the example input "
                f"took through the model ({said}); parity on random inputs cannot rule out other outputs on other "
                "inputs: set export.exporter: dynamo if it can export the model."
            )
    if report.int8 and report.int8.fallback:
        out.append(f"int8: {report.int8.fallback}.")
    for extra in (_int8_disagrees(report), _int8_slower(report), _int8_not_smaller(report), _too_noisy(report)):
        if extra:
            out.append(extra)
    ss = report.sparse_storage
    if ss:
        out.append(
            f"sparse storage (model.sparse.onnx): {ss.bytes_after:,} B vs {ss.bytes_before:,} B raw; "
            "onnxruntime densifies it at load, so it saves disk, not time."
        )
    return out


# --------------------------------------------------------------------------- rendering


def ms_text(ms: float | None) -> str:
    """A latency in ms with at least 3 significant digits (3 decimals from 0.1 ms up): at a fixed 3 decimals a
    small model's 0.0125 and 0.0115 ms both read 0.012, beside a ratio of 0.926x called faster."""
    if ms is None:
        return "–"
    if not math.isfinite(ms) or ms >= 0.1 or ms <= 0:
        return f"{ms:.3f}"
    return f"{ms:.{2 - math.floor(math.log10(ms))}f}"


def parity_scale(parity: Any) -> str:
    """``", outputs up to X"`` when a parity check passed with a difference above its ``atol``: a max |onnx -
    torch| of 2.5 reads as broken unless the reader sees it is within ``rtol`` of outputs in the tens of
    thousands. ``parity``: the dict :func:`sparsekit.onnx.export_onnx` returns or the report's ``Parity``; ""
    otherwise."""
    get = parity.get if isinstance(parity, dict) else lambda key: getattr(parity, key, None)
    diff, scale, atol = get("max_abs_diff"), get("max_abs_output"), get("atol")
    if not get("ok") or diff is None or scale is None or atol is None or diff <= atol:
        return ""
    return f", outputs up to {scale:.3g}, rtol {get('rtol'):g}"


def _diff(value: float | None, error: str | None = None) -> str:
    # No difference either because the outputs could not be compared (the error says why) or were not finite.
    if value is None:
        return "n/a" if error else "n/a (outputs not finite)"
    return f"{value:.2e}"


def _x(c: Change, fmt: str = "{:,.0f}", unit: str = "") -> str:
    """``dense -> pruned unit (ratio: verdict)``."""
    a = "–" if c.dense is None else fmt.format(c.dense)
    b = "–" if c.pruned is None else fmt.format(c.pruned)
    ratio = f"{c.ratio:.3f}x: " if c.ratio is not None else ""
    verdict = c.verdict
    if ratio == "1.000x: " and c.dense is not None and c.pruned is not None and c.pruned != c.dense:
        # A change under 0.05%: the ratio alone would read 'no change' beside the word 'smaller'.
        verdict += f" by {fmt.format(abs(c.pruned - c.dense))}{unit}"
    return f"{a} -> {b}{unit} ({ratio}{verdict})"


def acc_texts(dense: float, pruned: float) -> tuple[str, str, str]:
    """Two accuracies and their difference, at 4 decimals or as many more (up to 7) as tell them apart: on a
    50,000-sample validation set one sample is 0.00002, which read '0.7613 -> 0.7613 (+0.0000: more accurate)'."""
    digits = 4
    while digits < 7 and pruned != dense and f"{pruned - dense:+.{digits}f}".lstrip("+-") == f"{0:.{digits}f}":
        digits += 1
    return f"{dense:.{digits}f}", f"{pruned:.{digits}f}", f"{pruned - dense:+.{digits}f}"


def _acc(c: Change) -> str:
    """``dense -> pruned (+difference: verdict)`` for an accuracy."""
    if c.dense is None or c.pruned is None:
        return c.verdict
    a, b, diff = acc_texts(c.dense, c.pruned)
    return f"{a} -> {b} ({diff}: {c.verdict})"


def _makes_zeros(report: Report, s: Summary) -> bool:
    """Whether whole-model sparsity says anything: an entry zeroes weights, or either model has zeros (a
    structural-only run has none: it deletes weights, and its headline is channels and MACs)."""
    return any(o.measure == "weights zero" for o in s.methods) or bool(report.dense.sparsity or report.pruned.sparsity)


def _int8_vs_fp32(report: Report) -> dict[str, float]:
    """Per batch size, the int8 model's p50 latency over the pruned fp32 model's (same benchmark run)."""
    q, p = report.int8, report.pruned
    if q is None:
        return {}
    return {
        bs: lat.p50 / p.latency_ms[bs].p50
        for bs, lat in q.latency_ms.items()
        if bs in p.latency_ms and p.latency_ms[bs].p50 > 0
    }


def _int8_noise(report: Report, bs: str) -> float | None:
    """The noise of int8 vs pruned fp32 at ``bs``: the larger of the two ratios' (each against dense, measured
    in the same run against one A/A control); None when either was not measured."""
    if not (report.int8 and report.int8.speedup and bs in report.int8.speedup):
        return None
    if not (report.benchmark and bs in report.benchmark.speedup):
        return None
    return max(report.int8.speedup[bs].noise, report.benchmark.speedup[bs].noise)


def _int8_verdicts(report: Report) -> dict[str, str]:
    out: dict[str, str] = {}
    for bs, r in _int8_vs_fp32(report).items():
        noise = _int8_noise(report, bs)
        if noise is not None:
            out[bs] = latency_verdict(r, noise)
    return out


#: Below this top-1 agreement of the int8 model with the fp32 one on the evaluation data, the int8 file is flagged:
#: calibrated on clean data, the example models agreed on 0.94-1.0 (sparsekit/onnx/quantize.py); one sample of
#: extreme values in the calibration data stretched every range until int8 agreed on none.
INT8_AGREEMENT_WARNING = 0.9


def int8_agreement_warning(ev: dict[str, Any] | None) -> str:
    """A warning when the int8 model's predictions (``ev``: an int8 result's ``eval``, with ``top1_agreement``,
    ``samples``, ``fp32_accuracy``, ``int8_accuracy``) agree with fp32's on fewer than
    :data:`INT8_AGREEMENT_WARNING` of the samples, else ``""``."""
    agree = (ev or {}).get("top1_agreement")
    if ev is None or agree is None or agree >= INT8_AGREEMENT_WARNING:
        return ""
    return (
        f"int8 predicts the same class as fp32 on only {agree:.1%} of {ev.get('samples')} samples (accuracy fp32 "
        f"{ev.get('fp32_accuracy', float('nan')):.4f}, int8 {ev.get('int8_accuracy', float('nan')):.4f}): look for "
        "outliers in the calibration data (a few extreme values stretch every int8 range), or ship the fp32 model"
    )


def _int8_disagrees(report: Report) -> str:
    """:func:`int8_agreement_warning` of the run's int8 model."""
    return int8_agreement_warning(report.int8.eval) if report.int8 is not None else ""


def _int8_slower(report: Report) -> str:
    """A note when the int8 model runs slower than the pruned fp32 one, beyond the noise, at some batch size."""
    q = report.int8
    if q is None:
        return ""
    slow = ", ".join(
        bs
        for bs, word in _int8_verdicts(report).items()
        if word == "slower" and (_int8_noise(report, bs) or 0.0) <= NOISY  # (as _slower_after_removal)
    )
    if not slow:
        return ""
    why = (
        "dynamic quantization turns convolutions into ConvInteger, which onnxruntime's CPU kernels run several "
        "times slower than fp32; calibrate on data (static QDQ) for speed"
        if q.mode == "dynamic"
        else "onnxruntime's CPU int8 kernels do not beat fp32 on every graph (small channel counts, residual "
        "adds that re-quantize)"
    )
    # "for its size" only where it is smaller than model.onnx as shipped (else _int8_not_smaller says so).
    ship = (
        "Ship model.int8.onnx for its size, model.onnx for speed"
        if not _int8_larger(report)
        else "Ship model.onnx for speed (the next note compares their sizes)"
    )
    return f"int8 runs slower than the pruned fp32 model (batch {slow}): {why}. {ship}."


def _shipped_sizes(report: Report) -> tuple[int, int]:
    """model.onnx's bytes and gzip bytes as shipped (with sparse initializers where the storage chose them)."""
    if report.storage is not None:
        return report.storage.bytes, report.storage.gzip_bytes
    return report.pruned.onnx_bytes, report.pruned.onnx_gzip_bytes


def _int8_larger(report: Report) -> list[str]:
    """How the int8 file is not smaller than model.onnx as shipped: "raw", "after gzip", both or neither."""
    q = report.int8
    if q is None:
        return []
    raw, gz = _shipped_sizes(report)
    return [how for how, a, b in (("raw", q.onnx_bytes, raw), ("after gzip", q.onnx_gzip_bytes, gz)) if a >= b]


def _int8_not_smaller(report: Report) -> str:
    """A note when the int8 file is not smaller than the pruned fp32 model.onnx as shipped. The int8 rows compare it
    with the dense fp32 file (0.27x at 98% sparsity), while model.onnx with sparse initializers was smaller still raw:
    int8 stores every zero in a byte, sparse storage not at all."""
    q, larger = report.int8, _int8_larger(report)
    if q is None or not larger:
        return ""
    (raw, gz), sparse = _shipped_sizes(report), report.storage is not None and report.storage.encoding == "sparse"
    why = (
        "its sparse initializers store only the nonzero weights, where int8 stores every weight, zeros too, in a byte"
        if sparse
        else "quantization's scales, zero points and extra nodes outweigh what int8 saves on the weights (a small "
        "model, or few nonzero weights: the fp32 file's zeros gzip away too)"
    )
    return (
        f"model.int8.onnx ({q.onnx_bytes:,} B, gzip {q.onnx_gzip_bytes:,} B) is not smaller {' or '.join(larger)} "
        f"than the pruned fp32 model.onnx as shipped ({raw:,} B, gzip {gz:,} B"
        f"{', sparse initializers' if sparse else ''}): {why}. Its size rows compare it with the dense fp32 file."
    )


#: Noise (the A/A control's spread, as a fraction) above which a run's latency figures are called unreliable.
NOISY = 0.5


def _too_noisy(report: Report) -> str:
    """A note when the benchmark's noise was so large that no latency ratio of the run means anything."""
    if report.benchmark is None:
        return ""
    worst = {bs: s.noise for bs, s in report.benchmark.speedup.items() if s.noise > NOISY}
    if not worst:
        return ""
    where = ", ".join(f"{1 / (1 + n):.2f}x-{1 + n:.2f}x at batch {bs}" for bs, n in worst.items())
    return (
        f"The benchmark was too noisy to measure latency (no change lies anywhere in {where}): the machine was "
        "busy. Re-run "
        "the benchmark on a quiet machine (sparsekit bench on dense.onnx and model.onnx) before trusting any "
        "latency figure of this run."
    )


def _verdict(lc: LatencyChange) -> str:
    """A latency verdict in words; at a batch size whose A/A control swung past :data:`NOISY` it says the figure is
    not to be trusted (a "faster" of 0.03x measured while the note below says the benchmark was too noisy read as a
    result)."""
    return _noisy(lc.verdict, lc.noise)


def _noisy(verdict: str, noise: float) -> str:
    """``verdict``, with "too noisy to trust" added when ``noise`` (the A/A control's swing) is past :data:`NOISY`."""
    return f"{verdict}, too noisy to trust" if noise > NOISY else verdict


def _lat(bs: str, lc: LatencyChange, extra: str = "") -> str:
    a, b = ms_text(lc.dense_ms), ms_text(lc.ms)
    lo, hi = lc.band
    return f"batch {bs}: {a} -> {b} ms ({lc.ratio:.3f}x, noise band {lo:.3f}x-{hi:.3f}x{extra}): {_verdict(lc)}"


def _unit_word(types: set[str]) -> str:
    """What a layer's output units are called: a Linear layer's are neurons, a convolution's channels."""
    if types and all(t == "Linear" for t in types):
        return "neurons"
    return "channels" if "Linear" not in types else "neurons/channels"


def _method_line(o: MethodOutcome, types: dict[str, str]) -> str:
    head = f"pruning[{o.entry}] {o.method}: "
    if o.measure == "constraint":
        return head + "a constraint, nothing asked or achieved in sparsity"
    asked = "no target" if o.asked is None else f"asked {o.asked:.3f}"
    if o.allocated and o.asked is not None:  # the user asked for MACs or latency; this ratio is sparsekit's choice
        asked = f"ratio {o.asked:.3f} chosen for its target"
    achieved = "–" if o.achieved is None else f"{o.achieved:.3f}"
    word = _unit_word({types[r.name] for r in o.layers if r.name in types})
    kept = f"; {o.channels_kept:,} of {o.channels_total:,} {word} kept" if o.channels_total else ""
    measure = o.measure.replace("channels", word) if o.measure == "output channels removed" else o.measure
    if o.coupled:  # why achieved is not 1 - kept / total
        measure += f" (a unit shared by coupled layers counted once: {o.coupled} layer(s) share their owner's)"
    return f"{head}{asked}, achieved {achieved} {measure} over its {len(o.layers)} layer(s){kept}"


def _layer_line(r: LayerOutcome, width: int, types: dict[str, str]) -> str:
    asked = "–" if r.asked is None else f"{r.asked:.3f}"
    word = _unit_word({types[r.name]} if r.name in types else set())
    kept = f"  {r.channels_kept} of {r.channels_total} {word} kept" if r.channels_total else ""
    why = f"  ({r.reason})" if r.reason else ""
    return f"{r.name:<{width}}  asked {asked:>5}  achieved {r.achieved:.3f}{kept}{why}"


def render_summary(report: Report, out: str | Path, warnings: bool = True) -> str:
    """The lines ``sparsekit prune`` prints when it finishes (``out``: the output folder): the recipe, asked
    vs achieved per entry and per layer, then dense -> pruned accuracy, MACs, sizes and latency, each
    with its verdict, then what is not in there (:func:`notes`). The up-front expectation
    (:func:`what_it_buys`) is not repeated: the run said it when it started. ``warnings=False`` leaves out the
    ``WARNING`` rows (summary.warnings), which the CLI prints on stderr as every command prints its warnings."""
    s = summarize(report)
    d, p = report.dense, report.pruned
    files = ["model.pt", "model.onnx", "dense.onnx", *(["model.int8.onnx"] if report.int8 else [])]
    files += ["report.md", "report.json", *report.plots]
    lines = [f"Wrote {out}/ ({', '.join(files)})"]
    for i, text in enumerate([*s.recipe, f"data: {s.data}"]):
        lines.append(f"  {'recipe' if i == 0 else '':<9} {text}")
    types = {layer.name: layer.type for layer in report.dense_layers or report.layers}
    for o in s.methods:
        lines.append(f"  {_method_line(o, types)}")
        width = max((len(r.name) for r in o.layers), default=0)
        lines += [f"      {_layer_line(r, width, types)}" for r in o.layers]
        lines += [f"      {remark}" for remark in o.remarks]
    lines.append(f"  accuracy  {_acc(s.accuracy)}")
    if s.macs:
        macs = f"  MACs      {_x(s.macs, unit=' per sample')}"  # one input of input_shape, not the batch
        if s.effective_macs and s.effective_macs.pruned != s.macs.pruned:
            macs += f"; counting nonzero weights only {_x(s.effective_macs, unit=' per sample')}"
        lines.append(macs)
    lines.append(
        f"  size      ONNX, dense-stored {_x(s.onnx_bytes, unit=' B')}; gzip {_x(s.onnx_gzip_bytes, unit=' B')}"
    )
    lines += [f"  latency   {_lat(bs, lc)}" for bs, lc in s.latency.items()]
    if s.int8 and report.int8:
        q = s.int8
        acc = f"; accuracy vs fp32 pruned {_acc(q.accuracy)}" if q.accuracy else ""
        lines.append(
            f"  int8      model.int8.onnx ({report.int8.mode}) vs dense fp32: ONNX {_x(q.onnx_bytes, unit=' B')}; "
            f"gzip {_x(q.onnx_gzip_bytes, unit=' B')}{acc}; zeros kept: {report.int8.zeros.get('zeros_ok')}"
        )
        lines += [
            "  int8      "
            + _lat(
                bs,
                lc,
                f"; vs pruned fp32 {q.vs_pruned_fp32[bs]:.3f}x, {q.vs_pruned_fp32_verdict.get(bs, 'no noise figure')}"
                if bs in q.vs_pruned_fp32
                else "",
            )
            for bs, lc in q.latency.items()
        ]
    overall = f"  overall   params {_x(s.params)}"
    if _makes_zeros(report, s):
        left_out = f", not-pruned {_names(s.excluded, 3)} included" if s.excluded else ""
        overall += (
            f"; whole-model sparsity {d.sparsity:.3f} -> {p.sparsity:.3f} over all {len(report.layers)} "
            f"prunable layers{left_out}"
        )
    lines.append(overall)
    st = report.storage
    if st:
        ratio = f"{st.gzip_bytes / st.dense.gzip_bytes:.3f}x" if st.dense.gzip_bytes else "–"
        estimate = _estimate(st)
        lines.append(
            f"  stored    model.onnx with {st.encoding} initializers ({st.mode}): {st.bytes:,} B, gzip "
            f"{st.gzip_bytes:,} B ({ratio} of dense-stored gzip)"
            + (f", {st.gzip_bytes / estimate:.2f}x the weights' entropy estimate {estimate:,} B" if estimate else "")
            + ("; onnxruntime densifies it at load: memory and latency unchanged" if st.encoding == "sparse" else "")
        )
    lines.append(
        f"  parity    max |onnx - torch| {_diff(report.parity.max_abs_diff, report.parity.error)} "
        f"({'ok' + parity_scale(report.parity) if report.parity.ok else 'FAILED'}"
        f"{': ' + report.parity.error if report.parity.error else ''}), "
        f"zeros kept in ONNX: {report.zeros_preserved}"
    )
    lines += [f"  note      {n}" for n in report.notes]
    lines += [f"  WARNING   {w}" for w in s.warnings] if warnings else []
    return "\n".join(lines)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.3f}x" if a and b is not None else "–"


def _markdown_summary(report: Report, s: Summary) -> list[str]:
    """report.md's lead: the recipe, asked vs achieved, and the dense -> pruned table with verdicts."""
    d, p = report.dense, report.pruned
    lines = ["## Summary", ""]
    if s.warnings:
        lines += [f"> **Warning:** {w}" for w in s.warnings] + [""]
    lines += ["Recipe:", ""] + [f"- {text}" for text in s.recipe] + [""]
    if s.methods:
        lines += [
            "Asked vs achieved (fractions: of the weights zeroed, or of the output channels removed):",
            "",
            "| entry | layer | asked | achieved | units kept (neurons or channels) | remarks |",
            "|---|---|---:|---:|---:|---|",
        ]
        for o in s.methods:
            asked = "–" if o.asked is None else f"{o.asked:.3f}"
            if o.allocated and o.asked is not None:
                asked += " (ratio chosen for its target)"
            achieved = "–" if o.achieved is None else f"{o.achieved:.3f}"
            kept = f"{o.channels_kept:,} / {o.channels_total:,}" if o.channels_total else ""
            remarks = "; ".join(o.remarks).replace("|", "/")
            lines.append(
                f"| pruning[{o.entry}] {o.method} | all {len(o.layers)} selected ({o.measure}) | {asked} | "
                f"{achieved} | {kept} | {'**' + remarks + '**' if o.nothing else remarks} |"
            )
            for r in o.layers:
                ra = "–" if r.asked is None else f"{r.asked:.3f}"
                rk = f"{r.channels_kept} / {r.channels_total}" if r.channels_total else ""
                reason = (r.reason or "").replace("|", "/")
                lines.append(f"| | {_cell(r.name)} | {ra} | {r.achieved:.3f} | {rk} | {reason} |")
        for name in s.excluded:
            why = s.excluded_why.get(name, "no pruning entry selects it")
            lines.append(f"| not pruned | {_cell(name)} | | | | excluded: {_cell(why)} |")
        lines.append("")
    lines += ["| | dense | pruned | pruned / dense | verdict |", "|---|---:|---:|---:|---|"]

    def row(label: str, c: Change | None, fmt: Any, difference: bool = False) -> None:
        if c is None:
            return
        a = "–" if c.dense is None else fmt(c.dense)
        b = "–" if c.pruned is None else fmt(c.pruned)
        if difference:  # a fraction: its change is a difference, not a ratio
            change = "–" if c.dense is None or c.pruned is None else f"{c.pruned - c.dense:+.3f}"
        else:
            change = "–" if c.ratio is None else f"{c.ratio:.3f}x"
        verdict = c.verdict
        if change == "1.000x" and c.dense is not None and c.pruned is not None and c.pruned != c.dense:
            # A change under 0.05%, as the printed summary (_x) words it: 1.000x beside 'smaller' read as no change.
            verdict += f" by {fmt(abs(c.pruned - c.dense))}"
        lines.append(f"| {label} | {a} | {b} | {change} | {verdict} |")

    lines.append("| accuracy | {} | {} | {} | {} |".format(*acc_texts(d.accuracy, p.accuracy), s.accuracy.verdict))
    row("MACs per sample (dense count)", s.macs, lambda v: f"{v:,.0f}")
    if s.effective_macs and s.macs and s.effective_macs.pruned != s.macs.pruned:
        row("MACs per sample (nonzero weights only)", s.effective_macs, lambda v: f"{v:,.0f}")
    row("ONNX size, dense-stored", s.onnx_bytes, _fmt_bytes)
    row("ONNX size, dense-stored, gzip", s.onnx_gzip_bytes, _fmt_bytes)
    for bs, lc in s.latency.items():
        lo, hi = lc.band
        a, b = ms_text(lc.dense_ms), ms_text(lc.ms)
        lines.append(
            f"| latency p50, batch {bs} (ms) | {a} | {b} | {lc.ratio:.3f}x | {_verdict(lc)} (noise band "
            f"{lo:.3f}x–{hi:.3f}x) |"
        )
    row("params", s.params, lambda v: f"{v:,.0f}")
    if _makes_zeros(report, s):
        left_out = f", not-pruned {', '.join(_cell(n) for n in s.excluded)} included" if s.excluded else ""
        label = f"sparsity of the whole model (all prunable layers{left_out})"
        row(label, s.whole_model_sparsity, lambda v: f"{v:.3f}", difference=True)
    if s.int8 and report.int8:
        q = s.int8
        row("int8: ONNX size (vs dense fp32)", q.onnx_bytes, _fmt_bytes)
        row("int8: ONNX gzip (vs dense fp32)", q.onnx_gzip_bytes, _fmt_bytes)
        fp32, int8 = (q.accuracy.dense, q.accuracy.pruned) if q.accuracy else (None, None)
        if q.accuracy and fp32 is not None and int8 is not None:
            a, b, diff = acc_texts(fp32, int8)
            lines.append(f"| int8: accuracy (vs fp32 pruned) | {a} | {b} | {diff} | {q.accuracy.verdict} |")
        for bs, lc in q.latency.items():
            lo, hi = lc.band
            lines.append(
                f"| int8: latency p50, batch {bs} (ms) | {ms_text(lc.dense_ms)} | "
                f"{ms_text(lc.ms)} | {lc.ratio:.3f}x | {_verdict(lc)} (noise band "
                f"{lo:.3f}x–{hi:.3f}x) |"
            )
            fp32_ms = p.latency_ms.get(bs)
            if bs in q.vs_pruned_fp32 and fp32_ms is not None and lc.ms is not None:
                vs = q.vs_pruned_fp32[bs]
                word = q.vs_pruned_fp32_verdict.get(bs, "")
                lines.append(
                    f"| int8: latency p50 vs pruned fp32, batch {bs} (ms) | {ms_text(fp32_ms.p50)} (fp32) | "
                    f"{ms_text(lc.ms)} | {vs:.3f}x | {word} |"
                )
    lines.append("")
    return lines


def _cell(text: str) -> str:
    """A name from the user's model (or an edited report.json) as one Markdown table cell: a ``|`` or a line
    break would end the cell or the row, ``<`` would open HTML, a control character would reach the terminal of
    whoever prints the file."""
    return printable(text.replace("\r", " ").replace("\n", " ")).replace("|", "\\|").replace("<", "&lt;")


def render_markdown(report: Report) -> str:
    """report.md: the summary (recipe, asked vs achieved, dense -> pruned with verdicts), notes, then the
    details: sizes and the entropy estimate, the benchmark's noise, int8, parity, layers, fine-tuning
    history and the plots."""
    d, p = report.dense, report.pruned
    s = summarize(report)
    data = report.data
    lines = ["# sparsekit report", ""]
    lines += [
        f"Model `{report.model.factory}`. Data `{data.source}`: "
        + (
            "normalize not recorded (a report written before data.normalize)"
            if data.normalize is None
            else f"normalize `{data.normalize}` ({NORMALIZE.get(data.normalize, data.normalize)})"
            if data.source in BUILT_IN_IMAGES
            else f"normalize `{data.normalize}`: used as given (it applies to the built-in image sources only)"
        )
        + f"; {data.train_batches} training and {data.val_batches} validation batches; trained on {data.device}"
        + (f" in {data.processes} processes (each on 1/{data.processes} of the batches)" if data.processes > 1 else "")
        + ".",
        "",
    ]
    lines += _markdown_summary(report, s)
    if report.notes:
        lines += [f"- {note}" for note in report.notes] + [""]
    if report.expectation:
        lines.append(report.expectation)  # said before the run; the summary above says what came of it
        structural = any(o.measure == "output channels removed" for o in s.methods) or any(
            isinstance(e, dict) and e.get("method") == "l1" and e.get("group", "none") != "none"
            for e in report.recipe.get("pruning") or []
        )
        if not structural and report.int8 is None:
            lines.append(
                "For latency, remove whole neurons/channels (structured pruning, L1 groups) or quantize to int8."
            )
        lines.append("")
    else:
        lines += [ADVICE, ""]
    lines += ["## Details", "", "| | dense | pruned | pruned / dense |", "|---|---:|---:|---:|"]

    def row(label: str, key: str, fmt: Any = str) -> None:
        a, b = getattr(d, key), getattr(p, key)
        lines.append(
            f"| {label} | {fmt(a) if a is not None else '–'} | {fmt(b) if b is not None else '–'} | {_ratio(a, b)} |"
        )

    row("nonzero params", "nonzero_params", lambda v: f"{v:,}")
    # The estimate is compared with the dense file's gzip size, like the pruned gzip size in the summary.
    lines.append(
        f"| entropy estimate of the weights (ratio: to dense gzip) | {_fmt_bytes(_estimate(d))} | "
        f"{_fmt_bytes(_estimate(p))} | {_ratio(d.onnx_gzip_bytes, _estimate(p))} |"
    )
    st = report.storage
    if st:
        lines.append(
            f"| model.onnx as shipped ({st.encoding} storage) | | {_fmt_bytes(st.bytes)} | "
            f"{_ratio(d.onnx_bytes, st.bytes)} |"
        )
        lines.append(
            f"| model.onnx as shipped, gzip | | {_fmt_bytes(st.gzip_bytes)} | "
            f"{_ratio(d.onnx_gzip_bytes, st.gzip_bytes)} |"
        )
    # Over the ONNX file's nonzero params, biases included (BatchNorm folded away): "per nonzero weight" named a count
    # the report gives nowhere.
    row("gzip bytes per nonzero param of the ONNX file", "gzip_bytes_per_nonzero", lambda v: f"{v:.2f}")
    lines.append("")
    estimate = (
        "The entropy estimate is each weight tensor's zero mask at its entropy plus the nonzero values at their "
        "measured per-tensor entropy: an estimate of the weights' information, not a bound (a compressor that "
        "finds structure between weights, such as repeated rows or zero blocks, can go below it)."
    )
    if st:
        raw_floor = (
            f"; the raw file is {st.bytes / st.verbatim_bound_bytes:.2f}x its floor with the values stored verbatim "
            f"({_fmt_bytes(st.verbatim_bound_bytes)})"
            if st.verbatim_bound_bytes
            else ""
        )
        est = _estimate(st)
        lines += [
            f"Sizes are bytes with external data; gzip at level {st.gzip_level}. model.onnx stores its weights as "
            f"{st.encoding} initializers ({st.mode}: {st.reason}); its gzip size is "
            + (f"{st.gzip_bytes / est:.2f}x" if est else "n/a")
            + f" the weights' entropy estimate ({_fmt_bytes(est)}){raw_floor}. {estimate}",
            "",
        ]
    else:
        lines += [estimate, ""]
    if report.benchmark and report.benchmark.speedup:
        b = report.benchmark
        lines += [
            f"Latency: onnxruntime {b.provider}, {b.threads} thread(s), {_runs_words(b)} after at most {b.warmup} "
            "warm-up runs. The noise band is measured in the same run (the A/A control: the dense file against itself, "
            "and the spread across blocks of runs), and is never narrower than 5%, by which two onnxruntime sessions "
            "of one file can differ; a ratio inside it is no change.",
            "",
            "| batch | ratio | spread | A/A control | noise band | verdict |",
            "|---:|---:|---|---:|---|---|",
        ]
        for bs, sp in b.speedup.items():
            lo, hi = noise_band(sp.noise)
            lines.append(
                f"| {bs} | {sp.ratio:.3f} | {sp.spread[0]:.3f}–{sp.spread[1]:.3f} | {sp.aa_ratio:.3f} | "
                f"{lo:.3f}–{hi:.3f} | {_noisy(latency_verdict(sp.ratio, sp.noise), sp.noise)} |"
            )
        lines.append("")
    q = report.int8
    if q:
        lines.append(
            f"int8 ({q.mode} quantization, `model.int8.onnx`): entropy estimate "
            f"{_ratio(d.onnx_gzip_bytes, _estimate(q))} of dense gzip; pruned zeros still exactly zero: "
            f"{'yes' if q.zeros.get('zeros_ok') else 'NO'}"
            + (
                f"; top-1 agreement with fp32 {q.eval['top1_agreement']:.4f} on {q.eval['samples']} validation samples"
                if q.eval and q.eval.get("top1_agreement") is not None
                else ""
            )
            + "."
        )
        lines.append("")
    par = report.parity
    diff = "n/a" if par.max_abs_diff is None else f"{par.max_abs_diff:.2e}"
    lines.append(
        f"ONNX parity: max |onnx − torch| = {diff} ({'ok' + parity_scale(par) if par.ok else 'FAILED'}); zeros "
        "preserved in ONNX: "
        f"{'yes' if report.zeros_preserved else 'NO'}."
    )
    lines += [
        "",
        "## Layers",
        "",
        "| layer | type | shape | weights | nonzero | sparsity | pruned by |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    by: dict[str, list[str]] = {}
    for i, m in enumerate(report.methods):
        for name in m.layers:
            by.setdefault(name, []).append(f"pruning[{i}] {m.method}")
    for r in report.layers:
        lines.append(
            f"| {_cell(r.name)} | {_cell(r.type)} | {'x'.join(map(str, r.shape))} | {r.params:,} | "
            f"{r.nonzero_params:,} | {r.sparsity:.3f} | {', '.join(by.get(r.name, ['excluded']))} |"
        )
    if report.history:
        distill = (report.recipe.get("finetune") or {}).get("distill")
        lines += ["", "## Fine-tuning", ""]
        if distill:
            lines += [
                f"Distilled from the dense model (weight {distill['weight']:g}, temperature "
                f"{distill['temperature']:g}): train loss is (1 − weight)·cross-entropy + weight·T²·KL, not "
                "comparable with a run without it.",
                "",
            ]
        lines += [
            "| epoch | sparsity | train loss | val accuracy | lr |",
            "|---:|---:|---:|---:|---:|",
        ]
        for h in report.history:
            lines.append(f"| {h.epoch} | {h.sparsity:.3f} | {h.train_loss:.4f} | {h.val_accuracy:.4f} | {h.lr:.2e} |")
    if report.plots:
        lines += ["", "## Plots", ""] + [f"![{Path(f).stem}]({f})" for f in report.plots]
    return printable("\n".join(lines) + "\n")  # text quoted from the model or report.json included


def plot_data(report: Report) -> dict[str, Any]:
    """What :func:`sparsekit.plots.render` draws for ``report``, as plain data (see that module)."""
    latency = {"dense": report.dense.latency_ms, "pruned": report.pruned.latency_ms}
    if report.int8:
        latency["pruned int8"] = report.int8.latency_ms
    bench = report.benchmark
    noise: dict[str, dict[str, float]] = {}
    if bench:
        noise["pruned"] = {bs: sp.noise for bs, sp in bench.speedup.items()}
        if report.int8 and report.int8.speedup:
            noise["pruned int8"] = {bs: sp.noise for bs, sp in report.int8.speedup.items()}
    return {
        **_first_plot_data(report.layers, report.dense_layers, report.methods, report.recipe),
        "history": [
            {
                "epoch": h.epoch,
                "val_accuracy": h.val_accuracy,
                "sparsity": h.sparsity,
                "train_loss": h.train_loss,
                "lr": h.lr,
                **({"params": h.model_extra["params"]} if h.model_extra and "params" in h.model_extra else {}),
            }
            for h in report.history
        ],
        "dense_accuracy": report.dense.accuracy,
        "dense_params": report.dense.params,
        "final_params": report.pruned.params,
        "latency": {k: {b: v.p50 for b, v in lat.items()} for k, lat in latency.items() if lat},
        "noise": noise,
        "control": {bs: c.get("ratio_p50") for bs, c in bench.control.items()} if bench else {},
    }


def first_plot_data(
    layers: list[dict[str, Any]],
    dense_layers: list[dict[str, Any]],
    methods: list[dict[str, Any]],
    recipe: dict[str, Any],
    history: list[dict[str, Any]],
    dense_accuracy: float | None,
    dense_params: int | None,
    final_params: int | None = None,
) -> dict[str, Any]:
    """:func:`plot_data`'s part known when fine-tuning ends, before the report exists (what a prune run's
    plot worker draws beside the export): the same values as the report will give (``final_params``: the
    finalized model's parameters, the report's ``pruned.params``)."""
    return {
        **_first_plot_data(
            [Layer.model_validate(r) for r in layers],
            [Layer.model_validate(r) for r in dense_layers],
            [MethodResult.model_validate(m) for m in methods],
            recipe,
        ),
        "history": [
            {k: h[k] for k in ("epoch", "val_accuracy", "sparsity", "train_loss", "lr", "params") if k in h}
            for h in history
        ],
        "dense_accuracy": dense_accuracy,
        "dense_params": dense_params,
        "final_params": final_params,
    }


def _first_plot_data(
    layers: list[Layer], dense_layers: list[Layer], methods: list[MethodResult], recipe: dict[str, Any]
) -> dict[str, Any]:
    """The per-layer plot's data: each layer's sparsity, per-layer target, excluded or not, output channels
    [kept, at the start] and the fraction of them asked to be kept; the global targets."""
    outcomes, excluded_list = _outcomes(methods, recipe, dense_layers, layers)
    excluded = set(excluded_list)  # looked up once per layer: a list made this quadratic in the layers
    asked: dict[str, float] = {}
    targets = []
    for o, m in zip(outcomes, methods, strict=True):
        if o.measure != "weights zero":
            continue
        per_layer = [aim for aim in o.layers if aim.asked is not None]
        for aim in per_layer:
            asked[aim.name] = max(asked.get(aim.name, 0.0), aim.asked or 0.0)
        if not per_layer and o.asked is not None:  # ranked globally: one target over its layers together
            label = f"pruning[{o.entry}] {o.method} target {o.asked:.3f}"
            targets.append({"label": label, "value": o.asked, "layers": list(m.layers)})
    channels: dict[str, list[int]] = {}
    kept_asked: dict[str, float] = {}
    for o in outcomes:
        for aim in o.layers:
            if aim.channels_total:
                channels[aim.name] = [aim.channels_kept or 0, aim.channels_total]
                if aim.asked is not None and o.measure in ("output channels removed", "units zero"):
                    kept_asked[aim.name] = 1 - aim.asked
    rows = []
    for r in layers:
        row: dict[str, Any] = {"name": r.name, "sparsity": r.sparsity, "excluded": r.name in excluded}
        if r.name in asked:
            row["target"] = asked[r.name]
        if r.name in channels:
            row["channels"] = channels[r.name]
            if r.name in kept_asked:
                row["kept_target"] = kept_asked[r.name]
        rows.append(row)
    return {
        "layers": rows,
        "targets": targets,
        "structured": any(o.measure == "output channels removed" for o in outcomes) or bool(channels),
        "zeros": any(o.measure == "weights zero" for o in outcomes) or any(r.sparsity > 0 for r in layers),
    }


def write_plots(report: Report, out_dir: Path) -> list[str]:
    """Per-layer sparsity, sparsity/accuracy per epoch, latency by batch size (:mod:`sparsekit.plots`).
    Returns file names."""
    from .plots import render

    return render(plot_data(report), out_dir)


def write_report(report: Report, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.json, report.md and (with ``plots``) the PNG plots into ``out_dir``, each
    atomically; returns the paths written. Sets ``report.summary`` (:func:`summarize`) and
    ``report.plots`` (the plot file names). Raises :class:`~sparsekit.errors.SparsekitError` when
    matplotlib cannot draw the plots, after writing report.json and report.md."""
    out_dir = Path(out_dir)
    report.summary = summarize(report)  # derived: always what the rest of the report says
    failed = hint = None
    if plots:
        try:
            report.plots = write_plots(report, out_dir)
        except (KeyboardInterrupt, MemoryError, SparsekitError):
            raise
        except Exception as err:  # noqa: BLE001 - a broken matplotlib install: the text report still gets written
            failed, report.plots = one_line(err, 160), []
            # Not importable: the install. Otherwise it may be the values: a report.json edited to hold 1e308
            # fails inside matplotlib's tick code (inf and NaN, which a diverged run records, are drawn).
            hint = "" if isinstance(err, ImportError) else "a value in the report too large to plot (edited?), or "
    write_text(out_dir / "report.json", json.dumps(report.to_json(), indent=2) + "\n")
    write_text(out_dir / "report.md", render_markdown(report))
    if failed:
        raise SparsekitError(
            f"{out_dir}: report.json and report.md were written, but the plots could not be drawn: matplotlib "
            f"fails ({failed}): {hint}a broken matplotlib install (reinstall it, and leave MPLBACKEND unset)"
        )
    return [out_dir / "report.json", out_dir / "report.md", *(out_dir / f for f in report.plots)]
