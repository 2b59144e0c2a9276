"""Review round 12, architectures users bring: prune, sensitivity and auto allocation on models written by a user."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from sparsekit.allocation import auto_allocate


class ProjectedResidual(nn.Module):
    """c3's output is added to a 1x1 projection of c1's: with 'proj' ignored, c3 cannot lose channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.proj = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = F.relu(self.c1(x))
        y = self.c3(F.relu(self.c2(h))) + self.proj(h)
        return self.fc(F.relu(y).mean((2, 3)))


def _batches(n: int = 4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


def _auto_recipe(ignore: list[str], round_to: int | None = None, macs: float = 0.5) -> sparsekit.Recipe:
    entry = {"method": "structured", "ratio": "auto", "target_macs": macs, "schedule": "oneshot", "ignore": ignore}
    return sparsekit.Recipe(version=1, finetune={"epochs": 1}, pruning=[{**entry, "round_to": round_to}])


def test_an_auto_ratio_asks_nothing_of_a_layer_held_by_an_ignored_coupling(one_thread):
    # c3 is held whole by the ignored 'proj'. The allocation gave layer_ratio to c1 and c2 only, so c3 took the
    # entry's ratio, a mean over c1 and c2 (0.417 here): the report read "ratio 0.417 chosen for its target,
    # achieved 0.250" and "c3 asked 0.417 achieved 0.000, short of the 0.417 asked", though target_macs was met and
    # nothing was ever asked of c3.
    torch.manual_seed(0)
    model = ProjectedResidual()
    allocated, _ = auto_allocate(model, _auto_recipe(["proj", "fc"]), _batches(), input_shape=[1, 3, 8, 8])
    spec = allocated.pruning[0]
    assert spec.layer_ratio is not None and spec.layer_ratio["c3"] == 0.0
    pruner = sparsekit.Pruner(model, allocated, steps_per_epoch=1, context={"input_shape": [1, 3, 8, 8]})
    pruner.step()
    model = pruner.finalize()
    report = pruner.methods[0].report()
    assert report["per_layer"]["c3"]["asked"] == 0.0
    assert report["per_layer"]["c3"]["reason"] == "coupled to ignored layer 'proj'"  # why it is asked nothing
    # The entry's ratio and what it asked count c3's channels as kept, as what it achieved does.
    assert abs(report["asked"] - report["achieved"]) < 1e-9
    assert abs(spec.ratio - report["achieved"]) < 1e-9
    assert "reason" not in report  # no shortfall to explain
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 4)


class TinyAttention(nn.Module):
    """Attention applies out_proj's weight itself: the trace never reaches the Linear, yet it loses channels with
    the residual stream's group (the patch embedding's)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = nn.MultiheadAttention(16, 1, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.fc(t.mean(1))


def test_an_auto_ratio_asks_nothing_only_of_layers_that_cannot_lose_channels(one_thread):
    # Only a layer coupled to an ignored one is held: attention's out_proj, which the trace does not reach, follows
    # the patch embedding's channels and must not be listed at 0 as if it kept them all.
    allocated, _ = auto_allocate(TinyAttention(), _auto_recipe(["fc"]), _batches(), input_shape=[1, 3, 8, 8])
    assert "attn.out_proj" not in (allocated.pruning[0].layer_ratio or {})


def test_an_auto_ratio_with_no_prunable_layer_says_so_not_raise_the_target(one_thread):
    # The only selected layer, c3, is held whole by the ignored 'proj'. The allocation said target_macs "cannot be
    # reached: ... saves only 0 MACs ...; raise target_macs ..., or give a fixed ratio instead of auto": neither
    # helps, since no layer of the entry can lose a channel.
    with pytest.raises(sparsekit.TargetError) as info:
        auto_allocate(
            ProjectedResidual(), _auto_recipe(["c1", "c2", "proj", "fc"]), _batches(), input_shape=[1, 3, 8, 8]
        )
    message = str(info.value)
    assert "no layer this entry selects can lose output channels" in message
    assert "'c3': coupled to ignored layer 'proj'" in message
    assert "raise target_macs" not in message


PROJECTED = """
import torch.nn.functional as F
from torch import nn


class ProjectedResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.proj = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = F.relu(self.c1(x))
        y = self.c3(F.relu(self.c2(h))) + self.proj(h)
        return self.fc(F.relu(y).mean((2, 3)))


def build():
    return ProjectedResidual()
"""


def failing_allocation(tmp_path, monkeypatch) -> list[str]:
    """A ``sensitivity`` command line (without ``-o``) with nothing to probe (c3, the only layer selected, is held by
    the ignored 'proj') whose allocation then fails (exit 2, naming target_macs)."""
    import numpy as np

    from tests.conftest import user_module

    mod = user_module(tmp_path, monkeypatch, "projected_residual", PROJECTED)
    model = tmp_path / "m.pt"
    sparsekit.save_model(mod.build(), model, factory="projected_residual:build", input_shape=[1, 3, 8, 8])
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((32, 3, 8, 8)).astype("float32"), y=rng.integers(0, 4, 32))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {batch_size: 16}\nfinetune: {epochs: 1}\npruning:\n  - method: structured\n"
        "    ratio: auto\n    target_macs: 0.5\n    schedule: oneshot\n    ignore: [c1, c2, proj, fc]\n"
    )
    return ["sensitivity", str(model), str(recipe), "--arch", "projected_residual:build", "--data", str(data)]


def test_sensitivity_whose_allocation_fails_with_nothing_probed_leaves_no_folder(tmp_path, monkeypatch, one_thread):
    # Nothing to probe, then the allocation fails (exit 2): the command had created the output folder and left it
    # there, empty; a prune run leaves none.
    from click.testing import CliRunner

    from sparsekit.cli import main
    from tests.conftest import assert_bad_input

    out = tmp_path / "sens"
    args = failing_allocation(tmp_path, monkeypatch)
    result = CliRunner().invoke(main, [*args, "-o", str(out), "--no-progress"])
    assert_bad_input(result, "target_macs")
    assert not out.exists()


def test_attention_out_proj_follows_the_residual_streams_group(one_thread):
    # MultiheadAttention applies out_proj's weight itself, so the trace never reaches the Linear: it was reported
    # "not reached by the forward pass" (sensitivity left it out as such) and its channels, which go with the
    # residual stream's group, were counted as a layer of their own ("48 of 96 channels kept" for a ViT block).
    recipe = sparsekit.Recipe(
        version=1,
        finetune={"epochs": 1},
        pruning=[{"method": "structured", "ratio": 0.5, "schedule": "oneshot", "round_to": None}],
    )
    pruner = sparsekit.Pruner(TinyAttention(), recipe, steps_per_epoch=1, context={"input_shape": [1, 3, 8, 8]})
    pruner.step()
    model = pruner.finalize()
    report = pruner.methods[0].report()
    assert "attn.out_proj" not in report["counted"]  # its channels are the patch embedding's group's
    assert report["per_layer"]["attn.out_proj"]["reason"] is None
    assert report["per_layer"]["attn.out_proj"]["achieved"] == 0.5
    assert report["achieved"] == 0.5
    assert model.attn.out_proj.out_features == 8
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 4)
