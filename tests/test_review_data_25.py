"""The data a user brings (review 25): what validate's dry run and load_data check before a run trains on it."""

from __future__ import annotations

import pytest
from conftest import user_module

from sparsekit.data import load_data
from sparsekit.errors import DataError

SHIFTED = """
import torch
from torch.utils.data import DataLoader, TensorDataset

def _loader(labels):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(len(labels), 4, generator=g), labels), batch_size=4)

def good():
    return _loader(torch.arange(8) % 3), _loader(torch.arange(8) % 3)

def val_from_one():
    return _loader(torch.arange(8) % 3), _loader(torch.arange(8) % 3 + 1)

def train_shifted():
    return _loader(torch.arange(8) % 3 + 5), _loader(torch.arange(8) % 3)
"""


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("val_from_one", "label 3 is outside the model's 3 outputs .in the val"),
        ("train_shifted", "label 7 is outside the model's 3 outputs .in the train"),
    ],
)
def test_a_callables_labels_past_the_models_outputs_are_refused_when_the_data_is_loaded(tmp_path, monkeypatch, name,
                                                                                        match):  # fmt: skip
    # With the model's outputs known (num_classes), a callable's labels were not compared with them at all: validate's
    # dry run passed, and only prune's dense evaluation refused the same source.
    user_module(tmp_path, monkeypatch, "sk_review25_labels", SHIFTED)
    assert load_data("sk_review25_labels:good", input_shape=[1, 4], num_classes=3).num_classes == 3
    with pytest.raises(DataError, match=rf"{match} loader's first batch\); labels must be 0..2"):
        load_data(f"sk_review25_labels:{name}", input_shape=[1, 4], num_classes=3)


def test_arrays_beside_x_and_y_in_an_npz_are_named_as_unused(tmp_path, caplog):
    # x_val / y_val (the user's own validation split) were ignored without a word: the accuracy was measured on a
    # split of x, not on the validation set the file holds.
    import numpy as np

    x, y = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32), np.arange(12) % 3
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez(tmp_path / "split.npz", x=x[:8], y=y[:8], x_val=x[8:], y_val=y[8:])
    with caplog.at_level("WARNING", logger="sparsekit"):
        load_data(str(tmp_path / "plain.npz"), input_shape=[1, 4])
        assert not caplog.records
        bundle = load_data(str(tmp_path / "split.npz"), input_shape=[1, 4])
    assert len(bundle.train.dataset) + len(bundle.val.dataset) == 8  # only x and y are used, as the warning says
    [record] = caplog.records
    assert "arrays x_val, y_val are not used" in record.getMessage()
    assert "pkg.module:callable" in record.getMessage()


NAN = """
import torch
from torch.utils.data import DataLoader, TensorDataset

def _loader(nan):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    if nan:
        x[1, 2] = float(nan)
    return DataLoader(TensorDataset(x, torch.arange(8) % 3), batch_size=4)

def train_nan():
    return _loader("nan"), _loader(None)

def val_inf():
    return _loader(None), _loader("inf")
"""


@pytest.mark.parametrize("name", ["train_nan", "val_inf"])
def test_a_callables_nan_or_infinite_inputs_are_refused_when_the_data_is_loaded(tmp_path, monkeypatch, name):
    # An .npz's NaN x is refused at loading; a callable's passed load_data (so validate's dry run) and was refused
    # only once prune ran the model on it (its dense evaluation, or the training loss).
    user_module(tmp_path, monkeypatch, "sk_review25_nan", NAN)
    loader = "train" if name == "train_nan" else "val"
    with pytest.raises(DataError, match=f"the {loader} loader yields NaN or infinite inputs"):
        load_data(f"sk_review25_nan:{name}", input_shape=[1, 4], num_classes=3)


