"""Review (contract angle, round 21): INTERFACE.md and README.md held against what the code does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize(
    ("kwargs", "input_shape", "match"),
    [
        # A shape without the batch: every command that opened the file then failed ("does not accept it").
        ({}, (8,), "no batch dimension"),
        # Keys that are no names and NaN: load_model called the written file damaged.
        ({1: 2}, (1, 8), "not a name"),
        ({"width": float("nan")}, (1, 8), "finite"),
        ({"width": float("inf")}, (1, 8), "finite"),
    ],
)
def test_save_model_refuses_what_load_model_would_call_damaged(tmp_path, kwargs, input_shape, match):
    path = tmp_path / "m.pt"
    with pytest.raises(sparsekit.ModelFileError, match=match):
        sparsekit.save_model(_net(), path, "torch.nn:Identity", kwargs=kwargs, input_shape=input_shape)
    assert not path.exists()


def test_save_model_still_writes_a_batch_first_shape(tmp_path):
    path = sparsekit.save_model(_net(), tmp_path / "m.pt", "torch.nn:Identity", kwargs={"w": 1.5}, input_shape=(1, 8))
    saved = torch.load(path, weights_only=True)
    assert saved["input_shape"] == [1, 8] and saved["kwargs"] == {"w": 1.5}


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        torch.manual_seed(0)
        x = torch.randn(self.n, 8)
        return iter(zip(x, (x[:, 0] > 0).long(), strict=True))


def _fit(val):
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    train = [(x[i : i + 16], (x[i : i + 16, 0] > 0).long()) for i in (0, 16)]
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    return sparsekit.finetune(_net(), recipe, train, val, progress=False)


def test_finetune_evaluates_a_val_loader_without_len(one_thread):
    # The validation loader sets no schedule: one over an IterableDataset was refused with the training loader's
    # reason ("has no len(), which sets the steps of an epoch").
    _, history, _ = _fit(torch.utils.data.DataLoader(_Stream(32), batch_size=8))
    assert len(history) == 1 and 0.0 <= history[0]["val_accuracy"] <= 1.0 and history[0]["val_loss"] > 0


def test_finetune_names_an_empty_or_missing_val_loader(one_thread):
    with pytest.raises(sparsekit.DataError, match=r"finetune\(val_loader=...\): yielded no batches"):
        _fit(torch.utils.data.DataLoader(_Stream(0), batch_size=8))
    with pytest.raises(sparsekit.DataError, match=r"finetune\(val_loader=...\)") as err:
        _fit(None)
    assert "steps of an epoch" not in str(err.value)


class _BatchOfOne(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x.view(1, 8))  # written for a batch of 1


def test_export_says_a_batch_of_one_model_fixes_its_batch(tmp_path, one_thread):
    # It said "the model fails on a random float32 input of shape [1, 8] ...; give the shape it takes" about the
    # shape the model does take: the export traces a batch of 2.
    with pytest.raises(sparsekit.ExportError, match="runs on a batch of 1 but not of 2") as err:
        sparsekit.export_onnx(_BatchOfOne(), tmp_path / "m.onnx", input_shape=(1, 8))
    assert "give the shape it takes" not in str(err.value)
    with pytest.raises(sparsekit.ExportError, match="fails on a random float32 input of shape"):
        sparsekit.export_onnx(_net(), tmp_path / "n.onnx", input_shape=(1, 7))  # a wrong shape is still one


def test_input_shape_check_names_a_forward_that_fixes_the_batch():
    # The commands' check said "so its first dimension is not the batch; give the whole input shape, batch first"
    # of [1, 8], the whole shape batch first, for a forward written for a batch of 1.
    from sparsekit.errors import DataError
    from sparsekit.inspection import check_input_shape

    with pytest.raises(DataError, match="the forward fixes the batch size") as err:
        check_input_shape(_BatchOfOne(), [1, 8])
    assert "so its first dimension is not the batch" not in str(err.value)
    with pytest.raises(DataError, match=r"did you leave out the batch dimension"):  # still told where it is so
        check_input_shape(nn.Sequential(nn.Conv1d(1, 4, 3)), [1, 8])  # [1, 8] is one unbatched sample
