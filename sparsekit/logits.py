"""Which part of a model's output is the logits: models that return a tuple (auxiliary heads), a dict
(``{"logits": ...}``) or an object with fields (Hugging Face's ``ModelOutput``).

The recipe's ``model.output`` names it: an integer indexes a tuple or list, a string keys a mapping or
names an attribute. :func:`select_logits` picks it out of one output; :func:`attach` makes a model
return it from every call (a forward hook: parameter names, ``state_dict`` and the layers a recipe
matches stay the model's own), so fine-tuning, evaluation, sensitivity, export and its parity check
all see one ``[batch, classes]`` tensor. :func:`detach` restores the model's own outputs.

Example: a model returning ``(logits, aux)`` with ``model: {output: 0}``; one returning
``{"logits": ..., "features": ...}`` with ``model: {output: logits}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import DataError, option

__all__ = [
    "attach",
    "describe",
    "detach",
    "every_output",
    "mattering",
    "not_logits",
    "output_tensors",
    "recipe_output",
    "select_logits",
    "selected",
]

_MARK = "_sparsekit_output"  # set on the hook function: found again by detach, even in a deep copy


def describe(out: Any, depth: int = 0) -> str:
    """A short description of an output's structure, e.g. ``tuple(tensor [2, 10], tensor [2, 5])``."""
    if isinstance(out, torch.Tensor):
        return f"tensor {list(out.shape)}"
    if depth >= 2:
        return type(out).__name__
    if isinstance(out, Mapping):
        items = list(out.items())
        inner = ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in items[:6])
        return f"{type(out).__name__}({inner}{', …' if len(items) > 6 else ''})"
    if isinstance(out, Sequence) and not isinstance(out, str | bytes):
        inner = ", ".join(describe(v, depth + 1) for v in list(out)[:6])
        return f"{type(out).__name__}({inner}{', …' if len(out) > 6 else ''})"
    fields = [(k, v) for k, v in getattr(out, "__dict__", {}).items() if not k.startswith("_")]
    if fields:  # a dataclass-like output object
        inner = ", ".join(f"{k}: {describe(v, depth + 1)}" for k, v in fields[:6])
        return f"{type(out).__name__}({inner}{', …' if len(fields) > 6 else ''})"
    return type(out).__name__


