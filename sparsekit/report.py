"""report.json, report.md and PNG plots. ``sparsekit report DIR`` re-renders from report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .fsutil import atomic_path, write_text

ADVICE = (
    "Unstructured zeros make the compressed (gzip) file smaller but do not make onnxruntime's CPU "
    "kernels faster; removing whole neurons/channels (structured pruning, L1 groups) or int8 "
    "quantization is what buys latency."
)


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


def render_markdown(report: dict[str, Any]) -> str:
    d, p = report["dense"], report["pruned"]
    lines = ["# sparsekit report", ""]
    lines += [
        f"Model `{report.get('model', {}).get('factory', '?')}`, data `{report.get('data', {}).get('source', '?')}`. "
        + ADVICE,
        "",
    ]
    if report.get("expectation"):
        lines += [report["expectation"], ""]
    lines += ["| | dense | pruned | pruned / dense |", "|---|---:|---:|---:|"]

    def row(label: str, key: str, fmt: Any = str) -> None:
        a, b = d.get(key), p.get(key)
        lines.append(
            f"| {label} | {fmt(a) if a is not None else '–'} | {fmt(b) if b is not None else '–'} | {_ratio(a, b)} |"
        )

    lines.append(f"| accuracy | {d['accuracy']:.4f} | {p['accuracy']:.4f} | {p['accuracy'] - d['accuracy']:+.4f} |")
    lines.append(f"| sparsity (prunable weights) | {d['sparsity']:.3f} | {p['sparsity']:.3f} | |")
    row("params", "params", lambda v: f"{v:,}")
    row("nonzero params", "nonzero_params", lambda v: f"{v:,}")
    row("MACs (dense count)", "macs", lambda v: f"{v:,}")
    row("MACs (nonzero weights)", "effective_macs", lambda v: f"{v:,}")
    row("ONNX size", "onnx_bytes", _fmt_bytes)
    row("ONNX size, gzip", "onnx_gzip_bytes", _fmt_bytes)
    if p.get("entropy_bound_bytes") is not None:
        # The bound is compared with the dense file's gzip size, like the pruned gzip size above it.
        lines.append(
            f"| entropy bound for the pruned weights (fp32) | | {_fmt_bytes(p['entropy_bound_bytes'])} | "
            f"{_ratio(d.get('onnx_gzip_bytes'), p['entropy_bound_bytes'])} |"
        )
    row("gzip bytes per nonzero weight", "gzip_bytes_per_nonzero", lambda v: f"{v:.2f}")
    for bs, lat in d.get("latency_ms", {}).items():
        pl = p.get("latency_ms", {}).get(bs, {})
        if pl:
            lines.append(
                f"| latency p50, batch {bs} (ms) | {lat['p50']:.3f} | {pl['p50']:.3f} | {pl['p50'] / lat['p50']:.3f}x |"
            )
    lines.append("")
    bench = report.get("benchmark") or {}
    if bench.get("speedup"):
        lines.append(
            "Latency ratio (pruned/dense, p50) with the noise band measured in the same run (the A/A control: "
            "the dense file against itself, and the spread across blocks of runs):"
        )
        lines.append("")
        lines.append("| batch | ratio | spread | noise band (±) | significant |")
        lines.append("|---:|---:|---|---:|---|")
        for bs, s in bench["speedup"].items():
            lines.append(
                f"| {bs} | {s['ratio']:.3f} | {s['spread'][0]:.3f}–{s['spread'][1]:.3f} | "
                f"{s['noise']:.3f} | {'yes' if s['significant'] else 'no (within noise)'} |"
            )
        lines.append("")
    q = report.get("int8")
    if q:
        ev = q.get("eval") or {}
        lines += [
            f"int8 ({q['mode']} quantization, `model.int8.onnx`): {_fmt_bytes(q['onnx_bytes'])} raw "
            f"({_ratio(d.get('onnx_bytes'), q['onnx_bytes'])} of dense), {_fmt_bytes(q['onnx_gzip_bytes'])} gzip "
            f"({_ratio(d.get('onnx_gzip_bytes'), q['onnx_gzip_bytes'])}; entropy bound "
            f"{_ratio(d.get('onnx_gzip_bytes'), q['entropy_bound_bytes'])}); pruned zeros still exactly zero: "
            f"{'yes' if q['zeros']['zeros_ok'] else 'NO'}."
        ]
        if ev:
            lines.append(
                f"Accuracy int8 {ev['int8_accuracy']:.4f} vs fp32 {ev['fp32_accuracy']:.4f}; top-1 "
                f"agreement {ev['top1_agreement']:.4f} on {ev['samples']} validation samples."
            )
        for bs, lat in (q.get("latency_ms") or {}).items():
            dl = d.get("latency_ms", {}).get(bs)
            if dl:
                lines.append(
                    f"int8 latency p50 at batch {bs}: {lat['p50']:.3f} ms ({lat['p50'] / dl['p50']:.3f}x dense)."
                )
        lines.append("")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    if report.get("notes"):
        lines.append("")
    par = report.get("parity", {})
    lines.append(
        f"ONNX parity: max |onnx − torch| = {par.get('max_abs_diff', float('nan')):.2e} "
        f"({'ok' if par.get('ok') else 'FAILED'}); zeros preserved in ONNX: "
        f"{'yes' if report.get('zeros_preserved') else 'NO'}."
    )
    lines += [
        "",
        "## Layers",
        "",
        "| layer | type | shape | params | nonzero | sparsity |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in report.get("layers", []):
        lines.append(
            f"| {r['name']} | {r['type']} | {'x'.join(map(str, r['shape']))} | {r['params']:,} | "
            f"{r['nonzero_params']:,} | {r['sparsity']:.3f} |"
        )
    if report.get("history"):
        lines += [
            "",
            "## Fine-tuning",
            "",
            "| epoch | sparsity | train loss | val accuracy | lr |",
            "|---:|---:|---:|---:|---:|",
        ]
        for h in report["history"]:
            lines.append(
                f"| {h['epoch']} | {h['sparsity']:.3f} | {h['train_loss']:.4f} | {h['val_accuracy']:.4f} | "
                f"{h['lr']:.2e} |"
            )
    plots = [p for p in report.get("plots", [])]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(f).stem}]({f})" for f in plots]
    return "\n".join(lines) + "\n"


def write_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    """Per-layer sparsity, sparsity/accuracy per epoch, latency by batch size. Returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig: Any, name: str) -> None:
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(name)

    layers = report.get("layers", [])
    if layers:
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(layers) + 2), 3))
        ax.bar([r["name"] for r in layers], [r["sparsity"] for r in layers], color="tab:blue")
        ax.set_ylim(0, 1)
        ax.set_ylabel("sparsity")
        ax.set_title("Sparsity per layer")
        ax.tick_params(axis="x", rotation=60)
        save(fig, "layer_sparsity.png")
    hist = report.get("history", [])
    if hist:
        fig, ax = plt.subplots(figsize=(5, 3))
        epochs = [h["epoch"] for h in hist]
        ax.plot(epochs, [h["val_accuracy"] for h in hist], "o-", label="val accuracy")
        ax.plot(epochs, [h["sparsity"] for h in hist], "s--", label="sparsity")
        ax.axhline(report["dense"]["accuracy"], color="gray", lw=0.8, ls=":", label="dense accuracy")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right")
        ax.set_title("Fine-tuning")
        save(fig, "finetune.png")
    series = [
        (label, (report.get(key) or {}).get("latency_ms") or {})
        for key, label in (("dense", "dense"), ("pruned", "pruned"), ("int8", "pruned int8"))
    ]
    series = [(label, lat) for label, lat in series if lat]
    if len(series) >= 2:
        fig, ax = plt.subplots(figsize=(5, 3))
        sizes = list(series[0][1])
        width = 0.8 / len(series)
        for i, (label, lat) in enumerate(series):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(sizes))]
            ax.bar(xs, [lat[b]["p50"] if b in lat else 0 for b in sizes], width, label=label)
        ax.set_xticks(list(range(len(sizes))), [f"batch {b}" for b in sizes])
        ax.set_yscale("log")
        ax.set_ylabel("p50 latency (ms)")
        ax.legend()
        ax.set_title("onnxruntime latency")
        save(fig, "latency.png")
    return files


def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.json, report.md and (with ``plots``) the PNG plots into ``out_dir``, each
    atomically; returns the paths written."""
    out_dir = Path(out_dir)
    if plots:
        report["plots"] = write_plots(report, out_dir)
    write_text(out_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out_dir / "report.md", render_markdown(report))
    return [out_dir / "report.json", out_dir / "report.md", *(out_dir / f for f in report.get("plots", []))]
