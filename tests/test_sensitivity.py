"""Sensitivity analysis (sparsekit.sensitivity.analyze): what it ranks, that it changes nothing, resuming,
the table's JSON / plot / markdown, and the layers it leaves out."""

from __future__ import annotations

import copy

import pytest
import torch
from digits_split import digits, loader, single_thread, train

import sparsekit.sensitivity as sens
from examples.models import mlp, resnet_small, small_cnn
from sparsekit.errors import TargetError
from sparsekit.recipe import validate_recipe
from sparsekit.sensitivity import LayerSensitivity, Point, SensitivityTable, analyze, write_outputs

pytestmark = pytest.mark.usefixtures("one_thread")


def magnitude_auto(**extra):
    return validate_recipe(
        {"pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.9, "schedule": "oneshot", **extra}]}
    )


@pytest.fixture(scope="module")
def bottleneck():
    """A digits MLP whose first layer is a 6-unit bottleneck (64 -> 6 -> 128 -> 10): every one of its 384
    weights carries information the rest of the network cannot recover, while the 128-wide layers are
    redundant, so pruning fc1 alone hurts most."""
    train_ds, val_ds, _ = digits()
    torch.manual_seed(0)
    with single_thread():
        return train(mlp(in_features=64, hidden=[6, 128]), train_ds, epochs=10), val_ds


def test_the_bottleneck_ranks_first_and_the_model_is_untouched(bottleneck):
    model, val_ds = bottleneck
    model.train()  # its mode must come back too
    before = copy.deepcopy(model.state_dict())
    params = [p.data_ptr() for p in model.parameters()]
    table = analyze(model, magnitude_auto(), loader(val_ds), input_shape=[1, 64])

    ranking = [r.name for r in table.ranking()]
    assert ranking[0] == "fc1", [(r.name, r.score()) for r in table.ranking()]
    assert table.layer("fc1").score() > 1.3 * table.layer("fc3").score()
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.data_ptr() for p in model.parameters()] == params  # restored in place, same parameter objects

    # Every probe: exact per-layer zero counts (round(s * n)), drops measured from the dense model.
    assert table.complete() and table.probes_total() == 3 * len(sens.GRID_UNSTRUCTURED)
    fc1 = table.layer("fc1")
    assert fc1.params == 384 and fc1.kind == "unstructured" and fc1.type == "Linear"
    for p in fc1.points:
        assert p.achieved == round(p.value * 384) / 384
        assert p.loss_increase == pytest.approx(p.loss - table.dense_loss)
        assert p.accuracy_drop == pytest.approx(table.dense_accuracy - p.accuracy)
    # Sparser is worse at the extreme: the curves are measurements, not constants.
    assert fc1.point(0.98).loss_increase > fc1.point(0.3).loss_increase
    assert sum(r.macs_share for r in table.layers) == pytest.approx(1.0)


def test_score_is_the_mean_loss_increase_over_the_probed_range():
    row = LayerSensitivity(
        name="a", entry=0, method="magnitude", kind="unstructured", type="Linear", params=10, macs=10, macs_share=1.0
    )
    assert row.score() == 0.0
    row.points = [
        Point(value=v, accuracy=0.0, loss=0.0, accuracy_drop=0.0, loss_increase=d, achieved=v)
        for v, d in [(0.5, 1.0), (1.0 - 1e-9, 3.0)]
    ]
    # trapezoids from (0, 0): 0.5 * (0 + 1) / 2 + 0.5 * (1 + 3) / 2 = 1.25 over a width of 1
    assert row.score() == pytest.approx(1.25, rel=1e-6)
    row.points[0].loss_increase = -2.0  # pruning that helped counts as no increase
    assert row.score() == pytest.approx(0.75, rel=1e-6)


def test_resume_skips_the_probes_already_done(bottleneck, monkeypatch):
    model, val_ds = bottleneck
    val = loader(val_ds)
    recipe = magnitude_auto()
    grid = {"unstructured": [0.5, 0.8, 0.95]}
    full = analyze(model, recipe, val, grid=grid, input_shape=[1, 64])

    real = sens.evaluate
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sens, "evaluate", counting)
    saved = {}

    def stop_after_four(probe):
        assert probe.total == 9 and probe.point is not None
        if probe.done == 4:
            saved["table"] = SensitivityTable.from_json(probe.table.to_json())  # what a caller would save
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyze(model, recipe, val, grid=grid, input_shape=[1, 64], progress=stop_after_four)
    assert len(calls) == 1 + 4  # dense, then four probes
    partial = saved["table"]
    assert partial.probes_done() == 4 and not partial.complete()

    calls.clear()
    seen = []
    resumed = analyze(model, recipe, val, grid=grid, input_shape=[1, 64], resume_from=partial, progress=seen.append)
    assert len(calls) == 9 - 4  # neither the dense model nor the done probes again
    assert [p.done for p in seen] == [5, 6, 7, 8, 9]
    assert resumed.complete()
    assert resumed.model_dump() == full.model_dump()

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc1.weight.mul_(0.5)
    with pytest.raises(TargetError, match="another setup .*weights differ"):
        analyze(other, recipe, val, grid=grid, input_shape=[1, 64], resume_from=partial)


