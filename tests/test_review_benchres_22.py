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
    assert aa.output_path(None, quick=True) != aa.DEFAULT_OUT
    assert aa.output_path(None, quick=True).parent != aa.DEFAULT_OUT.parent  # not into the repository either
    assert aa.output_path(tmp_path / "x.json", quick=True) == tmp_path / "x.json"


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
