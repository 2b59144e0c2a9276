"""Every target a recipe states is checked when the run ends: a miss is a warning in the summary,
report.md and report.json (summary.targets / summary.warnings), and exit 2 with --strict."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, assert_bad_input

from sparsekit.cli import main
from sparsekit.report import Report, check_targets

MLP = ("--arch", "examples.models:mlp")

MISSES = """version: 1
data: {source: digits}
finetune: {epochs: 1, optimizer: {name: adam, lr: 0.001}}
pruning:
  - {method: structured, ratio: 0.8, min_channels: 30, round_to: 1, steps: 1, schedule: oneshot,
     layers: {exclude: [fc3]}}
  - {method: max_norm, max_value: 0.5, layers: {include: [fc3]}}
benchmark: {enabled: false}
"""

MEETS = """version: 1
data: {source: digits}
finetune: {epochs: 1, optimizer: {name: adam, lr: 0.001}}
pruning:
  - {method: magnitude, sparsity: 0.6, schedule: oneshot, layers: {include: [fc1]}}
  - {method: structured, ratio: 0.25, steps: 1, round_to: 1, schedule: oneshot, layers: {include: [fc2]}}
benchmark: {enabled: false}
"""


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def prune_mlp(tmp_path, hidden, steps, pruning, *flags, zero_fc1=0.0):
    """``prune`` of an untrained digits MLP (``hidden`` units; fc1 ``zero_fc1`` zero) with ``pruning`` (YAML) for
    ``steps`` steps of one epoch, no benchmark: the result and report.json (None when it failed)."""
    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    kwargs = {"in_features": 64, "hidden": list(hidden)}
    model = mlp(**kwargs)
    with torch.no_grad():
        model.fc1.weight.mul_(torch.rand_like(model.fc1.weight) >= zero_fc1)
    path = tmp_path / "mlp.pt"
    sparsekit.save_model(model, path, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"version: 1\ndata: {{source: digits}}\nfinetune: {{epochs: 1, max_steps_per_epoch: {steps}}}\n"
        f"pruning:\n{pruning}benchmark: {{enabled: false}}\n"
    )
    result = run("prune", path, *MLP, recipe, "-o", tmp_path / "o", *flags, *FAST)
    out = tmp_path / "o" / "report.json"
    return result, json.loads(out.read_text()) if out.is_file() else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two recipes run once each on a digits MLP (shared by the tests below)."""
    from conftest import train_on_digits

    import sparsekit
    from examples.models import mlp

    base = tmp_path_factory.mktemp("targets")
    kwargs = {"in_features": 64, "hidden": [64, 32]}
    model = train_on_digits(mlp(**kwargs), [1, 64], epochs=2, lr=3e-3, batch_size=64)
    path = base / "mlp.pt"
    sparsekit.save_model(model, path, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    out = {}
    for name, text in [("misses", MISSES), ("meets", MEETS)]:
        recipe = base / f"{name}.yaml"
        recipe.write_text(text)
        result = run("prune", path, *MLP, recipe, "-o", base / name, *FAST)
        out[name] = (path, recipe, base / name, result)
    return out


def test_a_missed_ratio_is_a_warning_everywhere_and_the_run_still_succeeds(runs):
    _, _, out, result = runs["misses"]
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "report.json").read_text())["summary"]
    by_target = {t["target"]: t for t in summary["targets"]}
    assert by_target["ratio"]["met"] is False and by_target["ratio"]["asked"] == pytest.approx(0.8)
    assert by_target["ratio"]["achieved"] < 0.8 - by_target["ratio"]["tolerance"]
    assert by_target["max_value"]["met"] is True  # the constraint held
    assert summary["warnings"] == [by_target["ratio"]["message"]]
    assert by_target["ratio"]["message"].startswith("target missed: entry 0 (structured)")
    assert f"Warning: {summary['warnings'][0]}" in result.stderr  # as every command's warnings: on stderr
    assert f"**Warning:** {summary['warnings'][0]}" in (out / "report.md").read_text()


def test_strict_turns_a_miss_into_exit_2_with_the_outputs_written(tmp_path, runs):
    model, recipe, _, _ = runs["misses"]
    out = tmp_path / "strict"
    result = run("prune", model, *MLP, recipe, "-o", out, "--strict", *FAST)
    assert_bad_input(result, "target missed: entry 0 (structured)", f"the outputs are in {out}")
    assert (out / "report.json").is_file() and (out / "model.onnx").is_file()


