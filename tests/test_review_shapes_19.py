"""Mends from the nineteenth review, on input shapes sparsekit must find itself (from the user's batches, from a
data file's samples) and on the words of refusals that concern several layers at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import TargetError


class Sig(nn.Module):
    """A 1-D signal classifier: [n, 1, L] -> Conv1d x2 -> mean over time -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv1d(1, 16, 3, padding=1), nn.Conv1d(16, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(-1))


class Tokens(nn.Module):
    """Token ids [n, T] -> Embedding -> mean -> MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.l1, self.l2 = nn.Embedding(50, 16), nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(self.emb(x).mean(1))))


STRUCTURED = {"pruning": [{"method": "structured", "ratio": 0.5}]}


@pytest.mark.parametrize(
    ("build", "batch", "kept", "shape"),
    [
        (Sig, lambda: torch.randn(6, 1, 20), lambda m: m.c1.out_channels, [1, 1, 20]),
        (Tokens, lambda: torch.randint(0, 50, (6, 12)), lambda m: m.l1.out_features, [1, 12]),
    ],
)
def test_pruner_takes_the_input_shape_from_the_first_batch(build, batch, kept, shape):
    torch.manual_seed(0)
    model = build()
    pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=2)  # was a TargetError asking for input_shape
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = batch()
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        pruner.step()
        if pruner.structure_changed:
            opt = pruner.update_optimizer(opt)
    final = pruner.finalize()
    assert pruner.context["input_shape"] == shape
    assert kept(final) == 8 if build is Sig else kept(final) == 16
    assert final(x).shape == (6, 4)


def test_pruner_before_any_batch_names_what_it_lacks():
    model = Sig()
    pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=1)
    with pytest.raises(TargetError, match=r"pruner\.finalize\(\): .*first batch.*model\.input_shape"):
        pruner.finalize()
    with torch.no_grad():  # an evaluation first: the shape is taken all the same
        model(torch.randn(2, 1, 16))
    assert pruner.summary() == [{"method": "structured", "layers": ["c1", "c2"]}]
    assert pruner.finalize().c1.out_channels == 8


def test_explicit_input_shape_still_comes_first():
    model = Sig()
    pruner = sparsekit.Pruner(model, STRUCTURED, steps_per_epoch=1, context={"input_shape": [1, 1, 32]})
    assert pruner.summary()  # built at once
    model(torch.randn(2, 1, 16))
    assert pruner.context["input_shape"] == [1, 1, 32]


class HeadFirst(nn.Module):
    """The head registered before the layer it follows: a shape guessed from the first Linear ([1, 32]) is wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.body = nn.Linear(32, 3), nn.Linear(12, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def test_l1_remove_dead_traces_with_the_first_batch_shape():
    import warnings

    model = HeadFirst()
    entry = {"method": "l1", "strength": 1e-3, "group": "row", "remove_dead": True}
    pruner = sparsekit.Pruner(model, {"finetune": {"epochs": 1}, "pruning": [entry]}, steps_per_epoch=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 12)).sum().backward()
        opt.step()
        pruner.step()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*remove_dead: skipped")  # was skipped: [1, 32] fails
        pruner.finalize()
    assert pruner.methods[0].input_shape == [1, 12]


NETS = """from torch import nn


def c1():
    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))


def c2():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
"""


