"""Files are data, a review of files read and written: a torch archive whose compressed members unpack to more
than the machine's free memory."""

from __future__ import annotations

import zipfile

import torch
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_torch_archive_that_unpacks_past_free_memory_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
    from examples.models import mlp

    torch.save(mlp().state_dict(), tmp_path / "plain.pt")
    bomb = tmp_path / "bomb.pt"  # torch reads deflated members too: 1,000x its size once unpacked
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
        z.writestr("plain/padding", bytes(8 << 20))
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr("sparsekit.modelio.available_memory", lambda: 4 << 20)  # stands for GiB against TiB
    assert_bad_input(run("inspect", bomb, "--arch", "examples.models:mlp"), "bomb.pt", "GiB once unpacked")
    monkeypatch.setattr("sparsekit.modelio.available_memory", lambda: 1 << 30)
    assert run("inspect", bomb, "--arch", "examples.models:mlp").exit_code == 0  # what fits is read as before
