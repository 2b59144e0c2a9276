"""The `sparsekit` command. The only place where SparsekitError becomes an exit code.

Exit codes: 0 success; 2 bad input (one ``Error:`` line, no traceback); 1 unexpected failure
(traceback with --debug); 130 interrupted (Ctrl-C); 143 stopped by SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shlex
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click

from .errors import (
    TRAINING_DONE,
    TRAINING_NOT_STARTED,
    WHERE_PREFIXES,
    DataError,
    ExportError,
    OutputError,
    SparsekitError,
    TargetMissedWarning,
    Terminated,
    first_interruption,
    missing_dependency,
    naming_recipe,
    one_line,
    option,
    printable,
    render,
)
from .recipe_catalog import RECIPES_DIR as RECIPES_DIR  # noqa: F401 - kept importable from here
from .recipe_catalog import find_recipe

# The flag for each caller option a library message may point to (see sparsekit.errors.option):
# library code words its remedies neutrally; only this module knows the command line.
FLAGS = {
    "allow_change": "--allow-change",
    "arch": "--arch",
    "batch_size": "--batch-size",
    "data": "--data",
    "device": "--device",
    "exporter": "--exporter",
    "input_shape": "--input-shape",
    "kwargs": "--kwargs",
    "logits": "--logits",
    "output": "-o",
    "overwrite": "--overwrite",
    "provider": "--provider",
    "resume": "--resume",
    "restart": "--overwrite",
    "set": "--set",
    "trust_code": "--trust-code",
    "trust_model_file": "--trust-model-file",
}


def _flag(name: str, value: str) -> str:
    flag = FLAGS.get(name, name)
    if not value:
        placeholders = {"arch": " pkg.module:callable", "data": " SOURCE", "kwargs": " '{...}' with --arch"}
        return flag + placeholders.get(name, "")
    if name == "input_shape":
        value = value.strip("[]").replace(" ", "")
    # Pasted into a shell as shown: brackets are a glob (zsh refuses an unmatched one), spaces split the value,
    # so anything beyond plain path characters is single-quoted.
    return f"{flag} {shlex.quote(value)}"


class _PathType(click.Path):
    """click's Path, refusing an empty string: Path("") is ".", so `inspect ""` (an unset shell variable, say) was
    answered about the current folder, which the user never named."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty: give a file or folder path", param, ctx)
        if value == "-":
            # Unix tools' stdin/stdout; here it was looked up as a file and answered "model file not found".
            self.fail("is '-': sparsekit reads and writes files, not standard input or output; give a path (./- for "
                      "a file named '-')", param, ctx)  # fmt: skip
        if isinstance(value, str) and value.startswith("~"):
            # The shell leaves `--output=~/out` and a quoted '~/out' as they are: a folder named "~" was made in the
            # current one (which a later `rm -rf ~` mistaken for the home folder takes), while --data ~/d.npz and a
            # recipe's paths were read from the home folder. ./~ names such a folder.
            value = os.path.expanduser(value)
        return super().convert(value, param, ctx)


PATH = _PathType(path_type=Path)


class _IntRange(click.IntRange):
    """click's IntRange, saying what is wrong with a value that is no integer at all: click's own words, "'1,8'
    is not a valid integer range", read as if a range were wanted; a comma list (-b 1,8, as one would write
    it) is told to repeat the option instead."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                int(value)
            except ValueError:
                flag = param.opts[-1] if param is not None and param.opts else "the option"
                parts = [v.strip() for v in value.split(",")]
                if getattr(param, "multiple", False) and len(parts) > 1:
                    again = " ".join(f"{flag} {v}" for v in parts)
                    self.fail(f"{value!r} is not a whole number; give the option once per value: {again}", param, ctx)
                self.fail(f"{value!r} is not a whole number", param, ctx)
        return super().convert(value, param, ctx)


class _RecipeType(click.ParamType):
    """A recipe file's path or a shipped recipe's name: any text but an empty one (see :class:`_PathType`)."""

    name = "recipe"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty: give a recipe file or a shipped recipe's name (sparsekit recipes)", param, ctx)
        if isinstance(value, str) and value.startswith("~"):
            return os.path.expanduser(value)  # as a path argument's (see _PathType): no recipe name starts with ~
        return value


RECIPE = _RecipeType()


def _launched_processes() -> int:
    """How many processes a launcher (torchrun) started, from ``WORLD_SIZE``: 1 when unset or not a number. A stray
    value in the environment (an exported ``WORLD_SIZE=auto``, say) is no launch, as sparsekit.distributed.launched
    reads it: parsing it must not turn every error message into a traceback."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def _other_rank() -> str | None:
    """This process's torchrun rank when it is not rank 0 of a run of several processes, else None."""
    import os

    rank = os.environ.get("RANK", "0")
    return rank if rank not in ("", "0") and _launched_processes() > 1 else None


def _fail(message: str, code: int, as_json: bool = False) -> None:
    # Under torchrun every process prints its own line: say which, unless it is rank 0's.
    rank = _other_rank()
    line = f"{'' if rank is None else f'rank {rank}: '}{render(message, _flag)}"
    # One line, whatever the message quotes: a value given with a line break (--set "a=1<newline>b: 2") or a
    # file's text would split it.
    line = line.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")
    line = printable(line)  # a name quoted from a file must not drive the terminal
    click.echo(f"Error: {line}", err=True)
    if as_json:
        _json_error(line, code)
    sys.exit(code)


# Set once a command printed its JSON document: a failure after it (prune --strict) prints no second one.
_EMITTED: list[bool] = []


def _json_error(message: str, code: int) -> None:
    """With ``--json``, a failed command still prints its one JSON document on stdout (the INTERFACE's
    contract): ``{"error": the Error line's text, "exit_code": code}``, so a script reading stdout can tell;
    none when the command printed its document before failing (``prune --strict``: report.json's), and none
    from a torchrun rank other than 0 (rank 0 prints the run's one document, as on success)."""
    if not _EMITTED and _other_rank() is None:
        # (a stdout that cannot be written, see sparsekit.__main__, loses this copy alone: the Error line says it)
        with contextlib.suppress(OutputError):
            _print_document(json.dumps({"error": message, "exit_code": code}))


# While a --json command runs: its stdout and, when that is a file descriptor, (the descriptor, a duplicate of it as
# it was, stderr's descriptor).
_DOCUMENT_OUT: list[tuple[Any, tuple[int, int, int] | None]] = []


@contextlib.contextmanager
def _stdout_for_the_document(as_json: bool) -> Any:
    """With ``--json``, stdout holds the one JSON document and nothing else: while the command runs, whatever else
    writes to stdout goes to stderr instead. That is user code (a ``print`` in a model's forward or factory, a data
    callable's dataset saying "Files already downloaded"), libraries (an exporter's progress), and processes started
    meanwhile (data loader workers), hence the descriptor too, not only ``sys.stdout``. :func:`_print_document`
    writes the document to the real stdout."""
    if not as_json:
        yield
        return
    real = sys.stdout
    fds: tuple[int, int, int] | None = None
    with contextlib.suppress(AttributeError, OSError, ValueError):  # not a real file (captured): sys.stdout alone
        real.flush()
        out_fd, err_fd = real.fileno(), sys.stderr.fileno()
        saved = os.dup(out_fd)
        try:
            os.dup2(err_fd, out_fd)
        except OSError:
            os.close(saved)
            raise
        fds = (out_fd, saved, err_fd)
    _DOCUMENT_OUT.append((real, fds))
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        _DOCUMENT_OUT.pop()
        sys.stdout = real
        if fds is not None:
            _flush_to_stderr(real)
            os.dup2(fds[1], fds[0])
            os.close(fds[1])


def _flush_to_stderr(real: Any) -> None:
    """What was written to stdout's buffers while it pointed to stderr (Python's ``real``, C's stdio) goes there
    before stdout points back to the document's descriptor."""
    from .onnx.quiet import flush_c_streams

    with contextlib.suppress(OSError, ValueError):
        real.flush()
    flush_c_streams()


def _print_document(text: str) -> None:
    """Print the command's JSON document on the real stdout (see :func:`_stdout_for_the_document`)."""
    if not _DOCUMENT_OUT:
        click.echo(text)
        return
    real, fds = _DOCUMENT_OUT[-1]
    if real is None:  # stdout closed (`>&-`): the document goes nowhere, as any output would, not to stderr
        return
    if fds is None:
        click.echo(text, file=real)
        return
    _flush_to_stderr(real)
    os.dup2(fds[1], fds[0])
    try:
        click.echo(text, file=real)
        real.flush()
    finally:
        os.dup2(fds[2], fds[0])


def _folder_holds(out: Any, what: Literal["run", "checkpoint"]) -> bool:
    """Whether the output folder ``out`` holds a sparsekit run to resume (``run``) or an epoch checkpoint
    (``checkpoint``); True when that cannot be told."""
    if out is None:
        return True
    try:
        from .outputs import RunFolder

        folder = RunFolder(Path(out))
        return folder.has_run() if what == "run" else folder.checkpointed()
    except Exception:  # noqa: BLE001 - an interruption's message must not fail
        return True


def _holds_analysis(out: Any) -> bool:
    """Whether the output folder ``out`` holds a sensitivity table (partial or finished) that ``--resume`` continues
    from; True when that cannot be told."""
    if out is None:
        return True
    try:
        from .analysis import PARTIAL_FILE

        return any((Path(out) / name).is_file() for name in (PARTIAL_FILE, "sensitivity.json"))
    except Exception:  # noqa: BLE001 - an interruption's message must not fail
        return True


def _interrupt_message(command: str, terminated: bool, said: str, out: Any) -> str:
    """The line an interrupted ``command`` ends with: what stopped it, where (``said``, when known), and what
    ``--resume`` will do with what the output folder ``out`` holds."""
    resume = {
        "prune": "; `--resume` continues from the last finished epoch",
        "sensitivity": "; `--resume` continues the analysis from the last finished probe",
    }.get(command, "")
    if command == "prune":
        if TRAINING_DONE in said:
            resume = "; `--resume` skips the finished training and redoes only what follows it"
        elif (
            TRAINING_NOT_STARTED in said or "no epoch was checkpointed" in said or not _folder_holds(out, "checkpoint")
        ):
            # (where is not always known: another torchrun rank waiting for rank 0 says nothing of it)
            resume = "; no epoch was checkpointed: `--resume` starts the training over"
            if "no epoch was checkpointed" in said and said.startswith(WHERE_PREFIXES):  # said already: once
                resume = "; `--resume` starts the training over"
        if not _folder_holds(out, "run"):  # stopped before the output folder held anything
            resume = "; nothing was kept to resume: run the same command again"
    if command == "sensitivity" and not _holds_analysis(out):
        # Stopped while loading or measuring the dense model: --resume would have nothing to continue from.
        resume = "; nothing was kept to resume: run the same command again"
    what = "Terminated (SIGTERM)" if terminated else "Interrupted"
    where = f" {said}." if said.startswith(WHERE_PREFIXES) else ""
    if command in _WRITE_NOTHING:
        # (a dry run or a reading: speaking of finished and unfinished files sent users looking for some)
        return f"{what}:{where} Nothing was written; run the same command again."
    return f"{what}:{where} Finished files are complete, unfinished ones were not written{resume}."


_WRITE_NOTHING = frozenset({"validate", "inspect", "bench"})  # commands that only read and print


