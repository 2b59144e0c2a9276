"""max_layer_sparsity: a global ranking cannot empty a layer, the total stays exact, and the report says
what was asked, what was achieved and which layers reached their cap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import RecipeError
from sparsekit.masks import global_topk_masks, layer_cap
from sparsekit.recipe import validate_recipe


def recipe(entry: dict, epochs: int = 0) -> sparsekit.Recipe:
    return sparsekit.Recipe(**{"finetune": {"epochs": epochs}, "pruning": [entry]})


def small_middle() -> nn.Sequential:
    """fc2 is small and its weights (init bound 1/sqrt(256)) all lie below most of fc1's (1/sqrt(64))."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8), nn.ReLU(), nn.Linear(8, 10))


def zeros(model: nn.Module) -> dict[str, tuple[int, int]]:
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return {n: (int((m.weight == 0).sum()), m.weight.numel()) for n, m in linears.items()}


def test_global_magnitude_cannot_empty_a_small_layer():
    uncapped = small_middle()
    sparsekit.Pruner(uncapped, recipe({"method": "magnitude", "sparsity": 0.6, "max_layer_sparsity": 1.0}), 1)
    assert zeros(uncapped)["2"] == (2048, 2048)  # what the issue saw: the whole middle layer gone

    model = small_middle()
    pruner = sparsekit.Pruner(model, recipe({"method": "magnitude", "sparsity": 0.6}), 1)
    counts = zeros(model)
    total = sum(n for _, n in counts.values())
    assert sum(z for z, _ in counts.values()) == round(0.6 * total)  # the global count is exact
    for z, n in counts.values():
        assert z <= layer_cap(n, 0.99) < n  # every layer below its cap, none empty
    assert counts["2"][0] == layer_cap(2048, 0.99) == 2027
    model(torch.randn(4, 64))  # still a working network

    rep = pruner.methods[0].report()
    assert rep["asked"] == 0.6 and rep["achieved"] == pytest.approx(0.6, abs=1e-4)
    assert rep["per_layer"]["2"] == {
        "asked": None,
        "achieved": 2027 / 2048,
        "reason": "at max_layer_sparsity 0.99 (at most 2,027 of 2,048 weights)",
    }
    assert rep["per_layer"]["0"]["reason"] is None and "reason" not in rep


def test_the_cap_holds_along_a_gradual_schedule():
    model = small_middle()
    entry = {"method": "magnitude", "sparsity": 0.9, "max_layer_sparsity": 0.95, "schedule": {"end_epoch": 2}}
    pruner = sparsekit.Pruner(model, recipe(entry, epochs=2), steps_per_epoch=2)
    for step in range(4):
        pruner.step()
        counts = zeros(model)
        target = pruner.methods[0].schedule.target(step + 1)
        total = sum(n for _, n in counts.values())
        assert sum(z for z, _ in counts.values()) == round(target * total)
        assert all(z <= layer_cap(n, 0.95) for z, n in counts.values())


def test_gradient_methods_are_capped_too():
    model = small_middle()
    entry = {"method": "gradient", "criterion": "taylor", "sparsity": 0.7, "max_layer_sparsity": 0.8}
    pruner = sparsekit.Pruner(model, recipe(entry, epochs=1), steps_per_epoch=1)
    nn.functional.cross_entropy(model(torch.randn(32, 64)), torch.randint(0, 10, (32,))).backward()
    pruner.step()
    counts = zeros(model)
    total = sum(n for _, n in counts.values())
    assert sum(z for z, _ in counts.values()) == round(0.7 * total)
    assert all(z <= layer_cap(n, 0.8) for z, n in counts.values())
    assert pruner.methods[0].report()["asked"] == 0.7


