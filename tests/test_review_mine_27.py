"""Review (mine, session 27): small faults the session's helpers found and left."""

from __future__ import annotations

from click.testing import CliRunner

from sparsekit.cli import main


def test_validate_does_not_round_a_sparsity_below_one_to_100_percent(tmp_path):
    """sparsity 0.9999999 was described as "zero the 100% smallest-|w| weights ..., no layer above 100%", which is a
    different recipe (every weight zero); the words keep the digits that tell it apart."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.9999999, max_layer_sparsity: 0.9999999, schedule: oneshot}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "zero the 99.99999% smallest-|w| weights" in text and "100%" not in text
