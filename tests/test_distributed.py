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
    dist.destroy_process_group()


def test_masks_identical_across_ddp_ranks(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "masks0.pt", weights_only=True)
    b = torch.load(tmp_path / "masks1.pt", weights_only=True)
    assert a.keys() == b.keys() == {"fc1", "fc2"}
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert 0.69 < 1 - a["fc1"].float().mean() < 0.71 and 0.49 < 1 - a["fc2"].float().mean() < 0.51
