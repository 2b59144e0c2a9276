"""Mends from the fourth new-user review: messages that contradicted each other or named the wrong cause."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import RecipeError


def test_dynamic_int8_of_a_tiny_cnn_does_not_call_the_file_smaller_then_not_smaller(tmp_path):
    # A tiny CNN quantized without --data (dynamic: ConvInteger): one note said "this file is smaller, not faster",
    # the next "the int8 file is not smaller than fp32".
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(nn.Conv2d(1, 2, 3).state_dict(), path)
    arch = ["--arch", "torch.nn:Conv2d", "--kwargs", '{"in_channels": 1, "out_channels": 2, "kernel_size": 3}']
    args = ["export", str(path), *arch, "--input-shape", "1,1,8,8", "-o", str(tmp_path / "q.onnx"), "--quantize"]
    result = CliRunner().invoke(main, [*args, "int8"])
    assert result.exit_code == 0, result.stderr
    assert "ConvInteger" in result.stdout  # the slow-kernel note is there
    assert "smaller, not faster" not in result.stdout
    assert "the int8 file is not smaller than fp32 either" in result.stdout


class TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, 8, 3, padding=1)
        self.dec = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dec(self.enc(x).relu()).relu()
        return self.head(h.mean((2, 3)))


def test_group_channel_without_an_input_shape_names_the_shape_as_the_cause():
    # The head of a CNN is left out of group lasso only when the model can be run; without a shape the error
    # said to change the group or the layer types, never that the shape was missing.
    entry = {"method": "l1", "strength": 1e-3, "mode": "proximal", "group": "channel", "schedule": {"end_epoch": 1}}
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [entry]}
    with pytest.raises(RecipeError, match=r"layer 'head' is a Linear.*set model\.input_shape"):
        sparsekit.Pruner(TinyUNet(), recipe, steps_per_epoch=4)
    # With the shape, the head is found and left out: the same recipe builds.
    pruner = sparsekit.Pruner(TinyUNet(), recipe, steps_per_epoch=4, context={"input_shape": [1, 1, 8, 8]})
    assert set(pruner.methods[0].layers) == {"enc", "dec"}


class DictHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"zeta": self.b(x), "alpha": self.a(x)}  # not in sorted order: names follow the dict's own


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_dict_output_is_exported_under_its_keys_each_with_its_own_values(tmp_path, exporter):
    # The ONNX outputs of {"zeta": [N, 10], "alpha": [N, 3]} were named "output" and "10" (the exporter's number).
    import numpy as np
    import onnxruntime as ort

    from sparsekit.onnx import export_onnx

    torch.manual_seed(0)
    model = DictHeads().eval()
    path = tmp_path / "d.onnx"
    assert export_onnx(model, path, [1, 8], exporter=exporter)["parity"]["ok"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape[1]) for o in session.get_outputs()] == [("zeta", 10), ("alpha", 3)]
    x = np.random.default_rng(0).standard_normal((5, 8), dtype=np.float32)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x}), strict=True))
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    for key in ("zeta", "alpha"):
        np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-5)
