"""model.output: which part of a tuple / dict / object output is the logits."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from sparsekit.errors import DataError
from sparsekit.logits import attach, describe, detach, select_logits, selected


class Aux(nn.Module):
    """Logits and an auxiliary head, in the shape `kind` asks for."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)
        self.aux = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        logits, aux = self.head(h), self.aux(h)
        if self.kind == "tuple":
            return logits, aux
        if self.kind == "dict":
            return {"aux": aux, "logits": logits}
        return Out(logits=logits, aux=aux)


@dataclass
class Out:
    logits: torch.Tensor
    aux: torch.Tensor


@pytest.mark.parametrize(("kind", "output"), [("tuple", 0), ("dict", "logits"), ("object", "logits")])
def test_attach_makes_every_call_return_the_named_tensor_and_detach_undoes_it(kind, output):
    torch.manual_seed(0)
    model, x = Aux(kind), torch.randn(4, 8)
    raw = model(x)
    want = model.head(torch.relu(model.fc1(x)))
    attach(model, output)
    assert selected(model) == output
    torch.testing.assert_close(model(x), want)
    torch.testing.assert_close(copy.deepcopy(model)(x), want)  # a copy keeps the selection
    assert list(model.state_dict()) == list(Aux(kind).state_dict())  # names are the model's own
    detach(model)
    assert selected(model) is None and type(model(x)) is type(raw)


def test_attach_again_replaces_the_selection_and_none_removes_it():
    model, x = Aux("tuple"), torch.randn(2, 8)
    attach(model, 0)
    attach(model, 1)
    assert model(x).shape == (2, 2) and len(model._forward_hooks) == 1
    attach(model, None)
    assert isinstance(model(x), tuple) and not model._forward_hooks


@pytest.mark.parametrize(
    ("kind", "fix"),
    [("tuple", "model.output to one of 0, 1"), ("dict", "model.output: logits"), ("object", "model.output: logits")],
)
def test_a_structured_output_without_model_output_names_its_structure_and_the_key_to_set(kind, fix):
    out = Aux(kind)(torch.randn(2, 8))
    with pytest.raises(DataError) as info:
        select_logits(out, None, "m.pt")
    msg = str(info.value)
    assert msg.startswith(f"m.pt returns {describe(out)}, not one tensor of logits: set {fix} in the recipe")
    assert "tensor [2, 3]" in describe(out) and "tensor [2, 2]" in describe(out)


@pytest.mark.parametrize(("kind", "output"), [("tuple", 2), ("tuple", "logits"), ("dict", "logit"), ("dict", 0),
                                              ("object", "scores"), ("object", 0)])  # fmt: skip
def test_a_part_that_does_not_exist_is_refused_naming_the_structure(kind, output):
    out = Aux(kind)(torch.randn(2, 8))
    with pytest.raises(DataError, match=rf"model\.output: {output!r} is not a part of the output: the model returns "):
        select_logits(out, output)


def test_a_part_that_is_not_a_tensor_is_refused():
    with pytest.raises(DataError, match=r"model\.output: 'meta' is a dict\(.*\); it must be a tensor"):
        select_logits({"meta": {"a": torch.zeros(1)}, "logits": torch.zeros(2, 3)}, "meta")


def test_a_misspelt_key_gets_did_you_mean():
    out = {"aux": torch.zeros(2, 3), "logits": torch.zeros(2, 10)}
    with pytest.raises(DataError, match=r"set model\.output: logits \(did you mean 'logits'\?\)$"):
        select_logits(out, "logitz")
