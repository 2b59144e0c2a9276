from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from sparsekit.errors import TargetError
from sparsekit.masks import get_mask
from sparsekit.pruner import Pruner
from sparsekit.recipe import Recipe


def recipe(epochs: int = 1, **method) -> Recipe:
    return Recipe(**{"finetune": {"epochs": epochs}, "pruning": [{"method": "gradient", **method}]})


def single(weights: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weights), 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weights]))
    return layer


def backward_with_grad(model: nn.Module, grad: list[float]) -> None:
    """For y = W x, d(sum y)/dW = x: feeding x = grad sets exactly that gradient on W."""
    model.zero_grad()
    model(torch.tensor([grad])).sum().backward()


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))


def train_steps(model, pruner, opt, n, check=None):
    torch.manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        if check:
            check()


def test_taylor_keeps_small_weights_with_large_gradients_unlike_magnitude():
    # big weights with ~zero gradient (indices 0, 3) vs small weights with big gradient (1, 2)
    weights, grad = [4.0, 1.0, 0.5, 2.0], [0.001, 10.0, 10.0, 0.001]
    kept = {}
    for method in ("magnitude", "gradient"):
        model = single(weights)
        spec = {"sparsity": 0.5, "schedule": "oneshot"}
        if method == "gradient":
            spec["criterion"] = "taylor"
        r = Recipe(**{"finetune": {"epochs": 1}, "pruning": [{"method": method, **spec}]})
        pruner = Pruner(model, r, steps_per_epoch=1)
        backward_with_grad(model, grad)  # no optimizer step: weights do not change
        pruner.step()
        kept[method] = (model.weight[0] != 0).tolist()
    assert kept["magnitude"] == [True, False, False, True]
    assert kept["gradient"] == [False, True, True, False]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("criterion", ["taylor", "movement"])
def test_exact_sparsity_follows_the_schedule(scope, criterion):
    model = mlp()
    layers = [m for m in model if isinstance(m, nn.Linear)]
    r = recipe(
        epochs=3,
        criterion=criterion,
        sparsity=0.8,
        scope=scope,
        schedule={"start_epoch": 0, "end_epoch": 2, "every": 0.5, "init_sparsity": 0.1},
    )
    pruner = Pruner(model, r, steps_per_epoch=4)
    schedule = pruner.methods[0].schedule
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen = set()

    def check():
        target = schedule.target(pruner.step_count)
        seen.add(target)
        if scope == "global":
            zeros = sum(int((m.weight == 0).sum()) for m in layers)
            assert zeros == round(target * sum(m.weight.numel() for m in layers))
        else:
            for m in layers:
                assert int((m.weight == 0).sum()) == round(target * m.weight.numel())

    train_steps(model, pruner, opt, 12, check)
    assert max(seen) == pytest.approx(0.8) and len(seen) >= 4  # it did go through the gradual steps


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=0.05),
    ],
    ids=["sgd_momentum", "adam"],
)
def test_zeros_stay_zero_through_optimizer_steps(make_opt):
    model = mlp()
    pruner = Pruner(model, recipe(epochs=2, sparsity=0.7, schedule="oneshot"), steps_per_epoch=5)
    opt = make_opt(model.parameters())
    train_steps(model, pruner, opt, 1)  # oneshot waits for the first gradients, then prunes
    zero_sets = [(m.weight == 0).clone() for m in model if isinstance(m, nn.Linear)]
    before = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    assert sum(int(z.sum()) for z in zero_sets) == round(0.7 * sum(z.numel() for z in zero_sets))

    def check():
        for z, m in zip(zero_sets, (m for m in model if isinstance(m, nn.Linear)), strict=True):
            assert torch.equal(m.weight == 0, z)

    train_steps(model, pruner, opt, 25, check)
    after = [m.weight.detach() for m in model if isinstance(m, nn.Linear)]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # training happened
    final = pruner.finalize()
    assert get_mask(final[0]) is None  # baked: no buffers left


