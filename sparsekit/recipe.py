"""Recipes: validated, pure data (pydantic v2, unknown keys rejected).

A recipe is YAML with ``version: 1``. Every validation error is reported with its YAML path, e.g.
``pruning[0].sparsity: must be < 1``.

>>> recipe = load_recipe("lenet-gradual-magnitude-90", overrides=["finetune.epochs=4"])  # or a file's path
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from types import UnionType
from typing import Annotated, Any, Literal, ParamSpec, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import RecipeError, SparsekitError, option, render
from .errors import shorten as short
from .recipe_vocabulary import FOREIGN_CHOICES, FOREIGN_KEYS, FOREIGN_METHODS, FOREIGN_PATHS, PER_LAYER, SIZE
from .recipe_yaml import (
    MAX_DEPTH,
    apply_overrides,
    check_plain_data,
    describe,
    dotted_path,
    not_a_mapping,
    override_list,
    read_yaml,
)

LayerType = Literal[
    "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"
]  # fmt: skip
LAYER_TYPES: tuple[str, ...] = get_args(LayerType)
"""Every module kind a method can prune (``layers.types`` entries, and its default): their ``weight``
is a weighted sum's coefficients. Normalization layers, embeddings and attention are not prunable
kinds (:func:`sparsekit.layers.unselected_layers` says why for each module left out)."""
DEFAULT_MAX_LAYER_SPARSITY = 0.99  # magnitude/gradient: no layer is pruned past this unless asked

# Numeric bounds. Each is far beyond any value a user could mean, and small enough that the code
# using the value cannot overflow, allocate absurd memory or loop for days.
FOREVER_EPOCHS = 1e9  # "no end": the l1 default schedule, and the cap of every schedule epoch
MAX_EPOCHS = 100_000  # finetune.epochs, lr_schedule.step_size
MAX_BATCH = 2**20  # data.batch_size and benchmark.batch_sizes entries
MAX_SAMPLES = 10**7  # data.synthetic_samples: 10M generated samples is already GBs for a small input
MAX_STEPS = 10**9  # finetune.max_steps_per_epoch (a cap, so only sanity matters)
MAX_CALIBRATION = 100_000  # calibration batches scored before pruning
# Learning rates in practice are <= ~10 even for large-batch SGD; a step of 100 x gradient diverges with
# any optimizer here, and 1e300 overflows the weights to inf on the first step.
MAX_LR = 100.0
MAX_WEIGHT_DECAY = 10.0  # in use: <= 1 (AdamW); SGD/AdamW scale weights by (1 - lr * wd) each step
MAX_STRENGTH = 100.0  # l1.strength: useful values are ~1e-6..1e-2, so 100 is far past useful
MAX_MAGNITUDE = 1e6  # l1.threshold, max_norm.max_value: compared with |w| / row norms; float32-safe
# max_norm.max_value: useful bounds are ~0.5..5 (Srivastava et al. used 3-4). Far below, the rescaled weights are
# ~0: under float32's range (1e-300 is 0.0 there) every weight became an exact zero, from a method that "makes no
# zeros" as validate says; from this bound on, a row of a million weights keeps weights of ~1e-7.
MIN_MAX_NORM = 1e-4
MAX_STRUCTURED_STEPS = 1_000  # each step traces the model; validate costs epochs x steps
MAX_CHANNELS = 2**24  # structured.min_channels, model.input_shape dims
MAX_INPUT_VALUES = 2**28  # product of model.input_shape: 1 GiB of float32 for a single input
MAX_INPUT_DIMS = 8  # Conv3d takes 5-D input; more dims cannot be meant
MAX_THREADS = 1024
MAX_RUNS = 100_000  # benchmark warmup/runs: 100k inferences already take minutes on a tiny model
MAX_TEMPERATURE = 1e3  # distill.temperature: useful values are 1..20; logits / 1e3 are already uniform
MAX_SEED = 2**63 - 1  # torch.manual_seed overflows past 2**64; numpy's and an int64 stop at 2**63 - 1
MAX_JSON_INT = 2**63 - 1  # model.kwargs ints: what a checkpoint's JSON metadata and torch can hold


def _text_hint(value: str, fraction: tuple[str, str] | None = None) -> str:
    """How to write the text ``value``, given where a number goes, as a number (``": write it without quotes"``),
    or "" when it is no number. ``fraction``: for a field that holds a fraction of a whole, the bounds its Field
    states (``("gt", "lt")`` is (0, 1)); None for any other number field (epochs, lr), where '50%' is no fraction."""
    # `90%` is how SparseML's docs, NNI's tables and most papers state a sparsity; sparsekit takes the fraction.
    percent = re.fullmatch(r"\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))\s*%\s*", value)
    if percent and fraction is None:  # "write it as the fraction 0.5" for finetune.epochs named a value refused too
        return ": a percentage, which this field does not take: write the number itself"
    if percent and fraction is not None:
        value_of = float(percent.group(1)) / 100
        lower, upper = fraction
        above = value_of >= 0 if lower == "ge" else value_of > 0
        below = value_of <= 1 if upper == "le" else value_of < 1
        if not (above and below):  # "write it as the fraction 1" (or 0) offered a value refused as well
            return f": a percentage, and as the fraction {value_of:g} out of range too"
        return f": a percentage; write it as the fraction {value_of:g}"
    if re.fullmatch(r"\s*[-+]?0[0-9_]*[0-9]\s*", value):
        # YAML 1.1 reads a whole number with a leading 0 as octal (010 is 8) and, with an 8 or 9 in it, as text:
        # `epochs: 08` arrives here unquoted, and "write it without quotes" sent the user looking for quotes.
        digits = value.strip().replace("_", "")
        return f": write it as {int(digits)}, without a leading 0 (YAML reads 08 as text and 010 as the octal 8)"
    try:
        # float() reads "nan" and "inf" too: they are no number a recipe field takes, quoted or not.
        return ": write it without quotes" if math.isfinite(float(value)) else ": use a finite number"
    except ValueError:
        return ""


def _numbers(fraction: tuple[str, str] | None = None) -> Callable[[Any], Any]:
    """The BeforeValidator of a number field; ``fraction``: as :func:`_text_hint` takes it."""

    def check(value: Any) -> Any:
        # pydantic's lax mode reads `true` as 1; a boolean in a numeric field is always a mistake.
        if isinstance(value, bool):
            raise PydanticCustomError("bool_not_number", "must be a number, not true/false")
        # pydantic's lax mode would also read the text "3" as 3: a quoted number in a recipe is a typo or a
        # template that was not filled in, and accepting it hides which.
        if isinstance(value, str):
            raise PydanticCustomError(
                "text_not_number",
                "must be a number, not the text {got}{hint}",
                {"got": short(repr(value), 40), "hint": _text_hint(value, fraction)},
            )
        # An int too large for a float would otherwise give pydantic's vague "valid number" error.
        if isinstance(value, int) and abs(value) > 1e308:
            raise PydanticCustomError("finite_number", "must be a finite number")
        return value

    return check


_number = _numbers()
Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number)]
# Fields holding a fraction of a whole, by the bounds their Field states as well: only there is a percentage
# ('90%') offered as the fraction it stands for.
FractionFrom0 = Annotated[float, BeforeValidator(_numbers(("ge", "lt")))]  # [0, 1)
Fraction = Annotated[float, BeforeValidator(_numbers(("gt", "lt")))]  # (0, 1)
FractionTo1 = Annotated[float, BeforeValidator(_numbers(("gt", "le")))]  # (0, 1]
FractionClosed = Annotated[float, BeforeValidator(_numbers(("ge", "le")))]  # [0, 1]


class _Strict(BaseModel):
    # allow_inf_nan=False: .nan/.inf in any float (or int) field is an error naming the field.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def is_output_part(value: Any) -> bool:
    """Whether ``value`` can name the logits in a model's output (``model.output``; a checkpoint's recorded part; the
    export command's logits option): None, an index 0..1000 into a tuple, or a key or attribute name of 1..200
    characters."""
    if value is None or (isinstance(value, str) and 0 < len(value) <= 200):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1_000


class ModelSpec(_Strict):
    """``model:``: how to build the model (``factory`` + JSON-like ``kwargs``, run only when confirmed, see
    :mod:`sparsekit.trust`) and ``input_shape``: the whole input, batch first (``[1, 784]``, ``[1, 4, 32]``
    for a Conv1d over 4 channels of length 32, ``[1, 1, 28, 28]``); data samples have shape
    ``input_shape[1:]``."""

    factory: str | None = Field(
        None,
        description="pkg.module:callable that builds the model, called with kwargs; needed when MODEL is a plain "
        "state_dict or .safetensors file and no architecture is named for the run; runs only when confirmed (the "
        "same callable named as the run's architecture, or its code trusted); null: the checkpoint's own factory",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments for factory: JSON-like data only (numbers, strings, true/false, null, "
        "lists, mappings), e.g. {width: 64}",
    )
    input_shape: list[Annotated[Int, Field(gt=0, le=MAX_CHANNELS)]] | None = Field(
        None,
        max_length=MAX_INPUT_DIMS,
        description="the whole model input, batch first: [1, 784] (flat features), [1, 4, 32] (Conv1d: 4 channels "
        "of length 32), [1, 1, 28, 28] (images), [1, 128] (128 token ids for an nn.Embedding: fed as int64); data "
        "samples have shape input_shape[1:]; null: from the sparsekit checkpoint, else inferred from the first "
        "layer, else (a convolution first) the samples' shape of a built-in source (digits: [1, 1, 8, 8], or "
        "[1, 1, 64] for a Conv1d) or of an .npz's x (as saved; flat samples as one channel or one square image) "
        "when the model runs on it",
    )
    output: int | str | None = Field(
        None,
        description="which part of the model's output is the logits [batch, classes], for a model that returns "
        "more than one tensor: an index into a tuple or list (0..1000), or a key or attribute name (logits); null: "
        "the part recorded in a checkpoint sparsekit prune wrote, else the output is one tensor",
    )

    @field_validator("output", mode="before")
    @classmethod
    def _output_part(cls, value: Any) -> Any:
        if is_output_part(value):
            return value
        raise PydanticCustomError(
            "output_part",
            "must be an index 0..1000 into a tuple output, a key or attribute name (1..200 characters), or null "
            "(got {got})",
            {"got": short(repr(value), 40)},
        )

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        # prune refuses a factory not of the form pkg.module:callable; validate must say so too rather than
        # call such a recipe valid. Only the text is checked: nothing is imported.
        if value is not None:
            from .trust import split_spec

            try:
                split_spec(value, "model.factory", error=RecipeError)
            except RecipeError as err:
                raise PydanticCustomError(
                    "factory_form", "{problem}", {"problem": str(err).split(": ", 1)[-1]}
                ) from None
        return value

    @field_validator("kwargs", mode="before")
    @classmethod
    def _json_like(cls, value: Any) -> Any:
        # kwargs go to the user's model factory and into checkpoint JSON: plain, finite data only.
        if isinstance(value, dict):
            problem = _json_problem(value, "", 0, set())
            if problem:
                subpath, msg = problem
                raise PydanticCustomError("kwargs_value", "{problem}", {"subpath": subpath, "problem": msg})
        return value

    @field_validator("input_shape")
    @classmethod
    def _not_too_big(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(value) < 2:
            raise ValueError(
                f"{value} has no batch dimension: input_shape is the whole input, batch first "
                f"(e.g. [1, {value[0] if value else 784}] for {value[0] if value else 784} features, [1, 4, 32] "
                "for 4 channels of length 32, [1, 3, 32, 32] for RGB images)"
            )
        if value and math.prod(value) > MAX_INPUT_VALUES:
            raise ValueError(
                f"{value} has {math.prod(value):,} values per input, more than {MAX_INPUT_VALUES:,} (2**28); "
                "check the dimensions ([batch, channels, height, width] or [batch, features])"
            )
        return value


def _json_problem(value: Any, path: str, depth: int, active: set[int]) -> tuple[str, str] | None:
    """(sub-path, problem) for the first value in ``value`` that is not finite JSON-like data."""
    if depth > MAX_DEPTH:
        return path, f"nested deeper than {MAX_DEPTH} levels"
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        return (
            None
            if abs(value) <= MAX_JSON_INT
            else (path, f"a {value.bit_length()}-bit integer does not fit in 64 bits")
        )
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "must be a finite number")
    if isinstance(value, dict | list):
        if id(value) in active:
            return path, "refers to itself (a recursive YAML alias)"
        active.add(id(value))
        try:
            if isinstance(value, list):
                items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
            else:
                for k in value:
                    if not isinstance(k, str):
                        return path, f"key {k!r} is not a string"
                items = ((f"{path}.{k}", v) for k, v in value.items())
            for sub, v in items:
                problem = _json_problem(v, sub, depth + 1, active)
                if problem:
                    return problem
        finally:
            active.discard(id(value))
        return None
    return path, f"{describe(value)} is not allowed; use numbers, strings, true/false, null, lists and mappings"


DATA_SOURCES = ("digits", "mnist5k", "synthetic")  # data.source's built-in names (sparsekit.data loads them)
SOURCE_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # data.source: pkg.module:callable


def source_problem(source: str) -> str | None:
    """Why ``source`` is no data source sparsekit can read (not a built-in name, a ``.npz`` path or
    ``pkg.module:callable``), with the nearest name and the valid forms; None when its form is one of those.
    The text alone: no file is opened, nothing imported."""
    if source.endswith(".npz") or source in DATA_SOURCES or SOURCE_CALLABLE.match(source):
        return None
    from .trust import module_spec_hint

    close = difflib.get_close_matches(source.lower(), DATA_SOURCES, n=1)  # `MNIST`, `Digits`
    hint = f"did you mean {close[0]!r}? " if close else ""
    if source.lower().endswith((".npy", ".csv", ".pt", ".pth", ".pkl", ".h5", ".txt")):
        hint = "a file is read as an .npz holding arrays x and y (numpy.savez(path, x=..., y=...)); "
    if source.lower().endswith(".npz"):  # `x.NPZ`: the suffix is matched as written, as in numpy.savez
        hint = f"name the file with a lower-case .npz ({short(source[:-4], 60)}.npz); "
    if source.endswith(("/", os.sep)) or (not hint.startswith("a file") and _is_folder(source)):
        # A folder of images (one subfolder per class): "did you mean 'digits'?" for `imgs`, or nothing for `imgs/`.
        hint = (
            "a folder is not read as data: save its samples with numpy.savez(path, x=..., y=...), or name a "
            "pkg.module:callable returning (train_loader, val_loader), e.g. over torchvision's ImageFolder; "
        )
    if source == "-":  # a Unix tool's standard input
        hint = "sparsekit reads no data from standard input: save it with numpy.savez(path, x=..., y=...); "
    return (
        f"{short(source, 80)!r} is not a known source; {hint}valid sources: {', '.join(DATA_SOURCES)}, "
        f"path/to/file.npz (arrays x, y), pkg.module:callable{module_spec_hint(source)}"
    )


def _is_folder(source: str) -> bool:
    """Whether ``source`` names an existing folder (looked up, not opened)."""
    try:
        return os.path.isdir(os.path.expanduser(source))
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


class DataSpec(_Strict):
    """``data:``: the source (a built-in name, a ``.npz`` file or ``pkg.module:callable``), batch size,
    validation fraction, the built-in sources' preprocessing and the size of the synthetic set."""

    source: str = Field(
        "digits",
        description="where the training and validation data come from: digits (scikit-learn's 1,797 8x8 digits, "
        "samples (1, 8, 8)), mnist5k (5,000 MNIST images, samples (1, 28, 28)), synthetic (seeded gaussian inputs "
        "with learnable labels), path/to/file.npz (arrays x and y, integer labels; a relative path is read from the "
        "current folder, and the file must lie in the recipe's folder or the current one unless named as the run's "
        "data) or pkg.module:callable "
        "returning (train_loader, val_loader) (runs only when confirmed: named as the run's data, or its code "
        "trusted); nothing is downloaded",
    )
    batch_size: Int = Field(64, gt=0, le=MAX_BATCH, description="samples per training and evaluation batch")

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        # prune refuses a source of no known form; validate must say so too rather than call the recipe valid.
        problem = source_problem(value)
        if problem:
            raise PydanticCustomError("source_form", "{problem}", {"problem": problem})
        return value

    val_fraction: Fraction = Field(
        0.2,
        gt=0,
        lt=1,
        description="fraction of the samples held out for validation (built-in sources and .npz files; the split "
        "is fixed by seed)",
    )
    normalize: Literal["none", "standard"] = Field(
        "none",
        description="built-in image sources only: none scales pixels to [0, 1] (digits x/16, mnist5k x/255); "
        "standard also standardizes them (digits (x/16 - 0.3053)/0.3760, mnist5k (x/255 - 0.1307)/0.3081). "
        ".npz files and callables are used as given",
    )
    # At least 2: the split holds out one sample for validation and trains on the rest (the loader refuses fewer).
    synthetic_samples: Int = Field(
        512, ge=2, le=MAX_SAMPLES, description="number of samples generated for source: synthetic (ignored otherwise)"
    )


