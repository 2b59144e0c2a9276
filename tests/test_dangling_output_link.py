"""An output path that is (or lies under) a symbolic link to nothing: mkdir says "File exists", which sent users
looking for a file; the error names the link and its missing target."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import FAST

from sparsekit.cli import main

ARCH = ("--arch", "examples.models:mlp")


@pytest.mark.parametrize("under", [False, True])
def test_prune_and_export_into_a_dangling_link_name_it(tmp_path, mlp_checkpoint, under):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone" / "deeper")
    target = link / "sub" if under else link
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1}\npruning: [{method: magnitude, sparsity: 0.5}]\n"
    )
    runner = CliRunner()
    for args in (
        ["prune", mlp_checkpoint, recipe, *ARCH, "-o", target, *FAST],
        ["export", mlp_checkpoint, *ARCH, "-o", target / "m.onnx"],
    ):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
        assert f"{link}: a symbolic link to {tmp_path / 'gone' / 'deeper'}, which does not exist" in line
        assert "File exists" not in result.output
    assert not (tmp_path / "gone").exists()  # nothing created at the link's target
