"""Small file helpers: atomic writes and ``pkg.module:callable`` imports."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import SparsekitError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in the same folder; on success it is renamed to ``path``, on error removed.

    A finished file is therefore either the old one or the complete new one, never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):
            # mkstemp creates 0600; a finished output gets the mode any normally created file would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def resolve_callable(spec: str, where: str, error: type[SparsekitError]) -> Callable[..., Any]:
    """Import ``pkg.module:callable`` (the current directory is on the import path, like ``python -m``)."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise error(f"{where}: {spec!r} is not of the form pkg.module:callable (e.g. examples.models:small_cnn)")
    module_name, attr_path = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    importlib.invalidate_caches()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"{where}: cannot import module {module_name!r} ({exc}); run from the folder that "
            "contains it or install its package"
        ) from exc
    except Exception as exc:  # the user's module raised while importing
        raise error(f"{where}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise error(f"{where}: module {module_name!r} has no {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{where}: {spec!r} is a {type(obj).__name__}, not a callable")
    return obj
