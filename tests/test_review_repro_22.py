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
