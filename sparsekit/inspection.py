"""``sparsekit.inspect()``: what a model file holds — per-layer params, nonzeros, sparsity and MACs.

The ``sparsekit inspect`` command prints this; Python users get the same dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import DataError, option


def inspect(
    path: str | Path,
    *,
    arch: str | None = None,
    kwargs: dict[str, Any] | None = None,
    input_shape: list[int] | None = None,
    trust: bool = False,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Counts for the model file at ``path``: a sparsekit checkpoint / state_dict / .safetensors
    (loaded as :func:`sparsekit.load_model` does, with ``arch``/``kwargs``, ``trust`` and
    ``trust_code`` meaning the same) or an ``.onnx`` file (read as data; nothing in it is run).

    Returns for a torch model ``{"path", "factory", "input_shape", "structurally_pruned", "params",
    "nonzero_params", "sparsity", "macs"?, "effective_macs"?, "layers": [row per prunable layer]}``
    (MACs per sample, only when an input shape, batch first, is known); for ONNX ``{"path", "bytes",
    "gzip_bytes", "params", "nonzero_params", "sparsity", "macs", "effective_macs", ...}`` with
    sizes in bytes, external data included. ``sparsity`` is the fraction of zero weights of prunable
    layers (torch) or of all weight initializers (ONNX).

    Raises :class:`~sparsekit.errors.ModelFileError` / :class:`~sparsekit.errors.ExportError` for a
    file that cannot be loaded, :class:`~sparsekit.errors.DataError` when the model does not accept
    ``input_shape``."""
    path = Path(path)
    if path.suffix == ".onnx":
        return _inspect_onnx(path)
    from .modelio import infer_input_shape, read_model
    from .stats import layer_report, model_stats

    loaded = read_model(path, arch, kwargs=kwargs, trust=trust, trust_code=trust_code)
    shape = input_shape or loaded.input_shape or infer_input_shape(loaded.model)
    try:
        rows = layer_report(loaded.model, shape)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - the model cannot run on the given shape
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"input shape {shape}: the model does not accept it ({first}); give the shape it takes, batch first "
            f"({option('input_shape')})"
        ) from None
    return {
        "path": str(path),
        "factory": loaded.factory,
        "input_shape": shape,
        "structurally_pruned": bool(loaded.pruning_history),
        **model_stats(loaded.model, shape),
        "layers": rows,
    }


def _inspect_onnx(path: Path) -> dict[str, Any]:
    from .onnx import load_onnx, onnx_macs, param_counts, size_report

    load_onnx(path)  # a clear error naming the file if it is not ONNX
    counts = param_counts(path)  # quantized and sparse-stored weights count as weights too
    res = {"path": str(path), **size_report(path, counts["nonzero_params"]), **counts, **onnx_macs(path)}
    res["sparsity"] = 1 - counts["nonzero_params"] / counts["params"] if counts["params"] else 0.0
    return res