def _fix(out: Any, caller: bool = False) -> str:
    """What to write in the recipe for ``out``: ``logits`` when a part has that name, else the choices; ``caller``:
    the caller's ``logits`` option rather than the recipe's ``model.output``."""
    if isinstance(out, Mapping):
        names = [str(k) for k, v in out.items() if isinstance(v, torch.Tensor)]
    elif isinstance(out, Sequence) and not isinstance(out, str | bytes):
        names = [str(i) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    else:
        names = [k for k, v in getattr(out, "__dict__", {}).items() if isinstance(v, torch.Tensor)]
    if "logits" in names or len(names) == 1:
        name = "logits" if "logits" in names else names[0]
        return option("logits", name) if caller else f"model.output: {name}"
    key = option("logits") if caller else "model.output"
    return f"{key} to one of {', '.join(names[:8])}" if names else f"{key} to the part that is the logits"


def _did_you_mean(out: Any, output: int | str) -> str:
    import difflib

    names = [str(k) for k in out] if isinstance(out, Mapping) else list(getattr(out, "__dict__", {}))
    close = difflib.get_close_matches(str(output), names, n=1) if isinstance(output, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def not_logits(shape: Sequence[int]) -> str:
    """What to do about a model output of ``shape`` that is not ``[batch, classes]``: the remedy the error
    names. The built-in loop trains and scores classification only (README: what the built-in loop trains),
    so a per-pixel or per-step output (a U-Net, a sequence tagger) is pruned from the user's own loop."""
    if len(shape) > 2:
        return (
            f"a per-position output ({len(shape) - 2} dimension(s) after the classes, as a segmentation U-Net or "
            "a sequence tagger returns) is not what the built-in loop trains: pool it to [batch, classes] in the "
            "model (e.g. .mean over those dimensions) if it is a classifier, or drive sparsekit.Pruner from your "
            "own training loop with your own loss"
        )
    return (
        "return the class scores as [batch, classes] from the model (a single score per sample is a regression "
        "or single-logit head: drive sparsekit.Pruner from your own training loop)"
    )


def select_logits(out: Any, output: int | str | None, where: str = "the model", caller: bool = False) -> torch.Tensor:
    """The logits tensor in ``out`` (one model output) as ``output`` names it (None: ``out`` must be a
    tensor itself). Raises :class:`~sparsekit.errors.DataError` naming the output's structure and the
    recipe key to set (``caller``: the caller's ``logits`` option, see :func:`sparsekit.errors.option`) when
    ``output`` is missing, does not exist in ``out`` or does not name a tensor."""
    key = option("logits") if caller else "model.output"
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        fix = _fix(out, caller)
        place = "" if caller else " in the recipe"
        if not caller and fix.startswith("model.output: "):  # and for one run, the override that sets it
            place += f" (or for this run {option('set', 'model.output=' + fix.removeprefix('model.output: '))})"
        raise DataError(
            f"{where} returns {describe(out)}, not one tensor of logits: set {fix}{place} "
            "(an index for a tuple, a key or attribute name otherwise) to say which part is the logits"
        )
    try:
        indexable = isinstance(output, int) and isinstance(out, Sequence) and not isinstance(out, str | bytes)
        if isinstance(out, Mapping) or indexable:
            picked = out[output]
        elif isinstance(output, str) and not isinstance(out, torch.Tensor):
            picked = getattr(out, output)
        else:
            raise LookupError
    except (LookupError, AttributeError, TypeError):
        raise DataError(
            f"{key}: {output!r} is not a part of the output: {where} returns {describe(out)}; "
            f"set {_fix(out, caller)}{_did_you_mean(out, output)}"
        ) from None
    if not isinstance(picked, torch.Tensor):
        raise DataError(f"{key}: {output!r} is a {describe(picked)} in {describe(out)}; it must be a tensor")
    return picked


def attach(model: nn.Module, output: int | str | None) -> nn.Module:
    """Make ``model`` return ``select_logits(its output, output)`` from every call (in place; returns
    it). ``output=None`` removes an earlier selection. Attaching again replaces the selection. A deep
    copy of the model keeps the selection."""
    detach(model)
    if output is None:
        return model

    def hook(module: nn.Module, args: Any, out: Any) -> torch.Tensor:
        return select_logits(out, output)

    setattr(hook, _MARK, output)
    model.register_forward_hook(hook)
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove a selection :func:`attach` made (a no-op when there is none); returns ``model``."""
    for key, fn in list(model._forward_hooks.items()):
        if hasattr(fn, _MARK):
            del model._forward_hooks[key]
    return model


@contextlib.contextmanager
def every_output(model: nn.Module) -> Iterator[None]:
    """Within the block, a model with a selection (:func:`attach`) returns a tuple: the selected logits first, then
    every other tensor of its own output (in a tuple, list, dict or dataclass), the selection keeping its place
    among the model's forward hooks; afterwards it returns the logits alone again. For tracing: torch-pruning must
    see every layer that consumes a removed channel (an auxiliary head is still computed, so it must shrink with
    its input), while only the logits are the model's output (:func:`mattering`). A model without a selection is
    left as it is."""
    saved = {key: fn for key, fn in model._forward_hooks.items() if hasattr(fn, _MARK)}
    for key, fn in saved.items():
        model._forward_hooks[key] = _every_tensor_hook(getattr(fn, _MARK))
    try:
        yield
    finally:
        for key, fn in saved.items():
            if key in model._forward_hooks:
                model._forward_hooks[key] = fn


def _every_tensor_hook(output: int | str) -> Any:
    def hook(module: nn.Module, args: Any, out: Any) -> tuple[torch.Tensor, ...]:
        logits = select_logits(out, output)
        return (logits, *(t for t in output_tensors(out) if t is not logits))

    setattr(hook, _MARK, output)
    return hook


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, or those inside a tuple, list, dict or dataclass (nested)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        items = list(out.values())
    elif isinstance(out, list | tuple):
        items = list(out)
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [getattr(out, f.name, None) for f in dataclasses.fields(out)]
    else:
        return []
    return [t for item in items for t in output_tensors(item)]


def mattering(model: nn.Module, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Of the tensors a traced forward pass returned (inside :func:`every_output`), those that are the model's output:
    the logits alone when ``model.output`` selects them (the first), else every one."""
    return tensors[:1] if selected(model) is not None else tensors


@contextlib.contextmanager
def recipe_output(model: nn.Module, output: int | str | None) -> Iterator[None]:
    """Within the block, ``model`` returns the ``output`` part a recipe's ``model.output`` names (:func:`attach`),
    unless it already has a selection or ``output`` is None; afterwards it is as it was. For the calls that take a
    recipe but must not change the model (the sensitivity analysis, the allocation): they evaluated a dict / tuple
    model's whole output and asked for ``model.output`` while the recipe they were given already set it."""
    if output is None or selected(model) is not None:
        yield
        return
    attach(model, output)
    try:
        yield
    finally:
        detach(model)


def selected(model: nn.Module) -> int | str | None:
    """The ``output`` :func:`attach` set on ``model`` (None when its output is used as it is)."""
    return next((getattr(fn, _MARK) for fn in model._forward_hooks.values() if hasattr(fn, _MARK)), None)
