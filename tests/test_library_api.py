"""The library under the CLI: inspect(), plan(), run_prune() returning a typed Report, report.json's
schema, and errors that name the caller's options in the caller's language (Python or flags)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import OutputError, SparsekitError, option
from sparsekit.report import Report, load_report, report_schema

MLP_ARCH = "examples.models:mlp"


def _recipe(tmp_path, **extra: str):
    text = (
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits, batch_size: 64}\n"
        "finetune: {epochs: 1, max_steps_per_epoch: 4}\n"
        "pruning:\n  - method: magnitude\n    sparsity: 0.5\n    schedule: oneshot\n    layers: {exclude: [fc3]}\n"
        "export: {exporter: torchscript}\nbenchmark: {enabled: false}\n"
    )
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_inspect_matches_the_cli_json(mlp_checkpoint):
    res = sparsekit.inspect(mlp_checkpoint, arch=MLP_ARCH)
    out = CliRunner().invoke(main, ["inspect", str(mlp_checkpoint), "--arch", MLP_ARCH, "--json"])
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json.dumps(res, default=str))
    rows = res["layers"]
    assert res["params"] >= sum(r["params"] for r in rows) > 0
    assert res["macs"] == sum(r["macs"] for r in rows)


def test_inspect_bad_input_shape_names_the_option(mlp_checkpoint):
    with pytest.raises(SparsekitError) as info:
        sparsekit.inspect(mlp_checkpoint, arch=MLP_ARCH, input_shape=[1, 3, 7])
    assert "input_shape=" in str(info.value) and "--input-shape" not in str(info.value)
    result = CliRunner().invoke(main, ["inspect", str(mlp_checkpoint), "--arch", MLP_ARCH, "--input-shape", "1,3,7"])
    assert_bad_input(result, "--input-shape 1,64", "the model takes [1, 64]")  # what its first layer takes


def test_plan_without_model_imports_nothing(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\nmodel: {factory: 'evil_pkg_never_imported:build'}\n"
        "data: {source: 'other_never_imported:load'}\npruning: [{method: magnitude, sparsity: 0.5}]\n"
    )
    res = sparsekit.plan(sparsekit.load_recipe(path))
    assert res["names_code"] == {
        "model.factory": "evil_pkg_never_imported:build",
        "data.source": "other_never_imported:load",
    }
    assert res["methods"] == []
    import sys

    assert "evil_pkg_never_imported" not in sys.modules and "other_never_imported" not in sys.modules


def test_plan_with_model_lists_layers_and_targets(tmp_path, mlp_checkpoint):
    recipe = sparsekit.load_recipe(_recipe(tmp_path))
    res = sparsekit.plan(recipe, mlp_checkpoint, arch=MLP_ARCH, steps_per_epoch=4)
    (m,) = res["methods"]
    assert m["method"] == "magnitude" and "fc3" not in m["layers"] and m["layers"]
    assert m["targets_per_epoch"][-1] == pytest.approx(0.5)


def test_run_prune_returns_the_report_it_writes(tmp_path, mlp_checkpoint):
    out = tmp_path / "o"
    recipe = sparsekit.load_recipe(_recipe(tmp_path))
    report = sparsekit.run_prune(mlp_checkpoint, recipe, out, arch=MLP_ARCH, progress=False)
    assert isinstance(report, Report)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report.to_json()
    assert on_disk["schema"] == 1
    assert load_report(out / "report.json") == report
    # The pruned layers reach the asked sparsity exactly (round(0.5 * n) zeros).
    pruned = [r for r in report.layers if r.name in report.methods[0].layers]
    assert sum(r.params - r.nonzero_params for r in pruned) == round(0.5 * sum(r.params for r in pruned))
    # Every sentence the user reads comes from the same typed report.
    md = (out / "report.md").read_text()
    assert f"{report.pruned.accuracy:.4f}" in md
    # A second run into the same folder without permission: the library says overwrite=True, not a flag.
    with pytest.raises(OutputError) as info:
        sparsekit.run_prune(mlp_checkpoint, recipe, out, arch=MLP_ARCH, progress=False)
    assert "overwrite=True" in str(info.value) and "--overwrite" not in str(info.value)
    result = CliRunner().invoke(
        main, ["prune", str(mlp_checkpoint), str(_recipe(tmp_path)), "--arch", MLP_ARCH, "-o", str(out), *FAST]
    )
    assert_bad_input(result, "--overwrite")


def test_report_schema_describes_report_json(tmp_path):
    schema = report_schema()
    assert {"schema", "dense", "pruned", "layers", "history", "parity", "recipe", "versions"} <= set(
        schema["properties"]
    )
    result = CliRunner().invoke(main, ["report", "--schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == schema


def test_load_report_names_the_bad_field(tmp_path):
    good = {
        "schema": 1,
        "model": {"path": "m.pt", "factory": "a:b", "kwargs": None, "input_shape": [1, 4]},
        "data": {"source": "digits", "train_batches": 1, "val_batches": 1},
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps({**good, "model": {**good["model"], "input_shape": "wide"}}))
    with pytest.raises(SparsekitError, match=r"model\.input_shape"):
        load_report(path)
    path.write_text("{not json")
    with pytest.raises(SparsekitError, match="not valid JSON"):
        load_report(path)


@pytest.mark.parametrize(
    ("name", "value", "python", "flag"),
    [
        ("overwrite", "", "overwrite=True", "--overwrite"),
        ("arch", "m.n:build", "arch='m.n:build'", "--arch m.n:build"),
        ("set", "model.input_shape=null", "overrides=['model.input_shape=null']", "--set model.input_shape=null"),
        ("trust_code", "", "trust_code=True", "--trust-code"),
        ("output", "", "out=", "-o"),
    ],
)
def test_options_render_per_caller(name, value, python, flag):
    from sparsekit.cli import _flag

    err = SparsekitError(f"x.pt: something is off; pass {option(name, value)} to fix it")
    assert python in str(err) and "\x00" not in str(err)
    assert flag in err.render(_flag)


EXPECTED = {  # method entry -> what the up-front expectation must say about it
    "magnitude": ({"method": "magnitude", "sparsity": 0.5}, "unstructured zeros shrink"),
    "gradient": ({"method": "gradient", "sparsity": 0.5}, "unstructured zeros shrink"),
    "l1": ({"method": "l1", "strength": 1e-4, "group": "row"}, "removing whole neurons"),
    "max_norm": ({"method": "max_norm", "max_value": 3.0}, "expect no size or latency change"),
    "structured": ({"method": "structured", "ratio": 0.5}, "removing whole neurons"),
}


def test_expectation_covers_every_registered_method():
    from sparsekit.methods import REGISTRY
    from sparsekit.recipe import METHOD_NAMES
    from sparsekit.report import what_it_buys

    # A new method must say here what it buys (and so be handled by what_it_buys).
    assert set(EXPECTED) == set(METHOD_NAMES) == set(REGISTRY)
    for name, (entry, needle) in EXPECTED.items():
        recipe = sparsekit.Recipe(version=1, pruning=[entry])
        assert needle in what_it_buys(recipe), name


def test_quoted_errors_keep_the_callers_spelling():
    from sparsekit.cli import _flag
    from sparsekit.errors import ModelFileError, quoted

    inner = ModelFileError(f"history names 'fc1' (check {option('arch')})")
    outer = ModelFileError(f"model.pt: {quoted(inner)}")
    assert "--arch pkg.module:callable" in outer.render(_flag)
    assert "arch='pkg.module:callable'" in str(outer)
    for text in (repr(outer), str(outer), *map(str, outer.args)):
        assert "\x00" not in text and "\x1f" not in text


def test_plan_says_what_each_entry_leaves_out(tmp_path, mlp_checkpoint):
    recipe = sparsekit.load_recipe(_recipe(tmp_path))
    (m,) = sparsekit.plan(recipe, mlp_checkpoint, arch=MLP_ARCH, steps_per_epoch=4)["methods"]
    left = {row["name"]: row["reason"] for row in m["left_out"]}
    assert set(left) == {"fc3"} and "exclude" in left["fc3"]
    structured = sparsekit.Recipe(
        version=1, model={"input_shape": [1, 64]}, pruning=[{"method": "structured", "ratio": 0.5}]
    )
    (s,) = sparsekit.plan(structured, mlp_checkpoint, arch=MLP_ARCH, steps_per_epoch=4)["methods"]
    left = {row["name"]: row["reason"] for row in s["left_out"]}
    from sparsekit.planning import HEAD_KEPT_REASON, IGNORED_REASON

    assert left == {"fc3": HEAD_KEPT_REASON}  # ignore's default
    # an ignore the recipe names is said as such, not as "the classifier head" (fc2 is none)
    named = structured.model_copy(deep=True)
    named.pruning[0].ignore = ["fc2", "fc3"]
    (s,) = sparsekit.plan(named, mlp_checkpoint, arch=MLP_ARCH, steps_per_epoch=4)["methods"]
    left = {row["name"]: row["reason"] for row in s["left_out"]}
    assert left == {"fc2": IGNORED_REASON, "fc3": IGNORED_REASON}
    assert "head" not in IGNORED_REASON and "head" in HEAD_KEPT_REASON


def test_load_recipe_takes_a_shipped_name_and_cross_field_errors_read_cleanly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here: the shipped recipe is meant
    recipe = sparsekit.load_recipe("lenet-gradual-magnitude-90")
    assert recipe.pruning[0].method == "magnitude"
    with pytest.raises(sparsekit.RecipeError) as info:
        sparsekit.load_recipe("lenet-gradual-magnitude-90", ["finetune.epochs=2"])
    message = str(info.value)
    assert ": pruning[0].schedule.end_epoch (3)" in message and "<recipe>" not in message
    assert "raise finetune.epochs" in message


def test_run_prune_takes_a_recipe_as_a_dict_or_a_path_as_the_pruner_does(tmp_path, mlp_checkpoint):
    # run_prune(model, {...}) raised AttributeError: 'dict' object has no attribute 'data'.
    import yaml

    from sparsekit.errors import RecipeError

    as_dict = yaml.safe_load(_recipe(tmp_path).read_text())
    report = sparsekit.run_prune(mlp_checkpoint, as_dict, tmp_path / "d", arch=MLP_ARCH, progress=False)
    assert isinstance(report, Report) and (tmp_path / "d" / "report.json").is_file()
    with pytest.raises(RecipeError, match="finetune.epochs"):
        sparsekit.run_prune(mlp_checkpoint, {**as_dict, "finetune": {"epochs": -1}}, tmp_path / "e", arch=MLP_ARCH)
    with pytest.raises(TypeError, match="recipe must be"):
        sparsekit.run_prune(mlp_checkpoint, 3, tmp_path / "f", arch=MLP_ARCH)  # type: ignore[arg-type]
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


def test_load_recipe_and_finetune_take_a_dict_as_the_pruner_does():
    # load_recipe({...}) ended in pathlib's TypeError, finetune(model, {...}) in AttributeError: 'dict' object
    # has no attribute 'finetune'.
    from sparsekit.errors import RecipeError

    data = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    recipe = sparsekit.load_recipe(data, ["finetune.epochs=2"])
    assert recipe.finetune.epochs == 2 and data["finetune"]["epochs"] == 1  # (the caller's dict is left alone)
    with pytest.raises(RecipeError, match=r"recipe \(a dict\): pruning\[0\]: unknown method 'magnitud'"):
        sparsekit.load_recipe({"version": 1, "pruning": [{"method": "magnitud"}]})
    with pytest.raises(TypeError, match="load_recipe takes a recipe file, a shipped recipe's name, a dict or a Recipe"):
        sparsekit.load_recipe(3)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    from types import MappingProxyType

    model, history, pruner = sparsekit.finetune(model, MappingProxyType(data), batches, batches[:1], progress=False)
    assert len(history) == 1 and pruner.recipe.pruning[0].sparsity == 0.5


def test_run_prune_takes_the_overrides_its_errors_advise(tmp_path, mlp_checkpoint):
    # The remedies of sparsekit's errors read "overrides=[...]" in Python; run_prune refused the keyword (TypeError).
    fast = ["export.exporter=torchscript", "benchmark.runs=5", "benchmark.warmup=1"]
    report = sparsekit.run_prune(
        mlp_checkpoint,
        _recipe(tmp_path),
        tmp_path / "o",
        arch=MLP_ARCH,
        progress=False,
        overrides=["pruning.0.sparsity=0.25", *fast],
    )
    assert report is not None and report.methods[0].asked == pytest.approx(0.25)
    with pytest.raises(TypeError, match="load_recipe"):
        sparsekit.run_prune(
            mlp_checkpoint, sparsekit.load_recipe(_recipe(tmp_path)), tmp_path / "p", arch=MLP_ARCH, overrides=fast
        )
    assert not (tmp_path / "p").exists()
