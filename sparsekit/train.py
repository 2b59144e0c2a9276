"""The plain fine-tuning loop of a prune run: optimizer, LR schedule, pruner steps, eval, checkpoints.

Users with their own loop drive :class:`~sparsekit.pruner.Pruner` directly (README, "Python API"); this
is the same calls in the same order. The learning rate follows a ``torch.optim.lr_scheduler``
stepped once per epoch (:func:`make_scheduler`); its state is saved in the resume checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import pickle
import random
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from . import distributed as _distributed
from .data import FLOAT_INPUTS_FIX, loader_generators
from .data import batches as _batches
from .errors import (
    DataError,
    ModelFileError,
    OutputError,
    RecipeError,
    SparsekitError,
    TargetError,
    interrupted_at,
    one_line,
    option,
    quoted,
)
from .fsutil import (
    atomic_path,
    global_rng_kept,
    identity,
    keeps_caller_generators,
    nearest_folder,
    replaced,
    seed_generators,
    too_large_to_unpack,
    writing,
)
from .logits import attach as attach_logits
from .logits import select_logits
from .masks import count_true
from .metrics_log import MetricsLog
from .provenance import change_lines, check_allowed, check_resume, recipe_record
from .pruner import Pruner
from .recipe import DistillSpec, FinetuneSpec, LRScheduleSpec, Recipe, as_recipe, pruning_key, spells_remedies
from .stats import layer_report, sparsity
from .wrappers import SAMPLES_NOT_BATCHES, copy_model, is_torch_dataset, require_initialized, require_module

log = logging.getLogger("sparsekit")


def make_optimizer(params: Iterable[nn.Parameter], spec: FinetuneSpec) -> torch.optim.Optimizer:
    """The optimizer ``spec.optimizer`` names (SGD with momentum, Adam or AdamW) over ``params``, at the
    base learning rate ``spec.optimizer.lr`` (the scheduler of :func:`make_scheduler` then moves it)."""
    o = spec.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def steps_per_epoch(spec: FinetuneSpec, n_batches: int) -> int:
    """Optimizer steps in one fine-tuning epoch: the training loader's ``n_batches``, capped by
    ``finetune.max_steps_per_epoch``. The Pruner's schedules are laid out in these steps."""
    cap = spec.max_steps_per_epoch
    return n_batches if cap is None else min(n_batches, cap)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: FinetuneSpec) -> torch.optim.lr_scheduler.LRScheduler:
    """The ``torch.optim.lr_scheduler`` for ``spec.lr_schedule``, to be stepped once per epoch (after the
    epoch's optimizer steps). With base rate ``lr = spec.optimizer.lr``, epoch ``e`` (from 0) trains at:

    - ``constant``: ``lr`` (``ConstantLR`` with factor 1);
    - ``cosine``: ``lr * (1 + cos(pi * e / epochs)) / 2`` (``CosineAnnealingLR``, ``T_max = epochs``,
      down to 0 after the last epoch);
    - ``step``: ``lr * gamma ** (e // step_size)`` (``StepLR``);
    - with ``hold_epochs: h`` (cosine, step): ``lr`` while ``e < h``, then the curve over the epochs left with
      ``e - h`` for ``e`` and ``epochs - h`` for ``epochs`` (``LambdaLR`` of :class:`HeldDecay`, computed directly).

    torch computes the cosine and step curves recursively from the previous epoch's rate, so they
    match the formulas to within a few ulps (relative error ~1e-15). Create the scheduler on the
    optimizer it drives, before its first step; it reads and writes ``optimizer.param_groups[i]["lr"]``.
    """
    s = spec.lr_schedule
    if s.hold_epochs and s.name in ("cosine", "step"):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, HeldDecay(s, spec.epochs))
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(spec.epochs, 1))
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


