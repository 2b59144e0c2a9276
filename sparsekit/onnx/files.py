"""ONNX files on disk: reading them safely, marking, saving and publishing them, and their sizes.

Every reader goes through :func:`load_onnx`, which refuses external data outside the model's folder
before any of it is opened. Every writer stages its output in a private folder beside the target
(:func:`staging`), saves it with sparsekit's mark (:func:`save_onnx`) and moves it into place with
its external-data files (:func:`publish`), so a target is either the old file or the complete new
one. Statistics of a file (sizes here, counts in :mod:`sparsekit.onnx.stats`, MACs in
:mod:`sparsekit.onnx.graph`) are computed once per version of the file (:func:`memoized`).

External data: https://onnx.ai/onnx/repo-docs/ExternalData.html (a tensor's bytes in another file,
named by a path relative to the model's folder).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import itertools
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx.external_data_helper import (
    convert_model_to_external_data,
    load_external_data_for_tensor,
    write_external_data_tensors,
)

from sparsekit.errors import ExportError, OutputError
from sparsekit.fsutil import (
    GIT_LFS_POINTER,
    STAGING_MARK,
    TEMP_SUFFIX,
    atomic_path,
    empty_file,
    lock_folder,
    near_file,
    sigint_deferred,
    temp_prefix,
    temp_shape,
    text_start,
    unlock_folder,
    writing,
)
from sparsekit.onnx.compress import gzip_size_of_files
from sparsekit.onnx.tensors import external_locations, model_tensors

__all__ = [
    "EXTERNAL_DATA_BYTES",
    "GZIP9_MAX_BYTES",
    "GZIP_LEVEL",
    "MARK_KEY",
    "check_external_data",
    "clear_memo",
    "external_data_files",
    "gzip_level",
    "gzip_size",
    "load_onnx",
    "mark",
    "memoized",
    "native_folder",
    "native_path",
    "not_utf8",
    "onnx_sizes",
    "publish",
    "save_onnx",
    "staging",
    "written_by_sparsekit",
]

PathLike = str | os.PathLike[str]
T = TypeVar("T")


def native_path(path: PathLike) -> str:
    """``path`` as the str that onnx's and onnxruntime's C++ code opens: they encode a str as UTF-8 whatever
    the locale, while Python names files in the locale's encoding. Under a non-UTF-8 locale (LANG=de_DE.ISO-8859-1)
    ``str(path)`` of a file named ``ü.onnx`` in UTF-8 bytes reached them as other bytes ("Load model ...
    failed. File doesn't exist", "the exported ONNX graph is invalid"). The file's own bytes, read as UTF-8,
    are the name they look up. A name whose bytes are not UTF-8 cannot be given to them at all."""
    shown = not_utf8(path)
    if shown is not None:
        raise ExportError(
            f"{shown}: onnx and onnxruntime open files by UTF-8 names, and this path is not valid UTF-8; rename it "
            "(or its folder) with UTF-8 or ASCII characters"
        )
    return os.fsencode(path).decode("utf-8")


def not_utf8(path: PathLike) -> str | None:
    """None when ``path``'s bytes are UTF-8 (a name onnx's C++ code can open, :func:`native_path`), else the path
    to show in a message, its other bytes as the replacement character."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return os.fsdecode(raw).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return None


@contextlib.contextmanager
def native_folder(folder: PathLike) -> Iterator[Path]:
    """``folder`` under a name that Python and onnx's C++ code open alike, for onnxruntime functions that open
    the same path both ways (the int8 quantizer: shape inference in C++, loading and saving in Python), where
    no one str serves both (:func:`native_path`). Under a non-UTF-8 locale, a non-ASCII folder is reached through
    an ASCII-named link in the temp folder; otherwise (or when no link can be made there) ``folder`` itself."""
    folder = Path(folder)
    text = str(folder.resolve())
    if text.encode("utf-8", "surrogatepass") == os.fsencode(text):  # the bytes C++ opens are the folder's
        yield folder
        return
    tmp = None
    try:
        tmp = tempfile.mkdtemp(prefix="sparsekit-")
        link = Path(tmp) / "d"
        link.symlink_to(folder.resolve(), target_is_directory=True)
    except OSError:  # (an unwritable temp folder: the call goes on as before, naming the folder itself)
        link = folder
    try:
        yield link
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# Protobuf caps a single file at 2 GB; above this many bytes of weights, they go to external data.
EXTERNAL_DATA_BYTES = int(1.8e9)
# metadata_props key of every ONNX file sparsekit writes; the value is the sparsekit version and a hash.
MARK_KEY = "sparsekit"
# (The keys below are here, not in onnx.export beside the code that writes them, so that reading an .onnx file
# (`sparsekit inspect x.onnx`) does not import torch, as onnx.export does: ~1.5 s.)
#: metadata_props key listing the layers that share one weight (tied), as a JSON list of lists of module names:
#: an exporter stores equal tensors once too, so the graph alone cannot tell a tie from equal values.
TIED_KEY = "sparsekit.tied_layers"


