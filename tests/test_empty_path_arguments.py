"""Arguments the CLI refuses by name. An empty path or recipe (an unset shell variable, say: ``sparsekit inspect
"$MODEL"``) is refused as empty, naming the argument; it was read as ".", and the answer spoke of the current
folder, which the user never named. An unknown onnxruntime provider names --provider."""

import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["inspect", ""], "MODEL"),
        (["bench", "  "], "FILES"),
        (["export", "{model}", "--arch", "examples.models:mlp", "-o", ""], "--output"),
        (["prune", "", "lenet-gradual-magnitude-90"], "MODEL"),
        (["prune", "{model}", "", "--arch", "examples.models:mlp"], "RECIPE"),
        (["prune", "{model}", "lenet-gradual-magnitude-90", "-o", ""], "--output"),
        (["validate", ""], "RECIPE"),
        (["sensitivity", "{model}", "", "--arch", "examples.models:mlp"], "RECIPE"),
    ],
)
def test_empty_is_refused_naming_the_argument(tmp_path, args, named):
    model = tmp_path / "m.pt"
    model.write_bytes(b"")  # refused before anything reads it
    filled = [str(model) if a == "{model}" else a for a in args]
    line = assert_bad_input(CliRunner().invoke(main, filled), named, "is empty")
    assert "'.'" not in line and " .:" not in line


def test_an_unknown_provider_names_the_option(tmp_path):
    import torch

    from sparsekit.onnx import export_onnx

    path = tmp_path / "m.onnx"
    export_onnx(torch.nn.Linear(4, 2), path, [1, 4], exporter="torchscript")
    line = assert_bad_input(CliRunner().invoke(main, ["bench", str(path), "--provider", "Bogus"]), "--provider Bogus")
    assert "CPUExecutionProvider" in line
