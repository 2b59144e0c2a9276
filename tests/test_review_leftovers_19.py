"""Review round 19 (small faults earlier reviews found and left): what the user saw, and what they see now."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from sparsekit import Pruner

torch.set_num_threads(1)


def _computed_model() -> nn.Sequential:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation of the hook-based weight_norm
        return nn.Sequential(
            nn.utils.weight_norm(nn.Linear(8, 16)),
            nn.ReLU(),
            nn.utils.spectral_norm(nn.Linear(16, 16)),
            nn.ReLU(),
            nn.Linear(16, 4),
        )


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"},
        {"method": "gradient", "sparsity": 0.5, "schedule": "oneshot"},
        {"method": "l1", "strength": 1e-3},
    ],
)
def test_a_masking_entry_warns_of_the_layers_a_computed_weight_leaves_out(entry):
    # Before: only '4' was pruned, without a word about '0' (weight_norm) and '2' (spectral_norm).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Pruner(_computed_model(), {"pruning": [entry]}, steps_per_epoch=1)
    ours = [str(w.message) for w in caught if "is left out" in str(w.message)]
    assert len(ours) == 2, ours
    assert f"pruning[0] ({entry['method']}): '0' is left out" in ours[0]
    assert "torch.nn.utils.remove_weight_norm(layer)" in ours[0]
    assert "torch.nn.utils.remove_spectral_norm(layer)" in ours[1]
    assert all("pruning[0].layers.exclude" in m for m in ours)
    # the warning points at the user's line, not inside sparsekit
    assert all(w.filename == __file__ for w in caught if "is left out" in str(w.message))


def test_the_remedies_the_computed_weight_warning_names_work():
    model = _computed_model()
    nn.utils.remove_weight_norm(model[0])
    nn.utils.remove_spectral_norm(model[2])
    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # removed: every layer is pruned, and nothing is said
        pruner = Pruner(model, {"pruning": [entry]}, steps_per_epoch=1)
    assert list(pruner.methods[0].layers) == ["0", "2", "4"]
    excluded = dict(entry, layers={"exclude": ["0", "2"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pruner(_computed_model(), {"pruning": [excluded]}, steps_per_epoch=1)


class _TiedTwice(nn.Module):
    """A decoder reuses enc1's weight twice and enc2's once, in the forward pass only."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Linear(16, 12)
        self.enc2 = nn.Linear(12, 6)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.enc2(torch.relu(self.enc1(x))))
        h = torch.relu(nn.functional.linear(z, self.enc2.weight.t()))
        h = nn.functional.linear(h, self.enc1.weight.t()) + nn.functional.linear(h, self.enc1.weight.t())
        return self.head(h)


def test_structured_tied_weights_refusal_counts_each_weights_own_uses():
    from sparsekit.errors import TargetError

    entry = {"method": "structured", "ratio": 0.5, "schedule": "oneshot"}
    with pytest.raises(TargetError) as info:
        Pruner(_TiedTwice(), {"model": {"input_shape": [1, 16]}, "pruning": [entry]}, steps_per_epoch=1)
    message = str(info.value)
    # Before: "'enc1.weight' (and 'enc2.weight') is used 2 more time(s) outside 'enc1'": enc2's one use went unsaid.
    assert "'enc1.weight' is used 2 more times outside 'enc1' and 'enc2.weight' 1 more time outside 'enc2'" in message
    assert "add 'enc1', 'enc2' to pruning[0].ignore" in message


NORMED = """\
import warnings

from torch import nn


def build():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.Sequential(nn.Flatten(), nn.utils.weight_norm(nn.Linear(64, 16)), nn.ReLU(), nn.Linear(16, 10))
"""


def test_validate_says_max_norm_cannot_rescale_a_computed_weight_not_mask_it(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from conftest import user_module

    import sparsekit
    from sparsekit.cli import main

    mod = user_module(tmp_path, monkeypatch, "normed_net_19", NORMED)
    model = tmp_path / "m.pt"
    sparsekit.save_model(mod.build(), model, factory="normed_net_19:build")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 1, 8, 8]}\npruning:\n  - {method: max_norm, max_value: 1.0}\n"
        "  - {method: magnitude, sparsity: 0.5}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(recipe), str(model), "--trust-code", "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    import json

    methods = json.loads(result.output)["methods"]
    (max_norm,) = [row["reason"] for row in methods[0]["left_out"] if row["name"] == "1"]
    # Before: "not a parameter sparsekit can mask", of an entry that never masks.
    assert "not a parameter max_norm can rescale" in max_norm and "mask" not in max_norm
    assert "torch.nn.utils.remove_weight_norm(layer)" in max_norm
    (magnitude,) = [row["reason"] for row in methods[1]["left_out"] if row["name"] == "1"]
    assert "sparsekit can mask" in magnitude


