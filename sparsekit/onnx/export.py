"""torch -> ONNX export with the checks that make the file trustworthy: onnx's checker and shape
inference, parity with torch in onnxruntime, and every pruned zero kept.

Example::

    info = export_onnx(model, "pruned.onnx", input_shape=(1, 784))
    assert info["parity"]["ok"] and info["zeros"]["zeros_ok"]
    info = export_int8(model, "pruned.onnx", (1, 784), data=bundle)  # the int8 model, at that path

Exporters: https://pytorch.org/docs/stable/onnx.html (``dynamo=True``: torch.export based;
``dynamo=False``: TorchScript based).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import json
import math
import numbers
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sparsekit.errors import ExportError, one_line, option
from sparsekit.logits import describe
from sparsekit.masks import unfollowed_masks
from sparsekit.model_input import id_vocab, id_vocabs
from sparsekit.onnx.files import (  # the metadata keys are read where the file is read (inspect), without torch
    COMPUTED_KEY,
    EXTERNAL_DATA_BYTES,
    REUSED_KEY,
    TIED_KEY,
    load_onnx,
    native_folder,
    native_path,
    onnx_sizes,
    publish,
    refuse_non_onnx_target,
    save_onnx,
    staging,
)
from sparsekit.onnx.quantize import quantize_int8, quantize_on_data
from sparsekit.onnx.quiet import quiet
from sparsekit.onnx.sessions import open_session, random_array
from sparsekit.onnx.tensors import FLOAT_TYPES, drop_weight_values, graph_tensors, positive_zeros
from sparsekit.precision import full_precision
from sparsekit.wrappers import int_dims, require_initialized, require_module, require_path, unwrap_wrappers

__all__ = ["EXPORTERS", "check_zeros", "export_int8", "export_onnx"]

EXPORTERS = ("auto", "dynamo", "torchscript")
# `auto` tries the TorchScript exporter first up to this opset (its own operator set ends at 20): it
# writes a small model in ~0.1 s where the dynamo exporter takes 1-3 s.
AUTO_TORCHSCRIPT_MAX_OPSET = 20
# torch's ONNX function library starts at opset 18: the dynamo exporter writes 18 and newer directly
# and converts to older opsets with onnx's version converter, which lacks many operators' adapters.
DYNAMO_OPSET = 18
# Opsets 21-23 add element types and new operators only, so the torchscript exporter's opset-20
# operators are valid under those version numbers (torch warns that it does not support them).
OPSETS = "13-23"  # what both exporters deliver, and the range of a recipe's export.opset


@full_precision  # (called inside the user's torch.autocast: sparsekit.precision)
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: Sequence[int] | Sequence[Sequence[int]],
    *,
    opset: int = 18,
    exporter: str = "auto",
    check_parity: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> dict[str, Any]:
    """Export ``model`` (in eval mode, on the CPU; its modes and device are restored after) to the ONNX
    file ``path`` at ONNX ``opset`` (default domain), for inputs of ``input_shape`` (batch first; the
    batch dim is exported dynamic), and verify the written file. A model whose forward takes several tensors takes
    one shape per input, in the forward's order (``[[1, 3, 32, 32], [1, 5]]`` for ``forward(image, meta)``): the
    file then has one float32 input per tensor (int64 for one that goes straight into an nn.Embedding: token ids),
    named as the forward's parameters, sharing the batch dim.

    The file appears at ``path`` only after ``onnx.checker`` and shape inference pass, with the
    ``sparsekit`` mark (see :func:`sparsekit.onnx.files.written_by_sparsekit`); models with more than
    1.8 GB of weights keep them in ``<path>.data`` beside it (dynamo exporter only). Parity: the
    model and onnxruntime run a seeded batch of 4 and are compared within ``rtol``/``atol``; a file that does not
    agree is still written and returned, with ``parity["ok"]`` False: check it (the command line warns).

    Opsets: the opset is read back from the written file, and a file of another opset is never
    returned. ``exporter="dynamo"`` writes opsets 18-23 directly; below 18 torch converts its graph
    with onnx's version converter, which handles only some operators, so when that conversion fails
    (or its file fails the checker or parity) the model is exported again with the torchscript exporter
    (not for models over 1.8 GB), and ``"exporter"``/``"fallback"`` say so. ``exporter="torchscript"``
    writes opsets 13-23 (21-23 with its opset-20 operators: those opsets only add types and operators).
    13-23 is the range sparsekit's recipes take and its tests cover; the exporters may deliver an opset outside
    it (the torchscript exporter's 9, dynamo's 24), which is returned as any other, unchecked by those tests.
    ``exporter="auto"`` (the default) takes the TorchScript exporter's file (10-30x faster on small
    models) when it is of the asked opset (13-20), agrees with torch and kept every zero, with the
    initializers it renamed while folding BatchNorm given back their torch names (``conv1.weight``, as
    the dynamo exporter names them); otherwise, and for models over 1.8 GB, it does what "dynamo" does.
    Nothing is printed: the exporters' output, warnings and log lines are discarded (see
    :func:`sparsekit.onnx.quiet.quiet`). Zeros are stored as +0.0 (a mask applied by multiplication, or
    BatchNorm folded with a negative scale, gives -0.0: the same value, but it compresses worse; see
    :func:`sparsekit.onnx.tensors.positive_zeros`).

    Returns ``{"path", "bytes", "gzip_bytes", "parity", "zeros", "opset", "exporter", "fallback", "seconds",
    "tracer_warnings"}``
    with sizes in bytes (external data included), ``parity`` = ``{"max_abs_diff", "ok", "rtol",
    "atol"}`` (None without ``check_parity``), ``zeros`` = :func:`check_zeros`, ``opset`` read from
    the file, ``exporter`` the one that wrote it and ``fallback`` why it is not the one asked for
    (None when it is), ``seconds`` the wall time spent exporting (``"export"``: the exporters, onnx's
    checker), checking (``"checks"``: parity in onnxruntime, zero counts) and measuring the file
    (``"sizes"``: its gzip size), ``tracer_warnings`` what the TorchScript tracer warned about while writing the
    file (a data-dependent branch or value baked into the trace: parity on random inputs cannot rule out that
    the file differs from the model on other inputs; empty for the dynamo exporter).
    Raises :class:`ExportError` for a bad shape, exporter, opset or tolerance, a model that fails on the input or
    that the exporters cannot handle, an opset that cannot be delivered (the message says which ones
    work), or an invalid graph; :class:`~sparsekit.errors.OutputError` when the disk is full,
    read-only or not writable, or ``path`` is an existing non-empty file not named ``.onnx`` that sparsekit did not
    export there (a checkpoint's path given by mistake). Nothing is written at ``path`` then.
    """
    require_module(model, "export_onnx")
    require_initialized(model, "export_onnx", ExportError)
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ExportError(f"opset must be an integer ({OPSETS}), got {opset!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        # rtol=-1 or NaN made the parity check fail on every file (np.allclose), a text failed inside numpy once the
        # file was written: a tolerance is a finite number >= 0. Any real number (numbers.Real): numpy's float32 and
        # int64 are no Python float or int, and np.allclose takes them.
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) or tol < 0:
            raise ExportError(f"{name} must be a finite number >= 0 (the parity check's tolerance), got {tol!r}")
    shapes = _validate_shapes(input_shape)
    require_path(path, "export_onnx(path=...)", "the arguments are (model, path, input_shape)")
    # the model inside torch.compile / DDP / DataParallel (the exporters fail on the wrappers), as save_model does
    model, _ = unwrap_wrappers(model)
    final = Path(path)
    refuse_non_onnx_target(final)
    if (unfollowed := unfollowed_masks(model, f"export_onnx({str(final)!r})")) is not None:
        warnings.warn(unfollowed, stacklevel=2)
    from sparsekit.modelio import non_finite_tensors  # here: modelio is not needed by an export otherwise

    if bad := non_finite_tensors(model):
        # The file then computes NaN / inf too, and parity agrees with torch's NaN: nothing else would say so.
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        warnings.warn(
            f"export_onnx({str(final)!r}): the weights hold NaN or inf values ({', '.join(bad[:4])}{more}), so the "
            "file computes NaN or inf as the model does; export finite weights (from before the training diverged)",
            stacklevel=2,
        )
    stateless = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is None]
    if stateless:
        # Parity holds (the file normalizes over its batch as torch does), so nothing else would say it: each
        # sample's output depends on the other samples of its batch, which no model served one request at a time can.
        warnings.warn(
            f"export_onnx({str(final)!r}): BatchNorm layer(s) {', '.join(map(repr, stateless[:5]))} keep no running "
            "statistics (track_running_stats=False), so in eval mode they normalize over the batch: each sample's "
            "output depends on the others in its batch, in torch and in the file; build them with "
            "track_running_stats=True and train, or use nn.LayerNorm / nn.GroupNorm",
            stacklevel=2,
        )
    # A private folder beside the target: same filesystem, so publishing is atomic, and an external
    # data file written under the final name keeps the relative location recorded in the graph.
    with staging(final) as work:
        n_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        external = n_bytes > EXTERNAL_DATA_BYTES
        if external and exporter == "torchscript":
            use = option("exporter", "dynamo")
            raise ExportError(f"{final}: model has {n_bytes / 1e9:.1f} GB of weights; use {use}")
        with _cpu_eval(model):
            x, names = _example_input(model, shapes)
            job = _Job(model, work, final.name, x, shapes, opset, external, check_parity, rtol, atol, names)
            try:
                written, used, fallback = _attempts(job, exporter, final)
            except ExportError as err:
                # A parametrization the exporters cannot trace (orthogonal's matrix_exp, a user's own): its tensor
                # is a fixed function of the parameters at inference, so a copy with it computed once exports the
                # same function (parity checks it). Only on failure: a file that exported keeps its layout.
                with _parametrizations_computed(model) as computed:
                    if computed is None:
                        raise
                    try:
                        written, used, fallback = _attempts(job, exporter, final)
                    except ExportError:
                        raise err from None
                # The exporter's reason, which may end in its own parenthesis, follows a colon: "(... did not
                # export) (No ONNX function ...)" read as two asides. A fallback of the retry (auto's choice of
                # dynamo) is kept after it.
                fallback = f"{computed}: {_reason(err).rstrip('. ')}" + (f"; then {fallback}" if fallback else "")
            start = time.perf_counter()
            zeros = written.zeros if written.zeros is not None else check_zeros(model, written.path, x)
            job.clock("checks", start)
        publish(written.path, final)
    start = time.perf_counter()
    info = {"path": str(final), **onnx_sizes(final)}  # + bytes, gzip_bytes
    job.seconds["sizes"] = time.perf_counter() - start
    return {
        **info, "parity": written.parity, "zeros": zeros, "opset": written.opset, "exporter": used,
        "fallback": fallback, "seconds": {k: round(v, 4) for k, v in job.seconds.items()},
        "tracer_warnings": list(written.tracer_warnings),
    }  # fmt: skip


def export_int8(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: Sequence[int],
    *,
    data: Any = None,
    fp32_path: str | os.PathLike[str] | None = None,
    opset: int = 18,
    exporter: str = "auto",
    fp32_storage: str | bool | None = None,
) -> dict[str, Any]:
    """Export ``model`` as :func:`export_onnx` does, quantize that fp32 file to int8 and write the int8
    model at ``path``; the fp32 file is kept only at ``fp32_path`` (None: not kept).

    ``fp32_storage``: once quantized, the fp32 file is stored as an export without int8 would ship it
    (:func:`~sparsekit.onnx.choose_storage`'s mode: sparse initializers when that is smaller), and its sizes
    (``bytes``, ``gzip_bytes``, ``int8["fp32_bytes"]``, ``int8["fp32_gzip_bytes"]``) are that file's, so the int8
    sizes are set against the fp32 file one would get (a pruned model's sparse-stored fp32 file can be the smaller
    one); None: the dense-stored export's.

    ``data``: a :class:`sparsekit.data.DataBundle` to calibrate on (static QDQ, with fp32 vs int8
    accuracy and top-1 agreement on its validation set, see
    :func:`sparsekit.onnx.quantize.quantize_on_data`), or None for dynamic quantization
    (:func:`sparsekit.onnx.quantize.quantize_int8`), then checked against the fp32 file on 32 seeded random
    normal inputs (``int8["check"]``: max abs difference and top-1 agreement, see :func:`_random_agreement`).
    Both files are built in private folders beside
    their targets and published only once the export, its checks and the quantization have all
    passed, int8 first; each carries the ``sparsekit`` mark.

    Returns :func:`export_onnx`'s result for the fp32 model (its ``"path"`` is ``fp32_path`` as a
    string, or None when it is not kept; ``bytes``/``gzip_bytes`` are the fp32 file's either way),
    with ``"int8"``: the quantization result, whose ``"path"`` is ``path``.
    Raises :class:`ExportError` as :func:`export_onnx` and :func:`~sparsekit.onnx.quantize.quantize_int8`
    do, and when ``fp32_path`` is ``path``; :class:`~sparsekit.errors.OutputError` for a full,
    read-only or unwritable disk, or a path that is an existing file not named ``.onnx`` (as :func:`export_onnx`).
    Nothing is written at either path then.
    """
    final = Path(path)
    keep = Path(fp32_path) if fp32_path is not None else None
    if keep is not None and os.path.abspath(keep) == os.path.abspath(final):
        raise ExportError(f"{keep}: is where the int8 model goes; keep the fp32 model under another name")
    for target in (final, keep):
        if target is not None:
            refuse_non_onnx_target(target)
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(staging(final))
        # The fp32 file is staged beside its own target, so publishing it is a rename on one filesystem;
        # named as it will be, so an external-data location recorded in it stays right.
        fp32_work = work if keep is None else stack.enter_context(staging(keep))
        fp32_tmp = fp32_work / (keep.name if keep is not None else final.with_suffix(".fp32.onnx").name)
        int8_tmp = work / final.name
        info = export_onnx(model, fp32_tmp, input_shape, opset=opset, exporter=exporter)
        if data is None:
            q = quantize_int8(fp32_tmp, int8_tmp)
            q["check"] = _random_agreement(fp32_tmp, int8_tmp, input_shape, id_vocab(model, input_shape))
        else:
            q = quantize_on_data(fp32_tmp, int8_tmp, data, input_shape=input_shape)
        if fp32_storage is not None:
            from .sparse_storage import choose_storage

            st = choose_storage(fp32_tmp, fp32_tmp, fp32_storage, level=info["gzip_level"])
            q["fp32_bytes"], q["fp32_gzip_bytes"], q["fp32_encoding"] = st["bytes"], st["gzip_bytes"], st["encoding"]
            info["bytes"], info["gzip_bytes"] = st["bytes"], st["gzip_bytes"]  # (the fp32 file's, as now stored)
        publish(int8_tmp, final)
        if keep is not None:
            publish(fp32_tmp, keep)
    info["path"] = None if keep is None else str(keep)
    q["path"] = str(final)
    return {**info, "int8": q}


RANDOM_CHECK_SAMPLES = 32  # random inputs the int8 file is compared with the fp32 one on, without data


def _random_agreement(fp32: Path, int8: Path, input_shape: Sequence[int], vocab: int | None = None) -> dict[str, Any]:
    """:func:`~sparsekit.onnx.quantize.output_agreement` of the int8 file with the fp32 one on seeded standard-normal
    inputs of ``input_shape`` (token ids uniform below ``vocab`` for a model that takes ids), in batches of its batch
    size (which a file exported with a fixed batch takes), with ``"inputs": "random normal"`` (or ``"random token
    id"``): all there is to compare on without data; real inputs may agree better or worse.
    Informational: a model whose outputs cannot be compared so (not batch-first, a run that fails) gets ``"error"``
    instead, and a difference that is not finite is None; the export stands either way."""
    from .quantize import output_agreement

    batch = max(1, int(input_shape[0]))
    rng = np.random.default_rng(0)
    n = max(batch, RANDOM_CHECK_SAMPLES - RANDOM_CHECK_SAMPLES % batch)
    dims = (n, *[int(d) for d in input_shape[1:]])
    # token ids below the vocabulary for a model whose input feeds an embedding (vocab), else normal values
    x = rng.standard_normal(dims).astype(np.float32) if vocab is None else rng.integers(0, vocab, dims)
    inputs = "random normal" if vocab is None else "random token id"
    try:
        res = output_agreement(fp32, int8, x, batch_size=batch)
    except (ExportError, ValueError, IndexError) as err:
        return {"inputs": inputs, "samples": n, "error": one_line(err, 200)}
    if not np.isfinite(res["max_abs_diff"]):
        res["max_abs_diff"] = None
    return {**res, "inputs": inputs}


@dataclasses.dataclass
class _Job:
    """What every export attempt of one :func:`export_onnx` call shares."""

    model: nn.Module
    work: Path
    name: str
    x: tuple[torch.Tensor, ...]  # the traced inputs (one per argument of the forward)
    shapes: list[list[int]]  # their shapes, batch first
    opset: int
    external: bool
    check_parity: bool
    rtol: float
    atol: float
    names: list[str]  # the file's output names (see _output_names)
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: {"export": 0.0, "checks": 0.0})
    torchscript_failed: str | None = None  # why auto's TorchScript attempt failed, when it did

    def clock(self, phase: str, start: float) -> None:
        self.seconds[phase] += time.perf_counter() - start


@dataclasses.dataclass
class _Written:
    path: Path
    opset: int | None  # the file's default-domain opset
    parity: dict[str, Any] | None  # None without check_parity or when the opset is not the one asked for
    zeros: dict[str, Any] | None = None  # check_zeros' result, when already known
    tracer_warnings: tuple[str, ...] = ()  # what the TorchScript tracer warned about (a branch baked in, ...)

    def delivers(self, opset: int) -> bool:
        return self.opset == opset and (self.parity is None or bool(self.parity["ok"]))


def _attempts(job: _Job, exporter: str, final: Path) -> tuple[_Written, str, str | None]:
    """The file ``exporter`` (or auto's choice) writes: ``(file, the exporter that wrote it, fallback)``."""
    written, used, fallback = _auto(job) if exporter == "auto" else (None, "", None)
    if written is not None:
        return written, used, fallback
    try:
        return _deliver(job, "dynamo" if exporter == "auto" else exporter, final)
    except _ExporterFailed as e:
        if job.torchscript_failed is None:
            raise
        # auto tried TorchScript first: the dynamo error's hint that TorchScript may succeed was false.
        raise _ExporterFailed(
            f"torch.onnx.export failed with both exporters: torchscript: {job.torchscript_failed}; dynamo: {e.reason}",
            e.reason,
        ) from e


@contextlib.contextmanager
def _parametrizations_computed(model: nn.Module) -> Iterator[str | None]:
    """Within: every parametrization (torch.nn.utils.parametrize) of ``model`` computed once and cached, so an
    exporter reads its tensor as a constant instead of tracing how it is computed; yields words for the fallback,
    None for a model without one (nothing is done then). The model itself is not changed (a copy could not be:
    removing a parametrization from a deep copy deletes the property of the class the original shares)."""
    from torch.nn.utils import parametrize

    found = [(n, m) for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if not found:
        yield None
        return
    with parametrize.cached(), torch.no_grad():
        for _, module in found:
            for tensor in module.parametrizations:
                getattr(module, tensor)  # computed now, into the cache the exporters then read
        shown = ", ".join(repr(n) for n, _ in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        yield f"exported with the parametrized tensors of {shown} computed once, as the model as it is did not export"


def _auto(job: _Job) -> tuple[_Written | None, str, str | None]:
    """``exporter="auto"``: the TorchScript exporter's file when it is as good as the dynamo one would
    be (asked opset, parity with torch, every zero kept), else ``(None, "", None)``: export with dynamo."""
    if job.external or not 13 <= job.opset <= AUTO_TORCHSCRIPT_MAX_OPSET:
        return None, "", None
    try:
        written = _write(job, "torchscript")
    except ExportError as e:
        job.torchscript_failed = _reason(e)
        return None, "", None  # the dynamo exporter handles what TorchScript tracing cannot
    # A tracer warning means the trace may hold one branch of data-dependent code or a constant that
    # should vary: parity on a few inputs cannot rule that out, so dynamo (which refuses such code) decides.
    if written.tracer_warnings or not written.delivers(job.opset):
        return None, "", None
    start = time.perf_counter()
    written.zeros = check_zeros(job.model, written.path, job.x)
    job.clock("checks", start)
    return (written, "torchscript", None) if written.zeros["zeros_ok"] else (None, "", None)


def _deliver(job: _Job, exporter: str, final: Path) -> tuple[_Written, str, str | None]:
    """Write the file at ``job.opset`` with ``exporter``, or with the torchscript exporter when the
    dynamo one cannot convert to it; returns the file, the exporter that wrote it and why that is not
    ``exporter`` (None when it is)."""
    opset = job.opset
    if exporter == "torchscript" or opset >= DYNAMO_OPSET:
        written = _write(job, exporter)
        if written.opset != opset:
            raise _undeliverable(job, final, f"the {exporter} exporter wrote opset {written.opset}")
        return written, exporter, None
    # The dynamo exporter below its own opset: torch's conversion may fail (it then keeps opset 18 and
    # only logs why), raise, or give a graph that the checker or the parity check rejects.
    dynamo: _Written | None = None
    try:
        dynamo = _write(job, "dynamo")
    except ExportError as e:
        problem = f"the dynamo exporter failed: {_reason(e)}"
    else:
        if dynamo.delivers(opset):
            return dynamo, "dynamo", None
        if dynamo.opset != opset:
            cause = _conversion_error(dynamo.path, opset)
            problem = f"the dynamo exporter wrote opset {dynamo.opset} (its conversion to {opset} failed"
            problem += f": {cause})" if cause else ")"
        else:
            diff = dynamo.parity["max_abs_diff"] if dynamo.parity else None
            problem = f"the dynamo exporter's conversion to opset {opset} changes the outputs (max |diff| {diff})"
    if job.external:
        raise _undeliverable(job, final, problem, "the torchscript exporter cannot export models over 1.8 GB")
    try:
        torchscript = _write(job, "torchscript")
    except ExportError as e:
        raise _undeliverable(job, final, problem, f"the torchscript exporter failed: {_reason(e)}") from e
    if torchscript.opset != opset:
        raise _undeliverable(job, final, problem, f"the torchscript exporter wrote opset {torchscript.opset}")
    if dynamo is not None and dynamo.opset == opset and not torchscript.delivers(opset):
        return dynamo, "dynamo", None  # neither file agrees with torch: keep the exporter asked for
    return torchscript, "torchscript", problem


def _undeliverable(job: _Job, final: Path, *problems: str) -> ExportError:
    """The error for an opset that no exporter wrote: what each one did, and the opsets that work."""
    works = f"{DYNAMO_OPSET}-23 with the dynamo exporter (older ones only where its conversion handles the model)"
    if not job.external:
        works += f", {OPSETS} with the torchscript exporter where the model's operators exist at that opset"
    what = "; ".join(problems)
    # Below the dynamo exporter's own opset the conversion down is what failed; from it on, the asked opset is
    # newer than the exporters write (opset=30 was told to ask for a higher one).
    direction = "higher" if job.opset < DYNAMO_OPSET else "lower"
    return ExportError(
        f"{final}: cannot write ONNX opset {job.opset}: {what}. Ask for a {direction} opset: the exporters support "
        f"{works}"
    )


class _ExporterFailed(ExportError):
    """torch.onnx.export raised; ``reason`` is the one line of why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _reason(e: ExportError) -> str:
    return e.reason if isinstance(e, _ExporterFailed) else str(e)


def _write(job: _Job, exporter: str) -> _Written:
    """One export attempt into its own folder; checked, and compared with torch when its opset is
    the one asked for."""
    tmp = job.work / exporter / job.name
    tmp.parent.mkdir(exist_ok=True)  # `auto` may try TorchScript, then dynamo, then TorchScript again
    start = time.perf_counter()
    try:
        warned = _export(job.model, tmp, job.x, job.opset, exporter, job.external, job.names)
        # (marked for where it is published: the staging folder's file of the same name, see files.mark)
        opset = _check_file(tmp, job.model, restore_names=exporter == "torchscript", at=job.work / job.name, x=job.x)
    finally:
        job.clock("export", start)
    parity = None
    if job.check_parity and opset == job.opset:
        start = time.perf_counter()
        parity = _parity(job.model, tmp, job.shapes, job.rtol, job.atol)
        job.clock("checks", start)
    return _Written(tmp, opset, parity, tracer_warnings=warned)


def _conversion_error(path: Path, opset: int) -> str | None:
    """Why onnx's version converter cannot take the file at ``path`` to ``opset`` (torch only logs it)."""
    try:
        with quiet():
            onnx.version_converter.convert_version(load_onnx(path, load_external_data=False), opset)
    except Exception as e:  # noqa: BLE001 - only a reason to quote
        # "/project/onnx/version_converter/BaseConverter.h:66: adapter_lookup: Assertion `false` failed: No ..."
        return re.sub(r"^.*Assertion `[^`]*` failed:\s*", "", _root_cause(e)) or None
    return None


def check_zeros(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    example_input: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Check that every Linear/Conv weight of ``model`` kept its zeros in the ONNX file
    ``onnx_path`` (read with its external data).

    Exporters rename, transpose and fold weights, so each torch weight is matched in turn by name,
    by identical values, by shape with the same zero count, and finally by shape alone (which then
    reports the mismatch), against every floating-point tensor the file stores. A weight without
    zeros that cannot be found is listed but not a failure, and so is one the model's output does not depend
    on when ``example_input`` (the exported input, or a tuple of the inputs of a forward of several) is given:
    an auxiliary head that selecting the logits (``model.output``) leaves out of the graph. Returns
    ``{"zeros_ok", "layers": [{"name", "onnx_name", "torch_zeros", "onnx_zeros", "ok"}]}``. Raises
    :class:`ExportError` when the file is not ONNX or its external data is outside its folder or unreadable.
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
    missing = [name for name, _ in weights if name not in found and zeros[name]]
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input or ())
    left_out = _off_the_output(model, inputs, missing) if missing and inputs else set()
    layers = []
    for name, weight in weights:
        key = found.get(name)
        onnx_zeros = None if key is None else int(np.count_nonzero(inits[key] == 0))
        ok = _zeros_kept(inits[key], weight) if key is not None else zeros[name] == 0 or name in left_out
        layers.append({"name": name, "onnx_name": key, "torch_zeros": zeros[name], "onnx_zeros": onnx_zeros, "ok": ok})
    return {"zeros_ok": all(layer["ok"] for layer in layers), "layers": layers}


def _zeros_kept(stored: np.ndarray, w: np.ndarray) -> bool:
    """Is every zero of the torch weight ``w`` zero in ``stored``, its initializer (as is or, 2-D, transposed)?
    A BatchNorm folded into a convolution scales its output channels: a scale of 0 (a pruned BatchNorm weight)
    adds zeros, and is no zero lost."""
    zero = w == 0
    if stored.shape == w.shape and not np.any(stored[zero]):
        return True
    return w.ndim == 2 and stored.shape == w.T.shape and not np.any(stored.T[zero])


def _validate_shapes(input_shape: Any) -> list[list[int]]:
    """``input_shape`` as one shape per input: ``[1, 784]`` is one, ``[[1, 3, 32, 32], [1, 5]]`` one per argument of a
    forward that takes several."""
    if (
        isinstance(input_shape, (list, tuple))
        and input_shape
        and all(isinstance(s, (list, tuple)) for s in input_shape)
    ):
        # One input among several may be one value per sample (a batch of lengths: [1]); a lone input of one dim is
        # more likely a shape missing its batch dim ([784]), so it still needs two.
        return [_validate_shape(s, min_dims=1) for s in input_shape]
    return [_validate_shape(input_shape)]


def _validate_shape(input_shape: Sequence[int], min_dims: int = 2) -> list[int]:
    # Integers only (an int, a numpy or torch integer): int() cut 20.5 to 20 and read "20" and True as numbers, so
    # the file was written for a shape the caller did not give, without a word.
    shape = int_dims(input_shape, min_dims=min_dims)
    if shape is None:
        example = "[1, 784], or [1] for one value per sample" if min_dims == 1 else "[1, 784]"
        raise ExportError(
            f"input_shape must be a list of integers, positive and with the batch dim first (e.g. {example}), got "
            f"{input_shape!r}"
        )
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


def _example_input(model: nn.Module, shapes: list[list[int]]) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """The traced inputs (batch 2: a batch of 1 invites the tracer to specialise the dim away), one per shape, and
    the names of the model's outputs (:func:`_output_names`)."""
    xs = tuple(torch.from_numpy(a) for a in _input_arrays(model, shapes, 2, seed=0))
    shape = shapes[0] if len(shapes) == 1 else shapes
    x = xs[0]
    try:
        with torch.no_grad():
            out = model(*xs)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - the user's model on a random input: bad input, not our bug
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})
        if dtypes and dtypes != ["float32"]:
            # the shape is not what is wrong: a .double() or .half() model does not take float32 inputs
            raise ExportError(
                f"the model's parameters are {', '.join(dtypes)}, and sparsekit exports float32 models (what "
                "onnxruntime's CPU kernels and the parity check use): export model.float() instead "
                f"({one_line(e, 120)})"
            ) from None
        from ..modelio import compiled_module, fixed_batch_words

        if len(shapes) == 1 and _runs(model, [1, *shapes[0][1:]]):
            if compiled_module(model):
                raise ExportError(f"input shape {shape}: {fixed_batch_words(e)}") from None
            # The shape given is right, the batch of 2 traced is not: "fails on input of shape [1, 8]; give the
            # shape it takes" asked for the shape the caller had given, which no shape could satisfy.
            raise ExportError(
                f"input shape {shape}: the model runs on a batch of 1 but not of 2 ({one_line(e, 120)}): either the "
                f"first dimension is not the batch (give the whole input shape, batch first: {option('input_shape')}), "
                "or the forward fixes the batch size (a view or reshape to a constant such as x.view(1, -1)); "
                "sparsekit exports with a dynamic batch dimension and measures several batch sizes, so write it for "
                "any batch (x.flatten(1), x.view(x.size(0), -1))"
            ) from None
        from ..surgery import several_inputs_advice

        if len(shapes) == 1 and several_inputs_advice(e):
            # forward(image, meta): one tensor of any shape fails, so "give the shape it takes" could not help.
            raise ExportError(
                f"the model's forward takes several inputs ({one_line(e, 200)}): give one shape per input, in the "
                "forward's order (input_shape=[[1, 3, 32, 32], [1, 5]] for forward(image, meta))"
            ) from None
        # A shape its first layer suggests, when the model runs on it (1,256 given for a Conv1d of [N, 1, 256]
        # inputs: the channels left out), as `sparsekit inspect` and the recipe's input shape are told.
        from ..inspection import shapes_to_try

        takes = next(
            (
                s
                for s in (shapes_to_try(model, list(shapes[0])) if len(shapes) == 1 else [])
                if _runs(model, s) and _runs(model, [2, *s[1:]])
            ),
            None,
        )
        advice = (
            f"the model takes {takes} ({option('input_shape', str(takes))})"
            if takes
            else f"give the shape it takes ({option('input_shape')})"
        )
        msg = (
            f"the model fails on a random {'int64 (token id)' if x.dtype == torch.long else 'float32'} input of shape "
            f"{shape} ({one_line(e, 200)}); {advice}. Export and its parity check feed random normal values (token "
            "ids below the vocabulary to a model whose input goes straight into an nn.Embedding), so a model that "
            "accepts only some values (ids it casts from a float input for an Embedding, say) cannot be exported here"
        )
        raise ExportError(msg) from None
    return xs, _output_names(out)


def _input_arrays(model: nn.Module, shapes: list[list[int]], batch: int, seed: int) -> list[np.ndarray]:
    """Seeded inputs of ``shapes`` at ``batch``: :func:`_input_array` for a forward of one input; for several,
    standard normal float32 values for each, or int64 ids below the vocabulary for one that goes into an embedding
    (:func:`~sparsekit.model_input.id_vocabs`: ``forward(tokens, lengths)``)."""
    if len(shapes) == 1:
        return [_input_array(model, [batch, *shapes[0][1:]], seed=seed)]
    vocabs = id_vocabs(model, shapes)
    return [
        random_array([batch, *s[1:]], seed=seed + i)
        if vocab is None
        else np.random.default_rng(seed + i).integers(0, vocab, size=(batch, *s[1:]), dtype=np.int64)
        for i, (s, vocab) in enumerate(zip(shapes, vocabs, strict=True))
    ]


def _input_names(model: nn.Module, count: int) -> list[str]:
    """The file's input names: ``input`` for one; for several, the forward's own parameter names (``image``,
    ``meta``), else ``input0``, ``input1``, ..."""
    if count == 1:
        return ["input"]
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values() if p.kind in _POSITIONAL]
    except (TypeError, ValueError):
        params = []
    named = params[:count]
    if len(named) < count or len(set(named)) < count or {"input", "output"} & set(named):
        return [f"input{i}" for i in range(count)]  # (*args, or a name the outputs may take)
    return named


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _input_array(model: nn.Module, shape: list[int], seed: int) -> np.ndarray:
    """Seeded inputs of ``shape`` for ``model``: standard normal float32 values, or for a model that takes token ids
    (:func:`~sparsekit.model_input.id_vocab`) int64 ids drawn uniformly below its vocabulary, so the file is exported
    with an int64 input and its parity is checked on ids that index real rows."""
    vocab = id_vocab(model, shape)
    if vocab is None:
        return random_array(shape, seed=seed)
    return np.random.default_rng(seed).integers(0, vocab, size=tuple(shape), dtype=np.int64)


def _runs(model: nn.Module, shape: list[int]) -> bool:
    """Whether ``model`` runs on a random float32 input of ``shape``."""
    try:
        with torch.no_grad():
            model(torch.from_numpy(_input_array(model, shape, seed=0)))
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - the user's model: a failure is the answer, not our bug
        return False
    return True


def _output_names(out: Any) -> list[str]:
    """The ONNX output names for the model's output ``out``: a dict of tensors gives its keys, in the order the
    exporters flatten it (insertion order), so a downstream user reads ``logits`` and ``aux``, not ``output``
    for whichever came first and the exporter's number for the rest; a tuple or list of tensors gives ``output``,
    ``output1``, ``output2``, ... (the exporters' own names for the later ones, ``16`` from TorchScript,
    ``linear_2`` from dynamo, changed with the exporter ``auto`` picked, so with the opset); anything else gives
    ``["output"]``."""
    if (
        isinstance(out, dict)
        and out
        and all(isinstance(k, str) and k and isinstance(v, torch.Tensor) for k, v in out.items())
        and "input" not in out
    ):
        return list(out)
    if isinstance(out, tuple | list) and len(out) > 1 and all(isinstance(v, torch.Tensor) for v in out):
        return ["output", *(f"output{i}" for i in range(1, len(out)))]
    return ["output"]


def _export(
    model: nn.Module,
    tmp: Path,
    x: tuple[torch.Tensor, ...],
    opset: int,
    exporter: str,
    external: bool,
    names: Sequence[str] = ("output",),
) -> tuple[str, ...]:
    """Write ``tmp`` with outputs named ``names``; returns the TorchScript tracer's warnings (none for dynamo)."""
    try:
        # (the TorchScript exporter hands the path to C++ too: see native_folder)
        with quiet(), warnings.catch_warnings(record=True) as caught, native_folder(tmp.parent) as folder:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            inputs = _input_names(model, len(x))
            if exporter == "dynamo":
                batch = torch.export.Dim("batch")
                torch.onnx.export(
                    model, x, str(folder / tmp.name), dynamo=True, external_data=external, verbose=False,
                    dynamic_shapes=tuple({0: batch} for _ in x), input_names=inputs, output_names=list(names),
                    opset_version=opset,
                )  # fmt: skip
            else:
                axes = {**{name: {0: "batch"} for name in inputs}, names[0]: {0: "batch"}}
                torch.onnx.export(
                    model, x, str(folder / tmp.name), dynamo=False, dynamic_axes=axes,
                    input_names=inputs, output_names=list(names), opset_version=opset,
                )  # fmt: skip
        return tuple(str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning))
    except Exception as e:
        hint = f" ({option('exporter', 'torchscript')} may succeed)" if exporter == "dynamo" else ""
        reason = _root_cause(e)
        raise _ExporterFailed(f"torch.onnx.export with exporter={exporter!r} failed{hint}: {reason}", reason) from e


def _root_cause(e: BaseException) -> str:
    # The exporters wrap the real reason in pages of advice with ANSI colours; keep one line of it.
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_file(
    tmp: Path,
    model_: nn.Module | None = None,
    *,
    restore_names: bool = False,
    at: Path | None = None,
    x: tuple[torch.Tensor, ...] | None = None,
) -> int | None:
    """Check the file and return its default-domain opset (None when it names none). With the torch
    ``model``, its tied layers are recorded (:data:`TIED_KEY`; with the traced input ``x``, also the layers
    called more than once, :data:`REUSED_KEY`) and, with ``restore_names`` (TorchScript exports), weights the
    exporter renamed are given their torch names back."""
    # Negative zeros are stored as +0.0 (see positive_zeros): equal values, a smaller compressed file.
    # The dynamo exporter stamps every node with its Python stack trace (local paths in a file meant
    # to be shipped, ~1 kB per node that blurs dense-vs-pruned size comparisons) and the graph with
    # torch.export's signature: debugging aids, dropped. Weights in
    # external data are not loaded, so re-saving keeps their references as they are. Saved always,
    # for the mark that tells later commands sparsekit wrote the file.
    model = load_onnx(tmp, load_external_data=False)
    _strip_exporter_metadata(model.graph)
    positive_zeros(model, tmp.parent)  # -0.0 from masks and folded BatchNorm: equal values that gzip codes worse
    if model_ is not None and restore_names:
        _restore_names(model.graph, model_)
    if model_ is not None:
        _record_ties(model, model_, x)
    save_onnx(model, tmp, what="exported model", at=at)
    # infer_shapes copies the whole model twice over (to bytes and back): once saved, the in-memory copy
    # sheds the data of large initializers (shapes and types are what inference reads of them; a Reshape's
    # target is small), which kept a large model's export peak at ~4x its weights (memory_scaling.py).
    drop_weight_values(model)
    native = native_path(tmp)  # (a path onnx cannot open is no fault of the graph's: said as itself)
    try:
        onnx.checker.check_model(native)  # the path form also handles external data
        onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        raise ExportError(f"the exported ONNX graph is invalid: {e}") from e
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _record_ties(model: onnx.ModelProto, torch_model: nn.Module, x: tuple[torch.Tensor, ...] | None = None) -> None:
    from ..layers import computed_weight, layer_kind
    from ..surgery import tied_parameters

    groups = [[m for m, p in holders] for holders in tied_parameters(torch_model) if holders[0][1] == "weight"]
    reused = _reused_layers(torch_model, x) if x is not None else []
    computed = [
        n for n, m in torch_model.named_modules() if layer_kind(m) is not None and computed_weight(m) is not None
    ]
    for i in reversed(range(len(model.metadata_props))):
        if model.metadata_props[i].key in (TIED_KEY, REUSED_KEY, COMPUTED_KEY):
            del model.metadata_props[i]
    if groups:
        model.metadata_props.add(key=TIED_KEY, value=json.dumps(groups))
    if reused:
        model.metadata_props.add(key=REUSED_KEY, value=json.dumps(reused))
    if computed:
        model.metadata_props.add(key=COMPUTED_KEY, value=json.dumps(computed))


def _reused_layers(torch_model: nn.Module, x: tuple[torch.Tensor, ...]) -> list[str]:
    """The weighted modules one forward pass on ``x`` calls more than once (a block applied twice): each call is
    a node of its own in the graph, all reading the one stored weight, which `sparsekit inspect` must count once."""
    calls: dict[str, int] = {}

    def counter(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [
        module.register_forward_hook(counter(name))
        for name, module in torch_model.named_modules()
        if name and isinstance(getattr(module, "weight", None), torch.Tensor)
    ]
    try:
        with torch.no_grad():
            torch_model(*x)  # the exporter just traced this very call: it runs
    except Exception:  # noqa: BLE001 - a record for inspect only: without it, each call counts (as before)
        return []
    finally:
        for handle in handles:
            handle.remove()
    return sorted(name for name, n in calls.items() if n > 1)


def _restore_names(graph: onnx.GraphProto, model: nn.Module) -> None:
    """Rename weights the TorchScript exporter called ``onnx::Conv_40`` (a Conv with BatchNorm folded
    in) after the module its node belongs to: the node ``/layer1/conv1/Conv`` (or, inside an
    ``nn.Sequential``, ``/features/features.0/Conv``) reads ``layer1.conv1.weight``. Only a weight read
    by that one node, equal to the module's tensor or, for a convolution, that tensor scaled per output
    channel (BatchNorm folded into it), and only to a name the graph does not use yet: a wrong name is
    worse than ``onnx::``. Biases keep their names (a folded bias is not the module's)."""
    modules = dict(model.named_modules())
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    taken = set(inits) | {v for n in graph.node for v in n.output} | {i.name for i in graph.input}
    renames: dict[str, str] = {}
    for node in graph.node:
        old = node.input[1] if len(node.input) > 1 else ""
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not old.startswith("onnx::"):
            continue
        name = _scope_module(node.name, modules)
        tensor = getattr(modules.get(name or ""), "weight", None)
        new = _weight_name(name or "")
        if name is None or not isinstance(tensor, torch.Tensor) or old not in inits or readers.get(old) != 1:
            continue
        conv_axis = {"Conv": 0, "ConvTranspose": 1}.get(node.op_type)
        if new not in taken and _same_weight(numpy_helper.to_array(inits[old]), tensor, conv_axis):
            renames[old] = new
            taken.add(new)
    for old, new in renames.items():
        inits[old].name = new
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]


def _scope_module(node_name: str, modules: dict[str, nn.Module]) -> str | None:
    """The module a TorchScript node name's scope names: ``/a/b/Conv`` is ``a.b``. A child of an
    ``nn.Sequential`` (or ModuleList) is scoped as its container's name plus its index, under the container:
    ``/features/features.0/Conv`` is ``features.0``, ``/blocks/blocks.0/dw/Conv`` ``blocks.0.dw`` and
    ``/body/body.0/proj/proj.0/Conv`` ``body.0.proj.0``."""
    parts = node_name.strip("/").split("/")[:-1]
    path = ""
    for part in parts:
        head, _, last = path.rpartition(".")
        if path and part.startswith(f"{last}."):  # "proj.0" under ".../proj": the container's own child
            path = f"{head}.{part}" if head else part
        else:
            path = f"{path}.{part}" if path else part
    for name in (path, ".".join(parts), parts[-1] if parts else ""):
        if name and name in modules:
            return name
    return None


def _same_weight(stored: np.ndarray, tensor: torch.Tensor, conv_axis: int | None) -> bool:
    """``stored`` is the torch ``tensor``, or (``conv_axis`` given) it scaled by one factor per output
    channel along that axis, zeros where it has zeros."""
    w = tensor.detach().cpu().numpy()
    if stored.shape != w.shape or stored.dtype != w.dtype:
        return False
    if np.array_equal(stored, w):
        return True
    if conv_axis is None or not np.array_equal(stored == 0, w == 0):
        return False
    s = np.moveaxis(stored, conv_axis, 0).reshape(w.shape[conv_axis], -1).astype(np.float64)
    t = np.moveaxis(w, conv_axis, 0).reshape(s.shape).astype(np.float64)
    # One factor per output channel: the ratios over a row's nonzeros agree (rows of zeros say nothing).
    ratio = np.divide(s, t, out=np.full_like(s, np.nan), where=t != 0)
    rows = ~np.isnan(ratio).all(axis=1)
    if not rows.any():
        return True
    lo, hi = np.nanmin(ratio[rows], axis=1), np.nanmax(ratio[rows], axis=1)
    return bool(np.all(hi - lo <= 1e-4 * np.maximum(np.abs(lo), np.abs(hi))))


def _strip_exporter_metadata(graph: onnx.GraphProto) -> bool:
    """Drop the exporter's debug metadata: every node's (the dynamo exporter's stack traces), and the
    ``pkg.torch.*`` entries of the graph and its inputs, outputs and value infos (torch.export's graph
    signature, range constraints and original names: ~0.5 kB gzip, 0.7% of LeNet-300-100's file at 95%
    sparsity). Returns whether anything was dropped."""
    changed = False
    for holder in [graph, *graph.input, *graph.output, *graph.value_info]:
        props = holder.metadata_props
        for i in reversed(range(len(props))):
            if props[i].key.startswith(_EXPORTER_METADATA):
                del props[i]
                changed = True
    for node in graph.node:
        if len(node.metadata_props):
            del node.metadata_props[:]
            changed = True
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                changed = _strip_exporter_metadata(sub) or changed
    return changed


# The key prefix of torch's exporter metadata (graph signature, original node names): debugging aids only.
_EXPORTER_METADATA = "pkg.torch."

# Parity batches: the trace used 2, so an odd size and the deployment favourite 1 catch graphs that kept
# the traced batch size or an even-size branch; 4 is the size earlier versions checked.
PARITY_BATCHES = (1, 3, 4)


def _parity(model: nn.Module, tmp: Path, shapes: list[list[int]], rtol: float, atol: float) -> dict[str, Any]:
    """torch vs onnxruntime on seeded inputs of each of :data:`PARITY_BATCHES`: ``{"max_abs_diff", "ok",
    "rtol", "atol", "error", "max_abs_output"}``, ``error`` saying why outputs could not be compared (else None),
    ``max_abs_output`` the largest |torch output| (the scale ``rtol`` applies to; None when not finite)."""
    session = open_session(tmp)
    result: dict[str, Any] = {
        "max_abs_diff": None,
        "ok": False,
        "rtol": rtol,
        "atol": atol,
        "error": None,
        "max_abs_output": None,
    }
    worst, ok, scale = 0.0, True, 0.0
    for batch in PARITY_BATCHES:
        xs = _input_arrays(model, shapes, batch, seed=batch)
        with torch.no_grad():
            # (copies: a model that changes its input in place must not change what onnxruntime is fed)
            out = model(*(torch.from_numpy(x.copy()) for x in xs))
        leaves = _tensors(out)
        if leaves is None:
            result["error"] = f"the model returns {describe(out)}, which holds something other than tensors"
            return result
        expected = [t.numpy() for t in leaves]
        try:
            got = session.run(None, {i.name: x for i, x in zip(session.get_inputs(), xs, strict=False)})
        except Exception as e:  # noqa: BLE001 - e.g. a traced graph that kept the batch size it was traced with
            result["error"] = f"onnxruntime cannot run the file on a batch of {batch}: {one_line(e, 200)}"
            return result
        if [g.shape for g in got] != [e.shape for e in expected]:
            differ = f"{[list(g.shape) for g in got]} vs torch {[list(e.shape) for e in expected]}"
            result["error"] = f"output shapes differ on a batch of {batch}: {differ}"
            return result
        pairs = list(zip(got, expected, strict=True))
        # np.max, not max(): Python's max(0.0, nan) is 0.0, which reported a file whose outputs are NaN where torch's
        # are numbers (or a model whose outputs are all NaN) as "max diff 0 (FAILED)".
        worst = float(np.max([worst, *(_max_abs_diff(g, e) for g, e in pairs)]))
        # The scale skips torch's own NaN (a passed parity's "outputs up to X" lost its X to one NaN output).
        scale = float(np.max([scale, *(float(np.max(np.abs(e[~np.isnan(e)]), initial=0.0)) for e in expected)]))
        # NaN where torch gives NaN (log of a negative input, say) is the file computing what the model does.
        ok = ok and all(np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True) for g, e in pairs)
    # NaN is not valid JSON: leave None ("not comparable"); allclose already says not ok.
    result["max_abs_diff"] = worst if np.isfinite(worst) else None
    result["max_abs_output"] = scale if np.isfinite(scale) else None
    result["ok"] = ok
    return result


def _max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest |got - expected|: 0 where both are NaN or the same inf (they agree), inf where only one is
    NaN or inf, or they are opposite infs."""
    if got.dtype.kind not in "fc" or expected.dtype.kind not in "fc":
        return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)), initial=0.0))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(got - expected)
    agree = (got == expected) | (np.isnan(got) & np.isnan(expected))
    return float(np.max(np.where(agree, 0.0, np.where(np.isnan(diff), np.inf, diff)), initial=0.0))


def _tensors(out: Any) -> list[torch.Tensor] | None:
    """The tensors of one model output in the order the ONNX exporters write them as graph outputs
    (a tuple / list in order, a dict's values in insertion order, nested alike); None when ``out`` holds
    anything that is not a tensor. A None part is skipped: both exporters leave it out of the graph's outputs
    (an optional ``aux`` a model returns as None), so the outputs after it still pair up."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        parts = [_tensors(v) for v in out if v is not None]
        return None if any(p is None for p in parts) else [t for p in parts for t in p or []]
    return None


def _off_the_output(model: nn.Module, x: tuple[torch.Tensor, ...], names: list[str]) -> set[str]:
    """Of the weights ``names`` (``layer.weight``), those the model's output on ``x`` does not depend on (no
    autograd path: not in the exported graph). Frozen weights are followed too; their flags are restored."""
    weights = [model.get_parameter(name) for name in names]
    frozen = [w for w in weights if not w.requires_grad]
    for w in frozen:
        w.requires_grad_(True)
    try:
        with torch.enable_grad():
            out = model(*x)
            if not isinstance(out, torch.Tensor):
                return set()
            grads = torch.autograd.grad(out.sum(), weights, allow_unused=True)
    finally:
        for w in frozen:
            w.requires_grad_(False)
    return {name for name, grad in zip(names, grads, strict=True) if grad is None}


def _prunable_weights(model: nn.Module) -> Iterator[tuple[str, np.ndarray]]:
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and id(module.weight) not in seen:
            seen.add(id(module.weight))  # tied weights are one initializer in ONNX
            yield _weight_name(name), module.weight.detach().cpu().numpy()


def _weight_name(module: str) -> str:
    """The state_dict name of the weight of the module named ``module``: ``weight`` for a model that is one layer
    itself (its name is ""), whose weight was reported (and renamed in the file) as ``.weight``."""
    return f"{module}.weight" if module else "weight"


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
