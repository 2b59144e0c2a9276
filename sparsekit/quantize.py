"""Post-training int8 quantization of an exported ONNX model with onnxruntime's own tools.

With calibration data the model is pre-processed (``quant_pre_process``: shape inference and
onnxruntime's basic graph optimizations), then quantized statically in the QDQ format: int8
weights, per output channel where the op supports it, **symmetric** (zero point 0, so a pruned
weight is stored as the integer 0 and stays exactly zero), and int8 activations whose ranges come
from the calibration batches (MinMax). Without calibration data, weights are quantized the same
way and activations dynamically at run time (``quantize_dynamic``).

Example::

    info = quantize_int8("pruned.onnx", "pruned.int8.onnx", calibration=(x for x, _ in loader))
    assert info["zeros"]["zeros_ok"]          # every pruned weight is still exactly zero
    top1_agreement("pruned.onnx", "pruned.int8.onnx", x_val)   # fraction of identical argmax

Size accounting (``bytes`` includes any external-data file, ``gzip_bytes`` is gzip -9 of it all)
comes from :func:`sparsekit.export.size_report`; :func:`entropy_bound_bytes` is the reference a
sparse int8 file can be compared against.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from sparsekit.errors import ExportError
from sparsekit.export import (
    EXTERNAL_DATA_BYTES,
    _locations,
    _mark,
    _model_tensors,
    _quiet,
    check_external_data,
    entropy_bound_bytes,
    load_onnx,
    size_report,
)
from sparsekit.fsutil import atomic_path, writing

__all__ = ["entropy_bound_bytes", "onnx_accuracy", "quantize_int8", "quantized_zeros", "top1_agreement"]

PathLike = str | os.PathLike[str]

_FLOAT_TYPES = {getattr(onnx.TensorProto, t) for t in ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16")}
_INT_TYPES = {getattr(onnx.TensorProto, t) for t in ("INT8", "UINT8", "INT16", "UINT16", "INT4", "UINT4")}


def quantize_int8(
    onnx_path: PathLike,
    out_path: PathLike,
    calibration: Iterable[Any] | None = None,
    per_channel: bool = True,
    *,
    max_calibration_batches: int = 64,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Quantize the fp32 ONNX model ``onnx_path`` to int8 and write it to ``out_path`` atomically,
    with the ``sparsekit`` metadata mark (see :func:`sparsekit.export.written_by_sparsekit`).

    ``calibration``: batches of model input, each a numpy array or torch tensor, an ``(x, y)``
    pair (so a ``DataLoader`` works as is; ``y`` is ignored) or a dict of input name to array. At
    most ``max_calibration_batches`` are read. ``None`` selects dynamic quantization.
    ``eval_data``: optional ``(x, y)`` arrays; adds fp32 and int8 accuracy and top-1 agreement.

    Returns ``{"path", "mode": "static"|"dynamic", "per_channel", "bytes", "gzip_bytes",
    "fp32_bytes", "fp32_gzip_bytes", "nonzero_params", "bytes_per_nonzero",
    "gzip_bytes_per_nonzero", "calibration_batches", "preprocess", "zeros"}`` (+ ``"eval"``), where
    ``zeros`` is :func:`quantized_zeros` of the model that was quantized against the int8 result.
    Raises :class:`ExportError` when the input is not an ONNX model, keeps external data outside
    its folder (checked before anything reads it), the calibration data does not fit it, or
    onnxruntime fails; nothing is written at ``out_path`` then.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src = Path(onnx_path)
    final = Path(out_path)
    if max_calibration_batches < 1:
        raise ExportError(f"max_calibration_batches must be >= 1, got {max_calibration_batches}")
    model = load_onnx(src)  # ExportError naming the file when it is not an ONNX model
    fp32 = size_report(src)
    inputs = _graph_inputs(model)
    if not inputs:
        raise ExportError(f"{src}: the model has no inputs to quantize for")
    large = fp32["bytes"] > EXTERNAL_DATA_BYTES

    with _staging(final) as work:
        pre, preprocess = _preprocess(src, work / "preprocessed.onnx", large)
        tmp = work / final.name
        # Symmetric int8 weights: zero point 0, so a pruned weight is the integer 0 (and gzips).
        # onnxruntime already does this for per-channel QDQ weights; per-tensor needs the option.
        options = {"WeightSymmetric": True}
        mode = "dynamic" if calibration is None else "static"
        reader = None
        try:
            with _quiet():
                if calibration is None:
                    quantize_dynamic(
                        pre, tmp, per_channel=per_channel, weight_type=QuantType.QInt8,
                        use_external_data_format=large, extra_options=options,
                    )  # fmt: skip
                else:
                    reader = _Reader(calibration, inputs, max_calibration_batches)
                    quantize_static(
                        pre, tmp, reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large,
                        extra_options={**options, "ActivationSymmetric": False},
                    )  # fmt: skip
        except ExportError:
            raise
        except Exception as e:
            msg = f"{src}: onnxruntime {mode} int8 quantization failed: {type(e).__name__}: {e}"
            raise ExportError(msg) from e
        _mark_file(tmp)  # before the checks, so they run on the very bytes that get published
        _check_runs(tmp)
        zeros = quantized_zeros(pre, tmp)
        result: dict[str, Any] = {"mode": mode, "per_channel": per_channel}
        if eval_data is not None:
            x, y = eval_data
            acc32 = onnx_accuracy(src, x, y, batch_size)
            acc8 = onnx_accuracy(tmp, x, y, batch_size)
            result["eval"] = {
                "samples": len(y), "fp32_accuracy": acc32, "int8_accuracy": acc8,
                "top1_agreement": top1_agreement(src, tmp, x, batch_size),
            }  # fmt: skip
        _publish(work, tmp, final)

    int8 = size_report(final, nonzero_params=fp32["nonzero_params"])
    return {
        "path": str(final),
        **result,
        "bytes": int8["bytes"],
        "gzip_bytes": int8["gzip_bytes"],
        "fp32_bytes": fp32["bytes"],
        "fp32_gzip_bytes": fp32["gzip_bytes"],
        "nonzero_params": fp32["nonzero_params"],
        "bytes_per_nonzero": int8["bytes_per_nonzero"],
        "gzip_bytes_per_nonzero": int8["gzip_bytes_per_nonzero"],
        "calibration_batches": None if reader is None else reader.count,
        "preprocess": preprocess,
        "zeros": zeros,
    }


def quantize_on_data(onnx_path: PathLike, out_path: PathLike, bundle: Any) -> dict[str, Any]:
    """:func:`quantize_int8` calibrated on ``bundle.train`` (static QDQ), with int8 vs fp32 accuracy and
    top-1 agreement measured on all of ``bundle.val`` (a :class:`sparsekit.data.DataBundle`)."""
    xs, ys = zip(*[(np.asarray(x, dtype=np.float32), np.asarray(y)) for x, y in bundle.val], strict=True)
    return quantize_int8(
        onnx_path, out_path, calibration=bundle.train, eval_data=(np.concatenate(xs), np.concatenate(ys))
    )


def quantized_zeros(fp32_path: PathLike, int8_path: PathLike) -> dict[str, Any]:
    """Do the zeros of each fp32 weight (initializer of rank >= 2) survive as integer zeros?

    Each weight is paired with its quantized counterpart: the integer initializer feeding a
    ``DequantizeLinear`` (QDQ) or the weight input of ``MatMulInteger``/``ConvInteger``/``QLinear*``
    (dynamic and operator formats), found by onnxruntime's naming (``W_quantized``,
    ``W_Transposed_quantized``) or else by shape and sign pattern. A layer is ``ok`` when its zero
    points are all 0 and every fp32 zero is stored as 0. ``rounded_to_zero`` counts nonzero fp32
    weights that quantized to 0 (smaller than half a step: not an error, but more zeros).
    Returns ``{"zeros_ok", "fp32_zeros", "int8_zeros", "layers": [{"name", "quantized_name",
    "fp32_zeros", "int8_zeros", "zero_point_zero", "rounded_to_zero", "ok"}]}``; a weight left in
    fp32 has ``quantized_name`` None and is ok.
    """
    ref = load_onnx(fp32_path).graph
    q_graph = load_onnx(int8_path).graph
    weights = {
        t.name: numpy_helper.to_array(t) for t in ref.initializer if t.data_type in _FLOAT_TYPES and len(t.dims) >= 2
    }
    q_inits = {t.name: t for t in q_graph.initializer}
    uses = _quantized_weights(q_graph, q_inits)  # name -> (int array, zero point broadcast to it)
    float_left = {t.name for t in q_graph.initializer if t.data_type in _FLOAT_TYPES}

    found: dict[str, str | None] = {name: _match_by_name(name, w, uses) for name, w in weights.items()}
    used: set[str | None] = {key for key in found.values() if key is not None}
    for name, key in found.items():  # by shape and sign pattern, after the name matches took theirs
        if key is None:
            found[name] = key = _match_by_values(weights[name], uses, used)
            used.add(key)

    rows = []
    for name, key in found.items():
        w = weights[name]
        fp32_zero = w == 0
        row: dict[str, Any] = {"name": name, "quantized_name": key, "fp32_zeros": int(fp32_zero.sum())}
        if key is None:
            # Not quantized: fine if the fp32 weight is still there (ops onnxruntime leaves in fp32).
            row.update(int8_zeros=None, zero_point_zero=None, rounded_to_zero=None)
            row["ok"] = name in float_left or row["fp32_zeros"] == 0
        else:
            q, zp = uses[key]
            q, zp = _orient(q, w, key), _orient(zp, w, key)
            int8_zero = q == 0
            row["int8_zeros"] = int(int8_zero.sum())
            row["zero_point_zero"] = bool(np.all(zp == 0))
            row["rounded_to_zero"] = int((int8_zero & ~fp32_zero).sum())
            row["ok"] = row["zero_point_zero"] and bool(np.all(int8_zero[fp32_zero]))
        rows.append(row)
    return {
        "zeros_ok": all(r["ok"] for r in rows),
        "fp32_zeros": sum(r["fp32_zeros"] for r in rows),
        "int8_zeros": sum(r["int8_zeros"] or 0 for r in rows),
        "layers": rows,
    }


def onnx_accuracy(path: PathLike, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on inputs ``x`` (N x ...) and labels ``y`` (N)."""
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise ExportError(f"onnx_accuracy: {len(x)} inputs but {len(y)} labels")
    return float(np.mean(_predict(path, x, batch_size) == y))


