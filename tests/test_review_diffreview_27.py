"""Review 27, angle "diffreview": the session's own changes (lr_schedule.hold_epochs, the trainer callbacks, the
results suite's baselines) read hunk by hunk and tried at their edges."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import train as train_mod
from sparsekit.recipe import unread_finetune_keys


def _rates(spec: sparsekit.recipe.FinetuneSpec) -> list[float]:
    """The learning rate each of ``spec.epochs`` epochs trains at (base rate 1), as sparsekit.finetune steps it."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = train_mod.make_scheduler(opt, spec)
    rates = []
    for _ in range(spec.epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize(
    "schedule",
    [
        {"name": "cosine", "hold_epochs": 2},  # the cosine's first epoch after the hold is at cos(0) = 1: all 3 full
        {"name": "cosine", "hold_epochs": 1},
        {"name": "step", "hold_epochs": 1, "step_size": 2},  # first decay at epoch 1 + 2 = 3: none of 3 decayed
        {"name": "step", "hold_epochs": 1, "step_size": 1},
        {"name": "cosine", "hold_epochs": 3},
    ],
    ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()),
)
def test_a_hold_that_leaves_no_epoch_decayed_is_noted_and_only_then(schedule):
    # hold_epochs: 2 of 3 under cosine trained every epoch at the full rate, yet validate said nothing (only a hold
    # >= finetune.epochs was noted) and the report read "cosine schedule after 2 epoch(s) at the full rate".
    spec = sparsekit.Recipe(finetune={"epochs": 3, "lr_schedule": schedule}).finetune
    never_decayed = all(rate == 1.0 for rate in _rates(spec))
    noted = [n for n in unread_finetune_keys(spec) if "every epoch trains at the full rate" in n]
    assert bool(noted) == never_decayed, (schedule, _rates(spec), noted)


def test_tune_refuses_to_merge_rows_of_another_pixel_scale(tmp_path, monkeypatch):
    # `tune lenet --normalize none --only X` with the default --out replaced the standardized file's rows of arm X (and
    # its dense and torch rows) with rows on pixels in [0, 1] and kept the other arms: one table of arms trained on
    # different inputs, with nothing saying so.
    import json

    from benchmarks.results import tune

    ran: list[tuple] = []

    def fake_seed(job: tuple) -> list[dict]:
        ran.append(job)
        return [{"seed": job[1], "arm": "dense", "value": 0.0, "val_accuracy": 0.9}]

    monkeypatch.setattr(tune, "run_seed", fake_seed)
    out = tmp_path / "tuning"
    out.mkdir()
    standard = [{"seed": 0, "arm": "v0", "value": 0.9, "val_accuracy": 0.94}]  # written before rows named a scale
    (out / "lenet.json").write_text(json.dumps(standard))
    options = ["lenet", "--seeds", "1", "--workers", "1", "--no-baseline", "--out", str(out)]
    with pytest.raises(SystemExit, match=r"lenet\.json: holds rows with --normalize standard.*another --out"):
        tune.main([*options, "--normalize", "none"])
    assert not ran and json.loads((out / "lenet.json").read_text()) == standard  # refused before any training
    rows = tune.main([*options, "--normalize", "standard"])  # the same scale merges as before
    assert rows == [{"seed": 0, "arm": "dense", "value": 0.0, "val_accuracy": 0.9, "normalize": "standard"}]
    assert len(json.loads((out / "lenet.json").read_text())) == 2


def test_a_hold_added_to_a_checkpoint_from_before_the_field_is_named_from_its_default():
    # A checkpoint written before lr_schedule.hold_epochs existed, resumed with hold_epochs: 3, was refused as
    # "finetune.lr_schedule.hold_epochs: null then, 3 now": a null no recipe may write; that run trained at 0.
    from sparsekit.provenance import describe_changes, differences

    before = {"recipe": {"finetune": {"lr_schedule": {"name": "cosine", "step_size": 1, "gamma": 0.1}}}}
    now = {"recipe": {"finetune": {"lr_schedule": {"name": "cosine", "step_size": 1, "gamma": 0.1, "hold_epochs": 3}}}}
    assert describe_changes(differences(before, now)) == "finetune.lr_schedule.hold_epochs: 0 then, 3 now"
    now["recipe"]["finetune"]["lr_schedule"]["hold_epochs"] = 0
    assert differences(before, now) == {}


@pytest.mark.parametrize(("held_lr", "hold"), [(False, 0), (True, 3)])
def test_the_suites_one_shot_baseline_decays_from_epoch_0_unless_held(monkeypatch, held_lr, hold):
    # The shipped LeNet recipe holds its rate for the 3 epochs its gradual pruning takes; torch's one shot is pruned at
    # epoch 0, so the suite's baseline fine-tunes with the schedule over all the epochs, and the tuning's extra arm
    # (held_lr) with the recipe's own. Nothing tested which schedule each baseline trained under.
    from torch.utils.data import TensorDataset

    from benchmarks.results import arms

    seen: list[int] = []
    real = arms.make_scheduler

    def spy(optimizer, spec):
        seen.append(spec.lr_schedule.hold_epochs)
        return real(optimizer, spec)

    monkeypatch.setattr(arms, "make_scheduler", spy)
    recipe = sparsekit.load_recipe(
        "lenet-gradual-magnitude-90", overrides=["finetune.epochs=1", "pruning.0.schedule=oneshot"]
    )
    assert recipe.finetune.lr_schedule.hold_epochs == 3  # (the shipped recipe's own, left as it is)
    data = TensorDataset(torch.rand(8, 784), torch.zeros(8, dtype=torch.long))
    split = arms.Split(data, data, data, seed=0)
    from examples.models import lenet_300_100

    dense = lenet_300_100()
    arms.run_torch_prune(dense, recipe, split, 0.5, held_lr=held_lr)
    assert seen == [hold]
    assert recipe.finetune.lr_schedule.hold_epochs == 3  # the caller's recipe is not edited


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ("finetune: {epochs: 1}\n", "prune would fine-tune, export and benchmark the model dense"),
        ("benchmark: {enabled: false}\n", "prune would export the model dense"),
        ("finetune: {epochs: 2}\nbenchmark: {enabled: false}\n", "prune would fine-tune and export the model dense"),
    ],
)
def test_validate_of_a_recipe_without_entries_says_what_its_run_does(tmp_path, extra, said):
    # `version: 1` with benchmark off (finetune.epochs 0 by default) was said to "fine-tune, export and benchmark".
    from click.testing import CliRunner

    from sparsekit.cli import main

    path = tmp_path / "r.yaml"
    path.write_text("version: 1\n" + extra)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert said in " ".join(result.output.split()), result.output
