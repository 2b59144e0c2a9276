"""sparsekit: prune, fine-tune, export and benchmark PyTorch FC/CNN models from a YAML recipe."""

from __future__ import annotations

__version__ = "0.1.0"

from .bench import benchmark
from .errors import DataError, ExportError, ModelFileError, RecipeError, SparsekitError, TargetError
from .export import export_onnx
from .modelio import load_model, save_model
from .pruner import Pruner
from .recipe import Recipe, load_recipe
from .stats import layer_report, sparsity
from .train import finetune

__all__ = [
    "DataError",
    "ExportError",
    "ModelFileError",
    "Pruner",
    "Recipe",
    "RecipeError",
    "SparsekitError",
    "TargetError",
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
