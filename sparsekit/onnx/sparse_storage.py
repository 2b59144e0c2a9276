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

import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsekit.errors import ExportError
from sparsekit.onnx.compress import gzip_size_of_bytes
from sparsekit.onnx.files import (
    EXTERNAL_DATA_BYTES,
    GZIP_LEVEL,
    check_external_data,
    external_data_files,
    load_onnx,
    onnx_sizes,
    publish,
    save_onnx,
    staging,
)
from sparsekit.onnx.sessions import open_session, random_feeds
from sparsekit.onnx.tensors import NUMERIC_TYPES, densify, positive_zeros, positive_zeros_tensor

__all__ = [
    "GZIP_LEVEL",
    "INDEX_DTYPES",
    "OBJECTIVES",
    "STORAGE_MODES",
    "choose_storage",
    "index_dtype_for",
    "to_sparse_storage",
]

PathLike = str | os.PathLike[str]

# Signed index types onnxruntime accepts for sparse initializer indices (it rejects unsigned ones).
INDEX_DTYPES = (np.int8, np.int16, np.int32, np.int64)
# What to_sparse_storage minimizes per tensor: serialized bytes, or bytes after gzip (GZIP_LEVEL).
OBJECTIVES = ("raw", "gzip")
# choose_storage's modes: "auto" picks the smaller file after gzip, the others force an encoding.
STORAGE_MODES = ("auto", "sparse", "dense")
# Each tensor's encodings are ranked by their gzip size at the level every reported size uses
# (GZIP_LEVEL, 6: see sparsekit.onnx.files): within ~2% of level 9's sizes, in the same order, and 5-10x
# faster on short zero runs and int64 indices.
RANK_LEVEL = GZIP_LEVEL
# A tensor this large is ranked on a sample: SAMPLE_WINDOWS evenly spaced runs of its flattened elements,
# SAMPLE_BYTES of dense bytes in all or enough to hold SAMPLE_MIN_NONZERO nonzeros, each encoding's gzip
# size scaled up by the same factor (see _sampled_gzip_sizes). A short sparse stream compresses
# a little worse than a long one (4096x4096 at 90-98%: +2% at 10k nonzeros, +0.4-0.7% from 26k on), hence
# the floor on nonzeros; a sample that would need more than SAMPLE_MAX_SHARE of the tensor is not worth
# it, and the whole tensor is ranked. The sample's sparse-to-dense ratio was within 0.8% of the whole
# tensor's on 4096x4096 weights (unstructured 50-98% sparse, rows, columns, 2:4) and a 512x512x3x3 conv, and
# within ~1% where the nonzeros sit unevenly (rows of different scales pruned by magnitude, nonzeros in a
# tenth of the rows), 12-24x faster (a 64 MB weight: ~0.07 s instead of ~1.3 s). On a sample a sparse
# encoding must beat dense by SAMPLE_MARGIN, or the tensor stays dense (the cost of a wrong call is then
# at most that share of the tensor's gzip size). Only the choice comes from the sample: every size
# reported for a file is that file's own.
SAMPLE_FROM_BYTES = 8 << 20
SAMPLE_BYTES = 2 << 20
SAMPLE_WINDOWS = 16
SAMPLE_MIN_NONZERO = 32768
SAMPLE_MAX_SHARE = 0.25
SAMPLE_MARGIN = 0.01


