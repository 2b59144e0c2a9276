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

import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# torch-pruning ships no type information: its objects are Any here.
Graph = Any  # tp.DependencyGraph
Group = Any  # tp.Group
Importance = Any  # tp.importance.Importance, or any callable(group) -> Tensor[channels]

# Every torch-pruning attribute this module uses, as dotted paths from the ``torch_pruning`` package
# (classes' methods included). Attributes that exist only on instances are in TP_INSTANCE_ATTRIBUTES.
TP_ATTRIBUTES = (
    "DependencyGraph",
    "DependencyGraph.build_dependency",
    "DependencyGraph.check_pruning_group",  # PRIVATE use: replaced per graph (see ChannelPruner)
    "DependencyGraph.get_all_groups",
    "DependencyGraph.get_in_channels",
    "DependencyGraph.get_out_channels",
    "DependencyGraph.get_pruner_of_module",
    "DependencyGraph.get_pruning_group",
    "DependencyGraph.is_out_channel_pruning_fn",
    "DependencyGraph.pruning_history",
    "Group.prune",
    "ops.OPTYPE.OUTPUT",
    "pruner.BasePruner",
    "pruner.BasePruner._get_channel_groups",  # PRIVATE
    "pruner.BasePruner.estimate_importance",
    "pruner.BasePruner.step",
    "importance.Importance",
    "importance.MagnitudeImportance",
    "importance.TaylorImportance",
    "importance.GroupTaylorImportance",
    "importance.BNScaleImportance",
)
# Instance attributes, set in ``__init__`` of the class named by the key (and of a group's items and
# nodes): checked by the test on a graph and a pruner built from a small model.
TP_INSTANCE_ATTRIBUTES = {
    "DependencyGraph": ("module2node",),
    "BasePruner": ("DG", "ignored_layers", "current_step", "_scope_initial_channels"),  # last: PRIVATE
    "Node": ("outputs", "module", "type"),
    "GroupItem": ("dep", "idxs"),
    "Dependency": ("target", "handler"),
    "Pruner": ("prune_out_channels", "prune_in_channels"),  # what get_pruner_of_module returns
}


def _tp() -> types.ModuleType:
    import torch_pruning  # lazy: see the module docstring

    return torch_pruning


