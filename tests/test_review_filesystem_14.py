"""Runs, outputs and files under adverse conditions (review 14): concurrent commands into one folder, refusals
under the lock, and what each leaves behind."""

from __future__ import annotations

import pytest

from sparsekit.errors import OutputError
from sparsekit.outputs import RunFolder


def test_a_run_refused_under_its_lock_leaves_no_sparsekit_folder(tmp_path):
    # Two commands started into one new folder: the prune run checked it empty, then found the other's file there
    # once it held the lock, and refused; but its empty .sparsekit stayed, so the folder then refused a sensitivity
    # analysis (and any tool expecting only the user's files) as holding files not its own.
    out = tmp_path / "out"
    folder = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        folder.begin()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_refused_run_into_a_new_folder_removes_the_folder_it_made(tmp_path, monkeypatch):
    out = tmp_path / "new" / "out"
    folder = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)

    def refuse() -> None:
        raise OutputError(f"{out}: refused")

    monkeypatch.setattr(folder, "_check_state", refuse)
    with pytest.raises(OutputError, match="refused"):
        folder.begin()
    assert not out.exists()
