"""SparsekitCallback inside lightning's Trainer.fit: targets, zeros, accumulation, L1, structured, resume."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

import sparsekit  # noqa: E402
from examples.models import mlp, small_cnn  # noqa: E402
from sparsekit.integrations.lightning import SparsekitCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def digits(n: int = 256, image: bool = False, batch_size: int = 32) -> torch.utils.data.DataLoader:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32) / 16.0
    if image:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target[:n], dtype=torch.long)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class Lit(pl.LightningModule):
    def __init__(self, net: torch.nn.Module, lr: float = 0.01, opt: str = "sgd", step_lr: bool = False) -> None:
        super().__init__()
        self.net = net
        self.lr, self.opt, self.step_lr = lr, opt, step_lr
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        if self.opt == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9 if self.opt == "momentum" else 0.0)
        if not self.step_lr:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


def trainer(callbacks, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, **options)


def recipe(*pruning: dict, epochs: int = 2) -> sparsekit.Recipe:
    return sparsekit.Recipe(version=1, finetune={"epochs": epochs}, pruning=list(pruning))


class Probe(pl.Callback):
    """Runs after SparsekitCallback in each hook: records what the test asserts."""

    def __init__(self, pruning: SparsekitCallback) -> None:
        self.pruning = pruning
        self.rows: list[dict] = []
        self.optimizer_steps = 0
        self.at_start: dict = {}

    def on_train_start(self, trainer, pl_module):
        p = self.pruning.pruner
        self.at_start = {"step": p.step_count, "masks": p.masks(), "shapes": shapes(pl_module)}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.optimizer_steps += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        p = self.pruning.pruner
        in_optimizer = {id(q) for g in trainer.optimizers[0].param_groups for q in g["params"]}
        self.rows.append(
            {
                "global_step": trainer.global_step,
                "pruner_step": p.step_count,
                "masks": p.masks(),
                "weights": {
                    n: m.weight.detach().clone() for n, m in pl_module.net.named_modules() if hasattr(m, "weight")
                },
                "loss": float(outputs["loss"]),
                "optimizer_covers_model": in_optimizer == {id(q) for q in pl_module.parameters()},
                "shapes": shapes(pl_module),
            }
        )


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in module.named_parameters()}


def test_layer_magnitude_reaches_exact_sparsity_and_zeros_stay_zero():
    torch.manual_seed(0)
    lit = Lit(mlp(64, (32, 16), 10), lr=0.05, opt="momentum")
    spec = {"method": "magnitude", "sparsity": 0.7, "scope": "layer", "layers": {"exclude": ["fc3"]},
            "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.25}}  # fmt: skip
    pruning = SparsekitCallback(recipe(spec), submodule="net")
    probe = Probe(pruning)
    trainer([pruning, probe], max_epochs=2).fit(lit, digits())

    assert pruning.pruner.step_count == trainer_steps(probe) == 16  # 8 batches x 2 epochs
    assert [r["pruner_step"] for r in probe.rows] == list(range(1, 17))
    for before, after in zip(probe.rows, probe.rows[1:], strict=False):
        for name, mask in after["masks"].items():
            assert not bool((~before["masks"][name] & mask).any())  # a pruned weight is never revived
            assert bool((after["weights"][name][~mask] == 0).all())  # and every pruned weight is exactly 0
    # Gradual: the sparsity rose over several updates, not in one jump.
    counts = sorted({int((~r["masks"]["fc1"]).sum()) for r in probe.rows})
    assert len(counts) >= 3
    net = pruning.model
    assert net is lit.net
    assert not any("mask" in n for n, _ in net.named_buffers())  # finalized: no sparsekit buffers left
    for name in ("fc1", "fc2"):
        w = getattr(net, name).weight
        assert int((w == 0).sum()) == round(0.7 * w.numel())
    assert int((net.fc3.weight == 0).sum()) == 0
    assert all(math.isfinite(v) for v in lit.losses)


def test_without_submodule_the_recipe_names_layers_of_the_lightning_module():
    torch.manual_seed(0)
    lit = Lit(mlp(64, (32, 16), 10), lr=0.05)
    spec = {"method": "magnitude", "sparsity": 0.5, "scope": "layer", "layers": {"include": ["net.fc1"]},
            "schedule": "oneshot"}  # fmt: skip
    pruning = SparsekitCallback(recipe(spec))
    trainer([pruning], max_epochs=1, limit_train_batches=3).fit(lit, digits())
    assert pruning.model is lit and [row["layers"] for row in pruning.pruner.summary()] == [["net.fc1"]]
    assert int((lit.net.fc1.weight == 0).sum()) == round(0.5 * lit.net.fc1.weight.numel())
    assert int((lit.net.fc2.weight == 0).sum()) == 0


def trainer_steps(probe: Probe) -> int:
    return probe.rows[-1]["global_step"]


def test_gradient_accumulation_counts_real_optimizer_steps():
    torch.manual_seed(0)
    lit = Lit(mlp(64, (32, 16), 10), lr=0.05)
    # taylor needs the gradients at pruner.step(): Lightning must not have zeroed them yet.
    spec = {"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "scope": "layer",
            "layers": {"exclude": ["fc3"]}, "schedule": {"start_epoch": 1, "end_epoch": 1}}  # fmt: skip
    pruning = SparsekitCallback(recipe(spec), submodule="net")
    probe = Probe(pruning)
    fit = trainer([pruning, probe], max_epochs=2, accumulate_grad_batches=2, limit_train_batches=7)
    fit.fit(lit, digits())

    # 7 batches with accumulation 2: steps after batches 2, 4, 6 and 7 (the epoch's last) = 4 per epoch.
    assert pruning.pruner.steps_per_epoch == 4
    assert probe.optimizer_steps == fit.global_step == 8
    assert pruning.pruner.step_count == 8
    assert [r["pruner_step"] for r in probe.rows] == [0, 1, 1, 2, 2, 3, 4] + [4, 5, 5, 6, 6, 7, 8]
    for name in ("fc1", "fc2"):
        w = getattr(pruning.model, name).weight
        assert int((w == 0).sum()) == round(0.5 * w.numel())


def _one_sgd_step(pruning_list: list) -> tuple[dict, dict]:
    torch.manual_seed(0)
    lit = Lit(mlp(64, (32, 16), 10), lr=0.1)
    before = {k: v.clone() for k, v in lit.net.state_dict().items()}
    cb = SparsekitCallback(recipe(*pruning_list), submodule="net", finalize=False)
    trainer([cb], max_epochs=1, limit_train_batches=1).fit(lit, digits())
    return before, lit.net.state_dict()


def test_l1_regularize_adds_the_penalty_gradient_before_the_step():
    strength = 0.01
    l1 = {"method": "l1", "strength": strength, "mode": "penalty", "remove_dead": False, "layers": {"include": ["fc1"]}}
    w0, plain = _one_sgd_step([])
    _, with_l1 = _one_sgd_step([l1])
    # One SGD step (lr 0.1, no momentum): the L1 run moved fc1 by exactly -lr * strength * sign(w) more.
    expected = plain["fc1.weight"] - 0.1 * strength * torch.sign(w0["fc1.weight"])
    torch.testing.assert_close(with_l1["fc1.weight"], expected, rtol=0, atol=1e-6)
    assert not torch.equal(with_l1["fc1.weight"], plain["fc1.weight"])
    for key in ("fc1.bias", "fc2.weight", "fc3.weight"):
        assert torch.equal(with_l1[key], plain[key]), key


STRUCTURED = {"method": "structured", "ratio": 0.5, "importance": "l2", "steps": 2,
              "schedule": {"start_epoch": 0, "end_epoch": 1}, "layers": {"include": ["conv*"]}}  # fmt: skip


def test_structured_removes_channels_during_fit_and_the_optimizer_follows():
    torch.manual_seed(0)
    lit = Lit(small_cnn(width=4, image_size=8), lr=0.01, opt="adam", step_lr=True)
    dense = shapes(lit)
    pruning = SparsekitCallback(recipe(STRUCTURED), submodule="net", input_shape=[1, 1, 8, 8])
    probe = Probe(pruning)
    fit = trainer([pruning, probe], max_epochs=2)
    fit.fit(lit, digits(image=True))

    net = lit.net
    assert (net.conv1.out_channels, net.conv2.out_channels, net.conv3.out_channels) == (2, 4, 8)
    assert net.fc1.in_features == 8 and tuple(net.fc1.weight.shape) == (128, 8)
    assert net.fc2.out_features == 10
    changes = [
        i for i, (a, b) in enumerate(zip(probe.rows, probe.rows[1:], strict=False)) if a["shapes"] != b["shapes"]
    ]
    first_change = next(i for i, r in enumerate(probe.rows) if r["shapes"] != dense)
    assert first_change < 8 and changes and changes[-1] < 8  # removed during epoch 1, in two events
    assert all(r["optimizer_covers_model"] for r in probe.rows)  # the optimizer holds the new parameters
    assert all(math.isfinite(r["loss"]) for r in probe.rows)
    last_change = changes[-1] + 1
    assert not torch.equal(probe.rows[last_change]["weights"]["conv1"], net.conv1.weight)  # still training
    optimizer = fit.optimizers[0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in lit.parameters()}
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in lit.parameters())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25)  # the scheduler kept driving it


RESUME = [STRUCTURED, {"method": "magnitude", "sparsity": 0.5, "scope": "layer", "layers": {"include": ["fc2"]},
                       "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5}}]  # fmt: skip


def _resume_run(tmp_path, ckpt=None, max_epochs=2, save=False):
    torch.manual_seed(0)
    lit = Lit(small_cnn(width=4, image_size=8), lr=0.01, opt="adam", step_lr=True)
    pruning = SparsekitCallback(recipe(*RESUME), submodule="net", input_shape=[1, 1, 8, 8])
    probe = Probe(pruning)
    callbacks: list = [pruning, probe]
    if save:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_on_train_epoch_end=True))
    fit = trainer(callbacks, max_epochs=max_epochs, enable_checkpointing=save)
    fit.fit(lit, digits(image=True), ckpt_path=ckpt)
    return lit, pruning, probe


def test_checkpoint_resume_restores_masks_steps_and_shapes(tmp_path):
    whole, whole_cb, _ = _resume_run(tmp_path)
    _, _, first = _resume_run(tmp_path, max_epochs=1, save=True)
    ckpt = tmp_path / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["callbacks"][
        SparsekitCallback(recipe(*RESUME), submodule="net").state_key
    ]
    assert saved["pruner"]["step"] == 8 and saved["steps_per_epoch"] == 8
    assert saved["pruner"]["pruning_history"]  # channels were removed before the checkpoint

    resumed, resumed_cb, probe = _resume_run(tmp_path, ckpt=str(ckpt))
    start = probe.at_start
    assert start["step"] == 8
    assert start["shapes"] == first.rows[-1]["shapes"]  # removed channels were removed again before loading
    assert start["masks"].keys() == first.rows[-1]["masks"].keys() == {"fc2"}
    assert torch.equal(start["masks"]["fc2"], first.rows[-1]["masks"]["fc2"])
    assert torch.equal(start["masks"]["fc2"], saved["pruner"]["masks"]["fc2"])
    assert resumed_cb.pruner.step_count == whole_cb.pruner.step_count == 16
    # Resumed = uninterrupted, bit for bit (unshuffled data; Adam state, LR schedule, masks all restored).
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_under_another_pruning_section_is_refused(tmp_path):
    _resume_run(tmp_path, max_epochs=1, save=True)
    torch.manual_seed(0)
    lit = Lit(small_cnn(width=4, image_size=8), lr=0.01, opt="adam")
    other = [STRUCTURED, {**RESUME[1], "sparsity": 0.6}]
    pruning = SparsekitCallback(recipe(*other), submodule="net", input_shape=[1, 1, 8, 8])
    with pytest.raises(ValueError, match="pruning section differs"):
        trainer([pruning], max_epochs=2).fit(lit, digits(image=True), ckpt_path=str(tmp_path / "last.ckpt"))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="recipe must be"):
        SparsekitCallback(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        SparsekitCallback(recipe(), steps_per_epoch=0)
    lit = Lit(mlp(64, (32,), 10))
    pruning = SparsekitCallback(recipe(), submodule="backbone")
    with pytest.raises(ValueError, match="no such submodule.*net"):
        trainer([pruning]).fit(lit, digits(n=32))
    assert isinstance(SparsekitCallback("cnn-layer-magnitude-80").recipe, sparsekit.Recipe)  # a shipped name


def test_missing_lightning_is_an_import_error_naming_the_extra(monkeypatch):
    import sparsekit.integrations.lightning as module

    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    spec = importlib.util.spec_from_file_location("sparsekit.integrations._lightning_again", module.__file__)
    assert spec and spec.loader
    with pytest.raises(ImportError, match=r"pip install 'sparsekit\[lightning\]'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_example_runs(capsys):
    from examples.lightning_train import main

    result = main(["--epochs", "2", "--limit-batches", "6"])
    out = capsys.readouterr().out
    assert "sparsity" in out and "accuracy" in out
    assert result["sparsity"] > 0.5 and 0.0 <= result["accuracy"] <= 1.0


def test_a_recipe_without_a_finetune_section_takes_the_trainers_epochs():
    # README: the recipe's finetune section is not used here, yet a schedule past finetune.epochs (0 when the
    # section is left out) was refused before fit; a recipe that states finetune.epochs is still checked.
    spec = {"method": "magnitude", "sparsity": 0.5, "scope": "layer", "layers": {"exclude": ["fc3"]},
            "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 0.5}}  # fmt: skip
    torch.manual_seed(0)
    lit = Lit(mlp(64, (32, 16), 10), lr=0.05)
    pruning = SparsekitCallback({"version": 1, "pruning": [spec]}, submodule="net")
    trainer([pruning], max_epochs=2).fit(lit, digits())
    assert int((lit.net.fc1.weight == 0).sum()) == round(0.5 * lit.net.fc1.weight.numel())
    with pytest.raises(sparsekit.RecipeError, match=r"end_epoch \(2\) is after the last fine-tuning epoch"):
        SparsekitCallback({"version": 1, "finetune": {"epochs": 1}, "pruning": [spec]}, submodule="net")


def test_an_l1_target_the_fit_ends_before_is_named_with_the_short_schedules():
    from sparsekit.integrations._common import short_schedules
    from sparsekit.recipe import as_recipe

    pruning = [
        {"method": "l1", "strength": 1e-3, "target": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 20}},
        {"method": "l1", "strength": 1e-3},  # no target: regularizes all along, nothing to reach
    ]
    lines = short_schedules(as_recipe({"version": 1, "pruning": pruning}, trainer=True), 10, 40, "fit")
    assert len(lines) == 1 and lines[0].startswith("pruning[0] (l1) ends at epoch 20")
    assert lines[0].endswith(": its target is not reached")


def test_a_structured_schedule_the_fit_ends_before_is_said_to_finish_at_finalize():
    # It was warned "its target is not reached", yet finalize runs the removals left and the shape is reached:
    # without fine-tuning after them, which is what the user needs to hear.
    from sparsekit.integrations._common import short_schedules
    from sparsekit.recipe import as_recipe

    pruning = [{"method": "structured", "ratio": 0.5, "schedule": {"start_epoch": 1, "end_epoch": 4}}]
    (line,) = short_schedules(as_recipe({"version": 1, "pruning": pruning}, trainer=True), 10, 12, "fit")
    assert line.startswith("pruning[0] (structured) ends at epoch 4")
    assert "finalize removes the channels still to go at once, with no fine-tuning after" in line
    assert "not reached" not in line


def test_resuming_from_a_checkpoint_written_after_a_shape_changing_finalize_is_a_clear_error(tmp_path):
    # The callback warned "pruning starts again from step 0 on the restored weights", then Lightning failed with a
    # bare "size mismatch" RuntimeError: finalize had removed channels the fresh module still has.
    torch.manual_seed(0)
    lit = Lit(small_cnn(width=4, image_size=8), lr=0.01)
    pruning = SparsekitCallback(recipe(STRUCTURED), submodule="net", input_shape=[1, 1, 8, 8])
    fit = trainer([pruning], max_epochs=2)
    fit.fit(lit, digits(image=True))
    fit.save_checkpoint(tmp_path / "after_fit.ckpt")
    fresh = Lit(small_cnn(width=4, image_size=8), lr=0.01)
    again = SparsekitCallback(recipe(STRUCTURED), submodule="net", input_shape=[1, 1, 8, 8])
    with pytest.raises(ValueError, match=r"written after pruner.finalize\(\), which removed channels \(net\.conv1"):
        trainer([again], max_epochs=3).fit(fresh, digits(image=True), ckpt_path=str(tmp_path / "after_fit.ckpt"))
