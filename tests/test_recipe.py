from __future__ import annotations

import pytest

from sparsekit.errors import RecipeError
from sparsekit.recipe import Recipe, apply_overrides, load_recipe


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = """version: 1
finetune: {epochs: 4}
pruning:
  - method: magnitude
    sparsity: 0.8
    schedule: {start_epoch: 0, end_epoch: 3}
"""


def test_valid_recipe_and_defaults(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    assert r.pruning[0].sparsity == 0.8
    assert r.pruning[0].scope == "global"
    assert r.data.source == "digits"


def test_oneshot_shorthand(tmp_path):
    r = load_recipe(write(tmp_path, "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]"))
    assert r.pruning[0].schedule.start_epoch == 0 == r.pruning[0].schedule.end_epoch


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BASE.replace("sparsity: 0.8", "sparsity: 1.0"), "pruning[0].sparsity"),
        (BASE.replace("sparsity: 0.8", "sparsity: -0.1"), "pruning[0].sparsity"),
        (BASE.replace("end_epoch: 3", "end_epoch: 3, bogus: 1"), "pruning[0].schedule.bogus: unknown key"),
        (BASE + "extra_top: 1\n", "extra_top: unknown key"),
        (BASE.replace("start_epoch: 0, end_epoch: 3", "start_epoch: 3, end_epoch: 1"), "end_epoch"),
        (BASE.replace("end_epoch: 3", "end_epoch: 9"), "after the last fine-tuning epoch"),
        (BASE.replace("method: magnitude", "method: nope"), "unknown method"),
        ("version: 2\n", "version"),
        ("- 1\n- 2\n", "must be a YAML mapping"),
        ("a: !!python/object/apply:os.system ['echo hi']\n", "tag not allowed"),
        ("a: [1, 2\n", "line"),
        ("", "empty"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path, text, needle):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    assert needle in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_missing_file():
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("does/not/exist.yaml")


def test_a_missing_file_named_like_a_shipped_recipe_points_at_it(tmp_path, monkeypatch):
    # The README's recipes/NAME.yaml from another folder (or a wheel install, which has no recipes/ folder), or a
    # misspelled name: "recipe file not found" alone.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as err:
        load_recipe("recipes/lenet-gradual-magnitude-90.yaml")
    assert "give 'lenet-gradual-magnitude-90'" in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe("lenet-gradual-magnitude-9")
    assert "did you mean the shipped recipe 'lenet-gradual-magnitude-90'?" in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe("zzz-nothing-like-it.yaml")
    assert "did you mean" not in str(err.value) and "sparsekit recipes" in str(err.value)


def test_overrides_parse_types_and_list_indices(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["finetune.epochs=6", "pruning.0.sparsity=0.5", "data.source=mnist5k"])
    assert r.finetune.epochs == 6 and r.pruning[0].sparsity == 0.5 and r.data.source == "mnist5k"
    with pytest.raises(RecipeError, match="pruning\\[0\\].sparsity"):
        load_recipe(write(tmp_path, BASE), ["pruning.0.sparsity=2"])
    with pytest.raises(RecipeError, match="not an index"):
        apply_overrides({"pruning": []}, ["pruning.3.sparsity=0.1"])
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_overrides({}, ["nonsense"])


def test_recipe_from_dict():
    assert (
        Recipe(**{"pruning": [{"method": "magnitude", "sparsity": 0.3, "schedule": "oneshot"}]}).pruning[0].sparsity
        == 0.3
    )


# --- numeric fields: finite, bounded, and the right kind of number ----------------------------------

FULL = """version: 1
seed: 0
model: {factory: "examples.models:mlp", kwargs: {in_features: 64}, input_shape: [1, 64]}
data: {source: synthetic, batch_size: 32, val_fraction: 0.2, synthetic_samples: 256}
finetune:
  epochs: 4
  max_steps_per_epoch: 2
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0}
  lr_schedule: {name: step, step_size: 1, gamma: 0.5}
pruning:
  - {method: magnitude, sparsity: 0.8, schedule: {start_epoch: 0, end_epoch: 3, every: 1, init_sparsity: 0.0},
     layers: {exclude: [fc1]}}
  - {method: gradient, sparsity: 0.5, calibration_batches: 2, schedule: {start_epoch: 0, end_epoch: 2}, layers: [fc1]}
  - {method: l1, strength: 1.0e-4, threshold: 1.0e-3, schedule: {start_epoch: 0, end_epoch: 4}}
  - {method: max_norm, max_value: 3.0}
  - {method: structured, ratio: 0.5, steps: 2, min_channels: 1, calibration_batches: 2,
     schedule: {start_epoch: 0, end_epoch: 2}}
export: {opset: 18}
benchmark: {batch_sizes: [1, 32], threads: 1, warmup: 20, runs: 200}
"""

