"""The torch-pruning adapter: everything it uses exists in the installed torch-pruning, and it is the
only module that uses torch-pruning. A torch-pruning upgrade that renames or drops any of it fails here."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

import sparsekit
from sparsekit import surgery
from sparsekit import tp_adapter as tpa


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


SHAPE = [1, 1, 5, 5]


def _resolve(path: str) -> object:
    obj: object = tp
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_torch_pruning_attribute_the_adapter_names_exists():
    missing = []
    for path in tpa.TP_ATTRIBUTES:
        try:
            _resolve(path)
        except AttributeError:
            missing.append(path)
    assert not missing, f"torch-pruning {tp.__version__} lacks {missing}: update sparsekit/tp_adapter.py"


def _channel_pruner(model: nn.Module) -> tpa.ChannelPruner:
    with surgery.traced(model):
        return tpa.ChannelPruner(
            model,
            surgery.example_input(model, SHAPE),
            importance=tpa.importance("l2"),
            global_pruning=False,
            ratio=0.5,
            steps=1,
            ignored=[model.fc],
            root_types=[nn.Conv2d, nn.Linear],
        )


def test_instance_attributes_the_adapter_reads_exist():
    model = Net()
    pruner = _channel_pruner(model)
    graph = pruner.graph
    group = tpa.channel_group(graph, model.conv, [0])
    objects = {
        "DependencyGraph": graph,
        "BasePruner": pruner._pruner,
        "Node": graph.module2node[model.conv],
        "GroupItem": group[0],
        "Dependency": group[0].dep,
        "Pruner": graph.get_pruner_of_module(model.conv),
    }
    assert set(objects) == set(tpa.TP_INSTANCE_ATTRIBUTES)
    for kind, names in tpa.TP_INSTANCE_ATTRIBUTES.items():
        for name in names:
            assert hasattr(objects[kind], name), f"torch-pruning {tp.__version__}: {kind} has no {name}"


def test_the_check_the_adapter_replaces_is_still_the_one_tp_consults():
    # ChannelPruner replaces DependencyGraph.check_pruning_group on its graph; should tp stop calling
    # it, groups at their floor would be handled differently (see methods/structured.py).
    assert "check_pruning_group" in inspect.getsource(tp.pruner.BasePruner)
    pruner = _channel_pruner(Net())
    assert pruner.graph.check_pruning_group(None) is True


def test_adapter_functions_on_a_small_model():
    model = Net()
    graph = surgery.build_graph(model, SHAPE)
    assert tpa.in_graph(graph, model.conv) and tpa.can_prune(graph, model.conv)
    assert tpa.out_channels(graph, model.conv) == 6 and tpa.in_channels(graph, model.fc) == 6
    assert tpa.sole_consumer(graph, model.conv) is model.bn
    group = tpa.channel_group(graph, model.conv, [1, 4])
    assert tpa.group_root(group) is model.conv
    assert {model.conv, model.bn, model.fc} <= set(tpa.group_modules(group))
    members = {m.module: m for m in tpa.group_members(graph, group)}
    assert members[model.conv].out_channels and members[model.conv].idxs == [1, 4]
    assert not members[model.fc].out_channels and not members[model.fc].is_model_output
    tpa.prune(group)
    assert model.conv.out_channels == 4 and model.fc.in_features == 4
    assert surgery.normalize_history(tpa.pruning_history(graph)) == [["conv", True, [1, 4]]]


def test_channel_pruner_handles():
    model = Net()
    pruner = _channel_pruner(model)
    assert pruner.steps_done == 0 and pruner.scope_channels == {}
    groups = pruner.groups()
    assert [tpa.group_root(g) for g in groups] == [model.conv]
    assert pruner.channel_groups(groups[0]) == 1
    assert pruner.estimate(groups[0]).shape == (6,)
    proposed = list(pruner.step())
    assert pruner.steps_done == 1 and len(pruner.root_idxs(proposed[0])) == 3
    assert pruner.scope_channels  # sized at the first step
    regrouped = pruner.regroup(proposed[0], [0])
    assert pruner.root_idxs(regrouped) == [0]
    pruner.scope_channels = {"x": 5}
    pruner.steps_done = 0
    assert pruner.scope_channels == {"x": 5} and pruner.steps_done == 0


def test_importances():
    assert tpa.IMPORTANCE_NAMES == ("l1", "l2", "taylor", "bn_scale")
    for name in tpa.IMPORTANCE_NAMES:
        assert tpa.is_importance(tpa.importance(name))
    assert tpa.reads_grad(tpa.importance("taylor")) and not tpa.reads_grad(tpa.importance("l1"))
    assert tpa.is_bn_scale(tpa.importance("bn_scale")) and not tpa.is_bn_scale(tpa.importance("l2"))

    def mine(group: object) -> torch.Tensor:
        return torch.zeros(1)

    assert not tpa.is_importance(mine) and not tpa.reads_grad(mine)
    mine.needs_grad = True  # type: ignore[attr-defined]
    assert tpa.reads_grad(mine)


def test_no_other_module_imports_torch_pruning():
    root = Path(sparsekit.__file__).parent
    users = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "torch_pruning" or n.startswith("torch_pruning.") for n in names):
                users.append(path.relative_to(root).as_posix())
    assert users == ["tp_adapter.py"]
