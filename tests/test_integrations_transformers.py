"""SparsekitTrainerCallback inside transformers.Trainer: targets, zeros, accumulation, L1, structured, resume."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers.Trainer needs it to train

import sparsekit  # noqa: E402
from examples.models import mlp, small_cnn  # noqa: E402
from sparsekit.integrations.transformers import PRUNER_FILE, SparsekitTrainerCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Classifier(nn.Module):
    """What transformers.Trainer expects of a model: a dict with "loss" when labels are given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Digits(torch.utils.data.Dataset):
    def __init__(self, n: int = 256, image: bool = False) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        self.x = torch.tensor(d.data[:n], dtype=torch.float32) / 16.0
        if image:
            self.x = self.x.reshape(-1, 1, 8, 8)
        self.y = torch.tensor(d.target[:n], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def make_args(tmp_path, **kwargs) -> transformers.TrainingArguments:
    options = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 32,
        "num_train_epochs": 2,
        "learning_rate": 0.01,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
        **kwargs,
    }
    return transformers.TrainingArguments(**options)


def recipe(*pruning: dict, epochs: int = 2) -> sparsekit.Recipe:
    return sparsekit.Recipe(version=1, finetune={"epochs": epochs}, pruning=list(pruning))


def run(tmp_path, model, callbacks, data=None, resume=None, **kwargs) -> transformers.Trainer:
    trainer = transformers.Trainer(
        model=model, args=make_args(tmp_path, **kwargs), train_dataset=data or Digits(), callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class Probe(transformers.TrainerCallback):
    """Runs after SparsekitTrainerCallback at each event: records what the tests assert."""

    def __init__(self, pruning: SparsekitTrainerCallback) -> None:
        self.pruning = pruning
        self.rows: list[dict] = []
        self.at_begin: dict = {}
        self.optimizer_steps = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        p = self.pruning.pruner
        self.at_begin = {"step": p.step_count, "masks": p.masks(), "shapes": shapes(model)}

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.optimizer_steps += 1
        p = self.pruning.pruner
        real = optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps the torch optimizer
        in_optimizer = {id(q) for g in real.param_groups for q in g["params"]}
        self.rows.append(
            {
                "pruner_step": p.step_count,
                "masks": p.masks(),
                "weights": {n: m.weight.detach().clone() for n, m in model.net.named_modules() if hasattr(m, "weight")},
                "optimizer_covers_model": in_optimizer == {id(q) for q in model.parameters()},
                "scheduler_drives_it": _real(lr_scheduler.optimizer) is real,
                "lr": real.param_groups[0]["lr"],
                "shapes": shapes(model),
            }
        )


def _real(optimizer):
    return getattr(optimizer, "optimizer", optimizer)


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in module.named_parameters()}


