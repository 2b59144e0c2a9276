"""SIGTERM (a job scheduler's stop) is handled like Ctrl-C: exit 143 with one line naming the epoch and
the checkpoint, no temp file left, and `--resume` says where it continues and finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sparsekit
from examples.models import mlp

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """
data: {source: digits, batch_size: 32}
finetune: {epochs: 6, optimizer: {name: adam, lr: 0.002}}
pruning: [{method: magnitude, sparsity: 0.8, schedule: {start_epoch: 0, end_epoch: 4}, layers: {exclude: [fc3]}}]
benchmark: {enabled: false}
"""


def test_sigterm_keeps_the_checkpoint_says_where_and_resume_finishes(tmp_path):
    sparsekit.save_model(mlp(), tmp_path / "m.pt", factory="examples.models:mlp", input_shape=[1, 64])
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sparsekit", "prune", str(tmp_path / "m.pt"), str(tmp_path / "r.yaml"),
           "--arch", "examples.models:mlp", "-o", str(out), "--set", "export.exporter=torchscript"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stderr is not None
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # no terminal: one line per epoch
        lines.append(line)
        if line.startswith("epoch 2/6"):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, lines
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, "".join(lines) + rest
    (message,) = [line for line in rest.splitlines() if line.startswith("Terminated")]
    # Stopped while epoch 3 ran, or just after epoch 2 was kept: either way the checkpoint holds epoch 2.
    assert message.startswith(("Terminated (SIGTERM): in epoch 3 of 6; ", "Terminated (SIGTERM): after epoch 2 of 6; "))
    assert "holds epoch 2" in message
    assert "`--resume` continues" in message and "Traceback" not in rest
    assert not [p for p in out.rglob("*.tmp")], "temp files left behind"
    assert not (out / "report.json").exists()  # nothing half-published

    resumed = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    err = resumed.stderr.splitlines()
    assert any(line.startswith("resuming from ") and "2 of 6 epochs finished, continuing with epoch 3" in line
               for line in err), err  # fmt: skip
    assert [line.split(":")[0] for line in err if line.startswith("epoch ")] == [f"epoch {e}/6" for e in range(3, 7)]
    assert (out / "report.json").is_file()


def test_a_run_whose_message_reader_goes_away_finishes_its_work(tmp_path):
    # `sparsekit prune ... 2>&1 | head -1`: once head exits, every message write failed with BrokenPipeError, which
    # stopped the fine-tuning after an epoch with exit 1. Now the messages are dropped and the run finishes.
    sparsekit.save_model(mlp(), tmp_path / "m.pt", factory="examples.models:mlp", input_shape=[1, 64])
    (tmp_path / "r.yaml").write_text(RECIPE.replace("epochs: 6", "epochs: 3").replace("end_epoch: 4", "end_epoch: 2"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sparsekit", "prune", str(tmp_path / "m.pt"), str(tmp_path / "r.yaml"),
           "--arch", "examples.models:mlp", "-o", str(out), "--set", "export.exporter=torchscript"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # then the reader goes, as head -1 does
    proc.stdout.close()
    assert proc.wait(timeout=600) == 0, first
    assert (out / "report.json").is_file() and (out / "model.onnx").is_file()


def test_the_pipe_tolerant_streams_keep_unbuffered_output_unbuffered():
    # python -u / PYTHONUNBUFFERED: stdout writes through; the wrapper that drops writes to a closed pipe kept it
    # block-buffered, so the summary came after later stderr lines in a 2>&1 log.
    code = (
        "import sys; from sparsekit.__main__ import _tolerate_closed_pipes; _tolerate_closed_pipes(); "
        "print(sys.stdout.write_through, sys.stderr.write_through)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(ROOT)}
    for flags, want in ((["-u"], "True True"), ([], "False True")):
        out = subprocess.run([sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == want, out.stderr


def test_a_signal_at_start_up_on_another_torchrun_rank_prints_no_json_document():
    # Every rank printed the JSON document (rank 0's is the command's), and its line did not say which rank it was
    code = (
        "import os, signal, sys, time; os.environ.update(RANK='1', WORLD_SIZE='2'); "
        "sys.orig_argv = [sys.executable, '-m', 'sparsekit', 'prune']; sys.argv = ['sparsekit', 'prune', '--json']; "
        "import sparsekit; os.kill(os.getpid(), signal.SIGINT); time.sleep(5); print('not stopped')"
    )
    out = _python(code)
    assert (out.returncode, out.stderr, out.stdout) == (130, "rank 1: Interrupted.\n", "")


def test_a_signal_right_after_a_message_went_out_does_not_print_it_again():
    # A SIGTERM that landed just after "epoch 2/6" was written (its exception raised before the write returned)
    # left the line in the stream's buffer, which wrote it again with the next message: printed twice.
    code = (
        "import os, sys; from sparsekit.__main__ import _tolerate_closed_pipes; _tolerate_closed_pipes()\n"
        "real, calls = os.write, []\n"
        "def write(fd, data):\n"
        "    n = real(fd, data); calls.append(n)\n"
        "    if len(calls) == 1 and fd == 2:\n"
        "        raise KeyboardInterrupt  # as a signal handler raises, after the bytes went out\n"
        "    return n\n"
        "os.write = write\n"
        "try:\n    sys.stderr.write('epoch 2/6\\n')  # (one write, as sparsekit's epoch lines are)\n"
        "except KeyboardInterrupt:\n    pass\n"
        "print('stopped', file=sys.stderr, flush=True)\n"
    )
    out = _python(code)
    assert (out.returncode, out.stderr) == (0, "epoch 2/6\nstopped\n")


def _python(code: str, cwd: Path = ROOT, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args, "-c", code] if code else [sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_ctrl_c_while_the_command_imports_exits_130_with_one_line():
    # The window between the interpreter's start and the command's own code: a Ctrl-C while sparsekit's modules
    # were being imported printed a traceback of the import machinery. Here the signal arrives right after the
    # package is imported, as the `sparsekit` command (python -m sparsekit) sees it.
    code = (
        "import os, signal, sys, time; sys.orig_argv = [sys.executable, '-m', 'sparsekit', 'prune']; "
        "import sparsekit; os.kill(os.getpid(), signal.SIGINT); time.sleep(5); print('not stopped')"
    )
    out = _python(code)
    assert (out.returncode, out.stderr, out.stdout) == (130, "Interrupted.\n", "")


def test_a_program_that_imports_sparsekit_keeps_its_ctrl_c_and_its_import_path(tmp_path):
    # Only the sparsekit command changes the SIGINT handler and drops the current folder from sys.path: a user's
    # `python -m mytool` whose package imports sparsekit lost its current folder from sys.path.
    (tmp_path / "mytool").mkdir()
    (tmp_path / "mytool" / "__init__.py").write_text("import sparsekit\n")
    (tmp_path / "helper_here.py").write_text("X = 1\n")
    (tmp_path / "mytool" / "__main__.py").write_text(
        "import signal, helper_here\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    out = _python("", cwd=tmp_path, args=("-m", "mytool"))
    assert (out.returncode, out.stdout.strip()) == (0, "True"), out.stderr
    code = "import os, signal, sys; import sparsekit; os.kill(os.getpid(), signal.SIGINT)"
    out = _python(code)
    assert out.returncode != 0 and "KeyboardInterrupt" in out.stderr


def test_the_command_hands_ctrl_c_back_to_python_once_its_code_is_loaded():
    # Inside a command a Ctrl-C must unwind as KeyboardInterrupt (SIGTERM as Terminated), which the command turns
    # into its message (what was kept, how to resume); the start-up handlers would end the process without it.
    code = (
        "import signal, sys; sys.orig_argv = [sys.executable, '-m', 'sparsekit', 'probe']; "
        "sys.argv = ['sparsekit', 'probe']; "
        "import sparsekit, sparsekit.cli as cli; from sparsekit.__main__ import entry; seen = []; "
        "probe = cli.main.command('probe')(cli.handle_errors(lambda: seen.extend("
        "[signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)]))); "
        "before = signal.getsignal(signal.SIGINT) is sparsekit._interrupted_at_start\n"
        "try:\n    entry()\nexcept SystemExit:\n    pass\n"
        "print(before, seen[0] is signal.default_int_handler, seen[1] is sparsekit._terminate)"
    )
    out = _python(code)
    assert (out.returncode, out.stdout.strip()) == (0, "True True True"), out.stderr


def test_once_the_command_returns_a_ctrl_c_cannot_turn_its_exit_into_clicks_aborted():
    # Between the command's return and the end of the process click still runs: a Ctrl-C there was "Aborted!" and
    # exit 1 after a finished run. The command's wrapper turns the signals off as it leaves.
    code = (
        "import signal, sys; sys.orig_argv = [sys.executable, '-m', 'sparsekit', 'probe']; "
        "import sparsekit, sparsekit.cli as cli; signal.signal(signal.SIGTERM, sparsekit._terminated_at_start); "
        "seen = []; cli.handle_errors(lambda: seen.extend([signal.getsignal(signal.SIGINT), "
        "signal.getsignal(signal.SIGTERM)]))(); "
        "print(seen[0] is signal.default_int_handler, seen[1] is sparsekit._terminate, "
        "signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)"
    )
    out = _python(code)
    assert (out.returncode, out.stdout.strip()) == (0, "True True True True"), out.stderr


@pytest.mark.parametrize(
    ("sig", "message", "code"), [("SIGINT", "Interrupted.", 130), ("SIGTERM", "Terminated (SIGTERM).", 143)]
)
def test_a_signal_while_click_reads_the_options_exits_with_one_line_and_the_json_document(sig, message, code):
    # Between loading the command's code and the command's own handler, click read the options: a Ctrl-C there
    # was click's "Aborted!" and exit 1, with no JSON document under --json (a SIGTERM the same).
    program = (
        "import os, signal, sys\n"
        "args = ['validate', 'r.yaml', '--json']\n"
        "sys.orig_argv = [sys.executable, '-m', 'sparsekit', *args]; sys.argv = ['sparsekit', *args]\n"
        "import sparsekit, sparsekit.cli as cli\n"
        "from sparsekit.__main__ import entry\n"
        "make = cli._Group.make_context\n"
        "def parsing(self, *a, **k):\n"
        f"    os.kill(os.getpid(), signal.{sig})\n"
        "    return make(self, *a, **k)\n"
        "cli._Group.make_context = parsing\n"
        "entry(); print('not stopped')\n"
    )
    out = _python(program)
    assert (out.returncode, out.stderr) == (code, message + "\n")
    assert json.loads(out.stdout) == {"error": message, "exit_code": code}


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["-m", "sparsekit", "prune"], "sparsekit"),
        (["-u", "-Im", "sparsekit"], "sparsekit"),
        (["-W", "ignore", "-X", "importtime", "-msparsekit"], "sparsekit"),
        (["-Wignore", "-m", "mytool"], "mytool"),
        (["train.py", "-m", "sparsekit"], None),  # a script's own arguments
        (["-c", "import sparsekit", "-m", "sparsekit"], None),
    ],
)
def test_the_command_is_told_from_the_interpreters_arguments(argv, module):
    assert sparsekit._module_run(["python", *argv]) == module


def test_a_users_script_named_sparsekit_keeps_its_ctrl_c(tmp_path):
    # Only pip's launcher counts as the command: a user's own script called `sparsekit` that imports the library
    # keeps Python's KeyboardInterrupt (the start-up handler would end it quietly with 130).
    script = tmp_path / "sparsekit"
    script.write_text("import os, signal, sparsekit\nos.kill(os.getpid(), signal.SIGINT)\n")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode != 130 and "KeyboardInterrupt" in out.stderr


def _sigterm_while_importing(*args: str) -> subprocess.CompletedProcess:
    """`sparsekit ARGS` stopped by SIGTERM while it imports its command code (sparsekit.cli)."""
    code = (
        "import os, signal, sys, time\n"
        f"sys.orig_argv = [sys.executable, '-m', 'sparsekit', *{list(args)!r}]\n"
        f"sys.argv = ['sparsekit', *{list(args)!r}]\n"
        "import sparsekit\n"
        "class Stop:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sparsekit.cli':\n"
        "            os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
        "sys.meta_path.insert(0, Stop())\n"
        "from sparsekit.__main__ import entry\n"
        "entry(); print('not stopped')\n"
    )
    return _python(code)


def test_a_sigterm_while_the_command_imports_is_named_as_sigterm():
    # Terminated is a KeyboardInterrupt: start-up said "Interrupted." and exited 130 for a scheduler's SIGTERM
    out = _sigterm_while_importing("--version")
    assert (out.returncode, out.stderr, out.stdout) == (143, "Terminated (SIGTERM).\n", "")


def test_a_sigterm_once_the_command_finished_leaves_its_success_alone():
    # A scheduler's stop that lands after the run finished turned exit 0 into 143, or a traceback at exit
    code = (
        "import os, signal, sys; sys.orig_argv = [sys.executable, '-m', 'sparsekit', '--version']; "
        "import sparsekit, sparsekit.cli as cli; from sparsekit.__main__ import entry; "
        "cli.main = lambda **kw: None; entry(); os.kill(os.getpid(), signal.SIGTERM); print('finished')"
    )
    out = _python(code)
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "finished", "")


def test_an_interrupt_while_the_command_imports_still_prints_its_json_document():
    out = _sigterm_while_importing("validate", "r.yaml", "--json")
    assert out.returncode == 143 and json.loads(out.stdout) == {"error": "Terminated (SIGTERM).", "exit_code": 143}
