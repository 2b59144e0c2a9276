from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import RecipeError
from sparsekit.masks import get_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(epochs: int = 2, *extra: dict, **method) -> sparsekit.Recipe:
    l1 = {"method": "l1", "strength": 1e-3, "remove_dead": False, **method}
    return sparsekit.Recipe(**{"finetune": {"epochs": epochs}, "pruning": [l1, *extra]})


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in layers(model)]


def train_steps(model, pruner, opt, n, x_shape=(16, 12), check=None):
    torch.manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(*x_shape), torch.randint(0, 3, (x_shape[0],))
        opt.zero_grad()
        (nn.functional.cross_entropy(model(x), y) + pruner.penalty()).backward()
        opt.step()
        pruner.step()
        if check:
            check()


# --- penalty mode -------------------------------------------------------------------------------


def test_penalty_is_strength_times_l1_norm_and_differentiable():
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(strength=0.01, mode="penalty"), steps_per_epoch=4)
    penalty = pruner.penalty()
    expected = 0.01 * sum(float(w.detach().double().abs().sum()) for w in weights(model))
    assert float(penalty) == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    for w in weights(model):
        assert torch.allclose(w.grad, 0.01 * torch.sign(w.detach()))
    assert all(m.bias.grad is None for m in model if isinstance(m, nn.Linear))  # biases are not penalized


def test_group_row_penalty_is_the_l21_norm_of_linear_rows():
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(strength=0.01, group="row"), steps_per_epoch=4)
    with torch.no_grad():
        model[2].weight[3].zero_()  # a dead row: its (sub)gradient must be 0, not nan
    penalty = pruner.penalty()
    expected = 0.01 * sum(float(w.detach().double().norm(dim=1).sum()) for w in weights(model))
    assert float(penalty) == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    for w in weights(model):
        norms = w.detach().norm(dim=1, keepdim=True)
        assert torch.allclose(w.grad, 0.01 * w.detach() / norms.clamp_min(1e-30), atol=1e-7)
    assert torch.equal(model[2].weight.grad[3], torch.zeros(24))


def test_group_channel_penalty_sums_conv_output_channel_norms():
    model = cnn()
    r = recipe(strength=0.5, group="channel", layers={"types": ["Conv2d"]})
    penalty = sparsekit.Pruner(model, r, steps_per_epoch=4).penalty()
    expected = 0.5 * sum(float(model[i].weight.detach().flatten(1).norm(dim=1).sum()) for i in (0, 2))
    assert float(penalty) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mode", ["penalty", "proximal"])
def test_nothing_happens_outside_the_schedule_window(mode):
    # steps_per_epoch=3, window [epoch 1, epoch 2): optimizer steps 4, 5, 6
    model = nn.Linear(5, 4)
    r = recipe(3, strength=0.05, mode=mode, schedule={"start_epoch": 1, "end_epoch": 2})
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=3)
    active = []
    for _ in range(9):
        before = model.weight.detach().clone()
        p = pruner.penalty()
        pruner.step()  # no optimizer: only a proximal step can move the weights
        if mode == "penalty":
            active.append(float(p) > 0)
            assert p.requires_grad == active[-1]
        else:
            assert float(p) == 0.0
            active.append(not torch.equal(model.weight, before))
    assert active == [False] * 3 + [True] * 3 + [False] * 3


def test_an_empty_schedule_window_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"pruning\[0\]\.schedule"):
        sparsekit.Pruner(mlp(), recipe(schedule="oneshot"), steps_per_epoch=4)


# --- proximal mode ------------------------------------------------------------------------------


