"""Prune inside Hugging Face's ``transformers.Trainer``: :class:`SparsekitTrainerCallback`.

>>> from sparsekit.integrations.transformers import SparsekitTrainerCallback
>>> pruning = SparsekitTrainerCallback("lenet-gradual-magnitude-90", submodule="net")
>>> trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[pruning])
>>> trainer.train()                             # masks follow the recipe's schedule, zeros stay zero
>>> pruned = pruning.model                      # masks baked in at the end of training

The model is any ``nn.Module`` the Trainer accepts: its ``forward(**batch)`` returns a dict (or
``ModelOutput``) with ``"loss"`` when the batch holds labels, ``"logits"`` always. The Trainer owns the
loop: the recipe's ``pruning`` list is used, its ``finetune`` (epochs, optimizer, LR schedule,
``max_steps_per_epoch``) and ``data`` sections are not. Schedules given in epochs are laid out in the
Trainer's real optimizer steps (``steps_per_epoch``). Needs ``transformers`` (and ``accelerate``, which
it requires for training): ``pip install 'sparsekit[transformers]'``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..fsutil import atomic_path, too_large_to_unpack
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

try:
    import transformers
except ImportError:
    raise ImportError(
        "sparsekit.integrations.transformers needs Hugging Face transformers, which is not installed: "
        "pip install 'sparsekit[transformers]'"
    ) from None

if TYPE_CHECKING:
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

__all__ = ["PRUNER_FILE", "SparsekitTrainerCallback"]

PRUNER_FILE = "pruner.pt"
"""The file, in each ``checkpoint-N`` folder, holding the pruner's state."""
STATE_VERSION = 1


def _checkpoint_dir(args: TrainingArguments, step: int) -> Path:
    """Where ``Trainer`` writes the checkpoint of ``step``: ``output_dir/checkpoint-N`` (outside hyperparameter
    search)."""
    return Path(args.output_dir or "trainer_output") / f"checkpoint-{step}"


def _real_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind accelerate's ``AcceleratedOptimizer`` (its ``.optimizer``), or ``optimizer``."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


