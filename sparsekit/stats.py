"""Counting: parameters, zeros, sparsity and MACs, per layer and overall.

``sparsity`` is the fraction of zeros among the weights of prunable layers (Linear, Conv and
ConvTranspose of any dimension), of the model as it is: a structurally pruned model has fewer parameters,
not more zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import model_input
from .layers import output_dim, prunable_layers, tied_aliases, weighted_layers
from .masks import count_true, weight_of
from .wrappers import checked_input_shape, require_initialized, require_module, unwrap


def sparsity(model: nn.Module) -> float:
    """Fraction (0..1) of exactly-zero weights over all prunable layers (Linear/Conv weights, masks
    applied, a tied weight once; biases not counted), 0.0 for a model with none. A DDP wrapper is unwrapped.
    TypeError when ``model`` is not an ``nn.Module`` (a state_dict, a file's path); ValueError when its weights
    hold no values yet (a lazy layer before its first batch, a model on the ``meta`` device)."""
    require_module(model, "sparsity")
    require_initialized(model, "sparsity", ValueError)
    total = zeros = 0
    layers = prunable_layers(unwrap(model))
    aliases = tied_aliases(layers)  # a weight shared by several layers counts once
    for name, m in layers.items():
        if name in aliases:
            continue
        w = weight_of(m)
        total += w.numel()
        zeros += w.numel() - count_true(w)
    return zeros / total if total else 0.0


@torch.no_grad()
def layer_macs(
    model: nn.Module, input_shape: Sequence[int] | None = None, *, inputs: Sequence[torch.Tensor] | None = None
) -> dict[str, int]:
    """Dense multiply-accumulates per Linear/Conv layer (name -> MACs; the prunable layers and those whose weight
    is computed, :func:`~sparsekit.layers.weighted_layers`) for one sample, from one forward pass on zeros of
    ``input_shape`` (the leading batch dimension is replaced by 1: ``[1, 784]``, ``[1, 3, 32, 32]``), or on
    ``inputs``, the model's own positional inputs (a forward of several, ``(image, meta)`` or ``(tokens, lengths)``:
    each tensor's first sample is used); zeros in the weights are not subtracted. The model's train/eval mode is
    restored. Whatever the model raises on that input (e.g. a shape mismatch) propagates."""
    if inputs is not None:
        args = _one_sample(inputs)
    elif input_shape is None:
        raise TypeError("layer_macs: give input_shape (e.g. [1, 784]) or inputs (a tuple of the model's inputs)")
    else:
        # In the model's floating dtype (a float64 model refuses float32 inputs), as sparsekit.train feeds it, or
        # token ids for a model whose input feeds an embedding; made before the counting hooks, as the probe that
        # tells which runs the model too.
        args = (model_input.example_input(model, [1, *list(input_shape)[1:]]),)
    macs: dict[str, int] = {}
    hooks = []
    # Every Linear/Conv costs its MACs, prunable or not: one whose weight a parametrization or a norm hook computes
    # (weight_norm, spectral_norm, orthogonal) runs as a Gemm/Conv in the ONNX file all the same.
    counted = weighted_layers(model)
    for name, m in counted.items():

        def hook(mod: nn.Module, inp: Any, out: torch.Tensor, name: str = name) -> None:
            w = getattr(mod, "weight", None)  # a computed weight is computed again here: its shape is what counts
            if not isinstance(w, torch.Tensor) or not w.dim():
                return
            # Dim 0 of a Linear/Conv weight is the output channels: every output value costs the
            # weights of one output channel (in_features, or in/groups * kernel). Dim 0 of a
            # ConvTranspose weight is the input channels: every input value is multiplied by the
            # weights of one input channel (out/groups * kernel).
            per = w.numel() // w.shape[0]
            values = inp[0] if output_dim(mod) else out
            macs[name] = macs.get(name, 0) + values.numel() // values.shape[0] * per

        hooks.append(m.register_forward_hook(hook))
    names = {m: name for name, m in counted.items()}
    for m in model.modules():
        # nn.MultiheadAttention applies its out_proj's weight itself (F.multi_head_attention_forward), never
        # calling the Linear: its MACs are counted from the attention's output, one row of weights per value.
        if isinstance(m, nn.MultiheadAttention) and m.out_proj in names:

            def attention_hook(
                mod: nn.Module, inp: Any, out: Any, name: str = names[m.out_proj], per: int = m.out_proj.in_features
            ) -> None:
                macs[name] = macs.get(name, 0) + out[0].numel() * per

            hooks.append(m.register_forward_hook(attention_hook))
    for name, m in model.named_modules():
        # Its packed q/k/v input projection is no Linear of its own, yet the ONNX file runs it as a MatMul of each
        # input by an E-row weight (on a small encoder, more MACs than its out_proj): counted under the
        # attention's name, with the other MACs that are no layer's row (other_macs), as `inspect` of the ONNX file
        # counts it. Each input value is multiplied by one column of E weights.
        if isinstance(m, nn.MultiheadAttention):

            def projection_hook(
                mod: nn.Module, args: Any, kwargs: Any, out: Any, name: str = name, rows: int = int(m.embed_dim)
            ) -> None:
                given = [*args, *(kwargs.get(k) for k in ("query", "key", "value")[len(args) :])][:3]
                added = sum(t.numel() * rows for t in given if isinstance(t, torch.Tensor))
                macs[name] = macs.get(name, 0) + added

            hooks.append(m.register_forward_hook(projection_hook, with_kwargs=True))
    # A layer's weight the forward pass also applies itself (a tied decoder's F.linear(h, enc.weight.t())) costs
    # MACs no hook sees; the exported ONNX file has that product as a node, so it is counted for the layer too.
    # Keyed by the weight's storage, which its views (.t()) share. A meta or empty tensor has no storage (address 0,
    # which every meta activation shares too): such weights are left out, not matched to any meta tensor.
    owners = {
        ptr: name
        for name, m in prunable_layers(model).items()
        if (ptr := weight_of(m).untyped_storage().data_ptr())
        and not any(isinstance(a, nn.MultiheadAttention) and a.out_proj is m for a in model.modules())
    }
    inside = [0]  # prunable layers' own calls running (their MACs come from the hooks above)
    for m in counted.values():
        hooks.append(m.register_forward_pre_hook(lambda *_: inside.__setitem__(0, inside[0] + 1)))
        hooks.append(m.register_forward_hook(lambda *_: inside.__setitem__(0, inside[0] - 1)))
    modes = [(m, m.training) for m in model.modules()]  # each module's own (a frozen BatchNorm stays frozen)
    try:
        model.eval()
        with _OutsideUses(owners, inside, macs):
            model(*args)
    finally:
        for module, training in modes:
            module.training = training
        for h in hooks:
            h.remove()
    return macs


def _one_sample(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``inputs`` (a tensor, or a tuple / list of them: a forward's positional inputs) cut to their first sample,
    since MACs are counted per sample; TypeError naming what is not a batch-first tensor."""
    given = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    if not isinstance(given, (tuple, list)) or not given:
        raise TypeError(f"inputs: expected a tuple of the model's input tensors, got {type(inputs).__name__}")
    for i, t in enumerate(given):
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or not len(t):
            what = f"a {type(t).__name__}" if not isinstance(t, torch.Tensor) else f"shape {list(t.shape)}"
            raise TypeError(f"inputs[{i}]: expected a batch-first tensor of at least one sample, got {what}")
    return tuple(t[:1] for t in given)


class _OutsideUses(TorchFunctionMode):
    """Adds to ``macs`` the products the forward pass computes itself with a prunable layer's weight (or a view of
    it, ``.t()``) outside that layer's own call: ``F.linear``, the convolutions and ``@`` / ``matmul``."""

    _LINEAR = {F.linear, torch._C._nn.linear}
    _CONV = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
    _CONV_T = {F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
    _MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}

    def __init__(self, owners: dict[int, str], inside: list[int], macs: dict[str, int]) -> None:
        super().__init__()
        self.owners, self.inside, self.macs = owners, inside, macs

    def _owner(self, t: Any) -> str | None:
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            return None
        return self.owners.get(t.untyped_storage().data_ptr() or -1)  # (0: no storage, never a weight's)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside[0] or not isinstance(out, torch.Tensor) or len(args) < 2:
            return out
        w = args[1]
        name = self._owner(w)
        if name is None:
            return out
        if func in self._LINEAR:
            added = out.numel() * w.shape[-1]
        elif func in self._CONV:
            added = out.numel() * (w.numel() // w.shape[0])
        elif func in self._CONV_T:
            added = args[0].numel() * (w.numel() // w.shape[0])
        elif func in self._MATMUL:
            added = out.numel() * w.shape[-2]
        else:
            return out
        # The sample is batch 1, so the tensors' sizes are per sample, as the hooks count them.
        self.macs[name] = self.macs.get(name, 0) + added
        return out


def layer_report(
    model: nn.Module, input_shape: Sequence[int] | None = None, *, inputs: Sequence[torch.Tensor] | None = None
) -> list[dict[str, Any]]:
    """One row per prunable layer: ``name``, ``type`` (class name), ``shape`` (the weight's), ``params``,
    ``nonzero_params``, ``sparsity`` (0..1); with ``input_shape`` (batch dimension included), or ``inputs`` (a
    tuple of the model's inputs, for a forward that takes several), also
    ``macs`` (dense, one sample) and ``effective_macs`` (scaled by the nonzero share): counted as
    :func:`layer_macs` does, so whatever the model raises on that input (e.g. a shape it does not take)
    propagates. TypeError when ``model`` is not an ``nn.Module`` (a state_dict, a file's path); ValueError when
    ``input_shape`` is not a batch-first list of positive integers, or when the weights hold no values yet (a lazy
    layer before its first batch, a model on the ``meta`` device)."""
    require_module(model, "layer_report")
    require_initialized(model, "layer_report", ValueError)
    if input_shape is not None:
        # [1, 784.9] was counted as [1, 784] and [1, '8'] as [1, 8] without a word; 8 or '1,8' failed inside.
        input_shape = checked_input_shape(input_shape, "layer_report(input_shape=...)")
    model = unwrap(model)
    macs = layer_macs(model, input_shape, inputs=inputs) if input_shape or inputs is not None else {}
    rows = []
    for name, m in prunable_layers(model).items():
        w = weight_of(m)
        n = w.numel()
        nz = count_true(w)
        row = {
            "name": name,
            "type": type(m).__name__,
            "shape": list(w.shape),
            "params": n,
            "nonzero_params": nz,
            "sparsity": 1 - nz / n if n else 0.0,
        }
        if name in macs:
            row["macs"] = macs[name]
            row["effective_macs"] = round(macs[name] * nz / n) if n else 0
        rows.append(row)
    return rows


def model_stats(
    model: nn.Module, input_shape: Sequence[int] | None = None, *, inputs: Sequence[torch.Tensor] | None = None
) -> dict[str, Any]:
    """Totals over the whole model: ``params`` and ``nonzero_params`` (every parameter, biases
    included), ``sparsity`` (prunable weights, 0..1) and, with ``input_shape`` (batch dimension
    included) or ``inputs`` (as :func:`layer_report` takes them), ``macs`` / ``effective_macs`` for one sample
    summed over every Linear/Conv layer (one whose weight is computed too: weight_norm, spectral_norm, another
    parametrization)."""
    model = unwrap(model)
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(count_true(p) for p in model.parameters())
    out: dict[str, Any] = {"params": params, "nonzero_params": nonzero, "sparsity": sparsity(model)}
    if input_shape or inputs is not None:
        rows = layer_report(model, input_shape, inputs=inputs)
        out["macs"] = sum(r.get("macs", 0) for r in rows)
        out["effective_macs"] = sum(r.get("effective_macs", 0) for r in rows)
        extra = other_macs(model, layer_macs(model, input_shape, inputs=inputs))
        out["macs"] += extra[0]
        out["effective_macs"] += extra[1]
    return out


@torch.no_grad()
def other_macs(model: nn.Module, macs: dict[str, int]) -> tuple[int, int]:
    """Dense and nonzero MACs (of ``macs``, :func:`layer_macs`'s) of the Linear/Conv layers that are no prunable
    layer: those whose weight a parametrization or a norm hook computes. They are no row of a layer report, yet
    the model (and its ONNX file) runs them."""
    rows = prunable_layers(model)
    dense = effective = 0
    for name, m in weighted_layers(model).items():
        if name in rows or not macs.get(name):
            continue
        w = weight_of(m)
        dense += macs[name]
        effective += round(macs[name] * count_true(w) / w.numel()) if w.numel() else 0
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) and macs.get(name):  # its input projection (layer_macs)
            weights = [
                p for p in (m.in_proj_weight, m.q_proj_weight, m.k_proj_weight, m.v_proj_weight) if p is not None
            ]
            n = sum(p.numel() for p in weights)
            dense += macs[name]
            effective += round(macs[name] * sum(count_true(p) for p in weights) / n) if n else 0
    return dense, effective


def asked_vs_achieved(
    layers: dict[str, nn.Module],
    asked: float | None,
    layer_asked: float | None = None,
    reasons: dict[str, str] | None = None,
    initial: dict[str, int] | None = None,
) -> dict[str, Any]:
    """What a method asked and reached, for its ``report()``: ``{"asked": asked, "achieved": zeros over all
    of ``layers``' weights (a tied weight once), "per_layer": {name: {"asked": layer_asked, "achieved": its
    zero fraction, "reason": reasons.get(name)}}}`` (fractions 0..1; ``asked`` None when the method sets no target).
    ``initial``: each layer's weight count before units were removed, so removed weights count as
    pruned (fraction = 1 - nonzero now / weights at the start)."""
    reasons = reasons or {}
    zeros = total = 0
    per_layer = {}
    aliases = tied_aliases(layers)
    for name, module in layers.items():
        w = weight_of(module).detach()
        n = max(w.numel(), (initial or {}).get(name, 0))
        z = n - count_true(w)  # zeros, plus the weights of removed units
        if name not in aliases:  # a weight shared by several modules (tied) counts once
            zeros, total = zeros + z, total + n
        reason = reasons.get(name)
        if (
            reason is None
            and layer_asked is not None
            and n
            and abs(z / n - layer_asked) > 0.005
            and abs(z - layer_asked * n) < 1
        ):
            # A small layer cannot hold the asked fraction exactly (0.6 of 24 weights is 14.4): say so, as the
            # contract asks of every layer whose achieved differs, rather than leave a silent 0.583.
            reason = (
                f"the nearest whole number of weights: {z:,} of {n:,} zero "
                f"({layer_asked:g} of {n:,} is {layer_asked * n:g})"
            )
        per_layer[name] = {
            "asked": layer_asked,
            "achieved": z / n if n else 0.0,
            "reason": reason,
        }
    return {"asked": asked, "achieved": zeros / total if total else 0.0, "per_layer": per_layer}
