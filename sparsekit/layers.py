"""Which layers a method touches, and how their weights split into output units.

Selection: shell-glob include/exclude over ``named_modules()`` names and module kind
(:data:`~sparsekit.recipe.LAYER_TYPES`: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d; a subclass counts as
its base). :func:`unselected_layers` says, for every other module holding parameters, why it is left out.

Output units: a Linear row, a Conv output channel. Conv weights are ``[out, in/groups, *k]`` but
ConvTranspose weights are ``[in, out/groups, *k]``, so per-unit math (norms, unit masks, MACs) goes
through :func:`unit_view` / :func:`unit_broadcast` instead of assuming dim 0::

    norms = unit_view(w, conv_t).norm(dim=1)                    # one norm per output channel
    w.mul_(unit_broadcast(scale, conv_t, w))                    # scale each output channel
"""

from __future__ import annotations

import json
import re
import sys
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from .errors import TargetError, option
from .errors import shorten as short
from .masks import weight_of
from .recipe import LAYER_TYPES, LayerSelect

KINDS: dict[str, type[nn.Module]] = {name: getattr(nn, name) for name in LAYER_TYPES}
"""The torch class of each ``layers.types`` name."""

_NORMS: tuple[type[nn.Module], ...] = (
    _NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *filter(None, [getattr(nn, "RMSNorm", None)]),
)
NORM_REASON = (
    "normalization layers are not pruned on their own; their channels go with the layer they normalize when it loses "
    "channels (group l1 also shrinks the gamma and beta of its units)"
)


def layer_kind(module: nn.Module) -> str | None:
    """The ``layers.types`` name ``module`` counts as (its class or a base class: ``"Conv2d"`` for a
    subclass of ``nn.Conv2d``), or None when it is no prunable kind."""
    name = type(module).__name__
    if name in KINDS and type(module) is KINDS[name]:
        return name
    for kind, cls in KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def _maskable(module: nn.Module) -> bool:
    w = module._parameters.get("weight")
    return isinstance(w, nn.Parameter) and not isinstance(w, nn.parameter.UninitializedParameter)


def prunable_layers(model: nn.Module, types: tuple[str, ...] | list[str] = LAYER_TYPES) -> dict[str, nn.Module]:
    """Named modules of the kinds in ``types`` (default: all, :data:`~sparsekit.recipe.LAYER_TYPES`) with an
    initialized weight parameter sparsekit can mask, in model order."""
    wanted = set(types)
    return {name: m for name, m in model.named_modules() if layer_kind(m) in wanted and _maskable(m)}


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Named modules of every kind in :data:`~sparsekit.recipe.LAYER_TYPES`, in model order: the prunable layers
    and those whose weight is computed in the forward pass (a parametrization, a weight_norm / spectral_norm hook),
    which cost MACs all the same. A lazy module's uninitialized weight is left out."""
    return {
        name: m
        for name, m in model.named_modules()
        if layer_kind(m) is not None
        and not isinstance(m._parameters.get("weight"), nn.parameter.UninitializedParameter)
    }


# ----------------------------------------------------------------------------- output units


def output_dim(module: nn.Module) -> int:
    """The weight dimension that indexes output units: 1 for ConvTranspose (``[in, out/groups, *k]``),
    0 for Linear and Conv (``[out, in/groups, *k]``)."""
    return 1 if isinstance(module, _ConvNd) and module.transposed else 0


def num_units(module: nn.Module) -> int:
    """Number of output units: Linear ``out_features``, Conv/ConvTranspose ``out_channels``."""
    if isinstance(module, _ConvNd):
        return int(module.out_channels)
    return int(weight_of(module).shape[0])


