"""Prune inside Lightning's ``Trainer.fit``: :class:`SparsekitCallback`.

>>> from sparsekit.integrations.lightning import SparsekitCallback
>>> pruning = SparsekitCallback("cnn-layer-magnitude-80", submodule="net")
>>> trainer = lightning.pytorch.Trainer(max_epochs=4, callbacks=[pruning])
>>> trainer.fit(lit_module, train_loader)       # masks follow the recipe's schedule, zeros stay zero
>>> pruned = pruning.model                      # masks baked in at the end of fit

Lightning owns the loop: the recipe's ``pruning`` list is used, its ``finetune`` (epochs, optimizer,
LR schedule, ``max_steps_per_epoch``) and ``data`` sections are not. Schedules given in epochs are
laid out in real optimizer steps of this Trainer (``steps_per_epoch``). Needs ``lightning`` (or the
older ``pytorch_lightning``): ``pip install 'sparsekit[lightning]'``.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..pruner import Pruner, checked_input_shape
from ..recipe import Recipe, pruning_key, remedies_for
from ..schedule import checked_steps_per_epoch
from ._common import (
    as_recipe,
    at_user_code,
    checked_options,
    refuse_pruned_again,
    require_first_batch,
    short_schedules,
)
from ._common import refuse_distributed_structured as _refuse_distributed_structured

if TYPE_CHECKING:
    import lightning.pytorch as pl
else:

    def _import_lightning() -> Any:
        for name in ("lightning.pytorch", "pytorch_lightning"):
            try:
                return importlib.import_module(name)
            except ImportError:
                continue
        raise ImportError(
            "sparsekit.integrations.lightning needs Lightning (lightning.pytorch or pytorch_lightning), "
            "which is not installed: pip install 'sparsekit[lightning]'"
        )

    pl = _import_lightning()

__all__ = ["SparsekitCallback"]

STATE_VERSION = 1


class SparsekitCallback(pl.Callback):
    """Drive a :class:`~sparsekit.pruner.Pruner` from Lightning's hooks during ``Trainer.fit``.

    ``recipe``: a :class:`~sparsekit.recipe.Recipe`, a recipe file, a shipped recipe's name or a dict (read with
    :func:`sparsekit.load_recipe`: RecipeError when invalid, TypeError for anything else). Only its
    ``pruning`` list matters here (plus ``model.input_shape``): the Trainer owns data, epochs and
    optimizer.

    ``submodule``: dotted name of the module to prune inside the LightningModule (``"net"`` for
    ``self.net = small_cnn()``), so the recipe's layer globs are that module's own names (``fc1``
    rather than ``net.fc1``), structured pruning traces that module alone, and the model
    :meth:`~sparsekit.pruner.Pruner.finalize` returns is put back in its place. Default: the
    LightningModule itself. A name that is not a submodule is a ValueError at the start of fit.

    ``steps_per_epoch``: real optimizer steps per epoch, which turn the recipe's epochs into steps.
    Default: ``ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)`` (Lightning steps
    at the last batch of an epoch even when the accumulation window is incomplete); required (ValueError
    otherwise) when the training loader has no length. ``input_shape``: the batch-first shape of one
    input (``[1, 1, 8, 8]``) for methods that trace the model (``structured``, l1 ``remove_dead``);
    default: the recipe's ``model.input_shape``. ``scorers``: as for :class:`~sparsekit.pruner.Pruner`.
    ``finalize``: call :meth:`Pruner.finalize` at the end of fit (default True): masks baked into the
    weights, pending removals done, no sparsekit buffers left.

    Hooks, in the order Lightning calls them:

    - ``setup``: (fit) forgets any previous fit's pruner; (every stage, so
      ``validate``/``test``/``predict`` with ``ckpt_path`` too) wraps the LightningModule's
      ``on_load_checkpoint`` (until ``teardown``) so that on ``fit(ckpt_path=...)`` the pruner is
      rebuilt and its state loaded *before* Lightning loads the weights: channels a ``structured``
      method removed are removed again first, so the saved, smaller weights fit, and the optimizer
      Lightning configures next covers the new parameters.
    - ``on_train_start``: builds the Pruner (when no checkpoint restored it): the training loader's length is known
      only here; a second fit of the module this callback already pruned, not resumed from a checkpoint written
      before finalize, is a ValueError (it would prune it again; pass a new callback to prune again). Warns when a
      schedule ends after the fit's last step.
    - ``on_before_optimizer_step``: :meth:`Pruner.regularize` (the L1 / group-lasso gradient added to
      ``.grad`` in place, so ``training_step``'s loss needs no edit). Lightning calls it once per real
      optimizer step, after the last accumulated backward and after the precision plugin unscaled the
      gradients (AMP), before gradient clipping. With several optimizers (manual optimization) it runs before each
      one's step and adds the penalty's gradient to the weights that optimizer steps only.
    - ``on_train_batch_end``: :meth:`Pruner.step` when ``trainer.global_step`` advanced, so with
      ``accumulate_grad_batches`` only real optimizer steps count (``pruner.step_count`` equals the
      optimizer steps taken under this callback). Gradients are still there (Lightning zeroes them at
      the next step), which gradient-based criteria need. When channels were removed
      (``structure_changed``), every optimizer in ``trainer.optimizers`` is pointed at the new parameters
      in place (:meth:`Pruner.update_optimizer`), so LR schedulers keep driving them.
    - ``on_fit_end``: :meth:`Pruner.finalize` (with ``finalize=True``). :attr:`model` is then the pruned
      module (the LightningModule or ``submodule``). If finalize returned a new object, it replaces
      ``submodule`` on the LightningModule; without ``submodule`` it cannot replace the LightningModule
      itself: a warning says so and :attr:`model` holds it.
    - ``state_dict`` / ``on_load_checkpoint``: the pruner's state (step count, masks, method state,
      structural history) and ``steps_per_epoch`` live in Lightning's checkpoints, under
      :attr:`state_key`; resuming continues with the same masks, step count and shapes. Resuming under
      a recipe whose ``pruning`` section differs is a ValueError. A checkpoint written after finalize
      (``trainer.save_checkpoint`` after fit) holds no pruner state: resuming from it starts pruning
      again from step 0, with a warning; ``validate``/``test``/``predict`` load its weights as they are (a
      ValueError when finalize removed channels and the module is not already that small).

    Limits: one optimizer over the pruned weights is assumed (automatic optimization; under manual
    optimization with several optimizers the pruner steps once per batch in which ``global_step``
    advanced, and with ``max_steps``, which counts every optimizer's steps, the check that a schedule outlasts the
    fit waits for the first batch, which shows how many steps a batch takes). Structured pruning replaces
    parameters during fit, which DDP/FSDP wrappers do not follow: use it on a single device.
    ``trainer.validate``/``test`` with ``ckpt_path`` on the module a fit finalized, when finalize removed channels
    after that checkpoint was written (structured removals still to come, l1's ``remove_dead``), is a ValueError:
    the smaller module cannot take the checkpoint's weights (a new instance of the LightningModule can).
    Strategies that fit in child processes (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) leave :attr:`model` and
    :attr:`pruner` None in the process that called ``fit`` (a warning says so): the pruned weights are those Lightning
    copies back into the LightningModule.
    Attributes: :attr:`pruner` (None before ``on_train_start``), :attr:`model`.
    """

    def __init__(
        self,
        recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any],
        *,
        steps_per_epoch: int | None = None,
        input_shape: Sequence[int] | None = None,
        scorers: Mapping[int, Callable[..., Any]] | None = None,
        submodule: str | None = None,
        finalize: bool = True,
    ) -> None:
        if steps_per_epoch is not None:  # as the Pruner takes it (a numpy integer too)
            steps_per_epoch = checked_steps_per_epoch(steps_per_epoch, "SparsekitCallback(steps_per_epoch=...)")
        self.recipe = as_recipe(recipe, trainer=True)
        self._recipe_given = recipe  # the remedies of the Pruner's errors are spelled for it (remedies_for)
        self.steps_per_epoch = steps_per_epoch
        self.input_shape = (
            checked_input_shape(input_shape, "SparsekitCallback(input_shape=...)") if input_shape is not None else None
        )
        self.scorers = checked_options("SparsekitCallback", self.recipe, scorers, submodule, finalize)
        self.submodule = submodule
        self.finalize = finalize
        self.pruner: Pruner | None = None
        """The run's Pruner: built at ``on_train_start`` or when a checkpoint is restored."""
        self.model: nn.Module | None = None
        """The pruned module after fit (finalized when ``finalize=True``)."""
        self._last_step = 0
        self._earlier: tuple[Pruner | None, nn.Module | None] = (None, None)  # the previous fit's pruner and model
        self._short_check: tuple[int, int] | None = None  # (batches stepped, global_step) at the start of fit
        self._restored = False
        self._unhook: Callable[[], None] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(submodule=self.submodule)

    # -- building -------------------------------------------------------------------------------------

    def _target(self, pl_module: nn.Module) -> nn.Module:
        if not self.submodule:
            return pl_module
        try:
            return pl_module.get_submodule(self.submodule)
        except AttributeError:
            names = [n for n, _ in pl_module.named_children()]
            raise ValueError(
                f"SparsekitCallback(submodule={self.submodule!r}): {type(pl_module).__name__} has no such submodule "
                f"(its children: {', '.join(names) or 'none'})"
            ) from None

    def _build(self, pl_module: nn.Module, steps_per_epoch: int) -> Pruner:
        context = {"input_shape": self.input_shape} if self.input_shape else None
        _refuse_distributed_structured(self.recipe)
        with remedies_for(self._recipe_given, type(self).__name__):
            pruner = Pruner(
                self._target(pl_module), self.recipe, steps_per_epoch, context=context, scorers=self.scorers
            )
        # A target missed is then the trainer stopping early, not a wrong steps_per_epoch (Pruner._warn_missed).
        pruner._stepped_by = ("SparsekitCallback", "Trainer max_epochs / max_steps")
        return pruner

    def _trainer_steps_per_epoch(self, trainer: pl.Trainer) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError(
                "SparsekitCallback: the training loader has no length, so optimizer steps per epoch are unknown; "
                "pass SparsekitCallback(..., steps_per_epoch=N)"
            )
        return max(1, math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches)))

    # -- hooks ----------------------------------------------------------------------------------------

    @at_user_code
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            # A fit resuming from a checkpoint written before finalize restores its pruner and goes on: whether it
            # does is known only after the restore, at on_train_start.
            self._earlier = (self.pruner, self.model)
            self.pruner, self.model, self._last_step = None, None, 0
        # validate/test/predict(ckpt_path=...) load weights too: a checkpoint written while a structured method
        # had removed channels only fits once the pruner has replayed those removals.
        self._restored = False
        self._hook_restore(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._unhook is not None:
            self._unhook()
            self._unhook = None

    def _hook_restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore the pruner in the LightningModule's ``on_load_checkpoint``: Lightning calls it just before
        loading the weights, and callbacks' own hooks only after (too late for a model that lost channels)."""
        if self._unhook is not None:
            self._unhook()
        own = vars(pl_module).get("on_load_checkpoint")  # an instance attribute, if someone set one
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            self._restore(trainer, pl_module, checkpoint)
            original(checkpoint)

        vars(pl_module)["on_load_checkpoint"] = on_load_checkpoint

        def unhook() -> None:
            if own is None:
                vars(pl_module).pop("on_load_checkpoint", None)
            else:
                vars(pl_module)["on_load_checkpoint"] = own

        self._unhook = unhook

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Normally done already (see _hook_restore); this covers a LightningModule whose hook did not run.
        self._restore(trainer, pl_module, checkpoint)

    @at_user_code
    def _restore(self, trainer: pl.Trainer, pl_module: nn.Module, checkpoint: Mapping[str, Any]) -> None:
        if self._restored:
            return
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if not state:
            return
        self._restored = True
        if state.get("finalized"):
            # finalize may have removed channels (structured, l1's remove_dead): such weights do not fit the module
            # built for this fit, and Lightning's own load would fail with a bare size mismatch.
            odd = _shape_mismatch(checkpoint, pl_module)
            fn = getattr(trainer.state, "fn", "fit")
            stage = str(getattr(fn, "value", fn))  # a TrainerFn: "fit", "validate", "test", "predict"
            if stage != "fit":
                # validate/test/predict(ckpt_path=...) prune nothing: the masks are baked into the saved weights, which
                # load as they are when their shapes fit (a warning that pruning starts again would be false), and
                # no pruner state is left to rebuild removed channels from when they do not.
                if odd is not None:
                    name, theirs, ours = odd
                    raise ValueError(
                        f"SparsekitCallback: this checkpoint was written after pruner.finalize(), which removed "
                        f"channels ({name} is {list(theirs)} in it, {list(ours)} in this module), and holds no "
                        f"pruner state to rebuild those shapes from, so trainer.{stage}(ckpt_path=...) cannot load "
                        "it into this module; pass a checkpoint written during fit (ModelCheckpoint's), or save the "
                        "pruned model with sparsekit.save_model(callback.model, ...) after fit and evaluate "
                        "sparsekit.load_model of that file"
                    )
                return
            if odd is not None:
                name, theirs, ours = odd
                raise ValueError(
                    f"SparsekitCallback: this checkpoint was written after pruner.finalize(), which removed channels "
                    f"({name} is {list(theirs)} in it, {list(ours)} in this module), so its weights do not fit the "
                    "module this fit built; resume from a checkpoint written before finalize, or to fine-tune the "
                    "pruned model further, save it with sparsekit.save_model(callback.model, ...) after that fit and "
                    "start a new fit from sparsekit.load_model of that file"
                )
            warnings.warn(
                "SparsekitCallback: this checkpoint was written after pruner.finalize(), so it holds no pruner "
                "state; pruning starts again from step 0 on the restored weights",
                stacklevel=2,
            )
            return
        if getattr(trainer.state, "fn", "fit") != "fit" and checkpoint.get("state_dict"):
            odd = _shape_mismatch(checkpoint, pl_module)
            if odd is None:
                # validate/test/predict(ckpt_path=...) with the module already at the checkpoint's shapes (the module
                # a fit just finalized, whose best checkpoint was written before finalize): the weights fit as they
                # are, and replaying the removals would remove channels a second time.
                return
            if self.pruner is not None and self.pruner.finalized and self.model is self._target(pl_module):
                # The fit's finalize removed channels after this checkpoint was written (structured removals still
                # to come, l1's remove_dead): a smaller module cannot be grown back by replaying the checkpoint's
                # removals, and the pruner's load would blame the model for not being the one it was saved with.
                name, theirs, ours = odd
                raise ValueError(
                    f"SparsekitCallback: this module was finalized at the end of fit, which removed channels after "
                    f"the checkpoint was written ({name} is {list(theirs)} in it, {list(ours)} in this module), so "
                    "the checkpoint's weights do not fit it; evaluate the finalized module without ckpt_path, or "
                    "load the checkpoint into a new instance of your LightningModule (with this callback in the "
                    "Trainer, which rebuilds the checkpoint's shapes there)"
                )
        if state.get("pruning") != pruning_key(self.recipe):
            raise ValueError(
                "SparsekitCallback: the recipe's pruning section differs from the one this checkpoint was "
                "written with, so its masks and schedule do not apply; resume with the same recipe or start a new fit"
            )
        steps = int(state["steps_per_epoch"])
        if self.steps_per_epoch is not None and self.steps_per_epoch != steps:
            warnings.warn(
                f"SparsekitCallback: steps_per_epoch={self.steps_per_epoch} but the checkpoint's schedule was laid "
                f"out with {steps}; continuing with {steps}",
                stacklevel=2,
            )
        pruner = self._build(pl_module, steps)
        pruner.load_state_dict(state["pruner"])  # replays removed channels: the saved weights fit next
        if pruner.structure_changed:
            if trainer.optimizers:  # a strategy that restores after configuring the optimizers
                for optimizer in trainer.optimizers:
                    if pruner.trains(optimizer):  # (a GAN's other optimizer trains none of the pruned module)
                        pruner.update_optimizer(optimizer)
            pruner.structure_changed = False  # otherwise Lightning configures them next, over the new parameters
        self.pruner = pruner

    @at_user_code
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = self._trainer_steps_per_epoch(trainer)
        if self.pruner is None:
            earlier, self._earlier = self._earlier, (None, None)
            refuse_pruned_again(type(self).__name__, self._target(pl_module), *earlier, "fit()")
            self.pruner = self._build(pl_module, steps)
        elif self.pruner.steps_per_epoch != steps:
            warnings.warn(
                f"SparsekitCallback: this fit takes {steps} optimizer steps per epoch, the resumed schedule "
                f"{self.pruner.steps_per_epoch}; the schedule keeps its steps",
                stacklevel=2,
            )
        self._last_step = trainer.global_step
        self._short_check = None
        total = trainer.estimated_stepping_batches
        done = trainer.global_step
        if not pl_module.automatic_optimization:
            # Manual optimization: global_step counts every optimizer's steps (two per batch with two optimizers),
            # estimated_stepping_batches and the pruner count batches that stepped; a resumed fit compared the two
            # and warned of a schedule it does reach.
            done = int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", done))
            if trainer.max_steps is not None and trainer.max_steps >= 0:
                # max_steps counts global steps too: with two optimizers the fit ends after max_steps / 2 batches,
                # not the max_steps estimated_stepping_batches says. How many steps a batch takes is known after
                # the first one: the check waits for it (on_train_batch_end).
                self._short_check = (done, trainer.global_step)
                return
        self._warn_short(trainer, float(total), done)

    def _warn_short(self, trainer: pl.Trainer, total: float, done: int) -> None:
        assert self.pruner is not None
        short = short_schedules(
            self.recipe,
            self.pruner.steps_per_epoch,
            total,
            run="fit",
            done=done,
            counted=self.pruner.step_count,
        )
        if short:
            warnings.warn(
                "SparsekitCallback: the recipe's schedule outlasts the fit: " + "; ".join(short),
                stacklevel=2,
            )

    def _warn_short_manual(self, trainer: pl.Trainer) -> None:
        """The start-of-fit check of a manual-optimization fit bounded by ``max_steps``, after its first batch that
        stepped: the fit's batches are those that take it to ``max_steps`` global steps at this batch's rate."""
        assert self._short_check is not None
        done, start = self._short_check
        self._short_check = None
        per_batch = max(1, trainer.global_step - start)
        total = done + math.ceil(max(0, trainer.max_steps - start) / per_batch)
        batches = trainer.num_training_batches
        if trainer.max_epochs is not None and trainer.max_epochs >= 0 and math.isfinite(batches):
            total = min(total, int(trainer.max_epochs) * int(batches))  # max_epochs may end it first
        self._warn_short(trainer, float(total), done)

    @at_user_code
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.pruner is not None and not self.pruner.finalized:
            require_first_batch(self.pruner, type(self).__name__, pl_module, self.submodule, "training_step")
            if len(trainer.optimizers) > 1:
                # Manual optimization with several optimizers: this hook runs before each one's step, and
                # regularize() adds the penalty's gradient to every pruned weight. A weight another optimizer steps
                # (opt1.step(); opt2.step() after one backward, each over some layers) got it once per optimizer.
                with _grads_kept_outside(self.pruner.model, optimizer):
                    self.pruner.regularize()
            else:
                self.pruner.regularize()

    @at_user_code
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pruner = self.pruner
        if pruner is None or pruner.finalized or trainer.global_step <= self._last_step:
            return  # an accumulation micro-batch (or a skipped step): no optimizer step happened
        if self._short_check is not None:
            self._warn_short_manual(trainer)
        self._last_step = trainer.global_step
        pruner.step()
        if pruner.structure_changed:
            for optimizer in trainer.optimizers:
                if pruner.trains(optimizer):  # (a GAN's other optimizer trains none of the pruned module)
                    pruner.update_optimizer(optimizer)  # in place: LR schedulers keep driving it
            pruner.structure_changed = False

    @at_user_code
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pruner = self.pruner
        if pruner is None:
            return
        if trainer.is_global_zero and _in_spawned_process(trainer):
            # ddp_spawn / ddp_fork / ddp_notebook run the fit in child processes with copies of this callback: the
            # process that called fit() sees callback.model and callback.pruner still None (README's
            # `pruned = pruning.model` was None there, silently). Lightning copies rank 0's weights back into the
            # LightningModule, which is where the pruned model is.
            where = f"lit_module.{self.submodule}" if self.submodule else "your LightningModule"
            warnings.warn(
                f"SparsekitCallback: strategy {type(trainer.strategy).__name__} (start method "
                f"{getattr(trainer.strategy, '_start_method', 'spawn')!r}) runs fit in child processes, so "
                "callback.model and callback.pruner stay None in the process that called trainer.fit(); the pruned "
                f"weights are copied back into {where} there: use that (or strategy='ddp', whose rank 0 is that "
                "process)",
                stacklevel=2,
            )
        target = pruner.model
        if not self.finalize or pruner.finalized:
            self.model = target
            return
        if trainer.should_stop:
            # Something other than max_epochs / max_steps ended the fit: finalize's missed-target warning said to
            # raise those, which were already long enough.
            pruner._stepped_by = (type(self).__name__, _why_stopped(trainer))
        model = pruner.finalize()
        if model is not target:
            if self.submodule:
                parent_name, _, attr = self.submodule.rpartition(".")
                setattr(pl_module.get_submodule(parent_name) if parent_name else pl_module, attr, model)
            else:
                warnings.warn(
                    "SparsekitCallback: pruner.finalize() returned a new model object, which cannot replace the "
                    "LightningModule itself; use callback.model (or pass submodule=... to prune a child module)",
                    stacklevel=2,
                )
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        """What Lightning stores in its checkpoints under :attr:`state_key`: ``{}`` before the pruner exists,
        ``{"finalized": True}`` after finalize, else the pruner's state, ``steps_per_epoch`` and the recipe's
        pruning section (checked on resume)."""
        if self.pruner is None:
            return {}
        if self.pruner.finalized:
            return {"version": STATE_VERSION, "finalized": True}
        return {
            "version": STATE_VERSION,
            "steps_per_epoch": self.pruner.steps_per_epoch,
            "pruning": pruning_key(self.recipe),
            "pruner": self.pruner.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restored in on_load_checkpoint, which also gets the LightningModule the pruner is built on.
        pass


def _why_stopped(trainer: pl.Trainer) -> str:
    """What to tell of a fit that ``trainer.should_stop`` ended before max_epochs / max_steps: EarlyStopping, the
    Timer of ``Trainer(max_time=...)``, or else a callback or ``training_step`` that set ``trainer.should_stop``."""
    # An EarlyStopping in the Trainer is not always what stopped it: with max_time running out first (or a callback
    # setting should_stop), "a larger patience" was the advice. Lightning >= 2.6 keeps each one's stopping_reason;
    # before that, an EarlyStopping present is taken to be what stopped the fit, unless the Timer ran out.
    reasons = [getattr(c, "stopping_reason", None) for c in trainer.early_stopping_callbacks]
    early = (
        f"EarlyStopping stopped this fit after {trainer.current_epoch} epochs: let it stop only after the "
        "schedule's end, e.g. with a larger patience, or monitor a metric pruning does not worsen"
    )
    if any(r is not None and getattr(r, "name", "") != "NOT_STOPPED" for r in reasons):
        return early
    when = f"at optimizer step {trainer.global_step}"  # (mid-epoch: current_epoch already counts that epoch)
    timer = next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.Timer)), None)
    left = timer.time_remaining("train") if timer is not None else None
    if left is not None and left <= 0:
        return f"Trainer(max_time=...) stopped this fit {when}: give it the time the schedule takes"
    if any(r is None for r in reasons):
        return early
    return (
        f"trainer.should_stop, set by a callback or training_step, stopped this fit {when}: let it stop only after "
        "the schedule's end"
    )


