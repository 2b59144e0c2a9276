"""`sparsekit prune` end to end: load → evaluate dense → prune while fine-tuning → finalize → save
→ export → parity → benchmark → report. The CLI is a thin wrapper around :func:`run_prune`."""

from __future__ import annotations

import copy
import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from . import __version__
from .data import load_data
from .errors import DataError, ModelFileError, SparsekitError
from .modelio import LoadedModel, infer_input_shape, read_model, save_model
from .pruner import Pruner
from .recipe import Recipe
from .stats import layer_report, model_stats
from .train import calibrate, evaluate, finetune

log = logging.getLogger("sparsekit")


def resolve_model(
    model_path: str | Path, recipe: Recipe, arch: str | None, trust: bool, trust_code: bool = False
) -> LoadedModel:
    """Load MODEL: ``--arch`` beats the checkpoint's own factory, which beats the recipe's ``model``.
    A factory named by the checkpoint or the recipe runs only when confirmed (see :mod:`sparsekit.trust`)."""
    spec = recipe.model
    kwargs = spec.kwargs if arch and spec.factory in (None, arch) and spec.kwargs else None
    loaded = read_model(
        model_path,
        arch,
        kwargs=kwargs,
        trust=trust,
        trust_code=trust_code,
        fallback_factory=spec.factory,
        fallback_kwargs=spec.kwargs,
        fallback_named_in=recipe.source or "the recipe",
        probe=None if kwargs is None else True,  # recipe kwargs are a file's data too
    )
    if spec.input_shape and loaded.input_shape and list(spec.input_shape)[1:] != list(loaded.input_shape)[1:]:
        raise DataError(
            f"model.input_shape: the recipe says {list(spec.input_shape)} but {model_path} was saved for input "
            f"{list(loaded.input_shape)}; use a recipe for this model or --set model.input_shape=null"
        )
    shape = spec.input_shape or loaded.input_shape or infer_input_shape(loaded.model)
    if not shape:
        raise SparsekitError(
            f"{model_path}: cannot tell the model's input shape; set model.input_shape in the recipe "
            "(e.g. --set model.input_shape=[1,1,28,28])"
        )
    loaded.input_shape = list(shape)
    return loaded


def check_input(model: nn.Module, input_shape: list[int], where: str) -> int:
    """Run one forward pass; returns the number of outputs (classes)."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros([2, *input_shape[1:]]))
    except MemoryError:
        raise
    except Exception as err:  # any shape error from the user's model
        msg = str(err).strip().splitlines()[0]
        raise DataError(
            f"{where}: the model does not accept inputs of shape {input_shape}: {msg}; set model.input_shape in "
            "the recipe (or --set model.input_shape=[1,...]) to the shape it takes"
        ) from None
    if out.dim() != 2:
        raise DataError(
            f"{where}: the model returns shape {list(out.shape)}; sparsekit expects logits [batch, classes]"
        )
    return int(out.shape[1])


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "sparsekit": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def run_prune(
    model_path: str | Path,
    recipe: Recipe,
    out: str | Path,
    *,
    arch: str | None = None,
    data: str | None = None,
    trust: bool = False,
    trust_code: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole recipe on the model file and write DIR; returns report.json's content.

    ``arch`` and ``data`` are the caller's own choices; a model factory or data callable named by the
    model file or the recipe runs only with ``trust_code=True`` or a trusted module. ``trust`` allows
    unpickling a whole-module MODEL. Every output is built in ``DIR/.sparsekit/next`` and moved into
    DIR at the end, replacing only files an earlier sparsekit run wrote there (see
    :mod:`sparsekit.outputs`). ``notify`` receives one-line messages meant for the user (the CLI
    prints them on stderr). Raises :class:`~sparsekit.errors.SparsekitError` subclasses for bad input."""
    out = Path(out)
    from .outputs import RunFolder

    source = data or recipe.data.source
    data_file = source if source.endswith(".npz") else None
    folder = RunFolder.prepare(out, inputs=[model_path, recipe.source, data_file], overwrite=overwrite, resume=resume)
    torch.manual_seed(recipe.seed)
    loaded = resolve_model(model_path, recipe, arch, trust, trust_code)
    model, shape = loaded.model, cast(list[int], loaded.input_shape)  # resolve_model always sets it
    factory = loaded.factory or arch or recipe.model.factory
    classes = check_input(model, shape, str(model_path))
    bundle = load_data(
        source,
        batch_size=recipe.data.batch_size,
        val_fraction=recipe.data.val_fraction,
        seed=recipe.seed,
        input_shape=shape,
        synthetic_samples=recipe.data.synthetic_samples,
        num_classes=classes,
        named_in=None if data else (recipe.source or "the recipe"),
        trust_code=trust_code,
    )
    if not factory:
        raise ModelFileError(
            f"{model_path}: a pickled module names no architecture; pass --arch pkg.module:callable too, so the "
            "pruned model can be saved as a safe checkpoint"
        )
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelFileError(f"{model_path}: weights hold NaN or inf values ({', '.join(bad[:4])}); nothing to prune")
    spe = (
        len(bundle.train)
        if recipe.finetune.max_steps_per_epoch is None
        else min(len(bundle.train), recipe.finetune.max_steps_per_epoch)
    )
    # Dry run on a copy: every recipe/model mismatch (patterns, overlaps, groups, ...) fails here,
    # before the output folder is touched.
    Pruner(copy.deepcopy(model), recipe, steps_per_epoch=spe, context={"input_shape": shape})
    stage = folder.begin()  # after inputs are known good: a typo never touches the folder
    try:
        args = (stage, out, str(model_path), shape, factory, source, bundle, spe, resume, progress, notify)
        report = _run_stages(model, loaded, recipe, *args)
        folder.publish()
    finally:
        folder.unlock()
    return report


