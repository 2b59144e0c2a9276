"""Rehearse a recipe's structural removals on a throw-away copy of the model, before any training.

A structured entry removes channels during fine-tuning; should torch-pruning not model some layout of
the user's network, the failure would otherwise come after minutes or hours of training.
:func:`rehearse` performs, on a deep copy, every removal event the recipe's schedule holds (with the
recipe's importance where it needs no data; an importance that reads gradients gets placeholder
gradients of ones), runs a forward pass after each event, and exports the result once to ONNX
(TorchScript exporter, into a temporary folder) with the onnxruntime parity check. Whatever fails
becomes a :class:`~sparsekit.errors.TargetError` naming the recipe entry, the layer, the operation
and what to do (usually: name the layer in the entry's ``ignore``). The real model is never touched.
A ``gradient`` entry's layers are checked to get a gradient from the model's output (one backward pass on
a weightless copy): a layer the loss never reaches would hold back every mask update of the entry.

Memory: a recipe without structured entries removes nothing, so there is nothing to rehearse but
building its Pruner (layer selection, overlaps, tied weights): that is done on a weightless copy whose
parameters and buffers live on the ``meta`` device (shapes only, no bytes), so a 1 GB model costs no
second GB. Should building on it fail in any way, the Pruner is built again on a real copy, which then
raises what a prune run would. Structural removals need the weights (importances pick the channels,
and the export's parity check runs them): those recipes are rehearsed on a full deep copy.

>>> r = rehearse(model, recipe, input_shape=[1, 1, 28, 28], steps_per_epoch=len(train_loader))
>>> r.methods[0]["per_layer"]["conv1"]     # {"asked": 0.5, "achieved": 0.5, "reason": None}

``sparsekit validate RECIPE MODEL`` and the start of ``sparsekit prune`` call it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from . import surgery
from . import tp_adapter as tpa
from .errors import ExportError, SparsekitError, TargetError, one_line
from .fsutil import scratch_folder
from .methods import structured as structured_mod
from .pruner import Pruner, checked_input_shape, no_entries_warning_off
from .recipe import Recipe, RecipeLike, as_recipe, spells_remedies
from .schedule import checked_steps_per_epoch
from .wrappers import copy_model, mark_shapes_only, require_initialized, require_module, unwrap

__all__ = ["Rehearsal", "rehearse"]


@dataclass
class Rehearsal:
    """What a rehearsal learnt (every field JSON-able; :meth:`as_dict`).

    ``events``: structural removal events performed. ``methods``: one row per structural recipe entry,
    ``{"index", "method", "asked", "achieved", "per_layer": {layer: {"asked", "achieved", "reason"}},
    "at_floor", "channels": {layer: [initial, after]}}`` (see :meth:`Structured.report
    <sparsekit.methods.structured.Structured.report>`): the channels each layer can actually lose.
    ``history``: the removals, as a checkpoint's ``pruning_history`` records them. ``exported``:
    whether the pruned copy was exported (only when something was removed); ``parity``: the export's
    onnxruntime parity (``{"max_abs_diff", "ok", ...}``) or None. ``ms``: wall time."""

    events: int = 0
    methods: list[dict[str, Any]] = field(default_factory=list)
    history: list[list[Any]] = field(default_factory=list)
    exported: bool = False
    parity: dict[str, Any] | None = None
    ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The rehearsal as plain JSON types."""
        return {
            "events": self.events,
            "methods": self.methods,
            "history": self.history,
            "exported": self.exported,
            "parity": self.parity,
            "ms": self.ms,
        }