#: metadata_props key listing the layers the forward pass calls more than once (one weight, one node per call),
#: as a JSON list of module names: the graph alone cannot tell a reused layer from equal layers stored once.
REUSED_KEY = "sparsekit.reused_layers"


#: metadata_props key listing the Linear/Conv layers whose weight the forward pass computes (weight_norm,
#: spectral_norm, another parametrization), as a JSON list of module names: `inspect` gives them no row, as on
#: the torch side, even where the int8 quantizer folded the computation into a stored weight.
COMPUTED_KEY = "sparsekit.computed_layers"
# The zlib level of the gzip sizes sparsekit reports: 9 (`gzip -9`) for files up to GZIP9_MAX_BYTES, 6
# (the `gzip` tool's default) above. On LeNet-300-100 at 90% (1 MB, dense storage) level 9 is 18% smaller
# than level 6 (154 vs 188 kB) and takes ~0.3 s. On a 135 MB MLP file with 90% of its weights zero
# (benchmarks/memory_scaling.py) level 9 took 8.6 s for a file 1.2% smaller than level 6 (1.2 s), and 85 s
# on another 90% sparse file where level 6 took 5.3 s: level 9's long match search degrades on the zero
# runs of unstructured sparsity, so its cost is bounded by the file size it is used for. Level 1 is 2-4x
# faster than 6 but 19-37% larger, which would misstate what gzip makes of the file.
GZIP_LEVEL = 6
GZIP9_MAX_BYTES = 16 << 20


def gzip_level(nbytes: int) -> int:
    """The zlib level sizes of ``nbytes`` raw bytes are reported at: 9 up to :data:`GZIP9_MAX_BYTES`
    (16 MiB), :data:`GZIP_LEVEL` (6) above."""
    return 9 if nbytes <= GZIP9_MAX_BYTES else GZIP_LEVEL


# --- reading ---------------------------------------------------------------------------------------


