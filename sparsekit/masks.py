"""Mask math and mask buffers.

A mask is a bool buffer named ``sparsekit_mask`` registered on the module beside its weight
(non-persistent, so it never leaks into ``state_dict`` keys, and DDP broadcasts it with the other
buffers so every rank agrees). Masks are applied in place after each optimizer step, so the
parameter objects an optimizer holds stay the same; they only ever lose ones during a run.
"""

from __future__ import annotations

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


def topk_mask(scores: torch.Tensor, sparsity: float, keep_zero: torch.Tensor | None = None) -> torch.Tensor:
    """Mask keeping the ``1 - sparsity`` fraction of highest scores, exactly ``round(sparsity * n)``
    zeros. Ties are broken by position (stable) so the count is exact."""
    return global_topk_masks({"_": scores}, sparsity)["_"]


def _kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    if flat.device.type == "cpu":
        # numpy's introselect is about 2x faster than torch.kthvalue on CPU.
        return torch.tensor(np.partition(flat.numpy(), k - 1)[k - 1])
    return torch.kthvalue(flat, k).values


def global_topk_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Rank all scores together and prune the lowest ``round(sparsity * total)`` of them.

    Already-pruned weights must carry the lowest score (see :func:`masked_scores`) so they stay
    pruned: masks only lose ones. Ties are broken by position, as a stable sort would."""
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    n_prune = round(sparsity * flat.numel())
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
