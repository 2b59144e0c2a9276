"""Per-layer values: `sparsity: auto` / `ratio: auto` in recipes, sparsekit.allocation.allocate, and the
methods honouring `layer_sparsity` / `layer_ratio`."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
from digits_split import digits, loader, single_thread, train

import sparsekit.allocation as alloc
import sparsekit.onnx
import sparsekit.sensitivity as sens
from examples.models import mlp, resnet_small, small_cnn
from sparsekit.errors import RecipeError, TargetError
from sparsekit.planning import allocation_lines, plan
from sparsekit.pruner import Pruner
from sparsekit.recipe import validate_recipe
from sparsekit.stats import layer_macs
from sparsekit.train import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def zeros(module) -> int:
    return int((module.weight == 0).sum())


# ----------------------------------------------------------------------------- recipe schema


@pytest.mark.parametrize(
    ("entry", "where", "needle"),
    [
        ({"method": "magnitude", "sparsity": "auto"}, "pruning[0].target", "sparsity: auto needs target"),
        ({"method": "gradient", "sparsity": 0.8, "target": 0.9}, "pruning[0].target", "only read with sparsity: auto"),
        ({"method": "magnitude", "sparsity": "auto", "target": 1.0}, "pruning[0].target", "must be < 1"),
        ({"method": "magnitude", "sparsity": "auto", "target": 0}, "pruning[0].target", "must be > 0"),
        ({"method": "magnitude", "sparsity": "automatic"}, "pruning[0].sparsity", "or 'auto'"),
        (
            {"method": "magnitude", "sparsity": "auto", "target": 0.9, "layer_sparsity": {"fc1": 0.5}},
            "pruning[0].layer_sparsity",
            "use one",
        ),
        (
            {"method": "magnitude", "sparsity": 0.5, "max_layer_sparsity": 0.9, "layer_sparsity": {"fc1": 0.95}},
            "pruning[0].layer_sparsity",
            "above max_layer_sparsity",
        ),
        (
            {"method": "magnitude", "sparsity": 0.5, "layer_sparsity": {"fc1": 1.0}},
            "pruning[0].layer_sparsity.fc1",
            "< 1",
        ),
        ({"method": "structured", "ratio": "auto"}, "pruning[0].target_macs", "target_macs"),
        (
            {"method": "structured", "ratio": "auto", "target_macs": 0.5, "target_latency": 0.5},
            "pruning[0].target_macs",
            "not both",
        ),
        ({"method": "structured", "ratio": 0.3, "target_macs": 0.5}, "pruning[0].target_macs", "ratio: auto"),
        ({"method": "structured", "ratio": 0.3, "target_latency": 0.5}, "pruning[0].target_latency", "ratio: auto"),
        ({"method": "structured", "ratio": "auto", "target_macs": 1.5}, "pruning[0].target_macs", "must be < 1"),
        (
            {"method": "structured", "ratio": "auto", "target_macs": 0.5, "layer_ratio": {"conv1": 0.5}},
            "pruning[0].layer_ratio",
            "use one",
        ),
        ({"method": "structured", "ratio": 0.2, "layer_ratio": {}}, "pruning[0].layer_ratio", "is empty"),
    ],
)
def test_bad_auto_recipes_name_the_field(entry, where, needle):
    with pytest.raises(RecipeError) as err:
        validate_recipe({"pruning": [entry]}, "r.yaml")
    assert f"r.yaml: {where}" in str(err.value) and needle in str(err.value), str(err.value)


def test_auto_recipes_validate_and_default_the_cap_from_the_target():
    r = validate_recipe(
        {
            "pruning": [
                {"method": "magnitude", "sparsity": "auto", "target": 0.99},
                {"method": "structured", "ratio": "auto", "target_latency": 0.5},
            ]
        }
    )
    assert r.pruning[0].auto and r.pruning[0].final_sparsity == 0.99 and r.pruning[0].layer_cap == 0.995
    assert r.pruning[1].auto and sens.auto_entries(r) == [0, 1]
    assert validate_recipe(r.model_dump()) == r  # the dump (with 'auto') is a valid recipe again


def test_a_pruner_refuses_unallocated_auto_entries():
    model = mlp(in_features=64, hidden=[16])
    for entry, key in (
        ({"method": "gradient", "sparsity": "auto", "target": 0.5}, "sparsity"),
        ({"method": "structured", "ratio": "auto", "target_macs": 0.5}, "ratio"),
    ):
        recipe = validate_recipe({"model": {"input_shape": [1, 64]}, "pruning": [entry]})
        with pytest.raises(RecipeError, match=rf"pruning\[0\]\.{key}: auto .*auto_allocate"):
            Pruner(model, recipe, steps_per_epoch=1)


# ----------------------------------------------------------------------------- methods honour per-layer values


def test_layer_sparsity_follows_the_schedule_per_layer_and_ends_exact():
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=[40, 30])
    values = {"fc1": 0.8, "fc2": 0.35}
    recipe = validate_recipe(
        {
            "finetune": {"epochs": 2},
            "pruning": [
                {
                    "method": "magnitude",
                    "sparsity": 0.6,
                    "scope": "layer",
                    "layer_sparsity": values,
                    "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 0.5},
                }
            ],
        }
    )
    pruner = Pruner(model, recipe, steps_per_epoch=4)
    method = pruner.methods[0]
    n = {name: getattr(model, name).weight.numel() for name in ("fc1", "fc2", "fc3")}
    for step in range(1, 9):
        pruner.step()
        frac = method.schedule.target(step) / 0.6
        for name, v in values.items():
            assert zeros(getattr(model, name)) == round(v * frac * n[name]), (step, name)
        assert zeros(model.fc3) == round(method.schedule.target(step) * n["fc3"])  # unlisted: `sparsity`
    assert method.targets(2, 4)[-1] == pytest.approx(
        (0.8 * n["fc1"] + 0.35 * n["fc2"] + 0.6 * n["fc3"]) / sum(n.values())
    )
    report = method.report()
    assert report["per_layer"]["fc1"]["asked"] == 0.8 and report["per_layer"]["fc3"]["asked"] == 0.6
    assert report["per_layer"]["fc2"]["achieved"] == round(0.35 * n["fc2"]) / n["fc2"]


def test_layer_values_must_name_layers_the_entry_prunes():
    model = resnet_small(image_size=8, width=4)
    bad = validate_recipe({"pruning": [{"method": "magnitude", "sparsity": 0.5, "layer_sparsity": {"nope": 0.5}}]})
    with pytest.raises(TargetError, match=r"pruning\[0\]\.layer_sparsity: 'nope' is not a layer this entry selects"):
        Pruner(model, bad, steps_per_epoch=1)
    coupled = validate_recipe(
        {
            "model": {"input_shape": [1, 1, 8, 8]},
            "pruning": [{"method": "structured", "ratio": 0.25, "layer_ratio": {"layer1.conv2": 0.5}}],
        }
    )
    with pytest.raises(TargetError, match="removed together with those of 'conv1'.*give the ratio to 'conv1'"):
        Pruner(model, coupled, steps_per_epoch=1)
    head = validate_recipe(
        {
            "model": {"input_shape": [1, 1, 8, 8]},
            "pruning": [{"method": "structured", "ratio": 0.25, "layer_ratio": {"fc": 0.5}}],
        }
    )
    with pytest.raises(TargetError, match="'fc' is not a layer whose output channels this entry removes"):
        Pruner(model, head, steps_per_epoch=1)


def test_layer_ratio_removes_each_listed_layers_own_share():
    torch.manual_seed(0)
    model = small_cnn(image_size=8, width=8)
    recipe = validate_recipe(
        {
            "model": {"input_shape": [1, 1, 8, 8]},
            "pruning": [
                {
                    "method": "structured",
                    "ratio": 0.25,
                    "steps": 2,
                    "round_to": 8,  # 32 channels to 24 (16 would keep all 32: its nearest multiple)
                    "layer_ratio": {"conv1": 0.0, "conv2": 0.75},
                }
            ],
        }
    )
    pruner = Pruner(model, recipe, steps_per_epoch=1)
    out = pruner.finalize()
    # conv1 kept whole, conv2 loses 12 of 16 (two events of 6), the rest 'ratio': int(n * 0.75) kept
    assert [out.conv1.out_channels, out.conv2.out_channels, out.conv3.out_channels, out.fc1.out_features] == [
        8,
        4,
        24,
        96,
    ]
    per_layer = pruner.methods[0].report()["per_layer"]
    assert per_layer["conv2"]["asked"] == 0.75 and per_layer["conv2"]["reason"] is None


# ----------------------------------------------------------------------------- allocation


@pytest.fixture(scope="module")
def digits_mlps():
    """Three digits MLPs (64 -> 128 -> 64 -> 10), one per seed, trained 8 epochs on the train split."""
    train_ds, val_ds, test_ds = digits()
    models = []
    with single_thread():
        for seed in range(3):
            torch.manual_seed(seed)
            models.append(train(mlp(in_features=64, hidden=[128, 64]), train_ds, epochs=8, seed=seed))
    return models, train_ds, val_ds, test_ds


def test_auto_sparsity_hits_the_target_exactly_and_beats_uniform(digits_mlps):
    """Allocated on the validation split, compared on the held-out test split after the same short fine-tune
    (3 epochs, gradual 0 -> 0.9 over 2), median of three seeds."""
    models, train_ds, val_ds, test_ds = digits_mlps
    sched = {"start_epoch": 0, "end_epoch": 2, "every": 0.25}
    base = {"finetune": {"epochs": 3}}
    auto = validate_recipe(
        {**base, "pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.9, "schedule": sched}]}
    )
    uniform = validate_recipe(
        {**base, "pruning": [{"method": "magnitude", "sparsity": 0.9, "scope": "layer", "schedule": sched}]}
    )
    acc = {"auto": [], "uniform": []}
    for seed, dense in enumerate(models):
        before = copy.deepcopy(dense.state_dict())
        allocated, table = alloc.auto_allocate(dense, auto, loader(val_ds), input_shape=[1, 64])
        assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
        entry = allocated.pruning[0]
        assert not entry.auto and entry.sparsity == 0.9 and entry.target is None and entry.scope == "layer"
        values = entry.layer_sparsity
        assert set(values) == {"fc1", "fc2", "fc3"} and max(values.values()) - min(values.values()) > 0.1
        assert validate_recipe(allocated.model_dump()) == allocated

        pruned = {}
        for name, recipe in (("auto", allocated), ("uniform", uniform)):
            model = copy.deepcopy(dense)
            pruner = Pruner(model, recipe, steps_per_epoch=len(loader(train_ds)))
            pruned[name] = train(model, train_ds, epochs=3, lr=1e-3, seed=seed, pruner=pruner)
            acc[name].append(evaluate(pruned[name], loader(test_ds))["accuracy"])
        layers = {n: getattr(pruned["auto"], n) for n in values}
        total = sum(m.weight.numel() for m in layers.values())
        for name, module in layers.items():
            assert zeros(module) == round(values[name] * module.weight.numel()), name
        assert sum(zeros(m) for m in layers.values()) == round(0.9 * total)
        assert sum(zeros(m) for m in layers.values()) / total == pytest.approx(0.9, abs=1 / total)
    # measured: auto ~0.92, uniform ~0.68 (the 640-weight head at 90% loses most of the classes)
    assert statistics.median(acc["auto"]) >= statistics.median(acc["uniform"]), acc
    assert statistics.median(acc["auto"]) > 0.85, acc


def test_allocation_respects_max_layer_sparsity_and_refuses_unreachable_targets(digits_mlps):
    models, _, val_ds, _ = digits_mlps
    recipe = validate_recipe(
        {"pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.8, "max_layer_sparsity": 0.85}]}
    )
    table = sens.analyze(models[0], recipe, loader(val_ds), grid={"unstructured": [0.5, 0.8, 0.95]})
    allocated = alloc.allocate(models[0], recipe, table, input_shape=[1, 64])
    assert max(allocated.pruning[0].layer_sparsity.values()) <= 0.85
    # the 10-class head can lose at most 85% of 640 weights, the rest must take the remainder
    tight = validate_recipe(
        {
            "pruning": [
                {
                    "method": "magnitude",
                    "sparsity": "auto",
                    "target": 0.8,
                    "max_layer_sparsity": 0.8,
                    "layers": {"include": ["fc3"]},
                }
            ]
        }
    )
    out = alloc.allocate(models[0], tight, table, input_shape=[1, 64])
    assert out.pruning[0].layer_sparsity == {"fc3": 0.8}
    missing = validate_recipe({"pruning": [{"method": "gradient", "sparsity": "auto", "target": 0.5}]})
    small = sens.analyze(models[0], recipe, loader(val_ds), grid={"unstructured": [0.5]}, entries=[0])
    small.layers = [r for r in small.layers if r.name != "fc2"]
    with pytest.raises(TargetError, match="no probes for layer 'fc2'"):
        alloc.allocate(models[0], missing, small, input_shape=[1, 64])


def test_auto_allocate_without_auto_entries_evaluates_nothing(monkeypatch):
    recipe = validate_recipe({"pruning": [{"method": "magnitude", "sparsity": 0.5}]})
    monkeypatch.setattr(sens, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    assert alloc.auto_allocate(mlp(), recipe, [], input_shape=[1, 64]) == (recipe, None)


def test_the_allocation_api_takes_a_recipe_as_a_dict_as_the_pruner_does():
    # The Pruner's own ratio/sparsity: auto error points users to auto_allocate; it ended in AttributeError on a dict.
    import torch

    from sparsekit.rehearsal import rehearse

    torch.manual_seed(0)
    spec = {"pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.5}]}
    data = [(torch.randn(16, 64), torch.randint(0, 10, (16,))) for _ in range(2)]
    allocated, table = alloc.auto_allocate(mlp(), spec, data, input_shape=[1, 64], grid={"unstructured": [0.5]})
    assert table is not None and allocated.pruning[0].layer_sparsity
    assert alloc.allocate(mlp(), spec, table, input_shape=[1, 64]) == allocated
    assert sens.analyze(mlp(), spec, data, grid={"unstructured": [0.5]}, input_shape=[1, 64]).layers
    plain = {"pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    assert rehearse(mlp(), plain, [1, 64], 2, export=False).events == 0
    with pytest.raises(RecipeError, match=r"pruning\[0\]\.sparsity"):
        alloc.auto_allocate(mlp(), {"pruning": [{"method": "magnitude", "sparsity": 2}]}, data)


def test_allocation_builds_on_sensitivity_and_not_the_other_way_round():
    import ast
    import inspect

    import sparsekit

    assert sparsekit.allocation.auto_allocate is alloc.auto_allocate  # reachable after `import sparsekit`
    tree = ast.parse(inspect.getsource(sens))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "allocation" not in imported and not any(hasattr(sens, n) for n in alloc.__all__)


@pytest.fixture(scope="module")
def digits_cnn():
    train_ds, val_ds, _ = digits(image=True)
    torch.manual_seed(0)
    with single_thread():
        return train(small_cnn(image_size=8, width=16), train_ds, epochs=3), val_ds


@pytest.mark.parametrize("round_to", [None, 16])
def test_auto_ratio_reaches_the_macs_target(digits_cnn, round_to):
    model, val_ds = digits_cnn
    shape = [1, 1, 8, 8]
    entry = {"method": "structured", "ratio": "auto", "target_macs": 0.5, "round_to": round_to}
    recipe = validate_recipe({"model": {"input_shape": shape}, "pruning": [entry]})
    table = sens.analyze(model, recipe, loader(val_ds), grid={"structured": [0.2, 0.4, 0.6, 0.7]})
    allocated, details = alloc.allocate_with_details(model, recipe, table, input_shape=shape)
    entry = allocated.pruning[0]
    assert not entry.auto and entry.target_macs is None and entry.scope == "layer"
    assert set(entry.layer_ratio) == {"conv1", "conv2", "conv3", "fc1"}  # every group root; the head is kept
    assert len(set(entry.layer_ratio.values())) > 1
    info = details[0]
    assert info.target == {"macs": 0.5} and info.predicted_loss_increase <= info.uniform_loss_increase

    dense_macs = sum(layer_macs(model, shape).values())
    pruned = Pruner(copy.deepcopy(model), allocated, steps_per_epoch=1).finalize()
    reached = sum(layer_macs(pruned, shape).values()) / dense_macs
    assert reached == pytest.approx(info.reached["macs"])
    # At or below the target: with round_to null a channel is the smallest step, so just below it; with
    # round_to 16 a block of 16 channels (8 in groups of 16-31), at most MACS_ALIGN_SLACK below (else exact).
    assert (0.47 if round_to is None else 0.5 - alloc.MACS_ALIGN_SLACK) <= reached <= 0.5, reached
    assert details[0].note is None
    for name, ratio in entry.layer_ratio.items():
        module = getattr(pruned, name)
        kept = module.out_features if name == "fc1" else module.out_channels
        initial = 128 if name == "fc1" else getattr(model, name).out_channels
        assert initial - kept == round(ratio * initial), name
        if round_to:  # the kept counts are whole blocks, as a ratio entry's are: onnxruntime runs them fast
            assert kept == initial or kept % (16 if initial > 16 else 8) == 0, (name, kept)

    # the remedies are ones a recipe can take (a grid of ratios to analyse was named, which no recipe field sets)
    with pytest.raises(TargetError, match=r"pruning\[0\]\.target_macs: cannot be reached.*give a fixed ratio"):
        alloc.allocate(
            model, recipe.model_copy(update={"pruning": [recipe.pruning[0].model_copy(update={"target_macs": 0.01})]}),
            table, input_shape=shape,
        )  # fmt: skip


def test_target_latency_is_turned_into_a_macs_target_from_a_timed_sweep(digits_cnn, monkeypatch):
    """The exports are real; the timings are replaced by fixed ratios so the conversion is checked exactly:
    latency ratios 1, 0.8, 0.6, 0.5 at uniform ratios 0, 0.25, 0.5, 0.75 -> 0.7 lies halfway between the
    first two sweep points, so the MACs target is halfway between their MACs. The allocation is timed once
    more (0.71: within 0.02 of the target, kept)."""
    model, val_ds = digits_cnn
    shape = [1, 1, 8, 8]
    timed = []
    final = [0.71]

    def fake_benchmark(paths, batch_sizes, **kwargs):
        timed.append([p.name for p in paths])
        ratios = [1.0, 0.8, 0.6, 0.5] if len(paths) == 4 else [1.0, final[0]]
        key = str(batch_sizes[0])
        assert key == "8" and kwargs["threads"] == 1
        return {"files": [{"ratio_to_first": {key: {"p50": r}}} for r in ratios]}

    monkeypatch.setattr(sparsekit.onnx, "benchmark", fake_benchmark, raising=False)
    recipe = validate_recipe(
        {
            "model": {"input_shape": shape},
            "benchmark": {"batch_sizes": [1, 8]},
            "pruning": [{"method": "structured", "ratio": "auto", "target_latency": 0.7}],
        }
    )
    table = sens.analyze(model, recipe, loader(val_ds), grid={"structured": [0.3, 0.6]})
    allocated, details = alloc.allocate_with_details(model, recipe, table, input_shape=shape)
    info = details[0]
    assert timed == [
        ["dense.onnx", "uniform-0.25.onnx", "uniform-0.5.onnx", "uniform-0.75.onnx"],
        ["dense.onnx", "allocated.onnx"],
    ]
    sweep = info.latency_sweep
    assert [s["ratio"] for s in sweep] == [0.0, 0.25, 0.5, 0.75]
    assert [s["latency"] for s in sweep] == [1.0, 0.8, 0.6, 0.5]
    assert 1 > sweep[1]["macs"] > sweep[2]["macs"] > sweep[3]["macs"] > 0
    assert info.macs_target == pytest.approx((sweep[1]["macs"] + sweep[2]["macs"]) / 2)
    assert info.reached["macs"] <= info.macs_target + 1e-9 and info.reached == {**info.reached, "latency": 0.71}
    assert info.note is None
    entry = allocated.pruning[0]
    assert entry.layer_ratio and entry.target_latency is None
    align = alloc.latency_align()
    for name, ratio in entry.layer_ratio.items():  # channel counts onnxruntime's convolutions run fast on
        channels = 128 if name == "fc1" else getattr(model, name).out_channels
        assert round((1 - ratio) * channels) % align == 0 or channels < align, (name, ratio)

    # Measured slower than asked: the MACs target is lowered and the allocation timed again, three times at most.
    timed.clear()
    final[0] = 0.9
    _, details = alloc.allocate_with_details(model, recipe, table, input_shape=shape)
    # (here the third, lower MACs target is out of reach with aligned channels: the second allocation stays)
    assert 3 <= len(timed) <= 1 + alloc.LATENCY_ROUNDS and "above target_latency 0.7" in details[0].note
    assert details[0].macs_target < info.macs_target

    too_fast = recipe.model_copy(update={"pruning": [recipe.pruning[0].model_copy(update={"target_latency": 0.3})]})
    with pytest.raises(TargetError, match=r"target_latency: 0.3 is below .*0\.500 of the dense latency"):
        alloc.allocate(model, too_fast, table, input_shape=shape)


# ----------------------------------------------------------------------------- validate


def test_validate_shows_per_layer_values_or_says_they_come_at_prune_time(mlp_checkpoint):
    auto = validate_recipe(
        {
            "model": {"input_shape": [1, 64]},
            "pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.9, "layers": {"exclude": ["fc3"]}}],
        }
    )
    res = plan(auto)
    assert res["allocation"] == [
        {
            "index": 0,
            "method": "magnitude",
            "auto": True,
            "target": {"sparsity": 0.9},
            "layer_values": None,
            "note": res["allocation"][0]["note"],
        }
    ]
    assert "sensitivity analysis" in allocation_lines(res)[0] and "prune" in allocation_lines(res)[0]
    dry = plan(auto, mlp_checkpoint, arch="examples.models:mlp")  # no data: a uniform stand-in is rehearsed
    assert dry["methods"][0]["auto"] is True and dry["methods"][0]["layers"] == ["fc1", "fc2"]
    # plan() with a model loads the data but never runs the (training) analysis: the note says where it runs
    note = dry["allocation"][0]["note"]
    assert "no data" not in note and "sparsekit validate RECIPE MODEL" in note
    # finetune.epochs is 0 here: no epoch, so no per-epoch target; the final one is still the target.
    assert dry["methods"][0]["targets_per_epoch"] == [] and dry["methods"][0]["final"] == pytest.approx(0.9, abs=1e-3)

    given = validate_recipe(
        {"pruning": [{"method": "magnitude", "sparsity": 0.5, "scope": "layer", "layer_sparsity": {"fc1": 0.75}}]}
    )
    lines = allocation_lines(plan(given))
    assert lines == [
        "pruning[0] magnitude: per-layer sparsity (sparsity 0.5 for any layer not listed):",
        "  fc1: 0.7500",
    ]
    with_model = plan(given, mlp_checkpoint, arch="examples.models:mlp")
    assert "auto" not in with_model["methods"][0]


def test_groups_as_wide_as_the_alignment_can_still_lose_aligned_channels():
    from sparsekit.allocation import _feasible

    assert _feasible(32, 1, 31, 16) == [0, 16]
    assert _feasible(16, 1, 15, 16) == [0, 8]  # as wide as the alignment: half of it (was: never prunable)
    assert _feasible(16, 1, 15, 8) == [0, 8]
    assert _feasible(6, 1, 5, 8) == [0, 2]  # keeps 4
    assert _feasible(1, 1, 0, 8) == [0]


def test_auto_allocate_leaves_each_module_mode_as_it_was():
    import torch
    from torch import nn

    import sparsekit
    from sparsekit.allocation import auto_allocate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    data = [(torch.randn(32, 8), torch.randint(0, 4, (32,))) for _ in range(2)]
    recipe = sparsekit.Recipe(pruning=[{"method": "magnitude", "sparsity": "auto", "target": 0.5}])
    auto_allocate(model, recipe, data, input_shape=[1, 8])
    assert model.training and model[0].training and not model[1].training


def test_auto_macs_uses_exact_counts_when_whole_blocks_land_far_under_the_target():
    # Groups of 24 and 20 units can only keep 8, 16 or all under round_to 16 (8 in groups of 16-31): whole
    # blocks land far under target_macs 0.6, so exact counts are used, and the allocation says so.
    train_ds, val_ds, _ = digits()
    torch.manual_seed(0)
    with single_thread():
        model = train(mlp(in_features=64, hidden=[24, 20]), train_ds, epochs=2)
    shape = [1, 64]
    entry = {"method": "structured", "ratio": "auto", "target_macs": 0.6, "layers": {"exclude": ["fc3"]}}
    recipe = validate_recipe({"model": {"input_shape": shape}, "pruning": [entry]})
    table = sens.analyze(model, recipe, loader(val_ds), grid={"structured": [0.2, 0.4, 0.6, 0.7]})
    allocated, details = alloc.allocate_with_details(model, recipe, table, input_shape=shape)
    pruned = Pruner(copy.deepcopy(model), allocated, steps_per_epoch=1).finalize()
    reached = sum(layer_macs(pruned, shape).values()) / sum(layer_macs(model, shape).values())
    assert 0.6 - alloc.MACS_ALIGN_SLACK <= reached <= 0.6, reached
    assert details[0].note and "exact channel counts are used" in details[0].note
    kept = [pruned.fc1.out_features, pruned.fc2.out_features]
    assert any(k % 8 for k in kept), kept  # not whole blocks: the exact search chose them


@pytest.mark.parametrize("round_to", [None, 16])
def test_an_allocation_predicted_worse_than_uniform_says_why(monkeypatch, round_to):
    """Whole blocks of round_to channels can land under target_macs and so be predicted to cost more than the
    uniform comparison, which keeps exact counts at the target: the comparison line stood unexplained."""
    model = mlp(in_features=64, hidden=[64, 32])
    spec = validate_recipe(
        {"pruning": [{"method": "structured", "ratio": "auto", "target_macs": 0.5, "round_to": round_to}]}
    ).pruning[0]
    fake = spec.model_copy(update={"ratio": 0.5, "target_macs": None, "scope": "layer", "layer_ratio": {"fc1": 0.5}})
    monkeypatch.setattr(alloc, "_allocate_structured", lambda *a, **k: (fake, {"fc1": 0.5}, 0.468, 0.376, 0.469))
    info = alloc._allocate_macs(model, spec, 0, None, [1, 64], [])
    assert info.note and "predicted loss increase (0.468) is above one uniform ratio's (0.376)" in info.note
    assert ("round_to: null" in info.note) == bool(round_to)
    monkeypatch.setattr(alloc, "_allocate_structured", lambda *a, **k: (fake, {"fc1": 0.5}, 0.300, 0.376, 0.499))
    assert alloc._allocate_macs(model, spec, 0, None, [1, 64], []).note is None  # better than uniform: no note


def test_auto_macs_uses_exact_counts_when_whole_blocks_land_above_the_target(monkeypatch):
    # A U-Net's coupled units moved in large steps: whole blocks reached MACs 0.511 for target_macs 0.5, a miss
    # by the report's own check (2%), with no note; exact counts reached 0.498.
    model = mlp(in_features=64, hidden=[64, 32])
    spec = validate_recipe({"pruning": [{"method": "structured", "ratio": "auto", "target_macs": 0.5}]}).pruning[0]
    fake = spec.model_copy(update={"ratio": 0.5, "target_macs": None, "scope": "layer", "layer_ratio": {"fc1": 0.5}})
    calls = []

    def allocate(*args, round_to=None, **kwargs):
        calls.append(round_to)
        return fake, {"fc1": 0.5}, 0.3, 0.4, 0.511 if round_to else 0.498

    monkeypatch.setattr(alloc, "_allocate_structured", allocate)
    info = alloc._allocate_macs(model, spec, 0, None, [1, 64], [])
    assert calls == [16, None] and info.reached == {"macs": 0.498}
    assert info.note and "would reach MACs 0.511, above it (target_macs 0.5): exact channel counts" in info.note
    calls.clear()
    monkeypatch.setattr(alloc, "_allocate_structured", lambda *a, round_to=None, **k: (calls.append(round_to) or
                        (fake, {"fc1": 0.5}, 0.3, 0.4, 0.509)))  # fmt: skip
    assert alloc._allocate_macs(model, spec, 0, None, [1, 64], []).note is None and calls == [16]  # within 2%


class _SkipUNet(torch.nn.Module):
    """A U-Net step: d1 reads the upsampled path and e1's skip, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.e1 = nn.Conv2d(3, 16, 3, padding=1)
        self.e2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.d1 = nn.Conv2d(32, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = torch.relu
        a = relu(self.e1(x))
        u = relu(self.up(relu(self.e2(a))))
        return self.out(relu(self.d1(torch.cat([u, a], 1))))


@pytest.mark.parametrize(
    "ratios", [{"e1": 0.5, "up": 0.0}, {"e1": 0.0, "up": 0.75}, {"e1": 0.25, "up": 0.5, "e2": 0.5, "d1": 0.25}]
)
def test_the_macs_model_counts_each_part_of_a_concatenation_by_its_own_root(ratios):
    # d1's inputs are up's 16 channels and e1's 16: the MACs model took one root for all 32, so target_macs 0.5
    # on a U-Net landed at 0.522 (past the report's 2%).
    torch.manual_seed(0)
    shape = [1, 3, 8, 8]
    model = _SkipUNet()
    dense = layer_macs(model, shape)
    spec = {"method": "structured", "ratio": 0.5, "round_to": None, "scope": "layer", "schedule": "oneshot"}
    recipe = validate_recipe({"model": {"input_shape": shape}, "pruning": [spec]})
    plan = sens._StructuredPlan(model, recipe.pruning[0], 0, shape, dense)
    assert plan.inputs["d1"] == {"up": 16, "e1": 16}
    full = {root: 0.0 for root in plan.blocks}
    layer_ratio = {**full, **ratios}
    entry = {**spec, "layer_ratio": layer_ratio}
    pruned_recipe = validate_recipe({"model": {"input_shape": shape}, "pruning": [entry]})
    pruned = Pruner(copy.deepcopy(model), pruned_recipe, steps_per_epoch=1).finalize()
    measured = sum(layer_macs(pruned, shape).values())
    predicted = sum(dense.values()) - plan.saved({root: 1.0 - r for root, r in layer_ratio.items()})
    assert predicted == pytest.approx(measured, rel=1e-9)
