"""Review (resume angle, 27): a checkpoint stays tied to what produced it, whatever way the user spelled its inputs."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FAST, InterruptOnEvaluate, assert_bad_input

from sparsekit.cli import main

MLP = ("--arch", "examples.models:mlp")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _digits_npz(path, shift: int = 0) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(path, x=(digits.data / 16).astype("float32"), y=(digits.target + shift) % 10)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 2, optimizer: {name: adam, lr: 0.001}}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    return path


def test_a_data_file_under_the_home_folder_is_compared_by_content(tmp_path, monkeypatch, mlp_checkpoint, recipe):
    # --data=~/d.npz (no shell expands "~" after "="): the loader reads ~/d.npz, but the checkpoint recorded the name
    # alone, so a resume with other labels in that file went on, training one run on two data sets.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    _digits_npz(home / "d.npz")
    out = tmp_path / "o"
    interrupt = InterruptOnEvaluate(monkeypatch, 3)  # stopped after epoch 1
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--data", "~/d.npz", *FAST).exit_code == 130
    interrupt.restore()
    _digits_npz(home / "d.npz", shift=1)
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", "--data", "~/d.npz", *FAST)
    assert_bad_input(result, "the data source differs", "d.npz sha256:")
    assert not (out / "report.json").exists()


def _finished_run(tmp_path, checkpoint, entry: str):
    """A one-epoch digits run of the recipe with this one pruning entry (flow YAML), finished in tmp_path/o: (recipe
    path, output folder)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1, optimizer: {name: adam, lr: 0.001}}\n"
        f"pruning: [{entry}]\nbenchmark: {{enabled: false}}\n"
    )
    out = tmp_path / "o"
    assert run("prune", checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    return recipe, out


def test_a_resume_whose_auto_target_changed_names_the_change(tmp_path, mlp_checkpoint):
    # sparsity: auto reuses the first run's per-layer values on a resume, and refused a changed target with "another
    # pruning section (a changed target, say)": the user had to guess which of their edits or --set it meant.
    recipe, out = _finished_run(
        tmp_path, mlp_checkpoint, "{method: magnitude, sparsity: auto, target: 0.6, schedule: oneshot}"
    )
    changed = ("--set", "pruning.0.target=0.65")
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", *changed, *FAST)
    assert_bad_input(result, "allocation.json", "pruning.0.target: 0.6 then, 0.65 now", "--overwrite")


def test_a_pruner_state_of_another_pruning_section_names_what_changed():
    # A user's own loop resuming with an edited recipe got "another pruning section (a changed method, target or
    # schedule)": which field of which entry was left to find by comparing the two recipes by hand.
    import torch
    from torch import nn

    import sparsekit

    def recipe(sparsity: float) -> sparsekit.Recipe:
        return sparsekit.Recipe(
            version=1,
            model={"input_shape": [1, 8]},
            finetune={"epochs": 1},
            pruning=[{"method": "magnitude", "sparsity": sparsity, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
        )

    def pruner(sparsity: float) -> sparsekit.Pruner:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        return sparsekit.Pruner(model, recipe(sparsity), steps_per_epoch=2)

    first = pruner(0.5)
    first.step()
    with pytest.raises(ValueError, match=r"pruning\.0\.sparsity: 0\.5 then, 0\.7 now"):
        pruner(0.7).load_state_dict(first.state_dict())
    pruner(0.5).load_state_dict(first.state_dict())  # the same section loads


def test_a_latency_target_with_the_benchmark_off_is_reported_unchecked(tmp_path, mlp_checkpoint):
    # ratio: auto with target_latency and benchmark.enabled: false: the final check needs the benchmark's latency, and
    # without it the target was left out of summary.targets altogether (no warning; --strict passed). Measured here on
    # a fixed-ratio run's report whose pruning section is then read as written with target_latency (the allocation
    # that measures latency takes minutes on a shared machine).
    import json

    from sparsekit.report import Report, check_targets, summarize

    _, out = _finished_run(
        tmp_path, mlp_checkpoint, "{method: structured, ratio: 0.5, round_to: null, schedule: oneshot, steps: 1}"
    )
    report = Report.model_validate(json.loads((out / "report.json").read_text()))
    asked = dict(report.recipe["pruning"][0], ratio="auto", target_latency=0.9)
    report.recipe_asked = [asked]
    latency = [c for c in check_targets(report) if c.target == "target_latency"]
    assert len(latency) == 1 and not latency[0].met and latency[0].achieved is None
    assert "not checked" in latency[0].message and "benchmark.enabled: false" in latency[0].message
    assert latency[0].message in summarize(report).warnings
