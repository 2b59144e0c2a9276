"""A model taking token ids that fails on the random ids the pipeline feeds is told so: the error said it failed
"on random normal inputs" and that token-id models cannot be pruned here, though they are fed ids and can."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekit.errors import DataError
from sparsekit.pipeline import check_input


class PicksFewIds(nn.Module):
    """Embeds ids (vocabulary 50) but accepts only ids below 3: zeros pass, random ids do not."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(50, 8), nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if int(ids.max()) >= 3:
            raise ValueError("id out of the range this model knows")
        return self.fc(self.emb(ids).mean(1))


def test_the_error_names_random_token_ids():
    with pytest.raises(DataError) as info:
        check_input(PicksFewIds(), [1, 6], "model m.pt")
    message = str(info.value)
    assert "random token ids" in message and "random normal" not in message, message
    assert "token ids for an nn.Embedding" not in message, message
