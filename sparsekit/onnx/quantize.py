"""Post-training int8 quantization of an exported ONNX model with onnxruntime's own tools.

With calibration data the model is pre-processed (``quant_pre_process``: shape inference and
onnxruntime's basic graph optimizations), then quantized statically in the QDQ format: int8
weights, per output channel where the op supports it, **symmetric** (zero point 0, so a pruned
weight is stored as the integer 0 and stays exactly zero) in the 7-bit range (``reduce_range``), and
uint8 activations whose ranges come from the calibration batches (MinMax). Without calibration data,
weights are quantized the same way (8-bit range) and activations dynamically at run time
(``quantize_dynamic``).

Why uint8 activations and 7-bit weights (measured with onnxruntime 1.32 on x86-64 with AVX2, no VNNI, on
examples.models trained 2 epochs on mnist5k; latency at batch 32, 1 thread, interleaved with an fp32 A/A arm):
with int8 activations onnxruntime left some layers unfused (6 of resnet_small's 10 weighted
layers, 15 of mobilenetv2_small's 53 ran as DequantizeLinear + fp32 Conv): 1.65-1.8x *slower* than fp32 on
resnet_small, 1.1-1.7x on mobilenetv2_small. With uint8 activations every layer fuses (QLinearConv, QGemm): 0.81-0.85x
and 0.83-0.99x of fp32, LeNet-300-100 0.60-0.68x (was 0.69-0.84x). Those fused kernels multiply uint8 by int8
(U8S8) and, on CPUs without VNNI, sum pairs of products in 16 bits, which saturates with 8-bit weights (onnxruntime's
quantization docs): top-1 agreement with fp32 fell to 0.86 on resnet_small and 0.77 on mobilenetv2_small.
Weights in [-64, 64] cannot saturate (255 * 64 * 2 < 2^15): agreement 0.992 and 0.942 (with int8 activations:
0.994, 0.788), 0.99 on LeNet-300-100 (0.984) and 1.0 on small_cnn (0.994), at the same file size.

Example::

    info = quantize_int8("pruned.onnx", "pruned.int8.onnx", calibration=(x for x, _ in loader))
    assert info["zeros"]["zeros_ok"]          # every pruned weight is still exactly zero
    top1_agreement("pruned.onnx", "pruned.int8.onnx", x_val)   # fraction of identical argmax

Size accounting (``bytes`` includes any external-data file, ``gzip_bytes`` is gzip of it all, at the fp32
file's level: 9 up to 16 MiB, else 6) comes from :func:`sparsekit.onnx.stats.size_report`;
:func:`sparsekit.onnx.stats.entropy_bound_bytes` is the reference a sparse int8 file can be compared against.

Sources: https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html (QDQ format,
``quantize_static``/``quantize_dynamic``, pre-processing) and the ONNX operators
``QuantizeLinear``/``DequantizeLinear`` (https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from sparsekit.errors import ExportError, SparsekitError, one_line
from sparsekit.onnx.files import EXTERNAL_DATA_BYTES, load_onnx, native_folder, publish, save_onnx, staging
from sparsekit.onnx.graph import graph_inputs
from sparsekit.onnx.quiet import quiet
from sparsekit.onnx.sessions import ORT_DTYPES, open_session
from sparsekit.onnx.stats import size_report
from sparsekit.onnx.tensors import FLOAT_TYPES, QLINEAR_LAYERS, QUANT_TYPES, QUANT_WEIGHT_INPUTS
from sparsekit.wrappers import SAMPLES_NOT_BATCHES

__all__ = [
    "onnx_accuracy",
    "output_agreement",
    "quantize_int8",
    "quantize_on_data",
    "quantized_zeros",
    "top1_agreement",
]

PathLike = str | os.PathLike[str]

#: Operators dynamic quantization writes that onnxruntime's CPU provider runs slower than fp32 (ConvInteger has
#: no optimized kernel: measured 8-16x slower on examples.models' small_cnn, resnet_small and a depthwise net).
_SLOW_DYNAMIC_OPS = frozenset({"ConvInteger"})

#: Operators only a quantized file holds (dynamic and QOperator int8); a QDQ file is known by its integer weights.
_QUANTIZED_OPS = frozenset({"DynamicQuantizeLinear", *QUANT_WEIGHT_INPUTS, *QLINEAR_LAYERS, "QLinearAdd"}) - {
    "DequantizeLinear"
}


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
    """Quantize the fp32 ONNX model ``onnx_path`` to int8 and write it to ``out_path`` atomically
    (external data beside it for models over 1.8 GB), with the ``sparsekit`` metadata mark (see
    :func:`sparsekit.onnx.files.written_by_sparsekit`).

    ``calibration``: batches of model input, each a numpy array or torch tensor, an ``(x, y)``
    pair (so a ``DataLoader`` works as is; ``y`` is ignored) or a dict of input name to array (other keys, such
    as a dict batch's ``labels``, are ignored as ``y`` is); for a model of several inputs also
    ``((input1, input2, ...), y)``, one array per input in the file's (the forward's) order, as
    :func:`sparsekit.finetune` takes them. Floats for a float input (integer arrays only for an input the file
    declares integer: token ids), as the model was trained on them. At
    most ``max_calibration_batches`` are read. ``None`` selects dynamic quantization.
    ``eval_data``: optional ``(x, y)`` arrays (inputs N x ..., labels N; a model of one input); adds fp32 and int8
    accuracy and top-1 agreement, run in ``batch_size`` batches.

    Returns ``{"path", "mode": "static"|"dynamic", "per_channel", "latency_note", "bytes", "gzip_bytes",
    "fp32_bytes", "fp32_gzip_bytes", "nonzero_params", "bytes_per_nonzero",
    "gzip_bytes_per_nonzero", "calibration_batches", "preprocess", "zeros"}`` (+ ``"eval"``), where
    ``zeros`` is :func:`quantized_zeros` of the model that was quantized against the int8 result, and
    ``latency_note`` says why the file will run slower than fp32 (dynamic ConvInteger), else None.
    Sizes are bytes (external data included); ``nonzero_params`` is the fp32 model's.
    Raises :class:`ExportError` when the input is not an ONNX model or is quantized already, keeps external
    data outside its folder (checked before anything reads it), the calibration data does not fit it, ``out_path``
    is ``onnx_path``, or
    onnxruntime fails, and :class:`~sparsekit.errors.OutputError` when the disk is full, read-only or
    not writable; nothing is written at ``out_path`` then.
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
    if eval_data is not None:
        _eval_arrays(eval_data)  # bad labels or inputs are said before minutes of quantization, not after
    # The int8 file published over its own input: the fp32 model, which the int8 one is checked and sized against,
    # would be gone (a link or another spelling of the same file too).
    if final.resolve() == src.resolve() or (final.exists() and src.exists() and os.path.samefile(final, src)):
        raise ExportError(f"{final}: is the fp32 model being quantized; write the int8 model under another name")
    model = load_onnx(src, load_external_data=False)  # ExportError naming the file when it is not ONNX
    done = _quantized_ops(model)
    if done:
        raise ExportError(
            f"{src}: is quantized already (integer weights, read by {', '.join(done)}); quantize the fp32 model it was "
            "made from"
        )
    fp32 = size_report(src)  # reads the external data too (and is kept for later callers)
    inputs = graph_inputs(model)
    if not inputs:
        raise ExportError(f"{src}: the model has no inputs to quantize for")
    if eval_data is not None and len(inputs) > 1:
        # Scoring feeds one input: this failed after the whole quantization, as onnxruntime's "Required inputs
        # (['meta']) are missing from input feed".
        raise ExportError(f"{src}: {_ONE_INPUT_EVAL} (this model takes {len(inputs)}: {[i.name for i in inputs]})")
    large = fp32["bytes"] > EXTERNAL_DATA_BYTES

    with staging(final) as work, native_folder(src.parent) as src_dir, native_folder(work) as work_dir:
        # (onnxruntime's quantizer opens these paths from C++ and from Python: see native_folder)
        pre, preprocess = _preprocess(src_dir / src.name, work_dir / "preprocessed.onnx", large)
        tmp = work / final.name
        # Symmetric int8 weights: zero point 0, so a pruned weight is the integer 0 (and gzips).
        # onnxruntime already does this for per-channel QDQ weights; per-tensor needs the option.
        # Static: uint8 activations and 7-bit weights, so that every layer fuses and none saturates (module docstring).
        options = {"WeightSymmetric": True}
        mode = "dynamic" if calibration is None else "static"
        reader = None
        fallback = None
        # Per-channel first; onnxruntime's per-channel pass fails on some graphs (a weight shared by two
        # nodes that read it along different axes, e.g. tied encoder/decoder weights), and per-tensor
        # scales, which need no axis, are then the one working choice.
        for channel_wise in dict.fromkeys([per_channel, False]):
            try:
                with quiet():
                    if calibration is None:
                        quantize_dynamic(
                            pre, work_dir / tmp.name, per_channel=channel_wise, weight_type=QuantType.QInt8,
                            use_external_data_format=large, extra_options=options,
                        )  # fmt: skip
                    else:
                        # The per-tensor retry reads the batches the failed attempt read (a generator, as
                        # quantize_on_data passes, gives them only once), then any it did not.
                        reader = (
                            _Reader(calibration, inputs, max_calibration_batches) if reader is None else reader.again()
                        )
                        quantize_static(
                            pre, work_dir / tmp.name, reader, quant_format=QuantFormat.QDQ, per_channel=channel_wise,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=True,
                            calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large,
                            # A float bias: onnxruntime quantizes it when it fuses the Conv or Gemm (every layer
                            # still fuses, the same outputs), and the file carries no int32 copy and per-channel
                            # scale for it (see _drop_redundant).
                            extra_options={**options, "ActivationSymmetric": False, "QuantizeBias": False},
                        )  # fmt: skip
                break
            except SparsekitError:  # (the calibration batches' own faults too: no per-tensor retry hides them)
                raise
            except Exception as e:
                msg = f"{src}: onnxruntime {mode} int8 quantization failed: {type(e).__name__}: {e}"
                if not channel_wise:
                    raise ExportError(msg) from e
                fallback = f"per-channel quantization failed ({type(e).__name__}: {e}); per-tensor scales used"
        per_channel = channel_wise
        # Marked before the checks, so they run on the very bytes that get published.
        quantized = load_onnx(tmp, load_external_data=False)
        # onnxruntime drops the fp32 file's metadata; the layers whose weight torch computes are still no layer
        # `inspect` lists, though the quantizer folded the computation into a stored weight.
        from sparsekit.onnx.files import COMPUTED_KEY

        for prop in model.metadata_props:
            if prop.key == COMPUTED_KEY:
                quantized.metadata_props.add(key=prop.key, value=prop.value)
        _drop_redundant(quantized.graph)
        _drop_unused_domains(quantized)
        # (a dynamic file's weight scales and zero points are found by their names, `sparsekit inspect`: they keep them)
        _short_names(quantized.graph, initializers=mode == "static")
        save_onnx(quantized, tmp, what="int8 model")
        slow_ops = sorted({n.op_type for n in quantized.graph.node if n.op_type in _SLOW_DYNAMIC_OPS})
        del quantized
        _check_runs(tmp)
        zeros = quantized_zeros(pre, tmp)
        result: dict[str, Any] = {"mode": mode, "per_channel": per_channel, "fallback": fallback}
        result["latency_note"] = (
            f"dynamic int8 runs convolutions as {', '.join(slow_ops)}, which onnxruntime's CPU kernels run several "
            "times slower than fp32 (8-16x measured on small CNNs): this file is for size, not speed; calibrate "
            "on data (static QDQ) for latency"
            if slow_ops
            else None
        )
        if eval_data is not None:
            result["eval"] = _evaluate(src, tmp, eval_data, batch_size, [o.name for o in model.graph.output])
        publish(tmp, final)

    # At the fp32 file's gzip level: the int8 file, a quarter of its size, would get level 9 on its own.
    int8 = size_report(final, nonzero_params=fp32["nonzero_params"], level=fp32["gzip_level"])
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


