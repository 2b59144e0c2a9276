"""The cheap per-step paths (issue 12, "Step overhead") give the results of the plain ones, bit for bit.

`pruner.step()` applies masks through a cached 0/1 copy of each mask (refreshed when the mask's version
counter moves; nothing at all for an all-ones mask), l1 writes the masked shrink in one pass and lets
`apply_masks` skip that layer for the rest of the step, and mask ranking runs in numpy on CPU. These tests
pin the behaviour, never the speed: exact zeros after momentum / Adam / AdamW steps with weight decay,
reference implementations of the old code paths, and the caches' invalidation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from sparsekit import masks
from sparsekit.masks import LOWEST, MASK, apply_masks, get_mask, global_topk_masks, masked_scores, set_mask

pytestmark = pytest.mark.usefixtures("one_thread")

GRADUAL = {"start_epoch": 0, "end_epoch": 2, "every": 0.25, "init_sparsity": 0.0}
OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=1e-2),
}
LR = {"sgd_momentum_wd": 0.05, "adam_wd": 3e-3, "adamw": 3e-3}


def per_step(entries: list[dict], opt_name: str) -> list[dict]:
    """l1 entries below give ``strength`` as the shrink per step (lr * lambda): lambda for this optimizer's lr."""
    return [{**e, "strength": e["strength"] / LR[opt_name]} if e["method"] == "l1" else e for e in entries]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float32 tensor: equal bits means equal values, signs of zero and NaN payloads."""
    return t.detach().contiguous().view(torch.int32)


def train(model: nn.Module, pruner: sparsekit.Pruner, opt: torch.optim.Optimizer, steps: int, check=None) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g) * 2, torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + pruner.penalty()).backward()
        opt.step()
        pruner.step()
        if check is not None:
            check()


def masked_zero(model: nn.Module) -> None:
    for module in model.modules():
        mask = get_mask(module)
        if mask is not None:
            assert bool((module.weight[~mask] == 0).all())


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize(
    "entry",
    [
        {"method": "magnitude", "sparsity": 0.8, "schedule": GRADUAL},
        {"method": "gradient", "criterion": "taylor", "sparsity": 0.8, "schedule": GRADUAL},
        {"method": "gradient", "criterion": "movement", "sparsity": 0.8, "schedule": GRADUAL},
        {"method": "l1", "strength": 2e-3, "mode": "proximal", "remove_dead": False},
    ],
    ids=["magnitude", "taylor", "movement", "l1"],
)
def test_masked_weights_are_exact_zeros_after_every_step(entry, opt_name):
    # Momentum, Adam moments and weight decay all move masked weights off zero at every optimizer step:
    # the cached mask (and l1's one-pass masking) must still re-zero every one of them, every step.
    model = mlp()
    recipe = sparsekit.Recipe(finetune={"epochs": 3}, pruning=per_step([entry], opt_name))
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=8)
    opt = OPTIMIZERS[opt_name](model.parameters())
    train(model, pruner, opt, 24, check=lambda: masked_zero(model))
    pruned = sum(int((~m).sum()) for m in pruner.masks().values())
    assert pruned > 0


@pytest.mark.parametrize("cached", [True, False], ids=["cached-copy", "big-layer-bytes"])
@pytest.mark.parametrize("shrink", [3e-4, 3e-3, 5e-2])  # a few zeros, many, every layer floored
def test_l1_proximal_step_is_the_soft_threshold_by_lr_times_strength(shrink, cached, monkeypatch):
    """Every step, fused pass or exact one: w <- softshrink(w, lr * lambda) where the mask was alive, 0 where
    it was not (values: the fused pass may give +0 where softshrink gives -0); masks only lose ones, lose them
    only at zeros, and after an exact step every zero is masked; a layer is never emptied."""
    if not cached:
        monkeypatch.setattr(masks, "_FACTOR_MAX_NUMEL", 100)
    model = mlp()
    lr = 0.05
    entry = {"method": "l1", "strength": shrink / lr, "mode": "proximal", "remove_dead": False, "proximal_every": 1}
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 3}, pruning=[entry]), steps_per_epoch=8)
    method = pruner.methods[0]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    g = torch.Generator().manual_seed(2)
    fused = exact = 0
    for _ in range(30):
        x, y = torch.randn(16, 20, generator=g) * 2, torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        was_exact = pruner.step_count + 1 > method._fused_until
        before = [(m.weight.detach().clone(), get_mask(m).clone() if get_mask(m) is not None else None) for m in layers]
        pruner.step()
        exact, fused = exact + was_exact, fused + (not was_exact)
        for module, (w, mask) in zip(layers, before, strict=True):
            expected = F.softshrink(w, shrink) * (1 if mask is None else mask)
            got, new_mask = module.weight.detach(), get_mask(module)
            floored = (expected == 0) & (got != 0)
            assert torch.equal(got[~floored], expected[~floored])
            if bool(floored.any()):
                assert was_exact and int(floored.sum()) == 1 and torch.equal(got[floored], w[floored])
            if new_mask is not None:
                assert bool((got[~new_mask] == 0).all())
                if mask is not None:
                    assert not bool((new_mask & ~mask).any())  # masks only lose ones
            if was_exact:
                assert new_mask is not None or bool((got != 0).all())
                assert new_mask is None or torch.equal(new_mask, got != 0)  # every zero masked
    assert exact >= 4
    if shrink == 5e-2:
        assert method.floored == {"0", "2", "4"} and fused == 0  # near zero: exact steps only
    else:
        assert fused > exact  # the cheap pass took most steps


def test_a_note_of_an_applied_mask_is_void_once_the_weight_changes():
    # l1 masks a layer itself and notes it, so apply_masks can skip it; any later in-place change to the
    # weight (another hook, user code) voids the note, and apply_masks masks the layer again.
    model = mlp()
    entry = {"method": "l1", "strength": 0.1, "mode": "proximal", "remove_dead": False}
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 3}, pruning=[entry]), steps_per_epoch=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, pruner, opt, 5)
    layer = model[0]
    mask = get_mask(layer)
    assert mask is not None and not bool(mask.all())
    with torch.no_grad():
        layer.weight.add_(1.0)  # masked weights are now 1
    pruner.methods[0].after_step(pruner.step_count + 1)  # masks and notes every layer...
    with torch.no_grad():
        layer.weight.add_(1.0)  # ...then the weight moves again: the note no longer holds
    apply_masks(model)
    masked_zero(model)


def test_notes_do_not_outlive_a_pruner_step():
    model = mlp()
    entry = {"method": "l1", "strength": 0.1, "mode": "proximal", "remove_dead": False, "proximal_every": 1}
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 3}, pruning=[entry]), steps_per_epoch=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, pruner, opt, 5)
    pruner.methods[0]._fused_until = 0  # an exact step (the fused pass leaves the masking to the Pruner)
    pruner.methods[0].after_step(pruner.step_count + 1)  # a hook called outside step() leaves notes
    assert masks._APPLIED
    pruner.step()
    assert not masks._APPLIED  # step() starts afresh and apply_masks uses up what its hooks noted


def test_a_note_never_skips_masking_at_a_later_step():
    # Notes hold within one pruner.step(): an optimizer that writes through `.data` (no version counter
    # change) must still get its masked weights re-zeroed at the next step, even when no hook runs then.
    model = mlp()
    entry = {"method": "l1", "strength": 0.1, "mode": "proximal", "remove_dead": False, "schedule": {"end_epoch": 1}}
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 3}, pruning=[entry]), steps_per_epoch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, pruner, opt, 4)  # the l1 window: steps 1-4
    pruner.methods[0].after_step(3)  # called by hand: masks and notes every layer
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.data.add_(1.0)  # bypasses the version counter, as some optimizers do
    pruner.step()  # step 5: outside the window, no hook touches the weights
    masked_zero(model)
    assert any(not bool(m.all()) for m in pruner.masks().values())


def test_the_cached_mask_follows_in_place_edits_new_buffers_and_dtypes():
    layer = nn.Linear(30, 20)
    set_mask(layer, torch.rand(20, 30) > 0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    apply_masks(layer)
    assert torch.equal(layer.weight != 0, get_mask(layer))

    mask = get_mask(layer)
    assert mask is not None
    mask[:5] = False  # an in-place edit moves the version counter: the cached copy is refreshed
    with torch.no_grad():
        layer.weight.fill_(1.0)
    apply_masks(layer)
    assert torch.equal(layer.weight != 0, mask)
    assert not bool(layer.weight[:5].any())

    fresh = torch.zeros(20, 30, dtype=torch.bool)
    fresh[3, 4] = True
    layer._buffers[MASK] = fresh  # a new buffer object: never mistaken for the old one
    with torch.no_grad():
        layer.weight.fill_(1.0)
    apply_masks(layer)
    assert int((layer.weight != 0).sum()) == 1 and layer.weight[3, 4] == 1

    layer.double()  # the cached copy follows the weight's dtype
    with torch.no_grad():
        layer.weight.fill_(2.0)
    apply_masks(layer)
    assert layer.weight.dtype == torch.float64
    assert int((layer.weight != 0).sum()) == 1 and layer.weight[3, 4] == 2


def test_an_all_ones_mask_leaves_the_weight_untouched_bit_for_bit():
    layer = nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight[0, :3] = torch.tensor([-0.0, float("nan"), float("-inf")])
    set_mask(layer, torch.ones(4, 8, dtype=torch.bool))
    before = bits(layer.weight).clone()
    apply_masks(layer)
    assert torch.equal(bits(layer.weight), before)


@pytest.mark.parametrize("cached", [True, False], ids=["cached-copy", "big-layer-bytes"])
def test_applying_matches_multiplying_by_the_mask_bytes(cached, monkeypatch):
    if not cached:
        monkeypatch.setattr(masks, "_FACTOR_MAX_NUMEL", 100)  # layers past it multiply by the mask's bytes
    torch.manual_seed(3)
    layer = nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight.mul_(torch.randn(30, 40).sign())
        layer.weight[0, :4] = torch.tensor([-0.0, float("nan"), float("inf"), -1.0])
    mask = torch.rand(30, 40) > 0.4
    mask[0, :4] = False
    expected = layer.weight.detach().clone().mul_(mask.view(torch.uint8))  # the old apply_mask
    set_mask(layer, mask)
    assert torch.equal(bits(layer.weight), bits(expected))


def old_masked_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    alive = mask.view(torch.uint8).float()
    return (scores.detach().float() * alive).add_(alive.sub_(1).mul_(-LOWEST))


def test_masked_scores_are_the_old_arithmetic_bit_for_bit():
    torch.manual_seed(4)
    scores = torch.randn(50, 40) * 10 ** torch.randint(-30, 30, (50, 40)).float()
    scores[0, :5] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 0.0])
    scores[1, :5] = scores[0, :5]
    mask = torch.rand(50, 40) > 0.5
    mask[0, :5], mask[1, :5] = False, True
    layer = nn.Linear(40, 50)
    layer.register_buffer(MASK, mask, persistent=False)
    assert torch.equal(bits(masked_scores(scores, layer)), bits(old_masked_scores(scores, mask)))


def reference_lowest(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Prune the round(sparsity * n) lowest scores, ties by position: a stable sort."""
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[: round(sparsity * flat.numel())]] = False
    out, offset = {}, 0
    for name, s in scores.items():
        out[name] = keep[offset : offset + s.numel()].view_as(s)
        offset += s.numel()
    return out


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.9, 1.0])
def test_global_ranking_prunes_the_lowest_scores_ties_by_position(sparsity):
    torch.manual_seed(5)
    a = torch.randint(0, 6, (30, 20)).float()  # many ties
    a[torch.rand(30, 20) < 0.4] = LOWEST  # an already-pruned block, itself one big tie
    b = torch.randn(17, 9)
    scores = {"a": a, "b": b, "c": torch.full((11,), 2.0)}
    got, want = global_topk_masks(scores, sparsity), reference_lowest(scores, sparsity)
    assert all(torch.equal(got[n], want[n]) for n in scores)


