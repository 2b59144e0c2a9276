"""Every conv family through every method: selection by default, the right output-unit dimension
(ConvTranspose weights are [in, out/groups, *k]), MACs, what is left out and why, and 1-D data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.data import load_data
from sparsekit.errors import DataError, RecipeError
from sparsekit.layers import (
    NORM_REASON,
    layer_kind,
    num_units,
    output_dim,
    prunable_layers,
    unit_broadcast,
    unit_view,
    unselected_layers,
)
from sparsekit.modelio import infer_input_shape
from sparsekit.recipe import LAYER_TYPES, LayerSelect
from sparsekit.stats import layer_macs

pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(*pruning: dict, epochs: int = 0, **model) -> sparsekit.Recipe:
    return sparsekit.Recipe(**{"finetune": {"epochs": epochs}, "pruning": list(pruning), "model": model})


class Zoo(nn.Module):
    """One of every prunable kind, grouped and depthwise convs, and the normalization layers."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3)
        self.bn1 = nn.BatchNorm1d(8)
        self.dw1 = nn.Conv1d(8, 8, 3, groups=8)  # depthwise
        self.t1 = nn.ConvTranspose1d(8, 6, 3, groups=2)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1, groups=2)
        self.gn = nn.GroupNorm(2, 8)
        self.t2 = nn.ConvTranspose2d(8, 5, 2, stride=2)
        self.bn2 = nn.BatchNorm2d(5)
        self.c3 = nn.Conv3d(1, 4, 3, padding=1)
        self.t3 = nn.ConvTranspose3d(4, 2, 2)
        self.ln = nn.LayerNorm(10)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.t1(self.dw1(self.bn1(self.c1(x)).relu()).relu())  # [N, 6, L]
        h = h[..., :4].unsqueeze(-1).expand(-1, -1, -1, 4)  # [N, 6, 4, 4]
        h = self.bn2(self.t2(self.gn(self.c2(h)).relu()))  # [N, 5, 8, 8]
        v = self.t3(self.c3(h[:, :1, :4, :4].unsqueeze(1)))  # [N, 2, 2, 5, 5]
        return self.fc(self.ln(torch.cat([h.mean((2, 3)), v.mean((2, 3, 4))], 1)[:, :10].expand(-1, 10)))


CONVS = ["c1", "dw1", "t1", "c2", "t2", "c3", "t3"]


def test_layer_types_default_to_every_prunable_kind():
    assert set(LAYER_TYPES) == {f"Conv{t}{d}d" for t in ("", "Transpose") for d in (1, 2, 3)} | {"Linear"}
    assert LayerSelect().types == list(LAYER_TYPES)
    model = Zoo()
    assert list(prunable_layers(model)) == [*CONVS, "fc"]
    plan = sparsekit.Pruner(model, recipe({"method": "magnitude", "sparsity": 0.5}), 1).methods[0]
    assert list(plan.layers) == [*CONVS, "fc"]


def test_subclasses_count_as_their_base_and_lazy_modules_are_left_out():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(1, 2, 3), nn.LazyLinear(4))
    assert layer_kind(model[0]) == "Conv2d" and layer_kind(model[1]) == "Linear"
    assert list(prunable_layers(model)) == ["0"]
    [lazy] = unselected_layers(model)
    assert lazy["name"] == "1" and "forward pass" in lazy["reason"]


def test_unselected_layers_say_why():
    model = nn.Sequential(
        nn.Conv1d(4, 8, 3),
        nn.BatchNorm1d(8),
        nn.ConvTranspose1d(8, 4, 3),
        nn.Flatten(),
        nn.LayerNorm(36),
        nn.Linear(36, 5),
        nn.Embedding(3, 4),
        nn.PReLU(),
    )
    spec = LayerSelect(types=["Conv1d", "Linear"], exclude=["5"])
    rows = {r["name"]: r for r in unselected_layers(model, spec)}
    assert set(rows) == {"1", "2", "4", "5", "6", "7"}  # "3" (Flatten) holds no parameters
    assert rows["1"]["reason"] == rows["4"]["reason"] == NORM_REASON
    assert "ConvTranspose1d is not in layers.types" in rows["2"]["reason"]
    assert rows["5"]["reason"] == "excluded by layers.exclude pattern '5'"
    assert "embeddings" in rows["6"]["reason"] and "not a prunable kind" in rows["7"]["reason"]
    assert rows["2"]["type"] == "ConvTranspose1d"
    # With the default selection only the kinds that are never pruned are left out.
    assert [r["name"] for r in unselected_layers(model)] == ["1", "4", "6", "7"]
    only_first = LayerSelect(include=["0"])
    rows = {r["name"]: r for r in unselected_layers(model, only_first)}
    assert "matches no layers.include pattern" in rows["2"]["reason"]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("cls", [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d])
