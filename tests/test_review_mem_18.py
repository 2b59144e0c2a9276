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
    out = benchmark(files, [1, 8], runs=2, warmup=0, input_shape=[1, 16])
    assert sized == [(files[0], 1), (files[1], 2)]  # sessions open when each file was parsed
    assert opened == [files[0], files[1], files[0]]  # the A/A control still opened, after
    assert len(out["files"]) == 2 and out["control"]