def top1_agreement(path_a: PathLike, path_b: PathLike, x: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of inputs ``x`` on which the two ONNX models predict the same class."""
    return float(np.mean(_predict(path_a, x, batch_size) == _predict(path_b, x, batch_size)))


# --- helpers --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A private folder beside ``final`` (same filesystem) for intermediate files; always removed."""
    with writing(final):  # a full, read-only or unwritable disk is an OutputError naming the file
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, tmp: Path, final: Path) -> None:
    """Move ``tmp`` (named ``final.name``) and the external-data files it references into place.

    Data files first, so the graph at ``final`` never points at nothing; the graph itself goes
    through :func:`atomic_path`, so ``final`` is either the old file or the complete new one.
    """
    model = load_onnx(tmp, load_external_data=False)  # refuses locations outside ``work``
    for location in sorted(_external_locations(model)):
        os.replace(work / location, final.parent / location)
    with atomic_path(final) as dest:
        os.replace(tmp, dest)


def _external_locations(model: onnx.ModelProto) -> set[str]:
    return {location for _, t in _model_tensors(model) for location in _locations(t)}


def _mark_file(path: Path) -> None:
    """Stamp the ONNX file at ``path`` as written by sparsekit, keeping its external-data references."""
    model = load_onnx(path, load_external_data=False)
    _mark(model)
    try:
        onnx.save(model, str(path))
    except Exception as e:  # disk full, permission denied, ...
        raise ExportError(f"{path.name}: cannot write the int8 model: {e}") from e


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    graph = model.graph
    inits = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    return [i for i in graph.input if i.name not in inits]


