"""sparsekit: prune, fine-tune, export and benchmark PyTorch FC/CNN models from a YAML recipe.

The public API is imported lazily (PEP 562): ``import sparsekit`` and the ``sparsekit`` command start
without loading torch or onnxruntime until a name that needs them is used, so the command's help
is quick and a Ctrl-C during start-up is handled like any other.
"""

# No `from __future__ import annotations` here: it imports the module `__future__`, and this must run
# before any import that the current folder could shadow (see below).
import os as _os
import sys as _sys


def _started_as_command() -> bool:
    """Whether this process is the ``sparsekit`` command (console script, ``python -m sparsekit``,
    ``torchrun -m sparsekit``), not a program that imports the library."""
    module = _module_run(list(getattr(_sys, "orig_argv", ())))  # the interpreter's own command line (3.10+)
    if module is not None:
        return module == "sparsekit"
    main = _sys.modules.get("__main__")
    script = getattr(main, "__file__", None) or ""
    if _os.path.basename(script) not in ("sparsekit", "sparsekit-script.py") or script != _sys.argv[0]:
        return False
    try:  # the launcher pip writes, not a user's own script that happens to be called sparsekit
        with open(script, "rb") as launcher:
            return b"from sparsekit.__main__ import" in launcher.read(4096)
    except OSError:
        return False


def _module_run(argv: list[str]) -> str | None:
    """The module ``python [options] -m MODULE`` runs, from the interpreter's arguments; None for a script,
    ``-c`` or standard input."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-" * 2) and arg[2:] == "check-hash-based-pycs":  # Python's one long option with a value
            i += 2
            continue
        if not arg.startswith("-") or arg in ("-", "--") or arg.startswith("--"):
            return None  # a script (or an option Python does not have, which it refuses anyway)
        for k, flag in enumerate(arg[1:], 2):
            if flag in "mcWX":  # options with a value: the rest of this argument, or the next one
                value = arg[k:] or (argv[i + 1] if i + 1 < len(argv) else "")
                if flag == "m":
                    return value
                if flag == "c":
                    return None
                i += 0 if arg[k:] else 1
                break
        i += 1
    return None


def _interrupted_at_start(signum: int, frame: object) -> None:
    # Nothing has been read or written yet: a Ctrl-C while Python imports the command, or while click reads
    # its options, says so in one line and exits 130 instead of printing a traceback of the import machinery
    # (or click's "Aborted!" and exit 1). SystemExit, not KeyboardInterrupt: the interpreter ends quietly on it
    # wherever the import is, and click lets it through. The command's own code takes over from here on
    # (sparsekit.cli.handle_errors).
    _stopped_at_start("Interrupted.", 130)


def _terminated_at_start(signum: int, frame: object) -> None:
    # The same for SIGTERM (a job scheduler's stop), named as such.
    _stopped_at_start("Terminated (SIGTERM).", 143)


def _stopped_at_start(message: str, code: int) -> None:
    # Under torchrun every process gets the signal: the others say which rank they are, and only rank 0 prints
    # the one JSON document a command asked for JSON prints, failed or not (as sparsekit.cli does).
    rank = _os.environ.get("RANK", "0")
    other = rank not in ("", "0") and _os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")
    _sys.stderr.write((f"rank {rank}: " if other else "") + message + "\n")
    if not other and "-" * 2 + "json" in _sys.argv[1:]:
        _sys.stdout.write('{"error": "' + message + '", "exit_code": ' + str(code) + "}\n")
    raise SystemExit(code)


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM once the command runs: unwinds like Ctrl-C (checkpoints and finished files kept, temp files
    # removed), as errors.Terminated, a KeyboardInterrupt the command names as SIGTERM.
    import signal

    from .errors import Terminated

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated("stopped by SIGTERM")


if _started_as_command():
    # The C module under `signal`: importing `signal` itself builds its enums, a few milliseconds more
    # of the window this closes.
    import _signal  # type: ignore[import-not-found]

    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        # Until the command's code is loaded (sparsekit.__main__.entry puts Python's handler back).
        _signal.signal(_signal.SIGINT, _interrupted_at_start)
    if _sys.path and _sys.path[0] in ("", _os.getcwd()):
        # `python -m sparsekit` (and torchrun -m) put the current folder first on sys.path, and Python
        # imports this package before sparsekit/__main__.py runs: a typing.py or yaml.py lying in that
        # folder would be imported in place of the real module. Only modules the user names are looked
        # up there, and then last (sparsekit.trust). A program that imports sparsekit keeps its path.
        del _sys.path[0]

import importlib  # noqa: E402 - after the import path is safe
from typing import TYPE_CHECKING, Any  # noqa: E402

from .errors import (  # noqa: E402
    DataError,
    ExportError,
    ModelFileError,
    OutputError,
    RecipeError,
    SparsekitError,
    TargetError,
    TargetMissedWarning,
    TrustError,
)

__version__ = "0.3.7"

# public name -> the module that defines it
_LAZY = {
    "Pruner": ".pruner",
    "Recipe": ".recipe",
    "Report": ".report",
    "benchmark": ".onnx",
    "export_onnx": ".onnx",
    "finetune": ".train",
    "inspect": ".inspection",
    "layer_report": ".stats",
    "load_model": ".modelio",
    "load_recipe": ".recipe",
    "load_report": ".report",
    "plan": ".planning",
    "rehearse": ".rehearsal",
    "run_prune": ".pipeline",
    "save_model": ".modelio",
    "shipped_recipes": ".recipe_catalog",
    "sparsity": ".stats",
}

if TYPE_CHECKING:
    from .inspection import inspect
    from .modelio import load_model, save_model
    from .onnx import benchmark, export_onnx
    from .pipeline import run_prune
    from .planning import plan
    from .pruner import Pruner
    from .recipe import Recipe, load_recipe
    from .recipe_catalog import shipped_recipes
    from .rehearsal import rehearse
    from .report import Report, load_report
    from .stats import layer_report, sparsity
    from .train import finetune


# Submodules reachable as attributes without their own import (``sparsekit.distributed.rewrap``).
_SUBMODULES = {"allocation", "distributed", "integrations", "methods", "onnx", "sensitivity"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {"__version__"})


__all__ = [
    "DataError",
    "ExportError",
    "ModelFileError",
    "OutputError",
    "Pruner",
    "Recipe",
    "RecipeError",
    "Report",
    "SparsekitError",
    "TargetError",
    "TargetMissedWarning",
    "TrustError",
    "__version__",
    "benchmark",
    "export_onnx",
    "finetune",
    "inspect",
    "layer_report",
    "load_model",
    "load_recipe",
    "load_report",
    "plan",
    "rehearse",
    "run_prune",
    "save_model",
    "shipped_recipes",
    "sparsity",
]
