"""A training loop of one's own that misuses the Pruner gets told, not a silently wrong result (found by review):
pruner.step() before optimizer.step() or twice per step, gradients zeroed before it, L1 on frozen weights, calls
after finalize(), a state from another run, a torch.compile'd model, a float64 model's export."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import ExportError, TargetError

X = torch.randn(640, 64, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (640,), generator=torch.Generator().manual_seed(1))
BATCHES = [(X[i : i + 64], Y[i : i + 64]) for i in range(0, 640, 64)]  # 10 steps an epoch
GRADUAL = {"method": "magnitude", "sparsity": 0.9, "schedule": {"start_epoch": 0, "end_epoch": 2}}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def recipe(entry: dict, epochs: int = 3) -> dict:
    return {"version": 1, "model": {"input_shape": [1, 64]}, "finetune": {"epochs": epochs}, "pruning": [entry]}


def train(order: str, entry: dict = GRADUAL) -> tuple[list[str], sparsekit.Pruner, nn.Module]:
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    pruner = sparsekit.Pruner(model, recipe(entry), 10)
    loss = nn.CrossEntropyLoss()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, (x, y) in enumerate(BATCHES):
            if order == "skipped":  # GradScaler skipping every other step on an overflow (found by review)
                opt.zero_grad()
                loss(model(x), y).backward()
                if i % 2:
                    opt.step()
                else:  # what GradScaler.unscale_() leaves when it finds an overflow
                    model[0].weight.grad[0, 0] = float("inf")
                pruner.step()
            elif order == "per_micro_batch":  # accumulating gradients, pruner.step() after each micro-batch
                for part in (slice(0, 32), slice(32, 64)):
                    loss(model(x[part]), y[part]).backward()
                    if part.start:
                        opt.step()
                    pruner.step()
                opt.zero_grad()
            elif order == "before":
                opt.zero_grad()
                loss(model(x), y).backward()
                pruner.step()
                opt.step()
            elif order == "twice":
                opt.zero_grad()
                loss(model(x), y).backward()
                opt.step()
                pruner.step()
                pruner.step()
            elif order == "zero_grad_between":  # zero_grad after the optimizer step, before pruner.step(): fine
                loss(model(x), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=False)
                pruner.step()
            elif order == "accumulate":  # two micro-batches, one optimizer step, one pruner step: fine
                for part in (slice(0, 32), slice(32, 64)):
                    loss(model(x[part]), y[part]).backward()
                opt.step()
                pruner.step()
                opt.zero_grad()
            else:
                opt.zero_grad()
                loss(model(x), y).backward()
                opt.step()
                pruner.step()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)], pruner, model


@pytest.mark.parametrize(
    ("order", "needle"),
    [
        ("before", "ran before optimizer.step() in 8 of its first 8"),
        ("twice", "with no optimizer step since"),
        ("per_micro_batch", "when accumulating gradients, after the optimizer.step()"),
    ],
)
def test_pruner_step_in_the_wrong_place_is_warned(order, needle):
    # before: the masks were applied, then Adam moved the zeros, so sparsity() read 0.0 all along (0.088 where the
    # right order gives 0.831); twice: the schedule ran twice as fast. Neither said anything.
    said, _, _ = train(order)
    assert [m for m in said if needle in m], said


@pytest.mark.parametrize("order", ["right", "zero_grad_between", "accumulate", "skipped"])
def test_a_loop_in_the_right_order_is_not_warned(order):
    said, pruner, model = train(order)
    assert not [m for m in said if "pruner.step() ran" in m], said
    assert pruner._order is None  # the optimizer hook is gone after the first steps
    assert sparsekit.sparsity(model) > 0.5


def test_a_gradient_criterion_on_zeroed_gradients_waits_instead_of_pruning_by_position():
    # zero_grad(set_to_none=False) before pruner.step(): the taylor sums were all zero, and the "ranking" kept the
    # last weights of layer 0 by position (118 of 128 rows gone), with no word.
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    taylor = {
        "method": "gradient",
        "criterion": "taylor",
        "sparsity": 0.8,
        "schedule": {"start_epoch": 0, "end_epoch": 1},
    }
    pruner = sparsekit.Pruner(model, recipe(taylor), 10)
    with pytest.warns(UserWarning, match="had no gradient \\(or only zero ones\\)"):
        for x, y in BATCHES:
            opt.zero_grad(set_to_none=False)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
            pruner.step()
    assert sparsekit.sparsity(model) == 0.0  # nothing pruned on scores that say nothing
    with pytest.raises(TargetError, match="only zero ones"):
        pruner.finalize()


def test_l1_on_a_frozen_layer_is_refused_naming_it():
    # proximal mode shrank the frozen weights by the recipe's fallback rate (all 8,192 moved); penalty mode did
    # nothing to them, silently.
    model = mlp()
    model[0].weight.requires_grad_(False)
    by_two = {"start_epoch": 0, "end_epoch": 2}
    for extra in ({"mode": "proximal"}, {"target": 0.3, "schedule": by_two}):  # a target zeroes its weakest units
        with pytest.raises(TargetError, match="'0' is frozen.*layers.exclude"):
            sparsekit.Pruner(model, recipe({"method": "l1", "strength": 1e-2, **extra}), 10)
    # a plain penalty leaves it be (no gradient reaches it): allowed, as before
    assert list(sparsekit.Pruner(model, recipe({"method": "l1", "strength": 1e-2}), 10).methods[0].layers) == ["0", "2"]
    entry = {"method": "l1", "strength": 1e-2, "mode": "proximal", "layers": {"exclude": ["0"]}}
    assert list(sparsekit.Pruner(model, recipe(entry), 10).methods[0].layers) == ["2"]


@pytest.mark.parametrize("extra", [{}, {"group": "row", "remove_dead": False}, {"target": 0.5}])
def test_l1_proximal_leaves_a_layer_frozen_during_training_as_it_is(extra):
    # (found by review) a layer frozen after the Pruner was built (requires_grad=False, e.g. a backbone frozen after
    # an epoch): the optimizer no longer stepped it, but the proximal step kept shrinking and zeroing it
    model = mlp()
    schedule = {"schedule": {"start_epoch": 0, "end_epoch": 2}} if "target" in extra else {}
    entry = {"method": "l1", "strength": 5e-3, "mode": "proximal", **extra, **schedule}
    pruner = sparsekit.Pruner(model, recipe(entry), 10)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    frozen = None
    for epoch in range(3):
        if epoch == 1:
            model[0].requires_grad_(False)
            model[0].weight.grad = model[0].bias.grad = None
            frozen = model[0].weight.detach().clone()
        for x, y in BATCHES:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            pruner.step()
    assert frozen is not None and torch.equal(model[0].weight, frozen)


def test_every_call_after_finalize_and_a_state_of_another_run_are_refused():
    _, pruner, _ = train("right")
    state = pruner.state_dict()
    with pytest.raises(ValueError, match="steps_per_epoch=10, this Pruner has 5"):
        sparsekit.Pruner(mlp(), recipe(GRADUAL), 5).load_state_dict(state)
    with pytest.raises(ValueError, match="another pruning section"):
        sparsekit.Pruner(mlp(), recipe({**GRADUAL, "sparsity": 0.5}), 10).load_state_dict(state)
    again = sparsekit.Pruner(mlp(), recipe(GRADUAL), 10)
    again.load_state_dict(state)
    assert again.step_count == 10 and all(torch.equal(again.masks()[n], m) for n, m in pruner.masks().items())
    opt = torch.optim.SGD(pruner.model.parameters(), 0.1)
    pruner.finalize()
    calls = (
        pruner.state_dict,
        pruner.masks,
        lambda: pruner.load_state_dict(state),
        lambda: pruner.update_optimizer(opt),
    )
    for call in calls:  # (masks() answered {} there: the masks are baked, not gone)
        with pytest.raises(RuntimeError, match="after finalize"):
            call()
    with pytest.raises(TypeError, match="must be a number"):
        sparsekit.Pruner(mlp(), recipe(GRADUAL), 10).step(lr="0.01")


def test_a_model_whose_child_is_called_module_is_not_taken_for_a_wrapper():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module, self.head = nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.module(x)))

    pruner = sparsekit.Pruner(Net(), recipe({"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}), 10)
    assert pruner.summary()[0]["layers"] == ["module", "head"] and pruner.average_grads

    class Only(nn.Module):  # found by review: its only child called "module" was still taken for a wrapper
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": ["module.0"]}
    assert sparsekit.Pruner(Only(), recipe(entry), 10).summary()[0]["layers"] == ["module.0"]


def test_a_model_in_torch_compile_is_pruned_by_its_own_layer_names():
    # Layers were "_orig_mod.0" and "_orig_mod.2": a recipe written for the model matched nothing.
    compiled = torch.compile(mlp())
    entry = {"method": "magnitude", "sparsity": 0.8, "schedule": "oneshot", "layers": {"exclude": ["2"]}}
    pruner = sparsekit.Pruner(compiled, recipe(entry), 10)
    assert pruner.summary()[0]["layers"] == ["0"] and pruner.average_grads
    pruner.step()
    model = pruner.finalize()
    assert isinstance(model, nn.Sequential) and int((model[0].weight == 0).sum()) == round(0.8 * 64 * 128)


def test_a_state_of_another_model_or_recipe_length_is_a_value_error_naming_it():
    # (found by review) a KeyError of the layer's bare name, and "zip() argument 2 is shorter than argument 1"
    _, pruner, _ = train("right")
    state = pruner.state_dict()
    other = {**state, "masks": {"nope": torch.ones(2, dtype=torch.bool)}}
    with pytest.raises(ValueError, match="masks for 'nope'"):
        sparsekit.Pruner(mlp(), recipe(GRADUAL), 10).load_state_dict(other)
    with pytest.raises(ValueError, match="0 method states.*1 pruning entries"):
        sparsekit.Pruner(mlp(), recipe(GRADUAL), 10).load_state_dict({**state, "methods": []})


def test_a_model_in_torch_compile_exports_as_the_model_inside(tmp_path):
    # (found by review) save_model, sparsity and the Pruner unwrap torch.compile; export_onnx raised
    # "exporter='dynamo' failed (exporter='torchscript' may succeed): ... mismatch between ... dynamic_shapes"
    model = mlp()
    info = sparsekit.export_onnx(torch.compile(model), tmp_path / "c.onnx", input_shape=(1, 64))
    assert info["parity"]["ok"]


def test_a_float64_model_export_says_to_export_a_float32_one(tmp_path):
    with pytest.raises(ExportError, match=r"parameters are float64.*model\.float\(\)"):
        sparsekit.export_onnx(mlp().double(), tmp_path / "d.onnx", input_shape=(1, 64))


def test_a_layer_frozen_mid_training_is_named_as_frozen_not_as_a_call_order_mistake():
    # A gradient entry whose layer was frozen during training warned "call it after loss.backward() ..." and
    # failed at finalize with the same loop advice; the cause was the frozen layer.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    spec = {"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "scope": "layer"}
    entry = {**spec, "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 1}}
    pruner = sparsekit.Pruner(model, {"version": 1, "finetune": {"epochs": 3}, "pruning": [entry]}, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    caught = []
    for step in range(12):
        if step == 4:
            model[0].weight.requires_grad_(False)
            model[0].weight.grad = None
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            pruner.step()
        caught += [str(w.message) for w in got]
    (said,) = [w for w in caught if "should update the masks" in w]
    assert "layer '0' is frozen (requires_grad=False)" in said and "loss.backward()" not in said
    with pytest.raises(TargetError, match=r"layer '0', frozen \(requires_grad=False\).*layers\.exclude"):
        pruner.finalize()
