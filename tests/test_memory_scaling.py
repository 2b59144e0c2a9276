"""Memory and time that scale with the model (issue 15): exact selection without a sort or a concatenation
of all scores, each file's gzip size computed once (level 9 up to 16 MiB, else 6), checkpoints written
without a copy of the weights. The measurements themselves are benchmarks/memory_scaling.py's."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit
import sparsekit.masks as masks_mod
import sparsekit.onnx.files as files_mod
from sparsekit.masks import LOWEST, global_topk_masks
from sparsekit.onnx import benchmark, choose_storage, export_onnx, size_report
from sparsekit.onnx.files import GZIP_LEVEL, clear_memo

# Scores as masked_scores makes them: finite float32, LOWEST for pruned weights; few distinct values, so
# ties (across layers and chunks too) are the rule.
VALUES = st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 2.0, 3.0e38, -2.0e38, LOWEST])
LAYER = st.lists(st.one_of(VALUES, st.floats(-4, 4, width=32)), min_size=1, max_size=40)


def by_full_sort(scores: dict[str, torch.Tensor], n_prune: int) -> dict[str, torch.Tensor]:
    """The reference: a stable sort of every score, the first ``n_prune`` pruned (ties by position)."""
    flat = torch.cat([s.flatten() for s in scores.values()]).numpy() + np.float32(0)  # -0.0 == +0.0
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:n_prune]] = False
    out, at = {}, 0
    for name, s in scores.items():
        out[name] = torch.from_numpy(keep[at : at + s.numel()]).view(s.shape)
        at += s.numel()
    return out


@settings(max_examples=200, deadline=None)
@given(layers=st.lists(LAYER, min_size=1, max_size=4), sparsity=st.floats(0, 1), chunk=st.sampled_from([3, 8, 1 << 20]))
def test_selection_is_exactly_a_stable_full_sort(layers, sparsity, chunk):
    scores = {f"l{i}": torch.tensor(v, dtype=torch.float32) for i, v in enumerate(layers)}
    old, masks_mod._CHUNK = masks_mod._CHUNK, chunk  # small chunks: ties and the threshold cross their borders
    try:
        got = global_topk_masks(scores, sparsity)
    finally:
        masks_mod._CHUNK = old
    want = by_full_sort(scores, round(sparsity * sum(len(v) for v in layers)))
    for name in scores:
        assert got[name].dtype == torch.bool and torch.equal(got[name], want[name]), name
    assert sum(int((~m).sum()) for m in got.values()) == round(sparsity * sum(len(v) for v in layers))


def test_selection_neither_sorts_nor_concatenates(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a sort or a concatenation of all scores")

    for name in ("sort", "argsort", "partition", "argpartition", "concatenate"):
        monkeypatch.setattr(np, name, refuse)
    monkeypatch.setattr(torch, "cat", refuse)
    monkeypatch.setattr(torch, "sort", refuse)
    torch.manual_seed(0)
    scores = {"a": torch.rand(64, 32), "b": torch.rand(100)}
    got = global_topk_masks(scores, 0.7, max_layer_sparsity=0.9)
    assert sum(int((~m).sum()) for m in got.values()) == round(0.7 * (64 * 32 + 100))
    assert int((~got["b"]).sum()) <= 90  # the cap held


def test_scores_on_meta_give_shape_only_masks():
    got = global_topk_masks({"w": torch.empty(5, 3, device="meta")}, 0.5, max_layer_sparsity=0.9)
    assert got["w"].is_meta and got["w"].shape == (5, 3) and got["w"].dtype == torch.bool


# --- sizes: gzip once per file, level 9 up to 16 MiB, else 6 ------------------------------------------


@pytest.fixture
def gzip_calls(monkeypatch):
    clear_memo()
    calls: list[tuple[str, int | None]] = []
    real = files_mod.gzip_size

    def counted(paths, level=None):
        calls.append((Path(paths[0]).name, level))
        return real(paths, level)

    monkeypatch.setattr(files_mod, "gzip_size", counted)
    yield calls
    clear_memo()


def test_each_file_is_gzipped_once(tmp_path, gzip_calls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) > 0.9)
    path = tmp_path / "model.onnx"
    info = export_onnx(model, path, [1, 32], exporter="torchscript")
    # What the pipeline asks of the file after exporting it: sizes and counts, the benchmark's, storage's.
    report = size_report(path)
    bench = benchmark(path, batch_sizes=(1,), runs=3, warmup=0)
    assert info["gzip_bytes"] == report["gzip_bytes"] == bench["files"][0]["gzip_bytes"]
    assert gzip_calls == [("model.onnx", 9)]  # a small file: level 9
    shipped = choose_storage(path, tmp_path / "shipped.onnx", "sparse")
    assert shipped["gzip_level"] == 9
    # The source once in all; the sparse candidate once (it is measured where it is built, named as it ships).
    assert gzip_calls == [("model.onnx", 9), ("shipped.onnx", 9)]
    data = path.read_bytes()
    assert info["gzip_bytes"] == len(gzip.compress(data, compresslevel=9, mtime=0))


def test_the_level_falls_to_6_above_16_mib(tmp_path, monkeypatch):
    assert files_mod.gzip_level(files_mod.GZIP9_MAX_BYTES) == 9
    assert files_mod.gzip_level(files_mod.GZIP9_MAX_BYTES + 1) == GZIP_LEVEL == 6
    monkeypatch.setattr(files_mod, "GZIP9_MAX_BYTES", 100)  # a "large" file without writing 16 MiB
    f = tmp_path / "big.bin"
    f.write_bytes(bytes(range(256)) * 4 + bytes(3000))
    assert files_mod.gzip_size([f]) == len(gzip.compress(f.read_bytes(), compresslevel=6, mtime=0))


def test_save_model_writes_the_weights_without_copying_them(tmp_path, monkeypatch):
    import sparsekit.modelio as modelio

    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    view = torch.arange(20.0)[2:10].view(2, 4)  # a view of a larger storage is written compact
    model[1].weight = nn.Parameter(view)
    written = {}
    real = torch.save
    monkeypatch.setattr(modelio.torch, "save", lambda obj, f: (written.update(obj), real(obj, f)))
    sparsekit.save_model(model, tmp_path / "m.pt", "torch.nn:Identity")
    state = written["state_dict"]
    assert state["0.weight"].data_ptr() == model[0].weight.data_ptr()
    assert state["1.weight"].data_ptr() != model[1].weight.data_ptr()
    assert state["1.weight"].untyped_storage().nbytes() == 8 * 4
    assert torch.equal(state["1.weight"], view)


def test_finetune_lets_go_of_gradients_and_finalize_of_cached_mask_copies():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    data = torch.utils.data.TensorDataset(torch.randn(32, 12), torch.randint(0, 3, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    recipe = sparsekit.Recipe(finetune={"epochs": 1}, pruning=[{"method": "magnitude", "sparsity": 0.5}])
    model, _, pruner = sparsekit.finetune(model, recipe, loader, loader, progress=False)
    assert all(p.grad is None for p in model.parameters())
    held = [id(m) for m in pruner.masks().values()]  # copies: the ids of the real buffers follow
    mask_ids = [id(mod._buffers[masks_mod.MASK]) for mod in model.modules() if masks_mod.MASK in mod._buffers]
    assert held and mask_ids and any(i in masks_mod._FACTORS for i in mask_ids)  # cached while training
    refs = [mod._buffers[masks_mod.MASK] for mod in model.modules() if masks_mod.MASK in mod._buffers]
    pruner.finalize()
    assert not any(id(m) in masks_mod._FACTORS for m in refs)  # dropped at bake, though the masks still exist
