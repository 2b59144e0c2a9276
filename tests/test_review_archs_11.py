"""Review round 11, architectures users bring: structured pruning dry runs on models written by a user."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main
from tests.conftest import user_module

SLICED_CAT = """
import torch
import torch.nn.functional as F
from torch import nn


class SlicedCat(nn.Module):
    # 'a' feeds 'b' and is concatenated beside it; the slice keeps b's channels, so 'a' is coupled to 'b'.
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.gn(self.a(x)))
        y = torch.cat([self.b(x), x], 1)[:, :8]
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


def build():
    return SlicedCat()
"""

RECIPE = """version: 1
data: {batch_size: 16}
finetune: {epochs: 1}
pruning:
  - method: structured
    ratio: 0.5
    schedule: oneshot
    ignore: [b, fc]
"""


def test_validate_names_the_coupled_layer_not_round_to_when_a_ratio_falls_short(tmp_path, monkeypatch, one_thread):
    # 'a' keeps all its channels because it is coupled to the ignored 'b': prune's report says so, but validate's
    # dry-run warning blamed "channel counts are rounded to multiples of 16 ... a smaller round_to", a setting
    # that does not move the ratio here.
    mod = user_module(tmp_path, monkeypatch, "sliced_cat", SLICED_CAT)
    model = tmp_path / "cat.pt"
    sparsekit.save_model(mod.build(), model, factory="sliced_cat:build", input_shape=[1, 3, 8, 8])
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((32, 3, 8, 8)).astype("float32"), y=rng.integers(0, 4, 32))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    args = ["validate", str(recipe), str(model), "--arch", "sliced_cat:build", "--data", str(data)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if "prune would report the target missed" in line)
    assert "coupled to ignored layer 'b'" in warning
    assert "round_to" not in warning
