"""Warnings sparsekit's library raises reach a CLI user (review: warnings)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from sparsekit.cli import main


class _Loose(nn.Module):
    """Most weights in a bare Parameter used with F.linear: the Pruner warns no method prunes them. Its forward
    also raises a warning of its own, a library's (not sparsekit's) as far as the CLI is concerned."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(32, 20) * 0.1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("a third-party library's warning", UserWarning, stacklevel=1)
        return self.fc(torch.relu(F.linear(x, self.w)))


def _files(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "loose.pt"
    torch.save(_Loose().state_dict(), path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((64, 20)).astype(np.float32), y=rng.integers(0, 3, 64))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 20]}\n"
        f"data: {{source: {tmp_path / 'd.npz'}, batch_size: 32}}\nfinetune: {{epochs: 0}}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    return path, recipe


ARCH = ("--arch", "tests.test_review_warnings_20:_Loose")
LOOSE = "no Linear or convolution module holds"


def test_prune_says_sparsekits_own_warning_once_and_hides_a_librarys(tmp_path):
    from conftest import fast_prune

    path, recipe = _files(tmp_path)
    res = fast_prune(path, recipe, tmp_path / "out", *ARCH)
    assert res.exit_code == 0, res.stderr
    # The Pruner's warning was lost: the CLI ignored every Python warning.
    said = [line for line in res.stderr.splitlines() if LOOSE in line]
    assert len(said) == 1 and said[0].startswith("Warning: 640 of the model's 736 weights"), res.stderr
    assert "third-party" not in res.stderr + res.stdout


def test_validate_json_lists_sparsekits_own_warning(tmp_path):
    path, recipe = _files(tmp_path)
    res = CliRunner().invoke(main, ["validate", str(recipe), str(path), *ARCH, "--json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [w for w in doc["warnings"] if LOOSE in w], doc["warnings"]
    # said once on stderr, though validate builds the Pruner more than once (plan and rehearsal)
    assert len([line for line in res.stderr.splitlines() if LOOSE in line]) == 1, res.stderr
    assert "third-party" not in res.stderr
    # the caller's warning settings are back once the in-process command is over
    assert warnings.showwarning.__module__ != "sparsekit.cli"


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_export_int8_sizes_are_set_against_the_fp32_file_one_would_ship(tmp_path):
    import os

    torch.manual_seed(0)
    model = _Mlp()
    with torch.no_grad():  # 97% zeros, stored sparse (an export without --quantize: a quarter of the dense bytes)
        for fc in (model.fc1, model.fc2):
            w = fc.weight
            w[w.abs() <= w.abs().flatten().kthvalue(int(0.97 * w.numel())).values] = 0.0
    path = tmp_path / "mlp.pt"
    torch.save(model.state_dict(), path)
    args = ["export", str(path), "--arch", "tests.test_review_warnings_20:_Mlp", "--input-shape", "1,64"]
    args += ["--storage", "sparse"]
    plain = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "e.onnx")])
    assert plain.exit_code == 0, plain.stderr
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "q.onnx"), "--quantize", "int8", "--keep-fp32"])
    assert res.exit_code == 0, res.stderr
    fp32, int8 = os.path.getsize(tmp_path / "e.onnx"), os.path.getsize(tmp_path / "q.onnx")
    # The ratio was the int8 file's over the dense-stored export's, which no command ships here.
    assert f"= {int8 / fp32:.2f}x fp32" in res.stdout, (fp32, int8, res.stdout)
    kept = os.path.getsize(tmp_path / "q.fp32.onnx")
    assert kept == fp32 and f"; {kept:,} B, gzip" in res.stdout, (kept, fp32, res.stdout)  # stored as plain export is
