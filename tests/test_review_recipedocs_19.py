"""Review (recipedocs, round 19): recipes written from docs/recipe.md alone, on small models of one's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import TargetError


class _Nested(nn.Module):
    """A model whose layers sit inside containers, as most real ones do (``features.0``, ``classifier.1``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 16, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.mark.parametrize("key", ["include", "exclude"])
def test_a_container_name_in_layers_says_to_write_its_glob(key: str) -> None:
    # `exclude: [classifier]` was told "'classifier' matches no layer", and `include: [features]` that a
    # Sequential's "parameters are left as they are", though both name a module holding the layers meant.
    name = "features" if key == "include" else "classifier"
    recipe = {"version": 1, "pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": {key: [name]}}]}
    with pytest.raises(TargetError) as err:
        sparsekit.Pruner(_Nested(), recipe, steps_per_epoch=1)
    message = str(err.value)
    assert f"pruning[0].layers.{key}" in message
    assert f"write '{name}.*'" in message
    assert f"{name}.1 (" in message or f"{name}.0 (" in message
    assert "left as they are" not in message
    # and the glob it suggests does what was meant
    recipe["pruning"][0]["layers"] = {key: [f"{name}.*"]}
    pruner = sparsekit.Pruner(_Nested(), recipe, steps_per_epoch=1)
    assert set(pruner.methods[0].layers) == {"features.0", "features.2"}
