"""Review (users' own trainers, round 14): Lightning and transformers runs as users write them."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _tensors(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def _recipe(end_epoch: int = 2, last: str = "4") -> sparsekit.Recipe:
    spec = {"method": "magnitude", "sparsity": 0.75, "scope": "layer", "layers": {"exclude": [last]},
            "schedule": {"start_epoch": 0, "end_epoch": end_epoch, "every": 0.5}}  # fmt: skip
    return sparsekit.Recipe(version=1, finetune={"epochs": end_epoch}, pruning=[spec])


def _outlasts(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "outlasts" in str(w.message)]


# -- a pruning run resumed from a dense (or finalized) checkpoint ------------------------------------------------
# The schedule starts at the resumed run's first step, but the up-front "schedule outlasts the fit" check compared
# it with the trainer's total steps, the earlier run's included: a dense 3-epoch checkpoint resumed to 4 epochs
# (8 steps) under a 2-epoch schedule (16 steps) said nothing, and the run ended at 66% of the 75% asked.


def test_lightning_fit_resumed_from_a_dense_checkpoint_warns_that_the_schedule_outlasts_it(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def trainer(callbacks, max_epochs):
        return pl.Trainer(
            max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )  # fmt: skip

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_tensors()), batch_size=8)  # 8 steps/epoch
    torch.manual_seed(0)
    dense = trainer([], 3)
    dense.fit(Lit(), loader)
    dense.save_checkpoint(tmp_path / "dense.ckpt")

    pruning = SparsekitCallback(_recipe(), submodule="net")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer([pruning], 4).fit(Lit(), loader, ckpt_path=str(tmp_path / "dense.ckpt"))
    assert pruning.pruner is not None and pruning.pruner.step_count == 8
    (line,) = _outlasts(caught)
    assert "ends at step 8 of the schedule" in line and "24 optimizer steps taken before it resumed" in line

    # A schedule that fits in the steps left is not warned about.
    pruning = SparsekitCallback(_recipe(end_epoch=1), submodule="net")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer([pruning], 4).fit(Lit(), loader, ckpt_path=str(tmp_path / "dense.ckpt"))
    assert not _outlasts(caught)


def test_transformers_run_resumed_from_a_dense_checkpoint_warns_that_the_schedule_outlasts_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    class Config(transformers.PretrainedConfig):
        model_type = "sparsekit-review-tiny"

    class Tiny(transformers.PreTrainedModel):
        config_class = Config

        def __init__(self, config: Config) -> None:
            super().__init__(config)
            self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)
            self.post_init()

        def forward(self, x, labels=None):
            logits = self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
            return {"logits": logits, "loss": F.cross_entropy(logits, labels)}

    x, y = _tensors()
    data = [{"x": x[i], "labels": y[i]} for i in range(len(y))]

    def args(epochs, save):
        return transformers.TrainingArguments(
            output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8, report_to=[],
            save_strategy=save, logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        )  # fmt: skip

    torch.manual_seed(0)
    transformers.Trainer(model=Tiny(Config()), args=args(3, "epoch"), train_dataset=data).train()
    pruning = SparsekitTrainerCallback(_recipe(last="head"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Tiny(Config())
        trainer = transformers.Trainer(model=model, args=args(4, "no"), train_dataset=data, callbacks=[pruning])
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-24"))
    assert pruning.pruner is not None and pruning.pruner.step_count == 8
    (line,) = _outlasts(caught)
    assert "ends at step 8 of the schedule" in line and "24 optimizer steps taken before it resumed" in line
    # ... and the target missed at the end is blamed on the run's length, not on steps_per_epoch.
    line = _missed(caught)
    assert "pass steps_per_epoch" not in line and "TrainingArguments num_train_epochs / max_steps" in line


# -- the missed-target advice under a trainer callback ------------------------------------------------------------
# A fit stopped by max_steps before the schedule's end was told "accumulating gradients over k batches, pass
# steps_per_epoch=len(train_loader) // k": advice for one's own loop. The callbacks already count the trainer's real
# optimizer steps (ceil(batches / k)), so following it set a different step clock; the remedy is a longer run.


def _missed(caught: list[warnings.WarningMessage]) -> str:
    (line,) = [str(w.message) for w in caught if issubclass(w.category, sparsekit.TargetMissedWarning)]
    return line


def test_lightning_max_steps_short_of_the_schedule_is_told_to_train_longer_not_to_change_steps_per_epoch():
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_tensors()), batch_size=8)
    pruning = SparsekitCallback(_recipe(), submodule="net")
    trainer = pl.Trainer(
        max_steps=3, accumulate_grad_batches=2, callbacks=[pruning], accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Lit(), loader)
    line = _missed(caught)
    assert "len(train_loader) // k" not in line and "pass steps_per_epoch" not in line
    assert "at 4 optimizer steps per epoch, as SparsekitCallback counts" in line
    assert "Trainer max_epochs / max_steps" in line


def test_a_pruner_of_ones_own_loop_keeps_the_steps_per_epoch_advice():
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe(), steps_per_epoch=4)
    pruner.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner.finalize()
    assert "pass steps_per_epoch=len(train_loader) // k" in _missed(caught)


# -- trainer.validate(ckpt_path=...) on the module a fit finalized, when finalize removed channels -------------------
# Lightning's idiom after fit is trainer.validate/test(module, ckpt_path="last"/"best"). Those checkpoints are written
# before finalize, which had then removed channels (l1's remove_dead, structured removals still to come): the callback
# rebuilt a pruner on the smaller module and failed with "load_state_dict: the state's mask for '0' is [32, 16], this
# model's '0' weight is [16, 16]; resume on the model (and recipe) the state was saved with", naming no way out.


def _finalizing_fit(tmp_path, pruning: list[dict], max_epochs: int):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sparsekit.integrations.lightning import SparsekitCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("v", F.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    shape = {"input_shape": [1, 16]}
    recipe = sparsekit.Recipe(version=1, model=shape, finetune={"epochs": max_epochs}, pruning=pruning)

    def trainer(callbacks):
        return pl.Trainer(
            max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_tensors()), batch_size=8)
    torch.manual_seed(0)
    module, callback = Lit(), SparsekitCallback(recipe, submodule="net")
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_last=True)
    fitted = trainer([callback, saver])
    fitted.fit(module, loader)
    return fitted, module, loader, lambda: (Lit(), trainer([SparsekitCallback(recipe, submodule="net")]))


L1_REMOVE_DEAD = {"method": "l1", "strength": 0.05, "mode": "proximal", "group": "row", "target": 0.5,
                  "remove_dead": True, "layers": {"include": ["0"]},
                  "schedule": {"start_epoch": 0, "end_epoch": 2}}  # fmt: skip
STRUCTURED = {"method": "structured", "ratio": 0.5, "layers": {"include": ["0"]},
              "schedule": {"start_epoch": 2, "end_epoch": 3, "every": 1}}  # fmt: skip


@pytest.mark.parametrize(
    ("pruning", "checkpoint"), [(L1_REMOVE_DEAD, "last.ckpt"), (STRUCTURED, "epoch=0-step=8.ckpt")]
)
def test_validating_a_checkpoint_on_the_module_finalize_shrank_is_a_clear_error_and_a_new_module_works(
    tmp_path, pruning, checkpoint
):
    fitted, module, loader, fresh = _finalizing_fit(tmp_path, [pruning], max_epochs=3)
    saved = torch.load(tmp_path / checkpoint, weights_only=False)["state_dict"]["net.0.weight"]
    assert module.net[0].weight.shape[0] < saved.shape[0]  # finalize removed rows after the checkpoint
    with pytest.raises(ValueError, match="finalized at the end of fit.*new instance of your LightningModule") as e:
        fitted.validate(module, loader, ckpt_path=str(tmp_path / checkpoint))
    assert f"net.0.weight is {list(saved.shape)} in it" in str(e.value)
    # The way the message gives: a new module, with the callback in the Trainer, takes the checkpoint's shapes.
    other, evaluator = fresh()
    (result,) = evaluator.validate(other, loader, ckpt_path=str(tmp_path / checkpoint))
    assert torch.equal(other.net[0].weight, saved) and torch.isfinite(torch.tensor(result["v"]))


# -- transformers' save_on_each_node --------------------------------------------------------------------------------
# With save_on_each_node=True (several machines without a shared disk) the Trainer writes checkpoint-N on each node's
# first process, and each node resumes from its own copy; pruner.pt was written by world process zero only, so the
# other nodes' ranks resumed with "pruning starts again from step 0" while rank 0 restored its masks.


def test_pruner_state_is_saved_wherever_the_trainer_writes_its_checkpoint(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from sparsekit.integrations.transformers import PRUNER_FILE, SparsekitTrainerCallback

    args = transformers.TrainingArguments(output_dir=str(tmp_path), save_on_each_node=True, use_cpu=True, report_to=[])
    # This process: the first of the second node (global rank 2 of 4, two per node).
    monkeypatch.setattr(transformers.TrainingArguments, "process_index", property(lambda self: 2))
    monkeypatch.setattr(transformers.TrainingArguments, "local_process_index", property(lambda self: 0))
    assert args.should_save
    state = transformers.TrainerState(global_step=3, is_world_process_zero=False, is_local_process_zero=True)
    (tmp_path / "checkpoint-3").mkdir()
    callback = SparsekitTrainerCallback(_recipe())
    callback.pruner = sparsekit.Pruner(_mlp(), callback.recipe, steps_per_epoch=4)
    callback.on_save(args, state, transformers.TrainerControl())
    assert (tmp_path / "checkpoint-3" / PRUNER_FILE).is_file()

    # The other processes of the node write nothing (the Trainer's files come from its first process alone).
    monkeypatch.setattr(transformers.TrainingArguments, "local_process_index", property(lambda self: 1))
    (tmp_path / "checkpoint-3" / PRUNER_FILE).unlink()
    callback.on_save(args, transformers.TrainerState(global_step=3, is_world_process_zero=False), None)
    assert not (tmp_path / "checkpoint-3" / PRUNER_FILE).exists()
