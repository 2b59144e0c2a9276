"""Review (contract angle, round 14): INTERFACE.md and README.md held against what the code does."""

from __future__ import annotations

import pytest

import sparsekit


def test_load_report_takes_the_run_folder(tmp_path, mlp_checkpoint):
    # `sparsekit report DIR` takes the run's folder, and so does prune's -o; load_report("out") said
    # "out: not found; run sparsekit's prune first" about the folder holding the finished run.
    from conftest import fast_prune

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    out = tmp_path / "out"
    result = fast_prune(mlp_checkpoint, recipe, out, "--trust-code")
    assert result.exit_code == 0, result.output
    by_folder = sparsekit.load_report(out)
    assert by_folder.to_json() == sparsekit.load_report(out / "report.json").to_json()
    assert sparsekit.load_report(str(out)).pruned.sparsity == by_folder.pruned.sparsity


def test_load_report_of_a_folder_without_a_run_says_so(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sparsekit.SparsekitError, match="holds no finished prune run"):
        sparsekit.load_report(empty)