@spells_remedies("rehearse")  # a dict's or file's remedies name its keys: rehearse() takes no overrides
def rehearse(
    model: nn.Module,
    recipe: RecipeLike,
    input_shape: Sequence[int],
    steps_per_epoch: int,
    *,
    scorers: Mapping[int, Callable[..., Any]] | None = None,
    export: bool = True,
) -> Rehearsal:
    """Perform every structural removal ``recipe`` will make, on a copy of ``model``; see the module doc.

    ``input_shape``: batch-first shape of one input (e.g. ``[1, 1, 28, 28]``); ``steps_per_epoch``:
    optimizer steps per epoch, which places the removal events as the real run will; ``scorers``: as
    for :class:`~sparsekit.pruner.Pruner`; ``export=False`` skips the ONNX export and parity check.
    Returns a :class:`Rehearsal`. Raises TypeError when ``model`` is not an ``nn.Module`` or
    ``steps_per_epoch`` not an int, ValueError for an ``input_shape`` that is not a batch-first list of positive
    integers or a ``steps_per_epoch`` below 1, :class:`~sparsekit.errors.RecipeError` for a recipe that does not
    validate, :class:`~sparsekit.errors.TargetError` when the recipe cannot
    be carried out on this architecture (and whatever building the Pruner raises, as a prune run
    would); never a torch-pruning exception. The global RNG state is left as it was."""
    start = time.perf_counter()
    require_module(model, "rehearse")
    require_initialized(model, "rehearse", TargetError)
    recipe = as_recipe(recipe)
    shape = checked_input_shape(input_shape, "rehearse(input_shape=...)")  # int() cut 28.5 to 28 without a word
    # Named as this call's argument: the Pruner built inside said "Pruner(steps_per_epoch=...)", a call the user
    # never made.
    steps_per_epoch = checked_steps_per_epoch(steps_per_epoch, "rehearse(steps_per_epoch=...)")
    original = unwrap(model)
    with torch.random.fork_rng(devices=[]):
        # A user's scorer may read values (or refuse meta tensors in ways that look like bad input).
        removes = any(s.method == "structured" for s in recipe.pruning)
        reach = scorers is None and any(
            s.method == "gradient" or (s.method == "structured" and s.importance == "taylor") for s in recipe.pruning
        )
        weightless = None
        if scorers is None and (reach or not removes):
            weightless = _weightless(original, recipe, steps_per_epoch, shape)
        if weightless is not None and reach:
            _check_gradient_reach(weightless, shape)
        if weightless is not None and not removes:
            result = Rehearsal()
            result.ms = (time.perf_counter() - start) * 1000
            return result
        del weightless
        work = copy_model(original)
        pruner = _build(work, recipe, steps_per_epoch, shape, scorers)
        result = Rehearsal()
        methods = [(i, m) for i, m in enumerate(pruner.methods) if isinstance(m, structured_mod.Structured)]
        queue = sorted((step, i, k) for i, m in methods for k, step in enumerate(m.events))
        by_index = dict(methods)
        for _step, i, _k in queue:
            method = by_index[i]
            try:
                changes = method.rehearse_event()
            except TargetError as err:
                pending = method.pending_history()
                culprit = _culprit(original, [*result.history, *pending], shape, method)
                raise (culprit or err) from None
            except Exception as err:  # noqa: BLE001 - anything torch or torch-pruning raises
                raise TargetError(
                    f"pruning[{i}] ({method.name}): removal event {method.done + 1} failed ({one_line(err, 200)}); "
                    f"{method.ignore_hint(list(method.layers)[:1])}"
                ) from None
            result.history.extend(changes.history)
            result.events += 1
            _check_floors(method, i)
        result.methods = [{"index": i, "method": m.name, **m.report()} for i, m in methods]
        if export and result.events:
            result.exported, result.parity = True, _export(work, original, shape)
    result.ms = (time.perf_counter() - start) * 1000
    return result


def _build(
    work: nn.Module,
    recipe: Recipe,
    steps_per_epoch: int,
    shape: list[int],
    scorers: Mapping[int, Callable[..., Any]] | None = None,
) -> Pruner:
    """The run's Pruner on ``work``: what building it raises, as a prune run would raise it (anything
    but sparsekit's errors, ValueError and TypeError becomes a TargetError: never exit 1)."""
    try:
        with no_entries_warning_off():  # (a copy: the run's own Pruner, or validate's note, says it once)
            return Pruner(work, recipe, steps_per_epoch, context={"input_shape": shape}, scorers=scorers)
    except (SparsekitError, ValueError, TypeError):
        raise
    except Exception as err:  # noqa: BLE001 - torch-pruning or torch while building: never exit 1
        raise TargetError(f"pruning: the recipe cannot be set up on this model ({one_line(err, 200)})") from None


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the ``meta`` device: the same modules,
    names, shapes, dtypes and ``requires_grad`` (tied parameters stay tied), no storage. Other tensors
    held as plain attributes are copied as they are (they are not weights)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():  # each shared parameter once: deepcopy's memo keeps the ties
        memo.setdefault(id(p), nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad))
    for b in model.buffers():
        memo.setdefault(id(b), torch.empty_like(b, device="meta"))
    return mark_shapes_only(copy_model(model, memo))


def _weightless(original: nn.Module, recipe: Recipe, steps_per_epoch: int, shape: list[int]) -> Pruner | None:
    """The Pruner built on :func:`meta_copy` of ``original``, or None when building there fails in any way (a
    check that reads values cannot run on meta tensors): the caller then builds it on a real copy, which raises
    what a prune run would."""
    try:
        return _build(meta_copy(original), recipe, steps_per_epoch, shape)
    except Exception:  # noqa: BLE001 - decided again on a real copy
        return None


