"""report's PNG plots, drawn from plain data (no torch, no pydantic), so that a prune run can draw them
in a helper process while it exports and measures (:class:`PlotWorker`): importing matplotlib and
drawing take about as long as fine-tuning a small model, and need not wait for the run.

``render(data, out_dir)`` draws what ``data`` holds (:func:`sparsekit.report.plot_data` makes it;
keys beyond the first of each line are optional):

- ``layers``: ``[{"name", "sparsity", "excluded", "target", "channels": [kept, at the start],
  "kept_target"}]``, ``targets``: ``[{"label", "value", "layers"}]`` (a target over several layers
  together), ``structured`` / ``zeros`` (which panels: output channels kept, fraction of weights zero)
  → ``layer_sparsity.png``; excluded layers get a hatched bar marked "excluded"
- ``history``: ``[{"epoch", "val_accuracy", "sparsity", "train_loss", "lr", "params"}]``,
  ``dense_accuracy``, ``dense_params``, ``final_params`` (the saved model's) → ``finetune.png``: accuracy,
  pruning progress, and train loss with the learning rate, each on its own axis, whole-number epoch ticks
- ``latency``: ``{label: {batch_size: p50_ms}}`` (two or more labels, the first the reference),
  ``noise``: ``{label: {batch_size: noise}}`` (the band 1/(1+noise)..1+noise is no change), ``control``:
  ``{batch_size: A/A ratio}`` → ``latency.png``

Each file is written atomically; the names written are returned in that order. :func:`figures` gives
the matplotlib figures themselves.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fsutil import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FILES", "FIRST", "LAST", "PlotWorker", "figures", "render"]

# known when fine-tuning ends
FIRST = ("layers", "targets", "structured", "zeros", "history", "dense_accuracy", "dense_params", "final_params")
LAST = ("latency", "noise", "control")  # known after the benchmark
FILES = ("layer_sparsity.png", "finetune.png", "latency.png")  # every file name figures() may give


def figures(data: dict[str, Any]) -> dict[str, Figure]:
    """The figures ``data`` has data for, by file name (see the module docstring), not yet saved: what
    :func:`render` writes, for a caller (or a test) that wants the drawn objects."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure registry

    out: dict[str, Figure] = {}
    layers = data.get("layers") or []
    if layers:
        out["layer_sparsity.png"] = _layers_figure(Figure, layers, data)
    hist = data.get("history") or []
    if hist:
        out["finetune.png"] = _history_figure(Figure, hist, data)
    series = [(label, lat) for label, lat in (data.get("latency") or {}).items() if lat]
    if len(series) >= 2:
        out["latency.png"] = _latency_figure(Figure, series, data)
    return out


@contextlib.contextmanager
def own_settings() -> Iterator[None]:
    """Within: matplotlib's own defaults in place of the settings of a ``matplotlibrc`` file in the current folder.
    matplotlib reads that file first of all, before ``$MATPLOTLIBRC`` and the user's own: a file that comes with a
    folder someone else made (``text.usetex: True`` runs the ``latex`` program for every label, and without it
    failed the run as if its plot could not be written). The settings the process had are back afterwards."""
    import matplotlib

    here = Path("matplotlibrc")
    try:
        from_cwd = here.is_file() and os.path.samefile(matplotlib.matplotlib_fname(), here)
    except OSError:
        from_cwd = False
    if not from_cwd:
        yield
        return
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        yield