# (field path as errors name it, a reasonable value, a value that cannot be meant)
NUMERIC_FIELDS = [
    ("seed", "7", str(2**63)),
    ("model.input_shape[0]", "2", str(2**24 + 1)),
    ("model.input_shape[1]", "32", str(2**40)),
    ("data.batch_size", "16", str(2**21)),
    ("data.val_fraction", "0.5", "1.0e+300"),
    ("data.synthetic_samples", "1000", str(10**8)),
    ("finetune.epochs", "6", str(10**6)),
    ("finetune.max_steps_per_epoch", "5", str(10**12)),
    ("finetune.optimizer.lr", "0.1", "1.0e+300"),
    ("finetune.optimizer.momentum", "0.5", "1.0e+300"),
    ("finetune.optimizer.weight_decay", "1.0e-4", "1.0e+300"),
    ("finetune.lr_schedule.step_size", "2", str(10**9)),
    ("finetune.lr_schedule.gamma", "0.9", "1.0e+300"),
    ("pruning[0].sparsity", "0.5", "1.0e+300"),
    ("pruning[0].schedule.start_epoch", "1", "1.0e+300"),
    ("pruning[0].schedule.end_epoch", "2", "1.0e+300"),
    ("pruning[0].schedule.every", "0.5", "1.0e-9"),
    ("pruning[0].schedule.init_sparsity", "0.1", "1.0e+300"),
    ("pruning[1].sparsity", "0.3", "1.0e+300"),
    ("pruning[1].calibration_batches", "4", str(10**9)),
    ("pruning[1].schedule.end_epoch", "3", "1.0e+300"),
    ("pruning[2].strength", "1.0e-3", "1.0e+300"),
    ("pruning[2].threshold", "1.0e-2", "1.0e+300"),
    ("pruning[2].schedule.end_epoch", "100", "1.0e+300"),
    ("pruning[2].schedule.every", "2", "1.0e+300"),
    ("pruning[3].max_value", "2.0", "1.0e+300"),
    ("pruning[4].ratio", "0.3", "1.0e+300"),
    ("pruning[4].steps", "3", str(10**9)),
    ("pruning[4].min_channels", "2", str(2**30)),
    ("pruning[4].calibration_batches", "4", str(10**9)),
    ("pruning[4].schedule.start_epoch", "1", "1.0e+300"),
    ("export.opset", "17", str(10**9)),
    ("benchmark.batch_sizes[0]", "8", str(2**30)),
    ("benchmark.threads", "4", str(10**6)),
    ("benchmark.warmup", "5", str(10**9)),
    ("benchmark.runs", "10", str(10**9)),
]
INT_FIELDS = [
    "seed",
    "model.input_shape[1]",
    "data.batch_size",
    "data.synthetic_samples",
    "finetune.epochs",
    "finetune.max_steps_per_epoch",
    "finetune.lr_schedule.step_size",
    "pruning[1].calibration_batches",
    "pruning[4].steps",
    "pruning[4].min_channels",
    "pruning[4].calibration_batches",
    "export.opset",
    "benchmark.batch_sizes[0]",
    "benchmark.threads",
    "benchmark.warmup",
    "benchmark.runs",
]


def _key(path: str) -> str:
    """The --set key for a field path: pruning[0].schedule.end_epoch -> pruning.0.schedule.end_epoch."""
    return path.replace("[", ".").replace("]", "")


def _value(recipe: Recipe, path: str):
    node = recipe
    for part in _key(path).split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def test_full_recipe_is_valid(tmp_path):
    r = load_recipe(write(tmp_path, FULL))
    assert len(r.pruning) == 5


@pytest.mark.parametrize(("path", "ok", "absurd"), NUMERIC_FIELDS, ids=[f[0] for f in NUMERIC_FIELDS])
def test_numeric_fields_refuse_non_finite_and_absurd_values(tmp_path, path, ok, absurd):
    recipe = write(tmp_path, FULL)
    assert _value(load_recipe(recipe, [f"{_key(path)}={ok}"]), path) == float(ok)
    for bad in (".nan", ".inf", "-.inf", absurd):
        with pytest.raises(RecipeError) as err:
            load_recipe(recipe, [f"{_key(path)}={bad}"])
        assert f"{path}: " in str(err.value), (bad, str(err.value))
        assert "\n" not in str(err.value)
    with pytest.raises(RecipeError, match="finite number"):
        load_recipe(recipe, [f"{_key(path)}=.inf"])