def index_dtype_for(max_index: int, index_dtype: str = "smallest") -> type[np.signedinteger]:
    """The smallest signed integer type of :data:`INDEX_DTYPES` that holds ``max_index``
    (``index_dtype="smallest"``), or ``np.int64`` (``"int64"``). Raises :class:`ExportError` for any
    other ``index_dtype``, and ValueError for a ``max_index`` that is negative or beyond int64 (no index type
    holds it)."""
    # A max_index past int64 leaked StopIteration (which a caller's generator turns into RuntimeError), and a
    # negative one got int8.
    if isinstance(max_index, bool) or not 0 <= max_index <= np.iinfo(np.int64).max:
        raise ValueError(f"max_index must be an index, 0..{np.iinfo(np.int64).max}, got {max_index!r}")
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
    objective: str = "raw",
    level: int | None = None,
) -> dict[str, Any]:
    """Rewrite ``onnx_path`` to ``out_path`` with each numeric initializer stored sparse (COO) when
    its serialized sparse form is smaller than the dense one. The output
    carries the ``sparsekit`` metadata mark (see :func:`sparsekit.onnx.files.written_by_sparsekit`).

    Saves disk, not time: onnxruntime densifies sparse initializers at load, so inference speed
    and memory are unchanged. Every sparse tensor is read back from the written file and must
    decode to the dense one; with ``verify`` (default) both files are also run in onnxruntime on
    the same seeded input and the outputs must be bit-identical. Otherwise :class:`ExportError`
    and nothing is written; the same when ``onnx_path`` is not ONNX or keeps external data outside
    its folder (checked before anything reads it). A ``-0.0`` is stored as ``+0.0`` (equal in value; an absent
    entry in a sparse tensor), in dense tensors too, and counted per weight as ``negative_zeros``.

    ``index_dtype``: ``"smallest"`` (int8..int64, read by onnxruntime) or ``"int64"`` (the only
    type ``onnx.checker`` accepts). ``objective``: ``"raw"`` decides each tensor by serialized bytes
    with linear indices; gzip of that file can be larger than gzip of the dense one (zero runs
    compress well), so both totals are reported. ``"gzip"`` keeps, per tensor, whichever of dense,
    linear indices ``[nnz]`` and coordinates ``[nnz, rank]`` is smallest after gzip (level 6) of the
    tensor's serialized bytes (a proxy for its share of the gzip'd file; it costs three gzip passes
    over each partly sparse tensor, over a sample of one of 8 MiB or more: see
    :data:`SAMPLE_FROM_BYTES`). Any other value: :class:`ExportError`. ``level``: the gzip level of the
    reported sizes of both files (default: each file's own, :func:`~sparsekit.onnx.files.onnx_sizes`).

    Returns ``{"path", "bytes_before", "bytes_after", "gzip_bytes_before", "gzip_bytes_after",
    "sparse_initializers", "initializers": [{"name", "dtype", "shape", "nonzero", "dense_bytes",
    "sparse_bytes", "index_dtype", "layout", "sparse"[, "negative_zeros"][, "dense_gzip_bytes",
    "sparse_gzip_bytes", "gzip_sampled"]}], "onnx_checker_ok", "verified"}`` (``layout``: ``"linear"`` or
    ``"coordinates"`` for a sparse tensor, else None; the gzip fields with ``objective="gzip"``: the ranking's
    sizes; when ``gzip_sampled``, the sample's scaled by the tensor's elements over the sample's: their ratio
    is the sample's, their values can be off by tens of percent where the nonzeros sit unevenly)
    where ``verified`` is None when not run or ``{"ok": True|None, "reason"}`` (None: no input
    could be made for the model, e.g. symbolic non-batch dims). Sizes are bytes, external data
    included. Raises :class:`~sparsekit.errors.OutputError` when the disk is full, read-only or not
    writable.
    """
    src, final = Path(onnx_path), Path(out_path)
    index_dtype_for(0, index_dtype)  # validate the options before any work
    if objective not in OBJECTIVES:
        raise ExportError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    return _write(_plan(src, index_dtype, objective), src, final, verify, level)


@dataclasses.dataclass
class _Plan:
    """:func:`to_sparse_storage`'s decisions, before anything is written: the parsed model and, per
    initializer, its decision row; the tensors kept dense, the sparse ones and the dense values of those."""

    model: onnx.ModelProto
    decisions: list[dict[str, Any]]
    keep: list[onnx.TensorProto]
    sparse: list[onnx.SparseTensorProto]
    originals: dict[str, np.ndarray]

    def take(
        self,
    ) -> tuple[onnx.ModelProto, list[dict[str, Any]], list[onnx.TensorProto], list[onnx.SparseTensorProto], dict]:
        """The parts, handed over: the plan keeps no reference to the parse, so that it can be freed before
        onnxruntime loads the files (any reference into it keeps its whole arena alive)."""
        parts = (self.model, self.decisions, self.keep, self.sparse, self.originals)
        self.model, self.keep, self.sparse, self.originals = onnx.ModelProto(), [], [], {}
        return parts


