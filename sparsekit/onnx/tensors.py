"""What an ONNX model stores: its tensors, their element types, and how many weights they hold.

Pure functions of an in-memory ``onnx.ModelProto``; no file is read here (see
:mod:`sparsekit.onnx.files` for that and :mod:`sparsekit.onnx.stats` for per-file counts).

Tensors live in more places than ``graph.initializer``: ``graph.sparse_initializer``
(``SparseTensorProto``: ``values`` [nnz] plus ``indices`` [nnz] or [nnz, rank], see
https://onnx.ai/onnx/repo-docs/IR.html#sparse-tensors), tensor-valued node attributes (``Constant``
among them), subgraphs of control-flow nodes and the model's local functions. :func:`model_tensors`
walks them all, which is what the external-data checks rely on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "FLOAT_TYPES",
    "NUMERIC_TYPES",
    "QLINEAR_LAYERS",
    "QUANT_TYPES",
    "count_nonzero_weight",
    "count_params",
    "densify",
    "external_locations",
    "graph_tensors",
    "layer_weight",
    "model_tensors",
    "positive_zeros",
    "positive_zeros_tensor",
    "weight_zero_points",
]

_T = onnx.TensorProto
# The floating-point element types: what counts as a weight in an fp32/fp16 model.
FLOAT_TYPES = frozenset({_T.FLOAT, _T.DOUBLE, _T.FLOAT16, _T.BFLOAT16})
# Integer types quantized weights are stored in (onnxruntime writes int8/uint8; 4- and 16-bit exist too).
QUANT_TYPES = frozenset({_T.INT8, _T.UINT8, _T.INT16, _T.UINT16, _T.INT4, _T.UINT4})
# Every number type of whole bytes (no 4-bit, strings, bools or complex numbers).
NUMERIC_TYPES = FLOAT_TYPES | {_T.INT8, _T.UINT8, _T.INT16, _T.UINT16, _T.INT32, _T.UINT32, _T.INT64, _T.UINT64}


# Quantized ops that read an integer weight: op type -> (weight input, its zero point input, the axis a per-channel
# zero point runs along; None: the node's attributes say). The quantizer's checks read the same table.
QUANT_WEIGHT_INPUTS: dict[str, tuple[int, int, int | None]] = {
    "DequantizeLinear": (0, 2, None),
    "MatMulInteger": (1, 3, -1),
    "ConvInteger": (1, 3, 0),
    "QLinearConv": (3, 5, 0),
    "QLinearMatMul": (3, 5, -1),
    "QGemm": (3, 5, None),
}

ZeroPoint = tuple[np.ndarray, int]
_ZERO_POINT_INPUTS = {op: [spec] for op, spec in QUANT_WEIGHT_INPUTS.items()} | {"QLinearAdd": [(0, 2, 0), (3, 5, 0)]}

# The layers of a QOperator-format int8 file (onnxruntime's quantize_static with QuantFormat.QOperator): op type ->
# (integer weight input, int32 bias input or None). Their other stored inputs are scales and zero points.
QLINEAR_LAYERS: dict[str, tuple[int, int | None]] = {"QLinearConv": (3, 8), "QLinearMatMul": (3, None), "QGemm": (3, 6)}


def layer_weight(node: onnx.NodeProto) -> str:
    """The name of the weight a Conv / ConvTranspose / Gemm / MatMul node (float, dynamic int8 or QOperator int8)
    reads; "" when it has none."""
    at = QLINEAR_LAYERS[node.op_type][0] if node.op_type in QLINEAR_LAYERS else 1
    return node.input[at] if len(node.input) > at else ""


def weight_zero_points(graph: onnx.GraphProto) -> dict[str, ZeroPoint]:
    """``{initializer name: (zero point, channel axis)}`` of the integer weights ``graph``'s quantized ops read
    with a zero point other than 0: the value such a weight stores for 0.0, so a pruned weight of an asymmetric
    (uint8) file is its zero point, not 0. Weights whose zero points are all 0 (sparsekit's symmetric int8) are
    left out."""
    inits = {i.name: i for i in graph.initializer}
    out: dict[str, ZeroPoint] = {}
    # QLinearAdd (a QOperator file's MatMul bias) stores either operand, each with its own zero point.
    pairs = [(node, spec) for node in graph.node for spec in _ZERO_POINT_INPUTS.get(node.op_type, ())]
    for node, (w_i, zp_i, axis) in pairs:
        if len(node.input) <= zp_i or node.input[zp_i] not in inits:
            continue
        try:
            zp = numpy_helper.to_array(inits[node.input[zp_i]]).astype(np.int64)
        except Exception:  # noqa: BLE001 - a file is data: an unreadable zero point counts as 0, as before
            continue
        if not zp.any():
            continue
        if axis is None:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "DequantizeLinear":
                axis = int(attrs.get("axis", 1))
            else:  # QGemm: per output channel, i.e. rows of a transposed B
                axis = 0 if attrs.get("transB") else 1
        out[node.input[w_i]] = (zp, axis)
    return out


def count_nonzero_weight(array: np.ndarray, zero: ZeroPoint | None = None) -> int:
    """Elements of a stored weight that are not the value 0.0 is stored as: 0, or its zero point ``zero``
    (:func:`weight_zero_points`), per channel along its axis."""
    if zero is None or array.ndim == 0:
        return int(np.count_nonzero(array))
    zp, axis = zero
    if zp.size == 1:
        return int(np.count_nonzero(array != zp.reshape(-1)[0]))
    if not -array.ndim <= axis < array.ndim or array.shape[axis] != zp.size:
        return int(np.count_nonzero(array))  # blocked quantization or a malformed file: no per-channel layout
    view = [1] * array.ndim
    view[axis] = -1
    return int(np.count_nonzero(array != zp.reshape(view)))


def model_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """``(name to report, tensor)`` for every tensor stored in ``model``: :func:`graph_tensors` of the
    main graph and of each local function (onnx loads external data for their attributes too)."""
    yield from graph_tensors(model.graph)
    for function in model.functions:
        yield from graph_tensors(function)


def graph_tensors(graph: onnx.GraphProto | onnx.FunctionProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """``(name to report, tensor)`` for every tensor stored in ``graph``: initializers, the values and
    indices of sparse initializers, tensors in node attributes (``Constant`` values among them, named
    after their node when unnamed) and the same in every subgraph, recursively."""
    for tensor in getattr(graph, "initializer", ()):  # a FunctionProto has no initializers
        yield tensor.name, tensor
    for sparse in getattr(graph, "sparse_initializer", ()):
        yield from _sparse_parts(sparse, "sparse initializer")
    for node in graph.node:
        for attr in node.attribute:
            where = f"attribute {attr.name!r} of node {node.name or node.op_type!r}"
            if attr.HasField("t"):
                yield attr.t.name or where, attr.t
            for tensor in attr.tensors:
                yield tensor.name or where, tensor
            if attr.HasField("sparse_tensor"):
                yield from _sparse_parts(attr.sparse_tensor, where)
            for sparse in attr.sparse_tensors:
                yield from _sparse_parts(sparse, where)
            if attr.HasField("g"):
                yield from graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from graph_tensors(sub)


def _sparse_parts(sparse: onnx.SparseTensorProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    name = sparse.values.name or where
    yield name, sparse.values
    yield sparse.indices.name or f"{name} (indices)", sparse.indices


def external_locations(tensor: onnx.TensorProto) -> list[str]:
    """The external-data ``location`` entries of ``tensor`` (paths relative to the model's folder,
    per https://onnx.ai/onnx/repo-docs/ExternalData.html): none when its data is inline. A tensor
    marked external without a location entry gives ``[""]``, so that callers refuse it rather than
    skip it."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return []
    return [e.value for e in tensor.external_data if e.key == "location"] or [""]


def densify(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array (shape ``sparse.dims``, dtype of ``sparse.values``) of a ``SparseTensorProto``
    whose indices are linear ``[nnz]`` or per-dimension ``[nnz, rank]``, as the ONNX IR allows.
    The tensor's data must be loaded (not external)."""
    values = numpy_helper.to_array(sparse.values)
    idx = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(sparse.dims)
    if idx.ndim == 2:
        idx = np.ravel_multi_index(tuple(idx.T), dims)
    out = np.zeros(math.prod(dims), dtype=values.dtype)
    out[idx] = values
    return out.reshape(dims)


# The unsigned integer of each float type's width, to find -0.0 by its bits (the sign bit alone).
_BITS: dict[int, np.dtype[Any]] = {
    _T.FLOAT: np.dtype("<u4"),
    _T.DOUBLE: np.dtype("<u8"),
    _T.FLOAT16: np.dtype("<u2"),
    _T.BFLOAT16: np.dtype("<u2"),
}


def positive_zeros(model: onnx.ModelProto, folder: str | os.PathLike[str] | None = None) -> int:
    """Store every ``-0.0`` of ``model``'s floating-point tensors as ``+0.0``, in place; returns how many
    were changed.

    Why: a mask applied by multiplication (``w * 0``), and BatchNorm folded into a convolution with a
    negative scale, give ``-0.0`` for about half the pruned weights. Equal to ``+0.0`` in every sum and
    product an inference runs (``x + -0.0 == x``), but a different bit pattern: with both signs mixed in the
    zero runs, deflate codes LeNet-300-100's 90%-sparse weights 1.36x larger (95%: 1.73x). Every tensor
    :func:`model_tensors` finds that keeps its values in ``raw_data`` (what the exporters write); with
    ``folder``, the model file's folder, also those in external data, rewritten in their files in place
    (so only for files the caller wrote: sparsekit's own export; locations must be plain relative paths
    inside ``folder``, ``ValueError`` otherwise). Tensors in typed fields are left as they are.

    Memory: a tensor with negative zeros costs about one more copy of itself while it is rewritten (the
    parse's copy is released before the new one is stored), plus a byte per element; one without, a copy
    while it is read. External data is mapped, not read."""
    changed = 0
    for _, tensor in model_tensors(model):
        bits = _BITS.get(tensor.data_type)
        if bits is None:
            continue
        if tensor.data_location == _T.EXTERNAL:
            if folder is not None:
                changed += _positive_zeros_external(tensor, Path(folder), bits)
            continue
        if tensor.raw_data:
            changed += _positive_zeros_raw(tensor, bits)
    return changed


def positive_zeros_tensor(tensor: onnx.TensorProto) -> int:
    """:func:`positive_zeros` for one tensor (values in ``raw_data``; others are left alone): how many
    ``-0.0`` became ``+0.0``."""
    bits = _BITS.get(tensor.data_type)
    if bits is None or tensor.data_location == _T.EXTERNAL or not tensor.raw_data:
        return 0
    return _positive_zeros_raw(tensor, bits)


def _negative_zero(bits: np.dtype[Any]) -> np.ndarray:
    return np.array(1 << (8 * bits.itemsize - 1), dtype=bits)  # the sign bit alone


def _positive_zeros_raw(tensor: onnx.TensorProto, bits: np.dtype[Any]) -> int:
    data = tensor.raw_data  # a copy of the parse's bytes
    raw = np.frombuffer(data, dtype=bits)
    hits = raw == _negative_zero(bits)
    n = int(np.count_nonzero(hits))
    if n:
        tensor.ClearField("raw_data")  # the parse's copy goes before the fixed one is made
        fixed = raw.copy()
        del raw, data
        fixed[hits] = 0
        del hits
        out = fixed.tobytes()
        del fixed
        tensor.raw_data = out
    return n


def _positive_zeros_external(tensor: onnx.TensorProto, folder: Path, bits: np.dtype[Any]) -> int:
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    target = (folder / location).resolve()
    plain = bool(location) and not Path(location).is_absolute() and ".." not in Path(location).parts
    if not plain or target.parent != folder.resolve():
        raise ValueError(f"external data location {location!r} of {tensor.name!r} is not a file in {folder}")
    offset = int(entries.get("offset", 0))
    length = int(entries["length"]) if "length" in entries else target.stat().st_size - offset
    if length < bits.itemsize:
        return 0
    values = np.memmap(target, dtype=bits, mode="r+", offset=offset, shape=(length // bits.itemsize,))
    try:
        hits = values == _negative_zero(bits)
        n = int(np.count_nonzero(hits))
        if n:
            values[hits] = 0
            values.flush()
        return n
    finally:
        del values


def drop_weight_values(model: onnx.ModelProto) -> None:
    """Clear the stored values of ``model``'s large floating-point initializers in place (name, type and
    dims stay), before shape inference on a parse the caller owns.

    Their values play no part in shapes (a shape tensor's do: those are small, or integers, and kept), and
    inference copies the model several times over: a 135 MB file cost ~4-5x its size at its peak
    (benchmarks/memory_scaling.py)."""
    for init in model.graph.initializer:
        if init.data_type in FLOAT_TYPES and init.ByteSize() > 1 << 16:
            for field in ("raw_data", "float_data", "int32_data", "double_data"):  # fp16/bf16 live in int32_data
                init.ClearField(field)


def weight_predicate(graph: onnx.GraphProto) -> Callable[[str, int], bool]:
    """Whether an initializer of ``graph`` (by name and ONNX data type) is a weight, as
    :func:`count_params` counts them. Shared with the entropy estimate so that both see the same
    weights: a selector of its own there missed dynamic int8's integer weights (an estimate of the
    biases alone, 80x below the file)."""
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input}
    aux = {name for n in graph.node if n.op_type in ("DequantizeLinear", "QuantizeLinear") for name in n.input[1:]}
    # Dynamic int8 (MatMulInteger / ConvInteger): input 1 is the integer weight, 2-3 are zero points, and
    # the weight's scale is multiplied with the activation scale DynamicQuantizeLinear computes.
    integer_ops = [n for n in graph.node if n.op_type in ("MatMulInteger", "ConvInteger") and len(n.input) > 1]
    dequantized |= {n.input[1] for n in integer_ops}
    aux |= {name for n in integer_ops for name in n.input[2:]}
    # QOperator int8 (QLinearConv / QLinearMatMul / QGemm): input 3 is the integer weight, a conv's and a QGemm's
    # int32 bias is a weight too (as a QDQ file's is); the others are scales and zero points.
    for n in graph.node:
        if n.op_type in QLINEAR_LAYERS:
            w_at, b_at = QLINEAR_LAYERS[n.op_type]
            stored = {n.input[i] for i in (w_at, b_at) if i is not None and len(n.input) > i}
            dequantized |= stored
            aux |= {name for name in n.input[1:] if name not in stored}
        elif n.op_type == "QLinearAdd" and len(n.input) > 3:  # a QLinearMatMul's bias: int8, added to its output
            dequantized |= {n.input[0], n.input[3]}
            aux |= {name for i, name in enumerate(n.input) if i not in (0, 3)}
    activation_scales = {n.output[1] for n in graph.node if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    aux |= {name for n in graph.node if n.op_type == "Mul" and activation_scales & set(n.input) for name in n.input}

    def is_weight(name: str, data_type: int) -> bool:
        return name not in aux and (data_type in FLOAT_TYPES or name in dequantized)

    return is_weight


def count_params(model: onnx.ModelProto) -> dict[str, Any]:
    """The one weight counter: ``{"tensors", "params", "nonzero_params"}`` of ``model``'s weights.

    A weight is a dense or sparse initializer of the main graph that is floating point, or an
    integer tensor that a ``DequantizeLinear`` turns into a weight (a QDQ-quantized file, see
    https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html) or that a
    ``MatMulInteger``/``ConvInteger`` multiplies (dynamic int8); the scales and zero points of either
    are not. So an fp32 file, its int8 QDQ
    version and its sparse-storage version count the same weights. ``params`` counts elements,
    ``nonzero_params`` those that are not 0. The model's external data must be loaded.
    """
    graph = model.graph
    is_weight = weight_predicate(graph)

    zeros = weight_zero_points(graph)  # an asymmetric int8 weight stores 0.0 as its zero point
    tensors = params = nonzero = 0
    for init in graph.initializer:
        if is_weight(init.name, init.data_type):
            arr = numpy_helper.to_array(init)
            tensors += 1
            params += int(arr.size)
            nonzero += count_nonzero_weight(arr, zeros.get(init.name))
    for sparse in graph.sparse_initializer:
        if is_weight(sparse.values.name, sparse.values.data_type):
            tensors += 1
            params += math.prod(sparse.dims)
            if sparse.values.name in zeros:  # its implicit elements are 0, not the zero point
                nonzero += count_nonzero_weight(densify(sparse), zeros[sparse.values.name])
            else:
                nonzero += int(np.count_nonzero(numpy_helper.to_array(sparse.values)))
    return {"tensors": tensors, "params": params, "nonzero_params": nonzero}
