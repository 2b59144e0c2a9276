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


_MONO_AUDIO = (
    "import torch\nfrom torch import nn\n\n\ndef build():\n"
    "    return nn.Sequential(nn.Conv1d(1, 8, 9, stride=2, padding=4), nn.BatchNorm1d(8), nn.ReLU(),\n"
    "                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 10))\n"
)


def test_npz_samples_the_conv1d_model_cannot_take_blame_the_data_not_the_models_shape(tmp_path, monkeypatch):
    # A mono Conv1d audio model and a stereo .npz (x of shape (n, 2, 128)), no model.input_shape: the run said
    # "cannot tell the model's input shape; set model.input_shape (e.g. [1,1,128])", and that shape was then
    # refused for not holding the file's (2, 128) samples. The data is what does not fit: it says so.
    import numpy as np
    from click.testing import CliRunner

    from sparsekit.cli import main

    (tmp_path / "audionet_archs2.py").write_text(_MONO_AUDIO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import audionet_archs2

    torch.save(audionet_archs2.build().state_dict(), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "stereo.npz", x=rng.standard_normal((64, 2, 128)).astype("float32"), y=rng.integers(0, 10, 64))
    (tmp_path / "r.yaml").write_text("version: 1\npruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n")
    result = CliRunner().invoke(
        main, ["validate", "r.yaml", "w.pt", "--arch", "audionet_archs2:build", "--data", "stereo.npz"]
    )
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.stderr
    assert "cannot tell the model's input shape" not in error[0]
    assert "--data stereo.npz gives samples of shape (2, 128)" in error[0]
    assert "save x with shape (n, 1, 128)" in error[0]


def test_an_input_shape_without_the_channels_is_told_the_shape_a_conv1d_model_takes(tmp_path):
    # `--input-shape 1,256` for an audio model of [N, 1, 256] inputs (Conv1d + BatchNorm1d): torch's error was about
    # a running_mean, and the advice only "give the shape it takes"; the channels left out are now put back.
    import pytest

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 8, 9, stride=2, padding=4), nn.BatchNorm1d(8), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    with pytest.raises(sparsekit.SparsekitError) as caught:
        sparsekit.export_onnx(model, tmp_path / "a.onnx", input_shape=(1, 256))
    assert "the model takes [1, 1, 256]" in str(caught.value), str(caught.value)
    assert not (tmp_path / "a.onnx").exists()
    from sparsekit.errors import DataError
    from sparsekit.inspection import check_input_shape

    with pytest.raises(DataError, match=r"the model takes \[1, 1, 256\]"):  # inspect, validate, a recipe's shape
        check_input_shape(model, [1, 256])
