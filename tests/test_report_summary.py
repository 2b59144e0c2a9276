"""What a user reads about a run (sparsekit.report): the headline says the recipe, asked vs achieved per
entry and per layer as the model has it, channels for structural removal, dense -> pruned figures with
the word that fits the measurement, names an entry that achieved nothing, and says each thing once."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sparsekit
from examples.models import mlp, resnet_small, small_cnn
from sparsekit.cli import main
from sparsekit.layers import prunable_layers, weight_of
from sparsekit.pipeline import method_results
from sparsekit.report import (
    Benchmark,
    Int8,
    Report,
    latency_verdict,
    load_report,
    notes,
    render_markdown,
    render_summary,
    summarize,
    what_it_buys,
)
from sparsekit.stats import layer_report, model_stats
from tests.conftest import FAST

MLP_SHAPE = [1, 64]
CNN_SHAPE = [1, 1, 28, 28]


def _recipe(pruning: list[dict], **extra) -> sparsekit.Recipe:
    return sparsekit.Recipe(
        version=1,
        data={"source": "digits"},
        finetune={"epochs": 1},
        pruning=pruning,
        **extra,
    )


def _prune(model: nn.Module, recipe: sparsekit.Recipe, shape: list[int], steps: int = 0):
    """The dense copy, the finalized model and its pruner (``steps`` optimizer steps on random data first)."""
    dense = copy.deepcopy(model)
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=max(steps, 1), context={"input_shape": shape})
    if steps:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            opt.zero_grad()
            x = torch.randn([8, *shape[1:]], generator=gen)
            loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (8,), generator=gen))
            (loss + pruner.penalty()).backward()
            opt.step()
            pruner.step()
    return dense, pruner.finalize().eval(), pruner


def _result(model: nn.Module, shape: list[int], accuracy: float) -> dict:
    stats = model_stats(model, shape)
    # Sizes follow the model: 4 bytes per weight raw, 4 per nonzero compressed.
    return {
        "accuracy": accuracy,
        "loss": 1.0 - accuracy,
        **stats,
        "onnx_bytes": 4 * stats["params"],
        "onnx_gzip_bytes": 4 * stats["nonzero_params"],
        "onnx_params": stats["params"],
        "onnx_nonzero_params": stats["nonzero_params"],
        "entropy_estimate_bytes": 3 * stats["nonzero_params"],
        "entropy_bound_bytes": 3 * stats["nonzero_params"],
    }


def _speedups(ratios: dict[str, tuple[float, float]]) -> dict:
    return {
        bs: {"ratio": r, "spread": [r, r], "noise": n, "aa_ratio": 1.0, "significant": abs(math.log(r)) > math.log1p(n)}
        for bs, (r, n) in ratios.items()
    }


def _report(
    dense: nn.Module,
    model: nn.Module,
    pruner,
    recipe: sparsekit.Recipe,
    shape: list[int],
    *,
    accuracy: tuple[float, float] = (0.9, 0.9),
    latency: dict[str, tuple[float, float]] | None = None,
    int8_latency: dict[str, tuple[float, float]] | None = None,
    int8_mode: str = "static",
) -> Report:
    """A report as the pipeline builds it, from the real pruned model (no export, no benchmark: the
    latency ratios and their noise are given)."""
    d, p = _result(dense, shape, accuracy[0]), _result(model, shape, accuracy[1])
    report = Report(
        model={"path": "m.pt", "factory": "examples.models:x", "input_shape": shape},
        data={"source": "digits", "train_batches": 1, "val_batches": 1, "normalize": recipe.data.normalize},
        dense=d,
        pruned=p,
        layers=layer_report(model, shape),
        dense_layers=layer_report(dense, shape),
        history=[],
        parity={"max_abs_diff": 0.0, "ok": True},
        dense_parity={"max_abs_diff": 0.0, "ok": True},
        zeros_preserved=True,
        zeros=[],
        methods=method_results(pruner),
        recipe=recipe.model_dump(mode="json"),
        versions={},
        expectation=what_it_buys(recipe),
    )
    if latency:
        ms = {bs: 1.0 for bs in latency}
        report.dense.latency_ms = {bs: {"p50": v, "p90": v, "p99": v} for bs, v in ms.items()}
        report.pruned.latency_ms = {bs: {"p50": r, "p90": r, "p99": r} for bs, (r, _) in latency.items()}
        report.benchmark = Benchmark(
            threads=1, runs=5, warmup=1, provider="cpu", speedup=_speedups(latency), control={}
        )
    if int8_latency:
        report.int8 = Int8.model_validate(
            {
                "path": "model.int8.onnx",
                "mode": int8_mode,
                "onnx_bytes": d["onnx_bytes"] // 4,
                "onnx_gzip_bytes": d["onnx_gzip_bytes"] // 4,
                "entropy_bound_bytes": d["entropy_bound_bytes"] // 4,
                "zeros": {"zeros_ok": True},
                "eval": {"int8_accuracy": 0.9, "fp32_accuracy": 0.9, "top1_agreement": 1.0, "samples": 10},
                "latency_ms": {bs: {"p50": r, "p90": r, "p99": r} for bs, (r, _) in int8_latency.items()},
                "speedup": _speedups(int8_latency),
            }
        )
    report.notes = notes(report)
    return report


def _zero_fraction(module: nn.Module) -> float:
    w = weight_of(module)
    return float((w == 0).sum()) / w.numel()


# --- asked vs achieved ---------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_asked_vs_achieved_per_entry_and_per_layer_match_the_model(scope):
    torch.manual_seed(0)
    recipe = _recipe(
        [
            {
                "method": "magnitude",
                "sparsity": 0.7,
                "scope": scope,
                "schedule": "oneshot",
                "layers": {"exclude": ["fc3"]},
            }
        ]
    )
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[48, 32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    s = summarize(report)
    (o,) = s.methods
    layers = prunable_layers(model)
    selected = [n for n in layers if n != "fc3"]
    # The entry: asked is the recipe's sparsity, achieved the zeros over the layers it selected.
    zeros = sum(int((weight_of(layers[n]) == 0).sum()) for n in selected)
    total = sum(weight_of(layers[n]).numel() for n in selected)
    assert o.asked == pytest.approx(0.7) and o.achieved == pytest.approx(zeros / total)
    assert [r.name for r in o.layers] == selected and s.excluded == ["fc3"]
    for r in o.layers:
        assert r.achieved == pytest.approx(_zero_fraction(layers[r.name]))
        assert r.asked == (None if scope == "global" else pytest.approx(0.7))
    # The whole-model figure counts the excluded head too: lower than achieved, and labelled as such.
    assert report.pruned.sparsity < o.achieved
    text = render_summary(report, "out")
    lines = text.splitlines()
    (entry,) = [ln for ln in lines if ln.strip().startswith("pruning[0] magnitude: asked")]
    assert f"asked {0.7:.3f}, achieved {o.achieved:.3f} weights zero over its {len(selected)} layer(s)" in entry
    for r in o.layers:
        (row,) = [ln for ln in lines if ln.split()[:1] == [r.name]]
        assert f"achieved {r.achieved:.3f}" in row
        assert ("asked     –" in row) == (scope == "global")
    (overall,) = [ln for ln in lines if "whole-model sparsity" in ln]
    assert f"{report.pruned.sparsity:.3f}" in overall and "not-pruned fc3 included" in overall
    (recipe_line,) = [ln for ln in lines if ln.strip().startswith("recipe")]
    assert "sparsity 0.700" in recipe_line and ("ranked globally" in recipe_line) == (scope == "global")
    assert any("not pruned: fc3" in ln for ln in lines)
    md = render_markdown(report)
    assert "sparsity 0.700 of the selected weights" in md  # the target is in report.md
    assert f"| pruning[0] magnitude | all {len(selected)} selected (weights zero) | 0.700 | {o.achieved:.3f} |" in md
    assert "| not pruned | fc3 |" in md


def test_structured_reports_channels_kept_and_macs_not_zero_sparsity():
    torch.manual_seed(0)
    recipe = _recipe(
        [{"method": "structured", "ratio": 0.5, "schedule": "oneshot", "ignore": ["fc2"], "round_to": None}],
        model={"input_shape": CNN_SHAPE},
    )
    dense, model, pruner = _prune(small_cnn(), recipe, CNN_SHAPE)
    report = _report(dense, model, pruner, recipe, CNN_SHAPE)
    s = summarize(report)
    (o,) = s.methods
    assert o.measure == "output channels removed" and s.excluded == ["fc2"]
    now, before = prunable_layers(model), prunable_layers(dense)

    def out_channels(m: nn.Module) -> int:
        return weight_of(m).shape[0]

    for r in o.layers:
        assert (r.channels_kept, r.channels_total) == (out_channels(now[r.name]), out_channels(before[r.name]))
        assert r.channels_kept < r.channels_total
        assert r.achieved == pytest.approx(1 - r.channels_kept / r.channels_total)
    assert o.channels_kept == sum(r.channels_kept for r in o.layers)
    text = render_summary(report, "out")
    for r in o.layers:
        word = "neurons" if isinstance(before[r.name], nn.Linear) else "channels"  # a Linear's units are neurons
        assert f"{r.channels_kept} of {r.channels_total} {word} kept" in text
    assert {"conv1", "fc1"} <= {r.name for r in o.layers}  # both words are checked
    assert f"output neurons/channels removed over its {len(o.layers)} layer(s)" in text  # the entry: both kinds
    assert s.macs is not None and s.macs.verdict == "fewer"
    assert f"MACs      {report.dense.macs:,} -> {report.pruned.macs:,}" in text
    assert "sparsity" not in text.split("accuracy")[1]  # no "sparsity 0.000 -> 0.000" for a structural run
    md = render_markdown(report)
    for r in o.layers:
        assert f"| | {r.name} | {r.asked:.3f} | {r.achieved:.3f} | {r.channels_kept} / {r.channels_total} |" in md
    assert "sparsity of the whole model" not in md


class _TiedMLP(nn.Module):
    """fc1 -> fc2 -> (fc3 + fc4) -> head, with fc4 sharing fc3's weight (tied): five layers, four weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(64, 48), nn.Linear(48, 32), nn.Linear(24, 10)
        self.fc3, self.fc4 = nn.Linear(32, 24), nn.Linear(32, 24)
        self.fc4.weight = self.fc3.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.head(torch.relu(self.fc3(h)) + torch.relu(self.fc4(-h)))


