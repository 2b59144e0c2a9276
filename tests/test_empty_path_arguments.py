"""An empty path or recipe (an unset shell variable, say: ``sparsekit inspect "$MODEL"``) is refused as empty,
naming the argument; it was read as ".", and the answer spoke of the current folder, which the user never named."""

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