def test_json_output_still_says_the_warning_on_stderr(tmp_path, runs):
    model, recipe, _, _ = runs["misses"]
    result = run("prune", model, *MLP, recipe, "-o", tmp_path / "j", "--json", *FAST)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["summary"]["warnings"] and f"Warning: {doc['summary']['warnings'][0]}" in result.stderr
    # --strict fails after report.json was printed: still exactly one JSON document on stdout
    strict = run("prune", model, *MLP, recipe, "-o", tmp_path / "js", "--json", "--strict", *FAST)
    assert strict.exit_code == 2 and json.loads(strict.stdout)["summary"]["warnings"]


def test_targets_met_give_no_warning_and_strict_passes(tmp_path, runs):
    model, recipe, out, result = runs["meets"]
    assert result.exit_code == 0 and "WARNING" not in result.stdout and "Warning:" not in result.stderr
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert [(t["target"], t["met"]) for t in summary["targets"]] == [("sparsity", True), ("ratio", True)]
    assert summary["warnings"] == []
    assert run("prune", model, *MLP, recipe, "-o", tmp_path / "s", "--strict", *FAST).exit_code == 0


def test_a_sparsity_off_beyond_tolerance_is_a_miss_and_within_it_is_not(runs):
    _, _, out, _ = runs["meets"]
    data = json.loads((out / "report.json").read_text())
    # Both sides: magnitude places every zero itself, so more than asked is another model than the one asked.
    cases = [(0.6 - 0.004, True), (0.6 - 0.006, False), (0.59, False), (0.6 + 0.004, True), (0.61, False)]
    for achieved, met in cases:
        data["methods"][0]["achieved"] = achieved
        check = check_targets(Report.model_validate(data))[0]
        assert (check.target, check.met) == ("sparsity", met), achieved
        if not met:
            assert f"asked sparsity 0.600, achieved {achieved:.3f}" in check.message


def test_more_zeros_than_asked_is_no_miss_when_the_model_came_with_them(tmp_path):
    # fc1 comes 90% zero; magnitude 0.8 per layer over fc1 and fc2 ends fc1 above 0.8 (its zeros were there,
    # and the ones training leaves alone stay): the entry placed no zero past what it asked. --strict passes.
    pruning = "  - {method: magnitude, sparsity: 0.8, scope: layer, layers: {include: [fc1, fc2]}}\n"
    result, report = prune_mlp(tmp_path, [64, 32], 2, pruning, "--strict", zero_fc1=0.9)
    assert result.exit_code == 0, result.output
    (check,) = [t for t in report["summary"]["targets"] if t["target"] == "sparsity"]
    assert check["met"] and check["achieved"] > check["asked"] + check["tolerance"]  # past 0.8, and not a miss


def test_whole_weights_round_within_the_tolerance(runs):
    # One weight per layer of slack on either side: a layer's count is whole weights (fc1 has 4,096).
    _, _, out, _ = runs["meets"]
    data = json.loads((out / "report.json").read_text())
    params = next(r for r in data["dense_layers"] if r["name"] == "fc1")["params"]
    for off, met in [(0.005 + 0.5 / params, True), (0.005 + 2 / params, False)]:
        for sign in (1, -1):
            data["methods"][0]["achieved"] = 0.6 + sign * off
            assert check_targets(Report.model_validate(data))[0].met is met, (sign, off)


def test_a_norm_above_max_value_is_a_miss(runs):
    _, _, out, _ = runs["misses"]
    data = json.loads((out / "report.json").read_text())
    row = data["methods"][1]
    layer = next(iter(row["norms"]))
    row["norms"][layer]["max"] = 0.6
    check = [c for c in check_targets(Report.model_validate(data)) if c.target == "max_value"][0]
    assert not check.met and "the largest is 0.6" in check.message
    # a report written before max_norm gave asked / achieved / per_layer held the norms under the layer names
    norms = row.pop("norms")
    for key in ("asked", "achieved", "per_layer", "max_value"):
        row.pop(key, None)
    row.update(norms)
    check = [c for c in check_targets(Report.model_validate(data)) if c.target == "max_value"][0]
    assert not check.met and "the largest is 0.6" in check.message


