"""Physical channel surgery, always through torch-pruning's dependency graph.

torch-pruning (Fang et al., 2023, DepGraph) knows how removing an output channel ripples into BatchNorm,
the next layer's inputs, residual adds, depthwise/grouped convolutions and flatten→linear; this module
never re-derives that, and reaches torch-pruning only through :mod:`sparsekit.tp_adapter` (which imports
it on first use). It adds three things on top:

- :func:`replay_history` rebuilds a pruned shape from tp's JSON-able ``pruning_history()`` on a
  freshly built dense model, so checkpoints never need unpickling.
- :func:`remove_dead_units` removes output units whose incoming weights are all zero while keeping
  the network's function: a dead unit still emits a constant (``act(bias)``, shifted by BatchNorm),
  which is folded into whatever consumes it before the unit goes.
- :func:`refit_masks` keeps sparsekit's mask buffers (L1's exact zeros) aligned with weights whose
  shape just changed.

>>> model, history = remove_dead_units(model, [1, 784], ignore=["fc3"])
>>> fresh = replay_history(build_fresh_model(), history, [1, 784])   # same shapes as ``model``
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from collections.abc import Collection, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.conv import _ConvNd

from . import logits, model_input
from . import tp_adapter as tpa
from .errors import ModelFileError, one_line, option
from .layers import prunable_layers, unit_view
from .masks import MASK, apply_mask, get_mask, weight_of
from .wrappers import copy_model

__all__ = [
    "build_graph",
    "example_input",
    "forward_failure",
    "output_shapes",
    "forward_order",
    "last_layer",
    "normalize_history",
    "output_layers",
    "refit_masks",
    "remove_dead_units",
    "replay_history",
    "reused_parameters",
    "tied_parameters",
    "traced",
]

# Constants are compared with a tolerance: a GEMM may sum the same products in a different order at
# different positions. A real border effect of zero padding is far larger than this.
_RTOL, _ATOL = 1e-5, 1e-6


@contextlib.contextmanager
def traced(model: nn.Module) -> Iterator[None]:
    """Eval mode (a traced forward must not move BatchNorm running stats) with autograd on (tp
    traces through ``grad_fn``), and every tensor of the model's own output after the logits when ``model.output``
    selected them (:func:`sparsekit.logits.every_output`); every module's own training flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        # inference_mode(False) too: under torch.inference_mode() (a caller's evaluation code) enable_grad alone records
        # no graph, and tp would find no layer to prune
        with torch.inference_mode(False), torch.enable_grad(), logits.every_output(model):
            yield
    finally:
        for m, training in modes:
            m.training = training


def integer_input_advice(err: BaseException) -> str | None:
    """What to do when a model failed on :func:`example_input` because it takes integer input (token ids for an
    ``nn.Embedding``), which cannot be traced on float values whatever the shape; None for another failure
    (most often the wrong ``model.input_shape``)."""
    text = str(err)
    if re.search(r"(Long|Int)\b.*(Float|Double|Half|BFloat16)|indices.*(Long|Int)|Embedding", text):
        return (
            "the model takes integer input, and sparsekit traces with token ids only a model whose input goes into "
            "an nn.Embedding or nn.EmbeddingBag module (not F.embedding on a weight of its own), so it cannot remove "
            "channels or units of this one: look the ids up with such a module, use an unstructured method (l1 "
            "with remove_dead: false), or give the model a forward that takes float input"
        )
    return None


INFERENCE_TENSORS_ADVICE = (
    "the model's weights are inference tensors (it was built or loaded under torch.inference_mode()), which "
    "autograd can neither trace nor train and nothing outside inference mode may change: build or load the model "
    "outside torch.inference_mode() (torch.no_grad() is fine)"
)


def has_inference_tensors(model: nn.Module) -> bool:
    """Whether any parameter or buffer of ``model`` is an inference tensor (made under ``torch.inference_mode()``)."""
    return any(t.is_inference() for t in (*model.parameters(), *model.buffers()))


SEVERAL_INPUTS_ADVICE = (
    "the model's forward takes several inputs, and sparsekit traces a model with one tensor of its input shape, so "
    "no input shape fits: use an unstructured method (magnitude, gradient, or l1 with remove_dead: false), which "
    "never runs the model itself, or prune a module whose forward takes that one tensor (e.g. each tower alone)"
)


