"""Devices and ``torch.distributed``: where a run trains, and how ``torchrun`` processes agree.

``torchrun`` started with N processes (README, "GPUs, torchrun and several machines") gives each
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its environment. :func:`init_from_env` joins them into one process group
(``gloo`` on CPU, ``nccl`` on CUDA); every rank then trains a ``DistributedDataParallel`` replica on its
own shard of the training data (:func:`shard`), and only rank 0 writes, exports and benchmarks.

Masks stay identical on every rank because everything they are computed from is identical there:
weights (DDP keeps replicas equal), and gradients, which DDP averages across ranks in ``backward()``
(a model not wrapped in DDP gets its gradients averaged by :class:`~sparsekit.pruner.Pruner` before
gradient-based scoring, see :func:`average_grads`). No importance reads rank-local state: BatchNorm
running statistics differ between ranks between DDP's buffer broadcasts, and ``bn_scale`` ranks by the
BatchNorm weight (a parameter, equal everywhere), not by them. Calibration batches (gradient methods with
no fine-tuning) go through the DDP wrapper too, so their gradients are averaged.

:func:`check_masks` proves it: a checksum of every mask, and of the channels structured pruning removed, is compared
across ranks once per epoch and at ``finalize()``, and a divergence is an error naming the first layer that differs (or
saying the removed channels differ), not a silently different model per rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

from . import wrappers as _wrappers
from .errors import RecipeError, SparsekitError, option

T = TypeVar("T")


class DivergenceError(SparsekitError):
    """Ranks of one distributed run hold different masks."""


def active() -> bool:
    """True inside an initialized process group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Processes in the group (1 when not distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the process that writes outputs: rank 0, or the only process."""
    return rank() == 0


def launched() -> bool:
    """True when started by ``torchrun`` (or any launcher setting ``WORLD_SIZE``) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def peer_failure(err: BaseException) -> bool:
    """True when ``err`` is a collective that broke because another process of the run stopped (gloo's "Connection
    closed by peer", NCCL's, a ``DistError``): DDP's forward and backward run collectives, so a rank that died (its
    own error, a kill) fails the others' next step inside the user's model. Such an error is no fault of this rank's
    model or data, and must reach the caller as it is, not wrapped in a message blaming them."""
    if not (launched() or active()):
        return False
    import torch.distributed as dist

    text = str(err)
    return isinstance(err, dist.DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer")
    )


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for ``finetune.device``: ``auto`` (CUDA when available, else CPU), ``cpu``,
    ``cuda``, ``cuda:N`` or ``mps``. Under a multi-process launch, ``auto`` and ``cuda`` mean
    ``cuda:LOCAL_RANK`` (one GPU per process, the torchrun convention).

    Raises :class:`~sparsekit.errors.RecipeError` naming ``finetune.device`` when the device is not
    there (no CUDA build or GPU, an index past the GPUs present, no MPS), or when ``cuda:N`` is given
    to a multi-process run."""
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if name == "auto":
        if torch.cuda.is_available() and not (launched() and local >= torch.cuda.device_count()):
            return torch.device("cuda", local if launched() else torch.cuda.current_device())
        return torch.device("cpu")  # more processes than GPUs: auto means CPU for all (gloo)
    if name == "cpu":
        return torch.device("cpu")
    fix = f"use auto or cpu ({option('device', 'cpu')})"
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RecipeError(f"finetune.device: 'mps', but this torch has no usable MPS device; {fix}")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise RecipeError(
            f"finetune.device: {name!r}, but torch sees no CUDA device (a CPU-only build of torch, no GPU, or "
            f"CUDA_VISIBLE_DEVICES hides them); {fix}"
        )
    count = torch.cuda.device_count()
    if name == "cuda":
        if launched() and local >= count:
            raise RecipeError(
                f"finetune.device: 'cuda' for process LOCAL_RANK={local}, but this machine shows {count} CUDA "
                "device(s): start at most one process per GPU, or use the CPU (gloo)"
            )
        return torch.device("cuda", local if launched() else torch.cuda.current_device())
    index = int(name.split(":", 1)[1])
    if launched():
        raise RecipeError(
            f"finetune.device: {name!r} in a run of {os.environ.get('WORLD_SIZE')} processes: each process uses "
            f"cuda:LOCAL_RANK; ask for 'cuda' ({option('device', 'cuda')})"
        )
    if index >= count:
        raise RecipeError(f"finetune.device: {name!r}, but only {count} CUDA device(s) are visible (cuda:0..)")
    return torch.device("cuda", index)


# Rank 0 alone measures, exports and benchmarks while the others wait in a collective: NCCL's default
# 10-minute timeout would abort them on a large model.
TIMEOUT = timedelta(hours=6)

# How long a mask check (run by the Pruner once per epoch and at finalize()) waits for the other ranks. Ranks reach it
# in lockstep (DDP synchronizes every backward), so a long wait means some rank never calls it, typically
# ``if rank == 0: model = pruner.finalize()``: without a limit both ranks would hang for the process group's timeout
# (hours) with no message. Long enough for work one rank does alone between two checks (rank-0-only evaluation or
# checkpoint writing in a user's loop; raise it for longer such work), far shorter than TIMEOUT.
CHECK_WAIT = timedelta(minutes=30)


def init_from_env(device: torch.device) -> bool:
    """Join the process group a launcher described in the environment (``MASTER_ADDR``, ``RANK``, ...):
    ``nccl`` for a CUDA device, else ``gloo``, with a :data:`TIMEOUT` long enough for rank 0's solo work.
    Returns True when this call created the group (the caller then closes it with :func:`close`); False
    for a single process, or when the caller had initialized a group already (it stays theirs).

    Raises :class:`~sparsekit.errors.SparsekitError` when ``WORLD_SIZE`` says several processes but the
    other variables a launcher sets are missing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    if not launched():
        return False
    if not dist.is_available():
        raise SparsekitError("started with WORLD_SIZE > 1, but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise SparsekitError(
            f"the environment says WORLD_SIZE={os.environ.get('WORLD_SIZE')} but not {', '.join(missing)}: start "
            "several processes with torchrun, or unset WORLD_SIZE for one"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return True


def close() -> None:
    """Leave the process group :func:`init_from_env` joined (no-op when there is none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    import torch.distributed as dist

    if active():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (picklable plain data) on every rank; ``value`` itself when not distributed."""
    import torch.distributed as dist

    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(error: str | None) -> str | None:
    """Every rank learns rank 0's verdict: ``error`` is rank 0's message (None when it succeeded); returns
    it on all ranks. Used where only rank 0 can check something (the output folder), so the others stop
    with it instead of waiting forever."""
    return broadcast(error)


def shard(loader: Any, seed: int) -> Any:
    """``loader`` (a ``torch.utils.data.DataLoader``) rebuilt to read this rank's shard of its dataset
    through a ``DistributedSampler`` (shuffled with ``seed``, padded so every rank has as many batches);
    ``batch_size`` stays per rank, so an epoch has ``1/world_size`` of the single-process steps.
    Returned unchanged when not distributed. Call :func:`set_epoch` at the start of every epoch.

    Raises :class:`~sparsekit.errors.SparsekitError` for a loader that is not a DataLoader over a
    map-style dataset (it cannot be sharded without knowing its length)."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    if not active():
        return loader
    if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__len__"):
        raise SparsekitError(
            "data: a distributed run shards the training data with a DistributedSampler, which needs a "
            f"torch DataLoader over a dataset with a len() (got {type(loader).__name__})"
        )
    return _sharded(loader, DistributedSampler(loader.dataset, shuffle=True, seed=seed))


def launched_world_size() -> int:
    """The processes a launcher (``torchrun``) started, from ``WORLD_SIZE`` (1 when none or unreadable): known before
    this process joins their group, or without joining it at all."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def batches_per_rank(loader: Any) -> int:
    """``len()`` of this rank's :func:`shard` of ``loader``: the optimizer steps of one epoch on each rank. Also under a
    launch whose process group this process has not joined (``sparsekit validate`` started by torchrun, a dry run of
    the same command's ``prune``), where :func:`shard` would leave the loader whole: the schedules laid out in the
    whole loader's steps would not be those of the run it previews."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    n = launched_world_size()
    if active() or n <= 1 or not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__len__"):
        return len(shard(loader, 0))  # (shard refuses a loader it cannot split, as the run would)
    # Every rank's shard has the same length (DistributedSampler pads): rank 0's, without a process group.
    return len(_sharded(loader, DistributedSampler(loader.dataset, num_replicas=n, rank=0, shuffle=False)))


def _sharded(loader: Any, sampler: Any) -> Any:
    """``loader`` over the indices ``sampler`` gives, with everything else of the caller's loader kept: a setting
    left out changes the training silently under torchrun alone (a ``worker_init_fn`` seeding each worker's
    augmentation, the ``generator`` the workers' seeds come from, persistent workers)."""
    from torch.utils.data import DataLoader

    batch_size, drop_last = loader.batch_size, loader.drop_last
    if batch_size is None and loader.batch_sampler is not None:
        # DataLoader(dataset, batch_sampler=BatchSampler(...)): its batch size over this rank's shard. (Rebuilt with
        # batch_size=None, the loader yielded single samples, which the training then failed to read.)
        batch_size = getattr(loader.batch_sampler, "batch_size", None)
        drop_last = bool(getattr(loader.batch_sampler, "drop_last", False))
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SparsekitError(
                f"data: a distributed run shards the training data with a DistributedSampler, but the training "
                f"loader's batch_sampler ({type(loader.batch_sampler).__name__}) has no batch_size to batch each "
                "shard with: give the DataLoader a batch_size (and a sampler, if any) instead of a batch_sampler"
            )
    workers = {}
    if loader.num_workers > 0:  # (DataLoader refuses these without workers)
        workers = {"persistent_workers": loader.persistent_workers, "prefetch_factor": loader.prefetch_factor}
    return DataLoader(
        loader.dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        **workers,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell a sharded loader's ``DistributedSampler`` which epoch starts, so each epoch shuffles anew and
    a resumed run shuffles as the uninterrupted one would have."""
    set_sampler_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if callable(set_sampler_epoch):
        set_sampler_epoch(epoch)


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (on its own device) when distributed, else ``model``.
    Building the wrapper broadcasts rank 0's weights and buffers, so every replica starts equal."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = next(model.parameters()).device
    return DDP(model, device_ids=[device] if device.type == "cuda" else None)


def rewrap(model: nn.Module) -> nn.Module:
    """A new ``DistributedDataParallel`` around ``model.module`` after structured pruning replaced its
    parameters (DDP's buckets hold the old ones); ``model`` itself when it is not DDP. Every rank must
    call it at the same step (the Pruner removes channels at the same step everywhere)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not isinstance(model, DDP):
        return model
    # Every setting the caller chose carries over (a bare rebuild would silently change them, e.g. turn
    # find_unused_parameters off or move to the default process group).
    return DDP(
        model.module,
        device_ids=model.device_ids,
        output_device=model.output_device,
        dim=model.dim,
        forward_sync_buffers=getattr(model, "forward_sync_buffers", True),
        process_group=model.process_group,
        bucket_cap_mb=model.bucket_bytes_cap / (1024 * 1024),
        find_unused_parameters=model.find_unused_parameters,
        gradient_as_bucket_view=model.gradient_as_bucket_view,
        static_graph=model.static_graph,
    )


def guard_stale_wrapper(model: nn.Module) -> Any:
    """After channel removal replaced ``model``'s parameters: the next forward of a ``DistributedDataParallel`` around
    ``model`` raises a RuntimeError saying to :func:`rewrap` when that wrapper still holds the removed parameters.
    DDP's own error there blames "parameters that were not used in producing loss" and suggests
    ``find_unused_parameters=True``, which does not help. A global forward pre-hook (a wrapper cannot be found from
    the module it wraps), removed at that forward, or at the model's own when no wrapper runs it: no cost afterwards.
    Returns its handle (``.remove()``)."""
    import weakref

    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    ref = weakref.ref(model)

    def hook(module: nn.Module, args: Any) -> None:
        inner = ref()
        if inner is None:
            handle.remove()
            return
        if module is inner:
            handle.remove()  # the model itself runs first: no wrapper around it to check (and no cost from now on)
            return
        if not isinstance(module, DDP) or module.module is not inner:
            return
        handle.remove()
        current = {id(p) for p in inner.parameters()}
        if any(id(p) not in current for p in getattr(module, "_module_parameters", ())):
            raise RuntimeError(
                "this DistributedDataParallel wrapper still holds the parameters structured pruning removed: "
                "rebuild it on every rank after pruner.step() (or pruner.load_state_dict()) when "
                "pruner.structure_changed: model = sparsekit.distributed.rewrap(model), then "
                "optimizer = pruner.update_optimizer(optimizer)"
            )

    handle = register_module_forward_pre_hook(hook)
    return handle


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside data-parallel or ``torch.compile`` wrappers (itself otherwise): :mod:`sparsekit.wrappers`."""
    return _wrappers.unwrap(model)


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (``values`` itself when not distributed)."""
    import torch.distributed as dist

    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def average_grads(params: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` of ``params`` across ranks in place (all-reduce, then divide by the world size);
    parameters without a gradient are skipped, the same ones on every rank."""
    import torch.distributed as dist

    if not active():
        return
    n = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(n)


def _checksum(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Two numbers per mask, in name order: how many weights it keeps, and a position-weighted sum of the
    kept positions (different masks with the same count almost surely differ there)."""
    rows = []
    for name in sorted(masks):
        m = masks[name].reshape(-1)
        kept = m.to(torch.float64)
        # Weights 1..n scaled into (0, 1]: a swap of a kept and a pruned weight changes the sum.
        pos = torch.arange(1, m.numel() + 1, dtype=torch.float64, device=m.device) / m.numel()
        rows.append(torch.stack([kept.sum(), (kept * pos).sum()]))
    return torch.stack(rows).cpu() if rows else torch.zeros((0, 2), dtype=torch.float64)


def _removals_checksum(removals: Sequence[Any]) -> torch.Tensor:
    """One row like :func:`_checksum`'s for the channel removals structured pruning made (its replayable history:
    layer, side, indices): two numbers from a digest of them, the same length whatever was removed (the all-reduce
    needs every rank's tensor to be as long)."""
    import hashlib

    digest = hashlib.sha256(repr(list(removals)).encode()).digest()
    # 48-bit halves: float64 holds them exactly
    row = [float(int.from_bytes(digest[:6], "big")), float(int.from_bytes(digest[6:12], "big"))]
    return torch.tensor([row], dtype=torch.float64)


def check_masks(masks: dict[str, torch.Tensor], when: str, removals: Sequence[Any] = ()) -> None:
    """Compare a checksum of ``masks`` and of the channel ``removals`` structured pruning made (a Pruner's
    ``pruning_history``) across ranks (one small all-reduce); raises :class:`DivergenceError` on every rank, naming
    the first layer whose mask differs, or saying the removed channels differ, when they do not all hold the same.
    ``when`` says at which point of the run (for the message)."""
    import torch.distributed as dist

    if not active():
        return
    # The removals too: ranks that removed different channels hold equal shapes (and maybe no mask at all), and
    # without a word would train, and rank 0 save, a model the others do not have.
    local = torch.cat([_checksum(masks), _removals_checksum(removals)])
    both = torch.cat([local, -local]).to(_collective_device())
    work = dist.all_reduce(both, op=dist.ReduceOp.MAX, async_op=True)  # max and -min in one collective
    try:
        work.wait(timeout=CHECK_WAIT)
    except RuntimeError as e:
        if isinstance(e, dist.DistNetworkError) or any(m in str(e) for m in ("closed by peer", "reset by peer")):
            # Another rank stopped (its own error, a kill) while this one waited here: no wait of CHECK_WAIT, and
            # no rank skipping the check; the collective's error says so (the CLI's "another process ... stopped").
            raise
        raise DivergenceError(
            f"distributed run: rank {dist.get_rank()} waited {CHECK_WAIT.total_seconds():g} s for the other ranks to "
            f"compare masks {when}, and they never came: call pruner.step() and pruner.finalize() on every rank "
            "(not only on rank 0; save or export from rank 0 after finalize()); if one rank was busy that long with "
            "work of its own between two steps (evaluation on rank 0 alone, say), raise "
            "sparsekit.distributed.CHECK_WAIT (a datetime.timedelta)"
        ) from e
    both = both.cpu()
    high, low = both[: len(local)], -both[len(local) :]
    differs = (high != low).any(dim=1)
    if bool(differs.any()) and not bool(differs[:-1].any()):
        raise DivergenceError(
            f"distributed run: the ranks removed different channels {when} (structured pruning), though their masks "
            "agree. Channels must be ranked from the same weights and gradients on every rank: wrap the model in "
            "DistributedDataParallel, start every rank from the same weights, rank with a deterministic importance, "
            "and call pruner.step() after every optimizer step on every rank"
        )
    if bool(differs.any()):
        first = sorted(masks)[int(differs.nonzero()[0])]
        raise DivergenceError(
            f"distributed run: the ranks hold different masks {when} (first at layer {first!r}). Masks must be "
            "computed from the same weights and gradients on every rank: wrap the model in "
            "DistributedDataParallel, start every rank from the same weights, and call pruner.step() after "
            "every optimizer step on every rank"
        )


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