@pytest.mark.parametrize(
    ("hidden", "ratio", "achieved", "side"),
    [
        # 24 and 48 units at 0.5 under the default round_to 16: 12 -> 16 (24 aligns to 8, a tie keeps more) and
        # 24 -> 32, so 0.333 of the channels go: short of the ratio.
        ([24, 48], 0.5, 24 / 72, "short"),
        # 32 and 32 units at 0.3: 22.4 kept -> 16 (the nearer multiple of 16), so half go: past the ratio.
        ([32, 32], 0.3, 0.5, "past"),
    ],
)
def test_coarse_channel_rounding_far_from_the_ratio_is_a_warning(tmp_path, hidden, ratio, achieved, side):
    # Rounding explains it, but not within 0.05 of the ratio, on either side.
    import sparsekit
    from examples.models import mlp

    kwargs = {"in_features": 64, "hidden": hidden}
    path = tmp_path / "mlp.pt"
    sparsekit.save_model(mlp(**kwargs), path, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        f"pruning: [{{method: structured, ratio: {ratio}, schedule: oneshot, layers: {{exclude: [fc3]}}}}]\n"
        "benchmark: {enabled: false}\n"
    )
    result = run("prune", path, *MLP, recipe, "-o", tmp_path / "o", "--strict", *FAST)
    assert result.exit_code == 2, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    (check,) = [t for t in report["summary"]["targets"] if t["target"] == "ratio"]
    assert check["achieved"] == pytest.approx(achieved) and not check["met"] and check["tolerance"] <= 0.05
    warning = report["summary"]["warnings"][0]
    assert "rounded to multiples of 16" in warning and ("(more than asked)" in warning) == (side == "past")


def test_report_json_layers_carry_their_entrys_asked_and_achieved(runs):
    # INTERFACE 6: report.json's layers gain asked, achieved and reason (they were only under methods[].per_layer)
    _, _, out, _ = runs["meets"]
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["layers"]}
    # (magnitude ranks globally by default: its 0.6 is over its layers together, none per layer)
    assert (rows["fc1"]["entry"], rows["fc1"]["measure"], rows["fc1"]["asked"]) == (0, "weights zero", None)
    assert rows["fc1"]["achieved"] == pytest.approx(rows["fc1"]["sparsity"])
    assert (rows["fc2"]["entry"], rows["fc2"]["measure"], rows["fc2"]["asked"]) == (1, "output channels removed", 0.25)
    assert rows["fc2"]["achieved"] == pytest.approx(1 - rows["fc2"]["shape"][0] / 32)
    assert rows["fc3"]["entry"] is None and rows["fc3"]["asked"] is None  # no entry selects the head


def test_an_l1_unit_target_at_the_nearest_whole_count_is_met(tmp_path):
    """L1 settles a unit target on the nearest whole count: 0.25 of 33 units is 8 (0.242). The report judged
    it with 0.005 alone, a miss (exit 2 under --strict) where the Python report said met; the l1 entry now
    carries its tolerance, half a unit more."""
    pruning = (
        "  - {method: l1, group: row, strength: 0.001, target: 0.25, layers: {include: [fc1]},\n"
        "     schedule: {start_epoch: 0, end_epoch: 1}}\n"
    )
    result, report = prune_mlp(tmp_path, [33], 8, pruning, "--strict")
    assert result.exit_code == 0, result.output
    (check,) = [t for t in report["summary"]["targets"] if t["target"] == "target"]
    assert check["met"] and check["achieved"] == pytest.approx(8 / 33)
    assert check["tolerance"] == pytest.approx(0.5 / 33 + 0.005)


def test_a_layer_two_entries_select_lists_the_other_entrys_aim(tmp_path):
    # The row showed the first entry alone (the methods section had both).
    pruning = (
        "  - {method: l1, strength: 0.001, mode: proximal, layers: {include: [fc1]}}\n"
        "  - {method: magnitude, sparsity: 0.5, scope: layer, schedule: oneshot, layers: {include: [fc1, fc2]}}\n"
    )
    result, report = prune_mlp(tmp_path, [32, 16], 4, pruning)
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in report["layers"]}
    # fc1: magnitude states a per-layer sparsity, so it is the row's; l1 (entry 0, lambda shared: none) the other
    assert (rows["fc1"]["entry"], rows["fc1"]["measure"], rows["fc1"]["asked"]) == (1, "weights zero", 0.5)
    assert rows["fc1"]["achieved"] >= 0.5 - 0.01
    (other,) = rows["fc1"]["others"]
    assert (other["entry"], other["method"], other["measure"], other["asked"]) == (0, "l1", "weights zero", None)
    assert other["achieved"] == pytest.approx(rows["fc1"]["sparsity"])
    assert rows["fc2"]["entry"] == 1 and rows["fc2"].get("others") is None