def render(data: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[str]:
    """Draw the plots ``data`` has data for into ``out_dir`` (see :func:`own_settings`); returns the file names
    written."""
    with own_settings():
        return _render(data, Path(out_dir))


def _render(data: dict[str, Any], out: Path) -> list[str]:
    files: list[str] = []
    for name, fig in figures(data).items():
        with atomic_path(out / name) as tmp:
            # A "tight" bounding box draws a figure twice (once to measure it): only where its layout engine may
            # still leave a long title or tick label outside (constrained layout does); finetune.png has fixed
            # margins that hold its fixed words, and is drawn once.
            tight = "tight" if fig.get_layout_engine() is not None else None
            fig.savefig(tmp, format="png", dpi=110, bbox_inches=tight)
        files.append(name)
    return files


MAX_NAMED = 60  # layers a layer plot names one by one
EXCLUDED = {"facecolor": "0.96", "edgecolor": "0.75", "hatch": "//", "lw": 0}


def _layers_figure(figure: type[Figure], layers: list[dict[str, Any]], data: dict[str, Any]) -> Figure:
    """One panel per measure: the fraction of each layer's weights that is zero (with the targets) when
    anything zeroes weights, and output channels kept of the layer's own (with the asked fraction) when
    units were removed. Excluded layers get a hatched bar that says so, not an empty slot."""
    structured = bool(data.get("structured")) or any(r.get("channels") for r in layers)
    zeros = bool(data.get("zeros")) or not structured
    panels = [p for p, on in (("zeros", zeros), ("channels", structured)) if on]
    names = [r["name"] for r in layers]
    at = {n: x for x, n in enumerate(names)}
    # Past MAX_NAMED layers a bar's own label cannot be read, and drawing thousands of texts on a figure as wide
    # as they need took minutes: the figure keeps its width, bars go unlabelled, and every step-th layer is named.
    many = len(layers) > MAX_NAMED
    step = math.ceil(len(layers) / MAX_NAMED) if many else 1
    width = 0.6 * MAX_NAMED + 5.0 if many else max(7.0, 0.6 * len(layers) + 5.0)
    fig = figure(figsize=(width, 3.2 * len(panels)), layout="constrained")
    lw = max(0.2, 0.8 * 0.8 * width * 72 / len(layers)) if many else 0.0  # 80% of a layer's slot, in points
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    xs = list(range(len(layers)))
    for ax, panel in zip(axes, panels, strict=True):
        excluded = [x for x, r in zip(xs, layers, strict=True) if r.get("excluded")]
        if many and excluded:  # one collection, not a patch per layer
            ax.vlines(excluded, 0, 1.12, colors="0.9", lw=lw, label="excluded (not pruned: report.md says why)")
        for n, x in enumerate([] if many else excluded):  # a column that says so, not an empty slot or a bar
            label = "excluded (not pruned: report.md says why)" if n == 0 else None
            ax.axvspan(x - 0.4, x + 0.4, label=label, **EXCLUDED)
            ax.text(x, 0.55, "excluded", rotation=90, ha="center", va="center", fontsize=9, color="0.3")
            if panel == "zeros":
                ax.text(x, 0.01, f"{layers[x]['sparsity']:.2f}", ha="center", va="bottom", fontsize=8, color="0.3")
        shown = [x for x, r in zip(xs, layers, strict=True) if not r.get("excluded")]
        if panel == "zeros":
            _bars(ax, shown, [layers[x]["sparsity"] for x in shown], lw, color="tab:blue", label="sparsity achieved")
            _layer_marks(ax, layers, shown, "target", "target (per layer)")
            for i, t in enumerate(data.get("targets") or []):
                spans = [at[n] for n in t.get("layers", []) if n in at] or shown or xs
                ax.hlines(
                    t["value"],
                    min(spans) - 0.45,
                    max(spans) + 0.45,
                    colors=f"C{(i + 3) % 10}",
                    linestyles="--",
                    lw=1.5,
                    zorder=3,
                    label=f"{t['label']} (over these layers together)",
                )
            ax.set_ylabel("fraction of weights zero")
            ax.set_title("Sparsity per layer")
        else:
            kept = [x for x in shown if layers[x].get("channels")]
            fractions = [layers[x]["channels"][0] / max(layers[x]["channels"][1], 1) for x in kept]
            _bars(ax, kept, fractions, lw, color="tab:green", label="output channels kept")
            for x, f in zip([] if many else kept, fractions, strict=False):
                k, n = layers[x]["channels"]
                ax.text(x, f + 0.02, f"{k}/{n}", ha="center", va="bottom", fontsize=7)
            _layer_marks(ax, layers, kept, "kept_target", "asked to keep")
            untouched = [x for x in shown if not layers[x].get("channels")]
            if untouched:  # selected, but no channel count: all kept
                _bars(ax, untouched, [1.0] * len(untouched), lw, color="tab:green", alpha=0.35,
                      label="selected, channels not counted")  # fmt: skip
            ax.set_ylabel("output channels kept")
            ax.set_title("Output channels kept per layer (kept/at the start)")
        ax.set_ylim(0, 1.12)
        ax.set_xticks(xs[::step], [_literal(n) for n in names[::step]], rotation=60, ha="right")
        if many:
            ax.set_xlabel(f"{len(layers)} layers (one in {step} named)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


def _history_figure(figure: type[Figure], hist: list[dict[str, Any]], data: dict[str, Any]) -> Figure:
    """Panels over the epochs: validation accuracy on its own axis (with the dense model's), what pruning
    reached (sparsity; parameters kept when rows carry ``params`` and units were removed; left out for a
    run that only removes units and has no counts), train loss with the learning rate on a second axis.
    Epoch ticks are whole numbers."""
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in hist]
    dense_params = data.get("dense_params")
    counted = [h for h in hist if h.get("params") is not None]
    # the saved model's count: finalize may remove more (l1's remove_dead) after the last epoch's row
    final = data.get("final_params")
    after = final if counted and final is not None and final != counted[-1]["params"] else None
    removed = bool(dense_params and counted and (after or any(h["params"] != dense_params for h in counted)))
    # A run that only removes units makes no zeros: its sparsity line would be a flat 0.
    zeros = bool(data.get("zeros", True)) or any(h["sparsity"] for h in hist)
    panels = 3 if zeros or removed else 2
    # Fixed margins (inches) instead of constrained layout, which measured every tick label of the four axes
    # again on each draw (half of drawing this figure): the labels here are short numbers and fixed words.
    height = 2.4 * panels
    fig = figure(figsize=(6, height))
    fig.subplots_adjust(left=0.95 / 6, right=1 - 0.9 / 6, bottom=0.5 / height, top=1 - 0.3 / height, hspace=0.12)
    axes = fig.subplots(panels, 1, sharex=True)
    acc_ax, loss_ax = axes[0], axes[-1]
    acc_ax.plot(epochs, [h["val_accuracy"] for h in hist], "o-", color="tab:blue", label="val accuracy")
    if data.get("dense_accuracy") is not None:
        acc_ax.axhline(data["dense_accuracy"], color="gray", lw=1, ls=":", label="dense accuracy")
    acc_ax.set_ylabel("val accuracy")
    acc_ax.legend(loc="lower right", fontsize=8)
    acc_ax.set_title("Fine-tuning")
    if panels == 3:
        _pruning_panel(axes[1], hist, zeros, counted if removed else [], dense_params, after)

    losses = [(h["epoch"], h["train_loss"]) for h in hist if h.get("train_loss") is not None]
    if losses:
        loss_ax.plot(*zip(*losses, strict=True), "o-", color="tab:red", label="train loss")
        loss_ax.set_ylabel("train loss", color="tab:red")
    rates = [(h["epoch"], h["lr"]) for h in hist if h.get("lr") is not None]
    if rates:
        lr_ax = loss_ax.twinx()
        lr_ax.plot(*zip(*rates, strict=True), "d:", color="tab:purple", label="learning rate")
        lr_ax.set_ylabel("learning rate", color="tab:purple")
        if all(r > 0 for _, r in rates):
            lr_ax.set_yscale("log")
        handles = loss_ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        loss_ax.legend(handles, [str(h.get_label()) for h in handles], loc="best", fontsize=8)
    loss_ax.set_xlabel("epoch")
    # Whole-number ticks, also for one epoch (where a locator finds no integer in a narrow autoscaled range).
    lo, hi = math.floor(min(epochs)), math.ceil(max(epochs))
    loss_ax.set_xlim(lo - 0.4 if lo == min(epochs) else lo, hi + 0.4 if hi == max(epochs) else hi)
    loss_ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True, min_n_ticks=1))
    return fig


