"""Counts read from an ONNX graph: multiply-accumulates (dense and over nonzero weights only), the
model's real inputs, and the activation memory one sample needs.

MACs count Conv, ConvTranspose, Gemm and MatMul nodes whose weight is an initializer (the layers pruning touches) or
is computed from initializers alone (a weight_norm / spectral_norm / parametrized layer, counted dense), at
batch size 1, using ONNX shape inference (https://onnx.ai/onnx/api/shape_inference.html) for output
sizes. Elementwise ops, pooling and attention between activations are not counted, as in the
torch-side :mod:`sparsekit.stats`. Quantized files (QDQ) are followed through ``DequantizeLinear``
to the integer weight; sparse initializers are densified.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from sparsekit.onnx.files import memoized
from sparsekit.onnx.tensors import (
    count_nonzero_weight,
    densify,
    drop_weight_values,
    layer_weight,
    weight_zero_points,
)

__all__ = ["activation_bytes", "graph_inputs", "onnx_macs"]

PathLike = str | os.PathLike[str]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs of ``model``'s graph that are fed at run time: declared inputs that are not also
    (dense or sparse) initializers, which older exporters list as inputs too."""
    graph = model.graph
    inits = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    return [i for i in graph.input if i.name not in inits]


def onnx_macs(path: PathLike) -> dict[str, Any]:
    """``{"macs", "effective_macs", "layers": [{"node", "op", "macs", "effective_macs"}]}`` of the ONNX
    file at ``path``, at batch size 1; ``effective_macs`` counts nonzero weights only. Computed once
    per version of the file (:func:`sparsekit.onnx.files.memoized`). A layer whose weight the graph computes from
    stored tensors (weight_norm, spectral_norm, another parametrization) has ``"computed_weight": True``.

    Raises :class:`~sparsekit.errors.ExportError` when ``path`` is not an ONNX model or keeps external
    data outside its folder.
    """
    return memoized(path, "macs", _macs, load_external_data=True)


def _macs(path: Path, model: onnx.ModelProto, files: list[Path]) -> dict[str, Any]:
    inputs = graph_inputs(model)
    batch_one = {i.name: [1] for i in inputs}  # a symbolic batch dim only; fixed ones stay
    # A file exported with a fixed batch (torch.onnx.export without dynamic_axes) infers its Gemm/MatMul rows for
    # that whole batch: they are divided by it below, so every layer counts one sample, as Conv's spatial positions do.
    batch = _fixed_batch(inputs[0]) if inputs else 1
    weights, origins = _weights(model.graph)
    zeros = weight_zero_points(model.graph)  # an asymmetric int8 weight stores 0.0 as its zero point
    for node in model.graph.node:  # a weight handed out through an Identity (a tied layer's, as torch exports it)
        if node.op_type == "Identity" and node.input and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
            origins[node.output[0]] = origins[node.input[0]]
    drop_weight_values(model)  # read into `weights`; this parse is the memo's own, so it may be changed
    inferred = _inferred_graph(model, batch_one, keep_fixed=True)
    shapes = _static_shapes(inferred if inferred is not None else model.graph)
    # A weight the graph computes from stored tensors alone (weight_norm, spectral_norm or another parametrization,
    # exported as is) is a layer's weight all the same: its Conv/Gemm runs on every sample. A product whose data
    # input is such a constant too (spectral_norm's power iteration, W @ v) runs once per call, on no sample: no MACs.
    constant = constant_values(model.graph)
    layers = []
    for node in model.graph.node:
        weight = layer_weight(node)  # input 1, or 3 of a QOperator int8 layer
        computed = weight not in weights and weight in constant and weight in shapes
        if (weight not in weights and not computed) or (node.input and node.input[0] in constant):
            continue
        # A computed weight's values are not stored: it counts dense (sparsekit masks no computed weight).
        w = weights[weight] if not computed else np.ones(shapes[weight], dtype=np.float32)
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            out = shapes.get(node.output[0])
            positions = math.prod(out[2:]) if out else None
        elif node.op_type == "ConvTranspose":
            # weight [in, out/groups, *k]: every input value meets out/groups * k weights
            a = shapes.get(node.input[0])
            positions = math.prod(a[2:]) if a else None
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm"):
            a = shapes.get(node.input[0])
            positions = math.prod(a[:-1]) if a and len(a) > 1 else 1
            if positions % batch == 0:
                positions //= batch
        else:
            continue
        if positions is None:
            continue
        layers.append(
            {
                "node": node.name or node.output[0],
                "op": node.op_type,
                "macs": int(w.size * positions),
                "effective_macs": count_nonzero_weight(w, zeros.get(origins.get(weight, ""))) * positions,
                **({"computed_weight": True} if computed else {}),
            }
        )
    return {
        "macs": sum(r["macs"] for r in layers),
        "effective_macs": sum(r["effective_macs"] for r in layers),
        "layers": layers,
    }


