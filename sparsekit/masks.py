"""Mask math and mask buffers.

A mask is a bool buffer named ``sparsekit_mask`` registered on the module beside its weight
(non-persistent, so it never leaks into ``state_dict`` keys, and DDP broadcasts it with the other
buffers so every rank agrees). Masks are applied in place after each optimizer step, so the
parameter objects an optimizer holds stay the same; they only ever lose ones during a run.

Applying them is on every training step's path (benchmarks/step_overhead.py), so on CPU each mask's 0/1
copy in the weight's dtype is cached until the mask changes (:func:`mask_factor`), and a method's hook that
left a layer masked itself says so (:func:`mark_applied`) so that :func:`apply_masks` skips it; both are
checked against tensor version counters and give the very bits of ``weight * mask``.
"""

from __future__ import annotations

import functools
import itertools
import math
import weakref
from collections.abc import Iterator
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
        weight = weight_of(module)
        # On meta (a shape-only rehearsal) torch.ones_like runs Python reference code importing ~1 s of torch.
        if weight.is_meta:
            mask = torch.empty(weight.shape, dtype=torch.bool, device="meta")
        else:
            mask = torch.ones_like(weight, dtype=torch.bool)
        module.register_buffer(MASK, mask, persistent=False)
    return mask


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Install ``mask`` AND-ed with the current one, so a weight once pruned stays pruned."""
    current = ensure_mask(module)
    if current.is_meta or mask.is_meta:
        return  # a shape-only rehearsal (sparsekit.rehearsal): no values to combine or apply
    mask = mask.to(current.device)
    if mask.dtype == torch.bool and mask.shape == current.shape:
        current.view(torch.uint8).bitwise_and_(mask.view(torch.uint8))  # the same bytes, ~4x faster on CPU
    else:
        current.logical_and_(mask)
    apply_mask(module)


@torch.no_grad()
def apply_mask(module: nn.Module) -> None:
    """Zero the masked weights in place (the parameter object stays the same); no-op without a mask."""
    mask = get_mask(module)
    if mask is not None:
        _apply(module, mask)


def _apply(module: nn.Module, mask: torch.Tensor) -> None:
    """:func:`apply_mask` for a module with a mask, called under ``torch.no_grad()``."""
    weight = weight_of(module)
    if _APPLIED and _still_applied(weight, mask):
        return  # masked by a method's hook in this step, and neither changed since
    factor = mask_factor(weight, mask)
    if factor is not None:
        multiply_in_place(weight, factor)


# Elements a mixed-dtype product multiplies at a time (see multiply_in_place): 4 MiB of float32.
_MUL_CHUNK = 1 << 20


def multiply_in_place(weight: torch.Tensor, factor: torch.Tensor) -> None:
    """``weight.mul_(factor)`` for a :func:`mask_factor` result, bit for bit. A factor of another dtype (a
    mask's bytes, for a layer whose 0/1 copy is not cached) is multiplied a chunk at a time on CPU: torch
    converts it to the weight's dtype first, a temporary the size of the weight on every optimizer step
    (+64 MiB at the fine-tuning peak of a 4096x4096 layer, benchmarks/memory_scaling.py), which is the copy
    the cache's budget meant not to hold."""
    if factor.dtype == weight.dtype or not weight.is_cpu or weight.numel() <= _MUL_CHUNK:
        weight.mul_(factor)
        return
    if not (weight.is_contiguous() and factor.is_contiguous()) or weight.shape != factor.shape:
        weight.mul_(factor)  # (a strided or broadcast product: never seen from sparsekit's masks)
        return
    flat, by = weight.view(-1), factor.view(-1)
    for at in range(0, flat.numel(), _MUL_CHUNK):
        flat[at : at + _MUL_CHUNK].mul_(by[at : at + _MUL_CHUNK])


def mask_factor(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """What to multiply ``weight`` by to apply ``mask`` (bool, the weight's shape), bit for bit the product
    with the mask's 0/1 bytes; None when the mask is all ones (then there is nothing to do).

    This runs after every optimizer step. On CPU, weight * uint8 is not vectorized: a 0/1 copy of the mask
    in the weight's dtype multiplies ~2x faster, and an all-ones mask needs no pass at all. Both are cached
    until the mask changes (its version counter, or its storage). Layers over ``_FACTOR_MAX_NUMEL``
    weights, copies past ``_FACTOR_BUDGET`` bytes in all, and other devices multiply by the mask's bytes
    (float * bool is not vectorized, the same bytes viewed as uint8 are: ~4x faster)."""
    if weight.is_cpu and mask.is_cpu and mask.numel() <= _FACTOR_MAX_NUMEL and not mask.is_inference():
        factor = _cpu_factor(mask, weight.dtype)
        if factor is not _OVER_BUDGET:
            return factor
    return mask.view(torch.uint8)


_FACTOR_MAX_NUMEL = 1 << 24  # a cached copy costs the layer's weight size again in memory: 64 MB at most
# Bytes of cached copies in all. A copy costs its layer's weights again, and fine-tuning already holds four
# copies (weights, gradients, two Adam moments): past 64 MiB the copies would raise a large model's peak
# memory by a model size while its step is long enough for the mask's bytes to cost little
# (benchmarks/memory_scaling.py).
_FACTOR_BUDGET = 1 << 26
_OVER_BUDGET = torch.empty(0)  # what _cpu_factor returns when a new copy would pass _FACTOR_BUDGET


class _Factor:
    """A cached 0/1 copy of one mask: valid while the mask keeps its version counter and storage."""

    __slots__ = ("factor", "nbytes", "ptr", "ref", "version")

    def __init__(self, ref: weakref.ref, version: int, ptr: int, factor: torch.Tensor | None) -> None:
        self.ref, self.version, self.ptr, self.factor = ref, version, ptr, factor
        self.nbytes = 0 if factor is None else factor.numel() * factor.element_size()


# id(mask) -> its cached copy; an entry goes when its mask does. A mask written through ``.data``,
# numpy or DLPack bypasses the version counter: write masks with torch's in-place ops (sparsekit only
# does), or assign a new buffer.
_FACTORS: dict[int, _Factor] = {}
_factor_bytes = 0  # the sum of the entries' nbytes


def _cpu_factor(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """What to multiply a CPU weight of ``dtype`` by to apply ``mask``: its 0/1 copy, None when all ones,
    ``_OVER_BUDGET`` when a new copy would pass ``_FACTOR_BUDGET``."""
    global _factor_bytes
    key, version, ptr = id(mask), mask._version, mask.data_ptr()
    entry = _FACTORS.get(key)
    old = None
    if entry is not None and entry.ref() is mask:
        old = entry.factor
        if entry.version == version and entry.ptr == ptr and (old is None or old.dtype == dtype):
            return old
    if count_true(mask) == mask.numel():
        factor = None
    elif old is not None and old.dtype == dtype and old.shape == mask.shape:
        factor = old.copy_(mask.view(torch.uint8))  # refreshed in place: no new memory to fault in
    else:
        held = 0 if entry is None else entry.nbytes
        if _factor_bytes - held + mask.numel() * dtype.itemsize > _FACTOR_BUDGET:
            return _OVER_BUDGET
        factor = torch.empty(mask.shape, dtype=dtype).copy_(mask.view(torch.uint8))
    if entry is not None:
        _factor_bytes -= entry.nbytes
    new = _Factor(weakref.ref(mask, functools.partial(_drop_factor, key)), version, ptr, factor)
    _FACTORS[key] = new
    _factor_bytes += new.nbytes
    return factor


def _drop_factor(key: int, _mask: object) -> None:
    global _factor_bytes
    entry = _FACTORS.pop(key, None)  # the mask is gone
    if entry is not None:
        _factor_bytes -= entry.nbytes


def count_true(flags: torch.Tensor) -> int:
    """How many entries of a bool tensor are True, or of any other tensor nonzero: ``(w == 0).sum()`` is
    ``w.numel() - count_true(w)`` (a NaN is neither). On CPU through numpy for a bool tensor: torch's bool
    reductions there are several times slower, and this runs every step (e.g. to tell whether a mask changed).
    Never ``int(t.sum())`` on CPU: torch sums a bool tensor through an int64 temporary of 8 bytes an entry,
    twice a float32 weight's size (+145 MiB at the peak of counting one 4096x4096 layer's zeros, in the
    fine-tuning of benchmarks/memory_scaling.py); counting allocates nothing of the tensor's size."""
    flags = flags.detach()
    if flags.dtype == torch.bool:
        if flags.device.type == "cpu":
            return int(np.count_nonzero(flags.numpy()))
        return int(flags.view(torch.uint8).sum(dtype=torch.int64))
    return int(torch.count_nonzero(flags))


# Weights a method's hook left masked during the current Pruner.step, by id: (weight, its version, mask, its
# version). apply_mask skips such a weight once, while neither it nor its mask changed since (version counters).
# The Pruner clears this at the start of every step, so nothing carries over an optimizer step.
_APPLIED: dict[int, tuple[torch.Tensor, int, torch.Tensor, int]] = {}


def mark_applied(module: nn.Module) -> None:
    """Note that ``module``'s mask is applied to its weight as they are now, so the Pruner's
    :func:`apply_masks` at the end of this step can skip the pass; no-op without a mask."""
    mask, weight = get_mask(module), weight_of(module)
    if mask is not None and not mask.is_inference() and not weight.is_inference():
        _APPLIED[id(weight)] = (weight, weight._version, mask, mask._version)


def forget_applied() -> None:
    """Drop every :func:`mark_applied` note (the Pruner calls it at the start of each step)."""
    _APPLIED.clear()


def _still_applied(weight: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether a :func:`mark_applied` note covers ``weight`` and ``mask`` as they are now (the note is used up)."""
    entry = _APPLIED.pop(id(weight), None)
    return (
        entry is not None
        and entry[0] is weight
        and entry[1] == weight._version
        and entry[2] is mask
        and entry[3] == mask._version
    )


class _Plan:
    """What :func:`apply_masks` multiplied on one model, to redo while nothing it read has changed: each
    masked module (weakly held: the plan must not keep a model alive) with the mask and weight it had, the
    mask's version counter and storage, and the weight's dtype; then the foreach lists and the lone products."""

    __slots__ = ("entries", "factors", "singles", "weights")

    def __init__(self) -> None:
        self.entries: list[tuple[weakref.ref, torch.Tensor, torch.Tensor, int, int, torch.dtype, torch.device]] = []
        self.weights: list[torch.Tensor] = []
        self.factors: list[torch.Tensor] = []
        self.singles: list[tuple[torch.Tensor, torch.Tensor]] = []

    def holds(self, found: list[tuple[nn.Module, torch.Tensor]]) -> bool:
        """Whether the same modules carry the same masks, unchanged, over the same weight objects and dtypes."""
        if len(found) != len(self.entries):
            return False
        for (module, mask), (ref, mask0, weight, version, ptr, dtype, device) in zip(found, self.entries, strict=True):
            if (
                mask is not mask0
                or ref() is not module
                or module._parameters.get("weight") is not weight
                or mask._version != version
                or mask.data_ptr() != ptr
                or weight.dtype != dtype
                or weight.device != device
            ):
                return False
        return True

    def apply(self) -> None:
        """The multiplies: one foreach call for the cached factors, one product for each lone pair."""
        with torch.no_grad():
            if self.weights:
                torch._foreach_mul_(self.weights, self.factors)
            for lone, by in self.singles:
                multiply_in_place(lone, by)


# model -> the plan of its last apply_masks (weak keys: a model that goes takes its plan with it).
_PLANS: weakref.WeakKeyDictionary[nn.Module, _Plan] = weakref.WeakKeyDictionary()


def apply_masks(model: nn.Module) -> None:
    """:func:`apply_mask` on every module of ``model``."""
    # This runs after every optimizer step: the modules walked directly (each once, as model.modules() does,
    # ~2x faster: no name strings), and one foreach multiply for all the cached factors (one dispatch instead
    # of one per layer: on a small model the dispatches dominate). Finding each weight and its factor again
    # cost more than the multiply on the digits MLP (~25 of ~50 us): while the masks, weights and dtypes are
    # the ones the last call found, its lists are used again (checked per call, in ~1 us a layer).
    found: list[tuple[nn.Module, torch.Tensor]] = []
    todo, seen = [model], {id(model)}
    for module in todo:
        mask = module._buffers.get(MASK)
        if mask is not None:
            found.append((module, mask))
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                todo.append(child)
    plan = _PLANS.get(model)
    if plan is not None and not _APPLIED and plan.holds(found):
        plan.apply()
        return
    _PLANS.pop(model, None)
    if not found:
        return
    plan = _Plan()
    planned = True  # False once a layer was skipped for this step alone (a hook's note) or is no plain parameter
    listed: set[int] = set()
    with torch.no_grad():
        for module, mask in found:
            weight = weight_of(module)
            # (an inference tensor has no version counter to check; a meta one no storage)
            planned = (
                planned and module._parameters.get("weight") is weight and not (mask.is_inference() or mask.is_meta)
            )
            if planned:
                plan.entries.append(
                    (weakref.ref(module), mask, weight, mask._version, mask.data_ptr(), weight.dtype, weight.device)
                )
            if _APPLIED and _still_applied(weight, mask):
                planned = False
                continue  # masked by a method's hook in this step, and neither changed since
            factor = mask_factor(weight, mask)
            if factor is None:
                continue
            if factor.dtype != weight.dtype or id(weight) in listed:
                plan.singles.append((weight, factor))  # mask bytes; or a weight listed already (tied: the same bits)
            else:
                listed.add(id(weight))
                plan.weights.append(weight)
                plan.factors.append(factor)
    plan.apply()
    if planned:
        _PLANS[model] = plan


def unfollowed_masks(model: nn.Module, call: str) -> str | None:
    """The warning for a model whose layers carry masks their weights do not follow (None when all do): the Pruner's
    model after an optimizer step its ``pruner.step()`` has not followed yet, or a copy made while a Pruner ran (an
    EMA's ``AveragedModel``, ``copy.deepcopy``), which keeps the mask buffers but which no Pruner applies them to, so
    its weights were written dense with no word (its EMA weights decay towards zero, never to it)."""
    found = []
    with torch.no_grad():
        for name, module in model.named_modules():
            mask = module._buffers.get(MASK)
            weight = module._parameters.get("weight")
            if mask is None or weight is None or mask.is_meta or weight.is_meta or mask.shape != weight.shape:
                continue
            count = int(weight.masked_select(mask.logical_not().to(weight.device)).count_nonzero())
            if count:
                found.append(f"{name or 'the model'!r}: {count:,}")
    if not found:
        return None
    shown = ", ".join(found[:3]) + (f", and {len(found) - 3} more" if len(found) > 3 else "")
    return (
        f"{call}: {len(found)} layer(s) carry a sparsekit mask whose pruned weights are not zero ({shown} weights): "
        "the Pruner's own model between optimizer.step() and pruner.step() (which masks them again: write it after "
        "pruner.step()), or a copy of the model made while a Pruner ran (an EMA's AveragedModel, copy.deepcopy), "
        "which the Pruner does not update, is written dense there; write the model pruner.finalize() returned, or "
        "zero the masked weights of the copy first (for each module m with m.sparsekit_mask: "
        "m.weight.data.mul_(m.sparsekit_mask))"
    )


def forget_plan(model: nn.Module) -> None:
    """Drop what :func:`apply_masks` kept for ``model`` (its masks' factors): the Pruner's model at finalize, which a
    method may have replaced by another object."""
    _PLANS.pop(model, None)


def bake(model: nn.Module) -> nn.Module:
    """Zero masked weights for good (as +0.0) and remove the mask buffers: nothing of sparsekit stays behind."""
    forget_plan(model)  # apply_masks' kept lists hold the masks' factors: they go with the masks
    for module in model.modules():
        mask = get_mask(module)
        if mask is not None:
            with torch.no_grad():
                # Not the multiply apply_mask does: w * 0 is -0.0 for a negative w, which a saved checkpoint
                # or ONNX file compresses worse than +0.0 (see sparsekit.onnx.tensors.positive_zeros).
                weight_of(module).masked_fill_(mask.logical_not(), 0.0)  # (logical_not: a uint8 mask too)
            del module._buffers[MASK]
            _drop_factor(id(mask), mask)  # its cached copy goes now, not when the last reference to the mask does
    return model


def positive_zeros_(model: nn.Module) -> int:
    """Set every ``-0.0`` of ``model``'s floating-point parameters and buffers to ``+0.0``, in place (equal
    values: outputs do not change); returns how many were changed.

    For a model sparsekit loaded itself (``sparsekit export`` of a checkpoint pruned by multiplying masks, as
    torch.nn.utils.prune does): the exported file then needs no rewrite of its own, which for a large tensor
    costs a copy of it (see :func:`sparsekit.onnx.tensors.positive_zeros`). Temporaries: two bytes per element
    of the largest tensor."""
    changed = 0
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if not tensor.is_floating_point():
                continue
            negative = torch.signbit(tensor).logical_and_(tensor == 0)
            n = count_true(negative)
            if n:
                tensor.masked_fill_(negative, 0.0)
                changed += n
    return changed


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
    # round() first: 0.29 * 100 is 28.999999999999996 in floating point, and means 29. That rounding also lifts a cap
    # just below 1 to the whole layer (0.9999999 of 10 weights is 9.999999 -> 10, the default cap for sparsity
    # 0.9999999), so a cap below 1 is held to numel - 1 as promised.
    return max(0, min(numel - 1, math.floor(round(max_layer_sparsity * numel, 6))))


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
    Ties are broken by position, as a stable sort would.

    Cost: no sort and no concatenation of the scores (see :func:`_lowest_pruned`): on the CPU the exact
    threshold comes from two histogram passes over the scores' bits, so memory beyond the scores is a
    chunk's worth plus the bool masks. Scores on the ``meta`` device (a shape-only rehearsal) give
    masks of the right shapes on ``meta``, with no values."""
    total = sum(s.numel() for s in scores.values())
    n_prune = round(sparsity * total)
    masks = _lowest_pruned(scores, n_prune)
    if max_layer_sparsity >= 1 or any(m.is_meta for m in masks.values()):
        return masks
    caps = {name: layer_cap(s.numel(), max_layer_sparsity) for name, s in scores.items()}
    over = {name for name, m in masks.items() if _n_pruned(m) > caps[name]}
    if not over:
        return masks  # the usual case: the plain ranking respects every cap
    # A layer already pruned past its cap keeps what it has (masks only lose ones) and takes no more.
    # (_n_pruned of `!= LOWEST` counts the LOWEST entries: torch's bool sums are slow on CPU.)
    caps = {name: max(cap, _n_pruned(scores[name].detach() != LOWEST)) for name, cap in caps.items()}
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
    return mask.numel() - count_true(mask)


# Scores are read in chunks of this many values: the temporaries of a selection pass stay ~20 MB whatever
# the layer sizes.
_CHUNK = 1 << 20
_SIGN = np.uint32(0x80000000)


def _sort_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the float32 ``values`` (-0.0 as +0.0, as float comparison has it):
    a negative float's bits inverted, a positive one's with the sign bit set. NaN is not a score."""
    # Four passes, two arrays: np.where over ~bits and bits | sign, then a fix-up of -0.0, took seven and five
    # (~5x slower: the ranking of every mask update on LeNet-300-100 spent 6 ms here).
    bits = np.add(values, np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 is +0.0: one key for both zeros
    flip = (bits.view(np.int32) >> 31).view(np.uint32)  # all ones for a negative float, else 0
    flip |= _SIGN
    return np.bitwise_xor(bits, flip, out=flip)


def _key_chunks(arrays: list[np.ndarray]) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(array index, offset, keys)`` for consecutive chunks of every array, in order."""
    for i, a in enumerate(arrays):
        for start in range(0, a.size, _CHUNK):
            yield i, start, _sort_keys(a[start : start + _CHUNK])


def _threshold_key(arrays: list[np.ndarray], k: int) -> tuple[int, int]:
    """The key of the ``k``-th smallest value (1-based, ``1 <= k <= total``) of ``arrays`` taken together,
    and how many values have a smaller key: exact, by a radix selection on the 32-bit keys (a histogram of
    their high 16 bits over all values, then of the low 16 bits within the bin holding the k-th)."""
    high = np.zeros(1 << 16, dtype=np.int64)
    for _, _, keys in _key_chunks(arrays):
        high += np.bincount(keys >> 16, minlength=1 << 16)
    cum = np.cumsum(high)
    top = int(np.searchsorted(cum, k))  # the first bin reaching k
    below = int(cum[top - 1]) if top else 0
    low = np.zeros(1 << 16, dtype=np.int64)
    for _, _, keys in _key_chunks(arrays):
        inside = keys[(keys >> 16) == top]
        if inside.size:
            low += np.bincount(inside & 0xFFFF, minlength=1 << 16)
    cum = np.cumsum(low)
    bottom = int(np.searchsorted(cum, k - below))
    below += int(cum[bottom - 1]) if bottom else 0
    return (top << 16) | bottom, below


def _keep_cpu(arrays: list[np.ndarray], n_prune: int) -> list[np.ndarray]:
    """The ``keep`` flags of :func:`_lowest_pruned` for 1-D float32 numpy arrays (``0 < n_prune <= total``):
    every value whose key is below the threshold's is pruned, then the first values equal to it (in
    order) until ``n_prune`` are. Three passes over the scores, none of them copied whole."""
    threshold, below = _threshold_key(arrays, n_prune)
    ties = n_prune - below  # >= 1: the threshold value itself is among the pruned
    key = np.uint32(threshold)
    out = [np.empty(a.size, dtype=bool) for a in arrays]
    for i, start, keys in _key_chunks(arrays):
        keep = out[i][start : start + keys.size]
        np.greater_equal(keys, key, out=keep)
        if ties:
            equal = np.flatnonzero(keys == key)[:ties]
            keep[equal] = False
            ties -= equal.size
    return out


def _lowest_pruned(scores: dict[str, torch.Tensor], n_prune: int) -> dict[str, torch.Tensor]:
    """Masks pruning exactly the ``n_prune`` lowest scores over all layers (ties by position: layer order,
    then flat index). On the CPU without concatenating or sorting anything (:func:`_keep_cpu`); on the
    ``meta`` device, masks of the right shapes and no values."""
    if any(s.is_meta for s in scores.values()):
        return {name: torch.empty(s.shape, dtype=torch.bool, device="meta") for name, s in scores.items()}
    if all(s.device.type == "cpu" for s in scores.values()):
        # float32 and contiguous: a view for what masked_scores returns, a copy of one layer otherwise.
        arrays = [s.detach().float().contiguous().view(-1).numpy() for s in scores.values()]
        total = sum(a.size for a in arrays)
        if n_prune <= 0:
            flags = [np.ones(a.size, dtype=bool) for a in arrays]
        else:
            flags = _keep_cpu(arrays, min(n_prune, total))
        return {name: torch.from_numpy(f).view(s.shape) for (name, s), f in zip(scores.items(), flags, strict=True)}
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    if n_prune <= 0:
        keep = torch.ones_like(flat, dtype=torch.bool)
    else:
        # The already-pruned block is one big tie; selection over it is slow (introselect degrades
        # on duplicates), so the threshold is searched among the other scores only.
        lowest = flat == LOWEST
        n_lowest = count_true(lowest)
        rest = flat[~lowest] if n_lowest else flat
        if n_prune <= n_lowest:
            threshold = torch.tensor(LOWEST)
        else:
            threshold = _kth_smallest(rest, n_prune - n_lowest)
        below = flat < threshold
        ties = torch.nonzero(flat == threshold).flatten()[: n_prune - count_true(below)]
        keep = ~below
        keep[ties] = False
    out, offset = {}, 0
    for name, s in scores.items():
        out[name] = keep[offset : offset + s.numel()].view_as(s)
        offset += s.numel()
    return out


def layer_topk_masks(
    scores: dict[str, torch.Tensor], sparsity: float, max_layer_sparsity: float = 1.0
) -> dict[str, torch.Tensor]:
    """:func:`global_topk_masks` for each layer on its own: every layer loses ``round(sparsity * n)``, at most
    :func:`layer_cap` of its weights (rounding may ask a small layer for more: 0.9 of 3 weights is all 3)."""
    return {name: global_topk_masks({name: s}, sparsity, max_layer_sparsity)[name] for name, s in scores.items()}


def masked_scores(scores: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Scores with already-pruned entries set to the lowest float so re-ranking never revives them."""
    mask = get_mask(module)
    if scores.is_meta:  # a shape-only rehearsal: torch's meta kernels for this arithmetic import torch._dynamo
        return torch.empty(scores.shape, dtype=torch.float32, device="meta")
    scores = scores.detach().float()
    if mask is None:
        return scores.clone()
    # Arithmetic on a 0/1 float copy of the mask: bool indexing/masked_fill is ~10x slower on CPU.
    # scores * alive + offset, offset = +0.0 where alive, LOWEST where pruned (exact: LOWEST + -LOWEST * 1
    # is +0.0), in three passes: s * alive is exact, so the fused multiply-add rounds once, as s * alive + offset.
    alive = mask.view(torch.uint8).float()
    offset = torch.add(torch.tensor(LOWEST, device=alive.device), alive, alpha=-LOWEST)
    return offset.addcmul_(scores, alive)
