"""Review round 10, architectures users bring: what they found, end to end."""

from __future__ import annotations

import json

from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main
from tests.conftest import user_module

TIED = """
import torch
import torch.nn.functional as F
from torch import nn


class Tied(nn.Module):
    # An autoencoder whose decoder applies the encoder's weight transposed, then a classifier on the reconstruction.
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(64, 16)
        self.dec_bias = nn.Parameter(torch.zeros(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        z = torch.relu(self.enc(x))
        return self.head(F.linear(z, self.enc.weight.t(), self.dec_bias))


def build():
    return Tied()
"""


def test_macs_count_a_tied_decoder_that_applies_the_encoder_weight_itself(tmp_path, monkeypatch):
    # The decoder's F.linear(z, enc.weight.t()) is 16 x 64 multiply-accumulates per sample no forward hook sees: the
    # .pt counted 1,664 MACs where its exported ONNX (and the model) does 2,688.
    mod = user_module(tmp_path, monkeypatch, "tied_ae", TIED)
    path = tmp_path / "tied.pt"
    sparsekit.save_model(mod.build(), path, factory="tied_ae:build", input_shape=[1, 64])
    result = CliRunner().invoke(main, ["inspect", str(path), "--arch", "tied_ae:build", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {row["name"]: row for row in doc["layers"]}
    assert rows["enc"]["macs"] == 64 * 16 + 16 * 64
    assert doc["macs"] == 64 * 16 + 16 * 64 + 64 * 10
