"""Magnitude pruning: zero the weights with the smallest |w|, globally or per layer, on a schedule.

Han et al. (2015), "Learning both Weights and Connections for Efficient Neural Networks", with the
gradual cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune" (see
:mod:`sparsekit.schedule`): at each update point the masks are recomputed so that the schedule's target
fraction of the selected weights is zero, ranking the layers together (``scope: global``) or each
layer on its own (``scope: layer``). Masks only lose ones: a pruned weight never comes back.

Under ``scope: global`` no layer loses more than ``max_layer_sparsity`` of its weights (default 0.99), so a
small layer whose weights all rank low is not emptied: its surplus prunes go to the other layers' next
lowest scores and the total stays ``round(target * n)`` (see :func:`~sparsekit.masks.global_topk_masks`).
Under ``scope: layer`` and for ``layer_sparsity`` layers the cap binds too, where rounding would ask more of a
small layer than it allows (0.9 of a layer of 3 weights is all 3: it keeps one).

The ranking is a scorer (:mod:`sparsekit.methods.scorers`), :func:`~sparsekit.methods.scorers.magnitude`
by default. From Python, ``Pruner(..., scorers={i: fn})`` ranks ``pruning[i]`` by ``fn(weight, None)``
instead (``grad`` is None here: use ``method: gradient`` for gradient-based scores).

Per-layer values (``layer_sparsity: {layer: fraction}``, written by hand or chosen by
:func:`sparsekit.allocation.allocate` for ``sparsity: auto``): each listed layer is ranked on its own and
pruned to exactly ``round(value * weights)`` at the end of the schedule; on the way, when the schedule is
at ``t`` of ``sparsity``, each listed layer is at ``value * t / sparsity`` (the same curve, scaled per
layer). The other selected layers follow ``sparsity`` and ``scope`` as usual. An entry still holding
``sparsity: auto`` is refused when the method is built (RecipeError: allocate first).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import RecipeError, TargetError, one_line
from ..layers import select_layers, tied_aliases
from ..masks import (
    count_true,
    ensure_mask,
    global_topk_masks,
    layer_cap,
    layer_topk_masks,
    masked_scores,
    set_mask,
    weight_of,
)
from ..schedule import Schedule
from ..stats import asked_vs_achieved
from . import scorers
from .base import UNCHANGED, Changes, Setup, warn_computed


class Magnitude:
    """Unstructured pruning by a score (``method: magnitude``); :class:`~sparsekit.methods.gradient.Gradient`
    changes only how scores are gathered (:meth:`scores`).

    Raises TargetError at construction when ``spec.layers`` selects no layer or ``layer_sparsity`` names a
    layer it does not select, and RecipeError when ``sparsity`` is still ``auto``."""

    name = "magnitude"
    masks_weights = True
    zeroes_weights = True
    needs_grad = False
    structural = False

    def __init__(self, spec: Any, model: nn.Module, setup: Setup) -> None:
        self.spec = spec
        self.where = setup.where
        self.index = setup.index
        self.custom = setup.scorer is not None
        self.scorer: scorers.Scorer = (
            scorers.check(setup.scorer, f"scorers[{setup.index}]") if self.custom else self._builtin_scorer(spec)
        )
        if spec.auto:
            raise unallocated(self.where, "sparsity")
        self.layers = select_layers(model, spec.layers, f"{self.where}.layers")
        warn_computed(model, spec, self.layers, self.where, self.name)
        self.touched: list[str] = []  # never changes shapes
        # Each layer's weights at the start: an l1 entry on the same layers may remove its dead units at finalize,
        # and the weights it removed count as pruned in this entry's report too.
        self.initial = {n: weight_of(m).numel() for n, m in self.layers.items()}
        self.final = float(spec.sparsity)
        self.schedule = Schedule.from_spec(spec.schedule, self.final, setup.steps_per_epoch)
        self.cap = float(spec.layer_cap)  # max_layer_sparsity, resolved by the recipe
        # layer_sparsity: layer -> its own final fraction (ranked within the layer); the rest follow `sparsity`.
        self.layer_values: dict[str, float] = {}
        if spec.layer_sparsity:
            unknown = [n for n in spec.layer_sparsity if n not in self.layers]
            if unknown:
                raise TargetError(
                    f"{self.where}.layer_sparsity: {unknown[0]!r} is not a layer this entry selects; it selects "
                    f"{', '.join(self.layers)} (names as in named_modules(); check the spelling or pruning "
                    f"layers.include)"
                )
            self.layer_values = {n: float(v) for n, v in spec.layer_sparsity.items()}
            # Below sparsity 0 the schedule's curve is flat: the listed layers then follow it from 0 to 1.
            self.progress = (
                self.schedule
                if self.final > 0
                else Schedule.from_spec(
                    spec.schedule.model_copy(update={"init_sparsity": 0.0}), 1.0, setup.steps_per_epoch
                )
            )
        self.current = 0.0  # the sparsity the masks were last set to
        # A layer whose weight an earlier selected layer holds too (tied) is ranked once, as that weight, and takes
        # its mask: counted twice, it would weigh double in a global ranking and the whole miss its target.
        self.tied_to = tied_aliases(self.layers)
        for name, first in self.tied_to.items():  # one weight, one layer_sparsity: the value either was given
            values = {self.layer_values[n] for n in (name, first) if n in self.layer_values}
            if len(values) > 1:
                raise TargetError(
                    f"{self.where}.layer_sparsity: {name!r} shares its weight with {first!r} (tied), so one value "
                    f"prunes both: give them the same value or list {first!r} only"
                )
            if values:
                self.layer_values[name] = self.layer_values[first] = values.pop()
        for module in self.layers.values():
            ensure_mask(module)

    def _builtin_scorer(self, spec: Any) -> scorers.Scorer:
        return scorers.magnitude

    def scores(self) -> dict[str, torch.Tensor] | None:
        """Scores per layer, each of its weight's shape, higher = keep. None means "no scores yet" (the
        update waits for the next step)."""
        return {name: self._score(name, weight_of(m).detach(), None) for name, m in self.layers.items()}

    def _meta_scores(self) -> dict[str, torch.Tensor] | None:
        """Shape-only scores when the weights are on the ``meta`` device (a rehearsal without weights,
        :mod:`sparsekit.rehearsal`): no scorer runs (torch's meta kernels for its arithmetic would import
        torch._dynamo, ~1 s); None when the weights are real."""
        weights = {name: weight_of(m) for name, m in self.layers.items()}
        if not any(w.is_meta for w in weights.values()):
            return None
        return {name: torch.empty(w.shape, dtype=torch.float32, device="meta") for name, w in weights.items()}

    def _score(self, name: str, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """``self.scorer(weight, grad)`` for layer ``name``; a user's scorer is checked (ValueError /
        TypeError naming ``scorers[i]``): it is code we did not write, and a wrong result would
        otherwise fail deep in the ranking or silently prune nothing."""
        if not self.custom:
            return self.scorer(weight, grad)
        where = f"scorers[{self.index}]"
        try:
            scores: Any = self.scorer(weight, grad)
        except TypeError as err:
            raise TypeError(
                f"{where}: calling scorer(weight, grad) failed ({one_line(err, 160)}); a {self.name} entry takes "
                "fn(weight, grad) -> scores (torch-pruning importances rank channels: use them with structured)"
            ) from err
        w = weight_of(self.layers[name])
        if not isinstance(scores, torch.Tensor) or scores.shape != w.shape:
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(
                f"{where}: the scorer returned {got} for layer {name!r}; it must return a tensor of the "
                f"weight's shape {tuple(w.shape)}"
            )
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(
                f"{where}: the scorer returned NaN or inf scores for layer {name!r}; scores must be finite"
            )
        return scores

    def update(self, step: int) -> bool:
        """Recompute masks to the schedule's target at ``step``; False if scores are not ready."""
        target = self.schedule.target(step)
        raw = self._meta_scores() or self.scores()
        if raw is None:
            return False
        # Layer by layer, each raw score dropped once masked: one model's worth of scores held, not two.
        scores = {n: masked_scores(raw.pop(n), self.layers[n]) for n in list(raw) if n not in self.tied_to}
        own = {n: s for n, s in scores.items() if n in self.layer_values}
        rest = {n: s for n, s in scores.items() if n not in self.layer_values}
        masks: dict[str, torch.Tensor] = {}
        if own:
            frac = self.fraction(step)
            for name, s in own.items():
                masks.update(global_topk_masks({name: s}, self.layer_values[name] * frac, self.cap))
        if rest and self.spec.scope == "global":
            masks.update(global_topk_masks(rest, target, self.cap))
        elif rest:
            # Validated: target <= sparsity <= the cap; the cap still binds where rounding asks more of a small layer.
            masks.update(layer_topk_masks(rest, target, self.cap))
        for name, first in self.tied_to.items():
            masks[name] = masks[first]
        for name, mask in masks.items():
            set_mask(self.layers[name], mask)
        self.current = target
        return True

    def fraction(self, step: int) -> float:
        """How far along its schedule the entry is at ``step``: 0 before it starts, 1 at its end (the schedule's
        target divided by ``sparsity``); each ``layer_sparsity`` layer is at ``value * fraction``."""
        if self.final > 0:
            return 1.0 if step >= self.schedule.end else self.schedule.target(step) / self.final
        return 1.0 if step >= self.progress.end else self.progress.target(step)

    def penalty(self) -> torch.Tensor | float:
        """No loss term."""
        return 0.0

    def after_step(self, step: int) -> Changes:
        """At an update point of the schedule (or when an earlier one is still waiting for scores)
        recompute the masks. Masks are applied by the Pruner right after."""
        if self.schedule.is_update(step) or self._pending:
            self._pending = not self.update(step)
        return UNCHANGED

    _pending = False  # an update point passed without scores; retried at every step until it runs

    def start(self) -> None:
        """Called once when the pruner is built: a schedule that starts at step 0 acts now."""
        if self.schedule.is_update(0):
            self._pending = not self.update(0)

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Nothing left to do: the Pruner bakes the masks."""
        return model, UNCHANGED

    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        """The schedule's target sparsity of the selected weights at the end of each epoch (with
        ``layer_sparsity``: the weight-weighted mean of every layer's own target)."""
        plain = self.schedule.epoch_targets(epochs, steps_per_epoch)
        if not self.layer_values:
            return plain
        sizes = {n: weight_of(m).numel() for n, m in self.layers.items() if n not in self.tied_to}  # tied: once
        total = sum(sizes.values()) or 1
        own = sum(sizes[n] * v for n, v in self.layer_values.items() if n in sizes)
        rest = sum(s for n, s in sizes.items() if n not in self.layer_values)
        out = []
        for e, t in enumerate(plain):
            frac = self.fraction((e + 1) * steps_per_epoch)
            out.append((own * frac + rest * t) / total)
        return out

    def asked(self) -> dict[str, float]:
        """The final fraction asked of each layer: its ``layer_sparsity`` value, else ``sparsity``."""
        return {n: self.layer_values.get(n, self.final) for n in self.layers}

    def report(self) -> dict[str, Any]:
        """Asked vs achieved (:func:`~sparsekit.stats.asked_vs_achieved`): ``asked`` is ``sparsity``, per
        layer too under ``scope: layer`` (None under ``global``); with ``layer_sparsity``, each listed layer's
        ``asked`` is its own value, the total ``asked`` their weight-weighted mean with the others' and the
        values are repeated under ``layer_sparsity``. A layer pruned as far as
        ``max_layer_sparsity`` lets it has a ``reason`` saying so, and when the caps made the target
        unreachable the method has one too. Plus ``scorer``, the scorer's name when it is a user's own."""
        out: dict[str, Any] = {"scorer": scorers.name_of(self.scorer)} if self.custom else {}
        global_scope = self.spec.scope == "global"
        reasons, room, total = {}, 0, 0
        for name, module in self.layers.items():
            w = weight_of(module).detach()
            cap = layer_cap(w.numel(), self.cap)
            room, total = room + cap, total + w.numel()
            # Held at the cap: under global ranking, or where rounding asked more of the layer (0.9 of 3 weights).
            over = round(self.layer_values.get(name, self.final) * w.numel()) > cap
            ranked = global_scope and name not in self.layer_values
            if (ranked or over) and self.cap < 1 and w.numel() - count_true(w) >= cap:
                reasons[name] = f"at max_layer_sparsity {self.cap:g} (at most {cap:,} of {w.numel():,} weights)"
        layer_asked = None if global_scope else self.final
        if self.layer_values:
            # Own values: the total asked is their weight-weighted mean with `sparsity` for the other layers.
            # A tied weight once, as its first layer (it is ranked and counted so).
            sizes = {n: weight_of(m).numel() for n, m in self.layers.items() if n not in self.tied_to}
            asked = self.asked()
            total_asked = sum(sizes[n] * asked[n] for n in sizes) / max(sum(sizes.values()), 1)
            # Each layer's asked is set here, not passed: asked_vs_achieved's rounding reason would be judged against
            # `sparsity` for a layer with its own value.
            out.update(asked_vs_achieved(self.layers, total_asked, None, reasons, self.initial))
            for name, row in out["per_layer"].items():
                row["asked"] = self.layer_values.get(name, layer_asked)
            out["layer_sparsity"] = dict(self.layer_values)
            return out
        out.update(asked_vs_achieved(self.layers, self.final, layer_asked, reasons, self.initial))
        if global_scope and total and round(self.final * total) > room:
            out["reason"] = (
                f"max_layer_sparsity {self.cap:g} lets these layers lose at most {room:,} of {total:,} weights "
                f"({room / total:.3f}), less than the {self.final:g} asked; raise max_layer_sparsity or "
                "select more layers"
            )
        return out

    def state_dict(self) -> dict[str, Any]:
        """``current`` sparsity and whether an update is pending (masks are saved by the Pruner)."""
        return {"current": self.current, "pending": self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.current = float(state["current"])
        self._pending = bool(state["pending"])


def unallocated(where: str, key: str) -> RecipeError:
    """The error for a recipe entry still holding ``auto`` (``key``: ``sparsity`` or ``ratio``) when a method is
    built: its per-layer values come from a sensitivity analysis that has not run."""
    return RecipeError(
        f"{where}.{key}: auto means the per-layer values are chosen from a sensitivity analysis on validation "
        "data, which has not run for this recipe. `sparsekit prune` runs it before training; from Python, call "
        "sparsekit.allocation.auto_allocate(model, recipe, val_loader, input_shape=...) (or analyze, then "
        "allocate) and build the Pruner on the recipe it returns"
    )
