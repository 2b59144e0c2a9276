"""`sparsekit prune` end to end, as a short sequence of named stages (see :func:`run_prune`):
check the inputs → rehearse the recipe on a copy → measure the dense model → prune while fine-tuning
→ save and export the pruned model → int8 / sparse storage → benchmark → report. The CLI is a thin
wrapper around :func:`run_prune`; every sentence the user reads is in :mod:`sparsekit.report`."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from . import __version__, model_input
from . import distributed as _distributed
from .analysis import allocate_for_run, allocation_summary, write_allocation
from .data import check_npz_option, load_data
from .errors import (
    TRAINING_DONE,
    TRAINING_NOT_STARTED,
    WHERE_PREFIXES,
    DataError,
    ExportError,
    ModelFileError,
    OutputError,
    RecipeError,
    SparsekitError,
    TrustError,
    interrupted_at,
    interrupted_while,
    naming_recipe,
    one_line,
    option,
    quoted,
)
from .fsutil import (
    DISK_ERRORS,
    file_in_the_way,
    keeps_caller_generators,
    missing_folders,
    name_too_long,
    seed_generators,
    too_large_to_unpack,
)
from .logits import attach as attach_logits
from .logits import not_logits, select_logits
from .modelio import LoadedModel, infer_input_shape, precheck_model_file, read_model, refuse_compiled, save_model
from .plots import PlotWorker
from .provenance import change_lines, check_allowed, check_resume, provenance, recipe_record
from .pruner import Pruner, no_entries_warning_off
from .recipe import Recipe, resolve_recipe
from .report import Benchmark, Int8, Report, Speedup, fill_layer_aims, first_plot_data, notes, plot_data, what_it_buys
from .stats import layer_report, model_stats
from .train import calibrate, evaluate, finetune, frozen_teacher, step_clock_mismatch, steps_per_epoch
from .wrappers import float32_model, require_path

log = logging.getLogger("sparsekit")


def resolve_model(
    model_path: str | Path,
    recipe: Recipe,
    arch: str | None,
    trust: bool,
    trust_code: bool = False,
    data: str | None = None,
) -> LoadedModel:
    """Load MODEL: ``arch`` (the caller's choice) beats the checkpoint's own factory, which beats the
    recipe's ``model``. ``data``: the run's data source when the caller overrode the recipe's.
    A factory named by the checkpoint or the recipe runs only when confirmed (see :mod:`sparsekit.trust`)."""
    spec = recipe.model
    kwargs = spec.kwargs if arch and spec.factory in (None, arch) and spec.kwargs else None
    loaded = read_model(
        model_path,
        arch,
        kwargs=kwargs,
        trust=trust,
        trust_code=trust_code,
        fallback_factory=spec.factory,
        fallback_kwargs=spec.kwargs,
        fallback_named_in=recipe.source or "the recipe",
        fallback_confirmed=recipe.overridden("model.factory"),  # the caller's own override is confirmation
        probe=None if kwargs is None else True,  # recipe kwargs are a file's data too
        # (kwargs the caller gave, --kwargs or an override, are theirs: the message names the arch option they go with)
        kwargs_from=None
        if kwargs is None or recipe.overridden("model.kwargs", inside=True)
        else f"{recipe.source or 'the recipe'}: model.kwargs",
    )
    if spec.output is None and loaded.output is not None:
        # The run that wrote the checkpoint said which part of the output is the logits; the same part is meant
        # (as its saved input shape is), and the report's recipe shows the one used.
        spec.output = loaded.output
        loaded.notes.append(f"model.output: {loaded.output!r}, as the run that wrote {model_path} named the logits")
    for note in loaded.notes:
        log.warning(note)
    if (
        spec.input_shape
        and loaded.input_shape
        and list(spec.input_shape)[1:] != list(loaded.input_shape)[1:]
        and _runs_on(loaded.model, loaded.input_shape)
    ):  # a saved shape the model does not take (a damaged or mis-saved checkpoint) yields to the recipe's
        raise DataError(
            f"model.input_shape: the recipe says {list(spec.input_shape)} but {model_path} was saved for input "
            f"{list(loaded.input_shape)}; use a recipe for this model or {option('set', 'model.input_shape=null')}"
        )
    shape = spec.input_shape or loaded.input_shape or infer_input_shape(loaded.model)
    source = str(data or recipe.data.source)
    from_data = (
        None
        if shape
        else _shape_from_source(
            loaded.model,
            source,
            # as load_data is told below: a recipe's own path is held to where a recipe's paths may lead
            named_in=None if data or recipe.overridden("data.source") else (recipe.source or "the recipe"),
            option_name="data" if data else "data.source",
        )
    )
    shape = shape or from_data
    if not shape:
        # The built-in image sources' samples (sparsekit.data), as a first layer that convolves them takes them;
        # the run's source, which the data option may have changed: `--data mnist5k` was told [1,1,8,8] (the
        # recipe's digits), and following it failed on the next run. Another source: the first layer's channels.
        from .modelio import first_conv_shape, takes_tokens

        tokens = takes_tokens(loaded.model)  # a text model: the batch and a sequence length, not an image
        dims = (
            [1, 128]
            if tokens
            else {"digits": [1, 1, 8, 8], "mnist5k": [1, 1, 28, 28]}.get(source) or first_conv_shape(loaded.model)
        )
        example = "[" + ",".join(str(d) for d in (dims or [1, 1, 28, 28])) + "]"
        sample = "the number of token ids in one sample" if tokens else "one sample's shape"
        raise SparsekitError(
            f"{model_path}: cannot tell the model's input shape; set model.input_shape in the recipe "
            f"(e.g. {option('set', f'model.input_shape={example}')}: batch first, then {sample})"
        )
    if spec.input_shape:
        loaded.shape_origin = f"{recipe.source or 'the recipe'}: model.input_shape"
    elif loaded.input_shape:
        loaded.shape_origin = f"{model_path}: its saved input_shape"
    elif from_data:
        loaded.shape_origin = f"the samples' shape of data.source {source}"
    else:
        from .inspection import GUESSED

        loaded.shape_origin = GUESSED
    loaded.input_shape = list(shape)
    return loaded


# The built-in image sources' samples as the input shapes a model may take them in (sparsekit.data reshapes them
# to any of these): images for a Conv2d, one channel of a 1-D signal for a Conv1d, flat for a Linear.
_SOURCE_SHAPES = {
    "digits": ([1, 1, 8, 8], [1, 1, 64], [1, 64]),
    "mnist5k": ([1, 1, 28, 28], [1, 1, 784], [1, 784]),
}


def _npz_shapes(sample: tuple[int, ...]) -> list[list[int]]:
    """The input shapes an ``.npz``'s samples may be taken in (sparsekit.data reshapes them): as saved, and flat
    samples as one channel of a 1-D signal or one square image."""
    shapes = [[1, *sample]]
    if len(sample) == 1:
        side = math.isqrt(sample[0])
        shapes += [[1, 1, sample[0]]] + ([[1, 1, side, side]] if side * side == sample[0] else [])
    return shapes


def _shape_from_source(
    model: nn.Module, source: str, *, named_in: str | None = None, option_name: str = "data.source"
) -> list[int] | None:
    """For a model whose first layer does not tell its input shape (a convolution), the shape of the source's
    samples it runs on (``digits``: ``[1, 1, 8, 8]`` for a Conv2d, ``[1, 1, 64]`` for a Conv1d; an ``.npz``'s
    ``x`` of shape ``(n, 64)``: ``[1, 64]``, else ``[1, 1, 64]``, else ``[1, 1, 8, 8]``); None for another source,
    or when it runs on none of them (the caller's error then asks for model.input_shape). An ``.npz`` named by a
    recipe is held to load_data's checks on where it lies before its header is read (``named_in``; ``option_name``:
    load_data's ``field``)."""
    from .data import npz_sample_shape
    from .inspection import SeveralInputsError, check_input_shape

    sample = npz_sample_shape(source, named_in=named_in, field=option_name)
    for shape in _SOURCE_SHAPES.get(source, ()) if sample is None else _npz_shapes(sample):
        try:
            check_input_shape(model, shape)
        except SeveralInputsError:
            raise
        except DataError:
            continue
        return list(shape)
    if sample is not None:
        # The file's samples fit the model in no layout (x of shape (n, 2, 128) for a Conv1d of 1 channel): the
        # data is at fault, not the model. "cannot tell the model's input shape" asked for a model.input_shape,
        # and the one it suggested ([1, 1, 128]) was then refused for not holding the file's samples.
        from .data import _reworded

        def fix(value: str) -> str:
            dims = value.strip("[]").split(", ")[1:]
            return f"save x with shape (n, {', '.join(dims)})" if dims else "give x the shape the model takes"

        try:
            check_input_shape(
                model,
                [1, *sample],
                origin=f"data.source {source!r} gives samples of shape {sample}, so inputs of shape",
                fix=fix,
            )
        except SeveralInputsError:
            raise
        except DataError as err:
            raise _reworded(DataError(err.raw_message), source, named_in, option_name) from None
    return None


def _runs_on(model: nn.Module, shape: list[int]) -> bool:
    from .inspection import SeveralInputsError, check_input_shape

    try:
        check_input_shape(model, shape)
    except SeveralInputsError:
        raise  # no shape helps: said at once, not as a saved shape the model did not take
    except DataError:
        log.warning("the model does not take its checkpoint's saved input_shape %s; using the recipe's", shape)
        return False
    return True


def check_input(
    model: nn.Module, input_shape: list[int], where: str, origin: str = "", data_shapes: list[list[int]] | None = None
) -> int:
    """Run one forward pass; returns the number of outputs (classes). A model returning a tuple / dict
    needs ``model.output`` (:mod:`sparsekit.logits`, attached before this). ``data_shapes``: the input shapes the
    data's samples may be taken in, suggested first when the model does not take ``input_shape``."""
    from .inspection import check_input_shape

    # Batch 1 and 2, naming the shape as the user wrote it (and the batch dim if it was left out).
    # The recipe's model.input_shape is the remedy whatever the shape's source: it replaces a saved one the
    # model does not take (resolve_model).
    check_input_shape(
        model,
        input_shape,
        fix=lambda v: option("set", f"model.input_shape={v.replace(' ', '') if v else '[1,...]'}"),
        origin=origin or "input shape",
        prefer=data_shapes or (),
    )
    try:
        with torch.no_grad():
            out = model.eval()(model_input.example_input(model, [2, *input_shape[1:]]))
    except MemoryError:
        raise
    except DataError:
        raise
    except Exception as err:  # any shape error from the user's model
        msg = str(err).strip().splitlines()[0]
        raise DataError(
            f"{where}: the model does not accept inputs of shape {input_shape}: {msg}; set model.input_shape in "
            f"the recipe ({option('set', 'model.input_shape=[1,...]')}) to the shape it takes"
        ) from None
    out = select_logits(out, None, where)  # a tuple / dict without model.output: name its structure
    if out.dim() != 2:
        raise DataError(
            f"{where}: the model returns shape {list(out.shape)}; sparsekit expects logits [batch, classes]: "
            f"{not_logits(out.shape)}"
        )
    if out.shape[1] < 2:
        # The built-in loop trains with cross-entropy over the classes: one column is no classification.
        raise DataError(
            f"{where}: the model's logits have shape {list(out.shape)}, one class; sparsekit's built-in loop "
            "trains classification over 2 or more classes (cross-entropy): if the model returns several outputs, "
            "set model.output to the one with the class scores; for a single-logit or regression head, drive "
            "sparsekit.Pruner from your own training loop"
        )
    # Export, its parity check, rehearsal and the benchmark feed random normal values: a model that
    # fails on them (token ids for an nn.Embedding, say) is refused now, not after training.
    probe = model_input.example_input(model, [2, *input_shape[1:]], random=True)  # token ids for an embedding
    try:
        with torch.no_grad():
            model(probe)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's model: bad input, not our bug
        if probe.dtype == torch.long:
            what, which = "random token ids (below its vocabulary)", "some other values"
        else:  # ids cast from a float input inside forward: an int64 input is fed ids instead
            what = "random normal inputs"
            which = (
                "some values (token ids cast from its float input for an nn.Embedding, say: take int64 ids as the "
                "input instead, which sparsekit feeds ids)"
            )
        raise DataError(
            f"{where}: the model fails on {what} of shape {input_shape} ({one_line(err, 200)}); "
            f"export, its parity check and the benchmark feed such values, so a model that accepts only {which} "
            "cannot be pruned by this pipeline: drive sparsekit.Pruner from your own training loop instead"
        ) from None
    return int(out.shape[1])


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "sparsekit": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


# What an interrupted run was doing, by phase (the CLI's "Interrupted: while ..." line).
PHASE_WORDS = {
    "load": "loading the model",
    "data": "loading the data",
    "plan": "planning the recipe",
    "report": "writing the report",
    "dense_eval": "evaluating the dense model",
    "finetune": "pruning and fine-tuning",
    "save": "saving model.pt",
    "pruned_eval": "evaluating the pruned model",
    "int8": "quantizing to int8",
    "sizes": "measuring the files' sizes",
    "bench": "benchmarking in onnxruntime",
    "storage": "choosing how model.onnx stores its weights",
    "free": "freeing the torch model's memory",
}


@dataclass
class PhaseClock:
    """Wall time per phase of a run (seconds), for report.json's ``timings``: ``with clock("data"): ...``.
    A phase entered twice (the dense and the pruned export) adds up."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    # Added to where an interruption happened outside the training loop: whether training had begun or finished,
    # so the message says what a resume will find.
    note: str = ""
    # Epochs a resumed run's checkpoint had finished: this process fine-tuned only the rest, while every other
    # phase (load, dense eval, export, bench) ran in full, so its finetune time is not the run's.
    resumed_after_epoch: int | None = None
    # Whether the run fine-tunes at all: with finetune.epochs 0 the finetune phase is the pruner's set-up and
    # finalize alone (0.014 s), and the overhead ratio over it read 621x.
    trains: bool = True
    last: str = ""  # what the phase entered last was doing, in words: where the run is between phases

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        """The whole run: a Ctrl-C between phases (moving the model, writing files, freeing memory) says which
        phase had just run, and after training that training had finished."""
        try:
            yield
        except KeyboardInterrupt as err:
            if err.args and isinstance(err.args[0], str) and err.args[0].startswith(WHERE_PREFIXES):
                raise
            words = self.last
            raise type(err)(interrupted_at(f"after {words}{self.note}" if words else "while starting")) from None

    @contextlib.contextmanager
    def __call__(self, phase: str, words: str | None = None) -> Iterator[None]:
        """Time ``phase``; ``words``: what it does, when not :data:`PHASE_WORDS`' (the plots, timed as report)."""
        start = time.perf_counter()
        self.last = words = words or PHASE_WORDS.get(phase, phase)
        try:
            with interrupted_while(words + self.note):  # Ctrl-C says where the run was
                yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def timings(self) -> dict[str, Any]:
        """``{"seconds": {phase: s}, "total": s, "outside_finetune": s, "outside_finetune_ratio": x,
        "resumed_after_epoch": n}``: the ratio is the time of everything but fine-tuning over fine-tuning (None
        without fine-tuning (finetune.epochs 0), and on a resumed run, whose process fine-tuned only the epochs after
        ``n``: a resume with no epoch left read 4.3x for a pipeline that costs 0.5x its fine-tuning)."""
        total = time.perf_counter() - self.started
        tuning = self.seconds.get("finetune", 0.0)
        whole = self.trains and tuning > 0 and self.resumed_after_epoch is None
        return {
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "total": round(total, 3),
            "untimed": round(max(total - sum(self.seconds.values()), 0.0), 3),
            "outside_finetune": round(total - tuning, 3),
            "outside_finetune_ratio": round((total - tuning) / tuning, 3) if whole else None,
            "resumed_after_epoch": self.resumed_after_epoch,
        }


@dataclass
class Inputs:
    """The checked inputs of a run: the model as loaded, its input shape (batch first), the
    architecture to save it under, and the data."""

    loaded: LoadedModel
    model_path: str
    shape: list[int]
    factory: str
    source: str
    bundle: Any  # data.DataBundle: train / val loaders
    steps_per_epoch: int
    # What a checkpoint of this run belongs to (sparsekit.provenance), and the changes a resume accepts.
    provenance: dict[str, Any] | None = None
    allow_changes: tuple[str, ...] = ()
    resumed_changes: list[str] = field(default_factory=list)
    # The checkpoint a resume continues from, where the user last saw it named: an interrupted run's in the staging
    # folder (as its interrupt line said), a finished run's in OUT/checkpoints (copied into the staging folder)
    resumed_from: Path | None = None
    # The pruning section as written when `auto` entries were allocated per layer (its targets are checked at the
    # end), and what the allocation had to say (e.g. exact channel counts where aligned blocks could not reach).
    asked_pruning: list[dict[str, Any]] | None = None
    allocation_notes: list[str] = field(default_factory=list)
    # Who named the data source, as load_data was told (named_in, field): later errors about the data (the first
    # batch's labels or shape, in validate) name it the same way, the data option or the recipe file's field.
    source_named: tuple[str | None, str] = (None, "data.source")


@dataclass
class Measured:
    """One model (dense or pruned) as measured: accuracy/loss, counts, layer rows and its ONNX export."""

    metrics: dict[str, Any]
    stats: dict[str, Any]
    layers: list[dict[str, Any]]
    export: dict[str, Any]
    samples: int = 0  # validation samples evaluated

    def onnx_info(self) -> dict[str, Any]:
        """The opset read back from the file, the exporter that wrote it and why, if it was not the asked one."""
        e = self.export
        return {
            "opset": e.get("opset"),
            "exporter": e.get("exporter"),
            "export_fallback": e.get("fallback"),
            "tracer_warnings": list(e.get("tracer_warnings") or []),
        }


# seeded from the recipe inside; the caller's own generators are put back on return
@keeps_caller_generators(torch=True)
def run_prune(
    model_path: str | Path,
    recipe: Recipe | Mapping[str, Any] | str | os.PathLike[str],
    out: str | Path,
    *,
    arch: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    data: str | os.PathLike[str] | None = None,
    trust: bool = False,
    trust_code: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    allow_changes: Sequence[str] = (),
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
    log_dir: str | Path | None = None,
    overrides: Sequence[str] | None = None,
) -> Report | None:
    """Run the whole recipe on the model file and write the output folder ``out``; returns the
    :class:`~sparsekit.report.Report` that report.json holds. ``recipe``: a :class:`~sparsekit.recipe.Recipe`, a
    recipe file, a shipped recipe's name or a dict (RecipeError naming the field when invalid, TypeError otherwise).

    The model trains on ``recipe.finetune.device``. Started by ``torchrun`` with several processes,
    the run is distributed (see :mod:`sparsekit.distributed`): every rank trains its shard of the data,
    rank 0 alone measures, writes, exports and benchmarks, and returns the report; the other ranks
    return None. Training metrics are logged (CSV, TensorBoard when installed) to ``log_dir`` when given
    (a new folder per run inside it), else to ``out/logs`` when ``finetune.log`` is true.

    ``kwargs``: the factory's keyword arguments (the recipe's ``model.kwargs``; the command line's kwargs option).
    ``arch`` and ``data`` are the caller's own choices; a model factory or data callable named by the
    model file or the recipe runs only with ``trust_code=True`` or a trusted module. ``trust`` allows
    unpickling a whole-module MODEL. Every output is built in ``out/.sparsekit/next`` and moved into
    ``out`` at the end, replacing only files an earlier sparsekit run wrote there (see
    :mod:`sparsekit.outputs`); ``overwrite`` allows that, ``resume`` continues an interrupted (or
    finished) run from its last checkpoint. The checkpoint records the model file's and the data's
    hashes and the resolved recipe (:mod:`sparsekit.provenance`); a resume with any of them changed is
    refused, naming each change, unless ``allow_changes`` accepts it (only fields that do not alter the
    finished epochs: :data:`~sparsekit.provenance.SAFE_CHANGES`, e.g. ``finetune.epochs``).
    ``notify`` receives one-line messages meant for the user (the CLI prints them on stderr). ``overrides``
    (``key.path=value`` strings, as the command line's set option takes them; the remedies of sparsekit's errors
    spell them ``overrides=[...]``) are applied to a recipe file, name or dict as
    :func:`~sparsekit.recipe.load_recipe` does; a :class:`~sparsekit.recipe.Recipe` object takes none (TypeError:
    set its fields, or load it with them).

    Raises :class:`~sparsekit.errors.SparsekitError` subclasses for bad input (model file, recipe,
    data, output folder), before the output folder is touched wherever the fault can be seen early."""
    from .outputs import RunFolder

    require_path(model_path, "run_prune(model_path=...)")
    require_path(out, "run_prune(out=...)")
    if not isinstance(progress, bool):
        # 1 or "lines" was refused by finetune, naming finetune's argument, after the dense model's evaluation
        raise ValueError(f"run_prune(progress=...): expected True or False, got {progress!r}")
    # Before the folder is touched (one string was read letter by letter, and a field no resume may change was refused
    # only once the dense model had been evaluated): TypeError for one string, SparsekitError naming the field.
    try:
        check_allowed(allow_changes)
    except ValueError as err:  # named as the other errors of the option are ("--allow-change goes with --resume")
        raise SparsekitError(f"{option('allow_change')}: {err}") from None
    recipe = resolve_recipe(recipe, kwargs, overrides, "run_prune", arch)  # a file, a name or a dict, as Pruner takes
    clock = PhaseClock()
    out = Path(out)
    data = data_option(data, "run_prune")
    source = data or recipe.data.source
    data_file = source if source.endswith(".npz") else None
    with naming_recipe(recipe):
        device = _distributed.resolve_device(recipe.finetune.device)
    joined = _distributed.init_from_env(device)  # under torchrun: one process group, rank 0 writes
    main = _distributed.is_main()
    logs: Path | None = None
    # The log folder is made before the inputs are checked; one whose run stopped before writing a row goes again.
    # The folders above it it makes too (--log-dir runs/a/b in a new place makes runs, runs/a and runs/a/b): all go
    # again, when empty, not only the last one (runs/a was left behind).
    made_base = missing_folders(Path(log_dir)) if log_dir is not None else []
    try:
        folder = RunFolder(out, resume)
        failure: SparsekitError | None = None
        if main:
            try:
                precheck_model_file(Path(model_path))  # a wrong model file first, not after "holds an earlier run"
                _check_onnx_nameable(out)
                if data is not None:  # the caller's .npz file (a recipe's is found beside the recipe, later)
                    check_npz_option(data)
                folder = RunFolder.prepare(
                    out, inputs=[model_path, recipe.source, data_file], overwrite=overwrite, resume=resume
                )
                logs = _log_folder(log_dir, out) if log_dir is not None else None
            except SparsekitError as err:
                failure = err
        verdict = _distributed.agree(quoted(failure) if failure else None)  # the other ranks stop too
        if failure:
            raise failure
        if verdict:
            raise SparsekitError(verdict)
        with naming_recipe(recipe):  # the checks against the model name the recipe's fields
            inputs = check_inputs(
                model_path, recipe, arch=arch, data=data, trust=trust, trust_code=trust_code, clock=clock
            )
            with clock("plan"):
                # sparsity: auto / ratio: auto become per-layer values here (a resume reuses the first run's).
                recipe, table, allocation = allocate_for_run(
                    inputs, recipe, [folder.stage, out] if resume else [], progress=progress
                )
                if allocation:
                    inputs.asked_pruning = allocation["asked"]  # the pruning section as written
                    # What the terminal says of the allocation (per-layer spread, predicted loss against a uniform
                    # choice, its notes) goes into report.md and report.json too.
                    inputs.allocation_notes = allocation_summary(allocation).splitlines()
                if allocation and notify and main:
                    notify(allocation_summary(allocation))
                rehearse(inputs, recipe)
        arch = f"{inputs.factory} {json.dumps(inputs.loaded.kwargs, sort_keys=True, default=str)}"
        origin = provenance(
            recipe_record(recipe.model_dump(mode="json"), device.type), model_file=model_path, arch=arch, data=source
        )
        if resume:
            # Before the dense model is measured and the folder touched: a checkpoint of another model,
            # data set or recipe is refused at once, naming what changed.
            inputs.resumed_from = folder.resume_checkpoint()
            accepted, before, done = _check_resume(
                out, inputs.resumed_from, origin, allow_changes, inputs.steps_per_epoch
            )
            clock.resumed_after_epoch = done or None  # (no epoch checkpointed: this process trains them all)
            new = change_lines(accepted)
            inputs.resumed_changes = before + [c for c in new if c not in before]  # earlier resumes' too
            if accepted and notify and main:
                notify("resuming with accepted changes: " + "; ".join(new))
        inputs.provenance, inputs.allow_changes = origin, tuple(allow_changes)
        if not main:
            with naming_training_source(inputs):
                _run_other_rank(inputs, recipe, folder.stage, device, resume=resume)
            epochs = recipe.finetune.epochs
            trained = f", {TRAINING_DONE} (the checkpoint holds epoch {epochs} of {epochs})" if epochs else ""
            # A Ctrl-C here said nothing of where the run was, so this rank's line told --resume to continue "from the
            # last finished epoch" beside rank 0's "skips the finished training" (rank 0 exporting, benchmarking).
            with interrupted_while(f"waiting for rank 0 to save, export and benchmark{trained}"):
                _distributed.barrier()  # see below
            return None
        stage = folder.begin()  # after inputs are known good: a typo never touches the folder
        try:
            with clock.around(), naming_training_source(inputs):
                write_allocation(stage, table, allocation)
                report = _run(
                    inputs, recipe, stage, out, device=device, resume=resume, progress=progress, notify=notify,
                    log_dir=logs if log_dir is not None else (stage / "logs" if recipe.finetune.log else None),
                    clock=clock,
                )  # fmt: skip
                folder.publish()
        except SparsekitError as err:
            gone = folder.removed()
            if gone is not None:
                # Someone removed the folder mid-run: the write that failed named a staging file, and the
                # checkpoint "kept" below went with the folder. What is there now is left alone: it may be a
                # folder of the user's own put in its place.
                then = "" if "removed while" in str(err) else f" (then: {quoted(err)})"
                raise OutputError(
                    f"{gone}: removed while the run was writing into it, with its checkpoints{then}; nothing of this "
                    "run is left to resume: run it again"
                ) from None
            # Bad input found on the way (data that fails late, training that diverges, a full disk): the
            # staging folder goes unless it holds a checkpoint to resume from, which the error then names.
            if folder.discard() or getattr(err, "unusable", False):
                raise
            raise type(err)(
                f"{quoted(err)}. The run's last checkpoint is kept in {out}: once the cause is fixed, "
                f"{option('resume')} continues from it (refused if the model, data or recipe changed), "
                f"{option('overwrite')} starts again"
            ) from None
        except Exception as err:
            # Another rank stopped (often on bad input only it saw: a data callable that fails on its host, samples
            # of another shape in its shard): as for bad input here, a staging folder holding no checkpoint goes, so
            # the same command, fixed, runs again instead of finding the folder "holds an earlier sparsekit run".
            if _distributed.peer_failure(err):
                folder.discard()
            raise
        finally:
            folder.unlock()
        # Every rank leaves the process group together, after rank 0 has written: a rank that tore its
        # gloo connections down while rank 0 still held them was seen to abort (SIGABRT) in CI. A rank 0
        # that fails instead exits non-zero, and torchrun stops the others.
        _distributed.barrier()
        return report
    finally:
        # A run refused on bad input (or stopped) before its first epoch left an empty sparsekit-DATE-TIME folder
        # in the user's log folder every time, and the log folder itself when the run had made it; so did a
        # finished one that trained no epoch (a resume with none left). Only empty folders go: a log with rows in
        # it is the record of the epochs that ran.
        for made in [logs] + (made_base if logs is not None else []):  # deepest first
            if made is not None:
                with contextlib.suppress(OSError):
                    made.rmdir()
        if joined:  # a process group the caller made stays theirs
            _distributed.close()


def _check_resume(
    out: Path, ckpt: Path | None, origin: dict[str, Any], allow_changes: Sequence[str], steps_per_epoch: int
) -> tuple[dict[str, tuple[Any, Any]], list[str], int]:
    """The resume's accepted changes against the checkpoint ``ckpt`` it will continue from
    (:meth:`~sparsekit.outputs.RunFolder.resume_checkpoint`), those earlier resumes accepted (as
    :func:`change_lines` words them) and the epochs it finished; none (0) when there is no checkpoint yet.
    Raises SparsekitError naming the output folder and every change that is not accepted (ValueError from
    ``allow_changes`` becomes one), and naming ``ckpt`` when it was written on another step clock than this run's
    ``steps_per_epoch`` (another number of torchrun processes)."""
    try:
        allowed = check_allowed(allow_changes)
    except ValueError as err:
        raise SparsekitError(str(err)) from None
    # A checkpoint whose members would exhaust memory once unpacked is refused where training loads it.
    if ckpt is None or too_large_to_unpack(ckpt):
        return {}, [], 0
    try:  # memory-mapped: only the small provenance record is read, not the weights
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        saved, done = state.get("provenance"), int(state.get("epoch", 0))
        clock = step_clock_mismatch(state, steps_per_epoch)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported where training loads it
        return {}, [], 0
    record = saved or {}
    if not isinstance(record, dict) or not isinstance(record.get("accepted", []), list):
        # A run folder is data: its checkpoint's record of the run that wrote it may have been altered.
        raise SparsekitError(
            f"{ckpt}: cannot resume from it: its record of the run that wrote it (provenance) is not what sparsekit "
            f"writes; start again with {option('overwrite')}"
        )
    try:
        accepted = check_resume(saved, origin, allowed=allowed)
    except SparsekitError as err:
        raise SparsekitError(
            f"{out}: cannot resume the run there: {quoted(err)}; or start again with {option('overwrite')}"
        ) from None
    if clock:  # (after the recipe's changes: a new data.batch_size is named as such)
        # Here, not where training loads the checkpoint: that is after the dense model was measured and exported
        # (minutes on a large model), and the staging copy it named is gone once the run stops.
        raise SparsekitError(f"{ckpt}: cannot resume from it ({clock}); start again with {option('overwrite')}")
    epochs = int(origin.get("recipe", {}).get("finetune", {}).get("epochs", done))
    if done > epochs:  # said before any "resuming with accepted changes" line
        raise RecipeError(
            f"finetune.epochs: {epochs}, but the run in {out} already finished epoch {done}; resume with at "
            f"least {done}, or start again with {option('overwrite')}"
        )
    return accepted, [str(c) for c in record.get("accepted", [])], done


def _data_shapes(source: str, recipe: Recipe, data: str | None) -> list[list[int]]:
    """The input shapes the run's data samples may be taken in (see :data:`_SOURCE_SHAPES`, :func:`_npz_shapes`),
    or none when the source does not tell (a callable) or its file is wrong (load_data says what is wrong)."""
    from .data import npz_sample_shape

    try:
        sample = npz_sample_shape(
            source,
            named_in=None if data or recipe.overridden("data.source") else (recipe.source or "the recipe"),
            field="data" if data else "data.source",
        )
    except DataError:
        return []
    return [list(s) for s in _SOURCE_SHAPES.get(source, ())] if sample is None else _npz_shapes(sample)


def _run_other_rank(inputs: Inputs, recipe: Recipe, stage: Path, device: torch.device, *, resume: bool) -> None:
    """What a rank other than 0 does in a distributed run: train its shard in step with the others
    (reading rank 0's checkpoint when resuming), finalize the same way, then wait for rank 0 to write."""
    _distributed.barrier()  # rank 0 has measured the dense model and created the staging folder
    prune_model(inputs.loaded.model.to(device), recipe, inputs, stage, resume=resume, progress=False, log_dir=None)
    # Done: the caller waits in a barrier for rank 0 (saving, exporting, benchmarking).


def data_option(data: str | os.PathLike[str] | None, caller: str) -> str | None:
    """The caller's ``data`` source as text (a file's ``pathlib.Path`` as its path); TypeError for anything else. A
    Path failed as "'PosixPath' object has no attribute 'endswith'", a number or a loader likewise."""
    if data is None or isinstance(data, str):
        return data
    if isinstance(data, os.PathLike):
        return os.fspath(data)
    raise TypeError(
        f"{caller}(data=...): expected a data source's name or a file's path ('digits', 'mnist5k', 'data.npz' or "
        f"'pkg.module:callable'), got {type(data).__name__}; train on data in memory with sparsekit.finetune"
    )


def check_inputs(
    model_path: str | Path,
    recipe: Recipe,
    *,
    arch: str | None = None,
    data: str | os.PathLike[str] | None = None,
    trust: bool = False,
    trust_code: bool = False,
    clock: PhaseClock | None = None,
) -> Inputs:
    """Load the model and the data and check they fit each other and the recipe (no file written);
    ``clock`` receives the time of the phases ``load`` and ``data``. torch's, numpy's and Python's global random
    generators are seeded with ``recipe.seed`` first: a data callable that splits or shuffles with them gives every
    run and every command (prune, sensitivity, validate) the same samples.

    Raises :class:`~sparsekit.errors.ModelFileError` (no architecture to save under, non-finite
    weights), :class:`~sparsekit.errors.DataError` (shapes) and what loading raises."""
    clock = clock or PhaseClock()
    data = data_option(data, "check_inputs")
    source = data or recipe.data.source
    if data is not None:  # the caller's source before the model: a conv model's input shape may come from it
        check_npz_option(data)
    # The user's code run next (the model factory, a data callable) may draw from any of the three global generators.
    seed_generators(recipe.seed)
    with clock("load"):
        loaded = resolve_model(model_path, recipe, arch, trust, trust_code, data=data)
        refuse_compiled(loaded.model, model_path, "prunes")  # a trusted TorchScript module: no layer to mask
        attach_logits(loaded.model, recipe.model.output)  # tuple / dict outputs: the part that is the logits
        shape = cast(list[int], loaded.input_shape)  # resolve_model always sets it
        factory = loaded.factory or arch or recipe.model.factory
        if not factory:
            raise ModelFileError(
                f"{model_path}: a pickled module names no architecture; name it too ({option('arch')}), so the "
                "pruned model can be saved as a safe checkpoint"
            )
        # Non-finite weights were refused when the file was read (modelio.check_finite).
        classes = check_input(
            loaded.model, shape, str(model_path), loaded.shape_origin, _data_shapes(source, recipe, data)
        )
    # A source the caller gave (the data option, or an override of data.source) is their own choice.
    named_in = None if data or recipe.overridden("data.source") else (recipe.source or "the recipe")
    data_field = "data" if data else "data.source"
    with clock("data"), _naming_overridden_source(recipe, data):
        bundle = load_data(
            source,
            batch_size=recipe.data.batch_size,
            val_fraction=recipe.data.val_fraction,
            seed=recipe.seed,
            input_shape=shape,
            synthetic_samples=recipe.data.synthetic_samples,
            num_classes=classes,
            named_in=named_in,
            trust_code=trust_code,
            normalize=recipe.data.normalize,
            field=data_field,
            token_ids=model_input.id_vocab(loaded.model, shape),  # ids, not floats, for an embedding's model
        )
    # Under torchrun each rank trains its shard: the schedules are laid out in its (fewer) steps.
    spe = steps_per_epoch(recipe.finetune, _distributed.batches_per_rank(bundle.train))
    return Inputs(loaded, str(model_path), shape, factory, source, bundle, spe, source_named=(named_in, data_field))


@contextlib.contextmanager
def _naming_overridden_source(recipe: Recipe, data: str | None) -> Iterator[None]:
    """A data error about a source an override set (``data.source=...``) names that override first, as one
    about the recipe's own source names the recipe; one about another data field (``data.normalize``,
    ``data.synthetic_samples``) names the recipe or the override that set it, wherever the source came from."""
    try:
        yield
    except (DataError, TrustError) as err:
        message = err.raw_message
        if message.startswith("data.source"):
            if data or not recipe.overridden("data.source"):
                raise  # the data option's own words, or already named after the recipe file (load_data's named_in)
        elif not message.startswith("data."):
            raise
        # data.normalize, data.synthetic_samples, ...: the recipe's fields (or an override's) whoever named the
        # source; load_data names the recipe file for data.source only, so these named no file at all.
        where = recipe.blame(message)
        raise type(err)(f"{where}: {message}" if where else message) from None


@contextlib.contextmanager
def naming_training_source(inputs: Inputs) -> Iterator[None]:
    """A data error found in a run's batches (the dense evaluation's, training's: a label past the model's outputs,
    a batch the model cannot run: "data: ...") names the source as load_data's errors do, the data option or the
    recipe file before its field: "data: label 19 is outside the model's 10 outputs" named neither."""
    try:
        yield
    except DataError as err:
        message = err.raw_message
        if not message.startswith("data: ") or not isinstance(inputs.source, str):
            raise
        from .data import _reworded

        named_in, field = inputs.source_named
        said = DataError(f"data.source {inputs.source.strip()!r}: {message[len('data: ') :]}")
        raise _reworded(said, inputs.source, named_in, field) from None


def rehearse(inputs: Inputs, recipe: Recipe) -> None:
    """Build the pruner on a copy of the model and perform every structural removal the recipe will
    make, with a forward pass after each and one export (:func:`sparsekit.rehearsal.rehearse`): every
    recipe/model mismatch (patterns, overlaps, layouts that cannot lose channels, ...) fails here with a
    TargetError naming the layer, before the output folder is touched or any training step is taken."""
    from .rehearsal import rehearse as rehearse_removals

    rehearse_removals(inputs.loaded.model, recipe, inputs.shape, inputs.steps_per_epoch)


def _run(
    inputs: Inputs,
    recipe: Recipe,
    stage: Path,
    final_out: Path,
    *,
    device: torch.device,
    resume: bool,
    progress: bool,
    notify: Callable[[str], None] | None,
    log_dir: Path | None,
    clock: PhaseClock,
) -> Report:
    """The stages after the inputs are checked, writing into the staging folder ``stage``; paths in
    the report name the files where they will be once published (``final_out``); ``clock`` times them."""
    expectation = what_it_buys(recipe)
    if notify:
        notify(expectation)
    # The plot worker imports matplotlib now, waits through fine-tuning and draws beside the export.
    with PlotWorker(stage) as plots:
        with clock("report", "starting the plot worker"):
            plots.start()
        clock.trains = recipe.finetune.epochs > 0
        if recipe.finetune.epochs and not resume:
            clock.note = f", {TRAINING_NOT_STARTED}"  # (a resumed run may hold a checkpoint already)
        model = inputs.loaded.model.to(device)
        log.info("evaluating the dense model")
        dense = measure(model, inputs, recipe, stage / "dense.onnx", clock, "dense_eval")
        _distributed.barrier()  # the other ranks start training with rank 0
        # The note stays through the pruner's set-up (a rehearsal, a trace: seconds on a large model); once an epoch
        # runs the training loop says where it was itself, and finalizing says that training had finished.
        with clock("finetune"):
            model, history, pruner = prune_model(
                model, recipe, inputs, stage, resume=resume, progress=progress, log_dir=log_dir, final_out=final_out
            )
        if recipe.finetune.epochs:
            epochs = recipe.finetune.epochs
            clock.note = f", {TRAINING_DONE} (the checkpoint holds epoch {epochs} of {epochs})"
        # (a resume with no epoch left writes none)
        if log_dir is not None and notify and (Path(log_dir) / "epochs.csv").is_file():
            shown = final_out / "logs" if Path(log_dir) == stage / "logs" else log_dir
            notify(f"training metrics: {shown} (steps.csv, epochs.csv)")
        with clock("save"):
            save_model(
                model,
                stage / "model.pt",
                inputs.factory,
                kwargs=inputs.loaded.kwargs,
                input_shape=inputs.shape,
                pruner=pruner,
                # export of this checkpoint then writes and scores the logits, as this run's model.onnx holds them
                # and int8 calibration on a built-in source preprocesses its images as this run's training did
                extra={
                    **({"output": recipe.model.output} if recipe.model.output is not None else {}),
                    "normalize": recipe.data.normalize,
                },
            )
        methods = method_results(pruner)
        final_params = sum(p.numel() for p in model.parameters())  # finalized: the report's pruned.params

        def draw(layers: list[dict[str, Any]]) -> None:  # drawn while the pruned model is exported and checked
            with clock("report", "handing the plots to the plot worker"):
                plots.draw(
                    first_plot_data(
                        layers,
                        dense.layers,
                        methods,
                        recipe.model_dump(mode="json"),
                        history,
                        dense.metrics.get("accuracy"),
                        dense.stats.get("params"),
                        final_params,
                    )
                )

        pruned = measure(model, inputs, recipe, stage / "model.onnx", clock, "pruned_eval", before_export=draw)
        # Everything after this reads the ONNX files: the torch model (and its masks, in the pruner) is
        # let go before int8 calibration and the benchmark open their onnxruntime sessions, so a large
        # model is not held twice over (see benchmarks/memory_scaling.py).
        held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        inputs.loaded.model = nn.Module()
        del model, pruner
        if held >= _COLLECT_FROM_BYTES:
            with clock("free"):  # a full collection of a large heap: most of a second on a small model, once untimed
                gc.collect()
        return _measure_and_report(
            inputs,
            recipe,
            stage,
            final_out,
            dense,
            pruned,
            history,
            methods,
            device,
            expectation,
            progress,
            clock,
            plots,
        )


# A model whose tensors take at least this many bytes is collected (gc.collect) once the pruned model is exported: the
# pruner's hooks hold it in reference cycles, and without a collection onnxruntime's sessions open beside it (a large
# model held twice, benchmarks/memory_scaling.py). A smaller one is left to the next automatic collection: a full
# collection of sparsekit's heap took ~0.16 s of the quick start's ~2 s outside fine-tuning, to free ~1 MB.
_COLLECT_FROM_BYTES = 16 << 20


def _measure_and_report(
    inputs: Inputs,
    recipe: Recipe,
    stage: Path,
    final_out: Path,
    dense: Measured,
    pruned: Measured,
    history: list[dict[str, Any]],
    methods: list[dict[str, Any]],
    device: torch.device,
    expectation: str,
    progress: bool,
    clock: PhaseClock,
    plots: PlotWorker,
) -> Report:
    """int8, sizes, benchmark, storage and the report, once the pruned model is exported."""
    from .onnx import onnx_sizes

    int8 = None
    with clock("sizes"):
        # Every gzip size of the run at one level, the dense file's (the largest), so they compare.
        level = onnx_sizes(stage / "dense.onnx")["gzip_level"]
    if recipe.export.quantize == "int8":
        with clock("int8"):
            int8 = quantize(stage, inputs, final_out, level)
    with clock("sizes"):
        dense_sizes, pruned_sizes = file_sizes(stage / "dense.onnx", level), file_sizes(stage / "model.onnx", level)
    report = Report(
        model={
            "path": inputs.model_path,
            "factory": inputs.factory,
            "kwargs": inputs.loaded.kwargs,
            "input_shape": inputs.shape,
        },
        data={
            "source": inputs.source,
            "train_batches": len(inputs.bundle.train),
            "val_batches": len(inputs.bundle.val),
            "processes": _distributed.world_size(),
            "val_samples": dense.samples,
            "classes": inputs.bundle.num_classes,
            "device": str(device),
            "normalize": recipe.data.normalize,
        },
        dense={**dense.metrics, **dense.stats, **dense_sizes, **dense.onnx_info()},
        pruned={**pruned.metrics, **pruned.stats, **pruned_sizes, **pruned.onnx_info()},
        layers=pruned.layers,
        dense_layers=dense.layers,
        history=history,
        parity=pruned.export["parity"],
        dense_parity=dense.export["parity"],
        zeros_preserved=pruned.export["zeros"]["zeros_ok"],
        zeros=pruned.export["zeros"]["layers"],
        methods=methods,
        recipe=recipe.model_dump(mode="json"),
        versions=_versions(),
        int8=int8,
        expectation=expectation,
        recipe_asked=inputs.asked_pruning,
    )
    fill_layer_aims(report)
    with clock("report", "drawing the plots"):
        plots.ready()  # never time latency while plots are being drawn
    if recipe.benchmark.enabled:
        with clock("bench"):
            benchmark_into(report, stage, recipe, inputs.shape, progress)
    with clock("report"):
        plots.last(plot_data(report))  # the latency plot is drawn while the storage is chosen
    from .onnx import choose_storage
    from .report import Storage, Timings, write_report

    with clock("storage"):
        # Last: parity, int8 and the benchmark used the dense-stored file; the shipped one may store its
        # weights as sparse initializers (same outputs bit for bit, smaller after gzip).
        storage = choose_storage(stage / "model.onnx", stage / "model.onnx", recipe.export.sparse_storage, level=level)
        storage["path"] = str(final_out / "model.onnx")
        report.storage = Storage.model_validate({**storage, **_storage_ratios(storage)})
    with clock("report"):
        report.notes = [*inputs.loaded.notes, *inputs.allocation_notes, *notes(report)]
        if inputs.resumed_changes:
            schedule = (
                "; the LR schedule follows the new epoch count from the resumed epoch on, so the rate can jump there"
                if any(c.startswith("finetune.epochs ") for c in inputs.resumed_changes)
                and recipe.finetune.lr_schedule.name != "constant"
                else ""
            )
            report.notes.append(
                "resumed with changes accepted (the history's earlier epochs ran under the old values): "
                + "; ".join(inputs.resumed_changes)
                + schedule
            )
        report.plots = plots.finish()
        if plots.disk_error:
            # A full disk ended the run when it hit report.md but passed, exit 0, as a note when it hit a plot.
            raise OutputError(plots.disk_error)
        if plots.error:
            report.notes.append(f"plots not drawn: {plots.error}")
    # Timed up to here: writing report.json and report.md is all that is left.
    report.timings = Timings.model_validate(clock.timings())
    write_report(report, stage, plots=False)
    return report


def _storage_ratios(storage: dict[str, Any]) -> dict[str, Any]:
    """The shipped file against the weights' entropy estimate (gzip) and against the floor for raw bytes
    (raw): ``choose_storage`` names the estimate a bound and sets gzip against the raw floor."""
    estimate, floor = storage.get("entropy_bound_bytes"), storage.get("verbatim_bound_bytes")
    return {
        "entropy_estimate_bytes": estimate,
        "estimate_ratio": storage["gzip_bytes"] / estimate if estimate else None,
        "raw_verbatim_ratio": storage["bytes"] / floor if floor else None,
    }


def _check_onnx_nameable(out: Path) -> None:
    """Raise OutputError naming ``out`` when onnx cannot open files in it by name (a path that is not UTF-8).
    Every run exports ONNX files there; the export refused it only after the dense model was evaluated, naming
    an internal path (`OUT/.sparsekit/next/dense.onnx: ... rename it`) the user cannot rename."""
    from .onnx.files import not_utf8

    shown = not_utf8(out.absolute())  # the export's own test (native_path), with the run's remedy
    if shown is not None:
        raise OutputError(
            f"{shown}: the run exports ONNX files into this folder, and onnx and onnxruntime open files by UTF-8 "
            f"names, which this path is not; choose an output folder ({option('output')}) whose path is UTF-8 or "
            "ASCII"
        )


def measure(
    model: nn.Module,
    inputs: Inputs,
    recipe: Recipe,
    onnx_path: Path,
    clock: PhaseClock | None = None,
    eval_phase: str = "eval",
    before_export: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Measured:
    """Evaluate ``model`` on the validation split, count it, and export it to ``onnx_path`` (which
    checks ONNX/torch parity and that every zero survived). ``clock`` receives the time of
    ``eval_phase`` (evaluation and counts), ``export``, ``checks`` and ``sizes``; ``before_export``
    receives the per-layer rows once they are counted."""
    from .onnx import export_onnx

    clock = clock or PhaseClock()
    ex = recipe.export
    with clock(eval_phase):
        counts: dict[str, int] = {}
        metrics = evaluate(model, inputs.bundle.val, counts=counts)
        stats = model_stats(model, inputs.shape)
        layers = layer_report(model, inputs.shape)
    if before_export is not None:
        before_export(layers)
    # (its phases are timed inside export_onnx): a Ctrl-C after it names the export, not the phase before it
    clock.last = f"exporting {onnx_path.name} and checking it"
    with interrupted_while(f"exporting {onnx_path.name}{clock.note}"):
        try:
            # (a float32 copy of a model the architecture builds in float64 or bfloat16: the file is float32)
            exported = export_onnx(float32_model(model), onnx_path, inputs.shape, opset=ex.opset, exporter=ex.exporter)
        except ExportError as err:
            # export_onnx names its own exporter argument as the remedy; a recipe chooses it with export.exporter.
            respelled = re.sub(
                "\x00exporter\x1f([^\x00]*)\x00",
                lambda m: option("set", f"export.exporter={m.group(1)}"),
                err.raw_message,
            )
            raise ExportError(respelled) from err
    for phase, seconds in exported["seconds"].items():
        clock.add(phase, seconds)
    return Measured(metrics, stats, layers, exported, counts.get("samples", 0))


def _log_folder(log_dir: str | Path, out: Path) -> Path:
    """A new folder inside the caller's ``log_dir`` for this run's training metrics (never one that exists,
    so nothing there is overwritten; a resumed run gets a new one too). Raises OutputError when it
    cannot be created or lies inside the output folder ``out`` (whose contents sparsekit manages)."""
    import time

    base = Path(log_dir)
    if base.resolve() == out.resolve() or out.resolve() in base.resolve().parents:
        raise OutputError(
            f"{base}: the log folder may not be inside the output folder {out} (sparsekit replaces what is there); "
            "choose a folder beside it, or set finetune.log: true to keep the logs in OUT/logs"
        )
    name = time.strftime("sparsekit-%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = base / (name if n == 0 else f"{name}-{n}")
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            continue
        except OSError as err:  # "Not a directory", no permission, a name too long: each with what to do
            why = DISK_ERRORS.get(err.errno or 0, err.strerror or str(err))
            raise OutputError(
                file_in_the_way(folder, err.errno)
                or name_too_long(folder, err.errno)
                or f"{base}: cannot create a log folder there ({why}); choose another log folder"
            ) from None
    raise OutputError(f"{base}: too many log folders named {name}-*; choose another log folder")


def prune_model(
    model: nn.Module,
    recipe: Recipe,
    inputs: Inputs,
    stage: Path,
    *,
    resume: bool,
    progress: bool,
    log_dir: Path | None = None,
    final_out: Path | None = None,
) -> tuple[nn.Module, list[dict[str, Any]], Pruner]:
    """Prune while fine-tuning (checkpoints in ``stage/checkpoints``), or, with no fine-tuning epochs,
    calibrate gradient-based methods on a few batches; returns the finalized model in eval mode, the
    per-epoch history and the pruner. Distributed: every rank calls it with the same model and recipe
    (see :func:`sparsekit.finetune`); calibration then reads each rank's shard through DDP."""
    model.train()
    # The distillation teacher is the dense model, copied before the Pruner (a one-shot schedule prunes
    # when it is built); on --resume `model` is reloaded from the model file, so it is dense there too.
    distill = recipe.finetune.distill is not None and recipe.finetune.epochs > 0
    teacher = frozen_teacher(model) if distill else None
    # (the Pruner's own advice, a weight_norm layer left unpruned: the CLI says sparsekit's warnings, cli.handle_errors)
    with no_entries_warning_off():  # (said as "no method here creates zeros")
        pruner = Pruner(model, recipe, steps_per_epoch=inputs.steps_per_epoch, context={"input_shape": inputs.shape})
    history: list[dict[str, Any]] = []
    if recipe.finetune.epochs > 0:
        # Where the user finds it: the checkpoint the resume reads, or where a finished run publishes them
        published = final_out / "checkpoints" if final_out else None
        shown = inputs.resumed_from.parent if inputs.resumed_from else published
        model, history, pruner = finetune(
            model,
            recipe,
            inputs.bundle.train,
            inputs.bundle.val,
            pruner=pruner,
            progress=progress or "lines",  # no bar wanted: still one line per epoch (only rank 0 prints)
            checkpoint_dir=stage / "checkpoints",
            resume=resume,
            checkpoint_shown=shown,
            log_dir=log_dir,
            teacher=teacher,
            provenance=inputs.provenance,
            allow_changes=inputs.allow_changes,
        )
    elif any(m.needs_grad for m in pruner.methods):
        batches = max(getattr(s, "calibration_batches", 0) for s in recipe.pruning)
        wrapped = _distributed.wrap(model)
        pruner.average_grads = wrapped is model  # DDP averages the calibration gradients itself
        calibrate(wrapped, pruner, _distributed.shard(inputs.bundle.train, recipe.seed), batches)
    epochs = recipe.finetune.epochs
    done = f", {TRAINING_DONE} (the checkpoint holds epoch {epochs} of {epochs})" if epochs else ""
    with interrupted_while(f"finalizing the pruned model{done}"):
        return pruner.finalize().eval(), history, pruner


def file_sizes(path: Path, level: int | None = None) -> dict[str, Any]:
    """Size of an ONNX file (external data included; gzip at ``level``, default the file's own), the entropy
    estimate of its weights
    (:func:`sparsekit.onnx.weight_entropy`: zero masks and nonzero values at their measured per-tensor
    entropy; an estimate, not a bound: gzip goes below it on weights with structure between them) and the
    floor for its raw bytes (masks at their entropy, values verbatim)."""
    from .onnx import param_counts, size_report, weight_entropy

    counts = param_counts(path)  # quantized weights count as weights, so int8 and fp32 compare alike
    s = size_report(path, counts["nonzero_params"], level)
    entropy = weight_entropy(path)
    return {
        "onnx_bytes": s["bytes"],
        "onnx_gzip_bytes": s["gzip_bytes"],
        "onnx_params": counts["params"],
        "onnx_nonzero_params": counts["nonzero_params"],
        "bytes_per_nonzero": s["bytes_per_nonzero"],
        "gzip_bytes_per_nonzero": s["gzip_bytes_per_nonzero"],
        "entropy_estimate_bytes": round(entropy["bound_bytes"]),
        "entropy_bound_bytes": round(entropy["bound_bytes"]),  # its former name, for readers of older reports
        "verbatim_bound_bytes": round(entropy["verbatim_bound_bytes"]),
    }


def quantize(stage: Path, inputs: Inputs, final_out: Path, level: int | None = None) -> Int8:
    """int8 QDQ calibrated on the training batches the model was fine-tuned on (reshaped to its exported
    input); accuracy and top-1 agreement measured on validation."""
    from .onnx import quantize_on_data

    res = quantize_on_data(stage / "model.onnx", stage / "model.int8.onnx", inputs.bundle, input_shape=inputs.shape)
    res.update(file_sizes(stage / "model.int8.onnx", level))
    res["path"] = str(final_out / "model.int8.onnx")
    return Int8.model_validate(res)


def method_results(pruner: Pruner) -> list[dict[str, Any]]:
    """One entry per ``pruning`` item: the method, its layers, its target and its own report."""
    rows = []
    for m, spec in zip(pruner.methods, pruner.recipe.pruning, strict=True):
        row: dict[str, Any] = {"method": m.name, "layers": list(m.layers), **m.report()}
        if hasattr(spec, "sparsity"):
            row["target_sparsity"] = spec.sparsity
        rows.append(row)
    return rows


def benchmark_into(report: Report, stage: Path, recipe: Recipe, shape: list[int], progress: bool) -> None:
    """Time dense, pruned (and int8) side by side in onnxruntime and put latency, throughput and the
    speedups with their A/A control into ``report``."""
    from .onnx import benchmark

    b = recipe.benchmark
    files = [stage / "dense.onnx", stage / "model.onnx"] + ([stage / "model.int8.onnx"] if report.int8 else [])
    res = benchmark(
        files,
        b.batch_sizes,
        threads=b.threads,
        warmup=b.warmup,
        runs=b.runs,
        budget_s=b.budget_s,
        precision=b.precision,
        input_shape=shape,
        progress=progress,
        seed=recipe.seed,
    )
    results: list[Any] = [report.dense, report.pruned, report.int8][: len(files)]
    for result, f in zip(results, res["files"], strict=True):
        result.latency_ms = f["latency_ms"]
        result.throughput_per_s = f["throughput_per_s"]

    def speedup_of(f: dict[str, Any]) -> dict[str, Speedup]:
        return {
            bs: Speedup(
                ratio=r["p50"],
                spread=list(r["spread"]),
                noise=f["noise_band"][bs],  # the band actually used to call a change significant
                aa_ratio=res["control"][bs]["ratio_p50"],
                significant=bool(f.get("speedup_significant", {}).get(bs, False)),
            )
            for bs, r in f["ratio_to_first"].items()
        }

    if report.int8 is not None:
        report.int8.speedup = speedup_of(res["files"][2])
    report.benchmark = Benchmark(
        threads=b.threads,
        runs=b.runs,
        warmup=b.warmup,
        provider=res["provider"],
        speedup=speedup_of(res["files"][1]),
        control=res["control"],
        runs_done=res.get("runs_done"),
        budget_s=res.get("budget_s"),
        precision=res.get("precision"),
    )
