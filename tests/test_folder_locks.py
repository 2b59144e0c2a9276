"""The folder locks of `sensitivity` and of ONNX staging (sparsekit.fsutil.lock_folder): released when the run
says so, also with forked children alive (DataLoader workers), and a file system without flock does not stop
a run."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from sparsekit.analysis import _FolderLock
from sparsekit.errors import OutputError
from sparsekit.fsutil import lock_folder, unlock_folder
from sparsekit.onnx.files import staging


def test_a_forked_child_does_not_keep_a_released_lock(tmp_path):
    # A flock lives while any copy of its descriptor is open: a DataLoader worker forked while an analysis held
    # the folder kept it locked after release(), and the next analysis into it from the same script was refused.
    first = _FolderLock(tmp_path)
    first.take()
    read, write = os.pipe()
    started_r, started_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child lives on, as a persistent worker does, until the parent is done
        os.close(write)
        os.write(started_w, b"s")  # (the fork's hooks have run by now)
        os.read(read, 1)
        os._exit(0)
    try:
        os.close(read)
        os.close(started_w)
        assert os.read(started_r, 1) == b"s"
        os.close(started_r)
        with pytest.raises(OutputError, match="another sparsekit sensitivity run"):
            _FolderLock(tmp_path).take()
        first.release()
        again = _FolderLock(tmp_path)
        again.take()  # not refused: the child's copy was closed at the fork
        again.release()
    finally:
        os.write(write, b"x")
        os.close(write)
        os.waitpid(pid, 0)


def test_a_file_system_without_flock_runs_unlocked(tmp_path, monkeypatch):
    # NFS without lockd, some FUSE mounts: flock fails with ENOLCK or EOPNOTSUPP. Every ONNX write and every
    # analysis was an unexpected failure (exit 1) there once the locks came in.
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with staging(tmp_path / "m.onnx") as work:
        (work / "m.onnx").write_bytes(b"x")
    assert not list(tmp_path.iterdir())
    lock = _FolderLock(tmp_path)
    lock.take()
    lock.release()
    fd = lock_folder(tmp_path)
    assert fd is not None
    unlock_folder(fd)
