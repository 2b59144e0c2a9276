"""The user's model inside the wrappers training puts around it.

Data-parallel wrappers (``DistributedDataParallel``, ``DataParallel``, DeepSpeed, FSDP, Fabric) keep it in
``.module``; ``torch.compile``'s ``OptimizedModule`` in ``._orig_mod``. Their names (``module.fc1``,
``_orig_mod.fc1``) are none a recipe, a report or a checkpoint means, so every reader of layer names starts here.
Wrappers are recognised by class, never by the attribute: a model of one's own may call a child ``module``, and
its layers keep the names the recipe gives them (``module.0``).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a model exists: commands that only read recipes never load it
    from torch import nn

# Other libraries' data-parallel wrappers holding the model in .module (not imported here to be recognised)
_WRAPPERS = frozenset({"DeepSpeedEngine", "FullyShardedDataParallel", "ShardedDataParallel", "_FabricModule"})


def unwrap_wrappers(model: nn.Module) -> tuple[nn.Module, bool]:
    """The model inside any wrappers of ``model`` (itself when there are none), and whether one of them was a
    data-parallel wrapper."""
    from torch import nn

    inner, data_parallel = model, False
    for _ in range(8):  # compile(DDP(model)), DDP(compile(model)), ...
        compiled = inner._modules.get("_orig_mod") if type(inner).__name__ == "OptimizedModule" else None
        if isinstance(compiled, nn.Module):
            inner = compiled
        elif isinstance(child := getattr(inner, "module", None), nn.Module) and (
            isinstance(inner, (nn.DataParallel, nn.parallel.DistributedDataParallel))
            or type(inner).__name__ in _WRAPPERS
        ):
            inner, data_parallel = child, True
        else:
            break
    return inner, data_parallel


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside any data-parallel or ``torch.compile`` wrappers of ``model`` (itself when there are none)."""
    return unwrap_wrappers(model)[0]


def require_module(model: object, call: str) -> None:
    """TypeError unless ``model`` is an ``nn.Module``, naming the call (``"sparsity"``) and what to do: a state_dict
    or a model file's path (what ``torch.load`` and a script's ``sys.argv`` give) otherwise failed deep inside with
    "'OrderedDict' object has no attribute 'named_modules'", naming neither the argument nor the way out."""
    from collections.abc import Mapping
    from os import PathLike

    from torch import nn

    if isinstance(model, nn.Module):
        return
    if isinstance(model, Mapping):
        remedy = (
            "a dict (a state_dict?) holds weights, not a model: build the architecture and load them into it "
            "(model.load_state_dict(...)), or read the file with sparsekit.load_model(path, arch='pkg.module:callable')"
        )
    elif isinstance(model, str | PathLike):
        remedy = f"read the model file first: sparsekit.load_model({str(model)!r})"
    else:
        remedy = "read a model file with sparsekit.load_model(path)"
    raise TypeError(f"{call}(model=...): expected a torch.nn.Module, got {type(model).__name__}; {remedy}")


# Models sparsekit itself made weightless on purpose (sparsekit.rehearsal.meta_copy: a rehearsal on shapes alone),
# which require_initialized lets through; by id (a module of one's own may define __eq__ and be unhashable)
_SHAPES_ONLY: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()


def mark_shapes_only(model: nn.Module) -> nn.Module:
    """``model``, a copy sparsekit put on the ``meta`` device itself, let through :func:`require_initialized`."""
    _SHAPES_ONLY[id(model)] = model
    return model


def require_initialized(model: nn.Module, call: str, error: type[Exception]) -> None:
    """``error`` naming the first layer whose parameters are still uninitialized (a ``LazyLinear`` /
    ``LazyConv2d`` before its first forward pass) or hold no values (on the ``meta`` device: a model built under
    ``torch.device("meta")``) and what to do. Such a parameter raises on any tensor call (``numel``, ``dim``,
    ``detach``) or on reading a value, so the Pruner, an export or a save failed deep inside with torch's
    "Attempted to use an uninitialized parameter" or "Tensor.item() cannot be called on meta tensors", naming
    neither the layer nor the call."""
    from torch import nn

    inner = unwrap(model)
    for name, module in inner.named_modules():
        lazy = [p for p, t in module._parameters.items() if isinstance(t, nn.parameter.UninitializedParameter)]
        # (a LazyBatchNorm1d(affine=False) holds only buffers, running_mean and running_var, which raise alike)
        buffers = [b for b, t in module._buffers.items() if isinstance(t, nn.parameter.UninitializedBuffer)]
        if lazy or buffers:
            kind = "buffers" if not lazy else "parameters and buffers" if buffers else "parameters"
            raise error(
                f"{call}(model=...): layer {name or '(the model)'!r} ({type(module).__name__}) has uninitialized "
                f"{kind} ({', '.join(lazy + buffers)}): a lazy module gets its shapes from its first forward pass, so "
                f"run one batch through the model (model(example_batch)) before calling {call}"
            )
        meta = [n for n, t in [*module._parameters.items(), *module._buffers.items()] if t is not None and t.is_meta]
        if meta and not any(_SHAPES_ONLY.get(id(m)) is m for m in (model, inner)):
            raise error(
                f"{call}(model=...): layer {name or '(the model)'!r} ({type(module).__name__}) holds no values: "
                f"{', '.join(meta)} on the meta device (shapes only, as a model built under torch.device('meta') "
                "has); give it its weights first, model.load_state_dict(state, assign=True), or "
                f"model.to_empty(device='cpu') then model.load_state_dict(state), before calling {call}"
            )