def _preprocess(src: Path, dest: Path, large: bool) -> tuple[Path, dict[str, Any]]:
    """onnxruntime's recommended pre-processing; the original file when it cannot be done."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    errors = []
    # Symbolic shape inference gives up on some graphs; ONNX shape inference alone is the fallback.
    for skip_symbolic in (False, True):
        try:
            with _quiet():
                quant_pre_process(
                    str(src), str(dest), skip_symbolic_shape=skip_symbolic,
                    save_as_external_data=large, all_tensors_to_one_file=True,
                )  # fmt: skip
            load_onnx(dest, load_external_data=False)
            return dest, {"ok": True, "symbolic_shapes": not skip_symbolic, "error": None}
        except Exception as e:  # pre-processing is an optimization of the result, not a requirement
            errors.append(f"{type(e).__name__}: {e}".splitlines()[0][:300])
    return src, {"ok": False, "symbolic_shapes": False, "error": errors[-1]}


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over user batches, converted to float32 feeds lazily."""

    def __init__(self, batches: Iterable[Any], inputs: list[onnx.ValueInfoProto], limit: int) -> None:
        if isinstance(batches, np.ndarray):
            raise ExportError("calibration must be an iterable of batches, not one array; wrap it as [x]")
        self.names = [i.name for i in inputs]
        self.ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in inputs}
        self.limit = limit
        self.count = 0
        self._it = iter(batches)
        first = self._next()
        if first is None:
            raise ExportError("calibration data is empty; pass batches of model input or None for dynamic")
        self._first: dict[str, np.ndarray] | None = first

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._first is not None:
            feed, self._first = self._first, None
            return feed
        return self._next()

    def rewind(self) -> None:  # part of the CalibrationDataReader protocol; one pass is all MinMax needs
        pass

    def _next(self) -> dict[str, np.ndarray] | None:
        if self.count >= self.limit:
            return None
        batch = next(self._it, None)
        if batch is None:
            return None
        self.count += 1
        return self._feed(batch)

    def _feed(self, batch: Any) -> dict[str, np.ndarray]:
        if isinstance(batch, dict):
            feed = {k: _to_numpy(v) for k, v in batch.items()}
            missing = set(self.names) - set(feed)
            if missing:
                raise ExportError(f"calibration batch {self.count} lacks model input(s) {sorted(missing)}")
        else:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]  # (x, y) from a DataLoader
            if len(self.names) != 1:
                raise ExportError(
                    f"the model has {len(self.names)} inputs {self.names}; give calibration batches as dicts"
                )
            feed = {self.names[0]: _to_numpy(batch)}
        for name in self.names:
            rank = self.ranks[name]
            if rank and feed[name].ndim != rank:
                raise ExportError(
                    f"calibration batch {self.count} for input {name!r} has shape {list(feed[name].shape)}; "
                    f"the model takes rank {rank} (batch dim included)"
                )
        return feed


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise ExportError(f"calibration batches must be numeric arrays, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_runs(path: Path) -> None:
    import onnxruntime as ort

    check_external_data(path)  # onnxruntime follows external-data locations unchecked
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"the int8 model onnxruntime wrote cannot be loaded by onnxruntime: {e}") from e


