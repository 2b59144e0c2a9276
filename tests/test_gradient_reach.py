"""A gradient entry's layer that the loss never reaches (a second head that model.output leaves out, an unused
module, a frozen layer) is refused before any training, naming the layer and the fix. Before, its scores never
existed, the entry's mask updates waited through the whole fine-tuning with every layer unpruned, and the run
failed at the end with advice for a user's own loop."""

from __future__ import annotations

import textwrap

import pytest
import torch
from conftest import assert_bad_input, fast_prune, user_module
from torch import nn

import sparsekit
from sparsekit.errors import TargetError
from sparsekit.logits import attach
from sparsekit.rehearsal import rehearse

MODELS = textwrap.dedent("""
    import torch.nn as nn


    class TwoHeads(nn.Module):
        \"\"\"Returns (class logits, an auxiliary output): with model.output 0 the loss never reaches aux.\"\"\"

        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 32)
            self.cls = nn.Linear(32, 10)
            self.aux = nn.Linear(32, 3)

        def forward(self, x):
            h = self.fc1(x).relu()
            return self.cls(h), self.aux(h)


    def two_heads():
        return TwoHeads()
""")


@pytest.fixture
def heads_mod(tmp_path, monkeypatch):
    return user_module(tmp_path, monkeypatch, "reachnets", MODELS)


def recipe(**entry) -> dict:
    spec = {"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "scope": "layer", "schedule": "oneshot"}
    return {"version": 1, "model": {"input_shape": [1, 64]}, "finetune": {"epochs": 1}, "pruning": [{**spec, **entry}]}


def test_a_head_the_logits_leave_out_is_named_before_training(heads_mod):
    model = attach(heads_mod.two_heads(), 0)
    with pytest.raises(TargetError, match=r"pruning\[0\] \(gradient\): layer 'aux' gets no gradient") as err:
        rehearse(model, recipe(), [1, 64], steps_per_epoch=4)
    assert "'fc1'" not in str(err.value) and "'cls'" not in str(err.value)
    assert "add it to pruning[0].layers.exclude" in str(err.value)
    # The fix it names works: the run's gradients reach every layer left.
    rehearse(model, recipe(layers={"exclude": ["aux"]}), [1, 64], steps_per_epoch=4)
    # Selecting the other output leaves cls out instead.
    with pytest.raises(TargetError, match="layer 'cls' gets no gradient"):
        rehearse(attach(heads_mod.two_heads(), 1), recipe(), [1, 64], steps_per_epoch=4)


def test_a_frozen_layer_is_named_as_frozen_and_a_plain_model_passes():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    rehearse(model, recipe(), [1, 64], steps_per_epoch=4)  # every layer reached: no error
    model[2].weight.requires_grad_(False)
    with pytest.raises(TargetError, match=r"layer '2' is frozen \(requires_grad=False\)"):
        rehearse(model, recipe(), [1, 64], steps_per_epoch=4)
    assert all(p.grad is None for p in model.parameters())  # the check ran on a copy


def test_the_cli_refuses_it_before_training_with_one_error_line(tmp_path, heads_mod):
    model_path = tmp_path / "heads.pt"
    torch.save(heads_mod.two_heads().state_dict(), model_path)
    body = (
        "version: 1\nmodel: {input_shape: [1, 64], output: 0}\ndata: {source: digits, batch_size: 64}\n"
        "finetune: {epochs: 2, max_steps_per_epoch: 3}\nbenchmark: {enabled: false}\n"
        "pruning:\n  - {method: gradient, criterion: taylor, sparsity: 0.5, scope: layer, "
        "schedule: {start_epoch: 0, end_epoch: 1}%s}\n"
    )
    refused = tmp_path / "r.yaml"
    refused.write_text(body % "")
    out = tmp_path / "out"
    arch = ("--arch", "reachnets:two_heads")
    result = fast_prune(model_path, refused, out, *arch)
    assert_bad_input(result, "layer 'aux' gets no gradient from the model's output", "pruning[0].layers.exclude")
    assert "epoch" not in result.stderr.lower().split("error:")[0]  # refused before the first epoch
    assert not out.exists()
    kept = tmp_path / "k.yaml"
    kept.write_text(body % ", layers: {exclude: [aux]}")
    result = fast_prune(model_path, kept, out, *arch)
    assert result.exit_code == 0, result.output + result.stderr
    pruned = sparsekit.load_model(out / "model.pt", arch="reachnets:two_heads")
    assert float((pruned.fc1.weight == 0).float().mean()) == pytest.approx(0.5, abs=1 / 64)


def test_several_unreached_layers_are_named_in_the_plural():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    model[0].weight.requires_grad_(False)
    model[2].weight.requires_grad_(False)
    with pytest.raises(TargetError) as err:
        rehearse(model, recipe(), [1, 64], steps_per_epoch=4)
    message = str(err.value)
    assert "layers '0', '2' are frozen (requires_grad=False), so their scores never exist" in message
    assert "add them to pruning[0].layers.exclude" in message
