"""Model files: safe loading, sparsekit checkpoints, atomic writes."""

from __future__ import annotations

import re

import pytest
import torch

import sparsekit
from examples.models import lenet_300_100, mlp
from sparsekit.errors import ModelFileError
from sparsekit.fsutil import atomic_path
from sparsekit.modelio import read_model


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = mlp(hidden=[32])
    path = sparsekit.save_model(
        model, tmp_path / "m.pt", factory="examples.models:mlp", kwargs={"hidden": [32]}, input_shape=[1, 64]
    )
    raw = torch.load(path, weights_only=True)  # a plain dict: no code runs on load
    assert raw["format"] == "sparsekit/1" and raw["kwargs"] == {"hidden": [32]} and raw["input_shape"] == [1, 64]
    with pytest.raises(sparsekit.TrustError, match="examples.models:mlp"):
        read_model(path)  # the factory a file names runs only when confirmed
    loaded = read_model(path, trust_code=True)
    assert loaded.factory == "examples.models:mlp" and loaded.input_shape == [1, 64]
    x = torch.randn(3, 64)
    torch.testing.assert_close(loaded.model(x), model.eval()(x))
    assert not loaded.model.training


def test_state_dict_and_safetensors_need_and_use_arch(tmp_path):
    from safetensors.torch import save_file

    model = lenet_300_100()
    sd, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(model.state_dict(), sd)
    save_file(model.state_dict(), str(st))
    for path in (sd, st):
        with pytest.raises(ModelFileError, match="no architecture; name it \\(arch='pkg.module:callable'"):
            sparsekit.load_model(path)
        got = sparsekit.load_model(path, arch="examples.models:lenet_300_100")
        torch.testing.assert_close(got.fc1.weight, model.fc1.weight)


def test_training_checkpoint_dict_with_state_dict_key(tmp_path):
    model = mlp()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict()}, path)
    got = sparsekit.load_model(path, arch="examples.models:mlp")
    torch.testing.assert_close(got.fc3.bias, model.fc3.bias)


