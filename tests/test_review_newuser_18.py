"""A new user's first hour from a wheel: their own model files and recipes (review round 18)."""

from __future__ import annotations

import argparse

import pytest
import torch

import sparsekit
from examples.models import mlp
from sparsekit.errors import ModelFileError
from sparsekit.modelio import read_model


def test_training_checkpoint_with_its_run_arguments_reads_its_weights(tmp_path):
    # timm's train.py and many scripts save {"state_dict": ..., "args": argparse.Namespace(...)}: the docs say a
    # training checkpoint's other entries are ignored, but the Namespace made the whole file refused as a pickled
    # model, even with the trust flag.
    model = mlp(hidden=[8])
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1), "epoch": 3}, path)
    loaded = read_model(path, arch="examples.models:mlp", kwargs={"hidden": [8]})
    x = torch.randn(2, 64)
    torch.testing.assert_close(loaded.model(x), model.eval()(x))
    assert any("argparse.Namespace" in n and "not unpickled" in n for n in loaded.notes)


def test_weights_that_need_the_refused_class_stay_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save({"model": mlp(hidden=[8]), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ModelFileError, match="examples.models.MLP|pickled Python object"):
        sparsekit.load_model(path, arch="examples.models:mlp", kwargs={"hidden": [8]})
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"w": argparse.Namespace()}}, bad)
    with pytest.raises(ModelFileError, match="argparse.Namespace"):
        read_model(bad, arch="examples.models:mlp", kwargs={"hidden": [8]})


def test_weights_one_level_down_beside_other_parts_say_so(tmp_path):
    # A Lightning module holding the model and a weighted loss saves model.* beside criterion.weight: the error
    # said "check the architecture and its kwargs", which were right; it now names the prefix and what to save.
    model = mlp(hidden=[8])
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.ones(10)
    path = tmp_path / "lit.ckpt"
    torch.save({"state_dict": state, "epoch": 1}, path)
    with pytest.raises(ModelFileError, match=r"every weight of examples.models:mlp under 'model\.'") as err:
        read_model(path, arch="examples.models:mlp", kwargs={"hidden": [8]})
    assert "criterion.weight" in str(err.value) and "kwargs" not in str(err.value)


def test_a_cast_of_every_tensor_names_the_integer_buffer_it_converted(tmp_path):
    # {k: v.half()} over a BatchNorm model's state_dict makes num_batches_tracked a float: the error said the
    # tensors were "not plain dense tensors", which they are; it now says what the cast did and what to cast.
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in bn_net().state_dict().items()}, path)
    with pytest.raises(
        ModelFileError, match=r"1\.num_batches_tracked \(torch\.float16; the model has torch\.int64"
    ) as e:
        read_model(path, arch="tests.test_review_newuser_18:bn_net")
    assert "cast the floating tensors only" in str(e.value) and "not plain dense" not in str(e.value)


def bn_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 10))
