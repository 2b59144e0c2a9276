"""Review 24, angle "recipes": recipe files as confused or hostile users write them, and how RECIPE is resolved."""

from __future__ import annotations

from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main


def test_a_folder_named_as_a_shipped_recipe_does_not_hide_it(tmp_path, monkeypatch):
    # `sparsekit prune model.pt cnn-structured-50 -o cnn-structured-50` makes a folder of the shipped name; the next
    # run (or `validate cnn-structured-50`) read the folder: "cnn-structured-50: is a directory", exit 2.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnn-structured-50").mkdir()
    (tmp_path / "lenet-l1-row-50.yaml").mkdir()
    assert sparsekit.load_recipe("cnn-structured-50").pruning[0].method == "structured"
    assert sparsekit.load_recipe("lenet-l1-row-50.yaml").pruning[0].method == "l1"
    result = CliRunner().invoke(main, ["validate", "cnn-structured-50"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    # a folder with no shipped recipe of its name is still refused as a folder
    (tmp_path / "mine").mkdir()
    result = CliRunner().invoke(main, ["validate", "mine"])
    assert result.exit_code == 2 and "mine: is a directory" in result.output, result.output
