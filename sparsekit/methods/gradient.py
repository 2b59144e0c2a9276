"""Gradient saliency pruning: zero the weights whose first-order effect on the loss is smallest.

Two criteria, both scorers (:mod:`sparsekit.methods.scorers`) of ``w`` and ``dL/dw`` read from
``module.weight.grad`` after the user's own ``loss.backward()``, in :meth:`Gradient.after_step` (before
that step's mask update):

- ``taylor`` (Molchanov et al., 2017; 2019): score ``|w * dL/dw|`` summed over the steps since the last
  mask update, then reset, so each update ranks by the recent estimate of the loss change.
- ``movement`` (Sanh et al., 2020): score ``-w * dL/dw`` summed over the whole run (never reset):
  weights moving away from zero score high, weights shrinking toward zero are pruned.

From Python, ``Pruner(..., scorers={i: fn})`` replaces the scorer of ``pruning[i]`` with
``fn(weight, grad)`` (float32 tensors of the weight's shape); the entry's ``criterion`` still chooses
the window it is summed over (taylor: since the last update; movement: the whole run).

Ranking, scopes, schedules and per-layer values (``layer_sparsity``; an entry still holding ``sparsity:
auto`` is refused) are those of :mod:`~sparsekit.methods.magnitude`. An update point
reached before any gradient arrived (``schedule: oneshot`` before the first step) waits for the
next step that brings gradients; a run that never gets them fails at :meth:`Gradient.finalize`.

A step whose gradient no optimizer used (one ``torch.cuda.amp.GradScaler`` skipped on an overflow, or any
``pruner.step()`` with no ``torch.optim`` step since the previous one) is checked first: a layer whose
gradient holds inf or NaN adds nothing to the sums that step, since one such value would rank its weights
for the rest of the window (taylor) or the run (movement). A gradient an optimizer stepped with is not
checked (no extra pass over the gradients): ``GradScaler`` steps only on finite ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import TargetError
from ..learning_rate import on_optimizer_steps
from ..masks import weight_of
from . import scorers
from .base import Changes, Setup
from .magnitude import Magnitude

# The remedy for layers that never get a gradient while the entry's others do.
UNUSED_FIX = (
    "they take no part in the forward pass, or their output does not reach the loss (a branch the model skips; "
    "under DDP, the parameters find_unused_parameters=True lets through): leave them out with layers.exclude"
)

# criterion -> (scorer, whether the summed scores restart after every mask update)
CRITERIA: dict[str, tuple[scorers.Scorer, bool]] = {
    "taylor": (scorers.taylor, True),
    "movement": (scorers.movement, False),
}

# Fused in-place sums for built-in scorers, over all layers at once (sums, weights, grads, scratch buffers
# like the weights): this runs every step, so it allocates nothing and makes few calls. The ops are the
# scorers' own, so the sums stay bit-identical to earlier releases.
_Fused = Callable[[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]], Any]


def _taylor_sums(
    accs: list[torch.Tensor], ws: list[torch.Tensor], gs: list[torch.Tensor], bufs: list[torch.Tensor]
) -> None:
    # scorers.taylor is (w * g).abs_(), then added. Per layer into a kept buffer: a foreach product would
    # allocate a fresh weight-sized tensor per layer and step, which costs as much as the product itself.
    for acc, w, g, buf in zip(accs, ws, gs, bufs, strict=True):
        acc.add_(torch.mul(w, g, out=buf).abs_())


def _movement_sums(
    accs: list[torch.Tensor], ws: list[torch.Tensor], gs: list[torch.Tensor], bufs: list[torch.Tensor]
) -> None:
    if all(a.is_cpu for a in accs):
        torch._foreach_addcmul_(accs, ws, gs, value=-1)  # on CPU, addcmul_ per tensor: the same kernel
    else:
        # A device's fused foreach kernel may round acc + (-w) * g in one step (FMA) where addcmul_ rounds
        # twice: keep the kernel earlier releases summed with.
        for acc, w, g in zip(accs, ws, gs, strict=True):
            acc.addcmul_(w, g, value=-1)


# scorer -> (fused sums, whether they need scratch buffers)
_FUSED: dict[Callable[..., Any], tuple[_Fused, bool]] = {
    scorers.movement: (_movement_sums, False),
    scorers.taylor: (_taylor_sums, True),
}


class Gradient(Magnitude):
    """Magnitude pruning with gradient-based scores (``method: gradient``, ``criterion: taylor | movement``).

    Raises TargetError at construction when ``spec.layers`` selects no layer, and at :meth:`finalize`
    when an update point never got gradients."""

    name = "gradient"
    needs_grad = True

    def __init__(self, spec: Any, model: nn.Module, setup: Setup) -> None:
        super().__init__(spec, model, setup)
        self.criterion: str = spec.criterion
        self.every: int = spec.score_every
        self.resets = CRITERIA[spec.criterion][1]  # taylor: a fresh estimate per update interval
        self.accum: dict[str, torch.Tensor] = {}  # summed scores per layer since the last reset
        fused = _FUSED.get(self.scorer)
        self._fused: _Fused | None = fused[0] if fused else None
        self._scratch = bool(fused and fused[1])
        self._bufs: dict[str, torch.Tensor] = {}  # per layer, scratch for the fused sums (taylor)
        # torch.optim steps so far, and at the previous after_step: whether an optimizer used this step's gradient
        self._optimizer_steps = self._steps_seen = 0
        self._hook = on_optimizer_steps(self, Gradient._count_optimizer_step)

    def _count_optimizer_step(self, optimizer: Any) -> None:
        self._optimizer_steps += 1

    def _builtin_scorer(self, spec: Any) -> scorers.Scorer:
        return CRITERIA[spec.criterion][0]

    @torch.no_grad()
    def accumulate(self, check: bool = False) -> bool:
        """Add this step's ``scorer(w, grad)`` to the sums; layers without a ``.grad`` contribute nothing, nor
        with ``check`` do those whose gradient holds inf or NaN. Returns whether some gradient was left out
        for that."""
        accs: list[torch.Tensor] = []
        ws: list[torch.Tensor] = []
        gs: list[torch.Tensor] = []
        bufs: list[torch.Tensor] = []
        grads = {name: weight_of(module).grad for name, module in self.layers.items()}
        overflowed = False
        if check:
            kept = _finite(grads)
            overflowed, grads = kept is not grads, kept
        for name, module in self.layers.items():
            weight = weight_of(module)
            grad = grads.get(name)
            if grad is None:
                continue
            w, g = weight.detach(), grad.detach()
            if w.dtype != torch.float32 or g.dtype != torch.float32:  # (.float() costs a call even when a no-op)
                w, g = w.float(), g.float()
            acc = self.accum.get(name)
            if acc is not None and self._fused is not None and not g.is_sparse:
                accs.append(acc)
                ws.append(w)
                gs.append(g)
                if self._scratch:
                    bufs.append(self._buf(name, acc))
                continue
            term = self._score(name, w, g)
            if acc is None:
                # A user's scorer may return a view of its inputs: the sum must own its memory.
                self.accum[name] = term.clone() if self.custom else term
            else:
                acc.add_(term)  # in place: this runs every step
        if accs:
            assert self._fused is not None
            self._fused(accs, ws, gs, bufs)
        return overflowed

    def _buf(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A scratch tensor like ``like`` (a layer's sum), kept between steps."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._bufs[name] = torch.empty_like(like)
        return buf

    def scores(self) -> dict[str, torch.Tensor] | None:
        """The summed scores, or None while some layer has had no gradient yet."""
        # Ranking layers that have no gradient yet against those that have would be meaningless.
        if any(name not in self.accum for name in self.layers):
            return None
        # ... and so would ranking all-zero sums (gradients zeroed before pruner.step() each time): a sort of equal
        # scores keeps weights by position. Checked at update points only, once per layer.
        self._zero_scored = [name for name, acc in self.accum.items() if not bool(acc.any())]
        if self._zero_scored:
            return None
        return dict(self.accum)

    def update(self, step: int) -> bool:
        """Recompute masks (see :meth:`Magnitude.update`); a taylor window restarts after it."""
        done = super().update(step)
        if done and self.resets:
            self.accum = {}
        return done

    def after_step(self, step: int) -> Changes:
        """Add this step's scores, then update masks at the schedule's update points. Past the schedule's
        last update no scores are summed (none would be read again; ~3 passes over the weights a step)."""
        used = self._optimizer_steps != self._steps_seen  # an optimizer stepped with this gradient
        self._steps_seen = self._optimizer_steps
        overflowed = False
        if self._pending or (step <= self.schedule.end and self._scored(step)):
            overflowed = self.accumulate(check=not used)  # before the mask update, so this step's gradients count
            self._overflows += overflowed
            self._scored_steps += 1
        changes = super().after_step(step)
        # (a step GradScaler skipped on an overflow leaves the update waiting too, but is no mistake of the loop's)
        if self._pending and not self._dead_inputs:
            self._dead_inputs = self._backward_ran()
        if self._pending and not self._warned_no_grad and not overflowed:
            # Said now, not only at finalize: a loop that zeroes the gradients before pruner.step() trains to
            # the end with masks that never update.
            self._warned_no_grad = True
            frozen = self._frozen()
            fix = (
                f"{self._missing()} {'is' if len(frozen) == 1 else 'are'} frozen (requires_grad=False): leave "
                f"{'it' if len(frozen) == 1 else 'them'} out with layers.exclude, or unfreeze "
                f"{'it' if len(frozen) == 1 else 'them'}"
                if frozen
                else UNUSED_FIX
                if self._unused()
                else self._dead_fix()
                if self._dead_inputs
                else "call it after loss.backward() and optimizer.step() and before optimizer.zero_grad(); exclude "
                "frozen layers with layers.exclude"
            )
            warnings.warn(
                f"{self.where}: step {step} should update the masks, but {self._missing()} had no gradient (or only "
                f"zero ones) when pruner.step() ran: {fix}. The update waits for a step that brings gradients to "
                "every layer of the entry",
                stacklevel=3,
            )
        return changes

    _warned_no_grad = False
    _overflows = 0  # steps whose gradients (some of them) held inf or NaN and were left out: GradScaler's skipped steps
    _scored_steps = 0  # steps whose gradients were read (overflowed or not)
    _zero_scored: list[str] = []  # noqa: RUF012 - replaced, never changed in place

    _dead_inputs = ""  # a selected layer whose bias got a gradient while the weights' were zero: backward ran

    def _backward_ran(self) -> str:
        """The first selected layer whose bias holds a nonzero gradient while some layer's weight gradient is all
        zero: the loop's order is right (backward ran, no zero_grad before pruner.step()), and dead units zeroed those
        weights' inputs or the gradient flowing back to them. Read only while a mask update waits."""
        for name, module in self.layers.items():
            bias = getattr(module, "bias", None)
            grad = getattr(bias, "grad", None)
            if isinstance(grad, torch.Tensor) and bool(torch.isfinite(grad).all()) and bool(grad.any()):
                return name
        return ""

    def _dead_fix(self) -> str:
        # A dead network's zero gradients were blamed on the loop ("call loss.backward() before pruner.step()"),
        # which was right: the scores there are zero because the layers' inputs are.
        return (
            f"backward did run (the bias of {self._dead_inputs!r} got a gradient), but the weights' gradients were "
            "zero: units around them are dead on the data (a ReLU always off zeroes what flows into a layer or back "
            "out of it), so gradient scores cannot rank them; leave them out with layers.exclude, or use method: "
            "magnitude"
        )

    def _missing_layers(self) -> list[str]:
        missing = [name for name in self.layers if name not in self.accum or name in self._zero_scored]
        return missing or list(self.layers)

    def _frozen(self) -> list[str]:
        """The layers missing gradients, when every one of them is frozen (requires_grad=False); else []."""
        missing = self._missing_layers()
        frozen = [n for n in missing if not weight_of(self.layers[n]).requires_grad]
        return frozen if len(frozen) == len(missing) else []

    def _unused(self) -> bool:
        """Whether the layers missing gradients never had one while the entry's other layers did: layers that take
        no part in the forward pass, or whose output does not reach the loss (not a matter of call order)."""
        missing = self._missing_layers()
        return len(missing) < len(self.layers) and not any(n in self.accum for n in missing)

    def _missing(self) -> str:
        missing = self._missing_layers()
        shown = ", ".join(repr(n) for n in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return f"layer {shown}" if len(missing) == 1 else f"layers {shown}"

    def _scored(self, step: int) -> bool:
        """Whether ``step``'s gradients are summed: every ``score_every``-th step counted back from the next
        mask update, so the update's own step always counts and each window gets its share."""
        if self.every == 1:
            return True
        sched = self.schedule
        if step <= sched.start:
            upcoming = sched.start
        else:
            upcoming = min(sched.end, sched.start + -(-(step - sched.start) // sched.every) * sched.every)
        return (upcoming - step) % self.every == 0

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Raises TargetError when an update point is still waiting for gradients."""
        self._hook.remove()
        if self._pending:
            if self._frozen():
                raise TargetError(
                    f"{self.where}: gradient criterion got no gradients for {self._missing()}, frozen "
                    "(requires_grad=False), so the entry's mask updates waited for them: leave frozen layers out "
                    "with layers.exclude, or unfreeze them"
                )
            if self._unused():
                raise TargetError(
                    f"{self.where}: gradient criterion got no gradients for {self._missing()}, while the entry's "
                    f"other layers got theirs, so the entry's mask updates waited for them: {UNUSED_FIX}"
                )
            if self._overflows and self._overflows == self._scored_steps:
                # (it said "got no gradients ... call loss.backward() before pruner.step()" to a loop that did). Only
                # when every step read overflowed: an fp16 loop's first steps usually do, and one that zeroed its
                # gradients before pruner.step() on the others was told to lower GradScaler's init_scale.
                raise TargetError(
                    f"{self.where}: gradient criterion got no finite gradients for {self._missing()}: the gradients "
                    f"of {self._overflows} step(s) held inf or NaN and were left out, as the optimizer steps a "
                    "GradScaler skips: its scale never came down far enough, or the loss itself is inf or NaN; start "
                    "GradScaler at a lower init_scale, or check the loss"
                )
            if self._dead_inputs:
                raise TargetError(
                    f"{self.where}: gradient criterion got only zero gradients for {self._missing()}: "
                    + self._dead_fix()
                )
            raise TargetError(
                f"{self.where}: gradient criterion got no gradients, or only zero ones (for {self._missing()}): call "
                "loss.backward() before pruner.step() and optimizer.zero_grad() after it (a sparsekit prune run: "
                "give the recipe fine-tuning epochs or calibration_batches); exclude frozen layers with layers.exclude"
            )
        return super().finalize(model)

    def state_dict(self) -> dict[str, Any]:
        """Magnitude's state plus the summed scores."""
        return {**super().state_dict(), "accum": {n: t.clone() for n, t in self.accum.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (sums moved to each layer's device)."""
        super().load_state_dict(state)
        accum = state.get("accum", {})
        self.accum = {n: t.clone().to(self.layers[n].weight.device) for n, t in accum.items() if n in self.layers}


def _finite(grads: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """``grads`` without those holding inf or NaN: one sum per gradient (non-finite when any element is) and one
    host sync for all of them."""
    present = {n: g for n, g in grads.items() if g is not None}
    if not present:
        return grads
    # Summed in at least float32: a half-precision sum of finite gradients could overflow to inf.
    sums = [
        (g._values() if g.is_sparse else g).sum(dtype=torch.promote_types(g.dtype, torch.float32))
        for g in present.values()
    ]
    ok = torch.isfinite(torch.stack([t.to(sums[0].device) for t in sums])).tolist()
    if all(ok):
        return grads
    bad = {n for n, fine in zip(present, ok, strict=True) if not fine}
    return {n: (None if n in bad else g) for n, g in grads.items()}
