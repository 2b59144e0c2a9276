"""finetune.distill: Hinton et al. (2015) knowledge distillation from the frozen dense model."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import assert_bad_input
from torch import nn

import sparsekit
import sparsekit.train as train_mod
from examples.models import mlp
from sparsekit.cli import main
from sparsekit.recipe import DistillSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(distill: dict[str, Any] | None, *, epochs: int = 3, pruning: list | None = None, sgd: bool = False) -> Any:
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.0} if sgd else {"name": "adam", "lr": 0.01}
    if pruning is None:
        schedule = {"start_epoch": 0, "end_epoch": 2, "every": 0.5}
        pruning = [{"method": "magnitude", "sparsity": 0.6, "schedule": schedule, "layers": {"exclude": ["fc3"]}}]
    return sparsekit.Recipe(
        finetune={
            "epochs": epochs,
            "optimizer": optimizer,
            "lr_schedule": {"name": "cosine"},
            "distill": distill,
            "device": "cpu",
        },
        pruning=pruning,
    )


def _data(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(n)]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp()


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weight_zero_trains_bit_identically_to_no_distillation():
    data = _data()
    plain, h_plain, _ = sparsekit.finetune(_model(), _recipe(None), data, data[:1], progress=False)
    zero, h_zero, _ = sparsekit.finetune(
        _model(), _recipe({"weight": 0.0, "temperature": 3.0}), data, data[:1], progress=False
    )
    assert h_zero == h_plain  # losses, accuracies, sparsity: exactly
    assert _same(plain, zero)


def test_weight_one_gradient_is_the_hand_computed_kd_loss():
    """One SGD step (no momentum) with weight 1 moves the weights by -lr x the gradient of
    T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean, written out by hand."""
    data = _data(1)
    teacher = _model(seed=1)  # another network: identical logits would give a zero gradient
    student = _model(seed=0)
    before = copy.deepcopy(student)
    T = 3.0
    r = _recipe({"weight": 1.0, "temperature": T}, epochs=1, pruning=[], sgd=True)
    trained, _, _ = sparsekit.finetune(student, r, data, data, progress=False, teacher=teacher)

    x, _y = data[0]
    hand = copy.deepcopy(before)
    p_t = torch.softmax(teacher(x).detach() / T, dim=1)
    log_p_s = torch.log_softmax(hand(x) / T, dim=1)
    kd = T * T * (p_t * (torch.log(p_t) - log_p_s)).sum(dim=1).mean()
    kd.backward()
    for (name, p0), p1 in zip(hand.named_parameters(), trained.parameters(), strict=True):
        assert p0.grad is not None and float(p0.grad.abs().max()) > 0, name
        torch.testing.assert_close(p1.detach(), (p0 - 0.1 * p0.grad).detach(), rtol=1e-5, atol=1e-6, msg=name)
    # ... and the helper itself is that loss.
    assert float(train_mod.distillation_loss(before(x), teacher(x), T)) == pytest.approx(float(kd), rel=1e-4, abs=1e-6)


def test_train_loss_mixes_cross_entropy_and_kd():
    x, y = _data(1)[0]
    student, teacher = _model(0), _model(1)
    spec = DistillSpec(weight=0.3, temperature=2.0)
    got = train_mod._train_loss(student, x, y, teacher, spec)
    s, t = student(x), teacher(x)
    want = 0.7 * F.cross_entropy(s, y) + 0.3 * train_mod.distillation_loss(s, t, 2.0)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(train_mod.distillation_loss(s, s.detach(), 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_is_frozen_and_never_updated():
    data = _data()
    teacher = _model(seed=5)
    teacher.train()
    kept = copy.deepcopy(teacher)
    sparsekit.finetune(
        _model(), _recipe({"weight": 0.5, "temperature": 2.0}), data, data[:1], progress=False, teacher=teacher
    )
    assert _same(teacher, kept)
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_default_teacher_is_the_dense_model_as_passed(monkeypatch):
    """teacher=None: a frozen copy of the model taken before pruning; the caller's model is the student."""
    seen: list[nn.Module] = []
    real = train_mod._train_loss

    def spy(model, x, y, teacher, distill):
        seen.append(teacher)
        return real(model, x, y, teacher, distill)

    monkeypatch.setattr(train_mod, "_train_loss", spy)
    data = _data()
    dense = _model()
    snapshot = copy.deepcopy(dense)
    sparsekit.finetune(dense, _recipe({"weight": 0.5, "temperature": 2.0}), data, data[:1], progress=False)
    teacher = seen[0]
    assert all(t is teacher for t in seen) and teacher is not dense
    assert _same(teacher, snapshot)  # the dense weights, not the pruned ones
    assert all(not p.requires_grad for p in teacher.parameters())


