"""Mends from the eighteenth architecture review: models users bring that examples/ does not have."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit


def _structured(shape: list[int]) -> sparsekit.Recipe:
    spec = {"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot"}
    return sparsekit.Recipe(**{"model": {"input_shape": shape}, "pruning": [spec]})


class ScaledByBuffer(nn.Module):
    """An MLP whose hidden units are scaled by a per-channel buffer (a fixed gain, a calibration constant)."""

    def __init__(self, as_parameter: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 5)
        if as_parameter:
            self.scale = nn.Parameter(torch.ones(32), requires_grad=False)
        else:
            self.register_buffer("scale", torch.ones(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)) * self.scale)))


def test_a_per_channel_buffer_that_breaks_channel_removal_is_named_with_its_remedy(one_thread):
    # torch-pruning resizes parameters, not buffers: the refusal blamed a view/reshape the model does not have
    # (rehearse) or named nothing (the Pruner's own step), leaving ignore as the only way out.
    torch.manual_seed(0)
    with pytest.raises(sparsekit.TargetError) as rehearsed:
        sparsekit.rehearse(ScaledByBuffer(), _structured([1, 16]), input_shape=[1, 16], steps_per_epoch=1)
    pruner = sparsekit.Pruner(ScaledByBuffer(), _structured([1, 16]), steps_per_epoch=1)
    with pytest.raises(sparsekit.TargetError) as stepped:
        pruner.step()
    for err in (rehearsed, stepped):
        message = str(err.value)
        assert "buffer 'scale' (shape [32])" in message and "nn.Parameter" in message, message
        assert "view/reshape" not in message
    # The remedy it names works: a frozen parameter loses the same channels.
    model = ScaledByBuffer(as_parameter=True)
    pruner = sparsekit.Pruner(model, _structured([1, 16]), steps_per_epoch=1)
    pruner.step()
    model = pruner.finalize()
    assert model.scale.shape == (16,) and model(torch.rand(2, 16)).shape == (2, 5)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_hook_based_weight_and_spectral_norm_name_the_call_that_removes_them():
    # torch.nn.utils.weight_norm / spectral_norm (hooks, not parametrizations) were told to call
    # parametrize.remove_parametrizations(layer, 'weight'), which raises on them.
    from sparsekit.layers import unselected_layers

    model = nn.Sequential(
        nn.utils.spectral_norm(nn.Linear(8, 8)), nn.utils.weight_norm(nn.Linear(8, 8)), nn.Linear(8, 3)
    )
    reason = {row["name"]: row["reason"] for row in unselected_layers(model)}
    assert "remove_spectral_norm(layer)" in reason["0"] and "remove_parametrizations" not in reason["0"]
    assert "remove_weight_norm(layer)" in reason["1"] and "remove_parametrizations" not in reason["1"]
    with pytest.raises(sparsekit.TargetError, match=r"remove_spectral_norm"):
        sparsekit.Pruner(model, {"pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": ["0"]}]}, 1)
    # The call named gives the layers back as prunable ones.
    nn.utils.remove_spectral_norm(model[0])
    nn.utils.remove_weight_norm(model[1])
    assert unselected_layers(model) == []
    pruner = sparsekit.Pruner(model, {"pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": ["0", "1"]}]}, 1)
    pruner.step()
    assert sparsekit.sparsity(model) == pytest.approx(0.5 * 128 / (128 + 24), abs=0.01)


class RecurrentAttention(nn.Module):
    """A sequence model: Linear -> LSTM -> self-attention with a residual add -> Linear -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(F.relu(self.proj(x)))
        a, _ = self.attn(h, h, h)
        return self.head(F.relu(self.fc(a + h)).mean(1))


def test_attention_out_proj_fed_by_an_lstm_is_not_called_unreached(one_thread):
    # MultiheadAttention applies out_proj's weight itself; where no group removes the attention's embedding
    # channels (an LSTM feeds it), the Linear was reported "not reached by the forward pass": the attention runs.
    torch.manual_seed(0)
    model = RecurrentAttention()
    pruner = sparsekit.Pruner(model, _structured([1, 4, 8]), steps_per_epoch=1)
    pruner.step()
    row = pruner.methods[0].report()["per_layer"]["attn.out_proj"]
    assert row["achieved"] == 0.0
    assert "not reached" not in row["reason"] and "attention 'attn'" in row["reason"], row["reason"]
    model = pruner.finalize()
    assert model.proj.out_features == model.fc.out_features == 8 and model.attn.out_proj.out_features == 16


