"""Mends from the seventh new-user review (own architectures): frozen layers, attention, aux heads, weight_norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit


def _structured(shape: list[int]) -> sparsekit.Recipe:
    spec = {"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot"}
    return sparsekit.Recipe(**{"model": {"input_shape": shape}, "pruning": [spec]})


class FrozenStem(nn.Module):
    """A transfer-learning MLP whose first layer is frozen (``requires_grad=False``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.fc = nn.Linear(32, 16)
        self.head = nn.Linear(16, 5)
        self.stem.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc(F.relu(self.stem(x)))))


class FrozenBranch(nn.Module):
    """A trainable and a frozen Linear of the input, added: their output channels go together."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(16, 32)
        self.fc = nn.Linear(32, 16)
        self.head = nn.Linear(16, 5)
        self.b.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc(F.relu(self.a(x) + self.b(x)))))


def test_a_frozen_first_layer_loses_its_channels_like_any_other():
    # The trace followed autograd only: a frozen layer fed by the input had no grad_fn, was left whole and was
    # reported as "not reached by the forward pass" (a frozen layer further in was pruned).
    torch.manual_seed(0)
    model = FrozenStem()
    pruner = sparsekit.Pruner(model, _structured([1, 16]), steps_per_epoch=1)
    pruner.step()
    report = pruner.methods[0].report()
    assert report["per_layer"]["stem"] == {"asked": 0.5, "achieved": 0.5, "reason": None}
    model = pruner.finalize()
    assert model.stem.out_features == 16 and model(torch.rand(2, 16)).shape == (2, 5)


def test_a_frozen_branch_added_to_a_trainable_one_shrinks_with_it():
    # The frozen branch was not traced, so the add did not couple it: removing a's channels broke the forward pass
    # (TargetError "the size of tensor a (16) must match the size of tensor b (32)") mid-training.
    torch.manual_seed(0)
    model = FrozenBranch()
    pruner = sparsekit.Pruner(model, _structured([1, 16]), steps_per_epoch=1)
    pruner.step()
    model = pruner.finalize()
    assert model.a.out_features == model.b.out_features == 16
    assert model(torch.rand(2, 16)).shape == (2, 5)


def test_a_frozen_layer_stays_frozen_after_its_channels_are_removed():
    # torch-pruning gives a pruned layer new nn.Parameters, trainable by default: the frozen layer was then trained.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    model[2].requires_grad_(False)
    pruner = sparsekit.Pruner(model, _structured([1, 16]), steps_per_epoch=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.step()
    assert pruner.structure_changed and model[2].out_features == 16
    optimizer = pruner.update_optimizer(optimizer)
    assert not model[2].weight.requires_grad and not model[2].bias.requires_grad
    before = model[2].weight.detach().clone()
    optimizer.zero_grad()
    F.cross_entropy(model(torch.rand(8, 16)), torch.arange(8) % 5).backward()
    optimizer.step()
    assert torch.equal(model[2].weight, before)


class Attention(nn.Module):
    """8 tokens of 8 features: an embedding Linear, nn.MultiheadAttention (batch first) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], 8, 8))
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


def test_the_out_proj_of_multihead_attention_counts_its_macs():
    # MultiheadAttention applies out_proj's weight without calling the Linear, so its forward hook never ran: the layer
    # was listed with 0 MACs ("never reached") in inspect, report.json and MACs targets.
    from sparsekit.stats import layer_macs

    macs = layer_macs(Attention(), [1, 64])
    # (its packed q/k/v projection under the attention's own name: test_review_archs_21)
    assert macs == {"embed": 8 * 8 * 16, "attn.out_proj": 8 * 16 * 16, "attn": 3 * 8 * 16 * 16, "head": 16 * 5}


class DictHeads(nn.Module):
    """``{"logits": ..., "aux": ...}``: two heads on one trunk."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)
        self.aux = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.relu(self.trunk(x))
        return {"logits": self.head(h), "aux": self.aux(h)}


def test_a_pruned_head_left_out_of_a_logits_export_is_not_a_lost_zero(tmp_path):
    # With model.output selecting the logits, the aux head is not in the graph: its zeros were reported lost
    # ("zeros kept in ONNX: NO" in every such prune report), and exporter auto fell back to the slow dynamo exporter.
    from sparsekit.logits import attach

    torch.manual_seed(0)
    model = attach(DictHeads(), "logits")
    with torch.no_grad():
        for layer in (model.trunk, model.aux):
            layer.weight[:, ::2] = 0
    info = sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 16))
    assert info["zeros"]["zeros_ok"], info["zeros"]
    assert info["exporter"] == "torchscript" and info["parity"]["ok"]
    rows = {row["name"]: row for row in info["zeros"]["layers"]}
    assert rows["trunk.weight"]["onnx_zeros"] == 128 and rows["aux.weight"]["onnx_name"] is None


def test_a_weight_normed_layer_is_not_called_a_lazy_module():
    # A weight_norm'd conv was "not initialized yet (a lazy module): run one forward pass", which no forward pass
    # changes, and naming it in layers.include said only that it matched no layer.
    from sparsekit.layers import unselected_layers

    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv1d(1, 4, 3)), nn.Flatten(), nn.Linear(24, 5))
    reason = {row["name"]: row["reason"] for row in unselected_layers(model)}["0"]
    assert "weight_norm" in reason and "lazy" not in reason
    with pytest.raises(sparsekit.TargetError, match=r"'0' is a ParametrizedConv1d: .*remove_parametrizations"):
        spec = {"method": "magnitude", "sparsity": 0.5, "layers": ["0"]}
        sparsekit.Pruner(model, {"pruning": [spec]}, steps_per_epoch=1)
    lazy = {row["name"]: row["reason"] for row in unselected_layers(nn.Sequential(nn.LazyLinear(4)))}["0"]
    assert "lazy module" in lazy


def test_taylor_importance_names_a_frozen_layer_as_frozen():
    # A frozen layer gets no gradient: the error said to add fine-tuning epochs or call loss.backward(), which the
    # loop did; leaving the frozen layer out is what works.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    model[2].requires_grad_(False)
    spec = {"method": "structured", "ratio": 0.5, "importance": "taylor", "round_to": None, "steps": 1}
    recipe = {"model": {"input_shape": [1, 16]}, "finetune": {"epochs": 1}, "pruning": [{**spec, "layers": ["*"]}]}
    frozen = r"'2' is frozen \(requires_grad=False\).*pruning\[0\]\.layers\.exclude"
    for exclude, error in (([], frozen), (["2"], None)):
        torch.manual_seed(0)
        recipe["pruning"][0]["layers"] = {"exclude": exclude}
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        optimizer.zero_grad()
        F.cross_entropy(model(torch.rand(8, 16)), torch.arange(8) % 5).backward()
        optimizer.step()
        if error:
            with pytest.raises(sparsekit.TargetError, match=error):
                pruner.step()
        else:
            pruner.step()
            assert model[0].out_features == 16