@pytest.mark.parametrize("tied", [False, True])
def test_group_l1_counts_the_units_of_every_layer_of_its_entry(tied):
    # The entry's "N of M neurons kept" covers all its layers: those that lost units and those that kept all,
    # a tied weight's units once.
    torch.manual_seed(0)
    recipe = _recipe(
        [
            {
                "method": "l1",
                "strength": 0.5,
                "mode": "proximal",
                "group": "row",
                "target": 0.3,
                "remove_dead": True,
                "schedule": {"start_epoch": 0, "end_epoch": 1},
            }
        ],
        model={"input_shape": MLP_SHAPE},
    )
    net = _TiedMLP() if tied else mlp(in_features=64, hidden=[48, 32, 24])
    dense, model, pruner = _prune(net, recipe, MLP_SHAPE, steps=20)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    (o,) = summarize(report).methods
    before, now = prunable_layers(dense), prunable_layers(model)
    (head,) = pruner.methods[0].head_left_out  # group lasso leaves the head out
    assert head == ("head" if tied else list(before)[-1])
    # With a target, layers whose units cannot be removed (a tied weight, and fc2 feeding it) are left out of the
    # entry: the target counted their units, zeroed and all kept (review parametrized_19).
    left = set(pruner.methods[0].report().get("target_left_out", {}))
    assert left == ({"fc2", "fc3", "fc4"} if tied else set())
    before = {n: m for n, m in before.items() if n != head and n not in left}
    once = [n for n in before if not (tied and n == "fc4")]  # fc4 is fc3's weight

    def units(m: nn.Module) -> int:
        return weight_of(m).shape[0]

    assert any(units(now[n]) < units(before[n]) for n in once)  # the premise: some units were removed
    assert o.channels_total == sum(units(before[n]) for n in once)
    assert o.channels_kept == sum(units(now[n]) for n in once)
    assert {r.name: (r.channels_kept, r.channels_total) for r in o.layers} == {
        n: (units(now[n]), units(before[n])) for n in before
    }
    assert f"; {o.channels_kept:,} of {o.channels_total:,} neurons kept" in render_summary(report, "out")
    assert f"| {o.channels_kept:,} / {o.channels_total:,} |" in render_markdown(report)
    if not tied:  # a report written before l1 gave its counts: read off the shapes, every layer too
        report.methods[0].channels = None
        (old,) = summarize(report).methods
        assert (old.channels_kept, old.channels_total) == (o.channels_kept, o.channels_total)