@pytest.mark.parametrize(
    ("arch", "x", "shape"),
    [
        ("c1", np.zeros((12, 64), "f4"), [1, 1, 64]),  # flat samples: one channel of a signal
        ("c2", np.zeros((12, 1, 8, 8), "f4"), [1, 1, 8, 8]),  # as saved
        ("c2", np.zeros((12, 64), "f4"), [1, 1, 8, 8]),  # flat samples: a square image
    ],
)
def test_a_conv_model_takes_its_input_shape_from_an_npz_samples(tmp_path, monkeypatch, arch, x, shape):
    from sparsekit.pipeline import resolve_model

    (tmp_path / "nets_shapes19.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "sig.npz", x=x, y=np.zeros(12, "i8"))
    torch.save(getattr(__import__("nets_shapes19"), arch)().state_dict(), tmp_path / "m.pt")
    (tmp_path / "r.yaml").write_text(
        "version: 1\ndata: {source: sig.npz}\npruning: [{method: magnitude, sparsity: 0.5}]\n"
    )
    recipe = sparsekit.load_recipe(tmp_path / "r.yaml")
    loaded = resolve_model("m.pt", recipe, f"nets_shapes19:{arch}", trust=False)  # was "cannot tell" (exit 2)
    assert loaded.input_shape == shape
    assert "sig.npz" in loaded.shape_origin


def test_an_npz_shape_is_read_only_where_a_recipe_may_lead(tmp_path, monkeypatch):
    from sparsekit.errors import DataError
    from sparsekit.pipeline import resolve_model

    (tmp_path / "nets_shapes19.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    np.savez(tmp_path / "outside.npz", x=np.zeros((12, 64), "f4"), y=np.zeros(12, "i8"))
    torch.save(__import__("nets_shapes19").c1().state_dict(), "m.pt")
    (tmp_path / "run" / "r.yaml").write_text(
        f"version: 1\ndata: {{source: {tmp_path / 'outside.npz'}}}\npruning: [{{method: magnitude, sparsity: 0.5}}]\n"
    )
    recipe = sparsekit.load_recipe("r.yaml")
    with pytest.raises(DataError, match=r"^r\.yaml: data\.source names the file .*outside the recipe's folder"):
        resolve_model("m.pt", recipe, "nets_shapes19:c1", trust=False)
    # named by the caller (the data option): read
    assert resolve_model(
        "m.pt", recipe, "nets_shapes19:c1", trust=False, data=str(tmp_path / "outside.npz")
    ).input_shape == [1, 1, 64]


def test_structured_names_each_blocked_layer_with_its_own_reason():
    from torch.nn.utils import parametrizations

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Conv2d(4, 8, 3, padding=1, groups=4),  # depthwise, multiplier 2: '0' cannot lose channels
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),  # weight_norm: '1', whose outputs reach it, cannot lose channels
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    parametrizations.weight_norm(model[3])
    recipe = {"model": {"input_shape": [1, 1, 8, 8]}, "pruning": [{"method": "structured", "ratio": 0.5}]}
    with pytest.raises(TargetError) as err:
        sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    message = str(err.value)
    # was "of '1' (and of '0'): they reach '3', whose weight is computed ...", nothing about the depthwise layer
    assert "of '1': they reach '3', whose weight is computed" in message
    assert "of '0': they feed '1', a depthwise convolution" in message
    assert "add '1', '0' to pruning[0].ignore" in message


def test_max_norm_says_at_construction_which_layers_it_cannot_bound():
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    parametrizations.weight_norm(model[0])
    recipe = {"pruning": [{"method": "max_norm", "max_value": 0.5}]}
    with pytest.warns(
        UserWarning, match=r"pruning\[0\] \(max_norm\): '0' is left out, its units' norms unbounded"
    ) as rec:
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)  # was silent: only validate listed it
    assert pruner.summary()[0]["layers"] == ["2"]
    said = next(str(w.message) for w in rec if "max_norm" in str(w.message))
    assert "original0.data.clamp_(-0.5, 0.5)" in said
    # the remedy it gives bounds the layer's units
    with torch.no_grad():
        model[0].parametrizations.weight.original0.mul_(10).clamp_(-0.5, 0.5)
    assert float(model[0].weight.norm(dim=1).max()) <= 0.5 + 1e-6


def test_the_computed_export_fallback_reads_as_one_sentence(tmp_path):
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    parametrizations.orthogonal(model[0])  # matrix_exp: exported with the tensor computed once
    fallback = sparsekit.export_onnx(model, tmp_path / "m.onnx", [1, 8], exporter="dynamo")["fallback"]
    # was "...computed once (the model as it is did not export) (No ONNX function found ...)"
    assert ") (" not in fallback
    assert fallback.startswith(
        "exported with the parametrized tensors of '0' computed once, as the model as it is did "
    )
    assert "matrix_exp" in fallback.split("did not export: ", 1)[1]
