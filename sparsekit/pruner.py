"""The Pruner: the one orchestrator the CLI and a user's training loop both drive.

>>> pruner = Pruner(model, recipe, steps_per_epoch=len(train_loader))
>>> loss = criterion(model(x), y) + pruner.penalty(); loss.backward(); opt.step(); pruner.step()
>>> loss = criterion(model(x), y); loss.backward(); pruner.regularize(); opt.step(); pruner.step()  # same
>>> model = pruner.finalize()

Each entry of the recipe's ``pruning`` list becomes a method (:mod:`sparsekit.methods`); the Pruner
calls their hooks and alone keeps the run's state: the step count, the masks, the structural
``pruning_history`` and ``structure_changed``, which it updates from the
:class:`~sparsekit.methods.Changes` the methods return.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from . import distributed as _distributed
from . import methods
from .errors import TargetError, TargetMissedWarning, one_line
from .layers import computed_weight, layer_kind, prunable_layers, tied_aliases
from .learning_rate import LearningRates, on_optimizer_steps
from .masks import MASK, apply_masks, bake, forget_applied, forget_plan, get_mask, weight_of
from .methods.base import outside_sparsekit
from .modelio import compiled_module, non_finite_tensors
from .precision import autocast_off, full_precision
from .recipe import Recipe, as_recipe, pruning_key, remedies_for
from .schedule import checked_steps_per_epoch
from .step_order import StepOrderCheck
from .surgery import INFERENCE_TENSORS_ADVICE, has_inference_tensors, takes_several_inputs, tied_parameters
from .wrappers import checked_input_shape, require_initialized, require_module, unwrap_wrappers

# pruner.step() checks that the pruned layers are still the model's (Pruner._check_layers) on its first steps after the
# Pruner is built or restored (load_state_dict), where a loop that changes the model after that does so, and at the end
# of each epoch.
_LAYER_CHECK_STEPS = 8

# update_optimizer returns the optimizer it was given (updated in place): typed so, a user's
# `optimizer = pruner.update_optimizer(optimizer)` keeps its own type (an SGD stays an SGD for mypy).
_OptimizerT = TypeVar("_OptimizerT", bound=torch.optim.Optimizer)


def _distributed_active() -> bool:
    """:func:`sparsekit.distributed.active`, answering the usual "no process group" without its import
    statement (this runs after every optimizer step)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and _distributed.active()


def _may_restructure(method: methods.Method, step: int) -> bool:
    """Whether ``method.after_step(step)`` may replace parameters: a structural method's own ``due(step)``
    when it has one (walking the model's parameters at every step costs more than a small model's step),
    else every step of a structural method."""
    if not method.structural:
        return False
    due = getattr(method, "due", None)
    return True if due is None else bool(due(step))


def _drop_spent_grads(model: nn.Module, held: list[nn.Parameter]) -> None:
    """Set ``.grad`` to None on the parameters of ``model`` that are not in ``held`` (those channel removal just
    created). torch-pruning slices a replaced parameter's gradient into the new one, but that gradient was this
    step's, already applied: ``optimizer.zero_grad()`` cannot clear it (the optimizer still holds the old
    objects), so a loop that zeroes after ``pruner.step()`` would add it to the next step's."""
    ids = {id(p) for p in held}  # held alive by ``held``, so no new parameter can reuse one of these ids
    for p in model.parameters():
        if id(p) not in ids:
            p.grad = None


# The share of a model's weights (parameters of 2 or more dimensions) held outside its layers above which the
# Pruner says so: below it, a position embedding or a class token (which no method prunes either) is not worth a word.
LOOSE_WEIGHTS_NOTED = 0.1


def _note_loose_weights(model: nn.Module) -> None:
    """Warn when much of ``model``'s weights sit in parameters a module of the user's own holds directly (used
    with ``F.linear`` / ``F.conv2d``): methods prune Linear and convolution layers only, so those stay dense, and
    :func:`sparsekit.sparsity` and every report count the layers alone."""
    total = 0
    loose: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        # torch's own modules (norms, embeddings, attention; a subclass too) and any layer sparsekit prunes, but not
        # a parameter container (ParameterList / ParameterDict hold a user's parameters as they are)
        own = layer_kind(module) is not None or (
            not isinstance(module, nn.ParameterList | nn.ParameterDict)
            and any(c.__module__.startswith("torch.") for c in type(module).__mro__ if c not in (nn.Module, object))
        )
        for pname, param in module.named_parameters(recurse=False):
            if param.dim() < 2:
                continue
            total += param.numel()
            if not own:
                loose[f"{name}.{pname}" if name else pname] = tuple(param.shape)
    size = sum(math.prod(shape) for shape in loose.values())
    if not loose or size <= LOOSE_WEIGHTS_NOTED * total:
        return
    shown = ", ".join(f"{n} {list(shape)}" for n, shape in list(loose.items())[:4])
    more = f" and {len(loose) - 4} more" if len(loose) > 4 else ""
    warnings.warn(
        f"{size:,} of the model's {total:,} weights ({size / total:.0%}) are parameters no Linear or convolution "
        f"module holds ({shown}{more}; used with F.linear / F.conv2d?): no method prunes them, and sparsity "
        "and reports count the layers alone. Hold them in nn.Linear / nn.Conv2d modules to prune them",
        stacklevel=3,
    )


def _rebind(method: Any, model: nn.Module) -> None:
    """Point ``method``'s module references at ``model``'s modules of the same names: its own ``rebind`` where it
    has one (modules held besides ``layers``), else its ``layers``."""
    rebind = getattr(method, "rebind", None)
    if callable(rebind):
        rebind(model)
        return
    modules = dict(model.named_modules())
    method.layers = {n: modules[n] for n in method.layers if n in modules}


def _pruning_changes(saved: object, recipe: Recipe) -> str:
    """What differs between a saved Pruner state's pruning section (:func:`pruning_key`'s text) and ``recipe``'s, named
    field by field (``pruning.0.sparsity: 0.5 then, 0.7 now``) as the CLI's resume names them: a bare "a changed
    method, target or schedule" left the user comparing two recipes by hand. Those words when the saved text is not
    a section sparsekit wrote."""
    from .provenance import describe_changes, differences

    try:
        before = json.loads(saved) if isinstance(saved, str) else None
    except (ValueError, RecursionError):
        before = None
    now = json.loads(pruning_key(recipe))
    diff = (
        differences({"recipe": {"pruning": before}}, {"recipe": {"pruning": now}}) if isinstance(before, list) else {}
    )
    return describe_changes(diff) if diff else "a changed method, target or schedule"


NO_PRUNING_WARNING = "the recipe has no pruning entries"
"""How the warning of a Pruner built on a recipe without pruning entries starts (for a user's own loop or trainer: a
`pruning:` key misspelt or indented under another section reads that way)."""