def _in_spawned_process(trainer: pl.Trainer) -> bool:
    """Whether this fit runs in a child process Lightning started (strategy ddp_spawn, ddp_fork, ddp_notebook): its
    launcher is the multiprocessing one, whose results reach the parent as rank 0's weights only."""
    launcher = getattr(trainer.strategy, "launcher", None)
    return type(launcher).__name__ == "_MultiProcessingLauncher"


@contextlib.contextmanager
def _grads_kept_outside(model: nn.Module, optimizer: Any) -> Iterator[None]:
    """Leave the ``.grad`` of ``model``'s parameters that ``optimizer`` does not step as they were before the block,
    so that what the block adds to gradients reaches only the weights this optimizer step uses."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    kept = [
        (p, p.grad, None if p.grad is None else p.grad.clone())
        for p in model.parameters()
        if id(p) not in held and p.requires_grad
    ]
    try:
        yield
    finally:
        for param, grad, values in kept:
            if grad is None or values is None:
                param.grad = None
            else:
                grad.copy_(values)  # the same tensor the next backward accumulates into (added to in place)
                param.grad = grad


def _shape_mismatch(checkpoint: Mapping[str, Any], module: nn.Module) -> tuple[str, tuple, tuple] | None:
    """The first tensor of the checkpoint's ``state_dict`` whose shape differs from the module's own entry, as
    ``(key, saved shape, module's shape)``; None when every shared key matches."""
    saved = checkpoint.get("state_dict") or {}
    own = module.state_dict()
    return next(
        (
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in saved.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        ),
        None,
    )
