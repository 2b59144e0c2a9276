"""Mends from the eighth new-user review: a newcomer's own model files, outside the repository."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from sparsekit.cli import main
from tests.conftest import assert_bad_input, fast_prune, user_module


def test_bench_of_a_pytorch_file_says_to_export_it_first(tmp_path):
    # `sparsekit bench weights.pt` said only "not a readable ONNX model (DecodeError: ... Wire format was corrupt)".
    net = nn.Linear(4, 2)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    save_file(net.state_dict(), str(tmp_path / "weights.safetensors"))
    for name, kind in (("weights.pt", "torch.save"), ("weights.safetensors", "safetensors")):
        result = CliRunner().invoke(main, ["bench", str(tmp_path / name)])
        assert_bad_input(result, name, f"PyTorch model file ({kind}), not ONNX", "sparsekit export")
    # Any other non-ONNX file gets no such hint.
    (tmp_path / "notes.onnx").write_text("hello")
    line = assert_bad_input(CliRunner().invoke(main, ["bench", str(tmp_path / "notes.onnx")]), "notes.onnx")
    assert "PyTorch" not in line


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.bn(self.fc1(x)).relu())


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("module.", "saved inside DataParallel or DistributedDataParallel"),
        ("_orig_mod.", "saved after torch.compile"),
        ("model.", "saved from a module holding the model as 'model'"),
    ],
)
def test_a_state_dict_saved_from_a_wrapper_is_read_without_its_prefix(tmp_path, prefix, says):
    # A state_dict saved from DDP / torch.compile / a training module carries a prefix on every key. The error
    # first listed missing and unexpected keys and said to check the architecture; then it named the prefix and
    # told the user to strip it by hand. The keys map one to one onto the model's: they are read, with a note.
    net = Net()
    state = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    result = CliRunner().invoke(
        main, ["inspect", str(tmp_path / "w.pt"), "--arch", "tests.test_review_newuser_8:Net", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    import json

    (note,) = json.loads(result.stdout)["notes"]
    assert f"starts with {prefix!r} ({says})" in note
    from sparsekit import load_model

    loaded = load_model(tmp_path / "w.pt", arch="tests.test_review_newuser_8:Net")
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_prefix_that_leaves_keys_unmatched_is_still_refused(tmp_path):
    # Stripping is one to one or not at all: one extra key under the prefix keeps the strict error.
    state = {"module." + k: v for k, v in Net().state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "w.pt"), "--arch", "tests.test_review_newuser_8:Net"])
    assert_bad_input(result, "w.pt", "missing keys", "Check the architecture")


def test_other_mismatches_keep_their_hint(tmp_path):
    state = Net().state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "w.pt"), "--arch", "tests.test_review_newuser_8:Net"])
    line = assert_bad_input(result, "unexpected keys ['extra.weight']", "Check the architecture")
    assert "prefix" not in line


def test_a_checkpoint_dict_without_a_known_key_names_its_keys(tmp_path):
    # {"net": ..., "ema": ...} said only "holds a dict, not a state_dict": which keys it has, and which are read?
    torch.save({"epoch": 3, "net": Net().state_dict(), "optimizer": {}}, tmp_path / "ckpt.pt")
    result = CliRunner().invoke(
        main, ["inspect", str(tmp_path / "ckpt.pt"), "--arch", "tests.test_review_newuser_8:Net"]
    )
    assert_bad_input(result, "a dict of 'epoch', 'net', 'optimizer'", "'state_dict', 'model_state_dict' or 'model'")
    # Under one of those keys, beside the rest of a training checkpoint, it loads.
    torch.save({"epoch": 3, "model_state_dict": Net().state_dict(), "optimizer": {}}, tmp_path / "ok.pt")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "ok.pt"), "--arch", "tests.test_review_newuser_8:Net"])
    assert result.exit_code == 0, result.output


DATASETS = """
import torch
from torch.utils.data import TensorDataset


def datasets():
    ds = TensorDataset(torch.randn(40, 8), torch.randint(0, 3, (40,)))
    return ds, ds