@pytest.mark.parametrize("path", INT_FIELDS)
def test_integer_fields_refuse_booleans_and_fractions(tmp_path, path):
    recipe = write(tmp_path, FULL)
    for bad, needle in (("true", "not true/false"), ("false", "not true/false"), ("2.5", "whole number")):
        with pytest.raises(RecipeError, match=needle) as err:
            load_recipe(recipe, [f"{_key(path)}={bad}"])
        assert f"{path}: " in str(err.value)


def test_non_finite_nan_in_yaml_text_names_the_field(tmp_path):
    text = BASE.replace("end_epoch: 3", "end_epoch: .inf")
    with pytest.raises(RecipeError, match=r"pruning\[0\]\.schedule\.end_epoch: must be a finite number"):
        load_recipe(write(tmp_path, text))
    with pytest.raises(RecipeError, match=r"finetune\.epochs: must be a finite number"):
        load_recipe(write(tmp_path, BASE.replace("epochs: 4", "epochs: -.inf")))


def test_l1_default_schedule_still_means_the_whole_run(tmp_path):
    r = load_recipe(write(tmp_path, "finetune: {epochs: 3}\npruning: [{method: l1, strength: 1.0e-4}]\n"))
    assert r.pruning[0].schedule.end_epoch >= 1e9  # past any finetune.epochs
    assert load_recipe(write(tmp_path, FULL), ["pruning.2.schedule.end_epoch=1.0e+9"])


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.input_shape=[1, 65536, 65536]", "model.input_shape: [1, 65536, 65536] has 4,294,967,296 values"),
        ("model.input_shape=[1, 1, 1, 1, 1, 1, 1, 1, 1]", "model.input_shape"),
        ("model.kwargs.width=.nan", "model.kwargs.width: must be a finite number"),
        ("model.kwargs={a: {b: [1, -.inf]}}", "model.kwargs.a.b[1]: must be a finite number"),
        ("model.kwargs.n=100000000000000000000", "model.kwargs.n: a 67-bit integer"),
        ("model.kwargs.x=!!binary aGVsbG8=", "binary data"),
        ("model.kwargs.x=!!set {a}", "YAML tag not allowed (!!set)"),
        ("model.kwargs.x=!!timestamp 2024-01-01", "date/time"),
        ("version=true", "version: must be a number, not true/false"),
        ("benchmark.batch_sizes=[1, true]", "benchmark.batch_sizes[1]: must be a number, not true/false"),
        ("finetune.optimizer.lr=true", "finetune.optimizer.lr: must be a number, not true/false"),
    ],
)
def test_more_values_that_cannot_be_meant(tmp_path, override, needle):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, FULL), [override])
    assert needle in str(err.value)


def test_kwargs_checked_when_built_in_python_too():
    with pytest.raises(ValueError, match="finite"):
        Recipe(model={"kwargs": {"width": float("inf")}})
    assert Recipe(model={"kwargs": {"hidden": [32, 16], "act": "relu", "p": 0.1, "x": None}}).model.kwargs["p"] == 0.1


def test_reasonable_kwargs_dates_as_strings_and_anchors_still_load(tmp_path):
    text = FULL.replace("kwargs: {in_features: 64}", "kwargs: {in_features: 64, note: 2024-01-01}")
    text += "x-defaults: &d {sparsity: 0.5}\n"  # anchors are fine, but unknown keys are still unknown
    with pytest.raises(RecipeError, match="x-defaults: unknown key"):
        load_recipe(write(tmp_path, text))
    r = load_recipe(write(tmp_path, text.replace("x-defaults: &d {sparsity: 0.5}\n", "")))
    assert r.model.kwargs["note"] == "2024-01-01"  # a recipe has no dates: an unquoted one stays text
    merged = (
        "pruning:\n  - &m {method: magnitude, sparsity: 0.5, schedule: oneshot}\n  - {<<: *m, layers: {include: [a]}}\n"
    )
    assert [m.sparsity for m in load_recipe(write(tmp_path, merged)).pruning] == [0.5, 0.5]


def test_shipped_recipes_still_load():
    from sparsekit.cli import RECIPES_DIR

    shipped = sorted(RECIPES_DIR.glob("*.yaml"))
    assert shipped
    for path in shipped:
        load_recipe(path)


