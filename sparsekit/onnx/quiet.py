"""Silencing the chatty tools sparsekit drives: torch's ONNX exporters and onnxruntime's
quantization tools print progress (with emoji) on stdout, whole traced graphs on stderr when they
fail, and warnings and log lines; stdout must stay clean for JSON output."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

__all__ = ["NOISY_LOGGERS", "quiet"]

NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Inside the block: stdout and stderr go to a discarded buffer, warnings are ignored and the
    :data:`NOISY_LOGGERS` log errors only; all restored after. Errors raised inside keep their cause
    chain, so nothing needed to explain a failure is lost."""
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        sink = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
