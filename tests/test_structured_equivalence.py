"""Structured pruning gives the original model with the removed channels left unread, or refuses (review finding:
through a ShuffleNet channel shuffle or ``x.flip(1)`` torch-pruning mapped a consumer's input channels by index,
and the pruned model, which ran, exported and matched its own ONNX, was not the original with those channels
removed: max output difference 0.04-0.07 where ~1e-7 is expected)."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_bad_input, fast_prune, user_module
from torch import nn

import sparsekit
from sparsekit.errors import TargetError

pytestmark = pytest.mark.usefixtures("one_thread")

IMG = [1, 1, 8, 8]

# The two reordering models, as a user's module file (the CLI test imports it by --arch; the API tests too).
MODELS = textwrap.dedent("""
    import torch.nn as nn
    import torch.nn.functional as F


    class Shuffle(nn.Module):
        \"\"\"ShuffleNet: a grouped 1x1 conv, then a channel shuffle before the next conv.\"\"\"

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 32, 1, groups=4)
            self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            n, c, h, w = x.shape
            x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
            x = F.relu(self.conv3(x))
            return self.fc(x.mean((2, 3)))


    class Flip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x)).flip(1)
            x = F.relu(self.conv2(x))
            return self.fc(x.mean((2, 3)))


    def shuffle():
        return Shuffle()


    def flip():
        return Flip()
""")

# (factory, the layer whose output channels pass through the reordering)
REORDERING = [("shuffle", "conv2"), ("flip", "conv1")]


@pytest.fixture
def reorder_mod(tmp_path, monkeypatch):
    return user_module(tmp_path, monkeypatch, "reordernets", MODELS)


def entry(**kw) -> dict:
    return {"method": "structured", "ratio": 0.5, "importance": "l1", "round_to": None, "schedule": "oneshot", **kw}


def recipe(**kw) -> dict:
    return {"version": 1, "model": {"input_shape": IMG}, "finetune": {"epochs": 1}, "pruning": [entry(**kw)]}


def prune_now(model: nn.Module, rec: dict) -> tuple[nn.Module, list]:
    """The recipe's single removal event, weights untouched otherwise: (pruned model, pruning history)."""
    pruner = sparsekit.Pruner(model, rec, steps_per_epoch=1)
    pruner.step()
    history = list(pruner.pruning_history)
    return pruner.finalize().eval(), history


@pytest.mark.parametrize(("factory", "layer"), REORDERING)
def test_channels_through_a_shuffle_or_flip_are_refused_naming_the_layer(reorder_mod, factory, layer):
    torch.manual_seed(0)
    model = getattr(reorder_mod, factory)()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TargetError) as err:
        sparsekit.Pruner(model, recipe(), steps_per_epoch=1)
    text = str(err.value)
    assert f"pruning[0]: cannot remove output channels of {layer!r}" in text
    assert "reorders or mixes channels" in text and "maps by index" in text
    assert f"add {layer!r} to pruning[0].ignore (keep the head 'fc' there too)" in text
    # the check worked on copies: the user's model is as it was, in its own mode
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# With the reordering layer in ignore: the layers still pruned, and the consumer each one's channels reach unreordered.
CONSUMERS = {"shuffle": {"conv1": "conv2", "conv3": "fc"}, "flip": {"conv2": "fc"}}


def ignoring_consumers(model: nn.Module, zero: dict[str, list[int]]) -> nn.Module:
    """``model`` (eval mode) whose layers named in ``zero`` read zeros on those input channels (features)."""
    modules = dict(model.named_modules())
    for name, idxs in zero.items():
        modules[name].register_forward_pre_hook(lambda m, a, idxs=idxs: (a[0].index_fill(1, torch.tensor(idxs), 0),))
    return model.eval()


@pytest.mark.parametrize(("factory", "layer"), REORDERING)
def test_with_the_layer_in_ignore_the_recipe_prunes_the_others_correctly(reorder_mod, factory, layer):
    torch.manual_seed(0)
    model = getattr(reorder_mod, factory)()
    dense = copy.deepcopy(model)
    pruned, history = prune_now(model, recipe(ignore=[layer, "fc"]))
    removed = {name: idxs for name, out, idxs in history if out}
    assert set(removed) == set(CONSUMERS[factory])
    reference = ignoring_consumers(dense, {CONSUMERS[factory][root]: idxs for root, idxs in removed.items()})
    x = torch.randn(4, *IMG[1:])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), atol=1e-5, rtol=1e-5)


def test_the_cli_refuses_it_with_one_error_line_and_prunes_with_the_layer_ignored(tmp_path, reorder_mod):
    model_path = tmp_path / "shuffle.pt"
    torch.save(reorder_mod.shuffle().state_dict(), model_path)
    body = (
        "version: 1\nmodel: {input_shape: [1, 1, 8, 8]}\ndata: {source: digits, batch_size: 64}\n"
        "finetune: {epochs: 1, max_steps_per_epoch: 3}\nbenchmark: {enabled: false}\n"
        "pruning:\n  - {method: structured, ratio: 0.5, round_to: null, schedule: oneshot, layers: [conv1, conv2]%s}\n"
    )
    refused = tmp_path / "r.yaml"
    refused.write_text(body % "")
    out = tmp_path / "out"
    arch = ("--arch", "reordernets:shuffle")
    result = fast_prune(model_path, refused, out, *arch)
    line = assert_bad_input(result, "cannot remove output channels of 'conv2'", "reorders", "pruning[0].ignore")
    assert "'conv1'" not in line.split("ignore")[0]  # conv1's channels reach conv2 unreordered: not named
    assert not out.exists()
    kept = tmp_path / "k.yaml"
    kept.write_text(body % ", ignore: [conv2, fc]")
    result = fast_prune(model_path, kept, out, *arch)
    assert result.exit_code == 0, result.output + result.stderr
    pruned = sparsekit.load_model(out / "model.pt", arch="reordernets:shuffle")
    assert pruned.conv1.out_channels == 16 and pruned.conv2.out_channels == 32


