"""The contract between the :class:`~sparsekit.pruner.Pruner` and a pruning method.

Three types, re-exported by :mod:`sparsekit.methods`:

- :class:`Method`: what a method must declare and do (a ``Protocol``; the classes do not inherit it).
- :class:`Setup`: everything a method is told besides its recipe entry and the model. A method never
  receives the Pruner.
- :class:`Changes`: what :meth:`Method.after_step` / :meth:`Method.finalize` did besides editing weight
  values and masks in place. Only the Pruner acts on it (its ``pruning_history`` and
  ``structure_changed``).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..layers import computed_left_out


@dataclass(frozen=True)
class Setup:
    """What a method is told when it is built (besides its recipe entry and the model).

    ``index``: position of the entry in ``recipe.pruning``; messages name it ``pruning[index]``.
    ``steps_per_epoch``: optimizer steps per epoch, to turn the recipe's epochs into steps.
    ``input_shape``: batch-first shape of one model input (e.g. ``[1, 1, 28, 28]``), or None when
    unknown; methods that trace the model need it.
    ``scorer``: a Python-API override of the entry's criterion (``Pruner(..., scorers={index: ...})``):
    an unstructured scorer (:mod:`sparsekit.methods.scorers`) or a torch-pruning importance. None
    when the recipe's own criterion applies. Methods that take no scorer refuse one (ValueError).
    ``shape_later``: ``input_shape`` is None, and the Pruner builds the method again once the first batch tells it
    (so what the shape would have found is not yet missing: no warning about it).
    """

    index: int
    steps_per_epoch: int
    input_shape: list[int] | None = None
    scorer: Callable[..., Any] | None = None
    shape_later: bool = False

    @property
    def where(self) -> str:
        """How messages name the recipe entry: ``pruning[index]``."""
        return f"pruning[{self.index}]"

    def refuse_scorer(self, method: str) -> None:
        """Raise ValueError when a scorer was given to a method (``method``) that ranks nothing."""
        if self.scorer is not None:
            raise ValueError(
                f"scorers[{self.index}]: {self.where} is method {method!r}, which ranks no weights; scorers "
                "apply to magnitude, gradient and structured entries"
            )


@dataclass(frozen=True)
class Changes:
    """What a hook did to the model beyond weight values and masks.

    ``history``: channel removals, as JSON-able ``[module_name, is_out_channels, [idx, ...]]`` entries
    (torch-pruning's history format), in the order they happened; the Pruner appends them to its
    ``pruning_history`` so a checkpoint can be rebuilt by replaying them on a dense model.
    ``structure_changed``: parameters were replaced by new (smaller) objects, so an optimizer built over
    the old ones must be rebuilt (the Pruner sets ``structure_changed``).
    """

    history: tuple[list[Any], ...] = ()
    structure_changed: bool = False


UNCHANGED = Changes()
"""What a hook returns when it only edited weight values or masks (or did nothing)."""


class Method(Protocol):
    """A pruning method: one entry of a recipe's ``pruning`` list, bound to a model.

    A class implementing it is built as ``cls(spec, model, setup)`` (``spec``: the validated recipe
    entry, ``model``: the unwrapped ``nn.Module``, ``setup``: a :class:`Setup`) and registered in
    :data:`sparsekit.methods.REGISTRY` under the name its recipe entries use. Building must not change
    the model's weights or shapes (masks may be created, all ones); the first change happens in
    :meth:`start`, for a schedule that begins at step 0, or in :meth:`after_step`.

    Methods never receive the Pruner and never change its state: they report what they did through
    :class:`Changes`. They change the model only in place (weights, masks, parameters replaced by
    torch-pruning), except :meth:`finalize`, which may return a new model object.

    Every attribute below is declared by every method (the Pruner reads them directly).
    """

    name: str
    """The recipe's ``method:`` value (and the REGISTRY key)."""

    layers: dict[str, nn.Module]
    """The layers this entry acts on, by ``named_modules()`` name, in model order. For a structural
    method: the layers whose output channels it may remove."""

    masks_weights: bool
    """True when the method owns an unstructured mask over its layers' weights (magnitude, gradient).
    Two such methods may not share a layer: the Pruner refuses the recipe (TargetError)."""

    zeroes_weights: bool
    """True when the method leaves exact zeros that masks keep, in its own mask or AND-ed into the shared one
    (magnitude, gradient, l1). Such a method must select every module sharing a tied weight or none: zeroing a
    weight also zeroes it for the modules that share it. Optional for a plug-in: when a method does not
    declare it, the Pruner takes :attr:`masks_weights`."""

    needs_grad: bool
    """True when :meth:`after_step` reads ``weight.grad`` from the user's ``loss.backward()``; with no
    fine-tuning, ``sparsekit.finetune``'s caller calibrates on a few batches first."""

    structural: bool
    """True when :meth:`after_step` may replace parameters with differently shaped ones (channel
    removal during training). The Pruner then tracks parameter names for ``update_optimizer``."""

    touched: list[str]
    """Layers whose weight shapes :meth:`after_step` may change: :attr:`layers` and the layers consuming
    their outputs. Empty for a method that is not :attr:`structural` (shape changes at finalize do not
    count: masks are baked by then). No masking method may own a touched layer (TargetError)."""

    def start(self) -> None:
        """Called once by the Pruner after every method was built: act on step 0 if the schedule says
        so (e.g. one-shot magnitude pruning). Must not replace parameters."""
        ...

    def penalty(self) -> torch.Tensor | float:
        """A differentiable term the user adds to the loss before ``backward()`` (a scalar tensor on the
        model's device), or ``0.0`` when the method adds none at this step. Must not change the model."""
        ...

    # Optional: ``add_penalty_grad(self) -> bool``: add the gradient of :meth:`penalty` to each weight's ``.grad``
    # in place (without autograd) and return True, or return False to have the Pruner's ``regularize()`` take
    # :meth:`penalty` through autograd. Not part of the Protocol, so a method need not define it. A method that has it
    # may also define ``adds_penalty(self) -> bool``: whether it adds anything at the coming step (add_penalty_grad's
    # True also means "nothing to add"); the Pruner's check of regularize() calls per optimizer step counts on it.

    def after_step(self, step: int) -> Changes:
        """Called after every ``optimizer.step()``; ``step`` counts them from 1. May read ``.grad``
        (:attr:`needs_grad`), edit weights and masks in place, and (:attr:`structural` methods only)
        remove channels. Need not apply masks (the Pruner applies all masks once after every method
        ran); a hook that leaves a layer's weights masked anyway may say so with
        :func:`sparsekit.masks.mark_applied`, and the Pruner skips that layer. Must not touch the optimizer.
        Returns what changed beyond weights and masks.

        A :attr:`structural` method may also define ``due(step) -> bool``: whether ``after_step(step)`` may
        replace parameters. The Pruner then notes the parameters' names (for ``update_optimizer``) only at
        those steps, instead of at every step."""
        ...

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Called once at the end, in recipe order, with masks applied (and already baked when an earlier
        method removed units). Completes the method (e.g. remaining removal events, removal of dead
        units) and returns the model (possibly a new object) and what changed. Raises TargetError when
        the method could not do its job (e.g. gradient scores never arrived)."""
        ...

    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        """Expected fraction pruned (weights, or channels for structured) at the end of each epoch, for
        ``sparsekit validate`` and reports; empty when not known in advance (l1, max_norm). Pure."""
        ...

    def report(self) -> dict[str, Any]:
        """JSON-able facts for report.json's ``methods`` row (merged into ``{"method", "layers"}``); may be
        empty. Pure: called after finalize."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume this method bit-identically (tensors and plain data;
        masks and the structural history are saved by the Pruner)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on a freshly built method, after the Pruner replayed the structural
        history and restored masks."""
        ...


def outside_sparsekit() -> int:
    """The ``stacklevel`` of the first caller outside this package, for a warning the caller's own line should carry
    (the frames between vary: Python 3.12 inlines the Pruner's list comprehension, 3.10 gives it a frame)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def warn_computed(model: nn.Module, spec: Any, chosen: dict[str, nn.Module], where: str, method: str) -> None:
    """Warn of each layer ``spec.layers`` would select but for a weight computed in the forward pass (weight_norm,
    spectral_norm): a masking method cannot mask it, and leaving it out silently let a user believe the whole model
    was pruned (only ``validate`` listed it). The remedy names the call that gives the layer its parameter back."""
    for name, _, how in computed_left_out(model, spec.layers, chosen):
        warnings.warn(
            f"{where} ({method}): {name!r} is left out, not pruned: its weight is computed in the forward pass "
            f"({how[0]}); to prune it, remove that before building the Pruner ({how[1]}); to leave it out without "
            f"this warning, add it to {where}.layers.exclude",
            stacklevel=outside_sparsekit(),
        )


def refuse_frozen(layers: dict[str, nn.Module], where: str, what: str) -> None:
    """TargetError naming the layers of ``layers`` whose weight is frozen (``requires_grad=False``), which ``what``
    (e.g. "the max-norm projection") would change all the same, though no optimizer steps them: not what freezing
    a layer means. Nothing when none is frozen."""
    frozen = [n for n, m in layers.items() if not cast(torch.Tensor, m.weight).requires_grad]
    if not frozen:
        return
    shown = ", ".join(repr(n) for n in frozen[:3]) + (f" and {len(frozen) - 3} more" if len(frozen) > 3 else "")
    one = len(frozen) == 1
    from ..errors import TargetError

    raise TargetError(
        f"{where}.layers: {shown} {'is' if one else 'are'} frozen (requires_grad=False), which {what} would change "
        f"all the same; leave {'it' if one else 'them'} out with layers.exclude, or unfreeze {'it' if one else 'them'}"
    )