def test_remembered_parameter_names_are_named_parameters_with_duplicates():
    model = mlp()
    shared = nn.Linear(16, 16)
    model.add_module("5", shared)
    model.add_module("6", shared)  # one module under two names: two names per parameter
    pruner = sparsekit.Pruner(
        model,
        sparsekit.Recipe(finetune={"epochs": 1}, pruning=[{"method": "magnitude", "sparsity": 0.5}]),
        steps_per_epoch=1,
    )
    pruner._param_names = {}
    pruner._remember_params()
    expected: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        expected.setdefault(id(p), []).append(name)
    assert pruner._param_names == expected
    assert pruner._param_names[id(shared.weight)] == ["5.weight", "6.weight"]


# ---------------------------------------------------------------------------------------------- more methods

COMBOS = {
    "l1_group": [{"method": "l1", "strength": 3e-2, "mode": "proximal", "group": "row", "remove_dead": False}],
    "magnitude+l1": [
        {"method": "magnitude", "sparsity": 0.6, "schedule": GRADUAL},
        {"method": "l1", "strength": 2e-3, "mode": "proximal", "remove_dead": False},
    ],
    "magnitude+l1_group": [
        {"method": "magnitude", "sparsity": 0.6, "schedule": GRADUAL},
        {"method": "l1", "strength": 3e-2, "mode": "proximal", "group": "row", "remove_dead": False},
    ],
    "taylor+max_norm": [
        {"method": "gradient", "criterion": "taylor", "sparsity": 0.7, "schedule": GRADUAL},
        {"method": "max_norm", "max_value": 0.5},
    ],
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("combo", list(COMBOS))
def test_combined_methods_keep_exact_zeros_after_every_step(combo, opt_name):
    # Two methods on the same weights: one's mask writes void the other's notes and cached copies.
    model = mlp()
    recipe = sparsekit.Recipe(finetune={"epochs": 3}, pruning=per_step(COMBOS[combo], opt_name))
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=8)
    opt = OPTIMIZERS[opt_name](model.parameters())
    train(model, pruner, opt, 24, check=lambda: masked_zero(model))
    assert sum(int((~m).sum()) for m in pruner.masks().values()) > 0