@pytest.mark.parametrize(("bad", "shown"), [(float("nan"), "nan"), (1.5, "1.5")])
def test_float_labels_that_are_not_whole_are_named_not_their_dtype(tmp_path, bad, shown):
    # Whole float labels are taken; a NaN (a missing label) or 1.5 among them was refused as "got dtype float64",
    # which read as a refusal of float labels.
    import numpy as np

    y = (np.arange(10) % 3).astype(np.float64)
    np.savez(tmp_path / "whole.npz", x=np.ones((10, 4), np.float32), y=y)
    assert load_data(str(tmp_path / "whole.npz"), input_shape=[1, 4]).num_classes == 3
    y[4] = bad
    np.savez(tmp_path / "bad.npz", x=np.ones((10, 4), np.float32), y=y)
    with pytest.raises(DataError, match=rf"1 of its 10 float64 labels are not whole numbers \(e\.g\. {shown}\)"):
        load_data(str(tmp_path / "bad.npz"), input_shape=[1, 4])


TENSORS = """
import torch
from torch.utils.data import DataLoader, TensorDataset

def _xy():
    return torch.randn(8, 4), torch.arange(8) % 3

def pairs():
    return _xy(), _xy()

def val_pair():
    return DataLoader(TensorDataset(*_xy()), batch_size=4), _xy()
"""


@pytest.mark.parametrize(("name", "loader"), [("pairs", "train"), ("val_pair", "val")])
def test_tensors_returned_in_place_of_a_loader_are_named_as_such(tmp_path, monkeypatch, name, loader):
    # (x, y) tensors for a loader were refused as "the train loader must yield (inputs, labels) pairs, got Tensor".
    user_module(tmp_path, monkeypatch, "sk_review25_tensors", TENSORS)
    with pytest.raises(DataError, match=rf"returned 2 tensors as the {loader} loader, not a loader; wrap them"):
        load_data(f"sk_review25_tensors:{name}", input_shape=[1, 4], num_classes=3)


DICTS = """
import torch
from torch.utils.data import DataLoader, Dataset

class Samples(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"pixels": torch.randn(4), "label": i % 3}

def loaders():
    return DataLoader(Samples(), batch_size=4), DataLoader(Samples(), batch_size=4)
"""


def test_a_dict_batch_names_its_keys_and_the_collate_fn_that_makes_it_a_pair(tmp_path, monkeypatch):
    # A Dataset of dicts (as Hugging Face's are) was refused as "must yield (inputs, labels) pairs, got dict" alone.
    user_module(tmp_path, monkeypatch, "sk_review25_dicts", DICTS)
    with pytest.raises(DataError, match=r"got dict \(keys 'pixels', 'label'\); give the DataLoader a collate_fn"):
        load_data("sk_review25_dicts:loaders", input_shape=[1, 4], num_classes=3)


LABEL_SHAPES = """
import torch
from torch.utils.data import DataLoader, TensorDataset

def _loaders(y):
    data = TensorDataset(torch.randn(8, 4), y)
    return DataLoader(data, batch_size=4), DataLoader(data, batch_size=4)

def one_hot():
    return _loaders(torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float())

def column():
    return _loaders((torch.arange(8) % 3).reshape(-1, 1))
"""


@pytest.mark.parametrize(("name", "fix"), [("one_hot", r"one-hot rows or scores\? yield y.argmax\(dim=1\)"),
                                           ("column", r"a column of labels\? yield y.reshape\(-1\)")])  # fmt: skip
def test_a_callables_one_hot_or_column_labels_are_told_how_to_become_class_indices(tmp_path, monkeypatch, name, fix):
    # An .npz's one-hot y is told "re-save it with y=y.argmax(axis=1)"; a callable's got the two shapes alone.
    user_module(tmp_path, monkeypatch, "sk_review25_shapes", LABEL_SHAPES)
    with pytest.raises(DataError, match=rf"labels \[N\], got \[4, 4\] and \[4, \d\]; {fix}"):
        load_data(f"sk_review25_shapes:{name}", input_shape=[1, 4], num_classes=3)