def load_onnx(path: PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read the ONNX model at ``path``, with its external data unless ``load_external_data=False``
    (then external tensors keep their references and no data file is opened).

    Raises :class:`ExportError` naming the file when it is missing or not an ONNX model, when a tensor
    keeps its data outside the model's folder (see :func:`check_external_data`; checked before any
    external file is opened) or when its external data cannot be read.
    """
    return _read(Path(path), load_external_data)[0]


def check_external_data(path: PathLike) -> None:
    """Raise :class:`ExportError` unless ``path`` is an ONNX model whose external data, if any, are
    files inside the model's own folder.

    Call it before handing a path to anything that reads external data itself (onnxruntime, onnx's
    checker). Refused: an empty or absolute location, one with a ``..`` component, a hidden file or
    folder, one whose real path (symlinks followed) is outside the real path of the model's folder,
    and one naming a directory or other non-regular file. Reads the ``.onnx`` file only, and only
    once per version of it (:func:`memoized`): its locations are kept, the checks on them run on
    every call.
    """
    _data_present(Path(path), memoized(Path(path), "locations", _locations, load_external_data=False))


def external_data_files(path: PathLike) -> set[str]:
    """The external-data locations the ONNX file at ``path`` names (relative to its folder), each
    checked as by :func:`check_external_data` first (:class:`ExportError` otherwise)."""
    return set(_checked_locations(Path(path)))


def written_by_sparsekit(path: PathLike) -> bool:
    """True when ``path`` is a readable ONNX file carrying sparsekit's mark (see :func:`mark`); never
    raises.

    False for a missing file, non-ONNX bytes, ONNX files without the mark, marked files whose
    graph changed since sparsekit wrote them (the mark holds a SHA-256 of the rest of the file;
    external data files are not hashed) and files sparsekit wrote elsewhere: a copy or a moved file
    is the user's (the mark holds a hash of the path it was published at, never the path itself), as
    are the files of a ``prune`` run folder, which its manifest governs. The mark says who wrote the
    file, not that it is safe: anyone can compute it. Never cached: it decides whether a file may be replaced.
    """
    try:
        model = load_onnx(path, load_external_data=False)
        value = _unmark(model)
        return value is not None and value.endswith(f" sha256:{_digest(model)} at:{_place(Path(path))}")
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not ours"
        return False


def _read(path: Path, load_external_data: bool) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The model at ``path`` and the real path of each external-data location it names (checked)."""
    if not path.is_file():
        if path.is_dir():
            raise ExportError(f"{path}: is a folder; give the .onnx file in it")
        raise ExportError(f"{path}: {'not a regular file' if path.exists() else 'no such file' + near_file(path)}")
    try:
        # Never let onnx follow external-data locations before they are checked. Always the binary format: onnx
        # guesses a text format from a .json/.txt name (report.json was "parsed" into a ParseError listing fields),
        # and onnxruntime, which every reader here hands the file to, takes only the binary one.
        model = onnx.load(str(path), format="protobuf", load_external_data=False)
    except Exception as e:  # protobuf raises several unrelated types on garbage input
        raise ExportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}){_not_onnx_hint(path)}") from e
    # Protobuf happily parses some non-ONNX bytes (an empty file, say) into an empty message.
    if model.ir_version == 0 or not model.graph.output:
        raise ExportError(f"{path}: not an ONNX model (no IR version or no graph outputs){_not_onnx_hint(path)}")
    locations = _locations(path, model, [])
    targets = _data_present(path, locations) if load_external_data else _check_locations(path, locations)
    if load_external_data:
        _load_external_data(path, model, targets)
    _check_tensors(path, model)
    return model, targets


def _not_onnx_hint(path: Path) -> str:
    """For a file that is not ONNX: what it looks like when it is a PyTorch model file (a torch.save zip or
    pickle, safetensors), with the way to an ONNX file; else ""."""
    try:
        with path.open("rb") as f:
            start = f.read(64)
    except OSError:
        return ""
    head = start[:16]
    # An empty file read as an empty message, and a recipe or notes as "Wire format was corrupt": neither said what
    # the file holds.
    if not start:
        return "; the file is empty (a copy or export that did not finish?): give the .onnx file an export wrote"
    text = text_start(path) if head.lstrip()[:1] not in (b"{", b"[") else None  # (JSON: below)
    if text == GIT_LFS_POINTER:  # the right file, not fetched: "give the .onnx file an export wrote" misled
        return f"; {text}"
    if text is not None:
        return f"; {text}, not an ONNX model: give the .onnx file an export wrote"
    zipped = head.startswith(b"PK\x03\x04")
    torch_file = zipped or (len(head) >= 2 and head[0] == 0x80 and head[1] <= 5)
    safetensors = len(head) >= 10 and head[8:10] == b'{"'
    if not (torch_file or safetensors) and head.lstrip()[:1] in (b"{", b"["):
        return "; it is JSON text (a report.json?), not an ONNX model: give the .onnx file a prune run or export wrote"
    if path.suffix.lower() == ".npz":
        return ""
    if not (torch_file or safetensors):
        # A cut-short .onnx (an unfinished copy or download) said only protobuf's "Wire format was corrupt".
        return "; the file is damaged or cut short (an incomplete copy or download?): copy or export it again"
    if zipped:  # torch.save writes a zip holding data.pkl; a zip of anything else (a downloaded .onnx) is no torch file
        names = _zip_names(path)
        if names is not None and not any(n.rsplit("/", 1)[-1] == "data.pkl" for n in names):
            inside = [n for n in names if n.lower().endswith(".onnx")]
            if inside:
                return f"; it is a zip archive holding {inside[0]!r}: unzip it and pass that file"
            return "; it is a zip archive, not an ONNX file"
    return (
        f"; it is a PyTorch model file ({'safetensors' if safetensors else 'torch.save'}), not ONNX: export it to "
        "ONNX first (`sparsekit export`, or sparsekit.export_onnx in Python) and pass the .onnx file"
    )


