"""``sparsekit.rehearse`` is public: a training loop of one's own can find, before training, what a structured
entry's removal step would fail on mid-run (here a residual add from the input, whose width cannot change)."""

import pytest
import torch
from torch import nn

import sparsekit


class FromInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.fc2(torch.relu(self.fc1(x))))


def _recipe(layer: str) -> dict:
    return {
        "version": 1,
        "model": {"input_shape": [1, 16]},
        "finetune": {"epochs": 2},
        "pruning": [
            {"method": "structured", "ratio": 0.5, "layers": [layer], "schedule": {"start_epoch": 1, "end_epoch": 1}}
        ],
    }


def test_rehearse_finds_before_training_what_the_loop_hits_mid_run():
    torch.manual_seed(0)
    model = FromInput()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(sparsekit.TargetError, match="fc2") as found:
        sparsekit.rehearse(model, _recipe("fc2"), input_shape=[1, 16], steps_per_epoch=4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    # what the loop itself would have raised, three optimizer steps later
    pruner = sparsekit.Pruner(model, _recipe("fc2"), steps_per_epoch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsekit.TargetError, match="fc2"):
        for _ in range(8):
            opt.zero_grad()
            model(torch.randn(8, 16)).logsumexp(1).mean().backward()
            opt.step()
            pruner.step()
    assert "fc2" in str(found.value)


def test_rehearse_of_a_removable_layer_reports_its_channels():
    model = FromInput()
    r = sparsekit.rehearse(model, _recipe("fc1"), input_shape=[1, 16], steps_per_epoch=4)
    assert r.events == 1
    assert r.methods[0]["channels"]["fc1"] == [32, 16]
    assert model.fc1.out_features == 32
