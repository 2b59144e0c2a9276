"""ONNX export with the checks that make the file trustworthy: checker, parity, zeros kept.

Example::

    info = export_onnx(model, "pruned.onnx", input_shape=(1, 784))
    assert info["parity"]["ok"] and info["zeros"]["zeros_ok"]
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor
from torch import nn

from sparsekit.errors import ExportError
from sparsekit.fsutil import writing

__all__ = [
    "check_external_data",
    "check_zeros",
    "count_initializer_stats",
    "entropy_bound_bytes",
    "export_onnx",
    "external_data_files",
    "load_onnx",
    "onnx_sizes",
    "size_report",
    "written_by_sparsekit",
]

EXPORTERS = ("dynamo", "torchscript")
# Protobuf caps a single file at 2 GB; leave headroom for the graph itself.
EXTERNAL_DATA_BYTES = int(1.8e9)
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")
_FLOAT_TYPES = {getattr(onnx.TensorProto, t) for t in ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16")}
# metadata_props key of every ONNX file sparsekit writes; the value is the sparsekit version.
MARK_KEY = "sparsekit"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: Sequence[int],
    *,
    opset: int = 18,
    exporter: str = "dynamo",
    check_parity: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> dict[str, Any]:
    """Export ``model`` to ``path`` (batch dim dynamic) and verify the written file.

    The file appears at ``path`` only after ``onnx.checker`` and shape inference pass, and carries
    the ``sparsekit`` metadata mark (see :func:`written_by_sparsekit`). Returns
    ``{"path", "bytes", "gzip_bytes", "parity", "zeros", "opset", "exporter"}``.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    shape = _validate_shape(input_shape)
    final = Path(path)
    with writing(final):  # a full, read-only or unwritable disk is an OutputError naming the file
        final.parent.mkdir(parents=True, exist_ok=True)
        n_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        external = n_bytes > EXTERNAL_DATA_BYTES
        if external and exporter != "dynamo":
            raise ExportError(f"{final}: model has {n_bytes / 1e9:.1f} GB of weights; use exporter='dynamo'")

        # A private folder beside the target: same filesystem, so os.replace is atomic, and an external
        # data file written under the final name keeps the relative location recorded in the graph.
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        tmp = tmp_dir / final.name
        try:
            with _cpu_eval(model):
                _export(model, tmp, shape, opset, exporter, external)
                _check_file(tmp)
                parity = _parity(model, tmp, shape, rtol, atol) if check_parity else None
                zeros = check_zeros(model, tmp)
            for extra in tmp_dir.iterdir():  # external data first, so the graph never points at nothing
                if extra != tmp:
                    os.replace(extra, final.parent / extra.name)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    info = {"path": str(final), **onnx_sizes(final)}  # + bytes, gzip_bytes
    return {**info, "parity": parity, "zeros": zeros, "opset": opset, "exporter": exporter}


def load_onnx(path: str | os.PathLike[str], *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, external data included unless ``load_external_data=False``.

    Raises :class:`ExportError` naming the file when it is not an ONNX model, when a tensor keeps
    its data outside the model's folder (see :func:`check_external_data`; checked before any
    external file is opened) or when its external data cannot be read.
    """
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: no such file")
    try:
        # Never let onnx follow external-data locations before they are checked.
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises several unrelated types on garbage input
        raise ExportError(f"{p}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    # Protobuf happily parses some non-ONNX bytes (an empty file, say) into an empty message.
    if model.ir_version == 0 or not model.graph.output:
        raise ExportError(f"{p}: not an ONNX model (no IR version or no graph outputs)")
    targets = _check_locations(p, model)
    if load_external_data:
        _load_external_data(p, model, targets)
    return model


def check_external_data(path: str | os.PathLike[str]) -> None:
    """Raise :class:`ExportError` unless ``path`` is an ONNX model whose external data, if any, are
    files inside the model's own folder.

    Call it before handing a path to anything that reads external data itself (onnxruntime, onnx's
    checker). Refused: an empty or absolute location, one with a ``..`` component, one whose real
    path (symlinks followed) is outside the real path of the model's folder, and one naming a
    directory or other non-regular file. Reads the ``.onnx`` file only.
    """
    load_onnx(path, load_external_data=False)


def external_data_files(path: str | os.PathLike[str]) -> set[str]:
    """The external-data locations an ONNX file names (relative to its folder); checked first."""
    model = load_onnx(path, load_external_data=False)
    return {location for _, tensor in _model_tensors(model) for location in _locations(tensor)}


def written_by_sparsekit(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a readable ONNX file carrying sparsekit's mark; never raises.

    False for a missing file, non-ONNX bytes, ONNX files without the mark and marked files whose
    graph changed since sparsekit wrote them (the mark holds a SHA-256 of the rest of the file;
    external data files are not hashed). The mark says who wrote the file, not that it is safe:
    anyone can compute it.
    """
    try:
        model = load_onnx(path, load_external_data=False)
        value = _unmark(model)
        return value is not None and value.endswith(f" sha256:{_digest(model)}")
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not ours"
        return False


