"""Review (benchmarks and results, round 22): the benchmark helpers behind the README's tables, on synthetic
rows and arguments (no training, no timing)."""

from __future__ import annotations

from benchmarks.results import report


def _row(model: str, kind: str, arm: str, value: float, seed: int, acc: float, **extra: object) -> dict:
    return {"model": model, "kind": kind, "arm": arm, "value": value, "seed": seed, "test_accuracy": acc, **extra}


def test_each_comparison_reads_its_own_dense_plus_finetuning() -> None:
    # small_cnn's unstructured recipe fine-tunes 4 epochs and its structured one 6: the structured table's
    # "dense + the same fine-tuning" must be the 6-epoch model, not the 4-epoch one (nor a median of both).
    rows = [_row("small_cnn", "both", "dense", 0.0, 0, 0.90)]
    rows += [_row("small_cnn", "unstructured", "dense+ft", 0.0, 0, 0.95)]
    rows += [_row("small_cnn", "structured", "dense+ft", 0.0, 0, 0.97)]
    for kind, base in (("unstructured", "torch"), ("structured", "torch-pruning")):
        rows += [_row("small_cnn", kind, arm, 0.5, 0, 0.93) for arm in (base, "sparsekit")]
    by_kind = {e["kind"]: e for e in report.summarize(rows)}
    assert by_kind["unstructured"]["dense+ft"]["values"] == [0.95]
    assert by_kind["structured"]["dense+ft"]["values"] == [0.97]
    assert by_kind["structured"]["dense"]["values"] == [0.90]  # one dense model for both comparisons


def test_auto_allocation_quick_run_leaves_the_measured_json_alone(tmp_path) -> None:
    # `--quick` (the documented smoke run) wrote its 1-seed figures over results/auto_allocation.json, the file
    # behind the README's table; only an explicit --out may go there now.
    from benchmarks import auto_allocation as aa

    assert aa.output_path(None, quick=False) == aa.DEFAULT_OUT
    quick = aa.output_path(None, quick=True)
    if quick.parent.name.startswith("sparsekit-auto-allocation-"):
        quick.parent.rmdir()  # the empty folder it made (rmdir never removes one with anything in it)
    assert quick != aa.DEFAULT_OUT
    assert quick.parent != aa.DEFAULT_OUT.parent  # not into the repository either
    assert aa.output_path(tmp_path / "x.json", quick=True) == tmp_path / "x.json"


def test_auto_allocation_quick_runs_do_not_share_one_file() -> None:
    # The quick run's temp JSON had one fixed name: two quick runs at once (a shared machine) overwrote each other.
    from benchmarks import auto_allocation as aa

    first, second = aa.output_path(None, quick=True), aa.output_path(None, quick=True)
    # Clean up only the empty folders this test made: rmdir never removes a folder with anything in it (on the
    # old code both paths sat directly in the shared temp dir, which must never be touched).
    for made in {first.parent, second.parent}:
        if made.name.startswith("sparsekit-auto-allocation-"):
            made.rmdir()
    assert first != second


def test_pipeline_phases_shows_why_a_prune_failed(capsys) -> None:
    # A failing `sparsekit prune` (say a mistyped --set) ended the script in a CalledProcessError traceback with
    # the child's stderr, its Error: line, captured and dropped; now its status and that line are passed on.
    import sys

    import pytest

    from benchmarks import pipeline_phases

    child = "import sys; sys.stderr.write('Error: recipe.yaml: pruning.0.sparsity: bad value\\n'); sys.exit(2)"
    with pytest.raises(SystemExit) as info:
        pipeline_phases.run([sys.executable, "-c", child], "sparsekit prune")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "sparsekit prune failed (exit 2)" in err and "Error: recipe.yaml: pruning.0.sparsity" in err


def _latency_result(runs: int, runs_done: dict[str, int]) -> dict:
    arm = {"arm": "sparsekit", "value": 0.5, "channels": [16, 32, 10], "macs_ratio": 0.257}
    arms = [{**arm, "arm": "dense", "ratio": {"1": 1.0, "32": 1.0}}, {**arm, "ratio": {"1": 0.36, "32": 0.29}}]
    control = {b: {"ratio_p50": 0.99} for b in ("1", "32")}
    return {
        "command": "python -m benchmarks.results",
        "seeds": 1,
        "summary": [],
        "latency": {"runs": runs, "runs_done": runs_done, "arms": arms, "control": control},
        "sizes": [],
        "targets": [],
        "seconds": {"total": 1.0, "training": 1.0},
    }


