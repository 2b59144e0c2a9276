"""Whether a training loop calls ``pruner.step()`` where it belongs: once per optimizer step, after it.

Two mistakes train silently wrong, so the Pruner watches its first :data:`WINDOW` steps for them:

- ``pruner.step()`` *before* ``optimizer.step()``: the masks are applied, then the optimizer moves the zeroed weights
  again, so the model trains dense until ``finalize()`` zeroes them at once (and ``sparsity()`` reads ~0 meanwhile);
- ``pruner.step()`` *twice* per optimizer step (once per micro-batch when accumulating gradients, say): each call
  advances the schedules a step, so they run that many times faster than the recipe says;
- ``pruner.step()`` *once per several* optimizer steps (once per epoch, say): between calls the optimizer moves the
  pruned weights off zero, and the schedules, which count calls, run that many times slower than ``steps_per_epoch``
  (``len(train_loader)``) says. Counted on the steps of the optimizer holding the watched weight (another model's
  optimizer stepping too is no mistake), from the second call on (a dense warm-up may come before the first).

It learns when torch optimizers step from a global step post-hook (``register_optimizer_step_post_hook``), and
whether one stepped on the gradient it sees now: at each optimizer step it notes the identity and version counter of
one pruned weight's ``.grad``; a ``pruner.step()`` that finds a non-zero gradient newer than the last optimizer step
came before that optimizer step, and one that finds no new optimizer step is a second call for the same step, unless
its new gradient holds inf or NaN: a step ``GradScaler`` skipped on an overflow, which is neither mistake. (Calling it
once per micro-batch while accumulating gradients brings a new, finite gradient and no optimizer step.) A loop with
no torch optimizer (calibration, an update of one's own) is never judged, and a warning needs half the window to agree.
After the window the hook is removed: no cost for the rest of training. A run shorter than the window is judged at
``finalize()`` on the steps it took.

``pruner.regularize()`` (the penalty's gradient added to ``.grad``) is watched over the same steps: called more than
once per optimizer step (after every micro-batch's backward when accumulating gradients, say), each call adds the
gradient again to the one ``.grad`` the micro-batches accumulate into, so the penalty acts that many times as strong.
A call that finds the watched weight's ``.grad`` another tensor than the previous call left (``zero_grad()`` in
between, as a loop of two optimizers does before each backward) starts the count afresh. So is using both ways of
applying the penalty: ``pruner.penalty()`` added to the loss (its gradient seen flowing in ``backward``) and
``pruner.regularize()`` before the same optimizer step add the penalty's gradient twice.
A ``regularize()`` whose gradient ``zero_grad()`` resets before the holder's next optimizer step (called after
``optimizer.step()``, or before ``optimizer.zero_grad()``) adds nothing the optimizer sees, and the penalty never acts:
warned too (a step ``GradScaler`` skips on an overflow excepted); the gradient it left after ``optimizer.step()`` is
then not taken for a ``pruner.step()`` before that step.

A third mistake trains silently dense: the Pruner built on another model object than the one the optimizer trains (a
copy, or a model built again after the Pruner, say to load a checkpoint into). Optimizers step, yet none of them holds
any pruned weight that requires grad: that is warned too, outside ``torch.distributed`` (DeepSpeed's and FSDP's
optimizers hold their own flat copies of the weights).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .learning_rate import on_optimizer_steps
from .masks import weight_of

WINDOW = 8  # pruner.step() calls judged (those after the first optimizer step)
ENOUGH = WINDOW // 2  # ... of which this many must show the same mistake for a warning


class StepOrderCheck:
    """Watches the optimizer steps around a Pruner's first :data:`WINDOW` steps; :meth:`check` at each
    ``pruner.step()``. ``layers``: the pruned modules (name, module) whose weights an optimizer may train; the
    first is watched until an optimizer is seen holding one of them, which is then watched."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        # An optimizer over part of the model (only the head fine-tuned) trains some pruned layers, not the first:
        # each is a candidate, so that optimizer is not taken for one training another model object.
        self._candidates = [(name, weakref.ref(layer)) for name, layer in layers]
        self._name, self._layer = self._candidates[0]
        self.optimizer_steps = 0
        self.holding_steps = 0  # optimizer steps by an optimizer holding the watched weight
        self._holder: weakref.ref[Any] | None = None  # that optimizer, once seen
        self._others: weakref.WeakSet[Any] = weakref.WeakSet()  # optimizers seen not to hold it
        self._held_seen = 0  # holding_steps at the previous check
        self.seldom = 0  # checks after more than one of the holder's steps since the previous check
        self._gap = 0  # the most of those steps seen between two checks
        self._steps_seen = 0  # optimizer steps at the previous check
        # The weight's grad at the last optimizer step and its version: a weak reference, since zero_grad() frees it
        # and a new one may reuse its id
        self._grad_at_step: tuple[weakref.ref[torch.Tensor], int] | None = None
        self.checked = self.before = self.twice = 0
        # pruner.regularize() calls since the holder's last optimizer step, the .grad the last one added to (weakly:
        # zero_grad() frees it), and the holder's steps that followed more than one call (the most of them)
        self._regularized = 0
        self._regularized_grad: weakref.ref[torch.Tensor] | None = None
        self.regularized_again = self._most_regularized = 0
        # penalty() terms whose gradient flowed in a backward since the holder's last optimizer step, and the holder's
        # steps before which regularize() ran as well (the penalty applied twice)
        self._penalty_backwards = 0
        self.penalty_and_regularized = 0
        self._both_this_step = False
        # The .grad the last regularize() added to and its version then, until the holder's next optimizer step; the
        # holder's steps that found another .grad (the addition reset by zero_grad() before any step used it)
        self._reg_pending: tuple[weakref.ref[torch.Tensor], int] | None = None
        self.regularized_lost = 0
        # Whether that call found the gradient the last optimizer step saw, unchanged (regularize() after the step)
        self._reg_after_step = False
        self._handle = on_optimizer_steps(self, StepOrderCheck._observe)

    def _grad(self) -> torch.Tensor | None:
        layer = self._layer()
        return None if layer is None else weight_of(layer).grad

    def _observe(self, optimizer: Any) -> None:
        self.optimizer_steps += 1
        holding = self.holding_steps
        holder = self._holder() if self._holder is not None else None
        if holder is optimizer:
            self.holding_steps += 1
        elif holder is None and optimizer not in self._others:
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}  # once per optimizer
            for name, ref in self._candidates:
                layer = ref()
                if layer is not None and id(weight_of(layer)) in held:
                    self._holder = weakref.ref(optimizer)
                    self._name, self._layer = name, ref  # its gradient is the one this optimizer steps on
                    self.holding_steps += 1
                    break
            else:
                self._others.add(optimizer)
        if self.holding_steps != holding:  # a step of the watched weight: the regularize() calls before it are judged
            if self._reg_pending is not None and self._reg_pending[0]() is not self._grad():
                self.regularized_lost += 1
            self._reg_pending = None
            if self._regularized > 1:
                self.regularized_again += 1
                self._most_regularized = max(self._most_regularized, self._regularized)
            self._regularized = 0
            self._penalty_backwards = 0
            self._both_this_step = False
        grad = self._grad()
        self._grad_at_step = None if grad is None else (weakref.ref(grad), grad._version)

    def unchanged_since_step(self) -> bool:
        """Whether the weight's gradient is the one the last optimizer step saw, unchanged since (read by
        ``pruner.regularize()`` before it adds to it)."""
        grad, seen = self._grad(), self._grad_at_step
        return grad is not None and seen is not None and seen[0]() is grad and seen[1] == grad._version

    def regularized(self, after_step: bool) -> None:
        """Note a ``pruner.regularize()`` call (after it added to the gradients); ``after_step``: what
        :meth:`unchanged_since_step` said before it added."""
        grad = self._grad()
        last = self._regularized_grad
        if grad is None or last is None or last() is not grad:
            self._regularized = 0  # the gradient was reset since the previous call: what that call added is gone
        self._regularized += 1
        self._regularized_grad = None if grad is None else weakref.ref(grad)
        if self._penalty_backwards and not self._both_this_step:
            self._both_this_step = True
            self.penalty_and_regularized += 1
        self._reg_pending = None if grad is None else (weakref.ref(grad), grad._version)
        self._reg_after_step = after_step

    def _regularized_since_step(self) -> bool:
        """Whether the only change to the weight's gradient since the last optimizer step is a regularize() call's
        (regularize() after optimizer.step(): not pruner.step() before it). A gradient zeroed in place
        (``zero_grad(set_to_none=False)``) is the step's tensor too: the step must have seen it as regularize() found
        it, or a backward since makes ``pruner.step()`` one before the optimizer's."""
        grad, pending = self._grad(), self._reg_pending
        return (
            self._reg_after_step
            and grad is not None
            and pending is not None
            and pending[0]() is grad
            and pending[1] == grad._version
        )

    def watch_penalty(self, term: torch.Tensor) -> None:
        """Note when ``backward`` reaches a ``pruner.penalty()`` term (added to the loss, not only logged)."""
        if term.requires_grad:
            term.register_hook(self._penalty_reached)

    def _penalty_reached(self, grad: torch.Tensor) -> None:
        self._penalty_backwards += 1

    def _newer_grad(self) -> bool:
        """Whether the weight holds a non-zero gradient the last optimizer step did not see."""
        grad = self._grad()
        if grad is None:
            return False
        seen = self._grad_at_step
        if seen is not None and seen[0]() is grad and seen[1] == grad._version:
            return False
        # zero_grad() between optimizer.step() and pruner.step() also makes a newer gradient: an all-zero one
        return bool(grad.any())

    def _overflowed(self) -> bool:
        """Whether the weight's gradient holds inf or NaN (a step GradScaler skips)."""
        grad = self._grad()
        return grad is not None and not bool(torch.isfinite(grad).all())

    def check(self) -> bool:
        """Judge this ``pruner.step()`` call (warning once the window is full and a mistake held in most of it);
        returns False when the check is done and can be dropped."""
        if self.optimizer_steps == 0:
            return True  # no torch optimizer has stepped (yet): nothing to judge by
        self.checked += 1
        stepped = self.optimizer_steps != self._steps_seen
        self._steps_seen = self.optimizer_steps
        held, self._held_seen = self.holding_steps - self._held_seen, self.holding_steps
        if held > 1 and self.checked > 1:
            self.seldom += 1
            self._gap = max(self._gap, held)
        newer = self._newer_grad() and not self._regularized_since_step()
        if not held and self._overflowed():
            self._reg_pending = None  # GradScaler skipped the step: what regularize() added was not for one
        if stepped and newer:  # an optimizer step came since the last call, but not since this gradient
            self.before += 1
        elif not stepped and not (newer and self._overflowed()):
            # no optimizer step since the last call: a second call for the same step (a micro-batch's, when the new
            # gradient is finite), unless GradScaler skipped the step on an overflow (an inf or NaN gradient)
            self.twice += 1
        if self.checked < WINDOW:
            return True
        self.close()
        self.judge(stacklevel=4)
        return False

    def judge(self, stacklevel: int) -> None:
        """Warn of the mistake most of the calls judged so far show (called when the window is full, and by
        ``finalize()`` for a run that ended before)."""
        if self.optimizer_steps >= ENOUGH and not self.holding_steps and not _distributed():
            n = len(self._candidates)
            where = f"{self._name!r}" if n == 1 else f"any of the {n} pruned layers ({self._name!r}, ...)"
            warnings.warn(
                f"optimizers stepped {self.optimizer_steps} times, but none holds the weight of {where}: the Pruner "
                "is pruning a model no optimizer trains (built on a copy, or before the model was built again?), "
                "and the model you train stays dense; build the Pruner on the model object the optimizer trains "
                "(set requires_grad=False on pruned layers you mean to leave untrained)",
                stacklevel=stacklevel,
            )
        elif self.before >= ENOUGH:
            warnings.warn(
                f"pruner.step() ran before optimizer.step() in {self.before} of its first {self.checked} steps: call "
                "it after optimizer.step(); otherwise the optimizer moves the weights it has just zeroed, and the "
                "model trains dense until finalize() zeroes them all at once",
                stacklevel=stacklevel,
            )
        elif self.twice >= ENOUGH:
            warnings.warn(
                f"pruner.step() ran {self.twice} times in its first {self.checked} steps with no optimizer step since "
                "the previous call: call it once per optimizer step (when accumulating gradients, after the "
                "optimizer.step() that ends the accumulation); each call advances the schedules one step",
                stacklevel=stacklevel,
            )
        # The first call has no gap to measure (a dense warm-up may precede it), so at most checked - 1 calls can show
        # one: a full window needs ENOUGH of them, a short run judged at finalize all of its measured ones (at least 2).
        elif self.seldom >= min(ENOUGH, max(2, self.checked - 1)):
            warnings.warn(
                f"pruner.step() ran after up to {self._gap} optimizer steps at a time ({self.seldom} of its first "
                f"{self.checked} calls came after more than one): call it after every optimizer step; between calls "
                "the optimizer moves the pruned weights off zero, and the schedules count calls (steps_per_epoch: "
                "optimizer steps per epoch, len(train_loader))",
                stacklevel=stacklevel,
            )
        # Apart from the mistakes above (a loop may call both once per micro-batch): half the steps judged must show it.
        half = min(ENOUGH, max(1, (self.checked + 1) // 2))
        if self.regularized_again >= half:
            warnings.warn(
                f"pruner.regularize() ran up to {self._most_regularized} times per optimizer step (before "
                f"{self.regularized_again} of the first {self.holding_steps} optimizer steps): each call adds the "
                "penalty's gradient to .grad again, so the L1 strength acts that many times over; call it once per "
                "optimizer step (when accumulating gradients, after the last micro-batch's backward, just before "
                "optimizer.step())",
                stacklevel=stacklevel,
            )
        if self.regularized_lost >= half:
            warnings.warn(
                f"pruner.regularize() added the penalty's gradient to a .grad that optimizer.zero_grad() reset before "
                f"any optimizer step used it ({self.regularized_lost} of the first {self.holding_steps} optimizer "
                "steps), so the L1 penalty does not act: call it after loss.backward() and before optimizer.step(), "
                "not after optimizer.step() or before optimizer.zero_grad()",
                stacklevel=stacklevel,
            )
        if self.penalty_and_regularized >= half:
            warnings.warn(
                f"pruner.penalty() was added to the loss and pruner.regularize() ran too before "
                f"{self.penalty_and_regularized} of the first {self.holding_steps} optimizer steps: each adds the "
                "penalty's gradient, so the L1 strength acts twice; use one of them (regularize() after backward, "
                "or penalty() in the loss)",
                stacklevel=stacklevel,
            )

    def close(self) -> None:
        """Remove the optimizer hook."""
        self._handle.remove()


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()
