"""Found by review following README.md as a new user from an installed wheel (a fresh venv, an empty folder,
one's own models run with the shipped recipes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input, user_module
from torch import nn

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import TargetError

SEQUENTIAL = """
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))
"""


# --- a shipped recipe's layer names on one's own model: what to do, not only that nothing matched --------------------


def _sequential() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        ("lenet-gradual-magnitude-90", "pruning.0.layers.exclude"),  # exclude: [fc3]
        ("lenet-l1-row-50", "pruning.0.layers.include"),  # include: [fc1, fc2]
        ("resnet-structured-50", "pruning.0.ignore"),  # ignore: [fc]
    ],
)
def test_a_shipped_recipes_layer_names_that_match_nothing_say_how_to_name_the_models_own(recipe, field):
    # Before: "pruning[0].layers.exclude: 'fc3' matches no layer; prunable layers are: 1 (Linear), ..." and nothing
    # on what to do, about a recipe file under site-packages that a wheel user should not edit.
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model = _sequential() if "lenet" in recipe else cnn
    with pytest.raises(TargetError) as caught:
        sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    message = str(caught.value)
    assert "prunable layers are: " in message
    assert f"overrides=['{field}=[\"NAME\", ...]']" in message, message
    # the remedy works as written, names quoted (an nn.Sequential's 5, unquoted, is a number and refused)
    name = "5" if "exclude" in field else "1" if "include" in field else "3"
    fixed = sparsekit.load_recipe(recipe, overrides=[f'{field}=["{name}"]'])
    sparsekit.Pruner(model, fixed, steps_per_epoch=4)


def test_the_cli_names_the_override_to_paste_and_it_runs(tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, "seqnet", SEQUENTIAL)
    import seqnet

    monkeypatch.chdir(tmp_path)
    torch.save(seqnet.build().state_dict(), tmp_path / "w.pt")
    args = ["validate", "lenet-gradual-magnitude-90", "w.pt", "--arch", "seqnet:build", "--data", "synthetic"]
    result = CliRunner().invoke(main, args)
    line = assert_bad_input(result, "pruning[0].layers.exclude: 'fc3' matches no layer", "5 (Linear)")
    pasted = re.search(r"--set ('[^']*')", line)
    assert pasted is not None, line
    override = shlex.split(pasted.group(1))[0].replace("NAME", "5").replace(", ...", "")
    result = CliRunner().invoke(main, [*args, "--set", override])
    assert result.exit_code == 0, result.output


# --- README's "Every key, with its default" block holds every key ----------------------------------------------------


def test_the_readmes_every_key_block_names_every_key_of_the_schema():
    # Before: finetune.loss and gradient's score_every were missing from the block the README calls "Every key, with
    # its default" (a wheel user's only copy of the recipe keys besides `sparsekit recipes --reference`).
    import yaml

    from sparsekit import recipe as schema

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("Every key, with its default")
    block = yaml.safe_load(re.search(r"```yaml\n(.*?)```", readme[start:], re.S).group(1))
    sections = {"model": schema.ModelSpec, "data": schema.DataSpec, "finetune": schema.FinetuneSpec}
    sections |= {"export": schema.ExportSpec, "benchmark": schema.BenchmarkSpec}
    missing = [
        f"{name}.{key}" for name, spec in sections.items() for key in spec.model_fields if key not in block[name]
    ]
    assert set(schema.Recipe.model_fields) <= set(block), set(schema.Recipe.model_fields) - set(block)
    written: dict[str, set[str]] = {}
    for entry in block["pruning"]:
        written.setdefault(entry["method"], set()).update(entry)
    # the `sparsity: auto, target` and `layer_sparsity` lines are magnitude's, "or gradient" (their comment)
    written["gradient"] |= {"target", "layer_sparsity"}
    specs = dict(zip(schema.METHOD_NAMES, schema.METHOD_SPECS, strict=True))
    for method, spec in specs.items():
        # layers and schedule are the commented lines every entry shares
        missing += [
            f"{method}.{key}" for key in spec.model_fields if key not in written[method] | {"layers", "schedule"}
        ]
    assert not missing, missing


# --- a recipe's .npz beside it, run from another folder -------------------------------------------------------------


def test_a_recipes_npz_beside_it_but_not_in_the_current_folder_says_so_and_how_to_use_it(tmp_path, monkeypatch):
    # README: "a relative one is read from the current folder, not the recipe's". Before, the error said only
    # "data.source file 'd.npz' not found (relative paths start at the current directory ...)" while the file was
    # right there beside the recipe; now it names that file and how to use it.
    import numpy as np

    from sparsekit.data import load_data
    from sparsekit.errors import DataError

    (tmp_path / "sub").mkdir()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "sub" / "d.npz", x=rng.random((40, 8), dtype=np.float32), y=rng.integers(0, 2, 40))
    (tmp_path / "sub" / "r.yaml").write_text("version: 1\ndata: {source: d.npz}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as caught:
        load_data("d.npz", named_in="sub/r.yaml", input_shape=[1, 8])
    message = str(caught.value)
    assert message.startswith("sub/r.yaml: data.source file 'd.npz' not found in the current folder"), message
    assert "sub/d.npz" in message and "data='sub/d.npz'" in message
    result = CliRunner().invoke(main, ["validate", "sub/r.yaml"])  # the recipe alone reads no data
    assert result.exit_code == 0, result.output
    # the remedy works as written; from the recipe's folder the path is found as before
    assert load_data("sub/d.npz", input_shape=[1, 8], field="data").train.dataset is not None
    monkeypatch.chdir(tmp_path / "sub")
    assert load_data("d.npz", named_in="r.yaml", input_shape=[1, 8]).train.dataset is not None
    # a file that is nowhere keeps the old words
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="relative paths start at the current directory"):
        load_data("gone.npz", named_in="sub/r.yaml", input_shape=[1, 8])


def test_the_cli_names_the_npz_beside_the_recipe_as_a_data_option(tmp_path, monkeypatch):
    import numpy as np

    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "d.npz", x=np.zeros((40, 784), np.float32), y=np.arange(40) % 10)
    (tmp_path / "sub" / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 784]}\ndata: {source: d.npz}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    user_module(tmp_path, monkeypatch, "seqnet", SEQUENTIAL)
    import seqnet

    monkeypatch.chdir(tmp_path)
    torch.save(seqnet.build().state_dict(), tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["validate", "sub/r.yaml", "w.pt", "--arch", "seqnet:build"])
    assert_bad_input(result, "sub/r.yaml: data.source file 'd.npz' not found", "--data sub/d.npz")


# --- README's command synopses -------------------------------------------------------------------------------------


def _synopses() -> dict[str, str]:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme[readme.index("## Commands") :].split("```")[1]
    return {m.group(1): m.group(0) for m in re.finditer(r"^sparsekit (\w+) .*$", block, re.M)}


def test_every_command_taking_arch_lists_it_in_the_readmes_synopsis():
    # Before: `sparsekit inspect MODEL`, `sparsekit export MODEL [-o FILE.onnx] ...` and `sparsekit sensitivity MODEL
    # RECIPE ...` left --arch out, which a wheel user's own checkpoint needs there (its factory runs only when
    # named): following the synopsis gave "factory names the code 'mynet:LeNet' ... pass --arch".
    synopses = _synopses()
    assert set(synopses) == set(main.commands), set(main.commands) ^ set(synopses)
    for name, command in main.commands.items():
        flags = {opt for param in command.params for opt in getattr(param, "opts", [])}
        written = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", synopses[name]))
        assert written <= flags, (name, written - flags)  # every option the synopsis names exists
        if "--arch" in flags:
            assert "--arch" in written, synopses[name]