"""


def test_a_data_callable_returning_datasets_is_told_to_return_dataloaders(tmp_path, monkeypatch):
    # A Dataset passes len() and yields (x, y) pairs, one sample at a time: the error gave the shapes [8] and []
    # and said nothing of why.
    user_module(tmp_path, monkeypatch, "newuser8data", DATASETS)
    torch.save(Net().state_dict(), tmp_path / "w.pt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {input_shape: [1, 8]}\n")
    args = ["validate", str(recipe), str(tmp_path / "w.pt"), "--arch", "tests.test_review_newuser_8:Net"]
    result = CliRunner().invoke(main, [*args, "--data", "newuser8data:datasets"])
    assert_bad_input(result, "got [8] and []", "not a batch: return DataLoaders, not Datasets")


def test_an_auto_recipe_that_cannot_be_set_up_fails_before_the_sensitivity_analysis(tmp_path, monkeypatch):
    # With ratio: auto, a structured entry reshaping the weights another entry masks was refused only after the
    # whole sensitivity analysis had run (minutes on a real model), though no allocated value could change it.
    import sparsekit.sensitivity

    def analyze(*args, **kwargs):
        raise AssertionError("the analysis ran")

    monkeypatch.setattr(sparsekit.sensitivity, "analyze", analyze)
    torch.save(Net().state_dict(), tmp_path / "w.pt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 8]}\ndata: {source: synthetic, synthetic_samples: 64}\n"
        "pruning:\n  - {method: structured, ratio: auto, target_macs: 0.5, layers: [fc1], round_to: null}\n"
        "  - {method: magnitude, sparsity: 0.5, layers: [fc2]}\n"
    )
    args = ["prune", str(tmp_path / "w.pt"), str(recipe), "--arch", "tests.test_review_newuser_8:Net"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "out")])
    assert_bad_input(result, "pruning[0] (structured) shrinks the inputs of 'fc2'", "pruning[1] (magnitude) masks")


@pytest.mark.parametrize(
    ("option", "given", "meant"),
    [
        ("--arch", "mypkg/nets.py:build", "'mypkg.nets:build'"),
        ("--arch", "./nets.py:build", "'nets:build'"),
        ("--arch", "nets.py:build", "'nets'"),  # a valid spec in form: the import fails, and says so
        ("--data", "mypkg/data.py:loaders", "'mypkg.data:loaders'"),
    ],
)
def test_a_file_path_given_for_a_module_names_the_module_meant(tmp_path, option, given, meant):
    # `--arch mypkg/nets.py:build`, a newcomer's first guess, said only that it is not of the form pkg.module:callable.
    torch.save(Net().state_dict(), tmp_path / "w.pt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {input_shape: [1, 8]}\n")
    arch = given if option == "--arch" else "tests.test_review_newuser_8:Net"
    args = ["validate", str(recipe), str(tmp_path / "w.pt"), "--arch", arch]
    if option == "--data":
        args += ["--data", given]
    result = CliRunner().invoke(main, args)
    assert_bad_input(result, given, f"a module is named by its import name, not its file: {meant}")


def test_a_data_file_given_as_the_model_is_named_as_data(tmp_path):
    # `sparsekit prune data.npz recipe.yaml`: the error quoted torch's "[enforce fail at inline_container.cc:180] .
    # file in archive is not in a subdirectory: x.npy".
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 8), "float32"), y=np.zeros(4, "int64"))
    line = assert_bad_input(CliRunner().invoke(main, ["inspect", str(tmp_path / "data.npz")]), "data.npz")
    assert "a numpy .npz archive: data, not a model" in line and "inline_container" not in line


def test_report_given_the_report_json_file_re_renders_its_folder(tmp_path):
    # `sparsekit report out/report.json` said "out/report.json/report.json: not found; run `sparsekit prune ... -o
    # out/report.json` first": advice that would prune into a folder named report.json.
    torch.save(Net().state_dict(), tmp_path / "w.pt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 8]}\ndata: {source: synthetic, synthetic_samples: 64}\n"
        "pruning: [{method: magnitude, sparsity: 0.5}]\nbenchmark: {enabled: false}\n"
    )
    out = tmp_path / "out"
    result = fast_prune(tmp_path / "w.pt", recipe, out, "--arch", "tests.test_review_newuser_8:Net")
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["report", str(out / "report.json")])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out / 'report.md'}" in result.output
    # Another file of the run is not a folder either: said so, not "report.md/report.json: not found".
    line = assert_bad_input(CliRunner().invoke(main, ["report", str(out / "report.md")]), "is a file")
    assert "report.md/report.json" not in line
