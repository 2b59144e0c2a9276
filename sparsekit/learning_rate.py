"""The learning rate each weight was last updated with, for proximal steps (``lr * lambda``).

A proximal-gradient step (Parikh & Boyd, 2014, "Proximal Algorithms", section 4.2) follows the gradient
step ``w - lr * grad`` with ``prox_{lr * lambda * R}``: for the L1 norm a soft-threshold by ``lr * lambda``.
So the shrink needs the learning rate the optimizer just used. :class:`LearningRates` learns it without
any change to the training loop: a global ``torch.optim`` step post-hook (``register_optimizer_step_post_hook``)
notes, after every ``optimizer.step()`` of an optimizer that holds the watched weights, the ``lr`` of the
param group holding each of them, as it was during that step (a per-step LR scheduler stepped between
``optimizer.step()`` and ``pruner.step()`` does not shift it).

Precedence: an ``lr`` given to ``Pruner.step(lr=...)`` for that step; else the rate noted at the last optimizer
step; else ``fallback`` (the recipe's ``finetune.optimizer.lr``), e.g. when a step is driven with no
``torch.optim`` optimizer (a dry run, or a hand-written update).

A step no optimizer took (``GradScaler`` skips ``optimizer.step()`` when the gradients overflowed) takes no
proximal step either (:meth:`LearningRates.took_step`): the shrink is the second half of the optimizer's update.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class _Observer:
    """The handle :func:`on_optimizer_steps` returns: ``remove()`` stops the calls (idempotent)."""

    __slots__ = ("__weakref__", "key")

    def __init__(self, key: int) -> None:
        self.key = key

    def remove(self) -> None:
        global _snapshot
        if _observers.pop(self.key, None) is not None:
            _snapshot = _snapshot_of_observers()


def _snapshot_of_observers() -> tuple[tuple[weakref.ref[Any], Callable[[Any, torch.optim.Optimizer], None]], ...]:
    """``tuple(_observers.values())``, taken from a copy: iterating the dict itself allocates (the tuple), which can
    run the cycle GC, whose collection of an owner removes its observer (weakref.finalize) from the dict under the
    iteration: "dictionary changed size during iteration" from a Pruner's constructor, seen after many Pruners
    (a test run, a sweep). ``dict(...)`` of a dict copies it without running Python code in between."""
    return tuple(dict(_observers).values())


# Every observer hangs off one torch hook, registered once: torch iterates its global hooks' OrderedDict while it
# calls them, and removing one of them there (an owner collected by the cycle GC, which any allocation in any hook
# can trigger, or an observer removing itself) made the user's optimizer.step() raise "OrderedDict mutated during
# iteration". Ours are called from a snapshot, so adding or removing one at any time is safe.
_observers: dict[int, tuple[weakref.ref[Any], Callable[[Any, torch.optim.Optimizer], None]]] = {}
_snapshot: tuple[tuple[weakref.ref[Any], Callable[[Any, torch.optim.Optimizer], None]], ...] = ()
_keys = itertools.count()
_torch_hook: Any = None


# Eager even inside a torch.compile'd optimizer step (PyTorch's "compile the optimizer" recipe), where torch calls the
# post-hooks in the code dynamo traces: traced, an observer's weakref attributes came back as the objects they refer
# to (pruner.step() then failed with "Linear.forward() missing 1 required positional argument").
@torch.compiler.disable
def _dispatch(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for ref, observe in _snapshot:
        me = ref()
        if me is not None:
            observe(me, optimizer)


def on_optimizer_steps(owner: Any, observe: Callable[[Any, torch.optim.Optimizer], None]) -> _Observer:
    """After every ``torch.optim`` optimizer step in the process, ``observe(owner, optimizer)``, for as long as
    ``owner`` lives (held weakly; dropped when it is collected). Returns a handle whose ``.remove()`` stops it; both
    are safe at any time, during an optimizer's step hooks too."""
    global _snapshot, _torch_hook
    if _torch_hook is None:
        _torch_hook = register_optimizer_step_post_hook(_dispatch)
    handle = _Observer(next(_keys))
    _observers[handle.key] = (weakref.ref(owner), observe)
    _snapshot = _snapshot_of_observers()
    weakref.finalize(owner, handle.remove)
    return handle


