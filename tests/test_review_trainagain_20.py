"""Review (trainagain): trainer integrations run a second time, warning locations, manual optimization."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from examples.models import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

HALF = {"method": "structured", "ratio": 0.5, "importance": "l2", "steps": 1,
        "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 1}}  # fmt: skip


def _recipe(*pruning: dict, epochs: int = 1) -> sparsekit.Recipe:
    return sparsekit.Recipe(
        version=1, finetune={"epochs": epochs}, model={"input_shape": [1, 1, 8, 8]}, pruning=list(pruning)
    )


def _images(n: int = 64):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(d.target[:n], dtype=torch.long)


class _Classifier(nn.Module):
    """A Trainer model around ``net``: returns the loss, as transformers' Trainer expects."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class _Digits(torch.utils.data.Dataset):
    """``_images()`` as the dict items a Trainer feeds the model (flattened for a Linear net)."""

    def __init__(self, flat: bool = False) -> None:
        self.x, self.y = _images()
        if flat:
            self.x = self.x.flatten(1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _channels(net: nn.Module) -> list[int]:
    return [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]


# -- a second train()/fit() on the model the callback already pruned ---------------------------------------------


def test_hf_second_train_on_the_pruned_model_is_refused_not_pruned_again(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    torch.manual_seed(0)
    model = _Classifier(small_cnn(width=4, image_size=8))
    pruning = SparsekitTrainerCallback(_recipe(HALF), submodule="net")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=32, num_train_epochs=1, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Digits(), callbacks=[pruning])
    trainer.train()
    once = _channels(model.net)
    with pytest.raises(ValueError, match="already pruned this model.*new SparsekitTrainerCallback"):
        trainer.train()
    assert _channels(model.net) == once  # not halved a second time


def test_lightning_second_fit_on_the_pruned_module_is_refused_not_pruned_again():
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn(width=4, image_size=8)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_images()), batch_size=32)

    def trainer(callbacks):
        return pl.Trainer(
            max_epochs=1, callbacks=callbacks, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        )  # fmt: skip

    torch.manual_seed(0)
    module = Lit()
    pruning = SparsekitCallback(_recipe(HALF), submodule="net")
    trainer([pruning]).fit(module, loader)
    once = _channels(module.net)
    with pytest.raises(ValueError, match="already pruned this model.*new SparsekitCallback"):
        trainer([pruning]).fit(module, loader)
    assert _channels(module.net) == once
    # a new callback prunes again, on purpose
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer([SparsekitCallback(_recipe(HALF), submodule="net")]).fit(module, loader)
    assert _channels(module.net) != once


# -- warnings from the callbacks point at the user's train()/fit() line, not at sparsekit/integrations ---------------

LONG = {"method": "magnitude", "sparsity": 0.8, "schedule": {"start_epoch": 0, "end_epoch": 5, "every": 1}}


def test_hf_callback_warnings_point_at_the_users_train_call(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=32, num_train_epochs=1, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    pruning = SparsekitTrainerCallback(_recipe(LONG, epochs=5), submodule="net")
    trainer = transformers.Trainer(
        model=_Classifier(nn.Linear(64, 10)), args=args, train_dataset=_Digits(flat=True), callbacks=[pruning]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    ours = [w for w in caught if "SparsekitTrainerCallback" in str(w.message) or "pruning[0]" in str(w.message)]
    assert len(ours) >= 2, [str(w.message) for w in caught]  # outlasts training; target missed at finalize
    assert {w.filename for w in ours} == {__file__}, [(w.filename, str(w.message)[:60]) for w in ours]


def test_lightning_callback_warnings_point_at_the_users_fit_call():
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(64, 10)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0].flatten(1)), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_images()), batch_size=32)
    pruning = SparsekitCallback(_recipe(LONG, epochs=5), submodule="net")
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[pruning], accelerator="cpu", devices=1,
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Lit(), loader)
    ours = [w for w in caught if "SparsekitCallback" in str(w.message) or "pruning[0]" in str(w.message)]
    assert len(ours) >= 2, [str(w.message) for w in caught]
    assert {w.filename for w in ours} == {__file__}, [(w.filename, str(w.message)[:60]) for w in ours]


# -- manual optimization with two optimizers: max_steps counts both, so the fit takes max_steps / 2 batches ---------


def _two_optimizer_fit(max_steps: int, end_epoch: float) -> list[str]:
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    class TwoOpt(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

        def training_step(self, batch, batch_idx):
            for opt in self.optimizers():
                opt.zero_grad()
                self.manual_backward(F.cross_entropy(self.net(batch[0]), batch[1]))
                opt.step()

        def configure_optimizers(self):
            return [torch.optim.SGD(self.net[1].parameters(), lr=0.01), torch.optim.SGD(self.net[3].parameters(), 0.01)]

    # 8 batches per epoch; 4 epochs' worth of batches, ended by max_steps
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_images(256)), batch_size=32)
    spec = {
        "method": "magnitude",
        "sparsity": 0.5,
        "schedule": {"start_epoch": 0, "end_epoch": end_epoch, "every": 0.5},
    }
    pruning = SparsekitCallback(_recipe(spec, epochs=4), submodule="net")
    trainer = pl.Trainer(
        max_epochs=4, max_steps=max_steps, callbacks=[pruning], accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TwoOpt(), loader)
    assert pruning.pruner.step_count == max_steps // 2  # one pruner step per batch, two global steps per batch
    return [str(w.message) for w in caught if "outlasts the fit" in str(w.message)]


def test_lightning_manual_two_optimizers_max_steps_warns_of_a_schedule_the_fit_ends_before():
    # max_steps=24: 12 batches (1.5 epochs); the schedule ends at epoch 2 (step 16): never reached
    short = _two_optimizer_fit(24, 2)
    assert len(short) == 1 and "ends at step 12 of the schedule" in short[0], short


def test_lightning_manual_two_optimizers_max_steps_no_warning_when_the_schedule_fits():
    assert _two_optimizer_fit(24, 1) == []  # ends at step 8 of 12


def test_lightning_second_fit_resuming_from_a_checkpoint_written_before_finalize_goes_on(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from sparsekit.integrations.lightning import SparsekitCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_images()), batch_size=32)
    spec = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 1}}
    pruning = SparsekitCallback(_recipe(spec, epochs=2), submodule="net")

    def trainer(max_epochs):
        last = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
        return pl.Trainer(
            max_epochs=max_epochs, callbacks=[pruning, last], accelerator="cpu", devices=1, logger=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip

    module = Lit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(1).fit(module, loader)  # finalized after 1 epoch of 2; last.ckpt was written before finalize
        trainer(2).fit(module, loader, ckpt_path=tmp_path / "last.ckpt")  # continues: not refused
    assert pruning.pruner.finalized and pruning.pruner.step_count == 4  # 2 batches x 2 epochs, one schedule


def test_hf_second_train_resuming_from_a_checkpoint_written_before_finalize_goes_on(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    spec = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 1}}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=32, num_train_epochs=1, report_to=[], use_cpu=True,
        save_strategy="epoch", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    pruning = SparsekitTrainerCallback(_recipe(spec, epochs=2), submodule="net")
    trainer = transformers.Trainer(
        model=_Classifier(nn.Linear(64, 10)), args=args, train_dataset=_Digits(flat=True), callbacks=[pruning]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()  # finalized after 1 epoch of 2; checkpoint-2 holds the pruner's state before finalize
        trainer.args.num_train_epochs = 2
        trainer.train(resume_from_checkpoint=True)  # continues: not refused
    assert pruning.pruner.finalized and pruning.pruner.step_count == 4
