"""A new user's path from an installed wheel (no clone: no examples/ on the import path)."""

import sys

import pytest
from click.testing import CliRunner
from conftest import ROOT

from sparsekit.cli import main


@pytest.fixture
def as_installed(tmp_path, monkeypatch):
    """The CLI as from a wheel in an empty folder: the repository root (and so examples/) is not importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(ROOT))])
    for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        monkeypatch.delitem(sys.modules, name)

    def run(*argv: str):
        return CliRunner().invoke(main, list(argv))

    return run


def test_validate_of_a_shipped_recipe_without_the_repository_does_not_offer_to_confirm_its_example_model(
    as_installed,
):
    # It said "prune would import and call it only once you confirm it (the same callable given as --arch, ...)":
    # confirming examples.models:lenet_300_100 cannot work from a wheel, where prune then refuses it.
    result = as_installed("validate", "lenet-gradual-magnitude-90")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("model.factory"))
    assert "once you confirm it" not in line, line
    assert "not part of the installed package" in line and "--arch your_module:your_callable" in line, line


def test_validate_says_when_a_recipe_names_a_module_that_is_not_found_from_here(as_installed, tmp_path):
    (tmp_path / "r.yaml").write_text('version: 1\ndata: {source: "nosuchmod.loaders:load"}\n')
    result = as_installed("validate", "r.yaml")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("data.source"))
    assert "'nosuchmod.loaders' is not found from this folder" in line and "--data your_module" in line, line


def test_validate_still_offers_to_confirm_a_module_that_is_here(as_installed, tmp_path):
    (tmp_path / "mynets.py").write_text("def build():\n    pass\n")
    (tmp_path / "r.yaml").write_text('version: 1\nmodel: {factory: "mynets:build"}\n')
    result = as_installed("validate", "r.yaml")
    assert result.exit_code == 0, result.output
    assert "once you confirm it" in result.stdout, result.stdout


def test_a_whole_pickled_model_is_refused_naming_its_own_class_as_the_architecture(tmp_path, monkeypatch):
    # torch.save(model) is what most training scripts write. The refusal said "--arch pkg.module:callable", though
    # the pickle names the model's class, the architecture to give (a class is a callable that builds it).
    import torch
    from conftest import user_module

    from sparsekit.cli import main as cli

    mod = user_module(tmp_path, monkeypatch, "mynewnet", "from torch import nn\nclass Net(nn.Linear):\n    pass\n")
    torch.save(mod.Net(4, 2), tmp_path / "whole.pt")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), tmp_path / "seq.pt")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "whole.pt")])
    assert result.exit_code == 2, result.output
    assert "--arch mynewnet:Net (the class this file names," in result.stderr, result.stderr
    # torch's own container builds no model of the user's: no class to suggest there.
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "seq.pt")])
    assert result.exit_code == 2, result.output
    assert (
        "--arch pkg.module:callable," in result.stderr
        and "container:Sequential" not in result.stderr.split("load it with")[1]
    ), result.stderr


def test_a_checkpoint_whose_factory_is_not_found_from_here_says_where_to_run_not_to_confirm_it(as_installed, tmp_path):
    # A model.pt written from the folder holding mynet.py, inspected from another folder: the refusal said "pass
    # --arch mynet:LeNet for this run", which then failed with "cannot import module 'mynet'".
    import torch

    from sparsekit import save_model

    ckpt = tmp_path / "model.pt"
    save_model(torch.nn.Linear(4, 2), ckpt, factory="notheremod:build", input_shape=[1, 4])
    result = as_installed("inspect", str(ckpt))
    assert result.exit_code == 2, result.output
    assert "module 'notheremod' is not found from this folder: run from the folder that holds it" in result.stderr
    assert "for this run" not in result.stderr, result.stderr