class OptimizerSpec(_Strict):
    """``finetune.optimizer:``: sgd | adam | adamw with learning rate, momentum (sgd) and weight decay."""

    name: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="the torch optimizer: sgd (SGD with momentum), adam (Adam) or adamw (AdamW)"
    )
    lr: Float = Field(0.01, gt=0, le=MAX_LR, description="learning rate (the starting one when lr_schedule changes it)")
    momentum: FractionFrom0 = Field(0.9, ge=0, lt=1, description="SGD momentum (read by sgd only)")
    weight_decay: Float = Field(
        0.0,
        ge=0,
        le=MAX_WEIGHT_DECAY,
        description="weight decay: an L2 term for sgd and adam, decoupled for adamw; 0: none",
    )


class LRScheduleSpec(_Strict):
    """``finetune.lr_schedule:``: constant, cosine over the epochs, or step (x ``gamma`` every ``step_size`` epochs),
    optionally after ``hold_epochs`` at the full rate (Zhu & Gupta 2017 prune while the rate is still high, so the
    network recovers from each mask update; a decay that starts at the end of pruning leaves the recovery epochs
    the whole curve)."""

    name: Literal["constant", "cosine", "step"] = Field(
        "constant",
        description="how the learning rate changes per epoch: constant; cosine (lr * (1 + cos(pi * epoch / "
        "epochs)) / 2, torch's CosineAnnealingLR over finetune.epochs); step (lr * gamma ** (epoch // step_size), "
        "torch's StepLR)",
    )
    step_size: Int = Field(1, gt=0, le=MAX_EPOCHS, description="epochs between decays (name: step only)")
    gamma: FractionTo1 = Field(
        0.1, gt=0, le=1, description="factor the learning rate is multiplied by at each decay (name: step only)"
    )
    hold_epochs: Int = Field(
        0,
        ge=0,
        le=MAX_EPOCHS,
        description="epochs trained at the full rate before the decay starts (name: cosine or step): cosine then "
        "runs over the epochs left, lr * (1 + cos(pi * (epoch - hold_epochs) / (epochs - hold_epochs))) / 2, and step "
        "counts its step_size from there; the decay's own first epoch is still at the full rate (cosine's factor "
        "starts at 1, step keeps it for step_size epochs), so the first lowered epoch is hold_epochs + 1 (cosine) or "
        "hold_epochs + step_size (step), from 0: at finetune.epochs or later, no epoch is lowered (validate says so); "
        "set it to a pruning schedule's end_epoch to keep the rate up while the masks change and decay it over the "
        "recovery",
    )


class DistillSpec(_Strict):
    """``finetune.distill:``: knowledge distillation from the dense model (Hinton, Vinyals & Dean 2015,
    "Distilling the Knowledge in a Neural Network"). The training loss becomes

    ``(1 - weight) * CE(student, y) + weight * temperature**2 * KL(softmax(teacher / T) || softmax(student / T))``

    with ``T = temperature``; the teacher is a frozen copy of the dense model taken before pruning (eval
    mode, no gradients). The ``T**2`` factor keeps the soft term's gradients on the scale of the hard one's
    as ``T`` changes (Hinton et al., section 2). ``weight: 0`` trains exactly as without distillation."""

    weight: FractionClosed = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the distillation term in the loss: (1 - weight) * cross-entropy + weight * T**2 * "
        "KL(teacher || student); 0 trains as without distillation",
    )
    temperature: Float = Field(
        2.0,
        gt=0,
        le=MAX_TEMPERATURE,
        description="softmax temperature T of teacher and student logits; higher: softer targets (useful: 1..20)",
    )


class FinetuneSpec(_Strict):
    """``finetune:``: epochs (0: prune without training), optimizer, LR schedule, loss, optional knowledge
    distillation from the dense model (``distill``, :class:`DistillSpec`; null: off), optional cap on
    batches per epoch."""

    epochs: Int = Field(
        0,
        ge=0,
        le=MAX_EPOCHS,
        description="fine-tuning epochs while and after pruning; 0: prune without training (every schedule but "
        "l1's must then end at epoch 0, e.g. schedule: oneshot); each schedule's end_epoch must be <= epochs",
    )
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec, description="the optimizer: {name, lr, momentum, weight_decay}"
    )
    lr_schedule: LRScheduleSpec = Field(
        default_factory=LRScheduleSpec, description="the learning-rate schedule: {name, step_size, gamma, hold_epochs}"
    )
    loss: Literal["cross_entropy"] = Field(
        "cross_entropy", description="training loss; cross_entropy (classification) is the only one"
    )
    distill: DistillSpec | None = Field(
        None, description="knowledge distillation from the dense model: {weight, temperature}; null: off"
    )
    max_steps_per_epoch: Int | None = Field(
        None, gt=0, le=MAX_STEPS, description="cap on training batches per epoch (quick runs); null: every batch"
    )
    device: str = Field(
        "auto",
        description="where to train: auto (cuda when available, else cpu), cpu, cuda, cuda:N, mps; the run's device "
        "option overrides it",
    )
    log: bool = Field(False, description="write per-step and per-epoch metrics (CSV, TensorBoard) to OUT/logs")

    @field_validator("distill", mode="before")
    @classmethod
    def _distill_mapping(cls, value: Any) -> Any:
        if value is None or isinstance(value, dict | DistillSpec):
            return value
        raise ValueError(
            f"must be a mapping {{weight, temperature}} (e.g. {{weight: 0.5, temperature: 2}}) or null for off, "
            f"got {short(repr(value), 40)}"
        )

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", value):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps (got {short(value, 40)!r})")
        return value


class ScheduleSpec(_Strict):
    """``schedule:``: Zhu & Gupta gradual pruning: sparsity rises from ``init_sparsity`` at ``start_epoch`` to
    the method's target at ``end_epoch`` along a cubic curve, updated every ``every`` epochs. Epochs may be
    fractional (``every: 0.125`` updates 8 times per epoch). ``schedule: oneshot`` is short for
    ``{start_epoch: 0, end_epoch: 0}``: the whole target at once, at the start. ``end_epoch`` must be
    ``>= start_epoch`` and, for every method but ``l1``, ``<= finetune.epochs``."""

    start_epoch: Float = Field(
        0,
        ge=0,
        le=FOREVER_EPOCHS,
        description="epoch of the first mask update or removal; fractions allowed: every epoch value here "
        "becomes the nearest optimizer step, a tie to the even one (0.5 at 5 steps per epoch: step 2)",
    )
    end_epoch: Float = Field(
        0,
        ge=0,
        le=FOREVER_EPOCHS,
        description="epoch at which the method's final target is reached (structured: the end of its last "
        "removal's slice, see steps); >= start_epoch and (except l1) <= finetune.epochs; equal to start_epoch: all "
        "at once",
    )
    # Schedule.from_spec rounds `every` to >= 1 optimizer step, so a tiny value cannot make billions
    # of updates; the floor only catches typos such as 1e-9 for 1e9.
    every: Float = Field(
        1,
        ge=1e-6,
        le=FOREVER_EPOCHS,
        description="epochs between mask updates (0.125: 8 per epoch); at least one optimizer step",
    )
    init_sparsity: FractionFrom0 = Field(
        0.0,
        ge=0,
        lt=1,
        description="sparsity at start_epoch, where the curve starts (fraction of the selected weights)",
    )
    curve: Literal["cubic", "linear"] = Field(
        "cubic",
        description="shape of the rise from init_sparsity to the target: cubic (Zhu & Gupta: fast early, slow "
        "late) or linear",
    )

    @model_validator(mode="after")
    def _order(self) -> ScheduleSpec:
        if self.end_epoch < self.start_epoch:
            raise ValueError(f"end_epoch ({self.end_epoch}) must be >= start_epoch ({self.start_epoch})")
        return self


def _schedule(value: Any) -> Any:
    # `schedule: oneshot` is shorthand for a single update at epoch 0.
    if value == "oneshot":
        return {"start_epoch": 0, "end_epoch": 0}
    if isinstance(value, str):
        raise ValueError(f"unknown schedule {value!r}: use 'oneshot' or a mapping with start_epoch/end_epoch")
    return value


def _default_layer_types() -> list[LayerType]:
    return list(get_args(LayerType))


class LayerSelect(_Strict):
    """``layers:``: shell globs over ``named_modules()`` names (``include`` minus ``exclude``), restricted to
    module ``types`` (default: every prunable kind, :data:`LAYER_TYPES`; a subclass counts as its base,
    e.g. a class derived from ``nn.Conv2d`` is a ``Conv2d``)."""

    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="shell globs over the model's named_modules() names the method may prune ('*': all); a "
        "pattern that matches nothing is an error listing the prunable layers",
    )
    exclude: list[str] = Field(
        default_factory=list, description="shell globs of modules left out even when include matches them"
    )
    types: list[LayerType] = Field(
        default_factory=_default_layer_types,
        description="module kinds that may be pruned (a subclass counts as its base); default: every prunable kind",
    )

    @model_validator(mode="before")
    @classmethod
    def _include_shorthand(cls, data: Any) -> Any:
        return _layers_mapping(data)

    @model_validator(mode="after")
    def _something_left(self) -> LayerSelect:
        # Known from the patterns alone (recipe-only validate said "valid" and prune failed once the model loaded):
        # an exclude of only '*' leaves out every name, and a plain name in include is left out by a matching exclude.
        def excluded(pattern: str) -> bool:
            return any(set(e) == {"*"} for e in self.exclude) or (
                not any(c in pattern for c in "*?[") and any(fnmatchcase(pattern, e) for e in self.exclude)
            )

        # An empty include or types list selects nothing for any model: prune refused it once the model loaded,
        # after recipe-only validate had said "valid" (and described "the layers matching " with no pattern).
        if not self.include:
            raise ValueError(
                "include is empty: it names no layer to prune; write ['*'] for every layer, or leave it out"
            )
        if not self.types:
            raise ValueError(
                "types is empty: no kind of layer may be pruned; name the kinds (e.g. [Linear, Conv2d]), or leave it "
                "out for every prunable kind"
            )
        if all(excluded(p) for p in self.include):
            raise ValueError(
                f"exclude {self.exclude} leaves out everything include {self.include} names: no layer to prune; "
                "narrow exclude (or drop this entry)"
            )
        return self

    def leaves_out(self, name: str) -> str | None:
        """Why the layer called ``name`` is outside this selection in every model (from the patterns alone, as
        :func:`sparsekit.layers.select_layers` matches them), or None when a model may have it selected."""
        if not any(fnmatchcase(name, p) for p in self.include):
            return f"matches no layers.include pattern ({', '.join(map(repr, self.include))})"
        pattern = next((e for e in self.exclude if fnmatchcase(name, e)), None)
        return None if pattern is None else f"is left out by the layers.exclude pattern {pattern!r}"


def _layers_mapping(data: Any) -> Any:
    # `layers: [fc1, fc2]` or `layers: "features.*"` is what people write first (SparseML's `params:` is a
    # list): it means the include list, as torch.nn.utils.prune users name the modules they prune.
    if isinstance(data, str):
        return {"include": [data]}
    if isinstance(data, list):
        return {"include": data}
    return data


class _MethodBase(_Strict):
    layers: LayerSelect = Field(
        default_factory=LayerSelect,
        description="which layers the entry prunes: {include, exclude, types} (see pruning[].layers); a list of "
        "globs (or one glob) is short for its include",
    )

    def effects(self) -> frozenset[str]:
        """What this entry does to the exported model, for the up-front expectation
        (:func:`sparsekit.report.what_it_buys`): ``"zeros"`` (unstructured zeros: smaller compressed file),
        ``"units"`` (whole neurons/channels removed: smaller and faster), ``"some_units"`` (units removed
        only where training zeroes them all); empty for neither. Each method's spec says its own."""
        return frozenset()

    @model_validator(mode="before")
    @classmethod
    def _oneshot(cls, data: Any) -> Any:
        if isinstance(data, dict) and "schedule" in data:
            data = {**data, "schedule": _schedule(data["schedule"])}
        return data


AUTO = "auto"
"""The value of ``sparsity`` / ``ratio`` that asks sparsekit to choose the per-layer values itself, from a
sensitivity analysis (:mod:`sparsekit.sensitivity`), to meet ``target`` / ``target_macs`` / ``target_latency``."""


def _fraction_or_auto(lower: str, auto: bool = True, per_layer: str = "") -> Any:
    """A BeforeValidator for ``sparsity`` (``lower="ge"``: 0 allowed) and ``ratio`` (``"gt"``): ``"auto"``, or a
    finite number in the range, with the same error types (so the same messages) as a plain bounded float.
    ``auto=False``: a fraction only (l1's ``target``), with the same checks and hints. ``per_layer``: the key that
    takes one value per layer (``layer_sparsity``), named when a mapping or list is given."""

    def check(value: Any) -> Any:
        if auto and value == AUTO:
            return value
        if isinstance(value, str):
            either = " or 'auto' (per-layer values from a sensitivity analysis)" if auto else ""
            raise PydanticCustomError(
                "fraction_or_auto",
                "must be a number in {range}{either}, got {got}{hint}",
                {
                    "range": "[0, 1)" if lower == "ge" else "(0, 1)",
                    "either": either,
                    "got": short(repr(value), 40),
                    "hint": _text_hint(value, (lower, "lt")),
                },
            )
        if per_layer and isinstance(value, dict | list):
            # NNI's and SparseML's habit of one value per layer (`sparsity: {fc1: 0.5}`) was "must be a number".
            raise PydanticCustomError(
                "fraction_or_auto",
                "must be one number (or 'auto'), not {kind}; per-layer values go in {per_layer}: {form}, beside "
                "this one for the layers not listed",
                {"kind": _kind_of(value), "per_layer": per_layer, "form": "{layer: fraction}"},
            )
        value = _number(value)
        if not isinstance(value, int | float):
            raise PydanticCustomError("fraction_or_auto", "must be a number or 'auto'")
        if not math.isfinite(value):
            raise PydanticCustomError("finite_number", "must be a finite number")
        if lower == "ge" and value < 0:
            raise PydanticCustomError("greater_than_equal", "must be >= 0", {"ge": 0})
        if lower == "gt" and value <= 0:
            raise PydanticCustomError("greater_than", "must be > 0", {"gt": 0})
        if 1 < value < 2:  # 1.5: neither a fraction nor, likely, a percentage (1.5% is rarely a target)
            raise PydanticCustomError(
                "fraction_range", "must be < 1: a fraction (0.5 is half), got {got}", {"got": value}
            )
        if value == 100:  # 100%: "did you mean 1?" offered a value refused as well ("must be < 1")
            raise PydanticCustomError(
                "percentage_not_fraction",
                "must be < 1: a fraction, not a percentage; 100% would leave the selected layers nothing (0.99 "
                "keeps 1%)",
            )
        if 2 <= value <= 100:  # a percentage where a fraction is meant
            raise PydanticCustomError(
                "percentage_not_fraction", "must be < 1: a fraction, not a percentage (did you mean {fraction}?)",
                {"fraction": f"{value / 100:g}"},
            )  # fmt: skip
        if value >= 1:
            raise PydanticCustomError("less_than", "must be < 1", {"lt": 1})
        return float(value)

    return BeforeValidator(check)


# The number's range is stated twice: in the check (which runs first and words every error) and in the
# type, so that the schema, and docs/recipe.md generated from it, show it.
SparsityValue = Annotated[
    Annotated[float, Field(ge=0, lt=1)] | Literal["auto"], _fraction_or_auto("ge", per_layer="layer_sparsity")
]
RatioValue = Annotated[
    Annotated[float, Field(gt=0, lt=1)] | Literal["auto"], _fraction_or_auto("gt", per_layer="layer_ratio")
]
LayerFraction = Annotated[FractionFrom0, Field(ge=0, lt=1)]
MAX_LAYER_VALUES = 100_000  # entries of layer_sparsity / layer_ratio: far more layers than any network has


