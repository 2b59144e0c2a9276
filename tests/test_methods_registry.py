"""The method contract: one registry, names that agree with the recipe schema, every declared attribute,
and methods that report what they did instead of changing the Pruner."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, get_args

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import methods, recipe, tp_adapter
from sparsekit.errors import RecipeError
from sparsekit.methods import REGISTRY, Changes, Method, Setup
from sparsekit.methods.gradient import CRITERIA


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


SHAPE = [1, 1, 4, 4]
ONE_OF_EACH: dict[str, dict[str, Any]] = {
    "magnitude": {"method": "magnitude", "sparsity": 0.5, "layers": {"include": ["fc1"]}},
    "gradient": {"method": "gradient", "sparsity": 0.5, "layers": {"include": ["fc2"]}},
    "l1": {"method": "l1", "strength": 1e-4, "layers": {"include": ["fc1"]}, "group": "row"},
    "max_norm": {"method": "max_norm", "max_value": 3.0},
    "structured": {"method": "structured", "ratio": 0.5, "layers": {"include": ["conv"]}},
}


def _literal(spec_class: type, field: str) -> tuple[str, ...]:
    return get_args(spec_class.model_fields[field].annotation)


def test_registry_and_recipe_schema_name_the_same_methods_in_the_same_order():
    assert tuple(REGISTRY) == recipe.METHOD_NAMES == methods.METHOD_NAMES
    assert set(ONE_OF_EACH) == set(REGISTRY)  # this file builds every method
    for spec_class in recipe.METHOD_SPECS:
        (name,) = _literal(spec_class, "method")
        assert REGISTRY[name].name == name  # type: ignore[attr-defined]


def test_criteria_names_agree_with_the_schema():
    assert set(CRITERIA) == set(_literal(recipe.GradientSpec, "criterion"))
    assert _literal(recipe.StructuredSpec, "importance") == tp_adapter.IMPORTANCE_NAMES


def test_unknown_method_names_every_registered_one():
    with pytest.raises(RecipeError, match="unknown method 'nope'") as err:
        methods.build(type("Spec", (), {"method": "nope"})(), Net(), Setup(index=3, steps_per_epoch=1))
    assert "pruning[3]" in str(err.value) and all(repr(n) in str(err.value) for n in REGISTRY)
    with pytest.raises(RecipeError) as err2:
        recipe.validate_recipe({"pruning": [{"method": "nope"}]})
    assert all(repr(n) in str(err2.value) for n in REGISTRY)


def _protocol_members() -> tuple[list[str], list[str]]:
    attributes = list(Method.__annotations__)
    hooks = [n for n, v in vars(Method).items() if callable(v) and not n.startswith("_")]
    return attributes, hooks


def _pruner(names: list[str], **kw: Any) -> sparsekit.Pruner:
    r = sparsekit.Recipe(model={"input_shape": SHAPE}, finetune={"epochs": 1}, pruning=[ONE_OF_EACH[n] for n in names])
    return sparsekit.Pruner(Net(), r, steps_per_epoch=2, **kw)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_declares_every_attribute_and_hook_of_the_protocol(name):
    attributes, hooks = _protocol_members()
    assert set(attributes) == {
        "name",
        "layers",
        "masks_weights",
        "needs_grad",
        "structural",
        "touched",
        "zeroes_weights",
    }
    assert {"start", "penalty", "after_step", "finalize", "targets", "report", "state_dict"} <= set(hooks)
    method = _pruner([name]).methods[0]
    for attribute in attributes:
        assert hasattr(method, attribute), f"{name} lacks {attribute}"
    assert isinstance(method.layers, dict) and isinstance(method.touched, list)
    assert all(
        isinstance(getattr(method, a), bool) for a in ("masks_weights", "needs_grad", "structural", "zeroes_weights")
    )
    assert method.touched == [] or method.structural  # only a structural method changes shapes in training
    for hook in hooks:
        assert callable(getattr(method, hook)), f"{name} lacks {hook}()"
    assert isinstance(method.report(), dict)


@pytest.mark.parametrize("names", [["magnitude", "l1"], ["gradient", "max_norm", "structured"]])
def test_methods_never_receive_the_pruner(names):
    pruner = _pruner(names)
    assert "pruner" not in pruner.context
    for method in pruner.methods:
        for value in vars(method).values():
            assert value is not pruner
            if isinstance(value, dict):
                assert all(v is not pruner for v in value.values())
    assert "pruner" not in set(Setup.__dataclass_fields__)


def test_what_after_step_returns_is_what_the_pruner_records():
    pruner = _pruner(["magnitude"])
    entry = ["fc1", True, [0]]
    returned = iter([methods.UNCHANGED, Changes(history=(entry,), structure_changed=True)])
    pruner.methods[0].after_step = lambda step: next(returned)  # type: ignore[method-assign]
    pruner.step()
    assert pruner.pruning_history == [] and not pruner.structure_changed
    pruner.step()
    assert pruner.pruning_history == [entry] and pruner.structure_changed


def test_structured_after_step_returns_its_removals_and_the_pruner_records_them():
    r = sparsekit.Recipe(
        model={"input_shape": SHAPE},
        finetune={"epochs": 2},
        pruning=[{**ONE_OF_EACH["structured"], "steps": 2, "schedule": {"start_epoch": 0, "end_epoch": 2}}],
    )
    pruner = sparsekit.Pruner(Net(), r, steps_per_epoch=2)
    method = pruner.methods[0]
    seen: list[Changes] = []
    real = method.after_step
    method.after_step = lambda step: seen.append(real(step)) or seen[-1]  # type: ignore[method-assign]
    pruner.step()  # event 1 is due at step 0: runs at the first step
    assert seen[0].structure_changed and seen[0].history and pruner.structure_changed
    assert pruner.pruning_history == list(seen[0].history)
    pruner.structure_changed = False
    for _ in range(3):
        pruner.step()
    assert [c.structure_changed for c in seen] == [True, True, False, False]  # events at steps 1 and 2
    assert pruner.pruning_history == [e for c in seen for e in c.history]
    assert pruner.model.conv.out_channels == 4
    _, changes = method.finalize(pruner.model)
    assert changes == methods.UNCHANGED  # both events ran: finalize has nothing left


def test_l1_finalize_returns_the_dead_unit_removal_history():
    pruner = _pruner(["l1"])
    with torch.no_grad():
        pruner.model.fc1.weight[[2, 5]] = 0.0
    model, changes = pruner.methods[0].finalize(pruner.model)
    assert changes.structure_changed and changes.history == (["fc1", True, [2, 5]],)
    assert model.fc1.out_features == 14
    assert pruner.pruning_history == []  # the method did not touch the pruner


def test_pruner_finalize_records_l1_history():
    pruner = _pruner(["l1"])
    with torch.no_grad():
        pruner.model.fc1.weight[[2, 5]] = 0.0
    pruner.finalize()
    assert pruner.pruning_history == [["fc1", True, [2, 5]]] and pruner.structure_changed


def test_importing_the_recipe_schema_imports_no_torch_and_the_pruner_no_torch_pruning():
    code = (
        "import sys, sparsekit.recipe; assert 'torch' not in sys.modules, 'torch'; "
        "import sparsekit.pruner, sparsekit.methods, sparsekit.surgery; "
        "assert 'torch_pruning' not in sys.modules, 'torch_pruning'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
