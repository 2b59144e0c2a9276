"""Mends from the nineteenth review, on models whose input is not a float image: token ids (nn.Embedding,
nn.EmbeddingBag) and 1-D signals."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import sparsekit


class EmbConv(nn.Module):
    """A text classifier: token ids -> Embedding -> Conv1d x2 -> mean over time -> Linear."""

    def __init__(self, vocab: int = 50, dim: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.conv = nn.Conv1d(dim, 16, 3, padding=1)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x).transpose(1, 2)
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv(h)))).mean(2))


class Bag(nn.Module):
    """Token ids -> EmbeddingBag (mean) -> MLP."""

    def __init__(self, vocab: int = 30) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, 16, mode="mean")
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.bag(x))))


def _ids(n: int = 64, length: int = 12, vocab: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))
    return x, x[:, 0] % 4


@pytest.mark.parametrize("make", [EmbConv, Bag])
def test_structured_pruning_of_a_token_id_model_from_the_python_api_removes_channels(make, one_thread, tmp_path):
    # The Pruner traced every model with float zeros, which an embedding refuses: structured pruning of a text
    # classifier was refused as "takes integer input" even from the user's own loop, which README pointed to.
    model = make()
    recipe = sparsekit.Recipe(
        model={"input_shape": [1, 12]},
        pruning=[{"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot"}],
    )
    before = sum(p.numel() for p in model.parameters())
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    x, y = _ids()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    pruner.step()
    model = pruner.finalize()
    assert sum(p.numel() for p in model.parameters()) < before
    assert model(x).shape == (64, 4)  # still takes ids

    # ... and it exports with an int64 input that onnxruntime runs, and benchmarks.
    path = tmp_path / "m.onnx"
    info = sparsekit.export_onnx(model, path, input_shape=(1, 12), exporter="torchscript")
    assert info["parity"]["ok"], info["parity"]
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    stats = sparsekit.benchmark(path, batch_sizes=[1], warmup=1, runs=2, budget_s=None)
    assert stats["files"]