class _Ranked(_MethodBase):
    """What magnitude and gradient share: the target, its scope and the per-layer ceiling; they make
    unstructured zeros.

    ``max_layer_sparsity`` caps the fraction of any one layer's weights that may be pruned, so a global
    ranking cannot empty a small layer; the prunes a capped layer cannot take go to the other layers.
    Default: 0.99, or halfway between ``sparsity`` (``target`` for ``sparsity: auto``) and 1 when that is
    above 0.98. It may not be below ``sparsity`` (no layer could then reach it, so neither could their total).

    Per-layer values:

    - ``layer_sparsity: {layer: fraction}`` prunes each listed layer (a ``named_modules()`` name the entry
      selects) to its own fraction of its weights, ranked within the layer, on the entry's schedule (each
      layer's target scales with the schedule: at a point where the schedule is at ``t`` of ``sparsity``,
      the layer is at ``t / sparsity`` of its value). Selected layers not listed are pruned to ``sparsity``
      as ``scope`` says (together under ``global``, each on its own under ``layer``).
    - ``sparsity: auto`` with ``target: fraction`` asks sparsekit to choose ``layer_sparsity`` from a
      per-layer sensitivity analysis (:func:`sparsekit.allocation.allocate`) so that the selected weights
      are pruned to ``target`` in total; a prune run does it before training. A Pruner refuses an entry
      still holding ``auto``. The allocated entry reads ``sparsity: <target>, scope: layer,
      layer_sparsity: {...}``."""

    sparsity: SparsityValue = Field(
        description="final fraction of the selected weights set to zero (0.9 keeps 10%); or auto, with target, to "
        "have per-layer values chosen from a sensitivity analysis"
    )
    target: Fraction | None = Field(
        None,
        gt=0,
        lt=1,
        validate_default=True,
        description="with sparsity: auto (required there, refused otherwise), the fraction of the selected weights "
        "pruned in total",
    )
    scope: Literal["global", "layer"] = Field(
        "global",
        description="global: rank all selected weights together (layers end at different sparsities); layer: "
        "prune each layer to sparsity on its own",
    )
    max_layer_sparsity: FractionTo1 | None = Field(
        None,
        gt=0,
        le=1,
        description="no layer loses more than this fraction of its weights; must be >= sparsity; null: 0.99, or "
        "halfway between the target and 1 when the target is above 0.98",
    )
    layer_sparsity: dict[str, LayerFraction] | None = Field(
        None,
        max_length=MAX_LAYER_VALUES,
        description="per-layer sparsity {layer name: fraction}, overriding sparsity for the listed layers; not "
        "with sparsity: auto",
    )

    @field_validator("target")
    @classmethod
    def _target_with_auto(cls, value: float | None, info: ValidationInfo) -> float | None:
        if "sparsity" not in info.data:
            return value  # sparsity itself is invalid: that error says enough
        auto = info.data["sparsity"] == AUTO
        if auto and value is None:
            raise ValueError(
                "sparsity: auto needs target, the fraction of the selected weights to prune in total (e.g. "
                "target: 0.9); the per-layer sparsities are then chosen from a sensitivity analysis"
            )
        if not auto and value is not None:
            raise ValueError(
                f"is only read with sparsity: auto; sparsity {info.data['sparsity']:g} is already the target: "
                "remove target, or set sparsity: auto to have the per-layer values chosen for you"
            )
        return value

    @field_validator("layer_sparsity")
    @classmethod
    def _layer_values(cls, value: dict[str, float] | None, info: ValidationInfo) -> dict[str, float] | None:
        if value is None:
            return value
        if info.data.get("sparsity") == AUTO:
            raise ValueError(
                "sparsity: auto asks sparsekit to choose the per-layer values, layer_sparsity gives them: use one "
                "(remove layer_sparsity, or give sparsity a number)"
            )
        if not value:
            raise ValueError("is empty: list at least one layer (name: fraction), or remove layer_sparsity")
        cap = info.data.get("max_layer_sparsity")
        if cap is not None:
            over = {n: v for n, v in value.items() if v > cap}
            if over:
                name, v = next(iter(over.items()))
                raise ValueError(
                    f"{short(name, 60)}: {v:g} is above max_layer_sparsity ({cap:g}); raise max_layer_sparsity "
                    "or lower the layer's value"
                )
        return value

    @model_validator(mode="after")
    def _listed_layers_selected(self) -> _Ranked:
        # A layer_sparsity name the entry's own layers leave out is known from the patterns alone: recipe-only
        # validate said "valid" and prune refused it once the model loaded ("is not a layer this entry selects").
        for name in self.layer_sparsity or {}:
            why = self.layers.leaves_out(name)
            if why:
                raise ValueError(
                    f"layer_sparsity names {short(name, 60)!r}, which {why}: it is no layer of this entry; remove it "
                    "from layer_sparsity, or select it in layers"
                )
        return self

    @model_validator(mode="after")
    def _layer_cap(self) -> _Ranked:
        aim = self.final_sparsity
        if self.max_layer_sparsity is None:
            highest = max([aim, *(self.layer_sparsity or {}).values()])
            self.max_layer_sparsity = max(DEFAULT_MAX_LAYER_SPARSITY, (1 + highest) / 2)
        elif self.max_layer_sparsity < aim:
            where = "every layer" if self.scope == "layer" else "the selected layers together"
            name = "target" if self.auto else "sparsity"
            raise ValueError(
                f"max_layer_sparsity ({self.max_layer_sparsity:g}) is below {name} ({aim:g}): no layer "
                f"may pass {self.max_layer_sparsity:g}, so {where} cannot reach {aim:g}; raise "
                f"max_layer_sparsity (at most 1) or lower {name}"
            )
        schedule = getattr(self, "schedule", None)
        init = getattr(schedule, "init_sparsity", 0.0) or 0.0
        if init > aim:
            name = "target" if self.auto else "sparsity"
            raise ValueError(
                f"schedule.init_sparsity ({init:g}) is above {name} ({aim:g}): the schedule would lower the "
                f"sparsity it starts at, and pruned weights never come back; make init_sparsity at most {aim:g}"
            )
        return self

    def effects(self) -> frozenset[str]:
        return frozenset({"zeros"})

    @property
    def auto(self) -> bool:
        """True while ``sparsity`` is ``auto`` (per-layer values not chosen yet)."""
        return self.sparsity == AUTO

    @property
    def final_sparsity(self) -> float:
        """The entry's overall target as a number: ``sparsity``, or ``target`` for ``sparsity: auto``."""
        if self.sparsity == AUTO:
            return float(self.target or 0.0)
        return float(self.sparsity)

    @property
    def layer_cap(self) -> float:
        """``max_layer_sparsity`` as resolved at validation (never None)."""
        return float(self.max_layer_sparsity if self.max_layer_sparsity is not None else 1.0)


class MagnitudeSpec(_Ranked):
    """``method: magnitude``: prune the smallest |w| to ``sparsity`` (see :mod:`sparsekit.methods.magnitude`)."""

    method: Literal["magnitude"] = Field(description="magnitude: zero the weights with the smallest |w|")
    schedule: ScheduleSpec = Field(
        default_factory=ScheduleSpec,
        description="when the masks grow toward sparsity: gradual from start_epoch to end_epoch, or oneshot; "
        "default: oneshot at epoch 0",
    )


class GradientSpec(_Ranked):
    """``method: gradient``: prune by taylor or movement scores (see :mod:`sparsekit.methods.gradient`)."""

    method: Literal["gradient"] = Field(
        description="gradient: zero the weights whose first-order effect on the loss is smallest (reads the "
        "gradients of fine-tuning steps, or of calibration batches when finetune.epochs is 0)"
    )
    criterion: Literal["taylor", "movement"] = Field(
        "taylor",
        description="the score: taylor (|w * dL/dw| summed since the last mask update) or movement (-w * dL/dw "
        "summed over the run: weights moving toward zero are pruned)",
    )
    schedule: ScheduleSpec = Field(
        default_factory=ScheduleSpec,
        description="when the masks grow toward sparsity: gradual from start_epoch to end_epoch, or oneshot; "
        "default: oneshot at epoch 0",
    )
    calibration_batches: Int = Field(
        8,
        gt=0,
        le=MAX_CALIBRATION,
        description="training batches whose gradients score the weights when finetune.epochs is 0",
    )
    score_every: Int = Field(
        1,
        gt=0,
        le=10_000,
        description="sum the scores on every N-th optimizer step, counted back from each mask update (whose own "
        "step always counts); 1 (default): every step. Each summed step costs about three passes over the "
        "weights; fewer make a noisier estimate (taylor lost accuracy at 4: benchmarks/README.md in the sparsekit "
        "repository)",
    )


class L1Spec(_MethodBase):
    """``method: l1``: L1 / group-lasso penalty or proximal step (see :mod:`sparsekit.methods.l1`).

    ``strength`` is the penalty weight lambda of ``loss + lambda * sum|w|`` (group lasso: ``lambda * sum_g
    ||w_g||_2``); the proximal step shrinks by ``lr * lambda``, ``lr`` being the optimizer's learning rate at
    that step. In sparsekit 0.1.0 it was the raw shrink per step, the same at every step: divide such a value by the
    learning rate, which keeps the old run under a constant rate only (see ``strength``'s migration note).
    With ``target``, ``strength`` is only the starting lambda: it is raised or lowered on the way so that the
    fraction of weights (of units, with ``group``) at zero follows the schedule up to ``target`` by
    ``schedule.end_epoch``."""

    method: Literal["l1"] = Field(
        description="l1: drive weights toward zero with an L1 (or group-lasso) penalty or proximal step during "
        "fine-tuning; with target, lambda adapts until that fraction is zero by schedule.end_epoch"
    )
    strength: Float = Field(
        gt=0,
        le=MAX_STRENGTH,
        description="lambda, the penalty weight in loss + lambda * sum|w| (group: lambda * sum of the units' L2 "
        "norms), as in Keras' l1(lambda) or weight decay: typical 1e-5..1e-2; proximal mode shrinks by lr * lambda "
        "after each optimizer step (lr: the optimizer's current learning rate), so both modes minimize the same "
        "objective under plain SGD (with momentum beta, the penalty's pull is amplified by 1/(1 - beta) and the "
        "proximal step is not: proximal then acts like a penalty of (1 - beta) * lambda; one lambda is shared by "
        "the layers, units are not weighted by their size); with target, the starting lambda (penalty mode: "
        "adapted up to 10x it). Migration: recipes written for sparsekit 0.1.0 used proximal "
        "strength as the shrink per step itself, the same at every step whatever the learning-rate schedule did; "
        "dividing such a value by finetune.optimizer.lr keeps the old run under a constant rate only: under a "
        "schedule the shrink now falls with the rate (cosine over the run: about half the old total; step: less "
        "still), so divide by the run's mean rate instead for the old total, or, in your own loop, call "
        "pruner.step(lr=the starting rate) for the old shrink at every step",
    )
    mode: Literal["penalty", "proximal"] = Field(
        "penalty",
        description="penalty (adds lambda * the L1 term to the loss; weights get small, not exactly zero: use "
        "threshold) or proximal (soft-thresholds the weights by lr * lambda after every optimizer step: exact zeros)",
    )
    group: Literal["none", "row", "channel"] = Field(
        "none",
        description="none: each weight on its own; row: group lasso over each output unit of a Linear layer; "
        "channel: over each output channel of a Conv layer (whole units go to zero). A unit's group also holds the "
        "gamma and beta of a BatchNorm or InstanceNorm on it, and the same unit of every selected layer a residual "
        "add or a depthwise conv couples to it (found on model.input_shape), so that a zeroed unit can be removed "
        "(before a norm without gamma and beta, a dead unit's bias and running mean are held at 0)",
    )
    proximal_every: Int = Field(
        4,
        ge=1,
        le=MAX_STEPS,
        description="proximal mode: optimizer steps between proximal steps, each shrinking by the sum of lr * lambda "
        "over them (truncated gradient, Langford et al. 2009: the same objective, a quarter of the per-step cost at "
        "4); 1: after every step",
    )
    target: Annotated[Float, _fraction_or_auto("gt", auto=False)] | None = Field(
        None,
        gt=0,
        lt=1,
        description="fraction of the selected weights (group row/channel: of the output units) to be zero by "
        "schedule.end_epoch, which must then be a finite epoch <= finetune.epochs; lambda is raised while the zero "
        "fraction is behind the schedule's curve and lowered when ahead, never more zeros than the curve allows "
        "(lambda above strength shrinks, or penalizes, only the weakest units still to be zeroed), no layer past "
        "(1 + target) / 2 of its units (weights: the larger of that and 0.99; a target those caps cannot reach is "
        "refused once the model is "
        "known, validate MODEL included), and at end_epoch the weakest weights/units are zeroed if any "
        "are missing (report: topped_up). Units another entry removed (structured) count as zero, and without groups "
        "so do the weights a layer lost with the inputs a structured entry removed upstream. In penalty mode a "
        "subgradient makes no exact zeros and lambda stays at most 10x strength and at most threshold / lr (a step "
        "must not swing a unit past the threshold; this can hold it below strength), so most or all of the target is "
        "usually met by that zeroing at end_epoch, with the penalty having shrunk those units first; proximal mode "
        "reaches it on the way. With group and remove_dead it counts only units finalize can remove: a layer whose "
        "units cannot go (feeding a grouped conv or a weight_norm layer, ...) is left out of the entry (report: "
        "target_left_out), and an entry left with no layer is refused. null: no target",
    )
    threshold: Float = Field(
        0.0,
        ge=0,
        le=MAX_MAGNITUDE,
        description="weights with |w| (group: units with norm) below this count as zero: they become exact, masked "
        "zeros at the end (at end_epoch with target); 0: only exact zeros (penalty mode with target: below 1e-3 of "
        "the mean |w| or unit norm at the start)",
    )
    remove_dead: bool = Field(
        True,
        description="at finalize, neurons/channels left all-zero are removed physically where the outputs stay the "
        "same (with group: row | channel a unit's bias is held at 0 from its death on, as removing it does; a bias the "
        "threshold leaves at finalize is folded forward); the report's cannot_remove names each layer whose zeroed "
        "units stay, and why",
    )
    # Regularize the whole run unless told otherwise: FOREVER_EPOCHS is past any finetune.epochs.
    schedule: ScheduleSpec = Field(
        default_factory=lambda: ScheduleSpec(end_epoch=FOREVER_EPOCHS),
        description="the epochs in which the penalty or proximal step is active; default: the whole run "
        "(end_epoch may pass finetune.epochs, except with target); with target, the curve (curve, init_sparsity, "
        "every) the zero fraction follows",
    )

    @field_validator("schedule")
    @classmethod
    def _window_not_empty(cls, schedule: ScheduleSpec) -> ScheduleSpec:
        # The method refuses an empty window when it is built (a model known); `validate RECIPE` alone called
        # `schedule: oneshot` valid ("0.5 of the units zero by epoch 0"), then prune refused it after loading.
        if schedule.end_epoch <= schedule.start_epoch:
            raise ValueError(
                "l1 acts on every step from start_epoch up to end_epoch, and this window is empty (start_epoch="
                f"{schedule.start_epoch:g}, end_epoch={schedule.end_epoch:g}); give an end_epoch after start_epoch, "
                "or leave schedule out to regularize the whole run"
            )
        return schedule

    @model_validator(mode="after")
    def _target_needs(self) -> L1Spec:
        if self.target is None:
            return self
        if self.schedule.end_epoch >= FOREVER_EPOCHS:
            raise ValueError(
                "target needs schedule.end_epoch: the epoch by which the target fraction is zero (e.g. schedule: "
                "{start_epoch: 0, end_epoch: 3}), at most finetune.epochs"
            )
        if self.schedule.init_sparsity >= self.target:
            raise ValueError(
                f"schedule.init_sparsity ({self.schedule.init_sparsity:g}) must be below target ({self.target:g})"
            )
        return self

    def effects(self) -> frozenset[str]:
        # Group lasso drives whole units to zero, which remove_dead then removes; plain L1 makes scattered
        # zeros, and a unit only rarely loses every weight.
        if self.group != "none":
            return frozenset({"units"} if self.remove_dead else {"zeros"})
        return frozenset({"zeros", "some_units"} if self.remove_dead else {"zeros"})


