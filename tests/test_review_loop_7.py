"""Review 7: an integrator's own training loop and trainers, on scenarios the other tests leave out."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_load_best_model_at_end_keeps_the_masks_the_best_checkpoint_was_evaluated_with(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from examples.models import mlp
    from sparsekit.integrations.transformers import SparsekitTrainerCallback
    from tests.test_integrations_transformers import Classifier, Digits, make_args, recipe

    torch.manual_seed(0)
    model = Classifier(mlp(64, (32,), 10))
    magnitude = {"method": "magnitude", "sparsity": 0.9, "layers": {"include": ["fc1"]}}
    pruning = SparsekitTrainerCallback(
        recipe({**magnitude, "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 0.25}}, epochs=3), submodule="net"
    )
    seen = {}

    class Best(transformers.TrainerCallback):
        """Runs before SparsekitTrainerCallback's on_train_end: the weights the Trainer loaded as the best."""

        def on_train_end(self, args, state, control, **kwargs):
            seen["weight"] = pruning.pruner.model.fc1.weight.detach().clone()
            seen["checkpoint"] = state.best_model_checkpoint

    args = make_args(
        tmp_path,
        num_train_epochs=3,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,  # the highest loss: the first epoch's checkpoint, pruned less than the last step
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Digits(), eval_dataset=Digits(64), callbacks=[Best(), pruning]
    )
    with pytest.warns(UserWarning, match="load_best_model_at_end loaded .*checkpoint-8"):
        trainer.train()
    assert seen["checkpoint"].endswith("checkpoint-8") and trainer.state.global_step == 24
    saved = torch.load(tmp_path / "checkpoint-8" / "pruner.pt", weights_only=True)["pruner"]
    # The pruned model is the best checkpoint as it was evaluated: its weights, its masks (no weight zeroed by the
    # later masks, which that model never trained or was evaluated with).
    assert torch.equal(pruning.model.fc1.weight, seen["weight"])
    assert torch.equal(pruning.model.fc1.weight != 0, saved["masks"]["fc1"])


@pytest.mark.parametrize("kind", ["numpy float32", "the optimizer's tensor lr"])
def test_step_takes_a_numpy_or_tensor_learning_rate_for_the_proximal_shrink(kind):
    import numpy as np

    import sparsekit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    l1 = {"method": "l1", "mode": "proximal", "group": "none", "strength": 0.01, "layers": {"include": ["0"]}}
    l1["schedule"] = {"start_epoch": 0, "end_epoch": 1}
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [l1]}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.5))
    before = model[0].weight.detach().clone()
    lr = np.float32(2.0) if kind == "numpy float32" else optimizer.param_groups[0]["lr"]
    for _ in range(4):  # the schedule's steps: the shrinks owed are paid by its end
        pruner.step(lr=lr)  # was a TypeError "must be a number (a float)" for both
    expected = before.sign() * (before.abs() - 4 * float(lr) * 0.01).clamp(min=0)
    assert torch.allclose(model[0].weight, expected, atol=1e-7)
    with pytest.raises(TypeError, match="must be a number"):
        pruner.step(lr=torch.tensor([0.1, 0.2]))


def _structured_run(steps_taken: int) -> tuple[list[str], int]:
    """An own loop over a 4-event structured schedule (events after steps 0-3) that stops after ``steps_taken``
    steps, then finalizes: the warnings raised there and conv1's channels."""
    import warnings

    import sparsekit
    from examples.models import small_cnn

    torch.manual_seed(0)
    model = small_cnn(width=8, image_size=8)
    spec = {"method": "structured", "ratio": 0.5, "round_to": 1, "steps": 4, "schedule": {"start_epoch": 0,
            "end_epoch": 2}}  # fmt: skip
    recipe = sparsekit.Recipe(model={"input_shape": [1, 1, 8, 8]}, finetune={"epochs": 2}, pruning=[spec])
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
    for _ in range(steps_taken):
        pruner.step()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        final = pruner.finalize()
    return [str(w.message) for w in seen], final.conv1.out_channels


def test_structured_removals_left_to_finalize_by_a_loop_that_stopped_early_are_warned():
    messages, kept = _structured_run(1)  # step 1 runs the events due after steps 0 and 1: two of four
    assert kept == 4  # the recipe's shape is reached all the same
    late = [m for m in messages if "removal events" in m]
    assert len(late) == 1 and "pruning[0] (structured)" in late[0] and "2 of its 4 removal events" in late[0]
    assert "no fine-tuning after" in late[0]
    # the whole schedule trained, or a one-shot finalize with no step (epochs: 0): nothing to warn about
    for steps in (4, 0):
        messages, kept = _structured_run(steps)
        assert kept == 4 and not [m for m in messages if "removal events" in m]