def test_taylor_resets_between_updates_but_movement_accumulates():
    # Two updates on 4 weights fixed at 1 (no optimizer): step 1 prunes one, step 2 a second one.
    sched = {"start_epoch": 1, "end_epoch": 2, "every": 1, "init_sparsity": 0.25, "curve": "linear"}
    cases = {
        # taylor |g|: step 1 -> prune 0; step 2 alone says prune 1, the sum (9.5, 4, 9) would say prune 2
        "taylor": ([0.1, 9.0, 1.0, 8.0], [0.0, 0.5, 3.0, 1.0], [False, False, True, True]),
        # movement -g: step 1 (-1, 5, 0, 3) -> prune 0; step 2 alone (-, -2, 1, 0) says prune 1,
        # the running sum (-, 3, 1, 3) says prune 2
        "movement": ([1.0, -5.0, 0.0, -3.0], [0.0, 2.0, -1.0, 0.0], [False, True, False, True]),
    }
    for criterion, (g1, g2, expected) in cases.items():
        model = single([1.0, 1.0, 1.0, 1.0])
        pruner = Pruner(model, recipe(epochs=2, criterion=criterion, sparsity=0.5, schedule=sched), 1)
        backward_with_grad(model, g1)
        pruner.step()
        assert (model.weight[0] == 0).tolist() == [True, False, False, False], criterion
        backward_with_grad(model, g2)
        pruner.step()
        assert (model.weight[0] != 0).tolist() == expected, criterion


def test_movement_scores_sum_over_steps_between_updates():
    model = single([1.0, -2.0, 0.5])
    sched = {"start_epoch": 3, "end_epoch": 3}
    pruner = Pruner(model, recipe(epochs=3, criterion="movement", sparsity=0.34, schedule=sched), 1)
    # index 0 is pushed up then down (net 0); index 2 moves steadily away from zero
    for g in ([-3.0, 0.0, -1.0], [3.0, 0.0, -1.0], [0.0, 0.1, -1.0]):
        backward_with_grad(model, g)
        pruner.step()
    # -w*g summed: (0, 0.2, 1.5): index 0 is lowest although its |w| is above index 2's
    assert (model.weight[0] != 0).tolist() == [False, True, True]


def test_no_gradients_defers_the_update_then_prunes_on_the_first_gradient():
    model = mlp()
    pruner = Pruner(model, recipe(sparsity=0.5, schedule="oneshot"), steps_per_epoch=4)
    pruner.step()  # no backward yet: nothing to score
    assert all(int((m.weight == 0).sum()) == 0 for m in model if isinstance(m, nn.Linear))
    model(torch.randn(4, 12)).sum().backward()
    pruner.step()
    total = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    assert sum(int((m.weight == 0).sum()) for m in model if isinstance(m, nn.Linear)) == round(0.5 * total)
    pruner.finalize()


def test_never_getting_gradients_fails_at_finalize_with_a_way_out():
    model = mlp()
    pruner = Pruner(model, recipe(sparsity=0.5, schedule="oneshot"), steps_per_epoch=4)
    for _ in range(3):
        pruner.step()
    with pytest.raises(TargetError, match=r"pruning\[0\].*no gradients.*loss\.backward\(\)"):
        pruner.finalize()


def test_zeroing_gradients_before_pruner_step_is_said_at_the_first_missed_update():
    # optimizer.zero_grad() before pruner.step() (set_to_none, torch's default) leaves no gradient to score: the
    # masks never update, which must be said when it happens, not only at finalize after the whole run.
    torch.manual_seed(0)
    for zero_first in (True, False):
        model = mlp()
        pruner = Pruner(model, recipe(sparsity=0.5, schedule={"start_epoch": 0, "end_epoch": 1}), steps_per_epoch=4)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(4):
                model(torch.randn(4, 12)).sum().backward()
                opt.step()
                if zero_first:
                    opt.zero_grad()
                pruner.step()
                if not zero_first:
                    opt.zero_grad()
        said = [str(w.message) for w in caught if "had no gradient" in str(w.message)]
        if zero_first:
            assert len(said) == 1 and "before optimizer.zero_grad()" in said[0] and "pruning[0]" in said[0]
            assert all(int((m.weight == 0).sum()) == 0 for m in model if isinstance(m, nn.Linear))
        else:
            assert said == []
            assert any(int((m.weight == 0).sum()) > 0 for m in model if isinstance(m, nn.Linear))


