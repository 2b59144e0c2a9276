"""``sparsekit.plan()``: the dry run of a recipe — what it names, and with a model, what each method will
do (in words), which layers it selects, and the sparsity the run will reach after every epoch, found by
driving the run's own Pruner through its optimizer steps on a copy of the model. Nothing is trained or
written.

The ``sparsekit validate`` command prints this; Python users get the same dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .fsutil import keeps_caller_generators
from .recipe import Recipe, resolve_recipe
from .schedule import checked_steps_per_epoch
from .wrappers import copy_model, require_path, unwrap


# seeded from the recipe inside; the caller's own generators are put back on return
@keeps_caller_generators(torch=True)
def plan(
    recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any],
    model: str | Path | None = None,
    *,
    arch: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    data: str | os.PathLike[str] | None = None,
    steps_per_epoch: int | None = None,
    trust: bool = False,
    trust_code: bool = False,
    inputs: Any = None,
    overrides: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Rehearse ``recipe``: a :class:`~sparsekit.recipe.Recipe` (:func:`sparsekit.load_recipe`), a recipe file's
    path or a shipped recipe's name, or a dict (validated as the Pruner validates one: RecipeError naming the field;
    TypeError for anything else).

    Without ``model`` nothing the recipe names is imported (torch is not loaded either): the result lists
    that code under ``names_code`` (field -> ``pkg.module:callable``).

    With ``model`` (a model file) everything ``sparsekit prune`` does before training is done, with the
    same code (:func:`sparsekit.pipeline.check_inputs`): the architecture is built (a factory named by a
    file runs only with ``arch`` or ``trust_code``, see :mod:`sparsekit.trust`; ``trust`` allows a pickled
    module), the data is loaded (``data`` overrides ``data.source`` as prune's ``data=`` does) and one
    training batch is run through the model, every structural removal is rehearsed on a copy
    (:func:`sparsekit.rehearsal.rehearse`), and a :class:`~sparsekit.pruner.Pruner` is driven through
    every optimizer step of the run on a copy of the model, without training (:func:`simulate`). Optimizer
    steps per epoch are the run's (training batches, capped by ``finetune.max_steps_per_epoch``) unless
    ``steps_per_epoch`` is given. ``inputs``: the result of :func:`~sparsekit.pipeline.check_inputs` for
    this model and recipe, when the caller has it already (it is not changed). ``overrides``
    (``key.path=value`` strings, as the command line's set option takes them; the remedies of the errors raised
    here spell them ``overrides=[...]``) are applied to a recipe file, name or dict as
    :func:`~sparsekit.recipe.load_recipe` does; a :class:`~sparsekit.recipe.Recipe` object takes none
    (TypeError: set its fields, or load it with them), as in :func:`~sparsekit.pipeline.run_prune`.
    ``kwargs``: the model factory's keyword arguments (``model.kwargs``), as for run_prune.

    Returns ``{"recipe", "valid": True, "names_code", "epochs", "allocation": [...], "descriptions": [what each
    entry will do, in words (:func:`describe`)], "methods": [...] (empty without a model)}`` and,
    with a model, also ``"model"`` (``{"path", "factory", "input_shape", "outputs"}``), ``"data"``
    (``{"source", "train_batches", "batch_shape", "output_shape"}``), ``"steps_per_epoch"``,
    ``"steps_per_epoch_from"`` (``"data"`` | ``"given"``), ``"rehearsal"`` and ``"schedule"`` (see
    :func:`simulate`: ``start``, ``history`` — the ``epoch``/``sparsity`` rows report.json's history will
    show — and ``final``). Each ``methods`` row is ``{"index", "method", "description" (what it will do,
    in words), "layers", "left_out": [{"name", "type", "reason"}], "targets_per_epoch" (the schedule's
    target at the end of each fine-tuning epoch: fraction of the entry's weights, or of its channels for
    ``structured``), "expected_per_epoch" (what the run reaches then, from the simulation; None for l1 and
    max_norm, whose effect depends on training), "at_start", "final"}``, and for l1 with remove_dead
    ``"cannot_remove"`` ({layer: why its zeroed units will stay}) when any will. ``left_out`` lists the
    model's other modules with weights and why the entry does not prune them.

    ``allocation`` (with or without a model) has one row per entry with per-layer values (:func:`allocation`):
    the values an entry's ``layer_sparsity`` / ``layer_ratio`` gives, or, for an entry still holding ``auto``,
    a note that they will be chosen from a sensitivity analysis on validation data at prune time. With a
    model, such an entry is rehearsed with a uniform stand-in (:func:`sparsekit.allocation.placeholder_recipe`),
    its targets are the stand-in's, and its method row says ``"auto": True``.

    Raises the :class:`~sparsekit.errors.SparsekitError` subclasses a prune run would raise for the same
    recipe, model and data (patterns matching nothing, overlapping methods, data that does not fit the
    model, ...)."""
    if steps_per_epoch is not None:
        # As the Pruner takes it (an int or a numpy integer): "4" failed as "'<=' not supported between instances of
        # 'str' and 'int'", and 2.5 was refused by the Pruner built inside, as "Pruner(steps_per_epoch=...)".
        steps_per_epoch = checked_steps_per_epoch(steps_per_epoch, "plan(steps_per_epoch=...)")
    if model is not None:
        require_path(model, "plan(model=...)")
    # The errors' remedies read overrides=[...] (the input shape, a layer pattern, ...), as for run_prune and
    # load_recipe; the factory's kwargs become model.kwargs; a path or a dict, as Pruner and run_prune take.
    recipe = resolve_recipe(recipe, kwargs, overrides, "plan", arch)
    res: dict[str, Any] = {
        "recipe": recipe.source,
        "valid": True,
        "names_code": named_code(recipe),
        "epochs": recipe.finetune.epochs,
        "allocation": allocation(recipe),
        "descriptions": [describe(spec, epochs=recipe.finetune.epochs) for spec in recipe.pruning],
        "methods": [],
    }
    if model is None:
        from .trust import Kind, check_runnable

        # Nothing is imported, but code that prune never runs, whatever the user confirms (os:system), makes the
        # recipe unusable: saying "valid" and "prune would call it once you confirm it" was wrong.
        for field, spec in res["names_code"].items():
            kind: Kind = "model" if field == "model.factory" else "data"
            check_runnable(spec, kind=kind, named_in=recipe.source or "recipe", field=field)
        return res

    from .allocation import placeholder_recipe
    from .layers import prunable_layers, unselected_layers
    from .pipeline import check_inputs, data_option
    from .pruner import Pruner
    from .rehearsal import rehearse
    from .sensitivity import auto_entries

    auto = set(auto_entries(recipe))
    if auto:  # no allocation here: the structure is rehearsed with uniform stand-ins for the auto values
        recipe = placeholder_recipe(recipe)
    if inputs is None:
        data = data_option(data, "plan")
        inputs = check_inputs(model, recipe, arch=arch, data=data, trust=trust, trust_code=trust_code)
    loaded, shape = inputs.loaded, list(inputs.shape)
    batch, out_shape = first_batch(inputs)
    spe = steps_per_epoch or inputs.steps_per_epoch
    from . import distributed

    # Under torchrun each process steps through its shard of the training batches (check_inputs counted those).
    processes = distributed.world_size() if distributed.active() else distributed.launched_world_size()
    res.update(
        model={"path": str(model), "factory": inputs.factory, "input_shape": shape, "outputs": out_shape[1]},
        data={
            "source": inputs.source,
            "train_batches": _length(inputs.bundle.train),
            "processes": processes,
            "batches_per_process": distributed.batches_per_rank(inputs.bundle.train) if processes > 1 else None,
            "batch_shape": list(batch[0].shape),
            "output_shape": out_shape,
        },
        steps_per_epoch=spe,
        steps_per_epoch_from="given" if steps_per_epoch else "data",
    )
    # Every structural removal the run will make, performed on a copy (forward pass after each, one export).
    res["rehearsal"] = rehearse(loaded.model, recipe, shape, spe).as_dict()
    work = copy_model(loaded.model)  # building a Pruner adds masks, and a oneshot schedule prunes at once
    pruner = Pruner(work, recipe, spe, context={"input_shape": shape})
    schedule = simulate(loaded.model, recipe, spe, shape, batch)
    res["schedule"] = schedule
    epochs = recipe.finetune.epochs
    for i, (m, spec) in enumerate(zip(pruner.methods, recipe.pruning, strict=True)):
        left_out = unselected_layers(work, spec.layers, spec.method)
        listed = {row["name"] for row in left_out}
        for name, module in prunable_layers(work).items():
            if name not in m.layers and name not in listed:  # selected, then kept by structured's ignore
                # (or left out by group lasso, which has no ignore: it leaves the classifier head out itself)
                if name in getattr(m, "head_left_out", ()):
                    reason = HEAD_LEFT_OUT_REASON
                elif name in (apart := getattr(m, "target_left_out", {})):  # l1: units a target cannot count
                    reason = f"its units cannot be removed ({apart[name]}), so the target does not count them"
                else:  # an ignore the recipe wrote, or its default (the classifier head)
                    reason = IGNORED_REASON if getattr(spec, "ignore", None) is not None else HEAD_KEPT_REASON
                left_out.append({"name": name, "type": type(module).__name__, "reason": reason})
        predicted = i in schedule["predicted"]
        res["methods"].append(
            {
                "index": i,
                "method": m.name,
                "description": describe(spec, list(m.layers), spe, epochs, auto=i in auto),
                "layers": list(m.layers),
                "left_out": left_out,
                "targets_per_epoch": m.targets(epochs, spe)[:epochs],
                "expected_per_epoch": [row["methods"][i] for row in schedule["history"]] if predicted else None,
                "at_start": schedule["start"]["methods"][i] if predicted else None,
                "final": schedule["final"]["methods"][i] if predicted else None,
                **({"auto": True} if i in auto else {}),
                # l1 with remove_dead: layers whose zeroed units finalize will keep (a tie, a coupling), and why
                **({"cannot_remove": dict(blocked)} if (blocked := getattr(m, "cannot_remove", None)) else {}),
            }
        )
    return res