# --- verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "noise"),
    [(1.28, 0.05), (0.5, 0.1), (1.04, 0.05), (1 / 1.04, 0.05), (0.94, 0.05), (1.2, 0.3), (0.7, 0.3)],
)
def test_latency_words_follow_the_measured_ratio_and_noise(ratio, noise):
    # A ratio is a change only outside [1 / (1 + noise), 1 + noise]: the band the benchmark used.
    outside = abs(math.log(ratio)) > math.log1p(noise)
    want = ("faster" if ratio < 1 else "slower") if outside else "within noise"
    assert latency_verdict(ratio, noise) == want
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(
        dense, model, pruner, recipe, MLP_SHAPE, latency={"1": (ratio, noise)}, int8_latency={"1": (ratio, noise)}
    )
    lines = render_summary(report, "out").splitlines()
    latency = [ln for ln in lines if "batch 1:" in ln]
    assert len(latency) == 2  # pruned, then int8: each once
    for ln in latency:
        assert ln.endswith(f": {want}") and f"{ratio:.3f}x" in ln
        assert f"noise band {1 / (1 + noise):.3f}x-{1 + noise:.3f}x" in ln
    assert latency[1].strip().startswith("int8")
    md = render_markdown(report)
    assert f"| latency p50, batch 1 (ms) | 1.000 | {ratio:.3f} | {ratio:.3f}x | {want} (noise band" in md
    s = summarize(report)
    assert s.latency["1"].verdict == want and s.int8 is not None and s.int8.latency["1"].verdict == want