def takes_several_inputs(model: nn.Module) -> bool:
    """Whether the forward of ``model`` requires more than one positional argument (``forward(image, meta)``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward with no signature to read
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional and p.default is inspect.Parameter.empty for p in params) > 1


def several_inputs_advice(err: BaseException) -> str | None:
    """What to do when a model failed on the one tensor of :func:`example_input` because its forward needs more
    (``forward(image, meta)``, ``forward(x, mask)``): Python's "forward() missing 1 required positional argument";
    None for another failure."""
    if isinstance(err, TypeError) and re.search(
        r"forward\(\) missing \d+ required (positional|keyword-only)", str(err)
    ):
        return SEVERAL_INPUTS_ADVICE
    return None


def trace_advice(err: BaseException) -> str | None:
    """What to do when tracing a model failed with ``err`` for a reason no input shape can fix: weights that are
    inference tensors ("Inference tensors cannot be saved for backward", which read as a shape problem), a forward
    that takes several inputs (:func:`several_inputs_advice`), or integer input (:func:`integer_input_advice`);
    None for another failure (most often the wrong ``model.input_shape``)."""
    if re.search(r"[Ii]nference tensors? ", str(err)):
        return INFERENCE_TENSORS_ADVICE
    return several_inputs_advice(err) or integer_input_advice(err)


def example_input(
    model: nn.Module, input_shape: Sequence[int], batch: int | None = None, random: bool = False
) -> torch.Tensor:
    """An input for tracing ``model``: :func:`sparsekit.model_input.example_input` (zeros of ``input_shape``, or
    seeded values with ``random``; int64 token ids for a model whose input feeds an embedding)."""
    return model_input.example_input(model, input_shape, batch=batch, random=random)


def build_graph(model: nn.Module, input_shape: Sequence[int]) -> tpa.Graph:
    """torch-pruning's dependency graph of ``model`` traced with a zero input of ``input_shape``
    (batch first, e.g. ``[1, 1, 28, 28]``). Raises whatever the model's forward raises on that input."""
    with traced(model):
        return tpa.dependency_graph(model, example_input(model, input_shape))


def forward_calls(
    model: nn.Module, input_shape: Sequence[int]
) -> tuple[dict[nn.Module, int], dict[nn.Module, nn.Module]]:
    """One forward pass on a zero input of ``input_shape``: how many times each submodule ran, and for each that
    ran once, the submodule whose output tensor (the very object) it took as its first input, when there is one
    (``Conv2d -> InstanceNorm2d`` in a Sequential, or ``self.norm(self.conv(x))``): a check by identity sees
    what torch-pruning's trace blurs (InstanceNorm's reshapes, a batch of one). Raises what the forward raises."""
    made: dict[int, tuple[torch.Tensor, nn.Module]] = {}
    calls: dict[nn.Module, int] = {}
    fed_by: dict[nn.Module, nn.Module] = {}

    def after(module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            made[id(out)] = (out, module)  # (holding the tensor keeps its id from being reused)

    def before(module: nn.Module, args: tuple[Any, ...]) -> None:
        calls[module] = calls.get(module, 0) + 1
        x = args[0] if args else None
        entry = made.get(id(x))
        if entry is not None and entry[0] is x:
            fed_by[module] = entry[1]

    handles = []
    for m in model.modules():
        if m is not model:
            handles += [m.register_forward_hook(after), m.register_forward_pre_hook(before)]
    try:
        with traced(model), torch.no_grad():
            model(example_input(model, input_shape))
    finally:
        for h in handles:
            h.remove()
    return calls, {c: p for c, p in fed_by.items() if calls.get(c) == 1}


def normalize_history(history: Sequence[Any]) -> list[list[Any]]:
    """tp history as plain JSON types: ``[[module_name, is_out_channel_pruning, [idx, ...]], ...]``."""
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in history]