def test_unit_view_of_a_transposed_conv_is_its_output_channels(cls, groups):
    torch.manual_seed(0)
    m = cls(4, 6, 3, groups=groups)
    assert output_dim(m) == 1 and num_units(m) == 6
    view = unit_view(m.weight.detach(), m)
    assert view.shape == (6, m.weight.numel() // 6)
    # Zeroing unit 3 through unit_broadcast silences exactly output channel 3.
    keep = torch.ones(6)
    keep[3] = 0
    with torch.no_grad():
        m.weight.mul_(unit_broadcast(keep, m, m.weight))
        m.bias.zero_()
    y = m(torch.randn(2, 4, *([5] * (m.weight.dim() - 2))))
    assert float(y[:, 3].abs().max()) == 0
    assert all(float(y[:, c].abs().max()) > 0 for c in (0, 1, 2, 4, 5))
    norms = unit_view(m.weight.detach(), m).norm(dim=1)
    assert torch.nonzero(norms == 0).flatten().tolist() == [3]


def test_unit_view_of_linear_and_conv_is_dim_zero():
    for m in (nn.Linear(5, 3), nn.Conv2d(4, 6, 3, groups=2), nn.Conv1d(4, 4, 3, groups=4)):
        assert output_dim(m) == 0
        assert torch.equal(unit_view(m.weight, m), m.weight.flatten(1))


@pytest.mark.parametrize("name", CONVS)
def test_magnitude_prunes_every_conv_kind_exactly(name):
    model = Zoo()
    r = recipe({"method": "magnitude", "sparsity": 0.6, "scope": "layer", "layers": {"include": [name]}})
    sparsekit.Pruner(model, r, 1)
    w = getattr(model, name).weight
    assert int((w == 0).sum()) == round(0.6 * w.numel())


@pytest.mark.parametrize("groups", [1, 2])
def test_l1_group_channel_zeroes_whole_output_channels_of_a_transposed_conv(groups):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=groups), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, 4, 5, 5))  # initialize the head
    conv = model[0]
    with torch.no_grad():
        for c in (1, 4):  # two output channels far below the threshold, the others far above
            conv.weight.mul_(unit_broadcast((torch.arange(6) != c).float() * 0.999 + 0.001, conv, conv.weight))
    r = recipe(
        {"method": "l1", "strength": 1e-3, "mode": "proximal", "group": "channel", "threshold": 0.02,
         "remove_dead": False, "layers": {"types": ["ConvTranspose2d"]}},
        epochs=1,
    )  # fmt: skip
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=1)
    pruner.finalize()
    w = conv.weight.detach()
    out_per = 6 // groups
    for c in range(6):
        g, j = divmod(c, out_per)
        channel = w[g * (4 // groups) : (g + 1) * (4 // groups), j]  # weight[:, c] for groups=1
        assert bool((channel == 0).all()) == (c in (1, 4)), c
    if groups == 1:
        assert (w[:, 1] == 0).all() and (w[:, 4] == 0).all() and (w[1] != 0).any()


def test_l1_group_channel_accepts_every_conv_kind_and_refuses_linear():
    r = recipe({"method": "l1", "strength": 1e-3, "group": "channel", "layers": {"exclude": ["fc"]}}, epochs=1)
    sparsekit.Pruner(Zoo(), r, 1)
    with pytest.raises(RecipeError, match="'fc' is a Linear"):
        sparsekit.Pruner(Zoo(), recipe({"method": "l1", "strength": 1e-3, "group": "channel"}, epochs=1), 1)


@pytest.mark.parametrize("name", CONVS)
def test_max_norm_bounds_each_output_unit_along_its_own_dim(name):
    model = Zoo()
    m = getattr(model, name)
    with torch.no_grad():
        m.weight.mul_(50)
    before_units = unit_view(m.weight.detach().double(), m)
    before = before_units.norm(dim=1)
    r = recipe({"method": "max_norm", "max_value": 1.0, "layers": {"include": [name]}})
    sparsekit.Pruner(model, r, 1)
    after = unit_view(m.weight.detach().double(), m).norm(dim=1)
    assert after.shape == (m.out_channels,)
    torch.testing.assert_close(after, torch.clamp(before, max=1.0), rtol=1e-5, atol=0)
    # Each unit was scaled by one factor: the direction of every unit's weights is kept.
    torch.testing.assert_close(
        unit_view(m.weight.detach().double(), m) / after[:, None], before_units / before[:, None], rtol=1e-5, atol=1e-7
    )


def test_macs_of_a_transposed_conv_count_each_input_value():
    model = nn.Sequential(nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2), nn.Conv1d(6, 2, 3))
    macs = layer_macs(model, [1, 4, 10])
    # ConvTranspose: 4 * 10 input values, each times out/groups * k = 3 * 3 weights.
    # Conv1d on the 21 positions it gets: 19 * 2 outputs, each from 6 * 3 weights.
    assert macs == {"0": 4 * 10 * 9, "1": 19 * 2 * 18}


def test_infer_input_shape_is_only_sure_for_a_linear_first():
    assert infer_input_shape(nn.Sequential(nn.Flatten(), nn.Linear(64, 3))) == [1, 64]
    for first in (nn.Conv1d(4, 3, 3), nn.ConvTranspose1d(4, 3, 3), nn.BatchNorm1d(4), nn.LazyLinear(3)):
        assert infer_input_shape(nn.Sequential(first, nn.Linear(3, 2))) is None


# ----------------------------------------------------------------------------- 1-D data


class CNN1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, 5)
        self.conv2 = nn.Conv1d(16, 16, 5)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(x).relu()).relu().mean(-1))


