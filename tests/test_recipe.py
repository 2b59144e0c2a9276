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