def constant_values(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors ``graph`` computes from stored tensors and Constant nodes alone (no graph input)."""
    inputs = {i.name for i in graph.input}
    out = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    out -= inputs  # an initializer that is also a fed input (older exporters' overridable inputs) is data
    for node in graph.node:  # in topological order, as ONNX requires
        if all(not name or name in out for name in node.input) and not any(a.g.node for a in node.attribute):
            out.update(node.output)
    return out


def _fixed_batch(info: onnx.ValueInfoProto) -> int:
    """The batch (first) dim of a graph input when the file fixes it, else 1."""
    dims = info.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 1


def activation_bytes(path: PathLike, dims: Sequence[int]) -> int | None:
    """Bytes of the first input and of every tensor computed from it, for ONE sample whose non-batch
    dims are ``dims``, from ONNX shape inference; None when some of those shapes cannot be inferred.
    Weights, constants and tensors derived from them alone do not grow with the batch and are left
    out. Raises :class:`~sparsekit.errors.ExportError` like :func:`onnx_macs`.
    """
    dims = [int(d) for d in dims]

    def compute(p: Path, model: onnx.ModelProto, files: list[Path]) -> int | None:
        first = model.graph.input[0].name
        drop_weight_values(model)  # this parse is the memo's own, so it may be changed
        graph = _inferred_graph(model, {first: [1, *dims]}, keep_fixed=False)
        if graph is None:
            return None
        per_batch = {first}  # only tensors computed from the input grow with the batch
        for node in graph.node:
            if any(i in per_batch for i in node.input):
                per_batch.update(node.output)
        # The input at its own width: a float64 file's input (or int64 token ids) is 8 bytes an element, not 4.
        total = _itemsize(model.graph.input[0].type.tensor_type.elem_type) * math.prod(dims)
        for info in [*graph.value_info, *graph.output]:
            if info.name not in per_batch:
                continue
            t = info.type.tensor_type
            if not all(d.HasField("dim_value") for d in t.shape.dim):
                return None
            total += _itemsize(t.elem_type) * math.prod(d.dim_value for d in t.shape.dim)
        return total

    return memoized(path, f"activation_bytes {dims}", compute, load_external_data=False)


def _itemsize(elem_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:  # noqa: BLE001 - an undefined or exotic type: count it as float32
        return 4


def _inferred_graph(model: onnx.ModelProto, dims: dict[str, list[int]], *, keep_fixed: bool) -> onnx.GraphProto | None:
    """Shape inference on a copy of ``model`` whose inputs named in ``dims`` get those leading dims:
    in place of symbolic ones only (``keep_fixed``) or of all; None when inference fails."""
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    _dense_for_inference(clone.graph)
    for inp in clone.graph.input:
        for d, value in zip(inp.type.tensor_type.shape.dim, dims.get(inp.name, []), strict=False):
            if not (keep_fixed and d.HasField("dim_value")):
                d.ClearField("dim_param")
                d.dim_value = value
    try:
        # data_prop: shapes computed in the graph (Shape -> Gather -> Concat -> Reshape, a flatten written as
        # x.reshape(x.shape[0], -1)) are followed, so the layers after them get shapes and MACs.
        return shape_inference.infer_shapes(clone, data_prop=True).graph
    except Exception:  # noqa: BLE001 - shapes are a nicety: without data propagation, then callers fall back
        try:
            return shape_inference.infer_shapes(clone).graph
        except Exception:  # noqa: BLE001
            return None


# Sparse initializers up to this many elements keep their values for shape inference (a shape computed from one).
_SMALL_SPARSE = 1 << 16


def _dense_for_inference(graph: onnx.GraphProto) -> None:
    """Sparse initializers made dense ones, in place: onnx's shape inference stops on a sparse initializer next
    to the tensor types it infers ("type case mismatch"), and every layer after it lost its shape and MACs (a
    file stored with sparse initializers, as ``export.sparse_storage: auto`` writes). Large ones get their type
    and dims only (no values: inference reads none of a weight's), small ones their values too."""
    for sparse in list(graph.sparse_initializer):
        tensor = onnx.TensorProto(name=sparse.values.name, data_type=sparse.values.data_type, dims=sparse.dims)
        if math.prod(sparse.dims) <= _SMALL_SPARSE:
            with contextlib.suppress(Exception):  # values not loaded (external data): the type and dims serve
                tensor = numpy_helper.from_array(densify(sparse), sparse.values.name)
        graph.initializer.append(tensor)
    del graph.sparse_initializer[:]


def _static_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for vi in [*graph.value_info, *graph.output, *graph.input]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    return shapes


def _weights(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Initializer arrays by name, with a DequantizeLinear's output mapped to its integer input, and the name of
    the stored tensor each name reads (whose zero point says which stored value is 0.0)."""
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    arrays.update({s.values.name: densify(s) for s in graph.sparse_initializer})
    origins = {name: name for name in arrays}
    for op in ("DequantizeLinear", "Transpose"):  # Transpose of a weight (some exporters emit W^T this way)
        for node in graph.node:
            if node.op_type == op and node.input and node.input[0] in arrays:
                arrays[node.output[0]] = arrays[node.input[0]]
                origins[node.output[0]] = origins[node.input[0]]
    return arrays, origins
