"""--device / finetune.device, and training metrics logged to CSV (--log-dir, finetune.log)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, InterruptOnEvaluate, assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.metrics_log import MetricsLog

MLP = ("--arch", "examples.models:mlp")
RECIPE = (
    "data: {source: digits}\nfinetune: {epochs: 3, optimizer: {name: adam, lr: 0.001}, log: true}\n"
    "pruning: [{method: magnitude, sparsity: 0.7, schedule: {start_epoch: 0, end_epoch: 2, every: 0.5},"
    " layers: {exclude: [fc3]}}]\nbenchmark: {enabled: false}\n"
)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_asked_without_a_gpu_is_bad_input_naming_the_field(tmp_path, mlp_checkpoint):
    (tmp_path / "r.yaml").write_text(RECIPE)
    result = run("prune", mlp_checkpoint, *MLP, tmp_path / "r.yaml", "-o", tmp_path / "o", "--device", "cuda", *FAST)
    # It said "--set finetune.device=cpu", which the --device given beside it overrides again.
    assert_bad_input(result, "finetune.device", "no CUDA device", "--device cpu")
    assert not (tmp_path / "o").exists()  # refused before the output folder is touched
    with pytest.raises(sparsekit.errors.RecipeError, match=r"overrides=\['finetune.device=cpu'\]"):
        sparsekit.finetune(torch.nn.Linear(4, 2), sparsekit.Recipe(finetune={"device": "cuda:0"}), [], [])


def test_a_device_name_the_schema_does_not_know_is_refused(tmp_path):
    (tmp_path / "r.yaml").write_text("finetune: {device: gpu0}\npruning: []\n")
    result = run("validate", tmp_path / "r.yaml")
    assert_bad_input(result, "finetune.device")
    bad_flag = run("prune", tmp_path / "m.pt", tmp_path / "r.yaml", "--device", "tpu")
    assert bad_flag.exit_code == 2 and "--device" in bad_flag.stderr


def test_logs_survive_an_interrupt_and_resume_as_one_run(tmp_path, mlp_checkpoint, monkeypatch):
    """finetune.log: true writes OUT/logs; a resumed run drops the rows past its checkpoint, so every
    step and epoch appears once, in order, and the per-layer sparsity matches the report."""
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "o"
    interrupt = InterruptOnEvaluate(monkeypatch, 3)  # Ctrl-C after epoch 2's steps were logged
    first = run("prune", mlp_checkpoint, *MLP, tmp_path / "r.yaml", "-o", out, "--device", "cpu", *FAST)
    assert first.exit_code == 130
    staged = out / ".sparsekit" / "next" / "logs" / "steps.csv"
    steps_per_epoch = int(rows(out / ".sparsekit" / "next" / "logs" / "epochs.csv")[0]["step"])
    assert len(rows(staged)) > steps_per_epoch  # epoch 2 steps were written before the interrupt
    interrupt.restore()
    second = run("prune", mlp_checkpoint, *MLP, tmp_path / "r.yaml", "-o", out, "--resume", *FAST)
    assert second.exit_code == 0, second.stderr
    report = json.loads((out / "report.json").read_text())
    steps, epochs = rows(out / "logs" / "steps.csv"), rows(out / "logs" / "epochs.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 3 * steps_per_epoch + 1))
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]
    assert float(epochs[-1]["val_accuracy"]) == pytest.approx(report["history"][-1]["val_accuracy"])
    assert int(epochs[0]["mask_changes"]) > 0 and int(epochs[2]["mask_changes"]) == 0  # schedule ended at 2
    layer = {r["name"]: r["sparsity"] for r in report["layers"]}
    assert float(epochs[-1]["sparsity/fc1"]) == pytest.approx(layer["fc1"])
    assert report["data"]["device"] == "cpu"


def test_metrics_log_truncates_past_the_resume_step(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(1, 7):
        log.step(step, step / 3, 1.0 / step, 0.1)
        if step % 3 == 0:
            log.epoch({"epoch": step // 3, "val_accuracy": 0.5, "sparsity": 0.1}, step, {"a": 0.1}, 5)
    log.close()
    again = MetricsLog(tmp_path, resume_step=3)
    again.close()
    assert [r["step"] for r in rows(tmp_path / "steps.csv")] == ["1", "2", "3"]
    assert [r["epoch"] for r in rows(tmp_path / "epochs.csv")] == ["1"]


def test_a_log_folder_holding_the_users_csv_files_is_refused_and_they_are_kept(tmp_path):
    # Found by review: finetune(log_dir=D) truncated D/epochs.csv and D/steps.csv of the user's own and appended
    # rows under their header. Only a log sparsekit wrote (its header) is started over or cut back.
    from sparsekit.errors import OutputError

    mine = {"epochs.csv": "step,note\n1,my experiment A\n", "steps.csv": "my,own\nsteps,data\n"}
    for name, text in mine.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text(text)
        with pytest.raises(OutputError, match=f"{name}: not a metrics log sparsekit wrote"):
            MetricsLog(folder)
        assert (folder / name).read_text() == text
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "steps.csv").symlink_to(tmp_path / "steps" / "steps.csv")
    with pytest.raises(OutputError, match="not a regular file"):
        MetricsLog(linked, resume_step=3)
    assert (tmp_path / "steps" / "steps.csv").read_text() == mine["steps.csv"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetune_on_cuda_keeps_masks_on_the_device_and_reaches_the_sparsity():
    from examples.models import mlp
    from sparsekit.data import load_data

    torch.manual_seed(0)
    model = mlp()
    recipe = sparsekit.Recipe(
        finetune={"epochs": 2, "device": "cuda"},
        pruning=[{"method": "gradient", "sparsity": 0.8, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
    )
    data = load_data("digits", batch_size=64, val_fraction=0.2, seed=0, input_shape=[1, 64])
    model, history, pruner = sparsekit.finetune(model, recipe, data.train, data.val, progress=False)
    assert next(model.parameters()).device.type == "cuda"
    assert all(m.device.type == "cuda" for m in pruner.masks().values())
    model = pruner.finalize()
    assert sparsekit.sparsity(model) == pytest.approx(0.8 * 0.99, abs=0.05)
    assert history[-1]["val_accuracy"] > 0.5


def test_a_device_name_is_explained_not_a_regex(tmp_path):
    (tmp_path / "r.yaml").write_text("finetune: {device: gpu0}\npruning: []\n")
    line = assert_bad_input(run("validate", tmp_path / "r.yaml"), "finetune.device", "auto, cpu, cuda, cuda:N or mps")
    assert "pattern" not in line


def test_a_log_folder_inside_the_output_folder_is_refused_before_any_work(tmp_path, mlp_checkpoint):
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "o"
    result = run("prune", mlp_checkpoint, *MLP, tmp_path / "r.yaml", "-o", out, "--log-dir", out / "tb", *FAST)
    assert_bad_input(result, "tb", "inside the output folder", "finetune.log")
    assert not out.exists()


def test_resume_on_another_step_clock_is_refused(tmp_path, mlp_checkpoint, monkeypatch):
    """A checkpoint's step count means epochs only at its steps per epoch: another batch size (or number
    of torchrun processes) would shift every schedule, so the resume is refused, naming what to keep."""
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "o"
    interrupt = InterruptOnEvaluate(monkeypatch, 3)
    assert run("prune", mlp_checkpoint, *MLP, tmp_path / "r.yaml", "-o", out, *FAST).exit_code == 130
    interrupt.restore()
    again = run(
        "prune", mlp_checkpoint, *MLP, tmp_path / "r.yaml", "-o", out, "--resume", "--set", "data.batch_size=16", *FAST
    )
    # The batch size is part of the recipe the checkpoint records: named, and no acceptance can change it.
    assert_bad_input(again, "data.batch_size: 64 then, 16 now", "resume with what the checkpoint was written with")


def test_finetune_refuses_a_pruner_on_another_step_clock():
    from examples.models import mlp
    from sparsekit.data import load_data

    recipe = sparsekit.Recipe(finetune={"epochs": 1}, pruning=[{"method": "magnitude", "sparsity": 0.5}])
    data = load_data("digits", batch_size=64, input_shape=[1, 64])
    model = mlp()
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=len(data.train) * 2)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        sparsekit.finetune(model, recipe, data.train, data.val, pruner=pruner, progress=False)


def test_errors_of_other_torchrun_ranks_say_which_rank(tmp_path, monkeypatch):
    (tmp_path / "r.yaml").write_text("pruning: [{method: magnitude}]\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    line = assert_bad_input(run("validate", tmp_path / "r.yaml"), "pruning[0].sparsity")
    assert line.startswith("Error: rank 1: ")


def test_a_rank_that_does_not_write_the_checkpoint_says_what_resume_will_find(tmp_path, monkeypatch):
    """Under torchrun only rank 0 writes last.pt: on Ctrl-C the other ranks said "no epoch was checkpointed"
    beside rank 0's "last.pt holds epoch 1"."""
    import sparsekit
    import sparsekit.train as train_mod
    from examples.models import mlp

    monkeypatch.setattr(train_mod._distributed, "is_main", lambda: False)  # this process is not rank 0
    calls = []

    def evaluate(model, loader, *args, **kwargs):  # Ctrl-C at the end of epoch 2, after epoch 1 was checkpointed
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"accuracy": 0.5, "loss": 1.0}

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    recipe = {"version": 1, "model": {"input_shape": [1, 64]}, "finetune": {"epochs": 3},
              "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}]}  # fmt: skip
    with pytest.raises(KeyboardInterrupt) as info:
        sparsekit.finetune(mlp(), recipe, loader, loader, progress=False, checkpoint_dir=tmp_path / "ck")
    said = str(info.value)
    assert "holds epoch 1" in said and "no epoch was checkpointed" not in said, said