class HeldDecay:
    """The factor of the base rate at epoch ``e`` (from 0) for ``lr_schedule: {hold_epochs: h}``: 1 while ``e < h``,
    then the cosine (``(1 + cos(pi * (e - h) / (epochs - h))) / 2``) or step (``gamma ** ((e - h) // step_size)``)
    curve over the epochs left. A class, not a closure: ``LambdaLR.state_dict()`` saves a callable object's
    attributes, so a resume checkpoint holds them (a function it leaves out)."""

    def __init__(self, schedule: LRScheduleSpec, epochs: int) -> None:
        """``schedule``: a cosine or step ``lr_schedule`` with ``hold_epochs``; ``epochs``: ``finetune.epochs``. The
        attributes are what a checkpoint saves (their names are read back from checkpoints already written)."""
        self.name, self.hold = schedule.name, schedule.hold_epochs
        self.span = max(epochs - self.hold, 1)  # the epochs the curve runs over (1 when the hold covers the run)
        self.step_size, self.gamma = int(schedule.step_size), float(schedule.gamma)

    def __call__(self, epoch: int) -> float:
        e = epoch - self.hold
        if e < 0:
            return 1.0
        if self.name == "cosine":
            return (1 + math.cos(math.pi * e / self.span)) / 2
        return self.gamma ** (e // self.step_size)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_input(x: Any, param: torch.Tensor | None) -> Any:
    """The batch's inputs ``x`` on the device of ``param`` (the model's first parameter) and, when both are floating
    point, in its dtype: loaders yield float32, which torch refuses to mix with a float64 (or float16) model's
    weights ("mat1 and mat2 must have the same dtype"), an error that then blamed the data. Integer inputs (token
    ids) keep their dtype."""
    if param is None:
        return x
    if isinstance(x, torch.Tensor) and x.is_floating_point() and param.is_floating_point() and x.dtype != param.dtype:
        return x.to(param.device, param.dtype)
    return x.to(param.device)


def _run(model: nn.Module, x: Any, param: torch.Tensor | None) -> Any:
    """``model`` on a batch's inputs ``x``: one tensor, or a tuple / list of them for a forward that takes several
    (``(image, meta)``, ``(tokens, lengths)``), each its own positional argument, as a loop of one's own calls
    ``model(image, meta)``. (The tuple itself went to ``.to()`` and failed as "'tuple' object has no attribute 'to'",
    blamed on the model.) A dict is refused: whether the forward takes it whole or as keywords cannot be told."""
    if isinstance(x, Mapping):
        raise DataError(
            f"data: a batch's inputs are a dict (keys {', '.join(map(str, x))}); the built-in loop calls the model on "
            "one tensor, or on a tuple's tensors as positional arguments: yield ((input1, input2, ...), labels) "
            "batches, or train from your own loop with sparsekit.Pruner"
        )
    if isinstance(x, (tuple, list)):
        return model(*(model_input(t, param) if isinstance(t, torch.Tensor) else t for t in x))
    return model(model_input(x, param))


def _loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``model(x)`` against ``y`` (moved to the model's device). Labels that are not one
    integer class per input, or (labels in host memory) are outside the model's outputs, are a data error,
    checked on every batch: torch would crash deep inside, or read one-hot rows as class probabilities and
    -100 as its ``ignore_index``, giving a wrong loss and accuracy without a word."""
    _check_labels(x, y)
    param = next(model.parameters())
    device = param.device
    try:
        out = _run(model, x, param)
    except (KeyboardInterrupt, MemoryError, SparsekitError):
        raise
    except Exception as err:  # noqa: BLE001 - the user's model on the user's data: bad input, not our bug
        if _distributed.peer_failure(err):
            raise  # DDP's collective in the forward: another rank stopped, not this batch's fault
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        why = f"{one_line(err)}{_one_sample(model, x, err)}{_integer_inputs(x, param)}"
        raise DataError(f"data: the model fails on a batch of inputs {shape}: {why}") from None
    out = select_logits(out, None)  # a tuple / dict output: sparsekit.logits.attach(model, output) picks one
    # Checked where the labels are in host memory (loaders yield them there): reading labels already on an
    # accelerator would wait for it twice a step; there torch's own check stands (a device-side assert on CUDA).
    if out.ndim == 2 and y.numel() and y.device.type == "cpu":
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= out.shape[1]:
            raise DataError(
                f"data: label {low if low < 0 else high} is outside the model's {out.shape[1]} outputs; labels must "
                f"be 0..{out.shape[1] - 1}"
            )
    # int32/int16 labels are class indices all the same; torch's cross-entropy takes only int64 (or uint8)
    return nn.functional.cross_entropy(out, y.to(device, torch.long), reduction=reduction), out


# torch's words when a normalization layer trains on one sample (batch_norm; instance_norm on one position)
# Without a terminal (a log file, a job scheduler) progress is one line per epoch, plus one this often within a
# long epoch (seconds), so a log shows the run is alive and how far it is; a bar on a terminal moves at every step.
LINE_EVERY_S = 60.0
_ONE_SAMPLE_ERRORS = ("more than 1 value per channel", "more than 1 spatial element")


def _one_sample(model: nn.Module, x: Any, err: BaseException) -> str:
    """What to do when ``model`` failed in training mode on a batch ``x`` of one sample because of it (``err``):
    BatchNorm cannot normalize one sample ("Expected more than 1 value per channel when training"), which the last
    batch of a training set of ``k * batch_size + 1`` samples is. torch's words named neither the batch size nor the
    fix. Any other failure is not the batch size's: at data.batch_size 1 a shape the model does not take got this
    advice too, which sent the user to change a batch size that was not at fault."""
    if not model.training or not isinstance(x, torch.Tensor) or x.ndim == 0 or len(x) != 1:
        return ""
    if not any(words in str(err) for words in _ONE_SAMPLE_ERRORS):
        return ""
    return (
        "; this training batch holds a single sample (BatchNorm, for one, cannot train on fewer than 2): choose a "
        "data.batch_size that leaves at least 2 samples in every batch (the last holds what is left over after the "
        "full ones), or give your own training loader drop_last=True"
    )


def _integer_inputs(x: Any, param: torch.Tensor) -> str:
    """What to do when the model, whose weights are floats, failed on a batch of integer inputs (raw pixels from a
    user's loader): torch's "mat1 and mat2 must have the same dtype, but got Long and Float" named neither the
    loader nor the fix. Nothing for float inputs, or for a model whose weights are not floats."""
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or not param.is_floating_point():
        return ""
    return f"; the loader yields {x.dtype} inputs and the model computes in {param.dtype}: {FLOAT_INPUTS_FIX}"


def _check_labels(x: Any, y: Any) -> None:
    """``y`` holds one integer class label per input of ``x``, as the built-in loop's cross-entropy and
    accuracy need; a :class:`DataError` naming what the batch holds otherwise."""
    wanted = "labels must be integer class indices, one per input ([N], torch.long), not one-hot rows or probabilities"
    if isinstance(y, numbers.Number) or (isinstance(y, torch.Tensor) and y.ndim == 0):
        raise DataError(
            f"data: a batch holds one label, {y!r}, not one per input: the loader yields {SAMPLES_NOT_BATCHES}"
        )
    if not isinstance(y, torch.Tensor):
        raise DataError(f"data: a batch holds labels of type {type(y).__name__}; {wanted}")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"data: a batch holds {y.dtype} labels of shape {list(y.shape)}; {wanted}")
    if isinstance(x, (tuple, list)):  # several inputs: each holds one row per label
        x = next((t for t in x if isinstance(t, torch.Tensor)), None)
    if isinstance(x, torch.Tensor) and x.ndim and len(x) != len(y):
        raise DataError(f"data: a batch holds {len(x)} inputs but {len(y)} labels; give one label per input")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015)'s soft-target term, ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``,
    averaged over the batch (nats per sample, >= 0; 0 when the two agree). ``student`` and ``teacher`` are
    logits ``[N, classes]`` on one device; ``teacher`` should carry no gradient. The ``T**2`` factor keeps
    its gradients on the scale of the cross-entropy's as ``T`` changes (Hinton et al., section 2)."""
    t = float(temperature)
    log_student = nn.functional.log_softmax(student / t, dim=1)
    log_teacher = nn.functional.log_softmax(teacher / t, dim=1)
    return nn.functional.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * (t * t)


def _train_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher: nn.Module | None, distill: DistillSpec | None
) -> torch.Tensor:
    """The loss one training step minimizes: cross-entropy, or with ``distill`` (and its ``teacher``)
    ``(1 - weight) * CE + weight * distillation_loss(student, teacher(x), temperature)``. The teacher
    runs without gradients, in the mode it is in (eval); its logits are checked (:func:`_teacher_logits`)."""
    loss, out = _loss(model, x, y)
    if distill is None or teacher is None:
        return loss
    soft = _teacher_logits(teacher, x, out)
    return (1.0 - distill.weight) * loss + distill.weight * distillation_loss(out, soft, distill.temperature)


def _teacher_logits(teacher: nn.Module, x: Any, student: torch.Tensor) -> torch.Tensor:
    """The teacher's logits for the batch ``x``, checked against the ``student``'s: a ValueError naming the
    teacher when it fails on the batch the model took, or returns something other than logits of the student's
    shape. Without these checks torch failed deep in the KL term (a size mismatch, or "unsupported operand
    type(s) for /: 'tuple' and 'float'"), naming neither the teacher nor the fix."""
    with torch.no_grad():
        try:
            soft = _run(teacher, x, next(teacher.parameters(), None))
        except (KeyboardInterrupt, MemoryError, SparsekitError):
            raise
        except Exception as err:  # noqa: BLE001 - the caller's teacher on a batch the model itself took
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"finetune(teacher=...): the teacher fails on a batch of inputs {shape} that the model takes "
                f"({one_line(err)}); pass a copy of the dense model (copy.deepcopy(model) before pruning)"
            ) from None
    if not isinstance(soft, torch.Tensor) or soft.shape != student.shape:
        got = list(soft.shape) if isinstance(soft, torch.Tensor) else f"a {type(soft).__name__}"
        raise ValueError(
            f"finetune(teacher=...): the teacher returns {got} for a batch where the model returns logits "
            f"{list(student.shape)}; pass a copy of the dense model (copy.deepcopy(model) before pruning), whose "
            "outputs have the model's classes"
        )
    return soft


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (unwrapped from DistributedDataParallel) for distillation: eval mode, every
    parameter with ``requires_grad=False``, on the model's device; the original is not touched."""

    teacher = copy_model(_distributed.unwrap(model)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, max_batches: int | None = None, *, counts: dict[str, int] | None = None
) -> dict[str, float]:
    """``{"accuracy": top-1 (0..1), "loss": mean cross-entropy (nats per sample)}`` of ``model`` over
    ``loader``'s ``(inputs [N, ...], labels [N])`` batches (the first ``max_batches`` when given), in
    eval mode and without gradients; the model's train/eval mode is restored. Both are 0.0 for an
    empty loader. ``counts``, when given, receives ``"samples"``: how many were evaluated, and ``"classes"``: the
    model's outputs per sample (absent for an empty loader). Raises
    :class:`~sparsekit.errors.DataError` when a batch is malformed, holds NaN or inf inputs, the model
    fails on it or a label is outside its outputs."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(_batches(loader, "data: the validation loader")):
        if max_batches is not None and i >= max_batches:
            break
        loss, out = _loss(model, x, y, reduction="sum")
        value = float(loss)
        if not math.isfinite(value) and isinstance(x, torch.Tensor) and not bool(torch.isfinite(x).all()):
            # as the training loop says of its batches: a NaN loss in the report, NaN rows scored as class 0
            raise DataError(f"data: the validation loader's batch {i + 1} holds NaN or inf inputs; clean the data")
        loss_sum += value
        correct += int((out.argmax(1) == y.to(out.device)).sum())
        total += int(y.numel())
        if counts is not None:
            counts["classes"] = int(out.shape[1])
    model.train(was_training)
    if counts is not None:
        counts["samples"] = total
    return {"accuracy": correct / total if total else 0.0, "loss": loss_sum / total if total else 0.0}


def calibrate(model: nn.Module, pruner: Pruner, loader: Iterable, batches: int) -> None:
    """For gradient-based methods with no fine-tuning: sum the cross-entropy gradients of the first
    ``batches`` batches of ``loader`` (``(inputs [N, ...], labels [N])``), then one :meth:`Pruner.step`,
    which scores and prunes; the gradients are cleared afterwards. No optimizer step is taken, so the
    weights change only by pruning. Raises :class:`~sparsekit.errors.DataError` as :func:`evaluate`."""
    model.train()
    model.zero_grad()
    for i, (x, y) in enumerate(_batches(loader, "data: the training loader")):
        if i >= batches:
            break
        _loss(model, x, y)[0].backward()
    pruner.step()
    model.zero_grad()


def progress_bar(enabled: bool) -> Any:
    """A rich progress bar on stderr (description, bar, n/total, time left, an `info` field); hidden when
    not ``enabled``."""
    with global_rng_kept():  # called after finetune seeded the generators; rich's first import draws from them
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _check_loader(loader: Any, name: str, needs_len: bool = True) -> None:
    """Raise DataError unless ``loader`` has a len() of at least one batch and yields its batches anew each time it
    is iterated (a DataLoader, a list of batches): an iterator or generator yields them once, so every epoch after
    the first would train on (or evaluate) nothing. Without ``needs_len`` (the validation loader, which no
    schedule counts) a loader with no len(), such as a DataLoader over an IterableDataset, is taken as it is."""
    kind = type(loader).__name__
    if not needs_len and not isinstance(loader, Iterable):
        raise DataError(
            f"finetune({name}=...): got a {kind}, "
            + (
                f"which holds {SAMPLES_NOT_BATCHES}"
                if is_torch_dataset(loader)
                else "which yields no batches; pass a torch DataLoader or a list of (inputs, labels) batches"
            )
        )
    if isinstance(loader, Iterator):
        raise DataError(
            f"finetune({name}=...): got a {kind}, which yields its batches only once; pass something iterated anew "
            "every epoch and with a len(): a torch DataLoader or a list of (inputs, labels) batches"
        )
    try:
        n = len(loader)
    except TypeError:  # no __len__, or a DataLoader over an IterableDataset without one
        if not needs_len:
            return  # evaluated by iterating it; an empty one is caught after its first evaluation
        raise DataError(
            f"finetune({name}=...): a {kind} has no len(), which sets the steps of an epoch (the schedules count "
            "them); pass a torch DataLoader over a map-style dataset, or a list of (inputs, labels) batches"
        ) from None
    if n == 0:
        raise DataError(f"finetune({name}=...): the {kind} holds no batches; it must yield at least one")


# torch's global generator stays seeded from the recipe after finetune, as it always was; numpy's and Python's go back
@keeps_caller_generators(torch=False)
@spells_remedies("finetune")  # a dict's or file's remedies name its keys: finetune() takes no overrides
def finetune(
    model: nn.Module,
    recipe: Recipe | Mapping[str, Any] | str | os.PathLike[str],
    train_loader: Any,
    val_loader: Any,
    *,
    pruner: Pruner | None = None,
    progress: bool | Literal["lines"] = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_shown: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log_dir: str | Path | None = None,
    teacher: nn.Module | None = None,
    provenance: Mapping[str, Any] | None = None,
    allow_changes: Sequence[str] = (),
) -> tuple[nn.Module, list[dict[str, Any]], Pruner]:
    """Fine-tune ``model`` for ``recipe.finetune.epochs`` while the pruner follows its schedules.

    ``train_loader`` and ``val_loader`` yield ``(inputs [N, ...], labels [N])`` batches (integer class
    labels; for a forward of several inputs, ``inputs`` is a tuple of them, ``((image, meta), labels)``, each
    passed as its own argument); each epoch runs at most ``finetune.max_steps_per_epoch`` training batches. The loss is
    cross-entropy plus :meth:`Pruner.penalty`; after each optimizer step comes :meth:`Pruner.step`, and
    after each epoch the LR scheduler (:func:`make_scheduler`) steps and the model is evaluated. It seeds torch's,
    numpy's and Python's global generators from ``recipe.seed`` (numpy's and Python's with seed + rank under
    torchrun) and puts numpy's and Python's back as they were when it returns; torch's stays seeded.
    ``pruner`` defaults to a new :class:`Pruner` over ``recipe``. ``on_epoch`` receives each history row.
    With ``model.output`` in the recipe, ``model`` is made to return that part of its output
    (:func:`sparsekit.logits.attach`, a forward hook; ``sparsekit.logits.detach`` removes it).
    ``progress`` (on stderr): True shows a progress bar on a terminal and, without one (a log file, a
    job scheduler), one line per epoch and one every :data:`LINE_EVERY_S` seconds (60) within a long epoch
    (steps done, mean train loss so far); ``"lines"`` always prints the lines instead of a bar; False
    prints nothing. A resumed run says which epoch it continues from, and a Ctrl-C (KeyboardInterrupt)
    is re-raised with a message naming the interrupted epoch and the last checkpointed one.

    The model trains on ``finetune.device`` (moved there first; a DistributedDataParallel model stays on
    its own device). Inside a ``torch.distributed`` process group (``torchrun``) the model is wrapped
    in DistributedDataParallel, each rank trains on its shard of ``train_loader``'s dataset
    (:func:`sparsekit.distributed.shard`; ``batch_size`` per rank), the wrapper is rebuilt after channels
    are removed, and only rank 0 shows progress, writes checkpoints and logs; every rank evaluates.

    Returns ``(model, history, pruner)`` (the model unwrapped, its gradients dropped); call
    ``pruner.finalize()`` afterwards. With ``finetune.epochs: 0`` nothing trains (``history`` is empty); methods that
    score by gradients get them from ``calibration_batches`` training batches and one pruner step
    (:func:`calibrate`), as ``sparsekit prune`` does.
    ``history`` has one row per epoch: ``epoch`` (from 1), ``sparsity`` (fraction of zero prunable
    weights), ``train_loss`` and ``val_loss`` (mean cross-entropy, nats per sample), ``val_accuracy``
    (top-1, 0..1), ``lr`` (the rate the epoch trained at) and ``params`` (parameters left; fewer once
    structured pruning removed channels). With ``checkpoint_dir`` a resumable
    checkpoint (``last.pt``: weights, optimizer, scheduler, pruner, CPU and CUDA RNG and shuffle state)
    is written after every epoch; ``resume=True`` continues from it bit for bit as the uninterrupted
    run would have. A ``last.pt`` already there that sparsekit did not write (your own script's) is never
    replaced: :class:`~sparsekit.errors.OutputError`, before any training. The checkpoint
    records what it belongs to (:mod:`sparsekit.provenance`): the
    resolved recipe, plus whatever the caller adds in ``provenance`` (the CLI adds the model file's and
    the data's hashes); a resume under a different one is refused naming each field that changed, except
    the fields named in ``allow_changes`` (only :data:`~sparsekit.provenance.SAFE_CHANGES`: more epochs,
    the device, the export and benchmark sections). ``checkpoint_shown``: the folder progress lines name instead of
    ``checkpoint_dir`` (``sparsekit prune`` trains in a staging folder and publishes its checkpoints to
    ``OUT/checkpoints``, where the user finds them). With ``log_dir``, per-step and per-epoch metrics
    go to CSV (and TensorBoard when installed), see :mod:`sparsekit.metrics_log`; a run that does not resume starts
    the logs sparsekit wrote there before over (rows past step 0 dropped), a resume cuts them at its checkpoint.

    With ``finetune.distill`` set, the loss is Hinton et al.'s mix of cross-entropy and the dense model's
    soft targets (:class:`~sparsekit.recipe.DistillSpec`, :func:`distillation_loss`; ``train_loss`` is then
    that mix). The teacher is ``teacher`` when given (the dense model; it is put in eval mode and never
    updated, and it must accept the same inputs on the model's device and return logits of the model's shape, or
    a tuple or dict that ``model.output`` picks them from as from the model's: a ValueError otherwise); else a
    frozen copy of ``model`` as passed, taken before the pruner is built and before a checkpoint is resumed.
    Pass ``teacher`` when ``model`` is not the dense model any more: when you pass a ``pruner`` whose schedule
    already pruned at step 0 (``schedule: oneshot``, or ``init_sparsity`` > 0) this raises ValueError instead of
    distilling from the pruned model; a resumed run must get the same dense model (e.g. reloaded from its file).
    Teachers are not saved in checkpoints. Under torchrun every rank holds its own copy. A ``teacher`` passed while
    ``finetune.distill`` is off is not used (a UserWarning says so).

    Raises :class:`~sparsekit.errors.DataError` when a loader yields its batches only once (a generator or
    iterator), has no len() or holds no batches, when a batch is malformed, the model fails on it, a label
    is out of range or the loss becomes NaN/inf on the data; :class:`~sparsekit.errors.RecipeError`
    when training diverges, ``finetune.device`` is not available, or the checkpoint already finished
    more epochs than the recipe has; and :class:`~sparsekit.errors.SparsekitError` when the checkpoint
    cannot be resumed (unreadable, another model, or the recipe or inputs changed), or ValueError when
    ``allow_changes`` names a field that cannot change on a resume, ``pruner`` was built over another model, or
    ``resume=True`` comes without ``checkpoint_dir`` or ``progress`` is none of True, False, ``"lines"``;
    TypeError when ``pruner`` is not a :class:`Pruner`, ``teacher`` not an ``nn.Module`` or ``on_epoch`` not
    callable.
    ``recipe`` may also be a recipe file, a shipped recipe's name or a dict, as :class:`Pruner` takes them
    (:func:`~sparsekit.recipe.as_recipe`)."""
    require_module(model, "finetune")
    require_initialized(model, "finetune", TargetError)
    # Checked before any training: on_epoch=3 failed ("'int' object is not callable") once the first epoch had
    # trained, and teacher=a state_dict failed with AttributeError ("... has no attribute 'eval'").
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(
            f"finetune(on_epoch=...): expected a function of each history row, got {type(on_epoch).__name__}"
        )
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(
            f"finetune(teacher=...): expected the dense torch.nn.Module to distill from, got {type(teacher).__name__}"
        )
    if not (isinstance(progress, bool) or progress == "lines"):
        # progress="line" (or "bar", or 1) printed nothing at all, without a word.
        raise ValueError(f"finetune(progress=...): expected True, False or 'lines', got {progress!r}")
    if resume and not checkpoint_dir:
        # Without a folder there is no last.pt to continue from: the run silently trained from epoch 1.
        raise ValueError(
            "finetune(resume=True) needs checkpoint_dir=..., the folder whose last.pt it continues from (the one an "
            "earlier finetune(checkpoint_dir=...) wrote)"
        )
    recipe = as_recipe(recipe)
    spec = recipe.finetune
    inner = _distributed.unwrap(model)
    if recipe.model.output is not None:
        attach_logits(inner, recipe.model.output)  # a tuple / dict output: the part the recipe names
    if inner is model:
        device = _distributed.resolve_device(spec.device)
        if _device(model) != device:
            model.to(device)
    main = _distributed.is_main()
    _check_loader(train_loader, "train_loader")
    # The validation loader's len() sets nothing (evaluation just iterates it): one without a len() was refused
    # with the training loader's reason ("which sets the steps of an epoch").
    _check_loader(val_loader, "val_loader", needs_len=False)
    train_loader = _sharded(train_loader, recipe.seed)
    steps = steps_per_epoch(spec, len(train_loader))
    if pruner is not None and not isinstance(pruner, Pruner):
        # Anything else failed on an attribute of it ("'dict' object has no attribute 'model'").
        raise TypeError(
            f"finetune(pruner=...): expected a sparsekit.Pruner built over this model, got {type(pruner).__name__}; "
            "or leave it out (finetune builds one over the recipe)"
        )
    if pruner is not None and pruner.model is not inner:
        # The optimizer trains `model` while the pruner masks, evaluates and returns its own: the loop handed back
        # an untrained model (with the untrained model's accuracy in the history), warned of only at finalize.
        raise ValueError(
            f"finetune(pruner=...): the pruner was built over another model object ({type(pruner.model).__name__}) "
            "than the model given to finetune: build it on this model, Pruner(model, recipe, steps_per_epoch), "
            "or leave pruner out"
        )
    if spec.distill is not None:
        teacher = _teacher(inner, teacher, pruner, recipe.model.output)
    elif teacher is not None and spec.epochs > 0:
        # The recipe decides: a teacher passed while finetune.distill is off trained nothing, without a word.
        warnings.warn(
            "finetune(teacher=...): the recipe's finetune.distill is off (null), so the teacher is not used and the "
            "loss is plain cross-entropy; set finetune.distill: {weight: 0.5, temperature: 2} to distill from it",
            stacklevel=4,  # the caller, past the two wrappers (keeps_caller_generators, spells_remedies)
        )
    if pruner is None:
        pruner = Pruner(model, recipe, steps_per_epoch=steps)
    elif pruner.steps_per_epoch != steps:
        # The schedules would run on another clock than the loop: e.g. a Pruner built with the whole
        # loader's length while each torchrun rank takes 1/N of the batches.
        raise ValueError(
            f"pruner.steps_per_epoch is {pruner.steps_per_epoch}, but this loop takes {steps} optimizer steps per "
            f"epoch{f' on each of {_distributed.world_size()} processes' if _distributed.active() else ''}: build "
            "the Pruner with steps_per_epoch=sparsekit.train.steps_per_epoch(recipe.finetune, len(loader)) over "
            "the loader each process trains on, or leave pruner out"
        )
    optimizer = make_optimizer(inner.parameters(), spec)
    history: list[dict[str, Any]] = []
    first_epoch = 0
    given = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None  # as the caller named it, for messages
    # Absolute from here on: a relative folder read after a chdir while training (the user's on_epoch, their data
    # code) put the later checkpoints in another folder, and the check below took the folder for removed.
    ckpt = given.absolute() if given else None
    # The folder the checkpoints go under, as it is now: removed mid-run (a user's rm -r), a save would re-create
    # it holding only the later epochs, posing as the run's folder.
    if ckpt and main:
        # Made now: a file or a dangling link where the folder goes was found only after the first epoch had trained.
        with writing(ckpt):
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        if not resume and given is not None:
            _refuse_foreign_checkpoint(given)
    home = nearest_folder(ckpt.parent) if ckpt else None
    home_id = identity(home) if home else None
    device_type = _distributed.resolve_device(spec.device).type
    origin = {**(provenance or {}), "recipe": recipe_record(recipe.model_dump(mode="json"), device_type)}
    accepted = check_allowed(allow_changes)
    # Before a resume, which restores the RNG states it saved. numpy's and Python's too: a data callable's dataset may
    # draw augmentation from them, and whatever ran before (the CLI's evaluation of the dense model over the
    # validation loader) must not shift what training draws from the same seed.
    # Under torchrun each rank draws its own numpy/Python noise (seed + rank: rank 0's is a single process's), as a
    # user's per-rank seeding did before sparsekit seeded these: the same seed on every rank gave every shard the
    # same augmentation noise. torch's stays the same on every rank (its state is what the checkpoint restores).
    seed_generators(recipe.seed, _distributed.rank())
    if resume and given and given.exists():
        first_epoch, history, optimizer, scheduler = _load_checkpoint(
            given, inner, optimizer, pruner, spec, _loader_generator(train_loader), origin, accepted, recipe.seed
        )
        if getattr(train_loader, "persistent_workers", False) and getattr(train_loader, "num_workers", 0) > 0:
            # Persistent workers carry their numpy/Python generators from epoch to epoch in their own processes,
            # out of reach of the checkpoint: fresh workers draw other augmentation than the ones stopped did.
            warnings.warn(
                "the training loader keeps its worker processes between epochs (persistent_workers=True); their "
                "random state is in no checkpoint, so augmentation drawn in the workers differs from an "
                "uninterrupted run's; for a bit-identical resume build the loader with persistent_workers=False",
                stacklevel=4,
            )
    else:
        scheduler = make_scheduler(optimizer, spec)
    if _distributed.active() and inner is model:
        model = _distributed.wrap(model)
        pruner.average_grads = False  # DDP averages them in backward()
    if spec.epochs == 0 and pruner.step_count == 0 and any(m.needs_grad for m in pruner.methods):
        # No training steps to bring gradients: score on calibration_batches, as the recipe field promises and
        # sparsekit prune does. Without it the same recipe failed at finalize ("got no gradients").
        calibrate(model, pruner, train_loader, max(getattr(s, "calibration_batches", 0) for s in recipe.pruning))
    metrics_log = MetricsLog(log_dir, first_epoch * steps) if log_dir and main else None
    masks_before = pruner.masks() if metrics_log else {}
    bar_shown = progress is True and main and sys.stderr.isatty()
    lines = main and (progress == "lines" or (progress is True and not bar_shown))
    shown = Path(checkpoint_shown) / "last.pt" if checkpoint_shown and ckpt else given
    if resume and first_epoch and main and progress:
        done = f"resuming from {shown}: {first_epoch} of {spec.epochs} epochs finished"
        _say(
            f"{done}, continuing with epoch {first_epoch + 1}"
            if first_epoch < spec.epochs
            else f"{done}, none left: only what follows training runs again"
        )
    elif resume and ckpt and main and progress:
        _say(f"resuming: no epoch was checkpointed ({shown} does not exist yet), so training starts at epoch 1")
    epoch = finished = first_epoch  # for the Ctrl-C message: the epoch running, the last one checkpointed
    try:
        with progress_bar(bar_shown) as bar:
            task = bar.add_task("fine-tune", total=(spec.epochs - first_epoch) * steps, info="")
            for epoch in range(first_epoch, spec.epochs):
                started = time.perf_counter()
                next_line = started + LINE_EVERY_S
                lr = float(scheduler.get_last_lr()[0])  # what this epoch trains at
                model.train()
                _distributed.set_epoch(train_loader, epoch)
                loss_sum, seen, taken = 0.0, 0, 0
                for i, (x, y) in enumerate(_batches(train_loader, "data: the training loader")):
                    if i >= steps:
                        if spec.max_steps_per_epoch is None or spec.max_steps_per_epoch >= len(train_loader):
                            raise DataError(  # not the cap: the loader yields more than its len() says
                                f"data: the training loader's len() is {len(train_loader)} batches, but epoch "
                                f"{epoch + 1} yields more; the pruning schedule counts len() steps per epoch, so "
                                "make len() return the number of batches it yields"
                            )
                        break
                    taken = i + 1
                    optimizer.zero_grad(set_to_none=True)
                    loss = _train_loss(model, x, y, teacher, spec.distill)
                    value = loss.item()  # the one host sync per step, for the divergence check and the mean
                    if not math.isfinite(value):
                        # The weights as the caller gave them: no optimizer step taken yet. Not a resume's first batch
                        # (epoch >= 1): the checkpoint's weights are what this run's training made (a last step of an
                        # epoch that diverged with a finite loss), and lowering the lr is the remedy.
                        first = epoch == 0 and i == 0
                        raise _not_finite(value, epoch, i, x, model, optimizer, first=first)
                    loss.backward()
                    pruner.regularize()  # the penalty's gradient added in place: cheaper than autograd (l1, see there)
                    optimizer.step()
                    pruner.step()
                    if pruner.structure_changed:
                        # torch-pruning replaced the Parameter objects: the optimizer follows them in place,
                        # so the scheduler attached to it keeps driving it; DDP's buckets need a new wrapper.
                        _follow_in_place(pruner, optimizer)
                        model = _distributed.rewrap(model)
                    loss_sum += value * len(y)
                    seen += len(y)
                    if metrics_log:
                        metrics_log.step(pruner.step_count, pruner.epoch, value, lr)
                    bar.update(task, advance=1, info=f"epoch {epoch + 1}/{spec.epochs} loss {loss_sum / seen:.4f}")
                    if lines and taken < steps and time.perf_counter() >= next_line:
                        now = time.perf_counter()
                        _say(
                            f"epoch {epoch + 1}/{spec.epochs}: step {taken:,}/{steps:,}, train loss so far "
                            f"{loss_sum / seen:.4f} ({now - started:.0f} s)"
                        )
                        next_line = now + LINE_EVERY_S
                if taken < steps:
                    # The schedules are laid out in len(loader) steps: a loader that yields fewer would leave
                    # every later target unreached (and masks out of step with the epochs), silently.
                    raise DataError(
                        f"data: the training loader's len() is {len(train_loader)} batches, but epoch {epoch + 1} "
                        f"yielded {taken}; the pruning schedule counts len() steps per epoch, so make len() return "
                        "the number of batches it yields"
                    )
                scheduler.step()  # the next epoch's rate, into the optimizer (and the checkpoint below)
                counts: dict[str, int] = {}
                metrics = evaluate(pruner.model, val_loader, counts=counts)
                if counts.get("samples") == 0:  # (a loader with a len() of 0 is refused up front)
                    raise DataError(
                        "finetune(val_loader=...): yielded no batches to evaluate after epoch "
                        f"{epoch + 1}; it must yield at least one, every epoch"
                    )
                loss_sum, total_seen = _distributed.sum_across([loss_sum, seen])  # every rank's share of the data
                row = {
                    "epoch": epoch + 1,
                    "sparsity": sparsity(pruner.model),
                    "train_loss": loss_sum / max(total_seen, 1),
                    "val_accuracy": metrics["accuracy"],
                    "val_loss": metrics["loss"],
                    "lr": lr,
                    "params": sum(p.numel() for p in pruner.model.parameters()),  # falls as channels go
                }
                history.append(row)
                info = f"epoch {epoch + 1}: acc {row['val_accuracy']:.4f} sparsity {row['sparsity']:.3f}"
                bar.update(task, info=info)
                if ckpt and main and home is not None and replaced(home, home_id):
                    raise OutputError(
                        f"{home}: removed while training (the checkpoints were to go there); epoch {epoch + 1}'s "
                        "checkpoint was not written, so as not to re-create it: train again"
                    )
                if metrics_log:
                    # Before the checkpoint: a stop in between leaves a row past it, which the resume cuts (logged
                    # after it, the row of the epoch the checkpoint holds was lost, the resume going on from the next).
                    masks_now = pruner.masks()
                    changed = _changes(masks_before, masks_now)
                    metrics_log.epoch(row, pruner.step_count, _layer_sparsity(pruner.model), changed)
                    masks_before = masks_now
                if ckpt and main:
                    _save_checkpoint(
                        ckpt, epoch + 1, pruner.model, optimizer, scheduler, spec, pruner, history,
                        _loader_generator(train_loader), origin,
                    )  # fmt: skip
                    home, home_id = ckpt.parent, identity(ckpt.parent)  # made by the first save if it was not there
                if ckpt:
                    # every rank: only the main one writes the checkpoint, but each one's Ctrl-C line says what
                    # --resume will find (the others said "no epoch was checkpointed" beside rank 0's "holds epoch N")
                    finished = epoch + 1
                if lines:  # after the checkpoint: a line printed is an epoch kept
                    _say(
                        f"epoch {epoch + 1}/{spec.epochs}: train loss {row['train_loss']:.4f}, val accuracy "
                        f"{row['val_accuracy']:.4f}, sparsity {row['sparsity']:.3f}, lr {lr:.3g}, "
                        f"params {row['params']:,} ({time.perf_counter() - started:.1f} s)"
                    )
                if on_epoch:
                    on_epoch(row)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (errors.Terminated): the same type goes on
        saved = f"{given} holds epoch {finished}" if ckpt and finished else "no epoch was checkpointed"
        when = f"after epoch {finished}" if ckpt and finished == epoch + 1 else f"in epoch {epoch + 1}"
        raise type(err)(interrupted_at(f"{when} of {spec.epochs}; {saved}")) from None
    finally:
        if metrics_log:
            metrics_log.close()
    # The last step's gradients would hold the model's size again through export and benchmarking.
    pruner.model.zero_grad(set_to_none=True)
    return pruner.model, history, pruner


def step_clock_mismatch(state: Mapping[str, Any], steps_per_epoch: int) -> str | None:
    """Why a checkpoint's ``state`` cannot be resumed at ``steps_per_epoch`` optimizer steps per epoch (it was written
    on another clock: another number of processes, say), or None when it can."""
    clock = state.get("steps_per_epoch")
    if clock is None or clock == steps_per_epoch:
        return None
    was, now = int(state.get("processes", 1)), _distributed.world_size()
    return (
        f"it was written at {clock} optimizer steps per epoch ({was} process(es)), this run takes {steps_per_epoch} "
        f"({now}): the schedules would shift. Resume with the same number of processes, data.batch_size and "
        "finetune.max_steps_per_epoch"
    )


def _say(line: str) -> None:
    """One plain progress line on stderr (no terminal needed), flushed so a log file shows it now."""
    # One write with its newline: print() writes the line and the end separately, and a Ctrl-C between the two
    # would leave the next message on the same line.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _teacher(
    model: nn.Module, teacher: nn.Module | None, pruner: Pruner | None, output: int | str | None = None
) -> nn.Module:
    """The frozen dense model to distill from: ``teacher`` (eval mode, parameters frozen, moved to
    ``model``'s device), else a copy of ``model``, which must not have been pruned yet (ValueError).
    ``output``: the recipe's ``model.output``, already attached to ``model`` (so to its copy)."""
    if teacher is not None:
        teacher = _distributed.unwrap(teacher)
        if teacher is model:
            raise ValueError("teacher is the model being pruned: pass a copy of the dense model (copy.deepcopy)")
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        device = _device(model)
        if next(teacher.parameters(), None) is not None and _device(teacher) != device:
            teacher.to(device)
        # The caller's copy of the dense model was taken before finetune attached model.output's selection to
        # the model: its output gets the same selection, without a hook left on the caller's module.
        return teacher if output is None else _SelectedTeacher(teacher, output).eval()
    if pruner is not None and (pruner.structure_changed or pruner.step_count > 0 or _pruned(pruner)):
        raise ValueError(
            "finetune.distill needs the dense model as teacher, but the pruner already pruned this model (its "
            "schedule acts at step 0): pass teacher=<a copy of the dense model taken before building the Pruner>"
        )
    return frozen_teacher(model)


class _SelectedTeacher(nn.Module):
    """A teacher that returns the part of its output the recipe's ``model.output`` names, as the model does (an
    output that is one tensor already, a copy of the model with the selection attached, is kept as it is)."""

    def __init__(self, teacher: nn.Module, output: int | str) -> None:
        super().__init__()
        self.teacher = teacher
        self.output = output

    def forward(self, *x: Any) -> torch.Tensor:  # the model's inputs, one or several
        out = self.teacher(*x)
        return out if isinstance(out, torch.Tensor) else select_logits(out, self.output, "the teacher")


def _pruned(pruner: Pruner) -> bool:
    """Whether any of the pruner's masks already removes a weight."""
    return any(not bool(mask.all()) for mask in pruner.masks().values())


def _sharded(loader: Any, seed: int) -> Any:
    """Under torch.distributed, ``loader`` reading this rank's shard (unless it already has a
    DistributedSampler of the caller's); else ``loader``."""
    from torch.utils.data.distributed import DistributedSampler

    if not _distributed.active() or isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    return _distributed.shard(loader, seed)


def _layer_sparsity(model: nn.Module) -> dict[str, float]:
    return {row["name"]: row["sparsity"] for row in layer_report(model)}


def _changes(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> int:
    """Mask entries that differ between two :meth:`Pruner.masks` snapshots (a layer whose shape changed
    counts all its entries)."""
    total = 0
    for name, mask in after.items():
        old = before.get(name)
        total += count_true(old != mask) if old is not None and old.shape == mask.shape else mask.numel()
    return total


def _follow_in_place(pruner: Pruner, optimizer: torch.optim.Optimizer) -> None:
    """Point ``optimizer`` at the parameters structured pruning just replaced. Pruner.update_optimizer
    edits the optimizer in place; a new object would leave the LR scheduler driving the old one."""
    if pruner.update_optimizer(optimizer) is not optimizer:
        raise RuntimeError("Pruner.update_optimizer returned a new optimizer; the LR scheduler drives the old one")


def _not_finite(
    value: float,
    epoch: int,
    batch: int,
    x: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    first: bool = False,
) -> SparsekitError:
    """Why the loss is not finite, in the order worth checking: the data, the weights, the step size.
    ``first``: no optimizer step of this run was taken yet, so non-finite weights came in that way."""
    where = f"the loss became {value} at epoch {epoch + 1}, batch {batch + 1}"
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return DataError(f"data: {where}: this batch of inputs holds NaN or inf values; clean the data")
    bad = [
        n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all())
    ]
    if bad and first:
        # Before any step the run took, no learning rate made them so: "training diverged, lower the lr" sent the
        # user to retune a recipe when the model given to it already held NaN / inf (a diverged checkpoint).
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        return ModelFileError(
            f"model: {where}, before any training step: the model's weights already hold NaN or inf values "
            f"({', '.join(bad[:4])}{more}); nothing can be trained from them. Load finite weights (a checkpoint from "
            "before the run that wrote them diverged)"
        )
    if bad:
        return RecipeError(
            f"finetune: {where}: training diverged (weights are no longer finite); lower finetune.optimizer.lr "
            f"(now {optimizer.param_groups[0]['lr']:g})"
        )
    return DataError(
        f"{where} with finite inputs and weights: the model's forward gives NaN/inf on this data (e.g. log of "
        "zero, or activations that overflow); check the model and the data's scale, or if it happens only after "
        f"some steps lower finetune.optimizer.lr (now {optimizer.param_groups[0]['lr']:g})"
    )


def _loader_generator(loader: Any) -> torch.Generator | None:
    """The generator a DataLoader shuffles with, when it has its own: sparsekit's built-in sources' loaders do, and
    a user's whose (batch) sampler holds one (``RandomSampler(data, generator=g)``) orders its batches with that."""
    return next(iter(loader_generators(loader)), None)


def _numpy_rng_state() -> list[Any]:
    """numpy's global generator state as plain data and a tensor, which a checkpoint read with
    ``weights_only=True`` can hold (a numpy array it cannot)."""
    name, key, *rest = cast(tuple[Any, ...], np.random.get_state())  # (name, uint32 key, pos, has_gauss, gauss)
    return [name, torch.from_numpy(key.astype(np.int64)), *rest]


# The keys every checkpoint :func:`_save_checkpoint` writes has had: a file at last.pt without them is not sparsekit's.
_CHECKPOINT_KEYS = frozenset({"epoch", "model", "optimizer", "pruner"})


def _refuse_foreign_checkpoint(path: Path) -> None:
    """Raise :class:`OutputError` when ``path`` (``CHECKPOINT_DIR/last.pt``, about to be written by a run that does
    not resume) exists and is not a checkpoint sparsekit wrote: ``last.pt`` is what many training scripts name their
    own checkpoint, and a caller's folder holding one had it replaced by the first epoch's, without a word."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError:
        return  # cannot tell: the write itself reports what is wrong with the folder
    why = "a link" if stat.S_ISLNK(st.st_mode) else None if stat.S_ISREG(st.st_mode) else "not a regular file"
    if why is None and st.st_size == 0:
        return  # an empty file (made by tempfile, or touch): replacing it loses nothing
    if why is None:
        try:
            # mmap: only the pickled keys are read, however large the tensors; weights_only: a file is data.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            ours = isinstance(state, dict) and state.keys() >= _CHECKPOINT_KEYS
        except Exception:  # noqa: BLE001 - anything torch cannot read as one of ours is the caller's
            ours = False
        if ours:
            return
        why = "not a checkpoint of sparsekit.finetune"
    raise OutputError(
        f"{path}: exists and is {why}; a run writes its checkpoint there and never replaces a file of yours: "
        "move it away or choose another checkpoint folder"
    )


def _save_checkpoint(
    path: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    spec: FinetuneSpec,
    pruner: Pruner,
    history: list[dict[str, Any]],
    loader_rng: torch.Generator | None = None,
    origin: Mapping[str, Any] | None = None,
) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),  # its param groups hold the next epoch's learning rate
        "scheduler": scheduler.state_dict(),
        # The settings the scheduler's state belongs to: a resume under other ones replays the schedule.
        "schedule": _schedule_key(spec),
        "pruner": pruner.state_dict(),
        # The clock the pruner's step count runs on: a resume with another one would shift every schedule.
        "steps_per_epoch": pruner.steps_per_epoch,
        "processes": _distributed.world_size(),
        "history": history,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "loader_rng": loader_rng.get_state() if loader_rng is not None else None,
        # A data callable's dataset may draw from numpy's or Python's generator too (random augmentation).
        "numpy_rng": _numpy_rng_state(),
        "python_rng": random.getstate(),
        # What the masks in this checkpoint mean: resuming under a different pruning section is refused.
        "pruning": pruning_key(pruner.recipe),
        # What the whole run was (recipe, model file, data): a resume under another is refused.
        "provenance": dict(origin) if origin is not None else None,
    }
    # Through a Python file object: a full disk then raises OSError(ENOSPC), which atomic_path turns into
    # a clear error naming the path (torch's own writer reports only 'unexpected pos').
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pruner: Pruner,
    spec: FinetuneSpec,
    loader_rng: torch.Generator | None,
    origin: dict[str, Any],
    accepted: Sequence[str],
    seed: int = 0,
) -> tuple[int, list[dict[str, Any]], torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Restore a checkpoint of :func:`_save_checkpoint` into ``model``, ``pruner``, the RNGs and a fresh
    optimizer and scheduler (``optimizer`` itself when no channels were removed); returns
    ``(finished epochs, history, optimizer, scheduler)``. Raises SparsekitError naming ``path`` when it
    does not belong to this run (``origin``, with the ``accepted`` changes, see
    :func:`sparsekit.provenance.check_resume`). ``seed``: the recipe's, from which ranks other than 0 restart
    their numpy and Python generators (the checkpoint holds rank 0's)."""
    again = f"start again with {option('restart')}"
    if path.is_dir() or not os.access(path, os.R_OK):  # not damage: a folder where the file goes, permissions
        what = "it is a folder" if path.is_dir() else "no permission to read it"
        unreadable = SparsekitError(f"{path}: cannot be read ({what}); fix that, or {again}")
        unreadable.unusable = True  # type: ignore[attr-defined]
        raise unreadable
    big = too_large_to_unpack(path)
    if big:
        bomb = SparsekitError(f"{path}: cannot be read: {big}; the file is damaged or built to exhaust memory; {again}")
        bomb.unusable = True  # type: ignore[attr-defined]
        raise bomb
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a checkpoint cut short (a kill while it was copied, a full disk)
        if isinstance(err, pickle.UnpicklingError):  # torch's advice there (load it unsafely) is not ours to give
            first = "it holds objects other than tensors and plain data, which sparsekit never writes nor unpickles"
        else:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        damaged = SparsekitError(f"{path}: cannot be read, it is damaged or incomplete ({first}); {again}")
        damaged.unusable = True  # type: ignore[attr-defined]  # no --resume can continue from it
        raise damaged from None
    try:
        changed = check_resume(state.get("provenance"), origin, allowed=accepted)
        if changed:
            log.info("resuming with accepted changes: %s", ", ".join(changed))
        saved = state.get("pruning")
        if saved is not None and saved != pruning_key(pruner.recipe):
            raise SparsekitError("the recipe's pruning section changed since this checkpoint was written")
        clock = step_clock_mismatch(state, pruner.steps_per_epoch)
        if clock:
            raise SparsekitError(clock)
        pruner.load_state_dict(state["pruner"])  # first: replays channel removal so the weights fit
        model.load_state_dict(state["model"])
        if int(state["epoch"]) > spec.epochs:
            raise RecipeError(
                f"finetune.epochs: {spec.epochs}, but {path} already finished epoch {int(state['epoch'])}; {again}"
            )
        # Changes accepted on earlier resumes and now, carried by every later checkpoint: the report names them
        # even when the resume that accepted one stopped before its next checkpoint.
        before = list((state.get("provenance") or {}).get("accepted", []))
        merged = before + [c for c in change_lines(changed) if c not in before]
        if merged:
            origin["accepted"] = merged
        if changed:
            # The checkpoint now belongs to the changed run, whose results the folder will hold: a later resume
            # compares with that (with no epoch left to train, no new checkpoint would say so). Written to a
            # temp file and renamed, so a copy of it elsewhere (the finished run's) stays as it was.
            state["provenance"] = dict(origin)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                torch.save(state, fh)
    except RecipeError:
        raise  # (finetune.epochs below the finished ones: names the field and the file itself)
    except SparsekitError as err:
        raise SparsekitError(f"{path}: cannot resume from it ({quoted(err)}); {again}") from None
    except Exception as err:  # noqa: BLE001 - any unreadable or mismatched checkpoint is bad input here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SparsekitError(f"{path}: does not fit this model and recipe ({first}); {again}") from None
    try:  # the checkpoint's optimizer, scheduler and RNG states are data too (a tampered or foreign file)
        if pruner.structure_changed:
            # Same parameters, in the same order, as the optimizer that was saved: its state loads as is.
            optimizer = make_optimizer(model.parameters(), spec)
            pruner.structure_changed = False
        epoch = int(state["epoch"])
        if epoch < 0:  # the epochs it finished: a run would train from there, its history numbered below 1
            raise ValueError(f"it says it finished epoch {epoch}")
        scheduler = make_scheduler(optimizer, spec)  # attached first; the states loaded next overwrite its rates
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None and state.get("schedule") == _schedule_key(spec):
            scheduler.load_state_dict(state["scheduler"])
        else:
            scheduler = _replayed(optimizer, spec, epoch)
        torch.set_rng_state(state["rng"])
        cuda_rng = state.get("cuda_rng")
        if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_rng)
        if loader_rng is not None and state.get("loader_rng") is not None:
            loader_rng.set_state(state["loader_rng"])  # the next epochs shuffle as the interrupted run would have
        if _distributed.rank() != 0:
            # The checkpoint holds rank 0's generators: restored on every rank they would make the shards' noise
            # alike from here on. The other ranks start theirs again from the seed, the rank and the epoch.
            np.random.seed([seed % 2**32, _distributed.rank(), epoch])
            random.seed(f"{seed}-{_distributed.rank()}-{epoch}")
        else:
            if state.get("numpy_rng") is not None:
                name, key, *rest = state["numpy_rng"]
                np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
            if state.get("python_rng") is not None:
                version, internal, gauss = state["python_rng"]
                random.setstate((version, tuple(internal), gauss))
        history = list(state["history"])
        from .masks import get_mask
        from .report import Epoch

        for row in history:  # checked now, not when the report is built after the remaining epochs
            Epoch.model_validate(row)
        for group in optimizer.param_groups:  # a state that does not fit its parameter fails only at the step
            for p in group["params"]:
                for value in optimizer.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                        raise ValueError(f"optimizer state of shape {list(value.shape)} for a weight {list(p.shape)}")
        for name, module in model.named_modules():
            mask, weight = get_mask(module), getattr(module, "weight", None)
            if mask is not None and isinstance(weight, torch.Tensor) and mask.shape != weight.shape:
                raise ValueError(f"the mask of {name} has shape {list(mask.shape)}, its weight {list(weight.shape)}")
    except Exception as err:  # noqa: BLE001 - any unreadable or mismatched state is bad input here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SparsekitError(f"{path}: does not fit this model and recipe ({first[:200]}); {again}") from None
    return epoch, history, optimizer, scheduler


def _replayed(
    optimizer: torch.optim.Optimizer, spec: FinetuneSpec, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler for ``spec`` moved on by ``epochs`` epochs from the base rate: for a checkpoint whose
    schedule settings differ from the recipe's (or that predates saved scheduler state). The schedule
    continues as if the recipe's settings had been used from the start."""
    log.info("LR schedule settings differ from the checkpoint's: the recipe's continues at epoch %d", epochs + 1)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = spec.optimizer.lr
    scheduler = make_scheduler(optimizer, spec)
    with warnings.catch_warnings():
        # torch warns that no optimizer step came first: here none is meant to.
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
        for _ in range(epochs):
            scheduler.step()
    return scheduler


def _schedule_key(spec: FinetuneSpec) -> str:
    """What a saved LR scheduler state depends on: the optimizer, the schedule and the epoch count."""
    schedule = spec.lr_schedule.model_dump(mode="json")
    if not schedule.get("hold_epochs"):
        schedule.pop("hold_epochs", None)  # (added later: the key of a checkpoint written before stays the same)
    return json.dumps(
        {"optimizer": spec.optimizer.model_dump(mode="json"), "lr_schedule": schedule, "epochs": spec.epochs},
        sort_keys=True,
    )