def test_a_pruner_that_already_pruned_needs_an_explicit_teacher():
    data = _data()
    model = _model()
    r = _recipe(
        {"weight": 0.5, "temperature": 2.0}, pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}]
    )
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=len(data))
    with pytest.raises(ValueError, match="teacher="):
        sparsekit.finetune(model, r, data, data[:1], pruner=pruner, progress=False)
    with pytest.raises(ValueError, match="copy of the dense model"):
        sparsekit.finetune(model, r, data, data[:1], pruner=pruner, progress=False, teacher=model)


def test_resume_with_distillation_is_bit_identical(tmp_path):
    data = _data()
    r = _recipe({"weight": 0.7, "temperature": 4.0})
    straight, history, _ = sparsekit.finetune(_model(), r, data, data[:1], progress=False)

    def stop(row: dict[str, Any]) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sparsekit.finetune(_model(), r, data, data[:1], progress=False, checkpoint_dir=tmp_path, on_epoch=stop)
    # The resumed run gets the dense model again (as the CLI reloads it from the model file): the
    # teacher is the dense model, and the checkpoint puts the student back where it was.
    resumed, resumed_history, _ = sparsekit.finetune(
        _model(), r, data, data[:1], progress=False, checkpoint_dir=tmp_path, resume=True
    )
    assert resumed_history == history
    assert _same(straight, resumed)


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ("{weight: 1.5, temperature: 2}", "finetune.distill.weight", "<= 1"),
        ("{weight: -0.1}", "finetune.distill.weight", ">= 0"),
        ("{weight: 0.5, temperature: 0}", "finetune.distill.temperature", "> 0"),
        ("{weight: 0.5, temperature: .nan}", "finetune.distill.temperature", "finite"),
        ("{weight: 0.5, temp: 2}", "finetune.distill.temp", "unknown key"),
        ("{weight: true}", "finetune.distill.weight", "true/false"),
        ("0.5", "finetune.distill", "{weight, temperature}"),
    ],
)
def test_bad_distill_values_name_the_field(value, field, message):
    with pytest.raises(sparsekit.RecipeError) as err:
        sparsekit.load_recipe("lenet-gradual-magnitude-90", overrides=[f"finetune.distill={value}"])
    assert f"{field}:" in str(err.value) and message in str(err.value), str(err.value)
    result = CliRunner().invoke(main, ["validate", "lenet-gradual-magnitude-90", "--set", f"finetune.distill={value}"])
    assert_bad_input(result, field)


def test_distill_defaults_and_null():
    r = sparsekit.load_recipe("lenet-gradual-magnitude-90", overrides=["finetune.distill={}"])
    assert r.finetune.distill == DistillSpec(weight=0.5, temperature=2.0)
    assert (
        sparsekit.load_recipe("lenet-gradual-magnitude-90", overrides=["finetune.distill=null"]).finetune.distill
        is None
    )


def test_prune_distils_from_the_dense_model_even_with_a_one_shot_schedule(tmp_path, mlp_checkpoint):
    # One shot prunes when the Pruner is built: the CLI must copy the teacher before that.
    from click.testing import CliRunner

    from sparsekit.cli import main
    from tests.conftest import FAST

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1, distill: {weight: 0.5, temperature: 2}}\n"
        "pruning: [{method: magnitude, sparsity: 0.8, schedule: oneshot, layers: {exclude: [fc3]}}]\n"
    )
    args = [str(mlp_checkpoint), "--arch", "examples.models:mlp", str(recipe), "-o", str(tmp_path / "o"), *FAST]
    result = CliRunner().invoke(main, ["prune", *args])
    assert result.exit_code == 0, result.output
    assert "Distilled from the dense model (weight 0.5, temperature 2)" in (tmp_path / "o" / "report.md").read_text()
