"""Found by review from an installed wheel (a fresh venv, an empty folder, README and INTERFACE.md followed
literally)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main
from sparsekit.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


def uninstall(monkeypatch, module: str) -> None:
    """``module`` and its submodules cannot be imported (as when the package is not installed)."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, name, None)


# --- a missing dependency is the install to fix (exit 2 naming the package), not a bug to report (exit 1) ----------


def test_the_dependency_table_is_pyprojects():
    from sparsekit.errors import DEPENDENCIES

    # (no tomllib: Python 3.10 is supported) the quoted names in pyproject's dependencies = [...] list
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    assert block is not None
    names = {m.lower() for m in re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block.group(1), re.M)}
    assert set(DEPENDENCIES.values()) == names


@pytest.mark.parametrize(
    ("source", "module", "package"), [("mnist5k", "mlxtend", "mlxtend"), ("digits", "sklearn", "scikit-learn")]
)
def test_a_builtin_source_without_its_reader_names_the_package(monkeypatch, source, module, package):
    # mlxtend or scikit-learn missing (pip install --no-deps, removed since): "unexpected failure:
    # ModuleNotFoundError ... report it", exit 1.
    import sparsekit.data as data

    data._raw_mnist5k.cache_clear()
    uninstall(monkeypatch, module)
    try:
        with pytest.raises(DataError, match=rf"data.source '{source}'.*pip install {package}"):
            data.load_data(source)
    finally:
        data._raw_mnist5k.cache_clear()


def test_the_cli_names_a_missing_dependency_with_exit_2(monkeypatch, mlp_checkpoint):
    import sparsekit.data as data

    uninstall(monkeypatch, "sklearn")
    args = ["validate", "lenet-gradual-magnitude-90", str(mlp_checkpoint), "--arch", "examples.models:mlp"]
    args += ["--kwargs", '{"in_features": 64, "hidden": [64, 32]}', "--data", "digits"]
    args += ["--set", "model.input_shape=[1,64]"]
    assert_bad_input(CliRunner().invoke(main, args), "digits", "pip install scikit-learn")

    # Any other import of a dependency where it is first needed (matplotlib for plots, onnxscript for export).
    def fails(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")

    monkeypatch.setattr(data, "_load_digits", fails)
    assert_bad_input(CliRunner().invoke(main, args), "onnxscript", "pip install onnxscript")
    # A user's own module's import is theirs: still not blamed on sparsekit's install.
    from sparsekit.errors import missing_dependency

    assert missing_dependency(ModuleNotFoundError("No module named 'mypkg'", name="mypkg")) is None
    # Nor a dependency that is there but does not import: a version sparsekit does not work with is its bug.
    assert missing_dependency(ImportError("cannot import name 'X' from 'onnx'", name="onnx")) is None


# --- README's Python blocks, from an installed wheel (no recipes/ folder in the current one) ---------------------


def test_the_readme_python_api_loads_its_recipe_outside_the_repository(tmp_path, monkeypatch):
    # The Python API block loaded "recipes/lenet-gradual-magnitude-90.yaml": RecipeError "recipe file not found"
    # for a wheel user (and from any folder but the repository root); a shipped recipe's name works everywhere.
    import sparsekit

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", readme, flags=re.S | re.M)
    named = [arg for block in blocks for arg in re.findall(r"load_recipe\(\"([^\"]+)\"", block)]
    assert named
    monkeypatch.chdir(tmp_path)
    for name in named:
        assert sparsekit.load_recipe(name).pruning, name
    # and the checkpoint it saves names the user's own builder, not the repository's examples package
    assert not [b for b in blocks if re.search(r"save_model\([^)]*factory=\"examples\.", b)]


def test_the_readme_says_how_a_wheel_user_gets_a_model_and_that_it_runs(tmp_path):
    # The only quick start ran examples/train.py and --arch examples.models:..., neither of which an installed
    # wheel has; a wheel user was not told how to get a model the shipped recipes fit.
    import os
    import shlex
    import subprocess

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("**From an installed wheel**")
    python, bash = (re.search(rf"```{lang}\n(.*?)^```", readme[start:], re.S | re.M) for lang in ("python", "bash"))
    assert python is not None and bash is not None
    (tmp_path / "mynet.py").write_text(python.group(1))
    lines = [line.split("  #")[0].strip() for line in bash.group(1).splitlines()]
    assert lines[0].startswith("pip install torch==")
    # from a folder holding only mynet.py (sparsekit imported from this checkout, as a wheel's would be)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for line in lines[1:]:
        argv = shlex.split(line)
        if argv[0] == "sparsekit":  # quick: a few steps per epoch, a short benchmark
            argv = [sys.executable, "-m", "sparsekit", *argv[1:], "--set", "finetune.max_steps_per_epoch=2"]
            argv += ["--set", "benchmark.runs=5", "--set", "benchmark.warmup=1", "--no-progress"]
        else:
            argv = [sys.executable, *argv[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (line, done.stderr[-2000:])
    assert (tmp_path / "sparsekit-out" / "model.onnx").is_file()


def test_regenerating_the_recipe_reference_from_an_installed_package_writes_nothing(tmp_path, monkeypatch, capsys):
    # The page `sparsekit recipes --reference` prints says to regenerate it with python -m sparsekit.recipe_docs;
    # from a wheel that wrote site-packages/docs/recipe.md, a stray folder no pip uninstall removes.
    from sparsekit import recipe_docs

    installed = tmp_path / "site-packages" / "sparsekit"
    installed.mkdir(parents=True)
    assert recipe_docs.source_page(installed) is None
    assert recipe_docs.source_page(ROOT / "sparsekit") == ROOT / "docs" / "recipe.md"  # a checkout: as before
    monkeypatch.setattr(recipe_docs, "DEFAULT_OUTPUT", recipe_docs.source_page(installed))
    assert recipe_docs.main([]) == 2
    assert "sparsekit recipes --reference" in capsys.readouterr().err
    assert not (tmp_path / "site-packages" / "docs").exists()
    page = tmp_path / "page.md"
    assert recipe_docs.main(["--output", str(page)]) == 0 and page.read_text().startswith("# Recipe reference")


# --- errors whose example named the repository's examples.models, which a wheel does not install ------------------


def test_the_examples_in_arch_errors_are_a_users_own_module(tmp_path):
    # "name it (--arch pkg.module:callable, e.g. --arch examples.models:lenet_300_100)": a wheel user who did as
    # told got "cannot import module 'examples.models'".
    import torch
    from torch import nn

    torch.save(nn.Linear(4, 2).state_dict(), tmp_path / "sd.pt")
    line = assert_bad_input(CliRunner().invoke(main, ["inspect", str(tmp_path / "sd.pt")]), "no architecture", "--arch")
    assert "examples.models" not in line and "mypkg.nets:build" in line
    line = assert_bad_input(CliRunner().invoke(main, ["inspect", str(tmp_path / "sd.pt"), "--arch", "mypkg.nets"]))
    assert "examples.models" not in line and "mypkg.nets:build" in line