def test_cli_validate_with_inf_override_is_a_clean_error():
    from click.testing import CliRunner

    from sparsekit.cli import main

    result = CliRunner().invoke(
        main, ["validate", "lenet-gradual-magnitude-90", "--set", "pruning.0.schedule.end_epoch=.inf"]
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "pruning[0].schedule.end_epoch" in errors[0] and "finite" in errors[0]
    assert "Traceback" not in result.output


# --- the loader answers RecipeError for any text and any --set ----------------------------------------


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (_bomb(), "expands to more than 100,000 values"),
        ("a: &a [*a]\n", "refers to itself"),
        ("[" * 100 + "]" * 100, "must be a YAML mapping"),
        ("a: " + "[" * 100 + "]" * 100, "nested deeper than 64"),
        ("a: " + "[" * 3000 + "]" * 3000, "nested deeper than 64"),
        ("x: 1\n" * 250_000, "larger than 1,000,000 bytes"),
        (b"a: \xff\xfe\n", "not UTF-8"),
        ("a: \x01\n", "invalid YAML"),
        ("1: 2\n", "key 1 is not a name"),
        ("on: 2\n", "key True is not a name"),
        ("~: 2\n", "empty or null"),
        ("? [a, b]\n: 1\n", "a key is itself a list or mapping"),
        ("seed: 1\nseed: 2\n", "duplicate key 'seed'"),
        ("data: !!binary aGVsbG8=\n", "data: binary data (!!binary) is not allowed"),
        ("data: !!set {a}\n", "(line 1, column 7): YAML tag not allowed (!!set)"),
        ("seed: !!timestamp 2024-01-01\n", "seed: a date/time"),
        ("seed: !!timestamp nope\n", "cannot read 'nope' as !!timestamp"),
        ("seed: !!int abc\n", "cannot read 'abc' as !!int"),
        ("seed: !!bool maybe\n", "cannot read 'maybe' as !!bool"),
        ("seed: !!int ''\n", "as !!int"),
        ("a: !!python/tuple [1, 2]\n", "YAML tag not allowed (!!python/tuple)"),
        ("a: !custom 1\n", "YAML tag not allowed (!custom)"),
        ("a: !!str [1]\n", "expected a scalar node"),
        ("seed: 1\n---\nseed: 2\n", "more than one YAML document"),
        ("---\n", "empty"),
        ("3\n", "must be a YAML mapping (got int)"),
    ],
)
def test_any_yaml_gives_a_recipe_error(tmp_path, content, needle):
    path = tmp_path / "r.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert needle in str(err.value)
    assert len(str(err.value)) < 1000


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("pruning.²=1", "not an index"),
        ("pruning.-1.sparsity=0.5", "not an index"),
        ("pruning.99999999999999999999.sparsity=0.5", "not an index"),
        ("a..b=1", "empty part"),
        ("=1", "empty part"),
        (".=", "empty part"),
        ("finetune.epochs.x=1", "'finetune.epochs' is a value, not a mapping"),
        ("." * 100 + "=1", "empty part"),
        ("a." * 100 + "a=1", "deeper than any recipe"),
        ("model.kwargs.x=" + "y" * 70_000, "longer than"),
        ("model.kwargs.x=" + _bomb().replace("\n", ", ").join("{}"), "expands to more than"),
        ("model.kwargs.x=&a [*a]", "refers to itself"),
        ("seed=[1, 2", "seed: must be a number, not the text '[1, 2'"),  # not YAML: kept as text
    ],
)
def test_any_override_gives_a_recipe_error(tmp_path, override, needle):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE), [override])
    assert needle in str(err.value)
    assert len(str(err.value)) < 1000


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('finetune: {epochs: "3"}\n', "finetune.epochs: must be a number, not the text '3': write it without quotes"),
        ('seed: "7"\n', "seed: must be a number, not the text '7'"),
        ('finetune: {optimizer: {name: sgd, lr: "1e-3"}}\n', "finetune.optimizer.lr: must be a number, not the text"),
        ('data: {batch_size: "64"}\n', "data.batch_size: must be a number"),
        ("benchmark: {precision: nan}\n", "benchmark.precision: must be a number, not the text 'nan': use a finite"),
        ("finetune: {optimizer: {name: sgd, lr: inf}}\n", "not the text 'inf': use a finite number"),
        ('benchmark: {batch_sizes: [1, "32"]}\n', "benchmark.batch_sizes[1]: must be a number"),
        ("pruning: [{method: magnitude, sparsity: 90}]\n", "not a percentage (did you mean 0.9?)"),
        ("pruning: [{method: structured, ratio: 50}]\n", "not a percentage (did you mean 0.5?)"),
        # 1.5 is no percentage anyone means ("did you mean 0.015?" was the hint)
        ("pruning: [{method: magnitude, sparsity: 1.5}]\n", "must be < 1: a fraction (0.5 is half), got 1.5"),
    ],
)
def test_quoted_numbers_and_percentages_are_refused_naming_the_field(tmp_path, text, needle):
    # pydantic's lax mode would read "3" as 3 and let 90 through to a range error with no hint.
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "version: 1\n" + text))
    assert needle in str(err.value)


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 as text; recipes read it as YAML 1.2 and people write it: a number.
    text = "version: 1\nfinetune: {optimizer: {name: sgd, lr: 1e-3}}\npruning: [{method: l1, strength: 5E-4}]\n"
    r = load_recipe(write(tmp_path, text), ["seed=2e1", "data.val_fraction=+2.5e-1"])
    assert (r.finetune.optimizer.lr, r.pruning[0].strength, r.seed, r.data.val_fraction) == (1e-3, 5e-4, 20, 0.25)
    # Quoted, it is still text, and refused as such.
    with pytest.raises(RecipeError, match="not the text '1e-3'"):
        load_recipe(write(tmp_path, 'version: 1\nfinetune: {optimizer: {name: sgd, lr: "1e-3"}}\n'))


