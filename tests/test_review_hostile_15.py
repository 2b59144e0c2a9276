"""Review round 15 (files as hostile data): crafted manifests, checkpoints, ONNX files and recipes that must end
in one clear Error line (or be ignored), never a crash, and never make sparsekit touch what it did not write."""

from __future__ import annotations

import json

import pytest

from sparsekit.errors import OutputError
from sparsekit.outputs import RunFolder


def _run_folder(tmp_path, files):
    out = tmp_path / "out"
    (out / ".sparsekit").mkdir(parents=True)
    (out / "mine.txt").write_text("the user's\n")
    (out / ".sparsekit" / "manifest.json").write_text(json.dumps({"format": "sparsekit-manifest/1", "files": files}))
    return out


@pytest.mark.parametrize("rel", [".", "./", "./."])
def test_a_manifest_listing_the_folder_itself_is_ignored_not_a_crash(tmp_path, rel):
    # A manifest whose entry named "." made every command that reads it (prune --overwrite, report) fail with
    # "unexpected failure: IndexError" (exit 1). It names no file: ignored, and the user's file still counts as theirs.
    out = _run_folder(tmp_path, {rel: {"sha256": "0" * 64, "size": 1}})
    assert RunFolder(out).owned() == {}
    with pytest.raises(OutputError, match="mine.txt"):
        RunFolder.prepare(out, inputs=[], overwrite=True, resume=False)
    assert (out / "mine.txt").read_text() == "the user's\n"


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("model.factory", "model: {factory: 'os:system', input_shape: [1, 64]}"),
        ("model.factory", "model: {factory: 'subprocess:run', input_shape: [1, 64]}"),
        ("data.source", "data: {source: 'builtins:exec'}"),
        ("data.source", "data: {source: 'shutil:rmtree'}"),
    ],
)
def test_validate_refuses_code_that_prune_never_runs(tmp_path, field, text):
    # validate said "valid" and "prune would import and call it only once you confirm it" for a recipe naming
    # os:system, which prune refuses (exit 2) whatever the user confirms. Now validate refuses it as prune does.
    from click.testing import CliRunner
    from conftest import assert_bad_input

    from sparsekit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\n{text}\npruning:\n  - {{method: magnitude, sparsity: 0.5}}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert_bad_input(result, "r.yaml", field, "never run")


def test_validate_still_names_a_users_own_code_without_importing_it(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sparsekit.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text("open('CANARY', 'w').close()\ndef build():\n    pass\n")
    (tmp_path / "r.yaml").write_text(
        "version: 1\nmodel: {factory: 'mynets:build', input_shape: [1, 64]}\ndata: {source: 'mynets:build'}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5}\n"
    )
    result = CliRunner().invoke(main, ["validate", "r.yaml"])
    assert result.exit_code == 0, result.output
    assert "model.factory names code mynets:build" in result.output
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("given", ["folder", "file"])
def test_report_json_that_is_a_pipe_is_named_as_such_not_as_missing(tmp_path, given):
    # A report.json that was a named pipe (or a device) was "not found; run prune first" (sparsekit report DIR,
    # load_report), and `sparsekit report DIR/report.json` looked for DIR/report.json/report.json.
    import os

    from click.testing import CliRunner
    from conftest import assert_bad_input

    import sparsekit
    from sparsekit.cli import main

    pipe = tmp_path / "report.json"
    os.mkfifo(pipe)
    arg = tmp_path if given == "folder" else pipe
    line = assert_bad_input(CliRunner().invoke(main, ["report", str(arg)]), f"{pipe}: is not a regular file")
    assert "not found" not in line
    with pytest.raises(sparsekit.SparsekitError, match="is not a regular file"):
        sparsekit.load_report(arg)


def test_an_npz_whose_npy_header_is_cut_off_is_bad_input(tmp_path):
    # An .npy header ending inside a bracket ("{'descr': '<f4") made numpy raise tokenize.TokenError, which
    # sparsekit did not catch: "Error: unexpected failure: TokenError" (exit 1) instead of naming the file.
    import io
    import zipfile

    import numpy as np
    from click.testing import CliRunner
    from conftest import assert_bad_input

    from sparsekit.cli import main

    header = b"{'descr': '<f4"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    labels = io.BytesIO()
    np.save(labels, np.zeros(10, dtype=np.int64))
    npz = tmp_path / "bad.npz"
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(2560))
        z.writestr("y.npy", labels.getvalue())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {input_shape: [1, 64]}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    # validate reads the data only with a model
    model = tmp_path / "m.pt"
    import torch

    from examples.models import mlp

    torch.save(mlp(in_features=64, hidden=[8]).state_dict(), model)
    args = ["validate", str(recipe), str(model), "--arch", "examples.models:mlp", "--kwargs", '{"hidden": [8]}',
            "--data", str(npz)]  # fmt: skip
    assert_bad_input(CliRunner().invoke(main, args), "bad.npz", "cut off inside a bracket")
