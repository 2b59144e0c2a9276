"""Review round 11 (hostile inputs): holes between the checks that a new user's odd files found."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main

RECIPE = """\
version: 1
model: {{factory: {factory}, input_shape: [1, 784]}}
pruning:
  - method: magnitude
    sparsity: 0.5
"""


@pytest.mark.parametrize(
    "factory",
    ["'/tmp/evil:build'", "'../../etc/passwd:x'", "'a b:c d'", "':x'", "'pkg..mod:x'", "'pkg.mod:build:x'"],
)
def test_validate_refuses_a_factory_that_prune_refuses(tmp_path, factory):
    # validate called these recipes valid while prune refused the same factory as not pkg.module:callable.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(factory=factory))
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert_bad_input(result, "r.yaml", "model.factory", "pkg.module:callable")


def test_validate_refuses_a_dunder_factory(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(factory="'pkg.__init__:build'"))
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "model.factory", "dunder")


def test_validate_still_accepts_a_well_formed_factory(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(factory="examples.models:lenet_300_100"))
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