def onnx_sizes(path: str | os.PathLike[str]) -> dict[str, int]:
    """Raw and gzip-9 bytes of the ``.onnx`` file plus any external-data files it references.

    Raises :class:`ExportError` when the file is not ONNX, an external-data file is missing, or one
    lies outside the model's folder (checked before any of them is read).
    """
    p = Path(path)
    model = load_onnx(p, load_external_data=False)  # checks every location first
    files = [p]
    seen = {os.path.realpath(p)}  # a data file reached twice (e.g. through a symlink) counts once
    for _, tensor in _model_tensors(model):
        for location in _locations(tensor):
            data = p.parent / location
            if os.path.realpath(data) not in seen:
                seen.add(os.path.realpath(data))
                files.append(data)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ExportError(f"{p}: external data file(s) missing: {', '.join(missing)}")
    return {"bytes": sum(f.stat().st_size for f in files), "gzip_bytes": _gzip_size(files)}


def size_report(path: str | os.PathLike[str], nonzero_params: int | None = None) -> dict[str, Any]:
    """:func:`onnx_sizes` plus what the bytes buy: ``params``, ``nonzero_params`` and bytes per nonzero.

    Counts the floating-point initializers, dense and ``sparse_initializer`` alike. A quantized file
    stores its weights as integers, so pass the fp32 model's ``nonzero_params`` to compare the two
    per nonzero weight (:func:`sparsekit.quantize.quantize_int8` does). ``*_per_nonzero`` is None
    when there are no nonzeros.
    """
    sizes = onnx_sizes(path)
    graph = load_onnx(path).graph
    params = nonzero = 0
    for init in graph.initializer:
        if init.data_type in _FLOAT_TYPES:
            arr = numpy_helper.to_array(init)
            params += int(arr.size)
            nonzero += int(np.count_nonzero(arr))
    for sparse in graph.sparse_initializer:
        if sparse.values.data_type in _FLOAT_TYPES:
            params += math.prod(sparse.dims)
            nonzero += int(np.count_nonzero(numpy_helper.to_array(sparse.values)))
    if nonzero_params is not None:
        nonzero = int(nonzero_params)
    per = (lambda b: b / nonzero) if nonzero else (lambda b: None)
    return {
        **sizes,
        "params": params,
        "nonzero_params": nonzero,
        "bytes_per_nonzero": per(sizes["bytes"]),
        "gzip_bytes_per_nonzero": per(sizes["gzip_bytes"]),
    }


def entropy_bound_bytes(n_weights: int, n_nonzero: int, value_bits: float) -> float:
    """Bytes an ideal coder needs for ``n_weights`` of which ``n_nonzero`` are nonzero.

    Each nonzero costs ``value_bits`` (32 for fp32, 8 for int8; values taken as incompressible) and
    the zero/nonzero mask costs its binary entropy H(p) bits per weight, p = n_nonzero / n_weights:
    ``n_weights * (p * value_bits + H(p)) / 8``. For 90% sparsity and fp32 that is 0.115x of the
    dense 4 bytes per weight; for int8 values, 0.040x. gzip lands above it; a size near or below it
    means the values themselves were compressible (e.g. low-entropy exponents), not a lossless miracle.
    """
    if n_weights <= 0:
        return 0.0
    if not 0 <= n_nonzero <= n_weights:
        raise ValueError(f"need 0 <= n_nonzero <= n_weights, got {n_nonzero} of {n_weights}")
    p = n_nonzero / n_weights
    mask_bits = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return n_weights * (p * value_bits + mask_bits) / 8


