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


TOKENS_MODULE = """
import torch
from torch import nn


class EmbConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 8)
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(self.emb(x).transpose(1, 2))).mean(2))


def build():
    return EmbConv()


def loaders(ids=True):
    x = torch.randint(0, 40, (64, 10), generator=torch.Generator().manual_seed(0))
    ds = torch.utils.data.TensorDataset(x if ids else x.float(), x[:, 0] % 4)
    return torch.utils.data.DataLoader(ds, batch_size=16), torch.utils.data.DataLoader(ds, batch_size=32)


def big_ids():
    x = torch.randint(40, 60, (64, 10), generator=torch.Generator().manual_seed(0))
    ds = torch.utils.data.TensorDataset(x, x[:, 0] % 4)
    return torch.utils.data.DataLoader(ds, batch_size=16), torch.utils.data.DataLoader(ds, batch_size=32)
"""


@pytest.fixture
def token_run(tmp_path, monkeypatch):
    """A token-id text classifier saved as a state_dict, its module importable, and a structured recipe."""
    from tests.conftest import user_module

    mod = user_module(tmp_path, monkeypatch, "tokmod19", TOKENS_MODULE)
    model_path = tmp_path / "m.pt"
    torch.save(mod.build().state_dict(), model_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 10]}\ndata: {source: ids.npz, batch_size: 16}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: structured, ratio: 0.5, round_to: null, schedule: oneshot}]\n"
        "benchmark: {batch_sizes: [1], warmup: 1, runs: 2}\n"
    )
    return model_path, recipe


def _npz(path, x) -> None:
    import numpy as np

    np.savez(path, x=x, y=np.asarray(x)[:, 0] % 4)


def test_prune_of_a_token_id_model_on_an_npz_of_ids_removes_channels_and_exports_int64(token_run, tmp_path):
    # `sparsekit prune` refused every model taking token ids ("sparsekit runs ... on float inputs only"), and an
    # .npz x of ids was turned into float32; now ids stay int64 and the run goes through, structured removal too.
    import json

    import numpy as np

    from tests.conftest import fast_prune

    model_path, recipe = token_run
    _npz(tmp_path / "ids.npz", np.random.default_rng(0).integers(0, 40, (80, 10)))
    out = tmp_path / "o"
    result = fast_prune(model_path, recipe, out, "--arch", "tokmod19:build", "--data", str(tmp_path / "ids.npz"))
    assert result.exit_code == 0, (result.output, result.stderr)
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["params"] < report["dense"]["params"]
    assert report["parity"]["ok"]
    assert onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ("ids_big.npz", ("ids from 40 to 59", "ids must be 0 to 39")),
        ("floats.npz", ("x holds float64 values", "integer ids")),
        ("digits", ("digits holds float values", "token ids")),
        ("tokmod19:big_ids", ("token ids from 40 to 59", "ids must be 0 to 39")),
    ],
)
def test_token_ids_the_model_cannot_take_are_refused_naming_the_data(token_run, tmp_path, data, needles):
    # an id past the embedding failed mid-training inside nn.Embedding (exit 1, "index out of range in self")
    import numpy as np

    from tests.conftest import assert_bad_input, fast_prune

    model_path, recipe = token_run
    _npz(tmp_path / "ids_big.npz", np.random.default_rng(0).integers(40, 60, (80, 10)))
    _npz(tmp_path / "floats.npz", np.random.default_rng(0).integers(0, 40, (80, 10)).astype(np.float64))
    out = tmp_path / "o"
    given = str(tmp_path / data) if data.endswith(".npz") else data
    assert_bad_input(fast_prune(model_path, recipe, out, "--arch", "tokmod19:build", "--data", given), *needles)
    assert not out.exists()


