"""A parity check that passes on large outputs says how large: "max diff 2.5 (ok)" alone reads as broken."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner
from torch import nn

import sparsekit
from examples.models import mlp
from sparsekit.cli import main
from sparsekit.onnx.export import PARITY_BATCHES
from sparsekit.onnx.sessions import random_array
from sparsekit.report import Parity, parity_scale

ARCH = ("--arch", "examples.models:mlp")


def test_the_scale_is_said_only_for_a_passing_check_above_atol():
    base = {"ok": True, "rtol": 1e-4, "atol": 1e-5, "max_abs_output": 2.24e8, "error": None}
    assert parity_scale({**base, "max_abs_diff": 2.5}) == ", outputs up to 2.24e+08, rtol 0.0001"
    assert parity_scale(Parity(**{**base, "max_abs_diff": 2.5})) == ", outputs up to 2.24e+08, rtol 0.0001"
    assert parity_scale({**base, "max_abs_diff": 1e-6}) == ""  # within atol: nothing to explain
    assert parity_scale({**base, "max_abs_diff": 2.5, "ok": False}) == ""  # a failure says FAILED, not why it passed
    assert parity_scale({**base, "max_abs_diff": 2.5, "max_abs_output": None}) == ""  # older reports
    assert parity_scale(Parity(max_abs_diff=2.5, ok=True)) == ""


def large_output_model() -> nn.Module:
    torch.manual_seed(0)
    model = mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(300.0)  # outputs in the millions: float32 rounding alone differs by more than atol
    return model.eval()


def test_export_records_the_largest_torch_output_on_the_parity_inputs(tmp_path):
    model = large_output_model()
    res = sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 64))
    with torch.no_grad():
        want = max(float(model(torch.from_numpy(random_array([b, 64], seed=b))).abs().max()) for b in PARITY_BATCHES)
    assert res["parity"]["ok"]
    assert np.isclose(res["parity"]["max_abs_output"], want, rtol=1e-6)
    assert want > 1e5


def test_cli_export_says_the_output_scale(tmp_path):
    model = large_output_model()
    path = tmp_path / "big.pt"
    sparsekit.save_model(model, path, factory="examples.models:mlp", input_shape=[1, 64])
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(path), *ARCH, "-o", str(tmp_path / "e.onnx"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    parity = doc["parity"]
    assert parity["max_abs_output"] > 1e5
    text = runner.invoke(main, ["export", str(path), *ARCH, "-o", str(tmp_path / "f.onnx")])
    assert text.exit_code == 0, text.output
    if parity["max_abs_diff"] > parity["atol"]:  # (onnxruntime may compute these bit for bit; then nothing to say)
        assert f"outputs up to {parity['max_abs_output']:.3g}" in text.stdout
    else:
        assert "outputs up to" not in text.stdout


def test_the_report_schema_says_which_way_a_speedup_ratio_points():
    # report.json's `speedup` entries hold latency ratios (below 1 is faster), not speedup factors: the schema,
    # which `sparsekit report --schema` prints, must say so where a reader of the JSON looks.
    from sparsekit.report import report_schema

    defs = report_schema()["$defs"]
    assert "below 1 is faster" in defs["Speedup"]["properties"]["ratio"]["description"]
    assert "below 1 is faster" in defs["Benchmark"]["properties"]["speedup"]["description"]