def count_initializer_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Element and nonzero counts over the floating-point initializers of an ONNX file."""
    model = load_onnx(path)
    params = nonzero = count = 0
    for init in model.graph.initializer:
        if init.data_type not in _FLOAT_TYPES:
            continue
        arr = numpy_helper.to_array(init)
        count += 1
        params += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    sparsity = 1.0 - nonzero / params if params else 0.0
    return {"initializers": count, "params": params, "nonzero_params": nonzero, "sparsity": sparsity}


def check_zeros(model: nn.Module, onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every Linear/Conv weight kept its exact zero count in the ONNX file.

    Exporters rename, transpose and fold weights, so each torch weight is matched in turn by name,
    by identical values, by shape with the same zero count, and finally by shape alone (which then
    reports the mismatch). A weight without zeros that cannot be found is listed but not a failure.
    """
    graph = load_onnx(onnx_path).graph
    tensors = [t for t in _all_tensors(graph) if t.data_type in _FLOAT_TYPES]
    inits = {t.name or f"<constant {i}>": numpy_helper.to_array(t) for i, t in enumerate(tensors)}
    weights = list(_prunable_weights(model))
    zeros = {name: int(np.count_nonzero(w == 0)) for name, w in weights}
    found: dict[str, str] = {}  # torch name -> initializer name
    # Stage by stage over all weights, so a loose match for one layer cannot take an initializer
    # that a stricter test would have given to a later layer.
    for stage in range(4):
        for name, w in weights:
            if name not in found:
                key = _match(stage, name, w, zeros[name], inits, set(found.values()))
                if key is not None:
                    found[name] = key
    layers = []
    for name, _ in weights:
        key = found.get(name)
        onnx_zeros = None if key is None else int(np.count_nonzero(inits[key] == 0))
        ok = onnx_zeros == zeros[name] if key is not None else zeros[name] == 0
        layers.append({"name": name, "onnx_name": key, "torch_zeros": zeros[name], "onnx_zeros": onnx_zeros, "ok": ok})
    return {"zeros_ok": all(layer["ok"] for layer in layers), "layers": layers}


def _validate_shape(input_shape: Sequence[int]) -> list[int]:
    try:
        shape = [int(d) for d in input_shape]
    except (TypeError, ValueError) as e:
        raise ExportError(f"input_shape must be a list of integers, got {input_shape!r}") from e
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise ExportError(f"input_shape must be positive and include the batch dim (e.g. 1,784), got {shape}")
    return shape


@contextlib.contextmanager
def _cpu_eval(model: nn.Module) -> Iterator[None]:
    # Per-module flags, because model.train(flag) would unfreeze deliberately frozen submodules.
    modes = [(m, m.training) for m in model.modules()]
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    model.eval().cpu()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        if device.type != "cpu":
            model.to(device)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The dynamo exporter prints progress with emoji on stdout and logs torchvision warnings; stdout
    # must stay clean for `--json`.
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        # torch.export also print()s whole traced graphs to stderr when it fails; the ExportError we
        # raise keeps the cause chain, so the dump adds only noise.
        sink = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(model: nn.Module, tmp: Path, shape: list[int], opset: int, exporter: str, external: bool) -> None:
    # Trace with batch 2: a batch of 1 invites the tracer to specialise the dim away.
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(0))  # leave global RNG alone
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as e:
        msg = f"the model fails on a float32 input of shape {shape}: {e}; pass the right --input-shape"
        raise ExportError(msg) from e
    try:
        with _quiet():
            if exporter == "dynamo":
                batch = torch.export.Dim("batch")
                torch.onnx.export(
                    model, (x,), str(tmp), dynamo=True, external_data=external, verbose=False,
                    dynamic_shapes=({0: batch},), input_names=["input"], output_names=["output"],
                    opset_version=opset,
                )  # fmt: skip
            else:
                axes = {"input": {0: "batch"}, "output": {0: "batch"}}
                torch.onnx.export(
                    model, (x,), str(tmp), dynamo=False, dynamic_axes=axes,
                    input_names=["input"], output_names=["output"], opset_version=opset,
                )  # fmt: skip
    except Exception as e:
        hint = " (exporter='torchscript' may succeed)" if exporter == "dynamo" else ""
        msg = f"torch.onnx.export with exporter={exporter!r} failed{hint}: {_root_cause(e)}"
        raise ExportError(msg) from e


