"""Hostile files (review 21): what a file sparsekit reads can make it import, run, follow or overwrite."""

from __future__ import annotations

import pathlib
import struct
import zipfile

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input
from torch import nn

from sparsekit.cli import main
from sparsekit.errors import ModelFileError
from sparsekit.modelio import read_model


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _with_prefix(tmp_path: pathlib.Path, prefix: bytes) -> pathlib.Path:
    """A whole pickled nn.Linear whose data.pkl first runs ``prefix`` (ops that leave nothing on the stack)."""
    torch.save(nn.Linear(2, 2), tmp_path / "real.pt")
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(tmp_path / "real.pt") as z, zipfile.ZipFile(path, "w") as out:
        for member in z.namelist():
            body = z.read(member)
            if member.endswith("data.pkl"):
                assert body[:2] == b"\x80\x02"
                body = body[:2] + prefix + body[2:]
            out.writestr(member, body)
    return path


# type(PosixPath("x")) is the class PosixPath; BUILD with slot state setattr()s on it: PosixPath._str set so makes
# every path in the process print as one file, the one sparsekit then writes (found: export's -o became it).
_PATH_CLASS = b"cpathlib\nPosixPath\n" + _s("x") + b"\x85R"
_PATCH = b"N}" + _s("_str") + _s("/tmp/elsewhere") + b"s\x86b0"
CLASS_OF = {
    "type(x)": b"cbuiltins\ntype\n" + _PATH_CLASS + b"\x85R",
    "copyreg.__newobj__(type, x)": b"ccopyreg\n__newobj__\ncbuiltins\ntype\n" + _PATH_CLASS + b"\x86R",
}


@pytest.mark.parametrize("how", CLASS_OF)
def test_a_pickle_that_changes_the_class_of_an_object_it_made_is_refused_even_when_trusted(tmp_path, how):
    path = _with_prefix(tmp_path, CLASS_OF[how] + _PATCH)
    try:
        with pytest.raises(ModelFileError, match=r"builtins\.type \(changed by BUILD\)"):
            read_model(path, trust=True)
        assert_bad_input(CliRunner().invoke(main, ["inspect", str(path), "--trust-model-file"]), "changed by BUILD")
        assert "_str" not in vars(pathlib.PosixPath)  # the canary: no class of the process was changed
    finally:
        if "_str" in vars(pathlib.PosixPath):
            del pathlib.PosixPath._str  # type: ignore[attr-defined]


def test_a_pickle_that_makes_a_class_through_copyreg_is_refused_even_when_trusted(tmp_path):
    # copyreg.__newobj__(type, name, bases, ns) is type.__new__(type, name, bases, ns): a new class, as
    # type(name, bases, ns) is, which the screen already refuses when type is called itself
    made = b"ccopyreg\n__newobj__\n(cbuiltins\ntype\n" + _s("Made") + b")}tR0"
    path = _with_prefix(tmp_path, made)
    with pytest.raises(ModelFileError, match=r"builtins\.type \(making a class\)"):
        read_model(path, trust=True)


def test_a_whole_module_without_such_ops_still_loads_when_trusted(tmp_path):
    path = _with_prefix(tmp_path, b"")
    assert isinstance(read_model(path, trust=True).model, nn.Linear)
