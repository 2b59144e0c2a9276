"""Review round 21 (a new user from the README, with a wheel): recipes and commands as a newcomer writes
them after other toolkits' tutorials."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import RecipeError

STRUCTURED = "version: 1\npruning:\n  - method: structured\n    ratio: 0.5\n"
MAGNITUDE = "version: 1\npruning:\n  - method: magnitude\n    sparsity: 0.5\n"


@pytest.mark.parametrize(
    ("text", "field", "meant", "wrong"),
    [
        # `scope: local` (torch.nn.utils.prune's and NNI's word for per-layer) read "did you mean 'global'?": the
        # opposite of what was meant.
        (MAGNITUDE + "    scope: local\n", "pruning[0].scope", "write layer", "did you mean 'global'"),
        # Torch-Pruning's importance classes and torch.optim's scheduler names found no suggestion at all.
        (STRUCTURED + "    importance: TaylorImportance\n", "pruning[0].importance", "write taylor", None),
        (STRUCTURED + "    importance: MagnitudeImportance\n", "pruning[0].importance", "write l2", None),
        (STRUCTURED + "    importance: l1_norm\n", "pruning[0].importance", "write l1", None),
        (
            "version: 1\nfinetune: {lr_schedule: {name: CosineAnnealingLR}}\n",
            "finetune.lr_schedule.name",
            "write cosine",
            None,
        ),
    ],
)
def test_another_toolkits_value_names_the_sparsekit_choice(tmp_path, text, field, meant, wrong):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text, encoding="utf-8")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), field, meant)
    if wrong:
        assert wrong not in line
    with pytest.raises(RecipeError, match=meant):
        sparsekit.load_recipe(recipe)


def test_a_near_miss_value_is_still_guessed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MAGNITUDE + "    scope: globl\n", encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "did you mean 'global'")


@pytest.mark.parametrize(
    ("command", "option", "remedy"),
    [
        # click guessed "--arch, --help, --log-dir" for --lr and "--set" (without how) for --seed; --epochs, --sparsity
        # and export's --input-shape on prune got no hint at all.
        (["prune", "w.pt", "r.yaml"], ["--lr", "0.01"], "--set finetune.optimizer.lr=0.01"),
        (["prune", "w.pt", "r.yaml"], ["--epochs", "2"], "--set finetune.epochs=2"),
        (["prune", "w.pt", "r.yaml"], ["--seed=3"], "--set seed=3"),
        (["validate", "r.yaml"], ["--sparsity", "0.8"], "--set pruning.N.sparsity=0.8"),
        (["validate", "r.yaml"], ["--batch-size", "16"], "--set data.batch_size=16"),
        (["sensitivity", "w.pt", "r.yaml"], ["--input-shape", "1,1,8,8"], "--set 'model.input_shape=[1,1,8,8]'"),
    ],
)
def test_a_recipe_setting_given_as_an_option_says_how_to_set_it(tmp_path, monkeypatch, command, option, remedy):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(MAGNITUDE, encoding="utf-8")
    line = assert_bad_input(CliRunner().invoke(main, [*command, *option]), f"no such option {option[0][:6]}", remedy)
    assert "Did you mean" not in line


def test_an_unknown_option_that_is_no_setting_keeps_clicks_words(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(MAGNITUDE, encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", "r.yaml", "--jsn"]), "No such option '--jsn'")
    # export has no --set: its unknown options are click's
    assert_bad_input(CliRunner().invoke(main, ["export", "w.pt", "--epochs", "2"]), "No such option '--epochs'")


@pytest.mark.parametrize(
    "command",
    [["prune", "w.pt", "r.yaml", "--json"], ["validate", "r.yaml", "w.pt"], ["sensitivity", "w.pt", "r.yaml"]],
)
def test_a_setting_split_from_its_value_says_to_join_them(tmp_path, monkeypatch, command):
    # `--set finetune.epochs 2` read "Got unexpected extra argument (2)", which did not say what was wrong.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(MAGNITUDE, encoding="utf-8")
    result = CliRunner().invoke(main, [*command, "--set", "finetune.epochs", "2"])
    assert_bad_input(result, "--set finetune.epochs 2", "write --set finetune.epochs=2")
    assert "unexpected extra argument" not in result.output
    # an extra argument with no --set before it keeps click's words
    result = CliRunner().invoke(main, [*command, "stray"])
    assert_bad_input(result, "unexpected extra argument (stray)")


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("frequency", "sparsekit's is every"),
        ("update_frequency", "sparsekit's is every"),
        ("initial_sparsity", "sparsekit's is init_sparsity"),
        ("starting_epoch", "sparsekit's is start_epoch"),
    ],
)
def test_another_toolkits_schedule_key_inside_schedule_names_the_sparsekit_key(tmp_path, key, meant):
    # Written at the entry's level these were named; written inside `schedule:` (where they belong) they read
    # "unknown key; the keys here are ..." and the user had to guess which one.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nfinetune: {epochs: 3}\npruning:\n  - method: magnitude\n    sparsity: 0.8\n"
        f"    schedule: {{start_epoch: 0, end_epoch: 2, {key}: 1}}\n",
        encoding="utf-8",
    )
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), f"pruning[0].schedule.{key}", meant)
    with pytest.raises(RecipeError, match=meant):
        sparsekit.load_recipe(recipe)


class ConvNet(torch.nn.Module):  # a convolution first: the input shape comes from the data when the recipe has none
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.head = torch.nn.Linear(2 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().flatten(1))


@pytest.mark.parametrize(
    ("source", "hint"),
    [
        ("x.npy", "numpy.savez(path, x=..., y=...)"),
        ("-", "no data from standard input"),
        ("MNIST", "did you mean 'mnist5k'?"),
    ],
)
def test_a_data_option_of_no_known_form_is_named_before_the_model(tmp_path, monkeypatch, source, hint):
    # With a conv model and no model.input_shape, `--data x.npy` read "w.pt: cannot tell the model's input shape":
    # the model was blamed for the data option's fault.
    monkeypatch.chdir(tmp_path)
    torch.save(ConvNet().state_dict(), tmp_path / "w.pt")
    (tmp_path / "r.yaml").write_text(MAGNITUDE + "    schedule: oneshot\n", encoding="utf-8")
    (tmp_path / "x.npy").write_bytes(b"")
    arch = f"{__name__}:ConvNet"
    for command in (["validate", "r.yaml", "w.pt"], ["prune", "w.pt", "r.yaml", "-o", "out"]):
        result = CliRunner().invoke(main, [*command, "--arch", arch, "--data", source])
        line = assert_bad_input(result, f"--data {source}", hint)
        assert "input shape" not in line
    assert not (tmp_path / "out").exists()
