"""Review (Python API, modern PyTorch habits): a user's own loop with its own model changes, optimizers and copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


RECIPE = {
    "version": 1,
    "finetune": {"epochs": 2},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
}


def _train(model: nn.Module, pruner: sparsekit.Pruner, steps: int = 4) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
        optimizer.step()
        pruner.step()


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.__setitem__(2, nn.Linear(32, 32)), "now holds another module there"),
        (lambda m: nn.utils.parametrizations.weight_norm(m[2]), "weight is now computed in the forward pass"),
        (lambda m: nn.utils.spectral_norm(m[2]), "torch.nn.utils.remove_spectral_norm(layer)"),
    ],
    ids=["replaced", "parametrized", "old-spectral-norm"],
)
def test_a_pruned_layer_changed_after_the_pruner_was_built_is_refused_not_trained_dense(change, words):
    # A layer replaced (a new head, a conv+bn fusion) or given a weight_norm / spectral_norm after Pruner(model, ...)
    # carries no mask the model's forward sees: it trained dense while finalize() reported the old module's zeros
    # (the replaced layer without even a missed-target warning).
    model = _mlp()
    pruner = sparsekit.Pruner(model, RECIPE, steps_per_epoch=4)
    change(model)
    with pytest.raises(sparsekit.TargetError, match="pruning\\[0\\] \\(magnitude\\) prunes layer '2'") as caught:
        _train(model, pruner, steps=1)
    assert words in str(caught.value)
    assert "pruning[0].layers.exclude" in str(caught.value)


def test_a_layer_replaced_late_in_the_run_is_refused_at_finalize():
    model = _mlp()
    pruner = sparsekit.Pruner(model, RECIPE, steps_per_epoch=4)
    _train(model, pruner, steps=8)
    model[4] = nn.Linear(32, 4)
    with pytest.raises(sparsekit.TargetError, match="pruner.finalize\\(\\): .*'4'.*another module"):
        pruner.finalize()


def test_changes_that_keep_the_layers_pass_the_check():
    # .to(dtype) keeps the module objects (and their parameter objects): no false alarm, and the zeros hold.
    model = _mlp()
    pruner = sparsekit.Pruner(model, RECIPE, steps_per_epoch=4)
    model.double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(8):
        optimizer.zero_grad()
        nn.functional.cross_entropy(
            model(torch.randn(8, 16, dtype=torch.float64)), torch.randint(0, 4, (8,))
        ).backward()
        optimizer.step()
        pruner.step()
    final = pruner.finalize()
    assert sparsekit.sparsity(final) == pytest.approx(0.5, abs=0.01)


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    )


STRUCTURED = {
    "version": 1,
    "finetune": {"epochs": 2},
    "pruning": [{"method": "structured", "ratio": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
}


@pytest.mark.parametrize("habit", ["compile", "autocast"])
def test_the_build_on_the_first_batch_runs_outside_the_users_compile_and_autocast(habit, monkeypatch):
    # A Pruner without an input shape builds its methods in a hook on the model's first forward. In a torch.compile'd
    # model dynamo traced that whole build (torch-pruning's graph and probes: ~40 s on a small CNN, with its
    # warnings); under autocast the traces and probes ran in bf16.
    from sparsekit.pruner import Pruner

    seen: list[tuple[bool, bool]] = []
    build = Pruner._build

    def spy(self, *args, **kwargs):
        seen.append((torch.compiler.is_compiling(), torch.is_autocast_enabled("cpu")))
        return build(self, *args, **kwargs)

    monkeypatch.setattr(Pruner, "_build", spy)
    model = _cnn()
    run = torch.compile(model, backend="eager") if habit == "compile" else model
    pruner = sparsekit.Pruner(run, STRUCTURED, steps_per_epoch=4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=habit == "autocast"):
        run(torch.randn(2, 3, 8, 8))
    assert seen == [(False, False)]
    assert pruner.context["input_shape"] == [1, 3, 8, 8]


def test_a_compiled_optimizer_step_drives_the_pruner():
    # PyTorch's "compile the optimizer" recipe: torch calls the global step post-hooks sparsekit watches optimizers
    # with inside the traced step. Traced, they broke pruner.step() ("Linear.forward() missing 1 required positional
    # argument"); eager, the proximal shrink reads each param group's rate (0 for the first layer: left as it was).
    model = _mlp()
    recipe = {
        "version": 1,
        "finetune": {"epochs": 1},
        "pruning": [{"method": "l1", "strength": 0.5, "mode": "proximal", "remove_dead": False}],
    }
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    first = [*model[0].parameters()]
    rest = [p for p in model.parameters() if all(p is not q for q in first)]
    optimizer = torch.optim.SGD([{"params": first, "lr": 0.0}, {"params": rest, "lr": 0.1}])

    @torch.compile(backend="eager")
    def optimizer_step() -> None:
        optimizer.step()

    before = model[0].weight.detach().clone()
    for _ in range(4):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
        optimizer_step()
        pruner.step()
    assert torch.equal(model[0].weight.detach(), before)
    assert float((model[2].weight == 0).float().mean()) > 0.5


def test_pickling_a_pruner_says_to_save_its_state_dict_and_deepcopy_still_works():
    import copy
    import io
    import pickle

    model = _mlp()
    pruner = sparsekit.Pruner(model, RECIPE, steps_per_epoch=4)
    _train(model, pruner, steps=4)
    for dump in (pickle.dumps, lambda p: torch.save(p, io.BytesIO())):
        with pytest.raises(TypeError, match="cannot be pickled.*pruner.state_dict\\(\\).*load_state_dict"):
            dump(pruner)
    twin = copy.deepcopy(pruner)
    assert twin.model is not pruner.model and twin.step_count == pruner.step_count == 4
    assert all(torch.equal(twin.masks()[n], mask) for n, mask in pruner.masks().items())


def test_writing_an_ema_copy_whose_masked_weights_are_not_zero_is_warned(tmp_path):
    # An EMA (AveragedModel deep-copies the model, mask buffers and all) is never masked by the Pruner: its averaged
    # weights at pruned positions decay towards zero without reaching it, and export_onnx / save_model wrote it dense
    # without a word. The model finalize() returned is written without the warning.
    import warnings

    model = _mlp()
    pruner = sparsekit.Pruner(model, RECIPE, steps_per_epoch=4)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(8):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
        optimizer.step()
        pruner.step()
        ema.update_parameters(model)
    final = pruner.finalize()
    with pytest.warns(UserWarning, match="mask whose pruned weights are not zero \\('0': [1-9].*AveragedModel"):
        sparsekit.export_onnx(ema.module, tmp_path / "ema.onnx", input_shape=[1, 16], exporter="torchscript")
    with pytest.warns(UserWarning, match="save_model.*'module.2': [1-9]"):
        sparsekit.save_model(ema, tmp_path / "ema.pt", factory="pkg.mod:build")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*sparsekit mask")
        sparsekit.save_model(final, tmp_path / "final.pt", factory="pkg.mod:build")


def test_a_resume_that_skips_update_optimizer_is_told_load_state_dict_removed_the_channels():
    # The warning said "channels were removed at the previous step", which no step of the resumed loop did.
    model = _cnn()
    pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=2, context={"input_shape": [1, 3, 8, 8]})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 4, (4,))).backward()
        optimizer.step()
        pruner.step()
        if pruner.structure_changed:
            optimizer = pruner.update_optimizer(optimizer)
    assert pruner.pruning_history
    fresh = _cnn()
    stale = torch.optim.SGD(fresh.parameters(), lr=0.1)
    resumed = sparsekit.Pruner(fresh, STRUCTURED, steps_per_epoch=2, context={"input_shape": [1, 3, 8, 8]})
    resumed.load_state_dict(pruner.state_dict())
    fresh.load_state_dict(model.state_dict())
    stale.step()
    with pytest.warns(UserWarning, match="load_state_dict\\(\\) removed the run's channels again.*before optimizer"):
        resumed.step()