class MaxNormSpec(_MethodBase):
    """``method: max_norm``: bound each output unit's incoming-weight norm (see :mod:`sparsekit.methods.max_norm`)."""

    method: Literal["max_norm"] = Field(
        description="max_norm: after every optimizer step, rescale each output unit's incoming weights so their "
        "L2 norm is at most max_value (a constraint; it makes no zeros)"
    )
    max_value: Float = Field(
        ge=MIN_MAX_NORM,
        le=MAX_MAGNITUDE,
        description="the bound on each output unit's incoming-weight L2 norm (bias excluded)",
    )


class StructuredSpec(_MethodBase):
    """``method: structured``: remove a ``ratio`` of output channels (see :mod:`sparsekit.methods.structured`).

    Per-layer values:

    - ``layer_ratio: {layer: fraction}`` removes that fraction of each listed layer's output channels
      (0 keeps the layer whole), each ranked within the layer (torch-pruning's ``pruning_ratio_dict``);
      selected layers not listed lose ``ratio`` as ``scope`` says. Names are layers whose output channels the
      entry removes (not ``ignore``\'d; for channels coupled across layers, e.g. a residual add, the layer
      torch-pruning roots the group at); a selected layer that cannot lose channels (coupled to an ``ignore``\'d
      one) may be listed with 0, as an allocated entry lists it.
    - ``ratio: auto`` with exactly one of ``target_macs`` (the pruned model keeps this fraction of the dense
      model's multiply-accumulates per sample, over all its Linear/Conv layers and attention's projections) or
      ``target_latency`` (this fraction of the dense model's onnxruntime latency, as
      :func:`sparsekit.allocation.allocate` measures it) asks sparsekit to choose ``layer_ratio`` from a per-layer
      sensitivity analysis; a prune run does
      it before training. A Pruner refuses an entry still holding ``auto``. The allocated entry reads
      ``ratio: <fraction of the selected channels removed>, scope: layer, layer_ratio: {...}``.

    ``round_to`` (default 16, chosen with benchmarks/structured_latency.py of the sparsekit repository; ``null`` or
    1: off) aligns channel counts for onnxruntime's CPU kernels: a group sized by ``ratio`` (not listed in
    ``layer_ratio``) that loses channels keeps the nearest multiple of ``round_to`` (a tie keeps more; torch-pruning's
    ``round_to`` rounds down), or the first multiple at or above ``min_channels``; groups narrower than twice
    ``round_to`` align to half of it when it is even (16-31 channels to 8), and narrower groups keep any count
    (a group's width when first pruned decides: with ``steps`` > 1 every step keeps that multiple).
    ``layer_ratio`` values keep their exact counts (the allocator aligns them itself for ``target_latency``)."""

    method: Literal["structured"] = Field(
        description="structured: remove whole neurons/channels (torch-pruning's dependency graph), so the model "
        "gets smaller and faster; sized by ratio, not sparsity"
    )
    ratio: RatioValue = Field(
        description="fraction of the selected layers' output channels removed (0.5 removes half; structured has "
        "no sparsity key), of those they have at the entry's first removal (after an earlier structured entry's, "
        "of the channels left); or auto, with target_macs or target_latency, to have per-layer ratios chosen"
    )
    target_latency: Fraction | None = Field(
        None,
        gt=0,
        lt=1,
        validate_default=True,
        description="with ratio: auto, the fraction of the dense model's onnxruntime latency to reach (give it or "
        "target_macs, not both); refused otherwise",
    )
    target_macs: Fraction | None = Field(
        None,
        gt=0,
        lt=1,
        validate_default=True,
        description="with ratio: auto, the fraction of the dense model's multiply-accumulates per sample to keep "
        "(give it or target_latency, not both); refused otherwise",
    )
    layer_ratio: dict[str, LayerFraction] | None = Field(
        None,
        max_length=MAX_LAYER_VALUES,
        description="per-layer channel ratio {layer name: fraction} (0 keeps a layer whole), overriding ratio for "
        "the listed layers; not with ratio: auto",
    )
    importance: Literal["l1", "l2", "taylor", "bn_scale"] = Field(
        "l2",
        description="how channels are ranked: l1 / l2 (norm of the weights a channel owns), taylor (|w * dL/dw|; "
        "needs fine-tuning steps or calibration batches), bn_scale (the channel's BatchNorm scale; needs BatchNorm)",
    )
    scope: Literal["layer", "global"] = Field(
        "layer",
        description="layer: each layer loses ratio of its channels; global: channels ranked across the selected "
        "layers together (layers lose different fractions)",
    )
    steps: Int = Field(
        1,
        gt=0,
        le=MAX_STRUCTURED_STEPS,
        description="removal events, each removing a further ratio / steps: one at the start of each of steps "
        "equal slices of schedule.start_epoch to end_epoch (steps: 2 over epochs 0 to 2: at 0 and 1), so the last is "
        "followed by fine-tuning inside the window; 1: one removal, at start_epoch (end_epoch is then not read)",
    )
    schedule: ScheduleSpec = Field(
        default_factory=ScheduleSpec,
        description="when channels are removed: the steps events, one at the start of each of steps equal slices "
        "of start_epoch to end_epoch (the final ratio is reached at the last, a slice before end_epoch); default: "
        "oneshot at epoch 0",
    )
    ignore: list[str] | None = Field(
        None,
        description="modules (names or shell globs) whose output channels are never removed; null: the classifier "
        "head (the layers that produce the model's output, found by tracing it)",
    )
    min_channels: Int = Field(
        1,
        gt=0,
        le=MAX_CHANNELS,
        description="floor: no layer keeps fewer output channels (a per-layer ratio (scope: layer, layer_ratio) "
        "that leaves a layer no channel at all is refused, not raised to the floor)",
    )
    # 16 from benchmarks/structured_latency.py: unaligned counts (11/22/44) made 30% removal slower than
    # dense in onnxruntime's CPU kernels; multiples of 8 made every measured arm faster, and multiples of 16
    # (the block of its AVX-512 kernels, two of its AVX2 ones) faster still: small_cnn at 30% 0.50x of dense
    # at batch 32 instead of 0.88x, no measured arm slower than with 8.
    round_to: Int | None = Field(
        16,
        gt=0,
        le=MAX_CHANNELS,
        description="channel alignment: a group sized by ratio keeps a multiple of this many channels, a group "
        "narrower than twice it (when first pruned: every removal step keeps the same multiple) a multiple of half of "
        "it when it is even (default 16, measured fastest on onnxruntime "
        "CPU; null or 1: any count); layer_ratio layers keep their exact counts; ratio: auto with target_macs "
        "allocates whole blocks of it",
    )
    calibration_batches: Int = Field(
        8,
        gt=0,
        le=MAX_CALIBRATION,
        description="training batches scored for importance: taylor when finetune.epochs is 0",
    )

    @field_validator("target_latency", "target_macs")
    @classmethod
    def _targets_with_auto(cls, value: float | None, info: ValidationInfo) -> float | None:
        if "ratio" not in info.data:
            return value  # ratio itself is invalid: that error says enough
        ratio = info.data["ratio"]
        if ratio != AUTO:
            if value is not None:
                raise ValueError(
                    f"is only read with ratio: auto; ratio {ratio:g} already says how much to remove: remove "
                    f"{info.field_name}, or set ratio: auto to have the per-layer ratios chosen for you"
                )
            return value
        if info.field_name == "target_macs":  # validated after target_latency: both are known here
            latency = info.data.get("target_latency")
            if value is None and latency is None and "target_latency" in info.data:
                raise ValueError(
                    "ratio: auto needs target_macs (the fraction of the dense model's MACs to keep, e.g. "
                    "target_macs: 0.5) or target_latency (the fraction of its onnxruntime latency)"
                )
            if value is not None and latency is not None:
                raise ValueError("give one of target_macs and target_latency, not both")
        return value

    @field_validator("layer_ratio")
    @classmethod
    def _layer_ratios(cls, value: dict[str, float] | None, info: ValidationInfo) -> dict[str, float] | None:
        if value is None:
            return value
        if info.data.get("ratio") == AUTO:
            raise ValueError(
                "ratio: auto asks sparsekit to choose the per-layer ratios, layer_ratio gives them: use one "
                "(remove layer_ratio, or give ratio a number)"
            )
        if not value:
            raise ValueError("is empty: list at least one layer (name: fraction), or remove layer_ratio")
        return value

    @property
    def auto(self) -> bool:
        """True while ``ratio`` is ``auto`` (per-layer ratios not chosen yet)."""
        return self.ratio == AUTO

    def ratio_of(self, layer: str) -> float:
        """The fraction of ``layer``'s output channels this entry removes: its ``layer_ratio`` value, else
        ``ratio`` (0.0 while ``ratio`` is ``auto``)."""
        if self.layer_ratio is not None and layer in self.layer_ratio:
            return float(self.layer_ratio[layer])
        return 0.0 if self.ratio == AUTO else float(self.ratio)

    def effects(self) -> frozenset[str]:
        return frozenset({"units"})


MethodSpec = Annotated[
    MagnitudeSpec | GradientSpec | L1Spec | MaxNormSpec | StructuredSpec, Field(discriminator="method")
]
"""One entry of ``pruning``: the spec class is chosen by its ``method:`` value."""

METHOD_SPECS: tuple[type[_MethodBase], ...] = get_args(get_args(MethodSpec)[0])
"""The spec class of every method, in the union's order."""

METHOD_NAMES: tuple[str, ...] = tuple(get_args(spec.model_fields["method"].annotation)[0] for spec in METHOD_SPECS)
"""Every ``method:`` name the schema accepts, derived from :data:`MethodSpec` (the one list of names in
this module). ``sparsekit.methods.REGISTRY`` must hold the same names (a test checks it); this module
does not import it, so that validating a recipe imports no torch."""


_CURVE_KEYS = {"every": 1, "init_sparsity": 0.0, "curve": "cubic"}
"""The schedule keys that shape a sparsity curve, with their defaults: ``structured`` (removal events set by ``steps``)
and ``l1`` without a ``target`` (acting on every step of its window) read only start_epoch and end_epoch."""


def unread_schedule_keys(entry: Mapping[str, Any]) -> list[str]:
    """The ``schedule`` keys a ``pruning`` entry (as a mapping, e.g. ``spec.model_dump()`` or report.json's recipe)
    sets away from their defaults but its method never reads: ``every``, ``init_sparsity`` and ``curve`` of a
    ``structured`` entry or of an ``l1`` entry without ``target``. Such a recipe ran with one removal event where
    ``every: 0.5`` asked for one each half epoch, and nothing said so; validate and the report now do."""
    method = entry.get("method")
    if method != "structured" and not (method == "l1" and entry.get("target") is None):
        return []
    schedule = entry.get("schedule")
    if not isinstance(schedule, Mapping):
        return []
    unread = [key for key, default in _CURVE_KEYS.items() if key in schedule and schedule[key] != default]
    # structured's one removal (steps: 1) comes at start_epoch: an end_epoch after it, written as for a gradual
    # magnitude schedule, changed nothing and nothing said so.
    start, end = schedule.get("start_epoch", 0), schedule.get("end_epoch", 0)
    if method == "structured" and entry.get("steps", 1) == 1 and end != start:
        unread.insert(0, "end_epoch")
    return unread


def unread_schedule_words(entry: Mapping[str, Any]) -> str:
    """Why :func:`unread_schedule_keys` are not read and what to write instead; '' when there are none."""
    keys = unread_schedule_keys(entry)
    if not keys:
        return ""
    names = [f"schedule.{k}" for k in keys]
    named = (", ".join(names[:-1]) + " and " + names[-1] + " are") if len(names) > 1 else f"{names[0]} is"
    if entry.get("method") == "structured":
        how = "with steps: 1 (its one removal comes at start_epoch)" if "end_epoch" in keys else ""
        return (
            f"{named} not read by structured{' ' + how if how else ''}: it removes channels in its steps events, "
            "one at the start of each of steps equal slices of start_epoch to end_epoch; steps: 4 makes four removals"
        )
    return f"{named} not read by l1 without target: it acts on every step from start_epoch to end_epoch"


def _differs(a: Any, b: Any) -> bool:
    """``a != b`` for a field's value as assigned and as validated: an array assigned (``batch_sizes =
    np.array([1, 32])``) compares elementwise, and its truth value raised ValueError out of the recipe's check."""
    try:
        return bool(a != b)
    except (ValueError, TypeError, RuntimeError):
        return True


def _keep_fields_set(old: BaseModel, new: BaseModel) -> None:
    """Mark in ``new`` (validated from ``old``'s dump with some values changed, e.g. an allocation's per-layer
    values) the fields ``old`` had written, and those whose value changed, as set, at every depth. A dump
    validated again has every field set: validate then named defaults the user never wrote as unread
    (``momentum`` beside adam), and an l1 target adapted once per epoch (``schedule.every``'s default) instead
    of 16 times, whenever an ``auto`` entry beside it was allocated."""
    if type(old) is not type(new):
        return
    changed = {k for k in type(new).model_fields if _differs(getattr(old, k), getattr(new, k))}
    new.__pydantic_fields_set__ = (set(old.model_fields_set) | changed) & set(new.model_fields_set)
    for name in type(new).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        if isinstance(a, BaseModel) and isinstance(b, BaseModel):
            _keep_fields_set(a, b)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for x, y in zip(a, b, strict=True):
                if isinstance(x, BaseModel) and isinstance(y, BaseModel):
                    _keep_fields_set(x, y)


def unread_finetune_keys(finetune: FinetuneSpec) -> list[str]:
    """The ``finetune`` keys written in the recipe that the run will not read, each with why: ``momentum`` beside
    ``adam``/``adamw``, ``step_size``/``gamma`` beside a schedule that is not ``step``, and with ``epochs: 0`` (no
    training) the optimizer, LR schedule and ``distill``. They validate (each is a sound value), but a recipe that
    sets ``gamma: 0.5`` under ``name: constant`` expects a decay it will not get; validate says so."""
    unread: list[str] = []
    opt, sched = finetune.optimizer, finetune.lr_schedule
    if finetune.epochs == 0:
        written = [
            f"finetune.{k}"
            for k in ("optimizer", "lr_schedule", "distill", "max_steps_per_epoch")
            if k in finetune.model_fields_set and getattr(finetune, k) is not None
        ]
        if written:
            unread.append(f"{', '.join(written)}: not read with finetune.epochs: 0 (no training)")
        return unread
    if opt.name != "sgd" and "momentum" in opt.model_fields_set:
        unread.append(f"finetune.optimizer.momentum: read by sgd only ({opt.name} has its own betas, torch's defaults)")
    if sched.name != "step":
        written = [f"finetune.lr_schedule.{k}" for k in ("step_size", "gamma") if k in sched.model_fields_set]
        if written:
            unread.append(f"{' and '.join(written)}: read by name: step only (the schedule is {sched.name})")
    if sched.name == "constant" and "hold_epochs" in sched.model_fields_set:
        unread.append("finetune.lr_schedule.hold_epochs: read by name: cosine or step only (the schedule is constant)")
    elif sched.name != "constant" and first_lowered_epoch(sched.name, sched.hold_epochs, sched.step_size) >= (
        finetune.epochs
    ):
        # Not refused: a shipped recipe's hold equals its pruning's end_epoch, and `--set finetune.epochs=3` on it (a
        # shorter run that still reaches the target) is a fair thing to ask; the rate then stays up to the end.
        # Judged by the first epoch whose rate is lowered, not by hold_epochs >= epochs: the first epoch of a cosine
        # decay still trains at the full rate (cos 0 = 1), and a step decay's first step_size epochs do, so
        # `hold_epochs: 3` over 4 epochs trained every epoch at the full rate without a word.
        first = first_lowered_epoch(sched.name, sched.hold_epochs, sched.step_size)
        held = f" after hold_epochs: {sched.hold_epochs}" if sched.hold_epochs else ""
        fix = f"raise finetune.epochs to at least {first + 1}"
        if sched.hold_epochs:
            most = sched.hold_epochs - (first - finetune.epochs) - 1  # the largest hold whose decay starts in time
            fix = f"lower hold_epochs to at most {most}, or {fix}" if most >= 0 else fix
        if sched.name == "step" and finetune.epochs - sched.hold_epochs > 1:
            fix = f"lower step_size to at most {finetune.epochs - sched.hold_epochs - 1}, or {fix}"
        unread.append(
            f"finetune.lr_schedule: the {sched.name} decay{held} first lowers the rate in epoch {first + 1}, past "
            f"finetune.epochs ({finetune.epochs}): every epoch trains at the full rate ({fix}, for a decay)"
        )
    return unread


