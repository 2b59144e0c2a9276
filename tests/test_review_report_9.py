"""Review (angle: report): the numbers report.json, report.md, the printed summary and the plots show
are the numbers measured, and no rounding turns one claim into another."""

from __future__ import annotations

import pytest
import torch

from examples.models import mlp
from sparsekit.onnx.bench import latency_table
from sparsekit.report import render_markdown, render_summary
from tests.test_report_summary import MLP_SHAPE, _prune, _recipe, _report


def _small_model_report():
    """A report whose latencies are a small model's: 0.012471 ms dense, 0.011543 ms pruned (0.926x, faster)."""
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    dense_ms, pruned_ms = 0.012471, 0.011543
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, latency={"1": (pruned_ms / dense_ms, 0.0527)})
    report.dense.latency_ms["1"].p50, report.pruned.latency_ms["1"].p50 = dense_ms, pruned_ms
    return report


def test_sub_millisecond_latencies_keep_the_digits_that_differ():
    # At 3 decimals both read 0.012 ms, beside "0.926x ... faster": the figures contradicted the verdict.
    report = _small_model_report()
    (line,) = [ln for ln in render_summary(report, "out").splitlines() if "batch 1:" in ln]
    assert "0.0125 -> 0.0115 ms (0.926x" in line and line.endswith("faster"), line
    assert "| latency p50, batch 1 (ms) | 0.0125 | 0.0115 | 0.926x | faster" in render_markdown(report)


def test_bench_table_keeps_ms_digits_and_states_the_band_it_judged_against():
    # sparsekit bench printed p50 0.012 for both files and "0.95x ... yes (noise ±5.3%)" for a ratio of 0.948:
    # the rounded ratio lay inside the stated band.
    lat = {"p50": 0.012471, "p90": 0.0131, "p99": 0.02}
    small = {"p50": 0.011823, "p90": 0.0125, "p99": 0.019}
    ratio = small["p50"] / lat["p50"]
    files = [
        {"path": "a.onnx", "latency_ms": {"1": lat}, "throughput_per_s": {"1": 1.0}, "ratio_to_first": {"1": {
            "p50": 1.0, "spread": [1.0, 1.0]}}, "speedup_significant": {"1": False}, "noise_band": {"1": 0.0527},
         "bytes": 10, "gzip_bytes": 5, "gzip_level": 9},
        {"path": "b.onnx", "latency_ms": {"1": small}, "throughput_per_s": {"1": 1.0}, "ratio_to_first": {"1": {
            "p50": ratio, "spread": [ratio, ratio]}}, "speedup_significant": {"1": True}, "noise_band": {"1": 0.0527},
         "bytes": 10, "gzip_bytes": 5, "gzip_level": 9},
    ]  # fmt: skip
    table = latency_table({"files": files, "control": {"1": {"ratio_p50": 1.0}}, "runs": 5, "notes": []})
    assert "| a.onnx | 1 | 0.0125 | 0.0131 | 0.0200 |" in table, table
    assert f"| {ratio:.3f}x [{ratio:.3f}-{ratio:.3f}] | yes (noise band 0.950x-1.053x) |" in table, table


def test_latency_plot_legend_covers_no_ratio():
    # The legend went where matplotlib's "best" put it: over a 0.72x point at the bottom of the ratio panel.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from sparsekit.plots import figures

    data = {
        "latency": {"dense": {"1": 0.012471, "8": 0.028102}, "pruned": {"1": 0.011543, "8": 0.020264}},
        "noise": {"pruned": {"1": 0.0527, "8": 0.0527}},
        "control": {"1": 1.0005, "8": 0.9956},
    }
    fig = figures(data)["latency.png"]
    FigureCanvasAgg(fig).draw()
    panel = fig.axes[-1]
    legend = panel.get_legend().get_window_extent()
    points = [panel.transData.transform(xy) for line in panel.get_lines() for xy in line.get_xydata()]
    assert len(points) >= 4 and not any(legend.contains(*p) for p in points)


