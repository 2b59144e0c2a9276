"""sparsekit.rehearsal.rehearse: every structural removal of a recipe, on a copy, before any training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
import sparsekit.onnx
from examples.models import mlp, resnet_small, small_cnn
from sparsekit.errors import ExportError, TargetError
from sparsekit.rehearsal import Rehearsal, rehearse

IMG = [1, 1, 8, 8]


class ViewConvT(nn.Module):
    """``Linear(16, 128)`` → ``view(N, 8, 4, 4)`` (8 channels written into the code) → ``ConvTranspose2d``.
    (Defined here, not imported from another test module: see tests/test_structured_layouts.py.)"""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 128)
        self.up = nn.ConvTranspose2d(8, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up(torch.relu(self.fc(x)).view(x.shape[0], 8, 4, 4)))
        return self.head(x.mean((2, 3)))


def structured(**method: object) -> sparsekit.Recipe:
    # Exact channel counts: these tests check removal itself; alignment (default round_to 8) is test_round_to's.
    spec = {"method": "structured", "ratio": 0.5, "importance": "l2", "round_to": 1, **method}
    return sparsekit.Recipe(model={"input_shape": IMG}, finetune={"epochs": 2}, pruning=[spec])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


@pytest.mark.parametrize("build", [small_cnn, resnet_small])
def test_rehearses_every_event_and_leaves_the_model_and_rng_alone(build):
    torch.manual_seed(0)
    model = build(width=8, image_size=8)
    before = snapshot(model)
    rng = torch.random.get_rng_state()
    r = structured(steps=3, schedule={"start_epoch": 0, "end_epoch": 2})
    result = rehearse(model, r, IMG, steps_per_epoch=4)
    assert isinstance(result, Rehearsal) and result.events == 3 and result.history
    assert result.exported and result.parity is not None and result.parity["ok"]
    row = result.methods[0]
    assert row["index"] == 0 and row["method"] == "structured" and row["asked"] == 0.5
    assert row["achieved"] == pytest.approx(0.5, abs=0.02)
    assert all(set(v) == {"asked", "achieved", "reason"} for v in row["per_layer"].values())
    assert result.as_dict()["events"] == 3 and result.ms > 0
    assert_unchanged(model, before)
    assert torch.equal(torch.random.get_rng_state(), rng)
    # The rehearsed shapes are the real run's: the same recipe, driven to the end by the Pruner.
    real = dict(sparsekit.Pruner(model, r, steps_per_epoch=4).finalize().named_modules())
    for name, (initial, after) in row["channels"].items():
        module = real[name]
        assert initial >= after >= 1
        assert (module.out_features if isinstance(module, nn.Linear) else module.out_channels) == after


def test_taylor_needs_no_data_to_rehearse():
    torch.manual_seed(0)
    model = small_cnn(width=8, image_size=8)
    result = rehearse(model, structured(importance="taylor", schedule="oneshot"), IMG, steps_per_epoch=2)
    assert result.events == 1 and result.methods[0]["achieved"] == pytest.approx(0.5, abs=0.02)
    assert all(p.grad is None for p in model.parameters())


def test_refuses_before_any_training_and_touches_nothing():
    model = ViewConvT()
    before = snapshot(model)
    r = sparsekit.Recipe(model={"input_shape": [1, 16]}, pruning=[{"method": "structured", "ratio": 0.5}])
    with pytest.raises(TargetError, match="'fc'"):
        rehearse(model, r, [1, 16], steps_per_epoch=10)
    assert_unchanged(model, before)
    assert model.fc.out_features == 128 and model(torch.randn(2, 16)).shape == (2, 10)


def test_a_recipe_without_structural_removal_rehearses_nothing():
    r = sparsekit.Recipe(model={"input_shape": [1, 64]}, pruning=[{"method": "magnitude", "sparsity": 0.5}])
    result = rehearse(mlp(), r, [1, 64], steps_per_epoch=3)
    assert result.events == 0 and not result.exported and result.parity is None and result.methods == []


def test_a_layer_pattern_that_matches_nothing_is_raised_as_a_prune_run_would():
    with pytest.raises(TargetError, match="'nope'"):
        rehearse(small_cnn(width=8, image_size=8), structured(ignore=["nope"]), IMG, steps_per_epoch=1)


def test_an_export_only_the_pruned_model_fails_is_the_recipes_fault(monkeypatch):
    real = sparsekit.onnx.export_onnx
    calls = []

    def export(model, path, shape, **kw):
        calls.append(path.name)
        if path.name == "rehearsal.onnx":
            raise ExportError("Unsupported: aten::something")
        return real(model, path, shape, **kw)

    monkeypatch.setattr(sparsekit.onnx, "export_onnx", export)
    with pytest.raises(TargetError, match="no longer exports to ONNX.*aten::something"):
        rehearse(small_cnn(width=8, image_size=8), structured(schedule="oneshot"), IMG, steps_per_epoch=1)
    assert calls == ["rehearsal.onnx", "dense.onnx"]

    def export_fails_always(model, path, shape, **kw):
        raise ExportError("Unsupported: aten::something")

    monkeypatch.setattr(sparsekit.onnx, "export_onnx", export_fails_always)
    with pytest.raises(ExportError):  # the dense model fails too: the model's own problem, said as such
        rehearse(small_cnn(width=8, image_size=8), structured(schedule="oneshot"), IMG, steps_per_epoch=1)


def test_a_parity_failure_after_pruning_is_a_target_error(monkeypatch):
    real = sparsekit.onnx.export_onnx

    def export(model, path, shape, **kw):
        info = real(model, path, shape, **kw)
        if path.name == "rehearsal.onnx":
            info["parity"] = {**info["parity"], "ok": False, "max_abs_diff": 0.5}
        return info

    monkeypatch.setattr(sparsekit.onnx, "export_onnx", export)
    with pytest.raises(TargetError, match="differ from torch's"):
        rehearse(small_cnn(width=8, image_size=8), structured(schedule="oneshot"), IMG, steps_per_epoch=1)


# --- memory: a recipe that removes nothing is rehearsed on a weightless (meta) copy --------------------


def unstructured(*entries: dict) -> sparsekit.Recipe:
    return sparsekit.Recipe(model={"input_shape": [1, 64]}, finetune={"epochs": 2}, pruning=list(entries))


@pytest.fixture
def built_on(monkeypatch):
    """The parameter devices of every model rehearse() built a Pruner on, in order."""
    import sparsekit.rehearsal as rehearsal_mod

    seen: list[set[str]] = []
    real = rehearsal_mod.Pruner

    def spy(model, *args, **kwargs):
        seen.append({p.device.type for p in model.parameters()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(rehearsal_mod, "Pruner", spy)
    return seen


def test_an_unstructured_recipe_is_rehearsed_without_copying_weights(built_on):
    model = mlp()
    before = snapshot(model)
    oneshot = {"method": "magnitude", "sparsity": 0.9, "schedule": "oneshot", "layers": {"exclude": ["fc3"]}}
    result = rehearse(model, unstructured(oneshot), [1, 64], steps_per_epoch=3)
    assert result.events == 0 and not result.exported and result.methods == []
    assert built_on == [{"meta"}]  # one Pruner, on a copy with no weight storage (a one-shot mask included)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([{"method": "magnitude", "sparsity": 0.5, "layers": {"include": ["nope"]}}], "'nope'"),
        # (fc1 in both, seen once the model is: identical selections are refused by the recipe itself)
        (
            [{"method": "magnitude", "sparsity": 0.5}, {"method": "gradient", "sparsity": 0.5, "layers": ["fc1"]}],
            "both mask",
        ),
        # (a layer_sparsity name the entry's own exclude leaves out is refused by the recipe itself)
        ([{"method": "magnitude", "sparsity": 0.5, "layer_sparsity": {"fc9": 0.3}}], "'fc9'"),
    ],
)
def test_the_weightless_rehearsal_still_refuses_what_a_run_would(built_on, entries, match):
    with pytest.raises(TargetError, match=match):
        rehearse(mlp(), unstructured(*entries), [1, 64], steps_per_epoch=3)
    # Refused on the meta copy, then built again on a real one, which raised what a prune run raises.
    assert built_on == [{"meta"}, {"cpu"}]


def test_a_build_that_fails_on_meta_is_decided_on_a_real_copy(monkeypatch, built_on):
    import sparsekit.rehearsal as rehearsal_mod

    spy = rehearsal_mod.Pruner

    def refuses_meta(model, *args, **kwargs):
        if any(p.is_meta for p in model.parameters()):
            raise NotImplementedError("Cannot copy out of meta tensor")  # what a value read does there
        return spy(model, *args, **kwargs)

    monkeypatch.setattr(rehearsal_mod, "Pruner", refuses_meta)
    r = unstructured({"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"})
    assert rehearse(mlp(), r, [1, 64], steps_per_epoch=3).events == 0
    assert built_on == [{"cpu"}]


def test_structured_recipes_and_user_scorers_still_get_a_real_copy(built_on):
    rehearse(small_cnn(width=8, image_size=8), structured(schedule="oneshot"), IMG, steps_per_epoch=1)
    r = unstructured({"method": "magnitude", "sparsity": 0.5})
    rehearse(mlp(), r, [1, 64], steps_per_epoch=1, scorers={0: lambda w, g: w.abs()})
    assert built_on == [{"cpu"}, {"cpu"}]


def test_meta_copy_keeps_names_shapes_and_ties_and_holds_no_storage():
    from sparsekit.rehearsal import meta_copy

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4))
    model[2].weight = model[0].weight  # tied
    model[0].bias.requires_grad_(False)
    copy = meta_copy(model)
    assert [n for n, _ in copy.named_parameters()] == [n for n, _ in model.named_parameters()]
    for (_, a), (_, b) in zip(copy.state_dict().items(), model.state_dict().items(), strict=True):
        assert a.is_meta and a.shape == b.shape and a.dtype == b.dtype
    assert copy[2].weight is copy[0].weight and not copy[0].bias.requires_grad
    assert not model[0].weight.is_meta  # the original is untouched