class TiedSquare(nn.Module):
    """An encoder and a decoder layer sharing one weight object (``dec.weight = enc.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.mid, self.dec, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.dec(F.relu(self.mid(F.relu(self.enc(x)))))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the fused CPU path and the plain one
def test_max_norm_rescales_a_tied_weight_once(dtype):
    # Each module sharing the weight was rescaled by the norms taken before either: the shared rows ended at
    # max_value * max_value / norm, far inside the ball, and the model lost most of its scale at every step.
    torch.manual_seed(0)
    model = TiedSquare().to(dtype)
    with torch.no_grad():
        model.enc.weight.mul_(10)  # every row's norm well over the bound
    pruner = sparsekit.Pruner(model, {"pruning": [{"method": "max_norm", "max_value": 0.5}]}, steps_per_epoch=1)
    pruner.step()
    norms = model.enc.weight.detach().norm(dim=1)
    assert model.dec.weight is model.enc.weight
    assert torch.allclose(norms, torch.full_like(norms, 0.5), rtol=1e-5), norms


def test_l1_names_the_buffer_that_keeps_zeroed_units_not_a_view(one_thread):
    # remove_dead's layer-by-layer fallback said the units "pass through view/reshape", which the model has not.
    torch.manual_seed(0)
    model = ScaledByBuffer()
    with torch.no_grad():
        model.fc1.weight[:10] = 0
        model.fc1.bias[:10] = 0
    spec = {"method": "l1", "strength": 1e-4, "group": "row", "mode": "proximal", "threshold": 1e-3}
    pruner = sparsekit.Pruner(model, {"model": {"input_shape": [1, 16]}, "pruning": [spec]}, steps_per_epoch=1)
    pruner.step()
    with pytest.warns(UserWarning, match="zeroed units of fc1 stay"):
        model = pruner.finalize()
    reason = pruner.methods[0].report()["cannot_remove"]["fc1"]
    assert "buffer 'scale' (shape [32])" in reason and "view/reshape" not in reason, reason
    assert model.fc1.out_features == 32 and model(torch.rand(2, 16)).shape == (2, 5)


class FeedsNormed(nn.Module):
    """A plain layer whose outputs feed a weight-normed one."""

    def __init__(self, hook_based: bool) -> None:
        super().__init__()
        normed = nn.utils.weight_norm if hook_based else nn.utils.parametrizations.weight_norm
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), normed(nn.Linear(32, 32)), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize(("hook_based", "remedy"), [(False, "remove_parametrizations"), (True, "remove_weight_norm")])
def test_channels_feeding_a_weight_normed_layer_are_refused_naming_it(hook_based, remedy):
    # torch-pruning cannot shrink a parametrized or hook-normed weight: the refusal came at the removal step and
    # blamed the layer losing channels ("a layout it does not model", or the forward pass's TypeError), never the
    # weight-normed layer or how to make it prunable.
    torch.manual_seed(0)
    with pytest.raises(sparsekit.TargetError) as err:
        sparsekit.Pruner(FeedsNormed(hook_based), _structured([1, 16]), steps_per_epoch=1)
    message = str(err.value)
    assert "cannot remove output channels of 'fc1'" in message and "reach 'fc2'" in message, message
    assert f"{remedy}(layer" in message and "pruning[0].ignore" in message


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_rehearse_copies_a_model_with_hook_based_weight_and_spectral_norm(one_thread):
    # Their hooks keep the layer's weight as a computed (non-leaf) tensor, which copy.deepcopy refuses: rehearse
    # raised RuntimeError "Only Tensors created explicitly by the user (graph leaves) support the deepcopy
    # protocol" for any recipe, here one that never touches the normed layers.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.utils.spectral_norm(nn.Linear(16, 32)),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.utils.weight_norm(nn.Linear(32, 32)),
        nn.ReLU(),
        nn.Linear(32, 5),
    )
    model.eval()  # (in training mode spectral_norm takes a power-iteration step at every forward pass)
    before = model(torch.ones(2, 16)).detach()
    spec = {"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot", "ignore": ["6"]}
    recipe = sparsekit.Recipe(**{"model": {"input_shape": [1, 16]}, "pruning": [spec]})
    with pytest.raises(sparsekit.TargetError, match=r"reach '4'.*remove_weight_norm"):  # (2's channels feed it)
        sparsekit.rehearse(model, recipe, input_shape=[1, 16], steps_per_epoch=1)
    mag = sparsekit.Recipe(**{"model": {"input_shape": [1, 16]}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]})
    sparsekit.rehearse(model, mag, input_shape=[1, 16], steps_per_epoch=1)
    assert torch.equal(model(torch.ones(2, 16)), before)  # the user's model is as it was


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize(("hook_based", "remedy"), [(False, "remove_parametrizations"), (True, "remove_weight_norm")])
def test_l1_says_up_front_that_units_feeding_a_weight_normed_layer_stay(hook_based, remedy):
    # validate (and report() before finalize) said nothing; finalize then warned that the removal failed with
    # "KeyError: attribute 'weight' already exists" or a TypeError, naming neither the normed layer nor the remedy.
    torch.manual_seed(0)
    spec = {"method": "l1", "strength": 1e-3, "group": "row", "mode": "proximal", "threshold": 1e-3}
    pruner = sparsekit.Pruner(FeedsNormed(hook_based), {"model": {"input_shape": [1, 16]}, "pruning": [spec]}, 1)
    reason = pruner.methods[0].report()["cannot_remove"]["fc1"]
    assert "reach fc2" in reason and f"{remedy}(layer" in reason, reason


class ViewsChannels(nn.Module):
    """fc1's 20 units viewed as [4, 5] in forward() (a shape written in code), beside an unrelated buffer of 20."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.head = nn.Linear(16, 20), nn.Linear(5, 3)
        self.register_buffer("table", torch.zeros(20))  # read by no forward pass here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc1(x)).reshape(x.shape[0], 4, 5).mean(1))


def test_a_buffer_is_blamed_only_when_the_failure_names_its_size(one_thread):
    # A buffer that merely has the layer's old size is no cause: the failure here is the hard-coded view.
    spec = {"method": "structured", "ratio": 0.25, "round_to": None, "schedule": "oneshot"}
    recipe = sparsekit.Recipe(**{"model": {"input_shape": [1, 16]}, "pruning": [spec]})
    with pytest.raises(sparsekit.TargetError) as err:
        sparsekit.rehearse(ViewsChannels(), recipe, input_shape=[1, 16], steps_per_epoch=1)
    assert "'fc1'" in str(err.value) and "table" not in str(err.value), str(err.value)
