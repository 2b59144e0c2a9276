"""Structured pruning: remove whole neurons / channels with torch-pruning, for real latency wins.

Channels are found, ranked and removed by torch-pruning's dependency graph (Fang et al., 2023,
"DepGraph: Towards Any Structural Pruning"), through :mod:`sparsekit.tp_adapter`.

``ratio`` is the fraction of prunable output channels removed: per layer (``scope: layer``) or
ranked across all layers (``scope: global``). Channels are ranked by ``importance``:

- ``l1`` / ``l2``: group norm of the weights a channel owns, in every layer it touches
  (``tp.importance.MagnitudeImportance(p=1|2)``);
- ``taylor``: ``|w * dL/dw|`` with the gradients of the user's own backward passes, summed since the
  previous removal (``tp.importance.TaylorImportance``); it needs fine-tuning steps;
- ``bn_scale``: the BatchNorm scale of the channel (network slimming, Liu et al., 2017, "Learning
  Efficient Convolutional Networks through Network Slimming"); groups without a BatchNorm (plain
  Linear layers) are not pruned by it.

From Python, ``Pruner(..., scorers={i: imp})`` ranks the channels of ``pruning[i]`` with ``imp``
instead: a torch-pruning importance object (e.g. ``tp.importance.GroupMagnitudeImportance(p=1)``) or
any callable ``imp(group) -> Tensor[channels]`` (higher = keep). Importances that read ``.grad`` (tp's
Taylor importances, or an object with ``needs_grad = True``) get the mean gradient of the fine-tuning
steps since the previous removal, as ``taylor`` does.

Removal happens in ``steps`` events, one at the start of each of ``steps`` equal slices of
``schedule.start_epoch .. end_epoch`` (``oneshot``: all at the start), each removing ``ratio / steps``
more, as torch-pruning's iterative pruner does; every event is followed by a slice of fine-tuning. An event due at
step 0 runs at the first :meth:`~sparsekit.pruner.Pruner.step` (or at finalize), so building a
Pruner never changes the model: resuming replays the recorded history onto the untouched model.

After each event the model has new, smaller parameters: :meth:`Structured.after_step` returns
``Changes(history=..., structure_changed=True)``, the Pruner sets ``pruner.structure_changed`` and the
training loop must rebuild its optimizer (``sparsekit.finetune`` does). Every removal is appended to
``pruner.pruning_history`` (torch-pruning's JSON-able history) so a checkpoint is rebuilt by replay.

``layers`` selects whose outputs may be removed; ``ignore`` (default: the classifier head, the last
prunable layer in forward order) keeps a layer's outputs. A layer's inputs shrink whenever its
producer loses channels, whatever the selection. ``min_channels`` is a floor per layer.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .. import surgery
from .. import tp_adapter as tpa
from ..errors import TargetError
from ..layers import check_names, select_layers
from .base import UNCHANGED, Changes, Setup

_ROOTS = (_ConvNd, nn.Linear)


def _check_importance(imp: object, where: str) -> tpa.Importance:
    if not callable(imp):
        raise TypeError(
            f"{where}: structured pruning takes a torch-pruning importance (e.g. "
            "tp.importance.GroupMagnitudeImportance(p=1)) or a callable importance(group) -> Tensor[channels], "
            f"not {type(imp).__name__}"
        )
    return imp


def _event_steps(spec: Any, steps_per_epoch: int) -> list[int]:
    """Optimizer steps after which each removal event runs: the starts of ``steps`` equal slices of
    the schedule window, so the last removal still gets a slice of fine-tuning inside the window."""
    start = round(spec.schedule.start_epoch * steps_per_epoch)
    end = max(start, round(spec.schedule.end_epoch * steps_per_epoch))
    return [start + round(k * (end - start) / spec.steps) for k in range(spec.steps)]


class Structured:
    """Channel removal through torch-pruning's ``BasePruner`` (``method: structured``).

    Raises TargetError at construction when the input shape is unknown, the selection leaves nothing
    to prune, ``bn_scale`` meets a model without BatchNorm, or ``ratio`` / ``min_channels`` cannot be
    met; TypeError when a ``scorers=`` importance is not callable."""

    name = "structured"
    masks_weights = False
    structural = True  # changes weight shapes: no masking method may own the layers it touches

    def __init__(self, spec: Any, model: nn.Module, setup: Setup) -> None:
        self.spec = spec
        self.where = setup.where
        self.model = model
        self.custom = setup.scorer is not None
        if setup.scorer is not None:
            self.importance = _check_importance(setup.scorer, f"scorers[{setup.index}]")
        else:
            self.importance = tpa.importance(spec.importance)
        self.needs_grad = tpa.reads_grad(self.importance)
        if tpa.is_bn_scale(self.importance) and not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
        ):
            # torch-pruning would score every channel alike and silently remove nothing useful.
            raise TargetError(
                f"{self.where}.importance: {self._importance_name()!r} ranks channels by BatchNorm scales, but the "
                "model has no BatchNorm layers; use importance l1, l2 or taylor"
            )
        shape = setup.input_shape
        if not shape:
            raise TargetError(
                f"{self.where}: structured pruning traces the model and needs its input shape: set "
                "model.input_shape in the recipe (e.g. [1, 1, 28, 28]) or pass "
                "context={'input_shape': [1, ...]} to the Pruner"
            )
        self.input_shape = [int(d) for d in shape]
        selected = select_layers(model, spec.layers, f"{self.where}.layers")
        if spec.ignore is None:
            head = surgery.last_layer(model, self.input_shape)
            ignore = [head] if head else []
        else:
            check_names(model, spec.ignore, f"{self.where}.ignore")
            ignore = list(spec.ignore)
        kept = {name for pattern in ignore for name in _expand(model, pattern)}
        self.layers = {n: m for n, m in selected.items() if n not in kept}
        if not self.layers:
            raise TargetError(f"{self.where}: every selected layer is in ignore; nothing left to prune")
        self.events = _event_steps(spec, setup.steps_per_epoch)
        self.done = 0  # removal events performed
        self.accum: dict[str, torch.Tensor] = {}  # taylor: summed grads per parameter name
        self.accum_steps = 0
        self._history_seen = 0
        self.initial = {n: _out_channels(m) for n, m in self.layers.items()}
        if all(c <= spec.min_channels for c in self.initial.values()):
            raise TargetError(
                f"{self.where}.min_channels: {spec.min_channels} is at least the channel count of every selected "
                f"layer (largest: {max(self.initial.values())}), so nothing would be removed; lower it"
            )

        chosen = set(self.layers.values())
        ignored = [m for m in model.modules() if isinstance(m, (*_ROOTS, nn.LSTM)) and m not in chosen]
        with surgery.traced(model):
            # min_channels (>= 1) is enforced in _one_event: the adapter lets tp propose groups that
            # would lose every channel, so a layer is trimmed to its floor rather than silently left whole.
            self._tp: tpa.ChannelPruner | None = tpa.ChannelPruner(
                model,
                surgery.example_input(model, self.input_shape),
                importance=self.importance,
                global_pruning=spec.scope == "global",
                ratio=spec.ratio,
                steps=spec.steps,
                ignored=ignored,
                root_types=list(_ROOTS),
            )
        graph = self._tp.graph
        names = {m: n for n, m in model.named_modules()}
        self.touched: list[str] = []  # Conv/Linear layers whose weight shape may change
        for group in self._tp.groups():
            root = tpa.group_root(group)
            for module in tpa.group_modules(group):
                if isinstance(module, _ROOTS) and names[module] not in self.touched:
                    self.touched.append(names[module])
            if spec.scope == "layer":
                per_group = tpa.out_channels(graph, root) // max(1, self._tp.channel_groups(group))
                if per_group > 1 and int(per_group * (1 - spec.ratio)) < 1:
                    raise TargetError(
                        f"{self.where}.ratio: {spec.ratio:g} would remove every output channel of "
                        f"{names[root]!r} ({tpa.out_channels(graph, root)} channels): lower the ratio or add "
                        f"{names[root]!r} to ignore"
                    )

    # ------------------------------------------------------------------ hooks

    def start(self) -> None:
        """Nothing happens at construction; an event at step 0 runs at the first step (see module doc)."""

    def penalty(self) -> torch.Tensor | float:
        """No loss term."""
        return 0.0

    def after_step(self, step: int) -> Changes:
        """Gather gradients (when the importance reads them); run the removal events due by ``step``
        and return their history (``structure_changed``: rebuild the optimizer)."""
        if self.needs_grad:
            self._accumulate()
        if self.done < len(self.events) and self.events[self.done] <= step:
            return self._remove(until=step)
        return UNCHANGED

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Run every removal event not yet run (a run that stopped early, or had no fine-tuning, still
        gets the recipe's final shape), then drop torch-pruning's graph."""
        changes = self._remove(until=None) if self.done < len(self.events) else UNCHANGED
        self._tp = None  # drop tp's graph: it holds references to the model
        self.accum = {}
        return model, changes

    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        """Expected fraction of the selected channels removed at the end of each epoch."""
        n = max(epochs, math.ceil(self.events[-1] / max(steps_per_epoch, 1)), 1)
        out = []
        for e in range(n):
            k = sum(1 for s in self.events if s <= (e + 1) * steps_per_epoch)
            out.append(self.spec.ratio * k / self.spec.steps)
        return out

    def report(self) -> dict[str, Any]:
        """Ratio, importance, scope, events run, and ``[initial, now]`` output channels per layer."""
        return {
            "ratio": self.spec.ratio,
            "importance": type(self.importance).__name__ if self.custom else self.spec.importance,
            "scope": self.spec.scope,
            "events_done": self.done,
            "events": len(self.events),
            "channels": {n: [self.initial[n], _out_channels(m)] for n, m in self.layers.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        """Events run, tp's ranking-scope sizes, and the gradients summed since the last removal."""
        return {
            "done": self.done,
            # tp sizes each ranking scope at its first pruning step; a resumed run must not
            # take the already-pruned size as the starting point.
            "scope_channels": self._tp.scope_channels if self._tp is not None else {},
            "accum": {n: t.clone() for n, t in self.accum.items()},
            "accum_steps": self.accum_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after the Pruner replayed the removal history onto the model)."""
        self.done = int(state["done"])
        if self._tp is not None:
            self._tp.steps_done = self.done
            self._tp.scope_channels = state.get("scope_channels", {})
        params = dict(self.model.named_parameters())
        self.accum = {
            n: t.clone().to(params[n].device)
            for n, t in state.get("accum", {}).items()
            if n in params and params[n].shape == t.shape
        }
        self.accum_steps = int(state.get("accum_steps", 0)) if self.accum else 0

    # ------------------------------------------------------------------ internals

    @torch.no_grad()
    def _accumulate(self) -> None:
        got = False
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            got = True
            g = p.grad.detach().float()
            if name in self.accum and self.accum[name].shape == g.shape:
                self.accum[name].add_(g)
            else:
                self.accum[name] = g.clone()
        self.accum_steps += int(got)

    def _install_grads(self) -> None:
        """A gradient-reading importance reads ``.grad``: put the mean accumulated gradient there."""
        missing = [n for n in self.layers if f"{n}.weight" not in self.accum] if self.accum_steps else []
        if not self.accum_steps or missing:
            raise TargetError(
                f"{self.where}.importance: {self._importance_name()!r} needs gradients, but "
                f"{'none arrived' if not self.accum_steps else f'layers {missing} got none'} before the "
                "removal: give the recipe fine-tuning epochs (finetune.epochs > 0) or call loss.backward() "
                "before pruner.step(); otherwise use importance l1, l2 or bn_scale"
            )
        for name, p in self.model.named_parameters():
            g = self.accum.get(name)
            if g is not None and g.shape == p.shape:
                p.grad = (g / self.accum_steps).to(p.dtype)
            else:
                p.grad = torch.zeros_like(p)

    def _importance_name(self) -> str:
        return type(self.importance).__name__ if self.custom else str(self.spec.importance)

    def _remove(self, until: int | None) -> Changes:
        assert self._tp is not None, "removal after finalize"
        if self.needs_grad:
            self._install_grads()
        with torch.no_grad():
            while self.done < len(self.events) and (until is None or self.events[self.done] <= until):
                self._one_event()
                self.done += 1
        if self.needs_grad:
            for p in self.model.parameters():
                p.grad = None  # the optimizer is rebuilt anyway; stale shapes must not linger
            self.accum, self.accum_steps = {}, 0
        history = tpa.pruning_history(self._tp.graph)
        new = surgery.normalize_history(history[self._history_seen :])
        self._history_seen = len(history)
        return Changes(history=tuple(new), structure_changed=True)

    def _one_event(self) -> None:
        assert self._tp is not None
        tpp = self._tp
        for group in tpp.step():
            root = tpa.group_root(group)
            idxs = tpp.root_idxs(group)
            current = tpa.out_channels(tpp.graph, root)
            allowed = current - min(self.spec.min_channels, current)
            if len(idxs) > allowed:
                if allowed <= 0 or _grouped(group):
                    continue  # at the floor (a grouped conv cannot be trimmed evenly: left as is)
                # Keep the floor: remove only the least important of the proposed channels.
                imp = tpp.estimate(tpp.regroup(group, range(current)))
                idxs = sorted(idxs, key=lambda i: float(imp[i]))[:allowed]
                group = tpp.regroup(group, idxs)
            surgery.prune_group(self.model, group)


def _expand(model: nn.Module, pattern: str) -> list[str]:
    """Module names an ``ignore`` entry covers: the matches and, for containers, everything inside."""
    matches = [n for n, _ in model.named_modules() if n and fnmatchcase(n, pattern)]
    return [n for n, _ in model.named_modules() if any(n == m or n.startswith(m + ".") for m in matches)]


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    return int(cast(_ConvNd, module).out_channels)


def _grouped(group: tpa.Group) -> bool:
    return any(isinstance(m, _ConvNd) and 1 < m.groups < m.out_channels for m in tpa.group_modules(group))