def _quantized_ops(model: onnx.ModelProto) -> list[str]:
    """Why ``model`` is quantized already, sorted: the dynamic or QOperator int8 operators it holds, and
    ``DequantizeLinear`` where one reads a stored integer weight (a QDQ file); [] for a float model. A model that
    fake-quantizes its activations (QuantizeLinear/DequantizeLinear on computed tensors, float weights) is not: it
    quantizes as any other. Quantizing a quantized one again quantizes its dequantized weights and int8 kernels a
    second time (a file larger than its input, checked against the wrong fp32 model) or fails deep inside."""
    stored = {t.name for t in model.graph.initializer if t.data_type in QUANT_TYPES}
    stored |= {t.values.name for t in model.graph.sparse_initializer if t.values.data_type in QUANT_TYPES}
    return sorted(
        {
            n.op_type
            for n in _all_nodes(model.graph)
            if n.op_type in _QUANTIZED_OPS or (n.op_type == "DequantizeLinear" and n.input and n.input[0] in stored)
        }
    )


# How the eval note says to select the class scores, in Python; the CLI puts its own option in its place.
SELECT_LOGITS = "sparsekit.logits.attach before export"


def _evaluate(
    fp32: Path, int8: Path, eval_data: tuple[np.ndarray, np.ndarray], batch_size: int, outputs: list[str]
) -> dict[str, Any]:
    """``quantize_int8``'s ``eval``: ``{"samples", "output", "outputs", "fp32_accuracy", "int8_accuracy",
    "top1_agreement"}`` on the model's output (named in ``output``; ``outputs``: all the model's). The three figures
    are None, with a ``"note"``, when the model has several outputs (which one holds the class scores is not known:
    a model exported with its logits selected, as a prune run or the export command's logits option does, has one),
    or its output holds one value per sample (no class to take the argmax of), fewer values than the labels have
    classes (an embedding) or more than one row per sample (``[batch, classes, steps]``: a class per position)."""
    x, y = _eval_arrays(eval_data)
    shaped = _outputs(fp32, x, batch_size, flatten=False)
    a, b = _flat(shaped), _outputs(int8, x, batch_size)
    out: dict[str, Any] = {"samples": len(y), "output": outputs[0] if outputs else None, "outputs": outputs}
    classes = int(y.max()) + 1 if len(y) else 0
    if len(outputs) > 1 or a.shape[1] < 2 or a.shape[1] < classes or not _one_row(shaped):
        # Not known to be the class scores (one of several outputs, an embedding, a score per sample, a score per
        # position or pixel): an accuracy of it would be a number of nothing (an 8-wide embedding's argmax "scored"
        # 0.0056; a [batch, 10, 64] per-step output's argmax over its 640 values "scored" 0.0 with "agreement" 1.0).
        if len(outputs) > 1:
            why = (
                f"the model has {len(outputs)} outputs ({', '.join(outputs[:8])}) and which one holds the class "
                f"scores is not known: select it ({SELECT_LOGITS}) to have it scored"
            )
        elif not _one_row(shaped):
            why = (
                f"output {out['output']!r} has shape {['batch', *shaped.shape[1:]]}, not one row of class scores per "
                "sample (a score per position or pixel?): pool it to [batch, classes] to have it scored"
            )
        elif a.shape[1] < 2:
            why = f"output {out['output']!r} holds one value per sample, so there is no class to compare"
        else:
            why = (
                f"output {out['output']!r} has {a.shape[1]} values per sample, fewer than the data's {classes} "
                "classes: not the class scores"
            )
        return {
            **out, "fp32_accuracy": None, "int8_accuracy": None, "top1_agreement": None,
            "note": why,
        }  # fmt: skip
    fp32_pred, int8_pred = a.argmax(axis=1), b.argmax(axis=1)
    return {
        **out, "fp32_accuracy": float(np.mean(fp32_pred == y)), "int8_accuracy": float(np.mean(int8_pred == y)),
        "top1_agreement": float(np.mean(fp32_pred == int8_pred)),
    }  # fmt: skip


