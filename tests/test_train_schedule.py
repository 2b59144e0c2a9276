"""The fine-tuning loop's LR schedule: torch.optim.lr_scheduler, stepped per epoch, saved and restored
on resume, and still driving the optimizer after structured pruning replaced its parameters."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import sparsekit
import sparsekit.train as train_mod
from examples.models import mlp, small_cnn

SHAPE = [1, 1, 8, 8]


def _recipe(schedule: dict[str, Any], *, epochs: int = 4, structured: bool = False, lr: float = 0.05) -> Any:
    if structured:
        model: dict[str, Any] = {"input_shape": SHAPE}
        method = {"method": "structured", "ratio": 0.5, "steps": 1, "schedule": {"start_epoch": 1, "end_epoch": 1}}
    else:
        model = {}
        method = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 2},
                  "layers": {"exclude": ["fc3"]}}  # fmt: skip
    return sparsekit.Recipe(
        model=model,
        finetune={"epochs": epochs, "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9}, "lr_schedule": schedule},
        pruning=[method],
    )


def _data(structured: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    shape = SHAPE[1:] if structured else [64]
    return [(torch.randn(8, *shape, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(3)]


def _model(structured: bool) -> nn.Module:
    torch.manual_seed(0)
    return small_cnn(width=8, image_size=8) if structured else mlp()


def _expected(schedule: dict[str, Any], base: float, epochs: int) -> list[float]:
    hold = schedule.get("hold_epochs", 0)
    if hold:  # the full rate for `hold` epochs, then the same curve over the epochs left
        return [base] * hold + _expected({**schedule, "hold_epochs": 0}, base, epochs - hold)
    if schedule["name"] == "cosine":
        return [base * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    if schedule["name"] == "step":
        return [base * schedule["gamma"] ** (e // schedule["step_size"]) for e in range(epochs)]
    return [base] * epochs


SCHEDULES = [
    {"name": "cosine"},
    {"name": "step", "step_size": 2, "gamma": 0.1},
    {"name": "constant"},
    {"name": "cosine", "hold_epochs": 2},
    {"name": "step", "step_size": 2, "gamma": 0.1, "hold_epochs": 1},
]


def _schedule_id(s: dict[str, Any]) -> str:
    return s["name"] + (f"-hold{s['hold_epochs']}" if s.get("hold_epochs") else "")


@pytest.mark.parametrize("schedule", SCHEDULES, ids=_schedule_id)
def test_lr_per_epoch_follows_the_schedule(schedule):
    r = _recipe(schedule, epochs=6)
    data = _data(False)
    _, history, _ = sparsekit.finetune(_model(False), r, data, data[:1], progress=False)
    got = [h["lr"] for h in history]
    assert got[0] == 0.05
    # torch's schedulers compute each epoch's rate from the previous one: equal to the formula to a few ulps.
    assert got == pytest.approx(_expected(schedule, 0.05, 6), rel=1e-14, abs=0)
    if schedule["name"] == "constant":
        assert got == [0.05] * 6


def test_make_scheduler_uses_torch_schedulers():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    kinds = {
        "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
        "step": torch.optim.lr_scheduler.StepLR,
        "constant": torch.optim.lr_scheduler.ConstantLR,
    }
    for name, kind in kinds.items():
        spec = sparsekit.Recipe(finetune={"epochs": 3, "lr_schedule": {"name": name}}).finetune
        assert isinstance(train_mod.make_scheduler(opt, spec), kind)


def _interrupted_then_resumed(r: Any, structured: bool, tmp_path, stop_after: int) -> tuple[nn.Module, list]:
    data = _data(structured)

    def stop(row: dict[str, Any]) -> None:
        if row["epoch"] == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sparsekit.finetune(
            _model(structured), r, data, data[:1], progress=False, checkpoint_dir=tmp_path, on_epoch=stop
        )
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == stop_after and state["scheduler"]["last_epoch"] == stop_after
    model, history, _ = sparsekit.finetune(
        _model(structured), r, data, data[:1], progress=False, checkpoint_dir=tmp_path, resume=True
    )
    return model, history


@pytest.mark.parametrize(
    ("schedule", "structured", "stop_after"),
    [({"name": "cosine"}, False, 2), ({"name": "step", "step_size": 1, "gamma": 0.5}, False, 1),
     ({"name": "cosine"}, True, 2), ({"name": "cosine"}, True, 1), ({"name": "cosine", "hold_epochs": 2}, False, 1),
     ({"name": "step", "step_size": 1, "gamma": 0.5, "hold_epochs": 1}, False, 2)],
    ids=["cosine", "step", "cosine-structured-after-removal", "cosine-structured-before-removal", "cosine-hold",
         "step-hold"],
)  # fmt: skip
def test_resume_is_bit_identical(tmp_path, schedule, structured, stop_after):
    r = _recipe(schedule, structured=structured)
    data = _data(structured)
    straight, history, _ = sparsekit.finetune(_model(structured), r, data, data[:1], progress=False)
    resumed, resumed_history = _interrupted_then_resumed(r, structured, tmp_path, stop_after)
    assert resumed_history == history  # lr, losses and accuracies, exactly
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_structured_pruning_keeps_the_scheduler_on_the_optimizer(monkeypatch):
    made: list[torch.optim.lr_scheduler.LRScheduler] = []
    real = train_mod.make_scheduler

    def spy(optimizer: torch.optim.Optimizer, spec: Any) -> torch.optim.lr_scheduler.LRScheduler:
        made.append(real(optimizer, spec))
        return made[-1]

    monkeypatch.setattr(train_mod, "make_scheduler", spy)
    r = _recipe({"name": "cosine"}, structured=True)
    data = _data(True)
    model = _model(True)
    before = sum(p.numel() for p in model.parameters())
    model, history, _ = sparsekit.finetune(model, r, data, data[:1], progress=False)
    assert sum(p.numel() for p in model.parameters()) < before  # channels were removed mid-run
    (scheduler,) = made
    optimizer = scheduler.optimizer
    # The optimizer the scheduler drives trains the new parameters, at the rate the schedule says.
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert [h["lr"] for h in history] == pytest.approx(_expected({"name": "cosine"}, 0.05, 4), rel=1e-14)
    assert optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-18)


def test_resume_under_a_changed_schedule_continues_the_new_one(tmp_path):
    data = _data(False)

    def stop(row: dict[str, Any]) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sparsekit.finetune(
            _model(False), _recipe({"name": "cosine"}), data, data[:1], progress=False, checkpoint_dir=tmp_path,
            on_epoch=stop,
        )  # fmt: skip
    longer = _recipe({"name": "cosine"}, epochs=6)  # as lr_at(epoch, spec) always did: the recipe's curve
    with pytest.raises(sparsekit.SparsekitError, match=r"finetune\.epochs: 4 then, 6 now; .*allow_changes="):
        sparsekit.finetune(_model(False), longer, data, data[:1], progress=False, checkpoint_dir=tmp_path, resume=True)
    _, history, _ = sparsekit.finetune(
        _model(False), longer, data, data[:1], progress=False, checkpoint_dir=tmp_path, resume=True,
        allow_changes=["finetune.epochs"],
    )  # fmt: skip
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h["lr"] for h in history[2:]] == pytest.approx(_expected({"name": "cosine"}, 0.05, 6)[2:], rel=1e-14)


def test_resume_under_another_learning_rate_is_refused_even_when_asked(tmp_path):
    data = _data(False)
    sparsekit.finetune(_model(False), _recipe({"name": "constant"}, epochs=2), data, data[:1], progress=False,
                       checkpoint_dir=tmp_path)  # fmt: skip
    other = _recipe({"name": "constant"}, epochs=3, lr=0.1)
    with pytest.raises(sparsekit.SparsekitError, match=r"finetune\.optimizer\.lr: 0\.05 then, 0\.1 now"):
        sparsekit.finetune(_model(False), other, data, data[:1], progress=False, checkpoint_dir=tmp_path,
                           resume=True, allow_changes=["finetune.epochs"])  # fmt: skip
    with pytest.raises(ValueError, match="'finetune.optimizer.lr' cannot be changed on a resume"):
        sparsekit.finetune(_model(False), other, data, data[:1], progress=False, checkpoint_dir=tmp_path,
                           resume=True, allow_changes=["finetune.optimizer.lr"])  # fmt: skip


def test_resume_messages_name_the_option_not_a_flag(tmp_path):
    data = _data(False)
    r = _recipe({"name": "constant"}, epochs=3)
    sparsekit.finetune(_model(False), r, data, data[:1], progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(sparsekit.RecipeError, match=r"already finished epoch 3; start again with resume=False$"):
        sparsekit.finetune(
            _model(False), _recipe({"name": "constant"}, epochs=2), data, data[:1], progress=False,
            checkpoint_dir=tmp_path, resume=True, allow_changes=["finetune.epochs"],
        )  # fmt: skip
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(sparsekit.SparsekitError, match=r"start again with resume=False$"):
        sparsekit.finetune(_model(False), r, data, data[:1], progress=False, checkpoint_dir=tmp_path, resume=True)


def test_without_a_terminal_each_epoch_prints_one_line_matching_its_history_row(capsys):
    data = _data(False)
    _, history, _ = sparsekit.finetune(_model(False), _recipe({"name": "cosine"}, epochs=3), data, data[:1])
    lines = capsys.readouterr().err.splitlines()  # pytest's stderr is no terminal: no bar, plain lines
    assert len(lines) == 3
    for line, row in zip(lines, history, strict=True):
        assert line.startswith(f"epoch {row['epoch']}/3: train loss {row['train_loss']:.4f}, ")
        assert f"val accuracy {row['val_accuracy']:.4f}, sparsity {row['sparsity']:.3f}, lr {row['lr']:.3g}, " in line
        assert f"params {row['params']:,} (" in line  # structured pruning shows here as fewer params


def test_progress_false_prints_nothing_and_lines_print_even_when_asked_without_a_bar(capsys):
    data = _data(False)
    sparsekit.finetune(_model(False), _recipe({"name": "constant"}, epochs=2), data, data[:1], progress=False)
    assert capsys.readouterr().err == ""
    sparsekit.finetune(_model(False), _recipe({"name": "constant"}, epochs=2), data, data[:1], progress="lines")
    assert [line.split(":")[0] for line in capsys.readouterr().err.splitlines()] == ["epoch 1/2", "epoch 2/2"]


def test_ctrl_c_names_the_epoch_and_the_checkpoint_and_resume_says_where_it_continues(tmp_path, capsys):
    data = _data(False)
    r = _recipe({"name": "constant"}, epochs=4)
    batches = iter(range(100))

    class Loader(list):
        def __iter__(self):  # Ctrl-C in the middle of the third epoch (3 batches per epoch)
            for x, y in super().__iter__():
                if next(batches) == 7:
                    raise KeyboardInterrupt
                yield x, y

    with pytest.raises(KeyboardInterrupt) as info:
        sparsekit.finetune(_model(False), r, Loader(data), data[:1], progress=False, checkpoint_dir=tmp_path)
    assert str(info.value) == f"in epoch 3 of 4; {tmp_path / 'last.pt'} holds epoch 2"
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2
    capsys.readouterr()
    _, history, _ = sparsekit.finetune(_model(False), r, data, data[:1], checkpoint_dir=tmp_path, resume=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"resuming from {tmp_path / 'last.pt'}: 2 of 4 epochs finished, continuing with epoch 3"
    assert [line.split(":")[0] for line in err[1:]] == ["epoch 3/4", "epoch 4/4"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]


def test_ctrl_c_before_any_checkpoint_says_none_was_written():
    data = _data(False)

    def stop(row: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match=r"^in epoch 1 of 2; no epoch was checkpointed$"):
        sparsekit.finetune(_model(False), _recipe({"name": "constant"}, epochs=2), data, data[:1],
                           progress=False, on_epoch=stop)  # fmt: skip


@pytest.mark.parametrize(("claimed", "word"), [(5, "yielded 3"), (2, "yields more")])
def test_a_loader_whose_len_is_not_what_it_yields_is_refused(claimed, word):
    data = _data(False)  # 3 batches

    class Loader(list):
        def __len__(self) -> int:
            return claimed

    with pytest.raises(sparsekit.DataError, match=rf"len\(\) is {claimed} batches, but epoch 1 {word}"):
        sparsekit.finetune(_model(False), _recipe({"name": "constant"}, epochs=2), Loader(data), data[:1],
                           progress=False)  # fmt: skip
    # A cap below len() is not a mismatch: the epoch stops at the cap.
    capped = _recipe({"name": "constant"}, epochs=2)
    capped.finetune.max_steps_per_epoch = 2
    sparsekit.finetune(_model(False), capped, data, data[:1], progress=False)


def test_a_resume_says_when_there_was_no_checkpoint_and_when_no_epoch_is_left(tmp_path, capsys):
    """It restarted training silently when no epoch had been checkpointed, and said only "none left" after
    training, where the export and checks still run again."""
    data = _data(False)
    r = _recipe({"name": "constant"}, epochs=2)
    sparsekit.finetune(_model(False), r, data, data[:1], checkpoint_dir=tmp_path, resume=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"resuming: no epoch was checkpointed ({tmp_path / 'last.pt'} does not exist yet), so training starts at "
        "epoch 1"
    )
    sparsekit.finetune(_model(False), r, data, data[:1], checkpoint_dir=tmp_path, resume=True)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"resuming from {tmp_path / 'last.pt'}: 2 of 2 epochs finished, none left: only what follows training runs "
        "again"
    ]


def test_a_hold_as_long_as_the_run_is_noted_and_trains_at_the_full_rate():
    """A hold as long as the run (the shipped LeNet recipe, hold 3, run for 3 epochs) never decays: validate's
    notes say so, and every epoch trains at the full rate; a hold under constant is reported as unread."""
    from sparsekit.recipe import unread_finetune_keys

    r = sparsekit.Recipe(finetune={"epochs": 3, "lr_schedule": {"name": "cosine", "hold_epochs": 3}})
    assert any(
        "first lowers the rate in epoch 5, past finetune.epochs (3)" in line
        for line in unread_finetune_keys(r.finetune)
    )
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = train_mod.make_scheduler(opt, r.finetune)
    rates = []
    for _ in range(3):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == [0.1, 0.1, 0.1]
    fine = sparsekit.Recipe(
        finetune={"epochs": 6, "lr_schedule": {"name": "step", "hold_epochs": 4}}
    )  # step_size 1 after the hold: epoch 6 is the first lowered
    assert not unread_finetune_keys(fine.finetune)
    r = sparsekit.Recipe(finetune={"epochs": 2, "lr_schedule": {"name": "constant", "hold_epochs": 3}})
    assert any("read by name: cosine or step only" in line for line in unread_finetune_keys(r.finetune))


def test_held_schedule_state_round_trips():
    """The held schedule's settings travel in the scheduler's state_dict (a resume checkpoint)."""
    spec = sparsekit.Recipe(finetune={"epochs": 6, "lr_schedule": {"name": "cosine", "hold_epochs": 2}}).finetune
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = train_mod.make_scheduler(opt, spec)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["lr_lambdas"][0]["hold"] == 2 and state["lr_lambdas"][0]["span"] == 4
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    other = sparsekit.Recipe(finetune={"epochs": 6, "lr_schedule": {"name": "cosine", "hold_epochs": 1}}).finetune
    sched2 = train_mod.make_scheduler(opt2, other)
    sched2.load_state_dict(state)
    for s_ in (sched, sched2):
        s_.optimizer.step()
        s_.step()
    assert (
        opt2.param_groups[0]["lr"]
        == opt.param_groups[0]["lr"]
        == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    )


def test_a_checkpoint_from_before_hold_epochs_is_no_change():
    """A checkpoint written before lr_schedule.hold_epochs existed resumes under a recipe that leaves it at 0; a
    recipe that sets it is a change (refused unless accepted)."""
    from sparsekit.provenance import differences

    before = {"recipe": {"finetune": {"lr_schedule": {"name": "cosine", "step_size": 1, "gamma": 0.1}}}}
    now0 = {"recipe": {"finetune": {"lr_schedule": {"name": "cosine", "step_size": 1, "gamma": 0.1, "hold_epochs": 0}}}}
    now3 = {"recipe": {"finetune": {"lr_schedule": {"name": "cosine", "step_size": 1, "gamma": 0.1, "hold_epochs": 3}}}}
    assert differences(before, now0) == {}
    assert differences(before, now3) == {"finetune.lr_schedule.hold_epochs": (0, 3)}  # (it trained at the default)
    spec = sparsekit.Recipe(finetune={"epochs": 3, "lr_schedule": {"name": "cosine"}}).finetune
    assert "hold_epochs" not in train_mod._schedule_key(spec)


def test_the_summary_names_the_held_rate(tmp_path, mlp_checkpoint):
    """prune's summary line says the decay started after the held epochs (it said "cosine schedule" alone, which reads
    as the cosine over the whole run)."""
    assert "cosine schedule after 1 epoch(s) at the full rate" in held_summary(
        tmp_path, mlp_checkpoint, epochs=3, hold=1
    )


def held_summary(tmp_path, checkpoint, epochs: int, hold: int) -> str:
    """The output and report.md of a short prune of ``checkpoint`` (the digits MLP) under a cosine schedule holding
    ``hold`` of ``epochs`` epochs, whitespace collapsed."""
    from conftest import fast_prune

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {input_shape: [1, 64]}\ndata: {source: digits}\n"
        f"finetune: {{epochs: {epochs}, max_steps_per_epoch: 2, lr_schedule: {{name: cosine, hold_epochs: {hold}}}}}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n"
    )
    arch = ["--arch", "examples.models:mlp", "--set", "benchmark.enabled=false"]
    result = fast_prune(checkpoint, recipe, tmp_path / "out", *arch)
    assert result.exit_code == 0, result.output
    return " ".join((result.output + (tmp_path / "out" / "report.md").read_text()).split())