def _pruning_panel(
    ax: Any,
    hist: list[dict[str, Any]],
    zeros: bool,
    counted: list[dict[str, Any]],
    dense_params: int | None,
    final_params: int | None = None,
) -> None:
    if zeros:
        ax.plot(
            [h["epoch"] for h in hist],
            [h["sparsity"] for h in hist],
            "s--",
            color="tab:orange",
            label="sparsity (whole model)",
        )
    if counted and dense_params:
        ax.plot(
            [h["epoch"] for h in counted],
            [h["params"] / dense_params for h in counted],
            "^-",
            color="tab:green",
            label="params kept (of dense)",
        )
        if final_params is not None:  # the saved model, after finalize removed more units
            ax.plot(
                [counted[-1]["epoch"]],
                [final_params / dense_params],
                "*",
                color="tab:green",
                markersize=12,
                label="params kept, saved model (after finalize)",
            )
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("fraction")
    ax.legend(loc="center right", fontsize=8)


def _bars(ax: Any, xs: list[int], heights: list[float], lw: float, **style: Any) -> None:
    """A bar per layer; given a line width ``lw`` (points, for many layers), one line per layer in a single
    collection instead (a bar is a patch each, and tens of thousands of them took minutes to draw)."""
    if lw:
        ax.vlines(xs, 0, heights, lw=lw, **style)
    else:
        ax.bar(xs, heights, 0.8, **style)