def test_the_l1_penalty_and_its_gradients_are_autograds_bit_for_bit():
    # penalty() is one autograd node with its own backward (c * sgn(w)): the same value, and the same .grad
    # whether added to the loss or applied by regularize(), as strength * sum(w.abs().sum()) through autograd.
    strength = 3.7e-3
    entry = {"method": "l1", "strength": strength, "mode": "penalty", "remove_dead": False}

    def grads(use_pruner: bool, regularize: bool) -> list[torch.Tensor]:
        model = mlp()
        with torch.no_grad():
            model[0].weight[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30])  # sgn of zeros and tiny values
        model[2].weight.requires_grad_(False)  # a frozen layer gets no gradient and still counts in the value
        x, y = torch.randn(16, 20, generator=torch.Generator().manual_seed(7)), torch.arange(16) % 4
        loss = F.cross_entropy(model(x), y)
        if use_pruner:
            pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 1}, pruning=[entry]), 1)
            value = pruner.penalty()
            if regularize:
                loss.backward()
                pruner.regularize()
            else:
                (loss + value).backward()
        else:
            value = strength * sum(m.weight.abs().sum() for m in model if isinstance(m, nn.Linear))
            if regularize:
                loss.backward()
                params = [p for p in model.parameters() if p.requires_grad]
                for p, g in zip(params, torch.autograd.grad(value, params, allow_unused=True), strict=True):
                    if g is not None:
                        p.grad.add_(g)
            else:
                (loss + value).backward()
        return [value.detach()] + [p.grad for p in model.parameters() if p.grad is not None]

    for regularize in (False, True):
        got, want = grads(True, regularize), grads(False, regularize)
        assert len(got) == len(want)
        assert all(torch.equal(bits(a), bits(b)) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("with_magnitude", [False, True], ids=["alone", "with-magnitude"])
def test_l1_group_proximal_step_is_the_block_soft_threshold(with_magnitude):
    # Each alive row scales by max(0, 1 - lr * lambda / ||row||), masked rows are zero; dead rows are masked
    # at exact steps; a magnitude update between steps changes the mask and must void the cached cover.
    lr, lam = 0.05, 0.8
    entries = [
        {"method": "l1", "strength": lam, "mode": "proximal", "group": "row", "remove_dead": False, "proximal_every": 1}
    ]
    if with_magnitude:
        entries.append({"method": "magnitude", "sparsity": 0.6, "schedule": GRADUAL})
    model = mlp()
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 3}, pruning=entries), steps_per_epoch=8)
    method = pruner.methods[0]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    layers = list(method.layers.values())  # the Linear layers but the head (group lasso leaves it out)
    assert len(layers) == len([m for m in model.modules() if isinstance(m, nn.Linear)]) - 1
    g = torch.Generator().manual_seed(3)
    dead_seen = 0
    for _ in range(30):
        x, y = torch.randn(16, 20, generator=g) * 2, torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if with_magnitude:
            pruner.step()  # magnitude's masks move between the l1 steps checked below
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        was_exact = pruner.step_count + 1 > method._fused_until
        before = [(m.weight.detach().clone(), get_mask(m).clone() if get_mask(m) is not None else None) for m in layers]
        pruner.methods[0].after_step(pruner.step_count + 1)  # l1 alone (magnitude's updates come between)
        if not with_magnitude:
            pruner.step_count += 1
        apply_masks(model)
        for module, (w, mask) in zip(layers, before, strict=True):
            rows_alive = torch.ones(w.shape[0], dtype=torch.bool) if mask is None else mask.any(dim=1)
            norms = torch.linalg.vector_norm(w if mask is None else w * mask, dim=1)  # of the weights the mask keeps
            scale = (1 - lr * lam / norms.clamp_min(1e-30)).clamp_min(0) * rows_alive
            expected = w * scale[:, None] * (1 if mask is None else mask)
            got = module.weight.detach()
            kept = (got != 0).any(dim=1) & (scale == 0)  # a floored row skips the shrink
            torch.testing.assert_close(got[~kept], expected[~kept], rtol=1e-6, atol=1e-7)
            if bool(kept.any()):
                assert was_exact and int(kept.sum()) == 1
            new_mask = get_mask(module)
            if was_exact and new_mask is not None:
                dead_rows = (got == 0).all(dim=1)
                assert not bool(new_mask[dead_rows].any())
                dead_seen += int(dead_rows.sum())
    assert dead_seen > 0


