"""Review (alloc, 27): sensitivity analysis and automatic allocation on architectures users bring."""

from __future__ import annotations

import torch
from torch import nn

from sparsekit import load_recipe


class _DictHeads(nn.Module):
    """A multi-task model: the logits under one key, an auxiliary head under another (the run evaluates the logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.head, self.aux = nn.Linear(8, 32), nn.Linear(32, 4), nn.Linear(32, 32)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return {"logits": self.head(h), "aux": self.aux(h)}


def test_an_auto_allocation_says_when_a_head_beside_the_logits_takes_the_sparsity_unmeasured():
    # The aux head runs (so the "did not run" note stayed quiet), but its output is not the evaluated part: every probe
    # changed the loss by exactly 0, and the allocation gave it max_layer_sparsity toward the target without a word.
    from sparsekit.allocation import allocate_with_details, auto_allocate
    from sparsekit.analysis import allocation_summary

    torch.manual_seed(0)
    model, x = _DictHeads(), torch.randn(64, 8)
    rec = load_recipe(
        {"model": {"output": "logits"}, "pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.5}]}
    )
    y = model(x)["logits"].argmax(1)
    _, table = auto_allocate(model, rec, [(x, y)], input_shape=[1, 8], grid={"unstructured": [0.3, 0.6, 0.9]})
    assert table is not None
    _, (info,) = allocate_with_details(model, rec, table, input_shape=[1, 8])
    assert info.values["aux"] > 0.6 > info.values["fc1"]  # the free head took most (what the note explains)
    assert info.note is not None and "'aux'" in info.note and "does not reach the evaluated logits" in info.note
    assert "'fc1'" not in info.note and "'head'" not in info.note and "layers.exclude" in info.note
    line = allocation_summary({"entries": {"0": info.as_dict()}}, warning=False)
    assert "does not reach the evaluated logits" in line


def test_analyze_and_auto_allocate_take_the_logits_the_recipe_names_and_leave_the_model_as_it_was():
    # From Python, a dict model with model.output: logits in the recipe failed the dense evaluation with "set
    # model.output: logits in the recipe", which it had; the CLI attached the selection, the library did not.
    from sparsekit.allocation import auto_allocate

    torch.manual_seed(0)
    model, x = _DictHeads(), torch.randn(64, 8)
    y = model(x)["logits"].argmax(1)
    rec = load_recipe(
        {
            "model": {"output": "logits"},
            "pruning": [
                {"method": "magnitude", "layers": ["fc1", "head"], "sparsity": "auto", "target": 0.5},
                {"method": "structured", "ratio": "auto", "target_macs": 0.6, "round_to": None},
            ],
        }
    )
    allocated, table = auto_allocate(model, rec, [(x, y)], input_shape=[1, 8], grid={"unstructured": [0.3, 0.6]})
    assert table is not None and table.dense_accuracy == 1.0  # the logits' argmax are the labels
    assert set(allocated.pruning[0].layer_sparsity or {}) == {"fc1", "head"}
    assert allocated.pruning[1].layer_ratio
    assert isinstance(model(x), dict)  # the model is not changed: its own output again


class _AuxBranch(nn.Module):
    """The logits through fc2, and an auxiliary branch (aux1 -> aux2) under another key of the output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        self.aux1, self.aux2 = nn.Linear(32, 64), nn.Linear(64, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return {"logits": self.head(torch.relu(self.fc2(h))), "aux": self.aux2(torch.relu(self.aux1(h)))}


def test_a_target_macs_allocation_says_when_a_branch_beside_the_logits_takes_the_channels_unmeasured():
    # target_macs 0.6 was met by emptying the aux branch alone (its channels cost no measured loss; the exported
    # logits-only model.onnx does not compute it), fc1 and fc2 kept whole, and the allocation said nothing.
    from sparsekit.allocation import allocate_with_details, auto_allocate

    torch.manual_seed(0)
    model, x = _AuxBranch(), torch.randn(64, 8)
    y = model(x)["logits"].argmax(1)
    entry = {"method": "structured", "ratio": "auto", "target_macs": 0.6, "round_to": None}
    rec = load_recipe({"model": {"output": "logits"}, "pruning": [entry]})
    _, table = auto_allocate(model, rec, [(x, y)], input_shape=[1, 8], grid={"structured": [0.3, 0.6]})
    assert table is not None
    _, (info,) = allocate_with_details(model, rec, table, input_shape=[1, 8])
    assert info.values["aux1"] > 0.5  # (what the note explains)
    assert info.note is not None and "'aux1'" in info.note and "does not reach the evaluated logits" in info.note
    assert "'fc1'" not in info.note and "pruning[0].layers.exclude" in info.note


class _FrozenFirst(nn.Module):
    """A model with a frozen (requires_grad=False) first layer, as a fine-tuned backbone's stem often is."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(20, 16), nn.Linear(16, 3)
        self.a.requires_grad_(False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_gradient_auto_entry_over_a_frozen_layer_is_refused_before_the_analysis(tmp_path, monkeypatch):
    # The frozen layer was refused only after the whole sensitivity analysis (every layer probed at every value) and
    # the allocation had run; `validate MODEL` refused it up front.
    import numpy as np

    from sparsekit import sensitivity
    from tests.conftest import fast_prune

    def analysed(*args, **kwargs):
        raise AssertionError("the analysis ran before the recipe was refused")

    monkeypatch.setattr(sensitivity, "analyze", analysed)
    torch.manual_seed(0)
    torch.save(_FrozenFirst().state_dict(), tmp_path / "m.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((64, 20)).astype(np.float32), y=rng.integers(0, 3, 64))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"version: 1\nmodel: {{input_shape: [1, 20]}}\ndata: {{source: {tmp_path / 'd.npz'}, batch_size: 32}}\n"
        "finetune: {epochs: 1}\npruning: [{method: gradient, sparsity: auto, target: 0.5, schedule: oneshot}]\n"
        "benchmark: {enabled: false}\n"
    )
    res = fast_prune(tmp_path / "m.pt", recipe, tmp_path / "out", "--arch", "tests.test_review_alloc_27:_FrozenFirst")
    assert res.exit_code == 2, res.output
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"Error: {recipe}: pruning[0] (gradient): layer 'a' is frozen (requires_grad=False)")
    assert "pruning[0].layers.exclude" in line and not (tmp_path / "out").exists()