class SparsekitTrainerCallback(transformers.TrainerCallback):
    """Drive a :class:`~sparsekit.pruner.Pruner` from ``transformers.Trainer``'s callback events.

    ``recipe``: a :class:`~sparsekit.recipe.Recipe`, a recipe file, a shipped recipe's name or a dict (read with
    :func:`sparsekit.load_recipe`: RecipeError when invalid, TypeError for anything else). Only its
    ``pruning`` list matters here (plus ``model.input_shape``).

    ``submodule``: dotted name of the module to prune inside the Trainer's model (``"net"`` for a
    wrapper holding ``self.net = small_cnn()`` whose ``forward`` adds the loss), so the recipe's layer
    globs are that module's own names (``fc1`` rather than ``net.fc1``), structured pruning traces that
    module alone (whose forward takes one input tensor), and the model finalize returns is put back in
    its place. Default: the Trainer's model itself. A name that is not a submodule is a ValueError when
    training begins.

    ``steps_per_epoch``: real optimizer steps per epoch, which turn the recipe's epochs into steps.
    Default: ``ceil(len(train_dataloader) / args.gradient_accumulation_steps)``, the Trainer's own count
    (required, ValueError otherwise, when the loader has no length). ``input_shape``: the batch-first
    shape of one input for methods that trace the model (``structured``, l1 ``remove_dead``); default:
    the recipe's ``model.input_shape``. ``scorers``: as for :class:`~sparsekit.pruner.Pruner`.
    ``finalize``: call :meth:`Pruner.finalize` when training ends (default True).

    Events used:

    - ``on_init_end`` (recipes with a ``structured`` entry): a ``load_state_dict`` pre-hook on the model
      turns the size mismatch of resuming a run that removed channels, without :meth:`prepare_resume`,
      into an error saying what to do.
    - ``on_train_begin``: a second ``train()`` on the model this callback already pruned is a ValueError (it would
      prune the pruned model again; pass a new callback to prune again). Builds the Pruner on ``kwargs["model"]``
      (the Trainer's unwrapped model), or on a resume (``state.global_step > 0``) restores it from
      ``args.output_dir/checkpoint-N/pruner.pt`` (N = the global step resumed at) when :meth:`prepare_resume` did
      not already. Warns when a schedule ends after the run's last step, and when a resumed schedule was laid out
      with other steps per epoch than this run takes (it keeps its own).
    - ``on_pre_optimizer_step``: :meth:`Pruner.regularize` (the L1 / group-lasso gradient added to
      ``.grad``; the model's loss needs no edit). Called once per real optimizer step, after the last
      accumulated backward and after gradient clipping (``max_grad_norm``; the penalty's gradient is not
      clipped). Mixed precision: the gradients are unscaled by then, with any ``max_grad_norm`` (the Trainer
      takes their norm through accelerate's ``clip_grad_norm_``, which unscales fp16 gradients, even with
      ``max_grad_norm=0``); bf16 needs no scaling.
    - ``on_optimizer_step``: :meth:`Pruner.step`, once per real optimizer step (gradient accumulation
      counts real steps only: ``pruner.step_count`` equals ``state.global_step`` of a run pruned from
      its start). This event rather than ``on_step_end``: the Trainer zeroes the gradients between
      the two, and gradient-based criteria (``gradient``, structured ``taylor``) read them. When channels
      were removed (``structure_changed``) the torch optimizer (unwrapped from accelerate's
      ``AcceleratedOptimizer``: ``.optimizer``) is pointed at the new parameters in place, before the
      LR scheduler steps, so the scheduler keeps driving it.
    - ``on_save``: writes the pruner's state to ``checkpoint-N/pruner.pt`` in ``args.output_dir`` (where the
      Trainer writes its checkpoint: ``args.should_save``, i.e. world process zero, or each node's first with
      ``save_on_each_node``; a warning when the folder is elsewhere, e.g. under hyperparameter search).
    - ``on_train_end``: :meth:`Pruner.finalize`; :attr:`model` is the pruned module. If finalize
      returned a new object it replaces ``submodule`` in the model; without ``submodule`` it cannot
      replace the Trainer's model: a warning says so and :attr:`model` holds it.

    Resuming (``trainer.train(resume_from_checkpoint=...)``): unstructured methods resume by themselves
    from ``output_dir/checkpoint-N``. The Trainer loads the weights *before* any callback event, so a run
    that removed channels must be rebuilt first: call ``callback.prepare_resume(trainer, checkpoint)``,
    then ``trainer.train(resume_from_checkpoint=checkpoint)`` (also the way for a checkpoint outside
    ``output_dir``). Resuming under a recipe whose ``pruning`` section differs is a ValueError.

    Limits: structured pruning replaces parameters during training, which DeepSpeed/FSDP/DDP wrappers
    do not follow: use it on a single device; ``load_best_model_at_end`` cannot load a checkpoint whose
    shapes differ from the final model's. With ``load_best_model_at_end`` the pruned model is the best
    checkpoint's: ``on_train_end`` restores the pruner state saved beside it (its masks, step count), with a
    warning, so finalize does not zero the weights the later masks pruned in a model never trained without them.
    Attributes: :attr:`pruner` (None before training begins),
    :attr:`model`.
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
            steps_per_epoch = checked_steps_per_epoch(steps_per_epoch, "SparsekitTrainerCallback(steps_per_epoch=...)")
        self.recipe = as_recipe(recipe, trainer=True)
        self._recipe_given = recipe  # the remedies of the Pruner's errors are spelled for it (remedies_for)
        self.steps_per_epoch = steps_per_epoch
        self.input_shape = (
            checked_input_shape(input_shape, "SparsekitTrainerCallback(input_shape=...)")
            if input_shape is not None
            else None
        )
        self.scorers = checked_options("SparsekitTrainerCallback", self.recipe, scorers, submodule, finalize)
        self.submodule = submodule
        self.finalize = finalize
        self.pruner: Pruner | None = None
        """The run's Pruner: built when training begins, or by :meth:`prepare_resume`."""
        self.model: nn.Module | None = None
        """The pruned module after training (finalized when ``finalize=True``)."""
        self._guard: Any = None
        self._prepared = False

    # -- building and restoring -----------------------------------------------------------------------

    def _target(self, model: nn.Module) -> nn.Module:
        if not self.submodule:
            return model
        try:
            return model.get_submodule(self.submodule)
        except AttributeError:
            names = [n for n, _ in model.named_children()]
            raise ValueError(
                f"SparsekitTrainerCallback(submodule={self.submodule!r}): {type(model).__name__} has no such "
                f"submodule (its children: {', '.join(names) or 'none'})"
            ) from None

    def _build(self, model: nn.Module, steps_per_epoch: int) -> Pruner:
        context = {"input_shape": self.input_shape} if self.input_shape else None
        _refuse_distributed_structured(self.recipe)
        with remedies_for(self._recipe_given, type(self).__name__):
            pruner = Pruner(self._target(model), self.recipe, steps_per_epoch, context=context, scorers=self.scorers)
        # A target missed is then the trainer stopping early, not a wrong steps_per_epoch (Pruner._warn_missed).
        pruner._stepped_by = ("SparsekitTrainerCallback", "TrainingArguments num_train_epochs / max_steps")
        return pruner

    def _state(self) -> dict[str, Any]:
        assert self.pruner is not None
        return {
            "version": STATE_VERSION,
            "steps_per_epoch": self.pruner.steps_per_epoch,
            "pruning": pruning_key(self.recipe),
            "submodule": self.submodule,
            "pruner": self.pruner.state_dict(),
        }

    def _restore(self, model: nn.Module, state: Mapping[str, Any], optimizer: Any, where: Path) -> None:
        if state.get("pruning") != pruning_key(self.recipe):
            raise ValueError(
                f"{where}: the recipe's pruning section differs from the one this checkpoint was written with, "
                "so its masks and schedule do not apply; resume with the same recipe or start a new run"
            )
        steps = int(state["steps_per_epoch"])
        if self.steps_per_epoch is not None and self.steps_per_epoch != steps:
            warnings.warn(
                f"SparsekitTrainerCallback: steps_per_epoch={self.steps_per_epoch} but {where}'s schedule was "
                f"laid out with {steps}; continuing with {steps}",
                stacklevel=3,
            )
        pruner = self._build(model, steps)
        pruner.load_state_dict(state["pruner"])  # replays removed channels: the saved weights fit next
        if pruner.structure_changed:
            if optimizer is not None:
                pruner.update_optimizer(_real_optimizer(optimizer))
            pruner.structure_changed = False  # otherwise the Trainer creates its optimizer over the new parameters
        self.pruner = pruner

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        big = too_large_to_unpack(path)
        if big:
            raise ValueError(f"{path}: cannot be read: {big}; the file is damaged or built to exhaust memory")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "pruner" not in state:
            raise ValueError(f"{path}: not a sparsekit pruner state (written by SparsekitTrainerCallback)")
        return state

    def prepare_resume(self, trainer: Trainer, checkpoint: str | os.PathLike[str]) -> None:
        """Before ``trainer.train(resume_from_checkpoint=checkpoint)``: rebuild the pruner from
        ``checkpoint/pruner.pt`` on ``trainer.model``, removing the channels the run had removed, so the
        checkpoint's smaller weights (and optimizer state) fit when the Trainer loads them. Needed when
        the recipe has a ``structured`` entry or the checkpoint lies outside ``args.output_dir``; harmless
        otherwise. FileNotFoundError when ``checkpoint`` has no ``pruner.pt``; ValueError when it was
        written under another recipe's pruning section; TypeError when ``checkpoint`` is not a folder's path (``True``,
        as ``resume_from_checkpoint`` takes it, included) or ``trainer`` has no model."""
        if not isinstance(checkpoint, str | os.PathLike):
            # pathlib's "expected str, bytes or os.PathLike object, not bool" named neither the argument nor the way
            raise TypeError(
                f"prepare_resume(checkpoint=...): expected the checkpoint folder's path, got {checkpoint!r}; "
                "transformers.trainer_utils.get_last_checkpoint(args.output_dir) finds the last one"
            )
        path = Path(checkpoint) / PRUNER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no pruner state there; was the run trained with SparsekitTrainerCallback?"
            )
        model: Any = getattr(trainer, "model", None)  # (None or another object: "has no attribute 'model'")
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"prepare_resume(trainer=...): expected the transformers.Trainer to resume, whose model is an "
                f"nn.Module; got a {type(trainer).__name__}"
                + (f" whose model is {type(model).__name__}" if hasattr(trainer, "model") else "")
            )
        self._restore(model, self._read(path), trainer.optimizer, path)
        self._prepared = True

    # -- events ---------------------------------------------------------------------------------------

    @at_user_code
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if not isinstance(model, nn.Module) or not any(s.method == "structured" for s in self.recipe.pruning):
            return

        def guard(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *_: Any) -> None:
            if self.pruner is not None or prefix:
                return
            own = module.state_dict()
            for key, value in state_dict.items():
                if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
                    raise RuntimeError(
                        f"the checkpoint's {key!r} has shape {list(value.shape)} but the model's "
                        f"{list(own[key].shape)}: the run removed channels (structured pruning). Call "
                        "callback.prepare_resume(trainer, checkpoint) before "
                        "trainer.train(resume_from_checkpoint=checkpoint), with the same recipe"
                    )

        self._guard = model.register_load_state_dict_pre_hook(guard)

    @at_user_code
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs["model"]
        if not self._prepared and state.global_step == 0:  # a resume restores its checkpoint's pruner state
            refuse_pruned_again(type(self).__name__, self._target(model), self.pruner, self.model, "train()")
        self.model = None
        if not self._prepared:
            self.pruner = None  # each train() call on a new model builds its own pruner, unless prepare_resume did
        self._prepared = False
        if self.pruner is None and state.global_step > 0:
            path = _checkpoint_dir(args, state.global_step) / PRUNER_FILE
            if path.is_file():
                self._restore(model, self._read(path), kwargs.get("optimizer"), path)
            else:
                warnings.warn(
                    f"SparsekitTrainerCallback: resuming at step {state.global_step} but {path} does not exist; "
                    "pruning starts again from step 0 (for a checkpoint elsewhere call "
                    "callback.prepare_resume(trainer, checkpoint) first)",
                    stacklevel=2,
                )
        if self.pruner is None:
            self.pruner = self._build(model, self._steps_per_epoch(args, kwargs.get("train_dataloader")))
        elif self.steps_per_epoch is None:
            # A resumed schedule keeps the steps per epoch it was laid out with; a run that now takes another number
            # (another gradient_accumulation_steps, batch size or data set) reaches its end_epochs at other epochs.
            # (SparsekitCallback says so too; an explicit steps_per_epoch that differs is warned of in _restore.)
            try:
                steps = self._steps_per_epoch(args, kwargs.get("train_dataloader"))
            except ValueError:
                steps = self.pruner.steps_per_epoch  # a loader with no length: nothing to compare
            if steps != self.pruner.steps_per_epoch:
                warnings.warn(
                    f"SparsekitTrainerCallback: this run takes {steps} optimizer steps per epoch, the resumed "
                    f"schedule {self.pruner.steps_per_epoch}; the schedule keeps its steps",
                    stacklevel=2,
                )
        short = short_schedules(
            self.recipe,
            self.pruner.steps_per_epoch,
            float(state.max_steps),
            done=state.global_step,
            counted=self.pruner.step_count,
        )
        if short and state.max_steps > 0:
            warnings.warn(
                "SparsekitTrainerCallback: the recipe's schedule outlasts training: " + "; ".join(short),
                stacklevel=2,
            )

    def _steps_per_epoch(self, args: TrainingArguments, loader: Any) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        try:
            batches = len(loader)
        except TypeError:
            raise ValueError(
                "SparsekitTrainerCallback: the training loader has no length, so optimizer steps per epoch are "
                "unknown; pass SparsekitTrainerCallback(..., steps_per_epoch=N)"
            ) from None
        return max(1, math.ceil(batches / max(1, args.gradient_accumulation_steps)))

    @at_user_code
    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.pruner is not None and not self.pruner.finalized:
            model = kwargs.get("model")
            if isinstance(model, nn.Module):
                require_first_batch(self.pruner, type(self).__name__, model, self.submodule, "the model's forward")
            self.pruner.regularize()

    @at_user_code
    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        pruner = self.pruner
        if pruner is None or pruner.finalized:
            return
        pruner.step()
        if pruner.structure_changed:
            optimizer = kwargs.get("optimizer")
            if optimizer is None:
                raise RuntimeError(
                    "SparsekitTrainerCallback: channels were removed but the Trainer passed no optimizer"
                )
            pruner.update_optimizer(_real_optimizer(optimizer))  # in place: the LR scheduler keeps driving it
            pruner.structure_changed = False

    @at_user_code
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # The processes that write the Trainer's own checkpoint files: world process zero, or with save_on_each_node
        # each node's first, whose ranks resume from their own node's checkpoint-N (without pruner.pt there, they
        # would prune from step 0 while rank 0 resumed its masks).
        if self.pruner is None or self.pruner.finalized or not args.should_save:
            return
        folder = _checkpoint_dir(args, state.global_step)
        if not folder.is_dir():
            warnings.warn(
                f"SparsekitTrainerCallback: the checkpoint folder {folder} does not exist (hyperparameter search "
                "writes elsewhere); the pruner's state was not saved",
                stacklevel=2,
            )
            return
        with atomic_path(folder / PRUNER_FILE) as tmp, open(tmp, "wb") as fh:
            torch.save(self._state(), fh)

    def _follow_best(self, args: TrainingArguments, state: TrainerState) -> None:
        """With ``load_best_model_at_end`` the Trainer has just loaded the best checkpoint's weights: restore the
        pruner state saved beside them, so the masks are the ones that model was trained and evaluated with (the
        last step's masks would zero more of its weights, untrained and unevaluated)."""
        pruner = self.pruner
        best = state.best_model_checkpoint if args.load_best_model_at_end else None
        if pruner is None or not best:
            return
        path = Path(best) / PRUNER_FILE
        saved = self._read(path) if path.is_file() else None
        if saved is None or saved.get("pruning") != pruning_key(self.recipe):
            warnings.warn(
                f"SparsekitTrainerCallback: load_best_model_at_end loaded {best}, which has no pruner state of this "
                "recipe; the last step's masks are applied to its weights",
                stacklevel=3,
            )
            return
        step = int(saved["pruner"]["step"])
        if step == pruner.step_count or list(saved["pruner"].get("pruning_history", [])) != pruner.pruning_history:
            return  # the last step's own state, or one the Trainer could not load the weights of (channels removed)
        pruner.load_state_dict(saved["pruner"])
        warnings.warn(
            f"SparsekitTrainerCallback: load_best_model_at_end loaded {best} (optimizer step {step} of "
            f"{state.global_step}): the pruned model is that checkpoint's, with the masks it was evaluated with",
            stacklevel=3,
        )

    @at_user_code
    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._guard is not None:
            self._guard.remove()
            self._guard = None
        pruner = self.pruner
        if pruner is None:
            return
        if not pruner.finalized:
            self._follow_best(args, state)
        target = pruner.model
        if not self.finalize or pruner.finalized:
            self.model = target
            return
        if 0 < state.global_step < state.max_steps:
            # A callback (EarlyStoppingCallback) set should_training_stop: finalize's missed-target warning said to
            # raise num_train_epochs / max_steps, which were long enough.
            pruner._stepped_by = (
                type(self).__name__,
                f"a callback such as EarlyStoppingCallback stopped training at step {state.global_step} of "
                f"{state.max_steps}: let it stop only after the schedule's end, e.g. with a larger "
                "early_stopping_patience",
            )
        model = pruner.finalize()
        if model is not target:
            root = kwargs.get("model")
            if self.submodule and isinstance(root, nn.Module):
                parent_name, _, attr = self.submodule.rpartition(".")
                setattr(root.get_submodule(parent_name) if parent_name else root, attr, model)
            else:
                warnings.warn(
                    "SparsekitTrainerCallback: pruner.finalize() returned a new model object, which cannot replace "
                    "the Trainer's model; use callback.model (or pass submodule=... to prune a child module)",
                    stacklevel=2,
                )
        self.model = model
