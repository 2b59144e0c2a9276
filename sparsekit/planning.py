"""``sparsekit.plan()``: the dry run of a recipe — what it names, and with a model, which layers each
method selects and its sparsity target per epoch. Nothing is trained or written.

The ``sparsekit validate`` command prints this; Python users get the same dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from .recipe import Recipe


def plan(
    recipe: Recipe,
    model: str | Path | None = None,
    *,
    arch: str | None = None,
    steps_per_epoch: int = 100,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Rehearse ``recipe`` (already validated by :func:`sparsekit.load_recipe`).

    Without ``model`` nothing the recipe names is imported: the result lists that code under
    ``names_code`` (field -> ``pkg.module:callable``). With ``model`` (a model file) its
    architecture is built as for a prune run (a factory named by a file runs only with ``arch`` or
    ``trust_code``, see :mod:`sparsekit.trust`), a :class:`~sparsekit.pruner.Pruner` is built on it,
    and each method's layers and expected target per epoch (fraction of its weights, or of its
    channels for ``structured``) are listed, assuming ``steps_per_epoch`` optimizer steps per epoch.

    Returns ``{"recipe", "valid": True, "names_code": {...}, "epochs", "allocation": [...], "methods":
    [{"index", "method", "layers", "left_out": [{"name", "type", "reason"}], "targets_per_epoch"}],
    "rehearsal": {...}}``, where ``left_out`` lists the model's other modules with weights and why the entry
    does not prune them, and ``rehearsal`` (with a model) is :func:`sparsekit.rehearsal.rehearse`'s result:
    every structural removal performed on a copy, channels asked vs achievable per layer, export parity.

    ``allocation`` (with or without a model) has one row per entry with per-layer values (:func:`allocation`):
    the values an entry's ``layer_sparsity`` / ``layer_ratio`` gives, or, for an entry still holding ``auto``,
    a note that they will be chosen from a sensitivity analysis on validation data at prune time (a dry run
    has no data). With a model, such an entry is rehearsed with a uniform stand-in
    (:func:`sparsekit.allocation.placeholder_recipe`), its ``targets_per_epoch`` are the stand-in's, and
    its method row says ``"auto": True``.

    Raises the :class:`~sparsekit.errors.SparsekitError` subclasses a prune run would raise for the same
    recipe and model (patterns matching nothing, overlapping methods, ...)."""
    if steps_per_epoch <= 0:
        raise ValueError("steps_per_epoch must be > 0")
    res: dict[str, Any] = {
        "recipe": recipe.source,
        "valid": True,
        "names_code": named_code(recipe),
        "epochs": recipe.finetune.epochs,
        "allocation": allocation(recipe),
        "methods": [],
    }
    if model is None:
        return res
    from .allocation import placeholder_recipe
    from .layers import prunable_layers, unselected_layers
    from .pipeline import resolve_model
    from .pruner import Pruner
    from .rehearsal import rehearse
    from .sensitivity import auto_entries

    auto = set(auto_entries(recipe))
    if auto:  # no data here: the structure is rehearsed with uniform stand-ins for the auto values
        recipe = placeholder_recipe(recipe)
    loaded = resolve_model(model, recipe, arch, trust=False, trust_code=trust_code)
    # Every structural removal the run will make, performed on a copy (forward pass after each, one export).
    res["rehearsal"] = rehearse(loaded.model, recipe, cast(list[int], loaded.input_shape), steps_per_epoch).as_dict()
    pruner = Pruner(loaded.model, recipe, steps_per_epoch, context={"input_shape": loaded.input_shape})
    for i, (m, spec) in enumerate(zip(pruner.methods, recipe.pruning, strict=True)):
        left_out = unselected_layers(loaded.model, spec.layers)
        listed = {row["name"] for row in left_out}
        for name, module in prunable_layers(loaded.model).items():
            if name not in m.layers and name not in listed:  # selected, then kept by structured's ignore
                left_out.append({"name": name, "type": type(module).__name__, "reason": IGNORED_REASON})
        res["methods"].append(
            {
                "index": i,
                "method": m.name,
                "layers": list(m.layers),
                "left_out": left_out,
                "targets_per_epoch": m.targets(recipe.finetune.epochs, steps_per_epoch),
                **({"auto": True} if i in auto else {}),
            }
        )
    return res


AUTO_NOTE = (
    "per-layer values will be chosen from a sensitivity analysis on validation data when the recipe is pruned "
    "(a dry run has no data)"
)


def allocation(recipe: Recipe) -> list[dict[str, Any]]:
    """One row per ``pruning`` entry that has per-layer values: ``{"index", "method", "auto", "target",
    "layer_values", "note"}``. ``auto`` entries (``sparsity: auto`` / ``ratio: auto``) have ``target``
    (``{"sparsity": t}``, ``{"macs": m}`` or ``{"latency": l}``), ``layer_values`` None and a note that the
    values come from a sensitivity analysis at prune time; entries with ``layer_sparsity`` / ``layer_ratio``
    have those values (sparsity or channel ratio by layer), ``target`` the entry's ``sparsity`` / ``ratio``."""
    from .recipe import GradientSpec, MagnitudeSpec, StructuredSpec

    rows: list[dict[str, Any]] = []
    for i, spec in enumerate(recipe.pruning):
        target: dict[str, float]
        if isinstance(spec, StructuredSpec):
            values, what = spec.layer_ratio, "channel ratio of each listed layer"
            if spec.target_macs is not None:
                target = {"macs": spec.target_macs}
            elif spec.target_latency is not None:
                target = {"latency": spec.target_latency}
            else:
                target = {"ratio": float(spec.ratio)}
        elif isinstance(spec, MagnitudeSpec | GradientSpec):
            values, what = spec.layer_sparsity, "sparsity of each listed layer"
            target = {"sparsity": spec.final_sparsity}
        else:
            continue
        if not spec.auto and not values:
            continue
        rows.append(
            {
                "index": i,
                "method": spec.method,
                "auto": spec.auto,
                "target": target,
                "layer_values": None if spec.auto or values is None else dict(values),
                "note": AUTO_NOTE if spec.auto else what,
            }
        )
    return rows


def allocation_lines(res: dict[str, Any]) -> list[str]:
    """Lines for ``sparsekit validate`` describing :func:`plan`'s ``allocation`` rows."""
    lines = []
    for row in res.get("allocation", []):
        target = ", ".join(f"{k} {v:g}" for k, v in row["target"].items())
        if row["auto"]:
            lines.append(f"pruning[{row['index']}] {row['method']}: auto ({target}): {row['note']}")
            continue
        what = "channel ratio" if row["method"] == "structured" else "sparsity"
        lines.append(f"pruning[{row['index']}] {row['method']}: per-layer {what} ({target} elsewhere):")
        lines.extend(f"  {name}: {value:.4f}" for name, value in row["layer_values"].items())
    return lines


IGNORED_REASON = "in ignore: its output channels are kept (default: the classifier head)"


def named_code(recipe: Recipe) -> dict[str, str]:
    """The callables ``recipe`` names (field -> ``pkg.module:callable``); imported only when confirmed."""
    from .data import BUILTIN_SOURCES

    named = {}
    if recipe.model.factory:
        named["model.factory"] = recipe.model.factory
    src = recipe.data.source
    if ":" in src and not src.endswith(".npz") and src not in BUILTIN_SOURCES:
        named["data.source"] = src
    return named
