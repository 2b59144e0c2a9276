"""Review of this session's changes (review 23, diffreview): faults found by reading the diff, each pinned here."""

from __future__ import annotations

import sys
import types

import pytest
import torch


def _torch_file_with_pickle(path, payload: bytes) -> None:
    """A torch.save zip archive whose data.pkl is ``payload`` (a pickle written by hand)."""

    class Pickler:
        def __init__(self, f, protocol=2):
            self.f = f

        def dump(self, obj):
            self.f.write(payload)

    torch.save({}, path, pickle_module=types.SimpleNamespace(Pickler=Pickler, __name__="hand"))


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("import subprocess\nsp = subprocess", "sp.getoutput"),
        ("import subprocess\ngather = subprocess.getoutput", "gather"),
        ("from subprocess import getoutput\ngather = getoutput", "gather"),
        ("import importlib\nsp = importlib.import_module('subprocess')", "sp.getoutput"),
        ("import subprocess\nsp, x = subprocess, 1", "sp.getoutput"),
        ("import subprocess\n\n\nclass Tools:\n    gather = subprocess.getoutput", "Tools.gather"),
        ("class Tools:\n    import subprocess as sp", "Tools.sp.getoutput"),
        ("class Tools:\n    from subprocess import getoutput", "Tools.getoutput"),
    ],
)
def test_a_trusted_pickle_reaching_a_function_through_an_alias_in_the_users_module_is_refused(
    tmp_path, monkeypatch, source, name
):
    # The screen read the user's module's imports (`import subprocess as sp`) but not an assignment aliasing one
    # (`sp = subprocess`, `gather = subprocess.getoutput`): `usermod:sp.getoutput` passed as the user's own code and
    # unpickling it ran a shell command.
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = f"usermod_dr23_{abs(hash(source)) % 100_000}"
    (tmp_path / f"{module}.py").write_text(f"{source}\n\n\nclass Net:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    payload = b"\x80\x04c" + f"{module}\n{name}\n".encode() + b"\x8c" + bytes([len(command)]) + command + b"\x85R."
    _torch_file_with_pickle(tmp_path / "model.pt", payload)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


def test_aliases_of_the_users_own_classes_still_pass(tmp_path, monkeypatch):
    from sparsekit.modelio import _users_own_name

    module = "usermod_dr23_own"
    (tmp_path / "layers_dr23.py").write_text("class Block:\n    pass\n")
    (tmp_path / f"{module}.py").write_text(
        "import subprocess\nfrom layers_dr23 import Block\nAlias = Block\n\n\nclass Net:\n    pass\n\n\nOther = Net\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert _users_own_name(module, "Net")
    assert _users_own_name(module, "Alias")
    assert _users_own_name(module, "Other")
