"""sparsekit: prune, fine-tune, export and benchmark PyTorch FC/CNN models from a YAML recipe.

The public API is imported lazily (PEP 562): ``import sparsekit`` and the ``sparsekit`` command start
without loading torch or onnxruntime until a name that needs them is used, so ``sparsekit --help``
is quick and a Ctrl-C during start-up is handled like any other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    DataError,
    ExportError,
    ModelFileError,
    OutputError,
    RecipeError,
    SparsekitError,
    TargetError,
    TrustError,
)

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Pruner": ".pruner",
    "Recipe": ".recipe",
    "benchmark": ".bench",
    "export_onnx": ".export",
    "finetune": ".train",
    "layer_report": ".stats",
    "load_model": ".modelio",
    "load_recipe": ".recipe",
    "save_model": ".modelio",
    "sparsity": ".stats",
}

if TYPE_CHECKING:
    from .bench import benchmark
    from .export import export_onnx
    from .modelio import load_model, save_model
    from .pruner import Pruner
    from .recipe import Recipe, load_recipe
    from .stats import layer_report, sparsity
    from .train import finetune


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DataError",
    "ExportError",
    "ModelFileError",
    "OutputError",
    "Pruner",
    "Recipe",
    "RecipeError",
    "SparsekitError",
    "TargetError",
    "TrustError",
    "__version__",
    "benchmark",
    "export_onnx",
    "finetune",
    "layer_report",
    "load_model",
    "load_recipe",
    "save_model",
    "sparsity",
]
