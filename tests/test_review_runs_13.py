"""Runs that hold (review 13): resume, export and interruption checks run as an outside reviewer would."""

from __future__ import annotations

import pytest
import torch

import sparsekit
from examples.models import mlp

RECIPE = {
    "version": 1,
    "model": {"input_shape": [1, 64]},
    "finetune": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"exclude": ["fc3"]}}],
}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 64, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(3)]


def _recipe(lr: float) -> sparsekit.Recipe:
    recipe = {**RECIPE, "finetune": {**RECIPE["finetune"], "optimizer": {"name": "sgd", "lr": lr}}}
    return sparsekit.Recipe(**recipe)


def test_a_refused_finetune_resume_names_a_remedy_finetune_accepts(tmp_path):
    # sparsekit.finetune(..., resume=True) under a changed recipe said "start again with overwrite=True", and following
    # it raised TypeError: finetune() has no overwrite. Its way to start again is resume=False, which it now names.
    data = _batches()
    torch.manual_seed(0)
    sparsekit.finetune(mlp(), _recipe(0.05), data, data[:1], progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(sparsekit.SparsekitError, match=r"0\.05 then, 0\.1 now") as refused:
        sparsekit.finetune(mlp(), _recipe(0.1), data, data[:1], progress=False, checkpoint_dir=tmp_path, resume=True)
    message = str(refused.value)
    assert "overwrite" not in message and message.endswith("start again with resume=False"), message
    # The remedy as worded works: training over replaces the checkpoint, which a later resume then continues.
    sparsekit.finetune(mlp(), _recipe(0.1), data, data[:1], progress=False, checkpoint_dir=tmp_path, resume=False)
    _, history, _ = sparsekit.finetune(
        mlp(), _recipe(0.1), data, data[:1], progress=False, checkpoint_dir=tmp_path, resume=True
    )
    assert [h["lr"] for h in history] == [0.1, 0.1]


def test_the_command_still_says_overwrite_where_finetune_says_resume_false():
    # The same checkpoint message, reached from `sparsekit prune --resume`, keeps naming the command's own remedy.
    from sparsekit.cli import _flag
    from sparsekit.errors import option, render

    message = f"start again with {option('restart')}"
    assert render(message, _flag) == "start again with --overwrite"
    assert render(message) == "start again with resume=False"