def _literal(text: str) -> str:
    """A name from the user's model or files as matplotlib shows it: two ``$`` would start mathtext (where
    ``$\\frac{$`` fails the whole figure), so each is escaped to a literal dollar sign."""
    return text.replace("$", r"\$")


def _layer_marks(ax: Any, layers: list[dict[str, Any]], xs: list[int], key: str, label: str) -> None:
    """A black bar mark at each layer's ``key`` value (its target), over the bar it belongs to."""
    marks = [x for x in xs if layers[x].get(key) is not None]
    if marks:
        ax.scatter(marks, [layers[x][key] for x in marks], marker="_", s=600, lw=2.5, color="black", zorder=3,
                   label=label)  # fmt: skip


def _latency_figure(figure: type[Figure], series: list[tuple[str, dict[str, float]]], data: dict[str, Any]) -> Figure:
    """p50 latency per batch size; beside it, each file's ratio to the first (dense) with the noise band the
    benchmark measured in the same run (a ratio inside it is no change) and the A/A control."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def readable_log(axis: Any, unit: str) -> None:  # 0.05, 0.1, 0.2, 0.5 rather than 5x10^-2
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{unit}"))
        axis.set_minor_formatter(NullFormatter())

    noise = data.get("noise") or {}
    control = data.get("control") or {}
    sizes = list(series[0][1])
    ratios = bool(noise)
    # One panel per batch size, each linear from 0: bar heights compare truthfully (a shared log axis
    # made a 0.7x change look like 5x), and batch sizes far apart stay readable.
    fig = figure(figsize=(2.6 * len(sizes) + (5 if ratios else 0), 3.4), layout="constrained")
    axes = fig.subplots(1, len(sizes) + (1 if ratios else 0), squeeze=False)[0]
    colors = [f"C{i}" for i in range(len(series))]
    for ax, b in zip(axes, sizes, strict=False):
        ax.bar(range(len(series)), [lat.get(b, 0) for _, lat in series], 0.7, color=colors)
        ax.set_xticks(list(range(len(series))), [_literal(label) for label, _ in series], rotation=20, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_title(f"batch {b}", fontsize=9)
    axes[0].set_ylabel("p50 latency (ms)")
    fig.suptitle("onnxruntime latency")
    if ratios:
        rx = axes[-1]
        others = series[1:]
        width = 0.8 / max(len(others), 1)
        base = series[0][1]
        band_labelled = False
        shown = [1.0]
        for i, (label, lat) in enumerate(others):
            for x, b in enumerate(sizes):
                if not base.get(b) or lat.get(b) is None:
                    continue
                pos = x + (i - (len(others) - 1) / 2) * width
                n = (noise.get(label) or {}).get(b)
                if n is not None:
                    rx.bar(
                        pos,
                        (1 + n) - 1 / (1 + n),
                        width * 0.9,
                        bottom=1 / (1 + n),
                        color="0.85",
                        label=None if band_labelled else "noise band (no change inside)",
                    )
                    band_labelled = True
                    shown += [1 + n, 1 / (1 + n)]
                rx.plot(pos, lat[b] / base[b], "o", color=f"C{i + 1}", label=label if x == 0 else None)
                shown.append(lat[b] / base[b])
        aa = [(x, control[b]) for x, b in enumerate(sizes) if control.get(b)]
        if aa:
            rx.plot(*zip(*aa, strict=True), "x", color="black", label="A/A control (dense vs itself)")
        rx.axhline(1.0, color="gray", lw=0.8)
        if max(shown) / min(shown) > 3:  # a log scale, so 0.5x and 2x are as far from 1x
            rx.set_yscale("log")
            readable_log(rx.yaxis, "x")
        else:
            rx.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}x"))
        rx.set_xticks(list(range(len(sizes))), [f"batch {b}" for b in sizes])
        rx.set_ylabel(f"p50 / {series[0][0]} (below 1: faster)")
        # Beside the panel, not inside it: "best" placement covered a 0.72x point at the bottom of the axis.
        rx.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        rx.set_title("Ratio to dense, with the measured noise")
    return fig


def matplotlib_env() -> dict[str, str]:
    """This process's environment with ``MPLCONFIGDIR`` in sparsekit's cache folder
    (:func:`~sparsekit.fsutil.cache_dir`) unless set: matplotlib writes its font cache into the folder it names,
    by default ``~/.cache/matplotlib`` and ``~/.config/matplotlib``, which sparsekit keeps out of."""
    from .fsutil import cache_dir

    env = dict(os.environ)
    env.setdefault("MPLCONFIGDIR", str(cache_dir() / "matplotlib"))
    return env


# How the worker's last stderr line starts when a plot's write failed on the disk (see PlotWorker.finish).
_DISK_ERROR = "sparsekit.errors.OutputError: "


class PlotWorker:
    """Draws a run's plots in a helper process. :meth:`start` launches it early (it imports matplotlib
    while the run loads and measures the dense model, then waits, idle, through fine-tuning);
    :meth:`draw` sends what is known when fine-tuning ends (drawn while the run exports and checks);
    :meth:`last` sends the benchmark's latencies (drawn while the run picks the ONNX storage and writes
    its notes) and :meth:`finish` collects every file. :meth:`ready` waits until the first part is drawn:
    call it before timing anything, so the benchmark never shares the CPU with drawing.

    Plots are a convenience: a worker that fails or cannot start makes :meth:`finish` return the plots
    drawn so far and ``error`` say why; the run goes on.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.files: list[str] = []
        self.error: str | None = None
        self.disk_error: str | None = None  # the OutputError a plot's write raised (a full disk, ...), when one did
        self._proc: subprocess.Popen[str] | None = None
        self._ready = False
        self._last_sent = False

    def __enter__(self) -> PlotWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Launch the worker: it imports matplotlib, then waits for :meth:`draw`."""
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER, _import_path(), str(self.out_dir), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**matplotlib_env(), "MPLBACKEND": "Agg"},
            )
        except OSError as err:
            self.error, self._proc = f"cannot start the plot process: {err}", None

    def draw(self, data: dict[str, Any]) -> None:
        """Draw ``data``'s :data:`FIRST` keys, in the worker."""
        if self._proc is not None:
            self._send({k: data.get(k) for k in FIRST})

    def ready(self) -> None:
        """Wait until the first plots are drawn (the worker then waits for :meth:`finish`)."""
        if self._proc is not None and not self._ready:
            self._ready = True
            self._collect(self._proc.stdout.readline() if self._proc.stdout else "")

    def last(self, data: dict[str, Any]) -> None:
        """Send ``data``'s :data:`LAST` keys (the benchmark's latencies) to be drawn while the run goes on;
        :meth:`finish` collects them."""
        self.ready()
        if self._proc is not None and not self._last_sent:
            self._last_sent = True
            self._send({k: data.get(k) for k in LAST})

    def finish(self, data: dict[str, Any] | None = None) -> list[str]:
        """Draw ``data``'s :data:`LAST` keys (unless :meth:`last` sent them), stop the worker; returns every plot
        file written."""
        self.ready()
        if self._proc is None:
            return self.files
        try:
            self.last(data or {})
            out, err = self._proc.communicate(timeout=120)
            self._collect(out)
            if self._proc.returncode and self.error is None:
                last = (err.strip().splitlines() or ["the plot process failed"])[-1]
                self.error = last[:300]
                # The worker's atomic writes raise OutputError only for a disk that is full, read-only or not
                # writable: a fact about the user's disk, which the run reports as it does for report.md (exit 2).
                if last.startswith(_DISK_ERROR):
                    self.disk_error = last.removeprefix(_DISK_ERROR)
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
        if self._proc is not None:
            # Its pipes too: a run that failed (or was interrupted) before finish() left three open file objects per
            # run_prune call in a long-lived Python process (ResourceWarning: unclosed file, at garbage collection).
            for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

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