@contextlib.contextmanager
def no_entries_warning_off() -> Iterator[None]:
    """Within it, a Pruner built on a recipe without pruning entries does not warn: for sparsekit's own Pruners (a
    rehearsal on a copy, validate's simulation of the entries it can predict, none for an l1-only recipe, and
    ``sparsekit prune``'s run, which says it in its own words: "no method here creates zeros")."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_PRUNING_WARNING)
        yield


class Pruner:
    """Binds a model and a recipe's ``pruning`` list; call :meth:`step` after every optimizer step.

    ``model``: the model to prune, changed in place (a DistributedDataParallel / DataParallel wrapper
    is unwrapped); TypeError when not an ``nn.Module``. ``recipe``: a :class:`~sparsekit.recipe.Recipe`, a dict
    of one, a recipe file or a shipped recipe's name (RecipeError when invalid, naming the field; TypeError for
    anything else). ``steps_per_epoch``: optimizer steps per epoch (``len(train_loader)``), which turns
    the recipe's epochs into steps; TypeError when not an int, ValueError when not positive. ``context``:
    ``{"input_shape": [1, ...]}``, the batch-first shape of one input, needed by methods that trace the model
    (structured, l1 ``remove_dead``); defaults to the recipe's ``model.input_shape``, else it is taken from the first
    batch the model runs on (``[1, *x.shape[1:]]`` of its first tensor argument): a structured entry's methods are
    then built when that batch arrives, before its forward runs, and a call that needs them before any batch
    (``step``, ``finalize``, ...) is a TargetError saying so; an l1 entry with ``group`` is built at once and
    again on that batch (its groups, a BatchNorm's gamma and beta with them, and the head it leaves out are found
    by running the model).

    ``scorers``: Python-only replacements of entries' criteria, by index into ``recipe.pruning``
    (recipes themselves name criteria only: file data never names code):

    - a ``magnitude`` or ``gradient`` entry takes a scorer ``fn(weight, grad) -> scores`` of the weight's
      shape, higher = keep (see :mod:`sparsekit.methods.scorers`);
    - a ``structured`` entry takes a torch-pruning importance, e.g.
      ``tp.importance.GroupMagnitudeImportance(p=1)``, or any ``fn(group) -> Tensor[channels]``.

    >>> pruner = Pruner(model, recipe, len(loader), scorers={0: lambda w, g: -w.abs()})

    Under ``torch.distributed`` (e.g. ``torchrun``) every rank must end each step with the same masks:
    wrap the model in ``DistributedDataParallel`` (its averaged gradients make gradient scores equal) and
    call :meth:`step` on every rank. Without DDP each rank's optimizer steps on its own gradients, so the
    weights themselves drift apart; :attr:`average_grads` (True for a model not wrapped in DDP) only makes
    gradient *scores* agree (e.g. calibration with no optimizer step), by averaging gradients across ranks
    inside :meth:`step`. A checksum of the masks is compared
    across ranks once per epoch and at :meth:`finalize`; ranks that disagree raise
    :class:`~sparsekit.distributed.DivergenceError`. After structured pruning removed channels under DDP,
    rebuild the wrapper (``model = sparsekit.distributed.rewrap(model)``) on every rank, then
    :meth:`update_optimizer`.

    ``scorers`` that is not a dict (a list of scorers, say) or a non-callable scorer is a TypeError; an index
    outside ``recipe.pruning`` or an entry that ranks nothing (l1, max_norm) is a ValueError. Building also raises
    TargetError when a recipe's layer selection does not fit the model, two methods would mask the same weights,
    or a method would untie weights shared by several modules (a structural method changing the shape of one of
    them, a masking method selecting only some of them; modules selected together share one mask).
    """

    @full_precision
    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any],
        steps_per_epoch: int,
        *,
        context: dict | None = None,
        scorers: Mapping[int, Callable[..., Any]] | None = None,
    ):
        self._given = recipe  # as given, for the remedies of errors raised when the first batch arrives
        with remedies_for(recipe, "Pruner"):
            self._init(model, recipe, steps_per_epoch, context=context, scorers=scorers)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickle (torch.save(pruner), a multiprocessing spawn's arguments) failed deep in the attributes with "cannot
        # pickle 'weakref.ReferenceType' object", naming neither the Pruner nor what to save instead.
        raise TypeError(
            "a sparsekit.Pruner cannot be pickled (it holds hooks on the model and on torch's optimizers): save "
            "pruner.state_dict() beside model.state_dict(), and to resume build the model and a Pruner as before and "
            "call pruner.load_state_dict(state) (the Python API section of the repository's README)"
        )

    # copy.copy and copy.deepcopy go through __reduce_ex__ too (copy.copy was refused as "cannot be pickled"): each
    # copies the attributes as it did before pickling was refused.
    def __copy__(self) -> Pruner:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Pruner:
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def _init(
        self,
        model: nn.Module,
        recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any],
        steps_per_epoch: int,
        *,
        context: dict | None,
        scorers: Mapping[int, Callable[..., Any]] | None,
    ) -> None:
        require_module(model, "Pruner")
        recipe = as_recipe(recipe)
        steps_per_epoch = checked_steps_per_epoch(steps_per_epoch, "Pruner(steps_per_epoch=...)")
        self.model, data_parallel = unwrap_wrappers(model)
        if compiled_module(self.model) and not prunable_layers(self.model):
            # Its layers are compiled code: no module to hold a mask (torch's words were an AttributeError).
            raise TypeError(
                f"Pruner(model=...): a {type(self.model).__name__} (TorchScript or torch.export) keeps no Linear / "
                "Conv modules to prune; build your nn.Module and load the weights into it "
                "(model.load_state_dict(compiled.state_dict()))"
            )
        require_initialized(self.model, "Pruner", TargetError)
        if not torch.is_inference_mode_enabled() and has_inference_tensors(self.model):
            # Every mask applied in place then failed with torch's "Inplace update to inference tensor outside
            # InferenceMode", and structured tracing with advice to check model.input_shape.
            raise TargetError(f"Pruner(model=...): {INFERENCE_TENSORS_ADVICE}")
        if bad := non_finite_tensors(self.model):
            # Taken without a word: magnitude ranked a NaN weight first (kept), a masked one stayed NaN (0 * NaN), and
            # max_norm turned an inf weight's whole row into NaN. The CLI refuses such a file at load.
            more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
            warnings.warn(
                f"Pruner(model=...): the model's weights hold NaN or inf values ({', '.join(bad[:4])}{more}): rankings "
                "and masks are undefined on them; load finite weights (from before a training run diverged)",
                stacklevel=outside_sparsekit(),
            )
        if not recipe.pruning:
            # A recipe with no pruning entries trained the model dense through a Pruner (and a trainer callback) that
            # said nothing: a `pruning:` key misspelt or indented under another section reads that way.
            warnings.warn(
                NO_PRUNING_WARNING + ", so nothing is pruned and the model trains dense; add entries under the "
                "top-level `pruning:` key (the recipe reference lists each method's keys)",
                stacklevel=outside_sparsekit(),
            )
        # (DDP inside torch.compile's wrapper is one of its modules)
        ddp = nn.parallel.DistributedDataParallel
        self._in_ddp = data_parallel and any(isinstance(m, ddp) for m in model.modules())
        self._stale_guard: Any = None
        # Under torch.distributed, DDP averages gradients in backward(); a model used without it gets
        # them averaged here before gradient scoring, so every rank ranks the same scores.
        self.average_grads = not data_parallel
        self.recipe = recipe
        self.steps_per_epoch = steps_per_epoch
        # Who calls step(): (a trainer callback's name, the trainer's options that set the run's length) when one
        # does: it counts the trainer's real optimizer steps, gradient accumulation included, so a missed target is
        # not blamed on the caller's steps_per_epoch.
        self._stepped_by: tuple[str, str] | None = None
        self.step_count = 0
        self._check_until = _LAYER_CHECK_STEPS  # (see _LAYER_CHECK_STEPS)
        self.pruning_history: list = []  # torch-pruning's replayable history (structured methods)
        # The removals the model came with (a structurally pruned checkpoint, read_model's mark): a checkpoint
        # of the result replays them before this Pruner's, or it could not be rebuilt.
        from .modelio import STRUCTURE_ATTR

        came_with = getattr(self.model, STRUCTURE_ATTR, None) or {}
        self.prior_history: list = list(came_with.get("history") or [])
        self._prior_shape = came_with.get("input_shape")
        # Set when a structural method replaced parameters: rebuild the optimizer, then reset it.
        self.structure_changed = False
        self._replayed = False  # structure_changed came from load_state_dict's replay, not from a step
        self.context = _check_context(context)
        if not self.context.get("input_shape") and recipe.model.input_shape:
            self.context["input_shape"] = list(recipe.model.input_shape)
        shape = self.context.get("input_shape")
        chosen = _check_scorers(scorers or {}, len(recipe.pruning))
        self.methods: list[methods.Method] = []
        self._rates: list[LearningRates] = []
        self._order: StepOrderCheck | None = None
        self._structural = self._needs_grad = self._masks_possible = False
        self._param_names: dict[int, list[str]] = {}
        self._waiting: Any = None  # the forward pre-hook waiting for the first batch (see _await_first_batch)
        self._wait_failed: BaseException | None = None
        self._pending = False  # the methods wait for the first batch's shape
        self._regroup = False  # the group lasso entries are built again on the first batch (below)
        self._warned: set[tuple[type, str]] = set()  # what the first build warned of (category, text)
        if not shape and any(spec.method == "structured" for spec in recipe.pruning):
            # A loop of one's own runs its batches through the model: the first one tells the input's shape (a
            # Conv1d's [1, C, L], token ids' [1, T]) where the recipe and context gave none, so the methods are
            # built when it arrives, before that forward runs (nothing has stepped yet).
            self._await_first_batch(chosen)
            return
        # Group lasso finds its groups (a unit's BatchNorm gamma and beta, the layers a residual add couples) and the
        # classifier head by running the model: built without a shape, a CNN's zeroed channels kept their BatchNorm
        # shift, so finalize could not remove them while the target counted them as gone. Such entries are built
        # now (their refusals and penalty() work before any batch) and again on the first batch, with its shape.
        # (A forward of several inputs has no one shape to wait for.)
        self._regroup = not shape and not takes_several_inputs(self.model)
        # What this build warns of is remembered: building again on the first batch says only what is new (the same
        # warnings twice, the second attributed to torch's module.py, told the user nothing).
        with _warnings_told(self._warned) if self._regroup else contextlib.nullcontext():
            self._build(shape, chosen, shape_later=self._regroup)
        self._regroup = self._regroup and any(self._regrouped(m) for m in self.methods)
        if not shape:
            # l1's remove_dead traces the model at finalize: the first batch's shape then beats its Linear-first guess
            self._await_first_batch(None)

    def _await_first_batch(self, chosen: dict[int, Callable[..., Any]] | None) -> None:
        """Take the input shape from the first batch the model runs on: build the methods then (``chosen``: the
        scorers), or, when they are built already (``chosen`` None), hand it to those that trace the model later."""

        def first_batch(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._stop_waiting()
            x = _batch_tensor(_module, args, kwargs)
            if chosen is None:
                # A forward of several inputs (image, meta) has no one input shape: the first tensor's was recorded
                # as the model's (save_model wrote it into the checkpoint, remove_dead traced with it alone).
                shape = None
                if x is not None and x.dim() > 0 and not self.finalized and not takes_several_inputs(_module):
                    shape = self.context["input_shape"] = [1, *(int(d) for d in x.shape[1:])]
                if self._regroup:
                    # (None: a batch with no one shape, a dict: built as before, saying what that leaves unknown)
                    with _outside_the_forward():
                        self._build_groups_again(shape)
                if shape:
                    for method in self.methods:
                        if hasattr(method, "input_shape") and not method.input_shape:
                            method.input_shape = list(shape)
                return
            held = _held_tensors(args, kwargs)
            if x is None and held:
                # A dict / tuple batch (model(batch)): structured pruning traces the model with one tensor, which no
                # model.input_shape can make into that container; the advice to set one led to a trace failure.
                self._wait_failed = TargetError(
                    f"Pruner: structured pruning traces the model with one input tensor, and the first call of the "
                    f"model passed its batch inside a {held}; no input shape fits such a forward: use an "
                    "unstructured method (magnitude, gradient, or l1 with remove_dead: false), or prune a module "
                    f"whose forward takes one tensor{self._submodule_remedy()}"
                )
                raise self._wait_failed
            if x is None or x.dim() == 0:
                self._wait_failed = TargetError(
                    "Pruner: structured pruning traces the model and needs its input shape, and the first call of "
                    "the model passed no batch tensor to read it from; set model.input_shape in the recipe or "
                    f"{self._shape_remedy()}"
                )
                raise self._wait_failed
            # One sample of the batch: the shape every trace, export and check of sparsekit uses (batch first).
            shape = [1, *(int(d) for d in x.shape[1:])]
            self.context["input_shape"] = shape
            try:
                with remedies_for(self._given, "Pruner"), _outside_the_forward():
                    self._build(shape, chosen)
                self._pending = False
            except BaseException as err:
                self._wait_failed = err
                raise

        self._pending = chosen is not None
        self._chosen = chosen or {}  # the scorers, for a build by load_state_dict before any batch
        self._waiting = self.model.register_forward_pre_hook(_FirstBatchHook(first_batch), with_kwargs=True)

    def _shape_remedy(self) -> str:
        """How the one who built this Pruner gives it an input shape: a trainer callback (``_stepped_by``) takes
        ``input_shape=`` and builds the Pruner itself, so the Pruner's ``context=`` is no remedy for its user."""
        if self._stepped_by is not None:
            return f"pass {self._stepped_by[0]}(..., input_shape=[1, ...])"
        return "pass context={'input_shape': [1, ...]} to the Pruner"

    def _submodule_remedy(self) -> str:
        """For a trainer callback's Pruner: how its user names the one-tensor module (the callback prunes the whole
        LightningModule / Trainer model unless told ``submodule=``)."""
        if self._stepped_by is not None:
            return f" (pass {self._stepped_by[0]}(..., submodule='net') with the name of the attribute holding it)"
        return ""

    def _stop_waiting(self) -> None:
        if self._waiting is not None:
            self._waiting.remove()
            self._waiting = None

    def _require_built(self, call: str) -> None:
        """TargetError for a call that needs the methods while they still wait for the first batch."""
        if self._wait_failed is not None:
            raise TargetError(
                f"pruner.{call}(): this Pruner could not be set up on the first batch ({one_line(self._wait_failed)})"
            )
        if self._pending:
            from .modelio import input_shape_example

            # the model's own kind of example: [1, 128] token ids for an embedding first, a conv's channels, ...
            example = "[" + input_shape_example(self.model).replace(",", ", ") + "]"
            raise TargetError(
                f"pruner.{call}(): structured pruning traces the model and needs its input shape, which this Pruner "
                "takes from the first batch the model runs on, and none has yet; run a batch through the model "
                f"first (your loop's first forward), or set model.input_shape in the recipe (e.g. {example}) or "
                f"{self._shape_remedy()}"
            )

    @staticmethod
    def _regrouped(method: Any) -> bool:
        """Whether ``method`` is an entry the first batch's shape builds again (group lasso, see ``_init``)."""
        spec = getattr(method, "spec", None)
        return getattr(spec, "method", None) == "l1" and getattr(spec, "group", "none") != "none"

    def _build_groups_again(self, shape: list[int] | None) -> None:
        """Build the group lasso entries again, now with the first batch's ``shape`` (None: it gave none), before
        anything stepped: the same entry, its groups and head now found by running the model."""
        self._regroup = False
        if self.step_count or self.finalized:
            return
        with remedies_for(self._given, "Pruner"), _warnings_told(self._warned, again=True):
            for i, (spec, old) in enumerate(zip(self.recipe.pruning, self.methods, strict=True)):
                if not self._regrouped(old):
                    continue
                setup = methods.Setup(index=i, steps_per_epoch=self.steps_per_epoch, input_shape=shape)
                method = methods.build(spec, self.model, setup)
                rates = getattr(old, "learning_rates", None)
                if rates is not None:
                    rates.close()
                    self._rates.remove(rates)
                self.methods[i] = method
                self._watch_rates(method)
                method.start()
            self._check_overlap()
            self._check_reachable()
            self._check_tied()
            self._share_tied_masks()

    def _build(self, shape: Any, chosen: dict[int, Callable[..., Any]], shape_later: bool = False) -> None:
        """The recipe's methods, bound to the model now that the input shape (when one is needed) is known.
        ``shape_later``: the group lasso entries are built again on the first batch (see ``_init``)."""
        recipe = self.recipe
        steps_per_epoch = self.steps_per_epoch
        self.methods = [
            methods.build(
                spec,
                self.model,
                methods.Setup(
                    index=i,
                    steps_per_epoch=steps_per_epoch,
                    input_shape=[int(d) for d in shape] if shape else None,
                    scorer=chosen.get(i),
                    shape_later=shape_later and spec.method == "l1" and getattr(spec, "group", "none") != "none",
                ),
            )
            for i, spec in enumerate(recipe.pruning)
        ]
        self._check_overlap()
        self._check_reachable(shape_later)
        self._check_tied()
        self._share_tied_masks()
        _note_loose_weights(self.model)
        self._structural = any(m.structural for m in self.methods)
        self._needs_grad = any(m.needs_grad for m in self.methods)
        # max_norm makes no masks: a recipe of constraints alone skips the per-step walk for masks, unless
        # the model came with some (set_mask, an earlier Pruner); load_state_dict sets it too.
        self._masks_possible = any(getattr(m, "makes_masks", True) for m in self.methods) or any(
            get_mask(m) is not None for m in self.model.modules()
        )
        if self._structural:
            self._remember_params()
        for method in self.methods:
            self._watch_rates(method)
        for method in self.methods:
            method.start()
        # The first steps' order against the optimizer's (sparsekit.step_order), judged on one pruned weight
        # (the first an optimizer is seen to hold)
        trained = [(n, m) for method in self.methods for n, m in method.layers.items() if weight_of(m).requires_grad]
        self._order = StepOrderCheck(trained) if trained else None

    def _watch_rates(self, method: Any) -> None:
        """Proximal steps shrink by lr * lambda, and an l1 target sizes lambda by lr: such methods learn the
        optimizer's rate (sparsekit.learning_rate)."""
        spec = getattr(method, "spec", None)
        if hasattr(method, "learning_rates") and (
            getattr(spec, "mode", None) == "proximal" or getattr(spec, "target", None) is not None
        ):
            # One per weight the method shrinks by its own rate, as it lists them (tied modules share one;
            # layers coupled into one group follow its owner), else one per distinct weight tensor.
            if hasattr(method, "rate_weights"):
                weights = method.rate_weights()
            else:
                aliases = tied_aliases(method.layers)
                weights = [weight_of(m) for n, m in method.layers.items() if n not in aliases]
            rates = LearningRates(weights, fallback=self.recipe.finetune.optimizer.lr)
            method.learning_rates = rates
            self._rates.append(rates)

    def _check_reachable(self, shape_later: bool = False) -> None:
        """An l1 ``target`` over more units (weights) than its per-layer caps let it zero could only be missed: the
        TargetMissedWarning came at finalize, after the whole run, and ``validate MODEL`` called the recipe fine. It is
        refused now. Not where another entry that zeroes or removes shares its layers, or a structured entry runs:
        their zeros count toward the target and may pass l1's cap. ``shape_later``: the group lasso entries are built
        again on the first batch, which may leave out a head this build kept: they are checked then."""
        for i, method in enumerate(self.methods):
            check = getattr(method, "check_reachable", None)
            if check is None or (shape_later and self._regrouped(method)):
                continue
            helped = any(
                other.structural or (other.zeroes_weights and not other.layers.keys().isdisjoint(method.layers))
                for j, other in enumerate(self.methods)
                if j != i
            )
            if not helped:
                check()

    def _check_overlap(self) -> None:
        # Every layer of the first clashing pair is named at once: one name per error sent a user who excluded it
        # back for the next one (a structured entry over an MLP of three layers took three tries).
        owner: dict[str, int] = {}
        for i, method in enumerate(self.methods):
            if not method.masks_weights:
                continue
            shared: dict[int, list[str]] = {}
            for name in method.layers:
                if name in owner:
                    shared.setdefault(owner[name], []).append(name)
                else:
                    owner[name] = i
            if shared:
                j, names = next(iter(shared.items()))
                raise TargetError(
                    f"pruning[{j}] ({self.methods[j].name}) and pruning[{i}] ({method.name}) both mask "
                    f"the weights of {_layer_names(names)}: exclude {_them(names)} from one of them (layers.exclude)"
                )
        # A structural method changes weight shapes (its layers' outputs, their consumers' inputs):
        # a masking method's masks and scores on those weights would no longer fit. (Masks created
        # by l1 are refitted instead, see surgery.refit_masks.)
        for i, method in enumerate(self.methods):
            hit: dict[int, list[str]] = {}
            for name in method.touched:
                if name in owner:
                    hit.setdefault(owner[name], []).append(name)
            if hit:
                j, names = next(iter(hit.items()))
                order = list(self.methods[j].layers)  # the model's order, not the removal's
                names.sort(key=order.index)
                outputs = [n for n in names if n in method.layers]
                inputs = [n for n in names if n not in method.layers]
                how = " and ".join(
                    text
                    for text, some in (
                        (f"removes output channels of {_layer_names(outputs)}", outputs),
                        (f"shrinks the inputs of {_layer_names(inputs)}", inputs),
                    )
                    if some
                )
                away = (
                    f"keep pruning[{i}] away from {_them(names)} (ignore / layers.exclude of the layers feeding "
                    f"{_them(names)})"
                )
                if len(names) < len(order):
                    remedy = f"Exclude {_layer_names(names)} from pruning[{j}] (layers.exclude), or {away}"
                else:  # excluding them all would leave the masking entry no layer
                    remedy = f"pruning[{j}] selects no other layer: {away}, or drop one of the two entries"
                raise TargetError(
                    f"pruning[{i}] ({method.name}) {how}, whose weights pruning[{j}] "
                    f"({self.methods[j].name}) masks: the masks would no longer fit. {remedy}"
                )

    def _check_tied(self) -> None:
        """Weights shared by several modules stay shared: a structural method may not change the shape of
        any of them, and a masking method masks all of them (one shared mask) or none (TargetError)."""
        named = dict(self.model.named_modules(remove_duplicate=False))
        for holders in tied_parameters(self.model):
            modules = list(dict.fromkeys(n for n, _ in holders))
            shared = f"{holders[0][0]}.{holders[0][1]}"
            for i, method in enumerate(self.methods):
                where = f"pruning[{i}] ({method.name})"
                hit = [n for n in modules if n in method.touched]
                if method.structural and hit:
                    others = [n for n in modules if n != hit[0]]
                    by = getattr(method, "touched_by", {})
                    roots = list(dict.fromkeys(r for n in hit for r in by.get(n, [])))
                    remedy = (
                        f"add {', '.join(repr(r) for r in roots)} to pruning[{i}].ignore"
                        if roots
                        else f"exclude them from pruning[{i}] (layers.exclude)"
                    )
                    raise TargetError(
                        f"{where} would change the shape of {hit[0]!r}, whose parameter {shared!r} is shared with "
                        f"{', '.join(repr(n) for n in others)} (tied weights): removing channels would untie them. "
                        f"Keep pruning[{i}] away from the tied layers: {remedy}"
                    )
                if getattr(method, "zeroes_weights", method.masks_weights):
                    selected = [n for n in modules if n in method.layers]
                    if selected and len(selected) < len(modules):
                        missing = [n for n in modules if n not in selected]
                        # A module of a kind sparsekit never prunes (an Embedding tied to an LM head) cannot be
                        # selected: the one way left is to leave the tied layers out.
                        kinds = {n: type(named[n]).__name__ for n in missing if layer_kind(named[n]) is None}
                        fix = (
                            f"leave them out: layers.exclude: [{', '.join(selected)}] in pruning[{i}] "
                            f"({', '.join(f'{n!r}: {k}' for n, k in kinds.items())}, a kind sparsekit does not prune)"
                            if kinds
                            else "select every module sharing it (they then share one mask) or none "
                            f"(pruning[{i}].layers)"
                        )
                        raise TargetError(
                            f"{where} zeroes weights of {', '.join(repr(n) for n in selected)}, whose parameter "
                            f"{shared!r} is shared with {', '.join(repr(n) for n in missing)} (tied weights), which it "
                            f"does not select: {fix}"
                        )

    def _share_tied_masks(self) -> None:
        """Modules that share a weight share one mask buffer (the AND of theirs), so masking keeps them tied."""
        modules = dict(self.model.named_modules(remove_duplicate=False))
        for holders in tied_parameters(self.model):
            masked = [modules[n] for n, p in holders if p == "weight" and get_mask(modules[n]) is not None]
            if len(masked) < 2:
                continue
            first = get_mask(masked[0])
            assert first is not None
            for module in masked[1:]:
                mask = get_mask(module)
                if mask is not first and mask is not None and mask.shape == first.shape:
                    first.logical_and_(mask)
                    module._buffers[MASK] = first

    _zero: torch.Tensor | None = None
    _probe_at: tuple[tuple[str, ...], str] | None = None
    finalized = False
    _warned_stale = False
    _rebuilt = False  # an optimizer stepped holding the parameters the last removal created (see _watch_rebuild)
    _rebuild_watch: Any = None

    def penalty(self) -> torch.Tensor:
        """Differentiable regularization terms (L1: ``lambda * sum|w|`` or ``lambda * sum_g ||w_g||_2``), a scalar
        tensor on the model's device; a zero tensor when the recipe has none at this step. Add it to the loss, or
        call :meth:`regularize` after backward instead, not both (warned in the first steps). RuntimeError after
        :meth:`finalize`."""
        self._refuse_finalized("penalty")
        self._require_built("penalty")
        total: Any = None
        for method in self.methods:
            term = method.penalty()
            if isinstance(term, torch.Tensor) or term:  # a method's 0.0 adds nothing: no op, no autograd node
                total = term if total is None else total + term
        if not isinstance(total, torch.Tensor):
            # This runs every step: the device is read off one parameter kept for the purpose (walking the
            # model for it cost ~15 us inside a training step), re-read when the structure changes.
            device = self._probe().device
            if self._zero is None or self._zero.device != device:
                self._zero = torch.zeros((), device=device)  # made once
            total = self._zero if total is None else self._zero + total  # a custom method's constant
        elif self._order is not None:
            self._order.watch_penalty(total)  # added to the loss and regularize() called as well: warned
        return total

    def _refuse_finalized(self, call: str) -> None:
        if self.finalized:
            raise RuntimeError(
                f"pruner.{call}() after finalize(): the masks are baked and the model returned by finalize() is the "
                "result; build a new Pruner to prune again"
            )

    def _probe(self) -> torch.Tensor:
        """One parameter of the model, to read its device from. Found again by the path it was first found at
        (a few dict lookups, where walking the model cost ~15 us inside a training step), so a swapped layer
        or a replaced parameter is seen; walked for afresh when that path no longer leads to one."""
        at = self._probe_at
        if at is not None:
            module: nn.Module | None = self.model
            for name in at[0]:
                module = module._modules.get(name) if module is not None else None
            param = module._parameters.get(at[1]) if module is not None else None
            if param is not None:
                return param
        name, param = next(self.model.named_parameters())
        *path, leaf = name.split(".")
        self._probe_at = (tuple(path), leaf)
        return param

    def regularize(self) -> None:
        """After ``loss.backward()`` and before ``optimizer.step()``: add the gradient of :meth:`penalty`
        (L1 ``lambda * sign(w)``, group lasso ``lambda * w_g / ||w_g||_2``; lambda: the entry's ``strength``, or
        its current value when a ``target`` adapts it) to each weight's ``.grad``
        in place, so the user's loss needs no edit (Torch-Pruning's ``regularize`` pattern). Use it
        instead of adding ``penalty()`` to the loss, not as well. A no-op when the recipe has no penalty
        at this step.

        Mixed precision: with ``torch.amp.GradScaler`` the grads are scaled until ``scaler.unscale_``,
        so call ``scaler.unscale_(optimizer)`` first, then ``regularize()``, then ``scaler.step``.
        Gradient accumulation: call it once per real optimizer step (after the last micro-batch's
        backward), like :meth:`step`.

        >>> loss.backward(); pruner.regularize(); optimizer.step(); pruner.step()
        """
        self._refuse_finalized("regularize")
        self._require_built("regularize")
        total: Any = None
        added = False
        after_step = self._order is not None and self._order.unchanged_since_step()  # (read before it adds)
        for method in self.methods:
            # A method may add its penalty's gradient itself (methods.base: add_penalty_grad), in one pass over each
            # weight where autograd's graph takes several; the others' terms go through autograd together.
            direct = getattr(method, "add_penalty_grad", None)
            if direct is not None and direct():
                added = added or bool(getattr(method, "adds_penalty", lambda: True)())
                continue
            term = method.penalty()
            if isinstance(term, torch.Tensor) and term.requires_grad:
                total = term if total is None else total + term
        if total is None:
            if added and self._order is not None:
                self._order.regularized(after_step)  # (a second call per optimizer step doubles what it added: warned)
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(total, params, allow_unused=True)
        for param, grad in zip(params, grads, strict=True):
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad.detach()
            else:
                param.grad.add_(grad)
        if self._order is not None:
            self._order.regularized(after_step)  # (a second call per optimizer step doubles what it added: warned)

    @full_precision
    def step(self, lr: float | torch.Tensor | None = None) -> None:
        """After ``optimizer.step()``: read grads, advance schedules, apply masks and constraints.

        ``lr``: the learning rate of the optimizer step just taken, for proximal steps (L1 ``mode: proximal``
        shrinks by ``lr * strength``). Leave it out with a ``torch.optim`` optimizer: the rate of the param
        group holding each weight is read at its ``step()`` (a global step hook, see
        :mod:`sparsekit.learning_rate`); before any optimizer stepped, the recipe's ``finetune.optimizer.lr``
        is used. Pass it when the update is not a ``torch.optim`` optimizer's. Any real number (a numpy scalar too)
        or a one-value tensor (an optimizer's ``lr`` may be one) is taken. ValueError when negative or not finite.

        When a structural method removed channels, :attr:`structure_changed` is True: the model has
        new parameter objects; ``optimizer = pruner.update_optimizer(optimizer)`` points the optimizer at them
        and sets the flag back to False (an optimizer built afresh over ``model.parameters()`` after the removal
        will do too, without its state: once it has stepped, the next call sets the flag back to False and does not
        warn of a stale optimizer).

        Call it once per optimizer step, after it: the first steps are watched for a call before
        ``optimizer.step()`` or several per optimizer step (a UserWarning, :mod:`sparsekit.step_order`).
        TypeError for an ``lr`` that is not a number; RuntimeError after :meth:`finalize`."""
        self._refuse_finalized("step")
        self._require_built("step")
        if self._order is not None and not self._order.check():
            self._order = None
        if self.structure_changed and self._rebuilt:
            # An optimizer built afresh after the removal has stepped over the new parameters: nothing is left to
            # update. Left True, a loop that rebuilds its optimizer when the flag is set rebuilt it at every step
            # from then on, losing its momentum each time.
            self.structure_changed = self._rebuilt = self._warned_stale = False  # as update_optimizer leaves them
        if self.structure_changed and not self._warned_stale and not self._rebuilt:
            self._warned_stale = True
            if self._replayed:
                # A resume that skipped update_optimizer: "at the previous step" sent the user looking in their loop
                # for a removal no step made.
                cause = (
                    "pruner.load_state_dict() removed the run's channels again but the optimizer was not updated "
                    "(it steps the removed parameters, and the model's new ones do not train): after load_state_dict, "
                    "call optimizer = pruner.update_optimizer(optimizer) before optimizer.load_state_dict(...)"
                )
            else:
                cause = (
                    "channels were removed at the previous step but the optimizer was not updated: call optimizer = "
                    "pruner.update_optimizer(optimizer) after pruner.step() when pruner.structure_changed"
                )
            warnings.warn(cause, stacklevel=2)
        self._replayed = False
        # This runs after every optimizer step, so it does no more than it must (on LeNet-300-100 a whole
        # training step is ~1.5 ms, on the digits MLP ~0.6 ms; see benchmarks/step_overhead.py).
        if lr is not None:
            if isinstance(lr, torch.Tensor) and lr.numel() == 1:
                lr = lr.item()  # torch.optim takes lr=torch.tensor(...): its param groups then hold one
            if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
                raise TypeError(f"pruner.step(lr={lr!r}): the learning rate must be a number (a float), or left out")
            lr = float(lr)  # a numpy scalar (np.float32 is no float) or an int
            if not (lr >= 0 and lr < float("inf")):
                raise ValueError(f"pruner.step(lr={lr!r}): the learning rate must be a finite number >= 0")
            for rates in self._rates:
                rates.override = float(lr)
        forget_applied()  # notes of masks applied by hooks hold within one step only
        step = self.step_count + 1
        if step <= self._check_until or step % self.steps_per_epoch == 0:
            self._check_layers("step")  # (not every step: a walk of names per pruned layer; finalize checks too)
        held: list[torch.nn.Parameter] = []
        replaced = False
        if self._structural and any(_may_restructure(m, step) for m in self.methods):
            self._remember_params()  # the parameters an optimizer holds now, before any are replaced
            held = list(self.model.parameters())
        self.step_count = step
        if self._needs_grad and self.average_grads and _distributed_active():
            _distributed.average_grads(self.model.parameters())
        try:
            for method in self.methods:
                changes = method.after_step(step)
                if changes is not methods.UNCHANGED:
                    self._record(changes)
                    replaced = replaced or changes.structure_changed
        finally:
            if lr is not None:
                for rates in self._rates:
                    rates.override = None
        if replaced and held:
            _drop_spent_grads(self.model, held)
            self._watch_rebuild({id(p) for p in held})
        if replaced:
            self._guard_wrapper()
            self._params_replaced()
        if self._masks_possible:
            apply_masks(self.model)
        if step % self.steps_per_epoch == 0 and _distributed_active():
            _distributed.check_masks(self._mask_views(), f"after step {step}", self.pruning_history)

    def _check_layers(self, call: str) -> None:
        """TargetError when a layer a method prunes is no longer the module the Pruner was built on, or its weight
        is now computed in the forward pass: a layer replaced after ``Pruner(model, ...)`` (a new head, a conv+bn
        fusion) carries no mask, and a weight_norm / spectral_norm / parametrization added since computes the weight
        the mask multiplies afresh at every forward; either way the layer trained dense while the Pruner counted it
        as pruned (its reports read the old module), with no word, or only a missed target at finalize()."""
        for i, method in enumerate(self.methods):
            where = f"pruning[{i}]"
            key = f"{where}.{'ignore' if method.structural else 'layers.exclude'}"
            for name, module in method.layers.items():
                try:
                    now = self.model.get_submodule(name)
                except AttributeError:
                    now = None
                if now is not module:
                    found = "no longer has a module of that name" if now is None else "now holds another module there"
                    raise TargetError(
                        f"pruner.{call}(): {where} ({method.name}) prunes layer {name!r}, but the model {found} "
                        "(replaced after the Pruner was built: a new layer, a conv+bn fusion, a wrapper), which no "
                        "mask reaches, so it trains dense; change the model's layers before building the Pruner, or "
                        f"leave {name!r} out with {key}"
                    )
                how = computed_weight(module) if module._parameters.get("weight") is None else None
                if how is not None:
                    raise TargetError(
                        f"pruner.{call}(): {where} ({method.name}) prunes layer {name!r}, whose weight is now "
                        f"computed in the forward pass ({how[0]}, added after the Pruner was built), which no mask "
                        "reaches, so it trains dense; add it after pruner.finalize(), remove it "
                        f"({how[1]}), or leave {name!r} out with {key}"
                    )

    def _watch_rebuild(self, before: set[int]) -> None:
        """After channel removal replaced parameters (those not among the ids ``before``): note when an optimizer
        steps holding one of the new ones, i.e. one built over ``model.parameters()`` after the removal (a loop that
        rebuilds its optimizer, or builds it after ``load_state_dict`` replayed removals): then the next
        :meth:`step` does not warn that the optimizer was not updated. Watched until then, or until
        :meth:`update_optimizer`."""
        fresh = {id(p) for p in self.model.parameters()} - before  # live: the model holds them
        self._rebuilt = False
        self._stop_rebuild_watch()
        if not fresh:
            return

        def seen(me: Pruner, optimizer: torch.optim.Optimizer) -> None:
            if any(id(p) in fresh for group in optimizer.param_groups for p in group["params"]):
                me._rebuilt = True
                me._stop_rebuild_watch()

        self._rebuild_watch = on_optimizer_steps(self, seen)

    def _stop_rebuild_watch(self) -> None:
        if self._rebuild_watch is not None:
            self._rebuild_watch.remove()
            self._rebuild_watch = None

    def _guard_wrapper(self) -> None:
        """Under DistributedDataParallel, after channel removal: its next forward says to rewrap when the wrapper
        still holds the removed parameters (sparsekit.distributed.guard_stale_wrapper)."""
        # A model wrapped after the Pruner was built (Pruner(model, ...), then DDP(model)) is guarded too: under
        # torch.distributed (a process group, of any size) a wrapper may have come since (the guard lets go at the
        # model's first forward).
        if not self._in_ddp and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if self._stale_guard is not None:
            self._stale_guard.remove()
        self._stale_guard = _distributed.guard_stale_wrapper(self.model)

    def _mask_views(self) -> dict[str, torch.Tensor]:
        return {n: mask for n, m in self.model.named_modules() if (mask := get_mask(m)) is not None}

    def _params_replaced(self) -> None:
        """A removal (a step's, or load_state_dict's replay) replaced parameter objects: every method that follows
        parameters (``params_replaced``: l1's proximal step watches the optimizer's learning rate of each weight) does
        so now, before the next optimizer step. l1 noticed only at its next proximal step: after a resume, the
        optimizer steps before it were read as stepping none of its weights, so their shrink used the recipe's
        rate instead of the optimizer's, and the resumed run diverged from the uninterrupted one."""
        for method in self.methods:
            follow = getattr(method, "params_replaced", None)
            if callable(follow):
                follow()

    def _record(self, changes: methods.Changes) -> None:
        """Take note of what a method's hook did: the one place the Pruner's structural state changes."""
        if changes.history:
            self.pruning_history.extend(changes.history)
            self._mark_model()
        if changes.structure_changed:
            self.structure_changed = True

    @property
    def model_history(self) -> list:
        """Every channel removal the model underwent since its factory built it, in order: those it came with
        (:attr:`prior_history`, read from a structurally pruned checkpoint) and then this Pruner's
        (:attr:`pruning_history`). A checkpoint replays it to rebuild the model (:func:`sparsekit.save_model`)."""
        return [*self.prior_history, *self.pruning_history]

    def _mark_model(self) -> None:
        # The model carries its own removals, so save_model(model, ...) without pruner= still writes a
        # checkpoint that can be rebuilt (a plain attribute: never in state_dict, copied by deepcopy).
        from .modelio import STRUCTURE_ATTR

        shape = self.context.get("input_shape") or self._prior_shape
        structure = {"history": self.model_history, "input_shape": list(shape) if shape else None}
        object.__setattr__(self.model, STRUCTURE_ATTR, structure)

    def _remember_params(self) -> None:
        # Every name of each parameter object an optimizer may hold (a tied weight has several), so
        # update_optimizer can map it to the new objects torch-pruning creates. Old entries stay: the
        # optimizer still holds them.
        # Called at construction, before each step that may remove channels, and by update_optimizer.
        names: dict[int, list[str]] = {}
        for n, p in self.model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(n)
        self._param_names.update(names)

    def update_optimizer(self, optimizer: _OptimizerT) -> _OptimizerT:
        """After channels were removed (:attr:`structure_changed`), point ``optimizer`` at the model's new
        parameters, in place, so an LR scheduler attached to it keeps working. Optimizer state (momentum,
        Adam moments) is kept for parameters whose shape did not change and restarts for pruned ones.
        Parameters are mapped by every name they have in the model (a weight shared by several modules
        has several), so each parameter the optimizer covered is covered once afterwards.

        >>> pruner.step()
        >>> if pruner.structure_changed:
        ...     optimizer = pruner.update_optimizer(optimizer)

        RuntimeError after :meth:`finalize`; TypeError when ``optimizer`` is not an optimizer (one with
        ``param_groups`` and ``state``, as ``torch.optim`` optimizers and a trainer's wrappers of them have);
        ValueError when it holds none of the model's parameters (an optimizer of another model, or of a copy).
        """
        self._refuse_finalized("update_optimizer")
        if not (hasattr(optimizer, "param_groups") and hasattr(optimizer, "state")):
            # None or model.parameters() failed as "'NoneType' object has no attribute 'param_groups'".
            raise TypeError(
                f"pruner.update_optimizer(optimizer=...): expected the optimizer that trains the model, got "
                f"{type(optimizer).__name__}; to build one afresh instead, pass the model's parameters to it"
            )
        if not self.trains(optimizer) and any(group["params"] for group in optimizer.param_groups):
            # It was taken without a word: the optimizer that does train the model kept stepping the removed
            # parameters, the model's new ones never trained, and the warning that it was not updated was silenced.
            raise ValueError(
                "pruner.update_optimizer(optimizer=...): this optimizer holds none of the pruned model's parameters "
                "(an optimizer of another model or of a copy of it, or one keeping its own flat copies of the weights, "
                "as DeepSpeed ZeRO and FSDP do, where channel removal is not supported); pass the optimizer that "
                "trains the model given to the Pruner, or skip the call for an optimizer that trains none of it"
            )
        current = dict(self.model.named_parameters(remove_duplicate=False))
        placed: set[int] = set()  # each parameter once, in the group of the first old one it replaces
        for group in optimizer.param_groups:
            new_params = []
            for old in group["params"]:
                names = self._param_names.get(id(old), [])
                news = list({id(p): p for p in (current[n] for n in names if n in current)}.values()) or [old]
                state = optimizer.state.pop(old, None)
                for k, new in enumerate(news):
                    if id(new) in placed:
                        continue
                    placed.add(id(new))
                    if state is not None and all(
                        v.shape == new.shape for v in state.values() if torch.is_tensor(v) and v.dim() > 0
                    ):
                        optimizer.state[new] = state if k == 0 else copy.deepcopy(state)
                    new_params.append(new)
            # In place: an optimizer may hold the list itself (LBFGS keeps ``_params``, group 0's list, and steps
            # that), and a new list would leave it training the removed parameters while the model's new ones stay.
            if isinstance(group["params"], list):
                group["params"][:] = new_params
            else:  # (another library's optimizer may keep a tuple)
                group["params"] = new_params
        if getattr(optimizer, "_numel_cache", None) is not None:
            vars(optimizer)["_numel_cache"] = None  # LBFGS's count of the weights it flattens, now fewer
        self.structure_changed = False
        self._warned_stale = False
        self._stop_rebuild_watch()
        self._remember_params()
        return optimizer

    def trains(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` holds any of the model's parameters, as they are or as they were before a channel
        removal replaced them (the optimizers :meth:`update_optimizer` takes)."""
        known = set(self._param_names) | {id(p) for p in self.model.parameters()}
        return any(id(p) in known for group in optimizer.param_groups for p in group["params"])

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional: optimizer steps taken / ``steps_per_epoch``."""
        return self.step_count / self.steps_per_epoch

    @full_precision
    def finalize(self) -> nn.Module:
        """Bake masks into the weights, run each method's finalize (channel removal), drop all hooks
        and buffers. Returns the model to save/export (possibly a new, smaller object). Raises
        TargetError when a method could not do its job (e.g. gradient scores never arrived); RuntimeError when
        called a second time. Warns :class:`~sparsekit.TargetMissedWarning` for each entry whose weight sparsity
        (``magnitude``, ``gradient``) or l1 ``target`` ended short of what it asked beyond its tolerance (channel
        ratios and MACs/latency targets are checked by the CLI's report, :func:`sparsekit.report.check_targets`)."""
        self._refuse_finalized("finalize")
        self._require_built("finalize")
        if self._order is not None:
            self._order.close()
            if self._order.checked:  # a run shorter than the check's window: judged on the steps it took
                self._order.judge(stacklevel=3)
            self._order = None
        for rates in self._rates:
            rates.close()
        if self._stale_guard is not None:
            self._stale_guard.remove()
        self._stop_rebuild_watch()
        if self._waiting is not None:  # no batch ran: nothing is left waiting for one
            self._waiting.remove()
            self._waiting = None
        self._check_layers("finalize")
        apply_masks(self.model)
        if _distributed.active():
            _distributed.check_masks(self._mask_views(), "at finalize", self.pruning_history)
        self._warn_late_removals()
        model = self.model
        for method in self.methods:
            given = model
            model, changes = method.finalize(model)
            self._record(changes)
            if model is not given:
                # A method handed back another object (l1's removal of dead units adopts a copy when it has to go
                # layer by layer): every other method's layers must be this model's, or a later finalize (or a
                # report) works on the old one.
                for other in self.methods:
                    if other is not method:
                        _rebind(other, model)
        forget_plan(self.model)  # the model as it stepped, when a method handed back another object
        self.model = bake(model)
        if self.model_history:
            self._mark_model()  # a method's finalize may have returned a new model object
        self.finalized = True
        self._warn_missed()
        return self.model

    def _warn_late_removals(self) -> None:
        """A warning per structured entry whose removal events are not all run when a loop that trained stops:
        finalize runs them (the recipe's shape is reached) but nothing fine-tunes the model after them, which a loop
        of one's own would not otherwise learn (the trainer callbacks say so when the fit starts). None for a
        one-shot finalize with no step taken (``finetune.epochs: 0``): no fine-tuning is what was asked."""
        if not self.step_count:
            return
        from .methods.structured import Structured  # (torch-pruning only with a structured entry built)

        for i, method in enumerate(self.methods):
            if not isinstance(method, Structured) or method.done >= len(method.events):
                continue
            events, left = method.events, len(method.events) - method.done
            warnings.warn(
                f"pruning[{i}] (structured): the loop stopped at optimizer step {self.step_count}, before "
                f"{left} of its {len(events)} removal events (the last due after step {events[-1]}); finalize() "
                "removes their channels now, with no fine-tuning after: "
                "train to the schedule's end_epoch, or end the schedule earlier",
                stacklevel=3,
            )

    def _warn_missed(self) -> None:
        """A :class:`~sparsekit.TargetMissedWarning` per entry whose weight sparsity (``magnitude``, ``gradient``) or
        l1 ``target`` ended short of what it asked beyond its tolerance: a loop of one's own has no summary to show
        it. (Channel ratios and MACs/latency targets depend on rounding and measurement: the CLI's report checks
        them, :func:`sparsekit.report.check_targets`.)"""
        from .report import SPARSITY_TOLERANCE  # (pydantic: only here, once, at the end of a run)

        for i, method in enumerate(self.methods):
            if method.name not in ("magnitude", "gradient", "l1"):
                continue
            out = method.report()
            asked, achieved = out.get("asked"), out.get("achieved")
            if not isinstance(asked, (int, float)) or not isinstance(achieved, (int, float)):
                continue
            tol = out.get("tolerance")
            if not isinstance(tol, (int, float)):
                # one weight per layer of rounding on top (a layer's count is whole weights)
                weights = sum(getattr(method, "initial", {}).values()) or 1
                tol = SPARSITY_TOLERANCE + len(method.layers) / weights
            if achieved >= asked - tol:
                continue
            why = out.get("reason")
            end = getattr(getattr(method, "schedule", None), "end", None)
            if isinstance(end, int) and self.step_count < end:
                if not why:
                    why = f"the run stopped at step {self.step_count}, before the schedule's end at step {end}"
                if self._stepped_by is not None:
                    caller, length = self._stepped_by
                    # The callback laid the schedule out in the trainer's own optimizer steps: the trainer stopped
                    # early (max_steps, fewer epochs, a resume that left fewer steps), not a wrong step clock.
                    why += (
                        f" (epoch {self.epoch:.3g} at {self.steps_per_epoch} optimizer steps per epoch, as "
                        f"{caller} counts the trainer's steps, gradient accumulation included): train until the "
                        f"schedule's end_epoch ({length}), or end the schedule earlier"
                    )
                else:
                    # A loop that ran all its epochs but stepped once per several batches (gradient accumulation)
                    # with steps_per_epoch=len(train_loader) stops here too: say what the steps were counted against.
                    why += (
                        f" (epoch {self.epoch:.3g} at steps_per_epoch={self.steps_per_epoch}: schedules count "
                        "pruner.step() calls, one per optimizer step; accumulating gradients over k batches, pass "
                        "steps_per_epoch=len(train_loader) // k)"
                    )
            what = f"{out.get('unit', 'weights')} zero" if method.name == "l1" else "weights zero"
            warnings.warn(
                f"pruning[{i}] ({method.name}) missed its target: asked {asked:.3f}, achieved {achieved:.3f} ({what})"
                + (f": {why}" if why else ""),
                TargetMissedWarning,
                stacklevel=3,
            )

    def masks(self) -> dict[str, torch.Tensor]:
        """A copy of every mask, by module name: bool tensors of the weight's shape, False = pruned. RuntimeError
        after :meth:`finalize` (the masks are baked into the weights: read the zeros of the model it returned)."""
        self._refuse_finalized("masks")
        return {n: mask.clone() for n, m in self.model.named_modules() if (mask := get_mask(m)) is not None}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume bit-identically: step count, masks, each method's state and
        the structural ``pruning_history``, with the ``steps_per_epoch`` and pruning section they mean. Restore
        it with :meth:`load_state_dict`. RuntimeError after :meth:`finalize` (nothing is left to resume: save the
        model it returned)."""
        self._refuse_finalized("state_dict")
        if self._pending and self._wait_failed is None:
            # Still waiting for the first batch: nothing has run, so a checkpoint written now (an initial one, a
            # save on preemption before training) resumes as a fresh start (load_state_dict takes it as such).
            return {
                "steps_per_epoch": self.steps_per_epoch,
                "pruning": pruning_key(self.recipe),
                "step": 0,
                "masks": {},
                "methods": None,
                "pruning_history": [],
                "input_shape": None,
            }
        self._require_built("state_dict")
        return {
            "steps_per_epoch": self.steps_per_epoch,
            "pruning": pruning_key(self.recipe),
            "step": self.step_count,
            "masks": self.masks(),
            "methods": [m.state_dict() for m in self.methods],
            "pruning_history": list(self.pruning_history),
            # A Pruner that takes its shape from the first batch resumes before any batch with this one (its
            # replay of removed channels traces the model, before the saved weights can be loaded).
            "input_shape": list(self.context["input_shape"]) if self.context.get("input_shape") else None,
        }

    @full_precision
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a run. Call it on a freshly built Pruner (same recipe, same ``steps_per_epoch``) *before*
        ``model.load_state_dict``: channels removed by structured pruning are removed again first (replayed), so
        the saved weights fit; then, when :attr:`structure_changed` is True, ``optimizer =
        pruner.update_optimizer(optimizer)`` *before* ``optimizer.load_state_dict`` (its saved moments are for
        the smaller parameters):

        >>> pruner.load_state_dict(ckpt["pruner"]); model.load_state_dict(ckpt["model"])
        >>> if pruner.structure_changed:
        ...     optimizer = pruner.update_optimizer(optimizer)
        >>> optimizer.load_state_dict(ckpt["optimizer"])

        ValueError when the state was saved for another pruning section or another ``steps_per_epoch`` (the
        masks and schedules would mean something else), or after channels were removed from this Pruner's model;
        RuntimeError after :meth:`finalize`."""
        self._refuse_finalized("load_state_dict")
        if self._wait_failed is not None:
            self._require_built("load_state_dict")
        missing = [k for k in ("step", "masks", "methods") if k not in state] if isinstance(state, dict) else None
        if missing is None or missing:
            what = f"a {type(state).__name__}" if missing is None else f"a dict without {', '.join(map(repr, missing))}"
            raise ValueError(
                f"load_state_dict: got {what}, not a Pruner state; pass what Pruner.state_dict() returned (saved "
                "beside the model and optimizer in your checkpoint)"
            )
        saved_clock, saved_pruning = state.get("steps_per_epoch"), state.get("pruning")
        if saved_pruning is not None and saved_pruning != pruning_key(self.recipe):
            changed = _pruning_changes(saved_pruning, self.recipe)
            raise ValueError(
                f"load_state_dict: the state was saved for another pruning section ({changed}); resume with the "
                "recipe it was saved with"
            )
        if saved_clock is not None and saved_clock != self.steps_per_epoch:
            raise ValueError(
                f"load_state_dict: the state was saved at steps_per_epoch={saved_clock}, this Pruner has "
                f"{self.steps_per_epoch}: its schedules would run at another pace; build the Pruner with "
                f"steps_per_epoch={saved_clock} (the same batch size and data)"
            )
        if state["methods"] is None:
            # Saved before the first batch (see state_dict): nothing had run, which a Pruner that has not stepped is.
            if state["step"] or state["masks"] or state.get("pruning_history"):
                raise ValueError(
                    "load_state_dict: the state says it was saved before the first batch but holds steps, masks or "
                    "removals; pass what Pruner.state_dict() returned"
                )
            if self.step_count or self.pruning_history:
                raise ValueError(
                    "load_state_dict: the state was saved before any step, and this Pruner has stepped; build a fresh "
                    "Pruner on a fresh model to resume"
                )
            return
        if self._pending and state.get("input_shape"):
            # A fresh Pruner still waiting for the first batch: the saved run's shape builds it now (a resume loads
            # the state before any batch runs, and its saved weights only fit after the replay below).
            saved = checked_input_shape(state["input_shape"], "load_state_dict: the state's input_shape")
            self._stop_waiting()
            self.context["input_shape"] = saved
            with remedies_for(self._given, "Pruner"):
                self._build(saved, self._chosen)
            self._pending = False
        self._require_built("load_state_dict")
        if self._regroup:
            # The saved run's group lasso was built on its first batch's shape (a resume loads before any batch):
            # build ours on it too, so the saved groups, head and marks fit; a run saved with none keeps these.
            shape = state.get("input_shape")
            self._build_groups_again(
                checked_input_shape(shape, "load_state_dict: the state's input_shape") if shape else None
            )
        if len(state["methods"]) != len(self.methods):
            raise ValueError(
                f"load_state_dict: the state holds {len(state['methods'])} method states, this Pruner's recipe has "
                f"{len(self.methods)} pruning entries; resume with the recipe it was saved with"
            )
        names = {n for n, _ in self.model.named_modules()}
        unknown = [n for n in state["masks"] if n not in names]
        if unknown:
            raise ValueError(
                f"load_state_dict: the state has masks for {', '.join(map(repr, unknown[:3]))}, which this model does "
                "not have; resume on the model (and recipe) the state was saved with"
            )
        history = list(state.get("pruning_history", []))
        if history and not self.pruning_history:
            from .surgery import replay_history

            shape = self.context.get("input_shape")
            if not shape:
                raise TargetError(
                    "resuming a structurally pruned run needs the input shape: set model.input_shape "
                    f"in the recipe or {self._shape_remedy()}"
                )
            before = {id(p) for p in self.model.parameters()}
            replay_history(self.model, history, shape)
            self._params_replaced()
            self._watch_rebuild(before)
            self.structure_changed = True  # the optimizer must be rebuilt over the new parameters
            self._replayed = True  # (the stale-optimizer warning names load_state_dict, not a step, as the cause)
            self._guard_wrapper()  # a DDP wrapper built before holds the parameters replay replaced
        elif history != self.pruning_history:
            raise ValueError(
                "load_state_dict: this Pruner already removed other channels; build a fresh Pruner "
                "on a fresh model to resume"
            )
        modules = dict(self.model.named_modules())
        # A state from a model of the same layer names but other sizes (another width, another input size) would
        # otherwise fail inside torch's multiply with no layer named, after the step count and some masks changed.
        for name, mask in state["masks"].items():
            weight = getattr(modules[name], "weight", None)
            if not isinstance(mask, torch.Tensor) or not isinstance(weight, torch.Tensor) or mask.shape != weight.shape:
                got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                has = list(weight.shape) if isinstance(weight, torch.Tensor) else "no weight"
                raise ValueError(
                    f"load_state_dict: the state's mask for {name!r} is {got}, this model's {name!r} weight is {has}; "
                    "resume on the model (and recipe) the state was saved with"
                )
        self.step_count = int(state["step"])
        # A resumed run's first steps too: counted from the global step, they were checked only at an epoch end.
        self._check_until = self.step_count + _LAYER_CHECK_STEPS
        if state["masks"]:
            self._masks_possible = True
        for name, mask in state["masks"].items():
            module = modules[name]
            current = get_mask(module)
            if current is None or current.shape != mask.shape:
                # New, or the layer changed shape (structural pruning replayed): replace the buffer.
                module.register_buffer(MASK, mask.clone().to(module.weight.device), persistent=False)
            else:
                current.copy_(mask)
        for method, s in zip(self.methods, state["methods"], strict=True):
            method.load_state_dict(s)
        self.pruning_history = history
        if history:
            self._mark_model()
        self._share_tied_masks()
        apply_masks(self.model)

    def summary(self) -> list[dict[str, Any]]:
        """``[{"method": name, "layers": [layer names]}]``, one row per recipe entry."""
        self._require_built("summary")
        return [{"method": m.name, "layers": list(m.layers)} for m in self.methods]


def _batch_tensor(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The batch among a forward's arguments: the first tensor passed by position, else the first passed by keyword
    in the order of the forward's own parameters, not the caller's (Hugging Face's default collator puts ``labels``
    first in the dict a Trainer passes as ``model(**batch)``: their [n] shape was taken for the input's)."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # a forward with no signature to read: the caller's order
        params = []
    named = sorted(kwargs, key=lambda k: params.index(k) if k in params else len(params))  # stable for the rest
    return next((a for a in (*args, *(kwargs[k] for k in named)) if isinstance(a, torch.Tensor)), None)


def _held_tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The kind of container ("dict", "tuple", "list") among a forward's arguments that holds tensors, else None."""
    for value in (*args, *kwargs.values()):
        items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
        if any(isinstance(v, torch.Tensor) for v in items):
            return type(value).__name__ if isinstance(value, (dict, tuple, list)) else "mapping"
    return None


@contextlib.contextmanager
def _warnings_told(told: set[tuple[type, str]], again: bool = False) -> Any:
    """The warnings raised inside, each passed on where it was raised and added to ``told`` (category, text);
    ``again``: those already in ``told`` are dropped."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for w in caught:
            key = (w.category, str(w.message))
            if again and key in told:
                continue
            told.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


@contextlib.contextmanager
def _outside_the_forward() -> Iterator[None]:
    """Building methods on the first batch, inside the user's forward: that forward may run under no_grad or
    inference_mode (an evaluation first), and the traces need autograd; nor its autocast, as the traces and
    equivalence probes compare float outputs, which bf16 / fp16 rounding would blur. (Errors are worded for the
    Pruner by the caller's ``remedies_for``.)"""
    with torch.inference_mode(False), torch.enable_grad(), autocast_off():  # (every device's, not only the input's)
        yield


class _FirstBatchHook:
    """The Pruner's wait for the first batch, as a forward pre-hook of its model. A copy of the model (an EMA or
    teacher made by copy.deepcopy before that batch) or a pickle of it (torch.save of the whole model) gets an inert
    hook instead: the Pruner waits on its own model only, and its closure cannot be pickled. (A shared closure made
    the copy's first forward build this Pruner from the copy's batch, or fail removing a hook already gone.)"""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    # In a torch.compile'd model this hook runs inside the forward dynamo traces: it traced the whole build with it
    # (torch-pruning's graph, the equivalence probes: ~40 s on a small CNN, and its warnings). Eagerly, it is one
    # graph break on the first batch alone (the hook is then removed).
    @torch.compiler.disable
    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn(module, args, kwargs)

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return _inert_hook, ()


def _no_op_hook(_module: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
    return None


def _inert_hook() -> Callable[..., None]:
    """What a copied or unpickled :class:`_FirstBatchHook` becomes."""
    return _no_op_hook


def _check_context(context: Any) -> dict[str, Any]:
    """``context`` as a new dict after checking it is ``{"input_shape": [1, ...]}`` (or empty): a list, a shape
    given as text or a misspelt key failed as "cannot convert dictionary update sequence element #0", as
    "invalid literal for int()", or was ignored, the recipe's shape (or none) standing in for the one meant."""
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise TypeError(
            f"Pruner(context=...): expected a dict such as {{'input_shape': [1, 784]}}, got {type(context).__name__}"
        )
    unknown = [k for k in context if k != "input_shape"]
    if unknown:
        raise ValueError(
            f"Pruner(context=...): unknown key {unknown[0]!r}; the one key is 'input_shape' (the batch-first shape "
            "of one input, e.g. {'input_shape': [1, 784]})"
        )
    if context.get("input_shape") is not None:
        dims = checked_input_shape(context["input_shape"], "Pruner(context=...): input_shape")
        if not isinstance(context["input_shape"], list | tuple):
            # a numpy array or tensor as the checked list: the Pruner tests its truth value, which arrays lack
            return {**context, "input_shape": dims}
    return dict(context)


def _check_scorers(scorers: Mapping[int, Callable[..., Any]], entries: int) -> dict[int, Callable[..., Any]]:
    """``scorers`` as a dict after checking its keys index ``recipe.pruning`` (ValueError otherwise);
    each method checks its own scorer; TypeError when ``scorers`` is no mapping."""
    if not isinstance(scorers, Mapping):
        # A list of scorers ([fn], one per entry) was read as its keys: "key <function ...> is not an index".
        raise TypeError(
            f"scorers: expected a dict {{index: scorer}} (the index into the recipe's pruning list), got "
            f"{type(scorers).__name__}; e.g. scorers={{0: fn}} for pruning[0]"
        )
    for key in scorers:
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < entries:
            raise ValueError(
                f"scorers: key {key!r} is not an index of the recipe's pruning list "
                f"({f'0..{entries - 1}' if entries else 'it is empty'}); "
                "scorers={index: scorer} replaces the criterion of pruning[index]"
            )
    return dict(scorers)


def _layer_names(names: list[str]) -> str:
    """'a', 'b', 'c': every layer an error is about, quoted as a single one was."""
    return ", ".join(repr(n) for n in names)


def _them(names: list[str]) -> str:
    return "it" if len(names) == 1 else "them"