def _plan(src: Path, index_dtype: str, objective: str) -> _Plan:
    """Parse ``src`` and decide each initializer's storage (ExportError when it is not ONNX)."""
    model = load_onnx(src)
    # -0.0 (a mask's multiply) is stored as +0.0 in every tensor, kept dense or not: the same values, and
    # the sizes the choice is made on are then not those of the worse-compressing bits. Counted per weight.
    flipped = {init.name: positive_zeros_tensor(init) for init in model.graph.initializer}
    positive_zeros(model)  # constants and subgraphs
    graph_inputs = {i.name for i in model.graph.input}  # an initializer that is also an input stays dense
    plan = _Plan(model, *_split(model.graph, index_dtype, graph_inputs, objective))
    for row in plan.decisions:
        if flipped.get(row["name"]):
            row["negative_zeros"] = flipped[row["name"]]
    return plan


def _write(plan: _Plan, src: Path, final: Path, verify: bool, level: int | None) -> dict[str, Any]:
    """Write the planned file at ``final`` (checked, staged, published); :func:`to_sparse_storage`'s result."""
    model, decisions, keep, sparse, originals = plan.take()
    before = onnx_sizes(src, level)
    graph = model.graph
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
        n_sparse = len(sparse)
        # The weights go before onnxruntime loads them twice over (any reference into the parse keeps
        # its whole arena alive).
        del model, graph, keep, sparse, originals
        verified = _verify(src, tmp) if verify and n_sparse else None
        publish(tmp, final)
    after = onnx_sizes(final, level)
    return {
        "path": str(final),
        "bytes_before": before["bytes"],
        "bytes_after": after["bytes"],
        "gzip_bytes_before": before["gzip_bytes"],
        "gzip_bytes_after": after["gzip_bytes"],
        "sparse_initializers": n_sparse,
        "initializers": decisions,
        "onnx_checker_ok": checker_ok,
        "verified": verified,
    }


def _split(
    graph: onnx.GraphProto, index_dtype: str, graph_inputs: set[str], objective: str
) -> tuple[list[dict[str, Any]], list[onnx.TensorProto], list[onnx.SparseTensorProto], dict[str, np.ndarray]]:
    """Each initializer's decision row, the ones kept dense, the sparse tensors and the dense values of
    those (a function, so no loop variable outlives it holding a reference into the parse)."""
    decisions, keep, sparse, originals = [], [], [], {}
    for init in graph.initializer:
        row, tensor = _decide(init, index_dtype, init.name in graph_inputs, objective)
        decisions.append(row)
        if tensor is None:
            keep.append(init)
        else:
            sparse.append(tensor)
            originals[init.name] = numpy_helper.to_array(init)
    return decisions, keep, sparse, originals