# What to do with a model object given where a file's path goes (require_path), by call
SAVE_IT_FIRST = (
    "write it to a file first, sparsekit.save_model(model, 'model.pt', factory='pkg.module:callable'), or prune it "
    "in your own loop with sparsekit.Pruner(model, recipe, steps_per_epoch)"
)


def require_path(value: object, call: str, module_remedy: str = SAVE_IT_FIRST) -> None:
    """TypeError unless ``value`` is a path (``str`` or ``os.PathLike``), naming the call and argument (``call``,
    e.g. ``"run_prune(model_path=...)"``): a model object given where a file goes (``run_prune(model, ...)``) failed
    inside pathlib with "expected str, bytes or os.PathLike object, not MLP". ``module_remedy``: what to do
    with an ``nn.Module`` instead. Reads ``value``'s type only, so no torch import for a path."""
    import os

    if isinstance(value, str | os.PathLike):
        return
    module = is_torch_module(value)
    what = f"{type(value).__name__}, a model in memory" if module else type(value).__name__
    raise TypeError(
        f"{call}: expected a file's path (a str or pathlib.Path), got {what}" + (f"; {module_remedy}" if module else "")
    )


# What to do when single samples came where batches go: a Dataset given for a DataLoader (finetune(model, recipe,
# dataset, ...)), whose samples were read as batches and refused as "labels of shape []" or "has shape [20]"
SAMPLES_NOT_BATCHES = (
    "single samples, not batches (a Dataset given for a DataLoader?): wrap the dataset, "
    "torch.utils.data.DataLoader(dataset, batch_size=64)"
)


def is_torch_dataset(value: object) -> bool:
    """Whether ``value`` is a ``torch.utils.data.Dataset`` (samples, not batches), read off its type's bases."""
    return any(c.__name__ == "Dataset" and c.__module__.startswith("torch.utils.data") for c in type(value).__mro__)


def is_torch_module(value: object) -> bool:
    """Whether ``value`` is an ``nn.Module``, read off its type's bases: no torch import for a path."""
    return any(c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(value).__mro__)


def int_dims(shape: object, min_dims: int = 1) -> list[int] | None:
    """``shape`` (a caller's input shape: a list, tuple or ``torch.Size``) as a list of at least ``min_dims``
    positive ints, or None when it is not one. Each dimension is an int or a numpy/torch integer, never a bool, a
    float (``int()`` cut 784.9 to 784) or text; the caller raises its own error for None. A one-dimensional numpy
    array or torch tensor of integers is taken as its list (``np.array([1, 8])`` was refused as no "positive
    integers"; a float or bool array still is)."""
    if getattr(shape, "ndim", None) == 1 and callable(getattr(shape, "tolist", None)):
        shape = shape.tolist()  # type: ignore[attr-defined]  # (ints stay ints, floats floats: checked below)
    if isinstance(shape, str | bytes) or not isinstance(shape, Sequence):  # (torch.Size is a tuple)
        return None
    if any(isinstance(d, bool) or not hasattr(type(d), "__index__") for d in shape):
        return None
    dims = [operator.index(d) for d in shape]
    return dims if len(dims) >= min_dims and all(d > 0 for d in dims) else None


def checked_input_shape(shape: Any, where: str) -> list[int]:
    """``shape`` (a caller's batch-first input shape: the Pruner's context, a trainer callback's ``input_shape``) as a
    list of ints; ValueError naming ``where`` for text, a bare number, a shape without the batch dimension or a
    dimension that is not a positive integer (they failed as "invalid literal for int()", "'int' object is not
    iterable", or later inside torch's tracing)."""
    dims = int_dims(shape, min_dims=2)
    if dims is None:
        raise ValueError(
            f"{where} must be the whole shape of one input, batch first, as positive integers (e.g. [1, 784] or "
            f"[1, 3, 32, 32]), got {shape!r}"
        )
    return dims


def float32_model(model: nn.Module) -> nn.Module:
    """``model`` when its floating parameters and buffers are all float32, else a float32 copy of it (the model
    given keeps its dtype). sparsekit exports float32 models: a float64 or bfloat16 model (an architecture that
    builds its layers so, which a prune run trains in as it is) fails to trace on float32 inputs, and export's
    remedy, model.float(), is one a command's user cannot apply."""
    import torch

    tensors = (*model.parameters(), *model.buffers())
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return model
    return copy_model(model).float()


def copy_model(model: nn.Module, memo: dict[int, object] | None = None) -> nn.Module:
    """``copy.deepcopy(model)`` (with ``memo``, as deepcopy takes it), also for a model holding a computed tensor
    as a plain attribute: the hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm`` keep the layer's
    ``weight`` as one, which deepcopy refuses ("Only Tensors created explicitly by the user (graph leaves) support
    the deepcopy protocol"), a RuntimeError out of ``rehearse`` or ``plan``. The copy gets it detached: its hook
    computes it again at the copy's next forward pass."""
    import copy

    import torch

    memo = dict(memo or {})
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo.setdefault(id(value), value.detach().clone())
    return copy.deepcopy(model, memo)
