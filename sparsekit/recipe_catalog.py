"""The recipes shipped with sparsekit: package data in ``sparsekit/recipes/*.yaml``, so a wheel
install has them too (the repository's top-level ``recipes/`` is a link to the same folder)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .errors import RecipeError

RECIPES_DIR = Path(str(resources.files("sparsekit").joinpath("recipes")))


def find_recipe(recipe: str | Path) -> Path:
    """``recipe`` as a path when it exists, else the shipped recipe of that name (with or without
    ``.yaml``), else ``recipe`` unchanged (loading it then reports the missing file)."""
    path = Path(recipe)
    if not path.exists():
        for candidate in (RECIPES_DIR / str(recipe), RECIPES_DIR / f"{recipe}.yaml"):
            if candidate.is_file():
                return candidate
    return path


def shipped_recipes() -> list[dict[str, Any]]:
    """One entry per shipped recipe: ``{"name", "path", "description" (its first comment line),
    "methods", "model" (the factory it is written for)}``, sorted by name.

    Raises :class:`~sparsekit.errors.RecipeError` when none are found (a broken install)."""
    import yaml

    rows: list[dict[str, Any]] = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        first = next((line[1:].strip() for line in text.splitlines() if line.startswith("#")), "")
        data = yaml.safe_load(text) or {}
        rows.append(
            {
                "name": path.stem,
                "path": str(path),
                "description": first,
                "methods": [m.get("method", "?") for m in data.get("pruning", [])],
                "model": (data.get("model") or {}).get("factory"),
            }
        )
    if not rows:
        raise RecipeError(
            f"no shipped recipes found in {RECIPES_DIR}: the installation is incomplete; reinstall sparsekit"
        )
    return rows