class LearningRates:
    """Watches ``torch.optim`` optimizer steps for the learning rate of ``weights`` (a list of parameters).

    ``fallback``: the rate used before any optimizer holding them stepped. :meth:`close` removes the hook
    (the Pruner calls it at finalize; it also goes when this object is garbage-collected)."""

    def __init__(self, weights: Sequence[torch.Tensor], fallback: float) -> None:
        self.fallback = float(fallback)
        self.override: float | None = None  # Pruner.step(lr=...) for the current step
        self._ids = [id(w) for w in weights]
        self._rates: list[float] | None = None  # per weight, at the last optimizer step
        self._uniform: float | None = None  # that rate when every weight has the same one
        self._group_rates: list[float] | None = None  # per param group, at the last optimizer step
        self._mapped: object = None  # the layout _rates was computed for
        self._layout: tuple[weakref.ref, int, list[int]] | None = None  # optimizer, its groups' count, group per weight
        # Optimizers holding none of the weights (a second model's, a GAN's other half), with their groups' count
        # when last seen: every optimizer's step calls the hook, and mapping theirs again each step cost ~10-20 us.
        self._foreign: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = weakref.WeakKeyDictionary()
        self.optimizer_steps = 0
        self._steps_checked = 0  # optimizer_steps when took_step() last asked
        self._handle = on_optimizer_steps(self, LearningRates._observe)

    def watch(self, weights: Sequence[torch.Tensor]) -> None:
        """Follow these parameters from now on (after a structural change replaced them)."""
        self._ids = [id(w) for w in weights]
        self._layout = None
        self._mapped = None
        self._foreign = weakref.WeakKeyDictionary()  # an optimizer rebuilt over the new ones may be one of them

    def _observe(self, optimizer: torch.optim.Optimizer) -> None:
        groups = optimizer.param_groups
        layout = self._layout
        if layout is None or layout[0]() is not optimizer or layout[1] != len(groups):
            if self._foreign.get(optimizer) == len(groups):
                return  # (a group added since may hold the weights: mapped again then)
            where: dict[int, int] = {}
            for g, group in enumerate(groups):
                for p in group["params"]:
                    where.setdefault(id(p), g)
            index = [where.get(i, -1) for i in self._ids]
            if all(g < 0 for g in index):
                self._foreign[optimizer] = len(groups)
                return  # an optimizer over other parameters (a second model, a GAN's other half)
            layout = self._layout = (weakref.ref(optimizer), len(groups), index)
        rates = [float(g["lr"]) for g in groups]  # float(): an lr may be a 0-dim tensor
        self.optimizer_steps += 1
        if rates == self._group_rates and layout is self._mapped:
            return  # the usual step: the same rates as last time
        self._group_rates, self._mapped = rates, layout
        known = self._rates
        # A weight no group of this optimizer holds keeps the rate it had (another optimizer may step it).
        self._rates = [
            rates[g] if g >= 0 else (known[k] if known is not None else self.fallback) for k, g in enumerate(layout[2])
        ]
        first = self._rates[0] if self._rates else None
        self._uniform = first if all(r == first for r in self._rates) else None

    def took_step(self) -> bool:
        """Whether the current ``pruner.step()`` follows an update of the watched weights: False only when an
        optimizer holding them has stepped before but not since the last call (``GradScaler`` skipped its step on
        inf/NaN gradients, as ``method: gradient`` and ``structured`` notice for their scores). True with an ``lr``
        given for the step, and before any optimizer stepped (a loop without ``torch.optim``)."""
        steps, checked = self.optimizer_steps, self._steps_checked
        self._steps_checked = steps
        return self.override is not None or steps == 0 or steps != checked

    def rates(self) -> list[float]:
        """The learning rate of each watched weight for the current step (see the module docstring)."""
        if self.override is not None:
            return [self.override] * len(self._ids)
        if self._rates is None:
            return [self.fallback] * len(self._ids)
        return self._rates

    def uniform(self) -> float | None:
        """The learning rate when every watched weight has the same one for the current step, else None."""
        if self.override is not None:
            return self.override
        if self._rates is None:
            return self.fallback
        return self._uniform

    def close(self) -> None:
        """Stop watching optimizer steps."""
        self._handle.remove()
