"""``sparsekit export --quantize int8 --data pkg.module:callable`` seeds the global generators before the
user's code runs, as prune does: a callable that draws its calibration samples at random gives the same int8
file every time, wherever the process's generators stood."""

import hashlib

import onnx
import torch
from click.testing import CliRunner
from conftest import user_module

from sparsekit.cli import main

SOURCE = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

def build():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

def loaders():
    x = torch.randn(96, 16) * torch.rand(1) * 4  # the scale of the data itself is random
    y = torch.randint(0, 4, (96,))
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=32, shuffle=True), DataLoader(ds, batch_size=32)
"""


def test_int8_calibration_from_a_random_callable_is_reproducible(tmp_path, monkeypatch):
    mod = user_module(tmp_path, monkeypatch, "seeded_export_net", SOURCE)
    torch.manual_seed(3)
    weights = tmp_path / "w.pt"
    torch.save(mod.build().state_dict(), weights)
    digests = []
    for i, state in enumerate((1, 2)):
        torch.manual_seed(state)  # where the caller's generator stands must not matter
        out = tmp_path / f"q{i}.onnx"
        args = ["export", str(weights), "--arch", "seeded_export_net:build", "--input-shape", "1,16", "-o", str(out)]
        res = CliRunner().invoke(
            main, [*args, "--quantize", "int8", "--data", "seeded_export_net:loaders", "--exporter", "torchscript"]
        )
        assert res.exit_code == 0, res.output
        # the initializers (weights, int8 scales and zero points): the file's metadata holds a per-write id
        inits = onnx.load(str(out)).graph.initializer
        digests.append(hashlib.sha256(b"".join(t.SerializeToString() for t in inits)).hexdigest())
    assert digests[0] == digests[1]