def test_report_md_says_how_many_runs_were_timed():
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, latency={"1": (0.9, 0.05), "32": (0.8, 0.05)})
    assert report.benchmark is not None
    report.benchmark.runs_done = {"1": 5, "32": 5}
    assert "5 timed runs after at most 1 warm-up runs" in render_markdown(report)
    # Stopped early (budget or precision): the runs each batch size did, not the most asked for.
    report.benchmark.runs, report.benchmark.runs_done = 200, {"1": 200, "32": 25}
    md = render_markdown(report)
    assert "timed runs per model: 200 at batch 1, 25 at batch 32 (of at most 200)" in md and "200 timed runs" not in md


def test_whole_model_sparsity_changes_by_a_difference_not_a_ratio():
    # One exact zero in the dense model (PyTorch's init can draw one) made the ratio of sparsities millions.
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    report.dense.sparsity = 1 / 29_048_832
    s = summarize(report)
    assert s.whole_model_sparsity.ratio is None and s.whole_model_sparsity.verdict == "higher"
    (line,) = [ln for ln in render_markdown(report).splitlines() if ln.startswith("| sparsity of the whole model")]
    want = report.pruned.sparsity - report.dense.sparsity
    assert line.split(" | ")[3] == f"{want:+.3f}" and "x |" not in line


def test_worse_results_say_so_in_plain_words():
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(
        dense, model, pruner, recipe, MLP_SHAPE, accuracy=(0.95, 0.9), latency={"1": (0.99, 0.05)},
        int8_latency={"1": (1.28, 0.05)},
    )  # fmt: skip
    report.pruned.onnx_bytes = report.dense.onnx_bytes + 1  # e.g. extra graph nodes
    text = render_summary(report, "out")
    assert f"accuracy  0.9500 -> 0.9000 ({-0.05:+.4f}: less accurate)" in text
    sizes = f"{report.dense.onnx_bytes:,} -> {report.pruned.onnx_bytes:,} B (1.000x: bigger by 1 B)"
    assert f"ONNX, dense-stored {sizes}" in text
    (int8,) = [ln for ln in text.splitlines() if ln.strip().startswith("int8") and "batch 1" in ln]
    assert "1.280x" in int8 and int8.endswith(": slower")
    assert "vs pruned fp32 1.293x" in int8  # 1.28 / 0.99: int8 against the fp32 model it came from
    # The notes do not repeat the numbers, they say what to do.
    assert any("fine-tune longer" in n for n in report.notes)
    assert not any("0.9500" in n or "latency" in n or "1.29" in n for n in report.notes)
    (slow,) = [n for n in report.notes if n.startswith("int8 runs slower than the pruned fp32 model")]
    assert "(batch 1)" in slow and "model.onnx for speed" in slow


# --- a method that achieved nothing ---------------------------------------------------------------


def test_a_method_that_achieved_nothing_is_named():
    torch.manual_seed(0)
    recipe = _recipe(
        [
            {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"include": ["fc1"]}},
            # Group lasso far too weak to zero a whole neuron of fc2 in a few steps: no unit removed.
            {
                "method": "l1",
                "strength": 1e-9,
                "mode": "proximal",
                "group": "row",
                "threshold": 1e-9,
                "remove_dead": True,
                "layers": {"include": ["fc2"]},
            },
        ],
        model={"input_shape": MLP_SHAPE},
    )
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32, 16]), recipe, MLP_SHAPE, steps=3)
    assert _zero_fraction(prunable_layers(model)["fc2"]) == 0  # the premise: l1 zeroed nothing
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    s = summarize(report)
    magnitude, l1 = s.methods
    assert not magnitude.nothing and l1.nothing
    assert report.to_json()["methods"][1]["method"] == "l1"
    text = render_summary(report, "out")
    lines = text.splitlines()
    (i,) = [i for i, ln in enumerate(lines) if ln.startswith("  pruning[1] l1: no target")]
    remark = lines[i + 1 + len(l1.layers)]  # right under the entry's layers
    assert "achieved nothing" in remark and "no unit" in remark
    # Only the l1 entry: its remark, and the warning that its target (an effect) was missed.
    assert text.count("achieved nothing") == 2
    assert "  WARNING   target missed: entry 1 (l1) achieved nothing: no unit" in text
    assert "**achieved nothing" in render_markdown(report)


