from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.masks import get_mask

MAX = 1.5


pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(*extra: dict, first: bool = True, epochs: int = 2, **method) -> sparsekit.Recipe:
    entry = {"method": "max_norm", "max_value": MAX, **method}
    pruning = [entry, *extra] if first else [*extra, entry]
    return sparsekit.Recipe(**{"finetune": {"epochs": epochs}, "pruning": pruning})


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))


def layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def unit_norms(w: torch.Tensor) -> torch.Tensor:
    return w.detach().double().flatten(1).norm(dim=1)


def train_steps(model, pruner, opt, n, check=None):
    torch.manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(16, 12) * 3, torch.randint(0, 3, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        if check:
            check()


def test_bound_holds_after_every_step_with_a_large_learning_rate():
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe(), steps_per_epoch=10)
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    at_bound = []

    def check():
        for m in layers(model):
            norms = unit_norms(m.weight)
            assert bool((norms <= MAX * (1 + 1e-6)).all()), norms.max()
            at_bound.append(int((norms > MAX * (1 - 1e-6)).sum()))

    train_steps(model, pruner, opt, 30, check)
    assert sum(at_bound) > 50  # the constraint was binding, not vacuous

    # without the pruner the same loop breaks the bound: the test above can fail
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    train_steps(model, type("NoPruner", (), {"step": lambda self: None})(), opt, 30)
    assert max(float(unit_norms(m.weight).max()) for m in layers(model)) > 2 * MAX


def test_rows_under_the_bound_are_untouched_bit_for_bit_and_others_keep_their_direction():
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, -0.4, 0.1], [3, 4, 0], [0.5, 0.5, -0.5], [0, -6, 8]]))
    before = layer.weight.detach().clone()
    bias = layer.bias.detach().clone()
    pruner = sparsekit.Pruner(layer, recipe(), steps_per_epoch=1)  # projects at once, before any step
    w = layer.weight.detach()
    assert torch.equal(w[0], before[0]) and torch.equal(w[2], before[2])
    assert unit_norms(w)[[1, 3]].tolist() == pytest.approx([MAX, MAX], rel=1e-6)
    assert torch.allclose(w[1], before[1] * MAX / 5) and torch.allclose(w[3], before[3] * MAX / 10)
    assert torch.equal(layer.bias, bias)  # biases are not part of the norm
    snapshot = w.clone()
    pruner.step()  # already within the bound: a second projection changes nothing measurable
    assert torch.allclose(layer.weight, snapshot, rtol=1e-6, atol=0)
    assert torch.equal(layer.weight[0], before[0])


def test_never_creates_zeros_and_keeps_signs():
    model = mlp()
    signs = [torch.sign(m.weight.detach()) for m in layers(model)]
    pruner = sparsekit.Pruner(model, recipe(max_value=0.05), steps_per_epoch=10)  # far below the init norms
    for s, m in zip(signs, layers(model), strict=True):
        assert torch.equal(torch.sign(m.weight), s)  # rescaling by a positive factor
    train_steps(model, pruner, torch.optim.Adam(model.parameters(), lr=0.05), 20)
    assert all(int((m.weight == 0).sum()) == 0 for m in layers(model))
    assert all(get_mask(m) is None for m in layers(model))  # no mask is even created


@pytest.mark.parametrize("max_norm_first", [True, False], ids=["max_norm_first", "magnitude_first"])
def test_zeros_from_magnitude_on_the_same_layer_stay_zero(max_norm_first):
    model = mlp()
    magnitude = {"method": "magnitude", "sparsity": 0.6, "schedule": "oneshot"}
    pruner = sparsekit.Pruner(model, recipe(magnitude, first=max_norm_first), steps_per_epoch=10)
    zeros = [(m.weight == 0).clone() for m in layers(model)]
    total = sum(z.numel() for z in zeros)
    assert sum(int(z.sum()) for z in zeros) == round(0.6 * total)

    def check():
        for z, m in zip(zeros, layers(model), strict=True):
            assert torch.equal(m.weight == 0, z)  # the same zeros: none revived, none added
            assert bool((unit_norms(m.weight) <= MAX * (1 + 1e-6)).all())

    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9), 20, check)
    final = pruner.finalize()
    assert sparsekit.sparsity(final) == pytest.approx(0.6, abs=1 / total)


def test_conv_norms_are_per_output_channel():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 0.5  # norm 0.5: untouched
        conv.weight[1] = 1.0  # 18 ones: norm sqrt(18) > MAX
        conv.weight[2, 1, 1] = torch.tensor([2.0, 0.0, 0.0])  # norm 2 > MAX, a single kernel row
    before = conv.weight.detach().clone()
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3, 2))
    sparsekit.Pruner(model, recipe(layers={"types": ["Conv2d"]}), steps_per_epoch=1)
    w = conv.weight.detach()
    assert torch.equal(w[0], before[0])
    assert unit_norms(w)[1:].tolist() == pytest.approx([MAX, MAX], rel=1e-6)
    assert torch.allclose(w[1], torch.full_like(w[1], MAX / 18**0.5))  # not the per-kernel norm
    assert w[2, 1, 1].tolist() == pytest.approx([MAX, 0.0, 0.0])
    assert int((w == 0).sum()) == int((before == 0).sum())


def test_report_gives_max_and_mean_unit_norm_per_layer():
    model = mlp()
    with torch.no_grad():
        model[0].weight[0] *= 100  # one row far over the bound
    pruner = sparsekit.Pruner(model, recipe(max_value=0.9), steps_per_epoch=1)
    with torch.no_grad():
        model[2].weight[:, :5] = 0  # zeros another entry made: max_norm's achieved counts them, its asked is None
    out = pruner.methods[0].report()
    report = out["norms"]
    assert list(report) == ["0", "2", "4"]
    for name, m in zip(report, layers(model), strict=True):
        norms = unit_norms(m.weight)
        assert report[name]["max"] == pytest.approx(float(norms.max()), rel=1e-6)
        assert report[name]["mean"] == pytest.approx(float(norms.mean()), rel=1e-6)
        assert report[name]["max"] <= 0.9 * (1 + 1e-6)
    assert report["0"]["max"] == pytest.approx(0.9, rel=1e-6)
    # asked / achieved / per_layer, as every method gives them (the README says so)
    zeros = int((model[2].weight == 0).sum())
    total = sum(m.weight.numel() for m in layers(model))
    assert out["asked"] is None and out["achieved"] == pytest.approx(zeros / total)
    assert out["per_layer"]["2"] == {"asked": None, "achieved": zeros / model[2].weight.numel(), "reason": None}
    assert out["per_layer"]["0"]["achieved"] == 0.0 and out["max_value"] == 0.9


def test_float64_weights_are_projected_in_float64():
    layer = nn.Linear(4, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1, 1, 1, 1 + 1e-9], [1, 1, 1, 1]], dtype=torch.float64))
    sparsekit.Pruner(layer, recipe(max_value=2.0), steps_per_epoch=1)
    norms = layer.weight.detach().norm(dim=1)
    assert float(norms[0]) <= 2.0 * (1 + 1e-14)  # a float32 norm would round 2 + 5e-10 down to 2
    assert float(norms[1]) == 2.0
