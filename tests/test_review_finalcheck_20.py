"""Final new-user check: faults found running the installed package as a newcomer."""

import pytest

from sparsekit.errors import RecipeError
from sparsekit.recipe_catalog import shipped_recipe


def test_recipes_name_that_is_a_file_of_yours_says_how_to_check_it(tmp_path, monkeypatch):
    # `sparsekit recipes my.yaml` on one's own file said only "no shipped recipe of that name".
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.yaml").write_text("version: 1\n", encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        shipped_recipe("my.yaml")
    assert "is a file of yours" in str(info.value)
    assert "sparsekit validate my.yaml" in str(info.value)
    # A name that is no file keeps the plain message.
    with pytest.raises(RecipeError) as info:
        shipped_recipe("nope.yaml")
    assert "file of yours" not in str(info.value)
