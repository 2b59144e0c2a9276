"""Statistics of an ONNX file, each computed once per version of the file: sizes (external data
included, raw and gzip), weight counts, bytes per nonzero weight, and the entropy bound that a
sparse file's compressed size can be compared against.

The counts come from the one counter, :func:`sparsekit.onnx.tensors.count_params`; the sizes from
:func:`sparsekit.onnx.files.onnx_sizes`; both go through :func:`sparsekit.onnx.files.memoized`, so
``size_report`` and ``param_counts`` on the same file (the pipeline, ``sparsekit inspect`` and the
benchmark all ask) load and gzip it once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import onnx

from sparsekit.onnx.files import memoized, onnx_sizes
from sparsekit.onnx.tensors import count_params

__all__ = ["count_initializer_stats", "entropy_bound_bytes", "param_counts", "size_report"]

PathLike = str | os.PathLike[str]


def _tensor_stats(path: PathLike) -> dict[str, Any]:
    """:func:`~sparsekit.onnx.tensors.count_params` of the file at ``path``, memoized."""
    return memoized(path, "tensors", _count, load_external_data=True)


def _count(path: Path, model: onnx.ModelProto, files: list[Path]) -> dict[str, Any]:
    return count_params(model)


def param_counts(path: PathLike) -> dict[str, int]:
    """``{"params", "nonzero_params"}``: weight elements of the ONNX file at ``path`` and how many are
    nonzero, quantized weights included: floating-point initializers (dense or sparse) plus the
    integer tensors a ``DequantizeLinear`` turns into weights (not its scales and zero points); see
    :func:`~sparsekit.onnx.tensors.count_params`.

    Raises :class:`~sparsekit.errors.ExportError` when the file is not ONNX or its external data is
    outside its folder or unreadable.
    """
    stats = _tensor_stats(path)
    return {"params": stats["params"], "nonzero_params": stats["nonzero_params"]}


def count_initializer_stats(path: PathLike) -> dict[str, Any]:
    """``{"initializers", "params", "nonzero_params", "sparsity"}``: the number of weight tensors of the
    ONNX file at ``path``, their elements, nonzeros and the fraction that is zero (0.0 when there are
    none). Weights as in :func:`param_counts`; errors too."""
    stats = _tensor_stats(path)
    params, nonzero = stats["params"], stats["nonzero_params"]
    sparsity = 1.0 - nonzero / params if params else 0.0
    return {"initializers": stats["tensors"], "params": params, "nonzero_params": nonzero, "sparsity": sparsity}


def size_report(path: PathLike, nonzero_params: int | None = None) -> dict[str, Any]:
    """:func:`~sparsekit.onnx.files.onnx_sizes` plus what the bytes buy: ``{"bytes", "gzip_bytes",
    "params", "nonzero_params", "bytes_per_nonzero", "gzip_bytes_per_nonzero"}``.

    ``params`` and ``nonzero_params`` are :func:`param_counts`. Pass ``nonzero_params`` to divide by
    another count, e.g. the fp32 model's for its int8 version, where rounding zeroes a few more
    weights (:func:`sparsekit.onnx.quantize.quantize_int8` does). ``*_per_nonzero`` is bytes per
    nonzero weight, None when there are no nonzeros. Raises :class:`~sparsekit.errors.ExportError`
    like :func:`~sparsekit.onnx.files.onnx_sizes` and :func:`param_counts`.
    """
    sizes = onnx_sizes(path)
    counts = param_counts(path)
    nonzero = counts["nonzero_params"] if nonzero_params is None else int(nonzero_params)
    per = (lambda b: b / nonzero) if nonzero else (lambda b: None)
    return {
        **sizes,
        "params": counts["params"],
        "nonzero_params": nonzero,
        "bytes_per_nonzero": per(sizes["bytes"]),
        "gzip_bytes_per_nonzero": per(sizes["gzip_bytes"]),
    }


def entropy_bound_bytes(n_weights: int, n_nonzero: int, value_bits: float) -> float:
    """Bytes an ideal coder needs for ``n_weights`` of which ``n_nonzero`` are nonzero.

    Each nonzero costs ``value_bits`` (32 for fp32, 8 for int8; values taken as incompressible) and
    the zero/nonzero mask costs its binary entropy H(p) bits per weight, p = n_nonzero / n_weights:
    ``n_weights * (p * value_bits + H(p)) / 8``. For 90% sparsity and fp32 that is 0.115x of the
    dense 4 bytes per weight; for int8 values, 0.040x. gzip lands above it; a size near or below it
    means the values themselves were compressible (e.g. low-entropy exponents), not a lossless miracle.
    Raises ``ValueError`` unless ``0 <= n_nonzero <= n_weights``; 0.0 when ``n_weights <= 0``.
    """
    if n_weights <= 0:
        return 0.0
    if not 0 <= n_nonzero <= n_weights:
        raise ValueError(f"need 0 <= n_nonzero <= n_weights, got {n_nonzero} of {n_weights}")
    p = n_nonzero / n_weights
    mask_bits = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return n_weights * (p * value_bits + mask_bits) / 8