def test_l1_that_zeroed_no_weight_says_so():
    torch.manual_seed(0)
    recipe = _recipe([{"method": "l1", "strength": 1e-9, "mode": "proximal", "threshold": 0.0}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE, steps=2)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    (o,) = summarize(report).methods
    assert o.nothing and o.achieved == 0
    assert "achieved nothing: zeroed no weight" in render_summary(report, "out")


# --- every message once ---------------------------------------------------------------------------


def test_each_message_appears_once_in_the_summary():
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"exclude": ["fc2"]}}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(
        dense, model, pruner, recipe, MLP_SHAPE, accuracy=(0.95, 0.8), latency={"1": (1.0, 0.1), "32": (0.5, 0.1)}
    )
    report.notes.append("plots not drawn: test")
    text = render_summary(report, "out")
    lines = [ln.strip() for ln in text.splitlines()]
    assert len(lines) == len(set(lines))
    assert report.expectation not in text  # said once, when the run starts (see the CLI test below)
    for bs in ("1", "32"):
        assert text.count(f"batch {bs}:") == 1  # no latency note beside the latency line
    for n in report.notes:
        assert text.count(n) == 1
    md = render_markdown(report)
    assert md.count(report.expectation) == 1 and md.count("## Summary") == 1
    for n in report.notes:
        assert md.count(n) == 1


