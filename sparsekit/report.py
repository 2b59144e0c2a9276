"""The run report: its typed schema (report.json), and every sentence a user reads about a run.

:class:`Report` is what :func:`sparsekit.pipeline.run_prune` returns and what ``report.json`` holds
(:func:`report_schema`, which the ``report`` command prints, gives its JSON schema). All wording
lives here: the up-front expectation (:func:`what_it_buys`), the notes (:func:`notes`), the terminal
summary (:func:`render_summary`), ``report.md`` (:func:`render_markdown`) and the PNG plots.
``sparsekit report DIR`` re-renders the last two from report.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SparsekitError, one_line
from .fsutil import write_text

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
    train_batches: int
    val_batches: int
    processes: int = Field(1, description="training processes (torchrun ranks); each trained 1/processes of the data")
    device: str = Field("cpu", description="where the model trained (cpu, cuda:0, ...)")


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
    onnx_bytes: int = Field(description="ONNX file size in bytes, external data included")
    onnx_gzip_bytes: int
    onnx_params: int = Field(description="weights stored in the ONNX file (quantized ones included)")
    onnx_nonzero_params: int
    bytes_per_nonzero: float | None = None
    gzip_bytes_per_nonzero: float | None = None
    entropy_bound_bytes: int = Field(
        description="estimated information in the weights, bytes: each tensor's zero mask at its entropy plus the "
        "nonzero values at their measured entropy (sparsekit.onnx.weight_entropy); gzip lands above it unless the "
        "file has structure between weights (zero blocks, repeated values)"
    )
    verbatim_bound_bytes: int | None = Field(
        None, description="the same with nonzero values stored verbatim (all their bits): the floor for raw bytes"
    )
    opset: int | None = Field(None, description="ONNX opset of the written file, read back from it")
    exporter: str | None = Field(None, description="the exporter that wrote it: dynamo or torchscript")
    export_fallback: str | None = Field(None, description="why another exporter than the recipe's was used")
    latency_ms: dict[str, Latency] = Field(default_factory=dict)
    throughput_per_s: dict[str, float] = Field(default_factory=dict)


class Layer(_Closed):
    """One prunable layer (Linear/Conv): weight shape, counts, sparsity and MACs per sample."""

    name: str
    type: str
    shape: list[int]
    params: int
    nonzero_params: int
    sparsity: float
    macs: int | None = None
    effective_macs: int | None = None


class Epoch(_Open):
    """One fine-tuning epoch: sparsity reached, mean train loss, validation accuracy, learning rate."""

    epoch: int
    sparsity: float
    train_loss: float
    val_accuracy: float
    lr: float


class Parity(_Open):
    """ONNX output against torch output on the same seeded inputs (batches of 1, 3 and 4)."""

    max_abs_diff: float | None = Field(
        description="max |onnx - torch|; null when the outputs are not finite or could not be compared"
    )
    ok: bool
    error: str | None = Field(None, description="why the outputs could not be compared (onnxruntime failed, shapes)")


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


class Speedup(_Closed):
    """Latency ratio (other / dense, p50) at one batch size, with the noise measured in the same run."""

    ratio: float
    spread: list[float]
    noise: float = Field(description="half-width of the band within which a ratio is not a change")
    aa_ratio: float = Field(description="the A/A control: the dense file timed against itself")
    significant: bool


class Benchmark(_Closed):
    """How latency was measured (onnxruntime threads, timed runs, warm-up runs, provider) and the
    pruned/dense speedup per batch size with the A/A control per batch size."""

    threads: int
    runs: int
    warmup: int
    provider: str
    speedup: dict[str, Speedup]
    control: dict[str, dict[str, Any]]


class Int8(_Open):
    """The int8 (QDQ) model: sizes, whether every pruned zero stayed zero, and accuracy when data was given."""

    path: str
    mode: str
    onnx_bytes: int
    onnx_gzip_bytes: int
    entropy_bound_bytes: int
    zeros: dict[str, Any]
    eval: dict[str, Any] | None = None
    fallback: str | None = Field(None, description="why per-tensor scales were used instead of per-channel")
    latency_ms: dict[str, Latency] = Field(default_factory=dict)
    throughput_per_s: dict[str, float] = Field(default_factory=dict)
    speedup: dict[str, Speedup] | None = None


class StoredSizes(_Closed):
    """One candidate encoding of model.onnx: raw and gzip -9 bytes, external data included."""

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
    gzip_level: int = 9
    dense: StoredSizes
    sparse: StoredSizes | None = Field(None, description="the sparse candidate; null when none was built")
    entropy_bound_bytes: int = Field(description="as in Result: mask and values at their measured entropy")
    verbatim_bound_bytes: int = Field(description="mask at its entropy, nonzero values verbatim")
    bound_ratio: float | None = Field(None, description="gzip_bytes / entropy_bound_bytes")
    verbatim_bound_ratio: float | None = Field(None, description="gzip_bytes / verbatim_bound_bytes")
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
    ``report`` (notes, plots); phases a run skips are absent. Process start-up and imports come before
    the run and are not in ``total``."""

    seconds: dict[str, float]
    total: float = Field(description="from the start of the run to the report, seconds")
    outside_finetune: float = Field(description="total minus finetune, seconds")
    outside_finetune_ratio: float | None = Field(
        description="everything but fine-tuning over fine-tuning: outside_finetune / seconds.finetune (None "
        "without fine-tuning); 1.0 means the run costs twice its fine-tuning"
    )


