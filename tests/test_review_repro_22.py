"""Reproducibility as a user who must get the same result twice, and the same from the CLI as from their own loop."""

from __future__ import annotations

import random
import sys
import textwrap

import numpy as np
import torch
from click.testing import CliRunner

from sparsekit.cli import main

# A data module whose import draws from the global generators, as scikit-learn's does (it imports rich, which draws
# from Python's at import); make() records what it draws when called.
DRAWING_MODULE = textwrap.dedent("""
    import random

    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    random.random(), np.random.rand(), torch.rand(1)
    DRAWN = []

    def make():
        DRAWN.append((random.random(), float(np.random.rand())))
        data = TensorDataset(torch.rand(40, 64), torch.arange(40) % 10)
        return DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=8)
""")


def test_a_data_modules_import_does_not_shift_what_the_seeded_callable_draws(tmp_path, monkeypatch):
    # The CLI seeded the generators, then imported the data module: its import's draws shifted the callable's split
    # and augmentation away from a user's own script (import first, seed, call) with the same seed.
    (tmp_path / "drawing_data_22.py").write_text(DRAWING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(torch.nn.Linear(64, 10).state_dict(), tmp_path / "w.pt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nseed: 5\nmodel: {input_shape: [1, 64], kwargs: {in_features: 64, out_features: 10}}\n"
        "pruning: [{method: magnitude, sparsity: 0.5}]\n"
    )
    result = CliRunner().invoke(
        main,
        [
            "validate",
            str(recipe),
            str(tmp_path / "w.pt"),
            "--arch",
            "torch.nn:Linear",
            "--data",
            "drawing_data_22:make",
        ],
    )
    assert result.exit_code == 0, result.output
    random.seed(5)
    np.random.seed(5)
    assert sys.modules["drawing_data_22"].DRAWN[0] == (random.random(), float(np.random.rand()))


class _Augmented(torch.utils.data.Dataset):
    """Inputs with noise from numpy's and Python's global generators, as a user's random augmentation draws it."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(32, 8, generator=g), torch.arange(32) % 3

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int):
        return self.x[i] + float(np.random.rand()) + random.random(), self.y[i]


def _finetuned(draws_before: int) -> dict[str, torch.Tensor]:
    import sparsekit

    recipe = {
        "seed": 4,
        "model": {"input_shape": [1, 8]},
        "finetune": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1}},
        "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
    }
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    loader = torch.utils.data.DataLoader(_Augmented(), batch_size=8)
    for _ in range(draws_before):  # e.g. the CLI evaluating the dense model over the validation loader first
        for _batch in loader:
            pass
    model, _, pruner = sparsekit.finetune(model, recipe, loader, loader, progress=False)
    return pruner.finalize().state_dict()


def test_finetune_trains_on_the_same_augmentation_whatever_drew_from_the_generators_before():
    # finetune seeded torch alone with the recipe's seed: a dataset drawing from numpy's or Python's generator trained
    # on other noise after an evaluation pass (which sparsekit prune makes of the dense model) than without one, so
    # the CLI and sparsekit.finetune gave other weights for the same seed, data and recipe.
    import rich.progress  # noqa: F401 - imported already, as in a CLI run (its import's own draw: the test below)

    plain, shifted = _finetuned(0), _finetuned(1)
    assert all(torch.equal(plain[k], shifted[k]) for k in plain)


def test_the_first_finetune_in_a_process_trains_as_the_next_one(monkeypatch):
    # finetune seeded the generators, then imported rich for its progress bar; rich's first import draws from Python's
    # generator, so the first sparsekit.finetune in a process trained on other augmentation than a second one.
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)  # as in a fresh process (put back after the test)
    first, second = _finetuned(0), _finetuned(0)
    assert all(torch.equal(first[k], second[k]) for k in first)
