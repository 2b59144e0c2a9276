"""Non-finite weights are bad input in every command that loads a model: exit 2 naming the tensor."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sparsekit
from examples.models import mlp
from sparsekit.cli import main
from sparsekit.errors import ModelFileError
from sparsekit.modelio import check_finite, read_model


def _poisoned(tmp_path, value: float):
    model = mlp()
    with torch.no_grad():
        model.fc2.weight[3, 5] = value
    return sparsekit.save_model(model, tmp_path / "bad.pt", factory="examples.models:mlp", input_shape=[1, 64])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_read_model_refuses_non_finite_parameters_naming_them(tmp_path, value):
    path = _poisoned(tmp_path, value)
    with pytest.raises(ModelFileError, match=r"bad\.pt: weights hold NaN or inf values \(fc2\.weight\)"):
        read_model(path, "examples.models:mlp")


def test_an_infinite_buffer_is_legitimate_but_a_nan_buffer_is_not():
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.register_buffer("causal", torch.tensor([0.0, float("-inf")]))  # an attention-style mask

    model = Masked()
    check_finite(model, "m.pt")  # accepted
    model.causal[0] = float("nan")
    with pytest.raises(ModelFileError, match=r"\(causal\)"):
        check_finite(model, "m.pt")


@pytest.mark.parametrize(
    "command",
    [
        ["export", "{p}", "-o", "{d}/x.onnx"],
        ["inspect", "{p}"],
        ["prune", "{p}", "lenet-gradual-magnitude-90", "-o", "{d}/o"],
    ],
    ids=["export", "inspect", "prune"],
)
def test_every_command_exits_2_and_writes_nothing(tmp_path, command):
    path = _poisoned(tmp_path, float("nan"))
    args = [a.format(p=path, d=tmp_path) for a in command] + ["--arch", "examples.models:mlp"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "weights hold NaN or inf values (fc2.weight)" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]
