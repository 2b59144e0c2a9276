"""Review (trainers): the Lightning and transformers callbacks used as a user would, with their own small models."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from sparsekit.errors import TargetError

pytestmark = pytest.mark.usefixtures("one_thread")

# structured with no input shape anywhere: the callback takes it from the first batch through the pruned module
STRUCTURED = {"method": "structured", "ratio": 0.5, "steps": 1, "schedule": {"start_epoch": 0, "end_epoch": 0}}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def batches(n: int = 32, batch_size: int = 8) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_lightning_structured_without_shape_on_a_module_whose_forward_never_runs_says_submodule_or_input_shape():
    # The LightningModule is pruned (no submodule) but training_step calls self.net(x): its forward never runs, so
    # no first batch comes. The Pruner's own error told to run a batch through the model and to pass context= to a
    # Pruner the user never built.
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    recipe = sparsekit.Recipe(version=1, pruning=[{**STRUCTURED, "ignore": ["net.head"]}])
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[SparsekitCallback(recipe)],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.raises(TargetError) as err:
        trainer.fit(Lit(), torch.utils.data.DataLoader(batches(), batch_size=8))
    message = str(err.value)
    assert message.startswith("SparsekitCallback: structured pruning needs the input shape"), message
    assert "SparsekitCallback(..., submodule=NAME)" in message and "children: net" in message, message
    assert "SparsekitCallback(..., input_shape=[1, ...])" in message and "context=" not in message, message


class HFWrap(nn.Module):
    """A Trainer model around Net: returns the loss, as transformers' Trainer expects."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"logits": logits, "loss": F.cross_entropy(logits, labels)}


class _Dict(torch.utils.data.Dataset):
    """batches() as the dicts a transformers Trainer collates."""

    def __init__(self) -> None:
        self.data = batches()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.data[i]
        return {"x": x, "labels": y}


def test_transformers_structured_without_shape_on_a_submodule_the_forward_skips_names_the_callback(tmp_path):
    transformers = pytest.importorskip("transformers")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    class Wrap(nn.Module):
        """Runs net's layers one by one, never net's own forward."""

        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
            logits = self.net.head(F.relu(self.net.fc2(F.relu(self.net.fc1(x)))))
            return {"logits": logits, "loss": F.cross_entropy(logits, labels)}

    recipe = sparsekit.Recipe(version=1, pruning=[{**STRUCTURED, "ignore": ["head"]}])
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = SparsekitTrainerCallback(recipe, submodule="net")
    trainer = transformers.Trainer(model=Wrap(), args=args, train_dataset=_Dict(), callbacks=[callback])
    with pytest.raises(TargetError) as err:
        trainer.train()
    message = str(err.value)
    assert message.startswith("SparsekitTrainerCallback: structured pruning needs the input shape"), message
    assert "submodule 'net'" in message and "SparsekitTrainerCallback(..., input_shape=[1, ...])" in message, message


def _lightning_module(pl):
    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Lit


def _trainer(pl, callback):
    return pl.Trainer(
        max_epochs=1,
        callbacks=[callback],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )


@pytest.mark.parametrize("method", ["magnitude", "structured"])
def test_lightning_validate_from_a_checkpoint_saved_after_finalize_neither_says_pruning_restarts_nor_blames_fit(
    tmp_path, method
):
    # trainer.save_checkpoint after fit, then trainer.validate(fresh module, ckpt_path=...): validate prunes nothing.
    # It warned "pruning starts again from step 0" (magnitude), or said the weights do not fit "the module this fit
    # built; resume from a checkpoint written before finalize" (structured).
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    Lit = _lightning_module(pl)
    entry = (
        {**STRUCTURED, "ignore": ["head"]}
        if method == "structured"
        else {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 0}}
    )
    recipe = sparsekit.Recipe(version=1, pruning=[entry])
    loader = torch.utils.data.DataLoader(batches(), batch_size=8)
    trainer = _trainer(pl, SparsekitCallback(recipe, submodule="net"))
    trainer.fit(Lit(), loader)
    trainer.save_checkpoint(tmp_path / "final.ckpt")

    again = _trainer(pl, SparsekitCallback(recipe, submodule="net"))
    fresh = Lit()
    if method == "structured":
        with pytest.raises(ValueError) as err:
            again.validate(fresh, loader, ckpt_path=tmp_path / "final.ckpt", verbose=False)
        message = str(err.value)
        assert "trainer.validate(ckpt_path=...) cannot load it" in message and "this fit" not in message, message
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        again.validate(fresh, loader, ckpt_path=tmp_path / "final.ckpt", verbose=False)
    assert not [w for w in seen if "SparsekitCallback" in str(w.message)], [str(w.message) for w in seen]
    weights = [p for p in fresh.net.parameters() if p.dim() > 1]
    zeros = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
    assert zeros == pytest.approx(0.5, abs=0.01)  # the checkpoint's zeros, loaded as they are


