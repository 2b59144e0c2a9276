"""Hostile and odd files against the trust rule (review 23): nothing the user had is removed or overwritten unless
sparsekit wrote it, nothing a file names is run or followed."""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch
from conftest import torch_file_with_pickle
from torch import nn

import sparsekit
from sparsekit.errors import OutputError
from sparsekit.outputs import RunFolder


def test_a_users_folder_named_like_a_staging_folder_survives_an_export(tmp_path):
    # `.NAME.XXXXXXXX.tmp` is mkdtemp's shape for an export's staging folder; a user's own folder of that shape (old,
    # unlocked) was taken for a killed writer's and removed with everything in it by the next export to NAME.
    mine = tmp_path / ".m.onnx.backup01.tmp"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    old = time.time() - 3600
    os.utime(mine, (old, old))
    torch.manual_seed(0)
    sparsekit.export_onnx(nn.Sequential(nn.Linear(4, 3)), tmp_path / "m.onnx", input_shape=(1, 4))
    assert (tmp_path / "m.onnx").is_file()
    assert (mine / "notes.txt").read_text() == "precious"


def _finished_run(out):
    done = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    (done.begin() / "checkpoints").mkdir()
    (done.stage / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    done.publish()
    done.unlock()
    return out


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
def test_a_users_folder_named_like_a_temp_of_a_run_folder_is_never_removed(tmp_path, resume):
    # Under umask 077 a user's folders are 0700, as mkdtemp makes its own: `.checkpoints.mybackup.tmp/` beside the
    # run's checkpoints/ was taken for a killed run's temp folder and removed, contents and all, by prune --overwrite.
    out = _finished_run(tmp_path / "out")
    mine = out / ".checkpoints.mybackup.tmp"
    mine.mkdir(mode=0o700)
    (mine / "epoch3.pt").write_text("my own checkpoint")
    with pytest.raises(OutputError, match=r"holds \.checkpoints\.mybackup\.tmp, which no sparsekit run into"):
        RunFolder.prepare(out, inputs=[], overwrite=not resume, resume=resume).begin()
    assert (mine / "epoch3.pt").read_text() == "my own checkpoint"


def test_a_trusted_pickle_naming_a_pytest_plugins_process_launcher_is_refused(tmp_path):
    # execnet (installed by the pytest plugin pytest-xdist) starts any command line as a "gateway": a file loaded
    # with --trust-model-file whose pickle called execnet.gateway_io.create_io ran `sh -c ...`; only pytest itself
    # was on the list of tool packages, not its plugins and what they bring.
    execnet = pytest.importorskip("execnet")
    from click.testing import CliRunner

    from sparsekit.cli import main

    canary = tmp_path / "CANARY"

    class Model:
        def __reduce__(self):
            spec = execnet.XSpec(f"popen//python=sh -c 'touch {canary}'")
            return execnet.gateway_io.create_io, (spec, execnet.gateway_base.get_execmodel("thread"))

    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "net": Model()}, path)
    result = CliRunner().invoke(main, ["inspect", str(path), "--trust-model-file"])
    time.sleep(0.5)  # (a gateway's process, had one started, has touched the file by now)
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "execnet" in result.output and "not on the list of what a pickled model needs" in result.output


def test_prune_into_a_folder_onnx_cannot_name_says_so_up_front_naming_the_folder(tmp_path):
    # Under a non-UTF-8 file name encoding a folder name's bytes need not be UTF-8, and onnx opens files by UTF-8
    # names. The run trained and exported the dense model first, then stopped naming its own staging file
    # (`OUT/.sparsekit/next/dense.onnx: ... rename it`), which the user cannot rename.
    from click.testing import CliRunner
    from conftest import FAST, assert_bad_input

    from sparsekit.cli import main

    model = tmp_path / "m.pt"
    torch.manual_seed(0)
    from examples.models import mlp

    kwargs = {"in_features": 64, "hidden": [16]}
    sparsekit.save_model(mlp(**kwargs), model, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    out = tmp_path / os.fsdecode(b"out\xe9")
    started = time.monotonic()
    result = CliRunner().invoke(
        main, ["prune", str(model), str(recipe), "-o", str(out), "--arch", "examples.models:mlp", *FAST]
    )
    line = assert_bad_input(result, "(-o)", "UTF-8")
    assert ".sparsekit" not in line and "dense.onnx" not in line
    assert not out.exists()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("imports", "name"),
    [
        ("import subprocess as sp", "sp.getoutput"),
        ("from subprocess import getoutput", "getoutput"),
        ("from subprocess import getoutput as gather", "gather"),
        ("from os import system as start_it", "start_it"),
        ("from subprocess import *", "getoutput"),
    ],
)
def test_a_trusted_pickle_reaching_a_function_through_an_import_of_the_users_module_is_refused(
    tmp_path, monkeypatch, imports, name
):
    # The user's module is not imported when the file is screened, so only the path's names were judged: a name that
    # module binds by import (`import subprocess as sp`) made `usermod_h23:sp.getoutput` pass as the user's own code,
    # and unpickling it ran a shell command.
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = f"usermod_h23_{abs(hash(imports)) % 10_000}"
    (tmp_path / f"{module}.py").write_text(f"{imports}\n\n\nclass Net:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    payload = b"\x80\x04c" + f"{module}\n{name}\n".encode() + b"\x8c" + bytes([len(command)]) + command + b"\x85R."
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


def test_a_trusted_pickle_naming_the_users_own_class_beside_imports_still_loads(tmp_path, monkeypatch):
    from sparsekit.modelio import _users_own_name

    module = "usermod_h23_own"
    (tmp_path / f"{module}.py").write_text(
        "import subprocess as sp\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert _users_own_name(module, "Net")
    assert not _users_own_name(module, "sp.getoutput")
