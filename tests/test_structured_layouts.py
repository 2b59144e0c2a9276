"""Structured pruning on layouts torch-pruning models badly or not at all (issue 10, items 1 and 2):
every one either prunes to a model whose forward pass works with every layer at or above its floor,
or is refused with a TargetError naming the layer, the operation and the ``ignore`` remedy. No
torch-pruning exception escapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from examples.models import resnet_small, small_cnn
from sparsekit import tp_adapter as tpa
from sparsekit.errors import TargetError
from sparsekit.rehearsal import rehearse
from sparsekit.surgery import replay_history

IMG = [1, 1, 8, 8]


class ViewConvT(nn.Module):
    """``Linear(16, 128)`` → ``view(N, 8, 4, 4)`` → ``ConvTranspose2d(8, 4, 3)``: 16 Linear outputs make one
    input channel of the ConvTranspose2d. ``fixed``: the view spells out 8 channels (as the issue's
    model does); otherwise ``view(N, -1, 4, 4)`` follows the Linear's width."""

    def __init__(self, fixed: bool = True) -> None:
        super().__init__()
        self.fixed = fixed
        self.fc = nn.Linear(16, 128)
        self.up = nn.ConvTranspose2d(8, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(x))
        x = x.view(x.shape[0], 8, 4, 4) if self.fixed else x.view(x.shape[0], -1, 4, 4)
        x = F.relu(self.up(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ChunkGate(nn.Module):
    """A conv whose output is split with ``chunk(2, dim=1)`` into a value and a sigmoid gate, multiplied."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.conv(x).chunk(2, dim=1)
        x = F.relu(self.conv2(value * torch.sigmoid(gate)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DepthwiseX2(nn.Module):
    """A depthwise conv with channel multiplier 2: ``Conv2d(8, 16, 3, groups=8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.dw(F.relu(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Glu(nn.Module):
    """A conv followed by ``F.glu(x, dim=1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.glu(self.conv(x), dim=1)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def recipe(shape: list[int], **method: object) -> sparsekit.Recipe:
    # Exact channel counts: these tests check removal itself; alignment (default round_to 8) is test_round_to's.
    spec = {"method": "structured", "ratio": 0.5, "importance": "l2", "round_to": 1, "schedule": "oneshot", **method}
    return sparsekit.Recipe(model={"input_shape": shape}, pruning=[spec])


def layer_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    kinds = (nn.Linear, nn.modules.conv._ConvNd)
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, kinds)}


def assert_runs_and_no_layer_is_empty(model: nn.Module, shape: list[int], floor: int = 1) -> None:
    assert model.eval()(torch.randn(3, *shape[1:])).shape == (3, 10)
    for name, w in layer_shapes(model).items():
        assert min(w[:2]) >= floor, (name, w)


# ----------------------------------------------------------------------------- item 1: emptied layers


def test_fixed_view_into_conv_transpose_is_refused_naming_the_layer_never_a_crash():
    pruner = sparsekit.Pruner(ViewConvT(fixed=True), recipe([1, 16]), steps_per_epoch=1)
    with pytest.raises(TargetError, match=r"forward pass.*'fc'.*ignore"):
        pruner.finalize()  # the real run stops with a TargetError, not a RuntimeError in the next forward
    with pytest.raises(TargetError) as info:
        rehearse(ViewConvT(fixed=True), recipe([1, 16]), [1, 16], steps_per_epoch=1)
    message = str(info.value)
    assert "removing output channels of 'fc'" in message and "view/reshape" in message
    assert "add 'fc' to pruning[0].ignore" in message
    # The remedy works: with fc's outputs kept, the rest prunes and rehearses.
    done = rehearse(ViewConvT(fixed=True), recipe([1, 16], ignore=["fc", "head"]), [1, 16], 1)
    assert done.events == 1 and done.parity["ok"]


def test_view_into_conv_transpose_removes_whole_blocks_and_keeps_every_layer():
    torch.manual_seed(0)
    final = sparsekit.Pruner(ViewConvT(fixed=False), recipe([1, 16]), steps_per_epoch=1).finalize()
    # 64 Linear outputs asked = 4 blocks of 16 = 4 of the ConvTranspose2d's 8 inputs (not all 128 / all 8).
    assert final.fc.out_features == 64 and final.up.in_channels == final.up.weight.shape[0] == 4
    assert_runs_and_no_layer_is_empty(final, [1, 16])


def test_view_floor_is_counted_on_the_coupled_layer_and_reported():
    torch.manual_seed(0)
    pruner = sparsekit.Pruner(ViewConvT(fixed=False), recipe([1, 16], min_channels=7), steps_per_epoch=1)
    final = pruner.finalize()
    assert final.up.in_channels == 7 and final.fc.out_features == 112  # one block: up keeps its floor of 7
    assert_runs_and_no_layer_is_empty(final, [1, 16])
    rows = pruner.methods[0].report()["per_layer"]
    assert rows["fc"]["asked"] == 0.5 and rows["fc"]["achieved"] == pytest.approx(16 / 128)
    assert rows["fc"]["reason"] == "floor min_channels of 'up' (input channels)"
    assert rows["up"] == {"asked": 0.5, "achieved": 0.0, "reason": "floor min_channels"}  # 4 channels < 7


def test_chunk_into_a_sigmoid_gate_prunes_value_and_gate_together():
    torch.manual_seed(0)
    model = ChunkGate()
    pruner = sparsekit.Pruner(model, recipe(IMG), steps_per_epoch=1)
    final = pruner.finalize()
    # Half of the 16: 4 value channels and their 4 gates; conv2 loses the 4 products.
    assert final.conv.out_channels == 8 and final.conv2.in_channels == 4
    assert_runs_and_no_layer_is_empty(final, IMG)
    rows = pruner.methods[0].report()["per_layer"]
    assert rows["conv"] == {"asked": 0.5, "achieved": 0.5, "reason": None}
    # The recorded history rebuilds the same shapes on a fresh model (checkpoint replay).
    fresh = replay_history(ChunkGate(), pruner.pruning_history, IMG)
    assert layer_shapes(fresh) == layer_shapes(final)


def test_chunk_gate_with_a_ratio_below_one_pair_is_reported_not_emptied():
    # 16 channels, ratio 0.0625: one channel asked, but a channel goes with its gate partner (2).
    pruner = sparsekit.Pruner(ChunkGate(), recipe(IMG, ratio=0.0625, ignore=["head", "conv2"]), steps_per_epoch=1)
    final = pruner.finalize()
    assert final.conv.out_channels == 16
    reason = pruner.methods[0].report()["per_layer"]["conv"]["reason"]
    assert reason is not None and "split/chunk" in reason and "blocks of 2" in reason


# ----------------------------------------------------------------------------- item 2: refused up front


def test_depthwise_multiplier_two_is_refused_when_the_pruner_is_built():
    with pytest.raises(TargetError) as info:
        sparsekit.Pruner(DepthwiseX2(), recipe(IMG), steps_per_epoch=1)
    message = str(info.value)
    for needle in ("'stem'", "'dw'", "depthwise multiplier 2", "add 'stem' to pruning[0].ignore", "'head'"):
        assert needle in message, (needle, message)
    # Keeping stem's outputs, the depthwise conv itself loses one output per group and stays valid.
    final = sparsekit.Pruner(DepthwiseX2(), recipe(IMG, ignore=["stem", "head"]), steps_per_epoch=1).finalize()
    assert final.dw.out_channels == 8 and final.dw.groups == 8
    assert_runs_and_no_layer_is_empty(final, IMG)


def test_glu_on_channels_is_refused_naming_the_operation():
    with pytest.raises(TargetError, match=r"'conv'.*F\.glu.*channel split feeding a gate.*ignore"):
        sparsekit.Pruner(Glu(), recipe(IMG), steps_per_epoch=1)
    with pytest.raises(TargetError, match="channel split feeding a gate"):
        rehearse(Glu(), recipe(IMG), IMG, steps_per_epoch=1)
    sparsekit.Pruner(Glu(), recipe(IMG, ignore=["conv", "head"]), steps_per_epoch=1).finalize()


# ----------------------------------------------------------------------------- torch-pruning failures


def test_a_torch_pruning_exception_during_removal_becomes_a_target_error(monkeypatch):
    def broken(group: object, **kw: object) -> None:
        raise IndexError("index 8 is out of bounds for dimension 0 with size 8")

    monkeypatch.setattr(tpa, "prune", broken)
    pruner = sparsekit.Pruner(small_cnn(width=8, image_size=8), recipe(IMG), steps_per_epoch=1)
    with pytest.raises(
        TargetError, match=r"torch-pruning failed removing channels for '(conv|fc)\d' \(IndexError.*ignore"
    ):
        pruner.finalize()
    with pytest.raises(TargetError, match="IndexError"):
        rehearse(small_cnn(width=8, image_size=8), recipe(IMG), IMG, steps_per_epoch=1)


def test_a_torch_pruning_exception_while_ranking_becomes_a_target_error(monkeypatch):
    def broken(self: object, group: object) -> None:
        raise IndexError("index 1 is out of bounds for dimension 0 with size 1")

    monkeypatch.setattr(tpa.ChannelPruner, "estimate", broken)
    pruner = sparsekit.Pruner(small_cnn(width=8, image_size=8), recipe(IMG), steps_per_epoch=1)
    with pytest.raises(TargetError, match=r"ranking the channels for '(conv|fc)\d'.*IndexError.*ignore"):
        pruner.finalize()


def test_a_model_torch_pruning_cannot_trace_is_a_target_error(monkeypatch):
    def broken(model: object, example_inputs: object) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(tpa, "dependency_graph", broken)
    with pytest.raises(TargetError, match="cannot trace the model.*unsupported operator"):
        sparsekit.Pruner(small_cnn(width=8, image_size=8), recipe(IMG), steps_per_epoch=1)


# ----------------------------------------------------------------------------- asked vs achieved


def test_report_gives_asked_and_achieved_per_layer_and_for_the_method():
    torch.manual_seed(0)
    pruner = sparsekit.Pruner(small_cnn(width=8, image_size=8), recipe(IMG, min_channels=6), steps_per_epoch=1)
    pruner.finalize()
    report = pruner.methods[0].report()
    rows = report["per_layer"]
    assert set(rows) == {"conv1", "conv2", "conv3", "fc1"}
    assert rows["conv1"] == {"asked": 0.5, "achieved": 0.25, "reason": "floor min_channels"}  # 8 -> 6
    assert rows["conv2"] == {"asked": 0.5, "achieved": 0.5, "reason": None}
    assert report["at_floor"] == ["conv1"] and report["asked"] == 0.5
    assert report["achieved"] == pytest.approx(1 - (6 + 8 + 16 + 64) / (8 + 16 + 32 + 128))


def test_report_names_a_layer_coupled_to_an_ignored_one():
    torch.manual_seed(0)
    model = resnet_small(width=8, image_size=8)
    pruner = sparsekit.Pruner(model, recipe(IMG, ignore=["fc", "conv1"]), steps_per_epoch=1)
    final = pruner.finalize()
    rows = pruner.methods[0].report()["per_layer"]
    assert final.layer1.conv2.out_channels == 8  # added to conv1's output by the residual
    assert rows["layer1.conv2"]["achieved"] == 0.0
    assert rows["layer1.conv2"]["reason"] == "coupled to ignored layer 'conv1'"
    assert rows["layer1.conv1"]["reason"] is None and rows["layer1.conv1"]["achieved"] == 0.5


def test_global_scope_explains_uneven_layers():
    torch.manual_seed(0)
    pruner = sparsekit.Pruner(small_cnn(width=8, image_size=8), recipe(IMG, scope="global"), steps_per_epoch=1)
    pruner.finalize()
    report = pruner.methods[0].report()
    assert report["achieved"] == pytest.approx(0.5, abs=0.01)
    for name, row in report["per_layer"].items():
        initial = report["channels"][name][0]
        uneven = abs(row["achieved"] - row["asked"]) * initial > 1 - 1e-6  # beyond rounding: a whole channel
        assert (row["reason"] == "global ranking") == uneven, (name, row)
    assert any(row["reason"] for row in report["per_layer"].values())


# ----------------------------------------------------------------------------- tied through the forward


class TiedTransposed(nn.Module):
    """The decoder reuses the encoder's weights transposed: the tie lives in the forward pass only."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Linear(16, 12)
        self.enc2 = nn.Linear(12, 6)
        self.dec_bias = nn.Parameter(torch.zeros(12))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.enc2(F.relu(self.enc1(x))))
        h = F.relu(F.linear(z, self.enc2.weight.t(), self.dec_bias))
        return self.head(F.linear(h, self.enc1.weight.t()))


def test_weights_reused_outside_their_layer_are_refused_up_front():
    with pytest.raises(TargetError) as info:
        sparsekit.Pruner(TiedTransposed(), recipe([1, 16]), steps_per_epoch=1)
    message = str(info.value)
    assert "'enc1.weight'" in message and "'enc2.weight'" in message and "tied weights" in message
    assert "add 'enc1', 'enc2' to pruning[0].ignore" in message
