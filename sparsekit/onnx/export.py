"""torch -> ONNX export with the checks that make the file trustworthy: onnx's checker and shape
inference, parity with torch in onnxruntime, and every pruned zero kept.

Example::

    info = export_onnx(model, "pruned.onnx", input_shape=(1, 784))
    assert info["parity"]["ok"] and info["zeros"]["zeros_ok"]

Exporters: https://pytorch.org/docs/stable/onnx.html (``dynamo=True``: torch.export based;
``dynamo=False``: TorchScript based).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from sparsekit.errors import ExportError, option
from sparsekit.onnx.files import EXTERNAL_DATA_BYTES, load_onnx, onnx_sizes, publish, save_onnx, staging
from sparsekit.onnx.quiet import quiet
from sparsekit.onnx.sessions import open_session, random_array
from sparsekit.onnx.tensors import FLOAT_TYPES, graph_tensors

__all__ = ["EXPORTERS", "check_zeros", "export_onnx"]

EXPORTERS = ("dynamo", "torchscript")


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
    """Export ``model`` (in eval mode, on the CPU; its modes and device are restored after) to the ONNX
    file ``path``, for inputs of ``input_shape`` (batch first; the batch dim is exported dynamic),
    and verify the written file.

    The file appears at ``path`` only after ``onnx.checker`` and shape inference pass, with the
    ``sparsekit`` mark (see :func:`sparsekit.onnx.files.written_by_sparsekit`); models with more than
    1.8 GB of weights keep them in ``<path>.data`` beside it (dynamo exporter only). Parity: the
    model and onnxruntime run a seeded batch of 4 and must agree within ``rtol``/``atol``.
    Returns ``{"path", "bytes", "gzip_bytes", "parity", "zeros", "opset", "exporter"}`` with sizes in
    bytes (external data included), ``parity`` = ``{"max_abs_diff", "ok", "rtol", "atol"}`` (None
    without ``check_parity``) and ``zeros`` = :func:`check_zeros`.
    Raises :class:`ExportError` for a bad shape or exporter, a model that fails on the input or that
    the exporter cannot handle, or an invalid graph; :class:`~sparsekit.errors.OutputError` when the
    disk is full, read-only or not writable. Nothing is written at ``path`` then.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    shape = _validate_shape(input_shape)
    final = Path(path)
    # A private folder beside the target: same filesystem, so publishing is atomic, and an external
    # data file written under the final name keeps the relative location recorded in the graph.
    with staging(final) as work:
        n_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        external = n_bytes > EXTERNAL_DATA_BYTES
        if external and exporter != "dynamo":
            raise ExportError(f"{final}: model has {n_bytes / 1e9:.1f} GB of weights; use exporter='dynamo'")
        tmp = work / final.name
        with _cpu_eval(model):
            _export(model, tmp, shape, opset, exporter, external)
            _check_file(tmp)
            parity = _parity(model, tmp, shape, rtol, atol) if check_parity else None
            zeros = check_zeros(model, tmp)
        publish(tmp, final)
    info = {"path": str(final), **onnx_sizes(final)}  # + bytes, gzip_bytes
    return {**info, "parity": parity, "zeros": zeros, "opset": opset, "exporter": exporter}


def check_zeros(model: nn.Module, onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that every Linear/Conv weight of ``model`` kept its exact zero count in the ONNX file
    ``onnx_path`` (read with its external data).

    Exporters rename, transpose and fold weights, so each torch weight is matched in turn by name,
    by identical values, by shape with the same zero count, and finally by shape alone (which then
    reports the mismatch), against every floating-point tensor the file stores. A weight without
    zeros that cannot be found is listed but not a failure. Returns ``{"zeros_ok", "layers":
    [{"name", "onnx_name", "torch_zeros", "onnx_zeros", "ok"}]}``. Raises :class:`ExportError` when
    the file is not ONNX or its external data is outside its folder or unreadable.
    """
    graph = load_onnx(onnx_path).graph
    tensors = [t for _, t in graph_tensors(graph) if t.data_type in FLOAT_TYPES]
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


def _export(model: nn.Module, tmp: Path, shape: list[int], opset: int, exporter: str, external: bool) -> None:
    # Trace with batch 2: a batch of 1 invites the tracer to specialise the dim away.
    x = torch.from_numpy(random_array([2, *shape[1:]], seed=0))
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as e:
        msg = f"the model fails on a float32 input of shape {shape}: {e}; pass the right {option('input_shape')}"
        raise ExportError(msg) from e
    try:
        with quiet():
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
    save_onnx(model, tmp, what="exported model")
    try:
        onnx.checker.check_model(str(tmp))  # the path form also handles external data
        onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        raise ExportError(f"the exported ONNX graph is invalid: {e}") from e


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
    x = random_array([4, *shape[1:]], seed=0)
    with torch.no_grad():
        out = model(torch.from_numpy(x.copy()))  # a model that changes its input in place must not change x
    expected = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
    session = open_session(tmp)
    got = session.run(None, {session.get_inputs()[0].name: x})
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
