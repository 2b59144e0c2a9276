"""sparsekit's calls made inside the user's ``torch.autocast``.

A loop of one's own often puts a whole training step under ``with torch.autocast(...)``, the Pruner's calls included,
and may export there too. What sparsekit runs of the model then (equivalence probes, traces, the ONNX export and its
parity run) compares or writes float32 outputs, which bf16 / fp16 rounding blurred: ``finalize()`` kept every zeroed
unit l1's ``remove_dead`` removes outside autocast ("cannot be folded exactly"), and ``export_onnx`` wrote bf16 Gemm
nodes onnxruntime cannot run. :func:`full_precision` runs such a call with autocast off.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch

_F = TypeVar("_F", bound=Callable[..., Any])

# Every device type autocast knows here (cpu, cuda, mps, ...), and torch's one-call check that any of them is on.
_AUTOCAST_DEVICES = tuple(
    d for d in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "maia", "xla", "ipu") if torch.amp.is_autocast_available(d)
)
_any_autocast: Callable[[], bool] = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Autocast off, inside it, on every device where the caller turned it on."""
    with contextlib.ExitStack() as stack:
        for device in _AUTOCAST_DEVICES:
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
        yield


def full_precision(fn: _F) -> _F:
    """``fn`` run with autocast off on every device where the caller turned it on (unchanged, at ~0.3 us a call,
    where none is: the Pruner's ``step()`` runs after every optimizer step)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _any_autocast():
            return fn(*args, **kwargs)
        with autocast_off():
            return fn(*args, **kwargs)

    return cast(_F, wrapper)
