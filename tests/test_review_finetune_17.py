"""Review (fine-tuning, LR schedules, distillation, pruning schedules): faults found by a new user's runs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(n: int = 3, classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 8, generator=gen), torch.randint(0, classes, (4,), generator=gen)) for _ in range(n)]


def _distill_recipe(**model: object) -> sparsekit.Recipe:
    return sparsekit.Recipe(
        model=model,
        finetune={
            "epochs": 1,
            "optimizer": {"name": "sgd", "lr": 1e-12, "momentum": 0.0},
            "distill": {"weight": 0.7, "temperature": 4.0},
            "device": "cpu",
        },
        pruning=[{"method": "magnitude", "sparsity": 0.5, "layers": {"include": ["a"]}, "schedule": "oneshot"}],
    )


class _TwoHeads(nn.Module):
    """Logits and an auxiliary head: the recipe's model.output: 0 picks the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.aux = nn.Linear(8, 16), nn.Linear(16, 3), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.a(x))
        return self.b(h), self.aux(h)


def test_explicit_teacher_of_a_tuple_output_model_distils_like_the_default_one():
    """finetune(teacher=copy of the dense model) with model.output set failed with "unsupported operand type(s)
    for /: 'tuple' and 'float'": the copy, taken before finetune attached the selection to the model, returned the
    whole tuple. It now gets the same selection (and the caller's module keeps its own output)."""
    data = _batches()
    torch.manual_seed(0)
    dense = _TwoHeads()
    teacher, student = copy.deepcopy(dense), copy.deepcopy(dense)
    recipe = _distill_recipe(output=0)
    _, given, _ = sparsekit.finetune(student, recipe, data, data[:1], progress=False, teacher=teacher)
    _, default, _ = sparsekit.finetune(dense, _distill_recipe(output=0), data, data[:1], progress=False)
    assert given[0]["train_loss"] == pytest.approx(default[0]["train_loss"], rel=1e-6)
    assert isinstance(teacher(data[0][0]), tuple)  # no hook left on the caller's teacher
    # and the loss is Hinton's mix with the stated T**2 factor, computed here by hand (lr ~0: the student's weights
    # are those it was pruned to, one-shot at step 0; finetune made it return the logits alone)
    total = 0.0
    for x, y in data:
        s, t = student(x), teacher(x)[0]
        kl = F.kl_div(F.log_softmax(s / 4.0, 1), F.softmax(t / 4.0, 1), reduction="batchmean") * 16.0
        total += float(0.3 * F.cross_entropy(s, y) + 0.7 * kl)
    assert given[0]["train_loss"] == pytest.approx(total / len(data), rel=1e-5)


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        (nn.Sequential(nn.Linear(8, 5)), r"teacher returns \[4, 5\] for a batch where the model returns logits \[4, "),
        (nn.Sequential(nn.Linear(7, 3)), r"teacher fails on a batch of inputs \[4, 8\]"),
    ],
)
def test_a_teacher_that_does_not_fit_the_model_is_named(teacher, message):
    """A teacher with other classes, or one that takes other inputs, failed inside torch's KL term with a bare
    RuntimeError ("The size of tensor a (5) must match ...") naming neither the teacher nor the fix."""
    data = _batches()
    model = nn.Sequential()
    model.add_module("a", nn.Linear(8, 3))
    with pytest.raises(ValueError, match=message):
        sparsekit.finetune(model, _distill_recipe(), data, data[:1], progress=False, teacher=teacher)


