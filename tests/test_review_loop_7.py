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
