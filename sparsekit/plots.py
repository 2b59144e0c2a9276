"""report's PNG plots, drawn from plain data (no torch, no pydantic), so that a prune run can draw them
in a helper process while it exports and measures (:class:`PlotWorker`): importing matplotlib and
drawing take about as long as fine-tuning a small model, and need not wait for the run.

``render(data, out_dir)`` draws what ``data`` holds:

- ``layers``: ``[{"name", "sparsity"}]`` → ``layer_sparsity.png``
- ``history``: ``[{"epoch", "val_accuracy", "sparsity"}]`` and ``dense_accuracy`` → ``finetune.png``
- ``latency``: ``{label: {batch_size: p50_ms}}`` (two or more labels) → ``latency.png``

Each file is written atomically; the names written are returned in that order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .fsutil import atomic_path

__all__ = ["FIRST", "LAST", "PlotWorker", "render"]

FIRST = ("layers", "history")  # known when fine-tuning ends
LAST = ("latency",)  # known after the benchmark


def render(data: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[str]:
    """Draw the plots ``data`` has data for into ``out_dir``; returns the file names written."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure registry

    out = Path(out_dir)
    files: list[str] = []

    def save(fig: Figure, name: str) -> None:
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        files.append(name)

    layers = data.get("layers") or []
    if layers:
        fig = Figure(figsize=(max(4, 0.5 * len(layers) + 2), 3))
        ax = fig.subplots()
        ax.bar([r["name"] for r in layers], [r["sparsity"] for r in layers], color="tab:blue")
        ax.set_ylim(0, 1)
        ax.set_ylabel("sparsity")
        ax.set_title("Sparsity per layer")
        ax.tick_params(axis="x", rotation=60)
        save(fig, "layer_sparsity.png")
    hist = data.get("history") or []
    if hist:
        fig = Figure(figsize=(5, 3))
        ax = fig.subplots()
        epochs = [h["epoch"] for h in hist]
        ax.plot(epochs, [h["val_accuracy"] for h in hist], "o-", label="val accuracy")
        ax.plot(epochs, [h["sparsity"] for h in hist], "s--", label="sparsity")
        if data.get("dense_accuracy") is not None:
            ax.axhline(data["dense_accuracy"], color="gray", lw=0.8, ls=":", label="dense accuracy")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right")
        ax.set_title("Fine-tuning")
        save(fig, "finetune.png")
    series = [(label, lat) for label, lat in (data.get("latency") or {}).items() if lat]
    if len(series) >= 2:
        fig = Figure(figsize=(5, 3))
        ax = fig.subplots()
        sizes = list(series[0][1])
        width = 0.8 / len(series)
        for i, (label, lat) in enumerate(series):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(sizes))]
            ax.bar(xs, [lat.get(b, 0) for b in sizes], width, label=label)
        ax.set_xticks(list(range(len(sizes))), [f"batch {b}" for b in sizes])
        ax.set_yscale("log")
        ax.set_ylabel("p50 latency (ms)")
        ax.legend()
        ax.set_title("onnxruntime latency")
        save(fig, "latency.png")
    return files


class PlotWorker:
    """Draws a run's plots in a helper process. :meth:`start` launches it early (it imports matplotlib
    while the run loads and measures the dense model, then waits, idle, through fine-tuning);
    :meth:`draw` sends what is known when fine-tuning ends (drawn while the run exports and checks);
    :meth:`finish` sends the benchmark's latencies. :meth:`ready` waits until the first part is drawn:
    call it before timing anything, so the benchmark never shares the CPU with drawing.

    Plots are a convenience: a worker that fails or cannot start makes :meth:`finish` return the plots
    drawn so far and ``error`` say why; the run goes on.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.files: list[str] = []
        self.error: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._ready = False

    def __enter__(self) -> PlotWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Launch the worker: it imports matplotlib, then waits for :meth:`draw`."""
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sparsekit.plots", str(self.out_dir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "MPLBACKEND": "Agg"},
            )
        except OSError as err:
            self.error, self._proc = f"cannot start the plot process: {err}", None

    def draw(self, data: dict[str, Any]) -> None:
        """Draw ``data``'s :data:`FIRST` keys (and ``dense_accuracy``), in the worker."""
        if self._proc is not None:
            self._send({k: data.get(k) for k in (*FIRST, "dense_accuracy")})

    def ready(self) -> None:
        """Wait until the first plots are drawn (the worker then waits for :meth:`finish`)."""
        if self._proc is not None and not self._ready:
            self._ready = True
            self._collect(self._proc.stdout.readline() if self._proc.stdout else "")

    def finish(self, data: dict[str, Any]) -> list[str]:
        """Draw ``data``'s :data:`LAST` keys, stop the worker; returns every plot file written."""
        self.ready()
        if self._proc is None:
            return self.files
        try:
            self._send({k: data.get(k) for k in LAST})
            out, err = self._proc.communicate(timeout=120)
            self._collect(out)
            if self._proc.returncode and self.error is None:
                self.error = (err.strip().splitlines() or ["the plot process failed"])[-1][:300]
        except (OSError, subprocess.TimeoutExpired) as e:
            self.error = f"the plot process did not finish: {e}"
            self.close()
        return self.files

    def close(self) -> None:
        """Stop the worker if it still runs (an interrupted run leaves no process behind): SIGTERM, so a
        plot being written removes its temp file, then SIGKILL after 2 s."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _send(self, part: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(part) + "\n")
            self._proc.stdin.flush()
        except OSError:  # the worker died: finish() reports its stderr
            pass

    def _collect(self, line: str) -> None:
        try:
            names = json.loads(line) if line.strip() else []
        except ValueError:
            names = []
        self.files += [n for n in names if isinstance(n, str) and n not in self.files]


def _worker(out_dir: str) -> None:
    """The helper process: one JSON line of data in, the file names drawn out, twice."""
    import signal

    # SIGTERM (PlotWorker.close) unwinds like Ctrl-C: atomic_path removes a half-written plot.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import matplotlib.figure  # noqa: F401 - the slow part, done before any data arrives

    for _ in range(2):
        line = sys.stdin.readline()
        if not line:
            return
        print(json.dumps(render(json.loads(line), out_dir)), flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1])
