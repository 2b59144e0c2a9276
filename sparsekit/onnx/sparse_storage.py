"""Store sparse weights of an ONNX file as ``sparse_initializer`` (COO) where that is smaller.

This saves disk, not time: onnxruntime turns every sparse initializer back into a dense tensor
when it loads the model, so memory, kernels and latency are those of the dense file and the
outputs are bit-identical (checked on every conversion).

Indices are linear (row-major flattened) positions, 1-D ``[nnz]``, in the smallest signed integer
type that holds the largest one. Caveat, measured with onnx 1.23 / onnxruntime 1.32: onnxruntime
reads int8, int16, int32 and int64 indices, but ``onnx.checker`` accepts only int64 (and full
shape inference does not type sparse initializers at all). With ``index_dtype="int64"`` the file
passes ``onnx.checker`` at the price of 8 bytes per nonzero for indices, which only pays below
1/3 density for fp32 weights.

Example::

    info = to_sparse_storage("pruned.onnx", "pruned.sparse.onnx")
    info["bytes_after"] / info["bytes_before"]      # ~0.2-0.3 for a 90% sparse fp32 model

Format: ONNX ``SparseTensorProto`` (https://onnx.ai/onnx/repo-docs/IR.html#sparse-tensors).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsekit.errors import ExportError
from sparsekit.onnx.files import (
    EXTERNAL_DATA_BYTES,
    check_external_data,
    load_onnx,
    onnx_sizes,
    publish,
    save_onnx,
    staging,
)
from sparsekit.onnx.sessions import open_session, random_feeds
from sparsekit.onnx.tensors import NUMERIC_TYPES, densify

__all__ = ["INDEX_DTYPES", "index_dtype_for", "to_sparse_storage"]

PathLike = str | os.PathLike[str]

# Signed index types onnxruntime accepts for sparse initializer indices (it rejects unsigned ones).
INDEX_DTYPES = (np.int8, np.int16, np.int32, np.int64)


def index_dtype_for(max_index: int, index_dtype: str = "smallest") -> type[np.signedinteger]:
    """The smallest signed integer type of :data:`INDEX_DTYPES` that holds ``max_index``
    (``index_dtype="smallest"``), or ``np.int64`` (``"int64"``). Raises :class:`ExportError` for any
    other ``index_dtype``."""
    if index_dtype == "int64":
        return np.int64
    if index_dtype != "smallest":
        raise ExportError(f"index_dtype must be 'smallest' or 'int64', got {index_dtype!r}")
    return next(t for t in INDEX_DTYPES if max_index <= np.iinfo(t).max)


def to_sparse_storage(
    onnx_path: PathLike,
    out_path: PathLike,
    *,
    index_dtype: str = "smallest",
    verify: bool = True,
) -> dict[str, Any]:
    """Rewrite ``onnx_path`` to ``out_path`` with each numeric initializer stored sparse (COO,
    linear indices) when its serialized sparse form is smaller than the dense one. The output
    carries the ``sparsekit`` metadata mark (see :func:`sparsekit.onnx.files.written_by_sparsekit`).

    Saves disk, not time: onnxruntime densifies sparse initializers at load, so inference speed
    and memory are unchanged. Every sparse tensor is read back from the written file and must
    decode to the dense one; with ``verify`` (default) both files are also run in onnxruntime on
    the same seeded input and the outputs must be bit-identical. Otherwise :class:`ExportError`
    and nothing is written; the same when ``onnx_path`` is not ONNX or keeps external data outside
    its folder (checked before anything reads it). A ``-0.0`` weight is stored as an absent entry (+0.0, equal in value;
    counted as ``negative_zeros``).

    ``index_dtype``: ``"smallest"`` (int8..int64, read by onnxruntime) or ``"int64"`` (the only
    type ``onnx.checker`` accepts). Decisions are by raw bytes; gzip of the sparse form can be
    larger than gzip of the dense one (zero runs compress well), so both totals are reported.

    Returns ``{"path", "bytes_before", "bytes_after", "gzip_bytes_before", "gzip_bytes_after",
    "sparse_initializers", "initializers": [{"name", "dtype", "shape", "nonzero", "dense_bytes",
    "sparse_bytes", "index_dtype", "sparse"[, "negative_zeros"]}], "onnx_checker_ok", "verified"}``
    where ``verified`` is None when not run or ``{"ok": True|None, "reason"}`` (None: no input
    could be made for the model, e.g. symbolic non-batch dims). Sizes are bytes, external data
    included. Raises :class:`~sparsekit.errors.OutputError` when the disk is full, read-only or not
    writable.
    """
    src, final = Path(onnx_path), Path(out_path)
    index_dtype_for(0, index_dtype)  # validate the option before any work
    model = load_onnx(src)
    before = onnx_sizes(src)
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}  # an initializer that is also an input stays dense

    decisions, keep, sparse, originals = [], [], [], {}
    for init in graph.initializer:
        row, tensor = _decide(init, index_dtype, init.name in graph_inputs)
        decisions.append(row)
        if tensor is None:
            keep.append(init)
        else:
            sparse.append(tensor)
            originals[init.name] = numpy_helper.to_array(init)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.sparse_initializer.extend(sparse)

    checker_ok = _checker_ok(model)
    with staging(final) as work:
        tmp = work / final.name
        # Sparse tensors stay inside the protobuf (onnx writes only dense ones to external data), so
        # they must fit in its 2 GB together with the graph.
        large = sum(t.ByteSize() for t in keep) > EXTERNAL_DATA_BYTES
        save_onnx(model, tmp, what="sparse-storage model", external_data=large)
        _check_decoded(tmp, originals)  # every sparse tensor, read back from the file, equals the dense one
        verified = _verify(src, tmp) if verify and sparse else None
        publish(tmp, final)
    after = onnx_sizes(final)
    return {
        "path": str(final),
        "bytes_before": before["bytes"],
        "bytes_after": after["bytes"],
        "gzip_bytes_before": before["gzip_bytes"],
        "gzip_bytes_after": after["gzip_bytes"],
        "sparse_initializers": len(sparse),
        "initializers": decisions,
        "onnx_checker_ok": checker_ok,
        "verified": verified,
    }


def _decide(
    init: onnx.TensorProto, index_dtype: str, is_input: bool
) -> tuple[dict[str, Any], onnx.SparseTensorProto | None]:
    row: dict[str, Any] = {
        "name": init.name,
        "dtype": onnx.TensorProto.DataType.Name(init.data_type).lower(),
        "shape": list(init.dims),
        "nonzero": None,
        "dense_bytes": init.ByteSize(),
        "sparse_bytes": None,
        "index_dtype": None,
        "sparse": False,
    }
    if init.data_type not in NUMERIC_TYPES or not init.dims or is_input:
        return row, None
    arr = numpy_helper.to_array(init)
    flat = arr.reshape(-1)
    idx = np.flatnonzero(flat)
    row["nonzero"] = int(idx.size)
    # Cheap upper bound first: values alone at least as big as the dense tensor -> no gain possible.
    if idx.size * arr.itemsize >= row["dense_bytes"]:
        return row, None
    itype = index_dtype_for(max(int(math.prod(arr.shape)) - 1, 0), index_dtype)
    values = numpy_helper.from_array(flat[idx], name=init.name)
    indices = numpy_helper.from_array(idx.astype(itype), name="")
    tensor = helper.make_sparse_tensor(values, indices, list(init.dims))
    row["sparse_bytes"] = tensor.ByteSize()
    row["index_dtype"] = np.dtype(itype).name
    if row["sparse_bytes"] >= row["dense_bytes"]:
        return row, None
    row["sparse"] = True
    if arr.dtype.kind == "f":
        # -0.0 (what masking a negative weight gives) is stored as an absent entry, i.e. +0.0: the
        # same value, but not the same bits. Counted so the report says so.
        row["negative_zeros"] = int(np.count_nonzero(np.signbit(flat) & (flat == 0)))
    return row, tensor


def _check_decoded(path: Path, originals: dict[str, np.ndarray]) -> None:
    graph = load_onnx(path, load_external_data=False).graph
    stored = {t.values.name: t for t in graph.sparse_initializer}
    for name, want in originals.items():
        got = densify(stored[name]) if name in stored else None
        # Value equality: -0.0 == +0.0 (see _decide); NaN weights must stay NaN.
        if got is None or not np.array_equal(got, want, equal_nan=want.dtype.kind == "f"):
            raise ExportError(f"{path.name}: sparse initializer {name!r} does not decode to the dense tensor")


def _checker_ok(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
    except Exception:  # e.g. "Sparse tensor indices must have INT64 type" for narrower indices
        return False
    return True


def _verify(dense: Path, sparse: Path) -> dict[str, Any]:
    """Run both files on the same seeded input; outputs must be bit-identical."""
    check_external_data(dense)  # a refusal is an error, not "cannot verify"
    try:
        a = open_session(dense)
    except ExportError as e:
        return {"ok": None, "reason": f"the input model does not load in onnxruntime: {e.__cause__ or e}"}
    try:
        feeds = random_feeds(a)
        expected = a.run(None, feeds)
    except Exception as e:  # symbolic non-batch dims, non-tensor inputs: nothing to compare with
        return {"ok": None, "reason": f"cannot make an input the model accepts: {e}"}
    try:
        got = open_session(sparse).run(None, feeds)
    except Exception as e:
        raise ExportError(f"onnxruntime cannot run the sparse-storage model: {e}") from e
    identical = len(got) == len(expected) and all(
        g.shape == e.shape and g.dtype == e.dtype and g.tobytes() == e.tobytes()
        for g, e in zip(got, expected, strict=True)
    )
    if not identical:
        raise ExportError("the sparse-storage model's outputs differ from the dense model's; not written")
    return {"ok": True, "reason": None}
