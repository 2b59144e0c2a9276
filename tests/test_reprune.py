"""A structurally pruned checkpoint pruned or saved again: the file written replays the removals the model came
with and then the new ones, so it loads as the model it holds (it used to keep only the last run's removals,
and an exit-0 run wrote a model.pt nothing could open)."""

from __future__ import annotations

import textwrap

import pytest
import torch
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import main
from sparsekit.modelio import read_model

FACTORY = "examples.models:small_cnn"
KWARGS = {"image_size": 8, "width": 16}
SHAPE = [1, 1, 8, 8]


def recipe(tmp_path, name: str, entry: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        version: 1
        model: {{input_shape: {SHAPE}}}
        data: {{source: digits, batch_size: 64}}
        finetune: {{epochs: 0}}
        pruning: [{entry}]
        export: {{exporter: torchscript}}
        benchmark: {{enabled: false}}
        """)
    )
    return path


def prune(tmp_path, model, rec, out):
    res = CliRunner().invoke(main, ["prune", str(model), str(rec), "-o", str(tmp_path / out), "--arch", FACTORY])
    assert res.exit_code == 0, res.output
    return tmp_path / out / "model.pt"


def widths(model: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.fixture
def pruned_once(tmp_path):
    from examples.models import small_cnn

    dense = tmp_path / "dense.pt"
    sparsekit.save_model(small_cnn(**KWARGS), dense, factory=FACTORY, kwargs=KWARGS, input_shape=SHAPE)
    half = recipe(
        tmp_path, "half", "{method: structured, ratio: 0.5, round_to: null, layers: {include: [conv1, conv2]}}"
    )
    first = prune(tmp_path, dense, half, "first")
    loaded = read_model(first, FACTORY)
    assert widths(loaded.model)[:2] == [8, 16]
    return first, half, loaded


def test_a_pruned_checkpoint_pruned_again_loads_with_every_removal(tmp_path, pruned_once):
    first, half, loaded = pruned_once
    again = prune(tmp_path, first, half, "again")  # half of what is left
    model = read_model(again, FACTORY).model
    assert widths(model)[:2] == [4, 8]
    x = torch.randn(3, *SHAPE[1:])
    assert model(x).shape == (3, 10)

    magnitude = recipe(tmp_path, "mag", "{method: magnitude, sparsity: 0.5, schedule: oneshot}")
    zeroed = read_model(prune(tmp_path, first, magnitude, "mag"), FACTORY).model
    assert widths(zeroed)[:2] == [8, 16]
    weights = torch.cat([m.weight.flatten() for m in zeroed.modules() if isinstance(m, torch.nn.Conv2d)])
    assert float((weights == 0).float().mean()) > 0.3  # zeros placed on the rebuilt (narrower) layers


def test_a_pruned_checkpoint_loaded_and_saved_or_pruned_in_python_keeps_its_removals(tmp_path, pruned_once):
    first, _, loaded = pruned_once
    resaved = sparsekit.save_model(loaded.model, tmp_path / "resaved.pt", factory=FACTORY, kwargs=KWARGS)
    model = read_model(resaved, FACTORY).model
    assert widths(model) == widths(loaded.model)
    torch.testing.assert_close(model.state_dict(), loaded.model.state_dict(), rtol=0, atol=0)

    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}
    pruner = sparsekit.Pruner(loaded.model, {"pruning": [entry]}, steps_per_epoch=1)
    pruner.step()
    out = sparsekit.save_model(pruner.finalize(), tmp_path / "api.pt", factory=FACTORY, kwargs=KWARGS, pruner=pruner)
    assert widths(read_model(out, FACTORY).model) == widths(loaded.model)
