"""``python -m sparsekit`` and the ``sparsekit`` console script (``torchrun -m sparsekit`` too)."""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import signal
import sys
from typing import Any, cast


class _PipeTolerant(io.BufferedIOBase):
    """The binary file under ``sys.stdout`` / ``sys.stderr``: once its reader is gone (``sparsekit prune ... 2>&1 |
    head``), writes are dropped instead of raising BrokenPipeError in the middle of a run, which stopped the
    fine-tuning after an epoch with exit 1. The run goes on and writes its files; only its messages are lost.

    It keeps no buffer (the text layer above it collects the bytes of a write): a write goes to the file at once,
    all of it. A Ctrl-C or SIGTERM that lands just after the bytes went out (its exception is raised in the next
    Python line) used to leave them in the BufferedWriter that sat here, which wrote them again later: an epoch
    line printed twice, which fooled a script reacting to it."""

    def __init__(self, fd: int, name: str) -> None:
        super().__init__()
        self._fd = fd
        self._name = name
        self.broken = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if not self.broken:
            done = 0
            try:
                while done < len(view):
                    done += os.write(self._fd, view[done:])
            except BrokenPipeError:
                self.broken = True
            except OSError as err:
                # Any other failed write (a full disk under `> out.json` or `2>> run.log`, /dev/full, EIO): the
                # stream is dropped from here on too, which raised again on every later write and turned the
                # command's exit into a traceback and exit 1 (a bad input's exit 2 as well, when its Error line
                # could not go to stderr). Lost stderr has nowhere to be reported: the command ends as it would
                # have. Lost stdout was the command's output: it fails, saying so on stderr.
                self.broken = True
                if self._name == "stdout":
                    from .errors import OutputError

                    raise OutputError(
                        f"standard output: cannot be written ({err.strerror or err}), the output is lost; free "
                        "space where it is redirected or redirect it elsewhere, and run again"
                    ) from None
        return len(view)

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)


# The characters sparsekit's own text uses beyond Latin-1 (report tables' "–" for no value, "…" for a shortened
# name, arrows), as the ASCII look-alikes a terminal of another encoding can show.
_LOOKALIKES = {
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2026": "...",
    "\u2192": "->",
    "\u2264": "<=",
    "\u2265": ">=",
}


def _lookalike(err: UnicodeError) -> tuple[str | bytes, int]:
    """The codec error handler of sparsekit's stdout and stderr. Under a locale that is not UTF-8
    (LANG=de_DE.ISO-8859-1, PYTHONIOENCODING=ascii) Python writes stdout strictly: the first "–" of the summary
    printed at the end of `prune` raised UnicodeEncodeError, a finished run's exit 1. A character the terminal's
    encoding lacks is written as its look-alike or "?"; a file name's undecodable bytes (surrogateescape) as they
    were."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    text = err.object[err.start : err.end]
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return "".join(_LOOKALIKES.get(c, "?") for c in text), err.end
    # Character by character: one run of unwritable text may hold both ("→" then a name's raw bytes, "ü\udce9" in a
    # file name), and the bytes went as "?" with it. The look-alikes go as ASCII bytes beside the raw ones, as a
    # terminal that shows raw bytes reads them.
    return b"".join(
        bytes([ord(c) - 0xDC00]) if "\udc80" <= c <= "\udcff" else _LOOKALIKES.get(c, "?").encode("ascii") for c in text
    ), err.end


codecs.register_error("sparsekit.lookalike", _lookalike)
_DEFAULT_ERRORS = ("strict", "surrogateescape", "backslashreplace")


def _tolerate_closed_pipes() -> None:
    """Put :class:`_PipeTolerant` under ``sys.stdout`` and ``sys.stderr``, with their encoding and buffering."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (embedded, captured): leave it
            continue
        if not isinstance(stream, io.TextIOWrapper):  # someone else's stream object: theirs to handle
            continue
        wrapped = io.TextIOWrapper(
            # (typeshed asks more of a buffer than TextIOWrapper uses)
            cast(io.BufferedWriter, _PipeTolerant(fd, name)),
            encoding=stream.encoding,
            # (Python's own choices give way to the look-alikes; one the user set, PYTHONIOENCODING=:replace, stays)
            errors="sparsekit.lookalike" if stream.errors in _DEFAULT_ERRORS else stream.errors,
            line_buffering=stream.line_buffering or name == "stderr",
            write_through=stream.write_through or name == "stderr",  # (-u, PYTHONUNBUFFERED)
        )
        stream.flush()
        setattr(sys, name, wrapped)


