"""Review (torchrun / DDP angle): what a user of the Python API sees under two gloo ranks."""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is unavailable"
)

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finalize_on_rank0_only(rank: int, world: int, port: int, out: str) -> None:
    sys.path.insert(0, str(ROOT))
    import sparsekit
    from sparsekit import distributed

    distributed.CHECK_WAIT = timedelta(seconds=2)  # the test's bound; users get minutes
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4))
    )
    recipe = sparsekit.Recipe(
        finetune={"epochs": 1},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 0}}],
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        pruner.step()
    if rank == 0:  # the common mistake: "only rank 0 saves", so only rank 0 finalizes
        try:
            pruner.finalize()
            msg = "no error"
        except distributed.DivergenceError as e:
            msg = str(e)
        (Path(out) / "msg.txt").write_text(msg)
    else:
        time.sleep(6)  # busy elsewhere (e.g. waiting at the user's barrier) longer than the check waits
    os._exit(0)  # the group is broken after a timed-out collective: leave without tearing it down


def test_finalize_on_one_rank_only_is_a_clear_error_not_a_hang(tmp_path):
    # Before: rank 0 blocked in finalize()'s mask check for the group's timeout (30 min to hours), no message.
    ctx = mp.start_processes(
        _finalize_on_rank0_only, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    for p in ctx.processes:
        p.join(timeout=40)
    alive = [p for p in ctx.processes if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung in finalize()"
    msg = (tmp_path / "msg.txt").read_text()
    assert "every rank" in msg and "finalize" in msg, msg
