"""Review (helper z1, a new user's first hour from a wheel): faults met following the README with an
architecture, data and recipes of one's own."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main

# --- a key written in a sibling section: say where it goes -----------------------------------------------


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ("data: {source: digits, epochs: 3}", "data.epochs: unknown key here; epochs is a key of finetune"),
        ("finetune: {epochs: 1, batch_size: 32}", "finetune.batch_size: unknown key here; batch_size is a key of data"),
        ("model: {input_shape: [1, 64], source: digits}", "model.source: unknown key here; source is a key of data"),
        ("export: {threads: 1}", "export.threads: unknown key here; threads is a key of benchmark"),
        ("benchmark: {opset: 18}", "benchmark.opset: unknown key here; opset is a key of export"),
        ("data: {lr: 0.1}", "data.lr: unknown key here; lr is a key of finetune.optimizer: write it as finetune:"),
        ("finetune: {seed: 3}", "finetune.seed: unknown key here; seed is a top-level key"),
        # a close local key still wins over a home elsewhere
        ("benchmark: {batch_size: 4}", "benchmark.batch_size: unknown key; did you mean 'batch_sizes'?"),
    ],
)
def test_a_key_in_a_sibling_section_names_its_home(tmp_path, section, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\n{section}\n")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), needle)


def test_an_override_into_a_sibling_section_names_its_home(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\n")
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", "data.epochs=3"])
    assert_bad_input(result, "data.epochs", "epochs is a key of finetune")