def _signals(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 4, 32)).astype(np.float32) * 0.3
    x[np.arange(n), y] += np.sin(np.linspace(0, 6, 32, dtype=np.float32))  # the class's channel carries a wave
    return x, y


def test_a_1d_cnn_trains_and_prunes_on_an_npz_of_signals(tmp_path):
    x, y = _signals()
    np.savez(tmp_path / "signals.npz", x=x, y=y)
    r = sparsekit.Recipe(
        model={"input_shape": [1, 4, 32]},
        data={"source": str(tmp_path / "signals.npz"), "batch_size": 16},
        finetune={"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01}},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
    )
    bundle = load_data(r.data.source, batch_size=16, input_shape=r.model.input_shape)
    xb, _ = next(iter(bundle.train))
    assert bundle.input_shape == (4, 32) and xb.shape == (16, 4, 32)  # no invented [N, 1, 4, 32]
    torch.manual_seed(0)
    model = CNN1d()
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=len(bundle.train))
    assert list(pruner.methods[0].layers) == ["conv1", "conv2", "fc"]  # Conv1d selected by default
    model, history, pruner = sparsekit.finetune(model, r, bundle.train, bundle.val, pruner=pruner, progress=False)
    model = pruner.finalize()
    weights = [model.conv1.weight, model.conv2.weight, model.fc.weight]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * total)
    assert len(history) == 2 and history[-1]["val_accuracy"] > 0.5


def test_flat_npz_is_reshaped_to_the_input_shape(tmp_path):
    x, y = _signals(20)
    np.savez(tmp_path / "flat.npz", x=x.reshape(20, 128), y=y)
    bundle = load_data(str(tmp_path / "flat.npz"), input_shape=[1, 4, 32], batch_size=64)
    assert bundle.input_shape == (4, 32)
    xs = torch.cat([b[0] for b in bundle.train] + [b[0] for b in bundle.val])
    got = sorted(map(tuple, xs.reshape(20, -1)[:, :3].tolist()))
    assert got == sorted(map(tuple, x.reshape(20, -1)[:, :3].tolist()))