def quantize_on_data(
    onnx_path: PathLike, out_path: PathLike, bundle: Any, input_shape: Sequence[int] | None = None
) -> dict[str, Any]:
    """:func:`quantize_int8` calibrated on ``bundle.train`` (static QDQ), with int8 vs fp32 accuracy and
    top-1 agreement measured on all of ``bundle.val`` (a :class:`sparsekit.data.DataBundle` whose
    loaders yield ``(x, y)`` batches).

    ``input_shape`` (batch first, e.g. ``[1, 784]``): the shape the model was exported for. Batches
    are reshaped to it, so a model that flattens its input itself (trained on ``[N, 1, 28, 28]``
    batches, exported for ``[N, 784]``) is calibrated and evaluated on exactly the samples it was
    fine-tuned on. Returns and raises as :func:`quantize_int8`, :class:`ExportError` when a
    batch's samples do not have the number of values ``input_shape`` says, and :class:`~sparsekit.errors.DataError`
    (``"data: the training loader: ..."``) when reading ``bundle.train`` fails or gives no ``(x, y)`` pair."""

    def shaped(x: Any, where: str) -> np.ndarray:
        # (in the loader's dtype: the calibration reader refuses integers for a float input, as training does)
        a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if input_shape is None:
            return a
        sample = [int(d) for d in input_shape[1:]]
        if a.ndim < 1 or int(np.prod(a.shape[1:])) != int(np.prod(sample)):
            raise ExportError(
                f"data: {where} yields a batch of shape {list(a.shape)}, which does not fit the exported input "
                f"{list(input_shape)}: give batches of samples of {int(np.prod(sample))} values"
            )
        return a.reshape(len(a), *sample)

    from sparsekit.data import batches

    xs, ys = zip(
        *[(shaped(x, "the validation loader").astype(np.float32), np.asarray(y)) for x, y in bundle.val], strict=True
    )
    # A training loader that fails is the data's fault, named as a run's training names it ("data: ...").
    calibration = ((shaped(x, "the training loader"), y) for x, y in batches(bundle.train, "data: the training loader"))
    return quantize_int8(
        onnx_path, out_path, calibration=calibration, eval_data=(np.concatenate(xs), np.concatenate(ys))
    )


