"""A model file is recognised by what it holds, not by the case of its suffix: ``MODEL.SAFETENSORS``,
``weights.bin`` holding safetensors, and ``MODEL.ONNX`` are read as what they are."""

import pytest
import torch
from click.testing import CliRunner
from conftest import user_module
from safetensors.torch import save_file

from sparsekit.cli import main

NET = """
from torch import nn

def build():
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
"""


@pytest.fixture
def net(tmp_path, monkeypatch):
    return user_module(tmp_path, monkeypatch, "named_net", NET).build()


@pytest.mark.parametrize("name", ["W.SAFETENSORS", "weights.bin", "model.SafeTensors"])
def test_safetensors_by_content_or_any_case(tmp_path, net, name):
    with torch.no_grad():
        net[0].weight[:3] = 0
    path = tmp_path / name
    save_file(net.state_dict(), str(path))
    args = ["inspect", str(path), "--arch", "named_net:build", "--input-shape", "1,8", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    import json

    rows = {r["name"]: r for r in json.loads(res.stdout)["layers"]}
    assert rows["0"]["nonzero_weights"] == 8 * 3  # the weights read are the file's, not a fresh model's


def test_garbage_with_a_brace_is_still_refused(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes((10**9).to_bytes(8, "little") + b"{not a header")  # declares more header than the file holds
    res = CliRunner().invoke(main, ["inspect", str(path), "--arch", "named_net:build", "--input-shape", "1,8"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_onnx_in_upper_case(tmp_path, net):
    from sparsekit.onnx import export_onnx

    path = tmp_path / "MODEL.ONNX"
    export_onnx(net, path, [1, 8], exporter="torchscript")
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "ONNX" in res.stdout.splitlines()[0]
