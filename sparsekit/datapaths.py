"""Where a data file named inside a recipe may lead: checked by ``prune`` before the file is read, and by
``sparsekit validate RECIPE`` (no model), which must not import torch, so these live apart from
:mod:`sparsekit.data`. Recipe-only validate said "valid" for a recipe whose ``.npz`` path prune then refused."""

from __future__ import annotations

import os
from pathlib import Path

from sparsekit.errors import DataError, option, shorten


def check_named_path(source: str, named_in: str | os.PathLike[str], *, confirm_with: str = "data") -> None:
    """A data file named inside a recipe is followed only within the recipe's folder or the current
    folder (symlinks resolved; a relative path is read from the current folder, as every path sparsekit
    is given), never into a hidden file or folder there (SECURITY.md); anything else must be confirmed by
    naming it directly (the ``data`` option rather than the recipe, or ``confirm_with="set"``: an override
    ``data.source=...``, for a command without the data option)."""
    # The path that will be read: _load_npz expands "~" (a home folder is outside both roots, and resolve()
    # alone would take "~" for a folder under the current one).
    expanded = Path(source).expanduser()
    target = expanded.resolve()
    roots = [Path.cwd().resolve()]
    if Path(named_in).is_file():
        roots.append(Path(named_in).resolve().parent)
    # A relative path does not start from the recipe: say where it leads, or "../x.npz" looks like the file
    # beside the recipe's folder while it is the one beside the current folder.
    if Path(source).is_absolute():
        shown = repr(source)
    elif expanded.is_absolute():
        shown = f"{source!r} ({target})"
    else:
        shown = f"{source!r} (read from the current folder: {target})"
    named = option("set", f"data.source={source}") if confirm_with == "set" else option("data", source)
    confirm = f"to use it, name it yourself: {named}"
    inside = [root for root in roots if target.is_relative_to(root)]
    if not inside:
        raise DataError(
            f"{named_in}: data.source names the file {shown}, outside the recipe's folder and the current "
            f"folder, the only places a recipe's paths lead; {confirm}"
        )
    if all(any(part.startswith(".") for part in target.relative_to(root).parts) for root in inside):
        raise DataError(
            f"{named_in}: data.source names the file {shown}, in a hidden file or folder, where a recipe's paths "
            f"never lead; {confirm}"
        )


def check_beside_recipe(source: str, named_in: str | os.PathLike[str]) -> None:
    """A recipe's relative ``.npz`` path is read from the current folder, not the recipe's: when it names no file
    there but one beside the recipe (``sub/r.yaml`` naming ``d.npz`` run from the parent folder), a DataError says
    so. The plain "not found (relative paths start at the current directory ...)" left the user looking at the
    very file it named, beside the recipe."""
    path = Path(source).expanduser()
    recipe = Path(named_in)
    try:
        if path.is_absolute() or path.exists() or not recipe.is_file():
            return
        beside = recipe.parent / path
        if not beside.is_file():
            return
    except OSError:  # a name too long, a folder that may not be searched: _load_npz words these
        return
    raise DataError(
        f"data.source file '{shorten(source, 200)}' not found in the current folder {os.getcwd()}, where a "
        f"recipe's relative paths are read from, not the recipe's folder, which holds {shorten(str(beside), 200)}: "
        f"run from the recipe's folder, or name the file yourself: {option('data', str(beside))}"
    )
