"""A run folder's checkpoint is data: a tampered or foreign optimizer, mask, RNG or history state in
checkpoints/last.pt makes --resume exit 2 naming the file, before training (it exited 1 "unexpected failure" at
the first step, or after the remaining epochs when the report was built)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, assert_bad_input

import sparsekit
from sparsekit.cli import main

RECIPE = """
model: {input_shape: [1, 64]}
data: {source: digits}
finetune: {epochs: 2, max_steps_per_epoch: 3}
pruning: [{method: magnitude, sparsity: 0.5}]
benchmark: {enabled: false}
"""
ARCH = ["--arch", "examples.models:mlp"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from examples.models import mlp

    tmp = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    sparsekit.save_model(mlp(), tmp / "m.pt", "examples.models:mlp", input_shape=[1, 64])
    (tmp / "r.yaml").write_text(RECIPE)
    result = run("prune", tmp / "m.pt", tmp / "r.yaml", "-o", tmp / "base", *ARCH, *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    return tmp


def tamper(state, mode):
    if mode == "rng":
        state["rng"] = torch.zeros(3, dtype=torch.uint8)
    elif mode == "mask_shape":
        state["pruner"]["masks"] = {k: torch.ones(2, 2, dtype=torch.bool) for k in state["pruner"]["masks"]}
    elif mode == "optim":
        groups = state["optimizer"]["param_groups"]
        state["optimizer"] = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": groups}
    elif mode == "history":
        state["history"] = [{"epoch": "x"}] * 2


@pytest.mark.parametrize("mode", ["rng", "mask_shape", "optim", "history"])
def test_a_tampered_checkpoint_state_is_refused_before_training(finished, tmp_path, mode):
    folder = tmp_path / "t"
    shutil.copytree(finished / "base", folder, symlinks=True)
    path = folder / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    tamper(state, mode)
    torch.save(state, path)
    data = path.read_bytes()  # as the author of a shared run folder would: the manifest agrees with the file
    manifest = json.loads((folder / ".sparsekit" / "manifest.json").read_text())
    manifest["files"]["checkpoints/last.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / ".sparsekit" / "manifest.json").write_text(json.dumps(manifest))
    result = run("prune", finished / "m.pt", finished / "r.yaml", "-o", folder, *ARCH, *FAST, "--resume",
                 "--allow-change", "finetune.epochs", "--set", "finetune.epochs=3")  # fmt: skip
    assert_bad_input(result, "last.pt", "does not fit this model and recipe")


def test_plan_takes_a_recipe_path_or_dict_as_the_pruner_does(tmp_path):
    # sparsekit.plan("r.yaml") raised AttributeError: 'str' object has no attribute 'source'
    (tmp_path / "r.yaml").write_text(RECIPE)
    from_path = sparsekit.plan(str(tmp_path / "r.yaml"))
    from_dict = sparsekit.plan({"pruning": [{"method": "magnitude", "sparsity": 0.5}]})
    assert from_path["valid"] and from_path["recipe"] == str(tmp_path / "r.yaml")
    assert from_dict["valid"] and from_path["epochs"] == 2 and len(from_dict["descriptions"]) == 1
    with pytest.raises(TypeError):
        sparsekit.plan(3)