@pytest.mark.parametrize("host", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("with_magnitude", [False, True], ids=["alone", "with-magnitude"])
def test_the_all_layer_exact_group_step_finds_what_the_per_layer_one_finds(with_magnitude, host, monkeypatch):
    # The exact group step runs over every layer in a few calls (_Fused.exact); the per-layer one (_shrink_groups)
    # is the reference: the same units die, the same masks, counts, floors and fused-pass plan, weights equal to
    # rounding (t / norm there, t * (1 / norm) here). A strength that empties layers exercises the floor.
    from sparsekit.methods.l1 import L1

    calls = {"all": 0}
    exact = L1._exact_units

    def counted(self, step, fused, *args):
        calls["all"] += 1
        if not host:
            fused._host = None  # the path off CPU: torch arithmetic, one copy to the host
        return exact(self, step, fused, *args)

    def run(all_layers: bool):
        monkeypatch.setattr(L1, "_exact_units", counted if all_layers else exact)
        if not all_layers:
            monkeypatch.setattr(L1, "_fused_pass", lambda self: None)
        entries = [{"method": "l1", "strength": 6.0, "mode": "proximal", "group": "row", "remove_dead": False}]
        if with_magnitude:
            entries.append({"method": "magnitude", "sparsity": 0.6, "schedule": GRADUAL})
        model = mlp()
        pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 3}, pruning=entries), steps_per_epoch=8)
        seen = []

        def note():
            method = pruner.methods[0]
            seen.append(
                (
                    method.dead,
                    sorted(method.floored),
                    method._fused_until,
                    [get_mask(m).clone() if get_mask(m) is not None else None for m in method.layers.values()],
                    [m.weight.detach().clone() for m in method.layers.values()],
                )
            )

        train(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 24, note)
        monkeypatch.undo()
        return seen

    got, want = run(True), run(False)
    assert calls["all"] >= 4
    assert any(floored for _, floored, *_ in want)  # the floor was reached
    assert want[-1][0] > 0  # units died
    for (d1, f1, u1, m1, w1), (d2, f2, u2, m2, w2) in zip(got, want, strict=True):
        assert (d1, f1, u1) == (d2, f2, u2)
        for a, b in zip(m1, m2, strict=True):
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
        for a, b in zip(w1, w2, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert torch.equal(a == 0, b == 0)


@pytest.mark.parametrize("shrinks", [[0.3, 0.3], [0.3, 0.05]], ids=["one-rate", "per-layer-rates"])
def test_the_group_scales_computed_in_numpy_are_torchs_bit_for_bit(shrinks):
    # On CPU the per-unit block soft-threshold factors are computed in numpy on views of the tensors; off CPU (and
    # before) in torch. The same float32 operations must give the same bits: norms at 0, below and above the
    # shrink, subnormal and huge.
    from sparsekit.methods.l1 import _Fused

    layers = [nn.Linear(4, 6), nn.Linear(6, 5)]
    fused = _Fused.build([m.weight for m in layers], layers, True)
    assert fused is not None and fused._host is not None
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.tensor([0.0, 1e-40, 0.3, 0.05, 3e38]), torch.rand(6, generator=g)])
    got, want = [], []
    for host in (fused._host, None):
        fused._host = host
        fused.norms.copy_(values)
        fused._scale(shrinks, norms_ready=True)
        (got if host else want).append(fused.scale.clone())
    assert torch.equal(bits(got[0]), bits(want[0]))
    assert bool((got[0][:1] == 0).all())


