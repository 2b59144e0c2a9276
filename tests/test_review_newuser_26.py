"""Found by a new user following the README from an installed wheel, in a scratch folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsekit.errors import SparsekitError
from sparsekit.trust import load_callable

NET = "from torch import nn\n\n\ndef build():\n    return nn.Linear(4, 2)\n"


@pytest.mark.parametrize("layout", ["subfolder", "parent", "package"])
def test_arch_run_from_the_wrong_folder_names_the_folder_holding_the_module(tmp_path, monkeypatch, layout):
    # `sparsekit prune proj/weights.pt ... --arch mynet:build` from proj's parent (or from inside the output folder)
    # said only "run from the folder that contains it": the user had to guess which one. It now names it.
    proj = tmp_path / "proj"
    (proj / "out").mkdir(parents=True)
    if layout == "package":
        (proj / "mynet").mkdir()
        (proj / "mynet" / "__init__.py").write_text(NET)
    else:
        (proj / "mynet.py").write_text(NET)
    monkeypatch.chdir(proj / "out" if layout == "parent" else tmp_path)
    with pytest.raises(SparsekitError) as err:
        load_callable("mynet:build", kind="model", field="arch")
    expected = "../" if layout == "parent" else "proj/"
    assert f"'mynet' is in {expected}: run from that folder" in str(err.value)


def test_arch_of_a_module_nowhere_near_gets_no_folder_hint(tmp_path, monkeypatch):
    # The hint must not invent a place: a module that no nearby folder holds gets the plain message.
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "other.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SparsekitError) as err:
        load_callable("mynet:build", kind="model", field="arch")
    assert "cannot import module 'mynet'" in str(err.value)
    assert "run from that folder" not in str(err.value)


def test_a_mistyped_file_name_suggests_the_file_beside_it(tmp_path, monkeypatch):
    # `sparsekit prune weight.pt ...` (for weights.pt), `validate my-recipe.yml` (for the .yaml that
    # `sparsekit recipes NAME > my-recipe.yaml` wrote), `bench out/mode.onnx`, `--data dat.npz`: each said only "not
    # found", while the module and recipe-name look-ups already suggested the closest name. Every file kind now does.
    import numpy as np

    from sparsekit.data import npz_file
    from sparsekit.errors import DataError, ExportError, ModelFileError, RecipeError
    from sparsekit.modelio import check_model_path
    from sparsekit.onnx.files import load_onnx
    from sparsekit.recipe_yaml import read_yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for name in ("weights.pt", "my-recipe.yaml", "out/model.onnx", ".hidden.pt"):
        (tmp_path / name).write_bytes(b"x")
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 4), "float32"), y=np.zeros(2, int))

    cases = [
        (ModelFileError, lambda: check_model_path(Path("weight.pt")), "'weights.pt'"),
        (RecipeError, lambda: read_yaml("my-recipe.yml"), "'my-recipe.yaml'"),
        (ExportError, lambda: load_onnx("out/mode.onnx"), "'out/model.onnx'"),
        (DataError, lambda: npz_file("dat.npz"), "'data.npz'"),
    ]
    for kind, call, meant in cases:
        with pytest.raises(kind) as err:
            call()
        assert f"did you mean {meant}?" in str(err.value), str(err.value)
    # No invented suggestion: nothing close, or only a hidden file close.
    for call in (lambda: check_model_path(Path("lenet.safetensors")), lambda: check_model_path(Path("hidden.pt"))):
        with pytest.raises(ModelFileError) as err:
            call()
        assert "did you mean" not in str(err.value)


def test_the_readme_command_synopsis_names_every_option_of_each_command():
    # A new user reads README's `## Commands` block as the list of what each command takes: it left out --kwargs
    # on prune, sensitivity, export and inspect (only a paragraph below said it works "wherever --arch is
    # accepted") and --no-progress on prune, sensitivity and bench, which --help lists. Each option is now there
    # (--debug and --help are said once for all; -o / -b stand for --output / --batch-size).
    import re

    import click

    from sparsekit.cli import main

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("\n## Commands\n", 1)[1].split("```", 2)[1]
    missing = {}
    for line in block.splitlines():
        found = re.match(r"sparsekit (\w+) ", line)
        if not found:
            continue
        command = main.commands[found.group(1)]  # type: ignore[attr-defined]
        synopsis = line.split("  #")[0]
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            names = [n for n in param.opts + param.secondary_opts if n not in ("--debug", "--help", "-h")]
            if names and not any(re.search(re.escape(n) + r"(?![\w-])", synopsis) for n in names):
                missing.setdefault(found.group(1), []).append(names[0])
    assert not missing, missing