def test_pickled_module_refused_then_trusted(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(mlp(), path)
    with pytest.raises(ModelFileError, match="pass trust=True if you trust"):
        sparsekit.load_model(path)
    assert isinstance(sparsekit.load_model(path, trust=True), torch.nn.Module)


def test_wrong_kwargs_and_shapes_are_named(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(mlp(hidden=[16, 8]).state_dict(), path)
    with pytest.raises(ModelFileError) as err:
        sparsekit.load_model(path, arch="examples.models:mlp")
    assert "fc1.weight" in str(err.value) and "(16, 64)" in str(err.value)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_save_model_rejects_non_json_kwargs(tmp_path):
    with pytest.raises(ModelFileError, match="JSON"):
        sparsekit.save_model(mlp(), tmp_path / "m.pt", factory="examples.models:mlp", kwargs={"act": torch.relu})
    assert not (tmp_path / "m.pt").exists()


def test_a_structurally_pruned_model_saved_without_pruner_still_loads(tmp_path):
    """save_model(model, ...) after structured pruning, without pruner=: the Pruner left its removals on
    the model, so the file rebuilds the narrower layers instead of failing at load."""
    torch.manual_seed(0)
    model = mlp()
    recipe = sparsekit.Recipe(
        model={"input_shape": [1, 64]},
        pruning=[{"method": "structured", "ratio": 0.5, "round_to": 1, "schedule": "oneshot",
                  "layers": {"exclude": ["fc3"]}}],
    )  # fmt: skip
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    pruner.step()
    final = pruner.finalize()
    assert final.fc1.out_features < 128  # channels were removed
    path = sparsekit.save_model(final, tmp_path / "m.pt", factory="examples.models:mlp")
    loaded = read_model(path, trust_code=True)
    x = torch.randn(5, 64)
    torch.testing.assert_close(loaded.model(x), final.eval()(x))
    assert loaded.input_shape == [1, 64]


def test_narrower_weights_without_history_get_an_error_naming_the_cause(tmp_path):
    small = mlp(hidden=[32, 32])
    torch.save(small.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match=r"narrower than the architecture builds.*pruner=pruner"):
        sparsekit.load_model(tmp_path / "w.pt", arch="examples.models:mlp")
    # How to give the kwargs, in the caller's own spelling (it said "those given with it", and load_model
    # took none), and then they load.
    with pytest.raises(ModelFileError, match=r"give them: kwargs=\{\.\.\.\}, or model.kwargs in a recipe"):
        sparsekit.load_model(tmp_path / "w.pt", arch="examples.models:mlp")
    assert sparsekit.load_model(tmp_path / "w.pt", arch="examples.models:mlp", kwargs={"hidden": [32, 32]})
    from click.testing import CliRunner

    from sparsekit.cli import main

    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "w.pt"), "--arch", "examples.models:mlp"])
    assert result.exit_code == 2 and "give them: --kwargs '{...}' with --arch, or model.kwargs" in result.stderr
    # Wrong kwargs are the likelier cause, so they come first, with the ones used.
    with pytest.raises(ModelFileError, match=r"with kwargs \{'hidden': \[64, 32\]\}: either it needs"):
        read_model(tmp_path / "w.pt", arch="examples.models:mlp", kwargs={"hidden": [64, 32]})
    torch.save(lenet_300_100().state_dict(), tmp_path / "other.pt")  # another model: the usual advice
    with pytest.raises(ModelFileError, match=r"Check the architecture and its kwargs"):
        sparsekit.load_model(tmp_path / "other.pt", arch="examples.models:mlp")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"hello\n", "it is a text file, starting 'hello'"),  # the unpickler alone said "(101)"
        (b"version: 1\npruning: []\n", "it is a text file, starting 'version: 1'"),  # a recipe passed as the model
        (b"", "the file is empty"),
        # Text the unpickler reads as opcodes: "c" would name a class to import, "a" fails with "pop from empty list".
        (b"class Net(nn.Module):\n    pass\n", "it is a text file, starting 'class Net(nn.Module):'"),
        (b"abc", "it is a text file, starting 'abc'"),
        ("\ufeffseed: 0\n".encode(), "it is a text file, starting 'seed: 0'"),  # a byte-order mark first
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "Git LFS pointer"),
        (bytes(range(256)), "its bytes are not a pickle or torch archive"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path, content, says):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a readable PyTorch checkpoint") as err:
        read_model(path)
    assert says in str(err.value)


@pytest.mark.parametrize("fmt", ["sparsekit/9", "sparsekit/2"])
def test_a_checkpoint_of_another_format_version_is_refused_not_read_as_weights(tmp_path, fmt):
    path = sparsekit.save_model(mlp(), tmp_path / "m.pt", factory="examples.models:mlp", input_shape=[1, 64])
    ckpt = torch.load(path, weights_only=True)
    ckpt["format"] = fmt
    torch.save(ckpt, path)
    with pytest.raises(ModelFileError, match=rf"m.pt: a sparsekit checkpoint of format '{fmt}'.*upgrade sparsekit"):
        read_model(path, "examples.models:mlp")


def test_a_checkpoint_of_another_format_or_with_a_damaged_history_says_so(tmp_path):
    """`format: sparsekit-99` was read as a plain state_dict ("no architecture"); a malformed pruning_history
    without an input_shape asked for the input shape instead of naming the damage."""
    path = sparsekit.save_model(mlp(), tmp_path / "m.pt", factory="examples.models:mlp", input_shape=[1, 64])
    ckpt = torch.load(path, weights_only=True)
    for fmt in ("sparsekit-99", "SPARSEKIT/2", "other/1"):
        torch.save({**ckpt, "format": fmt}, tmp_path / "fmt.pt")
        with pytest.raises(ModelFileError, match=rf"a sparsekit checkpoint of format '{re.escape(fmt)}'"):
            read_model(tmp_path / "fmt.pt", arch="examples.models:mlp")
    torch.save({**ckpt, "input_shape": None, "pruning_history": [{"junk": 1}]}, tmp_path / "hist.pt")
    with pytest.raises(ModelFileError, match="its pruning_history is malformed"):
        read_model(tmp_path / "hist.pt", arch="examples.models:mlp")
