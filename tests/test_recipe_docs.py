"""docs/recipe.md is the schema's own reference: regenerated from it, complete, with working examples."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args, get_origin

import pytest
from pydantic import BaseModel

from sparsekit import recipe_docs
from sparsekit.errors import RecipeError
from sparsekit.recipe import METHOD_NAMES, METHOD_SPECS, RECIPE_DOCS, Recipe, load_recipe

PAGE = Path(__file__).resolve().parent.parent / RECIPE_DOCS


def _models(cls: type[BaseModel], seen: dict[type[BaseModel], None] | None = None) -> list[type[BaseModel]]:
    """Every model reachable from ``cls`` through its fields' annotations (lists, unions, Annotated)."""
    seen = {} if seen is None else seen
    if cls in seen:
        return list(seen)
    seen[cls] = None

    def visit(tp: object) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            _models(tp, seen)
        elif get_origin(tp) is not None:
            for arg in get_args(tp):
                visit(arg)

    for field in cls.model_fields.values():
        visit(field.annotation)
    return list(seen)


def _sections(page: str) -> dict[str, str]:
    """Heading text -> the page text under it (up to the next heading of any level)."""
    parts = re.split(r"^#{2,3} (.+)$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_walk_reaches_every_section_and_method():
    names = {m.__name__ for m in _models(Recipe)}
    assert {"ModelSpec", "DataSpec", "DistillSpec", "ScheduleSpec", "LayerSelect", "BenchmarkSpec"} <= names
    assert {s.__name__ for s in METHOD_SPECS} <= names


def test_page_is_what_the_schema_gives():
    assert PAGE.is_file(), f"{RECIPE_DOCS} is missing; run: {recipe_docs.COMMAND}"
    found = PAGE.read_text(encoding="utf-8")
    expected = recipe_docs.render()
    assert found == expected, (
        f"{RECIPE_DOCS} is stale, {recipe_docs.first_difference(expected, found)}; run: {recipe_docs.COMMAND}"
    )


@pytest.mark.parametrize("model", _models(Recipe), ids=lambda m: m.__name__)
def test_every_field_has_a_description_and_a_row(model):
    page = PAGE.read_text(encoding="utf-8")
    for name, field in model.model_fields.items():
        assert field.description and field.description.strip(), f"{model.__name__}.{name} has no description"
        # The row shows the description itself (table cells escape | and *).
        shown = field.description.replace("|", "\\|").replace("*", "\\*")
        assert f"| `{name}` |" in page and shown in page, f"{model.__name__}.{name} is not in {RECIPE_DOCS}"


def test_each_method_section_lists_its_keys_and_required_ones():
    sections = _sections(PAGE.read_text(encoding="utf-8"))
    for method, spec in zip(METHOD_NAMES, METHOD_SPECS, strict=True):
        text = sections[f"method: {method}"]
        rows = re.findall(r"^\| `([^`]+)` \|", text, flags=re.M)
        assert sorted(rows) == sorted(spec.model_fields), method
        required = [k for k, f in spec.model_fields.items() if f.is_required() and k != "method"]
        line = next(ln for ln in text.splitlines() if "**Required keys:**" in ln)
        assert all(f"`{k}`" in line for k in required), (method, line)
    structured = sections["method: structured"]
    assert "**Required keys:** `method: structured`, `ratio`." in structured
    assert "**Not `sparsity`:**" in structured


def _examples(page: str) -> dict[str, str]:
    found = {}
    for heading, text in _sections(page).items():
        if heading.startswith("method: "):
            block = re.search(r"```yaml\n(.*?)```", text, flags=re.S)
            assert block, f"section {heading!r} has no yaml example"
            found[heading.removeprefix("method: ")] = block.group(1)
    return found


def test_every_example_in_the_page_loads(tmp_path):
    examples = _examples(PAGE.read_text(encoding="utf-8"))
    assert sorted(examples) == sorted(METHOD_NAMES)
    for method, text in examples.items():
        path = tmp_path / f"{method}.yaml"
        path.write_text(text, encoding="utf-8")
        recipe = load_recipe(path)
        assert [m.method for m in recipe.pruning] == [method]


def test_a_broken_example_stops_the_generator(monkeypatch):
    bad = recipe_docs.EXAMPLES["structured"].replace("ratio: 0.5", "sparsity: 0.5")
    monkeypatch.setitem(recipe_docs.EXAMPLES, "structured", bad)
    with pytest.raises(RecipeError, match="takes ratio"):
        recipe_docs.render()


def test_constraints_and_defaults_come_from_the_schema():
    sections = _sections(recipe_docs.render())
    lr = next(ln for ln in sections["finetune.optimizer"].splitlines() if ln.startswith("| `lr` |"))
    field = Recipe.model_fields["finetune"].annotation.model_fields["optimizer"].annotation.model_fields["lr"]
    assert f"`{field.default}`" in lr and "0 < x <= 100" in lr
    sparsity = next(ln for ln in sections["method: magnitude"].splitlines() if ln.startswith("| `sparsity` |"))
    assert "**required**; 0 <= x < 1 or `auto`" in sparsity


def test_check_names_the_difference_and_write_is_atomic(tmp_path, capsys):
    page = tmp_path / "docs" / "recipe.md"
    assert recipe_docs.main(["--output", str(page)]) == 0  # creates the folder and the page
    assert page.read_text(encoding="utf-8") == recipe_docs.render()
    assert [p.name for p in page.parent.iterdir()] == ["recipe.md"]  # no temp file left behind
    assert recipe_docs.main(["--check", "--output", str(page)]) == 0

    stale = page.read_text(encoding="utf-8").replace("| `lr` | number | `0.01` |", "| `lr` | number | `0.02` |")
    page.write_text(stale, encoding="utf-8")
    capsys.readouterr()
    assert recipe_docs.main(["--check", "--output", str(page)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "stale" in err and "'finetune.optimizer', key 'lr'" in err and recipe_docs.COMMAND in err

    assert recipe_docs.main(["--output", str(page)]) == 0
    assert recipe_docs.main(["--check", "--output", str(page)]) == 0
    assert recipe_docs.main(["--check", "--output", str(tmp_path / "absent.md")]) == 1
