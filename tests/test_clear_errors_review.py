"""Mistakes a new user made, each answered with the error type or the one line that says what is wrong (a fresh
user's review found a bare KeyError, an AttributeError, "no such file" for a folder, and a NaN let through)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main


def test_a_pruner_state_that_is_not_one_is_a_value_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    pruner = sparsekit.Pruner(model, {"pruning": [{"method": "magnitude", "sparsity": 0.5}]}, steps_per_epoch=1)
    with pytest.raises(ValueError, match="a dict without 'step', 'masks', 'methods', not a Pruner state"):
        pruner.load_state_dict({"a": 1})
    with pytest.raises(ValueError, match="got a list, not a Pruner state"):
        pruner.load_state_dict([])  # type: ignore[arg-type]
    pruner.load_state_dict(pruner.state_dict())  # a real one still loads


def test_save_model_with_its_arguments_swapped_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got str"):
        sparsekit.save_model(str(tmp_path / "m.pt"), tmp_path / "m.pt", "examples.models:mlp")  # type: ignore[arg-type]
    assert not (tmp_path / "m.pt").exists()


def test_bench_names_a_folder_or_a_device_for_what_it_is(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    assert_bad_input(CliRunner().invoke(main, ["bench", str(folder)]), str(folder), "is a folder")
    if Path("/dev/zero").exists():
        assert_bad_input(CliRunner().invoke(main, ["bench", "/dev/zero"]), "/dev/zero", "not a regular file")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_kwargs_refuse_nan_and_infinity(tmp_path, constant):
    result = CliRunner().invoke(
        main, ["inspect", str(tmp_path / "m.pt"), "--arch", "examples.models:mlp", "--kwargs", f'{{"x": {constant}}}']
    )
    assert_bad_input(result, "--kwargs", f"{constant} is not a JSON number")


@pytest.mark.parametrize("meta", [True, False])
def test_report_on_a_folder_without_a_manifest_says_what_is_missing(tmp_path, meta):
    # "no .sparsekit folder" was said of a folder that has one, whose manifest.json was deleted
    (tmp_path / "report.json").write_text("{}")
    if meta:
        (tmp_path / ".sparsekit").mkdir()
    line = assert_bad_input(CliRunner().invoke(main, ["report", str(tmp_path)]), "holds no sparsekit run")
    assert ("has no manifest.json" in line) is meta and ("no .sparsekit folder" in line) is not meta