def test_override_fills_a_null_section(tmp_path):
    r = load_recipe(write(tmp_path, BASE + "model: ~\n"), ["model.factory=examples.models:mlp"])
    assert r.model.factory == "examples.models:mlp"


def test_base60_numbers_are_not_numbers(tmp_path):
    """YAML 1.1 reads `epochs: 1:30:00` as 5400; in a recipe that is a typo, refused by the schema."""
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nfinetune: {epochs: 1:30:00}\n")
    with pytest.raises(RecipeError, match="finetune.epochs"):
        load_recipe(path)


# --- unknown keys: "did you mean", per-method hints, and where to read more ------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BASE.replace("epochs: 4", "epoch: 4"), "finetune.epoch: unknown key; did you mean 'epochs'?"),
        (BASE.replace("sparsity: 0.8", "sparsty: 0.8"), "pruning[0].sparsty: unknown key; did you mean 'sparsity'?"),
        (
            BASE.replace("end_epoch: 3", "end_epoch: 3, evry: 1"),
            "pruning[0].schedule.evry: unknown key; did you mean 'every'",
        ),
        (BASE + "benchmark: {run: 5}\n", "benchmark.run: unknown key; did you mean 'runs'?"),
        (
            BASE.replace("finetune: {epochs: 4}", "finetune: {epochs: 4, distill: {temp: 2}}"),
            "did you mean 'temperature'?",
        ),
        (BASE.replace("method: magnitude", "method: magnitde"), "unknown method 'magnitde'; did you mean 'magnitude'?"),
        (
            BASE.replace("sparsity: 0.8", "sparsity: 0.8\n    criterion: taylor"),
            "criterion is a key of method gradient, not of magnitude",
        ),
        (BASE + "xyz: 1\n", "xyz: unknown key; the keys here are version, seed, model, data, finetune, pruning"),
        # a key of a mapping one or two levels below the one it was written in: say where it goes
        (
            BASE.replace("finetune: {epochs: 4}", "finetune: {epochs: 4, lr: 0.01}"),
            "finetune.lr: unknown key here; lr is a key of optimizer: write it as optimizer: {lr: ...}",
        ),
        (BASE + "batch_size: 32\n", "batch_size: unknown key here; batch_size is a key of data"),
        (
            BASE.replace("sparsity: 0.8", "sparsity: 0.8\n    every: 1"),
            "pruning[0].every: unknown key here; every is a key of schedule: write it as schedule: {every: ...}",
        ),
    ],
)
def test_unknown_keys_say_what_was_meant(tmp_path, text, needle):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    assert needle in str(err.value)


def test_a_misspelt_required_key_is_one_error_not_two(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE.replace("sparsity: 0.8", "sparsty: 0.8")))
    assert "did you mean 'sparsity'" in str(err.value)
    assert "pruning[0].sparsity" not in str(err.value)  # the "required key missing" it implies is not repeated


def test_structured_with_sparsity_says_it_takes_ratio(tmp_path):
    text = "finetune: {epochs: 2}\npruning: [{method: structured, sparsity: 0.5, schedule: oneshot}]\n"
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    msg = str(err.value)
    assert "pruning[0].sparsity: unknown key: structured removes whole channels and takes ratio" in msg
    assert "Field required" not in msg and "pruning[0].ratio" not in msg
    fixed = load_recipe(write(tmp_path, text.replace("sparsity: 0.5", "ratio: 0.5")))
    assert fixed.pruning[0].ratio == 0.5
    with pytest.raises(RecipeError, match="magnitude takes sparsity"):
        load_recipe(write(tmp_path, BASE.replace("sparsity: 0.8", "ratio: 0.8")))


def test_a_missing_required_key_says_what_it_is(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "pruning: [{method: max_norm}]\n"))
    assert "pruning[0].max_value: required key missing: the bound on each output unit's" in str(err.value)