class Report(_Closed):
    """report.json of a ``sparsekit prune`` run. Keys of ``latency_ms``, ``speedup`` and the like are
    batch sizes as strings (JSON object keys)."""

    schema_version: Literal[1] = Field(1, alias="schema")
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
    """Read a report.json. Raises :class:`~sparsekit.errors.SparsekitError` naming the file and the
    first field at fault when it is missing, not JSON, or not a report sparsekit wrote."""
    src = Path(path)
    if not src.is_file():
        raise SparsekitError(f"{src}: not found; run sparsekit's prune first")
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except RecursionError:
        raise SparsekitError(f"{src}: nested too deeply to be a report.json written by sparsekit") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SparsekitError(f"{src}: not valid JSON ({one_line(err, 120)})") from None
    try:
        return Report.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SparsekitError(
            f"{src}: not a report.json written by sparsekit prune ({where}: {first['msg']}); run prune again"
        ) from None


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
        parts.append("int8 quantization cuts size about 4x and usually latency")
    if not parts:
        parts.append("no method here creates zeros or removes units: expect no size or latency change")
    return "What this recipe can buy: " + "; ".join(parts) + "."


def notes(report: Report) -> list[str]:
    """What the numbers mean, and what to do when something went wrong: one sentence each."""
    d, p = report.dense, report.pruned
    out = []
    dead = [r.name for r in report.layers if r.params and r.nonzero_params == 0]
    if dead:
        out.append(
            f"Every weight of {', '.join(dead)} is zero, so its output is a constant (its bias, if it has one): "
            "lower the pruning strength/sparsity there, lower max_layer_sparsity, or exclude it (layers.exclude)."
        )
    for m in report.methods:
        du = m.dead_units
        if du and du.found:
            out.append(
                f"{m.method}: {du.found - du.kept} of {du.found} all-zero units removed; {du.kept} kept "
                "because removing them would change the outputs or the layout does not allow it (a residual "
                "add, depthwise conv, zero padding, a norm over the units such as LayerNorm, tied weights, or a "
                "graph the removal cannot trace)."
            )
    for i, m in enumerate(report.methods):
        if m.asked is not None and m.achieved is not None and m.achieved + 0.005 < m.asked:
            why = f": {m.reason}" if m.reason else ""
            out.append(
                f"pruning[{i}] ({m.method}) reached {m.achieved:.3f} of the {m.asked:.3f} asked over its layers{why}."
            )
        for name, aim in m.per_layer.items():
            if aim.reason:
                asked = "" if aim.asked is None else f" of {aim.asked:.3f} asked"
                out.append(f"pruning[{i}] ({m.method}) {name}: {aim.achieved:.3f}{asked}: {aim.reason}.")
    drop = d.accuracy - p.accuracy
    if drop > 0.03:
        epochs = report.recipe["finetune"]["epochs"]
        out.append(
            f"Accuracy fell {drop:.3f} ({d.accuracy:.4f} -> {p.accuracy:.4f}) with {epochs} fine-tuning "
            "epoch(s): fine-tune longer, prune less, or spread pruning over more of the schedule."
        )
    for label, r in (("dense", d), ("pruned", p)):
        if r.export_fallback:
            out.append(f"{label} ONNX written by the {r.exporter} exporter at opset {r.opset}: {r.export_fallback}.")
    macs_ratio = p.macs / d.macs if d.macs and p.macs is not None else None
    if macs_ratio is not None and macs_ratio < 1:
        out.append(f"Structural removal cut dense MACs to {macs_ratio:.3f}x of the original.")
    for bs, s in (report.benchmark.speedup if report.benchmark else {}).items():
        if not s.significant:
            out.append(
                f"batch {bs}: latency ratio {s.ratio:.3f} is within the measured noise "
                f"(noise band ±{s.noise:.3f} from the A/A control and run spread): no speedup claimed."
            )
        elif macs_ratio:
            out.append(
                f"batch {bs}: latency ratio {s.ratio:.3f} vs MACs ratio {macs_ratio:.3f} "
                f"(latency ÷ MACs = {s.ratio / macs_ratio:.2f})."
            )
    if d.onnx_gzip_bytes and p.onnx_gzip_bytes:
        out.append(
            f"gzip size {p.onnx_gzip_bytes / d.onnx_gzip_bytes:.3f}x of dense gzip "
            f"(raw {p.onnx_bytes / d.onnx_bytes:.3f}x of dense raw), dense-stored; the pruned weights' entropy "
            f"bound is {p.entropy_bound_bytes / d.onnx_gzip_bytes:.3f}x of dense gzip."
        )
    st = report.storage
    if st:
        how = "sparse initializers" if st.encoding == "sparse" else "dense initializers"
        ratio = f"{st.bound_ratio:.2f}x" if st.bound_ratio is not None else "n/a"
        verbatim = f"{st.verbatim_bound_ratio:.2f}x" if st.verbatim_bound_ratio is not None else "n/a"
        out.append(
            f"model.onnx ships with {how} ({st.mode}: {st.reason}): gzip -{st.gzip_level} {st.gzip_bytes:,} B, "
            f"{ratio} the entropy bound ({st.entropy_bound_bytes:,} B: zero masks and nonzero values at their "
            f"measured entropy) and {verbatim} the bound with values verbatim ({st.verbatim_bound_bytes:,} B)"
            + ("; onnxruntime densifies it at load: memory and latency unchanged." if st.encoding == "sparse" else ".")
        )
    q = report.int8
    if q and d.onnx_gzip_bytes:
        ev = q.eval or {}
        out.append(
            f"int8 ({q.mode}): gzip {q.onnx_gzip_bytes / d.onnx_gzip_bytes:.3f}x of dense "
            f"(bound {q.entropy_bound_bytes / d.onnx_gzip_bytes:.3f}x), accuracy "
            f"{ev.get('int8_accuracy', float('nan')):.4f} vs fp32 {ev.get('fp32_accuracy', float('nan')):.4f}, "
            f"top-1 agreement {ev.get('top1_agreement', float('nan')):.4f}, zeros kept: "
            f"{q.zeros['zeros_ok']}."
        )
        if q.fallback:
            out.append(f"int8: {q.fallback}.")
        for bs, s in (q.speedup or {}).items():
            out.append(
                f"int8 batch {bs}: latency ratio {s.ratio:.3f} vs dense{'' if s.significant else ' (within noise)'}."
            )
    ss = report.sparse_storage
    if ss:
        out.append(
            f"sparse storage (model.sparse.onnx): {ss.bytes_after:,} B vs {ss.bytes_before:,} B raw; "
            "onnxruntime densifies it at load, so it saves disk, not time."
        )
    return out