def test_proximal_soft_thresholds_by_strength_to_exact_masked_zeros():
    model = nn.Linear(5, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -0.05, 0.2, -0.3, 0.1]]))
    pruner = sparsekit.Pruner(model, recipe(strength=0.1, mode="proximal"), steps_per_epoch=4)
    pruner.step()
    assert torch.allclose(model.weight, torch.tensor([[0.4, 0.0, 0.1, -0.2, 0.0]]))
    assert (model.weight == 0).tolist() == [[False, True, False, False, True]]
    assert get_mask(model).tolist() == [[True, False, True, True, False]]


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=0.02),
    ],
    ids=["sgd_momentum", "adam"],
)
def test_proximal_zeros_stay_zero_through_optimizer_steps(make_opt):
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(strength=0.004, mode="proximal"), steps_per_epoch=10)
    opt = make_opt(model.parameters())
    train_steps(model, pruner, opt, 15)
    zeros = [(w == 0).clone() for w in weights(model)]
    n_zeros = sum(int(z.sum()) for z in zeros)
    assert n_zeros > 0.1 * sum(z.numel() for z in zeros)

    def check():
        for z, m in zip(zeros, layers(model), strict=True):
            assert bool((m.weight[z] == 0).all())  # once zero, always zero (momentum cannot revive it)
            assert not bool(get_mask(m)[z].any())  # because the zeros are masked

    train_steps(model, pruner, opt, 20, check=check)
    assert sum(int((w == 0).sum()) for w in weights(model)) > n_zeros  # and more keep coming


def test_group_row_proximal_zeroes_whole_rows_of_linear_layers():
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.06, 0.0, 0.08], [1.0, 0.0, 0.0]]))
    pruner = sparsekit.Pruner(model, recipe(strength=0.5, mode="proximal", group="row"), steps_per_epoch=4)
    pruner.step()
    # row norms 5, 0.1, 1 -> scales 0.9, 0, 0.5
    expected = torch.tensor([[2.7, 3.6, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    assert torch.allclose(model.weight, expected)
    assert get_mask(model).tolist() == [[True] * 3, [False] * 3, [True] * 3]

    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(strength=0.022, mode="proximal", group="row"), steps_per_epoch=10)
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 25)
    dead = 0
    for w in weights(model):
        dead_rows = (w == 0).all(dim=1)
        dead += int(dead_rows.sum())
        assert torch.equal(w == 0, dead_rows[:, None].expand_as(w))  # zeros come in whole rows only
        assert not bool(dead_rows.all())
    assert dead >= 5


def test_group_channel_proximal_zeroes_whole_conv_output_channels():
    model = cnn()
    r = recipe(strength=0.04, mode="proximal", group="channel", layers={"types": ["Conv2d"]})
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=10)
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 15, (8, 2, 6, 6))
    dead = 0
    for conv in (model[0], model[2]):
        w = conv.weight
        dead_channels = (w == 0).flatten(1).all(dim=1)
        dead += int(dead_channels.sum())
        assert torch.equal(w == 0, dead_channels.view(-1, 1, 1, 1).expand_as(w))
        assert torch.equal(get_mask(conv), ~dead_channels.view(-1, 1, 1, 1).expand_as(w))
        assert not bool(dead_channels.all())
    assert dead >= 3
    assert int((model[6].weight == 0).sum()) == 0  # the Linear head is not selected


@pytest.mark.parametrize(("group", "bad", "model"), [("row", "Conv2d", cnn), ("channel", "Linear", mlp)])
def test_group_on_the_wrong_layer_type_names_the_field(group, bad, model):
    with pytest.raises(RecipeError, match=rf"pruning\[0\]\.group: .*is a {bad}"):
        sparsekit.Pruner(model(), recipe(group=group), steps_per_epoch=4)


# --- finalize, composition, state -------------------------------------------------------------------


def test_threshold_turns_tiny_weights_into_masked_zeros_at_finalize():
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, :5] = torch.tensor([1e-4, -5e-4, 2e-3, -3e-3, 0.0])
    before = [w.detach().clone() for w in weights(model)]
    pruner = sparsekit.Pruner(model, recipe(strength=1e-6, threshold=1e-3), steps_per_epoch=4)
    pruner.step()  # penalty mode, no optimizer: the weights do not move before finalize
    assert get_mask(model[0]) is None  # nothing masked during the run
    pruner.methods[0].finalize(model)  # the method's own hook: masks, not just zeros
    assert get_mask(model[0])[0, :5].tolist() == [False, False, True, True, False]
    final = pruner.finalize()
    assert final[0].weight[0, :5].tolist() == pytest.approx([0.0, 0.0, 2e-3, -3e-3, 0.0])
    for w, b in zip(weights(final), before, strict=True):
        small = b.abs() < 1e-3
        assert bool((w[small] == 0).all()) and torch.equal(w[~small], b[~small])
    assert all(get_mask(m) is None for m in final.modules())  # baked: no buffers left


