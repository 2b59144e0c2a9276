"""MACs and parameter counts read from ONNX files agree with the torch-side counts."""

from __future__ import annotations

import onnx
import pytest
import torch

import sparsekit
from examples.models import mlp, resnet_small, small_cnn
from sparsekit.onnx import onnx_macs, param_counts
from sparsekit.stats import model_stats


@pytest.mark.parametrize("make", [small_cnn, resnet_small], ids=["small_cnn", "resnet_small"])
def test_conv_macs_match_torch(tmp_path, make):
    model = make()
    path = tmp_path / "m.onnx"
    sparsekit.export_onnx(model, path, [1, 1, 28, 28], exporter="torchscript")
    assert onnx_macs(path)["macs"] == model_stats(model, [1, 1, 28, 28])["macs"]


def test_pruned_int8_and_sparse_files_count_the_same_weights(tmp_path):
    from sparsekit.onnx import quantize_int8, to_sparse_storage

    model = mlp()
    rec = sparsekit.Recipe(pruning=[{"method": "magnitude", "sparsity": 0.75, "schedule": "oneshot"}])
    model = sparsekit.Pruner(model, rec, steps_per_epoch=1).finalize()
    fp32, q8, sp = tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "m.sparse.onnx"
    sparsekit.export_onnx(model, fp32, [1, 64], exporter="torchscript")
    quantize_int8(fp32, q8, calibration=[torch.randn(8, 64).numpy() for _ in range(4)])
    to_sparse_storage(fp32, sp)
    stats = model_stats(model, [1, 64])
    for path in (fp32, q8, sp):
        macs = onnx_macs(path)
        assert macs["macs"] == stats["macs"], path.name
        # int8 rounding may zero a few more tiny weights, never revive one
        assert macs["effective_macs"] <= stats["effective_macs"]
        assert macs["effective_macs"] >= 0.99 * stats["effective_macs"]
        counts = param_counts(path)
        assert counts["params"] == sum(p.numel() for p in model.parameters()), path.name
    assert onnx_macs(fp32)["effective_macs"] == stats["effective_macs"]


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_macs_match_torch(tmp_path, groups):
    # weight [in, out/groups, k, k]: the output-unit dim is 1, and every input value meets out/groups*k*k weights
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(8, 4, 3, stride=2, groups=groups),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 17 * 17, 10),
    )
    sparsekit.export_onnx(model, tmp_path / "m.onnx", [1, 2, 8, 8], exporter="torchscript")
    torch_macs = model_stats(model, [1, 2, 8, 8])["macs"]
    assert onnx_macs(tmp_path / "m.onnx")["macs"] == torch_macs
    assert torch_macs == 2 * 8 * 9 * 64 + 8 * (4 // groups) * 9 * 64 + 4 * 17 * 17 * 10


def test_a_file_stored_with_sparse_initializers_keeps_its_macs(tmp_path):
    # The dynamo exporter's graph (an upsampling's Shape -> Concat -> Resize) stored with a sparse initializer:
    # onnx's shape inference stopped on it ("type case mismatch"), and every conv lost its MACs (24 of 165,912).
    import torch.nn.functional as F

    from sparsekit.onnx import export_onnx, onnx_macs, to_sparse_storage

    class Up(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.interpolate(x, scale_factor=2)
            return self.fc(self.c2(torch.relu(self.c1(x))).mean((2, 3)))

    torch.manual_seed(0)
    model = Up()
    with torch.no_grad():
        model.c2.weight.mul_(torch.rand_like(model.c2.weight) > 0.95)
    export_onnx(model, tmp_path / "up.onnx", [1, 1, 8, 8], exporter="dynamo")
    to_sparse_storage(tmp_path / "up.onnx", tmp_path / "sparse.onnx")
    assert len(onnx.load(str(tmp_path / "sparse.onnx")).graph.sparse_initializer) >= 1
    dense, sparse = onnx_macs(tmp_path / "up.onnx"), onnx_macs(tmp_path / "sparse.onnx")
    assert sparse["macs"] == dense["macs"] == 16 * 16 * 8 * 9 + 16 * 16 * 8 * 8 * 9 + 8 * 3
    assert sparse["effective_macs"] == dense["effective_macs"] < dense["macs"]
