"""Review round 22, the lead's own fixes: items left alone in earlier rounds."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import RecipeError

MAGNITUDE = "version: 1\npruning:\n  - method: magnitude\n    sparsity: 0.5\n"


@pytest.mark.parametrize(
    ("setting", "meant"),
    [
        # YAML's `key: value` habit: the example was always `finetune.epochs=2`, whatever the user set
        ("pruning.0.sparsity:0.5", "--set pruning.0.sparsity=0.5"),
        ("finetune.lr: 0.1", "--set finetune.lr=0.1"),
        ("finetune.epochs", "--set finetune.epochs=VALUE"),
    ],
)
def test_a_setting_without_equals_is_shown_as_the_users_own_key(tmp_path, setting, meant):
    (tmp_path / "r.yaml").write_text(MAGNITUDE, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "r.yaml"), "--set", setting])
    assert_bad_input(result, "expected key.path=value", meant)


def test_the_python_api_words_the_same_example_as_overrides():
    with pytest.raises(RecipeError, match=r"e\.g\. overrides=\['finetune\.lr=0\.1'\]"):
        sparsekit.load_recipe("lenet-gradual-magnitude-90", overrides=["finetune.lr: 0.1"])


def test_a_split_setting_before_the_model_says_to_join_them(tmp_path, monkeypatch):
    # `prune --set k v MODEL RECIPE`: v took MODEL's place and click named RECIPE as the extra argument.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(MAGNITUDE, encoding="utf-8")
    result = CliRunner().invoke(main, ["prune", "--set", "pruning.0.sparsity", "0.5", "w.pt", "r.yaml"])
    assert_bad_input(result, "--set pruning.0.sparsity 0.5", "write --set pruning.0.sparsity=0.5")
    assert "unexpected extra argument" not in result.output


@pytest.mark.parametrize(
    ("spec", "meant"),
    [
        ("mynet/Net", "did you mean 'mynet:Net'?"),
        ("pkg/nets/build", "did you mean 'pkg.nets:build'?"),
        ("mynet", "name the callable after a colon: 'mynet:NAME'"),
        # was "did you mean 'mynet:py'?"
        ("mynet.py", "not its file, and the callable follows a colon: 'mynet:NAME'"),
    ],
)
def test_an_arch_spec_in_another_shape_is_shown_the_one_meant(spec, meant):
    from sparsekit.errors import TrustError
    from sparsekit.trust import split_spec

    with pytest.raises(TrustError) as err:
        split_spec(spec, "--arch")
    assert meant in str(err.value)
    assert "did you mean 'mynet:py'" not in str(err.value)


def test_a_misspelt_module_names_the_close_one_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet.py").write_text("raise SystemExit('imported')\n", encoding="utf-8")  # never imported
    torch.save(torch.nn.Linear(8, 3).state_dict(), tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "mynett:Net", "--input-shape", "8"])
    assert_bad_input(result, "cannot import module 'mynett'", "did you mean 'mynet' (in the current folder)?")
    # a module that is found but fails inside (a missing dependency) gets no such guess
    (tmp_path / "other.py").write_text("import mynett_dependency\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "other:Net", "--input-shape", "8"])
    assert "did you mean" not in result.output
