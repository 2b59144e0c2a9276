"""Review (sensitivity and automatic allocation on users' own MLPs and CNNs): what the analysis, the allocation and
the structured entry say of layers they cannot prune as asked."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sparsekit.allocation import auto_allocate
from sparsekit.cli import main
from sparsekit.errors import TargetError
from sparsekit.planning import describe
from sparsekit.recipe import load_recipe
from sparsekit.sensitivity import analyze


class _Gated(nn.Module):
    """fc1's first output column feeds a one-input gate (a Linear(1, 1)): torch-pruning never ranks fc1's group."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.gate = nn.Linear(1, 1)
        self.fc2 = nn.Linear(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        g = torch.sigmoid(self.gate(h[:, :1]))
        return self.head(torch.relu(self.fc2(h)) * g)


def _val() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen))]


def test_a_root_whose_group_holds_a_one_channel_layer_is_left_out_with_its_reason():
    # fc1 was a row of the table whose probes all "achieved" 0.0 with no word why, and validate/report said
    # "0.000 of channels removed, 0.500 asked" with no reason: the gate's single input channel blocks the group.
    torch.manual_seed(0)
    model = _Gated()
    rec = load_recipe({"pruning": [{"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot"}]})
    table = analyze(model, rec, _val(), grid={"structured": [0.5]}, input_shape=[1, 8])
    assert "fc1" not in [row.name for row in table.layers]
    left = {item.name: item.reason for item in table.left_out}
    assert "fc1" in left and "'gate'" in left["fc1"] and "one-channel layer" in left["fc1"]


def test_a_macs_target_no_layer_can_reach_names_each_layer_and_why():
    # The only ranked root was a 1-channel gate: the error said "saves only 0 MACs ... raise target_macs to 1 or
    # more", naming no layer, instead of why none of them can lose a channel.
    torch.manual_seed(0)
    model = _Gated()
    rec = load_recipe(
        {"pruning": [{"method": "structured", "ratio": "auto", "target_macs": 0.5, "round_to": None,
                      "schedule": "oneshot"}]}
    )  # fmt: skip
    with pytest.raises(TargetError) as caught:
        auto_allocate(model, rec, _val(), grid={"structured": [0.5]}, input_shape=[1, 8])
    said = caught.value.raw_message
    assert "raise target_macs" not in said
    assert "'gate': 1 channel(s)" in said and "'fc1'" in said


def test_an_auto_entry_is_not_described_as_a_global_ranking():
    # sparsity: auto gives every layer its own value (the allocation's scope is layer), yet `validate RECIPE` said
    # "global ranking" (scope's default) for it, a run that never happens.
    rec = load_recipe({"pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.8, "schedule": "oneshot"}]})
    text = describe(rec.pruning[0])
    assert "global ranking" not in text and "each layer ranked on its own" in text


def test_a_structured_auto_entry_is_not_described_as_a_global_scope():
    # The same for ratio: auto (its allocation's scope is layer): validate said "global scope" for scope: global.
    entry = {"method": "structured", "ratio": "auto", "target_macs": 0.5, "scope": "global", "schedule": "oneshot"}
    text = describe(load_recipe({"pruning": [entry]}).pruning[0])
    assert "global scope" not in text and "layer scope" in text


def test_sensitivity_says_the_finished_table_is_kept_when_only_the_allocation_fails(tmp_path):
    # An unreachable auto target failed after every probe: the error named the target only, the table sat unnamed
    # in sensitivity.partial.json, and the corrected run met "holds an earlier analysis" instead.
    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    model_file = tmp_path / "mlp.pt"
    sparsekit.save_model(mlp(hidden=[16]), model_file, factory="examples.models:mlp", kwargs={"hidden": [16]},
                         input_shape=[1, 64])  # fmt: skip
    recipe = tmp_path / "auto.yaml"
    entry = "{method: magnitude, sparsity: auto, target: TARGET, schedule: oneshot}"
    text = "data: {source: digits}\npruning: [" + entry + "]\nbenchmark: {enabled: false}\n"
    recipe.write_text(text.replace("TARGET", "0.9999"))
    out = tmp_path / "sens"
    args = ["sensitivity", str(model_file), str(recipe), "--arch", "examples.models:mlp", "-o", str(out)]
    first = CliRunner().invoke(main, [*args, "--max-batches", "1"])
    assert first.exit_code == 2, first.output
    assert "sensitivity.partial.json" in first.stderr and "--resume" in first.stderr
    recipe.write_text(text.replace("TARGET", "0.9"))
    again = CliRunner().invoke(main, [*args, "--max-batches", "1", "--resume"])
    assert again.exit_code == 0, again.stderr
    assert (out / "allocation.json").is_file()


def test_the_analysis_names_the_recipe_file_of_a_layer_pattern_that_matches_nothing(tmp_path):
    # `sparsekit prune` and `validate` said "r.yaml: pruning[0].layers.include: ...", `sparsekit sensitivity` (and
    # analyze) the field alone, so the user was not told which file holds it.
    path = tmp_path / "r.yaml"
    path.write_text("pruning: [{method: magnitude, sparsity: auto, target: 0.5, layers: {include: ['conv*']}}]\n")
    with pytest.raises(TargetError) as caught:
        analyze(_Gated(), load_recipe(path), _val(), input_shape=[1, 8])
    assert caught.value.raw_message.startswith(f"{path}: pruning[0].layers.include: 'conv*' matches no layer")


def test_max_batches_past_the_split_does_not_say_the_values_may_differ_from_prunes(tmp_path):
    # --max-batches 1000 over a split of a few batches analysed all of them, yet the note said the values came from
    # "the first 1000 validation batch(es)" and that prune's could differ.
    import sparsekit
    from examples.models import mlp

    model_file = tmp_path / "mlp.pt"
    sparsekit.save_model(mlp(hidden=[16]), model_file, factory="examples.models:mlp", kwargs={"hidden": [16]},
                         input_shape=[1, 64])  # fmt: skip
    recipe = tmp_path / "auto.yaml"
    recipe.write_text("data: {source: digits}\npruning: [{method: magnitude, sparsity: auto, target: 0.5}]\n")
    args = ["sensitivity", str(model_file), str(recipe), "--arch", "examples.models:mlp", "--json"]
    whole = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a"), "--max-batches", "1000"])
    assert whole.exit_code == 0, whole.stderr
    assert json.loads(whole.stdout)["notes"] == []
    cut = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b"), "--max-batches", "1"])
    assert cut.exit_code == 0, cut.stderr
    assert "first 1 validation batch(es)" in json.loads(cut.stdout)["notes"][0]
