"""Review of export, int8 and benchmarking on models the repository does not ship."""

from __future__ import annotations

import numpy as np
import torch.nn as nn
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main


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