def choose_storage(
    dense_stored: PathLike, out: PathLike, mode: str | bool = "auto", *, level: int | None = None
) -> dict[str, Any]:
    """Write the file to ship at ``out``: ``dense_stored`` as it is, or re-stored with sparse
    initializers, whichever the ``mode`` asks; returns the report fields below.

    ``mode``: ``"auto"`` builds the sparse candidate (:func:`to_sparse_storage` with int64 indices,
    so the file passes ``onnx.checker``, and ``objective="gzip"``; ``"raw"`` when forced) and ships it
    only when its gzip size (external data included) is smaller than the dense file's, both counted at the
    dense file's :func:`~sparsekit.onnx.files.gzip_level` (9 up to 16 MiB, else 6; ``level`` sets another, e.g.
    the level of a larger file the sizes are set against), and
    onnxruntime runs it with outputs bit-identical to the dense file's; otherwise the dense bytes.
    ``"sparse"`` (or True) ships the candidate whatever its size; a failed check is then an error.
    ``"dense"`` (or False) ships the dense bytes. Anything else: :class:`ExportError` before any work.

    Same outputs bit for bit means same ONNX-vs-torch parity as ``dense_stored`` (checked when it
    was exported) and every zero exact: each sparse tensor is also read back from the written file
    and must decode to the dense one (a ``-0.0`` becomes ``+0.0``). ``out`` may be ``dense_stored``
    itself (replaced in place); it is written through a staging folder beside it and renamed, so it
    is the old file or the complete new one. Sparse initializers are densified by onnxruntime when
    it loads the file: memory and latency are those of the dense file.

    Returns ``{"mode", "encoding": "sparse"|"dense", "reason", "path", "bytes", "gzip_bytes",
    "gzip_level", "dense": {"bytes", "gzip_bytes"}, "sparse": {"bytes", "gzip_bytes",
    "sparse_initializers", "onnx_checker_ok"} | None, "entropy_bound_bytes",
    "verbatim_bound_bytes", "bound_ratio", "verbatim_bound_ratio", "outputs_identical"}``: sizes
    in bytes, external data included; ``bytes``/``gzip_bytes`` are the shipped file's, every gzip size at
    ``gzip_level``, the dense-stored file's level (so a sparse file under 16 MiB is counted at 6 beside a
    dense one over it, not at 9 as on its own); the bounds
    are :func:`~sparsekit.onnx.stats.weight_entropy`'s, the ratios the shipped gzip size over each
    (None without weights); ``outputs_identical`` is True when the shipped file is the dense one or
    was checked bit-identical, None when no input could be made for the model (auto then ships
    dense). ``sparse`` is None when no candidate was built (``"dense"``, or ``"auto"`` when no weight would
    be stored sparse) or building it failed (``"auto"``; the reason says why). Raises
    :class:`ExportError` when ``dense_stored`` is not
    ONNX or keeps external data outside its folder, or a forced sparse file fails its checks, and
    :class:`~sparsekit.errors.OutputError` when ``out`` cannot be written.
    """
    from sparsekit.onnx.stats import weight_entropy  # stats imports nothing from here; lazily all the same

    src, final = Path(dense_stored), Path(out)
    wanted = {True: "sparse", False: "dense"}.get(mode, mode) if isinstance(mode, bool) else mode
    if wanted not in STORAGE_MODES:
        raise ExportError(f"sparse storage mode must be one of auto, sparse, dense, true, false; got {mode!r}")
    dense = onnx_sizes(src, level)  # also refuses a non-ONNX file or outside external data, before any writing
    entropy = weight_entropy(src)
    sparse_info: dict[str, Any] | None = None
    reason: str
    with staging(final) as work:
        candidate = work / final.name
        if wanted == "dense":
            chosen, reason = "dense", "dense storage asked for"
        else:
            try:
                # auto stores a tensor sparsely where that wins after gzip; "sparse" wherever the raw bytes shrink.
                objective = "gzip" if wanted == "auto" else "raw"
                plan = _plan(src, "int64", objective)
                # auto with nothing to store sparse: the candidate would be the same tensors re-saved, so it
                # is neither written nor gzipped (~3 s for nothing on a 135 MB model).
                # Counted at the dense file's level: a candidate under 16 MiB would get 9 on its own.
                built = (
                    _write(plan, src, candidate, True, dense["gzip_level"]) if plan.sparse or wanted != "auto" else None
                )
                del plan
            except ExportError as e:
                if wanted == "sparse":
                    raise
                chosen, reason = "dense", f"the sparse-storage candidate failed its checks ({e})"
            else:
                if built is None or built["sparse_initializers"] == 0:  # (forced: the same tensors, re-saved)
                    chosen, reason = "dense", "no weight is smaller stored sparse"
                else:
                    sparse_info = {
                        "bytes": built["bytes_after"],
                        "gzip_bytes": built["gzip_bytes_after"],
                        "sparse_initializers": built["sparse_initializers"],
                        "onnx_checker_ok": built["onnx_checker_ok"],
                    }
                    chosen, reason = _pick(wanted, dense, sparse_info, built["verified"])
        identical: bool | None = True
        if chosen == "sparse":
            assert built is not None
            publish(candidate, final)
            verified = built["verified"]
            identical = None if verified is None else verified["ok"]
        elif final.resolve() != src.resolve():
            _copy_onnx(src, work, final)
    shipped = sparse_info if chosen == "sparse" and sparse_info else dense
    bound, verbatim = entropy["bound_bytes"], entropy["verbatim_bound_bytes"]
    return {
        "mode": wanted,
        "encoding": chosen,
        "reason": reason,
        "path": str(final),
        "bytes": shipped["bytes"],
        "gzip_bytes": shipped["gzip_bytes"],
        "gzip_level": dense["gzip_level"],
        "dense": {"bytes": dense["bytes"], "gzip_bytes": dense["gzip_bytes"]},
        "sparse": sparse_info,
        "entropy_bound_bytes": round(bound),
        "verbatim_bound_bytes": round(verbatim),
        "bound_ratio": shipped["gzip_bytes"] / bound if bound else None,
        "verbatim_bound_ratio": shipped["gzip_bytes"] / verbatim if verbatim else None,
        "outputs_identical": identical,
    }


