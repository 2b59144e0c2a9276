"""A boolean x in an .npz (binarized images) is refused like an integer one and like a callable's bool batches,
not cast to 0/1 floats without a word (found by review 21's inputs angle)."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main


def test_a_boolean_npz_x_is_refused_naming_the_dtype_and_the_fix(tmp_path, mlp_checkpoint):
    data = tmp_path / "binary.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((40, 64)) > 0.5, y=rng.integers(0, 10, 40))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 1, max_steps_per_epoch: 2}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    args = ["prune", str(mlp_checkpoint), str(recipe), "--arch", "examples.models:mlp", "--data", str(data)]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "out")])
    assert_bad_input(result, "--data", "bool", "floating-point", "astype(np.float32)")
    assert not (tmp_path / "out").exists()
