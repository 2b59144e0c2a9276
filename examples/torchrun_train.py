"""Prune inside your own DistributedDataParallel training loop, one process per CPU core or GPU.

    torchrun --nproc-per-node=2 examples/torchrun_train.py --epochs 3 -o ddp-out
    torchrun --nnodes=2 --node-rank=R --master-addr=HOST --master-port=29500 \\
        --nproc-per-node=8 examples/torchrun_train.py        # several machines: run on each, R = 0, 1

Each rank trains its shard of the 8x8 digits (a DistributedSampler), with Adam and the L1 penalty
added through ``pruner.regularize()`` (no edit to the loss). Gradient (Taylor) pruning of the first
hidden layer reaches 80% sparsity on every rank with identical masks (the Pruner compares a checksum across
ranks every epoch), then structured pruning removes 25% of the second layer's neurons, rebuilding the DDP
wrapper and pointing the optimizer at the new parameters. Rank 0 prints and saves the result.
Backend: nccl when every rank has a GPU, gloo otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `examples.models` importable from anywhere

import sparsekit  # noqa: E402
from examples.models import mlp  # noqa: E402
from sparsekit.data import load_data  # noqa: E402
from sparsekit.distributed import rewrap  # noqa: E402


def recipe(epochs: int) -> sparsekit.Recipe:
    end = max(1, epochs - 1)
    return sparsekit.Recipe(
        finetune={"epochs": epochs},
        pruning=[
            {
                "method": "gradient",
                "criterion": "taylor",
                "sparsity": 0.8,
                "schedule": {"start_epoch": 0, "end_epoch": end, "every": 0.5},
                "layers": {"include": ["fc1"]},
            },
            {
                "method": "structured",
                "ratio": 0.25,
                "schedule": {"start_epoch": end, "end_epoch": end},
                "layers": {"include": ["fc2"]},
            },
            {"method": "l1", "strength": 1e-5, "remove_dead": False, "layers": {"include": ["fc3"]}},
        ],
    )


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum()) for x, y in loader)
    model.train()
    return correct / len(loader.dataset)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="pruning + fine-tuning epochs (>= 2)")
    ap.add_argument("-o", "--output", type=Path, default=Path("ddp-out"), help="output folder (rank 0 writes)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    data = load_data("digits", batch_size=32, input_shape=[1, 64])
    train = DataLoader(data.train.dataset, batch_size=32, sampler=DistributedSampler(data.train.dataset, seed=0))
    model = DDP(mlp().to(device), device_ids=[device] if cuda else None)

    rec = recipe(args.epochs)
    pruner = sparsekit.Pruner(model, rec, steps_per_epoch=len(train), context={"input_shape": [1, 64]})
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(rec.finetune.epochs):
        train.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        for x, y in train:
            optimizer.zero_grad()
            criterion(model(x.to(device)), y.to(device)).backward()
            pruner.regularize()  # the L1 gradient into .grad: the loss is left as it is
            optimizer.step()
            pruner.step()  # same masks on every rank: scores come from DDP-averaged gradients
            if pruner.structure_changed:
                model = rewrap(model)  # DDP's buckets held the removed parameters
                optimizer = pruner.update_optimizer(optimizer)
        if rank == 0:
            print(f"epoch {epoch + 1}: sparsity {sparsekit.sparsity(pruner.model):.3f}")

    final = pruner.finalize()
    result = {
        "sparsity_fc1": float((final.fc1.weight == 0).float().mean()),
        "fc2_units": float(final.fc2.out_features),
        "accuracy": accuracy(final, data.val, device),
    }
    if rank == 0:
        args.output.mkdir(parents=True, exist_ok=True)
        sparsekit.save_model(final.cpu(), args.output / "model.pt", factory="examples.models:mlp",
                             input_shape=[1, 64], pruner=pruner)  # fmt: skip
        print(
            f"rank 0 of {dist.get_world_size()}: fc1 sparsity {result['sparsity_fc1']:.3f}, "
            f"fc2 keeps {int(result['fc2_units'])} of 64 units, accuracy {result['accuracy']:.4f}; "
            f"saved {args.output / 'model.pt'}"
        )
    dist.barrier()  # the ranks leave together, after rank 0 has saved
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