def _zip_names(path: Path) -> list[str] | None:
    """The member names of the zip archive at ``path`` (its central directory only: nothing is extracted);
    None when it cannot be read as one."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()[:10000]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):  # (a damaged version field)
        return None


# Elements in one tensor beyond which its declared shape is refused as absurd (64 GB of float32).
MAX_TENSOR_ELEMENTS = 1 << 34
# Element types stored two per byte in raw_data.
_PACKED_4BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def _check_tensors(path: Path, model: onnx.ModelProto) -> None:
    """Raise :class:`ExportError` naming ``path`` and the tensor when an initializer's declared shape
    disagrees with the data it holds (or is absurdly large), or a sparse initializer's indices fall
    outside its shape: every later reader (numpy reshape, densify) would fail on it with a bare
    IndexError/ValueError. Tensors whose external data is not loaded are checked for shape only."""
    from onnx import numpy_helper

    def check(t: onnx.TensorProto, what: str) -> int:
        who = f"{what} {t.name!r}" if t.name else what  # an unnamed Constant value: `what` says where it is
        dims = list(t.dims)
        n = math.prod(dims) if dims else 1
        if any(d < 0 for d in dims) or n > MAX_TENSOR_ELEMENTS:
            raise ExportError(f"{path}: {who} declares shape {dims}, which no tensor can have")
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
            return n
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except Exception:  # noqa: BLE001 - an unknown or missing element type
            raise ExportError(f"{path}: {who} has no known element type ({t.data_type})") from None
        raw = t.HasField("raw_data")
        if raw:
            held, unit = len(t.raw_data), itemsize
        else:
            held = max(len(t.float_data), len(t.int32_data), len(t.int64_data), len(t.double_data),
                       len(t.uint64_data))  # fmt: skip
            unit = 1
            if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
                held //= 2
        expected = n * unit
        if t.data_type in _PACKED_4BIT and raw:
            expected = (n + 1) // 2  # two 4-bit values per byte in raw_data
        if held != expected:
            raise ExportError(
                f"{path}: {who} declares shape {dims} ({n:,} values) but holds {held:,} "
                f"{'bytes' if raw else 'values'}: the file is damaged or was written wrongly"
            )
        return n

    for t in model.graph.initializer:
        check(t, "initializer")
    # Then every other tensor stored in the file (model_tensors lists the main graph's initializers and sparse parts
    # first): a Constant's value, a subgraph's or a local function's tensors. onnxruntime refuses a damaged one just
    # as it does an initializer, and inspect, which reads none of them, passed the file bench then refused.
    main = len(model.graph.initializer) + 2 * len(model.graph.sparse_initializer)
    for name, t in itertools.islice(model_tensors(model), main, None):
        check(t, "tensor" if t.name else name)
    for s in model.graph.sparse_initializer:
        name = s.values.name
        dims = list(s.dims)
        total = math.prod(dims) if dims else 1
        if any(d < 0 for d in dims) or total > MAX_TENSOR_ELEMENTS:
            raise ExportError(f"{path}: sparse initializer {name!r} declares shape {dims}, which no tensor can have")
        nnz = check(s.values, "sparse initializer values")
        check(s.indices, "sparse initializer indices")
        if s.indices.data_location == onnx.TensorProto.EXTERNAL:
            continue
        idx = numpy_helper.to_array(s.indices).astype(np.int64, copy=False)
        rank = len(dims)
        linear = idx.ndim == 1 and idx.shape[0] == nnz
        coords = idx.ndim == 2 and idx.shape == (nnz, rank)
        bad = not (linear or coords)
        if not bad and idx.size:
            bounds = np.array(dims, dtype=np.int64) if coords else np.int64(total)
            bad = bool((idx < 0).any() or (idx >= bounds).any())
        if bad:
            raise ExportError(
                f"{path}: sparse initializer {name!r}: its indices do not fit its shape {dims} ({nnz:,} values): "
                "the file is damaged or was written wrongly"
            )


def _locations(path: Path, model: onnx.ModelProto, files: list[Path]) -> list[tuple[str, str, int]]:
    """``(tensor name, location, end)`` of every external tensor of ``model``, in order: ``end`` is the byte its
    data ends at in that file (its offset + length; 0 where they are not numbers, which the reader refuses)."""
    return [
        (name, location, _data_end(tensor))
        for name, tensor in model_tensors(model)
        for location in external_locations(tensor)
    ]


def _data_end(tensor: onnx.TensorProto) -> int:
    entries = {e.key: e.value for e in tensor.external_data}
    try:
        return max(0, int(entries.get("offset") or 0)) + max(0, int(entries.get("length") or 0))
    except ValueError:
        return 0


def _data_present(path: Path, locations: list[tuple[str, str, int]]) -> dict[str, str]:
    """:func:`_check_locations`, and then raise :class:`ExportError` naming the first external-data file that is
    missing or shorter than a tensor's data in it (onnxruntime said "External data path does not exist" or
    "out of bounds", onnx "it is not regular file", and neither what to do)."""
    targets = _check_locations(path, locations)
    for name, location, end in locations:
        real = targets[location]
        if not os.path.exists(real):
            raise ExportError(
                f"{path}: tensor {name!r} stores its data in {location!r}, which is not in the model's folder "
                f"{str(path.parent)!r}: copy the data file saved with the model there, beside {path.name}"
            )
        if end > (size := os.path.getsize(real)):
            raise ExportError(
                f"{path}: tensor {name!r} reads up to byte {end:,} of {location!r}, which holds {size:,} bytes: the "
                f"data file is cut short or from another save of the model; copy it again together with {path.name}"
            )
    return targets


def _checked_locations(path: Path) -> dict[str, str]:
    """:func:`_check_locations` of the file's locations, read from it once per version of the file."""
    return _check_locations(path, memoized(path, "locations", _locations, load_external_data=False))


