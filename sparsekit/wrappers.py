"""The user's model inside the wrappers training puts around it.

Data-parallel wrappers (``DistributedDataParallel``, ``DataParallel``, DeepSpeed, FSDP, Fabric) keep it in
``.module``; ``torch.compile``'s ``OptimizedModule`` in ``._orig_mod``. Their names (``module.fc1``,
``_orig_mod.fc1``) are none a recipe, a report or a checkpoint means, so every reader of layer names starts here.
Wrappers are recognised by class, never by the attribute: a model of one's own may call a child ``module``, and
its layers keep the names the recipe gives them (``module.0``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