def first_lowered_epoch(name: str, hold_epochs: int, step_size: int) -> int:
    """The first epoch (from 0) that ``lr_schedule`` ``name`` (cosine or step) trains below the full rate: the
    decay's own first epoch is at the full rate (cosine's factor at its start is 1; step keeps it for ``step_size``
    epochs), so it is ``hold_epochs + 1`` for cosine and ``hold_epochs + step_size`` for step (see
    :class:`sparsekit.train.HeldDecay`)."""
    return hold_epochs + (1 if name == "cosine" else step_size)


def pruning_key(recipe: Recipe) -> str:
    """``recipe``'s pruning section as canonical JSON text: what the masks in a checkpoint mean. A resume
    (the CLI's, or a trainer callback's) is refused when the key it saved differs."""
    import json

    return json.dumps([m.model_dump(mode="json") for m in recipe.pruning], sort_keys=True)


class ExportSpec(_Strict):
    """``export:``: ONNX opset and exporter, int8 quantization, sparse storage."""

    onnx: bool = Field(
        True,
        description="must be true: sparsekit prune always writes model.onnx and dense.onnx (the parity check, sizes "
        "and benchmark read them); false is refused rather than silently ignored",
    )

    @field_validator("onnx")
    @classmethod
    def _onnx_always(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "false is not supported: a prune run always writes model.onnx and dense.onnx, because its parity "
                "check, sizes and benchmark measure them; remove export.onnx (use model.pt alone if you need no ONNX)"
            )
        return value

    opset: Int = Field(18, ge=13, le=23, description="ONNX opset (default domain) of the exported files")
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="none, or int8: also write model.int8.onnx (int8 QDQ calibrated on training batches; its "
        "accuracy is in the report)",
    )
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto",
        description="torch's ONNX exporter: dynamo (torch.export based), torchscript, or auto (the TorchScript "
        "exporter's file when it is valid, it is much faster on small models; else dynamo)",
    )
    # StrictBool: "yes"/"on" are typos of "auto" more often than they mean true.
    sparse_storage: Literal["auto"] | StrictBool = Field(
        "auto",
        description="how model.onnx stores its weights: auto (sparse initializers when that file is smaller "
        "after gzip -9 and onnxruntime gives bit-identical outputs, else dense), true (always sparse), false "
        "(always dense); the run itself always works on the dense file",
    )


class BenchmarkSpec(_Strict):
    """``benchmark:``: onnxruntime latency measurement (batch sizes, threads, warm-up and timed runs, time
    budget, early stop)."""

    enabled: bool = Field(
        True, description="time the dense and pruned ONNX models in onnxruntime after export; false: skip"
    )
    batch_sizes: list[Annotated[Int, Field(gt=0, le=MAX_BATCH)]] = Field(
        default_factory=lambda: [1, 32],
        min_length=1,
        max_length=64,
        description="batch sizes timed, each reported on its own (latency p50/p90/p99, throughput)",
    )
    threads: Int = Field(1, gt=0, le=MAX_THREADS, description="onnxruntime intra-op threads")
    warmup: Int = Field(20, ge=0, le=MAX_RUNS, description="untimed runs per model and batch size before timing")
    runs: Int = Field(
        200,
        gt=0,
        le=MAX_RUNS,
        description="most timed runs per model and batch size (fewer when budget_s runs out or precision is reached)",
    )
    budget_s: Float | None = Field(
        2.0,
        gt=0,
        le=3600,
        description="seconds of timed runs per model and batch size: timing stops once they are spent, after at "
        "least 25 runs each (a large model's benchmark stays short); null: exactly runs",
    )
    precision: FractionFrom0 | None = Field(
        0.02,
        ge=0,
        lt=1,
        description="with budget_s: timing also stops once every latency ratio (the A/A control's too) is known to "
        "within this fraction (half the spread of its per-block ratios), checked after a tenth of the budget; "
        "0 or null: only budget_s or runs stop it",
    )


class _InvalidRecipe(RecipeError, ValueError):
    """``Recipe(...)``'s error: a RecipeError that code written against the pydantic error it was (a ValueError)
    still catches."""


class Recipe(_Strict):
    """A whole recipe. ``Recipe(**mapping)`` validates (a :class:`~sparsekit.errors.RecipeError` naming the field);
    prefer :func:`load_recipe` for files."""

    def __init__(self, /, **data: Any) -> None:
        # The constructor is Python API too: its error is a RecipeError (every library error is a SparsekitError),
        # worded as load_recipe words a dict's, not pydantic's dump ("finetune.epoch  Extra inputs are not
        # permitted [type=extra_forbidden, ...]") without the key meant.
        try:
            super().__init__(**data)
        except ValidationError as err:
            # (its remedies spelled as keys of the arguments: Recipe(...) takes no overrides=[...])
            raise _InvalidRecipe(render(format_validation_error(err, "Recipe(...)"), _in_the_dict)) from None

    # Validation itself (model_validate, with its context) must not run through this __init__: pydantic calls a
    # custom __init__ from the validator, without the context, and would wrap its RecipeError as a ValueError.
    # The mark is the one pydantic's own BaseModel.__init__ and RootModel.__init__ carry.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    version: Annotated[Literal[1], BeforeValidator(_number)] = Field(
        1, description="recipe format version; 1 is the only one"
    )
    seed: Int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seeds torch, numpy's and Python's generators (under torchrun the last two with seed + rank), the "
        "data split, the batch order and synthetic data: the same seed repeats a run",
    )
    model: ModelSpec = Field(
        default_factory=ModelSpec,
        description="how to build the model: {factory, kwargs, input_shape}; optional for a sparsekit checkpoint",
    )
    data: DataSpec = Field(
        default_factory=DataSpec,
        description="training and validation data: {source, batch_size, val_fraction, normalize, synthetic_samples}",
    )
    finetune: FinetuneSpec = Field(
        default_factory=FinetuneSpec,
        description="the training loop run while pruning: epochs, optimizer, lr_schedule, distill, ...",
    )
    pruning: list[MethodSpec] = Field(
        default_factory=list,
        description="the pruning entries, applied together, each on its own schedule; each picks its kind with "
        "method: magnitude | gradient | l1 | max_norm | structured; empty: fine-tune and export only",
    )
    export: ExportSpec = Field(
        default_factory=ExportSpec, description="ONNX export: {opset, exporter, quantize, sparse_storage}"
    )
    benchmark: BenchmarkSpec = Field(
        default_factory=BenchmarkSpec,
        description="onnxruntime latency measurement: "
        "{enabled, batch_sizes, threads, warmup, runs, budget_s, precision}",
    )
    # The file this recipe was read from (set by load_recipe; None when built in Python). Not a
    # field: it never appears in the schema, the YAML or model_dump().
    _source: str | None = PrivateAttr(default=None)
    # The key paths the caller's overrides set (load_recipe's ``overrides``, the CLI's set option): a callable
    # or path named there is the caller's own choice, not the file's (sparsekit.trust).
    _overridden: frozenset[str] = PrivateAttr(default=frozenset())
    _overrides: tuple[str, ...] = PrivateAttr(default=())  # the overrides themselves, to name in errors
    # Validated for a trainer callback (validate_recipe's trainer): checked again as such when handed on.
    _trainer: bool = PrivateAttr(default=False)

    @property
    def source(self) -> str | None:
        """Path of the YAML file this recipe came from, or None."""
        return self._source

    def overridden(self, key: str, *, inside: bool = False) -> bool:
        """Whether the caller's overrides set ``key`` (``"data.source"``), itself or a mapping holding it
        (``data={...}``), rather than the recipe file; with ``inside``, also when they set a part of it
        (``model.kwargs.width`` for ``model.kwargs``)."""
        return any(_covers(k, key) or (inside and _covers(key, k)) for k in self._overridden)

    def keep_origin(self, new: Recipe) -> Recipe:
        """``new`` (a recipe derived from this one) marked as coming from the same file and overrides, with the
        fields this one's recipe wrote marked as written (:func:`_keep_fields_set`)."""
        new._source, new._overridden, new._overrides = self._source, self._overridden, self._overrides
        new._trainer = self._trainer
        _keep_fields_set(self, new)
        return new

    def blame(self, message: str, decided_by: Sequence[str] | None = None) -> str | None:
        """What holds the faulty value of an error ``message`` that starts with a field path
        (``pruning[0].layers.include: ...``), to put before it: the recipe file, the caller's overrides
        that set that field (the file does not hold the value), or the file with the overrides the
        message involves (one set a part of that field, or another field it names). ``decided_by``: for an
        error about a whole list (``pruning: no magnitude ... entry``), the fields of its entries that decide it
        (``["method"]``): an override of another part of an entry is then no cause and is not named. None for a
        recipe built in Python without overrides."""
        return blame(self._source, self._overrides, message, decided_by)

    def __eq__(self, other: object) -> bool:
        # Two recipes are equal when their contents are; where one was read from does not matter.
        if not isinstance(other, Recipe):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like every pydantic model

    @model_validator(mode="after")
    def _within_epochs(self, info: ValidationInfo) -> Recipe:
        context = info.context or {}
        if context.get("trainer") and ("finetune" not in self.model_fields_set or context.get("finetune_unset")):
            return self  # a trainer callback's recipe: the trainer sets the epochs (checked at fit, as a warning)
        for i, m in enumerate(self.pruning):
            sched = getattr(m, "schedule", None)
            if sched is None or (m.method == "l1" and getattr(m, "target", None) is None):
                continue
            epochs = self.finetune.epochs
            if sched.end_epoch > 0 and sched.end_epoch > epochs:
                # A custom error type: format_validation_error words the two fixes as overrides the caller
                # can paste (--set in the CLI); pydantic's own text (Recipe(**dict)) names them plainly.
                raise PydanticCustomError(
                    "schedule_after_finetune",
                    "pruning[{index}].schedule.end_epoch ({end}) is after the last fine-tuning epoch "
                    "(finetune.epochs={epochs}): the target would never be reached; lower end_epoch to at most "
                    "{epochs} or raise finetune.epochs to at least {needed}",
                    {
                        "index": i,
                        "end": f"{sched.end_epoch:g}",
                        "epochs": epochs,
                        "needed": math.ceil(sched.end_epoch),
                        "start_ok": sched.start_epoch <= epochs,
                    },
                )
        return self

    @model_validator(mode="after")
    def _one_mask_per_layer(self) -> Recipe:
        # Two masking entries (magnitude, gradient) on one layer are refused by the Pruner ("both mask the weights
        # of ..."), but only once a model is given: a recipe validated alone passed, and prune then failed after
        # loading the model and data. Entries that select the same layers (the default selection, every layer, on
        # both; or the same include, exclude and types) share every layer they select on any model: say it now.
        seen: dict[tuple[frozenset[str], ...], int] = {}
        for i, m in enumerate(self.pruning):
            if not isinstance(m, _Ranked):
                continue
            chosen = (frozenset(m.layers.include), frozenset(m.layers.exclude), frozenset(m.layers.types))
            if chosen in seen:
                j = seen[chosen]
                first = self.pruning[j]
                what = "every layer (no layers: on either)" if m.layers == LayerSelect() else "the same layers"
                raise ValueError(
                    f"pruning[{j}] ({first.method}) and pruning[{i}] ({m.method}) both select {what}, so both would "
                    "mask the weights of each (one mask per layer): give each entry its own layers (layers.include, "
                    "layers.exclude), or make them one entry"
                )
            seen[chosen] = i
        return self


RECIPE_DOCS = "docs/recipe.md"
"""The recipe reference, generated from this schema by ``python -m sparsekit.recipe_docs``; every recipe
validation error points to it (:data:`SEE_DOCS`)."""
SEE_DOCS = (
    f"(the recipe reference: `sparsekit recipes {'-' * 2}reference` prints it; {RECIPE_DOCS} in a source checkout)"
)
"""How errors point to the reference: the command that prints it first, since an installed wheel holds no docs/ (a
bare "see docs/recipe.md" sent a user of the wheel to a file not on their disk), then the page in the repository."""
_BOUND_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
MAX_ERRORS_SHOWN = 8


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    added = _added_parts(loc)
    for i, part in enumerate(loc):
        if i in added:
            continue  # validator wrappers, method tags and union members pydantic adds to the location
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + short(str(part))
    return out


# How pydantic names the member of a union a value was tried against: literal['auto'], bool, list[int],
# constrained-str, or a model's class name.
_UNION_MEMBER = re.compile(r"[a-z-]+\[.*\]|bool|int|float|str|bytes|none|constrained-\w+|[A-Z]\w*")


def _union_member(part: str) -> bool:
    return _UNION_MEMBER.fullmatch(part) is not None


def _added_parts(loc: Sequence[Any]) -> dict[int, str]:
    """The parts of a pydantic error location that pydantic adds, by position: ``"wrapper"`` (a validator's
    function-... or union[...]), ``"method"`` (the tag after a pruning[i] index) or ``"member"`` (the member
    of a union of plain values a value was tried against: ``float``, ``literal['auto']``). Found by walking the
    schema along ``loc``, not by how a part is spelled: every other part is a key or index the user wrote, and
    a key spelled like a member (``Sparsity:``, ``Finetune:``, a layer named ``Conv1`` in layer_sparsity) stays
    in the path; dropping it made the error name the wrong field and read "must be Extra inputs are not
    permitted"."""
    added: dict[int, str] = {}
    tp: Any = Recipe
    for i, part in enumerate(loc):
        if isinstance(part, str) and part.startswith(("function-", "union[")):
            added[i] = "wrapper"
            continue
        if tp is None:
            continue  # the keys of a free mapping (model.kwargs, layer_sparsity) or past the schema: the user's
        if _is_method_union(tp):
            if isinstance(part, str) and part in _SPEC_OF_METHOD:
                added[i] = "method"
                tp = _SPEC_OF_METHOD[part]
            else:
                tp = None
            continue
        if get_origin(tp) in (Union, UnionType):  # the schema's unions hold plain values only
            if isinstance(part, str) and _union_member(part):
                added[i] = "member"
            tp = None
        elif _is_model(tp):
            field = tp.model_fields.get(str(part))
            tp = _unwrap(field.annotation) if field is not None else None
        elif get_origin(tp) in (list, dict):
            tp = _unwrap(get_args(tp)[-1])
        else:
            tp = None
    return added


def _merge_union_members(errors: list[Any]) -> list[Any]:
    """One error per field for a value no member of a union accepted (``Literal["auto"] | bool`` gives one per
    member, each with pydantic's member tag in its location): ``must be 'auto' or a valid boolean``."""
    out: list[Any] = []
    merged: dict[tuple[Any, ...], Any] = {}
    for e in errors:
        loc = tuple(e["loc"])
        at = next((i for i, kind in sorted(_added_parts(loc).items()) if kind == "member"), None)
        if at is None or e["type"] in _TAG_ERRORS:
            out.append(e)
            continue
        key = loc[:at]
        wanted = str(e["msg"]).removeprefix("Input should be ").replace("a valid boolean", "true or false")
        if key in merged:
            merged[key]["msg"] += f" or {wanted}"
            continue
        merged[key] = {**e, "loc": key, "type": "union_member", "msg": f"must be {wanted}"}
        out.append(merged[key])
    for e in merged.values():
        value = e.get("input")
        e["msg"] += f" (got {'null' if value is None else f'{_kind_of(value)} {short(repr(value), 40)}'})"
    return out