def test_a_float_model_fed_integer_batches_is_still_told_to_convert_them(tmp_path, monkeypatch):
    # the guard that pairs with the one above: integer inputs are ids only for a model that takes ids
    from tests.conftest import assert_bad_input, fast_prune, user_module

    user_module(
        tmp_path,
        monkeypatch,
        "intdata19",
        "import torch\n\ndef loaders():\n"
        "    x = torch.randint(0, 5, (32, 64))\n"
        "    ds = torch.utils.data.TensorDataset(x, x[:, 0] % 4)\n"
        "    return torch.utils.data.DataLoader(ds, batch_size=8), torch.utils.data.DataLoader(ds, batch_size=8)\n",
    )
    from examples.models import mlp

    model_path = tmp_path / "mlp.pt"
    sparsekit.save_model(mlp(in_features=64, hidden=[16]), model_path, factory="examples.models:mlp",
                         kwargs={"in_features": 64, "hidden": [16]}, input_shape=[1, 64])  # fmt: skip
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nfinetune: {epochs: 1}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    result = fast_prune(
        model_path, recipe, tmp_path / "o", "--data", "intdata19:loaders", "--arch", "examples.models:mlp"
    )
    assert_bad_input(result, "floating-point inputs", "x.float()")


@pytest.mark.parametrize(
    ("layers", "shape"),
    [
        ("nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)", [1, 1, 8, 8]),
        ("nn.Conv1d(1, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1)", [1, 1, 64]),  # a 1-D signal net
    ],
)
def test_a_conv_model_without_input_shape_takes_the_shape_of_a_built_in_source(tmp_path, monkeypatch, layers, shape):
    # `data: digits` knows its samples' shape, yet a conv model without model.input_shape was refused with
    # "cannot tell the model's input shape" (a conv's first layer does not tell its height and width)
    import json

    from tests.conftest import fast_prune, user_module

    source = (
        f"from torch import nn\n\ndef build():\n    return nn.Sequential({layers}, nn.Flatten(), nn.Linear(4, 10))\n"
    )
    mod = user_module(tmp_path, monkeypatch, f"shapeless19_{len(shape)}", source)
    model_path = tmp_path / "m.pt"
    torch.save(mod.build().state_dict(), model_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    out = tmp_path / "o"
    result = fast_prune(model_path, recipe, out, "--arch", f"{mod.__name__}:build")
    assert result.exit_code == 0, (result.output, result.stderr)
    from sparsekit.modelio import read_model

    assert read_model(out / "model.pt", arch=f"{mod.__name__}:build").input_shape == shape
    assert json.loads((out / "report.json").read_text())["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_a_missing_input_shape_of_a_token_model_is_asked_for_as_a_sequence_not_an_image(token_run, tmp_path):
    # the examples were image shapes ("--input-shape 1,3,32,32 (the batch, the first layer's channels, then your
    # data's size)", "model.input_shape=[1,1,28,28]", "e.g. [1, 1, 28, 28]") for a model taking token ids
    from click.testing import CliRunner

    from sparsekit.cli import main
    from tests.conftest import assert_bad_input, fast_prune

    model_path, _ = token_run
    arch = ("--arch", "tokmod19:build")
    result = CliRunner().invoke(main, ["export", str(model_path), *arch, "-o", str(tmp_path / "m.onnx")])
    assert_bad_input(result, "--input-shape 1,128", "token ids")
    recipe = tmp_path / "r2.yaml"
    recipe.write_text("version: 1\nfinetune: {epochs: 1}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    result = fast_prune(model_path, recipe, tmp_path / "o", *arch, "--data", "tokmod19:loaders")
    assert_bad_input(result, "model.input_shape=[1,128]", "token ids")
    import tokmod19

    recipe = sparsekit.Recipe(pruning=[{"method": "structured", "ratio": 0.5}])
    # (review 19, shapes: the Pruner waits for the first batch's shape; a call before one asks for it)
    with pytest.raises(sparsekit.TargetError, match=r"e\.g\. \[1, 128\]"):
        sparsekit.Pruner(tokmod19.build(), recipe, steps_per_epoch=1).finalize()