def test_timings_phases_and_untimed_add_up_to_total(tmp_path, mlp_checkpoint, monkeypatch):
    # The collection that frees the torch model before onnxruntime runs was in no phase: the phases summed to
    # 10.6 s of a 11.5 s total, and nothing in report.json said where the rest went.
    import gc
    import json
    import time

    import sparsekit.pipeline as pipeline_mod
    from tests.conftest import fast_prune

    class SlowGc:
        def collect(self, *args):
            time.sleep(1.0)  # long beside the untimed moments of a busy machine (0.55 s seen on 2 loaded cores)
            return gc.collect(*args)

    monkeypatch.setattr(pipeline_mod, "gc", SlowGc())
    monkeypatch.setattr(pipeline_mod, "_COLLECT_FROM_BYTES", 0)  # (a model this small is otherwise not collected)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    res = fast_prune(mlp_checkpoint, recipe, tmp_path / "o", "--arch", "examples.models:mlp")
    assert res.exit_code == 0, res.output
    t = json.loads((tmp_path / "o" / "report.json").read_text())["timings"]
    assert t["seconds"]["free"] >= 1.0
    assert sum(t["seconds"].values()) + t["untimed"] == pytest.approx(t["total"], abs=0.01)
    assert 0 <= t["untimed"] < 1.0  # the second spent in the collection is in the free phase, not untimed


def test_markdown_names_a_change_that_rounds_to_1x_as_the_summary_does():
    # report.md read "| 9.6 kB | 9.6 kB | 1.000x | smaller |": equal-looking figures, a ratio of 1, and the word
    # smaller. The printed summary already says "smaller by 7 B" there.
    report = _small_model_report()
    report.pruned.onnx_bytes = report.dense.onnx_bytes - 3
    md = render_markdown(report)
    (row,) = [ln for ln in md.splitlines() if ln.startswith("| ONNX size, dense-stored |")]
    assert row.endswith("| 1.000x | smaller by 3 B |"), row
    (line,) = [ln for ln in render_summary(report, "out").splitlines() if ln.strip().startswith("size")]
    assert "(1.000x: smaller by 3 B)" in line, line


def test_accuracy_one_sample_apart_on_a_large_split_is_not_printed_as_zero():
    # 50,000 validation samples: one more right is +0.00002, printed "0.7613 -> 0.7613 (+0.0000: more accurate)".
    report = _small_model_report()
    report.dense.accuracy, report.pruned.accuracy = 38064 / 50000, 38065 / 50000
    (line,) = [ln for ln in render_summary(report, "out").splitlines() if ln.strip().startswith("accuracy")]
    assert "0.76128 -> 0.76130 (+0.00002: more accurate)" in line, line
    assert "| accuracy | 0.76128 | 0.76130 | +0.00002 | more accurate |" in render_markdown(report)
    report.pruned.accuracy = 0.5  # a change 4 decimals show keeps 4
    assert "| accuracy | 0.7613 | 0.5000 | -0.2613 | less accurate |" in render_markdown(report)


def test_bytes_per_nonzero_row_names_the_count_it_divides_by():
    # report.md's "gzip bytes per nonzero weight" divided by the ONNX file's nonzero params, biases included.
    report = _small_model_report()
    p = report.pruned
    for r in (report.dense, p):
        r.gzip_bytes_per_nonzero = r.onnx_gzip_bytes / r.onnx_nonzero_params  # as the pipeline writes it
    (row,) = [ln for ln in render_markdown(report).splitlines() if "gzip bytes per nonzero" in ln]
    assert row.startswith("| gzip bytes per nonzero param of the ONNX file |"), row
    assert f"| {p.onnx_gzip_bytes / p.onnx_nonzero_params:.2f} |" in row


def test_export_int8_says_which_samples_it_scored(tmp_path):
    # "accuracy fp32 0.6992 ... on 359 samples": the digits split at seed 0, while the prune run's report.json had
    # scored its recipe's seed 1 split (0.6657) of the same model; nothing said the samples differ.
    from click.testing import CliRunner

    import sparsekit
    from sparsekit.cli import main

    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    kwargs = {"in_features": 64, "hidden": [16]}
    sparsekit.save_model(mlp(**kwargs), path, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    args = ["export", str(path), "--arch", "examples.models:mlp", "-o", str(tmp_path / "q.onnx")]
    res = CliRunner().invoke(main, [*args, "--quantize", "int8", "--data", "digits", "--exporter", "torchscript"])
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.stdout.splitlines() if "top-1 agreement" in ln]
    assert "on 359 samples (the validation split at seed 0, val_fraction 0.2" in line, line


def test_macs_state_their_unit():
    # "MACs 4,928 -> 4,928" in the summary and report.md: per sample or per benchmark batch was not said.
    report = _small_model_report()
    (line,) = [ln for ln in render_summary(report, "out").splitlines() if ln.strip().startswith("MACs")]
    assert f"{report.dense.macs:,} -> {report.pruned.macs:,} per sample (" in line, line
    assert "| MACs per sample (dense count) |" in render_markdown(report)
