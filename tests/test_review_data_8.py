"""The data a user brings (review 8): labels in every batch, and results that do not depend on the command."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_bad_input, fast_prune, user_module
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsekit.errors import DataError
from sparsekit.train import calibrate, evaluate

MLP = ("--arch", "examples.models:mlp")


def _scored(labels: torch.Tensor, batch_size: int = 10) -> dict[str, float]:
    torch.manual_seed(0)
    model = nn.Linear(4, 10)
    return evaluate(model, DataLoader(TensorDataset(torch.randn(len(labels), 4), labels), batch_size=batch_size))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        # one-hot rows: cross-entropy took them for class probabilities, and the accuracy compared a [10] argmax
        # with [10, 10] rows by broadcasting: 0.135 "accuracy" over 1,000 "labels", a loss 10x too small
        (nn.functional.one_hot(torch.arange(100) % 10, 10).float(), r"float32 labels of shape \[10, 10\]"),
        (nn.functional.one_hot(torch.arange(100) % 10, 10), r"int64 labels of shape \[10, 10\]"),
        ((torch.arange(100) % 10).float(), "float32 labels"),
        # -100 is cross-entropy's ignore_index: those samples left the loss's sum but not its count
        (torch.where(torch.arange(100) < 50, -100, torch.arange(100) % 10), "label -100 is outside"),
        (torch.arange(100) % 10 + 5, "label 1[0-4] is outside the model's 10 outputs"),
    ],
)
def test_labels_that_are_not_one_class_per_input_are_refused_in_every_batch(labels, match):
    with pytest.raises(DataError, match=match):
        _scored(labels)


def test_int32_labels_are_class_indices_like_int64_ones():
    # A callable's loaders pass load_data's check with int32 labels; cross-entropy then refused them (exit 1).
    labels = torch.arange(100) % 10
    assert _scored(labels.to(torch.int32)) == _scored(labels) == _scored(labels.to(torch.uint8))
    model = nn.Linear(4, 10)
    loader = DataLoader(TensorDataset(torch.randn(20, 4), labels[:20].to(torch.int16)), batch_size=10)
    calibrate(model, type("Pruner", (), {"step": lambda self: None})(), loader, 2)  # gradients of int16 labels


DATA = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from sklearn.datasets import load_digits

def loaders(val_labels):
    d = load_digits()
    x, y = torch.tensor(d.data / 16, dtype=torch.float32), torch.tensor(d.target)
    train = DataLoader(TensorDataset(x[:1400], y[:1400].to(torch.int32)), batch_size=64, shuffle=True)
    return train, DataLoader(TensorDataset(x[1400:], val_labels(y[1400:])), batch_size=64)

def int32():
    return loaders(lambda y: y.to(torch.int32))

def float_val():
    return loaders(lambda y: y.float())
"""

RECIPE = (
    "model: {input_shape: [1, 64]}\ndata: {source: digits}\n"
    "finetune: {epochs: 1, max_steps_per_epoch: 2}\n"
    "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    "benchmark: {enabled: false}\n"
)


def test_a_data_callables_labels_are_checked_in_every_batch_of_a_prune_run(tmp_path, mlp_checkpoint, monkeypatch):
    user_module(tmp_path, monkeypatch, "sk_review8_labels", DATA)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    ok = fast_prune(mlp_checkpoint, recipe, tmp_path / "a", *MLP, "--data", "sk_review8_labels:int32")
    assert ok.exit_code == 0, ok.stderr
    # Only the first training batch was checked: float validation labels were "unexpected failure" (exit 1).
    bad = fast_prune(mlp_checkpoint, recipe, tmp_path / "b", *MLP, "--data", "sk_review8_labels:float_val")
    assert_bad_input(bad, "the val loader must yield integer class labels", "float32")  # (review 25: at loading)


