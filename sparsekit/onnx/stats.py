"""Statistics of an ONNX file, each computed once per version of the file: sizes (external data
included, raw and gzip), weight counts, bytes per nonzero weight, and the estimated information
content of the weights (:func:`weight_entropy`) that a file's compressed size is compared against.

The counts come from the one counter, :func:`sparsekit.onnx.tensors.count_params`; the sizes from
:func:`sparsekit.onnx.files.onnx_sizes`; both go through :func:`sparsekit.onnx.files.memoized`, so
``size_report`` and ``param_counts`` on the same file (the pipeline, ``sparsekit inspect`` and the
benchmark all ask) load and gzip it once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from sparsekit.onnx.files import memoized, onnx_sizes
from sparsekit.onnx.tensors import count_params, densify, weight_predicate

__all__ = ["count_initializer_stats", "entropy_bound_bytes", "param_counts", "size_report", "weight_entropy"]

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


def size_report(path: PathLike, nonzero_params: int | None = None, level: int | None = None) -> dict[str, Any]:
    """:func:`~sparsekit.onnx.files.onnx_sizes` plus what the bytes buy: ``{"bytes", "gzip_bytes",
    "params", "nonzero_params", "bytes_per_nonzero", "gzip_bytes_per_nonzero"}``.

    ``params`` and ``nonzero_params`` are :func:`param_counts`. Pass ``nonzero_params`` to divide by
    another count, e.g. the fp32 model's for its int8 version, where rounding zeroes a few more
    weights (:func:`sparsekit.onnx.quantize.quantize_int8` does). ``*_per_nonzero`` is bytes per
    nonzero weight, None when there are no nonzeros. ``level``: the gzip level (default: the file's own,
    see :func:`~sparsekit.onnx.files.onnx_sizes`). Raises :class:`~sparsekit.errors.ExportError`
    like :func:`~sparsekit.onnx.files.onnx_sizes` and :func:`param_counts`.
    """
    sizes = onnx_sizes(path, level)
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
    """Bytes for ``n_weights`` weights of which ``n_nonzero`` are nonzero when every nonzero value is
    stored verbatim (``value_bits`` each: 32 for fp32, 8 for int8) and the zero/nonzero mask is
    coded at its binary entropy H(p) bits per weight, p = n_nonzero / n_weights:
    ``n_weights * (p * value_bits + H(p)) / 8``. For 90% sparsity and fp32 that is 0.115x of the
    dense 4 bytes per weight.

    It bounds encodings that keep the values as they are (the raw bytes of any ONNX encoding), not a
    compressor: gzip shrinks fp32 values by ~10% (their exponents take few values) and lands under
    it on nearly dense files. :func:`weight_entropy` is the estimate a gzip size is compared against.
    Raises ``ValueError`` unless ``0 <= n_nonzero <= n_weights``; 0.0 when ``n_weights <= 0``.
    """
    if n_weights <= 0:
        return 0.0
    if not 0 <= n_nonzero <= n_weights:
        raise ValueError(f"need 0 <= n_nonzero <= n_weights, got {n_nonzero} of {n_weights}")
    return n_weights * (n_nonzero / n_weights * value_bits + _binary_entropy(n_nonzero / n_weights)) / 8


def weight_entropy(path: PathLike) -> dict[str, Any]:
    """Estimated information content of the weights of the ONNX file at ``path``, in bytes: what a
    coder needs that treats each weight tensor as independent symbols. Memoized per file version.

    Returns ``{"bound_bytes", "verbatim_bound_bytes", "mask_bytes", "value_bytes", "params",
    "nonzero_params"}`` (bytes as floats):

    - ``mask_bytes``: each tensor's zero/nonzero mask at its binary entropy, n * H(nonzero / n). Per
      tensor, so a dense head next to a 95% sparse layer is not charged the average density.
    - ``value_bytes``: the nonzero values at their empirical entropy. Floating point: sign and
      exponent at their measured frequencies (a pruned layer's magnitudes span a few octaves, so
      ~2 bits instead of 9 for fp32) plus the mantissa bits as stored (23 for fp32: trained
      weights' low bits are noise); a tensor of few distinct values (e.g. a LayerNorm scale of ones)
      is charged instead its distinct values verbatim plus each value's entropy, whichever is less.
      Integer weights (QDQ int8): the values' empirical entropy.
    - ``bound_bytes`` = mask + values: a lower bound, up to the plug-in estimate's small bias, for
      coders that take weights as independent symbols. A file can go below it only by exploiting
      structure between weights (whole zero rows or blocks, repeated values); structural removal
      deletes rows physically, leaving little such structure.
    - ``verbatim_bound_bytes``: mask as above, values verbatim (all their bits): the floor for the
      raw bytes of any encoding that stores values as they are, as every standard ONNX one does
      (see :func:`entropy_bound_bytes`, which uses one density for all tensors).

    Weights are counted as :func:`param_counts` counts them (dense and sparse initializers, QDQ
    integer weights). The ONNX container (graph, names) is not counted, so a file's gzip size
    always carries some overhead over the bound. Raises :class:`~sparsekit.errors.ExportError` like
    :func:`param_counts`.
    """
    return memoized(path, "entropy", _entropy, load_external_data=True)


def _entropy(path: Path, model: onnx.ModelProto, files: list[Path]) -> dict[str, Any]:
    mask = values = verbatim = 0.0
    params = nonzero = 0
    for arr in _weight_arrays(model):
        flat = arr.reshape(-1)
        nz = flat[flat != 0]
        params += flat.size
        nonzero += nz.size
        mask += flat.size * _binary_entropy(nz.size / flat.size) / 8 if flat.size else 0.0
        values += _value_bits(nz) / 8
        verbatim += nz.size * nz.itemsize
    return {
        "bound_bytes": mask + values,
        "verbatim_bound_bytes": mask + verbatim,
        "mask_bytes": mask,
        "value_bytes": values,
        "params": params,
        "nonzero_params": nonzero,
    }


def _weight_arrays(model: onnx.ModelProto) -> Iterator[np.ndarray]:
    """Every weight of ``model`` as a dense array, chosen exactly as
    :func:`~sparsekit.onnx.tensors.count_params` chooses them (a test holds the two together)."""
    graph = model.graph
    is_weight = weight_predicate(graph)
    for init in graph.initializer:
        if is_weight(init.name, init.data_type):
            yield numpy_helper.to_array(init)
    for sparse in graph.sparse_initializer:
        if is_weight(sparse.values.name, sparse.values.data_type):
            yield densify(sparse)


# Floating-point dtype -> (unsigned integer view, mantissa bits); the bits above are sign and exponent.
_FLOAT_LAYOUT: dict[str, tuple[type[np.unsignedinteger], int]] = {
    "float64": (np.uint64, 52),
    "float32": (np.uint32, 23),
    "float16": (np.uint16, 10),
    "bfloat16": (np.uint16, 7),
}


def _value_bits(values: np.ndarray) -> float:
    """Bits for the 1-D array of nonzero ``values`` at their empirical entropy (see :func:`weight_entropy`).
    Reorders ``values`` (sorts it in place: a copy would be one more array of the weights' size)."""
    k = values.size
    if k == 0:
        return 0.0
    bits = values.view(f"u{values.itemsize}")
    bits.sort()
    distinct, spread = _run_stats(bits)
    # Two-part code: the distinct values verbatim, then each value as an index into them.
    as_symbols = distinct * values.itemsize * 8 + k * _entropy_from(spread, k)
    layout = _FLOAT_LAYOUT.get(values.dtype.name)
    if layout is None:  # integer (quantized) weights: the symbol entropy is the whole story
        return as_symbols
    utype, mantissa = layout
    # Sign and exponent of sorted bits are sorted too: no second sort.
    _, se_spread = _run_stats(values.view(utype) >> utype(mantissa))
    return min(as_symbols, k * (_entropy_from(se_spread, k) + mantissa))


# Elements per slice when counting runs: index arrays stay a few MB whatever the tensor (one int64 index per
# distinct value of a 34M-weight tensor would be ~200 MB).
_RUN_CHUNK = 1 << 22


def _run_stats(s: np.ndarray) -> tuple[int, float]:
    """``(runs, sum of c * log2(c) over the run lengths c)`` of the sorted nonempty 1-D array ``s``: the
    number of distinct values and the term :func:`_entropy_from` needs, counted slice by slice."""
    runs, spread, carry = 0, 0.0, 0  # carry: length of the run still open at the previous slice's end
    for start in range(0, s.size, _RUN_CHUNK):
        part = s[start : start + _RUN_CHUNK]
        if carry and part[0] != s[start - 1]:
            runs, spread, carry = runs + 1, spread + carry * math.log2(carry), 0
        ends = np.flatnonzero(part[1:] != part[:-1])  # a run ends at each of these positions
        if ends.size:
            lengths = np.diff(ends, prepend=-1)
            lengths[0] += carry
            runs += lengths.size
            spread += float(np.dot(lengths, np.log2(lengths)))
            carry = part.size - 1 - int(ends[-1])
        else:
            carry += part.size
    return runs + 1, spread + carry * math.log2(carry)


def _entropy_from(spread: float, k: int) -> float:
    """Plug-in entropy in bits per symbol of ``k`` symbols whose counts c have ``sum c*log2(c) = spread``:
    ``-sum (c/k) log2(c/k) = log2(k) - spread / k``."""
    return max(0.0, math.log2(k) - spread / k)


def _binary_entropy(p: float) -> float:
    return 0.0 if p <= 0.0 or p >= 1.0 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
