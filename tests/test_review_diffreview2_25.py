"""Review of this session's changes (diffreview2): regressions for legitimate users found by reading the diff."""

from __future__ import annotations

import importlib
import sys

import pytest
from conftest import torch_file_with_pickle

_USERS_MODELS = """
import enum
from collections import namedtuple

import torch
from torch import nn

MODELS = {}


def register(name):
    def deco(cls):
        MODELS[name] = cls
        return cls

    return deco


Pair = namedtuple("Pair", "a b")
Mode = enum.Enum("Mode", "A B")


@register("net")
class Net(nn.Module):
    def __init__(self, meta=None):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.meta = meta

    def forward(self, x):
        return self.fc(x)
"""


@pytest.mark.parametrize("meta", ["none", "pair", "mode"])
def test_a_trusted_whole_model_of_a_registry_class_or_a_namedtuple_loads(tmp_path, monkeypatch, meta):
    # A model class under a registry's decorator (@register("net"), as timm's register_model) and a field holding a
    # collections.namedtuple or a functional-API enum are bound by code the module runs: the source screen refused
    # them ("is not on the list of what a pickled model needs") though they are the user's own; they are now judged
    # once torch.load has imported the module.
    import torch
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = f"usermod_diffreview2_{meta}"
    (tmp_path / f"{module}.py").write_text(_USERS_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    mod = importlib.import_module(module)
    value = {"none": None, "pair": mod.Pair(1, 2), "mode": mod.Mode.A}[meta]
    torch.save(mod.Net(value), tmp_path / "model.pt")
    del sys.modules[module]  # as in a fresh `sparsekit` process: the screen reads the module's source
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file", "--input-shape", "1,4"])
    assert result.exit_code == 0, result.output
    assert "fc" in result.output


def test_a_registry_decorator_returning_a_shell_helper_is_still_refused_once_imported(tmp_path, monkeypatch):
    # The other side of the test above: what the decorator returned is judged after the import, before the pickle
    # calls it.
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = "usermod_diffreview2_evil"
    (tmp_path / f"{module}.py").write_text(
        "import subprocess\n\n\ndef register(name):\n    return lambda fn: subprocess.getoutput\n\n\n"
        '@register("net")\ndef gather(c):\n    pass\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    payload = b"\x80\x04c" + f"{module}\ngather\n".encode() + b"\x8c" + bytes([len(command)]) + command + b"\x85R."
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert f"{module}.gather, which is not on the list of what a pickled model needs" in result.output


_REGISTRY = """
from torch import nn

REG = {}


def register(cls):
    REG[cls.__name__] = cls
    return cls


@register
class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
"""


@pytest.mark.parametrize("where", ["same", "other"])
def test_a_trusted_whole_model_deriving_from_a_registered_base_loads(tmp_path, monkeypatch, where):
    # `class Child(Base)` where Base is under the registry's decorator (in the same module, or imported from the
    # user's helpers module) was refused as deriving from a class the screen cannot judge.
    import torch
    from click.testing import CliRunner

    from sparsekit.cli import main

    helpers, module = f"helpers_diffreview2_{where}", f"child_diffreview2_{where}"
    child = "\n\nclass Child(Base):\n    pass\n"
    if where == "same":
        (tmp_path / f"{module}.py").write_text(_REGISTRY + child)
    else:
        (tmp_path / f"{helpers}.py").write_text(_REGISTRY)
        (tmp_path / f"{module}.py").write_text(f"from {helpers} import Base\n" + child)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (helpers, module):
        monkeypatch.delitem(sys.modules, name, raising=False)
    torch.save(importlib.import_module(module).Child(), tmp_path / "model.pt")
    for name in (helpers, module):
        sys.modules.pop(name, None)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file", "--input-shape", "1,4"])
    assert result.exit_code == 0, result.output


def test_a_class_deriving_from_what_a_decorator_made_a_file_writer_is_refused_once_imported(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = "usermod_diffreview2_writer"
    (tmp_path / f"{module}.py").write_text(
        "import logging\n\n\ndef register(cls):\n    return logging.FileHandler\n\n\n"
        "@register\nclass Base:\n    pass\n\n\nclass RunLog(Base):\n    pass\n"
    )
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    payload = b"\x80\x04c" + f"{module}\nRunLog\n".encode() + b"\x8c\x0avictim.txt\x8c\x01w\x86R."
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert victim.read_text() == "keep me\n"
    assert result.exit_code == 2, result.output
    assert f"{module}.RunLog, which is not on the list" in result.output


def test_an_attribute_reached_by_getattr_under_a_name_judged_once_imported_is_refused(tmp_path, monkeypatch):
    # A name bound by a call (Tools = type(...)) is judged once imported, when the unpickler finds it; an
    # attribute the pickle then reaches with builtins.getattr (Tools.gather: subprocess.getoutput) never goes through
    # that check, so the screen must not let the longer path through on the name's account.
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = "usermod_diffreview2_getattr"
    (tmp_path / f"{module}.py").write_text(
        "import subprocess\n\nTools = type('Tools', (), {'gather': staticmethod(subprocess.getoutput)})\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    payload = (
        b"\x80\x02cbuiltins\ngetattr\nc"
        + f"{module}\nTools\n".encode()
        + b"X\x06\x00\x00\x00gather\x86R"
        + b"X"
        + len(command).to_bytes(4, "little")
        + command
        + b"\x85R."
    )
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output
