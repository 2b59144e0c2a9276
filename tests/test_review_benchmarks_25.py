"""Review (benchmarks round 25): the README's benchmark figures name commands and settings that the scripts run
today and match the committed results files (no training, no timing)."""

from __future__ import annotations

import copy
import inspect
import json
import sys
from pathlib import Path

import pytest
import torch

import sparsekit
from benchmarks import auto_allocation as aa

ROOT = Path(__file__).resolve().parent.parent


def test_auto_allocation_results_and_tables_name_the_uniform_ratio_the_script_runs() -> None:
    # The uniform arm is the smallest ratio keeping at most half of small_cnn's MACs. Since channel counts are
    # rounded to the nearest multiple that is 0.27 (0.26 keeps 32/48/96/96 channels, MACs 0.664), but the
    # committed JSON and both READMEs still named `ratio: 0.26` beside MACs 0.473: a user copying the entry got
    # another model than the table's.
    torch.set_num_threads(1)
    fresh = aa.small_cnn(image_size=8)
    dense_macs = sum(aa.layer_macs(fresh, aa.CNN_SHAPE).values())

    def macs(ratio: float) -> float:  # as aa.uniform_ratio_for_macs measures it, for one ratio (its loop is slow)
        entry = {"method": "structured", "ratio": ratio}
        recipe = sparsekit.Recipe(**{"model": {"input_shape": aa.CNN_SHAPE}, "pruning": [entry]})
        return aa.macs_fraction(
            sparsekit.Pruner(copy.deepcopy(fresh), recipe, steps_per_epoch=1).finalize(), dense_macs
        )

    doc = json.loads(aa.DEFAULT_OUT.read_text())["small_cnn"]
    ratio = doc["uniform_ratio"]
    assert doc["arms"]["uniform"]["entry"]["ratio"] == ratio
    # the smallest ratio on the script's 0.01 grid at or under the target, with the MACs the JSON recorded
    assert abs(macs(ratio) - doc["uniform_ratio_macs_fresh"]) < 1e-9 and macs(ratio) <= aa.TARGET_MACS
    assert macs(round(ratio - 0.01, 2)) > aa.TARGET_MACS
    for readme in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        rows = [line for line in readme.read_text().splitlines() if "MACs 0.473" in line and "`ratio: 0." in line]
        assert rows and all(f"`ratio: {ratio}`" in line for line in rows), (readme, rows)


def test_results_md_names_the_runs_option_it_was_measured_with() -> None:
    # results.md opens with "Command: `...`" for re-running the tables, but `--runs 300` (the latency table's timed
    # runs, documented in benchmarks/results/README.md) was left out of it: the command it named timed 200 runs.
    import argparse

    from benchmarks.results.__main__ import command_line

    def args(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**{"quick": False, "seeds": None, "runs": None, "workers": 2, "out": None, **kw})

    assert command_line(args()) == "python -m benchmarks.results"
    assert command_line(args(quick=True)) == "python -m benchmarks.results --quick"
    assert command_line(args(seeds=5, runs=300, workers=1)) == "python -m benchmarks.results --seeds 5 --runs 300"


@pytest.mark.parametrize(
    "script, argv, option",
    [
        ("pipeline_phases", ["--runs", "0", "--model", "/nowhere.pt"], "--runs"),  # was an IndexError after the runs
        ("size_targets", ["--sparsity", "1.5"], "--sparsity"),  # was torch.topk's RuntimeError after training
        ("int8_speed", ["--runs", "0"], "--runs"),  # was sparsekit's ExportError after training every model
        ("l1_vs_structured", ["--target", "1.5"], "--target"),  # was the Recipe's traceback after the dense model
        ("structured_latency", ["--ratio", "0.5", "--ratio", "1"], "--ratio"),
        ("bench_stability", ["--repeats", "0"], "--repeats"),
        ("memory_scaling", ["--steps", "0"], "--steps"),
        ("step_overhead", ["--block", "0"], "--block"),
    ],
)
def test_benchmark_scripts_refuse_out_of_range_options_before_any_work(
    script: str, argv: list[str], option: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An out-of-range count or fraction ended in a traceback (exit 1), some only after minutes of training; it is
    # now argparse's usage error (exit 2) naming the option, before anything is trained or timed.
    import importlib

    module = importlib.import_module(f"benchmarks.{script}")
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])  # the scripts whose main() takes no argv read it

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the options were checked")

    for name in ("run", "train", "load_data", "measure", "run_model", "simulate", "run_measured", "time_arms"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, no_work)
    with pytest.raises(SystemExit) as info:
        module.main(argv) if "argv" in inspect.signature(module.main).parameters else module.main()
    assert info.value.code == 2
    assert f"{option} must be" in capsys.readouterr().err


def test_structured_latency_prints_the_band_that_labels_a_ratio_noise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run printed "0.712 (noise) | 0.006": a 29% speedup called noise beside an "A/A noise" of 0.6%, because the
    # label comes from the noise band (the A/A's widest block, the arm's own block spread, 5%) and the column
    # showed only the A/A p50's distance from 1. The band itself is printed now.
    from benchmarks import structured_latency as sl

    row = {"dense_p50_ms": 8.8, "pruned_p50_ms": 6.3, "latency_ratio": 0.712, "spread": [0.5, 1.0],
           "aa_noise": 0.006, "noise_band": 0.4142, "significant": False, "macs_ratio": 0.472,
           "latency_per_macs": 1.51}  # fmt: skip
    arm = {"model": "small_cnn", "ratio": 0.3, "round_to": 16, "channels": "16/48/96/96", "batches": {"32": row}}
    monkeypatch.setattr(sl, "measure", lambda name, args, out: [arm])
    sl.main(["--models", "small_cnn"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| small_cnn"))
    assert "0.712 (noise) | 0.414 | 0.006 |" in line


def test_l1_vs_structured_marks_a_ratio_inside_its_noise_band() -> None:
    # Its docstring says a ratio inside the noise is not a speedup, but each cell printed only "A/A ±0.03" (the
    # control's p50 alone, not the band the benchmark decides with) and never which ratios were noise.
    import argparse

    from benchmarks import l1_vs_structured as lvs

    lat = {"p50_ms": 1.2, "ratio": 0.71, "noise": 0.01, "significant": False, "band": 0.41}
    row = {"model": "small_cnn", "arm": "l1", "accuracy": 0.98, "units": 112, "units_removed": 0.5, "macs": 1000,
           "macs_ratio": 0.13, "seconds": 1.0, "latency": {"32": lat}}  # fmt: skip
    line = lvs._line(row, argparse.Namespace(batch_size=[32]))
    assert "(0.71x, band 0.41: noise, A/A 0.01)" in line
    dense = {**row, "arm": "dense", "latency": {"32": {**lat, "ratio": 1.0, "significant": None, "band": None}}}
    assert "(1.00x, A/A 0.01)" in lvs._line(dense, argparse.Namespace(batch_size=[32]))


def test_auto_allocation_json_records_its_output_inside_the_checkout_not_the_measuring_clone(tmp_path: Path) -> None:
    # The committed results file recorded args.out as the absolute path of whichever clone ran it
    # ("/work/main/...", then "/tmp/s2/..."): a path no reader has. Inside the checkout it is relative now.
    assert aa.recorded_path(aa.DEFAULT_OUT) == "benchmarks/results/auto_allocation.json"
    assert aa.recorded_path(tmp_path / "x.json") == str(tmp_path / "x.json")  # elsewhere: as given
    doc = json.loads(aa.DEFAULT_OUT.read_text())
    assert doc["args"]["out"] == "benchmarks/results/auto_allocation.json"
