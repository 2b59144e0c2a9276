"""Review round 12 (recipe files as hostile or careless data): what validate, prune and load_recipe say about them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import RecipeError

BASE = """\
version: 1
finetune:
  epochs: 2
pruning:
  - method: magnitude
    sparsity: 0.5
    schedule: {start_epoch: 0, end_epoch: 1}
"""


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        # Keys spelled like pydantic's names for union members (a class name, int, str) were dropped from the
        # path: "r.yaml: must be Extra inputs are not permitted (got a mapping ...)", naming no key at all.
        (BASE + "Finetune: {}\n", "Finetune: unknown key", "did you mean 'finetune'"),
        (BASE + "int: 1\n", "int: unknown key", "the keys here are"),
        (BASE.replace("epochs: 2", "Epochs: 2"), "finetune.Epochs: unknown key", "did you mean 'epochs'"),
        (BASE.replace("sparsity: 0.5", "Sparsity: 0.5"), "pruning[0].Sparsity: unknown key", "'sparsity'"),
        (BASE + "    layers: {Include: [fc1]}\n", "pruning[0].layers.Include: unknown key", "'include'"),
        # A layer named like a class (Conv1) lost its name, and the message fell back to pydantic's words.
        (BASE + "    layer_sparsity: {Conv1: 1.5}\n", "pruning[0].layer_sparsity.Conv1: must be < 1", "got 1.5"),
        (BASE + "    layer_sparsity: {str: 1.5}\n", "pruning[0].layer_sparsity.str: must be < 1", "got 1.5"),
    ],
)
def test_a_key_spelled_like_a_type_name_is_named(tmp_path, text, field, hint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "r.yaml", field, hint)
    with pytest.raises(RecipeError, match=r"r\.yaml: ") as err:
        sparsekit.load_recipe(recipe)
    assert field in str(err.value) and "Extra inputs" not in str(err.value)


def test_union_members_are_still_left_out_of_the_path(tmp_path):
    # What the fix must keep: pydantic's member tags (float, literal['auto'], bool) are not keys the user wrote.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + "export: {sparse_storage: maybe}\n")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "export.sparse_storage: must be")
    assert "literal" not in line and "bool" not in line.split("sparse_storage")[1].split("(")[0]


DATA = """\
version: 1
data: {{source: synthetic{extra}}}
finetune: {{epochs: 1}}
pruning:
  - {{method: magnitude, sparsity: 0.5, schedule: oneshot}}
"""


def test_one_synthetic_sample_is_refused_by_the_schema(tmp_path):
    # validate (without a model) and load_recipe accepted synthetic_samples: 1, which prune then refused with
    # "Error: data.synthetic_samples must be >= 2, got 1", naming no file.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(DATA.format(extra=", synthetic_samples: 1"))
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "r.yaml", "data.synthetic_samples", ">= 2")
    with pytest.raises(RecipeError, match=r"r\.yaml: data\.synthetic_samples"):
        sparsekit.load_recipe(recipe)
    recipe.write_text(DATA.format(extra=", synthetic_samples: 2"))
    assert sparsekit.load_recipe(recipe).data.synthetic_samples == 2


@pytest.mark.parametrize(
    ("extra", "options", "blamed"),
    [
        (", normalize: standard", [], "r.yaml: data.normalize"),
        ("", ["--set", "data.normalize=standard"], "--set data.normalize=standard: data.normalize"),
        (", synthetic_samples: 10000000", [], "r.yaml: data.synthetic_samples"),
    ],
)
def test_a_data_field_error_names_the_recipe_or_override(tmp_path, mlp_checkpoint, extra, options, blamed):
    # Only data.source errors named the recipe: "Error: data.normalize: 'standard' applies to the built-in
    # image sources ...", with no file, from validate MODEL and prune alike.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(DATA.format(extra=extra))
    args = [str(recipe), str(mlp_checkpoint), "--arch", "examples.models:mlp", *options]
    assert_bad_input(CliRunner().invoke(main, ["validate", *args]), blamed)


@pytest.mark.parametrize("given", ["finetune.epochs=3", b"finetune.epochs=3", 3])
def test_overrides_given_as_one_string_are_refused_whole(tmp_path, given):
    # A string is iterable: load_recipe(path, overrides="finetune.epochs=3") read each character as an override
    # and said "overrides=['f']: expected key.path=value", as if the user had written 'f'.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    for source in (recipe, {"version": 1}):
        with pytest.raises(RecipeError, match="must be a list of 'key.path=value' strings") as err:
            sparsekit.load_recipe(source, overrides=given)  # type: ignore[arg-type]
        assert "['f']" not in str(err.value)
    assert "overrides=['finetune.epochs=3']" in str(pytest.raises(RecipeError, sparsekit.load_recipe, recipe,
                                                                  overrides="finetune.epochs=3").value)  # fmt: skip


def test_overrides_given_as_an_iterator_still_count_as_the_callers(tmp_path):
    # An iterator was used up applying the overrides, so the recipe then held none as set by the caller (a data
    # source or factory set that way was taken for the file's own, which sparsekit.trust treats differently).
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    loaded = sparsekit.load_recipe(recipe, overrides=iter(["finetune.epochs=3", "data.source=synthetic"]))
    assert loaded.finetune.epochs == 3
    assert loaded.overridden("data.source") and loaded.overridden("finetune.epochs")


SHORTHAND = """\
version: 1
finetune: {epochs: 2}
pruning:
  - method: magnitude
    sparsity: 0.5
    schedule: oneshot
    layers: LAYERS