def quantized_zeros(fp32_path: PathLike, int8_path: PathLike) -> dict[str, Any]:
    """Do the zeros of each fp32 weight (initializer of rank >= 2) survive as integer zeros?

    Each weight is paired with its quantized counterpart: the integer initializer feeding a
    ``DequantizeLinear`` (QDQ) or the weight input of ``MatMulInteger``/``ConvInteger``/``QLinear*``
    (dynamic and operator formats), found by onnxruntime's naming (``W_quantized``,
    ``W_Transposed_quantized``) or else by shape and sign pattern. A layer is ``ok`` when its zero
    points are all 0 and every fp32 zero is stored as 0. ``rounded_to_zero`` counts nonzero fp32
    weights that quantized to 0 (smaller than half a step: not an error, but more zeros). A weight with no
    fp32 zeros is ok whatever its zero point.
    Returns ``{"zeros_ok", "fp32_zeros", "int8_zeros", "layers": [{"name", "quantized_name",
    "fp32_zeros", "int8_zeros", "zero_point_zero", "rounded_to_zero", "ok"}]}``; a weight left in
    fp32 has ``quantized_name`` None and is ok. Both files are read with their external data; raises
    :class:`ExportError` like :func:`sparsekit.onnx.files.load_onnx`.
    """
    ref = load_onnx(fp32_path).graph
    q_graph = load_onnx(int8_path).graph
    weights = {
        t.name: numpy_helper.to_array(t) for t in ref.initializer if t.data_type in FLOAT_TYPES and len(t.dims) >= 2
    }
    q_inits = {t.name: t for t in q_graph.initializer}
    uses = _quantized_weights(q_graph, q_inits)  # name -> (int array, zero point broadcast to it)
    float_left = {t.name for t in q_graph.initializer if t.data_type in FLOAT_TYPES}

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
            # A nonzero zero point only matters where there are zeros to keep (GroupNorm's affine constants,
            # say, are quantized asymmetrically and hold none).
            row["ok"] = bool(np.all(int8_zero[fp32_zero])) and (row["zero_point_zero"] or row["fp32_zeros"] == 0)
        rows.append(row)
    return {
        "zeros_ok": all(r["ok"] for r in rows),
        "fp32_zeros": sum(r["fp32_zeros"] for r in rows),
        "int8_zeros": sum(r["int8_zeros"] or 0 for r in rows),
        "layers": rows,
    }


