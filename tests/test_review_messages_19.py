"""Messages, warnings and errors said the same way by every command and API: found in review round 19 (angle:
messages)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sparsekit.cli import main


@pytest.mark.parametrize(
    "args", [["recipes", "--json=1"], ["recipes", "--json=true"], ["validate", "--json=x", "r.yaml"]]
)
def test_json_given_a_value_still_prints_the_json_error_document(args: list[str]) -> None:
    # `--json=1` is a usage error (the flag takes no value), but the script that wrote it reads stdout as JSON:
    # every other usage error under --json prints {"error", "exit_code"}, this one printed nothing on stdout.
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 2 and "'--json' does not take a value" in doc["error"]


def test_json_after_double_dash_is_an_argument_not_the_flag() -> None:
    result = CliRunner().invoke(main, ["recipes", "--bogus", "--", "--json"])
    assert result.exit_code == 2 and result.stdout == ""


RECIPE_ONE = "version: 1\npruning:\n  - method: magnitude\n    sparsity: 0.5\n"


def test_set_past_the_end_of_a_list_says_how_to_add_an_item(tmp_path) -> None:
    # `--set pruning.1={...}` on a one-entry list said "'pruning.1' is not an index of a list of 1" and no more:
    # nothing said that overrides cannot add an item, nor what can.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE_ONE)
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", "pruning.1={method: l1, strength: 0.001}"])
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "'pruning.1' is not an index of a list of 1" in line and "pruning.0" in line
    assert "write the new item in the recipe" in line and "--set 'pruning=[" in line
    # ... and the way it names works: the whole list, the new item in it.
    given = "pruning=[{method: magnitude, sparsity: 0.5}, {method: l1, strength: 0.001}]"
    assert CliRunner().invoke(main, ["validate", str(recipe), "--set", given]).exit_code == 0


def test_python_overrides_past_the_end_say_it_in_the_api_spelling(tmp_path) -> None:
    from sparsekit import RecipeError, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE_ONE)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, overrides=["pruning.3.sparsity=0.2"])
    assert "overrides=['pruning=[" in str(err.value) and "--set" not in str(err.value)


def test_the_recipe_constructor_raises_a_recipe_error_naming_the_field_and_the_key_meant() -> None:
    # Recipe(version=1, finetune={'epoch': 3}) raised pydantic's ValidationError dump ("Extra inputs are not
    # permitted [type=extra_forbidden, ...]") while load_recipe(dict) and Pruner(model, dict) raise RecipeError.
    from sparsekit import Recipe, RecipeError, load_recipe

    with pytest.raises(RecipeError) as err:
        Recipe(version=1, finetune={"epoch": 3})
    assert "finetune.epoch" in str(err.value) and "did you mean 'epochs'" in str(err.value)
    assert "extra_forbidden" not in str(err.value) and "\x00" not in str(err.value)
    assert isinstance(err.value, ValueError)  # what pydantic's error was: old `except ValueError` still catches it
    with pytest.raises(RecipeError) as loaded:
        load_recipe({"version": 1, "finetune": {"epoch": 3}})
    assert str(loaded.value).replace("recipe (a dict)", "Recipe(...)") == str(err.value)  # the same words
    assert Recipe(finetune={"epochs": 3}).finetune.epochs == 3


@pytest.mark.parametrize(
    ("second", "words"),
    [
        ({"method": "gradient", "sparsity": 0.5}, "every layer"),  # both with no layers: every layer, in both
        ({"method": "magnitude", "sparsity": 0.3}, "every layer"),
        ({"method": "gradient", "sparsity": 0.5, "layers": {"include": ["*"]}}, "every layer"),
    ],
)
def test_validate_alone_refuses_two_masking_entries_selecting_every_layer(tmp_path, second, words) -> None:
    # `sparsekit validate RECIPE` passed these; prune refused them only once a model was loaded ("both mask the
    # weights of ..."), though no model can make them select different layers.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE_ONE + f"  - {json.dumps(second)}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {recipe}: pruning[0] (magnitude) and pruning[1] ({second['method']})")
    assert words in line and "layers.include" in line


def test_identical_selections_are_refused_and_different_ones_still_pass(tmp_path) -> None:
    from sparsekit import RecipeError, load_recipe

    same = {"include": ["fc2", "fc1"], "types": ["Linear"]}
    entries = [
        {"method": "magnitude", "sparsity": 0.5, "layers": {"include": ["fc1", "fc2"], "types": ["Linear"]}},
        {"method": "l1", "strength": 1e-4},  # not masking: may share layers with anything
        {"method": "gradient", "sparsity": 0.5, "layers": same},
    ]
    with pytest.raises(RecipeError, match=r"pruning\[0\] \(magnitude\) and pruning\[2\] \(gradient\) both select"):
        load_recipe({"version": 1, "pruning": entries})
    entries[2]["layers"] = ["fc3"]
    assert len(load_recipe({"version": 1, "pruning": entries}).pruning) == 3


def test_every_command_prints_its_warnings_as_warning_lines_on_stderr(tmp_path) -> None:
    # export printed 'Warning:' on stderr, sensitivity 'Warning:' on stdout, validate/inspect/the prune summary
    # 'WARNING:' on stdout. README: warnings go to stderr; now every command prints 'Warning: ...' lines there.
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    import sparsekit

    torch.set_num_threads(1)
    path = tmp_path / "m.onnx"
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    sparsekit.export_onnx(model, path, [1, 8], exporter="torchscript", check_parity=False)
    graph = onnx.load(str(path))
    init = next(i for i in graph.graph.initializer if numpy_helper.to_array(i).ndim == 2)
    values = numpy_helper.to_array(init).copy()
    values.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(graph, str(path))
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(main, ["inspect", str(path), *extra])
        assert result.exit_code == 0, result.output
        assert "WARNING" not in result.stdout and "Warning:" not in result.stdout
        (said,) = [line for line in result.stderr.splitlines() if "NaN or inf" in line]
        assert said.startswith("Warning: 1 stored weights are NaN or inf")


def test_validate_prints_its_warnings_on_stderr_not_in_the_plan(tmp_path) -> None:
    import sparsekit
    from examples.models import small_cnn

    factory, shape = "examples.models:small_cnn", [1, 1, 8, 8]
    path = tmp_path / "cnn.pt"
    sparsekit.save_model(small_cnn(image_size=8), path, factory=factory, kwargs={"image_size": 8}, input_shape=shape)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 1, 8, 8]}\ndata: {source: synthetic}\nfinetune: {epochs: 0}\n"
        "pruning: [{method: structured, ratio: 0.3, round_to: 16, layers: {include: [conv1]}}]\n"
    )
    result = CliRunner().invoke(main, ["validate", str(recipe), str(path), "--arch", factory])
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.stdout and "Warning:" not in result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("Warning: pruning[0]")]
