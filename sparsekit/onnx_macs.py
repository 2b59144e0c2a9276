"""Multiply-accumulates of an ONNX file, read from its graph: dense and counting only nonzero weights.

Counts Conv, Gemm and MatMul nodes whose weight is an initializer (the layers pruning touches), at
batch size 1, using ONNX shape inference for output sizes. Elementwise ops, pooling and attention
between activations are not counted, as in the torch-side ``sparsekit.stats``. Quantized files
(QDQ) are followed through ``DequantizeLinear`` to the integer weight.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from sparsekit.export import load_onnx


def _static_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    return model


def _weights(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializer arrays by name, with a DequantizeLinear's output mapped to its integer input."""
    from .sparse_storage import densify

    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    arrays.update({s.values.name: densify(s) for s in graph.sparse_initializer})
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
    for node in graph.node:  # Transpose of a weight (some exporters emit W^T this way)
        if node.op_type == "Transpose" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
    return arrays


def onnx_macs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"macs", "effective_macs", "layers": [{"node", "op", "macs", "effective_macs"}]}`` at batch 1.

    Raises :class:`~sparsekit.errors.ExportError` when ``path`` is not an ONNX model or keeps external
    data outside its folder.
    """
    model = load_onnx(path)
    try:
        inferred = shape_inference.infer_shapes(_static_batch_one(model))
    except Exception:  # noqa: BLE001 - shapes are a nicety here; fall back to what the file declares
        inferred = model
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    weights = _weights(model.graph)
    layers = []
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            w = weights[node.input[1]]
            out = shapes.get(node.output[0])
            positions = math.prod(out[2:]) if out else None
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in weights:
            w = weights[node.input[1]]
            a = shapes.get(node.input[0])
            positions = math.prod(a[:-1]) if a and len(a) > 1 else 1
        else:
            continue
        if positions is None:
            continue
        layers.append(
            {
                "node": node.name or node.output[0],
                "op": node.op_type,
                "macs": int(w.size * positions),
                "effective_macs": int(np.count_nonzero(w) * positions),
            }
        )
    return {
        "macs": sum(r["macs"] for r in layers),
        "effective_macs": sum(r["effective_macs"] for r in layers),
        "layers": layers,
    }


def param_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """Parameters and nonzeros of an ONNX file, quantized weights included: float initializers plus
    the integer tensors a ``DequantizeLinear`` turns into weights (not its scales and zero points).

    Raises :class:`~sparsekit.errors.ExportError` like :func:`onnx_macs`.
    """
    graph = load_onnx(path).graph
    quant_inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    aux = {name for n in graph.node if n.op_type in ("DequantizeLinear", "QuantizeLinear") for name in n.input[1:]}
    params = nonzero = 0
    for init in graph.initializer:
        is_float = init.data_type in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.DOUBLE,
            onnx.TensorProto.BFLOAT16,
        )
        if init.name in aux or not (is_float or init.name in quant_inputs):
            continue
        arr = numpy_helper.to_array(init)
        params += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    for sparse in graph.sparse_initializer:
        params += math.prod(sparse.dims)
        nonzero += int(np.count_nonzero(numpy_helper.to_array(sparse.values)))
    return {"params": params, "nonzero_params": nonzero}