@pytest.mark.parametrize("numel", [7, 1000], ids=["scalar-loop", "vectorized"])
def test_the_fused_soft_threshold_is_w_minus_its_clamp_bit_for_bit(numel):
    # The fused unstructured pass writes softshrink over each weight; it used to compute w - clamp(w, -t, t). The
    # bits must be the same, signs of zero included (a -0.0 codes worse in the exported file): weights at, inside
    # and outside +-t, signed zeros, huge and subnormal values, per-layer shrinks.
    from sparsekit.methods.l1 import _Fused

    g = torch.Generator().manual_seed(0)
    t1, t2 = 0.25, 1e-3
    special = torch.tensor([0.25, -0.25, 0.0, -0.0, 1e-3, -1e-3, 3e38, -3e38, 1e-40, -1e-40, 0.2500001, -0.2500001])
    ws = []
    for _ in range(2):
        w = torch.randn(numel, generator=g) * 0.3
        w[: min(numel, special.numel())] = special[: min(numel, special.numel())]
        ws.append(w)
    want = [w - torch.clamp(w, -t, t) for w, t in zip(ws, (t1, t2), strict=True)]
    fused = _Fused.build(ws, [nn.Linear(1, 1), nn.Linear(1, 1)], False)
    fused.shrink([t1, t2])
    for a, b in zip(ws, want, strict=True):
        assert torch.equal(bits(a), bits(b))