def _root_cause(e: BaseException) -> str:
    # The exporters wrap the real reason in pages of advice with ANSI colours; keep one line of it.
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_file(tmp: Path) -> None:
    # The dynamo exporter stamps every node with its Python stack trace: local paths in a file meant
    # to be shipped, and ~1 kB per node that blurs dense-vs-pruned size comparisons. Weights in
    # external data are not loaded, so re-saving keeps their references as they are. Saved always,
    # for the mark that tells later commands sparsekit wrote the file.
    model = load_onnx(tmp, load_external_data=False)
    _strip_node_metadata(model.graph)
    _mark(model)
    onnx.save(model, str(tmp))
    try:
        onnx.checker.check_model(str(tmp))  # the path form also handles external data
        onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        raise ExportError(f"the exported ONNX graph is invalid: {e}") from e


def _mark(model: onnx.ModelProto) -> None:
    """Stamp ``model`` as written by sparsekit (see :func:`written_by_sparsekit`): the version and a
    SHA-256 of the rest of the graph, so a file edited since (the mark kept) is no longer "ours"."""
    from sparsekit import __version__  # lazily: the package imports this module

    _unmark(model)
    model.metadata_props.add(key=MARK_KEY, value=f"{__version__} sha256:{_digest(model)}")


def _unmark(model: onnx.ModelProto) -> str | None:
    """Remove sparsekit's mark from ``model``; returns its value (None when there was none)."""
    value = None
    for i in reversed(range(len(model.metadata_props))):
        if model.metadata_props[i].key == MARK_KEY:
            value = model.metadata_props[i].value
            del model.metadata_props[i]
    return value


def _digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def _strip_node_metadata(graph: onnx.GraphProto) -> bool:
    changed = False
    for node in graph.node:
        if len(node.metadata_props):
            del node.metadata_props[:]
            changed = True
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                changed = _strip_node_metadata(sub) or changed
    return changed


