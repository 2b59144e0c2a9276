"""Every use of torch-pruning (``tp``) in sparsekit, behind named functions.

sparsekit relies on torch-pruning (Fang et al., 2023, "DepGraph: Towards Any Structural Pruning") for
how removing a channel ripples through a network. No other module imports ``torch_pruning`` or reads
the attributes of its objects (graphs, groups, pruners): they call the functions here. A few of the
attributes used are private or undocumented; each is marked ``PRIVATE`` below with why it is needed,
and :data:`TP_ATTRIBUTES` lists every attribute this module touches so that ``tests/test_tp_adapter.py``
fails loudly when a torch-pruning release drops or renames one (pyproject bounds it to ``>=1.5,<1.7``).

torch-pruning is imported on first use, never when this module is: ``import sparsekit.pruner`` stays
free of it until a structural method or surgery runs.

Vocabulary (torch-pruning's): a *graph* (``tp.DependencyGraph``) is traced once from a model and an
example input; a *group* (``tp.Group``) is every coupled (module, channel indices) pair that removing
some channels of one *root* module implies (the root's outputs, BatchNorm entries, the next layers'
inputs, residual partners); ``group.prune()`` changes those modules in place, replacing their
``nn.Parameter`` objects with smaller ones.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

# torch-pruning ships no type information: its objects are Any here.
Graph = Any  # tp.DependencyGraph
Group = Any  # tp.Group
Importance = Any  # tp.importance.Importance, or any callable(group) -> Tensor[channels]

# Every torch-pruning attribute this module uses, as dotted paths from the ``torch_pruning`` package
# (classes' methods included). Attributes that exist only on instances are in TP_INSTANCE_ATTRIBUTES.
TP_ATTRIBUTES = (
    "DependencyGraph",
    "DependencyGraph.build_dependency",
    "DependencyGraph.check_pruning_group",  # tp's own guard, consulted before every removal
    "DependencyGraph.get_all_groups",
    "DependencyGraph.get_in_channels",
    "DependencyGraph.get_out_channels",
    "DependencyGraph.get_pruner_of_module",
    "DependencyGraph.get_pruning_group",
    "DependencyGraph.is_out_channel_pruning_fn",
    "DependencyGraph.pruning_history",
    "Group.prune",
    "Group.__setitem__",
    "ops.OPTYPE.OUTPUT",
    "ops.OPTYPE.PARAMETER",
    "ops.OPTYPE.ELEMENTWISE",
    "ops._SplitOp",  # PRIVATE: its offsets, resynced after each removal (see _resync_splits)
    "pruner.function.BasePruningFunc.get_in_channel_groups",
    "pruner.function.BasePruningFunc.get_out_channel_groups",
    "importance.Importance",
    "importance.MagnitudeImportance",
    "importance.TaylorImportance",
    "importance.GroupTaylorImportance",
    "importance.BNScaleImportance",
)
# Instance attributes, set in ``__init__`` of the class named by the key (and of a group's items and
# nodes): checked by the test on a graph built from a small model.
TP_INSTANCE_ATTRIBUTES = {
    "DependencyGraph": ("module2node",),
    "Node": ("outputs", "module", "type", "grad_fn"),
    "GroupItem": ("dep", "idxs", "root_idxs"),  # root_idxs: PRIVATE (see _listed_once)
    "Dependency": ("target", "handler"),
    "Pruner": ("prune_out_channels", "prune_in_channels", "get_in_channel_groups", "get_out_channel_groups"),
}


def _tp() -> types.ModuleType:
    import torch_pruning  # lazy: see the module docstring

    return torch_pruning


# ----------------------------------------------------------------------------- graphs


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> Graph:
    """Trace ``model`` on ``example_inputs`` (a batch-first tensor the model accepts) into tp's
    dependency graph. Runs one forward pass with autograd on; the caller sets eval mode (see
    :func:`sparsekit.surgery.traced`). Raises whatever the model's forward raises.

    Frozen parameters (``requires_grad=False``) are traced as trainable ones: a frozen layer's output has no
    ``grad_fn`` when its input has none either (a frozen stem, a frozen branch off the input), and tp would
    neither see it nor couple its channels to the layers it is added to.

    A conv with ``padding_mode`` other than ``"zeros"`` is traced as a zero-padded one (the same output shape): its
    padding works channel by channel, so the channels couple the same way, and tp looped forever over the
    concatenated slices a ``"circular"`` pad is made of (a periodic 1-D CNN hung in the Pruner's constructor)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    padded = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.padding_mode != "zeros"]
    modes = [m.padding_mode for m in padded]
    for param in frozen:
        param.requires_grad_(True)
    for conv in padded:
        conv.padding_mode = "zeros"
    try:
        return _tp().DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    finally:
        for param in frozen:
            param.requires_grad_(False)
        for conv, mode in zip(padded, modes, strict=True):
            conv.padding_mode = mode


def in_graph(graph: Graph, module: nn.Module) -> bool:
    """Whether the trace reached ``module`` (a module the forward pass never calls is not in it)."""
    return module in graph.module2node


def can_prune(graph: Graph, module: nn.Module) -> bool:
    """Whether tp knows how to remove channels of ``module``'s type. Never raises."""
    try:
        return graph.get_pruner_of_module(module) is not None
    except Exception:  # noqa: BLE001 - tp raises KeyError & co. for modules it cannot handle
        return False


def out_channels(graph: Graph, module: nn.Module) -> int:
    """Current number of output channels (Linear ``out_features``, Conv ``out_channels``) of a module
    in ``graph``. Raises KeyError when the module is not in the graph."""
    return int(graph.get_out_channels(module))


def in_channels(graph: Graph, module: nn.Module) -> int:
    """Current number of input channels of a module in ``graph`` (KeyError when not in it)."""
    return int(graph.get_in_channels(module))


def channel_group(graph: Graph, module: nn.Module, idxs: Sequence[int], *, outputs: bool = True) -> Group:
    """The group that removing channels ``idxs`` of ``module`` implies: its outputs (``outputs=True``) or
    its inputs, each member's channels listed once (see :func:`_listed_once`). Nothing changes until
    :func:`prune`. Raises (tp's ValueError) when ``module`` is not in the graph or tp cannot prune its type."""
    pruner = graph.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if outputs else pruner.prune_in_channels
    return _listed_once(graph.get_pruning_group(module, fn, list(idxs)))


def _listed_once(group: Group) -> Group:
    """``group`` with each member's channel indices listed once, in place.

    tp maps every root channel to the channel it lands in for each member; when several root channels
    land in one channel of a member (a Linear's 128 outputs viewed as 8 channels of 16 values feeding a
    ConvTranspose2d), that channel is listed once per root channel, and tp's ``prune_in_channels``
    subtracts the list's length from the layer's channel count: the layer ends with a wrong (zero or
    negative) count and the next forward pass fails. The root's list is never changed (it is what the
    history records)."""
    for k in range(1, len(group)):
        item = group[k]
        idxs = list(item.idxs)
        if len(set(idxs)) == len(idxs):
            continue
        # PRIVATE: GroupItem.root_idxs (set by get_pruning_group, read by tp's importances) must stay
        # aligned with idxs.
        roots = list(getattr(item, "root_idxs", None) or idxs)
        seen: dict[int, int] = {}
        for i, root in zip(idxs, roots, strict=False):
            seen.setdefault(int(i), int(root))
        fixed = type(item)(item.dep, list(seen))
        fixed.root_idxs = list(seen.values())
        group[k] = fixed
    return group


def _channels_last(param: torch.Tensor) -> torch.memory_format | None:
    """``torch.channels_last`` (4-D) or ``channels_last_3d`` (5-D) when ``param`` is stored so and not also
    contiguous (a 1x1 kernel's weight can be both); else None."""
    layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(param.dim())
    if layout is None or param.is_contiguous() or not param.is_contiguous(memory_format=layout):
        return None
    return layout


def prune(group: Group, *, record_history: bool = True) -> None:
    """Remove the group's channels in place: every module in it gets new, smaller parameters.
    With ``record_history`` the removal is appended to the graph's :func:`pruning_history`. A parameter
    that was frozen (``requires_grad=False``) stays frozen: tp's new parameters would all be trainable; one stored
    channels_last (``model.to(memory_format=torch.channels_last)``) stays so: tp's are contiguous, which made every
    later training step convert the layer's layout."""
    params = [
        (module, name, param)
        for module in {item.dep.target.module for item in group}
        if isinstance(module, nn.Module)
        for name, param in module.named_parameters(recurse=False)
    ]
    frozen = [(module, name) for module, name, param in params if not param.requires_grad]
    layouts = [(module, name, layout) for module, name, param in params if (layout := _channels_last(param))]
    # tp's InstanceNorm pruner cuts num_features, weight and bias but not the running statistics of one that
    # tracks them: the next eval-mode forward failed ("running_mean should contain ..."). Cut here, as BatchNorm's.
    tracked = {
        item.dep.target.module: (int(item.dep.target.module.num_features), {int(i) for i in item.idxs})
        for item in group
        if isinstance(item.dep.target.module, _InstanceNorm) and item.dep.target.module.running_mean is not None
    }
    group.prune(record_history=record_history)
    for module, name in frozen:
        getattr(module, name).requires_grad_(False)
    for module, name, layout in layouts:
        param = getattr(module, name)
        if not param.is_contiguous(memory_format=layout):
            param.data = param.data.contiguous(memory_format=layout)
    for norm, (features, gone) in tracked.items():
        keep = torch.tensor([i for i in range(features) if i not in gone], dtype=torch.long)
        for stat in ("running_mean", "running_var"):
            buffer = getattr(norm, stat)
            if buffer is not None and len(buffer) == features:
                setattr(norm, stat, buffer.index_select(0, keep.to(buffer.device)))
    _resync_splits(group)


def _resync_splits(group: Group) -> None:
    """torch-pruning 1.6's split pruner updates a split's (chunk's) sizes but writes the new offsets to itself,
    not to the split, whose channel mapping then keeps the traced offsets: a second removal event through a
    chunk mapped channels past the new width (IndexError while ranking) or onto the wrong half. The offsets
    are recomputed here from the sizes it did update."""
    split_op = _tp().ops._SplitOp
    for item in group:
        module = item.dep.target.module
        sizes = getattr(module, "split_sizes", None)
        if isinstance(module, split_op) and sizes is not None:
            offsets = [0]
            for size in sizes:
                offsets.append(offsets[-1] + size)
            module.offsets = offsets


def splits_channels(graph: Graph, module: Any) -> bool:
    """Whether ``module`` (a :class:`Member`'s) is tp's stand-in for a split or chunk along dim 1, the channels
    (tp's own check; its recorded ``split_sizes`` do not say: torch 2's grad_fn sets them for any dim)."""
    if not isinstance(module, _tp().ops._SplitOp):
        return False
    grad_fn = getattr(graph.module2node.get(module), "grad_fn", None)
    dim = getattr(grad_fn, "_saved_dim", None)  # PRIVATE (autograd's): the split's dim, negative ones wrapped to uint64
    rank = len(getattr(grad_fn, "_saved_self_sym_sizes", ()) or ())
    if dim is None or not rank:
        return True  # unknown: as tp, which maps it as a channel split
    dim = int(dim) - 2**64 if int(dim) >= 2**63 else int(dim)
    return (dim + rank if dim < 0 else dim) == 1


def guard(graph: Graph, group: Group) -> bool:
    """torch-pruning's own guard (``check_pruning_group``): False when the group would remove every
    channel of one of its members. sparsekit consults it before every removal it makes."""
    return bool(graph.check_pruning_group(group))


def pruning_history(graph: Graph) -> list[Any]:
    """Every removal recorded on ``graph`` so far, in order: ``(module_name, is_out_channels, idxs)``
    triples (see :func:`sparsekit.surgery.normalize_history` for the JSON form)."""
    return list(graph.pruning_history())


def sole_consumer(graph: Graph, module: nn.Module) -> nn.Module | None:
    """The module that alone consumes ``module``'s output in the traced graph, or None when there are
    several consumers (or none)."""
    outs = graph.module2node[module].outputs
    return outs[0].module if len(outs) == 1 else None


@dataclass(frozen=True)
class Member:
    """One (module, channels) pair of a group, as surgery reads it.

    ``module`` is an ``nn.Module`` or, for a parameter tp tracks by itself, an ``nn.Parameter`` (or one
    of tp's stand-ins for a functional operation, see ``op``); ``idxs`` are the channel indices removed
    from it; ``out_channels`` says whether they are its output channels (else its inputs, or a
    per-channel module such as BatchNorm); ``is_model_output`` marks the graph's output node (the
    channels reach the model's output). ``channels``: the member's current channel count in that
    direction, None when tp does not count it (functional operations). ``op``: what the member is, as
    a name: the module's class (``"Conv2d"``), or for a functional operation tp's stand-in
    (``"_ReshapeOp"``, ``"_SplitOp"``, ``"_ConcatOp"``...) or, for an element-wise one, the autograd
    function it traced (``"GluBackward0"``, ``"MulBackward0"``...)."""

    module: Any
    idxs: list[int]
    out_channels: bool
    is_model_output: bool
    channels: int | None = None
    op: str = ""


def _count(graph: Graph, module: Any, outputs: bool) -> int | None:
    try:
        n = graph.get_out_channels(module) if outputs else graph.get_in_channels(module)
    except Exception:  # noqa: BLE001 - tp raises assorted types for modules it does not count
        return None
    return None if n is None else int(n)


def _op_name(node: Any) -> str:
    ops = _tp().ops.OPTYPE
    if node.type == ops.ELEMENTWISE and node.grad_fn is not None:
        return type(node.grad_fn).__name__
    return type(node.module).__name__


def group_members(graph: Graph, group: Group) -> list[Member]:
    """The group's members in tp's order; the first is the root (the module whose channels were asked)."""
    ops = _tp().ops.OPTYPE
    members = []
    for item in group:
        target = item.dep.target
        outputs = bool(graph.is_out_channel_pruning_fn(item.dep.handler))
        counted = target.type not in (ops.OUTPUT, ops.PARAMETER, ops.ELEMENTWISE)
        members.append(
            Member(
                module=target.module,
                idxs=list(item.idxs),
                out_channels=outputs,
                is_model_output=target.type == ops.OUTPUT,
                channels=_count(graph, target.module, outputs) if counted else None,
                op=_op_name(target),
            )
        )
    return members


def group_root(group: Group) -> nn.Module:
    """The module whose channels the group was built for."""
    return group[0].dep.target.module


def single_channel_member(graph: Graph, group: Group) -> Member | None:
    """A member of ``group`` other than its root's own outputs that has exactly one channel (a Linear fed by a
    one-column slice, an output broadcast over the root's channels), or None. :class:`ChannelPruner` never ranks
    such a group (tp's ratio check), and a layer's single channel stays single, so the root can never lose one."""
    root = group_root(group)
    for member in group_members(graph, group):
        if member.module is root and member.out_channels:
            continue
        if member.channels == 1:
            return member
    return None


def group_modules(group: Group) -> list[Any]:
    """Every module (or tracked parameter) the group touches, in tp's order, root first."""
    return [item.dep.target.module for item in group]


# ----------------------------------------------------------------------------- importance

# The importance criteria a recipe may name (``structured.importance``), Fang et al.'s group scores:
# l1/l2: norm of all weights a channel owns across the group; taylor: |w * dL/dw| (Molchanov et al.,
# 2019), reading ``.grad``; bn_scale: the BatchNorm scale (network slimming, Liu et al., 2017).
_IMPORTANCE = {
    "l1": lambda tp: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda tp: tp.importance.MagnitudeImportance(p=2),
    "taylor": lambda tp: tp.importance.TaylorImportance(),
    "bn_scale": lambda tp: tp.importance.BNScaleImportance(),
}
IMPORTANCE_NAMES = tuple(_IMPORTANCE)


def importance(name: str) -> Importance:
    """A new tp importance object for a recipe's ``importance:`` name (one of :data:`IMPORTANCE_NAMES`).
    Raises KeyError for any other name (the recipe schema admits only these)."""
    return _IMPORTANCE[name](_tp())


def is_importance(obj: object) -> bool:
    """Whether ``obj`` is a ``tp.importance.Importance`` instance."""
    return isinstance(obj, _tp().importance.Importance)


def reads_grad(imp: Importance) -> bool:
    """Whether the importance scores read ``param.grad``: tp's Taylor importances, or any object with a
    true ``needs_grad`` attribute (how a user's own callable says so)."""
    return isinstance(imp, _tp().importance.GroupTaylorImportance) or bool(getattr(imp, "needs_grad", False))


def is_bn_scale(imp: Importance) -> bool:
    """Whether ``imp`` ranks channels by BatchNorm scales (it scores channels without BatchNorm alike)."""
    return isinstance(imp, _tp().importance.BNScaleImportance)


# ----------------------------------------------------------------------------- iterative pruner


class GroupFailure(Exception):
    """torch-pruning failed on the group rooted at ``root`` while ranking its channels (``stage``:
    ``"ranking"``); ``error`` is what it raised. Raised by :meth:`ChannelPruner.step` so the caller can
    name the layer."""

    def __init__(self, root: nn.Module, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage} failed: {type(error).__name__}: {error}")
        self.root, self.stage, self.error = root, stage, error


@dataclass
class Proposal:
    """Channels one iterative step proposes to remove from one group (nothing is removed yet).

    ``root``: the group's root module. ``units``: the root channel indices, in removal units (one
    index, or for a grouped convolution the same index in each of its ``channel_groups`` blocks), least
    important first. ``idxs``: all of them, sorted."""

    root: nn.Module
    units: list[list[int]]
    channel_groups: int
    handler: Any  # tp's pruning function of the root; only this module reads it

    @property
    def idxs(self) -> list[int]:
        return sorted({i for unit in self.units for i in unit})


def kept_units(units: int, ratio: float) -> int:
    """The units a group of ``units`` keeps when it loses ``ratio`` of them: the nearest count, a tie keeping more
    (torch-pruning truncates: 64 * 0.7 = 44.8 kept 44, removing 0.312 for a ratio of 0.3); a ratio written as
    ``removed / units`` gives back exactly ``units - removed``. ``round_to`` aligns it afterwards
    (:func:`aligned_keep`)."""
    return int(units * (1 - ratio) + 0.5 + 1e-9)


def aligned_keep(
    channels: int, keep: int, round_to: int | None, floor: int = 1, blocks: int = 1, width: int | None = None
) -> int:
    """How many of a group's ``channels`` to keep when the ratio asks to keep ``keep`` and kept counts are aligned
    to ``round_to`` (as torch-pruning's ``round_to``, but to the nearest multiple, a tie keeping more, where
    torch-pruning rounds down): ``keep`` rounded to the nearest of the multiples of ``round_to`` at or above
    ``floor`` (``min_channels``, at least 1) and the full width ``channels``, else the first multiple at or
    above the floor; ``channels`` (nothing removed) when no multiple lies below ``channels`` and at or above the
    floor. ``keep`` unchanged when it is already a multiple at or above the floor, ``round_to`` is None or 1, or
    the group is narrower than twice that multiple (the only aligned count below its width would then be that
    one multiple: far more removed than asked, or with the floor nothing); a group narrower than twice
    ``round_to`` but at least ``round_to`` wide aligns to half of it (an even ``round_to``, :func:`alignment`).
    With ``blocks`` > 1 (a grouped conv, removed evenly from each block) counts move in whole units of
    ``blocks`` channels: the kept total is a multiple of ``blocks`` and of ``round_to`` (or of its half,
    for a narrow group). ``width``: the group's channels when it was first ranked (default ``channels``): the
    multiple is chosen for it, so that an iterative removal keeps the counts a single one would (8 channels under
    round_to 8 align to 4; at a second step with 4 left they would otherwise keep any count, down to 1)."""
    if keep >= channels:
        return keep
    step = alignment(width or channels, round_to, blocks)
    if step <= 1:
        return keep
    low = max(1, min(floor, channels))
    if keep % step == 0 and keep >= low:
        return keep
    # The nearest multiple (a tie keeps more): rounding always down, as torch-pruning does, removed 60%
    # of a 20-channel layer asked for 30%. The whole width counts as a multiple: an iterative step that
    # asks for little keeps its layer whole rather than rounding down, so steps do not compound.
    down = keep // step * step
    near = [c for c in (down, down + step, channels) if low <= c <= channels]
    if near:
        return min(near, key=lambda c: (abs(c - keep), -c))
    up = -(-low // step) * step
    return up if up < channels else channels


def alignment(channels: int, round_to: int | None, blocks: int = 1) -> int:
    """The multiple a group of ``channels`` keeps under ``round_to`` (see :func:`aligned_keep`): the least common
    multiple of ``round_to`` and ``blocks``; for a group narrower than twice that, the same with half of an
    even ``round_to``; 1 (any count) when the group is narrower than twice that too, or ``round_to`` is None/1."""
    if not round_to or round_to <= 1:
        return 1
    step = round_to * blocks // math.gcd(round_to, blocks)  # kept channels: a multiple of both
    if channels < 2 * step and round_to % 2 == 0:
        # A narrow group aligns to half the multiple instead: 16-31 channels to 8 with the default 16, still
        # whole blocks for kernels that work in 8s (AVX2), where any count would fall off their fast path.
        half = round_to // 2
        step = half * blocks // math.gcd(half, blocks)
    return step if channels >= 2 * step else 1


@dataclass(frozen=True)
class Rounding:
    """What :func:`aligned_keep` did to one group at one step: the ranking would keep ``asked`` of its
    ``channels`` output channels, ``kept`` are kept (a multiple of ``round_to``, or all ``channels``);
    ``floor``: the ``min_channels`` floor it respected."""

    channels: int
    asked: int
    kept: int
    round_to: int
    floor: int
    multiple: int = 0  # the multiple kept (:func:`alignment`): round_to (with the conv's blocks), or half of it
    halved: bool = False  # the group is narrower than twice the full multiple: half of round_to was used


def _rounding(
    channels: int, asked: int, kept: int, round_to: int, floor: int, blocks: int, width: int | None = None
) -> Rounding:
    multiple = alignment(width or channels, round_to, blocks)
    full = round_to * blocks // math.gcd(round_to, blocks)
    return Rounding(channels, asked, kept, round_to, floor, multiple, halved=multiple not in (1, full))


class ChannelPruner:
    """Iterative channel ranking over torch-pruning's dependency graph, as tp's ``BasePruner`` ranks.

    Built from a model in eval mode with autograd on (:func:`sparsekit.surgery.traced`): traces it once.
    ``ratio`` is the fraction of channels removed after all ``steps`` (``ratio * k / steps`` after step
    ``k``, tp's linear schedule); ``global_pruning`` ranks all groups together instead of per layer.
    ``layer_ratios`` (tp's ``pruning_ratio_dict``): a group rooted at a module of that name is ranked on its
    own and loses that fraction instead (0: none); every group keeps :func:`kept_units`, so a ratio written as
    ``removed / units`` keeps exactly ``units - removed``; the other groups follow ``ratio`` and
    ``global_pruning``.
    Modules in ``ignored`` keep their output channels (their inputs still shrink with their producers);
    ``root_types`` are the module types that root a group.

    ``round_to`` (torch-pruning's pruner option): a group sized by ``ratio`` that loses channels at a step
    keeps a multiple of ``round_to`` channels (:func:`aligned_keep`, never below ``min_channels``); unlike
    tp, groups named in ``layer_ratios`` keep exactly the count their ratio gives. What the rounding did at
    the last step that ranked each root is in :attr:`rounded`.

    :meth:`step` only *proposes* (:class:`Proposal`); the caller decides how much of each proposal to
    remove (floors, coupled channels) and removes it with :func:`prune` after :func:`guard`. tp's own
    pruner is not used: it drops every group that would empty one of its members without saying so,
    where sparsekit trims the group to what the layers can lose and reports it.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        *,
        importance: Importance,
        global_pruning: bool,
        ratio: float,
        steps: int,
        ignored: Sequence[nn.Module],
        root_types: Sequence[type],
        layer_ratios: Mapping[str, float] | None = None,
        round_to: int | None = None,
        min_channels: int = 1,
    ) -> None:
        self._round_to = int(round_to) if round_to and round_to > 1 else None
        self._min_channels = int(min_channels)
        # root name -> what aligning did at the last step that proposed removals from it (None: nothing).
        self.rounded: dict[str, Rounding | None] = {}
        # root name -> its channels when first ranked: the multiple round_to aligns it to (see aligned_keep's width).
        self._widths: dict[str, int] = {}
        self._root_types = list(root_types)
        self._layer_ratios = {str(k): float(v) for k, v in (layer_ratios or {}).items()}
        self._steps = steps
        self._ignored = [sub for m in ignored for sub in m.modules()]
        self._importance = importance
        self._global = global_pruning
        self._ratios = [ratio * k / steps for k in range(steps + 1)]
        self._step = 0
        self._scope_initial: dict[str, int] = {}
        self._names = {m: n for n, m in model.named_modules()}
        self.graph: Graph = dependency_graph(model, example_inputs)
        # Channel blocks of grouped convolutions (tp's in/out_channel_groups): channels are removed
        # evenly from every block. A depthwise conv (groups == out_channels) follows its input instead.
        self._in_blocks: dict[nn.Module, int] = {}
        self._out_blocks: dict[nn.Module, int] = {}
        for m in model.modules():
            pruner = self.graph.get_pruner_of_module(m)
            if pruner is None or (isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels):
                continue
            if (k := int(pruner.get_in_channel_groups(m))) > 1:
                self._in_blocks[m] = k
            if (k := int(pruner.get_out_channel_groups(m))) > 1:
                self._out_blocks[m] = k
            if isinstance(m, nn.MultiheadAttention) and m.num_heads > 1:
                # tp leaves attention's heads out of its channel groups, yet its embed_dim must stay a multiple of
                # num_heads: an odd count (16 -> 11 at ratio 0.3) failed the removal. Its q/k/v rows are laid out
                # head by head, so the embedding's channels are blocks of one per head, removed evenly.
                self._in_blocks[m] = self._out_blocks[m] = int(m.num_heads)

    def retrace(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        """Trace the graph again from ``model`` as it is now. tp's stand-ins for a concatenation or split keep the
        channel counts of the graph's own removals only: after channels were removed through another graph (a
        resume's replay, another structured entry), a concatenation's second input was mapped past its new width.
        The new graph's removal history starts empty."""
        self.graph = dependency_graph(model, example_inputs)

    def groups(self) -> list[Group]:
        """Every prunable group (full channel sets), ignored layers left out."""
        return list(self.graph.get_all_groups(ignored_layers=self._ignored, root_module_types=self._root_types))

    def channel_groups(self, group: Group) -> int:
        """How many equal channel blocks the group's channels form (>1 for grouped convolutions)."""
        blocks = [
            (self._out_blocks if self.graph.is_out_channel_pruning_fn(item.dep.handler) else self._in_blocks).get(
                item.dep.target.module, 1
            )
            for item in group
        ]
        return max(blocks, default=1)

    def estimate(self, group: Group) -> torch.Tensor | None:
        """Importance of each channel of the group: a 1-D tensor, higher = keep (None: not ranked)."""
        return self._importance(group)

    def _prunable(self, group: Group) -> bool:
        # tp's BasePruner._check_pruning_ratio with max_pruning_ratio=1: a group with a member down to
        # one channel is not ranked at all.
        ops = _tp().ops.OPTYPE
        for item in group:
            if item.dep.target.type == ops.PARAMETER:
                continue
            n = _count(self.graph, item.dep.target.module, bool(self.graph.is_out_channel_pruning_fn(item.dep.handler)))
            if n == 1:
                return False
        return True

    def step(self) -> Iterator[Proposal]:
        """Advance to the next iterative step and yield what it proposes to remove, group by group.
        Every group is ranked before the first proposal is yielded; a proposal's group is built by
        :meth:`group` when the caller removes it, on the graph as it is then. Raises
        :class:`GroupFailure` when tp cannot rank a group."""
        self._step += 1
        if self._step >= len(self._ratios):
            return iter(())
        return self._proposals(self._ratios[self._step])

    def _scope_ratio(self, scope: str, ratio: float) -> float:
        """The fraction a ranking scope loses by this step: its ``layer_ratios`` value on the same linear
        schedule, else ``ratio``."""
        if scope in self._layer_ratios:
            return self._layer_ratios[scope] * self._step / self._steps
        return ratio

    def _proposals(self, ratio: float) -> Iterator[Proposal]:
        scopes: dict[str, list[tuple[Group, int, torch.Tensor]]] = {}
        held: dict[str, int] = {}  # per ranking scope, the units of groups that cannot lose one now
        for group in self.groups():
            if not self._prunable(group):
                # Still counted in the scope: a layer already down to one channel keeps it, and without it the
                # scope's kept units were counted short (19 of 20 channels removed in all).
                root = group[0].dep.target.module
                name = self._names.get(root)
                if name is not None and self._global and name not in self._layer_ratios:
                    out = bool(self.graph.is_out_channel_pruning_fn(group[0].dep.handler))
                    held["DEFAULT_SCOPE"] = held.get("DEFAULT_SCOPE", 0) + (_count(self.graph, root, out) or 0)
                continue
            blocks = self.channel_groups(group)
            try:
                imp = self.estimate(group)
            except Exception as err:  # noqa: BLE001 - tp (or a user's importance) on a layout it mis-maps
                raise GroupFailure(group[0].dep.target.module, "ranking", err) from err
            if imp is None:
                continue
            imp = imp.detach().float().cpu()
            dim_imp = imp.view(blocks, -1).mean(dim=0) if blocks > 1 else imp
            name = self._names[group[0].dep.target.module]
            scope = "DEFAULT_SCOPE" if self._global and name not in self._layer_ratios else name
            scopes.setdefault(scope, []).append((group, blocks, dim_imp))
        for scope, records in scopes.items():
            concat = torch.cat([imp for _, _, imp in records])
            # The global scope is sized in channels: a unit of a grouped conv's group is one channel per block, and
            # counting it as one made a scope holding one lose too few channels (0.24 of them for a ratio of 0.3).
            # A layer's own scope is sized in its units, which is the same fraction.
            if scope == "DEFAULT_SCOPE":
                now = sum(len(imp) * blocks for _, blocks, imp in records) + held.get(scope, 0)
            else:
                now = len(concat)
            initial = self._scope_initial.setdefault(scope, now)
            n_pruned = now - kept_units(initial, self._scope_ratio(scope, ratio))  # round_to: _aligned
            if n_pruned <= 0:
                continue
            if scope == "DEFAULT_SCOPE":
                chosen = self._global_pick(records, n_pruned)
            else:
                order = torch.topk(concat, k=n_pruned, largest=False)[1]
            for at, (group, blocks, imp) in enumerate(records):
                picked = chosen[at] if scope == "DEFAULT_SCOPE" else order
                size = len(imp)
                if self._round_to and scope not in self._layer_ratios:
                    picked = self._aligned(group, blocks, imp, picked)
                if len(picked) == 0:
                    continue
                units = [[int(i) + b * size for b in range(blocks)] for i in picked]
                root, handler = group[0].dep.target.module, group[0].dep.handler
                yield Proposal(root=root, units=units, channel_groups=blocks, handler=handler)

    def _global_pick(self, records: list[tuple[Group, int, torch.Tensor]], n_pruned: int) -> list[torch.Tensor]:
        """Per record (group, blocks, importance per unit), the units global ranking removes, least important
        first: the least important units of all, ``n_pruned`` channels' worth (a unit is ``blocks`` channels; one
        that would go past it is passed over), skipping any that would take its group below the
        ``min_channels`` floor (or to no channel), so the next one elsewhere goes instead. A threshold on the
        ``n_pruned``-th score alone let a layer at its floor keep the channels it could not lose, and the scope
        ended short of its ratio (19 of 20 channels), and picked every unit tied at the threshold (dead channels,
        all at 0) beyond it."""
        room = []
        for _, blocks, imp in records:
            floor = max(1, min(self._min_channels, len(imp) * blocks))
            room.append(len(imp) - -(-floor // blocks))  # units that may go: ceil(floor / blocks) must stay
        owner = torch.cat([torch.full((len(imp),), i) for i, (_, _, imp) in enumerate(records)])
        unit = torch.cat([torch.arange(len(imp)) for _, _, imp in records])
        scores = torch.cat([imp for _, _, imp in records])
        picked: list[list[int]] = [[] for _ in records]
        left = n_pruned
        for at in torch.argsort(scores, stable=True).tolist():
            if left == 0:
                break
            i = int(owner[at])
            blocks = records[i][1]
            if len(picked[i]) < room[i] and blocks <= left:
                picked[i].append(int(unit[at]))
                left -= blocks
        return [torch.tensor(p, dtype=torch.long) for p in picked]

    def _aligned(self, group: Group, blocks: int, imp: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        """``picked`` (root units, least important first) resized so the group keeps :func:`aligned_keep`
        channels; records what was done in :attr:`rounded`."""
        name = self._names[group[0].dep.target.module]
        size = len(imp)
        width = self._widths.setdefault(name, size * blocks)
        if len(picked) == 0:
            self.rounded[name] = None
            return picked
        channels, asked = size * blocks, (size - len(picked)) * blocks
        kept = aligned_keep(channels, asked, self._round_to, self._min_channels, blocks, width)
        assert self._round_to is not None
        self.rounded[name] = (
            None
            if kept == asked
            else _rounding(channels, asked, kept, self._round_to, self._min_channels, blocks, width)
        )
        n_units = size - kept // blocks
        if n_units == len(picked):
            return picked
        if n_units < len(picked):
            return picked[:n_units]
        return torch.argsort(imp, stable=True)[:n_units]

    def group(self, proposal: Proposal, idxs: Sequence[int]) -> Group:
        """The group removing root channels ``idxs`` of the proposal's root, on the graph as it is now,
        each member's channels listed once."""
        return _listed_once(self.graph.get_pruning_group(proposal.root, proposal.handler, list(idxs)))

    @property
    def steps(self) -> int:
        """Iterative steps in all."""
        return self._steps

    @property
    def steps_done(self) -> int:
        """Iterative steps taken; set it when resuming."""
        return self._step

    @steps_done.setter
    def steps_done(self, value: int) -> None:
        self._step = int(value)

    @property
    def scope_channels(self) -> dict[str, int]:
        """Channel count of each ranking scope when first ranked: every later step is sized from it, so
        a resumed run must restore it instead of taking the already-pruned size as its start (the keys
        are tp's: a layer's name, or ``DEFAULT_SCOPE`` for global ranking)."""
        return dict(self._scope_initial)

    @scope_channels.setter
    def scope_channels(self, value: dict[str, int]) -> None:
        self._scope_initial = {str(k): int(v) for k, v in value.items()}

    @property
    def group_widths(self) -> dict[str, int]:
        """Channels of each group's root when first ranked, by name: what ``round_to`` aligns it to at every later
        step, so a resumed run restores it (as :attr:`scope_channels`)."""
        return dict(self._widths)

    @group_widths.setter
    def group_widths(self, value: dict[str, int]) -> None:
        self._widths = {str(k): int(v) for k, v in value.items()}