def _quantized_weights(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> dict[str, tuple]:
    """Integer initializers used as weights, with their zero points broadcast to their shape."""
    # op type -> (weight input, zero point input, channel axis or None for the op's default)
    spec = {
        "DequantizeLinear": (0, 2, None),
        "MatMulInteger": (1, 3, -1),
        "ConvInteger": (1, 3, 0),
        "QLinearConv": (3, 5, 0),
        "QLinearMatMul": (3, 5, -1),
        "QGemm": (3, 5, None),
    }
    out: dict[str, tuple] = {}
    for node in graph.node:
        if node.op_type not in spec:
            continue
        w_i, zp_i, axis = spec[node.op_type]
        if len(node.input) <= w_i or node.input[w_i] not in inits:
            continue
        t = inits[node.input[w_i]]
        if t.data_type not in _INT_TYPES or len(t.dims) < 2:
            continue
        q = numpy_helper.to_array(t).astype(np.int32)
        zp_name = node.input[zp_i] if len(node.input) > zp_i else ""
        zp = np.zeros((), np.int32)
        if zp_name in inits:
            zp = numpy_helper.to_array(inits[zp_name]).astype(np.int32)
        if axis is None:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "DequantizeLinear":
                axis = attrs.get("axis", 1)
            else:  # QGemm: per output channel, i.e. rows of a transposed B
                axis = 0 if attrs.get("transB") else 1
        out[t.name] = (q, _broadcast_zp(zp, q.shape, axis))
    return out


def _broadcast_zp(zp: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    if zp.size == 1:
        return np.full(shape, int(zp.reshape(-1)[0]), np.int32)
    axis = axis % len(shape)
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(zp.reshape(view), shape)


def _match_by_name(name: str, w: np.ndarray, uses: dict[str, tuple]) -> str | None:
    for key, transposed in ((f"{name}_quantized", False), (f"{name}_Transposed_quantized", True)):
        if key in uses:
            shape = uses[key][0].shape
            if shape == (w.shape[::-1] if transposed else w.shape):
                return key
    return None


def _match_by_values(w: np.ndarray, uses: dict[str, tuple], used: set[str | None]) -> str | None:
    best, best_score = None, 0.9  # at least 90% of signs must agree
    for key, (q, zp) in uses.items():
        if key in used or q.shape not in (w.shape, w.shape[::-1]):
            continue
        score = max(float(np.mean(np.sign(a) == np.sign(w))) for a in _layouts(q - zp, w))
        if score > best_score:
            best, best_score = key, score
    return best


def _layouts(a: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    """The ways ``a`` can be laid out like ``w``: as is and/or transposed (both for a square matrix)."""
    out = [a] if a.shape == w.shape else []
    if a.ndim == 2 and a.T.shape == w.shape:
        out.append(a.T)
    return out


def _orient(a: np.ndarray, w: np.ndarray, key: str) -> np.ndarray:
    """``a`` in ``w``'s layout. Dynamic MatMul weights are stored transposed (``*_Transposed_*``);
    a square matrix's shape cannot tell, so its name does (or, failing that, its sign pattern)."""
    if a.shape != w.shape or "_Transposed" in key:
        return a.T
    return a


def _predict(path: PathLike, x: np.ndarray, batch_size: int) -> np.ndarray:
    import onnxruntime as ort

    p = Path(path)
    check_external_data(p)  # a clear error naming the file, before onnxruntime reads external data
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    x = _to_numpy(x)
    if len(x) == 0:
        raise ExportError("no samples to evaluate")
    try:
        session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        preds = []
        for i in range(0, len(x), batch_size):
            out = session.run(None, {name: x[i : i + batch_size]})[0]
            preds.append(out.reshape(len(out), -1).argmax(axis=1))
    except Exception as e:
        raise ExportError(f"{p}: onnxruntime cannot run it on inputs of shape {list(x.shape)}: {e}") from e
    return np.concatenate(preds)
