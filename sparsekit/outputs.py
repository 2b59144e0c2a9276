"""The output folder of ``sparsekit prune``: only what sparsekit wrote is ever replaced.

After a run, ``DIR`` holds the results (``model.pt``, ``model.onnx``, ``dense.onnx``, ``report.json``,
``report.md``, plots, ``checkpoints/``) and a hidden ``DIR/.sparsekit/``:

- ``manifest.json`` lists every result file sparsekit wrote, with its size and SHA-256. ``--overwrite``
  and ``--resume`` refuse a folder holding anything else (a file not listed, or a listed file whose
  content changed since), naming the first such file, so a user's file is never replaced or deleted.
- ``next/`` is the run in progress. Every output is built there and moved into ``DIR`` only when the
  run has finished, so an interrupted or failed run leaves the previous results as they were, and
  ``--resume`` continues from ``next/checkpoints/``.

``-o`` may not be ``/`` or the home folder, nor be or contain an input (model, recipe, data file).

>>> folder = RunFolder.prepare(Path("out"), inputs=[Path("lenet.pt")], overwrite=False, resume=False)
>>> stage = folder.begin()          # write everything under stage/
>>> folder.publish()                # then swap it into out/
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import __version__
from .errors import OutputError
from .fsutil import atomic_path, sigint_deferred, writing

META = ".sparsekit"
MANIFEST = "manifest.json"
PENDING = "manifest.next.json"  # written before the swap, so a half-finished swap stays ours
STAGE = "next"
FORMAT = "sparsekit-run/1"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _files_under(root: Path) -> Iterator[str]:
    """Relative paths of the regular files under ``root`` (sorted; sparsekit's temp files skipped)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_temp(d))
        for name in sorted(filenames):
            if not _is_temp(name):
                yield (Path(dirpath) / name).relative_to(root).as_posix()


class RunFolder:
    """One ``sparsekit prune`` output folder; see the module docstring for the guarantees."""

    def __init__(self, out: Path, resume: bool = False) -> None:
        self.out = Path(out)
        self.meta = self.out / META
        self.stage = self.meta / STAGE
        self.resume = resume

    # --- checks (read-only) ----------------------------------------------------------------------

    @classmethod
    def prepare(cls, out: Path, *, inputs: Iterable[Path | str | None], overwrite: bool, resume: bool) -> RunFolder:
        """Check that a run may write ``out``; touches nothing. Raises :class:`OutputError`."""
        out = Path(out)
        _guard_location(out, [Path(p) for p in inputs if p])
        folder = cls(out, resume)
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; choose another -o DIR")
        if not out.exists():
            if resume:
                raise OutputError(f"{out}: no such folder, so there is no run to resume; run without --resume")
            return folder
        has_run = folder.has_run()
        entries = sorted(p.name for p in out.iterdir())
        if resume:
            if not has_run:
                raise OutputError(
                    f"{out}: holds no sparsekit run (no {META}/{MANIFEST}), so there is nothing to resume; "
                    "choose the folder of an interrupted run, or run without --resume"
                )
            folder.check_owned()
        elif entries:
            if not overwrite:
                what = "a sparsekit run" if has_run else "files"
                raise OutputError(
                    f"{out}: output folder exists and holds {what}; pass --overwrite to replace a sparsekit run, "
                    "--resume to continue an interrupted one, or choose another -o DIR"
                )
            if not has_run:
                raise OutputError(
                    f"{out}: holds files sparsekit did not write (first: {entries[0]}); --overwrite only replaces "
                    "a sparsekit run's own files: choose another -o DIR"
                )
            folder.check_owned()
        return folder

    def has_run(self) -> bool:
        """Whether the folder holds a sparsekit run (finished, or unfinished in ``.sparsekit/next``)."""
        return not self.meta.is_symlink() and ((self.meta / MANIFEST).is_file() or self.stage.is_dir())

    def owned(self) -> dict[str, set[str]]:
        """Relative path -> SHA-256 digests sparsekit wrote there (current and pending manifests)."""
        owned: dict[str, set[str]] = {}
        for name in (MANIFEST, PENDING):
            for rel, info in _read_manifest(self.meta / name).items():
                if isinstance(info, dict) and isinstance(info.get("sha256"), str):
                    owned.setdefault(rel, set()).add(info["sha256"])
        return owned

    def foreign(self) -> list[str]:
        """Entries of the folder sparsekit did not write (relative paths, sorted)."""
        if self.meta.is_symlink() or (self.meta.exists() and not self.meta.is_dir()):
            return [META]
        if self.stage.is_symlink() or (self.stage.exists() and not self.stage.is_dir()):
            return [f"{META}/{STAGE}"]  # a run is only ever built in a real folder of ours
        owned = self.owned()
        dirs = {p.as_posix() for rel in owned for p in Path(rel).parents if p != Path(".")}
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.out):
            rel_dir = Path(dirpath).relative_to(self.out)
            if rel_dir == Path("."):
                dirnames[:] = [d for d in dirnames if d != META]
            for d in sorted(dirnames):
                rel = (rel_dir / d).as_posix()
                if Path(dirpath, d).is_symlink() or rel not in dirs:
                    found.append(rel)
            dirnames[:] = sorted(d for d in dirnames if (rel_dir / d).as_posix() in dirs)
            for name in sorted(filenames):
                rel = (rel_dir / name).as_posix()
                path = Path(dirpath, name)
                if rel not in owned or path.is_symlink() or not path.is_file() or _sha256(path) not in owned[rel]:
                    found.append(rel)
        return sorted(found)

    def check_owned(self) -> None:
        """Raise :class:`OutputError` naming the first entry sparsekit did not write."""
        foreign = self.foreign()
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise OutputError(
                f"{self.out}: holds {foreign[0]}{more}, which sparsekit did not write (or that changed since); "
                "sparsekit never replaces or deletes your files: move it away or choose another -o DIR"
            )

    # --- writing ---------------------------------------------------------------------------------

    def begin(self) -> Path:
        """Create the staging folder (fresh, unless resuming) and return it; write every output there.
        On resume of a finished run, its last checkpoint is copied in so training continues from it."""
        with writing(self.stage):
            if self.meta.exists() and not self.meta.is_dir():
                raise OutputError(f"{self.meta}: is not a folder; move it away or choose another -o DIR")
            if self.stage.exists() and not self.resume:
                shutil.rmtree(self.stage)  # an earlier unfinished run of ours; --overwrite starts again
            self.stage.mkdir(parents=True, exist_ok=True)
            ckpt = Path("checkpoints") / "last.pt"
            if self.resume and not (self.stage / ckpt).exists() and (self.out / ckpt).is_file():
                (self.stage / ckpt).parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(self.stage / ckpt) as tmp:
                    shutil.copyfile(self.out / ckpt, tmp)
        return self.stage

    def publish(self) -> list[str]:
        """Move the finished run from the staging folder into the output folder, replacing only
        files sparsekit wrote there; returns the published relative paths. Ctrl-C waits for the end
        of the swap (a fraction of a second), so the folder is never left half-swapped by it."""
        self.check_owned()  # again: the user may have put a file in the folder while the run went on
        new = {rel: _entry(self.stage / rel) for rel in _files_under(self.stage)}
        old = _read_manifest(self.meta / MANIFEST)
        _write_manifest(self.meta / PENDING, new)
        with sigint_deferred():
            for rel in sorted(set(old) - set(new)):
                with contextlib.suppress(FileNotFoundError):
                    (self.out / rel).unlink()
            for rel in new:
                target = self.out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.stage / rel, target)
            os.replace(self.meta / PENDING, self.meta / MANIFEST)
        _remove_empty_dirs(self.out, {str(Path(r).parent) for r in old})
        shutil.rmtree(self.stage, ignore_errors=True)
        return list(new)

    def record(self, paths: Iterable[Path]) -> None:
        """Add files sparsekit has just written into the folder itself (``sparsekit report``)."""
        files = _read_manifest(self.meta / MANIFEST)
        for p in paths:
            files[Path(p).relative_to(self.out).as_posix()] = _entry(Path(p))
        _write_manifest(self.meta / MANIFEST, files)