def onnx_accuracy(path: PathLike, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of the ONNX model at ``path`` on inputs ``x`` (N x ..., fed as float32 to
    its first input in batches of ``batch_size``) and integer labels ``y`` (N): the fraction whose
    argmax over the flattened first output equals the label. Raises :class:`ExportError` when the
    counts differ, there are no samples, or onnxruntime cannot load or run the model."""
    y = _labels(x, y)
    return float(np.mean(_predict(path, x, batch_size) == y))


def top1_agreement(path_a: PathLike, path_b: PathLike, x: np.ndarray, batch_size: int = 256) -> float:
    """Fraction (0..1) of inputs ``x`` (N x ...) on which the two ONNX models predict the same class
    (argmax of the first output). Raises :class:`ExportError` like :func:`onnx_accuracy`."""
    return float(np.mean(_predict(path_a, x, batch_size) == _predict(path_b, x, batch_size)))


# --- helpers --------------------------------------------------------------------------------------


_ONE_INPUT_EVAL = (
    "eval_data scores a model of one input, given one array of inputs (N x ...); leave eval_data out for a model of "
    "several inputs and score it with your own loop over onnxruntime"
)


def _eval_arrays(eval_data: tuple[Any, Any]) -> tuple[Any, np.ndarray]:
    """``quantize_int8``'s ``eval_data`` checked (before anything is quantized): its inputs and integer labels."""
    if isinstance(eval_data[0], (tuple, dict)):
        # A tuple or dict of several inputs' arrays: its length, the number of inputs, was said to be the number of
        # samples ("eval_data: 2 inputs but 64 labels").
        raise ExportError(f"eval_data: the inputs are a {type(eval_data[0]).__name__}; {_ONE_INPUT_EVAL}")
    x, y = eval_data[0], _labels(eval_data[0], eval_data[1], "eval_data")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if np.asarray(x).dtype.kind == "f" and not np.isfinite(x).all():
        # Every NaN row's argmax is class 0: an accuracy and an agreement of 1.0 measured on nothing.
        raise ExportError("eval_data: the inputs hold NaN or infinite values; clean or impute them first")
    return x, y


def _labels(x: Any, y: Any, where: str = "onnx_accuracy") -> np.ndarray:
    """``y`` as one integer class index per sample of ``x``; ``where`` names the argument in the error. Float
    labels such as 0.5 or one-hot rows were compared with the argmax as they were: an accuracy of 0.0, no word why."""
    if hasattr(y, "detach"):  # a torch tensor, as a DataLoader gives it
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim > 1 and arr.size != len(x):
        raise ExportError(
            f"{where}: labels of shape {list(arr.shape)} for {len(x)} inputs; give one integer class index per "
            "sample, shape (N,) (one-hot rows: y.argmax(1))"
        )
    flat = arr.reshape(-1)
    if len(flat) != len(x):
        raise ExportError(f"{where}: {len(x)} inputs but {len(flat)} labels")
    whole = flat.dtype.kind in "iub" or (
        flat.dtype.kind == "f" and bool(np.all(np.isfinite(flat))) and bool(np.all(flat == np.round(flat)))
    )
    if not whole or (len(flat) and flat.min() < 0):
        raise ExportError(
            f"{where}: labels must be integer class indices (0, 1, 2, ...), got dtype {flat.dtype} with values such "
            f"as {flat[:3].tolist()}"
        )
    return flat.astype(np.int64)


def _preprocess(src: Path, dest: Path, large: bool) -> tuple[Path, dict[str, Any]]:
    """onnxruntime's recommended pre-processing; the original file when it cannot be done."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    errors = []
    # Symbolic shape inference gives up on some graphs; ONNX shape inference alone is the fallback.
    for skip_symbolic in (False, True):
        try:
            with quiet():
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
    """onnxruntime ``CalibrationDataReader`` over user batches, converted to float32 feeds lazily (int64 / int32
    for an input the file declares so: token ids)."""

    def __init__(self, batches: Iterable[Any], inputs: list[onnx.ValueInfoProto], limit: int) -> None:
        if isinstance(batches, np.ndarray):
            raise ExportError("calibration must be an iterable of batches, not one array; wrap it as [x]")
        self.names = [i.name for i in inputs]
        self.ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in inputs}
        # The dims the file fixes after the batch (None: symbolic), checked on each batch: a wrong feature count
        # surfaced as onnxruntime's three-line "Got invalid dimensions ... index: 1 Got: 21 Expected: 20".
        self.dims = {
            i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim[1:]]
            for i in inputs
        }
        # Integer inputs (token ids for an nn.Embedding) are fed as the file declares them, not as float32.
        self.ints = {
            i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            for i in inputs
            if i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        }
        # A batch dim fixed in the file (torch.onnx.export's default, without dynamic axes: 1): each batch is fed in
        # slices of that many samples, as onnxruntime runs nothing else ("Got: 16 Expected: 1").
        dims = [i.type.tensor_type.shape.dim for i in inputs]
        self.fixed = next((d[0].dim_value for d in dims if d and d[0].HasField("dim_value") and d[0].dim_value), None)
        self._pending: list[dict[str, np.ndarray]] = []
        self._whole = False  # a whole slice of the fixed batch was fed: a short batch after it is padded
        self.limit = limit
        self.count = 0
        self._it = iter(batches)
        self._read: list[dict[str, np.ndarray]] = []  # every feed read from the batches, for again()
        self._replay: Iterator[dict[str, np.ndarray]] = iter(())
        first = self._next()
        if first is None:
            raise ExportError("calibration data is empty; pass batches of model input or None for dynamic")
        self._first: dict[str, np.ndarray] | None = first

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self._pending:
            feed: dict[str, np.ndarray] | None
            if self._first is not None:
                feed, self._first = self._first, None
            else:
                feed = self._next()
            if feed is None:
                return None
            self._pending = self._slices(feed)
        return self._pending.pop(0)

    def _slices(self, feed: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """``feed`` in slices of the file's fixed batch, or as it is. Once a whole slice has been fed, samples that
        do not fill one (a DataLoader's last batch: 8 of a 40-sample set at the file's 16) are padded with copies of
        their last sample: calibration is MinMax, whose ranges copies leave as they are (refusing them failed every
        DataLoader over a set not a multiple of the file's batch, at its last batch). A first batch smaller than the
        fixed one is refused: the batches do not fit the file."""
        n = len(next(iter(feed.values())))
        if self.fixed is None:
            return [feed]
        b = self.fixed
        if n < b and (not self._whole or n == 0):
            raise ExportError(
                f"calibration batch {self.count} has {n} sample(s) but the model's batch dim is fixed at "
                f"{b}: give batches of {b} samples or a multiple of it"
            )
        self._whole = True
        return [{k: _padded(v[i : i + b], b) for k, v in feed.items()} for i in range(0, n, b)]

    def again(self) -> _Reader:
        """A reader that gives the same batches from the start: those this one read (kept), then the rest."""
        other = object.__new__(_Reader)
        # Every setting _feed reads (ints, ranks, ...) is shared, so a batch not read yet is checked the same way.
        other.__dict__.update(self.__dict__)
        other.count, other._read, other._replay, other._first = 0, self._read, iter(list(self._read)), None
        other._pending, other._whole = [], False
        return other

    def rewind(self) -> None:  # part of the CalibrationDataReader protocol; one pass is all MinMax needs
        pass

    def _next(self) -> dict[str, np.ndarray] | None:
        if self.count >= self.limit:
            return None
        kept = next(self._replay, None)
        if kept is not None:
            self.count += 1
            return kept
        try:
            batch = next(self._it, None)
        except (SparsekitError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the caller's batches: their fault, said as such
            # It was taken for onnxruntime's, whose per-channel failure is retried per-tensor: the file was then
            # calibrated on the batches read before it, the fault in report.json's "fallback" alone.
            raise ExportError(f"calibration batch {self.count + 1}: reading it raised {one_line(exc)}") from None
        if batch is None:
            return None
        self.count += 1
        feed = self._feed(batch)
        self._read.append(feed)
        return feed

    def _feed(self, batch: Any) -> dict[str, np.ndarray]:
        if isinstance(batch, dict):
            missing = set(self.names) - set(batch)
            if missing:
                raise ExportError(f"calibration batch {self.count} lacks model input(s) {sorted(missing)}")
            # The model's inputs only: a dict batch's labels fed to onnxruntime were "Invalid input name: labels".
            feed = {k: _numeric(batch[k]) for k in self.names}
        else:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]  # (x, y) from a DataLoader
            if len(self.names) > 1 and isinstance(batch, (tuple, list)):
                # ((input1, input2, ...), labels): the batches sparsekit.finetune trains a model of several inputs on,
                # each tensor one of the forward's arguments, in its order, which is the file's input order (the
                # loader a model was fine-tuned with was refused here: "give calibration batches as dicts").
                if len(batch) != len(self.names):
                    raise ExportError(
                        f"calibration batch {self.count} holds {len(batch)} input(s) but the model takes "
                        f"{len(self.names)} {self.names}: give ((input1, input2, ...), labels) batches, one tensor per "
                        "input in the forward's order, or dicts of input name to tensor"
                    )
                feed = {name: _numeric(value) for name, value in zip(self.names, batch, strict=True)}
            elif len(self.names) != 1:
                raise ExportError(
                    f"the model has {len(self.names)} inputs {self.names}; give calibration batches as dicts of input "
                    "name to tensor, or as ((input1, input2, ...), labels) in the forward's order"
                )
            else:
                feed = {self.names[0]: _numeric(batch)}
        for name, value in feed.items():
            if name not in self.ints and value.dtype.kind in "iu":
                # Cast to float as they were: raw 8-bit pixels (0..255) set the ranges of a model trained on [0, 1].
                raise ExportError(
                    f"calibration batch {self.count} for input {name!r} holds {value.dtype} values, and the model "
                    "takes floating-point inputs: give floats on the scale the model was trained on (e.g. / 255 for "
                    "8-bit pixels); integer inputs are for a model whose input feeds an nn.Embedding (token ids)"
                )
        feed = {k: np.ascontiguousarray(v, dtype=self.ints.get(k, np.float32)) for k, v in feed.items()}
        for name in self.names:
            rank = self.ranks[name]
            if rank and feed[name].ndim != rank:
                raise ExportError(
                    f"calibration batch {self.count} for input {name!r} has shape {list(feed[name].shape)}; "
                    f"the model takes rank {rank} (batch dim included)"
                    + (f": these are {SAMPLES_NOT_BATCHES}" if feed[name].ndim == rank - 1 else "")
                )
            if feed[name].dtype.kind == "f" and not np.isfinite(feed[name]).all():
                # onnxruntime's MinMax then failed with "AssertionError: scale issue", naming no batch or value.
                raise ExportError(
                    f"calibration batch {self.count} for input {name!r} holds NaN or infinite values; clean or "
                    "impute them first"
                )
            want = self.dims[name]
            if rank and any(w is not None and w != got for w, got in zip(want, feed[name].shape[1:], strict=True)):
                takes = ["batch", *(w if w is not None else "any" for w in want)]
                raise ExportError(
                    f"calibration batch {self.count} for input {name!r} has shape {list(feed[name].shape)}; the model "
                    f"takes {takes}: give batches of the model's input"
                )
        return feed


def _to_numpy(value: Any) -> np.ndarray:
    return np.ascontiguousarray(_numeric(value), dtype=np.float32)


def _numeric(value: Any) -> np.ndarray:
    """``value`` (an array or a tensor) as a numpy array of its own numeric dtype."""
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise ExportError(f"calibration batches must be numeric arrays, got dtype {arr.dtype}")
    return arr


def _check_runs(path: Path) -> None:
    try:
        open_session(path)  # checks the external data first: onnxruntime follows locations unchecked
    except ExportError as e:
        why = e.__cause__ or e
        raise ExportError(f"the int8 model onnxruntime wrote cannot be loaded by onnxruntime: {why}") from e


def _drop_redundant(graph: onnx.GraphProto) -> None:
    """Remove from ``graph`` (in place) what onnxruntime's quantizer writes that no reader needs: the zero points
    of int32 biases, always 0 (``DequantizeLinear``'s zero point is optional and defaults to 0), and the shapes
    its pre-processing inferred (``value_info``; shape inference redoes them).

    Static files keep their biases in float (``QuantizeBias: False``): an int32 bias carried its scale and zero
    point per output channel, 12 bytes beside the channel's int8 weights, as much as the weights themselves for a
    3x3 depthwise channel; onnxruntime quantizes a float bias the same way when it fuses the layer (QLinearConv,
    QGemm: every layer it fused before, outputs equal on examples.models' LeNet-300-100, small_cnn and
    resnet_small, one logit in 1,400 a step apart on mobilenetv2_small, the same accuracy). An int32 bias another
    tool wrote still loses its zero point here. The int8 weights' own zero points stay: without them
    onnxruntime does not fuse a Gemm into QGemm (measured), and the zero check reads them."""
    inits = {t.name: t for t in graph.initializer}
    dropped: set[str] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        x, zp = inits.get(node.input[0]), inits.get(node.input[2])
        if (
            x is None
            or zp is None
            or x.data_type != onnx.TensorProto.INT32
            or zp.data_location == onnx.TensorProto.EXTERNAL  # its bytes stay in the data file either way
            or numpy_helper.to_array(zp).any()
        ):
            continue
        dropped.add(node.input[2])
        del node.input[2]
    used = {name for node in _all_nodes(graph) for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name not in dropped or t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    del graph.value_info[:]


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    """Remove, in place, the operator set imports of domains no node uses. onnxruntime's pre-processing declares
    every domain it knows (com.microsoft, com.microsoft.nchwc, ai.onnx.training, org.pytorch.aten, ...): 187 bytes
    of a 3 KB int8 file, enough to read larger than its fp32 model, and domains another runtime may not know."""
    nodes = [*_all_nodes(model.graph), *(n for f in model.functions for n in f.node)]
    used = {n.domain for n in nodes} | {f.domain for f in model.functions} | {"", "ai.onnx"}
    keep = [o for o in model.opset_import if o.domain in used]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)


_LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger"})


def _short_names(graph: onnx.GraphProto, initializers: bool = True) -> None:
    """Rename, in place, what no reader looks up by name: the values between nodes, the scales, zero points and
    biases (initializers of rank 0 or 1; with ``initializers=False`` none, for a dynamic int8 file whose weight
    scales are found by their names) and the nodes themselves, to short base-36 names. The graph's inputs and
    outputs and its weights (rank >= 2: the fp32 names with onnxruntime's ``_quantized`` suffix, which
    :func:`quantized_zeros` and a reader of the file go by) keep theirs, and so do the layer nodes that read a
    weight with others (a tie), or a weight not named after their layer (a BatchNorm folded in), which cannot name
    them.

    onnxruntime's quantizer names each value after the node and weight it came from
    (``/blocks.3/expand/Conv_output_0_QuantizeLinear_Output``, ``blocks.3.expand.weight_zero_point``): 9-13% of a small
    static int8 file (resnet_small 0.306x -> 0.273x of its fp32 file, examples.models' mobilenetv2_small 0.313x ->
    0.289x); a dynamic one's node and value names were ~10% of the digits MLP's file (0.32x -> 0.29x). A graph
    with subgraphs (If, Loop, Scan) or sparse initializers is left as it is: its names reach
    into scopes this renaming does not follow."""
    if graph.sparse_initializer or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute
    ):
        return
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    keep |= {t.name for t in graph.initializer if len(t.dims) >= 2 or not initializers}
    names: dict[str, str] = {}
    fresh = (n for n in map(_base36, itertools.count()) if n not in keep)  # never a name that stays

    def short(name: str) -> str:
        if not name or name in keep:
            return name  # "" is an omitted optional input
        if name not in names:
            names[name] = next(fresh)
        return names[name]

    # A weight several layers read (tied: one tensor in torch) names none of them: `sparsekit inspect` tells those
    # layers apart by their node names (/enc/MatMul, /dec/MatMul), which therefore stay.
    readers: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in _LAYER_OPS and len(node.input) > 1:
            readers[node.input[1]] = readers.get(node.input[1], 0) + 1
    # A layer whose weight is not named after it (a Conv with its BatchNorm folded in by the TorchScript exporter
    # reads "onnx::Conv_29", quantized "onnx::Conv_29_quantized") is named by its node in `sparsekit inspect`
    # ("/c2/Conv": layer c2), which therefore stays too: "n8" named no layer of the model. Looked up through the
    # DequantizeLinear a QDQ file reads each weight by.
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.output}
    unnamed = {  # by index: protobuf hands out a new Python object for a node on each access
        i
        for i, node in enumerate(graph.node)
        if node.op_type in _LAYER_OPS
        and len(node.input) > 1
        and ".weight" not in dequantized.get(node.input[1], node.input[1])
    }
    for t in graph.initializer:
        t.name = short(t.name)
    for i, node in enumerate(graph.node):
        shared = node.op_type in _LAYER_OPS and len(node.input) > 1 and readers[node.input[1]] > 1
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
        node.name = node.name if (shared or i in unnamed) and node.name else f"n{_base36(i)}"


def _base36(n: int) -> str:
    return np.base_repr(n, 36).lower()


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of the subgraphs its nodes hold (If, Loop, Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)


def _quantized_weights(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> dict[str, tuple]:
    """Integer initializers used as weights, with their zero points broadcast to their shape."""
    spec = QUANT_WEIGHT_INPUTS
    out: dict[str, tuple] = {}
    for node in graph.node:
        if node.op_type not in spec:
            continue
        w_i, zp_i, axis = spec[node.op_type]
        if len(node.input) <= w_i or node.input[w_i] not in inits:
            continue
        t = inits[node.input[w_i]]
        if t.data_type not in QUANT_TYPES or len(t.dims) < 2:
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


def output_agreement(path_a: PathLike, path_b: PathLike, x: np.ndarray, batch_size: int = 256) -> dict[str, Any]:
    """How closely two ONNX models' first outputs agree on inputs ``x`` (N x ..., fed as float32 in batches of
    ``batch_size``): ``{"samples", "max_abs_diff", "top1_agreement"}``, the largest absolute difference over all
    outputs and the fraction of samples with the same argmax over the flattened output (None when each sample's
    output is a single value, or not one row of scores: [batch, classes, steps] has no class per sample).
    Raises :class:`ExportError` like :func:`onnx_accuracy`."""
    shaped = _outputs(path_a, x, batch_size, flatten=False)
    a, b = _flat(shaped), _outputs(path_b, x, batch_size)
    if a.shape != b.shape:
        raise ExportError(f"{path_a} and {path_b} give outputs of different shapes: {list(a.shape)}, {list(b.shape)}")
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    # An argmax over a per-position output's values ([batch, classes, steps] flattened) is no sample's class.
    top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if a.shape[1] > 1 and _one_row(shaped) else None
    return {"samples": len(a), "max_abs_diff": diff, "top1_agreement": top1}


def _predict(path: PathLike, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Argmax over the flattened first output of the model at ``path``, per sample of ``x``."""
    return _outputs(path, x, batch_size).argmax(axis=1)


def _padded(chunk: np.ndarray, size: int) -> np.ndarray:
    """``chunk`` (samples first) filled up to ``size`` samples with copies of its last one: a fixed batch dim takes
    that many samples a run and no other count."""
    short = size - len(chunk)
    return np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)]) if short > 0 else chunk


