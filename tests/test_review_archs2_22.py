"""Architectures users bring that the repository does not hold (review round 22, angle: archs2)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

import sparsekit

torch.set_num_threads(1)


class _DepthwiseMultiplier(nn.Module):
    """A depthwise conv with channel multiplier 2 (each input channel owns two outputs), as in MobileNet v1 ports."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.pw(F.relu(self.dw(x))))
        return self.head(x.mean((2, 3)))


def _l1_channel(target: float | None = None) -> dict:
    entry: dict = {"method": "l1", "strength": 0.05, "group": "channel", "mode": "proximal"}
    if target is not None:
        entry.update(target=target, schedule={"start_epoch": 0, "end_epoch": 1})
    return {"version": 1, "model": {"input_shape": [1, 1, 8, 8]}, "finetune": {"epochs": 1}, "pruning": [entry]}


def test_group_l1_names_depthwise_multiplier_layers_that_cannot_lose_units() -> None:
    # The depthwise multiplier conv was taken for a plain depthwise one (coupled channel by channel): its units and
    # the stem's were counted as removable, and finalize's removal then failed with torch's raw shape error.
    torch.manual_seed(0)
    pruner = sparsekit.Pruner(_DepthwiseMultiplier(), _l1_channel(), steps_per_epoch=2)
    cannot = pruner.methods[0].report()["cannot_remove"]
    assert set(cannot) >= {"stem", "dw"}, cannot
    assert "channel multiplier 2" in cannot["dw"]


def test_group_l1_target_leaves_depthwise_multiplier_out_and_finalize_stays_quiet() -> None:
    torch.manual_seed(0)
    model = _DepthwiseMultiplier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = sparsekit.Pruner(model, _l1_channel(0.5), steps_per_epoch=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
            pruner.regularize()
            opt.step()
            pruner.step()
        model.eval()
        x = torch.randn(3, 1, 8, 8)
        with torch.no_grad():
            before = model(x)
        report = pruner.methods[0].report()
        pruned = pruner.finalize().eval()
    assert set(report["target_left_out"]) == {"stem", "dw"}, report["target_left_out"]
    assert not [w for w in caught if "RuntimeError" in str(w.message)], [str(w.message) for w in caught]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), before, rtol=0, atol=1e-5)
    assert pruned.pw.out_channels < 16  # the units l1 did count are removed