"""


@pytest.mark.parametrize(
    ("layers", "override", "field", "value"),
    [
        # The documented shorthands could not be overridden into: "--set pruning.0.schedule.end_epoch=1:
        # 'pruning.0.schedule' is a value, not a mapping", "'pruning.0.layers.exclude' is not an index of a list of 2".
        ("[fc1, fc2]", "pruning.0.schedule.end_epoch=1", "schedule.end_epoch", 1.0),
        ("[fc1, fc2]", "pruning.0.layers.exclude=[fc2]", "layers.exclude", ["fc2"]),
        ("'fc*'", "pruning.0.layers.types=[Linear]", "layers.types", ["Linear"]),
        # An index into the list shorthand still sets that item.
        ("[fc1, fc2]", "pruning.0.layers.0=fc3", "layers.include", ["fc3", "fc2"]),
    ],
)
def test_an_override_reaches_inside_a_shorthand(tmp_path, layers, override, field, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SHORTHAND.replace("LAYERS", layers))
    entry = sparsekit.load_recipe(recipe, overrides=[override]).pruning[0]
    section, key = field.split(".")
    assert getattr(getattr(entry, section), key) == value
    if field != "layers.include":  # the rest of the shorthand is kept
        assert entry.layers.include == (["fc*"] if layers == "'fc*'" else ["fc1", "fc2"])
        assert entry.schedule.start_epoch == 0
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", override])
    assert result.exit_code == 0, result.output


def test_an_override_into_a_shorthand_still_checks_its_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SHORTHAND.replace("LAYERS", "[fc1]"))
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", "pruning.0.layers.includ=x"])
    assert_bad_input(result, "pruning.0.layers.includ", "did you mean 'include'")


@pytest.mark.parametrize("key", ["include", "exclude"])
def test_a_huge_glob_is_quoted_cut_short(tmp_path, mlp_checkpoint, key):
    # A recipe's 200,000-character layer pattern came back whole in a 200 kB Error: line.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + f"    layers: {{{key}: ['{'q' * 200_000}']}}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe), str(mlp_checkpoint), "--arch", "examples.models:mlp"])
    line = assert_bad_input(result, "r.yaml", f"pruning[0].layers.{key}", "matches no layer", "prunable layers are")
    assert len(line) < 1_000


def test_a_data_path_too_long_for_the_file_system_names_the_recipe(tmp_path, mlp_checkpoint):
    # is_dir() raised ENAMETOOLONG, which came out as "Error: xxx…xxx.npz: File name too long; check the path and
    # its permissions": the whole path, and neither the recipe nor data.source.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + f"data: {{source: {'x' * 300}.npz}}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe), str(mlp_checkpoint), "--arch", "examples.models:mlp"])
    line = assert_bad_input(result, "r.yaml: data.source file", "cannot be reached")
    assert len(line) < 600


ALIASED = """\
version: 1
finetune: {epochs: 3}
pruning:
  - {method: magnitude, sparsity: 0.5, layers: [fc1], schedule: &s {start_epoch: 0, end_epoch: 1}}
  - {method: magnitude, sparsity: 0.5, layers: [fc2], schedule: *s}
