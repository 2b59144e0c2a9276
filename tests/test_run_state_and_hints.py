"""Outputs never go inside a run's .sparsekit folder (a later run may delete it); a pruned checkpoint rebuilt with
other kwargs than it was saved with says so; a message of a command that takes no recipe does not send the user to
one."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, assert_bad_input

import sparsekit
from sparsekit.cli import main

ARCH = ["--arch", "examples.models:small_cnn"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from examples.models import small_cnn

    tmp = tmp_path_factory.mktemp("pruned")
    torch.manual_seed(0)
    path = sparsekit.save_model(
        small_cnn(image_size=8), tmp / "m.pt", "examples.models:small_cnn", kwargs={"image_size": 8},
        input_shape=[1, 1, 8, 8],
    )  # fmt: skip
    (tmp / "r.yaml").write_text(
        "model: {input_shape: [1, 1, 8, 8]}\ndata: {source: digits}\nfinetune: {epochs: 1, max_steps_per_epoch: 3}\n"
        "pruning: [{method: structured, ratio: 0.5}]\nbenchmark: {enabled: false}\n"
    )
    result = run("prune", path, tmp / "r.yaml", "-o", tmp / "run", *ARCH, *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    return tmp


def test_export_into_a_runs_state_folder_is_refused(pruned):
    target = pruned / "run" / ".sparsekit" / "x.onnx"
    assert_bad_input(
        run("export", pruned / "run" / "model.pt", "-o", target, *ARCH), "x.onnx", "inside a run's .sparsekit"
    )
    assert not target.exists()


def test_a_run_into_another_runs_state_folder_is_refused(pruned):
    target = pruned / "run" / ".sparsekit" / "sub"
    line = assert_bad_input(run("prune", pruned / "m.pt", pruned / "r.yaml", "-o", target, *ARCH, *FAST), "sub")
    assert "inside a run's .sparsekit" in line
    assert not target.exists()


def test_other_kwargs_than_the_saved_ones_are_named_when_the_rebuild_fails(pruned):
    line = assert_bad_input(
        run("export", pruned / "run" / "model.pt", "-o", pruned / "k.onnx", *ARCH, "--kwargs", '{"image_size": 16}'),
        "cannot rebuild the pruned model",
    )
    assert "saved with kwargs {'image_size': 8}, not the {'image_size': 16} given" in line


def test_a_state_dict_without_arch_names_the_recipe_only_where_there_is_one(pruned, tmp_path):
    from examples.models import small_cnn

    torch.save(small_cnn(image_size=8).state_dict(), tmp_path / "sd.pt")
    line = assert_bad_input(run("inspect", tmp_path / "sd.pt"), "no architecture", "--arch")
    assert "recipe" not in line
    (tmp_path / "r.yaml").write_text((pruned / "r.yaml").read_text())
    line = assert_bad_input(
        run("prune", tmp_path / "sd.pt", tmp_path / "r.yaml", "-o", tmp_path / "o", *FAST), "--arch"
    )
    assert f"set model.factory in {tmp_path / 'r.yaml'}" in line
