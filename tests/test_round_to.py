"""``structured.round_to``: kept channel counts aligned to a multiple (onnxruntime's CPU kernels), and the
report saying when the alignment moved a layer away from its ratio."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from examples.models import resnet_small, small_cnn
from sparsekit.errors import RecipeError
from sparsekit.tp_adapter import aligned_keep

IMG = [1, 1, 8, 8]


def recipe(epochs: int = 0, **method) -> sparsekit.Recipe:
    spec = {"method": "structured", "ratio": 0.3, "importance": "l2", "schedule": "oneshot", **method}
    return sparsekit.Recipe(**{"model": {"input_shape": IMG}, "finetune": {"epochs": epochs}, "pruning": [spec]})


def prune(model: nn.Module, **method) -> tuple[nn.Module, sparsekit.Pruner]:
    pruner = sparsekit.Pruner(model, recipe(**method), steps_per_epoch=1)
    return pruner.finalize(), pruner


def outs(model: nn.Module) -> dict[str, int]:
    return {
        n: int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


@pytest.mark.parametrize(
    ("channels", "keep", "round_to", "floor", "blocks", "expected"),
    [
        (32, 22, 8, 1, 1, 24),  # the nearest multiple (torch-pruning rounds down, to 16)
        (20, 14, 8, 1, 1, 16),  # not 8: 60% removed for 30% asked
        (64, 44, 8, 1, 1, 48),  # a tie keeps more
        (32, 22, 16, 1, 1, 16),  # 32 would remove nothing
        (128, 89, 8, 1, 1, 88),
        (64, 48, 16, 1, 1, 48),  # already a multiple
        (32, 22, None, 1, 1, 22),  # off
        (32, 22, 1, 1, 1, 22),
        (6, 3, 8, 1, 1, 3),  # narrower than round_to: any count
        (32, 9, 16, 1, 1, 16),  # down would be 0: up to the first multiple at or above the floor
        (32, 9, 8, 12, 1, 16),  # down (8) is below min_channels 12: up to 16
        (16, 4, 16, 1, 1, 8),  # narrower than twice round_to: a multiple of half of it
        (24, 17, 16, 1, 1, 16),  # 16-31 channels align to 8 under the default 16
        (20, 14, 16, 1, 1, 16),
        (12, 5, 16, 1, 1, 5),  # narrower than twice the half too: any count
        (15, 7, 8, 1, 1, 8),  # 8-15 channels align to 4 under round_to 8
        (7, 3, 8, 1, 1, 3),
        (16, 7, 8, 1, 1, 8),  # twice round_to: aligned
        (16, 4, 8, 12, 1, 16),  # the floor's multiple is the width: nothing removed
        (32, 0, 8, 1, 1, 8),  # everything asked: the floor's multiple
        (32, 24, 8, 1, 4, 24),  # grouped conv (4 blocks of 8): 24 is a multiple of both
        (48, 36, 8, 1, 3, 48),  # 3 blocks: multiples of 24; a tie with the whole width keeps it
        (48, 30, 8, 1, 3, 24),
        (20, 19, 8, 1, 1, 20),  # the whole width is nearer than 16: nothing removed
        (16, 13, 8, 1, 1, 16),
        (12, 6, 8, 1, 3, 6),  # narrower than one multiple of both (24): any count
    ],
)
def test_aligned_keep(channels, keep, round_to, floor, blocks, expected):
    assert aligned_keep(channels, keep, round_to, floor, blocks) == expected


def test_schema_default_is_16_and_values_are_checked():
    spec = recipe().pruning[0]
    assert spec.round_to == 16  # measured: benchmarks/structured_latency.py
    assert recipe(round_to=None).pruning[0].round_to is None
    assert recipe(round_to=8).pruning[0].round_to == 8
    for bad in (0, -8, 2.5, "eight"):
        with pytest.raises(RecipeError, match="round_to"):
            recipe(round_to=bad)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_kept_channels_are_multiples_where_a_layer_was_pruned(ratio, scope):
    torch.manual_seed(0)
    dense = small_cnn(width=16, image_size=8)  # 16 / 32 / 64 / fc1 128, head fc2
    before = outs(dense)
    final, pruner = prune(dense, ratio=ratio, scope=scope, round_to=8)
    after = outs(final)
    assert after["fc2"] == 10  # the head keeps its outputs
    pruned = [n for n in before if n != "fc2" and after[n] < before[n]]
    assert pruned, after
    assert all(after[n] % 8 == 0 for n in pruned), after
    assert final(torch.randn(2, *IMG[1:])).shape == (2, 10)
    report = pruner.methods[0].report()
    for name, row in report["per_layer"].items():
        initial, now = report["channels"][name]
        assert row["achieved"] == pytest.approx(1 - now / initial)  # achieved is what the model has
        if abs((initial - now) - row["asked"] * initial) >= 1:
            assert row["reason"], (name, row)
        if scope == "global" and row["reason"] and "round_to" in row["reason"]:
            assert row["reason"].startswith("global ranking; round_to 8: keeps "), row


def test_uneven_counts_without_round_to_and_the_reason_with_it():
    torch.manual_seed(0)
    plain, _ = prune(small_cnn(width=16, image_size=8), ratio=0.3, round_to=None)
    # the nearest counts of 0.7 of 16/32/64/128 (11.2, 22.4, 44.8, 89.6); torch-pruning truncates to 44 and 89
    assert [outs(plain)[n] for n in ("conv1", "conv2", "conv3", "fc1")] == [11, 22, 45, 90]
    torch.manual_seed(0)
    final, pruner = prune(small_cnn(width=16, image_size=8), ratio=0.3)  # the default, 16
    assert [outs(final)[n] for n in ("conv1", "conv2", "conv3", "fc1")] == [8, 16, 48, 96]
    rows = pruner.methods[0].report()["per_layer"]
    assert rows["conv2"]["asked"] == pytest.approx(0.3) and rows["conv2"]["achieved"] == pytest.approx(0.5)
    assert rows["conv2"]["reason"] == "round_to 16: keeps 16 of 32 channels, 22 rounded to the nearest multiple of 16"
    assert rows["fc1"]["reason"] == "round_to 16: keeps 96 of 128 channels, 90 rounded to the nearest multiple of 16"
    assert rows["conv1"]["reason"] == (
        "round_to 16: keeps 8 of 16 channels, 11 rounded to the nearest multiple of 8 (half of round_to: the layer "
        "is narrower than 32)"
    )


def test_a_ratio_rounding_cannot_honour_is_reported_with_a_reason():
    torch.manual_seed(0)
    # resnet_small width 16: the stem group (conv1 + layer1, joined by the residual add) has 16 channels;
    # 30% asks to keep 11, min_channels 9 rules out 8, and the next multiple of 8 is the whole width.
    final, pruner = prune(resnet_small(width=16, image_size=8), ratio=0.3, round_to=8, min_channels=9)
    shapes = outs(final)
    assert shapes["conv1"] == shapes["layer1.conv2"] == 16
    assert shapes["layer2.conv1"] == shapes["layer2.shortcut.0"] == 24 and shapes["layer3.conv1"] == 48
    rows = pruner.methods[0].report()["per_layer"]
    assert rows["conv1"]["asked"] == pytest.approx(0.3) and rows["conv1"]["achieved"] == 0.0
    assert rows["conv1"]["reason"] == (
        "round_to 8: keeps all 16 channels instead of 11: no multiple of 8 below 16 is at or above min_channels 9"
    )
    # a layer whose outputs go with the stem's says so, and why
    assert rows["layer1.conv2"]["reason"] == f"coupled to 'conv1' ({rows['conv1']['reason']})"


def test_min_channels_is_respected_by_rounding_up():
    torch.manual_seed(0)
    final, pruner = prune(small_cnn(width=16, image_size=8), ratio=0.7, round_to=8, min_channels=12)
    shapes = outs(final)
    # conv1 16 -> 5 asked, floored at 12, aligned up to 16: kept whole; conv2 32 -> 10 -> 16; conv3 64 -> 19 -> 16;
    # fc1 128 -> 38 -> 40 (the nearest multiple)
    assert [shapes[n] for n in ("conv1", "conv2", "conv3", "fc1")] == [16, 16, 16, 40]
    rows = pruner.methods[0].report()["per_layer"]
    assert rows["conv2"]["reason"] == (
        "round_to 8: keeps 16 of 32 channels, up from 10 to the first multiple of 8 at or above min_channels 12"
    )
    assert rows["conv1"]["reason"].startswith(
        "round_to 8: keeps all 16 channels instead of 5: no multiple of 8 below 16"
    )


def test_layer_ratio_layers_keep_their_exact_counts():
    torch.manual_seed(0)
    final, pruner = prune(small_cnn(width=16, image_size=8), ratio=0.3, round_to=8, layer_ratio={"conv2": 0.3})
    shapes = outs(final)
    assert shapes["conv2"] == 22  # int(32 * 0.7): the fraction is a count, not rounded
    assert shapes["conv1"] == 8 and shapes["conv3"] == 48  # the others follow ratio, aligned (44 -> 48)
    assert pruner.methods[0].report()["per_layer"]["conv2"]["reason"] is None


def test_every_iterative_event_keeps_multiples_and_a_resumed_run_matches():
    def run(interrupt: bool) -> tuple[nn.Module, list, list[list[int]], dict]:
        torch.manual_seed(0)
        model = small_cnn(width=16, image_size=8)
        r = recipe(epochs=3, ratio=0.5, steps=3, round_to=8, schedule={"start_epoch": 0, "end_epoch": 3})
        pruner = sparsekit.Pruner(model, r, steps_per_epoch=2)  # events at steps 0, 2 and 4
        sizes = []
        for step in range(4):
            if interrupt and step == 2:
                state, weights = pruner.state_dict(), model.state_dict()
                model = small_cnn(width=16, image_size=8)
                pruner = sparsekit.Pruner(model, r, steps_per_epoch=2)
                pruner.load_state_dict(state)  # replays the removed channels, so the weights fit
                model.load_state_dict(weights)
            pruner.step()
            sizes.append([outs(model)[n] for n in ("conv1", "conv2", "conv3", "fc1")])
        return pruner.finalize(), pruner.pruning_history, sizes, pruner.methods[0].report()["per_layer"]

    final, history, sizes, rows = run(False)
    # ratio 1/6, 1/3, 1/2 of 16 / 32 / 64 / 128: int() keeps 13/26/53/106 (nearest aligned counts 16 (the
    # whole width)/24/56/104), 10/21/42/85 (8, then 24: conv2 keeps its 24 rather than rounding down to 16,
    # so steps do not compound; 40; 88), then exactly half, 8/16/32/64
    assert sizes == [[16, 24, 56, 104], [8, 24, 40, 88], [8, 24, 40, 88], [8, 16, 32, 64]]
    assert all(c % 8 == 0 for row in sizes for c in row)
    resumed, resumed_history, resumed_sizes, resumed_rows = run(True)
    assert outs(resumed) == outs(final) and resumed_history == history and resumed_sizes == sizes
    assert resumed_rows == rows


def test_reasons_name_the_multiple_a_grouped_or_narrow_layer_kept():
    from sparsekit.methods.structured import _rounding_reason
    from sparsekit.tp_adapter import _rounding

    wide = _rounding_reason(_rounding(96, 66, 48, 16, 1, 3))  # 3 blocks: multiples of 48
    assert wide.endswith(
        "rounded to the nearest multiple of 48 (round_to and the layer's channel groups: a grouped conv, a GroupNorm "
        "or attention's heads lose channels evenly from each)"
    ), wide
    narrow = _rounding_reason(_rounding(48, 33, 24, 16, 1, 3))  # narrower than 96: multiples of 24
    assert narrow.endswith("multiple of 24 (half of round_to: the layer is narrower than 96)"), narrow


def test_a_reason_from_a_later_removal_step_says_the_width_it_rounded():
    # "keeps all 48 channels instead of 44: the full width is the nearest aligned count" of a 64-channel layer: 48
    # was its width at the second of two removal steps, not its own.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3))
    spec = {
        "method": "structured",
        "ratio": 0.3,
        "steps": 2,
        "ignore": ["2"],
        "schedule": {"start_epoch": 0, "end_epoch": 1},
    }
    r = sparsekit.Recipe(model={"input_shape": [1, 8]}, finetune={"epochs": 2}, pruning=[spec])
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=1)
    for _ in range(2):
        pruner.step()
    assert pruner.model[0].out_features == 48  # 54 -> 48 at step 1; 45 asked of 48 at step 2 keeps all 48
    reason = pruner.methods[0].report()["per_layer"]["0"]["reason"]
    assert reason == (
        "round_to 16, at removal step 2 of 2 with 48 channels left: keeps all 48 channels instead of 45: 48 is the "
        "nearest multiple of 16"
    )