def test_the_all_layer_exact_step_follows_layers_another_entry_resized_and_skips_channels_last():
    # The alive-unit vector was sized by the layers' unit counts at construction: after another entry replaced a layer
    # with fewer units (structured removal), one layer masked and one not, the exact step raised a size mismatch.
    from sparsekit.masks import ensure_mask
    from sparsekit.methods.l1 import _Fused

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))
    entry = {"method": "l1", "mode": "proximal", "group": "row", "strength": 0.02, "proximal_every": 1}
    r = sparsekit.Recipe(
        finetune={"epochs": 2}, pruning=[{**entry, "remove_dead": False, "layers": {"include": ["0", "2"]}}]
    )
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=8)
    method = pruner.methods[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
        opt.step()
        pruner.step()
    with torch.no_grad():  # what a structured removal does to layer 0: half its units go (new parameters)
        model[0].weight = nn.Parameter(model[0].weight[:12].clone())
        model[0].bias = nn.Parameter(model[0].bias[:12].clone())
        model[2].weight = nn.Parameter(model[2].weight[:, :12].clone())
    model[0].out_features = model[2].in_features = 12
    ensure_mask(model[2])[0] = False  # layer 2 masked (one dead unit), layer 0 not
    method._proximal(method.step + 1)  # raised RuntimeError: The size of tensor a (28) must match ... (40)
    assert method._alive is not None and method._alive[1].numel() == 12 + 16
    assert bool((model[2].weight[0] == 0).all())
    # channels_last conv weights flatten to a copy, which the pass would go on measuring: no fused pass for them
    conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    assert _Fused.build([conv.weight], [conv], True) is None
    assert _Fused.build([nn.Conv2d(3, 8, 3).weight], [nn.Conv2d(3, 8, 3)], True) is not None


def test_gradient_sums_are_the_scorers_own_sums_bit_for_bit():
    # taylor sums (w * g).abs_() into a kept scratch buffer, movement uses one foreach addcmul over all layers:
    # both must equal adding each step's scorer(w, g) (movement: addcmul_(w, g, value=-1), as it always did).
    for criterion in ("taylor", "movement"):
        model = mlp()
        entry = {
            "method": "gradient",
            "criterion": criterion,
            "sparsity": 0.5,
            "schedule": {"start_epoch": 5, "end_epoch": 5},
        }
        pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 6}, pruning=[entry]), steps_per_epoch=8)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        want: dict[str, torch.Tensor] = {}
        g = torch.Generator().manual_seed(4)
        for _ in range(12):
            x, y = torch.randn(16, 20, generator=g), torch.randint(0, 4, (16,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            for name, m in layers.items():
                w, grad = m.weight.detach(), m.weight.grad
                if name not in want:
                    want[name] = getattr(sparsekit.methods.scorers, criterion)(w, grad)
                elif criterion == "taylor":
                    want[name] += sparsekit.methods.scorers.taylor(w, grad)
                else:
                    want[name].addcmul_(w, grad, value=-1)
            pruner.step()
        accum = pruner.methods[0].accum
        assert set(accum) == set(layers)
        for name in layers:
            assert torch.equal(bits(accum[name]), bits(want[name])), (criterion, name)


def test_max_norm_projects_bit_for_bit_on_every_path():
    # CPU decides with one scalar read and rescales only layers over the bound; other devices rescale every
    # layer by exactly 1 where within it. Both must give the old indexed result, NaN rows included.
    from sparsekit.methods.max_norm import MaxNorm

    torch.manual_seed(6)
    model = mlp()
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(32, 1) * 3)  # some rows over the bound, some within
        model[2].weight[0] = float("nan")
    entry = {"method": "max_norm", "max_value": 0.7}
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 1}, pruning=[entry]), steps_per_epoch=1)
    method = pruner.methods[0]
    assert isinstance(method, MaxNorm)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]

    def old(w: torch.Tensor) -> torch.Tensor:
        w = w.clone()
        norms = torch.linalg.vector_norm(w, dim=1, dtype=torch.float32)
        if not float(norms.max()) <= 0.7:
            over = norms > 0.7
            scale = torch.ones_like(norms)
            scale[over] = 0.7 / norms[over]
            w.mul_(scale[:, None])
        return w

    with torch.no_grad():
        for m in layers:
            m.weight.mul_(2.0)  # back over the bound
    start = [m.weight.detach().clone() for m in layers]
    want = [old(w) for w in start]
    method.project()  # the CPU path
    assert all(torch.equal(bits(m.weight), bits(w)) for m, w in zip(layers, want, strict=True))
    with torch.no_grad():
        for m, w in zip(layers, start, strict=True):
            m.weight.copy_(w)
        for m in layers:  # the path for other devices, run on CPU
            norms = torch.linalg.vector_norm(m.weight, dim=1, dtype=torch.float32)
            method._rescale(m, norms, norms > 0.7)
    assert all(torch.equal(bits(m.weight), bits(w)) for m, w in zip(layers, want, strict=True))


