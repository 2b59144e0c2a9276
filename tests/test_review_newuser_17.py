"""Review (helper z1, a new user's first hour from a wheel): faults met following the README with an
architecture, data and recipes of one's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input
from torch import nn

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import TargetError

# --- a key written in a sibling section: say where it goes -----------------------------------------------


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ("data: {source: digits, epochs: 3}", "data.epochs: unknown key here; epochs is a key of finetune"),
        ("finetune: {epochs: 1, batch_size: 32}", "finetune.batch_size: unknown key here; batch_size is a key of data"),
        ("model: {input_shape: [1, 64], source: digits}", "model.source: unknown key here; source is a key of data"),
        ("export: {threads: 1}", "export.threads: unknown key here; threads is a key of benchmark"),
        ("benchmark: {opset: 18}", "benchmark.opset: unknown key here; opset is a key of export"),
        ("data: {lr: 0.1}", "data.lr: unknown key here; lr is a key of finetune.optimizer: write it as finetune:"),
        ("finetune: {seed: 3}", "finetune.seed: unknown key here; seed is a top-level key"),
        # a key of a pruning entry, written outside one
        ("sparsity: 0.9", "sparsity: unknown key here; sparsity is a key of a pruning entry: write it as pruning: ["),
        (
            "finetune: {exclude: [head]}",
            "finetune.exclude: unknown key here; exclude is a key of a pruning entry: write it as pruning: "
            "[{method: magnitude, layers: {exclude: ...}}]",
        ),
        ("finetune: {strength: 0.1}", "write it as pruning: [{method: l1, strength: ...}]"),
        ("finetune: {method: l1}", "method is a key of a pruning entry: write it as pruning: [{method: ...}]"),
        # a close local key still wins over a home elsewhere
        ("benchmark: {batch_size: 4}", "benchmark.batch_size: unknown key; did you mean 'batch_sizes'?"),
    ],
)
def test_a_key_in_a_sibling_section_names_its_home(tmp_path, section, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\n{section}\n")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), needle)


def test_an_override_into_a_sibling_section_names_its_home(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\n")
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", "data.epochs=3"])
    assert_bad_input(result, "data.epochs", "epochs is a key of finetune")


# --- structured on a model whose forward also returns a decoder's output -----------------------------------


class _EncoderDecoder(nn.Module):
    """Returns (logits, reconstruction): the decoder `dec` is the last of four layers channel removal visits."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv1d(2, 24, 5, padding=2)
        self.enc2 = nn.Conv1d(24, 48, 3, padding=1, stride=2)
        self.gate, self.val = nn.Linear(48, 48), nn.Linear(48, 48)
        self.head = nn.Linear(48, 4)
        self.dec = nn.ConvTranspose1d(48, 2, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc2(self.enc1(x).relu()).relu()
        pooled = h.mean(-1)
        return self.head(torch.sigmoid(self.gate(pooled)) * self.val(pooled)), self.dec(h)


def test_a_decoder_output_that_would_shrink_is_the_layer_named_to_ignore():
    # The advice named the event's first three roots ('val', 'enc2', 'enc1'), not 'dec', whose output changed
    # shape: following it failed again, now naming 'dec'.
    recipe = {
        "version": 1,
        "model": {"input_shape": [1, 2, 32]},
        "finetune": {"epochs": 1},
        "pruning": [
            {"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot", "ignore": ["head"]}
        ],
    }
    torch.manual_seed(0)
    with pytest.raises(TargetError) as err:
        sparsekit.Pruner(_EncoderDecoder(), recipe, steps_per_epoch=1).step()
    assert "add 'dec' to pruning[0].ignore so its output channels are kept" in str(err.value)
    recipe["pruning"][0]["ignore"] = ["head", "dec"]  # the advice works: nothing else needs to be kept
    sparsekit.Pruner(_EncoderDecoder(), recipe, steps_per_epoch=1).step()


# --- an .npz whose labels are one-hot rows or a column: say how to save them ---------------------------------


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        (lambda y: np.eye(4)[y], "got shape (40, 4); one-hot rows or scores? re-save it with y=y.argmax(axis=1)"),
        (lambda y: y[:, None], "got shape (40, 1); re-save it with y=y.reshape(-1)"),
    ],
)
def test_npz_labels_of_the_wrong_shape_say_how_to_save_them(tmp_path, labels, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {input_shape: [1, 8]}\n")
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x=np.zeros((40, 8), np.float32), y=labels(y))
    torch.save(nn.Linear(8, 4).state_dict(), tmp_path / "w.pt")
    arch = ["--arch", "torch.nn:Linear", "--kwargs", '{"in_features": 8, "out_features": 4}']
    result = CliRunner().invoke(
        main, ["validate", str(recipe), str(tmp_path / "w.pt"), *arch, "--data", str(tmp_path / "d.npz")]
    )
    assert_bad_input(result, needle)