def test_an_auto_structured_taylor_entry_measures_its_allocation_without_gradients():
    # Before: `ratio: auto, target_latency: 0.7, importance: taylor` (or target_macs) with finetune.epochs: 1 failed
    # with "'taylor' needs gradients, but none arrived before the removal: give the recipe fine-tuning epochs
    # (finetune.epochs > 0)": the allocation times / counts its removal on a copy before any training.
    from sparsekit.allocation import _measured_latency, _measured_macs
    from sparsekit.recipe import Recipe

    recipe = Recipe.model_validate(
        {
            "model": {"input_shape": [1, 8]},
            "finetune": {"epochs": 1},
            "pruning": [{"method": "structured", "ratio": 0.5, "importance": "taylor", "round_to": 1}],
            "benchmark": {"batch_sizes": [1]},
        }
    )
    spec = recipe.pruning[0]
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    dense = [p.detach().clone() for p in model.parameters()]
    macs = _measured_macs(model, [(0, spec)], [1, 8])
    assert 0.3 < macs < 0.7  # half of the hidden channels went
    assert _measured_latency(model, [(0, spec)], recipe, [1, 8]) > 0
    assert all(torch.equal(a, b) for a, b in zip(dense, model.parameters(), strict=True))  # measured on a copy


def test_recipe_errors_point_to_the_reference_a_wheel_install_can_print(tmp_path):
    # Before: "(see docs/recipe.md; ...)": a wheel ships no docs/recipe.md, so the first pointer led nowhere.
    from sparsekit.errors import RecipeError
    from sparsekit.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("version: 1\npruning:\n  - {method: magnitude, sparsity: 0.5, sparsty: 1}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "see docs/recipe.md" not in message
    assert message.endswith(
        "(the recipe reference: `sparsekit recipes --reference` prints it; docs/recipe.md in a source checkout)"
    )


def test_inspect_and_validate_spell_their_notes_as_export_does(tmp_path):
    # Before: inspect and validate printed "note: ..." where export, bench and prune print "Note: ...".
    from click.testing import CliRunner

    import sparsekit
    from examples.models import mlp
    from sparsekit.cli import main

    path = tmp_path / "w64.pt"
    sparsekit.save_model(mlp(in_features=8, hidden=(8,), num_classes=4).double(), path, factory="examples.models:mlp",
                         kwargs={"in_features": 8, "hidden": [8], "num_classes": 4}, input_shape=[1, 8])  # fmt: skip
    res = CliRunner().invoke(main, ["inspect", str(path), "--arch", "examples.models:mlp"])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.lower().startswith("note:")]
    assert any("float64" in line for line in notes), res.output
    assert all(line.startswith("Note: ") for line in notes), notes
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nfinetune: {epochs: 1, optimizer: {name: adam, momentum: 0.9}}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5}\n"
    )
    res = CliRunner().invoke(main, ["validate", str(recipe)])
    notes = [line for line in res.output.splitlines() if line.lower().startswith("note:")]
    assert notes and all(line.startswith("Note: ") for line in notes), res.output


def test_a_structured_entry_warns_of_a_computed_layer_it_leaves_out():
    # Before: a weight_norm first layer was left out of a structured entry's selection without a word.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = nn.utils.weight_norm(nn.Linear(8, 16))
    model = nn.Sequential(first, nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    entry = {"method": "structured", "ratio": 0.5, "schedule": "oneshot", "round_to": 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = Pruner(model, {"model": {"input_shape": [1, 8]}, "pruning": [entry]}, steps_per_epoch=1)
    assert "0" not in pruner.methods[0].layers
    (ours,) = [str(w.message) for w in caught if "is left out" in str(w.message)]
    assert ours.startswith("pruning[0] (structured): '0' is left out, not pruned") and "remove_weight_norm" in ours
