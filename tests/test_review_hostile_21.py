"""Hostile files (review 21): what a file sparsekit reads can make it import, run, follow or overwrite."""

from __future__ import annotations

import contextlib
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


def _with_prefix(tmp_path: pathlib.Path, prefix: bytes, protocol: int = 2) -> pathlib.Path:
    """A whole pickled nn.Linear whose data.pkl first runs ``prefix`` (ops that leave nothing on the stack)."""
    torch.save(nn.Linear(2, 2), tmp_path / "real.pt", pickle_protocol=protocol)
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(tmp_path / "real.pt") as z, zipfile.ZipFile(path, "w") as out:
        for member in z.namelist():
            body = z.read(member)
            if member.endswith("data.pkl"):
                assert body[:2] == bytes([0x80, protocol])
                if protocol >= 4:  # inside the first frame, whose length grows by the prefix's
                    assert body[2:3] == b"\x95"
                    length = struct.unpack("<Q", body[3:11])[0] + len(prefix)
                    body = body[:3] + struct.pack("<Q", length) + prefix + body[11:]
                else:
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


def test_a_pickle_that_changes_an_enum_member_is_refused_even_when_trusted(tmp_path):
    import torch.nn.utils.parametrizations as parametrizations

    # _OrthMaps(1) is the member _OrthMaps.matrix_exp, one object for the whole process: BUILD set its name for
    # every orthogonal parametrization (an enum member is pickled as a call, with no state to BUILD)
    patch = b"ctorch.nn.utils.parametrizations\n_OrthMaps\nK\x01\x85R" + b"N}" + _s("_name_") + _s("x") + b"s\x86b0"
    member = parametrizations._OrthMaps(1)
    try:
        with pytest.raises(ModelFileError, match=r"_OrthMaps \(changed by BUILD\)"):
            read_model(_with_prefix(tmp_path, patch), trust=True)
        assert member.name == "matrix_exp"
    finally:
        vars(member)["_name_"] = "matrix_exp"