def replay_history(model: nn.Module, history: Sequence[Any], input_shape: Sequence[int]) -> nn.Module:
    """Re-apply a recorded ``pruning_history`` to a freshly built (dense) ``model``, in place.

    Returns the same model object, now with the pruned shapes, ready for ``load_state_dict``.
    Raises :class:`ModelFileError` when the history does not fit this architecture.
    """
    if not history:
        return model
    try:
        entries = normalize_history(history)
    except Exception as err:  # noqa: BLE001 - a file's data: tensors, nesting, anything may be in there
        raise ModelFileError(
            f"pruning_history is malformed ({one_line(err, 120)}); expected [[module_name, is_out_channel, "
            "[indices]], ...] as written by sparsekit.save_model"
        ) from None
    arch = type(model).__name__
    try:
        graph = build_graph(model, input_shape)
    except Exception as err:  # any failure of the user's forward with this input
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(
            f"cannot rebuild the pruned model: tracing {arch} with input_shape {list(input_shape)} failed ({first})"
        ) from None
    modules = dict(model.named_modules())
    for i, (name, is_out, idxs) in enumerate(entries):
        module = modules.get(name) if name else None  # "" would be the model itself
        where = f"pruning_history[{i}] ({'outputs' if is_out else 'inputs'} of {name!r})"
        channels = _channels(graph, module, is_out) if module is not None else None
        if module is None or channels is None:
            raise ModelFileError(
                f"{where}: {arch} has no prunable module named {name!r}; the checkpoint was pruned from a "
                f"different architecture (check model.factory / {option('arch')} and model.kwargs)"
            )
        if not idxs:
            continue
        if max(idxs) >= channels or min(idxs) < 0 or len(idxs) >= channels:
            raise ModelFileError(
                f"{where}: removes indices {idxs[:8]}{' …' if len(idxs) > 8 else ''} but the layer has "
                f"{channels} channels at this point; the checkpoint does not fit {arch} (check model.kwargs)"
            )
        try:
            tpa.prune(tpa.channel_group(graph, module, idxs, outputs=is_out), record_history=False)
        except Exception as err:  # tp raises assorted types for indices that do not fit
            raise ModelFileError(f"{where}: cannot be replayed on {arch} ({one_line(err, 200)})") from None
    return model


def _channels(graph: tpa.Graph, module: nn.Module, outputs: bool) -> int | None:
    """The module's current output (or input) channel count; None when torch-pruning cannot prune it."""
    if not tpa.can_prune(graph, module):
        return None
    try:
        return tpa.out_channels(graph, module) if outputs else tpa.in_channels(graph, module)
    except Exception:  # noqa: BLE001 - tp raises KeyError & co. for modules it cannot prune
        return None


def last_layer(model: nn.Module, input_shape: Sequence[int]) -> str | None:
    """Name of the prunable layer that runs last in a forward pass: the head, whose output units are
    the model's outputs and must never be removed."""
    order = forward_order(model, input_shape)
    return order[-1] if order else None


def output_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names of the prunable layers whose output is itself one of the model's outputs (every head of a model
    that returns a tuple, list or dict of them), in forward order, and the prunable layer that runs last when
    some output is not a layer's own (a head followed by a reduction or a softmax). Raises what the forward
    pass raises."""
    # Each layer's output tensor is kept, not only its id(): a tensor freed during the forward pass (a
    # layer's output that a later op consumed) leaves its id free for a new tensor, so matching by id
    # alone could name an unrelated layer as the head.
    outputs: dict[int, tuple[torch.Tensor, str]] = {}
    order: list[str] = []

    def note(name: str, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            outputs[id(out)] = (out, name)
        if name not in order:
            order.append(name)

    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: note(name, out))
        for name, m in prunable_layers(model).items()
    ]
    try:
        with traced(model), torch.no_grad():
            result = model(example_input(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
    tensors = logits.output_tensors(result)
    heads = [outputs[id(t)][1] for t in tensors if id(t) in outputs and outputs[id(t)][0] is t]
    if len(heads) < len(tensors) and order and order[-1] not in heads:
        heads.append(order[-1])
    return [n for n in order if n in heads]


def forward_order(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Prunable layer names in the order a forward pass first calls them."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_, name=name: order.append(name) if name not in order else None)
        for name, m in prunable_layers(model).items()
    ]
    try:
        with traced(model), torch.no_grad():
            model(example_input(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
    return order


def output_shapes(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The shape of each tensor the model returns (one, or every one in a tuple, list or dict, nested), batch
    dim left out, from a forward pass on a zero input of ``input_shape`` as :func:`traced` runs it. Raises what
    the forward pass raises."""
    with traced(model), torch.no_grad():
        out = model(example_input(model, input_shape))
    return [tuple(t.shape[1:]) for t in logits.mattering(model, logits.output_tensors(out))]


