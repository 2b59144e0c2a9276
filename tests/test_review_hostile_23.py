"""Hostile and odd files against the trust rule (review 23): nothing the user had is removed or overwritten unless
sparsekit wrote it, nothing a file names is run or followed."""

from __future__ import annotations

import os
import time

import torch
from torch import nn

import sparsekit


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