def test_cached_copies_follow_a_mask_swapped_under_its_version_counter_and_respect_the_budget(monkeypatch):
    layer = nn.Linear(30, 20)
    set_mask(layer, torch.rand(20, 30) > 0.5)
    mask = get_mask(layer)
    assert mask is not None
    fresh = torch.rand(20, 30) > 0.5
    mask.data = fresh  # `.data` swaps the storage without moving the version counter
    with torch.no_grad():
        layer.weight.fill_(1.0)
    apply_masks(layer)
    assert torch.equal(layer.weight != 0, fresh)

    monkeypatch.setattr(masks, "_FACTOR_BUDGET", 0)  # no room for a new copy: the mask's bytes are used
    other = nn.Linear(30, 20)
    set_mask(other, torch.rand(20, 30) > 0.5)
    with torch.no_grad():
        other.weight.fill_(-1.0)
    apply_masks(other)
    assert torch.equal(other.weight != 0, get_mask(other))
    assert id(get_mask(other)) not in masks._FACTORS or masks._FACTORS[id(get_mask(other))].factor is None


def test_apply_masks_reuses_what_it_found_only_while_nothing_it_read_changed(monkeypatch):
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    for layer in (model[0], model[2]):
        set_mask(layer, torch.rand(layer.weight.shape) > 0.5)
    looked_up = []
    real = masks.mask_factor
    monkeypatch.setattr(masks, "mask_factor", lambda w, m: looked_up.append(1) or real(w, m))

    def dirty_then_apply() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0)
        looked_up.clear()
        apply_masks(model)
        masked_zero(model)
        for layer in (model[0], model[2]):
            assert bool((layer.weight[get_mask(layer)] == 1).all())  # kept weights untouched

    dirty_then_apply()
    assert len(looked_up) == 2  # the first call finds each weight's factor
    dirty_then_apply()
    assert not looked_up  # then the same multiply again, found nothing anew
    model[2].weight = nn.Parameter(torch.ones(6, 8))  # a new parameter object under the same mask
    dirty_then_apply()
    assert looked_up
    model[4].register_buffer(MASK, torch.rand(3, 6) > 0.5, persistent=False)  # a mask not set by sparsekit
    dirty_then_apply()
    assert int((model[4].weight == 0).sum()) == int((~get_mask(model[4])).sum())
    get_mask(model[0])[0] = False  # an in-place edit of a mask
    dirty_then_apply()
    assert not bool(model[0].weight[0].any())
    del model[4]._buffers[MASK]  # a mask removed: that layer is left alone
    dirty_then_apply()
    assert bool((model[4].weight == 1).all())


def test_baking_drops_what_apply_masks_kept():
    # After finalize (bake) the plan still held every mask's factor (1.3 MB on LeNet-300-100) while the factor
    # budget's count said 0.
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    set_mask(model[0], torch.rand(8, 10) > 0.5)
    apply_masks(model)
    assert model in masks._PLANS
    masks.bake(model)
    assert model not in masks._PLANS