def _pick(mode: str, dense: dict[str, int], sparse: dict[str, Any], verified: dict[str, Any] | None) -> tuple[str, str]:
    """``(encoding, reason)`` for :func:`choose_storage` once the sparse candidate is built."""
    d, s = dense["gzip_bytes"], sparse["gzip_bytes"]
    sizes = f"gzip {s:,} B sparse vs {d:,} B dense, {s / d:.3f}x"
    if mode == "sparse":
        return "sparse", f"sparse storage asked for; {sizes}"
    if sparse["sparse_initializers"] == 0:
        return "dense", "no weight is smaller stored sparse"
    if s >= d:
        return "dense", f"sparse storage is not smaller after gzip: {sizes}"
    if verified is None or not verified["ok"]:
        why = "not run" if verified is None else verified["reason"]
        return "dense", f"sparse storage is smaller ({sizes}), but its outputs could not be compared: {why}"
    return "sparse", f"smaller after gzip: {sizes}; outputs bit-identical in onnxruntime"


def _copy_onnx(src: Path, work: Path, final: Path) -> None:
    """Byte copy of the ONNX file ``src`` and its external data to ``final``, staged in ``work``."""
    for location in sorted(external_data_files(src)):
        (work / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / location, work / location)
    shutil.copyfile(src, work / final.name)
    publish(work / final.name, final)


