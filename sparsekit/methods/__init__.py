"""Pruning methods: one small module per family, all built from a recipe entry by :func:`build`.

The contract between a method and the :class:`~sparsekit.pruner.Pruner` is :class:`Method` (see
:mod:`sparsekit.methods.base`): the attributes every method declares, and the hooks the Pruner calls
(``start``, ``penalty``, ``after_step``, ``finalize``, ``targets``, ``report``, ``state_dict``,
``load_state_dict``). Methods never see the Pruner: ``after_step`` and ``finalize`` return
:class:`Changes` and the Pruner alone updates its ``pruning_history`` and ``structure_changed``.

:data:`REGISTRY` maps each recipe ``method:`` name to its class. The recipe schema
(:mod:`sparsekit.recipe`) names the same methods; ``tests/test_methods_registry.py`` checks that the
two agree. Adding a method is one module, one entry here and one spec class in the recipe's
``MethodSpec`` union.

Unstructured criteria are scorers (:mod:`sparsekit.methods.scorers`); from Python, a scorer of your own
(or, for ``structured``, a torch-pruning importance) replaces an entry's criterion:
``Pruner(model, recipe, steps_per_epoch, scorers={0: my_scorer})``.

Importing this package does not import torch-pruning; building a structured method does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .base import UNCHANGED, Changes, Method, Setup
from .gradient import Gradient
from .l1 import L1
from .magnitude import Magnitude
from .max_norm import MaxNorm
from .structured import Structured

MethodClass = Callable[[Any, nn.Module, Setup], Method]
"""How a method is built: ``cls(spec, model, setup)``."""

REGISTRY: dict[str, MethodClass] = {
    "magnitude": Magnitude,
    "gradient": Gradient,
    "l1": L1,
    "max_norm": MaxNorm,
    "structured": Structured,
}
"""Recipe ``method:`` name -> method class, in the order the README and the recipe schema list them."""

METHOD_NAMES = tuple(REGISTRY)

__all__ = ["METHOD_NAMES", "REGISTRY", "UNCHANGED", "Changes", "Method", "MethodClass", "Setup", "build"]


def build(spec: Any, model: nn.Module, setup: Setup) -> Method:
    """Build the method for ``spec`` (``pruning[setup.index]`` of the recipe) bound to ``model``.

    Raises RecipeError for a ``spec.method`` not in :data:`REGISTRY` (only possible for a spec not
    validated by the recipe schema), and whatever the method's constructor raises (TargetError for
    layer selections that do not fit the model, RecipeError for options that do not fit it,
    TypeError / ValueError for a bad ``setup.scorer``)."""
    from ..errors import RecipeError

    cls = REGISTRY.get(spec.method)
    if cls is None:
        raise RecipeError(
            f"{setup.where}.method: unknown method {spec.method!r}; use one of {', '.join(map(repr, REGISTRY))}"
        )
    return cls(spec, model, setup)