def changed_outputs(model: nn.Module, input_shape: Sequence[int], shapes: Sequence[Sequence[int]]) -> list[str]:
    """The layers (modules without children) whose own result the model returns where that output's shape is no
    longer in ``shapes`` (:func:`output_shapes`): ``["dec"]`` for a decoder head that lost channels, which
    must keep them. Empty when the forward pass fails, or a changed output is computed after its last layer."""
    names = {m: n for n, m in model.named_modules()}
    made: list[tuple[torch.Tensor, str]] = []  # references, not ids: a freed tensor's id is reused

    def record(module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and not any(True for _ in module.children()):
            made.append((out, names.get(module, "")))

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with traced(model), torch.no_grad():
            out = model(example_input(model, input_shape, batch=2))
    except Exception:  # noqa: BLE001 - forward_failure reports a forward pass that fails
        return []
    finally:
        for h in hooks:
            h.remove()
    found: list[str] = []
    for t, want in zip(logits.mattering(model, logits.output_tensors(out)), shapes, strict=False):
        if tuple(t.shape[1:]) != tuple(want):
            found += [n for made_t, n in made if made_t is t and n and n not in found]
    return found


def forward_failure(
    model: nn.Module, input_shape: Sequence[int], shapes: Sequence[Sequence[int]] | None = None
) -> str | None:
    """Whether ``model`` still runs: None when a forward pass on a seeded input of ``input_shape`` (batch 2,
    eval mode, no autograd) succeeds and, with ``shapes`` (:func:`output_shapes`), returns tensors of those
    shapes; otherwise a phrase saying where and how it fails, e.g. ``"in 'up' (RuntimeError: ...)"``.

    A seeded input the model refuses for its values (token ids read from floats: negative ones index no
    embedding row) is tried again as zeros, the input every trace before the removal ran on: only a model that
    fails on both has been broken."""
    failure = _forward_failure(model, input_shape, shapes, random=True)
    if failure is not None and _forward_failure(model, input_shape, shapes, random=False) is None:
        return None
    return failure


def _forward_failure(
    model: nn.Module, input_shape: Sequence[int], shapes: Sequence[Sequence[int]] | None, random: bool
) -> str | None:
    stack: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def enter(module: nn.Module, _args: Any) -> None:
        stack.append(names.get(module, type(module).__name__))

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with traced(model), torch.no_grad():
            out = model(example_input(model, input_shape, batch=2, random=random))
    except Exception as err:  # noqa: BLE001 - any failure of the forward is the answer
        inner = [n for n in stack if n]
        return f"{f'in {inner[-1]!r} ' if inner else ''}({one_line(err, 200)})"
    finally:
        for h in hooks:
            h.remove()
    if shapes is not None:
        got = [tuple(t.shape[1:]) for t in logits.mattering(model, logits.output_tensors(out))]
        want = [tuple(s) for s in shapes]
        if got != want:
            if len(got) == len(want) == 1:
                return f"(its output has shape {list(got[0])} instead of {list(want[0])})"
            return f"(its outputs have shapes {[list(g) for g in got]} instead of {[list(w) for w in want]})"
    return None


def stale_buffers(model: nn.Module, history: Sequence[Sequence[Any]], failure: str = "") -> list[str]:
    """The buffers of ``model`` a removal in ``history`` (JSON form, already applied) left at the old channel
    count, as ``"'scale' (shape [32])"``: a dimension of the layer's size before the removal and none of its size
    after. torch-pruning resizes parameters (a frozen ``nn.Parameter`` too) and norm layers' running statistics,
    never other buffers, so a per-channel buffer the forward code multiplies or adds broke the forward pass, which
    the operations on the channels' path do not explain. A likely cause to name, not a proof: the forward failure
    itself is the check, and with ``failure`` (its message) only a size the message names counts."""
    modules = dict(model.named_modules())
    removed: dict[tuple[str, bool], int] = {}
    for name, is_out, idxs in history:
        removed[(str(name), bool(is_out))] = removed.get((str(name), bool(is_out)), 0) + len(idxs)
    sizes: set[tuple[int, int]] = set()  # (before, after) of each changed channel count
    for (name, is_out), count in removed.items():
        module = modules.get(name)
        attr = ("out_features" if is_out else "in_features") if isinstance(module, nn.Linear) else None
        if isinstance(module, _ConvNd):
            attr = "out_channels" if is_out else "in_channels"
        if attr is not None and count:
            now = int(getattr(module, attr))
            if not failure or re.search(rf"\b{now + count}\b", failure):
                sizes.add((now + count, now))
    found = []
    for owner, module in modules.items():
        if isinstance(module, _NormBase | nn.LayerNorm | nn.GroupNorm):
            continue  # their running statistics are resized with the channels
        for bname, buf in module._buffers.items():
            if buf is None or bname == MASK:
                continue
            dims = list(buf.shape)
            if any(old in dims and new not in dims for old, new in sizes):
                found.append(f"{(owner + '.' if owner else '') + bname!r} (shape {dims})")
    return found


def stale_buffer_words(buffers: list[str]) -> str:
    """The reason :func:`stale_buffers` found, for a removal error ('' for none), before its ignore remedy."""
    if not buffers:
        return ""
    one = len(buffers) == 1
    return (
        f": the forward code uses buffer{'' if one else 's'} {', '.join(buffers[:3])}, sized to the channels removed; "
        "channel removal resizes parameters, not buffers: register "
        f"{'it' if one else 'them'} as nn.Parameter(..., requires_grad=False) to lose the same channels, or "
    )


def tied_parameters(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Parameters held by more than one module (tied weights), each as ``[(module_name, param_name), ...]``
    in model order, one list per shared parameter object. A module registered under several names is
    one module (named as ``named_modules()`` names it), not a tie."""
    holders: dict[int, list[tuple[str, str]]] = {}
    seen: dict[int, set[int]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is None or id(module) in seen.setdefault(id(p), set()):
                continue
            seen[id(p)].add(id(module))
            holders.setdefault(id(p), []).append((name, pname))
    return [h for h in holders.values() if len(h) > 1]


def reused_parameters(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, str, int]]:
    """Weights of prunable layers that the forward pass also uses outside their own layer (a decoder
    computing ``F.linear(h, enc.weight.t())``: tied weights no module structure shows), as
    ``(layer_name, param_name, extra_uses)``. Found from one forward pass on a zero input of
    ``input_shape``: the autograd graph's uses of each weight beyond one per call of its layer."""
    layers = prunable_layers(model)
    calls: dict[int, int] = {}

    def count(module: nn.Module, _args: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1

    hooks = [m.register_forward_pre_hook(count) for m in layers.values()]
    try:
        with traced(model):
            out = model(example_input(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
    uses: dict[int, int] = {}
    roots = [t.grad_fn for t in logits.output_tensors(out) if t.grad_fn is not None]
    seen: set[int] = set()
    while roots:
        node = roots.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            variable = getattr(nxt, "variable", None)
            if variable is not None:
                uses[id(variable)] = uses.get(id(variable), 0) + 1
            else:
                roots.append(nxt)
    found = []
    for name, module in layers.items():
        for pname, param in module.named_parameters(recurse=False):
            extra = uses.get(id(param), 0) - calls.get(id(module), 0)
            if extra > 0:
                found.append((name, pname, extra))
    return found


def refit_masks(model: nn.Module) -> list[str]:
    """After channel removal, rebuild every mask whose weight changed shape from that weight's zeros.

    Masked weights are exact zeros (masks are applied after every step), so the surviving part of an
    old mask is exactly the zeros of the surviving weights; a weight that happened to be exactly zero
    becomes masked too, which keeps masks' "only lose ones" rule. Returns the names refitted."""
    names = []
    for name, module in model.named_modules():
        mask = get_mask(module)
        if mask is not None and mask.shape != module.weight.shape:
            module._buffers[MASK] = module.weight.detach() != 0
            names.append(name)
    return names


def prune_group(model: nn.Module, group: tpa.Group) -> None:
    """Remove a torch-pruning group's channels from ``model`` (in place, recorded in the graph's history)
    with masks kept consistent: masked zeros are applied first, masks refitted after."""
    for module in model.modules():
        apply_mask(module)
    tpa.prune(group)
    refit_masks(model)


# ----------------------------------------------------------------------------- dead units


def _dead_rows(module: nn.Module) -> list[int]:
    # unit_view knows each layer kind's output-unit layout (a grouped ConvTranspose's included).
    units = unit_view(weight_of(module).detach(), module)
    return [int(i) for i in torch.nonzero(units.abs().sum(1) == 0).flatten()]


def _is_constant(t: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """``t`` is [N, K, P] (batch, unit, position); constant over N and P per unit → (True, [K])."""
    ref = t[:1, :, :1]
    ok = bool(torch.allclose(t, ref.expand_as(t), rtol=_RTOL, atol=_ATOL))
    return ok, ref.flatten()


def _only_bn_after(graph: tpa.Graph, module: nn.Module) -> _BatchNorm | None:
    after = tpa.sole_consumer(graph, module)
    if isinstance(after, _BatchNorm) and after.running_mean is not None:
        return after
    return None


# Normalizations over several units at once, as modules and as the autograd functions of their functional forms.
UNIT_MIXING = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_UNIT_MIXING_OPS = ("NativeLayerNormBackward0", "NativeGroupNormBackward0")


def mixes_units(module: Any, op: str = "") -> bool:
    """Whether ``module`` (a graph member, see :class:`sparsekit.tp_adapter.Member`; ``op`` its name there)
    normalizes units together (a GroupNorm, LayerNorm, LocalResponseNorm, with or without affine parameters,
    or ``F.layer_norm`` / ``F.group_norm``): a unit at zero still enters the others' mean and variance, so it
    cannot be removed without changing them."""
    return isinstance(module, UNIT_MIXING) or op in _UNIT_MIXING_OPS


def _fold_plan(
    graph: tpa.Graph, group: tpa.Group, inputs: dict[nn.Module, torch.Tensor], keep: Collection[int] = ()
) -> list | None:
    """How to absorb one removed unit's constant output into its consumers (``group``: that unit's), or None
    when that cannot be done exactly (then the unit stays). ``keep``: ids of modules whose outputs must stay.

    Returns ``[(tensor_to_change, delta)]``: ``bias += delta`` or ``running_mean -= delta``."""
    root = tpa.group_root(group)
    consumers = []
    for member in tpa.group_members(graph, group):
        module, idxs = member.module, member.idxs
        if module is root:
            if len(idxs) != 1:
                return None  # the unit is paired with another unit of the same layer (a GLU, a chunk)
            continue
        if member.is_model_output or isinstance(module, nn.Parameter):
            return None  # the units reach the model's output, or an unwrapped parameter
        if isinstance(module, _NormBase):
            # BatchNorm, InstanceNorm: each channel on its own, a constant stays a constant; its entries go with
            # the units (an InstanceNorm's running statistics too: tp_adapter.prune cuts them)
            continue
        if isinstance(module, nn.Linear | _ConvNd):
            # Output-channel coupling (a residual add, a depthwise conv): the channel also carries the other
            # layer's output, so it goes only where that layer's units are dead too. Their constants (bias,
            # BatchNorm shift) then add up in the consumers' inputs, which are checked below like any other.
            transposed = getattr(module, "transposed", False)
            if (
                member.out_channels
                and not transposed
                and id(module) not in keep
                and set(idxs) <= set(_dead_rows(module))
            ):
                continue
            if member.out_channels:
                return None
            if transposed:
                # A constant through a transposed conv differs where its output overlaps less (the borders);
                # exact zeros stay zeros.
                x = inputs.get(module)
                if x is None or bool(x.index_select(1, torch.tensor(list(idxs), device=x.device)).any()):
                    return None
                continue
            consumers.append((module, list(idxs)))
            continue
        if mixes_units(module, member.op):
            return None  # a zero unit still enters the others' statistics
        if isinstance(module, nn.PReLU):
            # Elementwise, each channel by its own slope: a constant stays a constant (the consumer's input, read
            # below, is after it), and torch-pruning cuts its per-channel weight with the units.
            continue
        if next(module.parameters(recurse=False), None) is not None or module._buffers:
            return None  # embeddings ...: not analysed, keep the units
    plan: list[tuple[torch.Tensor, torch.Tensor]] = []
    for module, idxs in consumers:
        x = inputs.get(module)
        if x is None:
            return None
        dim = x.dim() - 1 if isinstance(module, nn.Linear) else 1
        idx = torch.tensor(idxs, device=x.device)
        dead = x.index_select(dim, idx)
        k = len(idxs)
        # As [N, unit, position]: Linear inputs may carry extra leading dims, conv inputs spatial ones.
        dead_view = dead.reshape(x.shape[0], k, -1) if dim == 1 else dead.reshape(-1, k, 1)
        ok, _ = _is_constant(dead_view)
        if not ok:
            return None  # e.g. average pooling with padding turned the constant into a pattern
        x_dead = torch.zeros_like(x)
        x_dead.index_copy_(dim, idx, dead)
        if isinstance(module, nn.Linear):
            y = nn.functional.linear(x_dead, module.weight)
            y = y.reshape(-1, y.shape[-1], 1)
        else:
            y = module._conv_forward(x_dead, module.weight, None)
            y = y.reshape(y.shape[0], y.shape[1], -1)
        ok, delta = _is_constant(y)
        if not ok:
            return None  # zero padding: the constant's contribution differs at the borders
        if not bool(delta.any()):
            continue
        if module.bias is not None:
            plan.append((module.bias, delta))
        elif (bn := _only_bn_after(graph, module)) is not None:
            # BN(x + d) with running_mean m equals BN(x) with running_mean m - d; in training mode
            # the batch mean absorbs the shift by itself.
            plan.append((cast(torch.Tensor, bn.running_mean), -delta))  # _only_bn_after checked it is set
        else:
            return None
    return plan


def remove_dead_units(
    model: nn.Module,
    input_shape: Sequence[int],
    ignore: Sequence[str] = (),
    failures: dict[str, str] | None = None,
) -> tuple[nn.Module, list[list[Any]]]:
    """Remove output units (Linear rows, Conv output channels) whose incoming weights are all zero.

    Layers named in ``ignore`` keep all their outputs (pass the head). Each dead unit still emits a
    constant; it is folded exactly into the consumer's bias (or into the running mean of a BatchNorm
    that directly follows a bias-less consumer) before torch-pruning removes the unit. Handled:
    Linear→act→Linear, Conv→(BN)→act→(max-pool)→flatten→Linear, Conv→…→Conv without padding, and
    any case where the constant is exactly 0 (e.g. ReLU of a negative shift). Kept, to stay exact:
    units whose nonzero constant enters a zero-padded conv (the border differs), units coupled to
    another layer's outputs (residual add, depthwise conv) unless that layer's units are dead too and not
    in ``ignore`` (then all of them go together), units reaching the model output,
    units whose consumers cannot take the constant (no bias, no BatchNorm after), units that a GroupNorm,
    LayerNorm or LocalResponseNorm normalizes together, and units of layers
    whose weights are tied to another module's or used again outside the layer (a shape change would
    untie them; see :func:`tied_parameters`, :func:`reused_parameters`). At least one
    unit per layer always stays. Outputs are unchanged in eval mode.

    Every layer's units are removed at once and the outputs compared on random inputs. Should that fail
    (the forward pass raises, or the outputs change: a layout the checks above do not foresee), the
    removal starts over from the untouched model layer by layer, each layer's removal kept only when the
    outputs still agree: one layer the removal cannot handle keeps its own units, not every layer's.
    ``failures`` (optional, filled in): layer name -> why its units stayed that way.

    Returns ``(model, history)``: the model (changed in place, or a copy when the removal went layer by
    layer) and tp's history of the removal, to append to the checkpoint's ``pruning_history``; a warning
    names the layers that kept their units after a failed check.
    """
    skip = set(ignore)
    backup = copy_model(model)
    probe = example_input(model, input_shape, batch=4, random=True)
    with traced(model), torch.no_grad():
        reference = model(probe)
    try:
        order = forward_order(model, input_shape)
        # A shape change would untie a weight shared by several modules: their units stay.
        tied = {n for holders in tied_parameters(model) for n, _ in holders}
        tied |= {n for n, _, _ in reused_parameters(model, input_shape)}
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - a model the trace cannot follow: keep every unit, exactly
        warnings.warn(f"remove_dead_units: {one_line(err)}; the model is left unchanged", stacklevel=2)
        return backup, []
    try:
        graph = build_graph(model, input_shape)
        for name in order:
            _remove_layer_units(model, graph, name, probe, skip, tied)
        if _same_outputs(model, _run(model, probe), reference):
            return model, normalize_history(tpa.pruning_history(graph))
        why = "outputs changed after removing every layer's dead units at once"
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - a layout the removal cannot handle: go layer by layer
        why = one_line(err)
    # Layer by layer, each on a copy adopted only when the outputs still agree.
    model, history, failed = backup, [], {}
    for name in order:
        layer = prunable_layers(model).get(name)
        if layer is None or name in skip or not _dead_rows(layer):
            continue
        candidate = copy_model(model)
        graph = None
        try:
            graph = build_graph(candidate, input_shape)
            if not _remove_layer_units(candidate, graph, name, probe, skip, tied):
                continue
            ok = _same_outputs(candidate, _run(candidate, probe), reference)
            reason = "removing its zeroed units changed the model's outputs"
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - this layer's removal is what fails: its units stay
            buffers: list[str] = []
            with contextlib.suppress(Exception):  # (the wording is best effort)
                if graph is not None:
                    history_now = normalize_history(tpa.pruning_history(graph))
                    buffers = stale_buffers(candidate, history_now, one_line(err))
            ok, reason = False, _failed_removal(backup, name, input_shape, err, buffers)
        if ok:
            model = candidate
            history += normalize_history(tpa.pruning_history(graph))
        else:
            failed[name] = reason
    if failures is not None:
        failures.update(failed)
    if failed:
        warnings.warn(
            f"remove_dead_units: {why}; removed layer by layer instead, and the zeroed units of "
            f"{', '.join(failed)} stay (removing them changed the outputs or failed)",
            stacklevel=2,
        )
    return model, history


def _failed_removal(
    model: nn.Module, name: str, input_shape: Sequence[int], err: Exception, buffers: Sequence[str] = ()
) -> str:
    """Why removing layer ``name``'s units failed, in the model's terms: a buffer left at the old size
    (``buffers``, :func:`stale_buffers`), else the operations its channels pass through (a slice or a view the
    dependency graph cannot follow) where the graph shows them, with the error's gist."""
    from .methods.structured import op_word  # (methods import this module)

    if buffers:
        # (torch-pruning's graph lists a view/reshape beside a Linear whose output meets a buffer, which misled)
        which = f"buffer{'' if len(buffers) == 1 else 's'} {', '.join(buffers[:3])}"
        return (
            f"removing its zeroed units breaks the forward pass: the forward code uses {which}, sized to its units, "
            f"which removing units cannot resize ({one_line(err, 100)})"
        )

    ops: list[str] = []
    try:
        fresh = copy_model(model)
        graph = build_graph(fresh, input_shape)
        module = dict(fresh.named_modules())[name]
        members = tpa.group_members(graph, tpa.channel_group(graph, module, [0]))
        ops = sorted({w for m in members if (w := op_word(m.op))})
    except Exception:  # noqa: BLE001 - the wording is best effort; the failure stands
        pass
    through = f": its channels pass through {', '.join(ops)}, which the removal cannot follow" if ops else ""
    return f"removing its zeroed units breaks the forward pass{through} ({one_line(err, 100)})"


def _run(model: nn.Module, probe: torch.Tensor) -> Any:
    """``model(probe)`` in eval mode without autograd. Raises what the forward pass raises (a removal broke it)."""
    with traced(model), torch.no_grad():
        return model(probe)


def _remove_layer_units(
    model: nn.Module, graph: tpa.Graph, name: str, probe: torch.Tensor, skip: set[str], tied: set[str]
) -> bool:
    """Remove the dead units of layer ``name`` that can go exactly (see :func:`remove_dead_units`) from
    ``model`` through ``graph``; whether any went. Raises what torch-pruning raises."""
    module = prunable_layers(model).get(name)
    if module is None or name in skip or not tpa.in_graph(graph, module):
        return False
    named = list(model.named_modules(remove_duplicate=False))  # (a module listed under each of its names)
    untied = {id(m) for n, m in named if n in tied}
    if id(module) in untied:
        return False
    dead = _dead_rows(module)
    if len(dead) >= tpa.out_channels(graph, module):
        dead = dead[1:]  # keep one unit: a layer with no outputs is not a layer
    if not dead:
        return False
    if any(id(m) in untied for m in tpa.group_modules(tpa.channel_group(graph, module, dead))):
        return False
    kept = {id(m) for n, m in named if n in skip}  # coupled to an ignored layer: the units stay
    inputs = _consumer_inputs(model, tpa.channel_group(graph, module, dead), probe)
    # Unit by unit, so one unit that must stay does not keep the others.
    removable, plan = [], []
    for unit in dead:
        unit_plan = _fold_plan(graph, tpa.channel_group(graph, module, [unit]), inputs, kept)
        if unit_plan is not None:
            removable.append(unit)
            plan.extend(unit_plan)
    if not removable:
        return False
    with torch.no_grad():
        for tensor, delta in plan:
            tensor.add_(delta.to(tensor.dtype))
    prune_group(model, tpa.channel_group(graph, module, removable))
    return True


def _same_outputs(model: nn.Module, after: Any, reference: Any) -> bool:
    """Whether two outputs of ``model`` (a tensor, or tensors in a tuple, list or dict) agree in shape and value:
    the logits alone when ``model.output`` selects them (:func:`sparsekit.logits.mattering`)."""
    a, b = (
        logits.mattering(model, logits.output_tensors(after)),
        logits.mattering(model, logits.output_tensors(reference)),
    )
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(a, b, strict=True)
    )


def _consumer_inputs(model: nn.Module, group: tpa.Group, probe: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    wanted = {m for m in tpa.group_modules(group) if isinstance(m, nn.Linear | _ConvNd)}
    seen: dict[nn.Module, torch.Tensor] = {}

    def grab(module: nn.Module, args: tuple) -> None:
        seen.setdefault(module, args[0].detach())

    hooks = [m.register_forward_pre_hook(grab) for m in wanted]
    try:
        with traced(model), torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    return seen
