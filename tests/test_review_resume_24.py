"""Review (interruption, resume and torchrun angle, round 24): the methods with the richest state, stopped and resumed,
in one process and under torchrun."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

import sparsekit
from examples.models import mlp


def test_a_gradient_entry_after_a_taylor_structured_entry_keeps_this_steps_gradients():
    # Seen in a DDP loop of structured (importance taylor, fc1) + gradient taylor (fc3): at every structured removal
    # the structured entry set every parameter's .grad to None, so the gradient entry after it saw no gradient on
    # fc3 ("had no gradient ... call it after loss.backward()", though the loop did) and put off its mask update.
    torch.manual_seed(0)
    model = mlp()
    recipe = sparsekit.Recipe(
        finetune={"epochs": 2},
        pruning=[
            {"method": "structured", "ratio": 0.5, "importance": "taylor", "schedule": "oneshot",
             "layers": {"include": ["fc1"]}},
            {"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "schedule": "oneshot",
             "layers": {"include": ["fc3"]}},
        ],
    )  # fmt: skip
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2, context={"input_shape": [1, 64]})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deferral warning
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grad = model.fc3.weight.grad.clone()
        optimizer.step()
        pruner.step()
    assert pruner.structure_changed and model.fc1.out_features == 64
    assert float((model.fc3.weight == 0).float().mean()) == 0.5  # the oneshot mask, on its step
    assert torch.equal(model.fc3.weight.grad, grad)  # the step's own gradient, not the structured entry's mean


class _Exited(Exception):
    pass


def _entry_exit(monkeypatch, argv: list[str]) -> tuple[str, int]:
    """How ``sparsekit ARGV`` ends: ("os._exit", code) or ("SystemExit", code)."""
    import signal
    import sys

    import torch.distributed  # noqa: F401 - imported, as in a distributed run

    from sparsekit import __main__ as main

    def fake_exit(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(main.os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["sparsekit", *argv])
    monkeypatch.setattr(sys, "path", list(sys.path))  # (entry drops the current folder from it)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        main.entry()
    except _Exited as err:
        return "os._exit", err.args[0]
    except SystemExit as err:
        return "SystemExit", err.code
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    raise AssertionError("entry() returned")


def test_a_failed_process_of_a_torchrun_run_exits_at_once_without_pythons_teardown(tmp_path, monkeypatch, capsys):
    # Seen: `torchrun --nproc-per-node 2 -m sparsekit prune ...`, rank 1 stopped by SIGTERM mid-epoch: it printed
    # "rank 1: Terminated (SIGTERM): in epoch 3 of 6; ..." and never exited: freeing the exception's traceback freed
    # the DDP model, whose gloo process group waited for a worker thread that waited for the GIL (an allreduce in
    # flight). Rank 0 waited in its next allreduce, torchrun waited for both: a hang, and the folder stayed locked.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _entry_exit(monkeypatch, ["export", "missing.pt"]) == ("os._exit", 2)
    assert "rank 1: " in capsys.readouterr().err  # the message is out before the process ends
    # One process: Python's own exit, as before.
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert _entry_exit(monkeypatch, ["export", "missing.pt"]) == ("SystemExit", 2)
