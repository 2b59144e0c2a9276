"""Review (cliux, 25): the command line as a new user meets it: exit codes, Ctrl-C, messages, odd option use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _default_sigint() -> None:
    # As a terminal starts a command: Ctrl-C at its default action, not ignored or blocked by whoever runs the tests.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_a_ctrl_c_that_ended_an_exec_still_exits_130_not_by_signal(tmp_path):
    # A Ctrl-C that lands while Python runs an exec() of a string (dataclasses and namedtuple build their methods so,
    # as torch's modules are imported during a command) stayed marked "unhandled" in CPython: the command printed its
    # "Interrupted" and chose 130, then `python -m` ended the process by SIGINT (-2; a shell shows no exit code).
    # Seen on a prune stopped while it imported torch._dynamo. Here the model factory is where the Ctrl-C lands.
    (tmp_path / "stopnet.py").write_text('def build():\n    exec("raise KeyboardInterrupt")\n')
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "w.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARSEKIT_CONFIG_DIR": str(tmp_path / "cfg")}
    out = subprocess.run(
        [sys.executable, "-m", "sparsekit", "inspect", "w.pt", "--arch", "stopnet:build", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, preexec_fn=_default_sigint,
    )  # fmt: skip
    assert out.returncode == 130, (out.returncode, out.stderr)
    assert out.stderr.startswith("Interrupted"), out.stderr
    assert '"exit_code": 130' in out.stdout


def test_validate_without_model_refuses_the_trust_options_it_would_ignore(tmp_path):
    # `validate RECIPE --trust-code` (no MODEL) said "valid", remembered nothing, and told the user that prune would
    # call the recipe's factory "once you confirm it (... --trust-code ...)": the flag they had just given. --arch,
    # --data and --steps-per-epoch without MODEL were refused already; the trust options are now refused alike.
    from click.testing import CliRunner

    from sparsekit.cli import main

    for flag in ("--trust-code", "--trust-model-file"):
        result = CliRunner().invoke(main, ["validate", "lenet-gradual-magnitude-90", flag, "--json"])
        assert result.exit_code == 2, (flag, result.output)
        assert f"{flag}: only used with MODEL" in result.stderr
        assert '"exit_code": 2' in result.stdout
