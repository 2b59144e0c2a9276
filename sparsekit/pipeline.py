"""`sparsekit prune` end to end: load → evaluate dense → prune while fine-tuning → finalize → save
→ export → parity → benchmark → report. The CLI is a thin wrapper around :func:`run_prune`."""

from __future__ import annotations

import logging
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .data import load_data
from .errors import DataError, SparsekitError
from .modelio import LoadedModel, infer_input_shape, read_model, save_model
from .pruner import Pruner
from .recipe import Recipe
from .stats import layer_report, model_stats
from .train import calibrate, evaluate, finetune

log = logging.getLogger("sparsekit")
OUTPUTS = ("model.pt", "model.onnx", "dense.onnx", "model.int8.onnx", "report.json", "report.md",
           "layer_sparsity.png", "finetune.png", "latency.png", "checkpoints")


def prepare_output(out: Path, overwrite: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SparsekitError(f"{out}: exists and is not a folder; choose another -o DIR")
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise SparsekitError(
            f"{out}: output folder exists and is not empty; pass --overwrite to replace its results, "
            "--resume to continue an interrupted run, or choose another -o DIR"
        )
    if overwrite and out.exists():
        # Only what sparsekit itself writes is removed: never a user's other files.
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def resolve_model(model_path: str | Path, recipe: Recipe, arch: str | None, trust: bool) -> LoadedModel:
    """Load MODEL: ``--arch`` beats the checkpoint's own factory, which beats the recipe's ``model``."""
    spec = recipe.model
    kwargs = spec.kwargs if arch and spec.factory in (None, arch) and spec.kwargs else None
    loaded = read_model(model_path, arch, kwargs=kwargs, trust=trust, fallback_factory=spec.factory,
                        fallback_kwargs=spec.kwargs)
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
    except Exception as err:  # any shape error from the user's model
        msg = str(err).strip().splitlines()[0]
        raise DataError(f"{where}: the model does not accept inputs of shape {input_shape}: {msg}") from None
    if out.dim() != 2:
        raise DataError(f"{where}: the model returns shape {list(out.shape)}; sparsekit expects logits [batch, classes]")
    return int(out.shape[1])


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"sparsekit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def run_prune(
    model_path: str | Path,
    recipe: Recipe,
    out: str | Path,
    *,
    arch: str | None = None,
    data: str | None = None,
    trust: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    out = Path(out)
    from .export import check_zeros, export_onnx, onnx_sizes

    torch.manual_seed(recipe.seed)
    loaded = resolve_model(model_path, recipe, arch, trust)
    model, shape = loaded.model, loaded.input_shape
    factory = loaded.factory or arch or recipe.model.factory
    source = data or recipe.data.source
    classes = check_input(model, shape, str(model_path))
    bundle = load_data(source, batch_size=recipe.data.batch_size, val_fraction=recipe.data.val_fraction,
                       seed=recipe.seed, input_shape=shape, synthetic_samples=recipe.data.synthetic_samples,
                       num_classes=classes)
    prepare_output(out, overwrite, resume)  # after inputs are known good: a typo never touches the folder

    log.info("evaluating the dense model")
    dense_metrics = evaluate(model, bundle.val)
    dense_stats = model_stats(model, shape)
    dense_layers = layer_report(model, shape)
    ex = recipe.export
    dense_export = export_onnx(model, out / "dense.onnx", shape, opset=ex.opset, exporter=ex.exporter)

    spe = len(bundle.train) if recipe.finetune.max_steps_per_epoch is None else min(
        len(bundle.train), recipe.finetune.max_steps_per_epoch)
    model.train()
    pruner = Pruner(model, recipe, steps_per_epoch=spe, context={"input_shape": shape})
    history: list[dict[str, Any]] = []
    if recipe.finetune.epochs > 0:
        model, history, pruner = finetune(model, recipe, bundle.train, bundle.val, pruner=pruner,
                                          progress=progress, checkpoint_dir=out / "checkpoints", resume=resume)
    elif any(m.needs_grad for m in pruner.methods):
        batches = max(getattr(s, "calibration_batches", 0) for s in recipe.pruning)
        calibrate(model, pruner, bundle.train, batches)
    model = pruner.finalize().eval()

    pruned_metrics = evaluate(model, bundle.val)
    pruned_stats = model_stats(model, shape)
    save_model(model, out / "model.pt", factory, kwargs=loaded.kwargs, input_shape=shape, pruner=pruner)
    pruned_export = export_onnx(model, out / "model.onnx", shape, opset=ex.opset, exporter=ex.exporter)
    zeros = check_zeros(model, out / "model.onnx")

    report: dict[str, Any] = {
        "schema": 1,
        "model": {"path": str(model_path), "factory": factory, "kwargs": loaded.kwargs, "input_shape": shape},
        "data": {"source": source, "train_batches": len(bundle.train), "val_batches": len(bundle.val)},
        "dense": {**dense_metrics, **dense_stats, **_sizes(onnx_sizes(out / "dense.onnx"))},
        "pruned": {**pruned_metrics, **pruned_stats, **_sizes(onnx_sizes(out / "model.onnx"))},
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
        "notes": [],
    }
    if recipe.benchmark.enabled:
        _benchmark_into(report, out, recipe, shape, progress)
    report["notes"] = _notes(report)
    from .report import write_report

    write_report(report, out)
    return report


def _sizes(s: dict[str, int]) -> dict[str, int]:
    return {"onnx_bytes": s["bytes"], "onnx_gzip_bytes": s["gzip_bytes"]}


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
    res = benchmark([out / "dense.onnx", out / "model.onnx"], b.batch_sizes, threads=b.threads, warmup=b.warmup,
                    runs=b.runs, input_shape=shape, progress=progress, seed=recipe.seed)
    dense_f, pruned_f = res["files"]
    for key, f in (("dense", dense_f), ("pruned", pruned_f)):
        report[key]["latency_ms"] = f["latency_ms"]
        report[key]["throughput_per_s"] = f["throughput_per_s"]
    speedup = {}
    for bs, r in pruned_f["ratio_to_first"].items():
        speedup[bs] = {"ratio": r["p50"], "spread": r["spread"], "noise": res["control"][bs]["noise"],
                       "significant": bool(pruned_f.get("speedup_significant", {}).get(bs, False))}
    report["benchmark"] = {"threads": b.threads, "runs": b.runs, "warmup": b.warmup, "provider": res["provider"],
                           "speedup": speedup, "control": res["control"]}


def _notes(report: dict[str, Any]) -> list[str]:
    d, p = report["dense"], report["pruned"]
    notes = []
    if d.get("macs") and p.get("macs") is not None and p["macs"] < d["macs"]:
        notes.append(f"Structural removal cut dense MACs to {p['macs'] / d['macs']:.3f}x of the original.")
    for bs, s in (report.get("benchmark") or {}).get("speedup", {}).items():
        if not s["significant"]:
            notes.append(f"batch {bs}: latency ratio {s['ratio']:.3f} is within the measured noise "
                         f"(A/A {s['noise']:.3f}): no speedup claimed.")
        elif d.get("macs") and p.get("macs"):
            notes.append(f"batch {bs}: latency ratio {s['ratio']:.3f} vs MACs ratio {p['macs'] / d['macs']:.3f} "
                         f"(latency ÷ MACs = {s['ratio'] / (p['macs'] / d['macs']):.2f}).")
    if d.get("onnx_gzip_bytes") and p.get("onnx_gzip_bytes"):
        notes.append(f"gzip size {p['onnx_gzip_bytes'] / d['onnx_gzip_bytes']:.3f}x of dense "
                     f"(raw {p['onnx_bytes'] / d['onnx_bytes']:.3f}x).")
    return notes