class _LogLines(logging.Formatter):
    """sparsekit's logged warnings as the CLI's other warnings: one ``Warning: ...`` line (README: every command
    prints its warnings so), not ``WARNING sparsekit: ...``; ``--debug`` keeps level and logger names."""

    def format(self, record: logging.LogRecord) -> str:
        if logging.WARNING <= record.levelno < logging.ERROR:
            return f"Warning: {printable(record.getMessage())}"
        return f"{record.levelname.capitalize()}: {printable(record.getMessage())}"


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line and an exit code; --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # (the document, or its error, is printed inside: stdout is the command's again once it is out)
        with _stdout_for_the_document(bool(kwargs.get("as_json", False))):
            return handled(*args, **kwargs)

    def handled(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        as_json = bool(kwargs.get("as_json", False))
        _EMITTED.clear()
        if debug:
            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_LogLines())
            logging.basicConfig(level=logging.WARNING, handlers=[handler])
        _SAID.clear()
        _OWN_SAID.clear()
        first_interruption(reset=True)
        took_over = False
        try:
            took_over = _take_over_signals()  # (inside the try: a Ctrl-C right after it is this command's to report)
            _refuse_several_processes(fn.__name__)
            try:
                # (restored after the command: the CLI's own hook and filters, not the caller's, when run in-process)
                with warnings.catch_warnings():
                    if not debug:
                        # Library warnings (torch on odd tensors in a file, exporters, onnxruntime) are not for the
                        # user; sparsekit's own (the Pruner's advice, an entry's) are, as Warning lines. --debug shows
                        # them all, as Python prints them.
                        warnings.simplefilter("always")
                        warnings.showwarning = _say_own_warning
                    return fn(*args, **kwargs)
            except Exception as err:
                interrupt = _interrupt_behind(err)
                if interrupt is None:
                    raise
                raise interrupt from None  # a Ctrl-C that Python wrapped (see _interrupt_behind)
        except SparsekitError as err:
            if debug:
                traceback.print_exc()
            _fail(err.render(_flag), err.exit_code, as_json)
        except OSError as err:  # a path the user gave: missing folder, a file where a folder should be, ...
            if debug:
                traceback.print_exc()
            from .fsutil import dangling_link, file_in_the_way, name_too_long

            where = err.filename or ""
            _fail(
                dangling_link(where)
                or file_in_the_way(where, err.errno)
                or name_too_long(where, err.errno)
                or f"{where}: {err.strerror or err}; check the path and its permissions",
                2,
                as_json,
            )
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated, see __main__)
            said = err.args[0] if err.args and isinstance(err.args[0], str) else ""
            said = first_interruption(reset=True) or said  # not where a second Ctrl-C caught the unwinding
            message = _interrupt_message(fn.__name__, isinstance(err, Terminated), said, kwargs.get("out"))
            peer = _peer_failure_behind(err) if isinstance(err, Terminated) else None
            if peer is not None:
                # torchrun stops the other processes with SIGTERM once one of them died (a scheduler's stop reaches
                # them all); one whose collective had already failed on a process that stopped gets it while that
                # error unwinds, and where the run was, what --resume finds, would be guesses from a half-unwound run.
                # (A Ctrl-C reaches every process itself: the first to stop broke the others' collectives.)
                message = f"Terminated (SIGTERM) after {_peer_message(peer, fn.__name__, kwargs.get('out'))}."
            # Under torchrun every process says it (as the Error lines and the start-up's "Interrupted." do): which one.
            rank = _other_rank()
            click.echo(f"rank {rank}: {message}" if rank is not None else message, err=True)
            if as_json:
                _json_error(message, 143 if isinstance(err, Terminated) else 130)
            sys.exit(143 if isinstance(err, Terminated) else 130)
        except (click.ClickException, click.exceptions.Exit):
            raise  # click prints usage errors itself, with exit code 2
        except SystemExit as err:  # user code (a model's forward, a dataset) called sys.exit()
            if debug:
                traceback.print_exc()
            _fail(
                f"user code called sys.exit({err.code!r}) during the run (a model's forward, a data loader or a "
                "factory); it must return or raise, not exit",
                2,
                as_json,
            )
        except MemoryError as err:
            if debug:
                traceback.print_exc()
            _fail(f"out of memory ({one_line(err)}); use a smaller model, batch or input, or more memory", 2, as_json)
        except Exception as err:  # noqa: BLE001 - the CLI edge: report, never dump a traceback by default
            if debug:
                traceback.print_exc()
            if isinstance(err, RuntimeError) and "can't allocate memory" in str(err):  # torch's allocator
                _fail(f"out of memory ({one_line(err, 200)}); use a smaller model, batch or input", 2, as_json)
            if (needed := missing_dependency(err)) is not None:  # the install to fix, not a bug to report
                _fail(needed, 2, as_json)
            if _peer_failed(err):
                _fail(_peer_message(err, fn.__name__, kwargs.get("out")), 2, as_json)
            _fail(
                f"unexpected failure: {one_line(err)} (run again with --debug for a traceback and report it)",
                1,
                as_json,
            )
        except BaseException as err:  # noqa: BLE001 - GeneratorExit & co. raised by user code (forward, data)
            if debug:
                traceback.print_exc()
            _fail(f"user code raised {one_line(err)}, which only Python itself should raise; fix that code", 2, as_json)
        finally:
            if took_over:  # the command is over: a Ctrl-C on the way out must not turn its exit into click's "Aborted!"
                _ignore_signals()

    return wrapper


# What each process of a multi-process launch would do running a command that is not prune: the same whole job N
# times over, into the same files, or timings taken while the others compete for the same cores.
_ONE_PROCESS = {
    "sensitivity": "probe every layer itself and write the same folder (the second one found it locked)",
    "export": "write the same file",
    "bench": "time the files while the others compete for the same cores: wrong latencies",
    "report": "rewrite the same files",
}


def _refuse_several_processes(command: str) -> None:
    """SparsekitError for a command that runs in one process when a launcher (torchrun) started several: only prune
    trains across processes."""
    n = _launched_processes()
    if n > 1 and command in _ONE_PROCESS:
        raise SparsekitError(
            f"sparsekit {command} runs in one process, but it was started as {n} (torchrun, WORLD_SIZE={n}): each "
            f"would {_ONE_PROCESS[command]}; run `sparsekit {command} ...` without torchrun (prune alone trains "
            "across processes)"
        )


def _take_over_signals() -> bool:
    """From the start-up handlers of the ``sparsekit`` command (one line and an exit, see sparsekit/__init__.py)
    to the command's own: Ctrl-C raises KeyboardInterrupt and SIGTERM :class:`~sparsekit.errors.Terminated`,
    which :func:`handle_errors` turns into its message. Handlers set by anyone else stay theirs (a program that
    runs the CLI in-process). Whether the start-up handlers were there."""
    from . import _interrupted_at_start, _terminate, _terminated_at_start

    took = False
    with contextlib.suppress(ValueError):  # not the main thread
        if signal.getsignal(signal.SIGINT) is _interrupted_at_start:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            took = True
        if signal.getsignal(signal.SIGTERM) is _terminated_at_start:
            signal.signal(signal.SIGTERM, _terminate)
            took = True
    return took