def _check_gradient_reach(pruner: Pruner, shape: list[int]) -> None:
    """Every layer of a ``gradient`` entry (or of a ``structured`` one ranking channels by gradients: taylor)
    gets a gradient from the model's output, checked by one backward
    pass through ``pruner``'s model, a :func:`meta_copy` (shapes only: no memory, no values). A layer off the
    path to the output the run trains on (an unused module, a second head that ``model.output`` leaves out, a
    frozen layer) never gets scores, and the entry's mask updates would wait for it through the whole
    fine-tuning, to fail at the end: here it is a TargetError naming the layer, before any training. Where the
    copy cannot run on the meta device, or the output is not one tensor (the loss is the caller's), nothing is
    checked."""
    from .layers import weight_of
    from .methods.gradient import Gradient

    # A structured entry ranking channels by gradients (taylor) needs them as much: its removal waited a whole
    # fine-tuning epoch to fail on a layer run under torch.no_grad() in forward.
    entries = [
        m
        for m in pruner.methods
        if isinstance(m, Gradient) or (isinstance(m, structured_mod.Structured) and m.needs_grad)
    ]
    try:
        work = pruner.model
        modes = [(m, m.training) for m in work.modules()]
        work.eval()  # (a throw-away copy, but its modes are put back as found)
        try:
            out = work(torch.zeros(shape, device="meta"))
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return
            out.float().sum().backward()
        finally:
            for m, training in modes:
                m.training = training
    except Exception:  # noqa: BLE001 - not checkable this way; the run's own checks still apply
        return
    for method in entries:
        unreached = [name for name, module in method.layers.items() if weight_of(module).grad is None]
        if unreached:
            shown = ", ".join(repr(n) for n in unreached[:3]) + (
                f" and {len(unreached) - 3} more" if len(unreached) > 3 else ""
            )
            frozen = [n for n in unreached if not weight_of(method.layers[n]).requires_grad]
            one = len(unreached) == 1
            why = (
                f"{'is' if one else 'are'} frozen (requires_grad=False)"
                if len(frozen) == len(unreached)
                else (
                    f"{'gets' if one else 'get'} no gradient from the model's output (not on the path to the logits "
                    "the run trains on: run under torch.no_grad() or detached in forward, or unused)"
                )
            )
            if isinstance(method, structured_mod.Structured):
                raise TargetError(
                    f"{method.where}.importance: {method._importance_name()!r} ranks channels by their gradients, "
                    f"but {'layer' if one else 'layers'} {shown} {why}: leave {'it' if one else 'them'} out with "
                    f"{method.where}.layers.exclude (the layers coupled to {'it' if one else 'them'} then keep their "
                    "channels too), or use importance l1, l2 or bn_scale"
                )
            raise TargetError(
                f"{method.where} (gradient): {'layer' if one else 'layers'} {shown} {why}, so "
                f"{'its' if one else 'their'} scores never exist and the entry could prune nothing; add "
                f"{'it' if one else 'them'} to {method.where}.layers.exclude"
            )


def _check_floors(method: structured_mod.Structured, index: int) -> None:
    """No layer is left empty, and no selected layer below its floor, counted on the model."""
    floor = method.spec.min_channels
    for name, module in method.model.named_modules():
        if not isinstance(module, (nn.Linear, _ConvNd)):
            continue
        counts = [int(module.weight.shape[0]), int(module.weight.shape[1])]
        initial = method.initial.get(name)
        low = initial is not None and _out_channels(module) < min(floor, initial)
        if min(counts) < 1 or low:
            raise TargetError(
                f"pruning[{index}] ({method.name}): after removal event {method.done}, {name!r} has weight shape "
                f"{list(module.weight.shape)}, below its floor (min_channels {floor}); "
                f"{method.ignore_hint([name])}"
            )


def _out_channels(module: nn.Module) -> int:
    return int(module.out_features) if isinstance(module, nn.Linear) else int(cast(_ConvNd, module).out_channels)