def test_layer_magnitude_reaches_exact_sparsity_and_zeros_stay_zero(tmp_path):
    torch.manual_seed(0)
    model = Classifier(mlp(64, (32, 16), 10))
    spec = {"method": "magnitude", "sparsity": 0.7, "scope": "layer", "layers": {"exclude": ["fc3"]},
            "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.25}}  # fmt: skip
    pruning = SparsekitTrainerCallback(recipe(spec), submodule="net")
    probe = Probe(pruning)
    trainer = run(tmp_path, model, [pruning, probe])

    assert pruning.pruner.step_count == trainer.state.global_step == 16  # 8 batches x 2 epochs
    assert [r["pruner_step"] for r in probe.rows] == list(range(1, 17))
    for before, after in zip(probe.rows, probe.rows[1:], strict=False):
        for name, mask in after["masks"].items():
            assert not bool((~before["masks"][name] & mask).any())  # a pruned weight is never revived
            assert bool((after["weights"][name][~mask] == 0).all())  # and every pruned weight is exactly 0
    assert len({int((~r["masks"]["fc1"]).sum()) for r in probe.rows}) >= 3  # gradual, not one jump
    net = pruning.model
    assert net is model.net
    assert not any("mask" in n for n, _ in net.named_buffers())  # finalized
    for name in ("fc1", "fc2"):
        w = getattr(net, name).weight
        assert int((w == 0).sum()) == round(0.7 * w.numel())
    assert int((net.fc3.weight == 0).sum()) == 0


def test_without_submodule_the_recipe_names_layers_of_the_trainer_model(tmp_path):
    torch.manual_seed(0)
    model = Classifier(mlp(64, (32, 16), 10))
    spec = {"method": "magnitude", "sparsity": 0.5, "scope": "layer", "layers": {"include": ["net.fc1"]},
            "schedule": "oneshot"}  # fmt: skip
    pruning = SparsekitTrainerCallback(recipe(spec))
    run(tmp_path, model, [pruning], max_steps=3)
    assert pruning.model is model and [row["layers"] for row in pruning.pruner.summary()] == [["net.fc1"]]
    assert int((model.net.fc1.weight == 0).sum()) == round(0.5 * model.net.fc1.weight.numel())
    assert int((model.net.fc2.weight == 0).sum()) == 0


def test_gradient_accumulation_counts_real_optimizer_steps(tmp_path):
    torch.manual_seed(0)
    model = Classifier(mlp(64, (32, 16), 10))
    # taylor reads the gradients at pruner.step(): they must not have been zeroed yet.
    spec = {"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "scope": "layer",
            "layers": {"exclude": ["fc3"]}, "schedule": {"start_epoch": 1, "end_epoch": 1}}  # fmt: skip
    pruning = SparsekitTrainerCallback(recipe(spec), submodule="net")
    probe = Probe(pruning)
    # 224 samples = 7 batches; accumulation 2: steps after batches 2, 4, 6 and 7 = 4 per epoch.
    trainer = run(tmp_path, model, [pruning, probe], data=Digits(224), gradient_accumulation_steps=2)

    assert pruning.pruner.steps_per_epoch == 4
    assert probe.optimizer_steps == trainer.state.global_step == pruning.pruner.step_count == 8
    for name in ("fc1", "fc2"):
        w = getattr(pruning.model, name).weight
        assert int((w == 0).sum()) == round(0.5 * w.numel())


def _one_sgd_step(tmp_path, pruning_list: list) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = Classifier(mlp(64, (32, 16), 10))
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    cb = SparsekitTrainerCallback(recipe(*pruning_list), submodule="net", finalize=False)
    run(tmp_path, model, [cb], max_steps=1, optim="sgd", learning_rate=0.1, lr_scheduler_type="constant",
        max_grad_norm=0.0, weight_decay=0.0)  # fmt: skip
    return before, model.net.state_dict()


def test_l1_regularize_adds_the_penalty_gradient_before_the_step(tmp_path):
    strength = 0.01
    l1 = {"method": "l1", "strength": strength, "mode": "penalty", "remove_dead": False, "layers": {"include": ["fc1"]}}
    w0, plain = _one_sgd_step(tmp_path / "plain", [])
    _, with_l1 = _one_sgd_step(tmp_path / "l1", [l1])
    expected = plain["fc1.weight"] - 0.1 * strength * torch.sign(w0["fc1.weight"])
    torch.testing.assert_close(with_l1["fc1.weight"], expected, rtol=0, atol=1e-6)
    assert not torch.equal(with_l1["fc1.weight"], plain["fc1.weight"])
    for key in ("fc1.bias", "fc2.weight", "fc3.weight"):
        assert torch.equal(with_l1[key], plain[key]), key


STRUCTURED = {"method": "structured", "ratio": 0.5, "importance": "l2", "steps": 2,
              "schedule": {"start_epoch": 0, "end_epoch": 1}, "layers": {"include": ["conv*"]}}  # fmt: skip


def test_structured_removes_channels_during_training_and_the_optimizer_follows(tmp_path):
    torch.manual_seed(0)
    model = Classifier(small_cnn(width=4, image_size=8))
    dense = shapes(model)
    pruning = SparsekitTrainerCallback(recipe(STRUCTURED), submodule="net", input_shape=[1, 1, 8, 8])
    probe = Probe(pruning)
    trainer = run(tmp_path, model, [pruning, probe], data=Digits(image=True), logging_strategy="steps", logging_steps=1)

    net = model.net
    assert (net.conv1.out_channels, net.conv2.out_channels, net.conv3.out_channels) == (2, 4, 8)
    assert tuple(net.fc1.weight.shape) == (128, 8)
    changes = [
        i for i, (a, b) in enumerate(zip(probe.rows, probe.rows[1:], strict=False)) if a["shapes"] != b["shapes"]
    ]
    assert next(i for i, r in enumerate(probe.rows) if r["shapes"] != dense) < 8 and changes[-1] < 8
    assert all(r["optimizer_covers_model"] and r["scheduler_drives_it"] for r in probe.rows)
    # The linear LR schedule kept driving the (updated) optimizer: step k trained at lr * (1 - (k - 1) / 16).
    assert [r["lr"] for r in probe.rows] == pytest.approx([0.01 * (1 - k / 16) for k in range(16)])
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert not torch.equal(probe.rows[changes[-1] + 1]["weights"]["conv1"], net.conv1.weight)  # still training
    real = trainer.optimizer.optimizer
    assert all(real.state[p]["exp_avg"].shape == p.shape for p in model.parameters())


def _checkpointed(tmp_path, pruning_list, image=False, resume=None, prepare=False):
    torch.manual_seed(0)
    model = Classifier(small_cnn(width=4, image_size=8) if image else mlp(64, (32, 16), 10))
    pruning = SparsekitTrainerCallback(recipe(*pruning_list), submodule="net", input_shape=[1, 1, 8, 8])
    probe = Probe(pruning)
    trainer = transformers.Trainer(
        model=model, args=make_args(tmp_path, save_strategy="epoch"), train_dataset=Digits(image=image),
        callbacks=[pruning, probe],
    )  # fmt: skip
    if prepare:
        pruning.prepare_resume(trainer, resume)
    trainer.train(resume_from_checkpoint=resume)
    return model, pruning, probe


MAGNITUDE = {"method": "magnitude", "sparsity": 0.5, "scope": "layer", "layers": {"include": ["fc2"]},
             "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5}}  # fmt: skip


def test_checkpoint_resume_restores_masks_and_step_count(tmp_path):
    whole, whole_cb, _ = _checkpointed(tmp_path, [MAGNITUDE])
    ckpt = tmp_path / "checkpoint-8"
    saved = torch.load(ckpt / PRUNER_FILE, weights_only=True)
    assert saved["pruner"]["step"] == 8 and saved["steps_per_epoch"] == 8

    resumed, resumed_cb, probe = _checkpointed(tmp_path, [MAGNITUDE], resume=str(ckpt))  # found by itself
    assert probe.at_begin["step"] == 8
    assert torch.equal(probe.at_begin["masks"]["fc2"], saved["pruner"]["masks"]["fc2"])
    assert not bool(probe.at_begin["masks"]["fc2"].all())
    assert resumed_cb.pruner.step_count == whole_cb.pruner.step_count == 16
    a, b = whole.state_dict(), resumed.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # resumed = uninterrupted, bit for bit


def test_structured_resume_with_prepare_resume(tmp_path):
    whole, _, _ = _checkpointed(tmp_path, [STRUCTURED, MAGNITUDE], image=True)
    ckpt = str(tmp_path / "checkpoint-8")
    with pytest.raises(RuntimeError, match=r"prepare_resume\(trainer, checkpoint\)"):
        _checkpointed(tmp_path, [STRUCTURED, MAGNITUDE], image=True, resume=ckpt)

    resumed, resumed_cb, probe = _checkpointed(tmp_path, [STRUCTURED, MAGNITUDE], image=True, resume=ckpt, prepare=True)
    saved = torch.load(tmp_path / "checkpoint-8" / PRUNER_FILE, weights_only=True)
    assert saved["pruner"]["pruning_history"]
    assert probe.at_begin["step"] == 8
    assert probe.at_begin["shapes"]["net.conv1.weight"] == (2, 1, 3, 3)
    assert torch.equal(probe.at_begin["masks"]["fc2"], saved["pruner"]["masks"]["fc2"])
    assert resumed_cb.pruner.step_count == 16
    a, b = whole.state_dict(), resumed.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for key in a:
        assert torch.equal(a[key], b[key]), key

    other = [STRUCTURED, {**MAGNITUDE, "sparsity": 0.6}]
    with pytest.raises(ValueError, match="pruning section differs"):
        _checkpointed(tmp_path, other, image=True, resume=ckpt, prepare=True)


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="recipe must be"):
        SparsekitTrainerCallback(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        SparsekitTrainerCallback(recipe(), steps_per_epoch=-1)
    with pytest.raises(ValueError, match="no such submodule.*net"):
        run(tmp_path, Classifier(mlp(64, (32,), 10)), [SparsekitTrainerCallback(recipe(), submodule="backbone")])
    with pytest.raises(FileNotFoundError, match=PRUNER_FILE):
        trainer = transformers.Trainer(model=Classifier(mlp()), args=make_args(tmp_path), train_dataset=Digits())
        SparsekitTrainerCallback(recipe()).prepare_resume(trainer, tmp_path)
    assert isinstance(SparsekitTrainerCallback("lenet-gradual-magnitude-90").recipe, sparsekit.Recipe)


def test_missing_transformers_is_an_import_error_naming_the_extra(monkeypatch):
    import sparsekit.integrations.transformers as module

    monkeypatch.setitem(sys.modules, "transformers", None)
    spec = importlib.util.spec_from_file_location("sparsekit.integrations._transformers_again", module.__file__)
    assert spec and spec.loader
    with pytest.raises(ImportError, match=r"pip install 'sparsekit\[transformers\]'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_example_runs(capsys, tmp_path):
    from examples.hf_trainer import main

    result = main(["--epochs", "2", "--samples", "320", "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert "sparsity" in out and "accuracy" in out
    assert result["sparsity"] > 0.5 and 0.0 <= result["accuracy"] <= 1.0
