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


def test_sensitivity_refuses_an_output_it_cannot_create_before_any_probe(tmp_path, mlp_checkpoint, monkeypatch):
    # The output folder is made with the first result; a place where it cannot be made (under a file, a read-only
    # folder) was found only after the model, the data and the first probe, then reported as a bare OSError.
    import sparsekit.sensitivity as sensitivity_mod

    def no_probe(*args, **kwargs):
        raise AssertionError("the analysis ran before the output folder was checked")

    monkeypatch.setattr(sensitivity_mod, "analyze", no_probe)
    blocker = tmp_path / "results.txt"
    blocker.write_text("the user's notes")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\npruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n"
    )
    out = blocker / "sens"
    result = CliRunner().invoke(main, ["sensitivity", str(mlp_checkpoint), str(recipe), "-o", str(out)])
    assert_bad_input(result, str(out), "not a folder", "output folder")
    assert blocker.read_text() == "the user's notes"