def _culprit(
    original: nn.Module, history: list[list[Any]], shape: list[int], method: structured_mod.Structured
) -> TargetError | None:
    """Replay ``history`` removal by removal on a fresh copy, checking the forward pass after each: a
    TargetError naming the first removal that breaks the model and the operations its channels pass
    through (None when the replay cannot tell)."""
    fresh = copy_model(original)
    try:
        with torch.no_grad():
            graph = surgery.build_graph(fresh, shape)
            modules = dict(fresh.named_modules())
            for name, is_out, idxs in history:
                module = modules.get(name)
                if module is None or not idxs:
                    continue
                group = tpa.channel_group(graph, module, idxs, outputs=is_out)
                members = tpa.group_members(graph, group)
                ops = sorted({w for m in members if (w := structured_mod.op_word(m.op))})
                try:
                    tpa.prune(group, record_history=False)
                    failure = surgery.forward_failure(fresh, shape, method.output_shapes)
                except Exception as err:  # noqa: BLE001 - torch-pruning itself failed on this group
                    failure = f"(torch-pruning: {one_line(err, 160)})"
                if failure is None:
                    continue
                through = f"; its channels pass through {', '.join(ops)}" if ops else ""
                fixed = (
                    " (a shape written into the forward code cannot follow a channel removal)"
                    if "view/reshape" in ops
                    else ""
                )
                # Attention whose keys/values have a width of their own (kdim/vdim): torch-pruning's attention
                # pruner knows only the packed projection and joins their layer's channels to the embedding's, so
                # the removal breaks it whatever view or split the path holds.
                mixed = next(
                    (
                        (n, a)
                        for n, a in fresh.named_modules()
                        if isinstance(a, nn.MultiheadAttention)
                        and not a._qkv_same_embed_dim
                        and any(m.module is a for m in members)
                    ),
                    None,
                )
                calls = surgery.forward_calls(original, shape)[0]
                runs = calls.get(dict(original.named_modules())[name], 1)
                if runs > 1:
                    # A layer applied several times (fc(relu(fc(x)))): the ops on the path (a view/reshape of
                    # torch-pruning's trace) are not what breaks; its removed units are another call's inputs.
                    through = (
                        f"; {name!r} runs {runs} times in one forward pass (a shared layer): one call's outputs are "
                        "another call's inputs, so its width cannot change"
                    )
                    fixed = ""
                if mixed is not None:
                    n = mixed[0]
                    a = cast(nn.MultiheadAttention, dict(original.named_modules()).get(n, mixed[1]))  # (before removal)
                    through = (
                        f"; {n!r} is an nn.MultiheadAttention whose keys and values have widths of their own (kdim "
                        f"{a.kdim}, vdim {a.vdim}, embed_dim {a.embed_dim}), which channel removal does not handle"
                    )
                    fixed = ""
                # A per-channel buffer explains the failure better than the ops on the path (torch-pruning lists
                # a view/reshape beside a Linear whose output is multiplied by one, which misled).
                buffers = surgery.stale_buffer_words(surgery.stale_buffers(fresh, [[name, is_out, idxs]], failure))
                return TargetError(
                    f"{method.where}: removing {'output' if is_out else 'input'} channels of {name!r} breaks the "
                    f"model's forward pass {failure}{buffers or through + fixed + '; '}{method.ignore_hint([name])}"
                )
    except Exception:  # noqa: BLE001 - attribution is best effort; the original error stands
        return None
    return None


def _export(work: nn.Module, original: nn.Module, shape: list[int]) -> dict[str, Any] | None:
    """Export the pruned copy once (TorchScript exporter, temporary folder) and check parity. A failure
    the dense model shares is the model's own (raised as it is); one only the pruned copy has is the
    recipe's (TargetError). Both are exported in float32, as sparsekit exports models: a float64 or half-precision
    model (sparsekit.rehearse from Python) was refused with export's "export model.float() instead", a remedy for a
    call the user did not make; ``work`` is the rehearsal's own copy, so it is cast in place."""
    from .onnx import export_onnx

    work = work.float()
    with scratch_folder("sparsekit-rehearsal-") as tmp:
        try:
            info = export_onnx(work, Path(tmp) / "rehearsal.onnx", shape, exporter="torchscript", check_parity=True)
        except ExportError as err:
            if _dense_fails(original, Path(tmp), shape):
                raise
            raise TargetError(
                "pruning: after the recipe's channel removals the model no longer exports to ONNX "
                f"({one_line(err, 200)}); name the layers involved in the structured entry's ignore"
            ) from None
        parity = info.get("parity")
        if parity is not None and not parity.get("ok", True) and not _dense_fails(original, Path(tmp), shape):
            raise TargetError(
                f"pruning: after the recipe's channel removals onnxruntime's outputs differ from torch's (max |diff| "
                f"{parity.get('max_abs_diff')}); name the layers involved in the structured entry's ignore"
            )
        return dict(parity) if parity is not None else None


def _dense_fails(original: nn.Module, folder: Path, shape: list[int]) -> bool:
    from .onnx import export_onnx

    try:
        info = export_onnx(
            copy_model(original).float(), folder / "dense.onnx", shape, exporter="torchscript", check_parity=True
        )
    except Exception:  # noqa: BLE001 - any failure means the model itself does not export
        return True
    return not (info.get("parity") or {}).get("ok", True)
