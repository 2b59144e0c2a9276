"""Mends from the eighth new-user review: a newcomer's own model files, outside the repository."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from sparsekit.cli import main
from tests.conftest import assert_bad_input


def test_bench_of_a_pytorch_file_says_to_export_it_first(tmp_path):
    # `sparsekit bench weights.pt` said only "not a readable ONNX model (DecodeError: ... Wire format was corrupt)".
    net = nn.Linear(4, 2)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    save_file(net.state_dict(), str(tmp_path / "weights.safetensors"))
    for name, kind in (("weights.pt", "torch.save"), ("weights.safetensors", "safetensors")):
        result = CliRunner().invoke(main, ["bench", str(tmp_path / name)])
        assert_bad_input(result, name, f"PyTorch model file ({kind}), not ONNX", "sparsekit export")
    # Any other non-ONNX file gets no such hint.
    (tmp_path / "notes.onnx").write_text("hello")
    line = assert_bad_input(CliRunner().invoke(main, ["bench", str(tmp_path / "notes.onnx")]), "notes.onnx")
    assert "PyTorch" not in line