def test_transformers_fp16_with_max_grad_norm_0_and_l1_is_not_warned_of_scaled_gradients(tmp_path):
    # The Trainer (transformers >= 5.24) takes the gradient norm through accelerate's clip_grad_norm_ before
    # on_pre_optimizer_step with any max_grad_norm (inf when 0), which unscales fp16 gradients: the warning that they
    # are still scaled there, and its advice to set max_grad_norm > 0, were false (on CPU nothing is scaled at all).
    transformers = pytest.importorskip("transformers")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    recipe = sparsekit.Recipe(version=1, pruning=[{"method": "l1", "strength": 1e-3, "layers": {"include": ["fc1"]}}])
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=1,
        fp16=True,
        max_grad_norm=0.0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = SparsekitTrainerCallback(recipe, submodule="net")
    trainer = transformers.Trainer(model=HFWrap(), args=args, train_dataset=_Dict(), callbacks=[callback])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.train()
    assert callback.model is not None  # trained and finalized
    assert not [w for w in seen if "max_grad_norm" in str(w.message)], [str(w.message) for w in seen]


def test_lightning_structured_without_shape_whose_first_call_has_no_tensor_names_the_callbacks_input_shape():
    # The LightningModule's forward takes the batch dict: no tensor to read the shape from. The Pruner's remedy
    # ("pass context={'input_shape': ...} to the Pruner") named a constructor the callback's user never calls.
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def forward(self, batch: dict) -> torch.Tensor:
            return self.net(batch["x"])

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch), batch["labels"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    recipe = sparsekit.Recipe(version=1, pruning=[{**STRUCTURED, "ignore": ["net.head"]}])
    trainer = _trainer(pl, SparsekitCallback(recipe))
    with pytest.raises(TargetError) as err:
        trainer.fit(Lit(), torch.utils.data.DataLoader(_Dict(), batch_size=8))
    message = str(err.value)
    # A dict batch: no input shape fits the LightningModule's forward, so the remedy is the callback's submodule=
    assert "passed its batch inside a dict" in message, message
    assert "pass SparsekitCallback(..., submodule='net') with the name" in message, message
    assert "context=" not in message, message


def test_transformers_resumed_with_another_gradient_accumulation_warns_that_the_schedule_keeps_its_steps(tmp_path):
    # Resuming with gradient_accumulation_steps 2 -> 1 doubles the optimizer steps per epoch, so the checkpoint's
    # schedule (laid out in its steps) ends at other epochs: SparsekitCallback warned of this, the transformers one
    # went on without a word.
    transformers = pytest.importorskip("transformers")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 0.5}}
    recipe = sparsekit.Recipe(version=1, finetune={"epochs": 3}, pruning=[entry])

    def run(accumulate: int, epochs: int, resume: str | None = None) -> list[str]:
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=8,
            num_train_epochs=epochs,
            gradient_accumulation_steps=accumulate,
            save_strategy="epoch",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        callback = SparsekitTrainerCallback(recipe, submodule="net")
        trainer = transformers.Trainer(model=HFWrap(), args=args, train_dataset=_Dict(), callbacks=[callback])
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            trainer.train(resume_from_checkpoint=resume)
        return [str(w.message) for w in seen if "the resumed schedule" in str(w.message)]

    assert run(2, 1) == []  # 4 batches: 2 optimizer steps per epoch, checkpoint-2
    assert run(2, 3, resume=str(tmp_path / "checkpoint-2")) == []  # the same steps per epoch: nothing to say
    said = run(1, 3, resume=str(tmp_path / "checkpoint-2"))
    assert said and "takes 4 optimizer steps per epoch, the resumed schedule 2" in said[0], said


