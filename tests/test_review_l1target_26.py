"""Group L1 with a target in a training loop of one's own (review angle l1target, issue 16): own MLPs and CNNs,
own optimizers, schedulers and param groups; impossible targets, asked vs achieved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import RecipeError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _recipe(target: float, mode: str = "proximal", **extra: object) -> dict:
    entry = {"method": "l1", "mode": mode, "group": "row", "strength": 1e-3, "target": target}
    entry |= {"schedule": {"start_epoch": 0, "end_epoch": 1}, **extra}
    return {"version": 1, "finetune": {"epochs": 1}, "pruning": [entry]}


@pytest.mark.parametrize("mode", ["proximal", "penalty"])
def test_a_target_the_layer_caps_cannot_reach_is_refused_when_the_pruner_is_built(mode: str) -> None:
    """Two hidden layers of 8 units (the head left out) and target 0.95: 15 of 16 units asked, but no layer may have
    more than 0.975 of its units at zero and each keeps one, so 14 at most. The run trained to the end and only then
    warned (TargetMissedWarning, asked 0.950, achieved 0.875), and `validate MODEL` called the recipe fine. It is now
    a RecipeError at once, naming the field, the reachable count and a target that fits."""
    with pytest.raises(RecipeError) as err:
        sparsekit.Pruner(_mlp(), _recipe(0.95, mode), steps_per_epoch=4, context={"input_shape": [1, 10]})
    msg = str(err.value)
    assert msg.startswith("pruning[0].target: 0.95 asks for 15 of the 16 units"), msg
    assert "at most 14 (0.875) can be" in msg and "ask for at most 0.906 (14 of them)" in msg, msg
    # the suggestion is met in full: built, trained and finalized, it reaches it with no warning
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe(0.906, mode), steps_per_epoch=4, context={"input_shape": [1, 10]})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 10)), torch.randint(0, 3, (4,))).backward()
        optimizer.step()
        pruner.step()
    pruner.finalize()
    report = pruner.methods[0].report()
    assert report["achieved"] == 14 / 16 and "reason" not in report, report


def test_a_reachable_target_and_one_another_entry_helps_are_not_refused() -> None:
    """The check leaves alone a target its caps can meet, and one where a structured entry also removes units (they
    count toward the target and may pass l1's cap)."""
    sparsekit.Pruner(_mlp(), _recipe(0.8), steps_per_epoch=4, context={"input_shape": [1, 10]})
    recipe = _recipe(0.95)
    recipe["pruning"].append({"method": "structured", "ratio": 0.5, "round_to": None})
    sparsekit.Pruner(_mlp(), recipe, steps_per_epoch=4, context={"input_shape": [1, 10]})


def test_without_an_input_shape_the_target_is_checked_on_the_first_batch() -> None:
    """A Pruner given no shape builds group lasso again on the first batch (which finds the head it leaves out):
    the unreachable target is refused there, as a RecipeError from that forward pass, not after the run."""
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe(0.95), steps_per_epoch=4)
    with pytest.raises(RecipeError, match=r"pruning\[0\]\.target: 0\.95 asks for 15 of the 16 units"):
        model(torch.randn(4, 10))
    assert not pruner.step_count


def _train_penalty_target(strength: float, epochs: int) -> tuple[dict, dict]:
    """Penalty-mode group L1 with a target, trained by plain SGD in a loop of one's own; (the entry, its report)."""
    model = _mlp()
    recipe = _recipe(0.5, "penalty", strength=strength)
    recipe["finetune"]["epochs"] = epochs
    recipe["pruning"][0]["schedule"]["end_epoch"] = epochs
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=5, context={"input_shape": [1, 10]})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    for _ in range(epochs * 5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.regularize()
        optimizer.step()
        pruner.step()
    pruner.finalize()
    return recipe["pruning"][0], pruner.methods[0].report()


def test_a_penalty_targets_top_up_remark_does_not_advise_what_cannot_help() -> None:
    """In penalty mode every unit of a target is zeroed at end_epoch (a subgradient makes no exact zeros), whatever the
    schedule's length or the strength: the summary's remark said 'a longer schedule or a higher strength lets training
    do it', sending the user to runs that end the same. It now says it is how penalty mode meets a target, and that
    mode: proximal lets training do it."""
    from sparsekit.report import MethodResult, _outcome

    for strength, epochs in ((1e-3, 1), (1e-1, 3)):  # 3x the schedule and 100x the strength: all topped up alike
        entry, report = _train_penalty_target(strength, epochs)
        assert report["topped_up"] == 8 and report["achieved"] == 0.5, report
    result = MethodResult.model_validate({"method": "l1", "layers": ["0", "2"], **report})
    remarks = " ".join(_outcome(0, result, entry, {}, {}).remarks)
    assert "8 units were zeroed at end_epoch" in remarks, remarks
    assert "a longer schedule or a higher strength" not in remarks, remarks
    assert "mode: proximal lets training do it" in remarks, remarks


@pytest.mark.parametrize(
    ("group", "words"), [("row", "the L2 norms of the output units"), ("channel", "of the channels")]
)
def test_validate_describes_a_group_penalty_as_the_sum_of_unit_norms(group: str, words: str) -> None:
    """`sparsekit validate` described penalty-mode group lasso as 'add 0.001 * the L1 norm of the weights of fc1
    (group lasso over each output unit)': the L1 norm is the unstructured penalty, on another scale for one lambda.
    It now names the sum of the units' L2 norms; group: none keeps 'the L1 norm of the weights'."""
    from sparsekit.planning import describe
    from sparsekit.recipe import load_recipe

    recipe = load_recipe(_recipe(0.5, "penalty", group=group))
    text = describe(recipe.pruning[0], ["fc1"])
    assert text.startswith("l1: add 0.001 * the sum of the L2 norms of the "), text
    assert words in text and "the L1 norm of the weights" not in text, text
    plain = describe(load_recipe(_recipe(0.5, "penalty", group="none")).pruning[0], ["fc1"])
    assert plain.startswith("l1: add 0.001 * the L1 norm of the weights of fc1 to the loss"), plain
