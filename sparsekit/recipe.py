"""Recipes: validated, pure data (pydantic v2, unknown keys rejected).

A recipe is YAML with ``version: 1``. Every validation error is reported with its YAML path, e.g.
``pruning[0].sparsity: must be < 1``.

>>> recipe = load_recipe("recipes/lenet-gradual-magnitude-90.yaml", overrides=["finetune.epochs=2"])
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import RecipeError

LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    factory: str | None = Field(None, description="pkg.module:callable that builds the model")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    input_shape: list[Annotated[int, Field(gt=0)]] | None = None


class DataSpec(_Strict):
    source: str = "digits"
    batch_size: int = Field(64, gt=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    synthetic_samples: int = Field(512, gt=0)


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class LRScheduleSpec(_Strict):
    name: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = Field(1, gt=0, description="epochs between decays (step)")
    gamma: float = Field(0.1, gt=0, le=1)


class FinetuneSpec(_Strict):
    epochs: int = Field(0, ge=0)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec)
    loss: Literal["cross_entropy"] = "cross_entropy"
    max_steps_per_epoch: int | None = Field(None, gt=0, description="cap on batches per epoch (quick runs)")


class ScheduleSpec(_Strict):
    """Zhu & Gupta gradual pruning: sparsity rises from ``init_sparsity`` at ``start_epoch`` to the
    method's target at ``end_epoch`` along a cubic curve, updated every ``every`` epochs."""

    start_epoch: float = Field(0, ge=0)
    end_epoch: float = Field(0, ge=0)
    every: float = Field(1, gt=0)
    init_sparsity: float = Field(0.0, ge=0, lt=1)
    curve: Literal["cubic", "linear"] = "cubic"

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


class LayerSelect(_Strict):
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    types: list[Literal["Linear", "Conv1d", "Conv2d", "Conv3d"]] = Field(default_factory=lambda: ["Linear", "Conv2d"])


class _MethodBase(_Strict):
    layers: LayerSelect = Field(default_factory=LayerSelect)

    @model_validator(mode="before")
    @classmethod
    def _oneshot(cls, data: Any) -> Any:
        if isinstance(data, dict) and "schedule" in data:
            data = {**data, "schedule": _schedule(data["schedule"])}
        return data


class MagnitudeSpec(_MethodBase):
    method: Literal["magnitude"]
    sparsity: float = Field(ge=0, lt=1)
    scope: Literal["global", "layer"] = "global"
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)


class GradientSpec(_MethodBase):
    method: Literal["gradient"]
    criterion: Literal["taylor", "movement"] = "taylor"
    sparsity: float = Field(ge=0, lt=1)
    scope: Literal["global", "layer"] = "global"
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    calibration_batches: int = Field(8, gt=0, description="batches used to score when not fine-tuning")


class L1Spec(_MethodBase):
    method: Literal["l1"]
    strength: float = Field(gt=0)
    mode: Literal["penalty", "proximal"] = "penalty"
    group: Literal["none", "row", "channel"] = "none"
    threshold: float = Field(0.0, ge=0)
    remove_dead: bool = True
    schedule: ScheduleSpec = Field(default_factory=lambda: ScheduleSpec(end_epoch=1e9))


class MaxNormSpec(_MethodBase):
    method: Literal["max_norm"]
    max_value: float = Field(gt=0)


class StructuredSpec(_MethodBase):
    method: Literal["structured"]
    ratio: float = Field(gt=0, lt=1)
    importance: Literal["l1", "l2", "taylor", "bn_scale"] = "l2"
    scope: Literal["layer", "global"] = "layer"
    steps: int = Field(1, gt=0)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    ignore: list[str] | None = Field(None, description="modules whose outputs are kept (default: the head)")
    min_channels: int = Field(1, gt=0, description="floor: no layer keeps fewer output channels")
    calibration_batches: int = Field(8, gt=0, description="batches scored for taylor importance when not fine-tuning")


MethodSpec = Annotated[
    MagnitudeSpec | GradientSpec | L1Spec | MaxNormSpec | StructuredSpec, Field(discriminator="method")
]


class ExportSpec(_Strict):
    onnx: bool = True
    opset: int = Field(18, ge=13, le=23)
    quantize: Literal["none", "int8"] = "none"
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    sparse_storage: bool = False


class BenchmarkSpec(_Strict):
    enabled: bool = True
    batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [1, 32], min_length=1)
    threads: int = Field(1, gt=0)
    warmup: int = Field(20, ge=0)
    runs: int = Field(200, gt=0)


class Recipe(_Strict):
    """A whole recipe. ``Recipe(**mapping)`` validates; prefer :func:`load_recipe` for files."""

    version: Literal[1] = 1
    seed: int = Field(0, ge=0)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    pruning: list[MethodSpec] = Field(default_factory=list)
    export: ExportSpec = Field(default_factory=ExportSpec)
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)

    @model_validator(mode="after")
    def _within_epochs(self) -> Recipe:
        for i, m in enumerate(self.pruning):
            sched = getattr(m, "schedule", None)
            if sched is None or m.method == "l1":
                continue
            if sched.end_epoch > 0 and sched.end_epoch > self.finetune.epochs:
                raise ValueError(
                    f"pruning[{i}].schedule.end_epoch ({sched.end_epoch:g}) is after the last fine-tuning "
                    f"epoch (finetune.epochs={self.finetune.epochs}): the target would never be reached"
                )
        return self


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("magnitude", "gradient", "l1", "max_norm", "structured", "function-after[_order()]"):
            continue  # discriminator tags pydantic adds to the location
        elif isinstance(part, str) and part.startswith(("function-", "union[")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "<recipe>"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see INTERFACE.md §3 for the schema)"
        elif e["type"] == "union_tag_not_found":
            msg = "missing 'method:'; use one of 'magnitude', 'gradient', 'l1', 'max_norm', 'structured'"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown method {e['ctx']['tag']!r}; use one of {e['ctx']['expected_tags']}"
        lines.append(f"{_path(e['loc'])}: {msg}")
    return f"{source}: " + "; ".join(lines)


def validate_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the recipe must be a YAML mapping (got {type(data).__name__})")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, source)) from None


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (list items by index: ``pruning.0.sparsity=0.8``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected key.path=value, e.g. --set finetune.epochs=2")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"--set {key}: {where!r} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = _parse_value(raw)
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = _parse_value(raw)
                else:
                    node = node.setdefault(part, {})
            else:
                raise RecipeError(f"--set {key}: {'.'.join(parts[:depth])!r} is a value, not a mapping")
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: recipe file not found (see `sparsekit recipes` for shipped ones)")
    if path.is_dir():
        raise RecipeError(f"{path}: is a directory, expected a YAML recipe file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read the recipe ({err})") from None
    try:
        # safe_load only: a recipe never constructs Python objects (!!python/... tags are refused).
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{path}{where}: YAML tag not allowed ({err.problem}); recipes are plain data") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty; start from one in recipes/")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (``--set``) and validate a recipe file."""
    data = read_yaml(path)
    if overrides:
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: the recipe must be a YAML mapping")
        data = apply_overrides(data, overrides)
    return validate_recipe(data, str(path))
