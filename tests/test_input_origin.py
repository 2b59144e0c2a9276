"""Messages and choices that depend on where an input came from: a plain pickle is named for what it is
(and never unpickled), the recipe's model section is not applied to another architecture without saying
so, an override is the caller's own choice (not blamed on the recipe file), and an interruption between
phases says what the run had been doing."""

from __future__ import annotations

import json
import os
import pickle
import textwrap

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, assert_bad_input

from sparsekit.cli import main
from sparsekit.trust import trusted_modules


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


RECIPE = {
    "version": 1,
    "model": {"input_shape": [1, 64]},
    "data": {"source": "digits"},
    "finetune": {"epochs": 1, "max_steps_per_epoch": 2},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}],
    "export": {"exporter": "torchscript"},
    "benchmark": {"enabled": False},
}


def recipe_file(tmp_path, **model) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({**RECIPE, "model": {**RECIPE["model"], **model}}))  # JSON is YAML
    return str(path)


class _System:
    """Unpickles as a call of os.system (a hostile plain pickle)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("trust", [[], ["--trust-model-file"]], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("protocol", [1, 2, 4, 5])
def test_a_plain_pickle_is_named_for_what_it_is_and_never_unpickled(tmp_path, protocol, trust):
    canary = tmp_path / "canary"
    path = tmp_path / "model.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _System(f"touch {canary}")}, fh, protocol=protocol)
    # It said "its bytes are not a pickle or torch archive", which is false and hides what the file asks for.
    line = assert_bad_input(
        run("inspect", path, "--arch", "examples.models:mlp", *trust),
        str(path),
        f"plain Python pickle, protocol {protocol}",
    )
    assert "system" in line and "not a pickle" not in line, line
    assert not canary.exists()


def test_a_plain_pickle_of_data_alone_is_named_too(tmp_path):
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"fc1.weight": [[0.0]]}, fh, protocol=2)
    line = assert_bad_input(run("inspect", path, "--arch", "examples.models:mlp"), "plain Python pickle, protocol 2")
    assert "naming" not in line  # it names no callable


@pytest.mark.parametrize("protocol", [2, 4])
def test_torch_legacy_format_is_not_taken_for_a_plain_pickle(tmp_path, protocol):
    from examples.models import mlp

    path = tmp_path / "legacy.pt"
    torch.save(mlp().state_dict(), path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    result = run("inspect", path, "--arch", "examples.models:mlp", "--input-shape", "1,64", "--json")
    if result.exit_code != 0:  # however torch reads it, it is never called a plain pickle
        assert "plain Python pickle" not in result.stderr, result.stderr
        assert_bad_input(result, str(path))


class _Cwd:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_plain_pickle_names_the_callable_it_builds_from_memoized_names(tmp_path):
    # [A(), "harmless", B()] reuses the module name "posix" from the pickle's memo: it was reported as naming
    # "posix.getcwd, harmless.system", hiding posix.system.
    canary = tmp_path / "canary"
    path = tmp_path / "two.pkl"
    with open(path, "wb") as fh:
        pickle.dump([_Cwd(), "harmless", _System(f"touch {canary}")], fh, protocol=4)
    line = assert_bad_input(run("inspect", path, "--arch", "examples.models:mlp"), "plain Python pickle, protocol 4")
    assert ".getcwd" in line and f"{os.system.__module__}.system" in line and "harmless.system" not in line, line
    assert not canary.exists()


def test_a_recipe_factory_the_checkpoint_overrides_is_said_not_silently_dropped(tmp_path, mlp_checkpoint, caplog):
    # The checkpoint names its own factory, which wins; the recipe named another and heard nothing.
    recipe = recipe_file(tmp_path, factory="examples.models:lenet_300_100")
    out = tmp_path / "o"
    result = run("prune", mlp_checkpoint, recipe, "-o", out, "--trust-code", *FAST)
    assert result.exit_code == 0, result.stderr
    said = f"{recipe}: model.factory examples.models:lenet_300_100 was not used"
    assert said in caplog.text  # a warning (the CLI's log goes to stderr)
    assert any(said in note for note in json.loads((out / "report.json").read_text())["notes"])


def test_an_arch_named_by_the_caller_over_a_recipes_factory_is_not_noted(tmp_path, caplog):
    # Pruning one's own model with a shipped recipe (which names its example model) said "model.factory ... was
    # not used" at the start and again in the summary's notes of every run.
    from examples.models import mlp

    weights = tmp_path / "w.pt"
    torch.save(mlp().state_dict(), weights)
    recipe = recipe_file(tmp_path, factory="examples.models:lenet_300_100")
    out = tmp_path / "o"
    result = run("prune", weights, recipe, "--arch", "examples.models:mlp", "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "was not used" not in caplog.text
    assert not any("was not used" in note for note in json.loads((out / "report.json").read_text())["notes"])


def test_recipe_kwargs_for_another_factory_are_not_given_to_the_arch(tmp_path, caplog):
    from examples.models import mlp

    weights = tmp_path / "w.pt"
    torch.save(mlp().state_dict(), weights)
    # mlp() takes no `width`: passing the recipe's kwargs for small_cnn to it failed.
    recipe = recipe_file(tmp_path, factory="examples.models:small_cnn", kwargs={"width": 8})
    result = run("prune", weights, recipe, "--arch", "examples.models:mlp", "-o", tmp_path / "o", *FAST)
    assert result.exit_code == 0, result.stderr
    assert "model.factory examples.models:small_cnn was not used (nor its model.kwargs)" in caplog.text


def test_bad_recipe_kwargs_beside_the_arch_name_the_recipe_field(tmp_path):
    from examples.models import mlp

    weights = tmp_path / "w.pt"
    torch.save(mlp().state_dict(), weights)
    recipe = recipe_file(tmp_path, kwargs={"bogus": 3})
    # It said "--arch examples.models:mlp with kwargs {'bogus': 3}", as if the kwargs were the flag's.
    line = assert_bad_input(
        run("prune", weights, recipe, "--arch", "examples.models:mlp", "-o", tmp_path / "o", *FAST),
        f"{recipe}: model.kwargs {{'bogus': 3}} for --arch examples.models:mlp",
        "bogus",
    )
    assert not line.startswith("Error: --arch"), line


def test_an_override_is_the_callers_choice_not_the_recipes(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(
        textwrap.dedent(
            """
            def build():
                from examples.models import mlp
                return mlp()

            def data():
                return 3
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    from examples.models import mlp

    weights = tmp_path / "w.pt"
    torch.save(mlp().state_dict(), weights)
    recipe = recipe_file(tmp_path)
    # data.source set on the command line: not blamed on r.yaml, and run without a trust confirmation.
    line = assert_bad_input(
        run("prune", weights, recipe, "--arch", "mine:build", "--set", "data.source=mine:data", "-o", tmp_path / "o"),
        "data.source 'mine:data' must return a pair",
    )
    assert "r.yaml" not in line, line
    # model.factory set on the command line runs like --arch (a recipe naming it would need --trust-code).
    result = run("prune", weights, recipe, "--set", "model.factory=mine:build", "-o", tmp_path / "o", *FAST)
    assert result.exit_code == 0, result.stderr
    assert "mine" not in trusted_modules()  # the caller's choice for this run, not remembered
    named = run("prune", weights, recipe_file(tmp_path, factory="mine:build"), "-o", tmp_path / "o2", *FAST)
    assert_bad_input(named, "r.yaml", "--trust-code")
    missing = run("prune", weights, recipe, "--set", "model.factory=nowhere:build", "-o", tmp_path / "o3", *FAST)
    line = assert_bad_input(missing, "override model.factory 'nowhere:build'", "nowhere")
    assert "r.yaml" not in line, line