def _diff(value: float | None) -> str:
    return "n/a (outputs not finite)" if value is None else f"{value:.2e}"


def render_summary(report: Report, out: str | Path) -> str:
    """The lines ``sparsekit prune`` prints when it finishes (``out``: the output folder)."""
    d, p = report.dense, report.pruned
    lines = [
        f"Wrote {out}/ (model.pt, model.onnx, dense.onnx, report.md, report.json)",
        f"  accuracy  {d.accuracy:.4f} -> {p.accuracy:.4f}",
        f"  sparsity  {d.sparsity:.3f} -> {p.sparsity:.3f}   params {d.params:,} -> {p.params:,}",
        f"  ONNX size {d.onnx_bytes:,} -> {p.onnx_bytes:,} B dense-stored; gzip {d.onnx_gzip_bytes:,} -> "
        f"{p.onnx_gzip_bytes:,} B ({p.onnx_gzip_bytes / d.onnx_gzip_bytes:.3f}x)",
        *_storage_summary(report),
        f"  parity    max |onnx - torch| {_diff(report.parity.max_abs_diff)} "
        f"({'ok' if report.parity.ok else 'FAILED'}{': ' + report.parity.error if report.parity.error else ''}), "
        f"zeros kept in ONNX: {report.zeros_preserved}",
    ]
    for i, m in enumerate(report.methods):
        if m.achieved is None:
            continue
        what = "channels removed" if m.method == "structured" else "weights zero"
        asked = "" if m.asked is None else f"asked {m.asked:.3f}, "
        lines.append(
            f"  pruning[{i}] {m.method}: {asked}achieved {m.achieved:.3f} ({what}, over its {len(m.layers)} layers)"
        )
    for bs, s in (report.benchmark.speedup if report.benchmark else {}).items():
        verdict = "within noise" if not s.significant else "faster" if s.ratio < 1 else "slower"
        lines.append(
            f"  latency   batch {bs}: {d.latency_ms[bs].p50:.3f} -> {p.latency_ms[bs].p50:.3f} ms "
            f"(ratio {s.ratio:.3f}, noise ±{s.noise:.3f}: {verdict})"
        )
    lines += [f"  note      {n}" for n in report.notes]
    lines.append(f"  {report.expectation}")
    return "\n".join(lines)


