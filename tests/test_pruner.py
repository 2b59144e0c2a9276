"""The Pruner as a user's own training loop drives it (INTERFACE.md §5)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsekit
from examples.models import mlp, small_cnn
from sparsekit.masks import MASK


def recipe(**magnitude):
    spec = {
        "method": "magnitude",
        "sparsity": 0.8,
        "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 0.5},
        "layers": {"exclude": ["fc3"]},
        **magnitude,
    }
    return sparsekit.Recipe(finetune={"epochs": 3}, pruning=[spec])


def batches(n, features=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, features, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def train(model, pruner, data, opt, on_step=None):
    for x, y in data:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + pruner.penalty()
        loss.backward()
        opt.step()
        pruner.step()
        if on_step:
            on_step()


def zero_fraction(model, names):
    mods = dict(model.named_modules())
    zeros = sum(int((mods[n].weight == 0).sum()) for n in names)
    return zeros / sum(mods[n].weight.numel() for n in names)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_zeros_stay_zero_and_exact_sparsity(make_opt):
    model = mlp()
    spe = 4
    pruner = sparsekit.Pruner(model, recipe(), steps_per_epoch=spe)
    opt = make_opt(model.parameters())
    zero_sets: list[torch.Tensor] = []

    def check():
        # Once a weight is zero it never comes back, whatever momentum or Adam state says.
        now = torch.cat([model.fc1.weight.flatten(), model.fc2.weight.flatten()]) == 0
        if zero_sets:
            assert bool((zero_sets[-1] <= now).all()), "a pruned weight came back"
        zero_sets.append(now)

    train(model, pruner, batches(3 * spe), opt, on_step=check)
    total = model.fc1.weight.numel() + model.fc2.weight.numel()
    assert int(zero_sets[-1].sum()) == round(0.8 * total)  # exact count, global across fc1+fc2
    assert zero_fraction(model, ["fc3"]) == 0.0  # excluded head untouched
    # Scores were global: the two layers end with different sparsities.
    assert zero_fraction(model, ["fc1"]) != pytest.approx(zero_fraction(model, ["fc2"]), abs=1e-3)


def test_gradual_targets_follow_the_schedule():
    model = mlp()
    spe = 4
    pruner = sparsekit.Pruner(model, recipe(), steps_per_epoch=spe)
    sched = pruner.methods[0].schedule
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []
    train(model, pruner, batches(3 * spe), opt, on_step=lambda: seen.append(zero_fraction(model, ["fc1", "fc2"])))
    for step, frac in enumerate(seen, start=1):
        assert frac == pytest.approx(sched.target(step), abs=1e-4)
    assert seen[0] < seen[4] < seen[-1]  # gradual, not one shot


def test_layer_scope_gives_each_layer_the_target():
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(scope="layer", schedule="oneshot", sparsity=0.6), steps_per_epoch=2)
    assert zero_fraction(model, ["fc1"]) == pytest.approx(0.6, abs=1e-3)
    assert zero_fraction(model, ["fc2"]) == pytest.approx(0.6, abs=1e-3)
    assert pruner.finalize() is model


def test_finalize_leaves_a_plain_model():
    model = mlp()
    keys = set(model.state_dict())
    pruner = sparsekit.Pruner(model, recipe(schedule="oneshot"), steps_per_epoch=2)
    out = pruner.finalize()
    assert set(out.state_dict()) == keys
    assert not any(hasattr(m, MASK) for m in out.modules())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in out.modules())
    assert sparsekit.sparsity(out) == pytest.approx(0.8 * 0.985, abs=0.02)  # fc3 (excluded) is ~1.5%


def test_penalty_zero_follows_the_model_after_a_layer_swap():
    # The zero penalty's device is read off a parameter found by its path, so a layer replaced by the user
    # (and the model then moved) is seen: not the old, detached parameter's device.
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(schedule="oneshot"), steps_per_epoch=2)
    assert pruner.penalty().device.type == "cpu"
    model.fc1 = nn.Linear(64, 128)
    model.to("meta")
    assert pruner.penalty().device.type == "meta"


def test_bake_takes_a_byte_mask_as_well():
    from sparsekit.masks import bake

    layer = nn.Linear(4, 3)
    layer.register_buffer(MASK, torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.uint8))
    with torch.no_grad():
        layer.weight.fill_(-1.0)
    bake(layer)
    assert MASK not in layer._buffers
    assert torch.equal(layer.weight, torch.tensor([[-1.0, 0.0, -1.0, 0.0]] * 3))
    assert not torch.signbit(layer.weight[layer.weight == 0]).any()


def test_positive_zeros_in_place_keeps_values():
    from sparsekit.masks import positive_zeros_

    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    with torch.no_grad():
        model[0].weight.mul_((torch.arange(64).view(8, 8) % 3 != 0).float())  # -0.0 where negative
        model[1].running_mean.copy_(torch.tensor([-0.0, 1.0] * 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = int((torch.signbit(model[0].weight) & (model[0].weight == 0)).sum()) + 4
    assert positive_zeros_(model) == expected > 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # equal values (-0.0 == +0.0)
        if v.is_floating_point():
            assert not torch.signbit(v[v == 0]).any(), k
    assert positive_zeros_(model) == 0


def test_finalize_stores_pruned_weights_as_positive_zeros():
    # During training masks multiply (negative weights become -0.0); the baked model holds +0.0, which a
    # saved file compresses better. Trained a few steps first, so the zeros went through the multiply.
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(schedule="oneshot"), steps_per_epoch=2)
    train(model, pruner, batches(3), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert torch.signbit(model.fc1.weight[model.fc1.weight == 0]).any()
    out = pruner.finalize()
    for name in ("fc1", "fc2"):
        w = getattr(out, name).weight
        assert int((w == 0).sum()) > 0 and not torch.signbit(w[w == 0]).any(), name


def test_resume_matches_an_uninterrupted_run():
    data = batches(12)

    def fresh():
        torch.manual_seed(1)
        model = mlp()
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    model_a, opt_a = fresh()
    pruner_a = sparsekit.Pruner(model_a, recipe(), steps_per_epoch=4)
    train(model_a, pruner_a, data, opt_a)

    model_b, opt_b = fresh()
    pruner_b = sparsekit.Pruner(model_b, recipe(), steps_per_epoch=4)
    train(model_b, pruner_b, data[:5], opt_b)
    state = {"model": model_b.state_dict(), "opt": opt_b.state_dict(), "pruner": pruner_b.state_dict()}

    model_c, opt_c = fresh()
    pruner_c = sparsekit.Pruner(model_c, recipe(), steps_per_epoch=4)
    model_c.load_state_dict(state["model"])
    opt_c.load_state_dict(state["opt"])
    pruner_c.load_state_dict(state["pruner"])
    assert pruner_c.step_count == 5
    train(model_c, pruner_c, data[5:], opt_c)
    for name in ("fc1", "fc2"):
        torch.testing.assert_close(getattr(model_c, name).weight, getattr(model_a, name).weight)
    assert pruner_c.masks().keys() == pruner_a.masks().keys()


def test_pruner_unwraps_ddp_style_wrappers_and_masks_conv():
    Wrapper = nn.DataParallel  # keeps the real model in .module, as DDP does (without a GPU it just calls it)

    model = small_cnn(width=8, image_size=8)
    rec = sparsekit.Recipe(
        pruning=[
            {
                "method": "magnitude",
                "sparsity": 0.5,
                "schedule": "oneshot",
                "layers": {"include": ["conv*"], "types": ["Conv2d"]},
            }
        ]
    )
    pruner = sparsekit.Pruner(Wrapper(model), rec, steps_per_epoch=1)
    assert sorted(pruner.methods[0].layers) == ["conv1", "conv2", "conv3"]
    assert zero_fraction(model, ["conv1", "conv2", "conv3"]) == pytest.approx(0.5, abs=1e-3)


def test_penalty_is_a_zero_tensor_without_l1_and_bad_steps_per_epoch():
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(), steps_per_epoch=3)
    p = pruner.penalty()
    assert isinstance(p, torch.Tensor) and float(p) == 0.0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        sparsekit.Pruner(model, recipe(), steps_per_epoch=0)


def test_unknown_layer_pattern_lists_prunable_layers():
    with pytest.raises(sparsekit.TargetError, match="fc1.*fc2.*fc3"):
        sparsekit.Pruner(mlp(), recipe(layers={"include": ["encoder*"]}), steps_per_epoch=1)


def test_public_api_all_is_sorted_and_importable():
    assert sparsekit.__all__ == sorted(sparsekit.__all__)
    for name in sparsekit.__all__:
        assert hasattr(sparsekit, name), name


def test_update_optimizer_after_channel_removal_keeps_the_scheduler():
    torch.manual_seed(0)
    model = small_cnn(width=8, image_size=8)
    rec = sparsekit.Recipe(
        model={"input_shape": [1, 1, 8, 8]},
        finetune={"epochs": 2},
        pruning=[{"method": "structured", "ratio": 0.5, "steps": 1, "schedule": {"start_epoch": 1, "end_epoch": 1}}],
    )
    pruner = sparsekit.Pruner(model, rec, steps_per_epoch=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    changed_at = []
    for step in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        if pruner.structure_changed:
            changed_at.append(step)
            assert pruner.update_optimizer(opt) is opt and not pruner.structure_changed
        sched.step()
    assert changed_at == [1]
    params = {id(p) for p in model.parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == params  # follows the new tensors
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)  # the scheduler still drives it
    before = model.conv1.weight.detach().clone()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(before, model.conv1.weight)  # pruned layers keep training


def test_step_after_finalize_and_save_takes_input_shape_from_pruner(tmp_path):
    model = small_cnn(width=8, image_size=8)
    rec = sparsekit.Recipe(
        model={"input_shape": [1, 1, 8, 8]}, pruning=[{"method": "structured", "ratio": 0.5, "schedule": "oneshot"}]
    )
    pruner = sparsekit.Pruner(model, rec, steps_per_epoch=1)
    out = pruner.finalize()
    with pytest.raises(RuntimeError, match="finalize"):
        pruner.step()
    sparsekit.save_model(
        out, tmp_path / "m.pt", factory="examples.models:small_cnn", kwargs={"width": 8, "image_size": 8}, pruner=pruner
    )
    back = sparsekit.load_model(tmp_path / "m.pt", arch="examples.models:small_cnn")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(back(x), out.eval()(x))
    assert back.conv1.out_channels == 4


class Tied(nn.Module):
    """``dec`` shares its weight with ``mid`` (the same Parameter object)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(16, 24)
        self.enc = nn.Linear(24, 32)
        self.mid = nn.Linear(32, 32)
        self.dec = nn.Linear(32, 32)
        self.dec.weight = self.mid.weight
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.enc(torch.relu(self.pre(x))))
        return self.head(torch.relu(self.dec(torch.relu(self.mid(x)))))


