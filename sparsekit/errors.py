"""The exception tree. Library code raises these; only ``cli.py`` turns them into exit codes.

Every message should name the file or field at fault and say what to do about it.
"""

from __future__ import annotations


class SparsekitError(Exception):
    """Bad input from the user: the CLI prints ``Error: <message>`` and exits 2."""

    exit_code = 2


class RecipeError(SparsekitError):
    """The recipe file is missing, malformed or has an invalid field."""


class ModelFileError(SparsekitError):
    """A model file cannot be loaded safely or does not match its architecture."""


class TargetError(SparsekitError):
    """Layer patterns match nothing, or methods overlap on the same weights."""


class DataError(SparsekitError):
    """A data source cannot be found, loaded or does not fit the model."""


class ExportError(SparsekitError):
    """ONNX export, parity or benchmark input is not usable."""


class TrustError(SparsekitError):
    """A file names code (a model factory or a data callable) that the user has not confirmed, or
    names a callable that is never run (standard library, process, file-system or pickle machinery)."""


class OutputError(SparsekitError):
    """An output cannot be written: the disk is full, permission is denied, the filesystem is
    read-only, or the output folder holds files sparsekit did not write."""


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(err: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (cut to ``limit``): what a one-line ``Error:`` may quote from
    an exception raised by user code or a library, whose messages can run to pages of C++ frames."""
    try:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    except Exception:  # noqa: BLE001 - an exception whose __str__ itself fails (user code)
        lines = []
    return shorten(f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__, limit)
