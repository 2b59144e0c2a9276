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