def _unwrap(tp: Any) -> Any:
    """``tp`` without ``Annotated[...]`` and without ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007 - built from a tuple
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_method_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, UnionType) and all(_is_model(a) for a in get_args(tp))


_SPEC_OF_METHOD: dict[str, type[_MethodBase]] = dict(zip(METHOD_NAMES, METHOD_SPECS, strict=True))


def section_at(loc: Sequence[Any], data: Any = None) -> type[BaseModel] | None:
    """The schema class of the mapping at ``loc`` in a recipe: a pydantic error location (``("pruning", 0,
    "structured")``: the method tag picks the spec) or an override's key split at dots (``["pruning", "0"]``:
    the ``method:`` of that entry in ``data`` picks it). None where the keys are free (``model.kwargs``,
    ``layer_sparsity``), for a plain value, a path off the schema, or an entry whose method is unknown.

    >>> section_at(["finetune", "optimizer"]).__name__
    'OptimizerSpec'"""
    tp: Any = Recipe
    node = data
    for part in loc:
        if isinstance(part, str) and part.startswith(("function-", "union[")):
            continue  # validator wrappers pydantic adds to a location
        if _is_method_union(tp):
            if part in _SPEC_OF_METHOD:  # the tag in a pydantic location
                tp = _SPEC_OF_METHOD[part]
                continue
            tp = _method_spec(node)
        if _is_model(tp):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = _unwrap(field.annotation)
            node = node.get(str(part)) if isinstance(node, dict) else None
        elif get_origin(tp) is list:
            tp = _unwrap(get_args(tp)[0])
            index = int(part) if isinstance(part, int) or (str(part).isascii() and str(part).isdigit()) else -1
            node = node[index] if isinstance(node, list) and 0 <= index < len(node) else None
        else:
            return None
    if _is_method_union(tp):
        tp = _method_spec(node)
    return tp if _is_model(tp) else None


def _method_spec(entry: Any) -> type[_MethodBase] | None:
    method = entry.get("method") if isinstance(entry, dict) else None
    return _SPEC_OF_METHOD.get(method) if isinstance(method, str) else None


MISPLACED_KEYS: dict[tuple[str, str], tuple[str | None, str]] = {
    ("structured", "sparsity"): (
        "ratio",
        "structured removes whole channels and takes ratio (the fraction of output channels removed, e.g. "
        "ratio: 0.5), not sparsity",
    ),
    ("magnitude", "ratio"): ("sparsity", "magnitude takes sparsity (the fraction of weights set to zero), not ratio"),
    ("gradient", "ratio"): ("sparsity", "gradient takes sparsity (the fraction of weights set to zero), not ratio"),
    ("l1", "sparsity"): (
        "target",
        "l1 takes target (the fraction of weights, or of units with group: row | channel, to be zero by "
        "schedule.end_epoch; lambda adapts to reach it), not sparsity",
    ),
    ("max_norm", "sparsity"): (
        None,
        "max_norm bounds weight norms and makes no zeros (to prune to a sparsity, add a magnitude entry)",
    ),
}
"""Keys written in the way another method sizes its work: ``(method, key) -> (the key meant or None, why)``.
An unknown-key error says why (``structured`` takes ``ratio``, not ``sparsity``); docs/recipe.md too."""


def foreign_home(section: type[BaseModel] | None, key: str) -> tuple[str, str, str] | None:
    """``(the toolkit whose key it is, the path in section that does its work, a note)`` when ``key`` is another pruning
    toolkit's word (:data:`FOREIGN_KEYS`) for a key of ``section`` (a method's entry or the recipe's top), else
    None.

    >>> foreign_home(_SPEC_OF_METHOD["structured"], "pruning_ratio")
    ('Torch-Pruning', 'ratio', '')"""
    if section is None or key not in FOREIGN_KEYS:
        return None
    whose, path, note = FOREIGN_KEYS[key]
    method = _method_of(section)
    path = FOREIGN_PATHS.get((method or "", path), path)
    if "." not in path and path not in section.model_fields:
        # `finetune: {learning_rate: ...}`: lr is a key of finetune.optimizer, one level down
        nested = _nested_home(section, path)
        return (whose, nested, note) if nested else None
    head, _, last = path.rpartition(".")
    if head and head.split(".")[0] not in section.model_fields and last in section.model_fields:
        # already inside the mapping the path leads to (`schedule: {frequency: 1}`, `update_frequency` there): the
        # key is the path's last part. The path from the entry found no holder and said only "unknown key".
        return whose, last, note
    tp: Any = section
    for part in path.split("."):  # a path the section lacks (max_norm has no size; the top has no schedule)
        # `schedule` is a mapping or 'oneshot': the mapping among a union's members holds the keys
        models = [a for a in (get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)) if _is_model(a)]
        holder = next((m for m in models if part in m.model_fields), None)
        if holder is None:
            return None
        tp = _unwrap(holder.model_fields[part].annotation)
    return whose, path, note


def foreign_method(tag: str) -> tuple[str, str] | None:
    """What an unknown ``method:`` that is another toolkit's name for a sparsekit method (a SparseML modifier, an
    NNI or Distiller pruner class, a torch.nn.utils.prune function, ``MagnitudePruningModifier``) should say, and
    the sparsekit method meant; or None.

    >>> foreign_method("L1NormPruner")
    ("NNI's L1NormPruner is sparsekit's method: structured (with importance: l1)", 'structured')
    """
    norm = re.sub(r"[_\-\s]", "", tag.lower())
    stripped = next((s for s in ("pruningmodifier", "modifier", "pruner", "pruning") if norm.endswith(s)), "")
    if len(norm) > len(stripped):
        norm = norm.removesuffix(stripped)
    if norm in FOREIGN_METHODS:
        whose, method, note = FOREIGN_METHODS[norm]
        owner = f"{whose}'s " if whose else ""
        return f"{owner}{tag} is sparsekit's method: {method} ({note})", method
    if stripped and norm in METHOD_NAMES:  # MagnitudePruningModifier; a bare 'Magnitude' gets "did you mean"
        return f"{tag} is sparsekit's method: {norm}", norm
    return None


def did_you_mean(key: str, valid: Sequence[str]) -> str | None:
    """The entry of ``valid`` that ``key`` most likely misspells (difflib, case-insensitive), or the one it
    abbreviates; None when nothing is close.

    >>> did_you_mean("epoch", ["epochs", "optimizer"]), did_you_mean("temp", ["weight", "temperature"])
    ('epochs', 'temperature')"""
    lowered = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return lowered[close[0]]
    longer = [v for v in valid if len(key) >= 3 and v.lower().startswith(key.lower())]
    return longer[0] if len(longer) == 1 else None


def unknown_key(
    section: type[BaseModel] | None, key: str, written_at: Sequence[str] | None = None
) -> tuple[str, str | None]:
    """What to tell a user who wrote ``key`` in a mapping of ``section`` (see :func:`section_at`), where it
    is not a key: ``("unknown key; did you mean 'epochs'?", "epochs")``; the second item is the key most
    likely meant (None when none is). Where the key belongs elsewhere, the remedy is flow-style YAML for a file
    (``write it as optimizer: {lr: ...}``), or with ``written_at`` (the override's path to the mapping,
    ``["finetune"]``) the dotted path an override takes (``write finetune.lr as finetune.optimizer.lr``)."""
    if section is None:
        return "unknown key", None
    valid = list(section.model_fields)
    method = _method_of(section)
    if method and (method, key) in MISPLACED_KEYS:
        meant, why = MISPLACED_KEYS[(method, key)]
        return f"unknown key: {why}", meant
    written = ".".join([*(written_at or []), key])
    foreign = foreign_home(section, key)
    if foreign:
        whose, path, note = foreign
        dest = ".".join([*(written_at or []), path])
        what = f"unknown key: {key} is {whose}'s word; sparsekit's is {path}" + (f" ({note})" if note else "")
        if written_at is not None:
            return f"{what}: write {written} as {dest}", None
        return (f"{what}: write it as {_nested_yaml(path)}", None) if "." in path else (what, path)

    def write(home: str, top: bool) -> str:  # home: the dotted path below this mapping, or from the top
        if written_at is None:
            return f"write it as {_nested_yaml(home)}"
        return f"write {written} as {home if top else '.'.join([*written_at, home])}"

    home = _nested_home(section, key)
    if home:
        parent = home.rpartition(".")[0]
        where = parent if written_at is None else ".".join([*written_at, parent])
        return f"unknown key here; {key} is a key of {where}: {write(home, top=False)}", None
    meant = did_you_mean(key, valid)
    if meant:
        return f"unknown key; did you mean {meant!r}?", meant
    owners = [name for name, spec in _SPEC_OF_METHOD.items() if method and key in spec.model_fields]
    if owners:
        return f"unknown key: {key} is a key of method {' / '.join(owners)}, not of {method}", None
    # A key written in a sibling section (`data: {epochs: 3}`, `finetune: {batch_size: 32}`) is not below this
    # one, so the search above misses it; searched from the recipe's top, its one home is found.
    if section is not Recipe:
        if key in Recipe.model_fields:
            at_top = "write it beside version, unindented" if written_at is None else f"write {written} as {key}"
            return f"unknown key here; {key} is a top-level key: {at_top}", None
        home = _nested_home(Recipe, key)
        if home:
            return f"unknown key here; {key} is a key of {home.rpartition('.')[0]}: {write(home, top=True)}", None
    # ... or the key of a pruning entry (`sparsity: 0.9` at the top, `finetune: {exclude: [head]}`), which the
    # search above does not enter: entries are list items whose keys depend on their method.
    if not method:
        in_entry = _entry_home(key)
        if in_entry:
            method_name, path = in_entry
            if written_at is None:
                inside = f"method: {method_name}, {_nested_yaml(path)}" if path != "method" else "method: ..."
                remedy = f"write it as pruning: [{{{inside}}}]"
            else:
                remedy = f"write {written} as pruning.N.{path} (N: the entry's index, from 0)"
            return f"unknown key here; {key} is a key of a pruning entry: {remedy}", None
    return f"unknown key; the keys here are {', '.join(valid)}", None


def setting_path(key: str) -> str | None:
    """The dotted path (as an override writes it) of the recipe setting a user named ``key``, when it is one:
    ``"epochs"`` -> ``"finetune.epochs"``, ``"sparsity"`` -> ``"pruning.N.sparsity"``, another toolkit's
    ``"learning_rate"`` -> ``"finetune.optimizer.lr"``; None when no recipe key is meant (or several are)."""
    if key in Recipe.model_fields:
        return None if _is_model(_unwrap(Recipe.model_fields[key].annotation)) or key == "pruning" else key
    foreign = FOREIGN_KEYS.get(key)
    if foreign and foreign[1] not in (SIZE, PER_LAYER):
        key = foreign[1].rpartition(".")[2]
    home = _nested_home(Recipe, key, depth=3)
    if home:
        return home
    in_entry = _entry_home(key)
    if in_entry and in_entry[1] != "method":
        return f"pruning.N.{in_entry[1]}"
    return None


def _entry_home(key: str) -> tuple[str, str] | None:
    """Where ``key`` goes in a pruning entry: ``(a method that takes it, its dotted path in the entry)``
    (``("magnitude", "sparsity")``, ``("magnitude", "layers.exclude")``), when it is a key of some method's entry or
    of a mapping one level inside one; else None."""
    if key == "method":
        return "...", "method"
    for name, spec in _SPEC_OF_METHOD.items():
        path = key if key in spec.model_fields and key != "method" else _nested_home(spec, key, depth=1)
        if path:
            return name, path
    return None


def _nested_home(section: type[BaseModel], key: str, depth: int = 2) -> str | None:
    """The path below ``section`` where ``key`` is a key, when it is one of a mapping nested at most ``depth``
    levels down and of no other (``lr`` in ``finetune`` -> ``"optimizer.lr"``; ``epochs`` at the top ->
    ``"finetune.epochs"``), else None. Lists and method entries are not searched: their keys depend on the
    entry."""
    level: list[tuple[str, type[BaseModel]]] = [("", section)]
    for _ in range(depth):
        found: list[str] = []
        below: list[tuple[str, type[BaseModel]]] = []
        for prefix, model in level:
            for name, field in model.model_fields.items():
                tp = _unwrap(field.annotation)
                if _is_model(tp):
                    path = f"{prefix}{name}"
                    if key in tp.model_fields:
                        found.append(f"{path}.{key}")
                    below.append((f"{path}.", tp))
        if found:
            return found[0] if len(found) == 1 else None  # a key of two mappings: which one is meant is unsure
        level = below
    return None


def _nested_yaml(path: str) -> str:
    """``"optimizer.lr"`` -> ``"optimizer: {lr: ...}"``: the flow-style YAML that puts a key at ``path``."""
    *parents, key = path.split(".")
    text = f"{key}: ..."
    for parent in reversed(parents):
        text = f"{parent}: {{{text}}}"
    return text


def _method_of(section: type[BaseModel]) -> str | None:
    return next((name for name, spec in _SPEC_OF_METHOD.items() if spec is section), None)


def _missing(loc: tuple[Any, ...]) -> str:
    """``required key missing: <what it is>`` for the required field at ``loc``."""
    section = section_at(loc[:-1])
    field = section.model_fields.get(str(loc[-1])) if section else None
    what = (field.description or "") if field else ""
    first = what.split("; ")[0]
    if first.count("(") != first.count(")"):
        first = first.split(" (")[0]
    return f"required key missing: {first}" if first else "required key missing"


def _message(e: Any) -> str:
    ctx = e.get("ctx") or {}
    kind = e["type"]
    if kind == "extra_forbidden":
        loc = tuple(e["loc"])
        return unknown_key(section_at(loc[:-1]), str(loc[-1]))[0]
    if kind == "missing":
        return _missing(tuple(e["loc"]))
    if kind == "schedule_after_finetune":
        i, epochs, needed = ctx["index"], ctx["epochs"], ctx["needed"]
        raise_it = f"raise finetune.epochs to at least {needed} ({option('set', f'finetune.epochs={needed}')})"
        if not ctx["start_ok"]:  # start_epoch is past the last epoch too: lowering end_epoch alone cannot fix it
            return e["msg"].split("; lower")[0] + f"; {raise_it}"
        lower = f"lower it to at most {epochs} ({option('set', f'pruning.{i}.schedule.end_epoch={epochs}')})"
        return e["msg"].split("; lower")[0] + f"; {lower} or {raise_it}"
    if kind == "union_tag_not_found":
        return _no_method(e.get("input"))
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag"))
        foreign = foreign_method(tag)
        if foreign:
            return f"unknown method {short(tag)!r}: {foreign[0]}"
        meant = did_you_mean(tag, METHOD_NAMES)
        if meant == "structured" and "unstructured" in tag.lower():  # the opposite of what was asked
            meant = None
        if meant:
            return f"unknown method {short(tag)!r}; did you mean {meant!r}? (methods: {ctx.get('expected_tags')})"
        return f"unknown method {short(tag)!r}; use one of {ctx.get('expected_tags')}"
    if kind == "finite_number":
        return "must be a finite number (not .nan, .inf or -.inf)"
    if kind in _BOUND_WORDS:
        limit = next(iter(ctx.values()), "?")
        return f"must be {_BOUND_WORDS[kind]} {limit} (got {short(repr(e.get('input')), 40)})"
    if kind == "int_from_float":
        return "must be a whole number"
    value = e.get("input")
    if kind in ("int_type", "float_type"):
        # pydantic's "Input should be a valid integer" did not say what was written: `epochs: null` (or a bare
        # `epochs:`, meant as "the default") read as if a number had been given wrongly. Not "leave the key out":
        # some of these keys are required (max_value, strength), and a list item has none to leave out.
        number = "a whole number" if kind == "int_type" else "a number"
        got = "null" if value is None else f"{_kind_of(value)} {short(repr(value), 40)}"
        return f"must be {number} (got {got})"
    if kind == "literal_error":
        # pydantic's "Input should be 'global' or 'layer'" showed neither the value given nor a likely meaning, and
        # `version: 2` read "Input should be 1" without saying that 1 is the only recipe format there is.
        got = "null" if value is None else f"{_kind_of(value)} {short(repr(value), 40)}"
        if tuple(e["loc"]) == ("version",):
            return (
                f"must be 1, the only recipe format this sparsekit reads (got {got}); write version: 1, or leave "
                "it out (it defaults to 1)"
            )
        expected = str(ctx.get("expected", "?"))
        choices = re.findall(r"'([^']*)'", expected)
        # `torch.nn.Conv2d` (as Torch-Pruning and NNI code name a layer type) is a class path: its last part counts,
        # in any case (`torch.optim.Adam` is adam).
        plain = value.rpartition(".")[2] if isinstance(value, str) else None
        if plain is not None and plain not in choices:
            plain = next((c for c in choices if c.lower() == plain.lower()), plain)
        foreign = FOREIGN_CHOICES.get(re.sub(r"[^a-z0-9]", "", plain.lower())) if plain is not None else None
        if foreign is not None and foreign[1] in choices:
            # Another toolkit's word for a choice: a spelling guess misled (`scope: local` got "did you mean
            # 'global'?", the opposite) or found nothing (`CosineAnnealingLR`, Torch-Pruning's `TaylorImportance`).
            whose, meant_choice = foreign
            return f"must be {expected} (got {got}); {short(value, 40)} is {whose}'s word: write {meant_choice}"
        meant = plain if plain in choices else did_you_mean(value, choices) if isinstance(value, str) else None
        # 'Conv' is as close to Conv1d as to Conv3d: a guess would mislead
        if meant and meant != plain and isinstance(value, str):
            ratio = difflib.SequenceMatcher(None, value.lower(), meant.lower()).ratio()
            if any(
                c != meant and difflib.SequenceMatcher(None, value.lower(), c.lower()).ratio() == ratio for c in choices
            ):
                meant = None
        if isinstance(value, bool) or value is None:
            # `quantize: no` / `group: off` is YAML 1.1's false, `quantize: ~` its null: the user meant 'none'.
            why = "YAML reads ~ as null" if value is None else "YAML reads unquoted yes/no/on/off as booleans"
            write = "write none" if "none" in choices and not value else "write one of them"
            return f"must be {expected} (got {got}; {why}): {write}"
        return f"must be {expected} (got {got})" + (f"; did you mean {meant!r}?" if meant else "")
    if kind in ("too_short", "too_long") and isinstance(ctx.get("actual_length"), int):
        # pydantic's "List should have at least 1 item after validation, not 0" spoke of its own validation.
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        limit = "at least" if kind == "too_short" else "at most"
        return f"must hold {limit} {bound} item{'' if bound == 1 else 's'} (got {ctx['actual_length']})"
    if kind == "string_type" and isinstance(value, bool | int | float):
        # A Sequential's layers are named 0, 1, ...: `include: [0]` is a number to YAML, and pydantic's "Input should
        # be a valid string" did not say that quoting it is the remedy (layer_sparsity's keys said so already).
        why = " (YAML reads unquoted yes/no/on/off/true/false as booleans)" if isinstance(value, bool) else ""
        return f"must be text, not {_kind_of(value)} {short(repr(value), 40)}{why}: write it in quotes ('...')"
    # model_attributes_type: a pruning entry that is no mapping (`pruning: [magnitude]`), in pydantic's words "Input
    # should be a valid dictionary or object to extract fields from".
    if kind in ("list_type", "dict_type", "model_type", "model_attributes_type"):
        form = "a list, written [a, b]" if kind == "list_type" else "a mapping, written {key: value}"
        if kind == "model_attributes_type" and tuple(e["loc"])[:1] == ("pruning",):
            form = "a mapping naming its method and settings, e.g. {method: magnitude, sparsity: 0.8}"
        if ctx.get("class_name") == LayerSelect.__name__:
            form = "a list of layer-name globs, written [fc1, 'features.*'], or a mapping {include, exclude, types}"
        value = e.get("input")
        got = "null" if value is None else f"{_kind_of(value)} {short(repr(value), 40)}"
        # `optimizer: adam`, `lr_schedule: cosine` (how Lightning and Hugging Face configs name them): the word is
        # the mapping's name, and saying so is the remedy.
        if kind == "list_type" and tuple(e["loc"]) == ("pruning",) and isinstance(value, dict):
            return f"must be {form} (got {got}): {_pruning_as_list(value)}"
        section = section_at(tuple(e["loc"])) if kind == "model_type" else None
        name = section.model_fields.get("name") if section else None
        if name is not None and isinstance(value, str) and value in re.findall(r"'([^']*)'", str(name.annotation)):
            return f"must be {form} (got {got}): write it as {{name: {value}}}"
        if kind == "list_type" and isinstance(value, str) and value.strip() and not set(value) & set("[]{}:"):
            # `ignore: fc2`, `--set pruning.0.ignore=fc2`: one name where a list is taken; the list of it is the fix.
            # Written as YAML reads it back: `include: "*"` was told "write [*]", which YAML reads as an alias.
            items = _list_from_text(value, numbers=_list_of_numbers(tuple(e["loc"])))
            flow = yaml.safe_dump(items, default_flow_style=True, width=2**31, allow_unicode=True)
            flow = flow.strip()
            return f"must be {form} (got {got}): write {short(flow, 80)}"
        return f"must be {form} (got {got})"
    return short(e["msg"].removeprefix("Value error, "), 300)


def _list_of_numbers(loc: tuple[Any, ...]) -> bool:
    """Whether the recipe field at ``loc`` is a list of numbers (``input_shape``, ``batch_sizes``), not of names."""
    section = section_at(loc[:-1]) if loc else None
    field = section.model_fields.get(str(loc[-1])) if section else None
    if field is None or get_origin(tp := _unwrap(field.annotation)) is not list:
        return False
    item = get_args(tp)[0]
    return (get_args(item)[0] if get_origin(item) is Annotated else item) in (int, float)


def _list_from_text(value: str, *, numbers: bool) -> list[Any]:
    """The list a text meant (`input_shape: "1,3,32,32"`, `1x3x32x32`, `batch_sizes: 1 32`, `ignore: fc1,fc2`): split
    at commas, and for a list of numbers at `x` or spaces too, its items as numbers (the remedy said `write ['1',
    '32']`, a list of texts, and `write [1x3x32x32]`, one item). Names stay text: a Sequential's layer is '0'."""
    items = [part.strip() for part in value.split(",") if part.strip()]
    if not numbers:
        return items
    if len(items) == 1 and re.fullmatch(r"\d+(\s*[x×*\s]\s*\d+)+", items[0]):
        items = re.split(r"\s*[x×*\s]\s*", items[0])
    number = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
    return [
        (float(item) if "." in item or "e" in item.lower() else int(item)) if number.fullmatch(item) else item
        for item in items
    ]


