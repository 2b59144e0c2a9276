"""The recipes shipped with sparsekit: package data in ``sparsekit/recipes/*.yaml``, so a wheel
install has them too (the repository's top-level ``recipes/`` is a link to the same folder)."""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import RecipeError

RECIPES_DIR = Path(str(resources.files("sparsekit").joinpath("recipes")))


def find_recipe(recipe: str | Path) -> Path:
    """``recipe`` as a path when it exists and is not a folder, else the shipped recipe of that name (with
    or without ``.yaml``), else ``recipe`` unchanged (loading it then reports the missing file or folder)."""
    path = Path(recipe)
    try:
        # A folder is never a recipe: `prune model.pt cnn-structured-50 -o cnn-structured-50` made one of the shipped
        # name, and the next run read "cnn-structured-50: is a directory" instead of the shipped recipe.
        if not path.exists() or path.is_dir():
            for candidate in (RECIPES_DIR / str(recipe), RECIPES_DIR / f"{recipe}.yaml"):
                if candidate.is_file():
                    _warn_of_local_copy(path, candidate)
                    return candidate
    except OSError:  # a name the file system refuses to look up (too long): reading it says so, as a RecipeError
        pass
    return path


def _warn_of_local_copy(name: Path, shipped: Path) -> None:
    """Warn when the shipped recipe ``name`` resolved to stands beside a file of that name plus .yaml/.yml: a copy
    saved with `sparsekit recipes NAME > NAME.yaml` and edited, which the bare NAME silently did not read."""
    if name.suffix in (".yaml", ".yml"):
        return
    for local in (name.with_name(name.name + ".yaml"), name.with_name(name.name + ".yml")):
        if local.is_file():
            warnings.warn(
                f"{str(name)!r} is the shipped recipe {shipped}; your file {local} is not read: give its name "
                f"({local}) to use it",
                stacklevel=3,
            )
            return


def describe_recipe(text: str) -> str:
    """The description of a recipe file's ``text``: its leading comment block, as one paragraph (comment
    lines before the first line of YAML; empty when there are none)."""
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            if stripped or lines:
                break
            continue
        lines.append(stripped.lstrip("#").strip())
    return " ".join(part for part in lines if part)


def shipped_recipes() -> list[dict[str, Any]]:
    """One entry per shipped recipe: ``{"name", "path", "description" (its leading comment block, whole,
    as one paragraph), "methods", "model" (the factory it is written for)}``, sorted by name.

    Raises :class:`~sparsekit.errors.RecipeError` when none are found (a broken install)."""
    import yaml

    rows: list[dict[str, Any]] = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        rows.append(
            {
                "name": path.stem,
                "path": str(path),
                "description": describe_recipe(text),
                "methods": [m.get("method", "?") for m in data.get("pruning", [])],
                "model": (data.get("model") or {}).get("factory"),
            }
        )
    if not rows:
        raise RecipeError(
            f"no shipped recipes found in {RECIPES_DIR}: the installation is incomplete; reinstall sparsekit"
        )
    return rows


def shipped_recipe(name: str) -> dict[str, Any]:
    """The shipped recipe ``name`` (with or without ``.yaml``): its :func:`shipped_recipes` entry plus
    ``"text"``, the whole file. Raises :class:`~sparsekit.errors.RecipeError` listing the shipped names
    (the closest first) when there is none of that name."""
    import difflib

    rows = shipped_recipes()
    wanted = name[: -len(".yaml")] if name.endswith(".yaml") else name
    for row in rows:
        if row["name"] == wanted:
            return {**row, "text": Path(row["path"]).read_text(encoding="utf-8")}
    names = [row["name"] for row in rows]
    close = difflib.get_close_matches(wanted, names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    if Path(name).is_file():
        # A newcomer's own recipe file: this lookup is for shipped names only, so say where a file is checked.
        hint = f"{name} is a file of yours (`sparsekit validate {name}` checks it, `cat` prints it); " + hint
    raise RecipeError(f"recipe {name!r}: no shipped recipe of that name; {hint}shipped: {', '.join(names)}")