def _run_stages(
    model: nn.Module,
    loaded: LoadedModel,
    recipe: Recipe,
    out: Path,
    final_out: Path,
    model_path: str,
    shape: list[int],
    factory: str,
    source: str,
    bundle: Any,
    spe: int,
    resume: bool,
    progress: bool,
    notify: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Everything after the inputs are checked, written into the staging folder ``out``; paths in the
    report name the files where they will be once published (``final_out``)."""
    from .export import check_zeros, export_onnx

    expectation = what_it_buys(recipe)
    if notify:
        notify(expectation)

    log.info("evaluating the dense model")
    dense_metrics = evaluate(model, bundle.val)
    dense_stats = model_stats(model, shape)
    dense_layers = layer_report(model, shape)
    ex = recipe.export
    dense_export = export_onnx(model, out / "dense.onnx", shape, opset=ex.opset, exporter=ex.exporter)

    model.train()
    pruner = Pruner(model, recipe, steps_per_epoch=spe, context={"input_shape": shape})
    history: list[dict[str, Any]] = []
    if recipe.finetune.epochs > 0:
        model, history, pruner = finetune(
            model,
            recipe,
            bundle.train,
            bundle.val,
            pruner=pruner,
            progress=progress,
            checkpoint_dir=out / "checkpoints",
            resume=resume,
        )
    elif any(m.needs_grad for m in pruner.methods):
        batches = max(getattr(s, "calibration_batches", 0) for s in recipe.pruning)
        calibrate(model, pruner, bundle.train, batches)
    model = pruner.finalize().eval()

    pruned_metrics = evaluate(model, bundle.val)
    pruned_stats = model_stats(model, shape)
    save_model(model, out / "model.pt", factory, kwargs=loaded.kwargs, input_shape=shape, pruner=pruner)
    pruned_export = export_onnx(model, out / "model.onnx", shape, opset=ex.opset, exporter=ex.exporter)
    zeros = check_zeros(model, out / "model.onnx")
    int8 = _quantize(out, bundle) if ex.quantize == "int8" else None
    sparse_store = None
    if ex.sparse_storage:
        from .sparse_storage import to_sparse_storage

        sparse_store = to_sparse_storage(out / "model.onnx", out / "model.sparse.onnx")

    report: dict[str, Any] = {
        "schema": 1,
        "model": {"path": model_path, "factory": factory, "kwargs": loaded.kwargs, "input_shape": shape},
        "data": {"source": source, "train_batches": len(bundle.train), "val_batches": len(bundle.val)},
        "dense": {**dense_metrics, **dense_stats, **_sizes(out / "dense.onnx", 32)},
        "pruned": {**pruned_metrics, **pruned_stats, **_sizes(out / "model.onnx", 32)},
        "layers": layer_report(model, shape),
        "dense_layers": dense_layers,
        "history": history,
        "parity": pruned_export["parity"],
        "dense_parity": dense_export["parity"],
        "zeros_preserved": zeros["zeros_ok"],
        "zeros": zeros["layers"],
        "methods": _method_reports(pruner),
        "recipe": recipe.model_dump(mode="json"),
        "versions": _versions(),
        "int8": int8,
        "sparse_storage": sparse_store,
        "expectation": expectation,
        "notes": [],
    }
    for key, name in (("int8", "model.int8.onnx"), ("sparse_storage", "model.sparse.onnx")):
        if report.get(key):
            report[key]["path"] = str(final_out / name)
    if recipe.benchmark.enabled:
        _benchmark_into(report, out, recipe, shape, progress)
    report["notes"] = _notes(report)
    from .report import write_report

    write_report(report, out)
    return report


def what_it_buys(recipe: Recipe) -> str:
    """Say plainly, before the run, what this recipe's sparsity can buy on onnxruntime's CPU kernels."""
    kinds = {spec.method for spec in recipe.pruning}
    structural = "structured" in kinds or any(
        spec.method == "l1" and spec.group != "none" and spec.remove_dead for spec in recipe.pruning
    )
    unstructured = bool(kinds & {"magnitude", "gradient"}) or any(
        spec.method == "l1" and spec.group == "none" for spec in recipe.pruning
    )
    parts = []
    if unstructured:
        parts.append("unstructured zeros shrink the compressed (gzip) file but not onnxruntime CPU latency")
    if not structural and any(s.method == "l1" and s.group == "none" and s.remove_dead for s in recipe.pruning):
        parts.append("neurons whose weights all reach zero under L1 are removed, which buys latency only if many do")
    if structural:
        parts.append("removing whole neurons/channels shrinks the model and its latency (up to the MACs ratio)")
    if recipe.export.quantize == "int8":
        parts.append("int8 quantization cuts size about 4x and usually latency")
    if not parts:
        parts.append("no method here creates zeros or removes units: expect no size or latency change")
    return "What this recipe can buy: " + "; ".join(parts) + "."


def _sizes(path: Path, value_bits: int) -> dict[str, Any]:
    """Size of an ONNX file (external data included) and how close gzip comes to the entropy bound
    (nonzero fraction x value bits + binary entropy of the zero mask, per weight)."""
    from .export import entropy_bound_bytes, size_report
    from .onnx_macs import param_counts

    counts = param_counts(path)  # quantized weights count as weights, so int8 and fp32 compare alike
    s = size_report(path, counts["nonzero_params"])
    bound = entropy_bound_bytes(counts["params"], counts["nonzero_params"], value_bits)
    return {
        "onnx_bytes": s["bytes"],
        "onnx_gzip_bytes": s["gzip_bytes"],
        "onnx_params": counts["params"],
        "onnx_nonzero_params": counts["nonzero_params"],
        "bytes_per_nonzero": s["bytes_per_nonzero"],
        "gzip_bytes_per_nonzero": s["gzip_bytes_per_nonzero"],
        "entropy_bound_bytes": round(bound),
    }


def _quantize(out: Path, bundle: Any) -> dict[str, Any]:
    """int8 QDQ calibrated on training batches; accuracy and top-1 agreement measured on validation."""
    from .quantize import quantize_on_data

    res = quantize_on_data(out / "model.onnx", out / "model.int8.onnx", bundle)
    res.update(_sizes(out / "model.int8.onnx", 8))
    return res


def _method_reports(pruner: Pruner) -> list[dict[str, Any]]:
    rows = []
    for m, spec in zip(pruner.methods, pruner.recipe.pruning, strict=True):
        row: dict[str, Any] = {"method": m.name, "layers": list(m.layers)}
        if hasattr(m, "report"):
            row.update(m.report())
        if hasattr(spec, "sparsity"):
            row["target_sparsity"] = spec.sparsity
        rows.append(row)
    return rows


def _benchmark_into(report: dict[str, Any], out: Path, recipe: Recipe, shape: list[int], progress: bool) -> None:
    from .bench import benchmark

    b = recipe.benchmark
    files = [out / "dense.onnx", out / "model.onnx"] + ([out / "model.int8.onnx"] if report.get("int8") else [])
    res = benchmark(
        files,
        b.batch_sizes,
        threads=b.threads,
        warmup=b.warmup,
        runs=b.runs,
        input_shape=shape,
        progress=progress,
        seed=recipe.seed,
    )
    keys = ["dense", "pruned", "int8"][: len(files)]
    for key, f in zip(keys, res["files"], strict=True):
        report[key]["latency_ms"] = f["latency_ms"]
        report[key]["throughput_per_s"] = f["throughput_per_s"]

    def speedup_of(f: dict[str, Any]) -> dict[str, Any]:
        return {
            bs: {
                "ratio": r["p50"],
                "spread": r["spread"],
                "noise": f["noise_band"][bs],  # the band actually used to call a change significant
                "aa_ratio": res["control"][bs]["ratio_p50"],
                "significant": bool(f.get("speedup_significant", {}).get(bs, False)),
            }
            for bs, r in f["ratio_to_first"].items()
        }

    speedup = speedup_of(res["files"][1])
    if len(files) == 3:
        report["int8"]["speedup"] = speedup_of(res["files"][2])
    report["benchmark"] = {
        "threads": b.threads,
        "runs": b.runs,
        "warmup": b.warmup,
        "provider": res["provider"],
        "speedup": speedup,
        "control": res["control"],
    }


def _notes(report: dict[str, Any]) -> list[str]:
    d, p = report["dense"], report["pruned"]
    notes = []
    dead = [r["name"] for r in report["layers"] if r["params"] and r["nonzero_params"] == 0]
    if dead:
        notes.append(
            f"Every weight of {', '.join(dead)} is zero, so the layer passes on only its bias: lower the "
            "pruning strength/sparsity there or exclude it (layers.exclude)."
        )
    for m in report.get("methods", []):
        du = m.get("dead_units")
        if du and du["found"]:
            notes.append(
                f"{m['method']}: {du['found'] - du['kept']} of {du['found']} all-zero units removed; {du['kept']} kept "
                "because removing them would change the outputs (residual add, depthwise conv or zero padding)."
            )
    drop = d["accuracy"] - p["accuracy"]
    if drop > 0.03:
        epochs = report["recipe"]["finetune"]["epochs"]
        notes.append(
            f"Accuracy fell {drop:.3f} ({d['accuracy']:.4f} -> {p['accuracy']:.4f}) with {epochs} fine-tuning "
            "epoch(s): fine-tune longer, prune less, or spread pruning over more of the schedule."
        )
    if d.get("macs") and p.get("macs") is not None and p["macs"] < d["macs"]:
        notes.append(f"Structural removal cut dense MACs to {p['macs'] / d['macs']:.3f}x of the original.")
    for bs, s in (report.get("benchmark") or {}).get("speedup", {}).items():
        if not s["significant"]:
            notes.append(
                f"batch {bs}: latency ratio {s['ratio']:.3f} is within the measured noise "
                f"(noise band ±{s['noise']:.3f} from the A/A control and run spread): no speedup claimed."
            )
        elif d.get("macs") and p.get("macs"):
            notes.append(
                f"batch {bs}: latency ratio {s['ratio']:.3f} vs MACs ratio {p['macs'] / d['macs']:.3f} "
                f"(latency ÷ MACs = {s['ratio'] / (p['macs'] / d['macs']):.2f})."
            )
    if d.get("onnx_gzip_bytes") and p.get("onnx_gzip_bytes"):
        notes.append(
            f"gzip size {p['onnx_gzip_bytes'] / d['onnx_gzip_bytes']:.3f}x of dense "
            f"(raw {p['onnx_bytes'] / d['onnx_bytes']:.3f}x); the entropy bound for this many nonzero "
            f"fp32 weights is {p['entropy_bound_bytes'] / d['onnx_gzip_bytes']:.3f}x."
        )
    q = report.get("int8")
    if q and d.get("onnx_gzip_bytes"):
        ev = q.get("eval") or {}
        notes.append(
            f"int8 ({q['mode']}): gzip {q['onnx_gzip_bytes'] / d['onnx_gzip_bytes']:.3f}x of dense "
            f"(bound {q['entropy_bound_bytes'] / d['onnx_gzip_bytes']:.3f}x), accuracy "
            f"{ev.get('int8_accuracy', float('nan')):.4f} vs fp32 {ev.get('fp32_accuracy', float('nan')):.4f}, "
            f"top-1 agreement {ev.get('top1_agreement', float('nan')):.4f}, zeros kept: "
            f"{q['zeros']['zeros_ok']}."
        )
        for bs, s in (q.get("speedup") or {}).items():
            notes.append(
                f"int8 batch {bs}: latency ratio {s['ratio']:.3f} vs dense"
                + ("" if s["significant"] else " (within noise)")
                + "."
            )
    ss = report.get("sparse_storage")
    if ss:
        notes.append(
            f"sparse storage (model.sparse.onnx): {ss['bytes_after']:,} B vs {ss['bytes_before']:,} B raw; "
            "onnxruntime densifies it at load, so it saves disk, not time."
        )
    return notes