SPLIT = """
import torch
from torch.utils.data import DataLoader, TensorDataset, random_split
from sklearn.datasets import load_digits

def loaders():
    d = load_digits()
    data = TensorDataset(torch.tensor(d.data / 16, dtype=torch.float32), torch.tensor(d.target))
    train, val = random_split(data, [1400, len(data) - 1400])  # torch's global generator, as most users split
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=64)
"""


def test_sensitivity_measures_on_the_validation_samples_a_prune_run_uses(tmp_path, mlp_checkpoint, monkeypatch):
    # prune seeded torch with the recipe's seed before calling the data callable; sensitivity (and validate) did
    # not, so their "validation split" was other samples than the one prune allocated on and reported, while
    # sensitivity.json said it was drawn with the recipe's seed.
    import json

    from click.testing import CliRunner

    from sparsekit.cli import main

    user_module(tmp_path, monkeypatch, "sk_review8_split", SPLIT)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("sparsity: 0.5", "sparsity: auto, target: 0.5") + "seed: 3\n")
    data = ("--data", "sk_review8_split:loaders")
    args = ["sensitivity", str(mlp_checkpoint), str(recipe), *MLP, *data, "-o", str(tmp_path / "s"), "--no-progress"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert fast_prune(mlp_checkpoint, recipe, tmp_path / "p", *MLP, *data).exit_code == 0
    alone, in_run = (json.loads((tmp_path / d / "sensitivity.json").read_text()) for d in ("s", "p"))
    assert alone["data_digest"] == in_run["data_digest"]
    assert alone["dense_loss"] == in_run["dense_loss"]


BATCH_SAMPLER = """
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

def loaders():
    data = TensorDataset(torch.randn(40, 4, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 4)
    order = BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(0)), 8, drop_last=False)
    return DataLoader(data, batch_sampler=order), DataLoader(data, batch_size=8)
"""


def test_checking_a_callables_loaders_leaves_a_batch_samplers_generator_as_it_was(tmp_path, monkeypatch):
    # The one-batch check restored the loader's and its sampler's generators, not a batch sampler's own sampler's:
    # the first epoch then ran in another order than the same loaders in the user's own loop.
    from sparsekit.data import load_data

    module = user_module(tmp_path, monkeypatch, "sk_review8_batch_sampler", BATCH_SAMPLER)
    checked = load_data("sk_review8_batch_sampler:loaders", input_shape=[1, 4]).train
    own = module.loaders()[0]
    assert [y.tolist() for _, y in checked] == [y.tolist() for _, y in own]


SAMPLER = """
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from sklearn.datasets import load_digits

def loaders():
    d = load_digits()
    data = TensorDataset(torch.tensor(d.data / 16, dtype=torch.float32), torch.tensor(d.target))
    train, val = torch.utils.data.Subset(data, range(1400)), torch.utils.data.Subset(data, range(1400, len(data)))
    order = RandomSampler(train, generator=torch.Generator().manual_seed(0))
    return DataLoader(train, batch_size=64, sampler=order), DataLoader(val, batch_size=64)
"""


NOISY = """
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from sklearn.datasets import load_digits

d = load_digits()
X, Y = torch.tensor(d.data / 16, dtype=torch.float32), torch.tensor(d.target)

class Noisy(Dataset):  # random augmentation from numpy's and Python's generators, as many datasets do
    def __init__(self, rows):
        self.rows = rows
    def __len__(self):
        return len(self.rows)
    def __getitem__(self, i):
        noise = np.random.standard_normal(64).astype("float32") * 0.1 * random.random()
        return X[self.rows[i]] + torch.from_numpy(noise), Y[self.rows[i]]

def loaders():
    return DataLoader(Noisy(range(1400)), batch_size=64), DataLoader(Noisy(range(1400, len(Y))), batch_size=64)
"""


@pytest.mark.parametrize(
    "name, source",
    [("sk_review8_sampler", "SAMPLER"), ("sk_review8_noisy", "NOISY")],
    ids=["a samplers own generator", "numpy and python generators"],
)
def test_a_resume_draws_like_the_uninterrupted_run(tmp_path, mlp_checkpoint, monkeypatch, name, source):
    # The checkpoint kept the state of the loader's generator alone: a sampler's own one restarted from its seed on a
    # resume (the resumed epochs shuffled in the first epoch's order), and a dataset augmenting with numpy or Python
    # drew other noise in the resumed epochs: either trained to other weights than the run not stopped.
    user_module(tmp_path, monkeypatch, name, globals()[source])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("epochs: 1", "epochs: 2"))
    data = ("--data", f"{name}:loaders", *MLP)
    assert fast_prune(mlp_checkpoint, recipe, tmp_path / "full", *data).exit_code == 0
    assert fast_prune(mlp_checkpoint, recipe, tmp_path / "cut", *data, "--set", "finetune.epochs=1").exit_code == 0
    resumed = fast_prune(
        mlp_checkpoint, recipe, tmp_path / "cut", *data, "--resume", "--allow-change", "finetune.epochs"
    )
    assert resumed.exit_code == 0, resumed.stderr
    full, cut = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)


