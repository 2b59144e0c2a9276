"""Mends from the nineteenth review of a Pruner that takes its input shape from the first batch the model runs on
(no model.input_shape, no context, a structured entry): resumes, copies and saves of the model before that batch."""

from __future__ import annotations

import torch
from torch import nn

import sparsekit

STRUCTURED = {"pruning": [{"method": "structured", "ratio": 0.5}]}


def sig() -> nn.Module:
    """A 1-D signal classifier, [n, 1, L]: no Linear-first shape to guess."""
    return nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _train(model: nn.Module, pruner: sparsekit.Pruner, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(2, 1, 10)).sum().backward()
        opt.step()
        pruner.step()
        if pruner.structure_changed:
            opt = pruner.update_optimizer(opt)


def test_a_fresh_pruner_resumes_before_any_batch():
    torch.manual_seed(0)
    model = sig()
    pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=2)
    _train(model, pruner, 3)
    state, weights = pruner.state_dict(), model.state_dict()
    assert model[0].out_channels < 8  # channels were removed before the checkpoint
    # A fresh process: build, load the pruner's state, then the weights, as load_state_dict's docs say (the
    # load was a TargetError asking for a batch through the unpruned model first).
    again = sig()
    resumed = sparsekit.Pruner(again, STRUCTURED, steps_per_epoch=2)
    resumed.load_state_dict(state)
    again.load_state_dict(weights)
    assert resumed.context["input_shape"] == [1, 1, 10]
    assert resumed.step_count == 3 and again[0].out_channels == model[0].out_channels
    _train(again, resumed, 1)  # and trains on


def test_a_copy_or_pickle_of_the_model_before_the_first_batch():
    import copy
    import io

    model = sig()
    pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=2)
    buf = io.BytesIO()
    torch.save(model, buf)  # was "Can't pickle local object ... first_batch"
    ema = copy.deepcopy(model)  # an EMA / teacher copy made before training
    ema(torch.randn(2, 1, 12))  # the copy's batch neither builds this Pruner...
    assert pruner.context.get("input_shape") is None
    model(torch.randn(2, 1, 10))
    assert pruner.context["input_shape"] == [1, 1, 10]
    ema(torch.randn(2, 1, 12))  # ...nor fails after the model's own (was AttributeError: 'NoneType' ... 'remove')
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded(torch.randn(2, 1, 10)).shape == (2, 3)
    _train(model, pruner, 2)


def test_ddp_wrapped_after_the_pruner_is_built_says_to_rewrap(monkeypatch):
    import socket

    import pytest
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = sig()
        pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=2)
        ddp = nn.parallel.DistributedDataParallel(model)  # wrapped after the Pruner, as a user's loop may
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        while not pruner.structure_changed:
            opt.zero_grad()
            ddp(torch.randn(2, 1, 10)).sum().backward()
            opt.step()
            pruner.step()
        opt = pruner.update_optimizer(opt)
        # Not rewrapped: DDP's own error blamed unused parameters and suggested find_unused_parameters=True.
        with pytest.raises(RuntimeError, match=r"still holds the parameters.*sparsekit\.distributed\.rewrap"):
            ddp(torch.randn(2, 1, 10))
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_before_the_first_batch_resumes_as_a_fresh_start():
    model = sig()
    pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=2)
    state = pruner.state_dict()  # an initial checkpoint (was a TargetError asking for a batch first)
    assert state["step"] == 0
    again = sig()
    resumed = sparsekit.Pruner(again, STRUCTURED, steps_per_epoch=2)
    resumed.load_state_dict(state)
    _train(again, resumed, 2)
    assert resumed.context["input_shape"] == [1, 1, 10] and again[0].out_channels < 8


class LM(nn.Module):
    """Token ids [n, T] -> Embedding -> mean -> MLP, with a Hugging Face style forward."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.l1, self.l2 = nn.Embedding(30, 16), nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.l2(torch.relu(self.l1(self.emb(input_ids).mean(1))))


def test_a_keyword_batch_is_read_in_the_forwards_order_not_the_callers():
    model = LM()
    pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=1)
    # as transformers' default_data_collator builds it: labels first (their [4] was taken: "input_shape [1]")
    batch = {"labels": torch.zeros(4, dtype=torch.long), "attention_mask": torch.ones(4, 9, dtype=torch.long)}
    model(**batch, input_ids=torch.randint(0, 30, (4, 9)))
    assert pruner.context["input_shape"] == [1, 9]
    assert pruner.finalize().l1.out_features == 16
