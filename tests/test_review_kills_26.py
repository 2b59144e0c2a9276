"""Runs killed at random moments, then run again (review 26, angle: kills)."""

from __future__ import annotations

from sparsekit import analysis


def test_the_next_analysis_removes_the_temp_files_a_killed_one_left(tmp_path):
    # An analysis SIGKILLed while writing its plot (seconds) or a partial table leaves its temp files in the folder;
    # no later analysis removed them, so each kill left more hidden files beside the results. The next analysis
    # into the folder, once it holds the folder's lock, removes them, and nothing else.
    out = tmp_path / "sens"
    out.mkdir()
    (out / "sensitivity.json").write_text("{}")
    left = [out / ".sensitivity.png.k3x9a0b1.sparsekit.tmp", out / ".sensitivity.partial.json.ab12cd34.sparsekit.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    kept = [out / ".report.md.k3x9a0b1.sparsekit.tmp", out / ".sensitivity.png.draft.tmp"]  # not an analysis's own
    for path in kept:
        path.write_text("mine")
    lock = analysis._FolderLock(out)
    lock.take()
    lock.release()
    assert sorted(p.name for p in out.iterdir()) == sorted(["sensitivity.json", *(p.name for p in kept)])
