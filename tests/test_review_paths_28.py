"""Paths review (round 28): file and folder names as users have them."""

from __future__ import annotations

import torch
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main

ARCH = ["--arch", "examples.models:mlp"]


def test_a_long_output_name_the_file_system_takes_is_written(tmp_path, mlp_checkpoint):
    # A 245-byte name is a legal file name (255 is the limit), but the temp name beside it (24 bytes longer) was
    # not: export failed with "File name too long" about a `.NAME.XXXXXXXX.sparsekit.tmp` the user never named,
    # and save_model with it too.
    target = tmp_path / ("é" * 120 + ".onnx")
    res = CliRunner().invoke(main, ["export", str(mlp_checkpoint), "-o", str(target), *ARCH])
    assert res.exit_code == 0, res.output
    assert target.is_file()
    # Its own file: replaced.
    again = CliRunner().invoke(main, ["export", str(mlp_checkpoint), "-o", str(target), *ARCH])
    assert again.exit_code == 0, again.output
    saved = tmp_path / ("m" * 252 + ".pt")
    kwargs = {"in_features": 4, "out_features": 2}
    sparsekit.save_model(torch.nn.Linear(4, 2), saved, factory="torch.nn:Linear", kwargs=kwargs)
    assert saved.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mlp.pt", target.name, saved.name])


def test_a_name_too_long_is_named_with_its_remedy(tmp_path, mlp_checkpoint):
    # ENAMETOOLONG said "check the path and its permissions", and for -o DIR named DIR/.sparsekit/lock, a file
    # inside the folder whose own name was the one too long.
    long = "d" * 260
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\ndata: {source: digits}\npruning:\n  - {method: magnitude, sparsity: 0.5}\n")
    res = CliRunner().invoke(main, ["prune", str(mlp_checkpoint), str(recipe), "-o", str(tmp_path / long), *ARCH])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (
        f"Error: {tmp_path / long}: the name is 260 bytes, more than the 255 file systems take; choose a shorter one"
    )
    res = CliRunner().invoke(main, ["export", str(mlp_checkpoint), "-o", str(tmp_path / f"{long}.onnx"), *ARCH])
    assert res.exit_code == 2, res.output
    assert f"{long}.onnx: the name is 265 bytes" in res.output
    assert "permissions" not in res.output


def test_a_log_folder_that_cannot_be_made_says_what_to_do(tmp_path, mlp_checkpoint):
    # --log-dir notes.txt (a file) said "notes.txt: cannot create a log folder there (Not a directory)", and
    # stopped there: no word of what was wrong with it or what to do.
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\ndata: {source: digits}\npruning:\n  - {method: magnitude, sparsity: 0.5}\n")
    for log_dir in (notes, notes / "logs"):
        args = ["prune", str(mlp_checkpoint), str(recipe), "-o", str(tmp_path / "out"), "--log-dir", str(log_dir)]
        res = CliRunner().invoke(main, [*args, *ARCH])
        assert res.exit_code == 2, res.output
        assert (
            res.output.strip()
            == f"Error: {notes}: is a file, not a folder, and the output would go inside it; name another path"
        )
    assert notes.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.pt", "notes.txt", "r.yaml"]


def test_a_tilde_the_shell_left_is_the_home_folder(tmp_path, mlp_checkpoint, monkeypatch):
    # `--output=~/m.onnx` (or a quoted '~/m.onnx') reaches sparsekit unexpanded: it made a folder named "~" in the
    # current one, while --data ~/d.npz read from the home folder.
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    res = CliRunner().invoke(main, ["export", str(mlp_checkpoint), "--output=~/m.onnx", *ARCH])
    assert res.exit_code == 0, res.output
    assert (home / "m.onnx").is_file()
    assert list(work.iterdir()) == []


def test_a_recipe_given_as_tilde_path_is_read_from_home(tmp_path, monkeypatch):
    # `sparsekit validate '~/r.yaml'` said "recipe file not found" though the file was in the home folder.
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "r.yaml").write_text("version: 1\npruning:\n  - {method: magnitude, sparsity: 0.5}\n")
    res = CliRunner().invoke(main, ["validate", "~/r.yaml"])
    assert res.exit_code == 0, res.output
    assert "valid" in res.output