def test_frozen_layer_is_named_in_the_error():
    model = mlp()
    model[0].weight.requires_grad_(False)
    pruner = Pruner(model, recipe(sparsity=0.5, schedule="oneshot"), steps_per_epoch=4)
    model(torch.randn(4, 12)).sum().backward()
    pruner.step()
    assert int((model[2].weight == 0).sum()) == 0  # no partial global ranking without layer 0
    with pytest.raises(TargetError, match=r"'0'.*layers\.exclude"):
        pruner.finalize()


def test_state_dict_round_trip_keeps_accumulated_scores():
    model = single([1.0, 1.0, 1.0])
    r = recipe(epochs=3, criterion="movement", sparsity=0.34, schedule={"start_epoch": 2, "end_epoch": 2})
    pruner = Pruner(model, r, 1)
    backward_with_grad(model, [-1.0, 1.0, 0.0])
    pruner.step()
    state = pruner.state_dict()

    fresh = single([1.0, 1.0, 1.0])
    resumed = Pruner(fresh, r, 1)
    resumed.load_state_dict(state)
    backward_with_grad(fresh, [0.0, 0.0, 0.0])
    resumed.step()  # the update at step 2 must still see step 1's scores (1, -1, 0), not all ties
    assert (fresh.weight[0] != 0).tolist() == [True, False, True]


def test_scores_are_not_summed_past_the_schedules_last_update():
    # ~3 passes over the weights a step, never read again once the last mask update is done.
    model = single([1.0, -2.0, 0.5, 3.0])
    sched = {"start_epoch": 1, "end_epoch": 2, "every": 1, "init_sparsity": 0.25, "curve": "linear"}
    pruner = Pruner(model, recipe(epochs=4, criterion="movement", sparsity=0.5, schedule=sched), 1)
    for g in ([1.0, 0.0, -1.0, 0.0], [0.0, 2.0, -1.0, 0.0]):
        backward_with_grad(model, g)
        pruner.step()
    summed = {n: t.clone() for n, t in pruner.methods[0].accum.items()}
    for g in ([5.0, 5.0, 5.0, 5.0], [-5.0, 1.0, 2.0, 3.0]):  # steps 3 and 4: after end_epoch 2
        backward_with_grad(model, g)
        pruner.step()
    assert summed and all(torch.equal(pruner.methods[0].accum[n], t) for n, t in summed.items())


@pytest.mark.parametrize("criterion", ["taylor", "movement"])
def test_score_every_sums_every_nth_step_counted_back_from_each_update(criterion):
    """score_every: 3 sums the steps 3, 6, ... before each mask update and the update's own step; the sum is
    exactly the sum of the criterion over those steps (taylor restarting after each update)."""
    steps_per_epoch = 10
    sched = {"start_epoch": 0.5, "end_epoch": 1.5, "every": 0.5, "init_sparsity": 0.1, "curve": "linear"}
    model = single([1.0, -2.0, 0.5, 3.0, -0.25, 1.5])
    pruner = Pruner(
        model, recipe(epochs=2, criterion=criterion, sparsity=0.5, schedule=sched, score_every=3), steps_per_epoch
    )
    method = pruner.methods[0]
    updates = {5, 10, 15}  # start 5, every 5, end 15
    expected = torch.zeros(6)
    torch.manual_seed(0)
    for step in range(1, 21):
        g = torch.randn(6)
        w = model.weight.detach()[0].clone()
        backward_with_grad(model, g.tolist())
        upcoming = min(u for u in updates | {10**9} if u >= step)
        counted = step <= 15 and (upcoming - step) % 3 == 0
        if counted:
            expected += (w * g).abs() if criterion == "taylor" else -(w * g)
        pruner.step()
        if step in updates:
            assert counted  # an update's own step always counts
            if criterion == "taylor":
                expected = torch.zeros(6)  # a fresh window
        if step in (4, 9, 14) and method.accum:  # just before an update: the sum so far
            (acc,) = method.accum.values()
            torch.testing.assert_close(acc[0], expected, rtol=0, atol=1e-6)
    assert [s for s in range(1, 16) if (min(u for u in updates if u >= s) - s) % 3 == 0] == [
        2, 5, 7, 10, 12, 15
    ]  # fmt: skip


