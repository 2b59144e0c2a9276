"""Which layers a method touches: shell-glob include/exclude over ``named_modules()`` and module type."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from .errors import TargetError
from .recipe import LAYER_TYPES, LayerSelect


def prunable_layers(model: nn.Module, types: tuple[str, ...] | list[str] = LAYER_TYPES) -> dict[str, nn.Module]:
    """Named Linear/Conv modules (those with a weight sparsekit can mask), in model order."""
    return {
        name: m
        for name, m in model.named_modules()
        if type(m).__name__ in types
        and isinstance(getattr(m, "weight", None), nn.Parameter)
        and isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
    }


def _listing(model: nn.Module) -> str:
    layers = prunable_layers(model)
    names = ", ".join(f"{n} ({type(m).__name__})" for n, m in layers.items())
    return f"prunable layers are: {names or 'none'}"


def check_names(model: nn.Module, names: list[str], where: str) -> None:
    """Every pattern in ``names`` must match at least one module; TargetError naming ``where`` otherwise."""
    all_names = [n for n, _ in model.named_modules() if n]
    for pattern in names:
        if not any(fnmatchcase(n, pattern) for n in all_names):
            raise TargetError(f"{where}: {pattern!r} matches no layer; {_listing(model)}")


def select_layers(model: nn.Module, spec: LayerSelect, where: str = "layers") -> dict[str, nn.Module]:
    """The prunable layers a recipe's ``layers:`` selects, by name, in model order. Raises TargetError
    naming ``where`` when an include or exclude pattern matches nothing, or nothing is left."""
    candidates = prunable_layers(model, tuple(spec.types))
    everything = prunable_layers(model)
    for pattern in spec.include:
        if not any(fnmatchcase(n, pattern) for n in candidates):
            raise TargetError(f"{where}.include: {pattern!r} matches no layer of types {spec.types}; {_listing(model)}")
    for pattern in spec.exclude:
        if not any(fnmatchcase(n, pattern) for n in everything):
            raise TargetError(f"{where}.exclude: {pattern!r} matches no layer; {_listing(model)}")
    chosen = {
        n: m
        for n, m in candidates.items()
        if any(fnmatchcase(n, p) for p in spec.include) and not any(fnmatchcase(n, p) for p in spec.exclude)
    }
    if not chosen:
        raise TargetError(f"{where}: include/exclude leave no layer to prune; {_listing(model)}")
    return chosen