def _check_locations(path: Path, locations: list[tuple[str, str, int]]) -> dict[str, str]:
    """Raise :class:`ExportError` for the first ``(tensor name, location)`` of the model at ``path``
    whose external data is not a file inside the model's folder; else return each location's real
    path. Touches no data file's contents."""
    folder = path.parent
    real_folder = os.path.realpath(folder)
    targets: dict[str, str] = {}  # location -> real path; most tensors share one file
    for name, location, _ in locations:
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

    Done tensor by tensor over :func:`model_tensors` rather than with onnx's
    ``load_external_data_for_model``, which skips sparse initializers (``numpy_helper.to_array``
    would later read those relative to the current directory) and refuses a symlinked data file
    even when it stays inside the folder.
    """
    real_folder = os.path.realpath(path.parent)
    for name, tensor in model_tensors(model):
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


# --- the mark --------------------------------------------------------------------------------------


def mark(model: onnx.ModelProto, at: PathLike | None = None) -> None:
    """Stamp ``model`` (in memory) as written by sparsekit: ``metadata_props["sparsekit"]`` holds the
    version, a SHA-256 of the rest of the serialized model, so a file edited since (the mark kept)
    is no longer "ours" to :func:`written_by_sparsekit`, and a hash of the path ``at`` the file is
    published at (a staged file's destination, see :func:`staging`; without ``at``, a file that is
    nowhere "ours"). An earlier mark is replaced."""
    from sparsekit import __version__  # lazily: the package imports this module

    _unmark(model)
    place = f" at:{_place(_destination(Path(at)))}" if at is not None else ""
    model.metadata_props.add(key=MARK_KEY, value=f"{__version__} sha256:{_digest(model)}{place}")


def _place(path: Path) -> str:
    """A hash of ``path``'s real, absolute location: the mark names where the file was written without
    putting a local path into a file meant to be shipped."""
    return hashlib.sha256(os.path.realpath(path).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _destination(path: Path) -> Path:
    """Where a file written inside :func:`staging` folders (nested ones too) is published: a staged file is
    named as its destination, in a folder ``.NAME.XXXXXXXX.sparsekit.tmp`` beside it."""
    while re.fullmatch(re.escape(temp_prefix(path.name)) + r"[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX), path.parent.name):
        path = path.parent.parent / path.name
    return path


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


# --- writing ---------------------------------------------------------------------------------------


def save_onnx(
    model: onnx.ModelProto,
    path: PathLike,
    *,
    what: str = "model",
    external_data: bool = False,
    at: PathLike | None = None,
) -> None:
    """:func:`mark` ``model`` for where it is published (``at``, default ``path``: a staged file, see
    :func:`staging`) and write it to ``path``.

    Tensors whose data is already external keep their references. ``external_data=True`` moves every
    tensor of 1 kB or more into ``<name>.data`` beside it (for models over protobuf's 2 GB limit).
    Raises :class:`ExportError` naming the file and ``what`` it is when onnx cannot write it (a
    disk-full cause is kept, so :func:`~sparsekit.fsutil.writing` still reports an OutputError).
    """
    p = Path(path)
    try:
        if external_data:
            # Data written first, so the mark hashes the graph as saved: with references, not bytes.
            convert_model_to_external_data(
                model, all_tensors_to_one_file=True, location=f"{p.name}.data", size_threshold=1024
            )
            write_external_data_tensors(model, str(p.parent))
        mark(model, at=p if at is None else at)
        onnx.save_model(model, str(p))
    except Exception as e:  # protobuf's size limit, disk full, permission denied, ...
        raise ExportError(f"{p.name}: cannot write the {what}: {e}") from e


def refuse_non_onnx_target(path: Path) -> None:
    """Raise :class:`OutputError` when ``path`` exists, is not named ``.onnx`` and is no ONNX file sparsekit wrote
    there: ``export_onnx(model, "model.pt", ...)`` (the checkpoint's path given for the file to write) replaced the
    user's checkpoint with an ONNX graph, without a word, and ``quantize_int8(src, "notes.txt")`` or
    ``to_sparse_storage(src, "model.pt")`` did the same. A file named ``.onnx`` is replaced, as before."""
    if path.suffix.lower() == ".onnx" or not (path.exists() or path.is_symlink()) or path.is_dir():
        return  # (a folder: the writer's own error says so)
    if empty_file(path):
        return  # nothing to lose: a tempfile.mkstemp() made for the export to fill
    if not path.is_symlink() and written_by_sparsekit(path):
        return
    raise OutputError(
        f"{path}: exists and is not an .onnx file (a model checkpoint, say); writing the ONNX model there would "
        "replace it: give the path of the .onnx file to write"
    )


@contextlib.contextmanager
def staging(final: PathLike) -> Iterator[Path]:
    """A private folder beside ``final`` (same filesystem, so renames out of it are atomic) for a file
    being written and its intermediates; always removed. Creates ``final``'s folder. A full, read-only
    or unwritable disk is an :class:`~sparsekit.errors.OutputError` naming ``final``.

    The folder is ``flock``-ed while it lives, so what a killed writer left (SIGKILL runs no clean-up) can be
    told from a live writer's: the next staging beside the same target removes it (:func:`_remove_dead_staging`).
    """
    final = Path(final)
    native_path(final.absolute())  # an ONNX file onnx cannot open by name is refused before any work, naming it
    # Every ONNX writer stages here (export_onnx, quantize_int8, to_sparse_storage, choose_storage): the one place
    # that keeps each from replacing a user's checkpoint or notes given as its output path.
    refuse_non_onnx_target(final)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(final)
        work = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=TEMP_SUFFIX, dir=final.parent))
        held = lock_folder(work, wait=True)
        try:
            # Signed as sparsekit's, so that only a folder this made is ever removed as a killed writer's.
            os.close(os.open(work / STAGING_MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            yield work
        finally:
            with sigint_deferred():  # a Ctrl-C there would leave the folder half-removed; it waits the milliseconds
                shutil.rmtree(work, ignore_errors=True)
            if held is not None:
                unlock_folder(held)


# How old a staging folder nobody holds must be to count as a killed writer's: a live writer takes its lock
# microseconds after creating the folder, so only a folder younger than this could be one not yet locked.
STALE_STAGING_S = 60.0


def _remove_dead_staging(final: Path) -> None:
    """Remove the staging folders of ``final`` (``.NAME.XXXXXXXX.sparsekit.tmp``) that no live process
    holds and that are older than :data:`STALE_STAGING_S`: a killed writer's. Anything it cannot open or
    lock, that is not a folder of that exact name, or that lacks :data:`~sparsekit.fsutil.STAGING_MARK`
    (sparsekit did not make it) is left alone; but for an empty private one (0700, as mkdtemp makes it: a writer
    killed before its mark was written), which ``rmdir`` removes."""
    shape = temp_shape(final.name)
    try:
        entries = [e for e in os.scandir(final.parent) if shape.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < STALE_STAGING_S:
                continue
            if not os.path.lexists(os.path.join(entry.path, STAGING_MARK)):
                # A writer killed between mkdtemp and its mark left the folder empty and private (0700, ours): rmdir
                # takes it, and fails on a folder holding anything (a user's of the same name), which stays.
                st = entry.stat(follow_symlinks=False)
                if st.st_uid == os.getuid() and not st.st_mode & 0o077:
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)
                continue
            if not stat.S_ISREG(os.lstat(os.path.join(entry.path, STAGING_MARK)).st_mode):
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer's (or no flock on this file system: nothing can be told, nothing removed)
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


def publish(staged: PathLike, final: PathLike) -> None:
    """Move the ONNX file ``staged`` (inside a :func:`staging` folder, named like ``final``) and the
    external-data files it references to ``final``'s folder.

    Data files first, so the graph at ``final`` never points at nothing; the graph itself goes
    through :func:`~sparsekit.fsutil.atomic_path`, so ``final`` is either the old file or the
    complete new one. Locations are checked first (:class:`ExportError`).
    """
    staged, final = Path(staged), Path(final)
    for location in sorted(external_data_files(staged)):
        os.replace(staged.parent / location, final.parent / location)
    with atomic_path(final) as dest:
        os.replace(staged, dest)


# --- sizes and the per-file memo -----------------------------------------------------------------


def onnx_sizes(path: PathLike, level: int | None = None) -> dict[str, int]:
    """``{"bytes", "gzip_bytes", "gzip_level"}``: raw bytes of the ``.onnx`` file plus every external-data file
    it references (each counted once, however many paths reach it), and the gzip size of them all
    concatenated at ``level`` (default: :func:`gzip_level` of their total size, 9 up to 16 MiB, else 6), and
    that level. Sizes compared with each other must share a level: pass the largest file's (a 4 MB int8
    file beside a 17 MB fp32 one is 13% smaller at 9 than at 6). Computed once per version of the files and
    level (:func:`memoized`).

    Raises :class:`ExportError` when the file is not ONNX, an external-data file is missing, or one
    lies outside the model's folder (checked before any of them is read).
    """
    if level is None:
        return memoized(path, "sizes", _sizes_at(None), load_external_data=False)
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise ExportError(f"gzip level must be 0..9, got {level!r}")
    own = _peek(path, "sizes")  # the file's own level, asked for by number: computed once
    if own is not None and own["gzip_level"] == level:
        return own
    return memoized(path, f"sizes@{level}", _sizes_at(level), load_external_data=False)


def _sizes_at(level: int | None) -> Callable[[Path, onnx.ModelProto, list[Path]], dict[str, int]]:
    def sizes(path: Path, model: onnx.ModelProto, files: list[Path]) -> dict[str, int]:
        total = _total_bytes(path, model, files)
        at = gzip_level(total) if level is None else level
        return {"bytes": total, "gzip_bytes": gzip_size(files, at), "gzip_level": at}

    return sizes


def onnx_bytes(path: PathLike) -> int:
    """Raw bytes of the ``.onnx`` file and its external data, as :func:`onnx_sizes` counts them, without
    compressing anything (to choose the gzip level several files share). Raises like :func:`onnx_sizes`."""
    known = _peek(path, "sizes")  # sizes already measured hold the count: no second parse
    return known["bytes"] if known is not None else memoized(path, "bytes", _total_bytes, load_external_data=False)


def _total_bytes(path: Path, model: onnx.ModelProto, files: list[Path]) -> int:
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ExportError(f"{path}: external data file(s) missing: {', '.join(missing)}")
    return sum(f.stat().st_size for f in files)


def gzip_size(files: Sequence[PathLike], level: int | None = None) -> int:
    """Bytes of ``files`` concatenated and compressed with gzip at ``level`` (default: :func:`gzip_level`
    of their total size; the container included).

    Read in blocks of 4 MiB, so a multi-GB external-data file never sits in memory; a longer stream is
    deflated in blocks on several threads, as pigz does (:mod:`sparsekit.onnx.compress`: a valid gzip
    stream within ~0.05% of one-piece gzip's size on weights (0.02-0.04% measured); up to 4 MiB, exactly gzip's)."""
    if level is None:
        level = gzip_level(sum(Path(f).stat().st_size for f in files))
    return gzip_size_of_files(files, level)


@dataclass
class _Entry:
    watch: list[Path]  # the .onnx file, then each external-data file (as the model names it)
    signatures: list[tuple[int, ...] | None]
    # A file modified too recently for its timestamps to tell a later change apart (see _RACY_NS) has
    # the hash of its contents here, taken before it was read: they decide, as git does for "racily
    # clean" files. None for the others.
    digests: list[str | None]
    facts: dict[str, Any] = field(default_factory=dict)


_MEMO_ENTRIES = 256
# A file modified this recently may be rewritten within the same timestamp tick (coarse kernel
# clocks: a few ms; FAT: 2 s) with the same size, which stat alone cannot see.
_RACY_NS = 2_000_000_000
_memo: OrderedDict[str, _Entry] = OrderedDict()
_memo_lock = threading.Lock()


def memoized(
    path: PathLike,
    fact: str,
    compute: Callable[[Path, onnx.ModelProto, list[Path]], T],
    *,
    load_external_data: bool,
) -> T:
    """``compute(path, model, files)`` for the ONNX file at ``path``, once per version of the file.

    ``model`` is :func:`load_onnx` of ``path`` (external data loaded or not, as asked; checked as
    always), ``files`` the ``.onnx`` file followed by each external-data file it names. The result is
    kept under ``fact`` for as long as none of those files changes: each is identified by
    ``os.stat`` (device, inode, size, modification and change times in ns), taken before it is read,
    so a file rewritten or replaced since is read again; while a file's modification time is under
    2 s old when it is identified, its contents (BLAKE2b) are compared too. A hit parses no file,
    so it cannot read external data a check would refuse. Returns a deep copy, which the caller may
    change. Errors (:class:`ExportError`) are not kept.
    """
    p = Path(path)
    key = os.path.abspath(p)
    with _memo_lock:
        entry = _memo.get(key)
        if entry is not None:
            _memo.move_to_end(key)
    if entry is not None and not _still_valid(entry):
        entry = None
    if entry is not None and fact in entry.facts:
        return copy.deepcopy(entry.facts[fact])
    # Each file is identified before it is read: one changed while we read is read again next time.
    first = _signature(p)
    first_digest = _file_digest(p) if _racy(first) else None
    model, targets = _read(p, False)
    files = [p]
    seen = {os.path.realpath(p)}
    for location, real in targets.items():  # a data file reached twice (e.g. through a symlink) counts once
        if real not in seen:
            seen.add(real)
            files.append(p.parent / location)
    locations = _locations(p, model, files)
    signatures = [first, *(_signature(f) for f in files[1:])]
    data = zip(files[1:], signatures[1:], strict=True)
    digests = [first_digest, *(_file_digest(f) if _racy(sig) else None for f, sig in data)]
    if load_external_data:
        _data_present(p, locations)
        _load_external_data(p, model, targets)
    value = compute(p, model, files)
    with _memo_lock:
        if entry is None or entry.signatures != signatures or entry.digests != digests:
            entry = _Entry(files, signatures, digests)
        entry.facts[fact] = value
        entry.facts.setdefault("locations", locations)  # free with any parse; what every check needs
        _memo[key] = entry
        _memo.move_to_end(key)
        while len(_memo) > _MEMO_ENTRIES:
            _memo.popitem(last=False)
    return copy.deepcopy(value)


def _peek(path: PathLike, fact: str) -> Any:
    """:func:`memoized`'s value of ``fact`` for ``path`` when it holds one for the file as it is now, else
    None; computes nothing."""
    key = os.path.abspath(Path(path))
    with _memo_lock:
        entry = _memo.get(key)
    if entry is None or fact not in entry.facts or not _still_valid(entry):
        return None
    return copy.deepcopy(entry.facts[fact])


def clear_memo() -> None:
    """Forget every statistic :func:`memoized` holds (they are recomputed on the next call)."""
    with _memo_lock:
        _memo.clear()


def _still_valid(entry: _Entry) -> bool:
    """Do the files of ``entry`` still hold what its facts were computed from?"""
    signatures = [_signature(f) for f in entry.watch]
    if signatures != entry.signatures:
        return False
    for i, (path, digest) in enumerate(zip(entry.watch, entry.digests, strict=True)):
        if digest is None:
            continue
        racy = _racy(signatures[i])  # judged before hashing: a change after it shows in the timestamps
        if _file_digest(path) != digest:
            return False
        if not racy:  # the contents are the ones measured, and any later change gets a newer timestamp
            entry.digests[i] = None
    return True


def _racy(signature: tuple[int, ...] | None) -> bool:
    return signature is not None and abs(time.time_ns() - signature[3]) < _RACY_NS


def _file_digest(path: Path) -> str | None:
    h = hashlib.blake2b(digest_size=32)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)  # symlinks followed: a link pointed elsewhere is another file
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
