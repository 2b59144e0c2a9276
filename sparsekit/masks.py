"""Mask math and mask buffers.

A mask is a bool buffer named ``sparsekit_mask`` registered on the module beside its weight
(non-persistent, so it never leaks into ``state_dict`` keys, and DDP broadcasts it with the other
buffers so every rank agrees). Masks are applied in place after each optimizer step, so the
parameter objects an optimizer holds stay the same; they only ever lose ones during a run.
"""

from __future__ import annotations

import torch
from torch import nn

MASK = "sparsekit_mask"


def get_mask(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, MASK, None)


def ensure_mask(module: nn.Module) -> torch.Tensor:
    mask = get_mask(module)
    if mask is None:
        mask = torch.ones_like(module.weight, dtype=torch.bool)
        module.register_buffer(MASK, mask, persistent=False)
    return mask


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Install ``mask`` AND-ed with the current one, so a weight once pruned stays pruned."""
    current = ensure_mask(module)
    current.logical_and_(mask.to(current.device))
    apply_mask(module)


@torch.no_grad()
def apply_mask(module: nn.Module) -> None:
    mask = get_mask(module)
    if mask is not None:
        module.weight.mul_(mask)


def apply_masks(model: nn.Module) -> None:
    for module in model.modules():
        apply_mask(module)


def bake(model: nn.Module) -> nn.Module:
    """Zero masked weights for good and remove the mask buffers: nothing of sparsekit stays behind."""
    for module in model.modules():
        if get_mask(module) is not None:
            apply_mask(module)
            del module._buffers[MASK]
    return model


def kth_threshold(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    return torch.kthvalue(scores.flatten().float(), n_prune).values


def topk_mask(scores: torch.Tensor, sparsity: float, keep_zero: torch.Tensor | None = None) -> torch.Tensor:
    """Mask keeping the ``1 - sparsity`` fraction of highest scores, exactly ``round(sparsity * n)``
    zeros. Ties are broken by position (stable) so the count is exact."""
    return global_topk_masks({"_": scores}, sparsity)["_"]


def global_topk_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Rank all scores together and prune the lowest ``round(sparsity * total)`` of them.

    Already-pruned weights must carry score ``-inf`` so they stay pruned (masks only lose ones)."""
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    n_prune = round(sparsity * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        # argsort with stable=True gives an exact count even with many equal scores (e.g. zeros).
        order = torch.argsort(flat, stable=True)
        keep[order[:n_prune]] = False
    out, offset = {}, 0
    for name, s in scores.items():
        out[name] = keep[offset : offset + s.numel()].view_as(s)
        offset += s.numel()
    return out


def layer_topk_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    return {name: global_topk_masks({name: s}, sparsity)[name] for name, s in scores.items()}


def masked_scores(scores: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Scores with already-pruned entries set to -inf so re-ranking never revives them."""
    mask = get_mask(module)
    scores = scores.detach().float().clone()
    if mask is not None:
        scores[~mask] = float("-inf")
    return scores
