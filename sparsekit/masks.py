"""Mask math and mask buffers.

A mask is a bool buffer named ``sparsekit_mask`` registered on the module beside its weight
(non-persistent, so it never leaks into ``state_dict`` keys, and DDP broadcasts it with the other
buffers so every rank agrees). Masks are applied in place after each optimizer step, so the
parameter objects an optimizer holds stay the same; they only ever lose ones during a run.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
from torch import nn

MASK = "sparsekit_mask"
LOWEST = torch.finfo(torch.float32).min  # the score of an already-pruned weight


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight``, typed as the tensor it is (torch's stubs type module attributes ``Tensor | Module``)."""
    return cast(torch.Tensor, module.weight)


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The module's mask (bool, the weight's shape, False = pruned), or None when it has none."""
    # Not getattr: nn.Module.__getattr__ raises and catches for every module without a mask (slow).
    return module._buffers.get(MASK)


def ensure_mask(module: nn.Module) -> torch.Tensor:
    """The module's mask, created all ones (bool, the weight's shape and device) when it has none."""
    mask = get_mask(module)
    if mask is None:
        mask = torch.ones_like(weight_of(module), dtype=torch.bool)
        module.register_buffer(MASK, mask, persistent=False)
    return mask


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Install ``mask`` AND-ed with the current one, so a weight once pruned stays pruned."""
    current = ensure_mask(module)
    current.logical_and_(mask.to(current.device))
    apply_mask(module)


@torch.no_grad()
def apply_mask(module: nn.Module) -> None:
    """Zero the masked weights in place (the parameter object stays the same); no-op without a mask."""
    mask = get_mask(module)
    if mask is not None:
        # float * bool is not vectorized on CPU; the same bytes viewed as uint8 are (~4x faster).
        weight_of(module).mul_(mask.view(torch.uint8))


def apply_masks(model: nn.Module) -> None:
    """:func:`apply_mask` on every module of ``model``."""
    for module in model.modules():
        apply_mask(module)


def bake(model: nn.Module) -> nn.Module:
    """Zero masked weights for good and remove the mask buffers: nothing of sparsekit stays behind."""
    for module in model.modules():
        if get_mask(module) is not None:
            apply_mask(module)
            del module._buffers[MASK]
    return model


def _kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    if flat.device.type == "cpu":
        # numpy's introselect is about 2x faster than torch.kthvalue on CPU.
        return torch.tensor(np.partition(flat.numpy(), k - 1)[k - 1])
    return torch.kthvalue(flat, k).values


def layer_cap(numel: int, max_layer_sparsity: float) -> int:
    """The most weights a layer of ``numel`` may lose under ``max_layer_sparsity``: ``floor(max * numel)``
    (so a cap below 1 always keeps at least one weight), ``numel`` for a cap of 1."""
    if max_layer_sparsity >= 1:
        return numel
    # round() first: 0.29 * 100 is 28.999999999999996 in floating point, and means 29.
    return min(numel, math.floor(round(max_layer_sparsity * numel, 6)))


def global_topk_masks(
    scores: dict[str, torch.Tensor], sparsity: float, max_layer_sparsity: float = 1.0
) -> dict[str, torch.Tensor]:
    """Rank all scores together and prune the lowest ``round(sparsity * total)`` of them, no layer losing
    more than :func:`layer_cap` of its weights (``max_layer_sparsity`` < 1).

    A layer that would pass its cap keeps exactly its cap's worth pruned (its lowest scores) and the
    prunes it cannot take go to the next-lowest scores of the other layers, so the total stays exact;
    when the caps together allow fewer than the target, every layer is pruned to its cap. This is the
    greedy "lowest score first, skipping full layers", which is the best ranking under per-layer caps.

    Already-pruned weights must carry the lowest score (see :func:`masked_scores`) so they stay
    pruned: masks only lose ones (a layer already past its cap keeps what it has, and takes no more).
    Ties are broken by position, as a stable sort would."""
    total = sum(s.numel() for s in scores.values())
    n_prune = round(sparsity * total)
    masks = _lowest_pruned(scores, n_prune)
    if max_layer_sparsity >= 1:
        return masks
    caps = {name: layer_cap(s.numel(), max_layer_sparsity) for name, s in scores.items()}
    over = {name for name, m in masks.items() if _n_pruned(m) > caps[name]}
    if not over:
        return masks  # the usual case: the plain ranking respects every cap
    # A layer already pruned past its cap keeps what it has (masks only lose ones) and takes no more.
    caps = {name: max(cap, int((scores[name].detach() == LOWEST).sum())) for name, cap in caps.items()}
    over = {name for name in over if _n_pruned(masks[name]) > caps[name]}
    capped: set[str] = set()
    while over:  # each round caps at least one more layer, so this ends
        capped |= over
        rest = {n: s for n, s in scores.items() if n not in capped}
        if not rest:
            break
        budget = max(n_prune - sum(caps[n] for n in capped), 0)
        masks.update(_lowest_pruned(rest, min(budget, sum(s.numel() for s in rest.values()))))
        over = {name for name in rest if _n_pruned(masks[name]) > caps[name]}
    for name in capped:
        masks[name] = _lowest_pruned({name: scores[name]}, caps[name])[name]
    return masks


def _n_pruned(mask: torch.Tensor) -> int:
    # uint8 view: a reduction over a bool tensor is much slower on CPU than over its bytes
    return mask.numel() - int(mask.view(torch.uint8).sum())


def _lowest_pruned(scores: dict[str, torch.Tensor], n_prune: int) -> dict[str, torch.Tensor]:
    """Masks pruning exactly the ``n_prune`` lowest scores over all layers (ties by position)."""
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        # The already-pruned block is one big tie; selection over it is slow (introselect degrades
        # on duplicates), so the threshold is searched among the other scores only.
        lowest = flat == LOWEST
        n_lowest = int(lowest.sum())
        rest = flat[~lowest] if n_lowest else flat
        if n_prune <= n_lowest:
            threshold = torch.tensor(LOWEST)
        else:
            threshold = _kth_smallest(rest, n_prune - n_lowest)
        below = flat < threshold
        ties = torch.nonzero(flat == threshold).flatten()[: n_prune - int(below.sum())]
        keep = ~below
        keep[ties] = False
    out, offset = {}, 0
    for name, s in scores.items():
        out[name] = keep[offset : offset + s.numel()].view_as(s)
        offset += s.numel()
    return out


def layer_topk_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """:func:`global_topk_masks` for each layer on its own: every layer loses ``round(sparsity * n)``."""
    return {name: global_topk_masks({name: s}, sparsity)[name] for name, s in scores.items()}


def masked_scores(scores: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Scores with already-pruned entries set to the lowest float so re-ranking never revives them."""
    mask = get_mask(module)
    scores = scores.detach().float()
    if mask is None:
        return scores.clone()
    # Arithmetic on a 0/1 float copy of the mask: bool indexing/masked_fill is ~10x slower on CPU.
    alive = mask.view(torch.uint8).float()
    return (scores * alive).add_(alive.sub_(1).mul_(-LOWEST))