def test_a_pickle_whose_long_name_begins_with_an_allowed_one_is_refused_even_when_trusted(tmp_path, monkeypatch):
    import importlib

    # A user's class that refers to itself: Holder.again.again... is Holder, a name the screen allows
    (tmp_path / "sk_hostile21.py").write_text(
        "class Holder:\n    pass\n\n\ndef f():\n    pass\n\n\nHolder.again = Holder\nHolder.f = f\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("sk_hostile21")
    allowed = "Holder" + ".again" * 32 + ".f"
    assert len(allowed) == 200  # the screen read only the first 200 characters of a name
    # protocol 4 walks a dotted name through anything: here into f's module globals, set by their __setitem__
    name = _s("sk_hostile21") + _s(allowed + ".__globals__.__setitem__") + b"\x93"
    path = _with_prefix(tmp_path, name + _s("SK_CANARY") + b"\x88\x86R0", protocol=4)
    with pytest.raises(ModelFileError, match="sk_hostile21.Holder.again"):
        read_model(path, trust=True)
    assert not hasattr(mod, "SK_CANARY")


def test_a_pickle_that_makes_a_class_through_copyreg_is_refused_even_when_trusted(tmp_path):
    # copyreg.__newobj__(type, name, bases, ns) is type.__new__(type, name, bases, ns): a new class, as
    # type(name, bases, ns) is, which the screen already refuses when type is called itself
    made = b"ccopyreg\n__newobj__\n(cbuiltins\ntype\n" + _s("Made") + b")}tR0"
    path = _with_prefix(tmp_path, made)
    with pytest.raises(ModelFileError, match=r"builtins\.type \(making a class\)"):
        read_model(path, trust=True)


def test_a_pickle_that_makes_a_class_with_inst_is_refused_even_when_trusted(tmp_path):
    # INST module name, after a mark and its arguments: type("Made", (object,), {}) by the protocol 0 opcode
    made = b"(" + _s("Made") + b"cbuiltins\nobject\n\x85}ibuiltins\ntype\n0"
    with pytest.raises(ModelFileError, match=r"builtins\.type \(making a class\)"):
        read_model(_with_prefix(tmp_path, made), trust=True)
    # INST type with one argument is that object's class: changing it is refused as for type(x)
    patch = b"(" + _PATH_CLASS + b"ibuiltins\ntype\n" + _PATCH
    with pytest.raises(ModelFileError, match=r"builtins\.type \(changed by BUILD\)"):
        read_model(_with_prefix(tmp_path, patch), trust=True)


def test_a_whole_module_without_such_ops_still_loads_when_trusted(tmp_path):
    path = _with_prefix(tmp_path, b"")
    assert isinstance(read_model(path, trust=True).model, nn.Linear)


LAYERS = [{"name": "fc1", "sparsity": 0.5, "excluded": False}, {"name": "fc2", "sparsity": 0.0, "excluded": True}]


def _seen_while_drawing(monkeypatch) -> list[bool]:
    """text.usetex as each figure is saved (where matplotlib draws its labels)."""
    import matplotlib
    from matplotlib.figure import Figure

    seen: list[bool] = []
    real = Figure.savefig

    def savefig(self, *args, **kwargs):
        seen.append(bool(matplotlib.rcParams["text.usetex"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_a_matplotlibrc_in_the_current_folder_does_not_set_how_plots_are_drawn(tmp_path, monkeypatch):
    import matplotlib

    from sparsekit.plots import render

    monkeypatch.chdir(tmp_path)
    # text.usetex runs the latex program for every label; without it the run failed, blaming the plot's file
    (tmp_path / "matplotlibrc").write_text("text.usetex: True\n")
    seen = _seen_while_drawing(monkeypatch)
    with matplotlib.rc_context({"text.usetex": True}):  # what matplotlib read from it when imported here
        assert render({"layers": LAYERS, "targets": [], "zeros": True}, tmp_path / "out") == ["layer_sparsity.png"]
        assert matplotlib.rcParams["text.usetex"]  # the process's settings are back
    assert seen == [False]
    assert (tmp_path / "out" / "layer_sparsity.png").stat().st_size > 0


def test_settings_not_from_a_file_in_the_current_folder_are_kept(tmp_path, monkeypatch):
    import matplotlib

    from sparsekit.plots import render

    monkeypatch.chdir(tmp_path)
    seen = _seen_while_drawing(monkeypatch)
    with matplotlib.rc_context({"text.usetex": True}), contextlib.suppress(Exception):  # no latex here: may fail
        render({"layers": LAYERS, "targets": [], "zeros": True}, tmp_path / "out")
    assert seen == [True]


def test_the_sensitivity_plot_ignores_a_matplotlibrc_in_the_current_folder(tmp_path, monkeypatch):
    import matplotlib

    from sparsekit.sensitivity import SensitivityTable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "matplotlibrc").write_text("text.usetex: True\n")
    seen = _seen_while_drawing(monkeypatch)
    table = SensitivityTable(
        dense_accuracy=0.5, dense_loss=1.0, val_samples=10, fingerprint="0", input_shape=[1, 4], model_macs=4, grid={}
    )
    with matplotlib.rc_context({"text.usetex": True}):
        table.write_plot(tmp_path / "s.png")
    assert seen == [False] and (tmp_path / "s.png").stat().st_size > 0


def _deflated_bomb(src: pathlib.Path, dst: pathlib.Path) -> None:
    """``src`` (a torch archive) with 8 MiB of zeros added, deflated: 1,000x its size once unpacked."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))
        out.writestr(z.namelist()[0].split("/")[0] + "/padding", bytes(8 << 20))


def test_a_run_folders_checkpoint_that_unpacks_past_free_memory_is_refused_on_resume(tmp_path, monkeypatch):
    from sparsekit import pipeline, train
    from sparsekit.errors import SparsekitError

    # A run folder from someone else: --resume continues from its checkpoint (an unfinished run's, in
    # .sparsekit/next, is in no manifest), and torch.load reads deflated members whole.
    torch.save({"epoch": 1, "provenance": None}, tmp_path / "plain.pt")
    bomb = tmp_path / "last.pt"
    _deflated_bomb(tmp_path / "plain.pt", bomb)
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr("sparsekit.fsutil.available_memory", lambda: 4 << 20)  # stands for GiB against TiB
    loads: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    # where prune checks what the resume would change: nothing read, left to the training loop to refuse
    assert pipeline._check_resume(tmp_path, bomb, {}, [], 1) == ({}, [], 0)
    with pytest.raises(SparsekitError, match="GiB once unpacked") as err:
        train._load_checkpoint(bomb, None, None, None, None, None, {}, [])  # type: ignore[arg-type]
    assert str(bomb) in str(err.value) and getattr(err.value, "unusable", False)
    assert loads == []


def test_a_trainer_pruner_state_that_unpacks_past_free_memory_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    torch.save({"pruner": {}}, tmp_path / "plain.pt")
    _deflated_bomb(tmp_path / "plain.pt", tmp_path / "pruner.pt")
    monkeypatch.setattr("sparsekit.fsutil.available_memory", lambda: 4 << 20)
    with pytest.raises(ValueError, match="GiB once unpacked"):
        SparsekitTrainerCallback._read(tmp_path / "pruner.pt")