def test_a_training_batch_of_one_sample_says_to_change_the_batch_size():
    """5 training samples at batch_size 4 leave a last batch of 1, on which a BatchNorm model fails in training
    mode. The error was torch's "Expected more than 1 value per channel when training" alone, naming neither the
    batch size nor a fix; it now says the batch holds one sample and what to change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 8, generator=gen), torch.randint(0, 3, (5,), generator=gen)
    train = [(x[:4], y[:4]), (x[4:], y[4:])]
    recipe = sparsekit.Recipe(
        finetune={"epochs": 1, "device": "cpu"},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
    )
    with pytest.raises(sparsekit.DataError, match=r"single sample .*data\.batch_size .*drop_last=True"):
        sparsekit.finetune(model, recipe, train, train[:1], progress=False)
    # a batch of one in evaluation (BatchNorm then uses its running statistics) is no failure
    model.eval()
    assert sparsekit.train.evaluate(model, [(x[4:], y[4:])])["loss"] > 0


def test_l1_without_fine_tuning_is_not_told_to_raise_strength(tmp_path, mlp_checkpoint):
    """finetune.epochs: 0 with an l1 entry (no threshold): no step is taken, so it zeroed nothing, and the summary
    said "raise strength, or set target" (no strength acts without steps, and a target needs epochs); validate's
    plan said only that the zeros are "known only after training". Both now say it takes no step and what works."""
    from click.testing import CliRunner
    from conftest import fast_prune

    from sparsekit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {input_shape: [1, 64]}\ndata: {source: digits}\nfinetune: {epochs: 0}\n"
        "pruning:\n  - {method: l1, strength: 0.01, mode: proximal, remove_dead: false}\n"
    )
    arch = ["--arch", "examples.models:mlp"]
    plan = CliRunner().invoke(main, ["validate", str(recipe), str(mlp_checkpoint), *arch])
    assert plan.exit_code == 0, plan.output
    assert "no step is taken, so no weight will end at zero" in plan.output
    result = fast_prune(mlp_checkpoint, recipe, tmp_path / "out", *arch, "--set", "benchmark.enabled=false")
    assert result.exit_code == 0, result.output
    assert "achieved nothing" in result.output and "raise strength" not in result.output
    assert "finetune.epochs: 0) l1 takes no step" in result.output


def test_a_run_without_fine_tuning_does_not_say_it_distilled(tmp_path, mlp_checkpoint):
    """finetune.epochs: 0 with finetune.distill set: the summary's recipe line said "fine-tuning: 0 epoch(s) (sgd lr
    0.01, cosine schedule, distilled from the dense model)", as if an optimizer, a schedule and distillation had
    run. None did; it now says there was no fine-tuning."""
    from conftest import fast_prune

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {input_shape: [1, 64]}\ndata: {source: digits}\n"
        "finetune: {epochs: 0, lr_schedule: {name: cosine}, distill: {weight: 0.5, temperature: 2}}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n"
    )
    arch = ["--arch", "examples.models:mlp", "--set", "benchmark.enabled=false"]
    result = fast_prune(mlp_checkpoint, recipe, tmp_path / "out", *arch)
    assert result.exit_code == 0, result.output
    assert "fine-tuning: none (finetune.epochs: 0)" in result.output
    assert "distilled from the dense model" not in result.output and "cosine schedule" not in result.output


def test_schedule_keys_a_method_does_not_read_are_named(tmp_path, mlp_checkpoint):
    """A structured entry with schedule {start_epoch: 0, end_epoch: 2, every: 0.5} asked, by the look of it, for a
    removal every half epoch; structured reads only start_epoch, end_epoch and its own steps, so all channels went
    at epoch 0 in one event, and neither validate nor the report said that every (or init_sparsity, curve) did
    nothing. l1 without target does not read them either. validate's plan and the report's notes now name them."""
    from click.testing import CliRunner
    from conftest import fast_prune

    from sparsekit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {input_shape: [1, 64]}\ndata: {source: digits}\nfinetune: {epochs: 2, max_steps_per_epoch: 2}\n"
        "pruning:\n"
        "  - {method: structured, ratio: 0.25, layers: {include: [fc1]}, round_to: 1,\n"
        "     schedule: {start_epoch: 0, end_epoch: 2, every: 0.5, curve: linear}}\n"
        "  - {method: l1, strength: 0.001, mode: proximal, layers: {include: [fc2]}, remove_dead: false,\n"
        "     schedule: {start_epoch: 0, end_epoch: 2, init_sparsity: 0.2}}\n"
        "  - {method: magnitude, sparsity: 0.5, layers: {include: [fc3]}, schedule: {end_epoch: 2, every: 0.5}}\n"
    )
    plan = CliRunner().invoke(main, ["validate", str(recipe)])
    assert plan.exit_code == 0, plan.output
    assert "schedule.end_epoch, schedule.every and schedule.curve are not read by structured" in plan.output
    assert "schedule.init_sparsity is not read by l1 without target" in plan.output
    assert plan.output.count("not read") == 2  # magnitude reads them all
    result = fast_prune(mlp_checkpoint, recipe, tmp_path / "out", "--arch", "examples.models:mlp")
    assert result.exit_code == 0, result.output
    assert (
        "pruning[0]: schedule.end_epoch, schedule.every and schedule.curve are not read by structured" in result.output
    )
    assert "pruning[1]: schedule.init_sparsity is not read by l1 without target" in result.output


def test_a_teacher_passed_while_distillation_is_off_is_not_dropped_silently():
    """finetune(model, recipe, ..., teacher=dense) with finetune.distill null trained on plain cross-entropy and
    said nothing: the caller believed they distilled. It now warns, pointing at the call."""
    data = _batches()
    model = nn.Sequential()
    model.add_module("a", nn.Linear(8, 3))
    recipe = sparsekit.Recipe(
        finetune={"epochs": 1, "device": "cpu"},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}],
    )
    with pytest.warns(UserWarning, match=r"finetune\.distill is off .*teacher is not used") as caught:
        sparsekit.finetune(model, recipe, data, data[:1], progress=False, teacher=copy.deepcopy(model))
    assert any(w.filename == __file__ for w in caught if "distill" in str(w.message))


def test_api_finetune_without_epochs_calibrates_gradient_methods_as_prune_does():
    """calibration_batches: "training batches whose gradients score the weights when finetune.epochs is 0". sparsekit
    prune does that; sparsekit.finetune(model, recipe with epochs: 0, ...) took no step, so pruner.finalize() failed
    with "gradient criterion got no gradients". It now calibrates on the training loader too."""
    data = _batches(4)
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("a", nn.Linear(8, 3))
    recipe = sparsekit.Recipe(
        finetune={"epochs": 0, "device": "cpu"},
        pruning=[{"method": "gradient", "sparsity": 0.5, "schedule": "oneshot", "calibration_batches": 2}],
    )
    reference = copy.deepcopy(model)
    _, history, pruner = sparsekit.finetune(model, recipe, data, data[:1], progress=False)
    assert history == [] and pruner.step_count == 1
    pruned = pruner.finalize()
    assert sparsekit.sparsity(pruned) == pytest.approx(0.5)
    # the same masks as sparsekit prune's calibration over the same two batches
    ref_pruner = sparsekit.Pruner(reference, recipe, steps_per_epoch=len(data))
    sparsekit.train.calibrate(reference, ref_pruner, data, 2)
    assert torch.equal(pruned.a.weight == 0, ref_pruner.finalize().a.weight == 0)


def test_a_pruner_collected_while_an_optimizer_steps_does_not_break_the_step():
    """Each Pruner watched optimizer steps through torch's global step hooks (learning rates, step order, gradient
    counts) and removed its hook when it was garbage-collected. torch iterates those hooks' OrderedDict while it calls
    them, so a dropped Pruner collected by the cycle GC during another optimizer's step (any allocation in any hook
    can start a collection) made that step raise "RuntimeError: OrderedDict mutated during iteration": seen in a
    sweep that builds Pruners in turn."""
    import gc
    import weakref

    from torch.optim.optimizer import register_optimizer_step_post_hook

    data = _batches(1)
    armed = [False]
    # stands for an allocation inside a step hook that starts the cycle GC; registered before the pruner's hooks
    hook = register_optimizer_step_post_hook(lambda *_: armed[0] and gc.collect())
    enabled = gc.isenabled()
    gc.disable()
    try:

        def dropped() -> weakref.ref:
            model = nn.Sequential(nn.Linear(8, 3))
            recipe = {"pruning": [{"method": "gradient", "sparsity": 0.5, "schedule": {"end_epoch": 1}}]}
            pruner = sparsekit.Pruner(model, {"finetune": {"epochs": 1}, **recipe}, steps_per_epoch=3)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            F.cross_entropy(model(data[0][0]), data[0][1]).backward()
            optimizer.step()
            pruner.step()
            cycle: list = [pruner]
            cycle.append(cycle)  # collected only by the cycle GC
            return weakref.ref(pruner)

        gone = dropped()
        other = nn.Linear(8, 3)
        optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
        other(data[0][0]).sum().backward()
        armed[0] = True
        optimizer.step()  # raised RuntimeError here
        assert gone() is None
    finally:
        hook.remove()
        if enabled:
            gc.enable()
