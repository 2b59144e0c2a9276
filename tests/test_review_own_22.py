"""Review round 22, the lead's own fixes: items left alone in earlier rounds."""

from __future__ import annotations

import pytest
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
