"""Every recipe in recipes/ runs end to end (shortened: 2 batches per epoch, synthetic data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import RECIPES_DIR, main
from sparsekit.modelio import build_model

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


def test_recipes_are_shipped():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_runs(path: Path, tmp_path):
    recipe = sparsekit.load_recipe(path)
    assert recipe.model.factory and recipe.model.input_shape, "shipped recipes name their model"
    torch.manual_seed(0)
    model = build_model(recipe.model.factory, recipe.model.kwargs)
    ckpt = sparsekit.save_model(
        model,
        tmp_path / "dense.pt",
        factory=recipe.model.factory,
        kwargs=recipe.model.kwargs,
        input_shape=recipe.model.input_shape,
    )
    out = tmp_path / "out"
    args = [
        "prune",
        str(ckpt),
        str(path),
        "-o",
        str(out),
        "--arch",
        recipe.model.factory,  # the user names the architecture, as in the README
        "--data",
        "synthetic",
        "--no-progress",
        "--set",
        "finetune.max_steps_per_epoch=2",
        "--set",
        "data.synthetic_samples=256",
        "--set",
        "benchmark.enabled=false",
        "--set",
        "export.exporter=torchscript",
        "--set",
        "export.quantize=none",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["ok"] and report["zeros_preserved"]
    assert len(report["history"]) == recipe.finetune.epochs
    layers = {r["name"]: r for r in report["layers"]}
    for spec, method in zip(recipe.pruning, report["methods"], strict=True):
        if spec.method in ("magnitude", "gradient"):
            chosen = [layers[n] for n in method["layers"]]
            zeros = sum(r["params"] - r["nonzero_params"] for r in chosen)
            assert zeros / sum(r["params"] for r in chosen) == pytest.approx(spec.sparsity, abs=0.005)
        if spec.method == "structured":
            assert report["pruned"]["params"] < report["dense"]["params"]
            assert report["pruned"]["macs"] < report["dense"]["macs"]
        if spec.method == "l1" and spec.target is not None:
            assert method["asked"] == spec.target
            assert method["achieved"] == pytest.approx(spec.target, abs=0.005)
    # the shipped file is plain data a user can read and copy
    assert yaml.safe_load(path.read_text())["version"] == 1


ZOO_RECIPES = ["resnet18-structured-50", "mobilenetv2-structured-50"]


@pytest.mark.parametrize("name", ZOO_RECIPES)
def test_zoo_recipe_runs_on_its_own_data(name: str, tmp_path):
    """The ResNet-18 and MobileNetV2 recipes on their own data (digits), shortened: fewer MACs after,
    and the saved model loads and runs."""
    path = RECIPES_DIR / f"{name}.yaml"
    recipe = sparsekit.load_recipe(path)
    assert recipe.data.source == "digits" and recipe.pruning[0].method == "structured"
    torch.manual_seed(0)
    model = build_model(recipe.model.factory, recipe.model.kwargs)
    kw = {"kwargs": recipe.model.kwargs, "input_shape": recipe.model.input_shape}
    ckpt = sparsekit.save_model(model, tmp_path / "dense.pt", factory=recipe.model.factory, **kw)
    out = tmp_path / "out"
    short = [
        "finetune.epochs=2",  # the removal events end at epoch 2
        "finetune.max_steps_per_epoch=3",
        "benchmark.enabled=false",
        "export.exporter=torchscript",
    ]
    args = ["prune", str(ckpt), name, "-o", str(out), "--arch", recipe.model.factory, "--no-progress"]
    result = CliRunner().invoke(main, [*args, *(a for s in short for a in ("--set", s))])
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["macs"] < 0.5 * report["dense"]["macs"]
    assert report["parity"]["ok"]
    pruned = sparsekit.load_model(out / "model.pt", arch=recipe.model.factory)
    x = torch.randn(4, *recipe.model.input_shape[1:])
    assert pruned(x).shape == (4, 10)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_the_l1_recipe_reaches_its_target_on_its_own_model_and_data(tmp_path):
    """lenet-l1-row-50 on LeNet-300-100 and mnist5k, shortened to 12 batches per epoch: half the hidden
    neurons of fc1 and fc2 end exactly zero and are removed, and the ONNX file agrees with torch."""
    name = "lenet-l1-row-50"
    recipe = sparsekit.load_recipe(name)
    torch.manual_seed(0)
    model = build_model(recipe.model.factory, recipe.model.kwargs)
    kw = {"kwargs": recipe.model.kwargs, "input_shape": recipe.model.input_shape}
    ckpt = sparsekit.save_model(model, tmp_path / "dense.pt", factory=recipe.model.factory, **kw)
    out = tmp_path / "out"
    short = ["finetune.max_steps_per_epoch=12", "benchmark.enabled=false", "export.exporter=torchscript"]
    args = ["prune", str(ckpt), name, "-o", str(out), "--arch", recipe.model.factory, "--no-progress"]
    result = CliRunner().invoke(main, [*args, *(a for s in short for a in ("--set", s))])
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    l1 = report["methods"][0]
    assert l1["asked"] == 0.5 and l1["achieved"] == pytest.approx(0.5, abs=0.5 / 400)
    pruned = sparsekit.load_model(out / "model.pt", arch=recipe.model.factory)
    assert pruned.fc1.out_features + pruned.fc2.out_features == 200  # the dead neurons are gone
    assert pruned.fc3.out_features == 10
    assert report["parity"]["ok"] and report["pruned"]["macs"] < 0.5 * report["dense"]["macs"]
