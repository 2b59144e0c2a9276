"""Silencing the chatty tools sparsekit drives: torch's ONNX exporters, onnxscript and onnxruntime's
quantization tools print progress (with emoji) on stdout, whole traced graphs on stderr when they
fail, and warnings and log lines (onnxscript logs a version-conversion failure with its traceback);
stdout must stay clean for JSON output."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

__all__ = ["flush_c_streams", "quiet"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Inside the block: stdout and stderr go to a discarded buffer, warnings are ignored and nothing is
    logged (``logging.disable``: a handler that holds the terminal's stderr, as one set up by
    ``logging.basicConfig`` does, would otherwise still print the tools' log lines); all restored after.
    Errors raised inside keep their cause chain, so nothing needed to explain a failure is lost.

    When the ``sparsekit`` logger is enabled for DEBUG (the command line's debug mode), the tools'
    warnings and log lines are shown and what they print on stdout goes to stderr instead.
    """
    if logging.getLogger("sparsekit").getEffectiveLevel() <= logging.DEBUG:
        with contextlib.redirect_stdout(sys.stderr), _os_streams(discard=False):
            yield
        return
    previous = logging.root.manager.disable
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            _os_streams(discard=True),
        ):
            warnings.simplefilter("ignore")
            logging.disable(logging.CRITICAL)
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _os_streams(discard: bool) -> Iterator[None]:
    """The process's file descriptors inside the block: with ``discard``, 1 and 2 to the null device; without, 1
    to wherever 2 goes. What C++ code writes (torch's exporter prints a failed trace's whole graph with
    ``std::cout``) does not pass through ``sys.stdout``, so ``redirect_stdout`` alone lets it through. C's
    buffered output is flushed before the descriptors are put back, so nothing written inside lands outside."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    fds = (1, 2) if discard else (1,)
    try:
        saved = [os.dup(fd) for fd in fds]
    except OSError:  # no such descriptor (a process without stdio): nothing to redirect
        yield
        return
    target = os.open(os.devnull, os.O_WRONLY) if discard else os.dup(2)
    try:
        for fd in fds:
            os.dup2(target, fd)
        yield
    finally:
        flush_c_streams()
        for fd, old in zip(fds, saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        os.close(target)


def flush_c_streams() -> None:
    """``fflush(NULL)``: C stdio buffers (which ``std::cout`` writes through) emptied where they point now."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)