def test_an_l1_target_another_entry_already_met_by_removing_units_is_met(tmp_path):
    """A structured entry removed half of fc1's units, more than the l1 entry's target on the same layer asks:
    l1 needs to zero none itself. It was judged "achieved nothing: ... raise strength, or set target" (a miss,
    exit 2 with --strict) though its report counted the removed units and reached 0.5 of 0.3."""
    pruning = (
        "  - {method: structured, ratio: 0.5, round_to: null, schedule: oneshot, layers: {include: [fc1]}}\n"
        "  - {method: l1, group: row, strength: 0.001, target: 0.3, layers: {include: [fc1]},\n"
        "     schedule: {start_epoch: 0, end_epoch: 1}}\n"
    )
    result, report = prune_mlp(tmp_path, [32, 16], 6, pruning, "--strict")
    assert result.exit_code == 0, result.output
    checks = {t["method"]: t for t in report["summary"]["targets"]}
    assert checks["l1"]["met"] and checks["l1"]["achieved"] >= 0.5 - 1e-9, checks
    assert checks["structured"]["met"]
    (l1,) = [m for m in report["summary"]["methods"] if m["method"] == "l1"]
    assert not l1["nothing"] and not any("achieved nothing" in r for r in l1["remarks"])


def test_magnitude_on_a_layer_whose_dead_rows_l1_removes_counts_the_removed_weights(tmp_path):
    """magnitude 0.5 and a group l1 target on the same layer: after l1 removed its dead rows at finalize,
    magnitude measured the surviving rows only (0.18 of 0.5, a miss), and before it, l1's zeros on top of its
    own read as "more than asked". Removed weights count as pruned, and zeros another entry placed on the
    same layers are not this entry's excess."""
    pruning = (
        "  - {method: magnitude, sparsity: 0.5, scope: layer, schedule: oneshot, layers: {include: [fc1]}}\n"
        "  - {method: l1, group: row, strength: 0.001, target: 0.4, layers: {include: [fc1]},\n"
        "     schedule: {start_epoch: 0, end_epoch: 1}}\n"
    )
    result, report = prune_mlp(tmp_path, [32, 16], 6, pruning, "--strict")
    assert result.exit_code == 0, result.output
    checks = {t["method"]: t for t in report["summary"]["targets"]}
    assert checks["magnitude"]["met"] and checks["l1"]["met"], checks
    fc1 = {r["name"]: r for r in report["layers"]}["fc1"]
    assert fc1["shape"][0] < 32  # l1 removed rows
    # magnitude's achieved: zeros now plus the removed rows' weights, over fc1's 32 x 64 weights at the start
    kept_nonzero = fc1["nonzero_params"]
    assert checks["magnitude"]["achieved"] == pytest.approx(1 - kept_nonzero / (32 * 64))


def _own_loop(pruning: dict, epochs: int, steps: int = 5, hidden: int = 32):
    """A loop of one's own on random data (an MLP, SGD), ``epochs`` of ``steps`` steps, then finalize: the
    TargetMissedWarnings it gave."""
    import warnings

    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    model = mlp(in_features=16, hidden=[hidden], num_classes=4)
    recipe = {"version": 1, "model": {"input_shape": [1, 16]}, "finetune": {"epochs": 4}, "pruning": [pruning]}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    for _ in range(epochs * steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner.finalize()
    return [w for w in caught if issubclass(w.category, sparsekit.TargetMissedWarning)]


def test_an_own_loop_that_stops_before_the_schedule_ends_is_warned_at_finalize():
    """The CLI checks every target; a loop of one's own finalized a model short of its target in silence."""
    gradual = {"method": "magnitude", "sparsity": 0.8, "layers": {"include": ["fc1"]},
               "schedule": {"start_epoch": 0, "end_epoch": 4, "every": 1}}  # fmt: skip
    (short,) = _own_loop(gradual, epochs=2)
    message = str(short.message)
    assert "pruning[0] (magnitude)" in message and "asked 0.800" in message
    assert "before the schedule's end at step 20" in message
    assert _own_loop(gradual, epochs=4) == []
    l1 = {"method": "l1", "group": "row", "strength": 1e-3, "target": 0.5, "layers": {"include": ["fc1"]},
          "schedule": {"start_epoch": 0, "end_epoch": 4}}  # fmt: skip
    (short,) = _own_loop(l1, epochs=1)
    assert "pruning[0] (l1)" in str(short.message) and "units zero" in str(short.message)
    assert _own_loop(l1, epochs=4) == []