def _ignore_signals() -> None:
    """Ctrl-C and the command's SIGTERM handler off (as sparsekit.__main__ does once ``main`` returns)."""
    from . import _terminate

    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if signal.getsignal(signal.SIGTERM) is _terminate:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) an exception was raised from or while handling, if any: Python wraps one that
    arrives inside some of its own machinery (a class body's ``__set_name__`` raises RuntimeError "Error calling
    __set_name__" from it, seen while pydantic built the recipe's classes during start-up)."""
    seen = 0
    cause: BaseException | None = err.__cause__ or err.__context__
    while cause is not None and seen < 20:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def _device_flag(value: str | None) -> str | None:
    import re

    if value is not None and not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", value):
        raise click.BadParameter(f"{value!r}: use auto, cpu, cuda, cuda:N or mps")
    return value


def _peer_failed(err: BaseException) -> bool:
    """A collective broke because another torchrun process exited (gloo / NCCL / store errors)."""
    if _launched_processes() <= 1 or "torch.distributed" not in sys.modules:
        return False
    from .distributed import peer_failure

    return peer_failure(err)


def _peer_failure_behind(err: BaseException) -> BaseException | None:
    """The collective failure (:func:`_peer_failed`) an interruption was raised while handling, if any."""
    seen = 0
    cause: BaseException | None = err.__cause__ or err.__context__
    while cause is not None and seen < 20:
        if not isinstance(cause, KeyboardInterrupt) and _peer_failed(cause):
            return cause
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None


def _peer_message(err: BaseException, command: str, out: Any) -> str:
    """The Error line of a process whose collective broke because another process of the run stopped: the cause,
    where to read why (a process killed outright prints no line of its own) and, for ``prune``, what is kept."""
    kept = ""
    if command == "prune" and out is not None and _folder_holds(out, "checkpoint"):
        kept = f"; the last finished epoch is checkpointed in {out}: `--resume` continues from it (under torchrun too)"
    return (
        f"another process of this distributed run stopped ({one_line(err, 160)}); its own Error line above says why, "
        f"or torchrun's summary below names the signal that killed it{kept}"
    )


def debug_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--debug`` flag every command takes (tracebacks, debug logs, library warnings)."""
    return click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")(fn)


# Options several commands share, declared once so their names and help stay the same everywhere.
arch_option = click.option("--arch", help="Architecture for a state_dict/.safetensors MODEL: pkg.module:callable.")


def _logits_part(value: str | None) -> int | str | None:
    """``--logits``: an index when the value is ASCII digits (0..1000), else a key or attribute name (1..200
    characters), as the recipe's model.output takes them."""
    from .recipe import is_output_part

    if value is None:
        return None
    part: int | str = int(value) if value.isascii() and value.isdigit() else value
    if not is_output_part(part) or not value.isprintable():
        raise click.BadParameter(
            "an index 0..1000 into a tuple output, or a key or attribute name of 1..200 printable characters",
            param_hint="--logits",
        )
    return part


def _select_logits(model: Any, part: int | str, shape: list[int], path: Path) -> None:
    """Make ``model`` return the ``part`` of its output that is the logits (sparsekit.logits.attach), after one
    forward on zeros of ``shape`` (batch 2) shows it exists and is a tensor; DataError naming --logits else."""
    import torch

    from .logits import attach, select_logits
    from .model_input import example_input

    with torch.no_grad():
        out = model(example_input(model, [2, *shape[1:]]))  # token ids for a model whose input feeds an embedding
    select_logits(out, part, where=str(path), caller=True)
    attach(model, part)


def _data_flag(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("empty: name a data source (digits, mnist5k, synthetic, FILE.npz, pkg.module:fn)")
    return value


def _seeded_split(data: str | None) -> bool:
    """Whether ``--data`` is split by sparsekit's seeded permutation (built-in sources, .npz), not by a callable."""
    from .data import BUILTIN_SOURCES

    source = (data or "").strip()
    return source.endswith(".npz") or source in BUILTIN_SOURCES


_split_words = (
    " (the validation split at seed 0, val_fraction 0.2: a prune run's report.json scores its recipe's split, the "
    "same samples only at those values)"
)

data_option = click.option(
    "--data",
    callback=lambda ctx, param, value: _data_flag(value),
    help="Override data.source: digits | mnist5k | synthetic | FILE.npz | pkg.module:callable.",
)
device_option = click.option(
    "--device",
    metavar="auto|cpu|cuda[:N]|mps",
    callback=lambda ctx, param, value: _device_flag(value),
    help="Where to train (overrides finetune.device, default auto: CUDA when available). Under torchrun "
    "each process uses cuda:LOCAL_RANK.",
)


def _note_repeated_keys(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """``--set`` may be given many times, each a setting; one key set twice keeps the last value (they apply in
    order) and now says so, as a single-value option given twice does (:func:`_note_repeated`)."""
    last: dict[str, tuple[int, str]] = {}
    for item in value:
        key, eq, _ = str(item).partition("=")
        if eq:
            count = last.get(key.strip(), (0, ""))[0]
            last[key.strip()] = (count + 1, str(item))
    if not ctx.resilient_parsing:
        for key, (count, item) in last.items():
            if count > 1:
                click.echo(f"Note: --set {key} given {count} times; the last one is used ({item})", err=True)
    return value


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    callback=_note_repeated_keys,
    metavar="KEY.PATH=VALUE",
    help="Override a recipe key (repeatable; list items by index), e.g. --set pruning.0.sparsity=0.8 or "
    "--set data.batch_size=128; the whole recipe is validated again (every key: `sparsekit recipes --reference`).",
)
kwargs_option = click.option(
    "--kwargs",
    "arch_kwargs",
    metavar="JSON",
    help="Keyword arguments for the --arch factory, as a JSON object, e.g. --kwargs '{\"hidden\": [64, 32]}' "
    "(the recipe's model.kwargs).",
)
trust_model_file_option = click.option(
    "--trust-model-file",
    is_flag=True,
    help="Allow loading a pickled nn.Module/TorchScript MODEL (it can run code: only files you trust; one whose "
    "pickle names process, file or import machinery is refused even so).",
)


def trust_code_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--trust-code`` flag of the commands that may build a model or load data named in a file."""
    return click.option(
        "--trust-code",
        is_flag=True,
        help="Run the model factory (or, for commands that take a RECIPE, the data callable) that a file you "
        "pass names, and remember its module as trusted (see `sparsekit trust`). Without it, code named in a "
        "file runs only if you name it yourself (--arch, --data where the command has it, or --set model.factory=... / "
        "data.source=...) or trusted its "
        "module before. Code you name yourself runs without it and is not remembered: to open an output "
        "model.pt later without --arch, trust its module (`sparsekit trust MODULE`).",
    )(fn)


def _load_native(*modules: str) -> None:
    """Import torch / onnxruntime with Ctrl-C held until they are loaded: a KeyboardInterrupt raised
    inside their C++ start-up aborts the process (SIGABRT) instead of exiting 130."""
    import importlib

    from .fsutil import sigint_deferred

    with sigint_deferred():
        for module in modules:  # fixed names given by the commands below, never from a file
            importlib.import_module(module)


def _emit(data: Any, as_json: bool, text: str) -> None:
    if _other_rank() is not None:
        # Under torchrun (validate, inspect, ... started as several processes) every rank ran the same command on
        # the stdout they share: rank 0 prints the one result, as prune's ranks do (--json: one document, which
        # two concatenated ones are not). An error is still every rank's own line.
        return
    if as_json:
        _EMITTED.append(True)
        _print_document(json.dumps(data, indent=2, default=str))
    else:
        click.echo(printable(text))  # layer and node names come from the user's files


def _diff(value: float | None, error: str | None = None) -> str:
    # No difference either because the outputs could not be compared (the error says why) or were not finite.
    if value is None:
        return "n/a" if error else "n/a (outputs not finite)"
    return f"{value:.2e}"


# Values in one input (--input-shape): the recipe's cap on model.input_shape (sparsekit.recipe's
# MAX_INPUT_VALUES, not imported here to keep the CLI's start light), so a typo cannot ask for tens of GB.
MAX_INPUT_VALUES = 1 << 28


# _shape runs inside the commands, not as a click callback, so click cannot name the option itself.
_SHAPE_HINT = "'--input-shape'"


def _shape(value: str | None) -> list[int] | None:
    if value is None:
        return None
    # 1,3,32,32 as well as what users paste from Python: [1, 3, 32, 32], (1, 3, 32, 32), a 1-tuple's (1, 3, 32, 32,).
    # A trailing comma outside a tuple (1,64,) is refused: a dimension may have been left out.
    text = value.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip().removesuffix(",")
    text = text.strip("[]")
    if "," not in text and "x" not in text:
        text = ",".join(text.split())  # "1 1 8 8", as the recipe-list hint writes a shape split at spaces
    parts = [v.strip() for v in text.replace("x", ",").split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts):  # ASCII digits: '¹'.isdigit() is True, int('¹') raises
        raise click.BadParameter(
            f"{value!r}: expected comma-separated positive integers like 1,3,32,32", param_hint=_SHAPE_HINT
        )
    if any(len(p) > 12 for p in parts):  # (int() of over 4,300 digits is a ValueError of its own)
        raise click.BadParameter(
            f"{value[:40]!r}{'…' if len(value) > 40 else ''}: a dimension of more than 12 digits is no input size",
            param_hint=_SHAPE_HINT,
        )
    dims = [int(p) for p in parts]
    if any(d <= 0 for d in dims):
        raise click.BadParameter(
            f"{value!r}: dimensions must be positive integers, batch first (1,784)", param_hint=_SHAPE_HINT
        )
    if math.prod(dims) > MAX_INPUT_VALUES:
        raise click.BadParameter(
            f"{value!r}: {math.prod(dims):,} values in one input is more than any model here takes "
            f"(at most {MAX_INPUT_VALUES:,})",
            param_hint=_SHAPE_HINT,
        )
    return dims


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's keys, each once (as recipes are read): the last of two equal keys silently won."""
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise ValueError(f"the key {twice!r} is given twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    """JSON has no NaN or Infinity (Python's json reads them): refused, as a recipe refuses them."""
    raise ValueError(f"{name} is not a JSON number; give a finite number")


def _kwargs(value: str | None, arch: str | None = None) -> dict[str, Any] | None:
    """``--kwargs`` parsed: a JSON object, given together with ``--arch`` (the factory it is for)."""
    if value is None:
        return None
    if not arch:
        raise click.UsageError(
            "--kwargs gives the keyword arguments of the --arch factory: pass --arch pkg.module:callable too "
            "(a sparsekit checkpoint keeps its own kwargs)"
        )
    try:
        parsed = json.loads(value, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise click.BadParameter(f"{value[:40]!r}…: nested too deeply", param_hint="'--kwargs'") from None
    except json.JSONDecodeError as err:
        raise click.BadParameter(
            f"{value!r}: not JSON ({err.msg}); e.g. --kwargs '{{\"hidden\": 32}}'", param_hint="'--kwargs'"
        ) from None
    except ValueError as err:  # a duplicate key, an integer of over 4,300 digits
        shown = f"{value[:60]!r}{'…' if len(value) > 60 else ''}"
        raise click.BadParameter(f"{shown}: {err}", param_hint="'--kwargs'") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(
            f"{value!r}: expected a JSON object of keyword arguments for --arch", param_hint="'--kwargs'"
        )
    return parsed


def _arch_overrides(arch: str | None, value: str | None) -> list[str]:
    """``--kwargs`` as the recipe overrides it stands for: ``model.factory`` (the --arch it belongs to) and
    ``model.kwargs``, so prune and validate build the model exactly as export and inspect do."""
    parsed = _kwargs(value, arch)
    if parsed is None:
        return []
    return [f"model.factory={arch}", f"model.kwargs={json.dumps(parsed)}"]


def _recipe_setting(err: click.UsageError) -> str | None:
    """For an unknown option that names a recipe setting (`--epochs 2`, `--lr`, `--input-shape` on prune), where
    it goes: click's own guess pointed elsewhere (`--lr`: "did you mean --arch, --help, --log-dir?", `--seed`:
    "--set?" without saying how); None for any other usage error, or a command without --set."""
    if not isinstance(err, click.NoSuchOption) or err.ctx is None:
        return None
    if not any("--set" in getattr(p, "opts", ()) for p in err.ctx.command.params):
        return None
    name = err.option_name.split("=", 1)[0]
    key = name.lstrip("-").replace("-", "_")
    if not name.startswith("--") or key == "output":  # --output is -o of prune, not model.output
        return None
    from .recipe import setting_path

    path = setting_path(key)
    if path is None:
        return None
    index = " (N: the pruning entry's index, from 0)" if ".N." in path else ""
    # the value the user gave (`--epochs 2`, `--epochs=2`), so the remedy can be pasted as it stands
    value = next((a.split("=", 1)[1] for a in _ARGS if a.startswith(f"{name}=")), None)
    if value is None and name in _ARGS and _ARGS.index(name) + 1 < len(_ARGS):
        value = _ARGS[_ARGS.index(name) + 1]
    if value is None or value.startswith("-"):
        value = "VALUE"
    elif re.fullmatch(r"\d+([,x]\d+)+", value):  # export's `--input-shape 1,3,32,32`: the recipe takes a list
        value = f"[{value.replace('x', ',')}]"
    return (
        f"no such option {name}: {key} is a recipe setting ({path}); write it in the recipe, or for this run "
        f"--set {shlex.quote(f'{path}={value}')}{index}"
    )


def _split_setting(err: click.UsageError) -> str | None:
    """`--set pruning.0.ratio 0.5` (the value as a word of its own, as most tools' options take one): click saw
    0.5 as an extra argument and said only "Got unexpected extra argument (0.5)". Names the setting joined by
    ``=``; None for any other usage error."""
    extra = re.fullmatch(r"Got unexpected extra arguments? \((.*)\)", err.format_message().strip())
    if extra is None:
        return None
    # The value may be the extra word itself or, when it came before MODEL (`prune --set k v MODEL RECIPE`),
    # have taken MODEL's place and pushed a later word out: any `--set KEY` without `=` followed by a word.
    for i in range(len(_ARGS) - 2):
        key, value = _ARGS[i + 1], _ARGS[i + 2]
        if _ARGS[i] == "--set" and "=" not in key and not value.startswith("-"):
            joined = shlex.quote(f"{key}={value}")
            return f"--set {key} {value}: a setting is one word, key.path=value: write --set {joined}"
    return None


class _UsageError(click.ClickException):
    """A usage error shown as one ``Error:`` line that says where help is, like every other bad input (click
    prints the usage synopsis above the error and a "Try ... --help" line below it)."""

    exit_code = 2

    def __init__(self, err: click.UsageError) -> None:
        # One line: click's messages are, ours too; collapse any line break a message might hold.
        message = " ".join(err.format_message().split())
        setting = _recipe_setting(err) or _split_setting(err) or _dash_file(err)
        if setting:
            message = setting
        # (click raises some option errors without a context: the command is then the first argument)
        words = sys.argv[1:2]
        where = err.ctx.command_path if err.ctx is not None else " ".join(["sparsekit", *words])
        message = f"{message.removesuffix('.')} (see '{where} --help')"
        super().__init__(message)

    def show(self, file: Any = None) -> None:
        # Under torchrun every process prints this line: say which, as every other Error line does (_fail).
        rank = _other_rank()
        click.echo(
            f"Error: {'' if rank is None else f'rank {rank}: '}{self.format_message()}", file=file, err=file is None
        )
        if _json_asked(_ARGS):
            _json_error(self.format_message(), self.exit_code)


def _dash_file(err: click.UsageError) -> str | None:
    """click's "No such option '-w'" when the word is a file whose name starts with a dash (`-w ü.pt`, `-r.yaml`): it
    said nothing of the file, and the user saw no option of theirs there. Says the file is read as an option, and
    the two ways to name it."""
    if not isinstance(err, click.NoSuchOption):
        return None
    for arg in _ARGS[: _ARGS.index("--") if "--" in _ARGS else None]:
        if arg.startswith(err.option_name) and os.path.lexists(arg):
            return (
                f"{arg!r} is read as an option ({err.option_name}), not as the file of that name; write it as "
                f"'./{arg}', or put -- after the options and before the file names"
            )
    return None


def _json_asked(args: list[str]) -> bool:
    """Whether the command line asked for JSON: ``--json``, or ``--json=VALUE`` (itself the usage error, a flag
    taking no value: the script that wrote it still reads one JSON document). Words after ``--`` are arguments."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json" or arg.startswith("--json="):
            return True
    return False


_ARGS: list[str] = []  # the command line's arguments, as the group got them (a usage error's --json)


# click 8.2+ raises this (a UsageError) for a bare `sparsekit`; 8.1 prints the help and exits by itself.
_NO_ARGS_IS_HELP: tuple[type[Exception], ...] = tuple(
    e for e in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if e is not None
)


class _Command(click.Command):
    """Every subcommand. An option that takes one value, given more than once, keeps the last value as click does
    (a script's defaults overridden by a later option still works) and says so on stderr: ``-o a.onnx -o b.onnx``
    wrote b.onnx alone, and ``--arch a --arch b`` built b, without a word."""

    def make_parser(self, ctx: click.Context) -> Any:
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_args(args: list[str]) -> Any:
            opts, rest, order = parse(args=args)
            if not ctx.resilient_parsing:
                _note_repeated(order, opts)
            return opts, rest, order

        parser.parse_args = parse_args  # type: ignore[method-assign]
        return parser


def _note_repeated(order: list[Any], opts: dict[str, Any]) -> None:
    """A ``Note:`` line for each single-value option that ``order`` (click's parameters, once per appearance on the
    command line) holds more than once; ``opts``: the values parsed, the last one of each."""
    counts: dict[str, int] = {}
    for param in order:
        if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag):
            counts[param.name or ""] = counts.get(param.name or "", 0) + 1
    for param in dict.fromkeys(order):
        name = getattr(param, "name", None) or ""
        if counts.get(name, 0) > 1:
            flag = max(param.opts, key=len)
            click.echo(f"Note: {flag} given {counts[name]} times; the last one is used ({opts.get(name)})", err=True)


class _Group(click.Group):
    """The command group: turns every usage error (bad option, missing argument, contradictory flags)
    into :class:`_UsageError`; its commands are :class:`_Command`."""

    command_class = _Command

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        _ARGS[:] = [str(a) for a in (args[1] if len(args) > 1 else kwargs.get("args", []))]
        _EMITTED.clear()
        try:
            return super().make_context(*args, **kwargs)
        except _NO_ARGS_IS_HELP:
            raise  # a bare `sparsekit`: click shows the help itself, not squeezed into one line
        except click.UsageError as err:
            raise _UsageError(err) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise _UsageError(err) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sparsekit")
def main() -> None:
    """Make trained PyTorch models smaller and faster from a YAML recipe.

    \b
    Typical run (the sparsekit repository's README has the whole story; each command's --help its own):
      sparsekit recipes                                  # shipped recipes
      sparsekit recipes lenet-gradual-magnitude-90 > my-recipe.yaml   # a starting point of your own
      sparsekit validate my-recipe.yaml my.pt --arch mypkg.nets:build   # your model: the function that builds it
      sparsekit prune my.pt my-recipe.yaml --arch mypkg.nets:build -o out
      sparsekit inspect out/model.pt --arch mypkg.nets:build
      sparsekit bench out/dense.onnx out/model.onnx
    (In a clone of the repository, examples.models:lenet_300_100 and the others are ready-made models.)

    Files are data: model files are loaded weights-only, recipes with yaml.safe_load, and a model
    factory or data callable named inside a file runs only if you name it yourself (--arch, --data)
    or trust its module (--trust-code, `sparsekit trust --help`).
    Exit codes: 0 ok, 2 bad input, 1 bug, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
    """


@main.command(short_help="Prune and fine-tune MODEL with RECIPE; export, check parity, benchmark, report.")
@click.argument("model", type=PATH)
@click.argument("recipe", type=RECIPE)
@click.option(
    "-o",
    "--output",
    "out",
    default="sparsekit-out",
    show_default=True,
    type=PATH,
    help="Output folder (model.pt, model.onnx, dense.onnx, report.json/.md, plots, checkpoints/).",
)
@arch_option
@kwargs_option
@data_option
@set_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in the output folder from its last checkpoint. Refused when the model file, the "
    "data or the recipe changed since (each change is named), unless --allow-change accepts it.",
)
@click.option(
    "--allow-change",
    "allow_changes",
    metavar="FIELD",
    multiple=True,
    help="With --resume: accept a changed recipe field that does not alter the finished epochs "
    "(finetune.epochs, finetune.device, finetune.log, export, benchmark). Repeat for several; comma lists work.",
)
@click.option("--overwrite", is_flag=True, help="Replace the results in a non-empty output folder.")
@trust_model_file_option
@trust_code_option
@device_option
@click.option(
    "--log-dir",
    type=PATH,
    help="Write per-step and per-epoch metrics (CSV; TensorBoard when installed) to a new folder "
    "DIR/sparsekit-DATE-TIME (without it, finetune.log: true writes them to the output folder's logs/).",
)
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout (logs stay on stderr).")
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 2 when a target the recipe states is missed (sparsity, ratio, MACs, latency, max_value, or an "
    "entry that achieved nothing), accuracy fell to chance level, or an ONNX file disagrees with torch or lost "
    "pruned zeros. The outputs are still written; without "
    "--strict these are warnings.",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help=(
        "Hide progress bars; fine-tuning still prints one line per epoch, and one a minute within a long epoch (as "
        "it does without a terminal)."
    ),
)
@debug_option
@handle_errors
def prune(
    model: Path,
    recipe: str,
    out: Path,
    arch: str | None,
    arch_kwargs: str | None,
    data: str | None,
    overrides: tuple[str, ...],
    resume: bool,
    allow_changes: tuple[str, ...],
    overwrite: bool,
    trust_model_file: bool,
    trust_code: bool,
    device: str | None,
    log_dir: Path | None,
    as_json: bool,
    strict: bool,
    no_progress: bool,
    debug: bool,
) -> None:
    """Prune MODEL with RECIPE while fine-tuning, then export ONNX, check parity and benchmark.

    RECIPE is a YAML file or the name of a shipped recipe (see `sparsekit recipes`).

    \b
    Examples:
      sparsekit validate lenet-gradual-magnitude-90 lenet.pt --arch examples.models:lenet_300_100   # dry run first
      sparsekit prune lenet.pt lenet-gradual-magnitude-90 --arch examples.models:lenet_300_100 -o out
      sparsekit prune weights.pt my-recipe.yaml --arch mypkg.nets:build --kwargs '{"width": 64}' \\
          --set finetune.epochs=4 -o out   # a schedule must end by the last epoch (validate says so)
    (examples.models:* are the sparsekit repository's example models, importable from a clone's root folder;
    with the installed package alone, name your own model's pkg.module:callable.)
    \b
    Several processes (DistributedDataParallel; gloo on CPU, nccl on GPU), rank 0 writes DIR:
      torchrun --nproc-per-node=2 -m sparsekit prune my.pt my-recipe.yaml --arch mypkg.nets:build -o out

    Outputs are built in DIR/.sparsekit/next and moved into DIR when the run ends, so an interrupted
    or failed run leaves earlier results as they were. --overwrite replaces only files an earlier
    sparsekit run wrote (listed in DIR/.sparsekit/manifest.json); a folder holding anything else is
    refused. DIR may not be or contain MODEL, RECIPE or the data file.
    """
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: pick one")
    accepted = [f.strip() for item in allow_changes for f in item.split(",") if f.strip()]
    if allow_changes and not accepted:
        raise click.BadParameter("names no field; e.g. --allow-change finetune.epochs", param_hint="'--allow-change'")
    if accepted and not resume:
        raise click.UsageError("--allow-change goes with --resume: it accepts changes since the checkpoint")
    model_overrides = _arch_overrides(arch, arch_kwargs)  # usage errors before the slow imports
    _load_native("torch", "onnxruntime")
    from .pipeline import run_prune
    from .recipe import OptionOverride, load_recipe
    from .report import render_summary

    if device:
        overrides = (*overrides, OptionOverride("finetune.device", "device", device))
    rec = load_recipe(find_recipe(recipe), [*overrides, *model_overrides])
    report = run_prune(
        model,
        rec,
        out,
        arch=arch,
        data=data,
        trust=trust_model_file,
        trust_code=trust_code,
        overwrite=overwrite,
        resume=resume,
        allow_changes=accepted,
        progress=not no_progress,
        notify=lambda m: click.echo(printable(m), err=True),
        log_dir=log_dir,
    )
    if report is None:  # a distributed run's rank other than 0: rank 0 reports
        if strict:
            _strict_on_other_rank(out)
        return
    try:
        _emit(report.to_json(), as_json, render_summary(report, out, warnings=False))
    except OutputError as err:
        if not str(err).startswith("standard output:"):
            raise
        # The run is complete (its folder published) when its summary cannot be printed: "run again" would redo the
        # training; the summary is in the folder (report.md, report.json).
        raise OutputError(
            f"standard output: the summary could not be printed ({str(err).partition('(')[2].partition(')')[0]}); "
            "the run itself "
            f"finished and {out} holds every file: read {out}/report.md (or `sparsekit report {out}` after freeing "
            "space)"
        ) from None
    missed = report.summary.warnings if report.summary else []
    if missed:
        if strict:
            raise _missed_targets(missed, out)
        _warn_on_stderr(missed)  # as every command says its warnings (report.md and report.json list them too)


def _strict_on_other_rank(out: Path) -> None:
    """``--strict`` on a torchrun rank other than 0: the missed targets of the report rank 0 published before the ranks
    left together fail this process too (it exited 0 while rank 0 exited 2). Nothing when the folder is not visible
    here (another machine without a shared filesystem)."""
    try:
        missed = json.loads((Path(out) / "report.json").read_text(encoding="utf-8"))["summary"]["warnings"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(missed, list) and missed:
        raise _missed_targets([str(m) for m in missed], out)


def _missed_targets(missed: list[str], out: Path) -> SparsekitError:
    """``--strict``'s error for the report's missed targets (summary.warnings)."""
    more = f" (and {len(missed) - 1} more, see report.json's summary.warnings)" if len(missed) > 1 else ""
    return SparsekitError(f"{missed[0]}{more}; the outputs are in {out}")


@main.command(short_help="Export MODEL to ONNX (parity and zeros checked; optional int8).")
@click.argument("model", type=PATH)
@click.option("-o", "--output", "out", type=PATH, help="Output .onnx (default: MODEL with .onnx).")
@arch_option
@kwargs_option
@click.option(
    "--input-shape",
    metavar="DIMS",
    help="Input shape with batch first, e.g. 1,3,32,32 (default: from the checkpoint, else the first layer, "
    "else --data's samples).",
)
@click.option(
    "--opset",
    default=18,
    show_default=True,
    type=_IntRange(13, 23),
    help="ONNX opset of the file (read back to check). dynamo writes 18-23 itself; below 18 it falls back "
    "to the torchscript exporter when it cannot convert.",
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "torchscript"]),
    default="auto",
    show_default=True,
    help="auto: the TorchScript exporter's file when it has the opset, agrees with torch and kept every zero "
    "(10-30x faster on small models), else dynamo.",
)
@click.option(
    "--quantize",
    type=click.Choice(["none", "int8"]),
    default="none",
    show_default=True,
    help="int8: the file at -o is the int8 model (static QDQ calibrated on --data, dynamic without it); "
    "the fp32 model it is quantized from is checked, then kept only with --keep-fp32. Dynamic int8 of a CNN is "
    "smaller but runs slower than fp32 in onnxruntime (ConvInteger): give --data for latency.",
)
@click.option(
    "--data",
    callback=lambda ctx, param, value: _data_flag(value),
    help="Calibration/eval data for --quantize int8: digits | mnist5k | synthetic | FILE.npz | pkg.module:callable.",
)
@click.option(
    "--normalize",
    type=click.Choice(["none", "standard"]),
    help="How --data's built-in images are preprocessed, as in training (the recipe's data.normalize): none "
    "(pixels in [0, 1]) or standard (zero mean, unit variance). Default: what the prune run that wrote MODEL "
    "used, else none.",
)
@click.option(
    "--logits",
    metavar="PART",
    help="For a model that returns several tensors (a tuple, a dict): the part that is the class scores, an index "
    "(0) or a key or attribute name (logits), as the recipe's model.output. The file then holds that output alone, "
    "as prune's model.onnx, and --quantize int8 --data scores it. Default: the part a prune run recorded in MODEL, "
    "else every output is written and int8 accuracy is not scored (which output holds the classes is unknown). "
    "--logits :all writes every output whatever MODEL recorded.",
)
@click.option(
    "--keep-fp32",
    is_flag=True,
    help="With --quantize int8: also write the fp32 model, as FILE.fp32.onnx beside the int8 FILE.onnx.",
)
@click.option(
    "--storage",
    type=click.Choice(["auto", "sparse", "dense"]),
    default="auto",
    show_default=True,
    help="How FILE stores its weights. auto: as sparse initializers where that is smaller after gzip and "
    "onnxruntime's outputs stay bit-identical (saves disk, not time: onnxruntime densifies at load). sparse: "
    "whatever the file's size, each weight with enough zeros to be smaller so (a model with none stays dense, "
    "and the output says so). dense: every weight dense.",
)
@trust_model_file_option
@trust_code_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@debug_option
@handle_errors
def export(
    model: Path,
    out: Path | None,
    arch: str | None,
    arch_kwargs: str | None,
    input_shape: str | None,
    opset: int,
    exporter: str,
    quantize: str,
    data: str | None,
    normalize: str | None,
    logits: str | None,
    keep_fp32: bool,
    storage: str,
    trust_model_file: bool,
    trust_code: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Export MODEL to ONNX, check it with onnx.checker and its parity with torch in onnxruntime.

    Sizes count any external-data file. With --quantize int8 the file at -o is the int8 model: the
    fp32 export is checked first (parity, zeros), then quantized; every pruned weight must still be
    exactly zero, and with --data int8 accuracy is reported next to fp32. The fp32 file is kept only
    with --keep-fp32 (FILE.fp32.onnx). An existing output file is replaced only if sparsekit wrote it.

    \b
    Examples:
      sparsekit export out/model.pt -o pruned.onnx --arch examples.models:lenet_300_100
      sparsekit export weights.pt -o cnn.onnx --arch examples.models:small_cnn --kwargs '{"image_size": 8}' \\
          --input-shape 1,1,8,8
      sparsekit export out/model.pt -o q.onnx --arch examples.models:lenet_300_100 --quantize int8 --data mnist5k
    (examples.models:* are the sparsekit repository's example models, importable from a clone's root folder;
    with the installed package alone, name your own model's pkg.module:callable.)
    """
    if data and quantize != "int8":  # checked before anything is loaded or written
        raise click.UsageError("--data is only used with --quantize int8")
    if normalize and not data:
        raise click.UsageError("--normalize says how --data is preprocessed: give --data too")
    if normalize == "standard" and data not in ("digits", "mnist5k"):
        raise click.UsageError(
            f"--normalize standard applies to the built-in sources digits and mnist5k; --data {data} is used "
            "as it is: store it already preprocessed"
        )
    if keep_fp32 and quantize != "int8":
        raise click.UsageError("--keep-fp32 is only used with --quantize int8 (without it -o is the fp32 model)")
    if out is not None and out.suffix.lower() != ".onnx":
        # An ONNX file under another name is found by no tool (and q.txt could be a user's notes).
        if out.is_dir():  # `-o out`, the prune folder: "name the output file NAME.onnx" did not say it is a folder
            raise click.UsageError(
                f"-o {out}: is a folder; name the file to write in it, e.g. -o {out / (model.stem + '.onnx')}"
            )
        raise click.UsageError(f"-o {out}: name the output file NAME.onnx")
    kwargs = _kwargs(arch_kwargs, arch)
    given_shape = _shape(input_shape)
    part = _logits_part(logits)
    _load_native("torch", "onnxruntime")
    from .inspection import GUESSED, check_input_shape, shape_origin
    from .modelio import infer_input_shape, precheck_model_file, read_model
    from .onnx import export_onnx
    from .onnx.export import export_int8
    from .report import parity_scale

    # First: the user's own file (missing, ONNX, text, bytes no reader takes) before where the result goes; with
    # no -o, MODEL.onnx would be "-o MODEL: is the input MODEL", an option not given.
    precheck_model_file(model)
    out = out or model.with_suffix(".onnx")
    fp32_out = out.with_suffix(".fp32.onnx") if keep_fp32 else None
    targets = [out]
    if fp32_out is not None:
        targets.append(fp32_out)
    _check_export_targets(model, targets)
    # The user's code run next (the factory, a --data callable) may draw from the global generators: seeded as
    # prune seeds them (the recipe's default seed), the same command writes the same int8 calibration every time.
    from .fsutil import seed_generators

    seed_generators(0)
    loaded = read_model(
        model,
        arch,
        kwargs=kwargs,
        input_shape=given_shape,
        trust=trust_model_file,
        trust_code=trust_code,
    )
    # How the file was read, as prune says it (float64 weights rounded into float32 layers: the ONNX file, its
    # parity and zero count are of the rounded model, not of the file).
    for note in loaded.notes:
        click.echo(f"Note: {note}", err=True)
    shape = given_shape or loaded.input_shape or infer_input_shape(loaded.model)
    from_data = None
    if not shape and data:
        # A convolution first does not tell its input's length: --data's samples do, as prune reads them from its
        # data.source (an .npz's x, a built-in's images); a Conv1d's export with --data FILE.npz asked for a shape
        # the file states.
        from .pipeline import _shape_from_source

        shape = from_data = _shape_from_source(loaded.model, data, option_name="data")
    if not shape:
        from .modelio import input_shape_example, takes_tokens

        example = input_shape_example(loaded.model)
        parts = (
            "the batch, then the number of token ids in one sample"
            if takes_tokens(loaded.model)
            else "the batch, the first layer's channels, then your data's size"
        )
        raise ExportError(
            f"{model}: cannot tell the input shape; pass --input-shape, e.g. --input-shape {example} ({parts})"
        )
    # Export traces at batch 2: a shape whose first dimension is not the batch must fail here, naming it.
    origin = (
        f"the samples' shape of --data {data}" if from_data else shape_origin(model, given_shape, loaded.input_shape)
    )
    check_input_shape(loaded.model, shape, origin=origin, fix=_guessed_fix if origin == GUESSED else None)
    every = part == ":all"  # (a colon: no key or attribute name is spelt so)
    if every:
        part = None
    elif part is None and loaded.output is not None:
        part = loaded.output
        click.echo(f"Logits: output {part!r}, as the run that wrote {model} named them (--logits to choose)", err=True)
    if part is not None:
        _select_logits(loaded.model, part, shape, model)
    if data in ("digits", "mnist5k") and normalize is None and loaded.normalize == "standard":
        normalize = loaded.normalize  # calibrate and score on the images as the model was fine-tuned on them
        click.echo(
            f"Data: {data} standardized (--normalize standard), as the run that wrote {model} preprocessed it "
            "(--normalize none to change)",
            err=True,
        )
    bundle = None
    if data:  # loaded before anything is written, so bad data leaves no files behind
        from .data import load_data

        try:
            from .model_input import id_vocab

            # token ids (int64, in the embedding's range) for a model whose input feeds an embedding
            ids = id_vocab(loaded.model, shape)
            bundle = load_data(data, input_shape=shape, normalize=normalize or "none", field="data", token_ids=ids)
        except DataError as err:
            # A shape mismatch's remedy is prune's override of model.input_shape; export's is its own option.
            fixed = re.sub(
                r"set model\.input_shape to \[[^\]]*\] \(\x00set\x1fmodel\.input_shape=([^\x00]*)\x00\)",
                lambda m: "pass " + option("input_shape", m.group(1)),
                err.raw_message,
            )
            fixed = re.sub(  # export has no recipe: the shape is the checkpoint's or --input-shape's
                r"\bmodel\.input_shape (\[[^\]]*\])", r"the input shape \1", fixed
            )
            raise DataError(fixed) from None
    from .masks import positive_zeros_
    from .onnx import choose_storage
    from .wrappers import float32_model

    # An architecture that builds float64 or bfloat16 layers: the file is float32 (export's own remedy, model.float(),
    # is no option here).
    loaded.model = float32_model(loaded.model)

    # Our own copy of the checkpoint: its -0.0 (a mask's multiply) become +0.0 here, for free, rather than in
    # the exported file, where rewriting a large tensor costs a copy of it.
    positive_zeros_(loaded.model)
    if quantize == "int8":
        try:
            res = export_int8(
                loaded.model,
                out,
                shape,
                data=bundle,
                fp32_path=fp32_out,
                opset=opset,
                exporter=exporter,
                fp32_storage=storage,
            )
        except (DataError, ExportError) as err:  # the calibration batches --data gave: named after it
            said = err.raw_message
            if data and said.startswith("data: "):  # "data: the training loader: ..."
                raise DataError(f"{option('data', data)}: {said[len('data: ') :]}") from None
            if data and said.startswith("calibration batch "):  # quantize_int8's words for its batches
                raise DataError(f"{option('data', data)}: the training loader's {said}") from None
            raise
        fp32 = f"Wrote {fp32_out} (fp32, " if fp32_out is not None else "Exported fp32, not kept ("
    else:
        res = export_onnx(loaded.model, out, shape, opset=opset, exporter=exporter)
        fp32 = f"Wrote {out} ("
    # An int8 file's gzip size at its fp32 file's level, as quantize_int8 measured it: on its own (a quarter of the
    # bytes) it could get level 9 beside the fp32 file's 6, and read smaller than the same bytes would at 6.
    level = res["gzip_level"] if quantize == "int8" else None
    st = res["storage"] = choose_storage(out, out, storage, level=level)
    written = res["int8"] if quantize == "int8" else res  # the sizes of the file at -o are the shipped file's
    written["bytes"], written["gzip_bytes"] = st["bytes"], st["gzip_bytes"]
    if written.get("nonzero_params"):  # the int8 result's per-nonzero figures, of the file as now stored
        for key in ("bytes", "gzip_bytes"):
            written[f"{key}_per_nonzero"] = written[key] / written["nonzero_params"]
    verdict = "ok" + parity_scale(res["parity"]) if res["parity"]["ok"] else "FAILED"
    lines = [
        f"{fp32}opset {res['opset']}, {res['exporter']} exporter; {res['bytes']:,} B, gzip "
        f"{res['gzip_bytes']:,} B); parity max diff "
        f"{_diff(res['parity']['max_abs_diff'], res['parity'].get('error'))} ({verdict}"
        f"{': ' + res['parity']['error'] if res['parity'].get('error') else ''}), "
        f"zeros kept: {res['zeros']['zeros_ok']}"
    ]
    if res.get("fallback"):
        # (the reason alone, "the dynamo exporter wrote opset 18 ...", left the user to infer which file was shipped)
        lines.append(f"  the file is the {res['exporter']} exporter's, not the one asked for: {res['fallback']}")
    from .report import parity_warning

    other = "torchscript" if res.get("exporter") == "dynamo" else "dynamo"
    written_by = str(out) if quantize != "int8" else str(fp32_out or "the fp32 export that was quantized")
    mismatch = parity_warning(res["parity"], written_by, f"--exporter {other}")
    if mismatch:
        click.echo(f"Warning: {printable(mismatch)}", err=True)
    if not res["zeros"]["zeros_ok"]:
        click.echo(
            "Warning: the ONNX file holds nonzero values where the model has zeros: its sizes overstate what "
            "pruning saved (--json lists the weights under zeros)",
            err=True,
        )
    if res.get("tracer_warnings"):
        said = " ".join(res["tracer_warnings"][0].split()).split(". ")[0]  # its first sentence
        click.echo(
            "Warning: the TorchScript tracer warned that the file may follow only the path this input took through "
            f"the model ({printable(said)}); the parity check's random inputs cannot rule out other outputs on "
            "other inputs: export with --exporter dynamo if it can",
            err=True,
        )
    if quantize == "int8":
        q = res["int8"]
        lines.append(
            f"Wrote {q['path']} ({q['mode']} int8, {q['bytes']:,} B = {q['bytes'] / q['fp32_bytes']:.2f}x fp32, "
            f"gzip {q['gzip_bytes']:,} B); pruned zeros still zero: {q['zeros']['zeros_ok']}"
        )
        if q.get("eval") and q["eval"].get("top1_agreement") is None:
            note = q["eval"].get("note", "")
            if len(q["eval"].get("outputs") or []) > 1:  # the CLI's way to select it
                from .onnx.quantize import SELECT_LOGITS

                note = note.replace(SELECT_LOGITS, "--logits PART")
            lines.append(f"  accuracy not measured: {note}")
        elif q.get("eval"):
            ev = q["eval"]
            lines.append(
                f"  accuracy fp32 {ev['fp32_accuracy']:.4f}, int8 {ev['int8_accuracy']:.4f}, "
                f"top-1 agreement {ev['top1_agreement']:.4f} on {ev['samples']} samples"
                # Which samples: a prune run's report.json scores the split of its recipe's seed and val_fraction, so
                # the same model read 0.6657 there and 0.6992 here, with no word why.
                + (_split_words if _seeded_split(data) else "")
            )
            from .report import int8_agreement_warning

            disagrees = int8_agreement_warning(ev)
            if disagrees:
                click.echo(f"Warning: {printable(disagrees)}", err=True)
        elif q.get("check", {}).get("error"):
            lines.append(f"  int8 vs fp32 on {q['check']['inputs']} inputs: not compared ({q['check']['error']})")
        elif q.get("check"):
            ck = q["check"]
            top1 = f", top-1 agreement {ck['top1_agreement']:.2f}" if ck["top1_agreement"] is not None else ""
            lines.append(
                f"  int8 vs fp32 on {ck['samples']} {ck['inputs']} inputs: max diff {_diff(ck['max_abs_diff'])}{top1} "
                "(no --data: on real inputs they may agree better or worse; --data calibrates and measures there)"
            )
        if q.get("latency_note"):
            lines.append(f"  Note: {q['latency_note']}")
        else:
            how = (
                f"sparsekit bench {fp32_out} {out}"
                if fp32_out
                else "export again with --keep-fp32 and run sparsekit bench on the two files"
            )
            lines.append(
                "  Note: latency is not measured here, and onnxruntime's int8 CPU kernels do not beat fp32 on every "
                f"model (the example models ran at 0.6-0.99x of fp32, tiny ones may not gain): to compare, {how}"
            )
        # After gzip too: a sparse model's fp32 zeros gzip away, and its int8 file can be the larger one shipped
        # compressed (95% sparse: 0.74x raw but 1.06x gzip) with no word but the figures.
        larger = [
            how
            for how, key in (("raw", "bytes"), ("after gzip", "gzip_bytes"))
            if q[key] is not None and q[f"fp32_{key}"] is not None and q[key] >= q[f"fp32_{key}"]
        ]
        if larger:
            lines.append(
                f"  Note: the int8 file is not smaller than fp32{' either' if q.get('latency_note') else ''} "
                f"({' or '.join(larger)}): quantization's scales, zero points and extra nodes outweigh what int8 "
                "saves on the weights (a small model, or few nonzero weights: the fp32 file's zeros gzip away too); "
                "for size, ship the fp32 model (export without --quantize)"
            )
        stale = out.with_suffix(".fp32.onnx")
        if fp32_out is None and stale.exists():
            # An earlier --keep-fp32 export's, which the bench command above would compare with the new int8 file.
            lines.append(
                f"  Note: {stale} is an earlier export's fp32 model, not this one's (left as it was; export with "
                "--keep-fp32 to replace it)"
            )
    if st["encoding"] == "sparse":
        lines.append(_sparse_storage_line(out, st))
    elif st.get("mode") == "sparse":
        lines.append(f"Stored {out} with dense initializers after all: {st['reason']} (too few zeros)")
    if quantize == "int8":
        # The top level describes the file at -o (the int8 model), as without --quantize; the fp32 export it
        # was checked against (parity, zeros) under "fp32", its path None unless kept.
        res["fp32"] = {"path": res["path"], "bytes": res["bytes"], "gzip_bytes": res["gzip_bytes"]}
        res.update(path=str(out), bytes=written["bytes"], gzip_bytes=written["gzip_bytes"])
    _emit(res, as_json, "\n".join(lines))


def _sparse_storage_line(out: Path, st: dict[str, Any]) -> str:
    """What storing ``out``'s weights as sparse initializers did, in figures, raw and after gzip."""
    count = (st.get("sparse") or {}).get("sparse_initializers")
    raw, gz = st["bytes"] / st["dense"]["bytes"], st["gzip_bytes"] / st["dense"]["gzip_bytes"]
    verdict = (
        "saves disk, not time: onnxruntime densifies it at load"
        if raw < 1 and gz < 1
        else "larger after gzip than dense storage; the storage option's auto keeps dense storage then"
        if gz >= 1
        else "larger raw than dense storage"
    )
    of = f" ({count} of its tensors)" if count else ""  # (an int8 file's all-zero zero points count too)
    return (
        f"Stored {out} with sparse initializers{of}: {st['bytes']:,} B ({raw:.3f}x of dense storage), gzip "
        f"{st['gzip_bytes']:,} B ({gz:.3f}x); {verdict}"
    )


def _check_export_targets(model: Path, targets: list[Path]) -> None:
    """Refuse to write over the input or over a file sparsekit did not write (before any work)."""
    from .errors import OutputError
    from .fsutil import empty_file
    from .onnx import external_data_files, written_by_sparsekit
    from .onnx.files import EXTERNAL_DATA_BYTES
    from .outputs import refuse_run_state

    src = model.resolve()
    # Only a model over 1.8 GB of weights writes OUT.data: a smaller one's export never touches a file of that name
    # (a user's own was refused all the same). Its weights may be wider in the model than in the file (a float16
    # checkpoint loads into float32 layers): a file over half the limit is checked.
    big = not model.is_file() or model.stat().st_size > EXTERNAL_DATA_BYTES // 2
    for target in targets:
        refuse_run_state(target, "the exported file")
        if target.resolve() == src:
            raise OutputError(f"-o {target}: is the input MODEL; choose another output file")
        if target.is_dir():
            raise OutputError(f"-o {target}: is a folder; give the .onnx file to write, e.g. -o {target}/model.onnx")
        # An empty file loses nothing (-o "$(mktemp --suffix .onnx)"): filled, as export_onnx and save_model fill one.
        empty = empty_file(target)
        ours = not target.is_symlink() and (empty or written_by_sparsekit(target))
        data = target.parent / f"{target.name}.data"  # where external data (models over 1.8 GB) goes
        data_ours = ours and not empty and not data.is_symlink() and data.name in external_data_files(target)
        for path, owned in ((target, ours), *([(data, data_ours)] if big else [])):
            if (path.exists() or path.is_symlink()) and not owned:
                why = " (where the export of a model over 1.8 GB keeps its weights)" if path == data else ""
                raise OutputError(
                    f"{path}: exists{why} and sparsekit did not write it there (a copy or a moved file is yours, a "
                    "prune run's files belong to its folder), or it changed since; sparsekit never replaces your "
                    "files: choose another -o or move it away"
                )


# The recipe's limits on benchmark settings (sparsekit.recipe: MAX_THREADS, MAX_RUNS, budget_s le), here so
# `sparsekit bench` refuses what a recipe would (an infinite budget or 10^20 runs failed deep inside) without
# importing the recipe module at start-up; a test keeps the two equal.
BENCH_LIMITS: dict[str, int] = {"threads": 1024, "runs": 100_000, "budget_s": 3600}


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """click's FloatRange lets NaN through (every comparison with it is False): refuse it, naming the option."""
    if math.isnan(value):
        raise click.BadParameter("must be a number, not nan")
    return value


@main.command(short_help="Time ONNX files in onnxruntime (interleaved, with a noise control).")
@click.argument("files", nargs=-1, required=True, type=PATH)
@click.option(
    "-b",
    "--batch-size",
    "batch_sizes",
    multiple=True,
    type=_IntRange(1, 1 << 20),  # (a number of thousands of digits was echoed back whole)
    default=(1, 32),
    show_default=True,
    help="Repeat for several batch sizes.",
)
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=_IntRange(1, BENCH_LIMITS["threads"]),
    help="onnxruntime intra-op threads.",
)
@click.option(
    "--warmup",
    default=20,
    show_default=True,
    type=_IntRange(0, BENCH_LIMITS["runs"]),
    help="Most untimed runs per file and batch size first (fewer once a tenth of --budget is spent).",
)
@click.option(
    "--runs",
    default=200,
    show_default=True,
    type=_IntRange(1, BENCH_LIMITS["runs"]),
    help="Most timed runs per file and batch size (fewer when --budget runs out first or --precision is reached).",
)
@click.option(
    "--budget",
    "budget_s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True, max=BENCH_LIMITS["budget_s"]),
    callback=_finite,
    help="Seconds of timed runs per file and batch size: timing stops once they are spent, after at least 25 "
    "runs each (a large model's benchmark stays short; a tiny one does all --runs well within it).",
)
@click.option(
    "--precision",
    default=0.02,
    show_default=True,
    type=click.FloatRange(min=0, max=1, max_open=True),
    callback=_finite,
    help="Stop timing early once every ratio to the first file (and the A/A control's) is known to within "
    "this fraction (half the spread of its per-block ratios), after a tenth of --budget; 0: run until "
    "--budget or --runs. Not an accuracy bound: the A/A control shows the noise.",
)
@click.option(
    "--provider",
    default="CPUExecutionProvider",
    show_default=True,
    help="onnxruntime execution provider, e.g. CUDAExecutionProvider (must be installed and available).",
)
@click.option(
    "--input-shape",
    metavar="DIMS",
    help="Input shape, batch first, when the ONNX file has symbolic dims besides batch, e.g. 1,3,32,32 "
    "(the batch dim is then set by --batch-size).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@debug_option
@handle_errors
def bench(
    files: tuple[Path, ...],
    batch_sizes: tuple[int, ...],
    threads: int,
    warmup: int,
    runs: int,
    budget_s: float,
    precision: float,
    provider: str,
    input_shape: str | None,
    as_json: bool,
    no_progress: bool,
    debug: bool,
) -> None:
    """Benchmark ONNX FILES in onnxruntime, interleaved (A B A B ...), with ratios to the first file
    and an A/A control (the first file against itself) that shows the noise floor.

    \b
    Examples:
      sparsekit bench out/dense.onnx out/model.onnx                 # batch 1 and 32, one thread
      sparsekit bench out/model.onnx -b 1 -b 64 --threads 4 --runs 500
    """
    shape = _shape(input_shape)
    _load_native("onnxruntime")
    from .onnx import benchmark, latency_table

    if any(b <= 0 for b in batch_sizes):
        raise ExportError(f"--batch-size {min(batch_sizes)}: batch sizes must be > 0")
    if shape is not None:
        _check_batch_first(files, shape)
    try:
        res = benchmark(
            list(files),
            list(batch_sizes),
            threads=threads,
            warmup=warmup,
            runs=runs,
            budget_s=budget_s,
            precision=precision,
            provider=provider,
            input_shape=shape,
            progress=not no_progress and not as_json,
        )
    except KeyboardInterrupt as err:
        # Stopped after some batch sizes were timed: their table first (it took the time), then the interruption.
        partial = getattr(err, "partial", None)
        if partial is not None:
            _emit(partial, as_json, latency_table(partial))
        raise
    _emit(res, as_json, latency_table(res))


def _check_batch_first(files: tuple[Path, ...], shape: list[int]) -> None:
    """``--input-shape`` is the whole input, batch first: as many dims as each file's first input has (the
    benchmark itself would also take the dims without the batch, and read ``1,8,8`` as a sample of
    ``[1, 8, 8]``). Files it cannot read are left to the benchmark's own errors."""
    from .onnx import load_onnx
    from .onnx.graph import graph_inputs

    for path in files:
        try:
            inputs = graph_inputs(load_onnx(path, load_external_data=False))
        except SparsekitError:
            continue
        if not inputs:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in inputs[0].type.tensor_type.shape.dim
        ]
        if dims and len(dims) != len(shape):
            example = ",".join(str(d) if isinstance(d, int) and d > 0 else "1" for d in [1, *dims[1:]])
            raise ExportError(
                f"--input-shape {','.join(map(str, shape))}: {path} takes inputs of {len(dims)} dims {dims}; give "
                f"them all, batch first, e.g. --input-shape {example}"
            )


@main.command(short_help="Params, nonzeros, sparsity and MACs per layer of a .pt or .onnx file.")
@click.argument("model", type=PATH)
@arch_option
@kwargs_option
@click.option(
    "--input-shape",
    metavar="DIMS",
    help="Input shape for MACs, batch first, e.g. 1,1,28,28 (default: from the checkpoint; .pt/.safetensors only).",
)
@trust_model_file_option
@trust_code_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@debug_option
@handle_errors
def inspect(
    model: Path,
    arch: str | None,
    arch_kwargs: str | None,
    input_shape: str | None,
    trust_model_file: bool,
    trust_code: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Per-layer and whole-model params, nonzeros, weight sparsity and MACs of a model file (.pt,
    .safetensors or .onnx).

    Each prunable layer (Linear / Conv; in ONNX, Conv / Gemm / MatMul nodes with a stored weight) gets a
    row: params and nonzero count its weight and bias, sparsity is the fraction of its weight that is zero,
    dense MACs are its multiply-accumulates per sample and nonzero MACs those of its nonzero weights
    ("unknown" when the input shape is not known). Parameters outside these layers (BatchNorm, ...) get
    a row of their own, so the rows add up to the total; the total's sparsity is over the prunable weights,
    as in report.json. A .pt and the .onnx exported from it give the same rows (ONNX folds BatchNorm into
    the convolution before it). An .onnx file is read as data (nothing in it runs); its sizes count any
    external-data file.

    \b
    Examples:
      sparsekit inspect out/model.pt --arch examples.models:lenet_300_100   # the factory its checkpoint names
      sparsekit inspect weights.pt --arch examples.models:small_cnn --input-shape 1,1,28,28
      sparsekit inspect out/model.onnx --json
    (examples.models:* are the sparsekit repository's example models, importable from a clone's root folder;
    with the installed package alone, name your own model's pkg.module:callable.)
    """
    onnx_file = model.suffix.lower() == ".onnx"
    if onnx_file and (arch or arch_kwargs or input_shape):
        given = [f for f, v in (("--arch", arch), ("--kwargs", arch_kwargs), ("--input-shape", input_shape)) if v]
        raise click.UsageError(
            f"{' and '.join(given)}: an .onnx file holds its own graph and input shape; these options are for "
            ".pt / .safetensors models"
        )
    kwargs, shape = _kwargs(arch_kwargs, arch), _shape(input_shape)
    _load_native("onnxruntime" if onnx_file else "torch")
    from .inspection import inspect as inspect_file

    res = inspect_file(
        model, arch=arch, kwargs=kwargs, input_shape=shape, trust=trust_model_file, trust_code=trust_code
    )
    _emit(res, as_json, _inspect_text(model, res))
    _warn_on_stderr(_inspect_warnings(res))  # (--json: the document has non_finite)


def _guessed_fix(value: str) -> str:
    """The remedy when the input shape sparsekit guessed (from the first layer) does not fit the model."""
    shape = f"--input-shape {value.strip('[]').replace(' ', '')}" if value else "e.g. --input-shape 1,3,32,32"
    return f"neither --input-shape nor the file gave one, so sparsekit guessed it: pass {shape}"


def _inspect_text(model: Path, res: dict[str, Any]) -> str:
    """The table ``sparsekit inspect`` prints for :func:`sparsekit.inspect`'s result ``res``."""
    shape = res.get("input_shape")
    if res["format"] == "onnx":
        per = res["gzip_bytes_per_nonzero"]
        inputs = res.get("inputs") or {}
        where = f"input {shape}" if len(inputs) < 2 else "inputs " + ", ".join(f"{k} {v}" for k, v in inputs.items())
        head = f"{model}: ONNX, {where}; {res['bytes']:,} B, gzip {res['gzip_bytes']:,} B" + (
            f" ({per:.2f} gzip B per nonzero param)" if per else ""
        )
    else:
        where = f"input {shape}" if shape else "input shape unknown (pass --input-shape for MACs)"
        head = f"{model}: {res['factory'] or 'unknown factory'}, {where}; {res['bytes']:,} B"
        if res.get("structurally_pruned"):
            head += "; channels removed (rebuilt from its pruning history)"

    def count(value: int | None) -> str:
        return "unknown" if value is None else f"{value:,}"

    # A tied row's weight is counted in the row that holds it first: the row shows what it adds (its bias) and is
    # marked, so that the rows add up to the total (they repeated the shared weight: 612 in the rows, 356 in total).
    rows = [
        [printable(r["name"]) + (" (tied)" if r.get("shared_with") else ""), printable(r["type"]),
         "x".join(map(str, r["shape"])), f"{r['params'] - r.get('shared_params', 0):,}",
         f"{r['nonzero_params'] - r.get('shared_nonzero', 0):,}",
         f"{r['sparsity']:.3f}", count(r["macs"]), count(r["effective_macs"])]
        for r in res["layers"]
    ]  # fmt: skip
    other = res["other_params"]
    if other["params"]:
        kinds = ", ".join(other["types"]) or "other"
        # MACs of the Linear/Conv layers that are no row (a computed weight), so that the column adds up to the total
        more = res.get("other_macs") or {}
        extra = [count(more.get("macs")), count(more.get("effective_macs"))] if more.get("macs") else ["", ""]
        rows.append([f"({kinds})", "", "", f"{other['params']:,}", f"{other['nonzero_params']:,}", "", *extra])
    unknown = res["macs_unknown"]
    total = [
        "total", "", "", f"{res['params']:,}", f"{res['nonzero_params']:,}", f"{res['sparsity']:.3f}",
        count(res["macs"]), count(res["effective_macs"]),
    ]  # fmt: skip
    header = ["layer", "type", "weight", "params", "nonzero", "sparsity", "dense MACs", "nonzero MACs"]
    table = [header, *rows, total]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    lines = [head, *(line(row) for row in table)]
    lines.append(
        "params, nonzero: weights + biases; sparsity: of the weights (total: over the rows' weights, as in "
        "report.json); MACs: per sample"
    )
    tied = [r for r in res["layers"] if r.get("shared_with")]
    if tied:
        lines.append(
            "; ".join(f"{r['name']} shares its weight with {r['shared_with']}" for r in tied)
            + " (tied"
            # An ONNX graph holds one node per call: a layer the forward calls twice reads as two sharing a weight.
            + (
                ", or one layer the forward calls more than once: the graph cannot tell"
                if res["format"] == "onnx"
                else ""
            )
            + "): its MACs count; its params and nonzero count only what it adds, the shared weight being counted once"
        )
    if unknown and len(unknown) < len(res["layers"]):
        lines.append(f"MACs unknown for {', '.join(unknown)} (their shapes could not be inferred)")
    if res.get("input_shape_note"):
        # "Note:", as export, bench and prune print theirs (inspect and validate said "note:")
        # (not for a forward of several inputs: the note says no input shape fits, and the flag would contradict it)
        several = "no input shape fits" in res["input_shape_note"]
        lines.append(f"Note: {res['input_shape_note']}" + ("" if several else " (--input-shape)"))
    lines.extend(f"Note: {text}" for text in res.get("notes") or [])
    return "\n".join(lines)  # its warnings go to stderr (_warn_on_stderr), as every command's do


def _inspect_warnings(res: dict[str, Any]) -> list[str]:
    """The warnings of ``sparsekit inspect``: weights that are NaN or inf."""
    bad = res.get("non_finite") or {}
    if not bad:
        return []
    named = ", ".join(f"{name} ({n:,})" for name, n in list(bad.items())[:5]) + (", ..." if len(bad) > 5 else "")
    return [
        f"{sum(bad.values()):,} stored weights are NaN or inf, in {named}: the model's outputs will be too; "
        "sparsekit refuses such weights in a checkpoint"
    ]


@main.command(short_help="Check RECIPE; with MODEL, a dry run of prune (schedule per epoch).")
@click.argument("recipe", type=RECIPE)
@click.argument("model", required=False, type=PATH)
@arch_option
@kwargs_option
@data_option
@set_option
@device_option
@click.option(
    "--steps-per-epoch",
    type=_IntRange(1),
    help="Optimizer steps per epoch to assume instead of the run's own (its training batches, capped by "
    "finetune.max_steps_per_epoch), e.g. to preview the schedule on a larger dataset.",
)
@trust_model_file_option
@trust_code_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@debug_option
@handle_errors
def validate(
    recipe: str,
    model: Path | None,
    arch: str | None,
    arch_kwargs: str | None,
    data: str | None,
    overrides: tuple[str, ...],
    device: str | None,
    steps_per_epoch: int | None,
    trust_model_file: bool,
    trust_code: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Check RECIPE; with MODEL, a dry run of `sparsekit prune MODEL RECIPE`: what each method will do and
    the sparsity after every epoch, without training or writing anything.

    Without MODEL: the recipe's schema and what each method will do; nothing the recipe names is imported.

    With MODEL, what prune does before training, with the same code and the same options (--arch,
    --kwargs, --data, --set, --device, --trust-code): the model is built, the data loaded and one training batch run
    through the model (a shape or label mismatch is an error naming both), every structural removal
    rehearsed on a copy, and the run's own Pruner driven through every optimizer step of the run on a
    copy (no training; optimizer steps per epoch are the data's training batches). The sparsity printed
    per epoch is what report.json's history will show; l1's zeros, which depend on training, come on top.
    With `sparsity: auto` / `ratio: auto` entries the sensitivity analysis runs as in prune
    (`target_latency` also exports and times the model) and the chosen per-layer values are shown.

    \b
    Examples:
      sparsekit validate lenet-gradual-magnitude-90                  # schema and plan, no model
      sparsekit validate lenet-gradual-magnitude-90 lenet.pt --arch examples.models:lenet_300_100
      sparsekit validate my-recipe.yaml weights.pt --arch mypkg.nets:build --kwargs '{"width": 64}' --json
    (examples.models:* are the sparsekit repository's example models, importable from a clone's root folder;
    with the installed package alone, name your own model's pkg.module:callable.)
    """
    model_overrides = _arch_overrides(arch, arch_kwargs)
    if model is None:
        # The trust options too: without MODEL nothing is loaded or called, nor is a module remembered, and the
        # recipe's "prune would call it once you confirm it" line would read as if the flag had not been given.
        flags: tuple[tuple[str, object], ...] = (("--arch", arch), ("--data", data))
        flags += (("--steps-per-epoch", steps_per_epoch), ("--trust-code", trust_code))
        given = [f for f, v in (*flags, ("--trust-model-file", trust_model_file)) if v]
        if given:
            raise click.UsageError(f"{' and '.join(given)}: only used with MODEL (the dry run); give MODEL too")
    from .planning import allocation_lines, plan
    from .recipe import OptionOverride, load_recipe

    # An entry's advice that it leaves a layer out (a computed weight, a unit l1 cannot remove) is validate's
    # "left out" line for that layer already (--json: methods[].left_out): said once, there.
    warnings.filterwarnings("ignore", message=r"pruning\[\d+\][^\n]* left out")
    if device:
        overrides = (*overrides, OptionOverride("finetune.device", "device", device))
    path = find_recipe(recipe)
    rec = load_recipe(path, [*overrides, *model_overrides])
    inputs = None
    if model is None and rec.data.source.endswith(".npz") and not rec.overridden("data.source"):
        # Where the recipe's data file leads is known without reading it (or torch): a path prune refuses is
        # not "valid" here.
        # Whether the file exists is not checked: the recipe may come before its data (and the current folder,
        # which a relative path is read from, may be another when prune runs).
        from .datapaths import check_named_path

        with naming_recipe(rec):
            # (--data goes with MODEL only: the remedy is the override, which this command takes)
            check_named_path(rec.data.source, rec.source or path, confirm_with="set")
    if model is not None:
        _load_native("torch")
        from .distributed import resolve_device
        from .pipeline import check_inputs

        with naming_recipe(rec):
            resolve_device(rec.finetune.device)  # prune's first check: a device this machine lacks fails here too
            inputs = check_inputs(model, rec, arch=arch, data=data, trust=trust_model_file, trust_code=trust_code)
    with naming_recipe(rec):
        res = plan(rec, model, steps_per_epoch=steps_per_epoch, inputs=inputs)
    res["recipe"] = str(path)
    asked = rec  # as written: an allocated entry's target, not the ratios chosen for it, is what prune checks
    auto_lines: list[str] = []
    if inputs is not None and any(a["auto"] for a in res.get("allocation", [])):
        # The values prune would choose need the data: analyse now (the structure was rehearsed already).
        from .analysis import allocate_for_run, allocation_summary

        rec, _, allocation = allocate_for_run(inputs, rec, [], progress=not as_json)
        res = plan(rec, model, steps_per_epoch=steps_per_epoch, inputs=inputs)
        res.update(recipe=str(path), auto_allocation=allocation)
        auto_lines = [allocation_summary(allocation, warning=False)] if allocation else []
    res["warnings"] = [
        *_rehearsal_warnings(res),
        *_predicted_ratio_misses(res, asked),
        *_emptied_warnings(res),
        *_OWN_SAID,  # (already on stderr, said while the model was read and rehearsed)
    ]
    from .recipe import unread_finetune_keys

    res["notes"] = unread_finetune_keys(rec.finetune)  # keys written that the run will not read
    if not rec.pruning:
        # What this recipe's run does, not every step a run may take: "would fine-tune ... and benchmark" was said of
        # a recipe with finetune.epochs: 0 and benchmark.enabled: false too.
        steps = (["fine-tune"] if rec.finetune.epochs > 0 else []) + ["export"]
        steps += ["benchmark"] if rec.benchmark.enabled else []
        done = ", ".join(steps[:-1]) + " and " + steps[-1] if len(steps) > 1 else steps[0]
        res["notes"].append(
            f"no pruning entries: prune would {done} the model dense (a baseline run); add entries under the "
            "top-level `pruning:` key to prune"
        )
    lines = _validate_lines(path, rec, res) + allocation_lines(res) + auto_lines
    _emit(res, as_json, "\n".join(lines))
    chance = (res.get("auto_allocation") or {}).get("warning")  # the allocation's, left out of its lines above
    _warn_on_stderr([*res["warnings"], *([chance] if isinstance(chance, str) else [])])


def _rehearsal_warnings(res: dict[str, Any]) -> list[str]:
    """A structured entry whose rehearsal on a copy removed no channel of any of its layers: prune would end
    with "achieved nothing" (exit 2 with its strict option), so validate says it before any training."""
    out = []
    for row in (res.get("rehearsal") or {}).get("methods", []):
        aims = list(row.get("per_layer", {}).values())
        if aims and all(a["achieved"] == 0 for a in aims) and any((a.get("asked") or 0) > 0 for a in aims):
            why = next((a["reason"] for a in aims if a.get("reason")), None)
            out.append(
                f"pruning[{row['index']}] structured removed no output channel of its {len(aims)} layer(s) in the "
                f"rehearsal{f' ({why})' if why else ''}: prune would report that it achieved nothing; select the "
                "layers its channels are coupled to as well, or use an unstructured method"
            )
    return out


def _predicted_ratio_misses(res: dict[str, Any], rec: Any) -> list[str]:
    """A structured entry whose rehearsal ends its ``ratio`` beyond the report's tolerance (rounding to
    ``round_to`` blocks on narrow layers: 0.3 of 32 channels becomes 16): prune would warn "target missed"
    (and fail with its strict option), so validate says it before any training. Entries whose ratio is
    allocated for a target, or whose layers another entry prunes too, are checked on their target by prune."""
    from .report import rounding_tolerance

    layers_of = {row["index"]: set(row.get("layers", [])) for row in res.get("methods", [])}
    out = []
    for row in (res.get("rehearsal") or {}).get("methods", []):
        i, channels = row["index"], row.get("channels") or {}
        spec = rec.pruning[i] if i < len(rec.pruning) else None
        if spec is None or spec.ratio == "auto" or spec.target_macs is not None or spec.target_latency is not None:
            continue
        # The rehearsal removes channels only: an l1 or max_norm entry on the same layers cannot move this entry's
        # count (it counts its own removals), so only another structured entry's sharing defers to prune's check.
        others = {
            n for j, names in layers_of.items() if j != i and rec.pruning[j].method == "structured" for n in names
        }
        asked, achieved = row.get("asked"), row.get("achieved")
        if not channels or others & set(channels) or asked is None or achieved is None or achieved == 0:
            continue  # (nothing removed at all: _rehearsal_warnings says so)
        counted = sum(channels[n][0] for n in (row.get("counted") or channels) if n in channels)
        tol = rounding_tolerance([c[0] for c in channels.values()], counted, spec.round_to)
        if abs(achieved - asked) <= tol:
            continue
        # A layer held back for a reason other than rounding (coupled to an ignored layer) is the cause to
        # name: blaming round_to there sent the user to a setting that does not move the ratio.
        held = [
            f"'{name}': {a['reason']}"
            for name, a in (row.get("per_layer") or {}).items()
            if a.get("reason") and "multiple" not in a["reason"] and (a.get("achieved") or 0) < (a.get("asked") or 0)
        ]
        if held:
            hint = "; ".join(held)
        elif (spec.round_to or 1) > 1:
            hint = (
                f"channel counts are rounded to multiples of {spec.round_to} (the lines above say where): a smaller "
                "round_to, or null, keeps them nearer the ratio, at some latency"
            )
        else:
            hint = "the lines above say which layers cannot reach it"
        out.append(
            f"pruning[{i}] structured would remove {achieved:.3f} of its channels, {asked:.3f} asked (tolerance "
            f"{tol:.3f}): prune would report the target missed, and fail with --strict; {hint}"
        )
    return out


def _validate_lines(path: Path, rec: Any, res: dict[str, Any]) -> list[str]:
    """What ``sparsekit validate`` prints for :func:`sparsekit.plan`'s result ``res``."""
    epochs = rec.finetune.epochs
    lines = [f"{path}: valid ({len(rec.pruning)} method(s), {epochs} fine-tuning epoch(s))"]
    for field, spec in res["names_code"].items():
        if "model" not in res:
            from .trust import module_location

            same = "--arch" if field == "model.factory" else "--data"
            module = spec.split(":")[0]
            # Found without importing anything. Confirming code that is not on this machine cannot work: a wheel's
            # user was told to confirm a shipped recipe's examples.models factory, which only a clone holds.
            if module_location(module) is None:
                if module.split(".")[0] == "examples":
                    where = (
                        "it is the sparsekit repository's example code, which is not here (examples/ is not part "
                        "of the installed package)"
                    )
                    other = "run from a clone of the repository"
                else:
                    where, other = f"module {module!r} is not found from this folder", "run from the folder above it"
                lines.append(
                    f"{field} names code {spec}: validate checks the recipe only and imported nothing; {where}: "
                    f"for prune name your own with {same} your_module:your_callable, or {other}"
                )
                continue
            if rec.overridden(field):
                # Set on this command line: prune given the same --set runs it as code named yourself (prune --help),
                # which "only once you confirm it" contradicted.
                lines.append(
                    f"{field} names code {spec}, set with --set here: validate checks the recipe only and imported "
                    "nothing; prune given the same --set imports and calls it (code you name on the command line "
                    "is confirmed)"
                )
                continue
            lines.append(
                f"{field} names code {spec}: validate checks the recipe only and imported nothing; prune would "
                f"import and call it only once you confirm it (the same callable given as {same}, --trust-code, "
                "or its module trusted with sparsekit trust)"
            )
    source = rec.data.source
    # Looked up, not read (the recipe alone imports and loads nothing): "valid" for a file that is not there left the
    # user to find out from prune, after the model was built and checked.
    npz = isinstance(source, str) and source.lower().endswith(".npz")
    if "model" not in res and npz and not os.path.lexists(os.path.expanduser(source)):
        lines.append(
            f"data.source file {source!r} is not found from this folder ({os.getcwd()}; a relative path is read "
            "from the current folder, not the recipe's): prune would refuse it; check the path, or give the "
            "file as --data"
        )
    if "model" in res:
        m, d = res["model"], res["data"]
        lines.append(f"model {m['path']}: {m['factory']}, input {m['input_shape']}, {m['outputs']} outputs")
        batches = f"{d['train_batches']:,} training batches" if d["train_batches"] is not None else "training batches"
        lines.append(
            f"data {d['source']}: {batches} of {d['batch_shape'][0]}; one of shape {d['batch_shape']} runs through "
            f"the model: {d['output_shape']}"
        )
        spe = res["steps_per_epoch"]
        source = "as given" if res["steps_per_epoch_from"] == "given" else "one per training batch"
        steps_in = d["train_batches"]
        if source != "as given" and d.get("batches_per_process"):
            # Under torchrun: each process trains its shard, the schedules count its steps (as prune's would).
            source = f"one per training batch of each of the {d['processes']} processes' shards"
            steps_in = d["batches_per_process"]
        if source != "as given" and steps_in is not None and spe < steps_in:
            # "5 steps per epoch (one per training batch)" beside 23 training batches read as a contradiction
            first = f"the first {spe:,} of {steps_in:,}"
            source = f"one per training batch, {first}: finetune.max_steps_per_epoch"
        if epochs:
            lines.append(f"schedule: {spe:,} optimizer steps per epoch ({source}), {spe * epochs:,} in all")
        else:
            lines.append("schedule: no fine-tuning (finetune.epochs: 0): every entry acts at once, before any training")
    lines += [f"Note: {words}" for words in res.get("notes") or []]  # spelled as every command's notes
    reh = res.get("rehearsal") or {}
    if reh.get("events"):
        parity = reh.get("parity") or {}
        lines.append(
            f"rehearsed {reh['events']} channel-removal event(s) on a copy: forward ok after each, ONNX parity "
            f"{'ok' if parity.get('ok') else 'not checked' if not parity else 'FAILED'}"
        )
        for row in reh.get("methods", []):
            for name, aim in row.get("per_layer", {}).items():
                why = f" ({aim['reason']})" if aim.get("reason") else ""
                lines.append(
                    f"  pruning[{row['index']}] {name}: {aim['achieved']:.3f} of channels removed, "
                    f"{aim['asked']:.3f} asked{why}"
                )
    if not res["methods"]:
        lines += [f"pruning[{i}] {text}" for i, text in enumerate(res["descriptions"])]
    for m in res["methods"]:
        lines.append(f"pruning[{m['index']}] {m['description']}")
        if len(m["layers"]) > 6:
            lines.append(f"  layers: {', '.join(m['layers'])}")
        for row in m["left_out"]:
            lines.append(f"  left out {row['name']} ({row['type']}): {row['reason']}")
        for name, why in m.get("cannot_remove", {}).items():
            lines.append(f"  {name}: units zeroed here cannot be removed ({why}); no MACs saved for them")
        what = "channels removed" if m["method"] == "structured" else "its weights zero"
        if m["expected_per_epoch"] is None:
            lines.append("  its effect follows from training: known only after the run")
        elif epochs:
            lines.append(f"  {what} after epoch {_per_epoch(m['expected_per_epoch'])}")
        else:
            lines.append(f"  {what}: {m['final']:.3f}")
    schedule = res.get("schedule")
    if schedule:
        # Only l1 makes zeros that depend on training (max_norm makes none).
        unknown = any(m.get("expected_per_epoch", []) is None and m.get("method") == "l1" for m in res["methods"])
        on_top = " (plus l1's zeros)" if unknown else ""
        if epochs:
            history = [row["sparsity"] for row in schedule["history"]]
            lines.append(
                f"model sparsity{on_top}, as report.json's history will show it, after epoch {_per_epoch(history)}"
            )
        lines.append(f"pruned model (model.pt): sparsity {schedule['final']['sparsity']:.3f}{on_top}")
    return lines


def _emptied_warnings(res: dict[str, Any]) -> list[str]:
    """Layers the planned run leaves without a weight (said on stderr with the other warnings)."""
    emptied = ((res.get("schedule") or {}).get("final") or {}).get("emptied") or []
    if not emptied:
        return []
    return [
        f"{_names_short(emptied)}: no weight left after the run, so the output is the bias alone whatever the input; "
        "lower the sparsity, cap it per layer (max_layer_sparsity, layer_sparsity) or leave the layer out"
    ]


def _names_short(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _per_epoch(values: list[float]) -> str:
    """``1: 0.586, 2: 0.856, 3-8: 0.900``: consecutive epochs with the same (rounded) value as one range."""
    parts: list[str] = []
    first = 0
    for e in range(1, len(values) + 1):
        if e == len(values) or f"{values[e]:.3f}" != f"{values[first]:.3f}":
            span = f"{first + 1}" if e - 1 == first else f"{first + 1}-{e}"
            parts.append(f"{span}: {values[first]:.3f}")
            first = e
    return ", ".join(parts)


@main.command(short_help="Accuracy/loss cost of pruning each layer alone (which layers to spare).")
@click.argument("model", type=PATH)
@click.argument("recipe", type=RECIPE)
@click.option(
    "-o",
    "--output",
    "out",
    default="sparsekit-sensitivity",
    show_default=True,
    type=PATH,
    help="Output folder (sensitivity.json, sensitivity.png, sensitivity.md; allocation.json for auto entries).",
)
@arch_option
@kwargs_option
@data_option
@set_option
@click.option(
    "--max-batches",
    type=_IntRange(1),
    help="Validation batches per evaluation (default: all; fewer is faster and noisier).",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted analysis in the output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier analysis in the output folder.")
@trust_model_file_option
@trust_code_option
@click.option("--json", "as_json", is_flag=True, help="Print the table, ranking and allocation as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@debug_option
@handle_errors
def sensitivity(
    model: Path,
    recipe: str,
    out: Path,
    arch: str | None,
    arch_kwargs: str | None,
    data: str | None,
    overrides: tuple[str, ...],
    max_batches: int | None,
    resume: bool,
    overwrite: bool,
    trust_model_file: bool,
    trust_code: bool,
    as_json: bool,
    no_progress: bool,
    debug: bool,
) -> None:
    """Per-layer sensitivity: prune each layer RECIPE selects alone, one shot, no fine-tuning.

    Every layer the recipe's magnitude / gradient entries select is pruned alone at sparsities
    0.3 ... 0.98 (structured entries: channel ratios 0.1 ... 0.7) and evaluated on the validation split.
    Writes the table (sensitivity.json), curves of loss increase and accuracy drop per layer
    (sensitivity.png) and the ranking (sensitivity.md), and prints the most and least sensitive layers.
    With `sparsity: auto` / `ratio: auto` entries it also prints and writes (allocation.json) the
    per-layer values `prune` would use. The table so far is saved after every probe
    (sensitivity.partial.json): --resume continues; --overwrite replaces the earlier files once it is done.

    \b
    Example:
      sparsekit sensitivity lenet.pt lenet-gradual-magnitude-90 --arch examples.models:lenet_300_100 -o sens
    (examples.models:* are the sparsekit repository's example models, importable from a clone's root folder;
    with the installed package alone, name your own model's pkg.module:callable.)
    """
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: pick one")
    model_overrides = _arch_overrides(arch, arch_kwargs)
    _load_native("torch")
    from .analysis import allocation_summary, run_sensitivity
    from .recipe import load_recipe

    rec = load_recipe(find_recipe(recipe), [*overrides, *model_overrides])
    res = run_sensitivity(
        model,
        rec,
        out,
        arch=arch,
        data=data,
        trust=trust_model_file,
        trust_code=trust_code,
        resume=resume,
        overwrite=overwrite,
        max_batches=max_batches,
        progress=not no_progress and not as_json,
    )
    table = res["table"]
    ranking = res["ranking"]
    untrained = table.noise_warning()
    notes = []
    if res["batches_left_out"] and res["allocation"]:
        # The values above are said to be prune's; prune analyses every validation batch. (Not said when the split
        # has no more batches than --max-batches: the values are then prune's own.)
        notes.append(
            f"the per-layer values come from the first {max_batches} validation batch(es) (--max-batches); "
            "prune analyses all of them, so the values it chooses can differ"
        )
    doc = {
        "table": table.model_dump(mode="json"),
        "ranking": [{"layer": n, "score": s} for n, s in ranking],
        "files": res["files"],
        "allocation": res["allocation"],
        "warnings": [*([untrained] if untrained else []), *_OWN_SAID],  # (the latter already on stderr)
        "notes": notes,
    }
    lines = [
        f"Wrote {out}/ ({', '.join(Path(p).name for p in res['files'].values())})",
        f"  dense     accuracy {table.dense_accuracy:.4f}, loss {table.dense_loss:.4f} ({table.val_samples:,} samples)",
        "  score     mean validation-loss increase over the probed range, nats per sample",
    ]
    shown = ranking if len(ranking) <= 6 else ranking[:3] + ranking[-3:]
    for i, (name, score) in enumerate(shown):
        label = "most" if i == 0 else "least" if i == len(shown) - 1 else ""
        lines.append(f"  {label:9} {name}: {score:.4f}")
        if i == 2 and len(ranking) > 6:  # the middle rows are in sensitivity.md and --json
            lines.append(f"  {'':9} … {len(ranking) - 6} more (sensitivity.md ranks them all)")
    for row in table.left_out:
        lines.append(f"  left out  {row.name} ({row.type}): {row.reason}")
    if res["allocation"]:
        lines.append(allocation_summary(res["allocation"], warning=False))  # (its warning: untrained's, below)
    lines += [f"Note: {text}" for text in notes]  # spelled as every command's notes
    _emit(doc, as_json, "\n".join(lines))
    _warn_on_stderr(doc["warnings"])


def _warn_on_stderr(said: list[str]) -> None:
    """A command's warnings, one ``Warning:`` line each on stderr, with or without ``--json`` (README: warnings go to
    stderr; stdout holds the result): the one convention of every command, export's included. A line this command
    already said (sparsekit's own Python warning, see :func:`_say_own_warning`) is not said again."""
    for line in said:
        if line not in _SAID:
            _SAID.add(line)
            click.echo(f"Warning: {printable(line)}", err=True)


# The Warning lines the running command said, and of them sparsekit's Python warnings, for a --json document's
# warnings (handle_errors clears them): each is said once.
_SAID: set[str] = set()
_OWN_SAID: list[str] = []
_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


def _say_own_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
    """``warnings.showwarning`` while a command runs without --debug: a warning sparsekit's own code raised (the
    Pruner's advice, an entry's) is a ``Warning:`` line on stderr, once per command however many steps raise it;
    one a library raised (torch, onnx, onnxruntime) is dropped. The CLI used to ignore every warning, which lost
    sparsekit's own (parameters no layer holds, a structured entry's late removals). Its caller is the first frame
    outside the warnings module: the code that called ``warnings.warn``, not the ``stacklevel`` it names (a torch
    warning names the sparsekit line that called torch)."""
    if issubclass(category, TargetMissedWarning):
        return  # prune's report checks every target and says the misses (report.json's summary.warnings)
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == warnings.__file__:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or not os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        return
    line = " ".join(str(message).split())
    if line not in _SAID:
        _OWN_SAID.append(line)
        _warn_on_stderr([line])


@main.command(short_help="List the shipped recipes, or print one (NAME) in full.")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the list (or the recipe NAME) as JSON.")
@click.option(
    "--reference",
    is_flag=True,
    help="Print the recipe reference instead: every section and method, each key's type, default and meaning "
    "(Markdown, docs/recipe.md in the repository).",
)
@debug_option
@handle_errors
def recipes(name: str | None, as_json: bool, reference: bool, debug: bool) -> None:
    """List the recipes shipped with sparsekit, or print the recipe NAME in full.

    Use the name (or a path to your own YAML file) as RECIPE in prune, validate and sensitivity. To start
    your own recipe, save one: `sparsekit recipes NAME > my-recipe.yaml`.

    \b
    Examples:
      sparsekit recipes
      sparsekit recipes lenet-gradual-magnitude-90
      sparsekit recipes --reference | less          # what every recipe key means
    """
    from .recipe_catalog import shipped_recipe, shipped_recipes

    if reference:
        if name is not None or as_json:
            raise click.UsageError("--reference prints the whole reference as Markdown: give it alone")
        from .recipe_docs import render

        click.echo(render().rstrip("\n"))
        return
    if name is not None:
        one = shipped_recipe(name)
        _emit(one, as_json, one["text"].rstrip("\n"))
        return
    rows = shipped_recipes()
    _emit(rows, as_json, _recipes_text(rows))


def _recipes_text(rows: list[dict[str, Any]]) -> str:
    """Each recipe's name, methods and model, then its whole description wrapped to the terminal."""
    import shutil
    import textwrap

    width = max(min(shutil.get_terminal_size((100, 24)).columns, 100), 40)
    lines: list[str] = []
    for r in rows:
        model = f"  (for {r['model']})" if r["model"] else ""
        lines.append(f"{r['name']}: {' + '.join(r['methods']) or 'no pruning'}{model}")
        if r["description"]:
            lines += textwrap.wrap(
                r["description"], width=width, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False
            )
    if any(str(r["model"] or "").startswith("examples.") for r in rows):
        # The shipped recipes name the repository's example models, which the installed package does not hold.
        note = (
            "examples.models:* are the sparsekit repository's example models, importable from a clone's root folder; "
            "for your own model pass --arch pkg.module:callable."
        )
        lines += textwrap.wrap(note, width=width, subsequent_indent="    ", break_on_hyphens=False)
    lines.append("Print one in full: sparsekit recipes NAME")
    return "\n".join(lines)


@main.command(short_help="Re-render the report (json, md) and the plots of a prune output folder.")
@click.argument("folder", required=False, type=PATH)
@click.option("--schema", is_flag=True, help="Print the JSON schema of report.json instead.")
@debug_option
@handle_errors
def report(folder: Path | None, schema: bool, debug: bool) -> None:
    """Re-render report.md and the plots in FOLDER from its report.json, and rewrite report.json itself (its
    summary recomputed from the rest). Only files the run wrote, unchanged since, are replaced.

    \b
    Example:
      sparsekit report out            # after editing nothing: same report.md, fresh plots
      sparsekit report --schema       # what report.json holds, as a JSON schema
    """
    from .report import load_report, report_schema, write_report

    if schema and folder is not None:  # it printed the schema and re-rendered nothing, with exit 0
        raise click.UsageError(f"--schema prints the schema alone and {folder} would not be re-rendered: give one")
    if schema:
        click.echo(json.dumps(report_schema(), indent=2))
        return
    if folder is None:
        raise click.UsageError("give the output FOLDER of a prune run, or --schema")
    if folder.name == "report.json" and folder.exists() and not folder.is_dir():  # the file: its folder is the run's
        folder = folder.parent
    elif folder.is_file():
        raise SparsekitError(
            f"{folder}: is a file; give the output folder of a prune run (the folder holding report.json)"
        )
    src = folder / "report.json"
    if src.exists() and not src.is_file():
        raise SparsekitError(f"{src}: is not a regular file (a folder, device, pipe or socket); nothing re-rendered")
    if not src.is_file():
        if (folder / ".sparsekit" / "next").is_dir():  # an interrupted run's, which a plain prune would refuse
            raise SparsekitError(
                f"{src}: not found: the run in {folder} did not finish; finish it with `sparsekit prune ... -o "
                f"{folder} --resume` (the same model and recipe), then report"
            )
        raise SparsekitError(f"{src}: not found; run `sparsekit prune ... -o {folder}` first")
    from .outputs import RunFolder

    run = RunFolder(folder)
    if not run.has_run():
        why = (
            "its .sparsekit folder has no manifest.json, the list of what the run wrote"
            if (folder / ".sparsekit").is_dir() and not (folder / ".sparsekit").is_symlink()
            else "no .sparsekit folder"
        )
        raise SparsekitError(
            f"{folder}: holds no sparsekit run ({why}); nothing re-rendered: prune again into a new folder "
            "(sparsekit replaces only the files a manifest says it wrote)"
        )
    if run.swap_unfinished():
        raise SparsekitError(
            f"{folder}: a run was killed while it moved its results in, so the folder holds part of the earlier "
            "results and part of the new ones; run that `sparsekit prune ... -o "
            f"{folder}` again with --resume to finish it (or --overwrite), then report"
        )
    data = load_report(src)
    # report.json, report.md and the plots are replaced: they must still be the ones sparsekit wrote. Only they:
    # a file of the user's beside them (notes.txt) is never touched, so it is no reason to refuse.
    from .plots import FILES as PLOT_FILES

    run.check_owned(
        ("report.json", "report.md", *PLOT_FILES),
        remedy="report rewrites report.json, report.md and the plots: move yours away and report again (a report.json "
        "sparsekit did not write cannot be re-rendered: put back the run's own, or prune again into a new folder)",
    )
    from .fsutil import sigint_deferred

    run.lock()
    try:
        try:
            written = write_report(data, folder)
            with sigint_deferred():
                run.record(written)
        except BaseException:
            # Stopped part way (Ctrl-C, SIGTERM, plots not drawn): each file is replaced atomically, so every one
            # of them is now the run's (checked above, locked since) or this rendering. Recorded as they are: left
            # unrecorded, a rendering that differs from the run's (a newer sparsekit or matplotlib) made report,
            # --resume and --overwrite refuse the folder's own files as edited.
            # What stopped it is the error to report, not a manifest that cannot be written (a read-only disk).
            with sigint_deferred(), contextlib.suppress(SparsekitError, OSError):
                run.record([folder / n for n in ("report.json", "report.md", *PLOT_FILES) if (folder / n).is_file()])
            raise
    finally:
        run.unlock()
    # report.json and the plots are rewritten too (the help says so): name them all, not report.md alone.
    others = [p.name for p in written if p.name != "report.md"]
    click.echo(f"Wrote {folder / 'report.md'}" + (f" (and {', '.join(others)})" if others else ""))


@main.command(short_help="List, add or forget the modules whose code a file may name.")
@click.argument("modules", nargs=-1)
@click.option("--forget", is_flag=True, help="Stop trusting MODULES instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the trusted modules as JSON.")
@debug_option
@handle_errors
def trust(modules: tuple[str, ...], forget: bool, as_json: bool, debug: bool) -> None:
    """List, add (MODULES) or --forget the modules whose code a recipe or checkpoint may name.

    A file may name a model factory or data callable (pkg.module:callable); sparsekit runs it only
    if you name it yourself this run (--arch, --data) or trust its module here or with --trust-code.
    A module is trusted as the place it is imported from here (its top-level package's file, found
    without importing it): a package of the same name in another folder is not. Standard-library and
    tool modules are never trusted.

    \b
    Examples:
      sparsekit trust                    # list
      sparsekit trust mypkg.nets         # trust a module of yours
      sparsekit trust --forget mypkg.nets
    """
    from .trust import forget_module, store_path, trust_module, trusted_locations

    if forget and not modules:  # it listed the modules, as if the flag had been read, and forgot none
        raise click.UsageError("--forget needs the modules to stop trusting, e.g. sparsekit trust --forget mypkg.nets")
    for module in modules:
        if forget:
            if not forget_module(module):
                # a Warning: line, as every command's (a misspelt name forgot nothing: said as plain text, it read
                # like a progress note)
                _warn_on_stderr([f"{module}: was not trusted, so there was nothing to forget (the list follows)"])
        else:
            trust_module(module)
    where = trusted_locations()
    text = "\n".join(f"{m}  ({p})" for m, p in where.items()) if where else f"no trusted modules ({store_path()})"
    _emit({"store": str(store_path()), "modules": list(where), "locations": where}, as_json, text)


if __name__ == "__main__":
    main()
