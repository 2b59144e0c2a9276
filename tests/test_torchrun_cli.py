"""`torchrun --nproc-per-node=2 -m sparsekit prune`: two CPU ranks (gloo), one set of outputs, the same
sparsity as one process, and --resume under torchrun."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST

ROOT = Path(__file__).resolve().parent.parent

RECIPE = """
data: {source: digits, batch_size: 64}
finetune: {epochs: 1, optimizer: {name: adam, lr: 0.002}}
pruning:
  - method: magnitude
    sparsity: 0.8
    schedule: {start_epoch: 0, end_epoch: 1, every: 0.25}
benchmark: {batch_sizes: [1]}
"""


def _prune(args: list[str], ranks: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    cmd = (launcher if ranks > 1 else [sys.executable]) + ["-m", "sparsekit", "prune", *args, *FAST]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-rank run of 1 epoch, resumed under torchrun to 2 epochs; and the 2-epoch run in one process."""
    import torch

    sys.path.insert(0, str(ROOT))
    import sparsekit
    from examples.models import mlp

    tmp = tmp_path_factory.mktemp("torchrun")
    torch.manual_seed(0)
    sparsekit.save_model(mlp(), tmp / "mlp.pt", factory="examples.models:mlp", input_shape=[1, 64])
    (tmp / "r.yaml").write_text(RECIPE)
    base = [str(tmp / "mlp.pt"), str(tmp / "r.yaml"), "--arch", "examples.models:mlp"]
    first = _prune([*base, "-o", str(tmp / "dist"), "--log-dir", str(tmp / "logs")], ranks=2)
    first_report = json.loads((tmp / "dist" / "report.json").read_text()) if first.returncode == 0 else None
    resumed = _prune([*base, "-o", str(tmp / "dist"), "--resume", "--set", "finetune.epochs=2",
                      "--allow-change", "finetune.epochs"], ranks=2)  # fmt: skip
    single = _prune([*base, "-o", str(tmp / "one"), "--set", "finetune.epochs=2"], ranks=1)
    return tmp, first, first_report, resumed, single


def _why(proc: subprocess.CompletedProcess) -> str:
    """The ranks' own messages come first in a torchrun's stderr, the launcher's traceback last."""
    err = proc.stderr
    return err if len(err) <= 6000 else f"{err[:4000]}\n[...]\n{err[-2000:]}"


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_two_ranks_write_one_set_of_outputs_at_the_asked_sparsity(runs):
    tmp, first, report, _, _ = runs
    assert first.returncode == 0, _why(first)
    assert first.stdout.count("Wrote ") == 1  # rank 1 prints no summary
    assert report["data"]["processes"] == 2 and report["data"]["device"] == "cpu"
    (method,) = report["methods"]
    assert method["asked"] == pytest.approx(0.8) and method["achieved"] == pytest.approx(0.8, abs=1e-4)
    # Each rank trained its shard: an epoch is half the single-process batches.
    (folder,) = (tmp / "logs").iterdir()
    rows = list(csv.DictReader((folder / "epochs.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [math.ceil(report["data"]["train_batches"] / 2)]
    steps = list(csv.DictReader((folder / "steps.csv").read_text().splitlines()))
    assert len(steps) == int(rows[0]["step"])


def test_resume_under_torchrun_continues_the_run_and_matches_one_process_sparsity(runs):
    tmp, _, first, resumed, single = runs
    assert resumed.returncode == 0, _why(resumed)
    assert single.returncode == 0, _why(single)
    dist_report, one_report = _report(tmp / "dist"), _report(tmp / "one")
    assert [row["epoch"] for row in dist_report["history"]] == [1, 2]
    assert dist_report["history"][0] == first["history"][0]  # epoch 1 came from the checkpoint, not retrained
    assert dist_report["methods"][0]["achieved"] == pytest.approx(one_report["methods"][0]["achieved"], abs=1e-6)
    assert dist_report["pruned"]["sparsity"] == pytest.approx(one_report["pruned"]["sparsity"], abs=1e-6)
    assert one_report["data"]["processes"] == 1


def test_the_torchrun_example_prunes_identically_on_two_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [str(ROOT / "examples" / "torchrun_train.py"), "--epochs", "2", "-o", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("rank 0 of 2: fc1 sparsity 0.800, fc2 keeps 48 of 64 units") == 1
    import torch

    saved = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)["state_dict"]
    assert saved["fc2.weight"].shape[0] == 48 and float((saved["fc1.weight"] == 0).float().mean()) == pytest.approx(
        0.8, abs=1e-4
    )


def test_structured_removal_under_torchrun_rebuilds_ddp_and_keeps_training(tmp_path):
    """Channels removed mid-epoch under DDP: the wrapper is rebuilt on both ranks and training goes on."""
    import torch

    sys.path.insert(0, str(ROOT))
    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    sparsekit.save_model(mlp(), tmp_path / "mlp.pt", factory="examples.models:mlp", input_shape=[1, 64])
    (tmp_path / "s.yaml").write_text(
        "data: {source: digits, batch_size: 64}\nfinetune: {epochs: 2, optimizer: {name: adam, lr: 0.002}}\n"
        "pruning: [{method: structured, ratio: 0.5, steps: 2, schedule: {start_epoch: 0, end_epoch: 1}}]\n"
        "benchmark: {batch_sizes: [1]}\n"
    )
    args = [str(tmp_path / "mlp.pt"), str(tmp_path / "s.yaml"), "--arch", "examples.models:mlp"]
    done = _prune([*args, "-o", str(tmp_path / "out")], ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    report = _report(tmp_path / "out")
    (method,) = report["methods"]
    assert method["asked"] == pytest.approx(0.5) and method["achieved"] == pytest.approx(0.5, abs=0.02)
    assert report["pruned"]["params"] < 0.6 * report["dense"]["params"]
    assert report["history"][-1]["val_accuracy"] > report["history"][0]["val_accuracy"] - 0.05
    assert all(math.isfinite(row["train_loss"]) for row in report["history"])