def test_prune_prints_each_message_once_and_report_json_leads_with_the_summary(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits, batch_size: 64, normalize: standard}\n"
        "finetune: {epochs: 2, max_steps_per_epoch: 3}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.6, schedule: oneshot, layers: {exclude: [fc3]}}\n"
        "benchmark: {batch_sizes: [1]}\n"
    )
    out = tmp_path / "o"
    result = CliRunner().invoke(
        main, ["prune", str(mlp_checkpoint), str(recipe), "--arch", "examples.models:mlp", "-o", str(out), *FAST]
    )
    assert result.exit_code == 0, result.stderr
    both = result.stderr + result.stdout
    assert both.count("What this recipe can buy") == 1
    assert both.count("What this recipe can buy") == both.count(what_it_buys(sparsekit.load_recipe(recipe)))
    lines = [ln.strip() for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(set(lines))
    assert result.stdout.count("batch 1:") == 1
    data = json.loads((out / "report.json").read_text())
    assert list(data)[:2] == ["schema", "summary"]
    s = data["summary"]
    assert s["methods"][0]["asked"] == pytest.approx(0.6) and s["excluded"] == ["fc3"]
    assert s["latency"]["1"]["verdict"] in result.stdout.split("batch 1:")[1].splitlines()[0]
    assert data["data"]["normalize"] == "standard"
    assert data["pruned"]["entropy_estimate_bytes"] == data["pruned"]["entropy_bound_bytes"] > 0
    md = (out / "report.md").read_text()
    assert "normalize `standard`" in md and "sparsity 0.600 of the selected weights" in md
    assert "entropy bound" not in md + result.stdout and "entropy estimate" in md
    # The loaded report re-renders the same headline.
    assert load_report(out / "report.json").summary == summarize(load_report(out / "report.json"))


def test_a_report_written_before_the_summary_still_loads_and_renders(tmp_path):
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    data = _report(dense, model, pruner, recipe, MLP_SHAPE).to_json()
    del data["summary"], data["data"]["normalize"]
    for side in ("dense", "pruned"):
        del data[side]["entropy_estimate_bytes"]
    (tmp_path / "report.json").write_text(json.dumps(data))
    old = load_report(tmp_path / "report.json")
    assert "normalize not recorded" in render_markdown(old)
    v = old.pruned.entropy_bound_bytes  # the estimate under its old name
    assert "| entropy estimate of the weights (ratio: to dense gzip) |" in render_markdown(old)
    assert (f"{v / 1000:.1f} kB" if v >= 1000 else f"{v} B") in render_markdown(old)
    assert summarize(old).methods[0].asked == pytest.approx(0.5)


def test_structured_words_speak_of_rounding_only_where_it_applies():
    from sparsekit.report import MethodResult, target_words

    spec = {"method": "structured", "ratio": 0.3, "round_to": 16}
    # ratio: auto writes an own ratio for every layer: their counts are used as they are, none is rounded.
    every = target_words({**spec, "layer_ratio": {"conv1": 0.1, "fc1": 0.4}}, MethodResult(method="structured",
                         layers=["conv1", "fc1"]))  # fmt: skip
    assert "rounded to multiples" not in every and "own ratios for 2 layer(s), their counts kept as given" in every
    some = target_words({**spec, "layer_ratio": {"conv1": 0.1}}, MethodResult(method="structured",
                        layers=["conv1", "fc1"]))  # fmt: skip
    assert "rounded to multiples of 16" in some and "own ratios for 1 layer(s)" in some


@pytest.mark.parametrize("shortcut", ["ignore", "exclude"])
def test_a_structured_miss_from_coupling_to_a_kept_layer_says_so_not_rounding(shortcut):
    # layer1.conv2 and layer2.conv2 are added (residual) to the outputs of conv1 and layer2.shortcut.0, which
    # the entry keeps whole: they cannot lose a channel, whatever round_to does.
    torch.manual_seed(0)
    entry = {"method": "structured", "ratio": 0.5, "schedule": "oneshot", "ignore": ["fc", "conv1"]}
    if shortcut == "ignore":
        entry["ignore"].append("layer2.shortcut.0")
    else:
        entry["layers"] = {"exclude": ["layer2.shortcut.0"]}
    recipe = _recipe([entry], model={"input_shape": CNN_SHAPE})
    dense, model, pruner = _prune(resnet_small(), recipe, CNN_SHAPE)
    report = _report(dense, model, pruner, recipe, CNN_SHAPE)
    (warning,) = summarize(report).warnings
    assert warning.startswith("target missed: entry 0 (structured) asked ratio 0.500")
    assert "layer1.conv2, layer2.conv2 kept all their output channels because they are coupled" in warning
    assert "rounded to multiples" not in warning  # round_to (16) moved no layer here
    if shortcut == "ignore":
        assert "(conv1, layer2.shortcut.0 in ignore): take conv1, layer2.shortcut.0 out of ignore" in warning
    else:
        assert "(conv1 in ignore and layer2.shortcut.0 not selected by layers)" in warning
        assert "take conv1 out of ignore or select layer2.shortcut.0 too" in warning
    assert "or leave layer1.conv2, layer2.conv2 out of its layers" in warning


@pytest.mark.parametrize(
    ("reasons", "coupling", "rounding"),
    [
        ({"a": "coupled to ignored layer 'x'", "b": None}, True, False),
        ({"a": "coupled to ignored layer 'x'", "b": "round_to 16: keeps 16 of 32 channels"}, True, True),
        ({"a": "round_to 16: keeps all 32 channels instead of 28", "b": None}, False, True),
        ({"a": None, "b": None}, False, True),  # no layer says why: rounding, the one cause a ratio alone has
        ({"a": "floor min_channels", "b": None}, False, False),
    ],
)
def test_a_structured_miss_names_the_causes_its_layers_give(reasons, coupling, rounding):
    from sparsekit.report import LayerOutcome, MethodOutcome, _structured_miss

    layers = [LayerOutcome(name=n, asked=0.5, achieved=0.0, reason=r) for n, r in reasons.items()]
    o = MethodOutcome(
        entry=0, method="structured", target="", measure="output channels removed", asked=0.5, achieved=0.2,
        layers=layers,
    )  # fmt: skip
    words = _structured_miss(o, {"ignore": ["x"], "round_to": 16}, short=True)
    assert ("a kept all its output channels because it is coupled" in words) is coupling
    assert ("rounded to multiples of 16" in words) is rounding
    assert ("per_layer reasons say why" in words) is (not coupling and not rounding)


@pytest.mark.parametrize(("ratio", "slower"), [(1.3, True), (0.6, False), (1.02, False)])
def test_channel_removal_measured_slower_says_why_and_what_to_do(ratio, slower):
    from sparsekit.report import notes

    recipe = _recipe([{"method": "structured", "ratio": 0.5, "schedule": "oneshot", "round_to": None}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, latency={"32": (ratio, 0.05)})
    said = [n for n in notes(report) if n.startswith("Channel removal made the model slower")]
    assert bool(said) is slower  # 1.02 is inside the noise band: not slower
    if slower:
        assert "batch 32: 1.300x of dense" in said[0] and "round_to: 16" in said[0]
        report.notes = notes(report)  # as the pipeline stores them
        assert f"  note      {said[0]}" in render_summary(report, "out").splitlines()


@pytest.mark.parametrize(
    ("pruned", "int8", "mode", "noise", "word"),
    [
        (0.5, 0.6, "static", 0.02, "slower"),  # 0.6x of dense reads as faster; 1.2x the pruned fp32 it came from
        (0.5, 0.3, "static", 0.02, "faster"),
        (0.5, 0.505, "static", 0.02, "within noise"),
        (0.5, 0.6, "static", 0.3, "within noise"),  # 1.2x inside a noise band of 0.77x-1.3x: not called slower
        (0.5, 4.0, "dynamic", 0.02, "slower"),
    ],
)
def test_int8_against_the_pruned_fp32_model_is_judged_with_the_noise(pruned, int8, mode, noise, word):
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(
        dense, model, pruner, recipe, MLP_SHAPE, latency={"32": (pruned, noise)}, int8_latency={"32": (int8, noise)},
        int8_mode=mode,
    )  # fmt: skip
    s = summarize(report)
    assert s.int8 is not None and s.int8.vs_pruned_fp32["32"] == pytest.approx(int8 / pruned)
    assert s.int8.vs_pruned_fp32_verdict["32"] == word
    said = [n for n in report.notes if n.startswith("int8 runs slower")]
    assert bool(said) is (word == "slower")
    if said:
        assert ("ConvInteger" in said[0]) is (mode == "dynamic")
    md = [ln for ln in render_markdown(report).splitlines() if ln.startswith("| int8: latency p50 vs pruned fp32")]
    assert len(md) == 1 and md[0].rstrip(" |").endswith(word)
    text = render_summary(report, "out").splitlines()
    line = next(ln for ln in text if ln.strip().startswith("int8") and "batch 32:" in ln)
    assert f"vs pruned fp32 {int8 / pruned:.3f}x, {word}" in line


@pytest.mark.parametrize(("noise", "said"), [(0.04, False), (9.0, True)])
def test_a_benchmark_too_noisy_to_mean_anything_says_so(noise, said):
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, latency={"1": (1.0, 0.04), "32": (1.2, noise)})
    notes_ = [n for n in report.notes if n.startswith("The benchmark was too noisy")]
    assert bool(notes_) is said
    if said:
        assert "0.10x-10.00x at batch 32" in notes_[0] and "batch 1" not in notes_[0]


@pytest.mark.parametrize(
    ("classes", "accuracy", "warned"),
    [
        (10, (0.95, 0.11), True),
        (10, (0.95, 0.5), False),
        (10, (0.2, 0.1), False),
        (None, (0.95, 0.11), False),
        (2, (0.99, 0.3), True),
        (2, (0.99, 0.9), False),
        (3, (0.95, 0.5), False),
    ],
)
def test_accuracy_at_chance_level_is_a_warning(classes, accuracy, warned):
    # Targets met, model useless: l1 with a tiny schedule drove a gated MLP from 0.994 to 0.117 with no warning.
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, accuracy=accuracy)
    report.data.classes = classes
    s = summarize(report)
    chance = [w for w in s.warnings if w.startswith("accuracy fell to chance level")]
    assert bool(chance) is warned
    if warned:
        assert f"{accuracy[0]:.4f} -> {accuracy[1]:.4f} with {classes} classes" in chance[0]
        assert f"  WARNING   {chance[0]}" in render_summary(report, "out").splitlines()


