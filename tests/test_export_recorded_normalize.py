"""A checkpoint records how its prune run preprocessed the built-in images (data.normalize), and
``sparsekit export --quantize int8 --data digits`` calibrates and scores on the images so preprocessed,
unless told otherwise: a model fine-tuned on standardized pixels was calibrated on raw [0, 1] ones."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST

from sparsekit.cli import main

RECIPE = (
    "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits, normalize: NORM}\n"
    "finetune: {epochs: 1, max_steps_per_epoch: 3}\npruning: [{method: magnitude, sparsity: 0.5, layers: [fc1]}]\n"
    "benchmark: {enabled: false}\n"
)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Pruned checkpoints of one MLP, trained on standardized and on raw digits."""
    import sparsekit
    from examples.models import mlp

    tmp = tmp_path_factory.mktemp("norm")
    torch.manual_seed(0)
    path = tmp / "mlp.pt"
    sparsekit.save_model(mlp(in_features=64, hidden=[32]), path, factory="examples.models:mlp",
                         kwargs={"in_features": 64, "hidden": [32]}, input_shape=[1, 64])  # fmt: skip
    out = {}
    for norm in ("standard", "none"):
        (tmp / f"{norm}.yaml").write_text(RECIPE.replace("NORM", norm))
        args = ["prune", str(path), str(tmp / f"{norm}.yaml"), "--arch", "examples.models:mlp", "-o", str(tmp / norm)]
        res = CliRunner().invoke(main, [*args, *FAST])
        assert res.exit_code == 0, res.output
        out[norm] = tmp / norm / "model.pt"
    return tmp, out


def _export(model, out, *extra):
    args = ["export", str(model), "--arch", "examples.models:mlp", "-o", str(out), "--exporter", "torchscript"]
    return CliRunner().invoke(main, [*args, "--quantize", "int8", "--data", "digits", "--json", *extra])


def test_checkpoint_records_the_runs_normalize(pruned):
    _, out = pruned
    for norm, path in out.items():
        assert torch.load(path, weights_only=True)["extra"]["normalize"] == norm


def test_export_calibrates_as_the_model_was_trained(pruned):
    tmp, out = pruned
    res = _export(out["standard"], tmp / "q.onnx")
    assert res.exit_code == 0, res.output
    assert "standardized (--normalize standard), as the run that wrote" in res.stderr
    # the same scores as when told explicitly
    told = _export(out["standard"], tmp / "q2.onnx", "--normalize", "standard")
    raw = _export(out["standard"], tmp / "q3.onnx", "--normalize", "none")
    acc = [json.loads(r.stdout)["int8"]["eval"]["fp32_accuracy"] for r in (res, told, raw)]
    assert acc[0] == acc[1] != acc[2]
    assert "standardized" not in raw.stderr  # an explicit choice is not overridden nor remarked on


def test_raw_pixel_runs_stay_raw(pruned):
    tmp, out = pruned
    res = _export(out["none"], tmp / "q4.onnx")
    assert res.exit_code == 0, res.output
    assert "standardized" not in res.stderr