def test_what_apply_masks_keeps_between_calls_does_not_keep_a_model_alive():
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(10, 8))
    set_mask(model[0], torch.rand(8, 10) > 0.5)
    apply_masks(model)
    alive = weakref.ref(model)
    layer = weakref.ref(model[0])
    del model
    gc.collect()
    assert alive() is None and layer() is None
    bare = nn.Linear(4, 4)  # a masked layer that is the whole model
    set_mask(bare, torch.rand(4, 4) > 0.5)
    apply_masks(bare)
    alive = weakref.ref(bare)
    del bare
    gc.collect()
    assert alive() is None


def test_tied_weights_with_one_shared_mask_are_masked():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = model[0].weight
    entry = {"method": "magnitude", "sparsity": 0.5}
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 1}, pruning=[entry]), steps_per_epoch=1)
    assert get_mask(model[0]) is get_mask(model[2])
    with torch.no_grad():
        model[0].weight.add_(1.0)
    pruner.step()
    masked_zero(model)


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "l1", "strength": 0.04, "mode": "proximal", "remove_dead": False},
        {"method": "l1", "strength": 0.6, "mode": "proximal", "group": "row", "remove_dead": False},
        {
            "method": "l1",
            "strength": 0.6,
            "mode": "proximal",
            "group": "row",
            "target": 0.5,
            "schedule": {"start_epoch": 0, "end_epoch": 2},
        },
        {"method": "gradient", "criterion": "taylor", "sparsity": 0.8, "schedule": GRADUAL},
    ],
    ids=["l1", "l1_group", "l1_group_target", "taylor"],
)
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(entry):
    # Scratch buffers, cached mask copies and notes are not state: a fresh Pruner restored from a checkpoint
    # must continue exactly as the original run.
    recipe = sparsekit.Recipe(finetune={"epochs": 3}, pruning=[entry])

    def run(split: bool) -> list[torch.Tensor]:
        model = mlp()
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        g = torch.Generator().manual_seed(1)
        for step in range(20):
            if split and step == 9:
                state = {"pruner": pruner.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}
                model = mlp()
                pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=8)
                pruner.load_state_dict(state["pruner"])
                model.load_state_dict(state["model"])
                opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
                opt.load_state_dict(state["opt"])
            x, y = torch.randn(16, 20, generator=g) * 2, torch.randint(0, 4, (16,), generator=g)
            opt.zero_grad()
            (F.cross_entropy(model(x), y) + pruner.penalty()).backward()
            opt.step()
            pruner.step()
        return [p.detach().clone() for p in model.parameters()] + list(pruner.masks().values())

    assert all(
        torch.equal(bits(a) if a.is_floating_point() else a, bits(b) if b.is_floating_point() else b)
        for a, b in zip(run(False), run(True), strict=True)
    )


def test_l1_proximal_follows_a_dtype_change_mid_run():
    model = mlp()
    entry = {"method": "l1", "strength": 0.04, "mode": "proximal", "remove_dead": False}
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 3}, pruning=[entry]), steps_per_epoch=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, pruner, opt, 5)
    model.double()  # new weight dtype: the scratch buffers and cached mask copies follow it
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 20, generator=g, dtype=torch.float64), torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        masked_zero(model)
    assert all(m.weight.dtype == torch.float64 for m in model.modules() if isinstance(m, nn.Linear))


def test_structural_methods_note_parameter_names_only_at_their_removal_steps(monkeypatch):
    # Walking every parameter name at every step cost more than a small model's step; the names are only
    # needed right before channels go (update_optimizer maps the optimizer's old parameters through them).
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4))
    entry = {
        "method": "structured",
        "ratio": 0.5,
        "steps": 1,
        "round_to": None,
        "schedule": {"start_epoch": 1, "end_epoch": 1},
    }
    recipe = sparsekit.Recipe(model={"input_shape": [1, 16]}, finetune={"epochs": 2}, pruning=[entry])
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=3)
    noted: list[int] = []
    original = pruner._remember_params
    monkeypatch.setattr(pruner, "_remember_params", lambda: (noted.append(pruner.step_count), original()))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    for _ in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        if pruner.structure_changed:
            pruner.update_optimizer(opt)
    # Only before step 3 (the removal: epoch 1 starts after 3 steps), then in update_optimizer right after it.
    assert noted == [2, 3]
    assert model[0].out_features == 12
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()}
