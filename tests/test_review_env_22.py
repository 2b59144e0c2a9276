"""The environment a user runs in (review 22): locales, paths, streams, caches and permissions."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.onnx.quantize import quantize_int8
from sparsekit.onnx.sessions import open_session


def _locale_decoded(folder) -> str:
    """``folder/ü`` as Python names it under a locale that is not UTF-8 (here: ASCII with surrogateescape): a str
    whose UTF-8 encoding is not the file's bytes, which is all onnx's and onnxruntime's C++ code could open."""
    real = folder / "ü"
    real.mkdir()
    return os.fsdecode(os.fsencode(folder)) + "/\udcc3\udcbc"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_onnx_files_under_non_utf8_locale_names_are_exported_opened_and_quantized(tmp_path):
    # Under LANG=xx.ISO-8859-1, a folder or file named in UTF-8 (`ü`) reached onnxruntime as other bytes:
    # `bench` read "File doesn't exist", `export` "the exported ONNX graph is invalid", and int8 quantization failed.
    torch.set_num_threads(1)
    folder = _locale_decoded(tmp_path)
    onnx_path = os.path.join(folder, "m.onnx")
    sparsekit.export_onnx(_mlp(), onnx_path, input_shape=(1, 8), exporter="torchscript")
    assert (tmp_path / "ü" / "m.onnx").is_file()
    session = open_session(onnx_path)
    out = session.run(None, {session.get_inputs()[0].name: np.ones((1, 8), np.float32)})[0]
    assert out.shape == (1, 3)
    q_path = os.path.join(folder, "q.onnx")
    calibration = [{session.get_inputs()[0].name: np.random.default_rng(0).random((4, 8), np.float32)}]
    result = quantize_int8(onnx_path, q_path, calibration)
    assert result["mode"] == "static"
    assert (tmp_path / "ü" / "q.onnx").is_file()
    assert not [p for p in (tmp_path / "ü").iterdir() if p.name.endswith(".tmp")]


def test_onnx_path_that_is_not_utf8_is_refused_with_what_to_do(tmp_path):
    folder = tmp_path / os.fsdecode(b"caf\xe9")  # a Latin-1 name: no UTF-8 str names it
    folder.mkdir()
    sparsekit.export_onnx(_mlp(), tmp_path / "m.onnx", input_shape=(1, 8), exporter="torchscript")
    os.replace(tmp_path / "m.onnx", folder / "m.onnx")
    with pytest.raises(sparsekit.errors.ExportError, match="not valid UTF-8; rename it"):
        open_session(folder / "m.onnx")
    # Exporting there read "the exported ONNX graph is invalid: check_model_path(): incompatible function arguments".
    with pytest.raises(sparsekit.errors.ExportError, match=r"caf\ufffd/m2.onnx: onnx and onnxruntime open files"):
        sparsekit.export_onnx(_mlp(), folder / "m2.onnx", input_shape=(1, 8), exporter="torchscript")
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_text_beyond_the_terminals_encoding_is_written_as_lookalikes_not_exit_1(monkeypatch, encoding):
    # Under a Latin-1 (or ASCII) locale, `prune` finished its run and then died with exit 1 printing the summary's
    # "–" (no value) to stdout: UnicodeEncodeError. The look-alike is written; a file name's raw bytes stay as given.
    from sparsekit.__main__ import _tolerate_closed_pipes

    read_fd, write_fd = os.pipe()
    terminal = io.TextIOWrapper(io.FileIO(write_fd, "wb"), encoding=encoding, errors="strict")  # (kept: owns the fd)
    monkeypatch.setattr(sys, "stdout", terminal)
    _tolerate_closed_pipes()
    print("accuracy – → 0.9 … caf\udcc3\udca9", flush=True)
    terminal.close()
    with open(read_fd, "rb") as f:
        assert f.read() == b"accuracy - -> 0.9 ... caf\xc3\xa9\n"


@pytest.mark.parametrize("name", ["-r.yaml", "-my recipe ü.yaml"])
def test_a_file_named_with_a_leading_dash_is_named_in_the_usage_error(tmp_path, monkeypatch, name):
    # `sparsekit validate -r.yaml` read "No such option '-r'": nothing said that the word was the user's file.
    from click.testing import CliRunner

    from sparsekit.cli import main
    from tests.conftest import assert_bad_input

    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text("version: 1\npruning:\n  - {method: magnitude, sparsity: 0.5}\n")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", name]), f"'./{name}'", "put -- after the options")
    assert "No such option" not in line
    assert CliRunner().invoke(main, ["validate", f"./{name}"]).exit_code == 0  # the way it names works
    assert_bad_input(CliRunner().invoke(main, ["validate", "-q"]), "No such option '-q'")