def _storage_summary(report: Report) -> list[str]:
    """The summary line on the shipped model.onnx's encoding, when the report has one."""
    st = report.storage
    if st is None:
        return []
    ratio = f", {st.bound_ratio:.2f}x the entropy bound {st.entropy_bound_bytes:,} B" if st.bound_ratio else ""
    if st.verbatim_bound_ratio:
        ratio += f" ({st.verbatim_bound_ratio:.2f}x with values verbatim)"
    return [
        f"  stored    model.onnx {st.encoding} ({st.mode}): {st.bytes:,} B, gzip {st.gzip_bytes:,} B "
        f"({st.gzip_bytes / st.dense.gzip_bytes:.3f}x of dense storage){ratio}"
    ]


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


def render_markdown(report: Report) -> str:
    """report.md: the dense/pruned table, the benchmark with its noise band, int8, notes, layers,
    fine-tuning history and the plots."""
    d, p = report.dense, report.pruned
    lines = ["# sparsekit report", ""]
    lines += [f"Model `{report.model.factory}`, data `{report.data.source}`. " + ADVICE, ""]
    if report.expectation:
        lines += [report.expectation, ""]
    lines += ["| | dense | pruned | pruned / dense |", "|---|---:|---:|---:|"]

    def row(label: str, key: str, fmt: Any = str) -> None:
        a, b = getattr(d, key), getattr(p, key)
        lines.append(
            f"| {label} | {fmt(a) if a is not None else '–'} | {fmt(b) if b is not None else '–'} | {_ratio(a, b)} |"
        )

    lines.append(f"| accuracy | {d.accuracy:.4f} | {p.accuracy:.4f} | {p.accuracy - d.accuracy:+.4f} |")
    lines.append(f"| sparsity (prunable weights) | {d.sparsity:.3f} | {p.sparsity:.3f} | |")
    row("params", "params", lambda v: f"{v:,}")
    row("nonzero params", "nonzero_params", lambda v: f"{v:,}")
    row("MACs (dense count)", "macs", lambda v: f"{v:,}")
    row("MACs (nonzero weights)", "effective_macs", lambda v: f"{v:,}")
    row("ONNX size, dense-stored", "onnx_bytes", _fmt_bytes)
    row("ONNX size, dense-stored, gzip", "onnx_gzip_bytes", _fmt_bytes)
    # The bound is compared with the dense file's gzip size, like the pruned gzip size above it.
    lines.append(
        f"| entropy bound of the weights (ratio: to dense gzip) | {_fmt_bytes(d.entropy_bound_bytes)} | "
        f"{_fmt_bytes(p.entropy_bound_bytes)} | {_ratio(d.onnx_gzip_bytes, p.entropy_bound_bytes)} |"
    )
    st = report.storage
    if st:
        # The shipped file against dense gzip, like the rows above; its ratio to the bound in the text below.
        lines.append(
            f"| model.onnx as shipped ({st.encoding} storage) | | {_fmt_bytes(st.bytes)} | "
            f"{_ratio(d.onnx_bytes, st.bytes)} |"
        )
        lines.append(
            f"| model.onnx as shipped, gzip | | {_fmt_bytes(st.gzip_bytes)} | "
            f"{_ratio(d.onnx_gzip_bytes, st.gzip_bytes)} |"
        )
    row("gzip bytes per nonzero weight", "gzip_bytes_per_nonzero", lambda v: f"{v:.2f}")
    for bs, lat in d.latency_ms.items():
        pl = p.latency_ms.get(bs)
        if pl:
            lines.append(f"| latency p50, batch {bs} (ms) | {lat.p50:.3f} | {pl.p50:.3f} | {pl.p50 / lat.p50:.3f}x |")
    lines.append("")
    if st:
        lines += [
            f"Sizes are bytes with external data; gzip at level {st.gzip_level}. model.onnx stores its weights as "
            f"{st.encoding} initializers ({st.mode}: {st.reason}); its gzip size is "
            + (f"{st.bound_ratio:.2f}x" if st.bound_ratio is not None else "n/a")
            + f" the entropy bound ({_fmt_bytes(st.entropy_bound_bytes)}: each tensor's zero mask at its entropy plus "
            "the nonzero values at their measured entropy) and "
            + (f"{st.verbatim_bound_ratio:.2f}x" if st.verbatim_bound_ratio is not None else "n/a")
            + f" the bound with values stored verbatim ({_fmt_bytes(st.verbatim_bound_bytes)}).",
            "",
        ]
    if report.benchmark and report.benchmark.speedup:
        lines.append(
            "Latency ratio (pruned/dense, p50) with the noise band measured in the same run (the A/A control: "
            "the dense file against itself, and the spread across blocks of runs):"
        )
        lines.append("")
        lines.append("| batch | ratio | spread | noise band (±) | significant |")
        lines.append("|---:|---:|---|---:|---|")
        for bs, s in report.benchmark.speedup.items():
            lines.append(
                f"| {bs} | {s.ratio:.3f} | {s.spread[0]:.3f}–{s.spread[1]:.3f} | "
                f"{s.noise:.3f} | {'yes' if s.significant else 'no (within noise)'} |"
            )
        lines.append("")
    q = report.int8
    if q:
        ev = q.eval or {}
        lines += [
            f"int8 ({q.mode} quantization, `model.int8.onnx`): {_fmt_bytes(q.onnx_bytes)} raw "
            f"({_ratio(d.onnx_bytes, q.onnx_bytes)} of dense), {_fmt_bytes(q.onnx_gzip_bytes)} gzip "
            f"({_ratio(d.onnx_gzip_bytes, q.onnx_gzip_bytes)}; entropy bound "
            f"{_ratio(d.onnx_gzip_bytes, q.entropy_bound_bytes)}); pruned zeros still exactly zero: "
            f"{'yes' if q.zeros['zeros_ok'] else 'NO'}."
        ]
        if ev:
            lines.append(
                f"Accuracy int8 {ev['int8_accuracy']:.4f} vs fp32 {ev['fp32_accuracy']:.4f}; top-1 "
                f"agreement {ev['top1_agreement']:.4f} on {ev['samples']} validation samples."
            )
        for bs, lat in q.latency_ms.items():
            dl = d.latency_ms.get(bs)
            if dl:
                lines.append(f"int8 latency p50 at batch {bs}: {lat.p50:.3f} ms ({lat.p50 / dl.p50:.3f}x dense).")
        lines.append("")
    aims = [(i, m) for i, m in enumerate(report.methods) if m.per_layer]
    if aims:
        lines += [
            "## Asked vs achieved",
            "",
            "| entry | layer | asked | achieved | reason |",
            "|---|---|---:|---:|---|",
        ]
        for i, m in aims:
            total_asked = "–" if m.asked is None else f"{m.asked:.3f}"
            total = "–" if m.achieved is None else f"{m.achieved:.3f}"
            lines.append(f"| pruning[{i}] {m.method} | all selected | {total_asked} | {total} | |")
            for name, aim in m.per_layer.items():
                asked = "–" if aim.asked is None else f"{aim.asked:.3f}"
                lines.append(f"| | {name} | {asked} | {aim.achieved:.3f} | {aim.reason or ''} |")
        lines.append("")
    for note in report.notes:
        lines.append(f"- {note}")
    if report.notes:
        lines.append("")
    par = report.parity
    diff = "n/a" if par.max_abs_diff is None else f"{par.max_abs_diff:.2e}"
    lines.append(
        f"ONNX parity: max |onnx − torch| = {diff} ({'ok' if par.ok else 'FAILED'}); zeros preserved in ONNX: "
        f"{'yes' if report.zeros_preserved else 'NO'}."
    )
    lines += [
        "",
        "## Layers",
        "",
        "| layer | type | shape | params | nonzero | sparsity |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in report.layers:
        lines.append(
            f"| {r.name} | {r.type} | {'x'.join(map(str, r.shape))} | {r.params:,} | "
            f"{r.nonzero_params:,} | {r.sparsity:.3f} |"
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
    return "\n".join(lines) + "\n"


def plot_data(report: Report) -> dict[str, Any]:
    """What :func:`sparsekit.plots.render` draws for ``report``, as plain data."""
    latency = {"dense": report.dense.latency_ms, "pruned": report.pruned.latency_ms}
    if report.int8:
        latency["pruned int8"] = report.int8.latency_ms
    return {
        "layers": [{"name": r.name, "sparsity": r.sparsity} for r in report.layers],
        "history": [{"epoch": h.epoch, "val_accuracy": h.val_accuracy, "sparsity": h.sparsity} for h in report.history],
        "dense_accuracy": report.dense.accuracy,
        "latency": {k: {b: v.p50 for b, v in lat.items()} for k, lat in latency.items() if lat},
    }


def write_plots(report: Report, out_dir: Path) -> list[str]:
    """Per-layer sparsity, sparsity/accuracy per epoch, latency by batch size (:mod:`sparsekit.plots`).
    Returns file names."""
    from .plots import render

    return render(plot_data(report), out_dir)


def write_report(report: Report, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.json, report.md and (with ``plots``) the PNG plots into ``out_dir``, each
    atomically; returns the paths written. Sets ``report.plots`` to the plot file names."""
    out_dir = Path(out_dir)
    if plots:
        report.plots = write_plots(report, out_dir)
    write_text(out_dir / "report.json", json.dumps(report.to_json(), indent=2) + "\n")
    write_text(out_dir / "report.md", render_markdown(report))
    return [out_dir / "report.json", out_dir / "report.md", *(out_dir / f for f in report.plots)]
