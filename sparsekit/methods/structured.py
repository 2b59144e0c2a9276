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
steps since the previous removal, as ``taylor`` does. A step whose gradients no optimizer used and that hold inf or
NaN (one ``GradScaler`` skipped on an overflow) adds nothing to that mean.

Removal happens in ``steps`` events, one at the start of each of ``steps`` equal slices of
``schedule.start_epoch .. end_epoch`` (``oneshot``: all at the start), each removing ``ratio / steps``
more, as torch-pruning's iterative pruner does; every event is followed by a slice of fine-tuning. An event due at
step 0 runs at the first :meth:`~sparsekit.pruner.Pruner.step` (or at finalize), so building a
Pruner never changes the model: resuming replays the recorded history onto the untouched model.

After each event the model has new, smaller parameters: :meth:`Structured.after_step` returns
``Changes(history=..., structure_changed=True)``, the Pruner sets ``pruner.structure_changed`` and the
training loop must rebuild its optimizer (``sparsekit.finetune`` does). Every removal is appended to
``pruner.pruning_history`` (torch-pruning's JSON-able history) so a checkpoint is rebuilt by replay.

Per-layer ratios (``layer_ratio: {layer: fraction}``, written by hand or chosen by
:func:`sparsekit.allocation.allocate` for ``ratio: auto``): the group rooted at each listed layer is ranked
on its own and loses that fraction of its channels (0: none), spread over the ``steps`` events like
``ratio`` (torch-pruning's ``pruning_ratio_dict``); the other selected layers follow ``ratio`` and ``scope``.
A listed layer must be one whose outputs the entry removes and the root of its group (for channels coupled
across layers, e.g. by a residual add, the layer named in the error). An entry still holding ``ratio: auto``
is refused when the method is built (RecipeError: allocate first).

``layers`` selects whose outputs may be removed; ``ignore`` (default: the classifier head, the last
prunable layer in forward order) keeps a layer's outputs. A layer's inputs shrink whenever its
producer loses channels, whatever the selection.

``min_channels`` is a floor for every layer a removal touches, counted on the model as it is: the
channels the whole dependency group removes from each member (a root's coupled channels through a
view, a chunk or a grouped conv; a consumer's inputs), not the indices asked for. A proposal that
would take a member below its floor, or remove more of the root than asked, is cut to its least
important units that fit (or skipped); torch-pruning's own guard is consulted before every removal,
and after every event the model's forward pass is checked. :meth:`Structured.report` says, per layer,
the fraction asked, the fraction achieved and why they differ (``per_layer``).

A group that loses ``ratio`` of its channels keeps the nearest count (a tie keeps more; torch-pruning truncates
the kept count, so 0.3 of 64 removed 20). ``round_to`` (default 16, measured fastest, see benchmarks/README.md;
``null`` or 1: off) aligns channel
counts for onnxruntime's CPU kernels, which handle other counts poorly (resnet_small with 30% of its
channels removed measured slower than dense without it; see benchmarks/README.md): at every event, a group
sized by ``ratio`` that loses channels keeps the nearest multiple of ``round_to`` (torch-pruning's
``round_to`` rounds down; the nearest keeps the achieved fraction close to the asked one), or the first
multiple at or above ``min_channels`` when the nearest is below it, or all its channels when no such
multiple is below its width; a group
narrower than twice ``round_to`` aligns to half of it (16-31 channels to 8 under the default), and one
narrower than ``round_to`` keeps any count (narrower when first ranked: with several ``steps`` every event keeps
the multiple of the group's first width, as one event would). Layers listed in ``layer_ratio`` keep the exact
count their fraction gives (``ratio: auto`` writes one for every group, in whole blocks of ``round_to`` for
``target_macs`` and of :func:`sparsekit.allocation.latency_align` for ``target_latency``). The report's
``reason`` says when rounding moved a layer away from its fraction.

Layouts torch-pruning does not model are refused when the method is built (TargetError naming the
layer, the operation and the ``ignore`` entry that avoids it): a depthwise convolution with a channel
multiplier > 1 fed by a pruned layer, ``F.glu`` along the channel dimension, and any group whose
channel mapping runs past a layer's channel count. Then a probe (:mod:`sparsekit.equivalence`) removes half of
every group's channels from a copy and compares it with the dense model whose consumers ignore those channels:
channels that pass through an operation torch-pruning maps by index though it reorders or mixes them (a
ShuffleNet channel shuffle, ``x.flip(1)``, ``torch.roll``, a softmax over channels) would give a pruned model that
runs and exports but is not the original with those channels removed; such a group is refused (TargetError naming
its root layer and the ``ignore`` remedy). :func:`sparsekit.rehearsal.rehearse` performs every
removal on a copy to catch what inspection cannot.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .. import equivalence, surgery
from .. import tp_adapter as tpa
from ..errors import TargetError, one_line
from ..layers import check_names, computed_tensor, select_layers
from ..learning_rate import on_optimizer_steps
from ..masks import weight_of
from .base import UNCHANGED, Changes, Setup, warn_computed
from .magnitude import unallocated

_ROOTS = (_ConvNd, nn.Linear)
# What the MACs a removal saves are counted on (channel_roots): the layers, and attention, whose packed input
# projection (stats.layer_macs counts it under the attention's name) shrinks with the embedding's channels.
_SHRINKING = (*_ROOTS, nn.MultiheadAttention)


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
    """Channel removal over torch-pruning's dependency graph (``method: structured``).

    Raises TargetError at construction when the input shape is unknown, the model cannot be traced,
    the selection leaves nothing to prune, ``bn_scale`` meets a model without BatchNorm, ``ratio`` /
    ``min_channels`` cannot be met, a layout torch-pruning does not model would be pruned (by inspection, or by
    the equivalence probe: ``verify=False`` skips it, for internal copies built again after a checked one), or a weight
    the forward pass also uses outside its layer (tied) would change shape; TypeError
    when a ``scorers=`` importance is not callable; TargetError when ``layer_ratio`` names a layer whose outputs
    the entry does not remove (but for 0, asking nothing of a selected layer that cannot lose channels) or that is
    not its group's root; RecipeError when ``ratio`` is still ``auto``.
    A removal event raises TargetError (naming the layer) when torch-pruning fails on a group or the model's
    forward pass fails afterwards."""

    name = "structured"
    masks_weights = False
    zeroes_weights = False
    structural = True  # changes weight shapes: no masking method may own the layers it touches

    def __init__(self, spec: Any, model: nn.Module, setup: Setup, *, verify: bool = True) -> None:
        self.spec = spec
        self.where = setup.where
        if spec.auto:
            raise unallocated(self.where, "ratio")
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
            from ..modelio import input_shape_example

            # the model's own kind of example: [1, 128] token ids for an embedding first, a conv's channels, ...
            example = "[" + input_shape_example(model).replace(",", ", ") + "]"
            raise TargetError(
                f"{self.where}: structured pruning traces the model and needs its input shape: set "
                f"model.input_shape in the recipe (e.g. {example}) or pass "
                "context={'input_shape': [1, ...]} to the Pruner"
            )
        self.input_shape = [int(d) for d in shape]
        selected = select_layers(model, spec.layers, f"{self.where}.layers")
        warn_computed(model, spec, selected, self.where, self.name)  # (one whose channels a removal reaches is refused)
        # The heads: the layers whose outputs are the model's (every one of a model returning several).
        self.heads: list[str] = []
        if spec.ignore is None:
            try:
                self.heads = surgery.output_layers(model, self.input_shape)
            except Exception as err:  # noqa: BLE001 - the user's forward on that shape
                raise self._untraceable(err) from None
            ignore = list(self.heads)
        else:
            check_names(model, spec.ignore, f"{self.where}.ignore")
            ignore = list(spec.ignore)
        kept = {name for pattern in ignore for name in _expand(model, pattern)}
        self.layers = {n: m for n, m in selected.items() if n not in kept}
        # Selected but kept whole by ignore: the report names them as this entry's, not as layers no entry selects.
        why = "the classifier head (ignore's default)" if spec.ignore is None else "in its ignore"
        self.ignored = {n: why for n in selected if n in kept}
        if not self.layers:
            if spec.ignore is None:
                raise TargetError(
                    f"{self.where}: the only selected layer(s), {', '.join(repr(n) for n in selected)}, are the "
                    "model's head(s), whose outputs are the model's and stay whole (ignore's default); nothing left "
                    "to prune: select the layers before them (layers.include)"
                )
            raise TargetError(f"{self.where}: every selected layer is in ignore; nothing left to prune")
        self.events = _event_steps(spec, setup.steps_per_epoch)
        self.done = 0  # removal events performed
        self.accum: dict[str, torch.Tensor] = {}  # taylor: summed grads per parameter name
        self.accum_steps = 0
        # Optimizer steps seen, to tell a gradient no optimizer used (a step GradScaler skipped on an overflow)
        self._optimizer_steps = self._steps_seen = 0
        self._hook = on_optimizer_steps(self, Structured._count_optimizer_step) if self.needs_grad else None
        self._history_seen = 0
        self.initial = {n: _out_channels(m) for n, m in self.layers.items()}
        # Per layer, the output channels when this entry's first event ran: what its ratio is a fraction of (torch-
        # pruning sizes each ranking scope then). After another structured entry's removals that is fewer than
        # `initial`, and counting asked vs achieved on `initial` reported a second entry's exact 0.25 of the
        # channels left as 0.125 and "target missed" (--strict failed the run).
        self.base = dict(self.initial)
        # Per layer, the output channels this entry's own events removed: what its asked-vs-achieved counts (an l1
        # entry's remove_dead on the same layer removes more, which is that entry's result, not this one's).
        self.removed = dict.fromkeys(self.layers, 0)
        if all(c <= spec.min_channels for c in self.initial.values()):
            raise TargetError(
                f"{self.where}.min_channels: {spec.min_channels} is at least the channel count of every selected "
                f"layer (largest: {max(self.initial.values())}), so nothing would be removed; lower it"
            )
        self.names = {m: n for n, m in model.named_modules()}
        self.reasons: dict[str, str] = {}  # layer -> why an event removed less than proposed
        self.rounding: dict[str, str] = {}  # layer -> what round_to did at its last ranked event

        chosen = set(self.layers.values())
        ignored = [m for m in model.modules() if isinstance(m, (*_ROOTS, nn.LSTM)) and m not in chosen]
        try:
            self.output_shapes = surgery.output_shapes(model, self.input_shape)
            reused = surgery.reused_parameters(model, self.input_shape)
            with surgery.traced(model):
                self._tp: tpa.ChannelPruner | None = tpa.ChannelPruner(
                    model,
                    surgery.example_input(model, self.input_shape),
                    importance=self.importance,
                    global_pruning=spec.scope == "global",
                    ratio=spec.ratio,
                    steps=spec.steps,
                    ignored=ignored,
                    root_types=list(_ROOTS),
                    layer_ratios=spec.layer_ratio,
                    round_to=spec.round_to,
                    min_channels=spec.min_channels,
                )
        except TargetError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's forward or torch-pruning's tracer
            raise self._untraceable(err) from None
        self._shapes = _shapes(model)  # the layout tp's graph knows: see _remove
        graph = self._tp.graph
        self.touched: list[str] = []  # Conv/Linear layers whose weight shape may change
        self.touched_by: dict[str, list[str]] = {}  # touched layer -> selected layers whose removal shrinks it
        self._owner: dict[str, str] = {}  # a selected layer whose outputs another layer's group removes
        # A selected layer whose output channels are coupled to an ignored layer's: no group can remove them.
        self.held: dict[str, str] = {}
        self._blocks: dict[str, int] = {}  # channel blocks of each root (grouped convs)
        no_bn: list[str] = []  # with bn_scale: roots whose channels no BatchNorm scales (tp would skip them)
        problems: dict[str, str] = {}  # root -> why its channels cannot go: all named at once, not one per run
        for group in self._tp.groups():
            root = tpa.group_root(group)
            root_name = self.names[root]
            if tpa.is_bn_scale(self.importance) and not any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in tpa.group_modules(group)
            ):
                no_bn.append(root_name)
            problem = self._layout_problem(group)
            if problem:
                problems[root_name] = problem
                continue
            single = tpa.single_channel_member(graph, group)
            if single is not None and tpa.out_channels(graph, root) > 1:
                # tp never ranks this group (a layer in it has one channel, and always will): as a root it read as
                # "achieved 0.000" with no reason, and the sensitivity analysis probed it for nothing.
                side = "output" if single.out_channels else "input"
                self.held[root_name] = (
                    f"its output channels go with the single {side} channel of "
                    f"{self.names.get(single.module, single.op)!r} (torch-pruning removes no channel of a group "
                    "holding a one-channel layer)"
                )
                continue
            self._blocks[root_name] = max(1, self._tp.channel_groups(group))
            for member in tpa.group_members(graph, group):
                module = member.module
                if isinstance(module, nn.MultiheadAttention) and member.out_channels:
                    # Attention applies its out_proj's weight itself, so the trace never reaches that Linear (it read
                    # as "not reached by the forward pass", its channels counted apart); its outputs are the
                    # embedding's channels, which this group removes. (Not "touched": the attention's own use of
                    # the weight is no tie.)
                    proj = self.names.get(module.out_proj)
                    if proj in self.layers and proj is not None:
                        self._owner.setdefault(proj, root_name)
                    continue
                if not isinstance(module, _ROOTS) or module not in self.names:
                    continue
                name = self.names[module]
                if name not in self.touched:
                    self.touched.append(name)
                self.touched_by.setdefault(name, [])
                if root_name not in self.touched_by[name]:
                    self.touched_by[name].append(root_name)
                if member.out_channels and module is not root and name in self.layers:
                    self._owner.setdefault(name, root_name)
            own = spec.layer_ratio is not None and root_name in spec.layer_ratio
            if spec.scope == "layer" or own:
                per_group = tpa.out_channels(graph, root) // self._blocks[root_name]
                ratio = spec.ratio_of(root_name)
                # What each channel group keeps, counted as the ranking counts it (the nearest count, tpa.kept_units):
                # a truncated count refused 0.9 of 8 channels as removing all 8, where the ranking keeps 1.
                if per_group > 1 and tpa.kept_units(per_group, ratio) < 1:
                    field = f"layer_ratio.{root_name}" if own else "ratio"
                    raise TargetError(
                        f"{self.where}.{field}: {ratio:g} would remove every output channel of "
                        f"{root_name!r} ({tpa.out_channels(graph, root)} channels): lower the ratio or add "
                        f"{root_name!r} to ignore"
                    )
        if problems:
            # Each layer with its own reason: one reason for all sent a layer blocked by another cause (a depthwise
            # multiplier) looking for the parametrization the first one's group reaches.
            by_reason: dict[str, list[str]] = {}
            for blocked, problem in problems.items():
                by_reason.setdefault(problem, []).append(blocked)
            said = "; ".join(f"of {', '.join(repr(n) for n in roots)}: {why}" for why, roots in by_reason.items())
            raise TargetError(f"{self.where}: cannot remove output channels {said}; {self.ignore_hint(list(problems))}")
        if no_bn:
            raise TargetError(
                f"{self.where}.importance: {self._importance_name()!r} ranks channels by BatchNorm scales, but "
                f"{', '.join(repr(n) for n in no_bn)} {'has' if len(no_bn) == 1 else 'have'} no BatchNorm on "
                f"{'its' if len(no_bn) == 1 else 'their'} outputs, so none of {'its' if len(no_bn) == 1 else 'their'} "
                f"channels would be removed: use importance l1, l2 or taylor, or {self.ignore_hint(no_bn)}"
            )
        self._fixed = self._fixed_reasons(graph, chosen)
        self._check_layer_ratio()
        hit = [(layer, param, extra) for layer, param, extra in reused if layer in self.touched]
        if hit:
            roots = list(dict.fromkeys(r for name, _, _ in hit for r in self.touched_by.get(name, [name])))
            # Each weight with its own count: the first one's count, said of all, was wrong for the others.
            # The other modules holding the same tensor (an embedding tied to the output layer): the message named
            # the layer alone, and "a decoder reusing it transposed" read as if a second tensor were involved.
            holders: dict[int, list[str]] = {}
            for pname, param in model.named_parameters(remove_duplicate=False):
                holders.setdefault(id(param), []).append(pname)

            def also(n: str, p: str) -> str:
                own = f"{n}.{p}"
                param = model.get_submodule(n)._parameters.get(p)
                others = [h for h in holders.get(id(param), []) if h != own] if param is not None else []
                return f" (the same tensor as {', '.join(map(repr, others))})" if others else ""

            uses = [
                f"{f'{n}.{p}'!r}{also(n, p)} {'' if i else 'is used '}{extra} more time{'' if extra == 1 else 's'} "
                f"outside {n!r}"
                for i, (n, p, extra) in enumerate(hit)
            ]
            said = uses[0] if len(uses) == 1 else ", ".join(uses[:-1]) + " and " + uses[-1]
            one = len(hit) == 1
            raise TargetError(
                f"{self.where}: {said} in the forward pass (tied weights, e.g. a decoder reusing "
                f"{'it' if one else 'them'} transposed): removing channels would change "
                f"{'its shape' if one else 'their shapes'} there too. Keep {self.where} away from "
                f"{'it' if one else 'them'}: {self.ignore_hint(roots)}"
            )
        if verify:
            self._check_equivalence()

    # ------------------------------------------------------------------ inspection

    def _untraceable(self, err: Exception) -> TargetError:
        return TargetError(
            f"{self.where}: structured pruning cannot trace the model with input_shape {self.input_shape} "
            f"({one_line(err, 200)}); "
            + (surgery.trace_advice(err) or "check model.input_shape, or use an unstructured method")
        )

    def _check_equivalence(self) -> None:
        """Removing channels of every group gives the original model with those channels removed (a probe on a
        copy, :func:`sparsekit.equivalence.mismatched_roots`); TargetError naming the roots whose channels pass
        through an operation torch-pruning maps by index (a channel shuffle, a flip)."""
        assert self._tp is not None
        graph = self._tp.graph
        probed = {self.names[tpa.group_root(g)] for g in self._tp.groups() if equivalence.probes(tpa.group_modules(g))}
        roots = {
            name: (tpa.out_channels(graph, self.layers[name]), blocks)
            for name, blocks in self._blocks.items()
            if name in self.layers and name in probed and self.spec.ratio_of(name) > 0
        }
        found = equivalence.mismatched_roots(self.model, self.input_shape, roots)
        if found is None:
            return
        listed = ", ".join(repr(n) for n in found.roots)
        ops = sorted(
            {
                word
                for group in self._tp.groups()
                if self.names[tpa.group_root(group)] in found.roots
                for m in tpa.group_members(graph, group)
                if (word := op_word(m.op))
            }
        )
        saw = f"; torch-pruning saw {', '.join(ops)} there" if ops else ""
        raise TargetError(
            f"{self.where}: cannot remove output channels of {listed}: they pass through an operation that reorders "
            f"or mixes channels (e.g. a channel shuffle or a flip{saw}), which torch-pruning maps by index, so the "
            "pruned model would not be the original with those channels removed (a probe removal on a copy changed "
            f"the output by up to {found.max_abs_diff:.3g}); {self.ignore_hint(found.roots)}"
        )

    def _check_layer_ratio(self) -> None:
        """Every ``layer_ratio`` name is a layer whose outputs this entry removes, rooting its group."""
        for name in self.spec.layer_ratio or {}:
            if name in self._blocks:
                continue
            if name in self._owner:
                raise TargetError(
                    f"{self.where}.layer_ratio: the output channels of {name!r} are removed together with those of "
                    f"{self._owner[name]!r} (coupled, e.g. by a residual add): give the ratio to "
                    f"{self._owner[name]!r} instead"
                )
            if name in self.held and not self.spec.layer_ratio[name]:
                continue  # asks nothing of a layer that cannot lose channels (an allocation lists such layers)
            if name in self.layers:
                why = self._fixed.get(name, "not ranked")
                raise TargetError(f"{self.where}.layer_ratio: {name!r} cannot lose output channels ({why})")
            roots = ", ".join(self._blocks) or "none"
            raise TargetError(
                f"{self.where}.layer_ratio: {name!r} is not a layer whose output channels this entry removes "
                f"(those are: {roots}; the head and ignore are kept); check the spelling or layers.include"
            )

    def roots(self) -> dict[str, int]:
        """The layers whose groups this entry ranks (the names ``layer_ratio`` takes), with the channel
        blocks each removal unit spans (1, or a grouped convolution's ``groups``), in model order. Empty
        after finalize."""
        return dict(self._blocks) if self._tp is not None else {}

    def channel_roots(self) -> dict[str, tuple[str | None, str | None]]:
        """For every Linear/Conv layer (and attention) whose weight shape this entry may change: ``(root whose removal
        shrinks its outputs, root whose removal shrinks its inputs)`` (None: not shrunk), from
        torch-pruning's groups. A depthwise convolution's channels follow its input, so it may be listed
        under either. Empty after finalize."""
        if self._tp is None:
            return {}
        out: dict[str, list[str | None]] = {}
        for group in self._tp.groups():
            root_name = self.names[tpa.group_root(group)]
            for member in tpa.group_members(self._tp.graph, group):
                module = member.module
                if not isinstance(module, _SHRINKING) or module not in self.names:
                    continue
                slot = out.setdefault(self.names[module], [None, None])
                slot[0 if member.out_channels else 1] = slot[0 if member.out_channels else 1] or root_name
                if isinstance(module, nn.MultiheadAttention) and member.out_channels:
                    # Its embedding is its projections' inputs and outputs at once, out_proj's too (which the
                    # trace never reaches): one removal shrinks both sides of each.
                    slot[1] = slot[1] or root_name
                    proj = self.names.get(module.out_proj)
                    if proj is not None:
                        both = out.setdefault(proj, [None, None])
                        both[0], both[1] = both[0] or root_name, both[1] or root_name
        return {n: (v[0], v[1]) for n, v in out.items()}

    def input_roots(self) -> dict[str, dict[str, int]]:
        """For every Linear/Conv layer whose inputs this entry may shrink: ``{root: how many of its inputs that
        root's removal shrinks}`` (input channels, or features after a flatten). A layer fed by a concatenation
        (a U-Net's skip) has one root per part. Empty after finalize."""
        if self._tp is None:
            return {}
        out: dict[str, dict[str, int]] = {}
        for group in self._tp.groups():
            root_name = self.names[tpa.group_root(group)]
            for member in tpa.group_members(self._tp.graph, group):
                module = member.module
                if member.out_channels or not isinstance(module, _SHRINKING) or module not in self.names:
                    continue
                parts = out.setdefault(self.names[module], {})
                parts[root_name] = max(parts.get(root_name, 0), len(set(member.idxs)))
        return out

    def ratio_of(self, layer: str) -> float:
        """The fraction of ``layer``'s output channels asked by the end: its ``layer_ratio``, else ``ratio``.
        A layer whose output channels are coupled to another's (e.g. through a residual add) follows the
        root of its group: the root's ``layer_ratio`` is what it is asked."""
        return float(self.spec.ratio_of(self._owner.get(layer, layer)))

    def ignore_hint(self, names: list[str]) -> str:
        """What to do about layers that must keep their outputs: name them in ``ignore``."""
        listed = ", ".join(repr(n) for n in names)
        heads = ", ".join(repr(h) for h in self.heads)
        keep_head = ""
        if self.spec.ignore is None and self.heads:
            keep_head = f" (keep the head{'s' if len(self.heads) > 1 else ''} {heads} there too)"
        whose = "its" if len(names) == 1 else "their"
        hint = f"add {listed} to {self.where}.ignore{keep_head} so {whose} output channels are kept"
        if not set(self.layers) - set(names):
            # Those are all the layers the entry prunes: taking the advice only led to "every selected layer is in
            # ignore; nothing left to prune" (an embedding tied to the output layer, whose one hidden Linear feeds it).
            hint += (
                f" (that leaves {self.where} no layer to remove channels of: an unstructured method such as magnitude "
                "zeroes weights of this model without removing channels)"
            )
        return hint

    def _layout_problem(self, group: tpa.Group) -> str | None:
        """Why removing channels of this (full) group would break the model, when it can be seen by
        inspection; None when nothing known is wrong."""
        assert self._tp is not None
        members = tpa.group_members(self._tp.graph, group)
        for member in members:
            # Any member's weight or bias (a layer's, a BatchNorm's): a parametrized bias failed the same way.
            computed = (
                computed_tensor(member.module, inputs=not member.out_channels)
                if isinstance(member.module, nn.Module)
                else None
            )
            if computed is not None:
                # torch-pruning assigns the shrunk weight to the layer, which a parametrization or norm hook holds
                # (KeyError "attribute 'weight' already exists", or a TypeError at the next forward pass): the
                # refusal blamed the layer whose channels go and named the wrong remedy.
                name = self.names.get(member.module, "?")
                return (
                    f"they reach {name!r}, whose {computed[0]} is computed in the forward pass ({computed[1]}), which "
                    f"channel removal cannot resize (remove it before pruning with {computed[2]})"
                )
        for member in members:
            module = member.module
            if (
                isinstance(module, nn.modules.conv._ConvTransposeNd)
                and module.groups > 1
                and not (module.groups == module.in_channels == module.out_channels)
            ):
                # Its weight is [in, out/groups, ...]: torch-pruning indexes it as a Conv's (an IndexError when
                # ranking, or input channels removed past what the layer before it lost). Depthwise is fine.
                return (
                    f"they pass through {self.names.get(module, '?')!r}, a grouped transposed convolution "
                    f"({type(module).__name__}({module.in_channels}, {module.out_channels}, groups={module.groups})), "
                    "whose channels torch-pruning maps wrongly"
                )
        for member in members[1:]:
            module = member.module
            if (
                isinstance(module, _ConvNd)
                and not member.out_channels
                and 1 < module.groups == module.in_channels != module.out_channels
            ):
                return (
                    f"they feed {self.names.get(module, '?')!r}, a depthwise convolution with channel multiplier "
                    f"{module.out_channels // module.in_channels} ({type(module).__name__}({module.in_channels}, "
                    f"{module.out_channels}, groups={module.groups})): depthwise multiplier "
                    f"{module.out_channels // module.in_channels} is a layout torch-pruning cannot shrink"
                )
        for member in members:
            if isinstance(member.module, _ROOTS) and member.channels is not None and member.idxs:
                if max(member.idxs) < member.channels:
                    continue
                target = self.names.get(member.module, "?")
                if any(m.op.startswith("Glu") for m in members):
                    return (
                        f"they pass through F.glu along the channel dimension before {target!r} (a channel split "
                        "feeding a gate), which torch-pruning does not model"
                    )
                ops = sorted({w for m in members if (w := op_word(m.op))})
                return (
                    f"torch-pruning maps them past the {member.channels} channels of {target!r}"
                    f"{' through ' + ', '.join(ops) if ops else ''}, a layout it does not model"
                )
        return None

    def _fixed_reasons(self, graph: tpa.Graph, chosen: set[nn.Module]) -> dict[str, str]:
        """Why a selected layer cannot reach the ratio, known before any event: not traced, or its
        output channels are coupled to a layer that keeps its outputs (ignored; those are :attr:`held` too: a
        layer the trace does not reach, such as attention's out_proj, may still lose channels with its group)."""
        out: dict[str, str] = {}
        attention = {id(m.out_proj): n for n, m in self.model.named_modules() if isinstance(m, nn.MultiheadAttention)}
        for name, module in self.layers.items():
            if name in self._owner or name in self._blocks:
                continue  # (attention's out_proj is owned though the trace does not reach it)
            if name in self.held:  # its group holds a one-channel layer (said where the groups were read)
                out[name] = self.held[name]
                continue
            mha = attention.get(id(module))
            if mha is not None and tpa.in_graph(graph, dict(self.model.named_modules())[mha]):
                # The attention applies this weight itself, so the trace never reaches the Linear: it is used, and
                # "not reached by the forward pass" sent users looking for dead code. Its outputs are the attention's
                # embedding channels, which go only with the group feeding the attention, and no group here does.
                out[name] = (
                    f"applied by attention {mha!r} itself: its output channels are the attention's embedding "
                    "channels, removed only with the layer feeding the attention, and no selected layer does (the "
                    "model's input, an ignored layer or one torch-pruning cannot remove channels of, such as an LSTM, "
                    "feeds it)"
                )
                continue
            if not tpa.in_graph(graph, module):
                out[name] = "not reached by the forward pass"
                continue
            try:
                full = tpa.channel_group(graph, module, range(tpa.out_channels(graph, module)))
            except Exception:  # noqa: BLE001 - a module tp cannot prune
                out[name] = "not prunable by torch-pruning"
                continue
            partners = [
                self.names[m.module]
                for m in tpa.group_members(graph, full)
                if m.out_channels and isinstance(m.module, _ROOTS) and m.module not in chosen and m.module in self.names
            ]
            out[name] = f"coupled to ignored layer {partners[0]!r}" if partners else "not ranked"
            if partners:
                self.held[name] = out[name]
        return out

    # ------------------------------------------------------------------ hooks

    def start(self) -> None:
        """Nothing happens at construction; an event at step 0 runs at the first step (see module doc)."""

    def penalty(self) -> torch.Tensor | float:
        """No loss term."""
        return 0.0

    def due(self, step: int) -> bool:
        """Whether :meth:`after_step` at ``step`` runs a removal event (and so replaces parameters); the Pruner
        notes the parameters' names only then, for :meth:`~sparsekit.pruner.Pruner.update_optimizer`."""
        return self.done < len(self.events) and self.events[self.done] <= step

    def after_step(self, step: int) -> Changes:
        """Gather gradients (when the importance reads them); run the removal events due by ``step``
        and return their history (``structure_changed``: rebuild the optimizer)."""
        if self.needs_grad:
            self._accumulate()
        if self.due(step):
            return self._remove(until=step)
        return UNCHANGED

    def rehearse_event(self) -> Changes:
        """Run the next removal event now, whatever the step (a rehearsal on a copy of the model, see
        :func:`sparsekit.rehearsal.rehearse`); an importance that reads gradients gets placeholder
        gradients of ones (Taylor's ``|w * 1|`` ranks by magnitude). UNCHANGED when every event ran."""
        if self.done >= len(self.events):
            return UNCHANGED
        if self.needs_grad:
            self.accum, self.accum_steps = {}, 0
            for p in self.model.parameters():
                p.grad = torch.ones_like(p)
            self._accumulate()
        try:
            return self._remove(until=self.events[self.done], single=True)
        finally:
            if self.needs_grad:
                for p in self.model.parameters():
                    p.grad = None  # placeholders, not a step's gradients: _remove keeps those it did not resize

    def finalize(self, model: nn.Module) -> tuple[nn.Module, Changes]:
        """Run every removal event not yet run (a run that stopped early, or had no fine-tuning, still
        gets the recipe's final shape), then drop torch-pruning's graph."""
        changes = self._remove(until=None) if self.done < len(self.events) else UNCHANGED
        self._tp = None  # drop tp's graph: it holds references to the model
        self.accum = {}
        if self._hook is not None:
            self._hook.remove()
        return model, changes

    def targets(self, epochs: int, steps_per_epoch: int) -> list[float]:
        """Expected fraction of the selected channels removed at the end of each epoch."""
        n = max(epochs, math.ceil(self.events[-1] / max(steps_per_epoch, 1)), 1)
        final = self._asked_total()
        out = []
        for e in range(n):
            k = sum(1 for s in self.events if s <= (e + 1) * steps_per_epoch)
            out.append(final * k / self.spec.steps)
        return out

    def _counted(self) -> list[str]:
        """The layers whose channels the entry's totals count: every selected layer but those coupled to another
        selected layer's group. Such a layer (a depthwise conv after its producer, a residual branch) loses the
        group's channels, not channels of its own, so counting it too would count one removal twice; a layer that
        no group can prune (coupled to a layer kept whole) counts, with all its channels kept."""
        return [n for n in self.layers if n not in self._owner] or list(self.layers)

    def _asked_total(self) -> float:
        """The fraction of the selected layers' output channels asked by the end: ``ratio``, or with
        ``layer_ratio`` the channel-weighted mean of every group root's own ratio."""
        if not self.spec.layer_ratio:
            return float(self.spec.ratio)
        counted = self._counted()
        total = sum(self.base[n] for n in counted)
        return sum(self.ratio_of(n) * self.base[n] for n in counted) / total if total else 0.0

    def report(self) -> dict[str, Any]:
        """Ratio, importance, scope, events run, ``[initial, now]`` output channels per layer, and asked
        vs achieved: ``per_layer`` = ``{layer: {"asked", "achieved", "reason"}}`` (fractions of the
        layer's output channels when the entry's first event ran (:attr:`base`: the initial ones unless another
        structured entry removed some before); ``reason`` says why they differ by a channel (per block) or more,
        ``round_to`` included, or why a layer asked for less than a channel's worth lost none, else None),
        ``asked`` / ``achieved`` over the selected channels, each group's once (its root's, :meth:`_counted`),
        ``at_floor`` = layers left at ``min_channels``."""
        progress = self.done / self.spec.steps
        asked = self._asked_total() * progress
        per_layer: dict[str, dict[str, Any]] = {}
        for name in self.layers:
            initial, now = self.base[name], self.base[name] - self.removed[name]
            achieved = 1 - now / initial
            own = self.ratio_of(name) * progress
            per_layer[name] = {"asked": own, "achieved": achieved, "reason": self._reason(name, own, initial, now)}
        counted = self._counted()
        total = sum(self.base[n] for n in counted)
        now_total = total - sum(self.removed[n] for n in counted)
        extra: dict[str, Any] = {"layer_ratio": dict(self.spec.layer_ratio)} if self.spec.layer_ratio else {}
        achieved = 1 - now_total / total if total else 0.0
        # The layers that moved the entry the way it missed: a layer rounded past its ratio does not explain an entry
        # short of it (40 channels keeping 16 of the 20 asked were listed under "short of the 0.500 asked").
        short = achieved < asked
        why = {
            n: row["reason"]
            for n, row in per_layer.items()
            if row["reason"] and n in counted and (row["achieved"] < row["asked"]) == short
        }
        if why and abs(achieved - asked) * total >= 1 - 1e-6:  # a channel or more off, over the counted layers
            shown = [f"{n!r}: {r}" for n, r in list(why.items())[:3]]
            extra["reason"] = "; ".join(shown) + (f"; and {len(why) - 3} more layers" if len(why) > 3 else "")
        if self.ignored:
            extra["ignored"] = dict(self.ignored)  # layer -> why it keeps its output channels
        return {
            **extra,
            "ratio": self.spec.ratio,
            "importance": type(self.importance).__name__ if self.custom else self.spec.importance,
            "scope": self.spec.scope,
            "events_done": self.done,
            "events": len(self.events),
            "channels": {n: [self.initial[n], _out_channels(m)] for n, m in self.layers.items()},
            "roots": list(self._blocks),  # the layers each rooting a group; the others follow theirs
            "counted": counted,  # the layers asked and achieved count (coupled followers once, as their group)
            "asked": asked,
            "achieved": achieved,
            "per_layer": per_layer,
            "at_floor": [
                n for n, m in self.layers.items() if _out_channels(m) <= min(self.spec.min_channels, self.initial[n])
            ],
        }

    def _reason(self, name: str, asked: float, initial: int, now: int) -> str | None:
        if asked <= 0 and name in self.held:
            return self.held[name]  # asked nothing (layer_ratio 0) because it cannot lose channels: say why
        # A layer coupled to a group's root (a residual branch, a depthwise conv) loses the root's channel blocks too:
        # with 1 block its short count (16 channels under a GroupNorm of 4 at 0.3 keeping 12, not 11) read as
        # rounding, so report.json gave its root the reason and it none.
        blocks = self._blocks.get(name) or self._blocks.get(self._owner.get(name, ""), 1)
        off = abs((initial - now) - asked * initial)
        # Under blocks - 1 off is what the blocks' rounding alone can do, unless round_to moved the count (a 64-channel
        # conv of 4 groups at 0.7 keeping 16, not 20: round_to's doing, which the blocks' reason would hide).
        # A layer at the nearest whole count of its fraction has nothing to explain, whatever round_to did at an
        # earlier removal step (16 channels at 0.5 over 3 steps: 16 at step 1, 8 at step 2, 8 asked at step 3): its
        # stale rounding note put it first in the entry's "short of the ratio asked" and hid the layer that was short.
        if off < blocks - 1e-6 and (name not in self.rounding or off <= 0.5 + 1e-6):
            if blocks > 1 and off > 0.5 + 1e-6:  # more than the nearest whole count: the blocks' rounding
                return (
                    f"channel groups: removal goes in multiples of {blocks}, the same number from each of the "
                    f"{blocks} groups of a grouped conv, a GroupNorm or attention's heads the channels pass through"
                )
            if now == initial and asked * initial > 1e-6:
                # Nothing removed although something was asked (a 1-channel conv at 0.5): achieved 0 beside a
                # ratio reads as a failure unless the report says why: the count's rounding, or the floor.
                if asked * initial <= 0.5 + 1e-6:
                    return (
                        f"{initial} channel(s): {asked:.3f} of them is {asked * initial:.2f} of a channel, which "
                        "rounds to none removed (counts go to the nearest whole channel, a tie keeping more)"
                    )
                if initial <= self.spec.min_channels:
                    return f"{initial} channel(s), at min_channels {self.spec.min_channels}: none can be removed"
            return None  # rounding to the nearest count (tpa.kept_units), per channel block
        rounding = self.rounding.get(name)
        if rounding is None and name in self._owner and self._owner[name] in self.rounding:
            rounding = f"coupled to {self._owner[name]!r} ({self.rounding[self._owner[name]]})"
        why = [r for r in (rounding, self.reasons.get(name)) if r]
        if why and self.spec.scope == "global" and name not in self.reasons:
            why.insert(0, "global ranking")
        if why:
            return "; ".join(why)
        if name in self._fixed:
            return self._fixed[name]
        if name in self._owner:
            return f"coupled to {self._owner[name]!r}"
        if self.spec.scope == "global":
            return "global ranking"
        if blocks > 1:
            return "grouped conv"
        return None

    def state_dict(self) -> dict[str, Any]:
        """Events run, tp's ranking-scope sizes, and the gradients summed since the last removal."""
        return {
            "done": self.done,
            # tp sizes each ranking scope at its first pruning step; a resumed run must not
            # take the already-pruned size as the starting point.
            "scope_channels": self._tp.scope_channels if self._tp is not None else {},
            # each group's first width: round_to's multiple for it at every later event
            "group_widths": self._tp.group_widths if self._tp is not None else {},
            "accum": {n: t.clone() for n, t in self.accum.items()},
            "accum_steps": self.accum_steps,
            "reasons": dict(self.reasons),
            "rounding": dict(self.rounding),
            "removed": dict(self.removed),
            "base": dict(self.base),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after the Pruner replayed the removal history onto the model)."""
        self.done = int(state["done"])
        if self._tp is not None:
            self._tp.steps_done = self.done
            self._tp.scope_channels = state.get("scope_channels", {})
            self._tp.group_widths = state.get("group_widths", {})
        params = dict(self.model.named_parameters())
        self.accum = {
            n: t.clone().to(params[n].device)
            for n, t in state.get("accum", {}).items()
            if n in params and params[n].shape == t.shape
        }
        self.accum_steps = int(state.get("accum_steps", 0)) if self.accum else 0
        self.reasons = {str(k): str(v) for k, v in state.get("reasons", {}).items()}
        self.rounding = {str(k): str(v) for k, v in state.get("rounding", {}).items()}
        # (a checkpoint from before 0.3.4 has no count: every channel gone from a layer was this entry's)
        removed = state.get("removed") or {n: self.initial[n] - _out_channels(m) for n, m in self.layers.items()}
        self.removed = {n: int(removed.get(n, 0)) for n in self.layers}
        base = state.get("base") or {}
        self.base = {n: int(base.get(n, self.initial[n])) for n in self.layers}

    # ------------------------------------------------------------------ internals

    def _count_optimizer_step(self, optimizer: Any) -> None:
        self._optimizer_steps += 1

    @torch.no_grad()
    def _accumulate(self) -> None:
        used = self._optimizer_steps != self._steps_seen  # an optimizer stepped with these gradients
        self._steps_seen = self._optimizer_steps
        if not used and _overflowed(self.model):
            # A step GradScaler skipped on an overflow: one inf or NaN would make every sum it enters NaN until
            # the next removal, and the channels would be ranked by position. (An optimizer stepped with a
            # gradient only when it was finite: not checked then, no extra pass.)
            return
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
        frozen = [n for n in missing if not weight_of(self.layers[n]).requires_grad]
        if frozen:
            raise TargetError(
                f"{self.where}.importance: {self._importance_name()!r} ranks channels by their gradients, but "
                f"{', '.join(repr(n) for n in frozen)} {'is' if len(frozen) == 1 else 'are'} frozen (requires_grad="
                f"False) and gets none: leave {'it' if len(frozen) == 1 else 'them'} out with {self.where}.layers."
                "exclude (the layers coupled to it then keep their channels too), or use importance l1, l2 or bn_scale"
            )
        # Gradients zeroed before each pruner.step() (zero_grad(set_to_none=False) first) arrive as zeros: every
        # channel would score 0 and the removal keep channels by position, so that is refused as none.
        zeros = (
            bool(self.accum_steps)
            and not missing
            and not any(bool(self.accum[f"{n}.weight"].any()) for n in self.layers)
        )
        ran = next((n for n, g in self.accum.items() if bool(g.any())), None) if zeros else None
        if ran is not None:
            # Another parameter's gradient is not zero, so the loop's order is right: telling it to call pruner.step()
            # after loss.backward() sent a user with a dead network (a ReLU always off) looking for a bug in the loop.
            raise TargetError(
                f"{self.where}.importance: {self._importance_name()!r} needs gradients, but the selected layers' "
                f"weights got only zero ones, while backward did run ({ran!r} got a gradient): units around them are "
                "dead on the data (a ReLU always off zeroes what flows into a layer or back out of it), so their "
                "channels cannot be ranked by gradients; use importance l1, l2 or bn_scale, or leave those layers out "
                "with layers.exclude"
            )
        if missing:
            # Other parameters got gradients, so the loop's order is right: the missing layers are off the path from
            # the output to the loss (run under torch.no_grad() or detached in forward, or an unused branch), and
            # "give the recipe fine-tuning epochs" sent a user whose recipe had them looking for a bug in the loop.
            one = len(missing) == 1
            raise TargetError(
                f"{self.where}.importance: {self._importance_name()!r} ranks channels by their gradients, but "
                f"{', '.join(repr(n) for n in missing)} {'gets' if one else 'get'} none while the rest of the model "
                f"{'does' if one else 'do'}: {'it is' if one else 'they are'} off the path from the output to the loss "
                "(run under torch.no_grad() or detached in forward, or unused): leave "
                f"{'it' if one else 'them'} out with {self.where}.layers.exclude (the layers coupled to "
                f"{'it' if one else 'them'} then keep their channels too), or use importance l1, l2 or bn_scale"
            )
        if not self.accum_steps or zeros:
            got = "none arrived" if not self.accum_steps else "only zero ones arrived"
            raise TargetError(
                f"{self.where}.importance: {self._importance_name()!r} needs gradients, but {got} before the "
                "removal: give the recipe fine-tuning epochs (finetune.epochs > 0), and in a loop of your own call "
                "pruner.step() after loss.backward() and optimizer.step() and before optimizer.zero_grad(); otherwise "
                "use importance l1, l2 or bn_scale"
            )
        for name, p in self.model.named_parameters():
            g = self.accum.get(name)
            if g is not None and g.shape == p.shape:
                p.grad = (g / self.accum_steps).to(p.dtype)
            else:
                p.grad = torch.zeros_like(p)

    def _importance_name(self) -> str:
        return type(self.importance).__name__ if self.custom else str(self.spec.importance)

    def _remove(self, until: int | None, single: bool = False) -> Changes:
        assert self._tp is not None, "removal after finalize"
        if _shapes(self.model) != self._shapes:
            # Channels went through another graph since ours last removed any (a resume's replay, another
            # structured entry): ours would map them through a concatenation by its old widths.
            with surgery.traced(self.model):
                self._tp.retrace(self.model, surgery.example_input(self.model, self.input_shape))
            self._history_seen = 0
        # This step's own gradients, put back on the parameters the removal leaves as they were: an entry after
        # this one in the recipe (gradient saliency on another layer) reads them in the same pruner.step().
        step_grads = [(p, p.grad) for p in self.model.parameters()] if self.needs_grad else []
        if self.needs_grad:
            self._install_grads()
        before = {n: _out_channels(m) for n, m in self.layers.items()}
        # The model's layout before the event, without storage: should the event break the forward pass, its
        # removals are replayed one by one on it to name the layer that broke it (the event's first roots need
        # not include that layer, and ignoring them would not help).
        skeleton = _skeleton(self.model)
        if self.done == 0:
            self.base = dict(before)
        try:
            with torch.no_grad():
                while self.done < len(self.events) and (until is None or self.events[self.done] <= until):
                    self._one_event()
                    self.done += 1
                    if single:
                        break
        finally:
            if self.needs_grad:
                for p in self.model.parameters():
                    p.grad = None  # the optimizer is rebuilt anyway; stale shapes must not linger
                kept = {id(p) for p in self.model.parameters()}
                for p, g in step_grads:
                    if g is not None and id(p) in kept and g.shape == p.shape:  # not replaced nor resized
                        p.grad = g
                self.accum, self.accum_steps = {}, 0
            for n, m in self.layers.items():
                self.removed[n] += before[n] - _out_channels(m)
        history = tpa.pruning_history(self._tp.graph)
        new = surgery.normalize_history(history[self._history_seen :])
        self._check_forward(new, skeleton)  # raises with the event's removals still pending (see pending_history)
        self._history_seen = len(history)
        self._shapes = _shapes(self.model)
        return Changes(history=tuple(new), structure_changed=True)

    def pending_history(self) -> list[list[Any]]:
        """Removals made since the last returned :class:`Changes` (those of an event that failed part way),
        in the JSON form of ``pruning_history``; empty after finalize."""
        if self._tp is None:
            return []
        return surgery.normalize_history(tpa.pruning_history(self._tp.graph)[self._history_seen :])

    def _check_forward(self, history: list[list[Any]], skeleton: nn.Module | None = None) -> None:
        """After an event: the model still runs on its input shape and gives outputs of the same shape.
        ``skeleton``: the model before the event (:func:`_skeleton`), on which the removal that broke it is found."""
        failure = surgery.forward_failure(self.model, self.input_shape, self.output_shapes)
        if failure is None:
            return
        culprit = _culprit(self, skeleton, history)
        if culprit is not None:
            raise culprit
        roots = list(dict.fromkeys(str(entry[0]) for entry in history))
        # An output that changed shape comes from a layer that must keep its channels (a decoder beside the
        # logits): name that one, which the first few roots of the event may not include.
        keep = [n for n in surgery.changed_outputs(self.model, self.input_shape, self.output_shapes) if n in roots]
        buffers = surgery.stale_buffer_words(surgery.stale_buffers(self.model, history, failure))
        raise TargetError(
            f"{self.where}: after removal event {self.done} of {len(self.events)} (channels of "
            f"{', '.join(repr(r) for r in roots) or 'no layer'}), the model's forward pass fails {failure}"
            f"{buffers or '; '}"
            f"{self.ignore_hint(keep or roots[:3]) if roots else 'use an unstructured method for this model'}"
        )

    def _failure(self, root: nn.Module, doing: str, err: BaseException) -> TargetError:
        name = self.names.get(root, type(root).__name__)
        return TargetError(
            f"{self.where}: torch-pruning failed {doing} for {name!r} ({one_line(err, 160)}), a layout it does "
            f"not model; {self.ignore_hint([name])}"
        )

    def _one_event(self) -> None:
        assert self._tp is not None
        try:
            for proposal in self._tp.step():
                self._remove_proposal(proposal)
        except tpa.GroupFailure as err:
            raise self._failure(err.root, "ranking the channels", err.error) from None
        finally:
            for name, rounding in self._tp.rounded.items():
                if rounding is None:
                    self.rounding.pop(name, None)
                else:
                    self.rounding[name] = _rounding_reason(rounding, self._tp.steps_done, self._tp.steps)
            self._tp.rounded.clear()

    def _remove_proposal(self, proposal: tpa.Proposal) -> None:
        """Remove what the proposal asks, or the most of it that every member's floor allows."""
        assert self._tp is not None
        tpp, graph = self._tp, self._tp.graph
        root = self.names.get(proposal.root, "?")
        asked = len(proposal.idxs)
        try:
            group = tpp.group(proposal, proposal.idxs)
            if self._blocked(tpa.group_members(graph, group), asked) is not None:
                trimmed, why = self._trim(proposal, asked)
                self._note(root, why)
                if trimmed is None:
                    return
                group = trimmed
            if not tpa.guard(graph, group):
                self._note(root, "torch-pruning's guard: a coupled layer would lose every channel")
                return
            surgery.prune_group(self.model, group)
        except TargetError:
            raise
        except Exception as err:  # noqa: BLE001 - torch-pruning on a layout it does not model
            raise self._failure(proposal.root, "removing channels", err) from None

    def _note(self, layer: str, reason: str) -> None:
        self.reasons.setdefault(layer, reason)

    def _floor(self, channels: int) -> int:
        return min(self.spec.min_channels, channels)

    def _blocked(self, members: list[tpa.Member], asked: int) -> str | None:
        """Why removing this group is not allowed as is (None: it is): the root would lose more channels
        than asked (coupled channels), or a member would go below its floor."""
        root = members[0]
        removed = len(set(root.idxs))
        if removed > asked:
            return self._coupled_reason(members, removed)
        for member in members:
            if member.channels is None:
                continue
            if member.channels - len(set(member.idxs)) < self._floor(member.channels):
                return self._floor_reason(member, members[0].module)
        return None

    def _coupled_reason(self, members: list[tpa.Member], removed: int) -> str:
        ops = sorted({w for m in members if (w := op_word(m.op))})
        via = f" through {', '.join(ops)}" if ops else ""
        return f"coupled channels{via}: removal goes in blocks of {removed}"

    def _floor_reason(self, member: tpa.Member, root: Any) -> str:
        if member.module is root or not isinstance(member.module, nn.Module):
            return "floor min_channels"
        name = self.names.get(member.module, type(member.module).__name__)
        if isinstance(member.module, _ROOTS):
            kind = "output" if member.out_channels else "input"
            return f"floor min_channels of {name!r} ({kind} channels)"
        return f"floor min_channels (coupled {name!r})"

    def _trim(self, proposal: tpa.Proposal, asked: int) -> tuple[tpa.Group | None, str]:
        """The proposal's least important units that fit: each unit is added while the root loses at most
        ``asked`` channels and every member keeps its floor. Returns the group (None: nothing fits) and
        why the proposal was cut."""
        assert self._tp is not None
        tpp, graph = self._tp, self._tp.graph
        chosen: list[int] = []
        removed: dict[tuple[int, bool], set[int]] = {}
        why: str | None = None
        for unit in proposal.units:
            members = tpa.group_members(graph, tpp.group(proposal, unit))
            trial = {(id(m.module), m.out_channels): set(m.idxs) for m in members}
            merged = {k: removed.get(k, set()) | v for k, v in trial.items()}
            root_key = (id(members[0].module), members[0].out_channels)
            problem = None
            if len(merged[root_key]) > asked:
                problem = self._coupled_reason(members, len(trial[root_key]))
            else:
                for m in members:
                    key = (id(m.module), m.out_channels)
                    if m.channels is not None and m.channels - len(merged[key]) < self._floor(m.channels):
                        problem = self._floor_reason(m, members[0].module)
                        break
            if problem is not None:
                why = why or problem
                continue
            removed.update(merged)
            chosen.extend(unit)
        reason = why or "floor min_channels"
        if not chosen:
            return None, reason
        group = tpp.group(proposal, sorted(set(chosen)))
        if self._blocked(tpa.group_members(graph, group), asked) is not None:
            return None, reason  # the units' removals did not add up (a mapping tp does not keep additive)
        return group, reason


def _rounding_reason(r: tpa.Rounding, step: int = 1, steps: int = 1) -> str:
    """How ``per_layer[...]["reason"]`` says what ``round_to`` did to a layer (see :func:`tpa.aligned_keep`) at
    removal step ``step`` of ``steps`` (said when there are several: the layer's width then is not its own)."""
    m = r.multiple or r.round_to  # with a grouped conv's blocks; half of round_to for a narrow group
    of = f"{m}"
    if r.halved:
        of += f" (half of round_to: the layer is narrower than {4 * m})"  # twice the full multiple, 2 * m
    elif m != r.round_to:
        of += (
            " (round_to and the layer's channel groups: a grouped conv, a GroupNorm or attention's heads lose "
            "channels evenly from each)"
        )
    head = f"round_to {r.round_to}"
    if steps > 1:
        head += f", at removal step {step} of {steps} with {r.channels} channels left"
    if r.kept == r.channels and r.asked // m * m >= max(r.floor, 1):
        return (
            f"{head}: keeps all {r.channels} channels instead of {r.asked}: {r.channels} is the nearest multiple of "
            f"{of}"
        )
    if r.kept == r.channels:
        return (
            f"{head}: keeps all {r.channels} channels instead of {r.asked}: no multiple of {of} below {r.channels} "
            f"is at or above min_channels {r.floor}"
        )
    if r.kept > r.asked and r.asked // m * m < r.floor:
        return (
            f"{head}: keeps {r.kept} of {r.channels} channels, up from {r.asked} to the first multiple of {of} at or "
            f"above min_channels {r.floor}"
        )
    return f"{head}: keeps {r.kept} of {r.channels} channels, {r.asked} rounded to the nearest multiple of {of}"


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Every parameter's and buffer's name and shape: what a channel removal changes."""
    return [(n, tuple(t.shape)) for n, t in [*model.named_parameters(), *model.named_buffers()]]


def _skeleton(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` on the meta device (no storage; None when it cannot be made)."""
    from ..rehearsal import meta_copy  # rehearsal imports this module

    try:
        return meta_copy(model)
    except Exception:  # noqa: BLE001 - only the blame in an error message depends on it
        return None


def _culprit(method: Structured, skeleton: nn.Module | None, history: list[list[Any]]) -> TargetError | None:
    """The TargetError naming the first removal of ``history`` that breaks the model, replayed on ``skeleton``
    given storage (placeholder values: a broken forward pass is a matter of shapes); None when it cannot tell."""
    from ..rehearsal import _culprit as replay

    if skeleton is None:
        return None
    try:
        device = next(iter(method.model.parameters())).device
        fresh = skeleton.to_empty(device=device)
        with torch.no_grad():
            for p in fresh.parameters():
                p.normal_(0.0, 0.1)
            for b in fresh.buffers():
                b.zero_() if not b.is_floating_point() else b.fill_(1.0)
    except Exception:  # noqa: BLE001 - best effort, as above
        return None
    return replay(fresh, history, list(method.input_shape), method)


def _expand(model: nn.Module, pattern: str) -> list[str]:
    """Module names an ``ignore`` entry covers: the matches and, for containers, everything inside."""
    matches = [n for n, _ in model.named_modules() if n and fnmatchcase(n, pattern)]
    return [n for n, _ in model.named_modules() if any(n == m or n.startswith(m + ".") for m in matches)]


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    return int(cast(_ConvNd, module).out_channels)


# How reasons name torch-pruning's stand-ins for functional operations (see tpa.Member.op).
_OP_WORDS = {
    "_ReshapeOp": "view/reshape",
    "_SplitOp": "split/chunk",
    "_ConcatOp": "concat",
    "_UnbindOp": "unbind",
    "_SliceOp": "slice",
    "_ExpandOp": "expand",
}


def op_word(op: str) -> str | None:
    """How a message names the operation a group member stands for (see ``tpa.Member.op``), or None for
    a plain module or element-wise operation."""
    if op.startswith("Glu"):
        return "F.glu"
    return _OP_WORDS.get(op)


def _overflowed(model: nn.Module) -> bool:
    """Whether a gradient of ``model`` holds inf or NaN (one sum per gradient, one host sync for all)."""
    sums = [
        p.grad.sum(dtype=torch.promote_types(p.grad.dtype, torch.float32))
        for p in model.parameters()
        if p.grad is not None
    ]
    if not sums:
        return False
    return not bool(torch.isfinite(torch.stack([t.to(sums[0].device) for t in sums])).all())