def _parity(model: nn.Module, tmp: Path, shape: list[int], rtol: float, atol: float) -> dict[str, Any]:
    import onnxruntime as ort

    x = torch.randn(4, *shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    expected = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
    check_external_data(tmp)  # onnxruntime follows external-data locations unchecked
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    result: dict[str, Any] = {"max_abs_diff": None, "ok": False, "rtol": rtol, "atol": atol}
    if [g.shape for g in got] != [e.shape for e in expected]:
        return result
    pairs = list(zip(got, expected, strict=True))
    diff = max((float(np.max(np.abs(g - e), initial=0.0)) for g, e in pairs), default=0.0)
    # NaN is not valid JSON: leave None ("not comparable"); allclose already says not ok.
    result["max_abs_diff"] = diff if np.isfinite(diff) else None
    result["ok"] = all(np.allclose(g, e, rtol=rtol, atol=atol) for g, e in pairs)
    return result


def _prunable_weights(model: nn.Module) -> Iterator[tuple[str, np.ndarray]]:
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and id(module.weight) not in seen:
            seen.add(id(module.weight))  # tied weights are one initializer in ONNX
            yield f"{name}.weight", module.weight.detach().cpu().numpy()


def _match(
    stage: int, name: str, w: np.ndarray, zeros: int, inits: dict[str, np.ndarray], used: set[str]
) -> str | None:
    """Stage 0: by name; 1: identical values; 2: shape and zero count; 3: shape alone."""
    transposed = w.shape[::-1] if w.ndim == 2 else w.shape
    free = {k: a for k, a in inits.items() if k not in used and a.shape in (w.shape, transposed)}
    if stage == 0:
        # dynamo keeps `fc1.weight` (or `p_fc1_weight`); torchscript keeps it or makes `onnx::MatMul_7`.
        return next((k for k in (name, "p_" + name.replace(".", "_"), name.replace(".", "_")) if k in free), None)
    tests = {
        1: lambda a: np.array_equal(a, w) or (w.ndim == 2 and np.array_equal(a, w.T)),
        2: lambda a: int(np.count_nonzero(a == 0)) == zeros,
        3: lambda a: True,
    }
    return next((k for k, a in free.items() if tests[stage](a)), None)


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: see :func:`_named_tensors`."""
    for _, tensor in _named_tensors(graph):
        yield tensor


def _model_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """:func:`_named_tensors` of the main graph and of the model's local functions."""
    yield from _named_tensors(model.graph)
    for function in model.functions:  # onnx loads external data for their attributes too
        yield from _named_tensors(function)


def _named_tensors(graph: onnx.GraphProto | onnx.FunctionProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """``(name to report, tensor)`` for every tensor stored in ``graph``: initializers, values and
    indices of sparse initializers, tensors in node attributes (Constant values among them) and
    the same in every subgraph."""
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
                yield from _named_tensors(attr.g)
            for sub in attr.graphs:
                yield from _named_tensors(sub)


def _sparse_parts(sparse: onnx.SparseTensorProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    name = sparse.values.name or where
    yield name, sparse.values
    yield sparse.indices.name or f"{name} (indices)", sparse.indices


def _locations(tensor: onnx.TensorProto) -> list[str]:
    """The external-data locations of ``tensor``: none when its data is inline. A missing
    location entry is returned as ``""`` (and refused), not silently skipped."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return []
    return [e.value for e in tensor.external_data if e.key == "location"] or [""]


def _check_locations(path: Path, model: onnx.ModelProto) -> dict[str, str]:
    """Raise :class:`ExportError` for the first tensor of ``model`` (read from ``path``) whose
    external data is not a file inside the model's folder; else return each location's real path.
    Touches no data file's contents."""
    folder = path.parent
    real_folder = os.path.realpath(folder)
    targets: dict[str, str] = {}  # location -> real path; most tensors share one file
    for name, tensor in _model_tensors(model):
        for location in _locations(tensor):
            if location in targets:
                continue
            why = _location_problem(folder, real_folder, location)
            if why is not None:
                raise ExportError(
                    f"{path}: tensor {name!r} stores its data at {location!r}, {why}; external data must be "
                    f"a file beside the model (re-save it with onnx.save(..., location='{path.name}.data'))"
                )
            targets[location] = os.path.realpath(folder / location)
    return targets


def _load_external_data(path: Path, model: onnx.ModelProto, targets: dict[str, str]) -> None:
    """Read every external tensor of ``model`` from the files :func:`_check_locations` approved.

    Done tensor by tensor over :func:`_model_tensors` rather than with onnx's
    ``load_external_data_for_model``, which skips sparse initializers (``numpy_helper.to_array``
    would later read those relative to the current directory) and refuses a symlinked data file
    even when it stays inside the folder.
    """
    real_folder = os.path.realpath(path.parent)
    for name, tensor in _model_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location":  # the checked real file: no symlink, no '..' left to follow
                entry.value = os.path.relpath(targets[entry.value], real_folder)
        try:
            load_external_data_for_tensor(tensor, real_folder)
        except Exception as e:  # a missing or truncated data file, mostly
            msg = f"{path}: cannot read the external data of tensor {name!r} ({type(e).__name__}: {e})"
            raise ExportError(msg) from e


def _location_problem(folder: Path, real_folder: str, location: str) -> str | None:
    """Why ``location`` may not be read as external data of a model in ``folder``; None if it may."""
    if not location:
        return "which names no file"
    if "\x00" in location:
        return "which is not a valid file name"
    # Both separators and drive letters: a file written on Windows must not escape either.
    if location.startswith(("/", "\\")) or PureWindowsPath(location).drive:
        return "outside the model's folder (an absolute path)"
    parts = re.split(r"[\\/]", location)
    if ".." in parts:
        # Refused even when it would land inside: '..' has no business in a file beside the model.
        return "outside the model's folder ('..' is not allowed)"
    if any(part.startswith(".") and part != "." for part in parts):
        # A model saved in a home folder must not read ~/.ssh/id_rsa or ~/.netrc as "weights": hidden
        # files and folders hold keys and settings, never a model's data.
        return "a hidden file or folder, where model data never lives"
    target = os.path.realpath(folder / location)  # symlinks followed, as the reader would
    if os.path.commonpath([real_folder, target]) != real_folder:
        return "outside the model's folder (it resolves to another place)"
    if any(part.startswith(".") for part in Path(os.path.relpath(target, real_folder)).parts):
        return "a link to a hidden file or folder, where model data never lives"
    if os.path.isdir(target):  # the folder itself ('.') included
        return "which is a directory, not a file"
    if os.path.exists(target) and not os.path.isfile(target):
        return "which is not a regular file"  # a FIFO or device would hang or never end
    return None  # a missing file is reported by whoever needs its bytes


def _gzip_size(files: Sequence[Path]) -> int:
    # Streamed (wbits=31 is the gzip container) so a multi-GB external data file never sits in memory.
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                n += len(comp.compress(chunk))
    return n + len(comp.flush())