def test_the_summary_says_why_group_l1s_achieved_fraction_is_not_the_channels_kept():
    """0.500 of units zero beside "37 of 80 channels kept" read as a contradiction: coupled channels count once."""
    from sparsekit.report import MethodOutcome, _method_line

    row = {"entry": 0, "method": "l1", "target": "0.5 of units", "measure": "units zero", "asked": 0.5,
           "achieved": 0.5, "channels_kept": 37, "channels_total": 80, "layers": []}  # fmt: skip
    plain = _method_line(MethodOutcome(**row), {})
    assert "counted once" not in plain
    coupled = _method_line(MethodOutcome(**row, coupled=1), {})
    assert "units zero (a unit shared by coupled layers counted once: 1 layer(s) share their owner's)" in coupled


def test_channel_removal_measured_slower_after_group_l1_gives_advice_l1_can_take():
    """After group l1 the note advised round_to: 16 and target_latency, which l1 does not have."""
    from sparsekit.report import notes

    entry = {"method": "l1", "strength": 1e-3, "mode": "proximal", "group": "row", "remove_dead": True}
    recipe = _recipe([entry])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32, 16]), recipe, MLP_SHAPE, steps=2)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, latency={"32": (1.4, 0.05)})
    (said,) = [n for n in notes(report) if n.startswith("Channel removal made the model slower")]
    assert "Group l1 removes the units training zeroed" in said and "add a structured entry after" in said
    assert "target_latency" not in said and "Keep round_to" not in said


def test_a_structured_layer_rounded_far_from_the_ratio_is_named_when_the_entry_total_is_met():
    """``ratio: 0.3`` with round_to 16 took 16 of a 32-unit layer's 32 (0.5) while a large layer carried the
    entry's total to 0.333, within its tolerance: the miss was visible only in the per-layer lines. A note names
    it; the target stays met (round_to does this by design: a shipped recipe's 48-channel layers keep 32)."""
    from sparsekit.report import check_targets, notes

    recipe = _recipe([{"method": "structured", "ratio": 0.3, "schedule": "oneshot", "round_to": 16}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32, 256]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    (check,) = check_targets(report)
    assert check.met and check.achieved == pytest.approx(96 / 288)
    (said,) = [n for n in notes(report) if n.startswith("Layers ended more than 0.05 from their ratio")]
    assert "fc1 0.500 of 0.300 (16 of 32 kept)" in said and "fc2" not in said
    exact = _recipe([{"method": "structured", "ratio": 0.5, "schedule": "oneshot", "round_to": 16}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32, 256]), exact, MLP_SHAPE)
    assert not [n for n in notes(_report(dense, model, pruner, exact, MLP_SHAPE)) if n.startswith("Layers ended")]
    # A total that missed has its WARNING: the note, which says the total is within tolerance, is not added then.
    coarse = _recipe([{"method": "structured", "ratio": 0.3, "schedule": "oneshot", "round_to": 16}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32, 48]), coarse, MLP_SHAPE)
    report = _report(dense, model, pruner, coarse, MLP_SHAPE)
    (check,) = check_targets(report)
    assert not check.met  # 16 of 32 and 16 of 48 removed: 0.4 of 80, for 0.3 asked
    assert not [n for n in notes(report) if n.startswith("Layers ended")]