def test_composes_with_magnitude_on_the_same_layers():
    model = mlp()
    magnitude = {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}
    r = recipe(2, magnitude, strength=0.008, mode="proximal")
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=10)
    total = sum(w.numel() for w in weights(model))
    pruned = [(w == 0).clone() for w in weights(model)]
    assert sum(int(z.sum()) for z in pruned) == round(0.5 * total)  # oneshot at construction

    def check():
        for z, w in zip(pruned, weights(model), strict=True):
            assert bool((w[z] == 0).all())

    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 20, check=check)
    assert sum(int((w == 0).sum()) for w in weights(model)) > round(0.5 * total)  # l1 zeroed more
    pruner.finalize()


def test_state_dict_round_trip_keeps_the_position_in_the_window():
    r = recipe(2, strength=0.05, schedule={"start_epoch": 0, "end_epoch": 1})
    model = nn.Linear(4, 2)
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=3)
    for _ in range(3):
        pruner.step()
    assert float(pruner.penalty()) == 0.0  # step 4 is past the window
    resumed = sparsekit.Pruner(nn.Linear(4, 2), r, steps_per_epoch=3)
    assert float(resumed.penalty()) > 0
    resumed.load_state_dict(pruner.state_dict())
    assert float(resumed.penalty()) == 0.0


def test_remove_dead_removes_all_zero_rows_and_keeps_the_outputs():
    pytest.importorskip("sparsekit.surgery", reason="sparsekit.surgery is not built yet")
    model = mlp()
    with torch.no_grad():
        model[0].weight[[1, 5, 7]] = 0.0  # three dead hidden units of fc "0"
    r = sparsekit.Recipe(
        **{
            "model": {"input_shape": [1, 12]},  # no context: the pruner takes the shape from the recipe
            "pruning": [{"method": "l1", "strength": 1e-6, "group": "row", "remove_dead": True}],
        }
    )
    x = torch.randn(5, 12)
    expected = model(x).detach()
    final = sparsekit.Pruner(model, r, steps_per_epoch=1).finalize()
    assert final[0].weight.shape == (21, 12) and final[2].weight.shape == (16, 21)
    assert final[4].weight.shape == (3, 16)  # the head keeps its outputs
    assert torch.allclose(final(x), expected, atol=1e-5)  # dead units' biases are folded forward


@pytest.mark.parametrize("group", ["row", "none"])
def test_l1_never_empties_a_layer(group):
    """Found by review: a strong group lasso zeroed every unit of a layer (the head included), exit 0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4))
    recipe = sparsekit.Recipe(
        version=1,
        model={"input_shape": [1, 16]},
        finetune={"epochs": 1},
        pruning=[{"method": "l1", "mode": "proximal", "strength": 5.0, "group": group, "threshold": 10.0,
                  "remove_dead": False}],
    )  # fmt: skip
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 16)).sum().backward()
        opt.step()
        pruner.step()
    final = pruner.finalize()
    for layer in (final[0], final[2]):
        assert int((layer.weight != 0).sum()) >= 1
    per_layer = pruner.methods[0].report()["per_layer"]
    assert all("kept one unit alive" in (row["reason"] or "") for row in per_layer.values())


def test_l1_achieved_counts_the_weights_of_removed_units():
    """Found by review: after remove_dead shrank a layer, its achieved fraction only counted zeros left."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4))
    with torch.no_grad():
        model[0].weight[:6] = 0  # six dead units for remove_dead to take out
    recipe = sparsekit.Recipe(
        version=1,
        model={"input_shape": [1, 16]},
        finetune={"epochs": 1},
        pruning=[{"method": "l1", "strength": 1e-6, "group": "row", "layers": {"include": ["0"]}}],
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    final = pruner.finalize()
    assert final[0].out_features == 6  # the dead units are gone
    row = pruner.methods[0].report()["per_layer"]["0"]
    assert row["achieved"] == pytest.approx(0.5)  # 96 of 192 weights, though none of those left is zero