UNPREDICTED = ("l1", "max_norm")
"""Methods :func:`simulate` leaves out: they act on the weights at every training step, so what they do
(l1's zeros; max_norm makes none) follows from the training itself."""


def simulate(
    model: Any,
    recipe: Recipe,
    steps_per_epoch: int,
    input_shape: Sequence[int],
    batch: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """What the run's Pruner will do, found by doing it: a :class:`~sparsekit.pruner.Pruner` over a copy of
    ``model`` is driven through every optimizer step of ``recipe.finetune.epochs`` epochs of
    ``steps_per_epoch`` steps as :func:`sparsekit.finetune` drives it (``pruner.step()`` after each
    optimizer step), with no optimizer step in between: the weights do not change, the masks change exactly
    as in the run (a mask update zeroes the same number of weights, whatever their values). With no
    fine-tuning epochs it does what the run does then: the Pruner is built and, for methods that read
    gradients, stepped once after a calibration backward pass. Then the copy is finalized (bake, channel
    removal). ``model`` is not changed.

    Methods that read gradients get those of ``batch`` (``(inputs, labels)``: cross-entropy on one training
    batch), recomputed after each channel removal; which weights they pick then differs from the run, how
    many does not. Steps at which no method can act are skipped (nothing would happen at them); l1 and
    max_norm entries (:data:`UNPREDICTED`) are left out, since they act through training alone.

    Returns ``{"steps_per_epoch", "predicted": [indices into recipe.pruning simulated], "start", "history":
    [{"epoch", "sparsity", "methods"}] (one row per epoch, from 1), "final"}``; ``start`` (after the Pruner is
    built, and calibrated when the run has no epochs) and ``final`` (after finalize: what model.pt holds)
    have ``sparsity`` and ``methods`` too, and ``final`` has ``emptied``: the layers left with no nonzero
    weight (their output is their bias alone). ``sparsity`` is :func:`sparsekit.stats.sparsity` of the model,
    as report.json's history and ``pruned.sparsity`` report it (l1 zeros would come on top); ``methods``
    has one value per ``recipe.pruning`` entry: the fraction of its weights that is zero (of its output
    channels removed, for structured), as its report row's ``achieved``; None for an entry not simulated."""

    import torch

    from .layers import prunable_layers, weight_of
    from .pruner import Pruner, no_entries_warning_off
    from .stats import sparsity
    from .train import model_input

    keep = [i for i, spec in enumerate(recipe.pruning) if spec.method not in UNPREDICTED]
    sim = recipe.model_copy(update={"pruning": [recipe.pruning[i] for i in keep]})
    epochs = recipe.finetune.epochs
    total = epochs * steps_per_epoch
    with torch.random.fork_rng(devices=[]):
        work = copy_model(unwrap(model))
        with no_entries_warning_off():  # (an l1-only recipe leaves no entry to simulate)
            pruner = Pruner(work, sim, steps_per_epoch, context={"input_shape": [int(d) for d in input_shape]})
        needs_grad = any(m.needs_grad for m in pruner.methods)

        def grads() -> None:
            if needs_grad and batch is not None:
                pruner.model.zero_grad()
                x, y = batch
                x = model_input(x, next(pruner.model.parameters(), None))  # (the model's dtype, as in first_batch)
                torch.nn.functional.cross_entropy(pruner.model(x), y).backward()

        def state() -> dict[str, Any]:
            achieved: list[float | None] = [None] * len(recipe.pruning)
            for k, m in enumerate(pruner.methods):
                achieved[keep[k]] = m.report().get("achieved")
            return {"sparsity": sparsity(pruner.model), "methods": achieved}

        pruner.model.eval()  # gradients without touching BatchNorm statistics (a batch of one is fine too)
        grads()
        history = []
        if epochs == 0:
            if needs_grad:  # sparsekit's calibrate(): gradients of a few batches, then one step
                pruner.step()
            start = state()
        else:
            start = state()
            due = _acting_steps(pruner.methods, total)
            waiting = _waiting(pruner.methods)
            for step in range(1, total + 1):
                if due is None or step in due or waiting or step % steps_per_epoch == 0:
                    pruner.step_count = step - 1  # the steps skipped did nothing
                    pruner.step()
                    if pruner.structure_changed:  # new parameter objects, no gradients yet
                        pruner.structure_changed = False
                        grads()
                    waiting = _waiting(pruner.methods)
                if step % steps_per_epoch == 0:
                    history.append({"epoch": step // steps_per_epoch, **state()})
        pruner.finalize()
        final = state()
        # A layer with no weight left passes on its bias alone, whatever its input: a model that still runs
        # but has lost that path (scope: layer at 0.999 empties a layer of under 500 weights).
        final["emptied"] = [
            name for name, module in prunable_layers(pruner.model).items() if not bool(weight_of(module).any())
        ]
    return {"steps_per_epoch": steps_per_epoch, "predicted": keep, "start": start, "history": history, "final": final}


def _acting_steps(methods: Sequence[Any], total: int) -> set[int] | None:
    """The optimizer steps (1..total) at which some method may change masks or channels: a masking method's
    schedule update points, a structured method's removal events; None (every step) for a method that
    says neither."""
    from .schedule import Schedule

    steps: set[int] = set()
    for m in methods:
        schedule = getattr(m, "schedule", None)
        events = getattr(m, "events", None)
        if isinstance(schedule, Schedule):
            steps.update(
                s for s in range(max(schedule.start, 1), min(schedule.end, total) + 1) if schedule.is_update(s)
            )
        elif isinstance(events, list):
            steps.update(min(max(int(s), 1), total) for s in events)
        else:
            return None
    return steps


def _waiting(methods: Sequence[Any]) -> bool:
    # A gradient entry whose update point came before any gradient retries at every step until it runs.
    return any(getattr(m, "_pending", False) for m in methods)


def first_batch(inputs: Any) -> tuple[tuple[Any, Any], list[int]]:
    """The first training batch of ``inputs`` (:class:`sparsekit.pipeline.Inputs`), run through its model in
    eval mode: returns ``((x, y), output shape)``. Raises :class:`~sparsekit.errors.DataError` naming the data
    source and the model file when the batch cannot be read, the model fails on it, its output is not
    ``[batch, classes]`` or a label is outside the model's outputs."""
    from .data import _reworded
    from .errors import DataError

    try:
        return _first_batch(inputs)
    except DataError as err:
        # Named as load_data named the source: the data option (a CLI user gave --data, not data.source), or the
        # recipe file before its field; these said "data.source 'x'" whoever had named it.
        named_in, field = getattr(inputs, "source_named", (None, "data.source"))
        raise _reworded(err, inputs.source, named_in, field) from None


def _first_batch(inputs: Any) -> tuple[tuple[Any, Any], list[int]]:
    import torch

    from .errors import DataError, SparsekitError, one_line
    from .logits import not_logits

    source, where = inputs.source, inputs.model_path
    try:
        x, y = next(iter(inputs.bundle.train))
    except StopIteration:
        raise DataError(f"data.source {source!r}: the training data yields no batch; it needs samples") from None
    except SparsekitError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's loader
        raise DataError(f"data.source {source!r}: reading the first training batch failed ({one_line(err)})") from None
    model = inputs.loaded.model
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    from .train import model_input

    try:
        with torch.no_grad():
            # in the model's dtype, as training feeds it: a float64 or bfloat16 architecture took float32 data in a
            # prune run but was refused here, blaming the data ("use data of the model's input shape")
            out = model(model_input(x, next(model.parameters(), None)))
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's model on the user's data: bad input
        raise DataError(
            f"data.source {source!r}: a training batch of shape {list(x.shape)} does not run through {where} "
            f"(input shape {list(inputs.shape)}): {one_line(err, 200)}; use data of the model's input shape"
        ) from None
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        remedy = not_logits(out.shape) if isinstance(out, torch.Tensor) else not_logits([0, 0])
        raise DataError(f"{where}: on a batch of data.source {source!r} the model returns {got}; sparsekit expects "
                        f"logits [batch, classes]: {remedy}")  # fmt: skip
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= out.shape[1]):
        raise DataError(
            f"data.source {source!r}: labels {int(y.min())}..{int(y.max())} in the first batch, but {where} has "
            f"{out.shape[1]} outputs (classes 0..{out.shape[1] - 1}); use data of the model's classes"
        )
    return (x, y), list(out.shape)


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


AUTO_NOTE = (
    "per-layer values will be chosen from a sensitivity analysis on validation data when the recipe is pruned "
    "(`sparsekit validate RECIPE MODEL` runs that analysis now and shows them)"
)
# (plan() itself never runs the analysis, with a model either: it trains, which a plan should not; the old
# "(a dry run has no data)" was wrong there, since plan() with a model loads the data.)


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
        lines.append(f"pruning[{row['index']}] {row['method']}: per-layer {what} ({target} for any layer not listed):")
        lines.extend(f"  {name}: {value:.4f}" for name, value in row["layer_values"].items())
    return lines


IGNORED_REASON = "in ignore: its output channels are kept"
HEAD_KEPT_REASON = "in ignore by default (the classifier head): its output channels are kept"
HEAD_LEFT_OUT_REASON = (
    "an output layer (its output is one of the model's, e.g. the classifier head): group lasso leaves it out (a "
    "unit of it at zero leaves that output only its bias); name it in layers.include to select it"
)
# ("the classifier head" alone misnamed a decoder whose reconstruction is the model's second output.)


def named_code(recipe: Recipe) -> dict[str, str]:
    """The callables ``recipe`` names (field -> ``pkg.module:callable``); imported only when confirmed."""
    named = {}
    if recipe.model.factory:
        named["model.factory"] = recipe.model.factory
    src = recipe.data.source
    if ":" in src and not src.endswith(".npz"):  # the built-in sources (sparsekit.data) hold no ':'
        named["data.source"] = src
    return named


def describe(
    spec: Any, layers: Sequence[str] | None = None, steps_per_epoch: int | None = None, epochs: int | None = None,
    *, auto: bool = False,
) -> str:  # fmt: skip
    """What a ``pruning`` entry will do, in one sentence (``sparsekit validate`` prints it), e.g. ``magnitude:
    zero the 90% smallest-|w| weights of fc1, fc2 (global ranking), rising along a cubic schedule from
    epoch 0 to 3, mask updated every 1/8 epoch (every 8 of the epoch's 63 steps)``. ``layers``: the layers it
    selects (the recipe's patterns when None); ``steps_per_epoch`` adds the schedule in optimizer steps; ``epochs``
    (the run's fine-tuning epochs; default the schedule's) says what happens without fine-tuning; ``auto``:
    the entry's values are a stand-in for an allocation still to come."""
    from .recipe import (
        FOREVER_EPOCHS,
        GradientSpec,
        L1Spec,
        MagnitudeSpec,
        MaxNormSpec,
        StructuredSpec,
        unread_schedule_words,
    )

    names = _names(layers) if layers is not None else _patterns(spec.layers)
    if isinstance(spec, MagnitudeSpec | GradientSpec):
        if spec.auto or auto:
            amount = f"{_pct(spec.final_sparsity)} (per-layer values chosen by a sensitivity analysis at prune time)"
        else:
            amount = _pct(float(spec.sparsity))
        if isinstance(spec, MagnitudeSpec):
            what = "smallest-|w|"
        elif spec.criterion == "taylor":
            what = "lowest-|w*dL/dw| (taylor, summed between mask updates)"
        else:
            what = "lowest -w*dL/dw (movement: weights moving toward zero, summed over the run)"
        # An auto entry's allocation gives every layer its own value (scope: layer), whatever scope says; "global
        # ranking" described a run that never happens.
        if spec.scope == "global" and not spec.auto:
            cap = spec.layer_cap
            ranking = "global ranking" + (f", no layer above {_pct(cap)}" if cap < 1 else "")
        else:
            ranking = "each layer ranked on its own"
        text = f"{spec.method}: zero the {amount} {what} weights of {names} ({ranking})"
        if spec.layer_sparsity:
            own = ", ".join(f"{n} {_pct(v)}" for n, v in spec.layer_sparsity.items())
            text += f"; own values: {own}"
        text += _when(spec.schedule, steps_per_epoch, epochs, "mask")
        if isinstance(spec, GradientSpec) and epochs == 0:
            text += f"; scored on the gradients of {spec.calibration_batches} training batches (no fine-tuning)"
        elif isinstance(spec, GradientSpec) and spec.score_every > 1:
            text += f"; scores summed on every {spec.score_every}th step counted back from each update"
            apart = max(1, round(spec.schedule.every * steps_per_epoch)) if steps_per_epoch else None
            if apart is not None and spec.score_every >= apart and spec.schedule.end_epoch > spec.schedule.start_epoch:
                text += f" (the updates are {apart} step(s) apart: only each update's own step is scored)"
        return text
    if isinstance(spec, StructuredSpec):
        if spec.auto:
            aim = (
                f"{_pct(spec.target_macs)} of the MACs"
                if spec.target_macs is not None
                else f"{_pct(spec.target_latency or 0)} of the latency"
            )
            amount = f"enough output channels to keep {aim} (per-layer ratios chosen by a sensitivity analysis)"
        else:
            amount = f"{_pct(float(spec.ratio))} of the output channels"
        r = spec.round_to
        # Layers narrower than the multiple they could keep are not rounded at all (tp_adapter.alignment): an
        # 8-channel layer keeps 4 under round_to 16, which "8 in layers narrower than 32" seemed to forbid.
        half = (
            f" ({r // 2} in layers {r} to {2 * r - 1} wide; narrower ones are not rounded)"
            if r and r % 2 == 0 and r > 2
            else f" (layers narrower than {2 * r} are not rounded)"
            if r
            else ""
        )
        extra = f", channel counts kept to multiples of {r}{half}" if r and r > 1 else ""
        scope = "layer" if spec.auto else spec.scope  # the allocation gives each group its own ratio (scope: layer)
        text = f"structured: remove {amount} of {names} ({spec.importance} importance, {scope} scope{extra})"
        if spec.layer_ratio:
            text += "; own ratios: " + ", ".join(f"{n} {_pct(v)}" for n, v in spec.layer_ratio.items())
        s = spec.schedule
        if spec.steps == 1 or s.end_epoch == s.start_epoch:
            text += f", {'in ' + str(spec.steps) + ' events ' if spec.steps > 1 else ''}at epoch {s.start_epoch:g}"
        else:
            # Each event starts one of `steps` equal slices of the window (methods.structured._event_steps): the last
            # comes a slice before end_epoch, which "from epoch 0 to 2" alone suggested it reached.
            width = (s.end_epoch - s.start_epoch) / spec.steps
            at = [f"{s.start_epoch + k * width:.3g}" for k in range(spec.steps)]
            shown = ", ".join(at) if len(at) <= 6 else f"{', '.join(at[:3])}, ..., {at[-1]}"
            text += (
                f", in {spec.steps} removal events from epoch {s.start_epoch:g} to {s.end_epoch:g} (at epochs "
                f"{shown}: each starts one of {spec.steps} equal slices)"
            )
        if epochs == 0:
            text += " (no fine-tuning: all at once)"
        kept = ", ".join(spec.ignore) if spec.ignore else "the classifier head"
        unread = unread_schedule_words(spec.model_dump())
        text += f"; the layers they feed shrink with them; outputs never removed: {kept}"
        return text + (f"; {unread}" if unread else "")
    if isinstance(spec, L1Spec):
        unit = {
            "none": "",
            "row": " (group lasso over each output unit)",
            "channel": " (group lasso over each channel)",
        }
        if spec.mode == "penalty":
            # Group lasso's term is the sum of the units' L2 norms: "the L1 norm of the weights" described another
            # penalty (unstructured L1), whose strength is on another scale for the same lambda.
            norm = (
                "the L1 norm of the weights"
                if spec.group == "none"
                else f"the sum of the L2 norms of the {'output units' if spec.group == 'row' else 'channels'}"
            )
            text = f"l1: add {spec.strength:g} * {norm} of {names}{unit[spec.group]} to the loss"
        else:
            n = spec.proximal_every
            every = "every optimizer step" if n == 1 else f"every {n} optimizer steps"
            text = (
                f"l1: {every}, shrink the weights of {names}{unit[spec.group]} toward zero by lr * "
                f"{spec.strength:g} per step taken (soft threshold: exact zeros)"
            )
        s = spec.schedule
        unread = unread_schedule_words(spec.model_dump())
        text += (
            " for the whole run"
            if s.end_epoch >= FOREVER_EPOCHS
            else f" from epoch {s.start_epoch:g} to {s.end_epoch:g}"
        )
        if unread:
            text += f" ({unread})"
        if spec.threshold > 0:
            text += f"; at the end |w| below {spec.threshold:g} becomes zero"
        if spec.remove_dead:
            text += "; neurons/channels left all zero are then removed"
        if spec.target is not None:
            what = "units" if spec.group != "none" else "weights"
            return text + f"; lambda adapts so that {spec.target:g} of the {what} are zero by epoch {s.end_epoch:g}"
        if epochs == 0:
            # l1 acts through training steps: with none, its strength does nothing and only a threshold can zero.
            if spec.threshold > 0:
                return text + "; with no fine-tuning (finetune.epochs: 0) no step is taken: only the threshold zeroes"
            return text + (
                "; with no fine-tuning (finetune.epochs: 0) no step is taken, so no weight will end at zero (give it "
                "fine-tuning epochs, or set threshold)"
            )
        if spec.mode == "penalty" and not spec.threshold:
            # A subgradient makes no exact zeros: this entry cannot zero or remove anything, whatever its strength.
            return text + (
                "; a penalty makes no exact zeros and no threshold or target is set, so no weight will end at zero "
                "(set threshold, use mode: proximal, or set target)"
            )
        return text + "; how many weights end at zero is known only after training"
    if isinstance(spec, MaxNormSpec):
        return (
            f"max_norm: after every optimizer step, rescale each output unit's incoming weights of {names} to an L2 "
            f"norm of at most {spec.max_value:g} (makes no zeros)"
        )
    return f"{getattr(spec, 'method', '?')}: acts on {names}"


def _when(schedule: Any, steps_per_epoch: int | None, epochs: int | None, what: str) -> str:
    """The schedule in words: when the target is reached and how often masks change (in steps too)."""
    s = schedule
    if s.end_epoch == s.start_epoch:
        if s.start_epoch == 0:
            return ", all at once before the first training step" if epochs != 0 else ", all at once"
        return f", all at once at epoch {s.start_epoch:g}"
    if steps_per_epoch:
        from .schedule import Schedule

        # Epochs become the nearest optimizer steps: a window narrower than a step (0 to 0.4 at 1 step per epoch)
        # is one update, all at once, which "rising along a cubic schedule from epoch 0 to 0.4" did not say.
        steps = Schedule.from_spec(s, 0.0, steps_per_epoch)
        if steps.oneshot:
            at = (
                ("before the first training step" if epochs != 0 else "")
                if steps.start == 0
                else f"at optimizer step {steps.start} (epoch {steps.start / steps_per_epoch:g})"
            )
            return (
                f", all at once{' ' + at if at else ''}: epochs {s.start_epoch:g} and {s.end_epoch:g} are the same "
                f"optimizer step at {steps_per_epoch} step{'s' if steps_per_epoch != 1 else ''} per epoch"
            )
    start = (
        f"from {_pct(s.init_sparsity)} at epoch {s.start_epoch:g}"
        if s.init_sparsity
        else f"from epoch {s.start_epoch:g}"
    )
    text = f", rising along a {s.curve} schedule {start} to {s.end_epoch:g}, {what} updated every {_epochs(s.every)}"
    if steps_per_epoch:
        every = max(1, round(s.every * steps_per_epoch))  # as sparsekit.schedule.Schedule.from_spec
        text += (
            f" (every {every} of the epoch's {steps_per_epoch} steps)"
            if every < steps_per_epoch
            else f" ({every} step{'' if every == 1 else 's'})"
        )
    return text


def _epochs(value: float) -> str:
    from fractions import Fraction

    f = Fraction(value).limit_denominator(1000)
    if float(f) == value and f.denominator == 1:
        return f"{f.numerator} epoch{'s' if f.numerator != 1 else ''}"
    if float(f) == value and f.numerator == 1:
        return f"1/{f.denominator} epoch"
    return f"{value:g} epochs"


def _pct(value: float) -> str:
    """``value`` (a fraction) in percent, to 4 decimals, or as many as keep it off a bound it is not: sparsity
    0.9999999 read "zero the 100% smallest weights", 1e-7 "0%"."""
    for places in range(4, 12):
        text = f"{round(value * 100, places):g}"
        if (text == "100") == (value == 1) and (text == "0") == (value == 0):
            return f"{text}%"
    return f"{value * 100:.10g}%"


def _names(layers: Sequence[str], limit: int = 6) -> str:
    names = list(layers)
    if len(names) <= limit:
        return ", ".join(names) or "no layer"
    return f"{', '.join(names[:limit])}, ... ({len(names)} layers)"


def _patterns(select: Any) -> str:
    text = "the layers matching " + ", ".join(select.include)
    if select.exclude:
        text += " except " + ", ".join(select.exclude)
    return text
