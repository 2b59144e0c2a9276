"""Everything sparsekit does with ONNX files, one module per concern:

=======================  ==========================================================================
``tensors``              what a model stores: every tensor (sparse, function and subgraph ones too),
                         the element-type sets, the one weight counter, ``densify``
``files``                files on disk: safe loading (external data checks), the sparsekit mark,
                         saving, staging and publishing atomically, sizes, the per-file memo
``stats``                per-file statistics, computed once: ``size_report``, ``param_counts``,
                         ``count_initializer_stats``, ``entropy_bound_bytes``, ``weight_entropy``
``graph``                graph counts: MACs, run-time inputs, activation bytes per sample
``sessions``             the one onnxruntime session constructor and the one input maker
``quiet``                silencing the exporters' and quantizer's output
``export``               torch -> ONNX with checker, parity and zero checks
``quantize``             int8 quantization with onnxruntime, accuracy and agreement
``sparse_storage``       sparse-initializer (COO) storage; ``choose_storage``: the encoding to ship
``bench``                the interleaved onnxruntime latency benchmark
=======================  ==========================================================================

The names below are imported lazily (PEP 562), so ``import sparsekit.onnx`` loads neither torch nor
onnxruntime until a name that needs them is used.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# onnxruntime (1.32) writes a device id and a ~2.5 MB SQLite database under ~/.cache/Microsoft when it is imported,
# unless its telemetry is off: sparsekit writes nothing outside its output folder but what the README lists.
# Set before any module of this package imports onnxruntime; a value the user set stays theirs.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# public name -> the module of this package that defines it
_LAZY = {
    "EXTERNAL_DATA_BYTES": "files",
    "benchmark": "bench",
    "check_external_data": "files",
    "check_zeros": "export",
    "choose_storage": "sparse_storage",
    "count_initializer_stats": "stats",
    "count_params": "tensors",
    "densify": "tensors",
    "entropy_bound_bytes": "stats",
    "export_onnx": "export",
    "external_data_files": "files",
    "index_dtype_for": "sparse_storage",
    "latency_table": "bench",
    "load_onnx": "files",
    "onnx_accuracy": "quantize",
    "onnx_macs": "graph",
    "onnx_sizes": "files",
    "open_session": "sessions",
    "param_counts": "stats",
    "quantize_int8": "quantize",
    "quantize_on_data": "quantize",
    "quantized_zeros": "quantize",
    "size_report": "stats",
    "to_sparse_storage": "sparse_storage",
    "top1_agreement": "quantize",
    "weight_entropy": "stats",
    "written_by_sparsekit": "files",
}

if TYPE_CHECKING:
    from .bench import benchmark, latency_table
    from .export import check_zeros, export_onnx
    from .files import (
        EXTERNAL_DATA_BYTES,
        check_external_data,
        external_data_files,
        load_onnx,
        onnx_sizes,
        written_by_sparsekit,
    )
    from .graph import onnx_macs
    from .quantize import onnx_accuracy, quantize_int8, quantize_on_data, quantized_zeros, top1_agreement
    from .sessions import open_session
    from .sparse_storage import choose_storage, index_dtype_for, to_sparse_storage
    from .stats import count_initializer_stats, entropy_bound_bytes, param_counts, size_report, weight_entropy
    from .tensors import count_params, densify


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "EXTERNAL_DATA_BYTES",
    "benchmark",
    "check_external_data",
    "check_zeros",
    "choose_storage",
    "count_initializer_stats",
    "count_params",
    "densify",
    "entropy_bound_bytes",
    "export_onnx",
    "external_data_files",
    "index_dtype_for",
    "latency_table",
    "load_onnx",
    "onnx_accuracy",
    "onnx_macs",
    "onnx_sizes",
    "open_session",
    "param_counts",
    "quantize_int8",
    "quantize_on_data",
    "quantized_zeros",
    "size_report",
    "to_sparse_storage",
    "top1_agreement",
    "weight_entropy",
    "written_by_sparsekit",
]