def _exit_now_if_distributed(err: SystemExit) -> None:
    """End a process of a torchrun run that failed or was stopped at once, with its exit code, once its messages are
    out. Python's own exit would free the exception's traceback, and with it the DDP model and gloo's process group,
    whose destructor waits for its worker threads while holding the GIL; a collective still in flight (the peers went
    on) needs the GIL in one of them to finish: a deadlock. Seen: rank 1 stopped by SIGTERM printed its message and
    never exited, so rank 0 waited in its next allreduce and torchrun hung. Every file was closed and every temp file
    removed while the error unwound, and the folder's lock goes with the process."""
    code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    if code == 0 or "torch.distributed" not in sys.modules:
        return
    try:
        several = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:
        several = False
    if not several:
        return
    if isinstance(err.code, str):  # sys.exit("message") prints it; os._exit would not
        sys.stderr.write(f"{err.code}\n")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def entry() -> None:
    """Run the CLI. A Ctrl-C before a command takes over still exits 130 without a traceback."""
    _tolerate_closed_pipes()
    # `python -m` puts the current folder first on sys.path, so a file there named like a dependency
    # (torch.py, yaml.py, ...) would be imported in its place. Only modules the user names are looked
    # up in the current folder, and only last (sparsekit.trust appends it while importing them).
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    # SIGTERM (a job scheduler's stop) unwinds like Ctrl-C once the command runs (sparsekit._terminate, set by
    # cli.handle_errors): checkpoints and finished files are kept, temp files removed; until then it ends the
    # process with one line. A handler someone installed before us (an embedding program) stays theirs.
    from . import _terminate, _terminated_at_start

    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated_at_start)
    # Before any command imports onnxruntime (see sparsekit.onnx: no files of its own under ~/.cache).
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    # matplotlib's font cache (the plots) in sparsekit's cache folder, not ~/.cache/matplotlib and ~/.config.
    from .fsutil import cache_dir

    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir() / "matplotlib"))
    try:
        from .cli import main
        from .errors import SparsekitError
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (errors.Terminated, not imported: it may be what broke)
        from . import _stopped_at_start

        term = type(err).__name__ == "Terminated"
        _stopped_at_start(*(("Terminated (SIGTERM).", 143) if term else ("Interrupted.", 130)))
    # The start-up handlers stay while click reads the options (a KeyboardInterrupt there is click's "Aborted!"
    # and exit 1); the command's wrapper (cli.handle_errors) hands Ctrl-C back to Python and SIGTERM to
    # sparsekit._terminate, so that from then on they unwind into the command's message (what was kept, how to
    # resume).
    try:
        main(prog_name="sparsekit")
    except SparsekitError as err:  # outside a command (click's --help and --version): stdout lost (see above)
        sys.stderr.write(f"Error: {err}\n")
        sys.exit(err.exit_code)
    except SystemExit as err:
        _exit_now_if_distributed(err)
        raise
    finally:
        # A Ctrl-C that the command handled (exit 130) but that first ended an exec() of a string (dataclasses and
        # namedtuple build their methods so, as torch's modules are imported) stays marked in CPython as "unhandled",
        # and `python -m` then ends the process by SIGINT once it has finished, in place of the exit code chosen:
        # seen, a prune stopped while importing torch._dynamo exited -2 after printing its 130. Every exec() of a
        # string clears that mark as it starts; one of nothing does only that. An interrupt that does escape is
        # marked again after this, as Python marks it.
        exec("")  # noqa: S102 - a constant empty string
        # The command is over and its files are complete. Unloading torch and onnxruntime at exit can
        # take a second; a Ctrl-C then must not turn a finished run into a death by signal.
        # The same for a SIGTERM (a scheduler's stop): the run it would stop has finished.
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if signal.getsignal(signal.SIGTERM) in (_terminate, _terminated_at_start):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    entry()