def test_an_unreachable_target_prunes_what_the_caps_allow_and_says_so():
    # Two layers of 3 weights, cap 0.5: each may lose 1 (floor), 2 in all; 0.5 of 6 asks for 3.
    model = nn.Sequential(nn.Linear(3, 1), nn.Linear(1, 3))
    entry = {"method": "magnitude", "sparsity": 0.5, "max_layer_sparsity": 0.5}
    pruner = sparsekit.Pruner(model, recipe(entry), 1)
    assert [z for z, _ in zeros(model).values()] == [1, 1]
    rep = pruner.methods[0].report()
    assert rep["achieved"] == pytest.approx(2 / 6)
    assert "at most 2 of 6 weights" in rep["reason"] and "raise max_layer_sparsity" in rep["reason"]
    assert all(row["reason"].startswith("at max_layer_sparsity 0.5") for row in rep["per_layer"].values())


def test_layer_scope_reports_the_asked_sparsity_per_layer():
    model = small_middle()
    pruner = sparsekit.Pruner(model, recipe({"method": "magnitude", "sparsity": 0.5, "scope": "layer"}), 1)
    rep = pruner.methods[0].report()
    assert {row["asked"] for row in rep["per_layer"].values()} == {0.5}
    for row in rep["per_layer"].values():
        assert row["achieved"] == pytest.approx(0.5, abs=1e-3) and row["reason"] is None


def test_l1_reports_what_it_achieved_without_a_target():
    model = small_middle()
    r = recipe({"method": "l1", "strength": 0.5, "mode": "proximal", "remove_dead": False, "proximal_every": 1},
               epochs=1)  # fmt: skip
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=1)
    pruner.step(lr=1.0)  # a shrink of lr * strength = 0.5, beyond every weight
    rep = pruner.methods[0].report()
    # A strength that would zero everything leaves each layer its one strongest weight, and says so.
    assert rep["asked"] is None and 0.99 < rep["achieved"] < 1.0
    row = rep["per_layer"]["4"]
    assert row["asked"] is None and row["achieved"] < 1.0 and "kept one unit alive" in row["reason"]
    for layer in pruner.methods[0].layers.values():
        assert int((layer.weight != 0).sum()) == 1


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("method", ["magnitude", "gradient"])
def test_a_cap_below_the_sparsity_is_a_recipe_error_naming_both(scope, method):
    entry = {"method": method, "sparsity": 0.8, "scope": scope, "max_layer_sparsity": 0.5}
    with pytest.raises(RecipeError) as info:
        validate_recipe({"pruning": [entry]}, "r.yaml")
    message = str(info.value)
    assert message.startswith("r.yaml: pruning[0]: max_layer_sparsity (0.5) is below sparsity (0.8)")
    assert "raise max_layer_sparsity" in message


@pytest.mark.parametrize("value", [0, -0.1, 1.5])
def test_the_cap_is_a_fraction(value):
    with pytest.raises(RecipeError, match=r"pruning\[0\]\.max_layer_sparsity: must be"):
        validate_recipe({"pruning": [{"method": "magnitude", "sparsity": 0.5, "max_layer_sparsity": value}]})


@pytest.mark.parametrize(("sparsity", "cap"), [(0.0, 0.99), (0.9, 0.99), (0.98, 0.99), (0.995, 0.9975)])
def test_default_cap(sparsity, cap):
    r = validate_recipe({"pruning": [{"method": "magnitude", "sparsity": sparsity}]})
    assert r.pruning[0].max_layer_sparsity == pytest.approx(cap)
    assert validate_recipe(r.model_dump()) == r  # the resolved value round-trips


def test_layer_cap_rounds_down_and_never_empties_a_layer():
    assert layer_cap(100, 0.29) == 29 and layer_cap(10, 0.99) == 9 and layer_cap(1, 0.99) == 0
    assert layer_cap(7, 1.0) == 7


def test_capped_layers_keep_their_pruned_weights():
    # Weights pruned earlier (lowest score) stay pruned, even past the cap; the layer takes no more.
    low = torch.finfo(torch.float32).min
    a = torch.tensor([low, low, low, 0.5])
    b = torch.tensor([0.1, 0.2, 0.3, 0.4])
    masks = global_topk_masks({"a": a, "b": b}, 0.75, max_layer_sparsity=0.5)
    assert masks["a"].tolist() == [False, False, False, True]
    assert masks["b"].tolist() == [False, False, True, True]  # its cap: 2 of 4 (6 asked, 5 reachable)
