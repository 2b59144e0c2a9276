"""Silencing the chatty tools sparsekit drives: torch's ONNX exporters, onnxscript and onnxruntime's
quantization tools print progress (with emoji) on stdout, whole traced graphs on stderr when they
fail, and warnings and log lines (onnxscript logs a version-conversion failure with its traceback);
stdout must stay clean for JSON output."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator

__all__ = ["quiet"]


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
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    previous = logging.root.manager.disable
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            logging.disable(logging.CRITICAL)
            yield
    finally:
        logging.disable(previous)
