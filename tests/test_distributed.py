"""Under DistributedDataParallel every rank must end with the same masks."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    sys.path.insert(0, str(ROOT))
    import sparsekit
    from examples.models import mlp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial weights on every rank, as DDP requires
    model = torch.nn.parallel.DistributedDataParallel(mlp())
    recipe = sparsekit.Recipe(
        finetune={"epochs": 2},
        pruning=[
            {
                "method": "magnitude",
                "sparsity": 0.7,
                "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5},
                "layers": {"include": ["fc1"]},
            },
            {
                "method": "gradient",
                "criterion": "taylor",
                "sparsity": 0.5,
                "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5},
                "layers": {"include": ["fc2"]},
            },
        ],
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(8):
        x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        (torch.nn.functional.cross_entropy(model(x), y) + pruner.penalty()).backward()
        opt.step()
        pruner.step()
    torch.save(pruner.masks(), Path(out) / f"masks{rank}.pt")
    dist.barrier()  # leave together: a rank tearing gloo down under a busy peer can abort
    dist.destroy_process_group()


def test_masks_identical_across_ddp_ranks(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "masks0.pt", weights_only=True)
    b = torch.load(tmp_path / "masks1.pt", weights_only=True)
    assert a.keys() == b.keys() == {"fc1", "fc2"}
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert 0.69 < 1 - a["fc1"].float().mean() < 0.71 and 0.49 < 1 - a["fc2"].float().mean() < 0.51


def _scenarios(rank: int, world: int, port: int, out: str) -> None:
    """Several user-loop scenarios in one process group (a spawn costs seconds): results to files."""
    sys.path.insert(0, str(ROOT))
    import sparsekit
    from examples.models import mlp, small_cnn
    from sparsekit.distributed import DivergenceError, rewrap

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results: dict = {}

    # 1. No DDP wrapper: the Pruner averages gradients itself, so taylor scores and masks agree.
    torch.manual_seed(0)
    model = mlp()
    recipe = sparsekit.Recipe(
        finetune={"epochs": 1},
        pruning=[{"method": "gradient", "sparsity": 0.6, "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5}}],
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    g = torch.Generator().manual_seed(200 + rank)
    for _ in range(4):
        x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        pruner.step()  # no optimizer step: the weights stay equal, only the scores could differ
    results["plain_masks"] = pruner.masks()

    # 2. Ranks that start from different weights without DDP: the checksum catches it at the epoch end.
    torch.manual_seed(rank)  # different weights on each rank
    model = mlp()
    recipe = sparsekit.Recipe(finetune={"epochs": 1}, pruning=[{"method": "magnitude", "sparsity": 0.5}])
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
    try:
        pruner.step()
        pruner.step()
        results["divergence"] = None
    except DivergenceError as err:
        results["divergence"] = str(err)

    # 3. Structured removal during DDP training: rewrap, update the optimizer, keep training.
    torch.manual_seed(0)
    dense = small_cnn()
    results["dense_shapes"] = {n: list(p.shape) for n, p in dense.named_parameters()}
    # Non-default wrapper settings, which a rebuild must keep.
    model = torch.nn.parallel.DistributedDataParallel(
        dense, find_unused_parameters=True, broadcast_buffers=False, bucket_cap_mb=1
    )
    settings = ("find_unused_parameters", "forward_sync_buffers", "bucket_bytes_cap", "static_graph")
    before = {k: getattr(model, k) for k in settings}
    recipe = sparsekit.Recipe(
        finetune={"epochs": 2},
        pruning=[{"method": "structured", "ratio": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5}}],
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=3, context={"input_shape": [1, 1, 28, 28]})
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(300 + rank)
    losses = []
    for _ in range(6):
        x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        pruner.step()
        if pruner.structure_changed:
            model = rewrap(model)
            opt = pruner.update_optimizer(opt)
            results["rewrap_kept_settings"] = {k: getattr(model, k) for k in settings} == before
        losses.append(loss.item())
    final = pruner.finalize()
    results["structured_shapes"] = {n: list(p.shape) for n, p in final.named_parameters()}
    # Parameters only: BN running statistics are rank-local between DDP's buffer broadcasts.
    results["structured_state"] = {n: p.detach().clone() for n, p in final.named_parameters()}
    results["structured_losses"] = losses
    results["optimizer_holds_model_params"] = {id(p) for p in final.parameters()} == {
        id(p) for grp in opt.param_groups for p in grp["params"]
    }
    torch.save(results, Path(out) / f"scenarios{rank}.pt")
    dist.barrier()  # leave together: a rank tearing gloo down under a busy peer can abort
    dist.destroy_process_group()


def test_plain_model_divergence_and_structured_ddp_across_two_ranks(tmp_path):
    mp.spawn(_scenarios, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "scenarios0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "scenarios1.pt", weights_only=False)
    # 1. gradients averaged by the Pruner: equal masks at the asked sparsity despite different data
    for name, mask in r0["plain_masks"].items():
        assert torch.equal(mask, r1["plain_masks"][name]), name
    kept = sum(int(m.sum()) for m in r0["plain_masks"].values())
    total = sum(m.numel() for m in r0["plain_masks"].values())
    assert abs((1 - kept / total) - 0.6) < 1e-3
    # 2. different masks are an error on every rank, naming a layer
    for r in (r0, r1):
        assert r["divergence"] is not None and "different masks" in r["divergence"] and "'fc" in r["divergence"]
    # 3. channels removed under DDP: same smaller shapes and weights on both ranks, training went on
    assert r0["structured_shapes"] == r1["structured_shapes"]
    for conv in ("conv1.weight", "conv2.weight"):
        assert r0["structured_shapes"][conv][0] < r0["dense_shapes"][conv][0]
    for name, t in r0["structured_state"].items():
        assert torch.equal(t, r1["structured_state"][name]), name
    assert all(torch.isfinite(torch.tensor(r0["structured_losses"])))
    assert r0["optimizer_holds_model_params"] and r1["optimizer_holds_model_params"]
    assert r0["rewrap_kept_settings"] and r1["rewrap_kept_settings"]


def test_a_process_group_the_caller_made_is_left_alone(monkeypatch):
    from sparsekit import distributed

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: still not ours to create or close
        assert distributed.init_from_env(torch.device("cpu")) is False
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_a_stray_world_size_is_bad_input_not_a_hang(monkeypatch):
    from sparsekit import distributed
    from sparsekit.errors import SparsekitError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    try:
        distributed.init_from_env(torch.device("cpu"))
    except SparsekitError as err:
        assert "WORLD_SIZE=2" in str(err) and "RANK" in str(err) and "torchrun" in str(err)
    else:
        raise AssertionError("no error")
    assert not dist.is_initialized()
