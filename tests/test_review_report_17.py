"""Review of report.json, the printed summary, the plots and `sparsekit report` (helper y4): faults found by
pruning one's own models and reading every figure back against the files."""

from __future__ import annotations

import json

import pytest
import torch

import sparsekit
from examples.models import mlp
from sparsekit.report import load_report
from tests.test_report_summary import MLP_SHAPE, _prune, _recipe, _report


def _report_json(version: str = sparsekit.__version__) -> dict:
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    data = _report(dense, model, pruner, recipe, MLP_SHAPE).to_json()
    data["versions"] = {"sparsekit": version}
    return data


@pytest.mark.parametrize("newer", ["schema", "field"])
def test_a_report_from_a_newer_sparsekit_says_to_upgrade_not_to_prune_again(tmp_path, newer):
    # A report.json written by a newer sparsekit (schema 2, or schema 1 with a key this version does not know) was
    # "not a report.json written by sparsekit prune ...; run prune again": the advice repeats the whole run.
    data = _report_json("9.9.9")
    if newer == "schema":
        data["schema"] = 2
    else:
        data["storage_v2"] = {}
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(sparsekit.SparsekitError) as err:
        load_report(tmp_path / "report.json")
    said = str(err.value)
    assert "sparsekit 9.9.9" in said and "pip install -U sparsekit" in said
    assert "run prune again" not in said and "not a report.json written by sparsekit" not in said


@pytest.mark.parametrize("damage", ["value", "schema"])
def test_a_damaged_report_of_this_version_still_says_it_is_not_sparsekits(tmp_path, damage):
    # This version writes schema 1 and knows its fields: a report it wrote that says otherwise was altered.
    data = _report_json()
    if damage == "value":
        data["pruned"]["accuracy"] = "high"
    else:
        data["schema"] = 2
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(sparsekit.SparsekitError, match="not a report.json written by sparsekit prune"):
        load_report(tmp_path / "report.json")


def test_a_resumed_runs_timings_say_it_resumed_and_give_no_overhead_ratio_of_part_of_the_training(
    tmp_path, mlp_checkpoint
):
    # A run resumed after its last epoch fine-tuned nothing in the new process, yet report.json's timings gave
    # finetune 1.2 s beside a full pipeline and outside_finetune_ratio 4.278 (the run in one go: 0.5), unmarked.
    from tests.conftest import fast_prune

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 2}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    out = tmp_path / "o"
    arch = ("--arch", "examples.models:mlp")
    assert fast_prune(mlp_checkpoint, recipe, out, *arch).exit_code == 0
    whole = json.loads((out / "report.json").read_text())["timings"]
    assert whole["resumed_after_epoch"] is None and whole["outside_finetune_ratio"] is not None
    res = fast_prune(mlp_checkpoint, recipe, out, *arch, "--resume")
    assert res.exit_code == 0, res.output
    assert "2 of 2 epochs finished" in res.stderr
    resumed = load_report(out).timings
    assert resumed is not None
    assert resumed.resumed_after_epoch == 2
    assert resumed.outside_finetune_ratio is None


def test_a_run_without_fine_tuning_gives_no_overhead_ratio(tmp_path, mlp_checkpoint):
    # finetune.epochs: 0 (one-shot pruning, no training): the finetune phase timed only the pruner's set-up and
    # finalize (0.014 s), and outside_finetune_ratio read 621.038, where the schema says None without fine-tuning.
    from tests.conftest import fast_prune

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 0}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    res = fast_prune(mlp_checkpoint, recipe, tmp_path / "o", "--arch", "examples.models:mlp")
    assert res.exit_code == 0, res.output
    timings = load_report(tmp_path / "o").timings
    assert timings is not None
    assert timings.outside_finetune_ratio is None


@pytest.mark.parametrize("cut", ["truncated", "not utf-8", "nested"])
def test_a_damaged_report_json_says_what_to_do(tmp_path, cut):
    # A report.json cut short was "Error: out/report.json: not valid JSON (JSONDecodeError: Unterminated string
    # starting at: line 207 column 5 (char 4993))": where the JSON broke, nothing to do about it.
    text = json.dumps(_report_json(), indent=2)
    raw = {
        "truncated": text[: len(text) // 2].encode(),
        "not utf-8": b"\xff" + text.encode(),
        "nested": b"[" * 100_000 + b"]" * 100_000,
    }[cut]
    (tmp_path / "report.json").write_bytes(raw)
    with pytest.raises(sparsekit.SparsekitError) as err:
        load_report(tmp_path / "report.json")
    assert "put back the run's own copy, or run prune again" in str(err.value)