def _decide(
    init: onnx.TensorProto, index_dtype: str, is_input: bool, objective: str = "raw"
) -> tuple[dict[str, Any], onnx.SparseTensorProto | None]:
    row: dict[str, Any] = {
        "name": init.name,
        "dtype": onnx.TensorProto.DataType.Name(init.data_type).lower(),
        "shape": list(init.dims),
        "nonzero": None,
        "dense_bytes": init.ByteSize(),
        "sparse_bytes": None,
        "index_dtype": None,
        "layout": None,
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
    # Coordinates: one column per dimension, each index as small as the largest dimension allows.
    ctype = index_dtype_for(max(max(arr.shape) - 1, 0), index_dtype)
    built: dict[str, onnx.SparseTensorProto] = {}

    def encoded(layout: str) -> onnx.SparseTensorProto:
        if layout not in built:
            dtype = ctype if layout == "coordinates" else itype
            built[layout] = _sparse(flat, idx, arr.shape, dtype, layout, init.name)
        return built[layout]

    layout = "linear"
    if objective == "gzip":
        # (A tensor kept in typed fields rather than raw_data would be sampled in another encoding: whole.)
        big = row["dense_bytes"] >= SAMPLE_FROM_BYTES and init.HasField("raw_data")
        sizes = _sampled_gzip_sizes(arr, idx, itype, ctype) if big else None
        row["gzip_sampled"] = sizes is not None
        if sizes is None:
            sizes = {
                "dense": _gzip_bytes(init),
                "linear": _gzip_bytes(encoded("linear")),
                "coordinates": _gzip_bytes(encoded("coordinates")),
            }
        row["dense_gzip_bytes"], row["sparse_gzip_bytes"] = sizes["dense"], min(sizes["linear"], sizes["coordinates"])
        # A tie keeps the tensor dense; on a sample, so does a win within the estimate's error.
        margin = SAMPLE_MARGIN if row["gzip_sampled"] else 0.0
        best = min(("linear", "coordinates"), key=lambda k: sizes[k])
        layout = best if sizes[best] < (1 - margin) * sizes["dense"] else "dense"
    # Kept dense, the row still says what the linear encoding would have weighed.
    tensor = encoded("linear" if layout == "dense" else layout)
    itype = ctype if layout == "coordinates" else itype
    row["sparse_bytes"] = tensor.ByteSize()
    row["index_dtype"] = np.dtype(itype).name
    if layout == "dense" or (objective == "raw" and row["sparse_bytes"] >= row["dense_bytes"]):
        return row, None
    row["sparse"], row["layout"] = True, layout
    return row, tensor


def _sparse(
    flat: np.ndarray, idx: np.ndarray, shape: tuple[int, ...], itype: type, layout: str, name: str
) -> onnx.SparseTensorProto:
    """The nonzeros ``flat[idx]`` of a tensor of ``shape`` as a sparse tensor: ``idx`` as linear indices
    ``[nnz]`` or as ``layout="coordinates"`` ``[nnz, rank]``, in ``itype``."""
    values = numpy_helper.from_array(flat[idx], name=name)
    indices = idx if layout == "linear" else np.stack(np.unravel_index(idx, shape), axis=1)
    return helper.make_sparse_tensor(values, numpy_helper.from_array(indices.astype(itype), name=""), list(shape))


def _sampled_gzip_sizes(arr: np.ndarray, idx: np.ndarray, itype: type, ctype: type) -> dict[str, int] | None:
    """Each encoding's gzip size estimated from a sample of ``arr`` (see :data:`SAMPLE_FROM_BYTES`), or None
    when a sample large enough to tell would take more than :data:`SAMPLE_MAX_SHARE` of the tensor, or the
    windows caught fewer than half the nonzeros it was sized for.

    The sample keeps the tensor's own layout: whole runs of its flattened elements, the nonzeros with
    their indices in the whole tensor (so index bytes compress as they will in the file). Every encoding is
    scaled by the same factor, the tensor's elements over the sample's: the windows rarely hold exactly the
    tensor's density (rows of a trained layer differ in scale, so magnitude pruning leaves them unevenly
    full), and scaling the sparse encodings by nonzeros and the dense one by elements then set the two
    against each other with different errors (up to +25% on the dense side where the nonzeros sat in a
    tenth of the rows). The same windows under each encoding keep their ratio right: within ~1% of the
    whole tensor's in those cases."""
    flat = arr.reshape(-1)
    share = max(SAMPLE_BYTES / arr.nbytes, SAMPLE_MIN_NONZERO / max(idx.size, 1))
    width = math.ceil(share * flat.size / SAMPLE_WINDOWS)
    if share > SAMPLE_MAX_SHARE or width < 1:
        return None
    starts = np.linspace(0, flat.size - width, SAMPLE_WINDOWS).astype(np.int64)
    cuts = np.searchsorted(idx, np.stack([starts, starts + width], axis=1))  # idx is sorted
    picked = np.concatenate([idx[a:b] for a, b in cuts])
    if picked.size < SAMPLE_MIN_NONZERO // 2:
        return None
    dense = np.concatenate([flat[a : a + width] for a in starts])
    scale = flat.size / dense.size
    return {
        "dense": round(_gzip_bytes(numpy_helper.from_array(dense)) * scale),
        "linear": round(_gzip_bytes(_sparse(flat, picked, arr.shape, itype, "linear", "")) * scale),
        "coordinates": round(_gzip_bytes(_sparse(flat, picked, arr.shape, ctype, "coordinates", "")) * scale),
    }


def _gzip_bytes(tensor: onnx.TensorProto | onnx.SparseTensorProto) -> int:
    """gzip size of one tensor's serialized bytes at :data:`RANK_LEVEL`, to rank its encodings."""
    return gzip_size_of_bytes(tensor.SerializeToString(), RANK_LEVEL)


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
    del a  # one session at a time: each holds the weights (and onnxruntime's prepacked copies)
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