def test_a_run_that_left_its_layers_denser_than_they_came_says_by_how_much():
    # A 90%-sparse model pruned to 0.5: the weights the mask keeps, zeros among them, train back to nonzero. The
    # summary said only "achieved nothing"; now it gives the sparsity it fell from and to.
    torch.manual_seed(0)
    model = mlp(in_features=64, hidden=[32])
    with torch.no_grad():
        for layer in prunable_layers(model).values():
            layer.weight[torch.rand_like(layer.weight) < 0.9] = 0.0
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(model, recipe, MLP_SHAPE, steps=3)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    (o,) = summarize(report).methods
    assert o.nothing
    text = render_summary(report, "out")
    (line,) = [ln for ln in text.splitlines() if "denser than the model it was given" in ln and "WARNING" not in ln]
    names = {layer.name for layer in o.layers}
    rows = [r for r in report.dense_layers if r.name in names]
    before = sum(r.params - r.nonzero_params for r in rows) / sum(r.params for r in rows)
    assert f"sparsity {before:.3f} -> {o.achieved:.3f}" in line and o.achieved < before - 0.1


class _Separable(nn.Module):
    """A pointwise conv followed by a depthwise one: the depthwise's channels are the pointwise's."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 64, 1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))).mean((2, 3)))


def test_structured_counts_a_coupled_depthwise_convs_channels_once():
    """stem and dw lose the same channels: '96 of 192 channels kept' counted them twice (the units are 32 + 64)."""
    shape = [1, 1, 8, 8]
    entry = {"method": "structured", "ratio": 0.5, "round_to": None, "layers": {"exclude": ["head"]}}
    recipe = _recipe([entry])
    dense, model, pruner = _prune(_Separable(), recipe, shape)
    assert model.stem.out_channels == model.dw.out_channels == 16 and model.pw.out_channels == 32
    (o,) = summarize(_report(dense, model, pruner, recipe, shape)).methods
    assert (o.channels_kept, o.channels_total) == (16 + 32, 32 + 64)
    assert o.coupled == 1 and o.achieved == pytest.approx(0.5)


def test_group_l1_counts_a_coupled_layers_channels_once_as_its_ratio_does():
    """Found by review: 'achieved 0.500 units zero ...; 120 of 224 channels kept' counted a residual add's and a
    depthwise conv's channels twice, where the ratio (and structured's count) takes each unit once."""
    shape = [1, 1, 8, 8]
    entry = {"method": "l1", "strength": 1e-3, "group": "channel", "target": 0.5, "remove_dead": True,
             "schedule": {"start_epoch": 0, "end_epoch": 1}}  # fmt: skip
    recipe = _recipe([entry], model={"input_shape": shape})
    dense, model, pruner = _prune(_Separable(), recipe, shape, steps=12)
    assert pruner.methods[0].coupled == {"dw": "stem"}
    assert model.stem.out_channels == model.dw.out_channels < 32 or model.pw.out_channels < 64  # units went
    (o,) = summarize(_report(dense, model, pruner, recipe, shape)).methods
    assert (o.channels_kept, o.channels_total) == (model.stem.out_channels + model.pw.out_channels, 32 + 64)
    assert o.achieved == pytest.approx(1 - o.channels_kept / o.channels_total)


def test_an_int8_model_that_disagrees_with_fp32_gets_a_note():
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, accuracy=(0.95, 0.95), int8_latency={"1": (0.9, 0.05)})
    assert not any("int8 predicts the same class" in n for n in report.notes)  # agreement 1.0
    assert report.int8 is not None
    report.int8.eval = {"int8_accuracy": 0.1, "fp32_accuracy": 0.95, "top1_agreement": 0.12, "samples": 200}
    (note,) = [n for n in notes(report) if n.startswith("int8 predicts the same class as fp32 on only 12.0% of 200")]
    assert "outliers in the calibration data" in note


@pytest.mark.parametrize("allocated", [True, False])
def test_auto_allocation_says_it_chose_on_the_split_it_reports(allocated):
    # sparsity: auto picks per-layer values by their loss on the validation split, and the report's accuracies
    # are measured there too: the reader must know they are not a held-out figure.
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    if allocated:
        report.recipe_asked = [{"method": "magnitude", "sparsity": "auto", "target": 0.5}]
    report.notes = notes(report)
    said = [n for n in report.notes if "sensitivity analysis on the validation split" in n]
    assert bool(said) is allocated
