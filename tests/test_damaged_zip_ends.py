"""A zip archive whose zip64 end locator claims several disks: ``zipfile.is_zipfile`` raises BadZipFile on it
instead of answering False, which escaped as "unexpected failure" (exit 1) from a damaged checkpoint (found
by fuzzing model files with flipped bits). A damaged checkpoint or .npz is bad input: exit 2, one Error line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sparsekit.cli import main
from sparsekit.data import _load_npz
from sparsekit.errors import DataError
from sparsekit.fsutil import is_zip_archive


def _multi_disk(path: Path) -> Path:
    """``path`` (a zip64 archive, as torch.save and numpy.savez write) with its zip64 locator's disk count set to 2."""
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x06\x07")  # the zip64 end locator: signature, disk (4), offset (8), total disks (4)
    if at < 0:  # a plain zip (numpy's): a locator put just before its end record is read as one
        end = data.rfind(b"PK\x05\x06")
        data[end:end] = b"PK\x06\x07" + bytes(16)
        at = end
    data[at + 16] = 2
    path.write_bytes(bytes(data))
    with pytest.raises(zipfile.BadZipFile):  # what the standard library does with it
        zipfile.is_zipfile(path)
    return path


def test_is_zip_archive_answers_false_instead_of_raising(tmp_path):
    torch.save({"w": torch.zeros(3)}, tmp_path / "a.pt")
    assert is_zip_archive(tmp_path / "a.pt")
    assert not is_zip_archive(_multi_disk(tmp_path / "a.pt"))
    assert not is_zip_archive(tmp_path / "missing.pt")


def test_a_checkpoint_with_a_damaged_zip_end_is_bad_input(tmp_path, monkeypatch):
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "m.pt")
    _multi_disk(tmp_path / "m.pt")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["inspect", "m.pt"])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "m.pt" in errors[0] and "unexpected failure" not in r.output, r.output


def test_an_npz_with_a_damaged_zip_end_is_bad_data(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    _multi_disk(path)
    with pytest.raises(DataError, match="d.npz"):
        _load_npz(str(path))