def test_an_interrupt_between_phases_says_what_ran_last(tmp_path, mlp_checkpoint, monkeypatch):
    import sparsekit.pipeline

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    # The first thing after the plot worker started: it said "after writing the report, before training
    # started", though no report existed yet.
    monkeypatch.setattr(sparsekit.pipeline, "measure", interrupt)
    result = run(
        "prune", mlp_checkpoint, recipe_file(tmp_path), "--arch", "examples.models:mlp", "-o", tmp_path / "o", *FAST
    )
    assert result.exit_code == 130, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Interrupted: after starting the plot worker, before training started"), last


def test_a_tiny_validation_split_is_said_to_measure_little(tmp_path, mlp_checkpoint):
    import numpy as np

    # 3 samples gave "accuracy 0.0 -> 0.0, same accuracy" without a word on what that is worth.
    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=rng.standard_normal((30, 64)).astype(np.float32), y=rng.integers(0, 10, 30))
    out = tmp_path / "o"
    args = ("prune", mlp_checkpoint, recipe_file(tmp_path), "--arch", "examples.models:mlp", *FAST)
    result = run(*args, "-o", out, "--data", npz)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    n = report["data"]["val_samples"]
    assert 0 < n < 30
    assert any(f"holds only {n} sample(s)" in note for note in report["notes"])
    big = run(*args, "-o", tmp_path / "o2")  # digits: 360 validation images
    assert big.exit_code == 0, big.stderr
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert report["data"]["val_samples"] >= 100 and not any("holds only" in note for note in report["notes"])