def test_score_every_one_sums_every_step_as_before():
    model = single([1.0, -2.0, 0.5])
    pruner = Pruner(model, recipe(epochs=3, criterion="movement", sparsity=0.34, schedule={"start_epoch": 3,
                    "end_epoch": 3}), 1)  # fmt: skip
    assert pruner.methods[0].every == 1
    for g in ([-3.0, 0.0, -1.0], [3.0, 0.0, -1.0], [0.0, 0.1, -1.0]):
        backward_with_grad(model, g)
        pruner.step()
    assert (model.weight[0] != 0).tolist() == [False, True, True]


def test_validate_says_how_often_scores_are_summed_and_when_only_updates_are():
    from sparsekit.planning import describe

    sched = {"start_epoch": 0, "end_epoch": 2, "every": 0.5}
    spec = recipe(epochs=2, sparsity=0.5, schedule=sched, score_every=4).pruning[0]
    assert "scores summed on every 4th step" in describe(spec, steps_per_epoch=20, epochs=2)
    assert "only each update's own step is scored" not in describe(spec, steps_per_epoch=20, epochs=2)
    assert "only each update's own step is scored" in describe(spec, steps_per_epoch=6, epochs=2)  # 3 apart


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_an_inf_or_nan_gradient_no_optimizer_took_adds_nothing_to_the_scores(bad):
    # GradScaler skips optimizer.step() when the gradients overflowed; pruner.step() still runs. Those gradients
    # must not reach the sums: one inf or NaN would rank the layer's weights for the rest of the run (movement).
    model = single([1.0, -2.0, 3.0, 0.5])
    r = recipe(epochs=2, criterion="movement", sparsity=0.5, schedule={"start_epoch": 1, "end_epoch": 2, "every": 1})
    pruner = Pruner(model, r, steps_per_epoch=4)
    for grad in ([1.0, 1.0, -1.0, 2.0], [bad, 0.5, 0.5, 0.5], [0.5, -1.0, 2.0, 1.0]):
        backward_with_grad(model, grad)
        pruner.step()
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    expected = -(w * torch.tensor([[1.0, 1.0, -1.0, 2.0]])) - w * torch.tensor([[0.5, -1.0, 2.0, 1.0]])
    assert torch.equal(pruner.methods[0].accum[""], expected)


def test_gradients_an_optimizer_stepped_with_are_summed_without_a_finiteness_pass(monkeypatch):
    from sparsekit.methods import gradient

    calls = []
    real = gradient._finite
    monkeypatch.setattr(gradient, "_finite", lambda g: calls.append(1) or real(g))
    model = mlp()
    sched = {"start_epoch": 0, "end_epoch": 2, "every": 1}
    pruner = Pruner(model, recipe(epochs=3, criterion="movement", sparsity=0.5, schedule=sched), steps_per_epoch=4)
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), 4)
    assert calls == []
    model(torch.randn(2, 12)).sum().backward()
    pruner.step()  # no optimizer step since the previous call (a step GradScaler skipped): checked
    assert calls == [1]


def test_an_update_waiting_out_a_step_gradscaler_skipped_is_not_warned_as_a_loop_mistake():
    # GradScaler's first steps often overflow: the start-of-schedule update waits for finite gradients, quietly.
    model = single([1.0, -2.0, 3.0, 0.5])
    pruner = Pruner(model, recipe(epochs=1, criterion="taylor", sparsity=0.5, schedule="oneshot"), steps_per_epoch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backward_with_grad(model, [float("inf"), 1.0, 1.0, 1.0])
        pruner.step()
        assert (model.weight != 0).all()  # still waiting
        backward_with_grad(model, [1.0, 1.0, 1.0, 1.0])
        pruner.step()
    assert model.weight[0].tolist() == [0.0, -2.0, 3.0, 0.0]
