"""sparsekit.plots draws what the report says: per-layer sparsity with its targets and excluded layers
marked, output channels kept for structural removal, fine-tuning with accuracy, loss and learning rate
on their own axes and whole-number epochs, and latency with the noise band the benchmark measured."""

from __future__ import annotations

import copy

import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.patches import Rectangle

import sparsekit
from examples.models import small_cnn
from sparsekit.layers import prunable_layers, weight_of
from sparsekit.pipeline import method_results
from sparsekit.plots import figures, render
from sparsekit.report import first_plot_data
from sparsekit.stats import layer_report

LAYERS = [
    {"name": "fc1", "sparsity": 0.93, "excluded": False},
    {"name": "fc2", "sparsity": 0.71, "excluded": False, "target": 0.75},
    {"name": "fc3", "sparsity": 0.0, "excluded": True},
]
STRUCTURED = [
    {"name": "conv1", "sparsity": 0.0, "excluded": False, "channels": [16, 32], "kept_target": 0.5},
    {"name": "conv2", "sparsity": 0.0, "excluded": False, "channels": [40, 64], "kept_target": 0.625},
    {"name": "fc", "sparsity": 0.0, "excluded": True},
]


def _bars(ax) -> dict[float, float]:
    """Bar patches by x centre -> height (axvspan columns are Rectangles too: only those starting at 0)."""
    return {round(p.get_x() + p.get_width() / 2, 6): p.get_height() for p in ax.patches if isinstance(p, Rectangle)}


def _texts(ax) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for t in ax.texts:
        out.setdefault(t.get_text(), []).append(t.get_position()[0])
    return out


