"""Review (sensitivity and plan on users' own models): what `sensitivity`, `validate` (plan) and an `auto` prune run say
and do on 1-D CNNs, depthwise-separable and residual convs, token-id models, weight-normed, tied and gated layers."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from torch import nn

from sparsekit.allocation import placeholder_recipe
from sparsekit.cli import main
from sparsekit.methods.base import Setup
from sparsekit.methods.l1 import L1
from sparsekit.recipe import load_recipe

MLP = ("--arch", "examples.models:mlp")


def _auto_and_l1():
    return load_recipe(
        {
            "finetune": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.002}},
            "pruning": [
                {"method": "magnitude", "sparsity": "auto", "target": 0.8, "layers": ["0"], "schedule": "oneshot"},
                {"method": "l1", "strength": 1e-3, "target": 0.5, "layers": ["1"],
                 "schedule": {"start_epoch": 0, "end_epoch": 1}},
            ],
        }
    )  # fmt: skip


def test_an_allocated_recipe_keeps_the_l1_entrys_unwritten_schedule_every():
    # An l1 target adapts lambda 16 times per epoch unless schedule.every is written; the recipe an auto entry's
    # allocation derived had every field marked written, so the same l1 entry adapted once per epoch beside it.
    rec = _auto_and_l1()
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    setup = Setup(index=1, steps_per_epoch=32, input_shape=[1, 4])
    alone = L1(rec.pruning[1], model, setup).adapt_every
    derived = L1(placeholder_recipe(rec).pruning[1], model, setup).adapt_every
    assert alone == 2 and derived == alone


def test_validate_of_an_auto_recipe_names_no_finetune_key_the_recipe_never_wrote(tmp_path, mlp_checkpoint):
    path = tmp_path / "auto.yaml"
    path.write_text(
        "data: {source: digits}\nfinetune: {epochs: 1, optimizer: {name: adam, lr: 0.002}}\n"
        "pruning: [{method: magnitude, sparsity: auto, target: 0.8, schedule: oneshot}]\n"
        "benchmark: {enabled: false}\n"
    )
    torch.manual_seed(0)
    result = CliRunner().invoke(main, ["validate", str(path), str(mlp_checkpoint), *MLP])
    assert result.exit_code == 0, result.output
    assert "auto ->" in result.output  # the allocation ran
    assert "momentum" not in result.output and "step_size" not in result.output


def test_an_interrupted_validate_says_nothing_was_written(monkeypatch):
    # validate (the plan) writes no file: its Ctrl-C line spoke of "finished files" and "unfinished ones".
    import sparsekit.planning as planning

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(planning, "plan", stop)
    result = CliRunner().invoke(main, ["validate", "lenet-gradual-magnitude-90"])
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == ["Interrupted: Nothing was written; run the same command again."]


def test_sensitivity_of_a_recipe_with_nothing_to_analyse_names_the_recipe_and_the_remedy(tmp_path, mlp_checkpoint):
    # An l1-only recipe: the line said "sensitivity: the recipe has no ... entry" (no file, no remedy), and only
    # after the model and data were loaded.
    path = tmp_path / "l1only.yaml"
    path.write_text(
        "data: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: l1, strength: 1.0e-3}]\nbenchmark: {enabled: false}\n"
    )
    result = CliRunner().invoke(main, ["sensitivity", str(mlp_checkpoint), str(path), *MLP, "-o", str(tmp_path / "s")])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {path}: pruning: no magnitude, gradient or structured entry") and "add one" in line
    assert not (tmp_path / "s").exists()


class _WithUnusedHead(nn.Module):
    """An auxiliary head the forward pass never runs (as a head used in training only is, in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.aux, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_an_auto_allocation_says_when_a_layer_that_never_runs_takes_the_sparsity():
    # Pruning a layer the forward pass never runs costs nothing measured: the allocation gave it ~0.98 toward the
    # target, and the layers that run less, without a word.
    from sparsekit.allocation import allocate_with_details, auto_allocate
    from sparsekit.analysis import allocation_summary

    torch.manual_seed(0)
    model, x = _WithUnusedHead(), torch.randn(64, 8)
    rec = load_recipe({"pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.5}]})
    _, table = auto_allocate(model, rec, [(x, model(x).argmax(1))], grid={"unstructured": [0.3, 0.6, 0.9]})
    _, (info,) = allocate_with_details(model, rec, table, input_shape=[1, 8])
    assert info.values["aux"] > 0.9  # (what the note explains)
    assert info.note is not None and "'aux' did not run" in info.note and "layers.exclude" in info.note
    line = allocation_summary({"entries": {"0": info.as_dict()}}, warning=False)
    assert "'aux' did not run" in line


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.encoder, self.decoder, self.head = (nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16),
                                                           nn.Linear(16, 4))  # fmt: skip
        self.decoder.weight = self.encoder.weight

    def forward(self, x):
        x = torch.relu(self.encoder(torch.relu(self.inp(x))))
        return self.head(torch.relu(self.decoder(x)))


def test_sensitivity_probes_a_tied_weight_once_and_says_why_its_second_layer_is_left_out():
    # decoder.weight = encoder.weight: both rows zeroed the one tensor (the same curve twice, twice the probes, the
    # weight counted twice in the table's weights), while the allocation gives the pair one value.
    from sparsekit.sensitivity import analyze

    torch.manual_seed(0)
    model, x = _Tied(), torch.randn(32, 8)
    rec = load_recipe({"pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.5}]})
    table = analyze(model, rec, [(x, model(x).argmax(1))], grid={"unstructured": [0.5, 0.9]})
    assert [r.name for r in table.layers] == ["inp", "encoder", "head"]
    assert sum(r.params for r in table.layers) == 8 * 16 + 16 * 16 + 16 * 4  # each weight once
    (left,) = [r for r in table.left_out if r.name == "decoder"]
    assert left.entry == 0 and "tied" in left.reason and "'encoder'" in left.reason
    assert table.probes_total() == 3 * 2
    from sparsekit.allocation import allocate

    values = allocate(model, rec, table, input_shape=[1, 8]).pruning[0].layer_sparsity
    assert values is not None and values["decoder"] == values["encoder"]  # the pair allocated from the one row


def test_sensitivity_with_max_batches_says_its_values_are_not_the_ones_prune_will_choose(tmp_path, mlp_checkpoint):
    # The command says it prints "the per-layer values prune would use"; with --max-batches they come from fewer
    # batches than prune's own analysis reads, and nothing said so.
    import json

    path = tmp_path / "auto.yaml"
    path.write_text(
        "data: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: magnitude, sparsity: auto, target: 0.8, schedule: oneshot}]\n"
    )
    base = ["sensitivity", str(mlp_checkpoint), str(path), *MLP, "--max-batches", "1", "--no-progress"]
    text = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "a")])
    assert text.exit_code == 0, text.output
    assert "Note: the per-layer values come from the first 1 validation batch(es) (--max-batches)" in text.stdout
    doc = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "b"), "--json"])
    assert doc.exit_code == 0, doc.output
    (note,) = json.loads(doc.stdout)["notes"]
    assert "prune analyses all of them" in note


def test_a_sensitivity_interrupted_before_its_first_table_says_there_is_nothing_to_resume(tmp_path):
    # Stopped while loading or measuring the dense model: the line offered `--resume`, which had nothing to continue.
    from sparsekit.cli import _interrupt_message

    out = tmp_path / "sens"
    said = _interrupt_message("sensitivity", False, "while measuring the dense model", out)
    assert said.endswith("nothing was kept to resume: run the same command again.") and "--resume" not in said
    out.mkdir()
    (out / "sensitivity.partial.json").write_text("{}")
    assert "`--resume` continues the analysis" in _interrupt_message("sensitivity", False, "", out)