def _pruning_as_list(value: dict[Any, Any]) -> str:
    """How to write ``pruning:`` given as a mapping: one entry without its ``- ``, or entries keyed by their method
    (``magnitude: {sparsity: 0.8}``, the way Distiller's ``pruners:`` are keyed by name)."""
    if "method" in value:
        return "a list of entries, each starting with '- ' (write '- method: ...' under pruning:)"
    entries = [
        f"{{method: {key}, {', '.join(f'{k}: {short(str(v), 20)}' for k, v in list(settings.items())[:3])}}}"
        for key, settings in value.items()
        if key in METHOD_NAMES and isinstance(settings, dict)
    ]
    if entries:
        return f"an entry names its method inside it: write pruning: [{', '.join(entries[:3])}]"
    return "a list of entries, each {method: ..., ...} and starting with '- '"


# Keys other toolkits (and habit) name a pruning step's algorithm with: Distiller's `class:`, `type:` in many configs.
_METHOD_WORDS = ("type", "name", "class", "pruner", "algorithm", "algo", "modifier", "kind", "strategy")


def _no_method(entry: Any) -> str:
    """What to say of a pruning entry without ``method:``: where the entry names its method under another key
    (``Method: magnitude``, ``type: magnitude``, Distiller's ``class: AutomatedGradualPruner``), that key and the
    ``method:`` to write; else the methods."""
    methods = f"use one of {', '.join(map(repr, METHOD_NAMES))}"
    for key, value in entry.items() if isinstance(entry, dict) else ():
        if not isinstance(key, str) or not (key.lower() in _METHOD_WORDS or did_you_mean(key, ["method"])):
            continue
        if not isinstance(value, str):
            return f"missing 'method:' ({short(key)}: is not a key of a pruning entry); {methods}"
        foreign = foreign_method(value)
        meant = value if value in METHOD_NAMES else did_you_mean(value, METHOD_NAMES)
        if foreign:
            write = f"write method: {foreign[1]} ({foreign[0]})"
        elif meant and not (meant == "structured" and "unstructured" in value.lower()):
            write = f"write method: {meant}"
        else:
            write = f"write method: with one of {', '.join(map(repr, METHOD_NAMES))}"
        return f"missing 'method:'; {short(key)}: {short(value)!r} is not how an entry names its method: {write}"
    return f"missing 'method:'; {methods}"


def _kind_of(value: Any) -> str:
    """A YAML value's kind in YAML's words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else type(value).__name__


def format_validation_error(err: ValidationError, source: str, overrides: Sequence[str] = ()) -> str:
    """One line for a pydantic ``err``: ``source: path: problem; path: problem`` (at most
    ``MAX_ERRORS_SHOWN`` problems, each with its YAML path, e.g. ``pruning[0].sparsity``). When every problem
    is in a field one of ``overrides`` (``key.path=value``) set, those overrides are named instead of
    ``source``: the file does not hold the faulty value."""
    errors = err.errors()
    # `sparsty: 0.5` also makes `sparsity` missing: the unknown key's "did you mean" says it all. Asked only of the
    # unknown keys beside a missing one, until each missing one is meant: a recipe of 90,000 unknown keys spent 46 s
    # here on a "did you mean" for every one, to show five of them.
    missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
    parents = {loc[:-1] for loc in missing}
    meant: set[tuple[Any, ...]] = set()
    for e in errors:
        if not missing - meant:
            break
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden" and loc[:-1] in parents:
            key = unknown_key(section_at(loc[:-1]), str(loc[-1]))[1]
            meant.add((*loc[:-1], key))
    errors = _merge_union_members([e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in meant)])
    lines = []
    for e in errors[:MAX_ERRORS_SHOWN]:
        # kwargs problems carry the path inside model.kwargs (e.g. ".width") in their context.
        subpath = short(str((e.get("ctx") or {}).get("subpath", "")), 200)
        where = f"{_path(e['loc'])}{subpath}"
        # A check across fields (the whole recipe) names its fields in the message itself.
        lines.append(f"{where}: {_message(e)}" if where else _message(e))
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more error(s)")
    # An unknown method is the fault of whatever set pruning[i].method, not of the entry around it.
    locs = [(*e["loc"], "method") if e["type"] in _TAG_ERRORS else tuple(e["loc"]) for e in errors]
    culprits = [_override_of(loc, overrides) for loc in locs]
    for i, (e, culprit) in enumerate(zip(errors[:MAX_ERRORS_SHOWN], culprits, strict=False)):
        if not culprit or isinstance(culprit, OptionOverride):
            continue
        key = dotted_path(_path(tuple(e["loc"])))
        if dotted_path(_override_path(culprit)) != key:
            continue  # set inside a mapping or list the override gave: its own words would mislead
        text = str(culprit).partition("=")[2].strip()
        if not text and e.get("input") is None:  # `data.source=`: YAML reads nothing as null
            lines[i] += f" (the override gives no value, which YAML reads as null: {key}=VALUE)"
        elif e["type"] == "list_type" and isinstance(e.get("input"), str) and text.startswith("["):
            # `[1,64` is no YAML list (the bracket is not closed): YAML reads it as text
            lines[i] += f" (an override's value is read as YAML, and {short(text, 40)} is no list: close its brackets)"
        elif e["type"] == "string_type":  # data.source=1e5 is read as YAML, so as a number: the caller meant text
            lines[i] += f' (an override\'s value is read as YAML: for the text, quote it: {key}="{short(text, 60)}")'
    if overrides and culprits and all(culprits):
        source = ", ".join(_spell(c) for c in dict.fromkeys(c for c in culprits if c))
    else:  # a check across fields, or one inside a section an override changed part of: both had a hand
        paths = [dotted_path(_path(loc)) for loc in locs]
        source = _with_overrides(source, _involved(overrides, paths, "; ".join(lines)))
    return f"{source}: " + "; ".join(lines) + f" {SEE_DOCS}"


class OptionOverride(str):
    """An override (``key.path=value``) that the caller gave through another of its options: the device
    option is ``finetune.device=cuda``. Errors name that option (the command line's device flag), not a set override."""

    key: str
    option: str
    value: str

    def __new__(cls, key: str, option_name: str, value: str) -> OptionOverride:
        item = super().__new__(cls, f"{key}={value}")
        item.key, item.option, item.value = key, option_name, value
        return item

    def __getnewargs__(self) -> tuple[str, str, str]:  # type: ignore[override]  # copy and pickle rebuild it
        return self.key, self.option, self.value


def _spell(item: str) -> str:
    """How an error names the override ``item``: the option that gave it (:class:`OptionOverride`) or a set one."""
    if isinstance(item, OptionOverride):
        return option(item.option, item.value)
    return option("set", short(item, 120))


# The field path an error message starts with: `pruning[0].schedule.end_epoch (3) is ...`, `finetune.device: ...`.
_LEADING_PATH = re.compile(r"^((?:pruning\[\d+\]|[a-z_]+)(?:\.[a-z_]\w*)*)")


def blame(
    source: str | None, overrides: Sequence[str], message: str, decided_by: Sequence[str] | None = None
) -> str | None:
    """See :meth:`Recipe.blame`: ``source`` is the recipe file, ``overrides`` the caller's ``key=value``s."""
    match = _LEADING_PATH.match(message)
    path = dotted_path(match.group(1)) if match else ""
    if path and decided_by is not None:
        # Only an override of the list (or what holds it), of a whole entry, or of a deciding field of one can
        # have caused the error: pruning.0.strength=0.01 does not make an l1-only recipe.
        entry_field = re.compile(rf"{re.escape(path)}\.\d+(\.(?:{'|'.join(map(re.escape, decided_by))}))?")
        overrides = [
            o for o in overrides if _covers(_override_path(o), path) or entry_field.fullmatch(_override_path(o))
        ]
    if path:
        setters = [o for o in overrides if _covers(_override_path(o), path)]
        if setters:  # the override, not the file, holds the value
            return _spell(setters[-1])
    involved = _involved(overrides, [path] if path else [], message)
    return _with_overrides(source, involved) if source else (_with_overrides("", involved) or None)


def _involved(overrides: Sequence[str], paths: Sequence[str], message: str) -> list[str]:
    """The overrides that set a part of one of ``paths`` or a field ``message`` names."""
    found = []
    for item in overrides:
        key = _override_path(item)
        shown = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key)  # pruning.0.method as messages spell it
        # pruning.N.method decides which fields entry N takes: it has a hand in every error inside that entry.
        decides = key.endswith(".method") and any(p and _covers(key.removesuffix(".method"), p) for p in paths)
        # a dotted path the message names (a one-word key such as seed could be any word of it)
        named = "." in key and re.search(rf"(?<![\w.]){re.escape(shown)}(?![\w])", message)
        if decides or named or any(p and _covers(p, key) for p in paths):
            found.append(item)
    return list(dict.fromkeys(found))


def _with_overrides(source: str, overrides: Sequence[str]) -> str:
    if not overrides:
        return source
    named = ", ".join(_spell(o) for o in overrides)
    return f"{source} with {named}" if source else named


_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")  # pydantic's: a pruning entry's method


def _override_of(loc: Sequence[Any], overrides: Sequence[str]) -> str | None:
    """The last of ``overrides`` that set the field at ``loc`` (itself or a mapping holding it), or None."""
    path = dotted_path(_path(tuple(loc)))
    return next((item for item in reversed(overrides) if path and _covers(_override_path(item), path)), None)


def _override_path(item: Any) -> str:
    """The key path an override ``key.path=value`` sets."""
    return str(item).partition("=")[0].strip()


def _covers(key: str, path: str) -> bool:
    """Whether setting ``key`` sets the field at ``path``: the field itself or a mapping holding it."""
    return path == key or path.startswith(key + ".")


def validate_recipe(
    data: Any, source: str = "recipe", overrides: Sequence[str] = (), *, trainer: bool = False
) -> Recipe:
    """Validate a mapping (parsed YAML, or a dict built in Python) into a :class:`Recipe`; RecipeError naming
    ``source`` (or the ``overrides`` that set every faulty field) and the field at fault for anything else,
    including values that are not plain data. ``trainer=True``: for a trainer callback, whose trainer sets the
    epochs: a recipe without a ``finetune`` section is not checked against ``finetune.epochs``."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: {not_a_mapping(data)}")
    if "version" not in data and {"name", "path", "text"} <= data.keys() and isinstance(data["text"], str):
        # A shipped recipe's catalog entry printed as JSON ({name, path, description, methods, model, text}) saved as
        # a recipe file read as five unknown keys and "model: must be a mapping", none naming what the file is.
        name = data["name"]
        raise RecipeError(
            f"{source}: this is the catalog entry of the shipped recipe {name!r} (name, description, ..., and the "
            f"recipe's YAML as 'text'), not a recipe: save the recipe itself (`sparsekit recipes {name} > "
            f"my-recipe.yaml`), or give its name ({name}) where the recipe goes"
        )
    check_plain_data(data, source)
    try:
        recipe = Recipe.model_validate(data, context={"trainer": trainer})
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, source, overrides)) from None
    recipe._trainer = trainer
    return recipe


RecipeLike = Recipe | Mapping[str, Any] | str | os.PathLike[str]
"""What the Python API takes as a recipe: a :class:`Recipe`, a dict, a recipe file or a shipped recipe's name."""