@pytest.mark.parametrize(("end_epoch", "warned"), [(2, False), (3, True)])
def test_lightning_manual_optimization_with_two_optimizers_resumed_judges_the_schedule_in_batches(
    tmp_path, end_epoch, warned
):
    # global_step counts both optimizers' steps (2 per batch); the pruner and estimated_stepping_batches count batches.
    # A fit resumed after epoch 0 with max_epochs=2 was told its end_epoch-2 schedule "ends at step 20, but this fit
    # ends at step 10" (the 20 steps taken were read as pruner steps), though it reaches it.
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sparsekit.integrations.lightning import SparsekitCallback

    class Two(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            body, head = self.optimizers()
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            body.zero_grad()
            head.zero_grad()
            self.manual_backward(loss)
            body.step()
            head.step()

        def configure_optimizers(self):
            body = [p for n, p in self.net.named_parameters() if not n.startswith("head")]
            return torch.optim.SGD(body, lr=0.01), torch.optim.SGD(self.net.head.parameters(), lr=0.01)

    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": end_epoch}}
    recipe = sparsekit.Recipe(version=1, finetune={"epochs": end_epoch}, pruning=[entry])
    loader = torch.utils.data.DataLoader(batches(), batch_size=8)  # 4 batches: 4 pruner steps, 8 global steps
    options = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    first = pl.Trainer(
        max_epochs=1,
        callbacks=[SparsekitCallback(recipe, submodule="net"), ModelCheckpoint(dirpath=tmp_path)],
        **options,
    )
    first.fit(Two(), loader)
    (checkpoint,) = tmp_path.glob("*.ckpt")
    callback = SparsekitCallback(recipe, submodule="net", finalize=False)
    again = pl.Trainer(max_epochs=2, callbacks=[callback], enable_checkpointing=False, **options)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        again.fit(Two(), loader, ckpt_path=checkpoint)
    said = [str(w.message) for w in seen if "outlasts the fit" in str(w.message)]
    assert callback.pruner.step_count == 8
    assert bool(said) == warned, said
    if warned:
        assert "ends at epoch 3 (optimizer step 12), but this fit ends at step 8 of the schedule" in said[0], said


def test_lightning_target_missed_because_early_stopping_ended_the_fit_says_so_not_to_raise_max_epochs():
    # max_epochs=5 covers the end_epoch-4 schedule; EarlyStopping ends the fit after 2 epochs. The missed-target
    # warning said to "train until the schedule's end_epoch (Trainer max_epochs / max_steps)", already long enough.
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import EarlyStopping

    from sparsekit.errors import TargetMissedWarning
    from sparsekit.integrations.lightning import SparsekitCallback

    entry = {"method": "magnitude", "sparsity": 0.75, "schedule": {"start_epoch": 0, "end_epoch": 4, "every": 0.5}}
    recipe = sparsekit.Recipe(version=1, finetune={"epochs": 5}, pruning=[entry])
    callback = SparsekitCallback(recipe, submodule="net")
    stop = EarlyStopping("val_loss", patience=0, min_delta=100.0)  # no epoch improves by 100: stops after the 2nd
    trainer = pl.Trainer(
        max_epochs=5,
        callbacks=[callback, stop],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(batches(), batch_size=8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.fit(_lightning_module(pl)(), loader, loader)
    missed = [str(w.message) for w in seen if issubclass(w.category, TargetMissedWarning)]
    assert trainer.current_epoch == 2 and missed, [str(w.message) for w in seen]
    assert "EarlyStopping stopped this fit after 2 epochs" in missed[0], missed
    assert "max_epochs" not in missed[0], missed


def test_transformers_target_missed_because_early_stopping_ended_training_says_so(tmp_path):
    transformers = pytest.importorskip("transformers")
    from sparsekit.errors import TargetMissedWarning
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    entry = {"method": "magnitude", "sparsity": 0.75, "schedule": {"start_epoch": 0, "end_epoch": 4, "every": 0.5}}
    recipe = sparsekit.Recipe(version=1, finetune={"epochs": 5}, pruning=[entry])
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=5,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = SparsekitTrainerCallback(recipe, submodule="net")
    # no epoch improves eval_loss by 100: stops at the 2nd evaluation
    stop = transformers.EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=100.0)
    trainer = transformers.Trainer(
        model=HFWrap(), args=args, train_dataset=_Dict(), eval_dataset=_Dict(), callbacks=[callback, stop]
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.train()
    missed = [str(w.message) for w in seen if issubclass(w.category, TargetMissedWarning)]
    assert trainer.state.global_step < trainer.state.max_steps and missed, [str(w.message) for w in seen]
    assert "EarlyStoppingCallback stopped training at step" in missed[0], missed
    assert "num_train_epochs" not in missed[0], missed