class Mixed(nn.Module):
    """Residual add, depthwise-separable block, sigmoid gate and skip concat, with BatchNorm (biases: a removed
    channel of a producer is not zero downstream) and dropout (the comparison runs in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv_a = nn.Conv2d(16, 16, 3, padding=1)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.gate = nn.Conv2d(16, 16, 1)
        self.mix = nn.Conv2d(32, 16, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.bn(self.stem(x)))
        s = F.relu(s + self.conv_b(F.relu(self.conv_a(s))))  # residual: stem and conv_b coupled
        v = self.pw(F.relu(self.dw(s))) * torch.sigmoid(self.gate(s))  # gated: pw and gate coupled
        m = F.relu(self.mix(torch.cat([v, s], 1)))  # concat: mix's inputs 0-15 are v, 16-31 are s
        return self.fc(self.drop(F.adaptive_avg_pool2d(m, 2).flatten(1)))


def test_a_residual_concat_depthwise_gated_model_passes_and_is_the_dense_one_with_consumers_ignoring_channels():
    torch.manual_seed(0)
    model = Mixed()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.bias.uniform_(-1, 1)
    dense = copy.deepcopy(model).eval()
    pruned, history = prune_now(model, recipe(ignore=["fc", "mix"]))
    removed = {name: idxs for name, out, idxs in history if out}
    # the groups' roots, whichever of the coupled layers tp names
    s_cut = removed.get("stem", removed.get("conv_b"))
    a_cut = removed["conv_a"]
    v_cut = removed.get("pw", removed.get("gate"))
    assert s_cut and a_cut and v_cut and pruned.stem.out_channels == 8 and pruned.pw.out_channels == 8
    # Every consumer ignores the removed channels, derived by hand from the wiring (not from torch-pruning).
    zero = {
        "conv_a": s_cut,
        "dw": s_cut,
        "pw": s_cut,
        "gate": s_cut,
        "conv_b": a_cut,
        "mix": sorted([*v_cut, *(16 + i for i in s_cut)]),
    }
    reference = ignoring_consumers(dense, zero)
    x = torch.randn(4, *IMG[1:])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), atol=1e-5, rtol=1e-5)


def test_the_probe_finds_the_layer_and_leaves_correct_ones_alone(reorder_mod):
    from sparsekit import equivalence

    torch.manual_seed(0)
    found = equivalence.mismatched_roots(reorder_mod.shuffle(), IMG, {"conv1": (32, 4), "conv2": (32, 4)})
    assert found is not None and found.roots == ["conv2"] and found.max_abs_diff > 1e-3
    assert equivalence.mismatched_roots(Mixed(), IMG, {"stem": (16, 1), "conv_a": (16, 1), "pw": (16, 1)}) is None
    # an asymmetric choice, the same in every channel block: a symmetric one would hide a flip
    probe = equivalence.probe_channels(32, 4)
    assert probe is not None and len(probe) == 16
    blocks = [[i % 8 for i in probe if i // 8 == b] for b in range(4)]
    assert all(b == blocks[0] for b in blocks) and sorted(31 - i for i in probe) != probe


class Normed(nn.Module):
    """LayerNorm, GroupNorm and F.normalize over the removed channels (their statistics change; the wiring does not),
    a squeeze-excitation gate, an LSTM and attention (not probed: narrower heads compute something else)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 32, 3, padding=1)
        self.gn = nn.GroupNorm(4, 32)
        self.se1, self.se2 = nn.Linear(32, 8), nn.Linear(8, 32)
        self.proj = nn.Linear(32, 32)
        self.ln = nn.LayerNorm(32)
        self.rnn = nn.LSTM(32, 24, batch_first=True)
        self.att = nn.MultiheadAttention(24, 4, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.gn(self.conv(x)))  # [N, 32, L]
        h = h * torch.sigmoid(self.se2(F.relu(self.se1(h.mean(-1)))))[:, :, None]
        h = self.ln(F.relu(self.proj(F.normalize(h, dim=1).transpose(1, 2))))  # [N, L, 32]
        h = self.rnn(h)[0]
        return self.head(self.att(h, h, h)[0].mean(1))


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        ("examples.models:resnet_small", [1, 1, 28, 28]),
        ("examples.models:mobilenetv2_small", [1, 1, 28, 28]),
        ("examples.models:small_cnn", [1, 1, 28, 28]),
        ("mixed", IMG),
        ("normed", [1, 4, 16]),
    ],
)
def test_no_false_alarm_and_the_probe_really_compares(build, shape, monkeypatch):
    from sparsekit import equivalence

    if build == "mixed":
        model = Mixed()
    elif build == "normed":
        model = Normed()
    else:
        import importlib

        module, name = build.split(":")
        model = getattr(importlib.import_module(module), name)()
    verdicts = []
    real = equivalence._Probe.run
    monkeypatch.setattr(equivalence._Probe, "run", lambda self, sets: verdicts.append(real(self, sets)) or verdicts[-1])
    rec = {**recipe(), "model": {"input_shape": shape}}
    sparsekit.Pruner(model, rec, steps_per_epoch=1)
    assert [v[0] for v in verdicts] == ["ok"] and verdicts[0][1] < 1e-5 * verdicts[0][2]
