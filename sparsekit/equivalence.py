"""Does removing channels with torch-pruning give the original model with those channels removed?

torch-pruning (tp) maps a removed output channel of a layer to the input channels of the layers that consume it.
Through an operation it does not model as a permutation or a mix of channels (a ShuffleNet channel shuffle,
``view(N, g, C // g, H, W).transpose(1, 2).reshape(N, C, H, W)``; ``x.flip(1)``; ``torch.roll`` along channels),
it maps them by index: the pruned model runs, exports and matches its own ONNX, yet its consumers read other
channels than those they were trained on, so it is not the original with those channels removed.

:func:`mismatched_roots` tests that on copies, as a probe: for every group (one root layer whose output channels
are removed, with everything coupled to them), an asymmetric set of the root's channels (half of them, the same
seeded choice in each channel block of a grouped conv) is removed from a deep copy of the model with tp, all
groups at once; the ground truth is the dense model in eval mode with those channels zeroed at the *inputs of
every consumer* tp shrinks (Conv input channels, Linear input features, a flatten's features included). A
correct removal computes exactly that: the removed channels are simply ignored by every consumer. Zeroing at the
consumers, not at the producers, keeps BatchNorm biases and gates whose value at zero is not zero (sigmoid) out
of the comparison. Statistics over channels of normalization (LayerNorm, GroupNorm, RMSNorm, ``F.normalize``),
which do change with fewer channels, are taken out of both forward passes (they compute only their per-channel
affine part there), so only the wiring is compared; other operations that mix channels (a softmax over them) are
reported as the reorderings are.

Groups with attention (``nn.MultiheadAttention``) are not probed (:func:`probes`): narrower heads compute
something else whatever the wiring.

Cost: one deep copy, one trace and two forward passes (batch 2) when every group passes; after a mismatch the
groups are bisected (a copy and a trace per probe, 32 probes at most) to name the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode

from . import logits, surgery
from . import tp_adapter as tpa
from .wrappers import copy_model

__all__ = ["Mismatch", "mismatched_roots", "probe_channels", "probes"]

# Relative tolerance of the comparison: float32 sums over fewer terms in another order differ by ~1e-6 of the
# output's scale; a mis-wired channel moves outputs by percents.
_TOL = 1e-4


@dataclass(frozen=True)
class Mismatch:
    """Roots whose probe removal changes the model's output beyond float tolerance, and by how much at most
    (``max_abs_diff``, relative to ``scale``: the largest absolute reference output, at least 1)."""

    roots: list[str]
    max_abs_diff: float
    scale: float


def probes(modules: Sequence[Any]) -> bool:
    """Whether a group touching ``modules`` (tp's members) can be probed: not one with attention
    (``nn.MultiheadAttention``), whose heads get narrower when its embedding loses channels, which changes what it
    computes (its scale, its heads' width) whatever the wiring."""
    return not any(isinstance(m, nn.MultiheadAttention) for m in modules)


def probe_channels(channels: int, blocks: int = 1, count: int | None = None) -> list[int] | None:
    """An asymmetric set of ``count`` (default: half) of each of ``blocks`` equal channel blocks, the same seeded
    choice in every block (as tp removes a grouped conv's channels): a symmetric set, e.g. {0, C - 1}, would hide a
    flip. None when a block cannot lose a channel and keep one."""
    if blocks < 1 or channels % blocks:
        return None
    per = channels // blocks
    count = per // 2 if count is None else count
    if per < 2 or not 1 <= count < per:
        return None
    gen = torch.Generator().manual_seed(per)
    chosen = sorted(int(i) for i in torch.randperm(per, generator=gen)[:count])
    return [b * per + i for b in range(blocks) for i in chosen]


def _counts(per: int) -> list[int]:
    """Removal counts to try for a block of ``per`` channels: half, then counts that keep the rest divisible by
    2, 4 and 8 (a view after the layer may need it)."""
    out = [per // 2]
    for k in (2, 4, 8):
        keep = per // 2 // k * k
        if 0 < keep < per and per - keep not in out:
            out.append(per - keep)
    return out


class _AffineNorms(TorchFunctionMode):
    """Within the block, layer, group and RMS normalization compute only their affine part, ``F.normalize`` and
    local response normalization nothing (the statistics over channels they normalize with change with fewer
    channels; per-channel scale and shift do not)."""

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        rms = func is getattr(F, "rms_norm", None) or func is getattr(torch, "rms_norm", None)
        if rms or func in (F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm):
            # (input, normalized_shape | num_groups, weight, bias, eps); rms_norm has no bias
            weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
            bias = None if rms else kwargs.get("bias", args[3] if len(args) > 3 else None)
            return _affine(args[0], weight, bias, 1 if func in (F.group_norm, torch.group_norm) else -1)
        if func in (F.normalize, F.local_response_norm):
            return args[0]  # x / statistic over channels: nothing per channel to keep
        return func(*args, **kwargs)


def _affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``x * weight + bias``, the parameters laid along ``dim`` (1: channels) or the trailing dims (-1)."""

    def shaped(p: torch.Tensor) -> torch.Tensor:
        if dim == 1:
            return p.reshape(1, -1, *([1] * (x.dim() - 2)))
        return p

    out = x * shaped(weight) if weight is not None else x.clone()
    return out + shaped(bias) if bias is not None else out


def _feature_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, _ConvNd) else -1


def _zeroing_hook(idxs: list[int], dim: int) -> Callable[..., Any]:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        index = torch.tensor(idxs, device=x.device, dtype=torch.long)
        return (x.index_fill(dim % x.dim(), index, 0), *args[1:])

    return hook


def _consumers(graph: tpa.Graph, group: tpa.Group, names: Mapping[Any, str]) -> list[tuple[str, list[int]]]:
    """The layers whose inputs the group shrinks, with the input channels (features) it removes."""
    out = []
    for member in tpa.group_members(graph, group):
        module = member.module
        if member.out_channels or member.is_model_output or module not in names:
            continue
        if isinstance(module, (_ConvNd, nn.Linear, nn.RNNBase)) and member.idxs:
            out.append((names[module], sorted(set(member.idxs))))
    return out


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    cuda = sorted({t.device.index or 0 for t in _tensors(model) if t.is_cuda})
    with surgery.traced(model), torch.no_grad(), _AffineNorms(), torch.random.fork_rng(devices=cuda):
        # a forward drawing random numbers draws the same ones in both models (only the forked generators are seeded)
        torch.random.default_generator.manual_seed(0)
        if cuda:
            torch.cuda.manual_seed_all(0)
        out = model(x)
    return [t for t in logits.mattering(model, logits.output_tensors(out)) if t.is_floating_point()]


class _Probe:
    """Removes probe channels of some groups from a copy of the model and compares it with the dense model whose
    consumers ignore those channels."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], budget: int = 32) -> None:
        low = any(t.is_floating_point() and t.dtype not in (torch.float32, torch.float64) for t in _tensors(model))
        # A half-precision model is compared on a float32 copy: its own rounding is larger than the tolerance.
        self.model = copy_model(model).float() if low else model
        self.budget = budget  # probes left (each a deep copy and a trace); past it, probes are skipped
        self.shape = [int(d) for d in input_shape]
        self.x = surgery.example_input(self.model, self.shape, batch=2, random=True)

    def run(self, sets: Mapping[str, list[int]]) -> tuple[str, float, float]:
        """``("ok" | "mismatch" | "fail", max |diff|, scale)`` for removing ``sets`` (root -> channels); "fail" too
        once the probe budget is spent."""
        if self.budget <= 0:
            return "fail", 0.0, 0.0
        self.budget -= 1
        work = copy_model(self.model)
        names = {m: n for n, m in work.named_modules()}
        modules = dict(work.named_modules())
        try:
            graph = surgery.build_graph(work, self.shape)
            zero: dict[str, set[int]] = {}
            for root, idxs in sets.items():
                group = tpa.channel_group(graph, modules[root], idxs)
                for name, cut in _consumers(graph, group, names):
                    zero.setdefault(name, set()).update(cut)
            with torch.no_grad():
                for root, idxs in sets.items():
                    group = tpa.channel_group(graph, modules[root], idxs)
                    if not tpa.guard(graph, group):
                        return "fail", 0.0, 0.0
                    surgery.prune_group(work, group)
            got = _outputs(work, self.x)
        except Exception:  # noqa: BLE001 - the probe cannot be made on this layout; the real removal says why
            return "fail", 0.0, 0.0
        dense = dict(self.model.named_modules())
        hooks = [
            dense[name].register_forward_pre_hook(_zeroing_hook(sorted(idxs), _feature_dim(dense[name])))
            for name, idxs in zero.items()
        ]
        try:
            want = _outputs(self.model, self.x)
        except Exception:  # noqa: BLE001 - the user's forward on zeroed inputs: nothing to compare with
            return "fail", 0.0, 0.0
        finally:
            for h in hooks:
                h.remove()
        diff, scale = 0.0, 1.0
        compared = False
        for a, b in zip(got, want, strict=False):
            if a.shape != b.shape or not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
                continue  # an output that loses channels itself, or one that overflows: nothing to say
            compared = True
            s = max(1.0, float(b.abs().max()))
            d = float((a.to(b.dtype) - b).abs().max()) if b.numel() else 0.0
            if d / s > diff / scale:
                diff, scale = d, s
        if not compared:
            return "ok", 0.0, 1.0
        return ("mismatch" if diff > _TOL * scale else "ok"), diff, scale


def mismatched_roots(
    model: nn.Module, input_shape: Sequence[int], roots: Mapping[str, tuple[int, int]]
) -> Mismatch | None:
    """The roots (among ``roots``: layer name -> (output channels, channel blocks)) whose probe removal does not
    give the dense model with the removed channels ignored by their consumers, see the module doc; None when every
    probe that could run matches (a probe that cannot run, e.g. a removal a view in the forward code cannot follow,
    is skipped: the real removal's forward check reports it). The model is not changed (a forward pass with hooks,
    in eval mode, its modes restored); the global RNG state is left as it is. Nothing is checked for a model whose
    weights are not materialized (``meta``) or that fails on a random input of ``input_shape``."""
    if any(t.is_meta for t in _tensors(model)):
        return None
    probe = _Probe(model, input_shape)
    try:
        _outputs(probe.model, probe.x)
    except Exception:  # noqa: BLE001 - a model that needs other inputs than random values: not probed
        return None
    candidates: dict[str, list[list[int]]] = {}
    for name, (channels, blocks) in roots.items():
        per = channels // max(blocks, 1)
        sets = [s for c in _counts(per) if (s := probe_channels(channels, blocks, c)) is not None]
        if sets:
            candidates[name] = sets
    if not candidates:
        return None
    worst = [0.0, 1.0]

    def bad(names: list[str]) -> list[str]:
        """Of ``names`` (each with its first probe set), the roots whose removal mismatches."""
        verdict, diff, scale = probe.run({n: candidates[n][0] for n in names})
        if verdict == "mismatch" and diff / scale >= worst[0] / worst[1]:
            worst[:] = [diff, scale]
        if verdict == "ok":
            return []
        if len(names) == 1:
            if verdict == "mismatch":
                return names
            for other in candidates[names[0]][1:]:  # a count the layout accepts (a view needing divisibility)
                verdict, diff, scale = probe.run({names[0]: other})
                if verdict != "fail":
                    if verdict == "mismatch" and diff / scale >= worst[0] / worst[1]:
                        worst[:] = [diff, scale]
                    return names if verdict == "mismatch" else []
            return []
        half = len(names) // 2
        found = bad(names[:half]) + bad(names[half:])
        # Two groups that mismatch only together: name both halves.
        return found or (names if verdict == "mismatch" else [])

    found = bad(list(candidates))
    if not found:
        return None
    return Mismatch(roots=found, max_abs_diff=worst[0], scale=worst[1])