"""


def test_an_override_of_one_use_of_a_yaml_alias_leaves_the_others(tmp_path):
    # The copy the overrides were applied to kept YAML's sharing: --set pruning.0.schedule.end_epoch=2 moved
    # pruning[1]'s schedule to epoch 2 as well, without a word (validate's plan showed both at 2).
    recipe = tmp_path / "r.yaml"
    recipe.write_text(ALIASED)
    loaded = sparsekit.load_recipe(recipe, overrides=["pruning.0.schedule.end_epoch=2"])
    assert [entry.schedule.end_epoch for entry in loaded.pruning] == [2.0, 1.0]
    assert [entry.schedule.end_epoch for entry in sparsekit.load_recipe(recipe).pruning] == [1.0, 1.0]
    # A dict built in Python sharing one schedule mapping, likewise; the caller's dict is left as it was.
    shared = {"start_epoch": 0, "end_epoch": 1}
    data = {
        "finetune": {"epochs": 3},
        "pruning": [
            {"method": "magnitude", "sparsity": 0.5, "layers": ["fc1"], "schedule": shared},
            {"method": "magnitude", "sparsity": 0.5, "layers": ["fc2"], "schedule": shared},
        ],
    }
    loaded = sparsekit.load_recipe(data, overrides=["pruning.1.schedule.end_epoch=3"])
    assert [entry.schedule.end_epoch for entry in loaded.pruning] == [1.0, 3.0]
    assert shared == {"start_epoch": 0, "end_epoch": 1}
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", "pruning.0.schedule.end_epoch=2"])
    assert result.exit_code == 0, result.output
    assert "fc2 (global ranking, no layer above 99%), rising along a cubic schedule from epoch 0 to 1," in result.output


@pytest.mark.parametrize("name", ["a" * 300 + ".yaml", "b/" * 3000 + "r.yaml"])
def test_a_recipe_path_too_long_to_look_up_is_a_recipe_error(name):
    # Path.exists() raised ENAMETOOLONG: load_recipe gave a bare OSError (documented: a Recipe or a RecipeError,
    # whatever the input), and the command line an Error: line repeating the whole 6 kB path.
    with pytest.raises(RecipeError, match=r"cannot read the recipe \(File name too long\)") as err:
        sparsekit.load_recipe(name)
    assert len(str(err.value)) < 400
    assert_bad_input(CliRunner().invoke(main, ["validate", name]), "cannot read the recipe")


def test_an_empty_recipe_path_says_so():
    # Path("") is the current folder: load_recipe("") said "'.': is a directory, expected a YAML recipe file".
    with pytest.raises(RecipeError, match="the recipe path is empty"):
        sparsekit.load_recipe("")


@pytest.mark.parametrize(
    ("entry", "got"), [("magnitude", "got text 'magnitude'"), ("", "got null"), ("5", "got a number")]
)
def test_a_pruning_entry_that_is_no_mapping_says_what_it_should_be(tmp_path, entry, got):
    # pydantic's words came through: "pruning[0]: Input should be a valid dictionary or object to extract fields from".
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\npruning:\n  - {entry}\n")
    line = assert_bad_input(
        CliRunner().invoke(main, ["validate", str(recipe)]), "r.yaml: pruning[0]: must be a mapping", got
    )
    assert "method: magnitude" in line and "extract fields" not in line