# The worker's entry: `python -m` and `-c` put the current folder first on the import path, where a file such as
# numpy.py would be imported (and run) instead of the library. The worker replaces the path with its parent's before
# importing anything that is not built in.
_WORKER = (
    "import sys; sys.path[:] = [p for p in sys.argv[1].split(chr(31)) if p]; "
    "from sparsekit.plots import _worker; _worker(sys.argv[2], int(sys.argv[3]))"
)


def _import_path() -> str:
    """This process's import path for the worker, without the current folder (sparsekit's command drops it too),
    unless sparsekit itself was imported from there (a checkout run with ``python -m sparsekit``)."""
    here = os.getcwd()
    home = str(Path(__file__).resolve().parent.parent)
    kept = [p for p in sys.path if p and (os.path.abspath(p) != here or os.path.abspath(p) == home)]
    return chr(31).join(kept)


def _worker(out_dir: str, parent: int | None = None) -> None:
    """The helper process: one JSON line of data in, the file names drawn out, twice. Ends, without publishing a
    plot, when ``parent`` (the run's pid) is gone."""
    import signal

    # SIGTERM (PlotWorker.close) unwinds like Ctrl-C: atomic_path removes a half-written plot.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if parent is not None:
        _end_with(parent)
    import matplotlib.figure  # noqa: F401 - the slow part, done before any data arrives

    for _ in range(2):
        line = sys.stdin.readline()
        if not line or (parent is not None and os.getppid() != parent):
            return
        print(json.dumps(render(json.loads(line), out_dir)), flush=True)
    # Every plot is written (atomically) and reported: leave without the interpreter's teardown of matplotlib and
    # numpy, ~0.12 s the run waited for at its end (PlotWorker.finish) with nothing left to do (issue 12's overhead).
    sys.stderr.flush()
    os._exit(0)


def _end_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent`` dies (Linux ``prctl(PR_SET_PDEATHSIG)``): a run
    killed with SIGKILL cannot stop its helper, which went on to publish a plot into the folder after the run
    was dead (where a run taking over its stale lock would find a file it did not write). Elsewhere the worker
    checks its parent before each plot. Exits at once when the parent is already gone."""
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # died before the request took effect
        sys.exit(143)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
