"""A new user's review: README followed from a wheel, with models, recipes and files of one's own."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main


@pytest.mark.parametrize(
    ("written", "remedy"),
    [
        ('model: {input_shape: "1,1,8,8"}', "write [1, 1, 8, 8]"),
        ("model: {input_shape: 1x1x8x8}", "write [1, 1, 8, 8]"),
        ('model: {input_shape: "1 1 8 8"}', "write [1, 1, 8, 8]"),
        ('benchmark: {batch_sizes: "1,32"}', "write [1, 32]"),
    ],
)
def test_a_number_list_written_as_text_is_told_as_numbers(tmp_path, written, remedy):
    # The remedy said `write ['1', '1', '8', '8']` (a list of texts, refused in turn) or `write [1x1x8x8]`.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\n{written}\npruning: [{{method: magnitude, sparsity: 0.5}}]\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert_bad_input(result, "r.yaml", remedy)
