"""Review round 15, the architectures the project names, end to end through the CLI: ResNet, MobileNetV2 with
squeeze-and-excitation, U-Net, 1-D CNNs, gated MLPs and tied weights, written by a user."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main
from tests.conftest import assert_bad_input, fast_prune, user_module

UNET = """
import torch
import torch.nn.functional as F
from torch import nn


class UNet(nn.Module):
    # A per-pixel (segmentation) head: 3 classes for every pixel of a 1x16x16 input.
    def __init__(self):
        super().__init__()
        self.e1 = nn.Conv2d(1, 4, 3, padding=1)
        self.e2 = nn.Conv2d(4, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.d1 = nn.Conv2d(8, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        a = F.relu(self.e1(x))
        b = F.relu(self.e2(F.max_pool2d(a, 2)))
        return self.out(F.relu(self.d1(torch.cat([self.up(b), a], 1))))


def unet():
    return UNet()
"""

RECIPE = """version: 1
finetune: {epochs: 1}
pruning:
  - {method: structured, ratio: 0.5, schedule: oneshot}
"""


def _unet_files(tmp_path, monkeypatch):
    mod = user_module(tmp_path, monkeypatch, "seg_unet", UNET)
    model_path, data_path, recipe_path = tmp_path / "unet.pt", tmp_path / "seg.npz", tmp_path / "r.yaml"
    sparsekit.save_model(mod.unet(), model_path, factory="seg_unet:unet", input_shape=[1, 1, 16, 16])
    x = np.random.default_rng(0).random((64, 1, 16, 16), dtype=np.float32)
    np.savez(data_path, x=x, y=(x[:, 0] > 0.5).astype(np.int64))  # a label per pixel
    recipe_path.write_text(RECIPE)
    return model_path, data_path, recipe_path


def test_a_per_pixel_output_is_refused_with_what_to_do(tmp_path, monkeypatch, one_thread):
    # A U-Net returning [batch, 3, 16, 16] was told only "the model returns shape [2, 3, 16, 16]; sparsekit
    # expects logits [batch, classes]": no way out named (pool to classes, or prune from one's own loop).
    model_path, data_path, recipe_path = _unet_files(tmp_path, monkeypatch)
    out = tmp_path / "out"
    result = fast_prune(model_path, recipe_path, out, "--data", str(data_path), "--arch", "seg_unet:unet")
    assert_bad_input(result, "unet.pt", "[2, 3, 16, 16]", "per-position", "sparsekit.Pruner", "pool it")
    assert not out.exists()
    result = CliRunner().invoke(
        main, ["validate", str(recipe_path), str(model_path), "--data", str(data_path), "--arch", "seg_unet:unet"]
    )
    assert_bad_input(result, "unet.pt", "per-position", "sparsekit.Pruner")


def test_a_one_score_per_sample_output_names_its_remedy(tmp_path, monkeypatch, one_thread):
    source = UNET + "\n\ndef pooled():\n    m = UNet()\n    f = m.forward\n"
    source += "    m.forward = lambda x: f(x).mean((1, 2, 3))\n    return m\n"
    mod = user_module(tmp_path, monkeypatch, "seg_unet1", source)
    model_path, recipe_path = tmp_path / "u1.pt", tmp_path / "r.yaml"
    sparsekit.save_model(mod.pooled(), model_path, factory="seg_unet1:pooled", input_shape=[1, 1, 16, 16])
    recipe_path.write_text(RECIPE)
    result = fast_prune(model_path, recipe_path, tmp_path / "out", "--arch", "seg_unet1:pooled", "--data", "synthetic")
    assert_bad_input(result, "u1.pt", "[2]", "[batch, classes]", "sparsekit.Pruner")


REUSED = """
import torch.nn.functional as F
from torch import nn


class Reused(nn.Module):
    # One conv applied twice, one hidden Linear applied twice (a weight-shared recurrence): one tensor each.
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.enc = nn.Linear(64, 32)
        self.mid = nn.Linear(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.enc(self.conv(self.conv(x)).flatten(1)))
        return self.fc(F.relu(self.mid(F.relu(self.mid(h)))))


def reused():
    return Reused()
"""


def test_inspect_of_an_onnx_file_counts_a_layer_called_twice_once(tmp_path, monkeypatch, one_thread):
    # The torch checkpoint showed 3,476 params; its ONNX export (the same tensors, stored once) showed 4,542:
    # each call of 'conv' and 'mid' is a node of its own, and the second one ('conv_1', 'mid_1') counted the
    # shared weight and bias again. The export now records the layers called more than once, and inspect counts
    # their weight once (their MACs for every call), as it does for tied layers.
    mod = user_module(tmp_path, monkeypatch, "reused_net", REUSED)
    model = mod.reused().eval()
    path = tmp_path / "m.pt"
    sparsekit.save_model(model, path, factory="reused_net:reused", input_shape=[1, 1, 8, 8])
    torch_view = sparsekit.inspect(path, arch="reused_net:reused")
    onnx_path = tmp_path / "m.onnx"
    sparsekit.export_onnx(model, onnx_path, input_shape=(1, 1, 8, 8))
    onnx_view = sparsekit.inspect(onnx_path)
    assert torch_view["params"] == sum(p.numel() for p in model.parameters()) == 3476
    assert onnx_view["params"] == torch_view["params"]
    assert onnx_view["macs"] == torch_view["macs"] == 2 * 576 + 2048 + 2 * 1024 + 320
    shared = {r["name"]: r.get("shared_with") for r in onnx_view["layers"] if r.get("shared_with")}
    assert set(shared.values()) == {"conv", "mid"}, onnx_view["layers"]
    result = CliRunner().invoke(main, ["inspect", str(onnx_path)])
    assert result.exit_code == 0, result.output
    assert "3,476" in result.output and "4,542" not in result.output


def test_a_one_channel_conv_that_loses_nothing_says_why(tmp_path, monkeypatch, one_thread):
    # The reused model's 1-channel conv under ratio 0.5 read "conv asked 0.500 achieved 0.000 ... short of the
    # 0.500 asked" with reason None in report.json: half a channel rounds to none removed, which it now says.
    mod = user_module(tmp_path, monkeypatch, "reused_net2", REUSED)
    model = mod.reused()
    entry = {"method": "structured", "ratio": 0.5, "schedule": "oneshot", "ignore": ["fc"]}
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [entry]}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1, context={"input_shape": [1, 1, 8, 8]})
    pruner.step()
    row = pruner.methods[0].report()["per_layer"]["conv"]
    assert (row["asked"], row["achieved"]) == (0.5, 0.0)
    assert row["reason"] and "rounds to none removed" in row["reason"], row
    # A layer at its floor says so instead: 0.9 of one channel rounds to one, which min_channels keeps.
    entry["ratio"] = 0.9
    pruner = sparsekit.Pruner(mod.reused(), recipe, steps_per_epoch=1, context={"input_shape": [1, 1, 8, 8]})
    pruner.step()
    row = pruner.methods[0].report()["per_layer"]["conv"]
    assert row["achieved"] == 0.0 and row["reason"] and "min_channels" in row["reason"], row