def with_kwargs(recipe: Any, kwargs: Any, overrides: Any, where: str, arch: str | None) -> Any:
    """``overrides`` with ``model.kwargs`` set to ``kwargs``: the factory's keyword arguments, as the command line's
    kwargs option gives them, for ``where`` (``run_prune``, ``plan``); with ``arch``, ``model.factory`` too, since a
    recipe's kwargs belong to its own factory (the command line does the same). A model file whose weights need
    other kwargs than the factory's defaults is refused with the remedy "give them: kwargs={...}", which these
    functions did not take (a TypeError). Returned unchanged when ``kwargs`` is None."""
    if kwargs is None:
        return overrides
    if isinstance(recipe, Recipe):
        raise TypeError(
            f"{where}(kwargs=...) applies to a recipe file, a shipped recipe's name or a dict; a Recipe object is "
            "already validated: set recipe.model.kwargs instead"
        )
    if not isinstance(kwargs, Mapping):
        got = type(kwargs).__name__
        raise TypeError(f"{where}(kwargs=...): expected a dict of the model factory's keyword arguments, got {got}")
    try:
        text = json.dumps(dict(kwargs), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where}(kwargs=...): {err}; the factory's keyword arguments must be JSON-like") from None
    factory = [f"model.factory={arch}"] if arch is not None else []
    return [*override_list(overrides if overrides is not None else []), *factory, f"model.kwargs={text}"]


def resolve_recipe(recipe: Any, kwargs: Any, overrides: Any, where: str, arch: str | None) -> Recipe:
    """The :class:`Recipe` a file-level function (``run_prune``, ``plan``, ``run_sensitivity``) runs: ``recipe`` (a
    Recipe, a recipe file, a shipped recipe's name or a dict, :func:`as_recipe`) with ``overrides`` and the factory's
    ``kwargs`` (:func:`with_kwargs`) applied. One helper for all three, so each takes the same recipe forms and
    keywords: ``run_sensitivity`` took a Recipe alone (a path raised AttributeError) and no ``kwargs``."""
    overrides = with_kwargs(recipe, kwargs, overrides, where, arch)
    if overrides is not None and isinstance(recipe, Recipe):
        raise TypeError(
            f"{where}(overrides=...) applies to a recipe file, a shipped recipe's name or a dict; a Recipe object "
            "is already validated: set its fields, or pass load_recipe(path, overrides=[...]) instead"
        )
    if overrides is not None and isinstance(recipe, str | os.PathLike | Mapping):
        recipe = load_recipe(recipe if isinstance(recipe, Mapping) else os.fspath(recipe), override_list(overrides))
    return as_recipe(recipe)


def python_data(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a recipe dict written in Python, its tuples as lists: ``{"input_shape": (1, 784)}``, as
    ``export_onnx`` and ``Recipe(...)`` take it, was "a tuple is not allowed; ... quote it if it is text" from
    ``load_recipe`` and the Pruner (a recipe file has no tuples). Containers are copied once each, shared ones shared
    and one that holds itself kept so (:func:`check_plain_data` then says so), so no alias bomb is expanded."""
    copies: dict[int, Any] = {}

    def copy_of(value: Any, depth: int) -> Any:
        if not isinstance(value, dict | list | tuple) or depth > MAX_DEPTH:
            return value  # (deeper is refused by check_plain_data, naming the path)
        if id(value) in copies:
            return copies[id(value)]
        if isinstance(value, dict):
            new_dict: dict[Any, Any] = {}
            copies[id(value)] = new_dict
            new_dict.update((k, copy_of(v, depth + 1)) for k, v in value.items())
            return new_dict
        new_list: list[Any] = []
        copies[id(value)] = new_list
        new_list.extend(copy_of(v, depth + 1) for v in value)
        return new_list

    return copy_of(dict(recipe), 0)


def as_recipe(recipe: Any, *, trainer: bool = False) -> Recipe:
    """``recipe`` itself when a :class:`Recipe` (checked again as it is now: RecipeError naming a field assigned an
    invalid value since it was validated); the recipe a file path or a shipped recipe's name names
    (:func:`load_recipe`), or a dict holds (:func:`validate_recipe`): RecipeError when invalid, naming the field.
    TypeError for anything else. ``trainer``: see :func:`validate_recipe`."""
    if isinstance(recipe, Recipe):
        return _check_as_it_is(recipe, trainer)
    if isinstance(recipe, str | os.PathLike):
        return load_recipe(os.fspath(recipe), trainer=trainer)
    if isinstance(recipe, Mapping):
        try:
            return validate_recipe(python_data(recipe), "recipe (a dict)", trainer=trainer)
        except RecipeError as err:
            # Its remedies are spelled as load_recipe's overrides=[...], which a dict handed to the Pruner has no
            # way to take: say which key to change in the dict instead.
            raise RecipeError(err.render(_in_the_dict)) from None
    raise TypeError(
        f"recipe must be a sparsekit.Recipe, a dict, a recipe file or a shipped recipe's name, not "
        f"{type(recipe).__name__}"
    )


def _same_data(a: Any, b: Any) -> bool:
    """Whether two dumps hold the same values of the same types: ``==`` took a ``torch.tensor(0.5)`` assigned to a
    field for the 0.5 validation made of it, and the caller's recipe, tensor and all, reached the methods
    (TypeError: type Tensor doesn't define __round__ method)."""
    if type(a) in (int, float) and type(b) in (int, float):
        return bool(a == b)  # every: 1 is dumped as written and validated as 1.0: the same value
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_data(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_data(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _check_as_it_is(recipe: Recipe, trainer: bool) -> Recipe:
    """``recipe`` when, as it is now, it is a valid recipe; RecipeError naming the field when not. A Recipe is a
    mutable pydantic model and pydantic checks no assignment: ``recipe.finetune.epochs = 1`` before a schedule ending
    at epoch 3, or ``recipe.pruning[0].sparsity = 1.5`` in a sweep, reached the Pruner unchecked (the schedule then
    missed its target, the sparsity was clamped, NaN ended in a ValueError from deep inside). A field assigned a form
    validation converts (``layers = ["fc1"]``, the include shorthand; ``schedule = {...}``) gives the validated copy
    instead: the form as assigned reached the methods (AttributeError: 'list' object has no attribute 'types')."""
    # A trainer callback's recipe without a finetune section is not held to finetune.epochs (validate_recipe).
    unset = (trainer or recipe._trainer) and "finetune" not in recipe.model_fields_set
    source = f"{getattr(recipe, '_source', None) or 'recipe'} (the Recipe given, with its fields as they are now)"
    entries = recipe.pruning if isinstance(recipe.pruning, list) else []
    for i, entry in enumerate(entries):
        # pydantic looks an entry's method up to dump it: a list, dict or array assigned there raised TypeError
        # ("unhashable type: 'list'") from model_dump below, not the RecipeError any other bad method gets.
        method = getattr(entry, "method", None)
        if method is not None and not isinstance(method, str | int | float | bool):
            names = ", ".join(repr(name) for name in METHOD_NAMES)
            problem = f"pruning[{i}]: unknown method (a {type(method).__name__}); use one of {names}"
            raise RecipeError(RecipeError(f"{source}: {problem}").render(_as_attribute))
    dumped = recipe.model_dump(warnings=False)
    try:
        checked = Recipe.model_validate(dumped, context={"trainer": unset, "finetune_unset": unset})
    except ValidationError as err:
        message = RecipeError(format_validation_error(err, source, ()))
        raise RecipeError(message.render(_as_attribute)) from None
    if _same_data(checked.model_dump(warnings=False), dumped):
        return recipe  # the caller's own object, as it was
    # (the fields the caller's recipe set, not all of them, so trainer recipes stay free of finetune.epochs)
    checked.__pydantic_fields_set__ = set(recipe.model_fields_set)
    return recipe.keep_origin(checked)


def _as_attribute(name: str, value: str) -> str:
    """How an error about a Recipe object spells a remedy: ``key.path=value`` as the attribute to assign."""
    if name == "set" and "=" in value:
        key, _, val = value.partition("=")
        return "recipe." + re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key) + f" = {val}"
    return render(option(name, value))


P = ParamSpec("P")
R = TypeVar("R")


def spells_remedies(callee: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function taking ``(model, recipe, ...)``: its errors spell their remedies for ``callee`` as
    :func:`remedies_for` does (the recipe passed by position or as ``recipe=``)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            recipe = args[1] if len(args) > 1 else kwargs.get("recipe")
            with remedies_for(recipe, callee):
                return fn(*args, **kwargs)

        return run

    return decorate


@contextlib.contextmanager
def remedies_for(recipe: Any, callee: str) -> Iterator[None]:
    """Errors raised inside whose remedy is an override (``overrides=['pruning.0.layers.exclude=[...]']``, which
    ``run_prune``, ``plan`` and ``load_recipe`` take) are raised again for a caller that took ``recipe`` as given
    with no overrides (``callee``, e.g. the Pruner): a dict's remedy is that key of the dict, a recipe file's or
    shipped name's is ``sparsekit.load_recipe(it, overrides=[...])``. The Pruner said "for this run
    overrides=[...]", and ``Pruner(..., overrides=...)`` is a TypeError. A :class:`Recipe` (built by the
    library's own runs too, whose remedies stay theirs) is left as it is; so are the other options."""
    if isinstance(recipe, Recipe) or not isinstance(recipe, Mapping | str | os.PathLike):
        yield
        return

    def as_set(name: str, value: str) -> str | None:  # the key.path=value an override remedy sets, if any
        if name == "device" and value:
            return f"finetune.device={value}"
        return value if name == "set" and "=" in value else None

    if isinstance(recipe, Mapping):

        def spell(name: str, value: str) -> str:
            setting = as_set(name, value)
            return _in_the_dict("set", setting) if setting else option(name, value)

    else:
        where = os.fspath(recipe)

        def spell(name: str, value: str) -> str:
            setting = as_set(name, value)
            if not setting:
                return option(name, value)
            return f"sparsekit.load_recipe({where!r}, overrides=[{setting!r}]) (then pass that recipe to {callee})"

    try:
        yield
    except SparsekitError as err:
        again = render(err.raw_message, spell)
        if again == err.raw_message:
            raise
        named = copy.copy(err)  # the same type and attributes, the remedy spelled for this caller
        named.raw_message = again
        named.args = (render(again), *err.args[1:])
        raise named.with_traceback(err.__traceback__) from err.__cause__


def _in_the_dict(name: str, value: str) -> str:
    """How a RecipeError about a recipe given as a dict spells a remedy: ``key.path=value`` as the dict's key."""
    if name == "set" and "=" in value:
        key, _, val = value.partition("=")
        return f"{key}: {val} in the recipe dict"
    return render(option(name, value))


def _override_key(parents: Sequence[str], key: str, data: dict[str, Any]) -> str | None:
    """For :func:`~sparsekit.recipe_yaml.apply_overrides`: why ``key`` is not a key of the mapping at
    ``parents`` in ``data`` (with a "did you mean"), or None when it is, or when any key goes there."""
    section = section_at(parents, data)
    if section is None:
        return _unwritten_list(parents, key, data)
    if key in section.model_fields:
        return None
    # (an override is a dotted path: the remedy names one, not the YAML a file takes)
    return f"{unknown_key(section, key, written_at=parents)[0]} {SEE_DOCS}"


def _shorthand_mapping(path: Sequence[str], value: Any, data: dict[str, Any]) -> Any:
    """For :func:`~sparsekit.recipe_yaml.apply_overrides`: the mapping that ``value``, written at ``path`` in
    ``data``, is short for (``schedule: oneshot`` -> ``{start_epoch: 0, end_epoch: 0}``, ``layers: [fc1]`` ->
    ``{include: [fc1]}``), so an override can set one key of it; ``value`` itself when it is no shorthand."""
    section = section_at(path, data)
    if section is LayerSelect:
        return _layers_mapping(value)
    if section is ScheduleSpec and value == "oneshot":
        return _schedule(value)
    return value


def _value_problem(path: Sequence[str], data: dict[str, Any]) -> str | None:
    """For :func:`~sparsekit.recipe_yaml.apply_overrides`: the schema's problem with the value at ``path`` in
    ``data`` (``finetune: must be a mapping, ... (got a number 5)``), or None when it has none there."""
    try:
        Recipe.model_validate(data, context={"trainer": False})
    except ValidationError as err:
        wanted = ".".join(path)
        for e in _merge_union_members(err.errors()):
            where = _path(tuple(e["loc"]))
            if dotted_path(where) == wanted:
                return f"{where}: {_message(e)}"
    except Exception:  # noqa: BLE001 - only a better message is at stake: the override's own error stands
        return None
    return None


def _unwritten_list(parents: Sequence[str], key: str, data: dict[str, Any]) -> str | None:
    """Why ``key`` (an index) cannot be set in the list field at ``parents`` that the recipe does not write (it
    takes its default), or None when that is not the case. Setting item 0 of it made a mapping {'0': value}, which
    was refused as "must be a list ... (got a mapping {'0': 8})", as though the user had not written an index."""
    owner = section_at(parents[:-1], data) if parents else None
    field = owner.model_fields.get(parents[-1]) if owner is not None else None
    if field is None or not (key.isascii() and key.isdigit()) or get_origin(_unwrap(field.annotation)) is not list:
        return None
    default = field.get_default(call_default_factory=True)
    path = ".".join(parents)
    example = option("set", f"{path}={json.dumps(default) if default else '[...]'}")
    return (
        f"{path} is not written in the recipe (it takes its default, {json.dumps(default)}), so it has no item "
        f"{key} to set; give the whole list, e.g. {example}"
    )


def load_recipe(
    path: str | os.PathLike[str] | Mapping[str, Any] | Recipe,
    overrides: Sequence[str] | None = None,
    *,
    trainer: bool = False,
) -> Recipe:
    """Read, override (``overrides``: ``key.path=value`` strings) and validate a recipe file, or a shipped
    recipe by name (``"lenet-gradual-magnitude-90"``, see :func:`sparsekit.shipped_recipes`) when no
    such file exists, or a recipe already read into a dict: a Recipe or a RecipeError, whatever the input. A
    :class:`Recipe` is checked as it is now and returned (TypeError with ``overrides``: assign its fields instead).
    TypeError for a ``path`` of another type. ``trainer``: see :func:`validate_recipe`."""
    from .recipe_catalog import find_recipe

    # Read once, here: an iterator given as overrides was used up applying them, so none counted as the caller's.
    overrides = override_list(overrides) if overrides is not None else None
    if isinstance(path, Mapping):
        data = python_data(path)
        if overrides:
            data = apply_overrides(
                data,
                overrides,
                check_key=_override_key,
                expand=_shorthand_mapping,
                check_value=_value_problem,
                source="recipe (a dict)",
            )
        recipe = validate_recipe(data, "recipe (a dict)", overrides or (), trainer=trainer)
        recipe._overridden = frozenset(_override_path(o) for o in overrides or [])
        recipe._overrides = tuple(overrides or [])
        return recipe
    if isinstance(path, Recipe):
        # Pruner, plan and run_prune take one; a helper passing its argument on to load_recipe met a TypeError.
        if overrides:
            raise TypeError(
                "load_recipe(Recipe, overrides=...): overrides apply to a recipe file, a shipped recipe's name or a "
                "dict; change a Recipe by assigning its fields (recipe.finetune.epochs = 3)"
            )
        return _check_as_it_is(path, trainer)
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"load_recipe takes a recipe file, a shipped recipe's name, a dict or a Recipe, not {type(path).__name__}"
        )
    if not os.fspath(path):  # Path("") is the current folder: "'.': is a directory" named nothing the caller gave
        raise RecipeError("the recipe path is empty: give a recipe file, a shipped recipe's name or a dict")
    path = find_recipe(os.fspath(path))
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(
            data, overrides, check_key=_override_key, expand=_shorthand_mapping, check_value=_value_problem, source=path
        )
    recipe = validate_recipe(data, str(path), overrides or (), trainer=trainer)
    recipe._source = str(path)  # where a factory or data path it names came from (sparsekit.trust)
    recipe._overridden = frozenset(_override_path(o) for o in overrides or [])
    recipe._overrides = tuple(overrides or [])  # as given: an OptionOverride keeps its option's name
    return recipe