def test_layer_plot_marks_targets_and_excluded_layers():
    targets = [{"label": "pruning[0] magnitude target 0.800", "value": 0.8, "layers": ["fc1", "fc2"]}]
    fig = figures({"layers": LAYERS, "targets": targets, "zeros": True})["layer_sparsity.png"]
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1", "fc2", "fc3"]  # the excluded one too
    bars = _bars(ax)
    assert bars[0] == pytest.approx(0.93) and bars[1] == pytest.approx(0.71)
    assert _texts(ax)["excluded"] == [2]  # fc3 says it is excluded, at its own slot
    excluded = [p for p in ax.patches if p.get_hatch()]
    assert len(excluded) == 1 and excluded[0].get_x() < 2 < excluded[0].get_x() + excluded[0].get_width()
    # The global target spans the layers it ranks together; the per-layer one sits on its bar.
    (line,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    (seg,) = line.get_segments()
    assert seg[0][1] == seg[1][1] == pytest.approx(0.8) and seg[0][0] < 0 and 1 < seg[1][0] < 2
    (marks,) = [c for c in ax.collections if not isinstance(c, LineCollection)]
    assert marks.get_offsets().tolist() == [[1.0, 0.75]]
    labels = ax.get_legend_handles_labels()[1]
    assert any("excluded" in x for x in labels) and any("target 0.800" in x for x in labels)


def test_a_layer_plot_of_thousands_of_layers_names_some_and_draws_one_collection():
    # Found by review: a report.json of 2,000 layers took 51 s in `sparsekit report` (a figure 1,200 inches wide,
    # a text and a patch per layer) and 20,000 did not finish in minutes. Past MAX_NAMED layers, one in every
    # step-th is named and the bars are one collection; every layer is still drawn, at its own x.
    from sparsekit.plots import MAX_NAMED

    n = 5000
    layers = [{"name": f"block{i}.conv", "sparsity": (i % 10) / 10, "excluded": i % 7 == 0} for i in range(n)]
    fig = figures({"layers": layers, "targets": [], "zeros": True})["layer_sparsity.png"]
    (ax,) = fig.axes
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert 0 < len(names) <= MAX_NAMED and names[0] == "block0.conv" and not ax.texts
    assert fig.get_size_inches()[0] <= 0.6 * MAX_NAMED + 5 and len(ax.patches) == 0
    drawn: dict[int, float] = {}
    for c in ax.collections:
        for (x0, y0), (_, y1) in c.get_segments():
            drawn[round(x0)] = max(drawn.get(round(x0), 0.0), y0, y1)
    assert set(drawn) == set(range(n))
    assert all(drawn[x] == pytest.approx(1.12 if x % 7 == 0 else (x % 10) / 10) for x in range(n))


def test_structured_layer_plot_shows_channels_kept_of_total():
    fig = figures({"layers": STRUCTURED, "structured": True, "zeros": False})["layer_sparsity.png"]
    (ax,) = fig.axes  # no sparsity panel of zeros for a structural-only run
    assert "channels kept" in ax.get_title()
    bars = _bars(ax)
    assert bars[0] == pytest.approx(16 / 32) and bars[1] == pytest.approx(40 / 64)
    texts = _texts(ax)
    assert texts["16/32"] == [0] and texts["40/64"] == [1] and texts["excluded"] == [2]
    (marks,) = ax.collections
    assert marks.get_offsets().tolist() == [[0.0, 0.5], [1.0, 0.625]]


def test_both_panels_when_a_run_zeroes_weights_and_removes_channels():
    layers = [dict(r, sparsity=0.4) if not r["excluded"] else r for r in STRUCTURED]
    fig = figures({"layers": layers, "structured": True, "zeros": True})["layer_sparsity.png"]
    zeros, channels = fig.axes
    assert zeros.get_title() == "Sparsity per layer" and "channels kept" in channels.get_title()
    assert _bars(zeros)[0] == pytest.approx(0.4) and _bars(channels)[0] == pytest.approx(0.5)


HISTORY = [
    {"epoch": 0.5, "val_accuracy": 0.90, "sparsity": 0.3, "train_loss": 0.42, "lr": 1e-3, "params": 1000},
    {"epoch": 1.0, "val_accuracy": 0.92, "sparsity": 0.6, "train_loss": 0.31, "lr": 5e-4, "params": 800},
    {"epoch": 2.5, "val_accuracy": 0.93, "sparsity": 0.9, "train_loss": 0.25, "lr": 1e-4, "params": 600},
]


def test_finetune_plot_puts_accuracy_loss_and_lr_on_their_own_axes_with_integer_epochs():
    fig = figures({"history": HISTORY, "dense_accuracy": 0.95, "dense_params": 1000})["finetune.png"]
    acc, prune, loss, lr = fig.axes  # the learning rate on a second axis of the loss panel
    assert [ln.get_label() for ln in acc.get_lines()] == ["val accuracy", "dense accuracy"]
    assert acc.get_lines()[1].get_ydata()[0] == pytest.approx(0.95)
    low, high = acc.get_ylim()
    assert low > 0.5 and high < 1.0  # its own scale, not 0..1 shared with sparsity
    assert list(loss.get_lines()[0].get_ydata()) == [h["train_loss"] for h in HISTORY]
    assert list(lr.get_lines()[0].get_ydata()) == [h["lr"] for h in HISTORY] and lr.get_yscale() == "log"
    kept = [ln for ln in prune.get_lines() if "params" in str(ln.get_label())]
    assert list(kept[0].get_ydata()) == [1.0, 0.8, 0.6]
    ticks = [t for t in loss.get_xticks() if loss.get_xlim()[0] <= t <= loss.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # fractional epochs, whole-number ticks


def test_finetune_plot_of_one_epoch_has_an_integer_tick():
    fig = figures({"history": HISTORY[1:2]})["finetune.png"]
    loss = fig.axes[2]
    ticks = [t for t in loss.get_xticks() if loss.get_xlim()[0] <= t <= loss.get_xlim()[1]]
    assert ticks == [1.0]


def test_finetune_plot_of_a_structural_run_draws_no_flat_zero_sparsity():
    rows = [{k: v for k, v in h.items() if k != "params"} | {"sparsity": 0.0} for h in HISTORY]
    fig = figures({"history": rows, "zeros": False, "structured": True})["finetune.png"]
    acc, loss, lr = fig.axes  # accuracy and loss (with its learning-rate axis): no pruning panel of zeros
    assert acc.get_ylabel() == "val accuracy" and loss.get_ylabel() == "train loss"
    counted = [h | {"sparsity": 0.0} for h in HISTORY]
    with_params = figures({"history": counted, "zeros": False, "dense_params": 1000})["finetune.png"]
    (kept,) = with_params.axes[1].get_lines()
    assert kept.get_label() == "params kept (of dense)"


def test_finetune_plot_shows_the_saved_models_params_when_finalize_removed_more():
    # l1's remove_dead removes the dead units at finalize, after the last epoch's row: the line alone ended at
    # the last epoch's count, above what the saved model keeps
    rows = [{k: v for k, v in h.items() if k != "params"} | {"params": 1000} for h in HISTORY]
    fig = figures({"history": rows, "dense_params": 1000, "final_params": 504})["finetune.png"]
    lines = {ln.get_label(): ln for ln in fig.axes[1].get_lines()}
    saved = lines["params kept, saved model (after finalize)"]
    assert list(saved.get_xdata()) == [HISTORY[-1]["epoch"]] and list(saved.get_ydata()) == [pytest.approx(0.504)]
    same = figures({"history": HISTORY, "dense_params": 1000, "final_params": 600})["finetune.png"]
    assert not any("saved model" in str(ln.get_label()) for ln in same.axes[1].get_lines())  # nothing after


def test_latency_plot_shows_the_measured_noise_band_and_the_control():
    data = {
        "latency": {"dense": {"1": 0.1, "32": 2.0}, "pruned": {"1": 0.128, "32": 1.0}},
        "noise": {"pruned": {"1": 0.05, "32": 0.2}},
        "control": {"1": 1.01, "32": 0.97},
    }
    fig = figures(data)["latency.png"]
    *per_batch, ratios = fig.axes
    bands = {round(p.get_x() + p.get_width() / 2): (p.get_y(), p.get_y() + p.get_height()) for p in ratios.patches}
    assert bands[0] == pytest.approx((1 / 1.05, 1.05)) and bands[1] == pytest.approx((1 / 1.2, 1.2))
    points = {ln.get_label(): ln for ln in ratios.get_lines()}
    pruned = [(float(x), float(y)) for x, y in zip(*points["pruned"].get_data(), strict=True)]
    assert pruned == [(0.0, pytest.approx(1.28))]  # one point per batch; the second carries no label
    aa = points["A/A control (dense vs itself)"]
    assert list(aa.get_ydata()) == [1.01, 0.97]
    # One panel per batch size, linear from 0, dense and pruned bars at their measured heights.
    assert [ax.get_title() for ax in per_batch] == ["batch 1", "batch 32"]
    for ax, b in zip(per_batch, ["1", "32"], strict=True):
        assert ax.get_ylim()[0] == 0 and ax.get_yscale() == "linear"
        assert [p.get_height() for p in ax.patches] == [data["latency"]["dense"][b], data["latency"]["pruned"][b]]


def test_render_writes_what_figures_draws(tmp_path):
    data = {
        "layers": STRUCTURED,
        "structured": True,
        "history": HISTORY,
        "latency": {"dense": {"1": 0.1}, "pruned": {"1": 0.05}},
        "noise": {"pruned": {"1": 0.1}},
    }
    names = render(data, tmp_path)
    assert names == list(figures(data)) == ["layer_sparsity.png", "finetune.png", "latency.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_run_draws_channels_and_exclusions_from_the_pruned_model():
    # What the pipeline hands the plot worker when fine-tuning ends, from a real structural removal.
    shape = [1, 1, 28, 28]
    torch.manual_seed(0)
    recipe = sparsekit.Recipe(
        version=1,
        model={"input_shape": shape},
        finetune={"epochs": 1},
        pruning=[{"method": "structured", "ratio": 0.5, "schedule": "oneshot", "ignore": ["fc2"]}],
    )
    model = small_cnn()
    dense = copy.deepcopy(model)
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1, context={"input_shape": shape})
    model = pruner.finalize()
    data = first_plot_data(
        layer_report(model, shape), layer_report(dense, shape), method_results(pruner),
        recipe.model_dump(mode="json"), [], 0.9, None,
    )  # fmt: skip
    rows = {r["name"]: r for r in data["layers"]}
    now, before = prunable_layers(model), prunable_layers(dense)
    assert rows["fc2"]["excluded"] and "channels" not in rows["fc2"]
    for name in ("conv1", "conv2", "conv3", "fc1"):
        assert rows[name]["channels"] == [weight_of(now[name]).shape[0], weight_of(before[name]).shape[0]]
    fig = figures(data)["layer_sparsity.png"]
    (ax,) = fig.axes
    texts = _texts(ax)
    assert texts["excluded"] == [4]
    for x, name in enumerate(("conv1", "conv2", "conv3", "fc1")):
        kept, total = rows[name]["channels"]
        assert x in texts[f"{kept}/{total}"]


def test_the_plot_helper_publishes_nothing_once_its_run_is_killed(tmp_path):
    # A run killed with SIGKILL cannot stop its helper: the helper went on to publish finetune.png into the folder
    # seconds after the run was dead. Now the kernel stops it with its parent (Linux), or it checks before a plot.
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    out.mkdir()
    parent = (
        "import json, sys, time\n"
        "from sparsekit.plots import PlotWorker\n"
        f"w = PlotWorker({str(out)!r}); w.start()\n"
        "w.draw(json.loads(sys.argv[1]))\n"
        "print('sent', w._proc.pid, flush=True); time.sleep(60)\n"
    )
    data = json.dumps({"layers": STRUCTURED, "structured": True, "history": HISTORY})
    proc = subprocess.Popen([sys.executable, "-c", parent, data], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    word, child = proc.stdout.readline().split()
    assert word == "sent"
    proc.send_signal(signal.SIGKILL)  # before the helper (still importing matplotlib) could draw
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(int(child), 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(int(child), signal.SIGKILL)
        raise AssertionError("the plot helper outlived its run by 30 s")
    assert not list(out.iterdir()), list(out.iterdir())


def test_the_plot_worker_imports_nothing_from_the_current_folder(tmp_path, monkeypatch):
    # `python -m sparsekit.plots` put the current folder first on the worker's import path: a numpy.py there ran
    # (a prune in a downloads folder executed it) and the plots failed with its ImportError.
    canary = tmp_path / "canary"
    (tmp_path / "numpy.py").write_text(f"open({str(canary)!r}, 'w').close()\n")
    (tmp_path / "matplotlib.py").write_text(f"open({str(canary)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    worker, files = _draw_in_a_worker(out)
    assert worker.error is None, worker.error
    assert "finetune.png" in files and (out / "finetune.png").is_file()
    assert not canary.exists()


def _draw_in_a_worker(out):
    """A plot worker drawing the first plots into ``out`` (created): ``(worker, files)`` once it finished."""
    from sparsekit.plots import PlotWorker

    out.mkdir()
    with PlotWorker(out) as worker:
        worker.start()
        worker.draw({"layers": STRUCTURED, "structured": True, "history": HISTORY})
        files = worker.finish({})
    return worker, files


def test_the_latency_plot_sent_early_is_drawn_and_collected_at_finish(tmp_path):
    """last() sends the benchmark's latencies while the run goes on (the storage choice); finish() collects
    every file, and a second last() sends nothing more."""
    from sparsekit.plots import PlotWorker

    latency = {"latency": {"dense": {"1": 0.1}, "pruned": {"1": 0.05}}, "noise": {"pruned": {"1": 0.1}}}
    with PlotWorker(tmp_path) as worker:
        worker.start()
        worker.draw({"layers": STRUCTURED, "structured": True, "history": HISTORY})
        worker.last(latency)
        worker.last({"latency": {"dense": {"32": 9.0}}})  # ignored: the worker takes two parts, then ends
        files = worker.finish()
    assert worker.error is None, worker.error
    assert files == ["layer_sparsity.png", "finetune.png", "latency.png"]
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in files)


def test_matplotlib_keeps_its_font_cache_in_sparsekits_cache_folder(tmp_path, monkeypatch):
    # matplotlib wrote ~/.cache/matplotlib/fontlist-*.json and ~/.config/matplotlib from the plot worker, outside
    # what README says a run writes; it goes to sparsekit's cache folder unless MPLCONFIGDIR is set.
    from sparsekit.plots import matplotlib_env

    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(cache))
    for var in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    worker, files = _draw_in_a_worker(tmp_path / "out")
    assert worker.error is None and "finetune.png" in files
    assert not [p for p in home.rglob("*")]
    assert list((cache / "matplotlib").glob("fontlist-*.json"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mine"))
    assert matplotlib_env()["MPLCONFIGDIR"] == str(tmp_path / "mine")  # the user's own setting stays
