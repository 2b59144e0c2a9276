"""The torch-pruning adapter: everything it uses exists in the installed torch-pruning, and it is the
only module that uses torch-pruning. A torch-pruning upgrade that renames or drops any of it fails here."""

from __future__ import annotations

import ast
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
        "Node": graph.module2node[model.conv],
        "GroupItem": group[0],
        "Dependency": group[0].dep,
        "Pruner": graph.get_pruner_of_module(model.conv),
    }
    assert set(objects) == set(tpa.TP_INSTANCE_ATTRIBUTES)
    for kind, names in tpa.TP_INSTANCE_ATTRIBUTES.items():
        for name in names:
            assert hasattr(objects[kind], name), f"torch-pruning {tp.__version__}: {kind} has no {name}"


def test_torch_pruning_guard_is_its_own_and_refuses_emptying_a_layer():
    model = Net()
    pruner = _channel_pruner(model)
    assert "check_pruning_group" not in vars(pruner.graph)  # never patched
    graph = pruner.graph
    assert tpa.guard(graph, tpa.channel_group(graph, model.conv, [0, 1]))
    assert not tpa.guard(graph, tpa.channel_group(graph, model.conv, range(6)))


class ViewNet(nn.Module):
    """Linear(16, 128) viewed as 8 channels of 4x4 feeding a ConvTranspose2d: 16 Linear outputs land in
    one input channel of the ConvTranspose2d."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 128)
        self.up = nn.ConvTranspose2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.fc(x)).view(x.shape[0], -1, 4, 4)).mean((1, 2, 3))


def test_each_member_lists_its_channels_once():
    # Without it tp subtracts every listing from the ConvTranspose2d's channel count (8 - 3 = 5 with one
    # channel gone from the weight): the layer's count and its weight disagree.
    model = ViewNet()
    graph = surgery.build_graph(model, [1, 16])
    group = tpa.channel_group(graph, model.fc, [0, 1, 2])
    members = {m.module: m for m in tpa.group_members(graph, group)}
    assert members[model.fc].idxs == list(range(16))  # tp widens the root to the whole block
    assert members[model.up].idxs == [0] and members[model.up].channels == 8
    assert members[model.up].op == "ConvTranspose2d" and any(m.op == "_ReshapeOp" for m in members.values())
    tpa.prune(group)
    assert model.up.in_channels == model.up.weight.shape[0] == 7 and model.fc.out_features == 112
    assert model(torch.randn(2, 16)).shape == (2,)


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
    imp = pruner.estimate(groups[0])
    assert imp is not None and imp.shape == (6,)
    proposed = list(pruner.step())
    assert pruner.steps_done == 1 and len(proposed) == 1
    proposal = proposed[0]
    assert proposal.root is model.conv and len(proposal.idxs) == 3 and all(len(u) == 1 for u in proposal.units)
    units = [u[0] for u in proposal.units]
    assert [float(imp[i]) for i in units] == sorted(float(imp[i]) for i in units)  # least important first
    assert pruner.scope_channels == {"conv": 6}  # sized at the first step
    group = pruner.group(proposal, [0])
    assert tpa.group_members(pruner.graph, group)[0].idxs == [0]
    assert list(pruner.step()) == []  # past the last step: nothing more
    pruner.scope_channels = {"x": 5}
    pruner.steps_done = 0
    assert pruner.scope_channels == {"x": 5} and pruner.steps_done == 0


def test_channel_pruner_reports_a_group_it_cannot_rank():
    model = Net()
    pruner = _channel_pruner(model)

    def broken(group: object) -> torch.Tensor:
        raise IndexError("index 8 is out of bounds")

    pruner._importance = broken
    try:
        list(pruner.step())
    except tpa.GroupFailure as err:
        assert err.root is model.conv and isinstance(err.error, IndexError)
    else:
        raise AssertionError("GroupFailure not raised")


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