def test_every_validation_error_points_to_the_reference(tmp_path):
    from pathlib import Path

    from sparsekit.recipe import RECIPE_DOCS

    root = Path(__file__).resolve().parent.parent
    assert (root / RECIPE_DOCS).is_file()  # the pointer names a page that exists
    for text in (BASE + "extra_top: 1\n", BASE.replace("sparsity: 0.8", "sparsity: 2"), "version: 2\n"):
        with pytest.raises(RecipeError) as err:
            load_recipe(write(tmp_path, text))
        assert str(err.value).endswith(
            f"(the recipe reference: `sparsekit recipes --reference` prints it; {RECIPE_DOCS} in a source checkout)"
        )
    for path in (root / "sparsekit").rglob("*.py"):  # no message points to a page outside the repository
        text = path.read_text(encoding="utf-8")
        assert "INTERFACE.md" not in text and "section Recipes" not in text, path


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("finetune.epoch=2", "overrides=['finetune.epoch=2']: finetune.epoch: unknown key; did you mean 'epochs'?"),
        ("pruning.0.sparsty=0.8", "pruning.0.sparsty: unknown key; did you mean 'sparsity'?"),
        ("finetnue.epochs=2", "finetnue: unknown key; did you mean 'finetune'?"),
        ("pruning.0.schedule.ende_epoch=2", "did you mean 'end_epoch'?"),
        ("pruning.0.ratio=0.5", "magnitude takes sparsity"),
        ("finetune.distill.temp=2", "did you mean 'temperature'?"),
    ],
)
def test_override_keys_are_checked_against_the_schema(tmp_path, override, needle):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE), [override])
    assert needle in str(err.value)
    assert (
        "(the recipe reference: `sparsekit recipes --reference` prints it; docs/recipe.md in a source checkout)"
        in str(err.value)
    )


def test_override_keys_follow_the_recipe_as_overridden(tmp_path):
    # Free mappings take any key; an entry's keys are those of its method after earlier overrides.
    r = load_recipe(write(tmp_path, BASE), ["model.kwargs.width=32", "pruning.0.layer_sparsity.fc1=0.5"])
    assert r.model.kwargs == {"width": 32} and r.pruning[0].layer_sparsity == {"fc1": 0.5}
    r = load_recipe(write(tmp_path, BASE), ["pruning.0={method: max_norm}", "pruning.0.max_value=2"])
    assert r.pruning[0].method == "max_norm" and r.pruning[0].max_value == 2
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE), ["pruning.0.method=structured", "pruning.0.ratio=0.5"])
    # ratio was accepted for the now-structured entry; its leftover sparsity is what is refused
    assert not str(err.value).startswith("override")
    assert "pruning[0].sparsity: unknown key: structured" in str(err.value)


def test_fewer_epochs_than_the_schedule_says_exactly_how_to_fix_it():
    """README: `--set finetune.epochs=2 --set pruning.0.sparsity=0.8` on the shipped LeNet recipe (its
    schedule ends at epoch 3) is refused; the error gives both fixes as overrides, and each works."""
    from click.testing import CliRunner

    from sparsekit.cli import main

    args = ["validate", "lenet-gradual-magnitude-90", "--set", "finetune.epochs=2", "--set", "pruning.0.sparsity=0.8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert "pruning[0].schedule.end_epoch (3) is after the last fine-tuning epoch (finetune.epochs=2)" in line
    assert "--set pruning.0.schedule.end_epoch=2" in line and "--set finetune.epochs=3" in line
    for fix in ("pruning.0.schedule.end_epoch=2", "finetune.epochs=3"):
        fixed = load_recipe("lenet-gradual-magnitude-90", ["finetune.epochs=2", "pruning.0.sparsity=0.8", fix])
        assert fixed.pruning[0].sparsity == 0.8
    with pytest.raises(RecipeError) as err:  # the Python API spells the same fix as its own option
        load_recipe("lenet-gradual-magnitude-90", ["finetune.epochs=2"])
    assert "overrides=['pruning.0.schedule.end_epoch=2']" in str(err.value)


def test_schedule_past_the_epochs_in_python_and_when_it_starts_too_late():
    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 3, "end_epoch": 4.5}}
    with pytest.raises(RecipeError) as err:
        Recipe(finetune={"epochs": 2}, pruning=[entry])
    assert "\x00" not in str(err.value) and "raise finetune.epochs to at least 5" in str(err.value)
    with pytest.raises(RecipeError) as rerr:
        from sparsekit.recipe import validate_recipe

        validate_recipe({"finetune": {"epochs": 2}, "pruning": [entry]})
    # start_epoch 3 is past epoch 2 too: lowering end_epoch alone cannot help, so it is not offered
    assert "finetune.epochs=5" in str(rerr.value) and "end_epoch=2" not in str(rerr.value)


