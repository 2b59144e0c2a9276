"""Review of the session's changes since 08a26b2 (step-order check of regularize(), ...)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sparsekit

L1: dict[str, Any] = {
    "version": 1,
    "finetune": {"epochs": 2},
    "pruning": [{"method": "l1", "strength": 1.0e-2, "mode": "penalty", "threshold": 1.0e-3}],
}


@pytest.mark.parametrize("set_to_none", [True, False])
def test_pruner_step_before_the_optimizer_step_is_warned_beside_regularize(set_to_none: bool) -> None:
    # Gradients zeroed in place (zero_grad(set_to_none=False)) keep the tensor the last optimizer step saw: the
    # regularize() added to it was taken for one after that step, and pruner.step() before optimizer.step() went
    # unwarned.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    pruner = sparsekit.Pruner(model, L1, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            x, y = torch.randn(8, 8), torch.randint(0, 2, (8,))
            optimizer.zero_grad(set_to_none=set_to_none)
            nn.functional.cross_entropy(model(x), y).backward()
            pruner.regularize()
            pruner.step()
            optimizer.step()
    told = [str(w.message) for w in caught]
    assert len(told) == 1, told
    assert "pruner.step() ran before optimizer.step()" in told[0]


@pytest.mark.parametrize(
    ("model", "candidate"),
    [("structured", "1 step at epoch 0, kd 0.5/T2"), ("cnn", "global, end 3, every 1/8"), ("lenet", "every 1/8")],
)
def test_tune_baseline_as_a_candidate_it_cannot_follow_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model: str, candidate: str
) -> None:
    # The baseline's plain loop reads no distillation and no pruning schedule: such a candidate's arm was the baseline
    # itself under the candidate's name ("torch-pruning, kd 0.5/T2", undistilled), merged into the tuning table.
    from benchmarks.results import tune

    monkeypatch.setattr(tune, "run_seed", lambda job: [])  # no training, old code or new
    with pytest.raises(SystemExit) as info:
        tune.main([model, "--baseline-as", candidate, "--seeds", "1", "--workers", "1", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "changes nothing the baseline's fine-tuning reads" in capsys.readouterr().err
    assert not (tmp_path / f"{model}.json").exists()


def test_tune_baseline_as_takes_the_settings_the_baseline_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from benchmarks.results import tune

    jobs: list[Any] = []
    monkeypatch.setattr(tune, "run_seed", lambda job: jobs.append(job) or [])
    name = "1 step at epoch 0, lr 1e-3"
    tune.main(["structured", "--baseline-as", name, "--baseline-as", name, "--no-candidates", "--seeds", "1",
               "--workers", "1", "--out", str(tmp_path)])  # fmt: skip
    assert jobs[0][5] == [name]  # once
    assert tune.baseline_settings("structured", name) == ["finetune.optimizer.lr=0.001"]


@pytest.mark.parametrize("name", ["a" + "é" * 120 + ".onnx", "模" * 84 + ".pt", "x" * 255])
def test_a_long_names_temp_name_holds_whole_characters_and_fits(name: str) -> None:
    # A cut inside a multi-byte character left a lone surrogate in the temp's name ('\udcc3'): not UTF-8 text.
    from sparsekit.fsutil import NAME_MAX, TEMP_SUFFIX, temp_prefix

    prefix = temp_prefix(name)
    assert len(prefix.encode("utf-8")) + 8 + len(TEMP_SUFFIX) <= NAME_MAX
    assert prefix.startswith("." + name[:50])
