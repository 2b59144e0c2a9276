"""Review of export, int8 and benchmarking on models the repository does not ship."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main
from sparsekit.onnx.export import check_zeros


def conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 14, 5))


def test_export_data_shape_mismatch_names_export_option(tmp_path, monkeypatch):
    # Export has no --set: a calibration file of the wrong sample shape is fixed with --input-shape there.
    monkeypatch.chdir(tmp_path)
    sparsekit.save_model(conv1d(), "m.pt", factory="tests.test_review_export_8:conv1d", input_shape=[1, 4, 16])
    rng = np.random.default_rng(0)
    np.savez("d.npz", x=rng.normal(size=(40, 16)).astype("float32"), y=rng.integers(0, 5, 40))
    args = [
        "export",
        "m.pt",
        "-o",
        "q.onnx",
        "--quantize",
        "int8",
        "--data",
        "d.npz",
        "--arch",
        "tests.test_review_export_8:conv1d",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "--input-shape 1,16" in res.output and "--set" not in res.output
    assert not (tmp_path / "q.onnx").exists()


class Branchy(nn.Module):
    """Takes another layer on inputs that random normal values never reach: tracing keeps only one path."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(x / 100) if x.abs().max() > 100 else self.a(x)


def branchy() -> nn.Module:
    return Branchy()


def test_torchscript_export_of_data_dependent_branch_warns(tmp_path, monkeypatch):
    # Parity passes on random inputs, so the tracer's warning is the one sign that the file drops a branch.
    monkeypatch.chdir(tmp_path)
    sparsekit.save_model(branchy(), "m.pt", factory="tests.test_review_export_8:branchy", input_shape=[1, 16])
    info = sparsekit.export_onnx(branchy(), "lib.onnx", [1, 16], exporter="torchscript")
    assert info["parity"]["ok"] and info["tracer_warnings"]
    args = [
        "export",
        "m.pt",
        "-o",
        "m.onnx",
        "--exporter",
        "torchscript",
        "--arch",
        "tests.test_review_export_8:branchy",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "Warning: the TorchScript tracer warned" in res.output and "--exporter dynamo" in res.output
    res = CliRunner().invoke(main, ["export", "m.pt", "-o", "c.onnx", "--arch", "tests.test_review_export_8:branchy"])
    assert "tracer warned" not in res.output  # (auto: dynamo decides, and refuses the branch)


def test_batchnorm_with_a_zero_weight_folded_into_conv_keeps_zeros(tmp_path):
    # A BatchNorm weight pruned to 0 zeroes a whole output channel of the folded convolution: more zeros, none lost.
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8), nn.Flatten(), nn.Linear(8 * 14, 5)).eval()
    with torch.no_grad():
        model[1].weight[0] = 0
        model[0].weight[1] = 0
    for exporter in ("torchscript", "dynamo"):
        info = sparsekit.export_onnx(model, tmp_path / f"{exporter}.onnx", [1, 4, 16], exporter=exporter)
        conv = info["zeros"]["layers"][0]
        assert conv["onnx_zeros"] > conv["torch_zeros"] and info["zeros"]["zeros_ok"], info["zeros"]


def test_a_lost_zero_is_still_caught(tmp_path):
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight[:, :4] = 0
    path = tmp_path / "m.onnx"
    sparsekit.export_onnx(model, path, [1, 16], exporter="torchscript")
    with torch.no_grad():
        model[0].weight[0, 0] = 1.0  # the file holds a zero there; and one of the model's zeros is not in the file
        model[0].weight[0, 5] = 0.0
    assert not check_zeros(model, path)["zeros_ok"]
