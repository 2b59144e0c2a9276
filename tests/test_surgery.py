from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsekit
from examples.models import mlp, resnet_small
from sparsekit.errors import ModelFileError
from sparsekit.masks import MASK, get_mask, set_mask
from sparsekit.surgery import last_layer, output_layers, refit_masks, remove_dead_units, replay_history


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return mlp(in_features=16, hidden=(12, 8), num_classes=4).eval()


class ConvBN(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 (padding 1) -> bn2 -> relu -> conv3 (1x1, no bias) -> bn3 -> relu
    -> maxpool -> flatten -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 5, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(5)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _conv_bn() -> ConvBN:
    torch.manual_seed(0)
    model = ConvBN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        # conv1: channel 0 dead with a negative BN output (ReLU gives exactly 0) -> removable;
        # channel 1 dead with a positive constant feeding a zero-padded conv -> must stay.
        model.conv1.weight[[0, 1]] = 0
        model.bn1.running_mean[[0, 1]] = 0.0
        model.bn1.bias[0], model.bn1.bias[1] = -0.7, 0.9
        # conv2 (with bias): dead channels 2, 5 feed the 1x1 conv3 (no padding, no bias, BN after):
        # their constant is folded into bn3's running mean.
        model.conv2.weight[[2, 5]] = 0
        model.conv2.bias[[2, 5]] = 0.3
        # conv3: dead channel 4 -> max-pool -> flatten -> fc: folded into fc's bias.
        model.conv3.weight[4] = 0
        model.bn3.running_mean[4], model.bn3.bias[4] = 0.0, 0.8
    return model.eval()


def test_remove_dead_units_mlp_folds_biases_and_keeps_outputs():
    model = _mlp()
    with torch.no_grad():
        model.fc1.weight[[1, 5, 7]] = 0
        model.fc1.bias[[1, 5, 7]] = torch.tensor([0.5, -0.4, 1.2])  # relu(0.5), relu(1.2) must be folded
        model.fc2.weight[[0, 3]] = 0
        model.fc2.bias[[0, 3]] = torch.tensor([0.7, 0.2])
    x = torch.randn(32, 16)
    expected = model(x)
    out, history = remove_dead_units(model, [1, 16], ignore=["fc3"])
    assert out.fc1.weight.shape == (9, 16) and out.fc2.weight.shape == (6, 9)
    assert out.fc3.weight.shape == (4, 6)
    assert not (out.fc1.weight.flatten(1).abs().sum(1) == 0).any()  # the dead rows are gone
    torch.testing.assert_close(out(x), expected, atol=1e-5, rtol=0)
    assert [h[0] for h in history] == ["fc1", "fc2"]
    # The history rebuilds the same shapes on a fresh model.
    fresh = replay_history(_mlp(), history, [1, 16])
    fresh.load_state_dict(out.state_dict())
    torch.testing.assert_close(fresh.eval()(x), expected, atol=1e-5, rtol=0)


def test_remove_dead_units_conv_bn_exact_where_provable():
    model = _conv_bn()
    fc_bias, running_mean = model.fc.bias.clone(), model.bn3.running_mean.clone()
    x = torch.randn(6, 2, 8, 8)
    expected = model(x)
    out, history = remove_dead_units(model, [1, 2, 8, 8], ignore=["fc"])
    assert out.conv1.weight.shape[0] == 5  # channel 0 removed, channel 1 (border effect) kept
    assert out.bn1.num_features == 5 and out.conv2.weight.shape[1] == 5
    assert out.conv2.weight.shape[0] == 6 and out.conv3.weight.shape[1] == 6  # folded into bn3.running_mean
    assert out.conv3.weight.shape[0] == 4 and out.fc.weight.shape == (3, 4 * 16)  # folded into fc.bias
    assert out.conv1.weight.flatten(1).abs().sum(1).eq(0).sum() == 1  # only the unremovable one is left
    assert not torch.equal(out.fc.bias, fc_bias) and not torch.equal(out.bn3.running_mean, running_mean[:4])
    torch.testing.assert_close(out(x), expected, atol=1e-5, rtol=0)
    fresh = replay_history(ConvBN(), history, [1, 2, 8, 8])
    fresh.load_state_dict(out.state_dict())
    torch.testing.assert_close(fresh.eval()(x), expected, atol=1e-5, rtol=0)


def test_remove_dead_units_keeps_residual_coupled_channels():
    torch.manual_seed(0)
    model = resnet_small(width=4, image_size=8).eval()
    with torch.no_grad():
        model.layer1.conv1.weight[1] = 0  # inside the block: bn1 -> relu -> conv2
        model.layer1.bn1.bias[1] = -1.0  # relu gives exactly 0: removable
        model.layer1.conv2.weight[2] = 0  # its output is added to the residual: must stay
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    out, history = remove_dead_units(model, [1, 1, 8, 8], ignore=["fc"])
    assert out.layer1.conv1.weight.shape[0] == 3
    assert out.layer1.conv2.weight.shape == (4, 3, 3, 3)
    assert history == [["layer1.conv1", True, [1]]]
    torch.testing.assert_close(out(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ignored", [False, True])
def test_remove_dead_units_removes_a_residual_channel_dead_in_every_layer_it_joins(ignored):
    """The stem and layer1.conv2 both write channel 2 of the residual stream: dead (weights and BatchNorm
    gamma/beta zero) in both, it goes from both and from every consumer; kept when one of them is ignored."""
    torch.manual_seed(0)
    model = resnet_small(width=4, image_size=8).eval()
    with torch.no_grad():
        for conv, bn in ((model.conv1, model.bn1), (model.layer1.conv2, model.layer1.bn2)):
            conv.weight[2] = 0
            bn.weight[2] = bn.bias[2] = 0
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    out, history = remove_dead_units(model, [1, 1, 8, 8], ignore=["fc", "conv1"] if ignored else ["fc"])
    channels = 4 if ignored else 3
    assert out.conv1.out_channels == out.layer1.conv2.out_channels == out.layer1.conv1.in_channels == channels
    assert out.layer2.conv1.in_channels == out.layer2.shortcut[0].in_channels == channels
    assert bool(history) != ignored
    torch.testing.assert_close(out(x), expected, atol=1e-5, rtol=0)


def test_remove_dead_units_keeps_one_unit_and_respects_ignore():
    model = _mlp()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc3.weight[0] = 0  # the head is ignored: its outputs are the model's outputs
    x = torch.randn(8, 16)
    expected = model(x)
    out, _ = remove_dead_units(model, [1, 16], ignore=["fc3"])
    assert out.fc1.weight.shape == (1, 16) and out.fc3.weight.shape[0] == 4
    torch.testing.assert_close(out(x), expected, atol=1e-5, rtol=0)


def test_remove_dead_units_refits_masks_of_touched_layers():
    model = _mlp()
    with torch.no_grad():
        model.fc1.weight[[2, 3]] = 0
    set_mask(model.fc2, torch.rand(model.fc2.weight.shape) > 0.5)
    zeros_before = int((model.fc2.weight == 0).sum())
    out, _ = remove_dead_units(model, [1, 16], ignore=["fc3"])
    assert get_mask(out.fc2).shape == out.fc2.weight.shape == (8, 10)
    assert not bool(out.fc2.weight[~get_mask(out.fc2)].any())
    assert int((~get_mask(out.fc2)).sum()) <= zeros_before


def test_l1_group_proximal_then_remove_dead_keeps_outputs():
    model = _mlp()
    recipe = sparsekit.Recipe(
        **{
            "model": {"input_shape": [1, 16]},
            "finetune": {"epochs": 1},
            "pruning": [
                {
                    "method": "l1",
                    "strength": 1.6,  # lambda: a shrink of lr * 1.6 = 0.08 per step
                    "proximal_every": 1,
                    "mode": "proximal",
                    "group": "row",
                    "remove_dead": True,
                    "layers": {"exclude": ["fc3"]},
                }
            ],
        }
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.manual_seed(1)
    for _ in range(10):
        x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
    dead1 = int(model.fc1.weight.flatten(1).abs().sum(1).eq(0).sum())
    dead2 = int(model.fc2.weight.flatten(1).abs().sum(1).eq(0).sum())
    assert dead1 + dead2 > 0, "the proximal step should have killed some rows"
    x = torch.randn(64, 16)
    expected = model.eval()(x).detach()
    final = pruner.finalize()
    assert final.fc1.weight.shape[0] == 12 - dead1 or dead1 == 12
    assert final.fc2.weight.shape[0] == 8 - dead2 or dead2 == 8
    assert not any(get_mask(m) is not None for m in final.modules())
    torch.testing.assert_close(final.eval()(x), expected, atol=1e-5, rtol=0)
    assert len(pruner.pruning_history) >= (dead1 > 0) + (dead2 > 0)


def test_replay_history_rejects_a_history_that_does_not_fit():
    with pytest.raises(ModelFileError, match="no prunable module named 'conv9'"):
        replay_history(_mlp(), [["conv9", True, [0]]], [1, 16])
    with pytest.raises(ModelFileError, match="12 channels"):
        replay_history(_mlp(), [["fc1", True, [3, 40]]], [1, 16])
    with pytest.raises(ModelFileError, match="malformed"):
        replay_history(_mlp(), [["fc1", True]], [1, 16])
    with pytest.raises(ModelFileError, match="tracing"):
        replay_history(_mlp(), [["fc1", True, [0]]], [1, 99])


def test_replay_returns_the_same_model_and_last_layer_is_the_head():
    model = _mlp()
    assert replay_history(model, [["fc2", True, [0, 1]]], [1, 16]) is model
    assert model.fc2.out_features == 6 and model.fc3.in_features == 6
    assert last_layer(model, [1, 16]) == "fc3"


def test_refit_masks_rebuilds_from_zeros_only_when_shapes_differ():
    layer = nn.Linear(4, 3)
    set_mask(layer, torch.tensor([[1, 0, 1, 1]] * 3, dtype=torch.bool))
    assert refit_masks(layer) == []
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight[:2].clone())
    assert refit_masks(layer) == [""]
    assert layer._buffers[MASK].tolist() == [[True, False, True, True]] * 2


def test_remove_dead_units_keeps_tied_weights_tied():
    from sparsekit.surgery import tied_parameters

    model = _mlp()  # fc1 (16 -> 12), fc2 (12 -> 8), fc3 (8 -> 4)
    extra = nn.Linear(16, 12)
    extra.weight = model.fc1.weight  # fc1's weight is shared with a module outside the forward pass
    model.add_module("extra", extra)
    with torch.no_grad():
        model.fc1.weight[[1, 5]] = 0
        model.fc1.bias[[1, 5]] = -1.0  # relu gives exactly 0: removable but for the tie
        model.fc2.weight[3] = 0
        model.fc2.bias[3] = -1.0
    assert tied_parameters(model) == [[("fc1", "weight"), ("extra", "weight")]]
    model.add_module("alias", model.fc3)  # one module under two names: not a tie
    assert tied_parameters(model) == [[("fc1", "weight"), ("extra", "weight")]]
    del model.alias
    out, history = remove_dead_units(model, [1, 16], ignore=["fc3"])
    assert out.fc1.weight.shape == (12, 16) and out.extra.weight is out.fc1.weight
    assert out.fc2.weight.shape == (7, 12) and history == [["fc2", True, [3]]]


def test_forward_failure_says_where_the_forward_pass_fails():
    from sparsekit.surgery import forward_failure

    model = _mlp()
    assert forward_failure(model, [1, 16], [(4,)]) is None
    assert forward_failure(model, [1, 16], [(5,)]) == "(its output has shape [4] instead of [5])"
    assert forward_failure(model, [1, 16], [(4,), (2,)]) == "(its outputs have shapes [[4]] instead of [[4], [2]])"
    with torch.no_grad():
        model.fc2.weight = nn.Parameter(torch.zeros(8, 11))  # fc2 now expects 11 inputs, fc1 gives 12
    failure = forward_failure(model, [1, 16])
    assert failure is not None and failure.startswith("in 'fc2' (RuntimeError:")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_weights_reused_by_the_forward_are_found_and_their_units_kept():
    from sparsekit.surgery import reused_parameters

    class TiedTransposed(nn.Module):  # the decoder reuses the encoder's weights transposed
        def __init__(self) -> None:
            super().__init__()
            self.enc1 = nn.Linear(16, 12)
            self.enc2 = nn.Linear(12, 6)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.relu(self.enc2(torch.relu(self.enc1(x))))
            h = torch.relu(nn.functional.linear(z, self.enc2.weight.t()))
            return self.head(nn.functional.linear(h, self.enc1.weight.t()))

    model = TiedTransposed().eval()
    assert reused_parameters(model, [1, 16]) == [("enc1", "weight", 1), ("enc2", "weight", 1)]
    assert reused_parameters(_mlp(), [1, 16]) == []
    with torch.no_grad():
        model.enc1.weight[3] = 0
        model.enc1.bias[3] = -1.0
    x = torch.randn(4, 16)
    expected = model(x)
    out, history = remove_dead_units(model, [1, 16], ignore=["head"])
    assert history == [] and out.enc1.out_features == 12
    torch.testing.assert_close(out(x), expected)


def test_dead_rows_of_a_grouped_conv_transpose_are_output_channels():
    from sparsekit.surgery import _dead_rows

    layer = torch.nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight [4, 3, 3, 3]: output channel c = group*3 + j
    with torch.no_grad():
        layer.weight[2:, 1] = 0  # output channel 3 + 1 = 4 (second group, second channel)
    assert _dead_rows(layer) == [4]


class _GluHead(torch.nn.Module):
    # glu's rows are split in value and gate halves: removing a dead row of one half breaks the pairing
    def __init__(self):
        super().__init__()
        self.fc1, self.glu, self.out = torch.nn.Linear(64, 32), torch.nn.Linear(32, 32), torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.out(torch.nn.functional.glu(self.glu(torch.relu(self.fc1(x))), dim=-1))


class _TiedDecoder(torch.nn.Module):
    # the decoder reads the encoder's weight transposed: torch-pruning cannot trace the concat that follows
    def __init__(self):
        super().__init__()
        self.encoder, self.cls = torch.nn.Linear(64, 24), torch.nn.Linear(64 + 24, 5)
        self.dec_bias = torch.nn.Parameter(torch.zeros(64))

    def forward(self, x):
        h = torch.relu(self.encoder(x))
        return self.cls(torch.cat([torch.nn.functional.linear(h, self.encoder.weight.t(), self.dec_bias), h], 1))


@pytest.mark.parametrize("make", [_GluHead, _TiedDecoder])
def test_dead_unit_removal_leaves_a_layout_it_cannot_handle_untouched(make):
    """Found by review: these raised deep in the removal (exit 1 after training). Removal is an
    optimization, so such a model keeps every unit, exactly as it was."""
    from sparsekit.surgery import remove_dead_units

    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
            layer.weight[::3] = 0  # dead rows everywhere
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 64)
    expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result, history = remove_dead_units(model, [1, 64], ignore=["out", "cls"])
    assert torch.allclose(result(x), expected, atol=1e-6)
    if history == []:  # refused: nothing changed
        assert all(torch.equal(result.state_dict()[k], v) for k, v in before.items())


def test_dead_channels_feeding_a_transposed_conv_go_when_they_emit_exact_zeros():
    """A transposed conv cannot take a nonzero constant exactly (its borders overlap less), but zeros are zeros."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, 2), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for t in (model[0].weight, model[0].bias, model[1].weight, model[1].bias):
            t[:3] = 0
        model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    out, _ = remove_dead_units(model, [1, 1, 8, 8], ignore=["5"])
    assert out[0].out_channels == 5 and out[3].in_channels == 5
    torch.testing.assert_close(out(x), expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        out[1].bias[0] = 0.5  # now channel 0 emits a constant 0.5: it must stay
        out[0].weight[0] = 0
    expected = out(x)
    again, _ = remove_dead_units(out, [1, 1, 8, 8], ignore=["5"])
    assert again[0].out_channels == 5
    torch.testing.assert_close(again(x), expected, atol=1e-5, rtol=0)


class _SharedLayerAfter(nn.Module):
    """p -> q, then a layer called twice (its output is its own input), then the head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.p, self.q, self.a, self.head = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.q(torch.relu(self.p(x))))
        return self.head(torch.relu(self.a(torch.relu(self.a(x)))))


def test_when_removing_every_layers_units_at_once_fails_the_others_are_still_removed_layer_by_layer():
    """A layout the checks did not foresee (here a layer called twice, whose outputs are its own inputs: q's units
    are a's too) made the self-check fail, and every other layer's dead units stayed too. Now the removal goes on
    layer by layer: p's dead units go, q's and a's stay and are named."""
    model = _SharedLayerAfter().eval()
    with torch.no_grad():
        model.p.weight[[1, 4, 9]] = 0
        model.q.weight[[2, 5]] = 0
        model.a.weight[[2, 5]] = 0
    x = torch.randn(16, 8)
    expected = model(x)
    failures: dict[str, str] = {}
    with pytest.warns(UserWarning, match=r"removed layer by layer instead, and the zeroed units of q, a stay"):
        out, history = remove_dead_units(model, [1, 8], ignore=["head"], failures=failures)
    assert out.p.out_features == 13 and out.a.out_features == 8  # p kept all 16 before
    assert set(failures) == {"q", "a"} and "changed the model's outputs" in failures["a"]
    torch.testing.assert_close(out(x), expected, atol=1e-5, rtol=1e-4)
    replayed = replay_history(_SharedLayerAfter(), history, [1, 8])
    assert replayed.p.out_features == 13 and replayed.q.in_features == 13


class _SplitCat(nn.Module):
    """conv1's channels sliced in two and concatenated back the other way round: no removal can follow them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.ca, self.cb = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        a, b = x[:, :16], x[:, 16:]
        return self.head(torch.cat([torch.relu(self.cb(b)), torch.relu(self.ca(a))], 1).mean((2, 3)))


def test_a_removal_the_slicing_breaks_says_what_the_channels_pass_through():
    # Found by review: the report carried torch's raw "Given groups=1, weight of size [16, 10, 3, 3] ..." only.
    torch.manual_seed(0)
    model = _SplitCat()
    with torch.no_grad():
        model.conv1.weight[[1, 2, 20]] = 0
        model.conv1.bias[[1, 2, 20]] = 0
    failures: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, _ = remove_dead_units(model, [1, 1, 8, 8], ignore=["head"], failures=failures)
    assert failures["conv1"].startswith(
        "removing its zeroed units breaks the forward pass: its channels pass through slice, which the removal"
    )
    assert out.conv1.out_channels == 32  # its units stay, and the model still runs
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)


class _FreedHeadOutput(nn.Module):
    """The first layer's output is freed before the model's own output is made, so CPython's allocator
    tends to hand its address (its id()) to the returned tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc1(x)
        b = self.fc2(torch.relu(a))
        del a
        return b * 2


def test_output_layers_not_fooled_by_a_reused_tensor_id() -> None:
    # The returned tensor is nobody's own output: the head is the last layer, never the freed fc1.
    for _ in range(5):
        assert output_layers(_FreedHeadOutput(), (8,)) == ["fc2"]
