"""Review (trainers2 angle, 25): training metrics logs, checkpoints and resumes, in prune runs, torchrun and the
trainer integrations."""

from __future__ import annotations

import csv

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsekit
from sparsekit.cli import main

MLP = ("--arch", "examples.models:mlp")
LOGGED = (
    "data: {source: digits}\n"
    "finetune: {epochs: 2, max_steps_per_epoch: 2, optimizer: {name: adam, lr: 0.001}, log: true}\n"
    "pruning: [{method: magnitude, sparsity: 0.6, schedule: {start_epoch: 0, end_epoch: 1}}]\n"
    "benchmark: {enabled: false}\n"
)


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


@pytest.fixture
def tiny(tmp_path):
    """An untrained digits MLP of one small hidden layer, as a sparsekit checkpoint."""
    from examples.models import mlp

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    sparsekit.save_model(mlp(hidden=[8]), path, factory="examples.models:mlp", kwargs={"hidden": [8]})
    return path


@pytest.mark.parametrize("longer", [False, True])
def test_resuming_a_finished_run_continues_its_metrics_logs_instead_of_dropping_them(tmp_path, tiny, longer):
    # `prune --resume` of a finished run copied only checkpoints/last.pt into the staging folder: with no epoch left
    # the publish removed OUT/logs altogether, and trained on (--set finetune.epochs=3 --allow-change ...) it
    # replaced OUT/logs by epoch 3's rows alone, though "a resumed run continues the same files".
    (tmp_path / "r.yaml").write_text(LOGGED)
    out = tmp_path / "o"
    assert run("prune", tiny, *MLP, tmp_path / "r.yaml", "-o", out, *FAST).exit_code == 0
    first_steps = rows(out / "logs" / "steps.csv")
    assert [r["epoch"] for r in rows(out / "logs" / "epochs.csv")] == ["1", "2"]
    more = ("--set", "finetune.epochs=3", "--allow-change", "finetune.epochs") if longer else ()
    again = run("prune", tiny, *MLP, tmp_path / "r.yaml", "-o", out, "--resume", *more, *FAST)
    assert again.exit_code == 0, again.stderr
    epochs = ["1", "2", "3"] if longer else ["1", "2"]
    assert [r["epoch"] for r in rows(out / "logs" / "epochs.csv")] == epochs
    steps = rows(out / "logs" / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 2 * len(epochs) + 1))
    assert steps[:4] == first_steps  # the finished epochs' rows, as logged


def _loaders():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    return DataLoader(data, batch_size=8), DataLoader(data, batch_size=16)


def test_a_ctrl_c_just_after_an_epochs_checkpoint_loses_no_row_of_the_metrics_log(tmp_path, monkeypatch):
    # The epoch's row went to epochs.csv only after its checkpoint was written: a Ctrl-C in between (the progress
    # line, the mask count) left a checkpoint of epoch 2 and a log ending at epoch 1, and the resume went on from
    # epoch 3, so epoch 2's row was never written. Logged first, a row past the checkpoint is cut by the resume.
    import sparsekit.train as train

    recipe = sparsekit.Recipe(
        finetune={"epochs": 3, "optimizer": {"name": "adam", "lr": 0.01}},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 2}}],
    )
    real = train._save_checkpoint

    def then_ctrl_c(path, epoch, *args, **kwargs):
        real(path, epoch, *args, **kwargs)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_save_checkpoint", then_ctrl_c)
    where = {"checkpoint_dir": tmp_path / "ckpt", "log_dir": tmp_path / "logs", "progress": False}
    train_loader, val_loader = _loaders()
    with pytest.raises(KeyboardInterrupt):
        sparsekit.finetune(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), recipe, *_loaders(), **where)
    monkeypatch.setattr(train, "_save_checkpoint", real)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    sparsekit.finetune(model, recipe, train_loader, val_loader, resume=True, **where)
    assert [r["epoch"] for r in rows(tmp_path / "logs" / "epochs.csv")] == ["1", "2", "3"]
    assert [int(r["step"]) for r in rows(tmp_path / "logs" / "steps.csv")] == list(range(1, 13))


class _Other(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.head = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).relu())


def test_a_new_run_in_a_log_folder_writes_its_own_layers_columns_not_the_earlier_runs(tmp_path):
    # finetune(log_dir=D) of another model in the same folder started epochs.csv over but kept the earlier run's
    # header: the new rows had blank sparsity/0, sparsity/2 cells and no column for enc and head.
    recipe = sparsekit.Recipe(finetune={"epochs": 1}, pruning=[{"method": "magnitude", "sparsity": 0.5}])
    first = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    sparsekit.finetune(first, recipe, *_loaders(), log_dir=tmp_path, progress=False)
    assert "sparsity/0" in rows(tmp_path / "epochs.csv")[0]
    sparsekit.finetune(_Other(), recipe, *_loaders(), log_dir=tmp_path, progress=False)
    (row,) = rows(tmp_path / "epochs.csv")
    assert [k for k in row if k.startswith("sparsity/")] == ["sparsity/enc", "sparsity/head"]
    assert float(row["sparsity/enc"]) > 0 and float(row["sparsity/head"]) > 0
    assert [r["step"] for r in rows(tmp_path / "steps.csv")] == ["1", "2", "3", "4"]


def test_a_resume_with_no_epoch_left_leaves_no_empty_folder_in_the_log_dir(tmp_path, tiny):
    # `--resume --log-dir D` of a finished run trained nothing and logged nothing, yet left D/sparsekit-DATE-TIME
    # (and D, which the run had made) empty behind a successful run, with no word of it.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(LOGGED.replace(", log: true", ""))
    out = tmp_path / "o"
    assert run("prune", tiny, *MLP, recipe, "-o", out, *FAST).exit_code == 0
    again = run("prune", tiny, *MLP, recipe, "-o", out, "--resume", "--log-dir", tmp_path / "logs", *FAST)
    assert again.exit_code == 0, again.stderr
    assert not (tmp_path / "logs").exists()
    assert "training metrics" not in again.stderr
