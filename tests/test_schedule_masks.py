from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekit.masks import MASK, bake, global_topk_masks, layer_topk_masks, set_mask
from sparsekit.recipe import ScheduleSpec
from sparsekit.schedule import Schedule


def test_cubic_schedule_matches_zhu_gupta():
    s = Schedule.from_spec(ScheduleSpec(start_epoch=1, end_epoch=5, every=1), 0.9, steps_per_epoch=10)
    assert s.target(0) == 0.0
    assert s.target(10) == pytest.approx(0.0)
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at t0 + 2 dt
    assert s.target(30) == pytest.approx(0.9 - 0.9 * (1 - 20 / 40) ** 3)
    assert s.target(35) == s.target(30)  # held between update points
    assert s.target(50) == pytest.approx(0.9) and s.target(999) == pytest.approx(0.9)
    assert s.is_update(10) and s.is_update(20) and not s.is_update(15) and s.is_update(50) and not s.is_update(60)
    targets = s.epoch_targets(6, 10)
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.9)


def test_fractional_epochs_become_the_nearest_step_a_tie_to_the_even_one():
    # as the start_epoch field's description (docs/recipe.md) says: 2.5 steps -> 2, 7.5 -> 8, 2.6 -> 3
    s = Schedule.from_spec(ScheduleSpec(start_epoch=0.5, end_epoch=1.5, every=0.52), 0.9, steps_per_epoch=5)
    assert (s.start, s.end, s.every) == (2, 8, 3)


def test_oneshot_schedule():
    s = Schedule.from_spec(ScheduleSpec(), 0.5, steps_per_epoch=7)
    assert s.oneshot and s.is_update(0) and s.target(0) == 0.5


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_global_topk_exact_count_even_with_ties(sparsity):
    scores = {"a": torch.zeros(10, 10), "b": torch.rand(5, 7)}
    masks = global_topk_masks(scores, sparsity)
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros == round(sparsity * 135)


def test_global_prunes_smallest_and_layer_is_per_layer():
    scores = {"a": torch.full((4,), 1.0), "b": torch.full((4,), 2.0)}
    g = global_topk_masks(scores, 0.5)
    assert not g["a"].any() and g["b"].all()
    per = layer_topk_masks(scores, 0.5)
    assert int((~per["a"]).sum()) == 2 == int((~per["b"]).sum())


def test_masks_only_lose_ones_and_bake_removes_buffers():
    lin = nn.Linear(4, 3)
    set_mask(lin, torch.tensor([[1, 0, 1, 1]] * 3, dtype=torch.bool))
    set_mask(lin, torch.tensor([[1, 1, 0, 1]] * 3, dtype=torch.bool))  # AND: column 1 stays pruned
    assert (lin.weight[:, 1:3] == 0).all()
    assert MASK not in lin.state_dict()  # non-persistent: never in checkpoint keys
    bake(lin)
    assert not hasattr(lin, MASK) and (lin.weight[:, 1:3] == 0).all()


def test_global_topk_matches_stable_sort_with_ties():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        a = torch.randint(0, 5, (37,), generator=g).float()  # many ties
        b = torch.randn(23, generator=g).round()
        if trial % 3 == 0:
            a[:5] = float("-inf")  # already pruned
        sparsity = [0.0, 0.1, 0.5, 0.77, 0.95][trial % 5]
        masks = global_topk_masks({"a": a, "b": b}, sparsity)
        flat = torch.cat([a, b])
        n_prune = round(sparsity * flat.numel())
        expected = torch.ones_like(flat, dtype=torch.bool)
        expected[torch.argsort(flat, stable=True)[:n_prune]] = False
        assert torch.equal(torch.cat([masks["a"], masks["b"]]), expected)