def test_table_round_trips_and_writes_json_plot_and_markdown(bottleneck, tmp_path):
    model, val_ds = bottleneck
    table = analyze(model, magnitude_auto(), loader(val_ds), grid={"unstructured": [0.5, 0.9]}, max_batches=2)
    assert table.val_samples == 128 and table.max_batches == 2 and table.input_shape == [1, 64]
    again = SensitivityTable.from_json(table.to_json())
    assert again == table and [r.name for r in again.ranking()] == [r.name for r in table.ranking()]

    paths = write_outputs(table, tmp_path / "out")
    assert {k: p.name for k, p in paths.items()} == {
        "json": "sensitivity.json",
        "plot": "sensitivity.png",
        "markdown": "sensitivity.md",
    }
    assert SensitivityTable.load(paths["json"]) == table
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "| 1 | " + table.ranking()[0].name + " |" in md and "nats" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "sensitivity.json",
        "sensitivity.md",
        "sensitivity.png",
    ]
    with pytest.raises(Exception, match="sensitivity table"):
        SensitivityTable.from_json('{"format": "other"}')


def test_structured_probes_group_roots_and_say_why_layers_are_left_out():
    torch.manual_seed(0)
    model = resnet_small(image_size=8, width=4).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(64, 1, 8, 8)
    val = [(x, model(x).argmax(1))]  # labels the dense model gets right: accuracy 1.0
    recipe = validate_recipe(
        {
            "model": {"input_shape": [1, 1, 8, 8]},
            "pruning": [{"method": "structured", "ratio": "auto", "target_macs": 0.5, "importance": "taylor"}],
        }
    )
    table = analyze(model, recipe, val, grid={"structured": [0.25, 0.5, 0.75]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert table.dense_accuracy == 1.0
    rows = {r.name: r for r in table.layers}
    assert "conv1" in rows and rows["conv1"].coupled == ["layer1.conv2"]  # the residual add couples them
    left = {r.name: r.reason for r in table.left_out}
    assert "classifier head" in left["fc"]
    assert "go with those of 'conv1'" in left["layer1.conv2"]
    for row in rows.values():
        assert row.kind == "structured" and row.channels and 0 < row.macs_share <= 1
        for p in row.points:
            assert p.accuracy <= 1.0 and p.achieved > 0
        # 4-channel layers: 0.75 keeps one channel, fine; nothing is probed past emptying a layer
        assert len(row.points) + len(row.errors) == 3


def test_nothing_to_analyse_and_bad_grids_are_refused(bottleneck):
    model, val_ds = bottleneck
    l1 = validate_recipe({"pruning": [{"method": "l1", "strength": 1e-4}]})
    with pytest.raises(TargetError, match="no magnitude, gradient or structured entry"):
        analyze(model, l1, loader(val_ds))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        analyze(model, magnitude_auto(), loader(val_ds), grid={"unstructured": [0.5, 1.0]})
    with pytest.raises(ValueError, match="unknown kind"):
        analyze(model, magnitude_auto(), loader(val_ds), grid={"channels": [0.5]})


def test_small_cnn_structured_table_lists_the_head_as_not_analysed():
    torch.manual_seed(0)
    model = small_cnn(image_size=8, width=4).eval()
    x = torch.randn(32, 1, 8, 8)
    val = [(x, model(x).argmax(1))]
    recipe = validate_recipe(
        {"model": {"input_shape": [1, 1, 8, 8]}, "pruning": [{"method": "structured", "ratio": 0.5}]}
    )
    table = analyze(model, recipe, val, grid={"structured": [0.5]})
    assert [r.name for r in table.layers] == ["conv1", "conv2", "conv3", "fc1"]
    assert [r.name for r in table.left_out] == ["fc2"]
    assert table.model_macs == sum(sens.layer_macs(model, [1, 1, 8, 8]).values())
