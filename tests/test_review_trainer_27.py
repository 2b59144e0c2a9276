"""Review (w3, trainer angle): users' own Lightning / transformers loops around the trainer callbacks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from sparsekit.integrations.lightning import SparsekitCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _loader(n: int = 64) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def _trainer(callbacks: list, **kwargs) -> pl.Trainer:
    """A quiet one-process CPU Trainer (the Lightning tests' own), one epoch unless ``max_epochs`` says otherwise."""
    from test_integrations_lightning import trainer

    return trainer(callbacks, **kwargs)


STRENGTH = 0.5


class _PerLayerOptimizers(pl.LightningModule):
    """Manual optimization, one backward, then one optimizer per layer (as Lightning's docs step several)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.plain: dict[int, torch.Tensor] = {}
        self.penalties: list[float] = []  # the penalty's gradient at each optimizer step, in multiples of strength

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        x, y = batch
        self.manual_backward(F.cross_entropy(self.net(x), y))
        self.plain = {id(p): p.grad.clone() for p in self.net.parameters()}
        first.step()
        second.step()

    def configure_optimizers(self):
        # lr 0: the weights stay put, so each step's penalty gradient is strength * sign(w) exactly
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.0), torch.optim.SGD(self.net[2].parameters(), lr=0.0)]


class _PenaltySeen(pl.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        weight = optimizer.param_groups[0]["params"][0]
        added = (weight.grad - pl_module.plain[id(weight)]) / (STRENGTH * torch.sign(weight.detach()))
        pl_module.penalties.append(round(float(added.median()), 3))


def test_lightning_two_optimizers_each_weight_gets_the_l1_penalty_once() -> None:
    # Before: the callback's regularize() before the second optimizer's step added the penalty to every pruned
    # weight again, so the layer the second optimizer steps trained under twice the recipe's strength.
    recipe = {
        "version": 1,
        "pruning": [{"method": "l1", "mode": "penalty", "strength": STRENGTH, "layers": {"include": ["0", "2"]}}],
    }
    module = _PerLayerOptimizers()
    _trainer([SparsekitCallback(recipe, submodule="net", finalize=False), _PenaltySeen()]).fit(module, _loader())
    assert module.penalties == [1.0, 1.0, 1.0, 1.0]


class _Plain(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.1)


_FORKED_FIT = """
import sys
sys.path.insert(0, sys.argv[1])  # this tests folder: the module's own LightningModule and data
import lightning.pytorch as pl
from sparsekit.integrations.lightning import SparsekitCallback
from test_review_trainer_27 import _Plain, _loader

recipe = {"version": 1, "pruning": [{"method": "magnitude", "sparsity": 0.8, "layers": {"include": ["0"]}}]}
pruning = SparsekitCallback(recipe, submodule="net")
trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, strategy="ddp_fork", callbacks=[pruning], logger=False,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
trainer.fit(_Plain(), _loader())
print("parent model:", pruning.model)
"""


def test_lightning_fit_in_a_child_process_says_where_the_pruned_model_is(tmp_path) -> None:
    # Before: under ddp_fork / ddp_spawn / ddp_notebook the fit ran in child processes, and the callback of the
    # process that called fit() kept model = None (README's `pruned = pruning.model`) without a word. Run in a fresh
    # interpreter: forking pytest's own process, which earlier tests left holding threads (torch's, gloo's), could hang
    # the child for good.
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "forked_fit.py"
    script.write_text(_FORKED_FIT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    tests = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, str(script), tests], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    said = " ".join(done.stderr.split())
    assert "callback.model and callback.pruner stay None" in said and "lit_module.net" in said, said[-2000:]
    assert "parent model: None" in done.stdout  # what the parent sees: Lightning returns weights only


def test_lightning_fit_in_this_process_does_not_warn_of_child_processes() -> None:
    recipe = {"version": 1, "pruning": [{"method": "magnitude", "sparsity": 0.8, "layers": {"include": ["0"]}}]}
    pruning = SparsekitCallback(recipe, submodule="net")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="SparsekitCallback: strategy")
        _trainer([pruning]).fit(_Plain(), _loader())
    assert float((pruning.model[0].weight == 0).float().mean()) == pytest.approx(0.8, abs=0.01)


class _StopAt(pl.Callback):
    """Sets trainer.should_stop after `step` optimizer steps, as Lightning's Timer (max_time) or a user's own does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


_LATE = {
    "version": 1,
    "pruning": [
        {
            "method": "magnitude",
            "sparsity": 0.8,
            "layers": {"include": ["0"]},
            "schedule": {"start_epoch": 0, "end_epoch": 3},
        }
    ],
}


def _missed(callbacks: list, pruning: SparsekitCallback, **kwargs) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer([pruning, *callbacks], max_epochs=4, **kwargs).fit(_Plain(), _loader())
    missed = [str(w.message) for w in caught if "missed its target" in str(w.message)]
    assert len(missed) == 1
    return missed[0]


def test_lightning_target_missed_because_a_callback_stopped_the_fit_does_not_blame_max_epochs() -> None:
    # Before: a fit that trainer.should_stop ended (here after 3 of 8 steps; max_epochs=4 was long enough) was told
    # to "train until the schedule's end_epoch (Trainer max_epochs / max_steps)".
    pruning = SparsekitCallback(_LATE, submodule="net")
    message = _missed([_StopAt(3)], pruning)
    assert "Trainer max_epochs / max_steps" not in message
    assert "trainer.should_stop, set by a callback or training_step, stopped this fit at optimizer step 3" in message


def test_lightning_target_missed_because_max_time_ran_out_names_max_time(monkeypatch) -> None:
    pruning = SparsekitCallback(_LATE, submodule="net")
    # Lightning's Timer (Trainer(max_time=...)) ends the fit once time_remaining() is <= 0: make it so after step 3.
    timer_cls = pl.callbacks.Timer
    monkeypatch.setattr(timer_cls, "time_remaining", lambda self, stage="train": 0.0 if self._ran else 1.0)
    monkeypatch.setattr(timer_cls, "_ran", False, raising=False)

    class _Clock(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= 3:
                for c in trainer.callbacks:
                    if isinstance(c, timer_cls):
                        c._ran = True
                trainer.should_stop = True

    message = _missed([_Clock()], pruning, max_time={"days": 1})
    assert "Trainer max_epochs / max_steps" not in message
    assert "Trainer(max_time=...) stopped this fit at optimizer step 3" in message


def test_lightning_an_early_stopping_that_did_not_stop_the_fit_is_not_blamed() -> None:
    # (review diffreview 27) An EarlyStopping in the Trainer (patience 100, here never stopping: its metric is not
    # logged, strict=False) was named as what stopped a fit a callback (or max_time) ended, "a larger patience" advised.
    from lightning.pytorch.callbacks import EarlyStopping

    waiting = EarlyStopping(monitor="never_logged", patience=100, strict=False, check_on_train_epoch_end=True)
    message = _missed([_StopAt(3), waiting], SparsekitCallback(_LATE, submodule="net"))
    assert "EarlyStopping stopped" not in message, message
    assert "trainer.should_stop, set by a callback or training_step, stopped this fit at optimizer step 3" in message
