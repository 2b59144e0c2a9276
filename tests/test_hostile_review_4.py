"""Hostile inputs a security review found exiting 1, hanging or getting past the trusted-pickle screen: NPZ members
named x without .npy, a nested tensor in a checkpoint, a lock file with an absurd pid or that is a pipe, a torch
archive holding its data.pkl twice."""

from __future__ import annotations

import io
import os
import socket
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("mode", ["raw", "huge"])
def test_an_npz_member_named_x_without_npy_is_checked_like_the_others(tmp_path, mode):
    from numpy.lib import format as npy

    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as z:
        if mode == "raw":
            z.writestr("x", b"not an array at all")
        else:  # 4 TiB declared in a few bytes: must be refused before numpy allocates it
            b = io.BytesIO()
            npy.write_array_header_1_0(b, {"descr": "<f4", "fortran_order": False, "shape": (2**36, 16)})
            z.writestr("x", b.getvalue() + b"\0" * 64)
        y = io.BytesIO()
        np.save(y, np.zeros(10, dtype=np.int64))
        z.writestr("y.npy", y.getvalue())
    from sparsekit.data import load_data
    from sparsekit.errors import DataError

    with pytest.raises(DataError) as info:
        load_data(str(path), input_shape=[1, 16], field="data")
    said = str(info.value)
    assert "d.npz" in said and "'x'" in said
    assert ("not an .npy array" in said) if mode == "raw" else ("declares shape" in said)


def test_a_nested_tensor_in_a_state_dict_is_bad_input(tmp_path):
    from examples.models import mlp

    state = mlp().state_dict()
    state["fc1.weight"] = torch.nested.nested_tensor([torch.zeros(3), torch.zeros(2)])
    torch.save(state, tmp_path / "n.pt")
    assert_bad_input(run("inspect", tmp_path / "n.pt", "--arch", "examples.models:mlp"), "n.pt", "nested")


@pytest.mark.parametrize("pid", [10**30, 0, -1])
def test_a_lock_with_an_impossible_pid_is_stale_not_a_crash(tmp_path, pid):
    from sparsekit.outputs import _live_holder

    lock = tmp_path / "lock"
    lock.write_text(f'{{"pid": {pid}, "host": "{socket.gethostname()}", "time": 0}}')
    os.utime(lock, (0, 0))  # old: not "a run that is starting"
    assert _live_holder(lock) is None  # 10**30 raised OverflowError (exit 1); 0 and -1 name process groups


def test_a_lock_that_is_a_pipe_does_not_block(tmp_path):
    from sparsekit.outputs import _live_holder

    os.mkfifo(tmp_path / "lock")  # opening it to read would wait for a writer forever
    os.utime(tmp_path / "lock", (0, 0))
    assert _live_holder(tmp_path / "lock") is None


def test_a_torch_archive_with_its_pickle_twice_is_refused_even_when_trusted(tmp_path):
    from examples.models import mlp

    torch.save(mlp(), tmp_path / "ok.pt")  # a whole module: read only when trusted, after the screen
    with zipfile.ZipFile(tmp_path / "ok.pt") as src, zipfile.ZipFile(tmp_path / "dup.pt", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data)
            if info.filename.endswith("data.pkl"):
                dst.writestr(info, data)  # a second copy: zipfile reads the last, torch may read the first
    line = assert_bad_input(run("inspect", tmp_path / "dup.pt", "--trust-model-file"))
    assert "more than once" in line