def _guard_location(out: Path, inputs: list[Path]) -> None:
    target = out.resolve()
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        home = None
    if target == Path(target.anchor) or target == home:
        raise OutputError(f"-o {out}: is {'the root folder' if target == Path(target.anchor) else 'your home folder'}; "
                          "choose a folder of its own for the results, e.g. -o sparsekit-out")  # fmt: skip
    for inp in inputs:
        resolved = inp.resolve()
        if resolved == target or resolved.is_relative_to(target):
            raise OutputError(
                f"-o {out}: {'is' if resolved == target else 'contains'} the input {inp}; sparsekit never writes "
                "where its inputs are: choose another -o DIR"
            )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # unreadable: nothing counts as ours, so nothing is replaced
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    # Only plain relative paths inside the folder count; a manifest is data too.
    return {
        rel: info
        for rel, info in files.items()
        if isinstance(rel, str) and rel and not Path(rel).is_absolute() and ".." not in Path(rel).parts
        and Path(rel).parts[0] != META
    }  # fmt: skip


def _write_manifest(path: Path, files: dict[str, Any]) -> None:
    doc = {"format": FORMAT, "written_by": f"sparsekit {__version__}", "time": time.time(), "files": files}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _remove_empty_dirs(out: Path, rel_dirs: set[str]) -> None:
    for rel in sorted(rel_dirs, key=lambda r: -len(Path(r).parts)):
        if rel in ("", "."):
            continue
        with contextlib.suppress(OSError):
            (out / rel).rmdir()  # only if empty
