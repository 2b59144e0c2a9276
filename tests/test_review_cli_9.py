"""Review of the command line as a new user meets it (angle: cli, round 9)."""

from __future__ import annotations

from click.testing import CliRunner

from sparsekit.cli import main
from tests.conftest import assert_bad_input


def test_trust_store_that_cannot_be_written_names_the_config_folder_not_an_output(tmp_path, monkeypatch):
    # `sparsekit trust MODULE` with a config folder it cannot write (a read-only HOME, a file where the folder
    # should be): the remedy is the config folder or SPARSEKIT_CONFIG_DIR; the user gave no output folder to change.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("SPARSEKIT_CONFIG_DIR", str(blocker / "sparsekit"))
    result = CliRunner().invoke(main, ["trust", "examples.models"])
    line = assert_bad_input(result, "trusted_modules.json", "SPARSEKIT_CONFIG_DIR")
    assert "output folder" not in line