def test_a_bad_value_an_override_set_is_blamed_on_the_override_not_the_file(tmp_path):
    recipe = recipe_file(tmp_path)
    # It said "r.yaml: finetune.epochs: must be a number", a value the file does not hold.
    line = assert_bad_input(
        run("validate", recipe, "--set", "finetune.epochs=nan"), "--set finetune.epochs=nan: finetune"
    )
    assert "r.yaml" not in line, line
    line = assert_bad_input(
        run("validate", recipe, "--set", "pruning.0.sparsity=2", "--set", "finetune.epochs=3"),
        "--set pruning.0.sparsity=2: pruning[0].sparsity",
    )
    assert "epochs" not in line, line
    # A fault in the file itself beside one from an override: both are named.
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**RECIPE, "finetune": {"epochs": -1}}))
    assert_bad_input(
        run("validate", bad, "--set", "pruning.0.sparsity=2"), f"{bad} with --set pruning.0.sparsity=2: finetune.epochs"
    )
    # An override with no part in the fault is not named.
    line = assert_bad_input(run("validate", bad, "--set", "seed=4"), f"{bad}: finetune.epochs")
    assert "seed" not in line, line


def test_kwargs_the_caller_gave_are_not_blamed_on_the_recipe(tmp_path):
    from examples.models import mlp

    weights = tmp_path / "w.pt"
    torch.save(mlp().state_dict(), weights)
    recipe = recipe_file(tmp_path, kwargs={"hidden": [128, 64]})
    for given in (["--kwargs", '{"bogus": 3}'], ["--set", "model.kwargs.bogus=3"]):
        result = run("validate", recipe, weights, "--arch", "examples.models:mlp", *given)
        line = assert_bad_input(result, "--arch examples.models:mlp with kwargs", "bogus")
        assert "r.yaml" not in line, line


def test_an_overridden_factory_the_checkpoint_beats_is_named_as_the_override(tmp_path, mlp_checkpoint, caplog):
    result = run(
        "validate", recipe_file(tmp_path), mlp_checkpoint, "--set", "model.factory=nowhere:build", "--trust-code"
    )
    assert result.exit_code == 0, result.stderr
    assert "the override model.factory=nowhere:build" in caplog.text and "r.yaml: model.factory" not in caplog.text