@pytest.mark.parametrize(
    ("shape", "needles"),
    [
        ((20, 4, 30), ["(4, 30)", "120 values", "[1, 4, 32]", "(4, 32)", "128 values", "[1, 4, 30]"]),
        ((20, 32, 4), ["(32, 4)", "[1, 4, 32]", "(4, 32)", "scramble", "(n, 4, 32)"]),
    ],
)
def test_npz_that_does_not_fit_the_input_shape_names_both_shapes(tmp_path, shape, needles):
    np.savez(tmp_path / "bad.npz", x=np.zeros(shape, np.float32), y=np.arange(shape[0]) % 3)
    with pytest.raises(DataError) as info:
        load_data(str(tmp_path / "bad.npz"), input_shape=[1, 4, 32])
    message = str(info.value)
    assert "model.input_shape" in message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize(
    ("have", "wanted"),
    [
        ((1, 8, 8), [1, 1, 64]),
        ((1, 8, 8), [1, 64, 1]),
        ((64,), [1, 1, 8, 8]),
        ((2, 3, 4), [1, 2, 12]),
        ((2, 12), [1, 2, 3, 4]),
    ],
)
def test_merging_or_splitting_adjacent_dims_is_a_reshape_not_a_scramble(tmp_path, have, wanted):
    # digits' (1, 8, 8) samples for a Conv1d model's [1, 1, 64]: the same row-major values, no axis reordered.
    x = np.arange(6 * int(np.prod(have)), dtype=np.float32).reshape(6, *have)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 2)
    bundle = load_data(str(tmp_path / "d.npz"), input_shape=wanted, batch_size=64, val_fraction=0.5)
    xs = torch.cat([b[0] for b in bundle.train] + [b[0] for b in bundle.val])
    assert xs.shape[1:] == tuple(wanted[1:])
    got = sorted(map(tuple, xs.reshape(6, -1).tolist()))
    assert got == sorted(map(tuple, x.reshape(6, -1).tolist()))  # each sample's values, in their order


def test_digits_feed_a_conv1d_input_shape():
    bundle = load_data("digits", input_shape=[1, 1, 64])
    assert next(iter(bundle.train))[0].shape[1:] == (1, 64)


def test_synthetic_samples_have_the_input_shape_without_its_batch_dim():
    bundle = load_data("synthetic", input_shape=[1, 4, 32], synthetic_samples=40)
    assert next(iter(bundle.train))[0].shape[1:] == (4, 32)


def test_input_shape_needs_a_batch_dimension():
    from sparsekit.recipe import validate_recipe

    with pytest.raises(RecipeError, match=r"model.input_shape: \[784\] has no batch dimension.*\[1, 784\]"):
        validate_recipe({"model": {"input_shape": [784]}})


def test_a_1d_cnn_goes_through_run_prune(tmp_path, monkeypatch):
    # The CLI's `prune` is run_prune: a Conv1d model, an .npz of (n, 4, 32) and input_shape [1, 4, 32].
    (tmp_path / "sk_conv1d_net.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv1d(4, 16, 5), nn.ReLU(), nn.Conv1d(16, 16, 5), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3))\n"
    )
    monkeypatch.chdir(tmp_path)
    x, y = _signals()
    np.savez(tmp_path / "signals.npz", x=x, y=y)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(4, 16, 5), nn.ReLU(), nn.Conv1d(16, 16, 5), nn.ReLU(),
                        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3))  # fmt: skip
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    r = sparsekit.Recipe(
        model={"input_shape": [1, 4, 32]},
        data={"source": "signals.npz", "batch_size": 16},
        finetune={"epochs": 1, "optimizer": {"name": "adam", "lr": 0.01}},
        pruning=[{"method": "magnitude", "sparsity": 0.6}],
        benchmark={"enabled": False},
    )
    report = sparsekit.run_prune("weights.pt", r, tmp_path / "out", arch="sk_conv1d_net:build", progress=False)
    [row] = report.methods
    assert row.layers == ["0", "2", "6"]
    assert row.asked == 0.6 and row.achieved == pytest.approx(0.6, abs=1e-3)
    assert set(row.per_layer) == {"0", "2", "6"}