# ----------------------------------------------------------------------------- graphs


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> Graph:
    """Trace ``model`` on ``example_inputs`` (a batch-first tensor the model accepts) into tp's
    dependency graph. Runs one forward pass with autograd on; the caller sets eval mode (see
    :func:`sparsekit.surgery.traced`). Raises whatever the model's forward raises."""
    return _tp().DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)


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
    its inputs. Nothing changes until :func:`prune`. Raises (tp's ValueError) when ``module`` is not in
    the graph or tp cannot prune its type."""
    pruner = graph.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if outputs else pruner.prune_in_channels
    return graph.get_pruning_group(module, fn, list(idxs))


def prune(group: Group, *, record_history: bool = True) -> None:
    """Remove the group's channels in place: every module in it gets new, smaller parameters.
    With ``record_history`` the removal is appended to the graph's :func:`pruning_history`."""
    group.prune(record_history=record_history)


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

    ``module`` is an ``nn.Module`` or, for a parameter tp tracks by itself, an ``nn.Parameter``;
    ``idxs`` are the channel indices removed from it; ``out_channels`` says whether they are its output
    channels (else its inputs, or a per-channel module such as BatchNorm); ``is_model_output`` marks the
    graph's output node (the channels reach the model's output)."""

    module: Any
    idxs: list[int]
    out_channels: bool
    is_model_output: bool


def group_members(graph: Graph, group: Group) -> list[Member]:
    """The group's members in tp's order; the first is the root (the module whose channels were asked)."""
    output = _tp().ops.OPTYPE.OUTPUT
    return [
        Member(
            module=item.dep.target.module,
            idxs=list(item.idxs),
            out_channels=bool(graph.is_out_channel_pruning_fn(item.dep.handler)),
            is_model_output=item.dep.target.type == output,
        )
        for item in group
    ]


def group_root(group: Group) -> nn.Module:
    """The module whose channels the group was built for."""
    return group[0].dep.target.module


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


class ChannelPruner:
    """tp's ``BasePruner`` with the few extra handles structured pruning needs.

    Built from a model in eval mode with autograd on (:func:`sparsekit.surgery.traced`): traces it once.
    ``ratio`` is the fraction of channels removed after all ``steps``; ``global_pruning`` ranks all
    groups together instead of per layer. Modules in ``ignored`` keep their output channels (their
    inputs still shrink with their producers); ``root_types`` are the module types that root a group.
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
    ) -> None:
        self._root_types = list(root_types)
        self._pruner = _tp().pruner.BasePruner(
            model,
            example_inputs,
            importance=importance,
            global_pruning=global_pruning,
            pruning_ratio=ratio,
            iterative_steps=steps,
            ignored_layers=list(ignored),
            root_module_types=self._root_types,
        )
        # PRIVATE use (a monkey-patch of one graph): tp skips a whole group when it would lose every
        # channel of some member. sparsekit enforces its own floor (structured min_channels >= 1) and
        # trims such a group to it instead, which tp's check would prevent by skipping it silently.
        self.graph.check_pruning_group = lambda group: True

    @property
    def graph(self) -> Graph:
        """The dependency graph the pruner traced (shared: removals update it)."""
        return self._pruner.DG

    def groups(self) -> list[Group]:
        """Every prunable group (full channel sets), ignored layers left out."""
        return list(
            self.graph.get_all_groups(ignored_layers=self._pruner.ignored_layers, root_module_types=self._root_types)
        )

    def channel_groups(self, group: Group) -> int:
        """How many equal channel blocks the group's channels form (>1 for grouped convolutions)."""
        # PRIVATE: BasePruner._get_channel_groups is how tp itself sizes a group for its ratio; the
        # layer-scope check ("would remove every channel") must size it the same way.
        return int(self._pruner._get_channel_groups(group))

    def step(self) -> Iterator[Group]:
        """Advance to the next iterative step and yield the groups tp proposes to prune (nothing is
        removed: the caller prunes each group, possibly trimmed, with :func:`prune`)."""
        return self._pruner.step(interactive=True)

    def estimate(self, group: Group) -> torch.Tensor:
        """Importance of each channel of the group: a 1-D tensor, higher = keep."""
        return self._pruner.estimate_importance(group)

    def regroup(self, group: Group, idxs: Sequence[int]) -> Group:
        """The group of the same root and direction with channels ``idxs`` instead."""
        root, fn = group[0].dep.target.module, group[0].dep.handler
        return self.graph.get_pruning_group(root, fn, list(idxs))

    @staticmethod
    def root_idxs(group: Group) -> list[int]:
        """The channel indices of the group's root."""
        return list(group[0].idxs)

    @property
    def steps_done(self) -> int:
        """Iterative steps taken (tp's ``current_step``); set it when resuming."""
        return int(self._pruner.current_step)

    @steps_done.setter
    def steps_done(self, value: int) -> None:
        self._pruner.current_step = int(value)

    @property
    def scope_channels(self) -> dict[str, int]:
        """Channel count of each ranking scope when first pruned: tp sizes every later step from it, so a
        resumed run must restore it instead of taking the already-pruned size as its start."""
        # PRIVATE: BasePruner._scope_initial_channels, filled at the first step; there is no public way
        # to read or restore it.
        return {str(k): int(v) for k, v in self._pruner._scope_initial_channels.items()}

    @scope_channels.setter
    def scope_channels(self, value: dict[str, int]) -> None:
        self._pruner._scope_initial_channels = {str(k): int(v) for k, v in value.items()}
