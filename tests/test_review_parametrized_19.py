"""Review (parametrized layers): models whose Linear/Conv weights a parametrization or an old-style norm hook
computes (weight_norm, spectral_norm, a parametrization of the user's own)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import sparsekit
from sparsekit.stats import layer_macs, model_stats

torch.set_num_threads(1)


class _Symmetric(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.triu() + x.triu(1).transpose(-1, -2)


def _mlp(wrap: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old hook-style weight_norm is deprecated
        if wrap == "weight_norm":
            parametrizations.weight_norm(model[3])
        elif wrap == "spectral_norm":
            parametrizations.spectral_norm(model[3])
        elif wrap == "old_weight_norm":
            torch.nn.utils.weight_norm(model[3])
        elif wrap == "symmetric":
            parametrize.register_parametrization(model[3], "weight", _Symmetric())
    return model


def _cnn(wrap: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    if wrap == "old_spectral_norm":
        torch.nn.utils.spectral_norm(model[2])
    else:
        parametrizations.weight_norm(model[2])
    return model


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "old_weight_norm", "symmetric"])
def test_macs_count_a_linear_whose_weight_is_computed(wrap: str) -> None:
    model = _mlp(wrap)
    macs = layer_macs(model, [1, 1, 8, 8])
    assert macs.get("3") == 32 * 32  # was left out: only maskable layers were counted
    assert model_stats(model, [1, 1, 8, 8])["macs"] == 64 * 32 + 32 * 32 + 32 * 10


@pytest.mark.parametrize(
    ("build", "wrap", "expected"),
    [
        (_mlp, "weight_norm", 64 * 32 + 32 * 32 + 32 * 10),
        (_cnn, "old_spectral_norm", 8 * 9 * 64 + 8 * 8 * 9 * 64 + 8 * 10),
    ],
)
def test_inspect_of_the_checkpoint_and_of_its_onnx_agree(tmp_path, build, wrap: str, expected: int) -> None:
    model = build(wrap)
    shape = [1, 1, 8, 8]
    sparsekit.save_model(model, tmp_path / "m.pt", factory="tests.test_review_parametrized_19:_mlp", input_shape=shape)
    sparsekit.export_onnx(model, tmp_path / "m.onnx", shape, exporter="torchscript")
    from sparsekit.inspection import _torch_counts

    torch_side = _torch_counts(model, shape)
    onnx_side = sparsekit.inspect(tmp_path / "m.onnx")
    # The ONNX side left out the Gemm/Conv whose weight the graph computes, and counted spectral_norm's power
    # iteration (weight_orig @ v, no sample's work) as a layer of its own.
    assert torch_side["macs"] == onnx_side["macs"] == expected
    assert onnx_side["other_macs"]["macs"] == torch_side["other_macs"]["macs"] > 0
    assert "MatMul" not in {row["type"] for row in onnx_side["layers"]}