def test_schema_lookup_helpers():
    from sparsekit.recipe import GradientSpec, LayerSelect, OptimizerSpec, did_you_mean, section_at

    assert section_at(["finetune", "optimizer"]) is OptimizerSpec
    assert section_at(("pruning", 0, "gradient", "layers")) is LayerSelect  # a pydantic location
    assert section_at(["pruning", "0"], {"pruning": [{"method": "gradient"}]}) is GradientSpec
    assert section_at(["pruning", "0"], {"pruning": [{"method": "nope"}]}) is None
    assert section_at(["model", "kwargs"]) is None and section_at(["seed"]) is None
    assert did_you_mean("Epochs", ["epochs", "optimizer"]) == "epochs"
    assert did_you_mean("temp", ["weight", "temperature"]) == "temperature"
    assert did_you_mean("zzz", ["weight", "temperature"]) is None


def test_init_sparsity_above_the_target_is_refused_naming_both():
    bad = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1, "init_sparsity": 0.8}}
    with pytest.raises(RecipeError, match=r"schedule\.init_sparsity \(0\.8\) is above sparsity \(0\.5\)"):
        Recipe(finetune={"epochs": 2}, pruning=[bad])
    bad["schedule"]["init_sparsity"] = 0.5  # equal: a flat schedule, allowed
    Recipe(finetune={"epochs": 2}, pruning=[bad])


@pytest.mark.parametrize("value", [0, 3, "logits", "aux.0", None])
def test_model_output_takes_an_index_or_a_name(value):
    assert Recipe(model={"output": value}).model.output == value


@pytest.mark.parametrize("value", [True, -1, 1001, "", "x" * 201, 1.5, [1], {"a": 1}])
def test_model_output_refuses_anything_else(value):
    with pytest.raises(RecipeError, match=r"must be an index 0\.\.1000 into a tuple output"):
        Recipe(model={"output": value})


def test_export_onnx_false_is_refused_not_ignored():
    with pytest.raises(RecipeError, match=r"false is not supported: a prune run always writes model\.onnx"):
        Recipe(export={"onnx": False})
    assert Recipe(export={"onnx": True}).export.onnx is True


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("seed: 1" + "0" * 5000, "a whole number with 5,001 digits"),  # said "use sys.set_int_max_str_digits()"
        ("finetune: {optimizer: {name: sgd, lr: 1e-400}}", "1e-400 is too small for a 64-bit float"),  # "got 0.0"
        ('data: {source: "digits\\x00.npz"}', "data.source: holds a NUL character"),  # exit 1, ValueError
    ],
)
def test_numbers_and_strings_no_setting_can_take_are_named(tmp_path, text, needle):
    path = tmp_path / "r.yaml"
    path.write_text(f"version: 1\n{text}\n")
    with pytest.raises(RecipeError, match=needle):
        load_recipe(path)