NUMPY_SPLIT = """
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from sklearn.datasets import load_digits

def loaders():
    d = load_digits()
    order = np.random.permutation(len(d.target))  # numpy's global generator, as many users split
    keep = sorted(range(1400), key=lambda _: random.random())  # and Python's, for good measure
    x, y = torch.tensor(d.data / 16, dtype=torch.float32)[order], torch.tensor(d.target)[order]
    return DataLoader(TensorDataset(x[keep], y[keep]), batch_size=64), DataLoader(TensorDataset(x[1400:], y[1400:]))
"""


def test_a_data_callable_drawing_from_numpy_or_python_gets_the_same_samples_in_every_run(
    tmp_path, mlp_checkpoint, monkeypatch
):
    # Only torch was seeded with the recipe's seed: each `sparsekit prune` (a new process, numpy seeded from the OS)
    # split such a callable's data anew, so the same recipe gave other accuracies on every run.
    import json
    import random

    import numpy as np

    user_module(tmp_path, monkeypatch, "sk_review8_numpy", NUMPY_SPLIT)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    reports = []
    for run in (1, 2):
        np.random.seed(run)  # what each new process starts with
        random.seed(run)
        out = tmp_path / f"run{run}"
        assert fast_prune(mlp_checkpoint, recipe, out, *MLP, "--data", "sk_review8_numpy:loaders").exit_code == 0
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[0]["dense"]["loss"] == reports[1]["dense"]["loss"]
    assert reports[0]["history"] == reports[1]["history"]


def test_nan_inputs_in_the_validation_data_are_a_data_error_not_a_nan_loss_in_the_report():
    # Training batches with NaN were refused; validation ones gave report.json a NaN loss (not valid JSON) and an
    # accuracy that scored every NaN row as class 0. An .npz with NaN is refused when it is read.
    x = torch.randn(40, 4)
    x[25, 1] = float("nan")
    loader = DataLoader(TensorDataset(x, torch.arange(40) % 10), batch_size=10)
    with pytest.raises(DataError, match="validation loader's batch 3 holds NaN or inf inputs"):
        evaluate(nn.Linear(4, 10), loader)


def test_sensitivity_with_max_batches_measures_every_probe_on_the_same_batches():
    # Each probe read the loader anew: one that shuffles gave the dense model and every probe its own first batch, so
    # the loss increases compared different samples (fc1's went below the dense loss at 50%, up and down after).
    from sparsekit.sensitivity import analyze

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    data = TensorDataset(torch.randn(200, 8), torch.arange(200) % 4)

    def shuffled() -> DataLoader:
        return DataLoader(data, batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(0))

    recipe = {"model": {"input_shape": [1, 8]}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    measured = analyze(model, recipe, shuffled(), max_batches=1)
    fixed = analyze(model, recipe, [next(iter(shuffled()))], max_batches=1)
    assert measured.dense_loss == fixed.dense_loss
    assert [row.points for row in measured.layers] == [row.points for row in fixed.layers]
