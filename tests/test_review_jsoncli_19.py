"""The CLI as a machine-readable tool (--json in scripts and CI): found in review round 19 (angle: jsoncli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sparsekit.cli import main

ROOT = Path(__file__).resolve().parent.parent

NOISY = """
import os
import torch.nn as nn
print("noisy: imported")


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4)

    def forward(self, x):
        print("forward", tuple(x.shape))
        return self.a(x)


def build():
    print("building")
    os.write(1, b"a C library writing to descriptor 1\\n")
    return M()
"""


def _noisy_model(folder: Path) -> Path:
    (folder / "noisy.py").write_text(NOISY)
    path = folder / "noisy.pt"
    torch.save({"a.weight": torch.randn(4, 8), "a.bias": torch.zeros(4)}, path)
    return path


def _sparsekit(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "sparsekit", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )


def test_json_stdout_holds_the_document_alone_when_user_code_prints(tmp_path):
    # A model whose factory and forward print (and a library writing to the descriptor itself) made stdout
    # "noisy: imported\nbuilding\n...{...}": not JSON, for a script that reads it. They go to stderr.
    _noisy_model(tmp_path)
    done = _sparsekit(tmp_path, "inspect", "noisy.pt", "--arch", "noisy:build", "--input-shape", "1,8", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["layers"][0]["name"] == "a"
    for said in ("noisy: imported", "building", "forward (1, 8)", "a C library writing"):
        assert said in done.stderr


INSPECT = ["inspect", "noisy.pt", "--arch", "noisy:build", "--input-shape"]


def test_json_stdout_holds_the_document_alone_in_process(tmp_path, monkeypatch):
    # The same where stdout is no file (click's runner, an embedding program): sys.stdout is redirected alone.
    _noisy_model(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(main, [*INSPECT, "1,8", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layers"][0]["name"] == "a"
    assert "building" in result.stderr
    # A failure after the prints: the error document alone on stdout.
    result = CliRunner().invoke(main, [*INSPECT, "1,9", "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["exit_code"] == 2
    assert "forward (1, 9)" in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(
    "argv", [["recipes"], ["recipes", "--json"], ["--help"], ["validate", "nosuch.yaml", "--json"]]
)
def test_stdout_that_cannot_be_written_is_one_error_line_and_exit_2(tmp_path, argv):
    # `sparsekit recipes > out.txt` on a full disk: a traceback and exit 1 (--help too), or, for a command that
    # caught the OSError, "Error: : No space left on device; check the path and its permissions", naming nothing.
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "sparsekit", *argv],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, done.stderr
    assert ("standard output" in lines[0]) == (argv[0] != "validate"), lines[0]  # validate's own error comes first


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_stderr_that_cannot_be_written_keeps_the_exit_code(tmp_path):
    # `sparsekit validate ... 2>> run.log` on a full disk: the Error line could not be written, which raised and
    # turned a bad input's exit 2 into a traceback nobody saw and exit 1.
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "sparsekit", "validate", "nosuch.yaml"],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stdout == ""


def test_json_says_the_warnings_of_the_text_output_on_stderr_too(tmp_path):
    # sensitivity --json (and validate --json's allocation) of a model at chance accuracy: the "near chance"
    # Warning line of the text output was in the document alone, while prune and validate --json say their
    # warnings on stderr too, where a script's log shows them.
    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    model = tmp_path / "untrained.pt"
    sparsekit.save_model(
        mlp(hidden=[8]), model, factory="examples.models:mlp", kwargs={"hidden": [8]}, input_shape=[1, 64]
    )
    recipe = tmp_path / "auto.yaml"
    recipe.write_text(
        "data: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: magnitude, sparsity: auto, target: 0.9, schedule: oneshot}]\n"
    )
    arch = ["--arch", "examples.models:mlp"]
    for argv in (
        ["sensitivity", model, recipe, "-o", tmp_path / "s", "--max-batches", "1"],
        ["validate", recipe, model],
    ):
        result = CliRunner().invoke(main, [str(a) for a in argv] + arch + ["--json"])
        assert result.exit_code == 0, result.output
        assert "near chance" in json.dumps(json.loads(result.stdout))
        said = [line for line in result.stderr.splitlines() if line.startswith("Warning:") and "near chance" in line]
        assert len(said) == 1, (argv[0], result.stderr)


def test_inspect_json_says_its_non_finite_warning_on_stderr_too(tmp_path):
    # The same for inspect --json of an ONNX file holding NaN weights: its WARNING line was in the text alone.
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((4, 8), dtype=np.float32)
    w[0, 0] = np.nan
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "nan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["non_finite"]
    assert [line for line in result.stderr.splitlines() if line.startswith("Warning:") and "NaN" in line], result.stderr


def test_report_folder_with_schema_is_refused_not_half_done(tmp_path):
    # `sparsekit report out --schema` printed the schema, re-rendered nothing and exited 0: a script that asked for
    # both could not tell. The help says FOLDER or --schema.
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--schema"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "--schema" in lines[0] and str(tmp_path) in lines[0], result.stderr
