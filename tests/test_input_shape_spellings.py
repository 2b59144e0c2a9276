"""``--input-shape`` takes the shape as users paste it: 1,8 / 1x8 / [1, 8] / a Python tuple (1, 8) or (1, 8,)."""

import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main


@pytest.mark.parametrize("given", ["1,64", "1x64", "[1, 64]", "(1, 64)", "(1,64,)", " ( 1 , 64 ) "])
def test_tuple_and_list_spellings(mlp_checkpoint, given):
    args = ["inspect", str(mlp_checkpoint), "--arch", "examples.models:mlp", "--input-shape", given]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "input [1, 64]" in res.stdout.splitlines()[0]


@pytest.mark.parametrize("given", ["((1,64))", "(1,64", "1,64,", "(1,,64)", "(1,-64)", "()", "(1.5, 64)"])
def test_still_refused(mlp_checkpoint, given):
    args = ["inspect", str(mlp_checkpoint), "--arch", "examples.models:mlp", "--input-shape", given]
    assert_bad_input(CliRunner().invoke(main, args), "--input-shape")
