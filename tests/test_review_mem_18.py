"""Peak memory of large models (issue 15, benchmarks/memory_scaling.py): what each phase holds at once."""

from __future__ import annotations

import torch
from torch import nn

import sparsekit.onnx.bench as bench_mod
from sparsekit.onnx import benchmark, export_onnx


def _onnx(tmp_path, name: str, seed: int) -> str:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    path = tmp_path / name
    export_onnx(model, path, [1, 16], exporter="torchscript")
    return str(path)


def test_benchmark_sizes_each_file_before_more_sessions_are_open(tmp_path, monkeypatch):
    """Sizing a file's activations parses all of it (~2x its bytes for a moment); done with every session
    open (the A/A control's too) it was the benchmark's peak: on a 135 MB model +260 MiB over three sessions
    (benchmarks/memory_scaling.py). Each file is sized as soon as its own session gives its dims."""
    files = [_onnx(tmp_path, "a.onnx", 0), _onnx(tmp_path, "b.onnx", 1)]
    monkeypatch.setattr(bench_mod, "available_memory", lambda: 1 << 40)
    opened: list[str] = []
    sized: list[tuple[str, int]] = []
    real_open, real_size = bench_mod.open_session, bench_mod.activation_bytes

    def counting_open(path, **kw):
        opened.append(str(path))
        return real_open(path, **kw)

    def recording_size(path, dims):
        sized.append((str(path), len(opened)))
        return real_size(path, dims)

    monkeypatch.setattr(bench_mod, "open_session", counting_open)
    monkeypatch.setattr(bench_mod, "activation_bytes", recording_size)
    out = benchmark(files, [1, 8], runs=2, warmup=0)  # no shape given: the first file's dims come from its session
    assert sized == [(files[0], 1), (files[1], 1)]  # sessions open when each file was parsed
    assert opened == [files[0], files[1], files[0]]  # the A/A control still opened, after
    assert len(out["files"]) == 2 and out["control"]


def test_zero_counts_make_no_int64_copy_of_a_weight(monkeypatch):
    """torch sums a bool tensor on CPU through an int64 temporary (8 bytes an entry): ``int((w == 0).sum())``
    over a 4096x4096 layer peaked at +145 MiB, the fine-tuning peak of benchmarks/memory_scaling.py (the epoch's
    sparsity). The counts are the same without it."""
    import sparsekit
    from sparsekit.inspection import _torch_counts
    from sparsekit.stats import layer_report, model_stats, sparsity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) > 0.7)
        model[0].weight[0, :3] = torch.tensor([-0.0, float("nan"), 0.0])  # -0.0 is a zero, NaN is not
    want_zeros = sum(int((p.detach() == 0).sum()) for p in (model[0].weight, model[2].weight))
    want_nonzero = sum(int((p.detach() != 0).sum()) for p in model.parameters())

    real_sum = torch.Tensor.sum

    def no_bool_sum(self, *args, **kwargs):
        if self.dtype == torch.bool and self.numel() > 1000 and not args and "dtype" not in kwargs:
            raise AssertionError("a weight-sized bool tensor summed through int64")
        return real_sum(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "sum", no_bool_sum)
    n = 64 * 48 + 48 * 5
    assert sparsity(model) == want_zeros / n
    assert model_stats(model)["nonzero_params"] == want_nonzero
    rows = layer_report(model)
    assert [r["nonzero_params"] for r in rows] == [int((model[0].weight != 0).sum(dtype=torch.int64)), 48 * 5]
    assert _torch_counts(model, [1, 64])["nonzero_params"] == want_nonzero
    data = torch.utils.data.TensorDataset(torch.randn(32, 64), torch.randint(0, 5, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    with torch.no_grad():
        model[0].weight[0, 1] = 1.0  # finite again, to train
    recipe = sparsekit.Recipe(
        finetune={"epochs": 1}, pruning=[{"method": "magnitude", "sparsity": 0.8, "scope": "global"}]
    )
    _, history, _ = sparsekit.finetune(model, recipe, loader, loader, progress=False)
    assert history[0]["sparsity"] >= 0.79


def test_an_uncached_mask_is_applied_without_a_weight_sized_copy(monkeypatch):
    """A layer whose 0/1 copy is over the cache's budget is multiplied by its mask's bytes: torch converted
    those to float first, a temporary the size of the weight on every step (+64 MiB for a 4096x4096 layer, the
    fine-tuning peak of memory_scaling.py once the zero counts were fixed). Now a chunk at a time, bit for bit."""
    import sparsekit.masks as masks_mod

    monkeypatch.setattr(masks_mod, "_FACTOR_BUDGET", 0)  # nothing cached: every layer takes the mask's bytes
    monkeypatch.setattr(masks_mod, "_MUL_CHUNK", 100, raising=False)  # a "large" layer at 40x30
    torch.manual_seed(0)
    layer = nn.Linear(30, 40)
    mask = torch.rand(40, 30) > 0.5
    masks_mod.set_mask(layer, mask)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 30))
        layer.weight[0, :2] = torch.tensor([float("nan"), -1.0])
    want = layer.weight.detach().clone().mul_(mask.view(torch.uint8))  # -0.0 where negative, NaN * 0 = NaN

    real_mul = torch.Tensor.mul_

    def no_converted_copy(self, other, *args, **kwargs):
        if isinstance(other, torch.Tensor) and other.dtype != self.dtype and other.numel() > 100:
            raise AssertionError(f"a {other.dtype} factor of {other.numel()} entries converted whole")
        return real_mul(self, other, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "mul_", no_converted_copy)
    masks_mod.apply_mask(layer)
    got = layer.weight.detach()
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # bit for bit, signs of zeros too
    with torch.no_grad():
        layer.weight.add_(1.0)  # an optimizer step
    monkeypatch.setattr(torch.Tensor, "mul_", real_mul)
    want = (want + 1.0).mul_(mask.view(torch.uint8))
    monkeypatch.setattr(torch.Tensor, "mul_", no_converted_copy)
    masks_mod.apply_masks(nn.Sequential(layer))  # the per-step path (its plan's lone products)
    assert torch.equal(layer.weight.detach().view(torch.int32), want.view(torch.int32))


def test_benchmark_parses_each_file_once_before_its_session(tmp_path, monkeypatch):
    """With the shape given, each file is sized before its own session opens (one session fewer beside the
    parse: a 135 MB pair peaked at 533 MiB over the start, now 470, three sessions and one's load), and the
    session's check of the file reads that parse's memo: one parse a file, where there were two."""
    import sparsekit.onnx.files as files_mod

    files = [_onnx(tmp_path, "a.onnx", 0), _onnx(tmp_path, "b.onnx", 1)]
    files_mod.clear_memo()
    monkeypatch.setattr(bench_mod, "available_memory", lambda: 1 << 40)
    opened: list[str] = []
    parsed: list[tuple[str, int]] = []
    real_open, real_read = bench_mod.open_session, files_mod._read

    def counting_open(path, **kw):
        opened.append(str(path))
        return real_open(path, **kw)

    def counting_read(path, *args, **kwargs):
        parsed.append((str(path), len(opened)))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(bench_mod, "open_session", counting_open)
    monkeypatch.setattr(files_mod, "_read", counting_read)
    benchmark(files, [1, 8], runs=2, warmup=0, input_shape=[1, 16])
    # (the stats read after the sessions close parse again, with values: those come after the 3 sessions)
    assert [p for p in parsed if p[1] < 3] == [(files[0], 0), (files[1], 1)]
    files_mod.clear_memo()