def _flat(out: np.ndarray) -> np.ndarray:
    return out.reshape(len(out), -1)


def _one_row(out: np.ndarray) -> bool:
    """Whether each sample's output is one row of values (``[N, C]``, size-1 dims aside: ``[N, C, 1, 1]``)."""
    return sum(d > 1 for d in out.shape[1:]) <= 1


def _outputs(path: PathLike, x: np.ndarray, batch_size: int, *, flatten: bool = True) -> np.ndarray:
    """The first output of the model at ``path`` on ``x``, flattened per sample (``[N, outputs]``; with
    ``flatten=False`` as the model gives it)."""
    p = Path(path)
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    x = _to_numpy(x)
    if len(x) == 0:
        raise ExportError("no samples to evaluate")
    session = open_session(p)  # checks the external data first; ExportError naming the file
    name, dims = session.get_inputs()[0].name, session.get_inputs()[0].shape
    # Fed in the file's own input type: token ids (int64) for a model exported from an nn.Embedding first.
    x = x.astype(ORT_DTYPES.get(session.get_inputs()[0].type, np.float32), copy=False)
    # A batch dim fixed in the file (torch.onnx.export's default: 1) takes that many samples a run and no other
    # count: the last run is padded with copies of its last sample, whose outputs are left out.
    fixed = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
    step = fixed or batch_size
    preds = []
    try:
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            n = len(chunk)
            out = session.run(None, {name: _padded(chunk, fixed) if fixed else chunk})[0][:n]
            preds.append(_flat(out) if flatten else out)
    except Exception as e:
        raise ExportError(f"{p}: onnxruntime cannot run it on inputs of shape {list(x.shape)}: {e}") from e
    return np.concatenate(preds)
