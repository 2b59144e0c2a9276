"""The opset asked for is the opset written (read back from the file), or a clean error saying which
opsets work; the exporters print nothing (issue 10: dynamo at opset 13 wrote opset 18, said 13, and
printed a conversion traceback)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import sys
import warnings

import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input
from torch import nn

import sparsekit
import sparsekit.onnx.export as export_mod
from sparsekit.cli import main
from sparsekit.errors import ExportError
from sparsekit.onnx import export_onnx
from sparsekit.onnx.quiet import quiet


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))


def file_opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@contextlib.contextmanager
def terminal_logging():
    """Logging as the command line sets it up: a root handler holding the stderr of the moment (here
    the test's captured one), which redirecting sys.stderr later does not reach."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture
def dynamo_keeps_opset_18(monkeypatch):
    """A stand-in for the dynamo exporter whose conversion fails (torch then keeps opset 18), made
    with the fast torchscript exporter."""
    real = export_mod._export

    def fake(model, tmp, x, opset, exporter, external, names=("output",)):
        if exporter == "dynamo":
            return real(model, tmp, x, 18, "torchscript", False, names)
        return real(model, tmp, x, opset, exporter, external, names)

    monkeypatch.setattr(export_mod, "_export", fake)


# Two real dynamo exports: 13 (torch's conversion fails on Relu: the torchscript exporter writes it)
# and 17 (torch converts this model); dynamo at its own opset 18 is in test_export.py.
@pytest.mark.parametrize(
    ("exporter", "opset", "used"),
    [
        ("torchscript", 13, "torchscript"),
        ("torchscript", 17, "torchscript"),
        ("torchscript", 18, "torchscript"),
        ("torchscript", 23, "torchscript"),
        ("dynamo", 13, "torchscript"),
        ("dynamo", 17, "dynamo"),
        ("auto", 13, "torchscript"),
        ("auto", 21, "dynamo"),
    ],
)
def test_requested_opset_is_written_and_nothing_printed(tmp_path, capfd, exporter, opset, used):
    path = tmp_path / "m.onnx"
    with terminal_logging(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = export_onnx(mlp(), path, [1, 20], opset=opset, exporter=exporter)

    assert file_opset(path) == info["opset"] == opset
    assert info["exporter"] == used
    if used == exporter or exporter == "auto":
        assert info["fallback"] is None
    else:
        assert "wrote opset 18 (its conversion to 13 failed" in info["fallback"]
    assert info["parity"]["ok"] and info["zeros"]["zeros_ok"]
    assert capfd.readouterr() == ("", "")  # no progress, log lines, warnings or tracebacks
    assert [str(w.message) for w in caught] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_undeliverable_opset_is_an_error_naming_the_working_ones(tmp_path, monkeypatch, dynamo_keeps_opset_18):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)  # a model the torchscript exporter cannot take
    with pytest.raises(ExportError) as err:
        export_onnx(mlp(), tmp_path / "m.onnx", [1, 20], opset=13, exporter="dynamo")
    msg = str(err.value)
    for needle in ("opset 13", "wrote opset 18", "over 1.8 GB", "the exporters support 18-23 with the dynamo exporter"):
        assert needle in msg, (needle, msg)
    assert list(tmp_path.iterdir()) == []


def test_torchscript_failure_after_dynamo_names_both(tmp_path, monkeypatch, dynamo_keeps_opset_18):
    real = export_mod._export

    def torchscript_fails(model, tmp, x, opset, exporter, external, names=("output",)):
        if exporter == "torchscript" and tmp.parent.name == "torchscript":
            raise ExportError("torch.onnx.export with exporter='torchscript' failed: no symbolic for aten::odd")
        return real(model, tmp, x, opset, exporter, external, names)

    monkeypatch.setattr(export_mod, "_export", torchscript_fails)
    with pytest.raises(ExportError) as err:
        export_onnx(mlp(), tmp_path / "m.onnx", [1, 20], opset=15, exporter="dynamo")
    msg = str(err.value)
    for needle in ("opset 15", "wrote opset 18", "aten::odd", "18-23 with the dynamo", "13-23 with the torchscript"):
        assert needle in msg, (needle, msg)
    assert list(tmp_path.iterdir()) == []


def _dynamo_conversion_fails_parity(monkeypatch) -> None:
    """Every export writes TorchScript's graph (at the asked opset), and the file in the dynamo folder fails parity:
    a dynamo conversion that writes the right opset but changes the outputs."""
    real_export, real_parity = export_mod._export, export_mod._parity
    monkeypatch.setattr(
        export_mod, "_export", lambda model, tmp, x, opset, exporter, external, names=("output",): real_export(
            model, tmp, x, opset, "torchscript", external, names
        )
    )  # fmt: skip

    def parity(model, tmp, shape, rtol, atol):
        result = real_parity(model, tmp, shape, rtol, atol)
        return {**result, "ok": False, "max_abs_diff": 0.5} if tmp.parent.name == "dynamo" else result

    monkeypatch.setattr(export_mod, "_parity", parity)


def test_converted_file_failing_parity_falls_back(tmp_path, monkeypatch):
    _dynamo_conversion_fails_parity(monkeypatch)
    info = export_onnx(mlp(), tmp_path / "m.onnx", [1, 20], opset=16, exporter="dynamo")
    assert info["exporter"] == "torchscript" and info["opset"] == 16 and info["parity"]["ok"]
    assert "changes the outputs" in info["fallback"]


def test_opset_must_be_an_integer(tmp_path):
    for bad in ("13", 13.0, True):
        with pytest.raises(ExportError, match="opset must be an integer"):
            export_onnx(mlp(), tmp_path / "m.onnx", [1, 20], opset=bad)  # type: ignore[arg-type]


def test_quiet_drops_output_logs_and_warnings_and_restores_them(capfd):
    log = logging.getLogger("onnxscript.version_converter")
    with terminal_logging(), quiet():
        print("progress ✅")
        print("traceback", file=sys.stderr)
        log.warning("Failed to convert the model")
        logging.getLogger("sparsekit").warning("not shown either")
        warnings.warn("exporter warning", UserWarning, stacklevel=1)
        # C and C++ code write to the descriptors, not through sys.stdout (torch's exporter dumps a failed
        # trace's graph with std::cout): those are silenced too, buffered C output included.
        os.write(1, b"graph dump on fd 1\n")
        os.write(2, b"graph dump on fd 2\n")
        ctypes.CDLL(None).printf(b"buffered C output\n")
    assert capfd.readouterr() == ("", "")
    os.write(1, b"fd 1 back\n")
    assert capfd.readouterr().out == "fd 1 back\n"
    assert logging.root.manager.disable == logging.NOTSET
    with terminal_logging():
        log.warning("after the block")
    assert "after the block" in capfd.readouterr().err


def test_quiet_under_debug_shows_logs_and_keeps_stdout_clean(capfd):
    sparsekit_log = logging.getLogger("sparsekit")
    level = sparsekit_log.level
    sparsekit_log.setLevel(logging.DEBUG)  # what the command line's debug mode does (via the root logger)
    try:
        with terminal_logging(), quiet():
            print("progress")
            os.write(1, b"graph dump\n")
            logging.getLogger("onnxscript.version_converter").warning("Failed to convert the model")
    finally:
        sparsekit_log.setLevel(level)
    out, err = capfd.readouterr()
    assert out == "" and "progress" in err and "graph dump" in err and "Failed to convert the model" in err


@pytest.fixture
def checkpoint(tmp_path):
    from examples.models import mlp as example_mlp

    return sparsekit.save_model(example_mlp(), tmp_path / "m.pt", "examples.models:mlp", input_shape=[1, 64])


def test_cli_reports_the_written_opset(tmp_path, checkpoint):
    out = tmp_path / "m.onnx"
    args = ["export", str(checkpoint), "--arch", "examples.models:mlp", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--opset", "13", "--exporter", "torchscript", "--json"])
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    assert res["opset"] == file_opset(out) == 13 and res["exporter"] == "torchscript" and res["fallback"] is None
    assert result.stderr == ""


def test_cli_undeliverable_opset_exits_2(tmp_path, checkpoint, monkeypatch, dynamo_keeps_opset_18):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)
    args = ["export", str(checkpoint), "--arch", "examples.models:mlp", "-o", str(tmp_path / "m.onnx")]
    result = CliRunner().invoke(main, [*args, "--opset", "13"])
    assert_bad_input(result, "opset 13", "wrote opset 18", "Ask for a higher opset", "support 18-23")
    assert not (tmp_path / "m.onnx").exists()


def test_export_says_which_exporters_file_it_shipped(tmp_path, monkeypatch, mlp_checkpoint):
    """`export --exporter dynamo --opset 16` whose dynamo file fails parity ships the TorchScript exporter's: the
    command printed only the dynamo exporter's problem, leaving which file was written to the first line's words."""
    _dynamo_conversion_fails_parity(monkeypatch)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        main, ["export", str(mlp_checkpoint), "-o", str(out), "--opset", "16", "--exporter", "dynamo", "--trust-code"]
    )
    assert result.exit_code == 0, result.output
    assert "the file is the torchscript exporter's, not the one asked for: the dynamo exporter's conversion" in (
        " ".join(result.output.split())
    )