def unit_view(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``weight`` as ``[units, rest]``: row ``u`` holds every weight feeding output unit ``u`` (a Linear
    row, a Conv output channel). A view for Linear and a contiguous Conv weight; a copy for a channels_last one
    (``model.to(memory_format=torch.channels_last)``) and for ConvTranspose, whose output channel
    ``g * (out/groups) + j`` is ``weight[g*(in/groups):(g+1)*(in/groups), j]``."""
    if not output_dim(module):
        return weight.flatten(1)
    groups = int(module.groups)  # type: ignore[arg-type]
    in_per, out_per = weight.shape[0] // groups, weight.shape[1]
    grouped = weight.reshape(groups, in_per, out_per, -1)
    return grouped.transpose(1, 2).reshape(groups * out_per, -1)


def unit_broadcast(values: torch.Tensor, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """One value per output unit (``[units]``) laid out to broadcast against ``weight``: every weight
    feeding unit ``u`` meets ``values[u]`` (``weight * unit_broadcast(scale, m, weight)`` scales units)."""
    rest = [1] * (weight.dim() - 2)
    if not output_dim(module):
        return values.reshape(-1, *([1] * (weight.dim() - 1)))
    groups = int(module.groups)  # type: ignore[arg-type]
    in_per, out_per = weight.shape[0] // groups, weight.shape[1]
    per = values.reshape(groups, 1, out_per).expand(groups, in_per, out_per)
    return per.reshape(weight.shape[0], out_per, *rest)


# ----------------------------------------------------------------------------- selection


def _listing(model: nn.Module) -> str:
    layers = prunable_layers(model)
    names = ", ".join(f"{n} ({type(m).__name__})" for n, m in layers.items())
    return f"prunable layers are: {names or 'none'}"


def _rename(field: str) -> str:
    """What to do when ``field`` (``pruning[0].layers.exclude``) names no layer of this model: name its layers there.
    The shipped recipes name their example models' layers (``fc3``, ``conv*``), so one's own model run with one
    was told only that nothing matched, about a file under site-packages it should not edit; an override for one
    run needs no copy (names in quotes: an ``nn.Sequential``'s ``5`` unquoted is a number and refused)."""
    override = re.sub(r"\[(\d+)\]", r".\1", field) + '=["NAME", ...]'
    return f"; name this model's layers in {field} (in the recipe, or for this run {option('set', override)})"


def _inside(model: nn.Module, pattern: str) -> str:
    """When ``pattern`` names a module that holds prunable layers but is none itself (``features``,
    an ``nn.Sequential``), the remedy: ``" ('features' holds the layers features.0 (Conv2d), ...: a pattern
    matches layer names, not what is inside a module; write 'features.*')"``; "" otherwise. Without it the
    natural ``exclude: [classifier]`` was told it "matches no layer", and ``include: [features]`` that a
    Sequential's "parameters are left as they are", though the layers inside it are pruned as usual."""
    layers = prunable_layers(model)
    for name, module in model.named_modules():
        if not name or name in layers or not fnmatchcase(name, pattern):
            continue
        held = [(n, type(m).__name__) for n, m in layers.items() if n.startswith(name + ".")]
        if held:
            shown = ", ".join(f"{n} ({k})" for n, k in held[:8]) + (", ..." if len(held) > 8 else "")
            return (
                f" ({name!r} is a {type(module).__name__} holding the layers {shown}: a pattern matches layer "
                f"names, not what is inside a module; write {name + '.*'!r})"
            )
    return ""


def _foreign_pattern(model: nn.Module, pattern: str) -> str:
    """How to write ``pattern`` when it is written as other toolkits name layers, as ``" ('fc1.weight' names a
    parameter: ...; write 'fc1')"``; "" otherwise. SparseML's ``params:`` and Distiller's ``weights:`` name
    parameters (``fc1.weight``), SparseML's ``__ALL_PRUNABLE__`` all layers and ``re:...`` a regular expression;
    each was told only that it matched nothing."""
    if pattern == "__ALL_PRUNABLE__":
        return " (SparseML's __ALL_PRUNABLE__ is sparsekit's '*', which include is by default: leave it out)"
    if pattern.startswith("re:"):
        return (
            " (a SparseML re: regular expression; sparsekit's patterns are shell globs: * any text, ? one "
            "character, [12] one of these, as in 'features.*' or 'fc[12]')"
        )
    module_pattern, dot, param = pattern.rpartition(".")
    if dot and param in ("weight", "bias") and any(fnmatchcase(n, module_pattern) for n, _ in model.named_modules()):
        return (
            f" ({pattern!r} names a parameter; layers are named as modules (named_modules()): write {module_pattern!r})"
        )
    return ""


def _alias(model: nn.Module, pattern: str) -> str:
    """When ``pattern`` matches only second names of modules registered twice (``nn.ModuleList([lin, lin])``: one
    module at ``blocks.0`` and ``blocks.1``), which layers do not go by, as ``" ('blocks.1' is the module 'blocks.0'
    ...)"``; "" otherwise. torch lists such a module once, under its first name: the pattern was told it matched
    nothing, while the listing showed ``blocks.0`` alone."""
    first: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name != (known := first.setdefault(id(module), name)) and fnmatchcase(name, pattern):
            return (
                f" ({name!r} is the module {known!r}, registered twice: layers go by their first name, write {known!r})"
            )
    return ""


def _why_not(model: nn.Module, pattern: str) -> str:
    """Why the first module ``pattern`` matches is not prunable at all, as ``" ('rnn' is a GRU: ...)"``, or, for a
    module holding layers, how to name them (:func:`_inside`); "" when it matches none, or only prunable layers
    (of a type ``layers.types`` leaves out)."""
    inside = _inside(model, pattern) or _foreign_pattern(model, pattern) or _alias(model, pattern)
    if inside:
        return inside
    prunable = prunable_layers(model)
    for name, module in model.named_modules():
        if name and name not in prunable and fnmatchcase(name, pattern):
            return f" ({name!r} is a {type(module).__name__}: {_not_prunable(module)})"
    return ""


def check_names(model: nn.Module, names: list[str], where: str) -> None:
    """Every pattern in ``names`` must match at least one module; TargetError naming ``where`` otherwise.

    Patterns come from recipe files, so errors quote them cut short: a 200,000-character glob made a 200 kB
    ``Error:`` line."""
    all_names = [n for n, _ in model.named_modules() if n]
    for pattern in names:
        if not any(fnmatchcase(n, pattern) for n in all_names):
            hint = _foreign_pattern(model, pattern) or _alias(model, pattern)
            raise TargetError(
                f"{where}: {short(pattern, 120)!r} matches no layer{hint}; {_listing(model)}{_rename(where)}"
            )


def select_layers(model: nn.Module, spec: LayerSelect, where: str = "layers") -> dict[str, nn.Module]:
    """The prunable layers a recipe's ``layers:`` selects, by name, in model order. Raises TargetError
    naming ``where`` when an include or exclude pattern matches nothing, or nothing is left."""
    candidates = prunable_layers(model, tuple(spec.types))
    everything = prunable_layers(model)
    for pattern in spec.include:
        if not any(fnmatchcase(n, pattern) for n in candidates):
            # The name matched prunable layers that ``types`` leaves out (a shipped recipe's Conv2d on one's own
            # Conv1d model): renaming the include, as the general remedy says, would not help; the types would.
            left_out = {n: type(m).__name__ for n, m in everything.items() if fnmatchcase(n, pattern)}
            if left_out:
                kinds = sorted(set(left_out.values()) | set(spec.types))
                shown = ", ".join(f"{n} ({k})" for n, k in list(left_out.items())[:8])
                types_field = re.sub(r"\[(\d+)\]", r".\1", where) + ".types=" + json.dumps(kinds)
                raise TargetError(
                    f"{where}.include: {short(pattern, 120)!r} matches {shown}, but {where}.types {spec.types} "
                    f"leaves out {', '.join(sorted(set(left_out.values())))}; add it to {where}.types in the "
                    f"recipe, or for this run {option('set', types_field)}"
                )
            raise TargetError(
                f"{where}.include: {short(pattern, 120)!r} matches no layer of types {spec.types}"
                f"{_why_not(model, pattern)}; {_listing(model)}{_rename(where + '.include')}"
            )
    # An exclude may name a layer whose weight is computed (weight_norm): no typo, and the way the left-out warnings
    # (methods/base.py warn_computed) offer to leave it out in silence.
    excludable = weighted_layers(model)
    for pattern in spec.exclude:
        if not any(fnmatchcase(n, pattern) for n in excludable):
            why = _inside(model, pattern) or _foreign_pattern(model, pattern) or _alias(model, pattern)
            listing = f"{why}; {_listing(model)}{_rename(where + '.exclude')}"
            raise TargetError(f"{where}.exclude: {short(pattern, 120)!r} matches no layer{listing}")
    chosen = {
        n: m
        for n, m in candidates.items()
        if any(fnmatchcase(n, p) for p in spec.include) and not any(fnmatchcase(n, p) for p in spec.exclude)
    }
    if not chosen:
        computed = computed_left_out(model, spec, chosen)
        if computed:
            # The layers are there, named as the recipe says, but their weight is computed in the forward pass
            # (torch.nn.utils.prune's mask, weight_norm): "name this model's layers in include" sent the user after
            # names that were right all along. Say what hides them and the call that gives the weight back.
            shown = ", ".join(name for name, _, _ in computed[:8]) + (" ..." if len(computed) > 8 else "")
            what, call = computed[0][2]
            raise TargetError(
                f"{where}: every layer it selects ({shown}) has a weight computed in the forward pass ({what}), "
                f"which pruning cannot mask; call {call} on each before pruning it"
            )
        raise TargetError(
            f"{where}: include/exclude leave no layer to prune; {_listing(model)}{_rename(where + '.include')}"
        )
    return chosen


def _not_prunable(module: nn.Module, method: str | None = None) -> str:
    kind = type(module).__name__
    if isinstance(module, _NORMS):
        return NORM_REASON
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return "embeddings are lookup tables, not weighted sums; they are not pruned"
    if isinstance(module._parameters.get("weight"), nn.parameter.UninitializedParameter):
        return "its weight is not initialized yet (a lazy module): run one forward pass before pruning"
    if layer_kind(module) is not None:
        return _computed_weight(module, method)
    if isinstance(module, nn.MultiheadAttention):
        return "attention's packed input projection is not pruned (its out_proj Linear is a layer of its own)"
    if isinstance(module, nn.RNNBase | nn.RNNCellBase):
        return f"recurrent weights ({kind}) are not pruned"
    return f"{kind} is not a prunable kind (those are {', '.join(LAYER_TYPES)}); its parameters are left as they are"


def computed_tensor(module: nn.Module, inputs: bool = False) -> tuple[str, str, str] | None:
    """The first of ``module``'s ``weight`` and ``bias`` that is computed in the forward pass, as ``(name, what
    computes it, the call that gives the parameter back)``; None when both are its own (or absent). A removal of
    its units resizes both, and neither a parametrization nor a norm hook can be resized (torch-pruning's assignment
    fails with "attribute 'bias' already exists"). ``inputs``: a Linear/Conv losing input channels, which resizes
    its weight alone."""
    for name in ("weight",) if inputs and layer_kind(module) is not None else ("weight", "bias"):
        how = computed_weight(module, name)
        if how is not None:
            return name, *how
    return None


def computed_weight(module: nn.Module, name: str = "weight") -> tuple[str, str] | None:
    """For a layer whose weight is computed in the forward pass, what computes it and the call that gives the
    parameter back: ``("torch.nn.utils.weight_norm", "torch.nn.utils.remove_weight_norm(layer)")``; None for a
    layer with a weight parameter of its own. The hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm``
    (``weight_g``/``weight_v``, ``weight_orig``) are no parametrization: ``remove_parametrizations`` raises on them.
    ``name``: another of its tensors (``"bias"``), whose removal call then names it."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    hooks = list(module._forward_pre_hooks.values())
    named = "" if name == "weight" else f", {name!r}"  # (the remove_* calls' name defaults to 'weight')
    if any(isinstance(h, WeightNorm) and h.name == name for h in hooks):
        return "torch.nn.utils.weight_norm", f"torch.nn.utils.remove_weight_norm(layer{named})"
    if any(isinstance(h, SpectralNorm) and h.name == name for h in hooks):
        return "torch.nn.utils.spectral_norm", f"torch.nn.utils.remove_spectral_norm(layer{named})"
    if parametrize.is_parametrized(module, name):
        return (
            "a parametrization: weight_norm, spectral_norm or another",
            f"torch.nn.utils.parametrize.remove_parametrizations(layer, {name!r})",
        )
    # torch.nn.utils.prune's hook computes weight = weight_orig * weight_mask before each forward (torch does not
    # import the module itself: a model can only hold its hooks once it is imported). Such a layer was left out
    # without a word, unlike weight_norm's.
    prune = sys.modules.get("torch.nn.utils.prune")
    if prune is not None and any(isinstance(h, prune.BasePruningMethod) and h._tensor_name == name for h in hooks):
        return (
            "torch.nn.utils.prune's mask (weight_orig * weight_mask)",
            f"torch.nn.utils.prune.remove(layer, {name!r})",
        )
    return None


def computed_left_out(
    model: nn.Module, spec: LayerSelect, chosen: dict[str, nn.Module]
) -> list[tuple[str, nn.Module, tuple[str, str]]]:
    """The layers ``spec`` would select but for a weight computed in the forward pass (weight_norm, spectral_norm, a
    parametrization), as ``(name, module, computed_weight(module))`` in model order: left out of ``chosen`` without a
    word, which only ``validate`` listed."""
    out = []
    for name, module in model.named_modules():
        if name in chosen or layer_kind(module) not in spec.types:
            continue
        how = computed_weight(module)
        if how is None:
            continue
        if any(fnmatchcase(name, p) for p in spec.include) and not any(fnmatchcase(name, p) for p in spec.exclude):
            out.append((name, module, how))
    return out


def _computed_weight(module: nn.Module, method: str | None = None) -> str:
    """Why a Linear/Conv whose weight is no parameter is left out, with the call that gives the parameter back.
    ``method``: the entry's, for max_norm, which masks nothing: it rescales the weight, and what goes is the bound."""
    how = computed_weight(module)
    if how is None:
        return (
            "its weight is not an nn.Parameter (a tensor set in the forward pass or a buffer), so sparsekit cannot "
            "mask it: make it a parameter of the layer to prune it"
        )
    if method == "max_norm":
        return (
            f"its weight is computed in the forward pass ({how[0]}), not a parameter max_norm can rescale, so its "
            f"units' norms go unbounded: remove it before pruning ({how[1]}) to bound them"
        )
    return (
        f"its weight is computed in the forward pass ({how[0]}), not a parameter sparsekit can mask: remove it "
        f"before pruning ({how[1]})"
    )


def unselected_layers(
    model: nn.Module, spec: LayerSelect | None = None, method: str | None = None
) -> list[dict[str, Any]]:
    """Every module holding parameters of its own that ``spec`` (a recipe's ``layers:``; default: the
    default selection) does not select, in model order, as ``{"name", "type", "reason"}``. Never raises.
    ``method``: the entry's method, whose reasons may differ (max_norm rescales where the others mask).

    >>> unselected_layers(nn.Sequential(nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8)))[0]["reason"] == NORM_REASON
    True
    """
    from torch.nn.utils import parametrize

    spec = spec or LayerSelect()
    types = list(spec.types)
    out = []
    # A parametrized layer (weight_norm, spectral_norm) keeps its tensors in `layer.parametrizations.weight`: the
    # layer is the row (a bias-free one holds no parameter of its own and was left out without a word), and the
    # ParametrizationList under it is none ("ParametrizationList is not a prunable kind" named no layer).
    inner = {
        id(m)
        for layer in model.modules()
        if parametrize.is_parametrized(layer)
        for m in layer.parametrizations.modules()  # type: ignore[union-attr]
    }
    for name, module in model.named_modules():
        if id(module) in inner:
            continue
        if next(iter(module.parameters(recurse=False)), None) is None and not parametrize.is_parametrized(module):
            continue
        kind = layer_kind(module)
        excluded = next((p for p in spec.exclude if fnmatchcase(name, p)), None)
        if kind is None or not _maskable(module):
            reason = _not_prunable(module, method)
        elif kind not in types:
            reason = f"{kind} is not in layers.types [{', '.join(types)}]; add {kind} there to prune it"
        elif excluded is not None:
            reason = f"excluded by layers.exclude pattern {short(excluded, 120)!r}"
        elif not any(fnmatchcase(name, p) for p in spec.include):
            reason = f"matches no layers.include pattern [{short(', '.join(spec.include), 200)}]"
        else:
            continue
        out.append({"name": name or "<root>", "type": type(module).__name__, "reason": reason})
    return out


def tied_aliases(layers: dict[str, nn.Module]) -> dict[str, str]:
    """Of layers sharing one weight tensor (tied), each later one -> the first: ``{"dec": "enc"}`` when
    ``dec.weight is enc.weight``. A method ranks, shrinks and counts such a weight once, as the first layer's."""
    first: dict[int, str] = {}
    out = {}
    for name, module in layers.items():
        owner = first.setdefault(id(weight_of(module)), name)
        if owner != name:
            out[name] = owner
    return out