def test_overrides_name_numbers_that_cannot_be_read_and_read_every_float_spelling(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\n")
    with pytest.raises(RecipeError, match="a whole number with 5,001 digits"):  # said "not the text '1000…'"
        load_recipe(path, ["seed=1" + "0" * 5000])
    with pytest.raises(RecipeError, match="too small for a 64-bit float"):
        load_recipe(path, ["finetune.optimizer.lr=1e-400"])
    # YAML 1.1 reads these as text (its floats need a dot and a signed exponent); every other tool as numbers.
    for text, value in ((".5e2", 50.0), ("2.e-3", 0.002), ("1e-3", 0.001), ("1.0e+1", 10.0), ("5.5e1", 55.0)):
        assert load_recipe(path, [f"finetune.optimizer.lr={text}"]).finetune.optimizer.lr == pytest.approx(value)
    with pytest.raises(RecipeError, match=r"must be <= 100.0 \(got 1500.0\)"):  # a number, not "the text '1.5e3'"
        load_recipe(path, ["finetune.optimizer.lr=1.5e3"])


def test_override_values_that_yaml_reads_otherwise_than_meant_are_named(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\n")
    # an underflow inside a mapping value fell back to text: "Input should be a valid dictionary"
    with pytest.raises(RecipeError, match="1e-400 is too small for a 64-bit float"):
        load_recipe(path, ["finetune.optimizer={name: sgd, lr: 1e-400}"])
    # a key written twice inside a value fell back to text too: "must be a mapping ... (got text '{epochs: ...')"
    with pytest.raises(RecipeError, match=r"duplicate key 'epochs'"):
        load_recipe(path, ["finetune={epochs: 3, epochs: 4}"])
    with pytest.raises(RecipeError, match=r"duplicate key 'name'"):
        load_recipe(path, ["finetune.optimizer={name: sgd, name: adam}"])
    # a number where text is wanted: say how to write the text
    with pytest.raises(RecipeError, match=r'must be text, not a number .*quote it: data\.source="1e5"'):
        load_recipe(path, ["data.source=1e5"])
    # quoted, it is text (then judged as a source: no name, .npz file or pkg.module:callable)
    with pytest.raises(RecipeError, match=r"data\.source: '1e5' is not a known source"):
        load_recipe(path, ['data.source="1e5"'])
    assert load_recipe(path, ['data.source="1e5.npz"']).data.source == "1e5.npz"
    with pytest.raises(RecipeError, match=r"gives no value, which YAML reads as null: data\.source=VALUE"):
        load_recipe(path, ["data.source="])
    # an index into a list the recipe lacks was blamed on the file ("pruning: Input should be a valid list")
    with pytest.raises(RecipeError, match=r"overrides=.*pruning\[0\]\.sparsity=0\.5.*no pruning list to take item 0"):
        load_recipe(path, ["pruning[0].sparsity=0.5"])
    assert load_recipe(path, ["pruning=[{method: magnitude, sparsity: 0.5}]"]).pruning[0].sparsity == 0.5
    # elsewhere a digit is a key (an nn.Sequential's layer "0"), and a mapping may still be created
    structured = ["pruning=[{method: structured, ratio: 0.5}]", "pruning.0.layer_ratio.0=0.25"]
    assert load_recipe(path, structured).pruning[0].layer_ratio == {"0": 0.25}
    # the hints name the field only where the override set that field itself
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["data={source: 1e5}"])
    assert "quote it" not in str(err.value)  # said: quote it: data.source="{source: 1e5}"
    with pytest.raises(RecipeError, match=r"gives no value, which YAML reads as null: finetune\.epochs=VALUE"):
        load_recipe(path, ["finetune.epochs="])


def test_a_value_that_should_be_a_list_says_so_and_what_it_got(tmp_path):
    # pydantic's "Input should be a valid list" named neither the form nor the value; an unclosed bracket in an
    # override ([1,64) reads as text and said the same.
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE), ["model.input_shape=64"])
    assert "model.input_shape: must be a list, written [a, b] (got a number 64)" in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE), ["model.input_shape=[1,64"])
    assert "got text '[1,64'" in str(err.value) and "close its brackets" in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE), ["pruning.0.layers={exclude: fc3}"])
    assert "pruning[0].layers.exclude: must be a list, written [a, b] (got text 'fc3')" in str(err.value)


def test_layers_given_as_a_list_or_one_glob_is_the_include_list(tmp_path):
    # `layers: [fc1, fc2]` (SparseML's params: habit) was "Input should be a valid dictionary or instance of
    # LayerSelect"; it now means include, and what layers cannot be says both forms and what it got.
    as_list = load_recipe(write(tmp_path, BASE), ["pruning.0.layers=[fc1, 'fc*']"]).pruning[0].layers
    assert as_list.include == ["fc1", "fc*"] and as_list.exclude == []
    assert load_recipe(write(tmp_path, BASE), ["pruning.0.layers=fc2"]).pruning[0].layers.include == ["fc2"]
    full = load_recipe(write(tmp_path, BASE), ["pruning.0.layers={include: [fc1], exclude: [fc3]}"]).pruning[0].layers
    assert full.include == ["fc1"] and full.exclude == ["fc3"]
    for value, got in (("null", "(got null)"), ("3", "(got a number 3)")):
        with pytest.raises(RecipeError) as err:
            load_recipe(write(tmp_path, BASE), [f"pruning.0.layers={value}"])
        assert "pruning[0].layers: must be a list of layer-name globs" in str(err.value) and got in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, BASE), ["model.kwargs=3"])
    assert "model.kwargs: must be a mapping, written {key: value} (got a number 3)" in str(err.value)


def test_a_recipe_dict_given_to_the_pruner_is_told_which_key_to_change_not_an_overrides_option():
    # Pruner(model, {...}) has no overrides= parameter, yet the message offered overrides=['finetune.epochs=3']
    # (found by review).
    import torch

    import sparsekit

    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 3}}
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(RecipeError) as err:
        sparsekit.Pruner(model, {"version": 1, "finetune": {"epochs": 1}, "pruning": [entry]}, 4)
    assert "finetune.epochs: 3 in the recipe dict" in str(err.value)
    assert "pruning.0.schedule.end_epoch: 1 in the recipe dict" in str(err.value)
    assert "overrides=" not in str(err.value)
