"""Architectures users bring that the repository does not hold (review round 26, angle: archs)."""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit


class _SkipConcat(nn.Module):
    """A U-Net's skip: the output of ``a`` joins ``b``'s (computed from it) in one concatenation, ``b``'s first."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.a(x))
        b = F.relu(self.b(a))
        return self.head(F.relu(self.c(torch.cat([b, a], 1))).mean((2, 3)))


def _kept(before: nn.Conv2d, after: nn.Conv2d) -> list[int]:
    """Indices of ``before``'s output channels that ``after`` (its pruned self) kept, told by their biases (their
    weights lose the input channels removed before them)."""
    return [int((before.bias == b).nonzero()) for b in after.bias]


@pytest.mark.parametrize("first", ["b", "a"])
def test_a_second_structured_entry_removes_the_right_inputs_of_a_concatenation(one_thread, first):
    # Each entry traced its own graph: after the first removed channels of the concatenation's first input, the
    # second mapped the second input's channels by the old widths, past the end (IndexError, blamed on "a layout it
    # does not model"). Removing the second input's channels first ("a") was right before too.
    second = "a" if first == "b" else "b"
    entries = [
        {"method": "structured", "ratio": ratio, "round_to": None, "schedule": "oneshot", "layers": {"include": [name]}}
        for name, ratio in ((first, 0.5), (second, 0.125))
    ]
    recipe = {"version": 1, "model": {"input_shape": [1, 3, 8, 8]}, "finetune": {"epochs": 1}, "pruning": entries}
    torch.manual_seed(0)
    model = _SkipConcat()
    dense = copy.deepcopy(model)
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    pruner.step()
    kept_b, kept_a = _kept(dense.b, model.b), _kept(dense.a, model.a)
    assert (len(kept_b), len(kept_a)) == ((4, 7) if first == "b" else (7, 4))
    assert torch.equal(model.c.weight, dense.c.weight[:, kept_b + [8 + i for i in kept_a]])


def test_a_resumed_run_removes_channels_after_a_concatenation_as_the_uninterrupted_one(one_thread):
    # The resumed Pruner's graph was traced on the dense model, the saved removals replayed through another: its next
    # event mapped channels through the concatenation by the dense widths (IndexError: a TargetError asking to ignore
    # a layer the uninterrupted run pruned fine).
    entry = {"method": "structured", "ratio": 0.5, "steps": 2, "round_to": None, "importance": "l1"}
    entry["schedule"] = {"start_epoch": 0, "end_epoch": 2}
    recipe = {"version": 1, "model": {"input_shape": [1, 3, 8, 8]}, "finetune": {"epochs": 2}, "pruning": [entry]}

    def pruned(resume_after: int | None) -> tuple[nn.Module, sparsekit.Pruner]:
        torch.manual_seed(0)
        model = _SkipConcat()
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
        for step in range(4):
            if step == resume_after:
                state, weights = pruner.state_dict(), model.state_dict()
                torch.manual_seed(1)
                model = _SkipConcat()
                pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
                pruner.load_state_dict(state)
                model.load_state_dict(weights)
            pruner.step()
        return model, pruner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole, whole_pruner = pruned(None)
        resumed, resumed_pruner = pruned(1)
    assert resumed_pruner.model_history == whole_pruner.model_history
    assert resumed.c.weight.shape == (4, 8, 3, 3)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(resumed(x), whole(x))


class _PointwiseIntoGrouped(nn.Module):
    """MobileNet/ResNeXt-style: a 1x1 conv feeding a grouped 3x3 conv of 4 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.pw = nn.Conv2d(16, 32, 1)
        self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.g(F.relu(self.pw(F.relu(self.stem(x)))))).mean((2, 3)))


@pytest.mark.parametrize("ratio", [0.3, 0.4, 0.6])
def test_global_ranking_removes_its_ratio_of_channels_with_a_grouped_conv_in_scope(one_thread, ratio):
    # The global scope counted a grouped group's unit (one channel from each of its 4 blocks) as one channel: the
    # entry removed 0.2375 of the 80 channels for a ratio of 0.3 (0.35 for 0.4) and reported it as the ratio it got.
    entry = {"method": "structured", "ratio": ratio, "scope": "global", "schedule": "oneshot", "round_to": None}
    recipe = {"version": 1, "model": {"input_shape": [1, 3, 8, 8]}, "finetune": {"epochs": 1}, "pruning": [entry]}
    torch.manual_seed(0)
    model = _PointwiseIntoGrouped()
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    pruner.step()
    pruner.finalize()
    removed = 80 - (model.stem.out_channels + model.pw.out_channels + model.g.out_channels)
    assert removed == round(80 * ratio)
    assert pruner.methods[0].report()["achieved"] == pytest.approx(removed / 80)


class _Periodic(nn.Module):
    """A 1-D CNN over a periodic signal (angles, days of a week): circular padding."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 16, 5, padding=2, padding_mode="circular")
        self.c2 = nn.Conv1d(16, 16, 3, padding=1, padding_mode="circular")
        self.head = nn.Linear(16 * 12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.c2(F.relu(self.c1(x)))).flatten(1))


def test_a_circular_padded_conv1d_model_is_pruned_not_hung(one_thread):
    # torch-pruning looped forever over the slices and concatenation a circular pad is made of: the Pruner's
    # constructor never returned (nor did `sparsekit validate` or `prune`). Built in a daemon thread, so the old hang
    # is a failure here.
    entry = {"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot"}
    recipe = {"version": 1, "model": {"input_shape": [1, 2, 12]}, "finetune": {"epochs": 1}, "pruning": [entry]}
    torch.manual_seed(0)
    model = _Periodic()
    built: list[sparsekit.Pruner] = []
    worker = threading.Thread(target=lambda: built.append(sparsekit.Pruner(model, recipe, steps_per_epoch=1)))
    worker.daemon = True
    worker.start()
    worker.join(timeout=30)
    assert built, "the Pruner was not built within 30 s"
    pruner = built[0]
    pruner.step()
    x = torch.randn(3, 2, 12)
    before = model(x)
    pruner.finalize()
    assert torch.equal(model(x), before)
    assert (model.c1.out_channels, model.c2.out_channels) == (8, 8)
    assert model.c1.padding_mode == model.c2.padding_mode == "circular"  # traced as zero-padded, then put back