def test_latency_table_says_how_many_runs_were_timed() -> None:
    # The table read "200 runs" from the runs asked for; the benchmark's 2 s budget per session stops a slow
    # batch size sooner, and results.json did not even keep how many were done.
    md = report.markdown(_latency_result(200, {"1": 200, "32": 61}))
    assert "61 at batch 32" in md
    assert "200 runs asked" in md
    md = report.markdown(_latency_result(200, {"1": 200, "32": 200}))
    assert "(p50 latency ratio to dense, 200 runs, interleaved" in md


def test_tune_refuses_an_unknown_only_candidate(tmp_path, monkeypatch, capsys) -> None:
    # `tune --only NAME` with a name matching no candidate (a typo, a wrapped line copied from the README) ran the
    # baseline alone and merged that into tuning/<model>.json without a word.
    import pytest

    from benchmarks.results import tune

    monkeypatch.setattr(tune, "run_seed", lambda job: [])  # no training, old code or new
    with pytest.raises(SystemExit) as info:
        tune.main(["lenet", "--only", "end 3 every 1/8", "--seeds", "1", "--workers", "1", "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'end 3 every 1/8' is not a lenet candidate" in err and "'end 3, every 1/8'" in err
    assert not (tmp_path / "lenet.json").exists()


def test_size_targets_runs_do_not_share_one_folder(tmp_path) -> None:
    # The default --out was one fixed $TMPDIR/sparsekit-size-targets: the documented --sparsity 0.95 run
    # overwrote the 0.9 run's ONNX files and size_targets.json, and two runs at once measured each other's files.
    from benchmarks import size_targets

    first, second = size_targets.output_dir(None), size_targets.output_dir(None)
    assert first != second and first.is_dir() and second.is_dir()
    for made in (first, second):  # empty folders this test made; rmdir never removes one with anything in it
        if made.name.startswith("sparsekit-size-targets-"):
            made.rmdir()
    assert size_targets.output_dir(tmp_path / "mine") == tmp_path / "mine" and (tmp_path / "mine").is_dir()


def test_results_refuses_a_run_count_below_one_before_training(monkeypatch, capsys) -> None:
    # `--runs 0` was taken as "the default" and a negative count reached the benchmark only after the whole
    # training (minutes); both are usage errors now, before any job runs.
    import pytest

    from benchmarks.results import __main__ as suite

    def trained(job: object) -> list:
        raise RuntimeError("a job ran")

    monkeypatch.setattr(suite, "run_job", trained)
    for runs in ("0", "-5"):
        with pytest.raises(SystemExit) as info:
            suite.main(["--quick", "--workers", "1", "--runs", runs])
        assert info.value.code == 2
        assert "--runs must be >= 1" in capsys.readouterr().err


def test_size_table_divides_by_the_verbatim_reference_not_the_entropy_bound() -> None:
    # results.json stored the verbatim-values reference under "entropy_bound_bytes", the name report.json gives
    # the values-at-their-entropy bound (~1.3x smaller); each now has its own key and the table's
    # "gzip ÷ reference" column divides by the verbatim one, as its caption says.
    size = {"arm": "sparsekit", "value": 0.9, "encoding": "dense", "gzip_bytes": 1300, "gzip_ratio": 0.1}
    size |= {"bound_ratio": 0.09, "verbatim_bound_bytes": 1000, "entropy_bound_bytes": 800, "dense_bytes": 13000}
    result = {**_latency_result(40, {}), "latency": {}, "sizes": [size]}
    row = next(line for line in report.markdown(result).splitlines() if line.startswith("| sparsekit | 0.9 |"))
    assert row.endswith("| 1.30 |")


def test_memory_scaling_says_why_it_exits_1(capsys) -> None:
    # Above --max-factor the script exited 1 after its tables with nothing saying which bound was missed.
    from benchmarks import memory_scaling

    assert memory_scaling.verdict(4.6, 6.0) == 0
    assert capsys.readouterr().err == ""
    assert memory_scaling.verdict(7.57, 6.0) == 1
    assert "7.57x the big model's weights, above --max-factor 6" in capsys.readouterr().err
