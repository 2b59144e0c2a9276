"""Criteria as scorers, and a user's own scorer (or torch-pruning importance) from the Python API."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch_pruning as tp
from torch import nn

import sparsekit
from sparsekit.masks import get_mask
from sparsekit.methods import scorers


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))


def magnitude_recipe(**extra: Any) -> sparsekit.Recipe:
    spec = {"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"include": ["0"]}, **extra}
    return sparsekit.Recipe(pruning=[spec])


def test_builtin_scorers_follow_their_papers():
    w = torch.tensor([[1.0, -2.0], [0.5, -0.1]])
    g = torch.tensor([[0.5, 1.0], [-4.0, 0.0]])
    assert torch.equal(scorers.magnitude(w, None), w.abs())
    assert torch.equal(scorers.taylor(w, g), (w * g).abs())
    assert torch.equal(scorers.movement(w, g), -(w * g))
    assert torch.equal(w, torch.tensor([[1.0, -2.0], [0.5, -0.1]]))  # inputs untouched
    with pytest.raises(ValueError, match="needs gradients"):
        scorers.taylor(w, None)
    assert set(scorers.BUILTIN) == {"magnitude", "taylor", "movement"}


def test_a_user_scorer_changes_which_weights_magnitude_prunes():
    default = mlp()
    sparsekit.Pruner(default, magnitude_recipe(), steps_per_epoch=1)
    custom = mlp()
    w = custom[0].weight.detach().clone()
    pruner = sparsekit.Pruner(custom, magnitude_recipe(), steps_per_epoch=1, scorers={0: lambda w, g: -w.abs()})
    kept_default, kept_custom = get_mask(default[0]), get_mask(custom[0])
    assert int((~kept_custom).sum()) == w.numel() // 2
    # The default keeps the largest weights; the "small first" scorer keeps the smallest.
    assert float(w[kept_default].abs().min()) >= float(w[~kept_default].abs().max())
    assert float(w[kept_custom].abs().max()) <= float(w[~kept_custom].abs().min())
    assert pruner.methods[0].report()["scorer"].endswith("<lambda>")
    assert "scorer" not in sparsekit.Pruner(mlp(), magnitude_recipe(), steps_per_epoch=1).methods[0].report()


def test_a_user_scorer_on_a_gradient_method_gets_each_steps_gradient():
    calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def by_gradient(weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        calls.append((weight, grad))
        assert grad is not None
        return grad.abs()  # keep the weights with the largest gradients

    model = mlp()
    r = sparsekit.Recipe(
        pruning=[{"method": "gradient", "sparsity": 0.5, "schedule": "oneshot", "layers": {"include": ["0"]}}]
    )
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=1, scorers={0: by_gradient})
    x, y = torch.randn(8, 12), torch.randint(0, 4, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    grad = model[0].weight.grad.detach().clone()
    pruner.step()
    assert len(calls) == 1 and calls[0][0].shape == (24, 12) and calls[0][0].dtype == torch.float32
    kept = get_mask(model[0])
    assert float(grad[kept].abs().min()) >= float(grad[~kept].abs().max())


def test_scorer_errors_are_clear():
    with pytest.raises(TypeError, match=r"scorers\[0\]: a scorer must be a callable"):
        sparsekit.Pruner(mlp(), magnitude_recipe(), steps_per_epoch=1, scorers={0: "magnitude"})
    with pytest.raises(ValueError, match="not an index of the recipe's pruning list"):
        sparsekit.Pruner(mlp(), magnitude_recipe(), steps_per_epoch=1, scorers={1: scorers.magnitude})
    l1 = sparsekit.Recipe(pruning=[{"method": "l1", "strength": 1e-4}])
    with pytest.raises(ValueError, match="ranks no weights"):
        sparsekit.Pruner(mlp(), l1, steps_per_epoch=1, scorers={0: scorers.magnitude})
    with pytest.raises(ValueError, match=r"returned \(24,\) for layer '0'"):
        sparsekit.Pruner(mlp(), magnitude_recipe(), steps_per_epoch=1, scorers={0: lambda w, g: w.sum(1)})


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def structured_recipe(**extra: Any) -> sparsekit.Recipe:
    spec = {"method": "structured", "ratio": 0.5, "schedule": "oneshot", **extra}
    return sparsekit.Recipe(model={"input_shape": [1, 1, 6, 6]}, pruning=[spec])


def test_a_torch_pruning_importance_object_ranks_structured_channels():
    torch.manual_seed(0)
    reference = sparsekit.Pruner(Stem(), structured_recipe(importance="l1"), steps_per_epoch=1)
    reference.finalize()
    torch.manual_seed(0)
    imp = tp.importance.GroupMagnitudeImportance(p=1)
    pruner = sparsekit.Pruner(Stem(), structured_recipe(importance="l2"), steps_per_epoch=1, scorers={0: imp})
    assert pruner.methods[0].importance is imp and not pruner.methods[0].needs_grad
    final = pruner.finalize()
    assert final.conv.out_channels == 4
    assert pruner.pruning_history == reference.pruning_history  # the same criterion as importance: l1
    assert pruner.methods[0].report()["importance"] == "GroupMagnitudeImportance"


def test_a_callable_importance_decides_which_channels_go():
    def late_channels_first(group: Any) -> torch.Tensor:
        return torch.arange(8, 0, -1, dtype=torch.float32)  # channel 0 most important

    pruner = sparsekit.Pruner(Stem(), structured_recipe(), steps_per_epoch=1, scorers={0: late_channels_first})
    pruner.finalize()
    assert pruner.pruning_history[0][:2] == ["conv", True]
    assert pruner.pruning_history[0][2] == [4, 5, 6, 7]


def test_a_taylor_importance_object_reads_gradients():
    pruner = sparsekit.Pruner(
        Stem(), structured_recipe(), steps_per_epoch=1, scorers={0: tp.importance.TaylorImportance()}
    )
    assert pruner.methods[0].needs_grad


def test_a_non_callable_importance_is_refused():
    with pytest.raises(TypeError, match=r"scorers\[0\]: structured pruning takes a torch-pruning importance"):
        sparsekit.Pruner(Stem(), structured_recipe(), steps_per_epoch=1, scorers={0: 0.5})


def test_a_bad_user_scorer_is_named_not_silently_used():
    """NaN scores would prune nothing; a torch-pruning importance here is called with the wrong arguments."""
    with pytest.raises(ValueError, match=r"scorers\[0\].*NaN or inf"):
        sparsekit.Pruner(mlp(), magnitude_recipe(), steps_per_epoch=1, scorers={0: lambda w, g: w * float("nan")})

    def importance_like(group):  # one argument: the structured kind of scorer
        return torch.ones(3)

    with pytest.raises(TypeError, match=r"scorers\[0\].*fn\(weight, grad\)"):
        sparsekit.Pruner(mlp(), magnitude_recipe(), steps_per_epoch=1, scorers={0: importance_like})