def _structured(**spec) -> sparsekit.Recipe:
    spec = {
        "method": "structured",
        "ratio": 0.5,
        "round_to": 1,
        "steps": 1,
        "schedule": {"start_epoch": 1, "end_epoch": 1},
        **spec,
    }
    return sparsekit.Recipe(model={"input_shape": [1, 16]}, finetune={"epochs": 2}, pruning=[spec])


def test_structured_on_tied_weights_is_refused_naming_both_modules():
    with pytest.raises(sparsekit.TargetError) as info:
        sparsekit.Pruner(Tied(), _structured(), steps_per_epoch=2)
    message = str(info.value)
    assert "'mid'" in message and "'dec'" in message and "tied weights" in message
    assert "pruning[0].ignore" in message and "'enc'" in message  # enc's outputs are mid's inputs


def test_tied_weights_stay_tied_and_update_optimizer_covers_every_parameter():
    torch.manual_seed(0)
    model = Tied()
    pruner = sparsekit.Pruner(model, _structured(ignore=["enc", "mid", "dec", "head"]), steps_per_epoch=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        if pruner.structure_changed:
            pruner.update_optimizer(opt)
    assert model.pre.out_features == 12 and model.enc.in_features == 12  # pruned around the tied pair
    assert model.dec.weight is model.mid.weight
    held = [p for g in opt.param_groups for p in g["params"]]
    assert len(held) == len({id(p) for p in held})  # each once
    assert {id(p) for p in held} == {id(p) for p in model.parameters()}  # every parameter the model has


def test_update_optimizer_maps_a_parameter_by_every_name_it_has():
    # A weight tied before a removal and untied by it (done here by hand) stays trained under both names.
    torch.manual_seed(0)
    model = Tied()
    pruner = sparsekit.Pruner(model, _structured(ignore=["enc", "mid", "dec", "head"]), steps_per_epoch=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(torch.randn(4, 16)), torch.randint(0, 4, (4,))).backward()
    opt.step()
    model.mid.weight = nn.Parameter(model.mid.weight.detach().clone())
    model.dec.weight = nn.Parameter(model.dec.weight.detach().clone())
    pruner.update_optimizer(opt)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert {id(p) for p in model.parameters()} == held
    assert model.mid.weight in opt.state and model.dec.weight in opt.state  # momentum kept for both
    assert opt.state[model.mid.weight] is not opt.state[model.dec.weight]


def test_masking_a_tied_weight_shares_one_mask_or_is_refused():
    mag = {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"include": ["mid"]}}
    with pytest.raises(sparsekit.TargetError, match=r"'mid'.*shared with 'dec'.*select every module sharing it"):
        sparsekit.Pruner(Tied(), sparsekit.Recipe(pruning=[mag]), steps_per_epoch=1)
    model = Tied()
    mag["layers"] = {"include": ["mid", "dec"]}
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(pruning=[mag]), steps_per_epoch=1)
    assert model.mid._buffers[MASK] is model.dec._buffers[MASK]
    final = pruner.finalize()
    assert final.dec.weight is final.mid.weight
    assert float((final.mid.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


class TiedHead(nn.Module):
    """An LM-style head whose weight is the Embedding's (the standard tie)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.fc1 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc1(x)))


def test_a_head_tied_to_an_embedding_gets_advice_that_can_be_followed():
    """The advice was to select the Embedding too, which no layers.types allows: leave the head out."""
    mag = {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}
    with pytest.raises(
        sparsekit.TargetError, match=r"leave them out: layers.exclude: \[head\] in pruning\[0\] \('emb': Embedding"
    ):
        sparsekit.Pruner(TiedHead(), sparsekit.Recipe(pruning=[mag]), steps_per_epoch=1)
    model = TiedHead()
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(pruning=[{**mag, "layers": {"exclude": ["head"]}}]), 1)
    final = pruner.finalize()  # the advice followed: it runs, and the tie holds
    assert final.head.weight is final.emb.weight and float((final.fc1.weight == 0).float().mean()) == 0.5
    # inspect says the head's weight is the Embedding's (it said nothing)
    from sparsekit.inspection import _torch_counts

    rows = {r["name"]: r for r in _torch_counts(TiedHead(), [1, 16])["layers"]}
    assert rows["head"]["shared_with"] == "emb (Embedding)" and rows["head"]["shared_params"] == 0


@pytest.mark.parametrize("method", ["magnitude", "gradient"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_a_tied_weight_is_ranked_once_so_the_model_reaches_the_asked_sparsity(method, scope):
    # Ranked once per module, the tied weight weighed double in a global ranking: asked 0.5, the model's
    # distinct weights ended at 0.47 (0.5 only when the shared weight is counted twice).
    torch.manual_seed(0)
    model = Tied()
    with torch.no_grad():
        model.head.weight.mul_(5)  # a layer whose weights rank high, so the global split is uneven
    entry = {"method": method, "sparsity": 0.5, "scope": scope, "schedule": {"start_epoch": 0, "end_epoch": 1}}
    if method == "gradient":
        entry["criterion"] = "taylor"
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(finetune={"epochs": 1}, pruning=[entry]), steps_per_epoch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
        opt.step()
        pruner.step()
    final = pruner.finalize()
    assert final.dec.weight is final.mid.weight
    distinct = {id(m.weight): m.weight for m in final.modules() if isinstance(m, nn.Linear)}.values()
    zeros = sum(int((w == 0).sum()) for w in distinct) / sum(w.numel() for w in distinct)
    assert zeros == pytest.approx(0.5, abs=0.005) == sparsekit.sparsity(final)
    assert pruner.methods[0].report()["achieved"] == pytest.approx(zeros)


def test_a_tied_weight_gets_one_layer_sparsity_and_auto_allocation_reaches_its_target():
    # sparsity: auto gave mid and dec (one tensor) two values and counted it twice: asked 0.85 of the model's
    # weights, 0.797 reached, "asked" 0.851. One value for one tensor, counted once; two different values refused.
    from sparsekit.allocation import auto_allocate
    from sparsekit.errors import TargetError

    torch.manual_seed(0)
    model = Tied()
    data = [(torch.randn(16, 16), torch.randint(0, 4, (16,))) for _ in range(2)]
    auto = {"pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.85, "schedule": "oneshot"}]}
    allocated, _ = auto_allocate(model, auto, data, input_shape=[1, 16], grid={"unstructured": [0.5, 0.8, 0.95]})
    values = allocated.pruning[0].layer_sparsity
    assert values["dec"] == values["mid"]
    pruner = sparsekit.Pruner(model, allocated, steps_per_epoch=1)
    distinct = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}.values()
    n = sum(w.numel() for w in distinct)
    assert sum(int((w == 0).sum()) for w in distinct) == round(0.85 * n)
    report = pruner.methods[0].report()
    assert report["asked"] == pytest.approx(0.85, abs=1 / n) and report["achieved"] == pytest.approx(0.85, abs=1 / n)
    both = {"method": "magnitude", "sparsity": 0.5, "scope": "layer", "layer_sparsity": {"mid": 0.5, "dec": 0.9}}
    with pytest.raises(TargetError, match=r"layer_sparsity: 'dec' shares its weight with 'mid'"):
        sparsekit.Pruner(Tied(), {"pruning": [both]}, steps_per_epoch=1)
    one = {**both, "layer_sparsity": {"dec": 0.9}}  # given for either, it is the weight's
    tied = Tied()
    sparsekit.Pruner(tied, {"pruning": [one]}, steps_per_epoch=1)
    assert float((tied.mid.weight == 0).float().mean()) == pytest.approx(0.9, abs=0.01)


def test_weights_no_layer_holds_are_said_to_stay_dense():
    # Parameters a module of the user's own applies with F.conv2d / F.linear are no layer's: no method prunes them
    # and sparsity() counts the layers alone (0.906 "sparse" with 248 of 312 weights untouched), silently.
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3))
            self.fc = nn.Linear(8, 8)
            self.w2 = nn.Parameter(torch.randn(4, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(nn.functional.conv2d(x, self.w1, padding=1)).mean((2, 3))
            return nn.functional.linear(torch.relu(self.fc(x)), self.w2)

    class MyLinear(nn.Linear):  # a user's own subclass of a layer is a layer
        pass

    class MyEmbedding(nn.Embedding):  # and of another torch module, that module
        pass

    entry = {"pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    with pytest.warns(UserWarning, match=r"248 of the model's 312 weights .*w1 \[8, 3, 3, 3\], w2 \[4, 8\]"):
        sparsekit.Pruner(Functional(), entry, steps_per_epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsekit.Pruner(nn.Sequential(MyLinear(8, 8), nn.ReLU(), nn.Linear(8, 2)), entry, steps_per_epoch=1)
        sparsekit.Pruner(nn.Sequential(MyEmbedding(100, 8), nn.Linear(8, 2)), entry, steps_per_epoch=1)
    listed = nn.Module()
    listed.ws = nn.ParameterList([nn.Parameter(torch.randn(8, 8))])
    listed.fc = nn.Linear(8, 2)
    with pytest.warns(UserWarning, match=r"ws\.0 \[8, 8\]"):
        sparsekit.Pruner(listed, entry, steps_per_epoch=1)


def test_the_pruner_refuses_what_is_not_a_model_a_recipe_or_a_step_count_naming_the_argument(tmp_path):
    # These were AttributeErrors and a '<=' TypeError from deep inside, or (2.5 steps per epoch) accepted.
    good = {"finetune": {"epochs": 2}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    with pytest.raises(TypeError, match=r"Pruner\(model=...\): expected a torch.nn.Module, got str"):
        sparsekit.Pruner("model.pt", sparsekit.Recipe(**good), 10)
    with pytest.raises(TypeError, match="recipe must be a sparsekit.Recipe, a dict"):
        sparsekit.Pruner(mlp(), 42, 10)
    for steps in ("10", 2.5, True, None):
        with pytest.raises(TypeError, match=r"steps_per_epoch=...\): expected an int"):
            sparsekit.Pruner(mlp(), sparsekit.Recipe(**good), steps)
    with pytest.raises(ValueError, match="steps_per_epoch must be > 0"):
        sparsekit.Pruner(mlp(), sparsekit.Recipe(**good), 0)
    # a dict, a file and numpy's ints are taken; a bad dict names the field
    assert sparsekit.Pruner(mlp(), good, 10).recipe.pruning[0].sparsity == 0.5
    path = tmp_path / "r.yaml"
    path.write_text("finetune: {epochs: 2}\npruning: [{method: magnitude, sparsity: 0.25}]\n")
    assert sparsekit.Pruner(mlp(), path, __import__("numpy").int64(10)).recipe.pruning[0].sparsity == 0.25
    with pytest.raises(sparsekit.RecipeError, match=r"pruning\[0\].*sparsity|sparsity"):
        sparsekit.Pruner(mlp(), {**good, "pruning": [{"method": "magnitude", "sparsity": 1.5}]}, 10)


def test_every_call_after_finalize_is_refused_as_step_is():
    # penalty(), regularize() and a second finalize() were silent no-ops while step() raised.
    pruner = sparsekit.Pruner(mlp(), recipe(sparsity=0.5), 10)
    pruner.finalize()
    for call in ("step", "penalty", "regularize", "finalize"):
        with pytest.raises(RuntimeError, match=rf"pruner.{call}\(\) after finalize\(\)"):
            getattr(pruner, call)()


def test_structured_names_the_input_shape_a_model_fails_on():
    r = sparsekit.Recipe(
        model={"input_shape": [1, 3, 32, 32]}, finetune={"epochs": 2}, pruning=[{"method": "structured", "ratio": 0.5}]
    )
    with pytest.raises(sparsekit.TargetError, match=r"input_shape \[1, 3, 32, 32\].*check model.input_shape"):
        sparsekit.Pruner(mlp(), r, 10)
