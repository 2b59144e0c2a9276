"""Schedules: pure functions from the optimizer step to a target sparsity (no state).

The gradual curve is Zhu & Gupta (2017), "To prune, or not to prune":
``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` for ``t = t0, t0 + dt, ..., t0 + n * dt``.
Steps count optimizer steps; epochs in the recipe are converted with ``steps_per_epoch``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from .recipe import ScheduleSpec


def checked_steps_per_epoch(value: Any, where: str) -> int:
    """``value`` as optimizer steps per epoch: an int or a numpy/torch integer (``len(loader) // k`` computed with
    numpy), as every entry point takes it. ``where`` names the call (``"Pruner(steps_per_epoch=...)"``). TypeError
    for anything else (2.5, "10", True), ValueError when not > 0."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{where}: expected an int (optimizer steps per epoch, e.g. len(train_loader)), got {value!r}")
    steps = operator.index(value)
    if steps <= 0:
        raise ValueError(f"{where}: steps_per_epoch must be > 0 (use len(train_loader)), got {steps}")
    return steps


@dataclass(frozen=True)
class Schedule:
    """When masks change and to which target sparsity, in optimizer steps (see the module docstring).

    Targets are fractions in ``[0, 1)`` of the method's selected weights; ``curve`` is ``cubic`` (Zhu &
    Gupta) or ``linear``."""

    start: int  # first update step
    end: int  # step at which the final target is reached
    every: int  # steps between updates
    init: float
    final: float
    curve: str = "cubic"

    @classmethod
    def from_spec(cls, spec: ScheduleSpec, final: float, steps_per_epoch: int) -> Schedule:
        """From a recipe's ``schedule`` (in epochs) and the method's ``final`` target: epochs become steps
        (rounded to the nearest step, a tie to the even one as Python's ``round`` does; ``every`` at least one step)."""
        start = round(spec.start_epoch * steps_per_epoch)
        end = round(spec.end_epoch * steps_per_epoch)
        every = max(1, round(spec.every * steps_per_epoch))
        return cls(start, max(end, start), every, spec.init_sparsity, final, spec.curve)

    @property
    def oneshot(self) -> bool:
        """True when the whole target is applied at a single step."""
        return self.end == self.start

    def is_update(self, step: int) -> bool:
        """True at the steps where masks are recomputed: t0, t0 + dt, ... and the end step."""
        if step < self.start or step > self.end:
            return False
        return step == self.end or (step - self.start) % self.every == 0

    def target(self, step: int) -> float:
        """Target sparsity at ``step`` (0 before the start, final after the end)."""
        if step < self.start:
            return 0.0
        if step >= self.end:
            return self.final
        # Targets change only at update steps: hold the value of the last update point.
        last = self.start + ((step - self.start) // self.every) * self.every
        frac = (last - self.start) / (self.end - self.start)
        power = 3 if self.curve == "cubic" else 1
        # Written from init, not from final: at the start point (frac 0) this is init itself; final + (init - final)
        # is not always init in floating point (0.9 + (0.1 - 0.9) is 0.09999999999999998, which rounds 0.1 of a
        # 15-weight layer to one pruned weight instead of two).
        return self.init + (self.final - self.init) * (1.0 - (1.0 - frac) ** power)

    def epoch_targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        """Target at the end of each of ``epochs`` epochs (``steps_per_epoch`` optimizer steps each), as the
        Pruner applies it after the epoch's last step: ``target(e * steps_per_epoch)`` for e = 1..epochs.
        Empty without epochs: a run with no fine-tuning applies only what is due at step 0 (see
        :func:`sparsekit.planning.simulate` for what a run reaches)."""
        return [self.target((e + 1) * steps_per_epoch) for e in range(max(epochs, 0))]
