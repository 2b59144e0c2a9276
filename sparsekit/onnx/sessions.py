"""onnxruntime sessions and the inputs fed to them.

:func:`open_session` is the one place sparsekit creates an ``onnxruntime.InferenceSession``: it
checks the file's external data first (onnxruntime follows locations unchecked), honours the
execution provider and thread count, and turns every failure into an :class:`ExportError` naming
the file. :func:`random_array` is the one maker of seeded model inputs, and :func:`random_feeds`
builds a feed for every input a model declares.

Session options: https://onnxruntime.ai/docs/api/python/api_summary.html#sessionoptions
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sparsekit.errors import ExportError, option
from sparsekit.onnx.files import check_external_data, native_path

__all__ = ["DEFAULT_PROVIDER", "ORT_DTYPES", "open_session", "random_array", "random_feeds"]

PathLike = str | os.PathLike[str]

DEFAULT_PROVIDER = "CPUExecutionProvider"
# onnxruntime's input type strings -> numpy dtypes sparsekit can feed.
ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def open_session(
    path: PathLike, *, provider: str = DEFAULT_PROVIDER, threads: int = 0, spinning: bool = True
) -> ort.InferenceSession:
    """An onnxruntime session for the ONNX file at ``path`` on execution ``provider``.

    ``threads``: intra-op threads (0: onnxruntime's default, one per core). Runs are sequential with
    one inter-op thread and all graph optimizations. ``spinning=False`` stops idle intra-op threads
    from spinning (several sessions timed in turn would otherwise steal each other's cores).
    Raises :class:`ExportError` when ``provider`` is not available (naming those that are), when the
    file is not ONNX or keeps external data outside its folder (checked before onnxruntime opens it),
    or when onnxruntime cannot load it (naming the file and the provider); ValueError for ``threads`` that is not a
    whole number 0..1024 (onnxruntime took -1 without a word, where :func:`~sparsekit.onnx.benchmark` refuses it).
    """
    import numbers

    from sparsekit.recipe import MAX_THREADS

    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or not 0 <= threads <= MAX_THREADS:
        raise ValueError(
            f"open_session(threads=...): a whole number 0..{MAX_THREADS} (0: one per core), got {threads!r}"
        )
    threads = int(threads)
    available = ort.get_available_providers()
    if provider not in available:
        given = option("provider", str(provider))
        raise ExportError(f"{given}: not an execution provider onnxruntime has here; available: {', '.join(available)}")
    p = Path(path)
    check_external_data(p)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4  # fatal only: every failure reaches the caller as an exception, said once
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        # enable_fallback=0: a provider that fails to start (onnxruntime-gpu without a usable GPU) would otherwise
        # be replaced by the CPU, with a banner print()ed to stdout (inside --json), and timed under its name.
        session = ort.InferenceSession(native_path(p), sess_options=opts, providers=[provider], enable_fallback=0)
    except Exception as e:  # onnxruntime raises its own unrelated exception types
        raise ExportError(f"{p}: onnxruntime cannot load it with {provider}: {e}") from e
    running = list(session.get_providers())
    if provider not in running:  # dropped while the session was built (its library failed to load, say)
        raise ExportError(
            f"{p}: onnxruntime lists {provider} but could not start it (the session runs on "
            f"{', '.join(running) or 'nothing'}); check its install (drivers, libraries), or choose "
            f"{option('provider', 'CPUExecutionProvider')}"
        )
    return session


def random_array(shape: Sequence[int], dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    """A model input of ``shape`` and ``dtype``: standard normal values for a floating-point dtype
    (drawn in float32, or float64 for float64), zeros for any other. Seeded by ``seed`` alone, so the
    same shape gives the same data in every call and process; the global RNGs are left alone."""
    dt = np.dtype(dtype)
    if dt.kind != "f":
        return np.zeros(tuple(shape), dt)
    draw = np.float64 if dt == np.float64 else np.float32
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=draw).astype(dt, copy=False)


def random_feeds(session: ort.InferenceSession, batch: int = 16, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A :func:`random_array` for every input ``session`` declares: its fixed dims as declared, a
    symbolic first (batch) dim as ``batch``. Raises :class:`ExportError` for an input of a type
    sparsekit cannot make (see :data:`ORT_DTYPES`) or with symbolic dims besides the first."""
    feeds = {}
    for arg in session.get_inputs():
        if arg.type not in ORT_DTYPES:
            raise ExportError(f"input {arg.name!r} has type {arg.type}")
        if any(not isinstance(d, int) for d in arg.shape[1:]):
            raise ExportError(f"input {arg.name!r} has symbolic dims {arg.shape}")
        shape = [d if isinstance(d, int) and d > 0 else batch for d in arg.shape]
        feeds[arg.name] = random_array(shape, ORT_DTYPES[arg.type], seed)
    return feeds
