"""A prune whose stdout cannot take the summary (a full disk under ``> log``) has finished its run: the error said
"the output is lost ... run again", which redoes the training. It now says the folder holds every file."""

from __future__ import annotations

from conftest import assert_bad_input, fast_prune

import sparsekit.cli as cli
from sparsekit.errors import OutputError


def test_a_summary_that_cannot_be_printed_points_to_the_finished_folder(tmp_path, mlp_checkpoint, monkeypatch):
    def full_disk(data, as_json, text):  # what __main__'s stdout raises when a write fails
        raise OutputError(
            "standard output: cannot be written (No space left on device), the output is lost; free space where it "
            "is redirected or redirect it elsewhere, and run again"
        )

    monkeypatch.setattr(cli, "_emit", full_disk)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    out = tmp_path / "o"
    result = fast_prune(mlp_checkpoint, recipe, out, "--arch", "examples.models:mlp")
    line = assert_bad_input(result, "No space left on device", str(out))
    assert "run again" not in line and "report.md" in line, line
    assert (out / "report.md").is_file() and (out / "model.onnx").is_file()
