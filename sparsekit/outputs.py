"""The output folder of a prune run: only what sparsekit wrote is ever replaced.

After a run, ``DIR`` holds the results (``model.pt``, ``model.onnx``, ``dense.onnx``, ``report.json``,
``report.md``, plots, ``checkpoints/``) and a hidden ``DIR/.sparsekit/``:

- ``manifest.json`` lists every result file sparsekit wrote, with its size and SHA-256. Overwriting
  and resuming (``overwrite=True``, ``resume=True``) refuse a folder holding anything else (a file not
  listed, or a listed file whose content changed since), naming the first such file, so a user's file
  is never replaced or deleted.
- ``lock`` holds the pid and host of the run writing the folder: a second run into it is refused.
- ``next/`` is the run in progress. Every output is built there and moved into ``DIR`` only when the
  run has finished, so an interrupted or failed run leaves the previous results as they were, and
  resuming continues from ``next/checkpoints/``.
- A run killed before it could rename a file leaves a ``.NAME.XXXXXXXX.sparsekit.tmp``; the next run into the
  folder (or its resume) removes them once it holds the lock: those in ``.sparsekit``, and those beside a
  file or folder the manifest lists that are still private to the user, as tempfile creates them (mode
  0600 / 0700). Any other file of that shape is the user's: reported, never removed.

The output folder may not be ``/`` or the home folder, nor be or contain an input (model, recipe,
data file). Every refusal is an :class:`~sparsekit.errors.OutputError` naming the folder or file.

>>> folder = RunFolder.prepare(Path("out"), inputs=[Path("lenet.pt")], overwrite=False, resume=False)
>>> stage = folder.begin()          # takes the folder's lock; write everything under stage/
>>> folder.publish()                # then swap it into out/
>>> folder.unlock()
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import __version__
from .errors import OutputError, option
from .fsutil import (
    STAGING_MARK,
    TEMP_SUFFIX,
    atomic_path,
    identity,
    lock_folder,
    missing_folders,
    read_regular,
    replaced,
    sigint_deferred,
    unlock_folder,
    writing,
)

META = ".sparsekit"
MANIFEST = "manifest.json"
PENDING = "manifest.next.json"  # written before the swap, so a half-finished swap stays ours
STAGE = "next"
LOCK = "lock"
FORMAT = "sparsekit-run/1"
LOGS = "logs"  # finetune.log's metrics: a resume of a finished run continues them (see RunFolder.begin)


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


# What sparsekit's atomic writes name their temp files and folders: tempfile.mkstemp/mkdtemp with
# prefix ".NAME." and suffix TEMP_SUFFIX (8 random characters between), NAME the file it becomes.
_TEMP_RE = re.compile(r"\.(.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
# Earlier versions used tempfile's plain ".tmp" suffix: what a killed run of one left inside ".sparsekit"
# (sparsekit's own folder, where nothing else writes) is still removed; beside the outputs such a name is the user's.
_OLD_TEMP_RE = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def _temp_match(rel: Path) -> re.Match[str] | None:
    """The temp-name match of ``rel`` (a path relative to the output folder), or None (see :data:`_OLD_TEMP_RE`)."""
    match = _TEMP_RE.fullmatch(rel.name)
    if match is None and rel.parts and rel.parts[0] == META:
        match = _OLD_TEMP_RE.fullmatch(rel.name)
    return match


def temp_target(name: str) -> str | None:
    """The file a sparsekit temp file named ``name`` (``.NAME.XXXXXXXX.sparsekit.tmp``) was to become, or None."""
    match = _TEMP_RE.fullmatch(name)
    return match.group(1) if match else None


def remove_stale_temps(root: Path, ours: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the temp files and folders sparsekit's atomic writes leave under ``root`` when a run is
    killed (SIGKILL, power loss) before it renames them; returns their paths relative to ``root``.
    ``ours(relative path)`` says whether a temp-named entry is sparsekit's (default: every one): a user's file
    may have the same shape (``.report.md.draft001.sparsekit.tmp``, unlikely as that is). Call it only while
    holding the folder's run lock: no other run is writing there then. Links are never followed or removed."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in [*filenames, *dirnames]:
            path = here / name
            if _temp_match(path.relative_to(root)) is None or path.is_symlink():
                continue
            if ours is not None and not ours(path.relative_to(root).as_posix()):
                continue
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: leave it
                if path.is_dir() and (path.parts[len(root.parts)] == META or (path / STAGING_MARK).is_file()):
                    shutil.rmtree(path)
                elif path.is_dir():
                    # Unmarked, out here: a staging folder killed before its mark was written, empty. rmdir removes
                    # an empty folder only, so a user's folder that gained a file meanwhile stays whole.
                    path.rmdir()
                else:
                    path.unlink()
                removed.append(path.relative_to(root).as_posix())
        dirnames[:] = [
            d for d in dirnames if _temp_match((here / d).relative_to(root)) is None and not (here / d).is_symlink()
        ]
    return removed


def _marked_or_empty(folder: Path) -> bool:
    """Whether ``folder`` holds sparsekit's staging mark or nothing at all (raises OSError when unreadable)."""
    try:
        return stat.S_ISREG((folder / STAGING_MARK).lstat().st_mode)
    except FileNotFoundError:
        with os.scandir(folder) as entries:
            return next(entries, None) is None


def _links_under(root: Path) -> list[str]:
    """Relative POSIX paths of the symbolic links under ``root`` (sorted; links are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        found += [(here / n).relative_to(root).as_posix() for n in [*dirnames, *filenames] if (here / n).is_symlink()]
    return sorted(found)


def _files_under(root: Path) -> Iterator[str]:
    """Relative paths of the regular files under ``root`` (sorted; sparsekit's temp files skipped)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_temp(d))
        for name in sorted(filenames):
            if not _is_temp(name):
                yield (Path(dirpath) / name).relative_to(root).as_posix()


def _stat(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a file, None when there is none: enough to tell a file was rewritten."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


class RunFolder:
    """One prune run's output folder ``out``; see the module docstring for the guarantees. ``resume``:
    this run continues the unfinished (or finished) run in it."""

    def __init__(self, out: Path, resume: bool = False) -> None:
        self.out = Path(out)
        self.meta = self.out / META
        self.stage = self.meta / STAGE
        self.resume = resume
        self.overwrite = False
        self._locked = False
        self._digests: dict[tuple[str, int, int, int], str] = {}  # a file is hashed once per run, not per check
        self.removed_temps: list[str] = []  # stale temp files begin() removed
        # What begin() found, so that discard() removes only what this run created.
        self._new_out = self._new_meta = self._new_stage = self._discarded = False
        self._made_above: list[Path] = []  # the folders above ``out`` that begin() found missing
        self._ckpt_before: tuple[int, int] | None = None
        self._folder_fd: int | None = None  # the output folder's flock (see lock)

    # --- checks (read-only) ----------------------------------------------------------------------

    @classmethod
    def prepare(cls, out: Path, *, inputs: Iterable[Path | str | None], overwrite: bool, resume: bool) -> RunFolder:
        """Check that a run may write ``out`` and return its RunFolder; touches nothing. ``inputs`` are
        the run's input files (None entries skipped), which ``out`` may not be or contain. Raises
        :class:`OutputError` for a forbidden location, a folder held by another live run, or one whose
        contents this run may not replace (given ``overwrite`` / ``resume``). :meth:`begin` checks again
        once it holds the folder's lock."""
        out = Path(out)
        guard_location(out, [Path(p) for p in inputs if p])
        folder = cls(out, resume)
        folder.overwrite = overwrite
        folder.check_unlocked()
        folder._check_state()
        return folder

    def _check_state(self) -> None:
        """May this run write the folder as it is now (given ``overwrite`` / ``resume``)?"""
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; choose another output folder")
        if not out.exists():
            if self.resume:
                raise OutputError(
                    f"{out}: no such folder, so there is no run to resume; run without {option('resume')}"
                )
            return
        others = sorted(p.name for p in out.iterdir() if p.name != META)
        has_run = self.has_run()
        if self.resume:
            if not has_run:
                raise OutputError(
                    f"{out}: holds no sparsekit run, so there is nothing to resume; choose the folder of an "
                    f"interrupted run, or run without {option('resume')}"
                )
            self.check_owned()
        elif others or has_run:
            if not has_run:
                from .analysis import MANIFEST_FILE  # lazily: analysis imports this module

                # A `sparsekit sensitivity` folder was "files sparsekit did not write", naming its manifest.
                what = (
                    "a sensitivity analysis (`sparsekit sensitivity -o`), not a prune run"
                    if MANIFEST_FILE in others
                    else f"files sparsekit did not write (first: {others[0]})"
                )
                raise OutputError(
                    f"{out}: holds {what}; a prune run writes only into a new or empty folder or over an earlier "
                    "prune run's: choose another output folder"
                )
            if not self.overwrite:
                raise OutputError(
                    f"{out}: holds an earlier sparsekit run; pass {option('overwrite')} to replace it, "
                    f"{option('resume')} to continue it if it was interrupted, or choose another output folder"
                )
            self.check_owned()
        elif self.meta.is_symlink() or (self.meta.exists() and not self.meta.is_dir()):
            raise OutputError(f"{self.meta}: is not sparsekit's folder; move it away or choose another output folder")

    def has_run(self) -> bool:
        """Whether the folder holds a sparsekit run: finished (a manifest) or unfinished (``next/``, or
        ``old/`` left by an interrupted swap)."""
        return (
            not self.meta.is_symlink()
            and self.meta.is_dir()
            and ((self.meta / MANIFEST).is_file() or (self.meta / STAGE).exists() or (self.meta / "old").exists())
        )

    def checkpointed(self) -> bool:
        """Whether the folder holds an epoch checkpoint to resume from (see :meth:`resume_checkpoint`)."""
        return self.resume_checkpoint() is not None

    def resume_checkpoint(self) -> Path | None:
        """The epoch checkpoint a resume continues from: the unfinished run's (``next/``); when that run finished no
        epoch yet, none (its training starts over: the earlier finished run's checkpoint belongs to the results it
        was about to replace), unless it was killed in the swap, whose checkpoint may already lie in the folder;
        with no unfinished run, the finished run's. None when there is none."""
        ckpt = Path("checkpoints") / "last.pt"
        if (self.stage / ckpt).is_file():
            return self.stage / ckpt
        if self.stage.is_dir() and not self.swap_unfinished():
            return None
        return self.out / ckpt if (self.out / ckpt).is_file() else None

    def swap_unfinished(self) -> bool:
        """Whether a run was killed (SIGKILL, a power cut: nothing it could catch) while :meth:`publish` moved its
        results in: the folder then holds part of the earlier results and part of the new ones until the next run
        into it (a resume or an overwrite) finishes or redoes the swap."""
        return (self.meta / PENDING).is_file()

    def owned(self) -> dict[str, set[str]]:
        """Relative POSIX path -> the SHA-256 hex digests sparsekit wrote there (current and pending
        manifests; an unreadable manifest counts as empty, so nothing in it is replaced)."""
        owned: dict[str, set[str]] = {}
        for name in (MANIFEST, PENDING):
            for rel, info in _read_manifest(self.meta / name).items():
                if isinstance(info, dict) and isinstance(info.get("sha256"), str):
                    owned.setdefault(rel, set()).add(info["sha256"])
        return owned

    def foreign(self) -> list[str]:
        """Entries of the folder sparsekit did not write, or that changed since (relative POSIX paths,
        sorted): unlisted files and folders, links, and listed files whose content differs."""
        if self.meta.is_symlink() or (self.meta.exists() and not self.meta.is_dir()):
            return [META]
        if self.stage.is_symlink() or (self.stage.exists() and not self.stage.is_dir()):
            return [f"{META}/{STAGE}"]  # a run is only ever built in a real folder of ours
        backup = self.meta / "old"
        if backup.exists() and not backup.is_symlink() and not backup.is_dir():
            return [f"{META}/old"]
        # sparsekit never writes a link: one anywhere in .sparsekit (old/ itself, or a file or folder inside
        # next/) would have a resume, a swap or a cleanup write, move or delete what it points at, outside DIR.
        links = _links_under(self.meta) if self.meta.is_dir() else []
        if links:
            return [f"{META}/{rel}" for rel in links]
        owned = self.owned()
        dirs = {p.as_posix() for rel in owned for p in Path(rel).parents if p != Path(".")}
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.out):
            rel_dir = Path(dirpath).relative_to(self.out)
            if rel_dir == Path("."):
                dirnames[:] = [d for d in dirnames if d != META]
            for d in sorted(dirnames):
                rel = (rel_dir / d).as_posix()
                if (Path(dirpath, d).is_symlink() or rel not in dirs) and not self._our_temp(rel, owned, dirs):
                    found.append(rel)
            dirnames[:] = sorted(d for d in dirnames if (rel_dir / d).as_posix() in dirs)
            for name in sorted(filenames):
                rel = (rel_dir / name).as_posix()
                path = Path(dirpath, name)
                if self._our_temp(rel, owned, dirs) and not path.is_symlink():
                    continue  # a killed run's half-written file: removed by begin(), not the user's
                if rel not in owned or path.is_symlink() or not path.is_file() or self._sha256(path) not in owned[rel]:
                    found.append(rel)
        return sorted(found)

    def _our_temp(self, rel: str, owned: dict[str, set[str]], dirs: set[str]) -> bool:
        """Whether ``rel`` (relative to the output folder) is a temp file or folder of sparsekit's: one in
        ``.sparsekit``, or one named after a file or folder of a run's (``.NAME.XXXXXXXX.sparsekit.tmp`` beside NAME, as
        the manifest lists it) that is still private to this user, as tempfile creates it (mode 0600 or 0700; a
        finished output is given the umask's mode before it is renamed). A user's file of the same shape is the
        user's: never removed, and reported."""
        path = Path(rel)
        match = _temp_match(path)
        if match is None:
            return False
        if path.parts[0] == META:
            return True
        target = (path.parent / match.group(1)).as_posix()
        if target not in owned and target not in dirs:
            return False
        try:
            st = (self.out / rel).lstat()
            # Out here, a temp folder is only ever an ONNX export's staging folder, which holds its mark from the
            # start: a user's `.checkpoints.mybackup.tmp/` made under umask 077 (mode 0700, as mkdtemp makes them)
            # was removed, all its contents with it, by the next `prune --overwrite`. An empty one counts too: a
            # writer killed between mkdtemp and its mark leaves it so (and it made every later --overwrite refuse the
            # folder); remove_stale_temps takes such a folder with rmdir, which fails on a folder holding anything.
            if stat.S_ISDIR(st.st_mode) and not _marked_or_empty(self.out / rel):
                return False
        except OSError:
            return False
        return st.st_uid == os.getuid() and not st.st_mode & 0o077

    def _sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = _sha256(path)
        return self._digests[key]

    def check_owned(self, only: Iterable[str] | None = None, remedy: str | None = None) -> None:
        """Raise :class:`OutputError` naming the first entry sparsekit did not write. ``only``: the relative
        paths a caller is about to replace (``sparsekit report``: the report and plots), which are all that is
        checked then, with anything wrong inside ``.sparsekit``; ``remedy``: what the message tells the user to
        do instead of the default (move it away or choose another output folder)."""
        foreign = self.foreign()
        if only is not None:
            wanted = set(only)
            foreign = [rel for rel in foreign if rel in wanted or rel.split("/", 1)[0] == META]
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            remedy = remedy or "move it away or choose another output folder"
            raise OutputError(
                f"{self.out}: holds {foreign[0]}{more}, which no sparsekit run into this folder wrote (or that changed "
                f"since); sparsekit never replaces or deletes your files: {remedy}"
            )

    # --- writing ---------------------------------------------------------------------------------

    def begin(self) -> Path:
        """Take the folder's lock, create the staging folder (fresh, unless resuming) and return it;
        write every output there. On resume of a finished run, its last checkpoint and its metrics logs are copied
        in, so training continues from the one and appends to the others. Raises :class:`OutputError` when the folder
        is locked, no longer fits the run (rechecked under the lock) or cannot be written; the lock is then
        released."""
        if self.meta.exists() and not self.meta.is_dir():
            raise OutputError(f"{self.meta}: is not a folder; move it away or choose another output folder")
        self._new_out, self._new_meta = not self.out.exists(), not self.meta.exists()
        # -o new/a/b makes new and new/a too: a failed run left them behind when it removed only b.
        self._made_above = missing_folders(self.out)[1:]
        self._new_stage = not self.resume or not self.stage.exists()
        self.lock()  # released by the caller (unlock), after publish or on failure
        try:
            self._check_state()  # again, under the lock: another run may have finished here meanwhile
            # A killed run's half-written files (never renamed into place) go now, under the lock.
            owned = self.owned()
            dirs = {p.as_posix() for rel in owned for p in Path(rel).parents if p != Path(".")}
            self.removed_temps = (
                remove_stale_temps(self.out, lambda rel: self._our_temp(rel, owned, dirs)) if self.out.is_dir() else []
            )
            with writing(self.stage):
                if self.stage.exists() and not self.resume:
                    # DIR/.sparsekit/next holds only what an earlier unfinished run of ours wrote; _check_state
                    # has refused it if it is a link, and rmtree never follows links inside it.
                    shutil.rmtree(self.stage)
                finished = self.resume_checkpoint() if self.resume else None  # before next/ is made
                ckpt = Path("checkpoints") / "last.pt"
                if finished == self.out / ckpt and not self.stage.exists():
                    # Built aside, then renamed: a next/ left without the copy (a kill, a full disk) would read
                    # as an unfinished run that checkpointed no epoch, and the resume would train over.
                    self.meta.mkdir(parents=True, exist_ok=True)
                    building = self._temp_folder()
                    (building / ckpt).parent.mkdir()
                    shutil.copyfile(self.out / ckpt, building / ckpt)
                    self._carry_logs(building)
                    os.replace(building, self.stage)
                elif finished == self.out / ckpt:  # a run killed in its swap: next/ holds part of its results
                    (self.stage / ckpt).parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(self.stage / ckpt) as tmp:
                        shutil.copyfile(self.out / ckpt, tmp)
                    self._carry_logs(self.stage)
                self.stage.mkdir(parents=True, exist_ok=True)
            self._ckpt_before = _stat(self.stage / ckpt)
            self._ids = {path: identity(path) for path in (self.out, self.stage)}
        except BaseException:
            # Refused under the lock (another run's files arrived meanwhile) or failed: the .sparsekit folder and
            # the output folder this run created go when empty, as they do when a run is discarded; left behind,
            # an empty .sparsekit made the folder refuse a sensitivity analysis as holding files not its own.
            self._discarded = True
            self.unlock()
            raise
        return self.stage

    def _carry_logs(self, stage: Path) -> None:
        """Copy the finished run's metrics logs (``logs/``, as the manifest lists them) into ``stage`` where it has
        none of its own: the resume continues those files. Left out, the publish at its end replaced ``logs/`` by
        the resumed epochs' rows alone, or removed it when no epoch was left to train."""
        for rel in sorted(self.owned()):
            source, target = self.out / rel, stage / rel
            if Path(rel).parts[0] != LOGS or source.is_symlink() or not source.is_file() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)

    def removed(self) -> Path | None:
        """The output or staging folder when it was removed (or replaced by another) since :meth:`begin`: a
        user's ``rm -r`` while the run went on, which a later write then fails on, or re-creates part of. None
        when both are the folders ``begin`` had (or before ``begin``)."""
        ids = getattr(self, "_ids", {})
        return next((path for path, before in ids.items() if replaced(path, before)), None)

    def discard(self) -> bool:
        """After a run failed on bad input (while holding the lock): remove the staging folder when this
        run created it and checkpointed no epoch into it, so the folder is as before the run and the same
        command, fixed, runs again; then :meth:`unlock` also removes the ``.sparsekit`` folder and the
        output folder when this run created them and they are empty. Returns False, keeping everything,
        when there is a checkpoint to resume from (an earlier unfinished run's, or an epoch this run
        finished)."""
        ckpt = self.stage / "checkpoints" / "last.pt"
        if not self._new_stage or _stat(ckpt) != self._ckpt_before:
            return False
        shutil.rmtree(self.stage, ignore_errors=True)
        self._discarded = True
        return True

    def publish(self) -> list[str]:
        """Move the finished run from the staging folder into the output folder, replacing only
        files sparsekit wrote there; returns the published relative paths.

        The earlier results are first moved aside into ``.sparsekit/old``; if any move fails they are
        put back, so the folder holds either the old results or the new ones. Ctrl-C waits for the
        end of the swap (a fraction of a second). Raises :class:`OutputError` when the folder now holds
        a file sparsekit did not write; an OSError of a failed move propagates after the undo."""
        gone = self.removed()
        if gone is not None:  # the writes since re-created part of it: publishing would pass that off as a run
            raise OutputError(f"{gone}: removed while the run was writing into it")
        self.check_owned()  # again: the user may have put a file in the folder while the run went on
        new = {rel: _entry(self.stage / rel) for rel in _files_under(self.stage)}
        old = [rel for rel in _read_manifest(self.meta / MANIFEST) if (self.out / rel).is_file()]
        backup = self.meta / "old"  # only ever holds our earlier results, moved aside by a swap
        for rel in _files_under(backup) if backup.is_dir() else []:  # left by a swap that could not undo itself
            if not (self.out / rel).exists():
                with contextlib.suppress(OSError):
                    os.replace(backup / rel, self.out / rel)
        shutil.rmtree(backup, ignore_errors=True)
        moved: list[str] = []
        placed: list[str] = []
        with sigint_deferred():
            try:
                # Inside the held, undone block: a Ctrl-C just after it was written left it behind with nothing
                # moved, and the untouched earlier results read as a swap a kill cut short (report refused them).
                _write_manifest(self.meta / PENDING, new)
                for rel in old:
                    (backup / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.out / rel, backup / rel)
                    moved.append(rel)
                for rel in new:
                    (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.stage / rel, self.out / rel)
                    placed.append(rel)
                os.replace(self.meta / PENDING, self.meta / MANIFEST)
            except BaseException:
                for rel in reversed(placed):  # undo in reverse: the new run back to staging ...
                    with contextlib.suppress(OSError):
                        os.replace(self.out / rel, self.stage / rel)
                for rel in reversed(moved):  # ... and the earlier results back in place
                    with contextlib.suppress(OSError):
                        os.replace(backup / rel, self.out / rel)
                with contextlib.suppress(OSError):
                    (self.meta / PENDING).unlink()
                raise
            # Still held: a Ctrl-C raised before these would leave the emptied next/, which a resume takes for an
            # unfinished run that checkpointed no epoch, and the earlier results in old/. next/ goes by one rename
            # first, so a kill or a failed removal leaves a temp-named folder (removed by the next run), never it.
            spent = self.stage
            with contextlib.suppress(OSError):
                aside = self._temp_folder()
                try:
                    os.replace(self.stage, aside)  # onto the empty folder mkdtemp made
                    spent = aside
                except OSError:
                    aside.rmdir()
            _remove_empty_dirs(self.out, {str(Path(r).parent) for r in old})
            shutil.rmtree(backup, ignore_errors=True)
            shutil.rmtree(spent, ignore_errors=True)
        return list(new)

    def _temp_folder(self) -> Path:
        """A new empty folder in ``.sparsekit`` named as a temp (``.next.XXXXXXXX.sparsekit.tmp``): one a killed run
        leaves is removed by the next run's :func:`remove_stale_temps`, and never read as ``next/``."""
        return Path(tempfile.mkdtemp(prefix=f".{STAGE}.", suffix=TEMP_SUFFIX, dir=self.meta))

    def lock(self) -> None:
        """Take the folder's run lock, ``.sparsekit/lock`` (pid and host of the run holding it), so two
        runs never write one folder. A lock whose process is gone is taken over. Raises
        :class:`OutputError` naming the run that holds it."""
        self._check_no_run_around()
        # The output folder itself is flock-ed too, before anything is made in it: a sensitivity analysis holds that
        # lock on its folder (it writes no lock file), so a prune run and an analysis into one folder no longer both
        # write there and both fail, leaving each other's files behind.
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            held = lock_folder(self.out)
        if held is None:
            holder = _live_holder(self.meta / LOCK) if (self.meta / LOCK).exists() else None
            raise OutputError(
                f"{self.out}: another sparsekit run ({holder or 'a prune run or a sensitivity analysis'}) is writing "
                "this folder; wait for it to end or choose another output folder"
            )
        self._folder_fd = held
        try:
            self._lock_file()
        except BaseException:
            self._folder_fd = None
            unlock_folder(held)
            raise

    def _lock_file(self) -> None:
        """Create ``.sparsekit/lock`` (see :meth:`lock`), taking over one whose run is gone."""
        with writing(self.meta):
            self.meta.mkdir(parents=True, exist_ok=True)
        path = self.meta / LOCK
        # Taking the lock over from a killed run is read, judge, remove, create: two runs doing it at once could
        # each remove the other's fresh lock and both go on. An flock on the .sparsekit folder (released with the
        # descriptor, also when the process dies) makes every attempt one at a time.
        with writing(self.meta):
            guard = os.open(self.meta, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            for _ in range(2):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    holder = _live_holder(path)
                    if holder is None:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()  # stale: its run was killed
                        continue
                    raise OutputError(
                        f"{self.out}: another sparsekit run ({holder}) is writing this folder; wait for it to end or "
                        f"choose another output folder (if no run is active, delete {path})"
                    ) from None
                with writing(path), os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, fh)
                self._locked = True
                return
        finally:
            os.close(guard)
        raise OutputError(f"{path}: cannot take the run lock; delete it if no sparsekit run is active")

    def _check_no_run_around(self) -> None:
        """Raise :class:`OutputError` when a folder above this one is being written by a live run: its
        results would be published with this run's folder inside them, which it then refuses as not its own."""
        for parent in self.out.resolve().parents:
            lock = parent / META / LOCK
            holder = _live_holder(lock) if lock.exists() else None
            if holder is not None:
                raise OutputError(
                    f"{self.out}: lies inside {parent}, which another sparsekit run ({holder}) is writing; wait for "
                    "it to end or choose an output folder outside it"
                )

    def unlock(self) -> None:
        """Release the lock taken by :meth:`lock` (a no-op otherwise)."""
        if getattr(self, "_locked", False):
            try:
                (self.meta / LOCK).unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                # Released where a run ends, also a failed one: raising here would replace the error that stopped
                # it (a folder turned read-only) with one about the lock. The next run finds the lock stale.
                logging.getLogger("sparsekit").warning(
                    "could not remove the run lock %s (%s); the next run takes it over", self.meta / LOCK, err.strerror
                )
            self._locked = False
            if self._discarded:  # only folders this run created, and only when empty
                made_above = [(True, above) for above in self._made_above]
                for made, folder in ((self._new_meta, self.meta), (self._new_out, self.out), *made_above):
                    if made:
                        with contextlib.suppress(OSError):
                            folder.rmdir()
        held = getattr(self, "_folder_fd", None)
        if held is not None:
            self._folder_fd = None
            unlock_folder(held)

    def check_unlocked(self) -> None:
        """Raise :class:`OutputError` when another live run holds the folder's lock."""
        holder = _live_holder(self.meta / LOCK) if (self.meta / LOCK).exists() else None
        if holder is not None:
            raise OutputError(
                f"{self.out}: another sparsekit run ({holder}) is writing this folder; wait for it to end or "
                f"choose another output folder (if no run is active, delete {self.meta / LOCK})"
            )

    def record(self, paths: Iterable[Path]) -> None:
        """Add files sparsekit has just written into the folder itself (a re-rendered report) to the
        manifest, with their size and SHA-256. ``paths`` must lie inside the folder (ValueError
        otherwise); an unwritable manifest raises :class:`OutputError`."""
        files = _read_manifest(self.meta / MANIFEST)
        for p in paths:
            files[Path(p).relative_to(self.out).as_posix()] = _entry(Path(p))
        _write_manifest(self.meta / MANIFEST, files)


def _live_holder(path: Path) -> str | None:
    """'pid N on HOST' for a lock whose run is still alive (or on another host), None when stale."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            # Not a lock sparsekit writes (a pipe would block the read forever, a link leads elsewhere)
            raise ValueError("not a regular file")
        info = json.loads(path.read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])
        written = float(info.get("time", 0.0))
        if not 0 < pid < 2**31:  # os.kill: 0 and negatives name process groups, a huge one overflows
            raise ValueError(f"pid {pid}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError, OverflowError):
        # Unreadable: a run that died between creating and writing it, or one writing it right now.
        try:
            young = time.time() - path.stat().st_mtime < 10
        except OSError:
            return None
        return "a run that is starting" if young else None
    if host != socket.gethostname():
        return f"pid {pid} on {host}"  # cannot check another machine's processes: assume it is alive
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    started = _process_start(pid)
    if started is not None and started > written + 2.0:
        return None  # the pid was reused: this process started after the lock was written, by a run now gone
    return f"pid {pid} on {host}"


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from Linux's /proc; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime, after the command name
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def refuse_run_state(path: Path, what: str = "the output") -> None:
    """Raise :class:`OutputError` when ``path`` is in a run folder's own ``.sparsekit`` folder (resume checkpoints,
    staged files, the manifest), which only the run that owns it writes, and a new run or :meth:`RunFolder.clean`
    may delete."""
    if META in path.resolve().parts:
        raise OutputError(
            f"{path}: {what} would go inside a run's {META} folder, where sparsekit keeps that run's own state "
            "(checkpoints, staged files; a later run may delete it): choose a place outside it"
        )


def guard_location(out: Path, inputs: list[Path]) -> None:
    """Raise :class:`OutputError` when ``out`` is the root folder, the user's home folder, is inside a run's
    ``.sparsekit`` folder (:func:`refuse_run_state`), or is or contains one of the run's ``inputs``: no command
    writes its results there."""
    refuse_run_state(out, "the output folder")
    target = out.resolve()
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        home = None
    if target == Path(target.anchor) or target == home:
        what = "the root folder" if target == Path(target.anchor) else "your home folder"
        raise OutputError(
            f"{out}: the output folder is {what}; choose a folder of its own for the results, e.g. sparsekit-out"
        )
    for inp in inputs:
        resolved = inp.resolve()
        if resolved == target or resolved.is_relative_to(target):
            raise OutputError(
                f"{out}: the output folder {'is' if resolved == target else 'contains'} the input {inp}; "
                "sparsekit never writes where its inputs are: choose another output folder"
            )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_regular(path).decode("utf-8"))  # a named pipe there must not block the run
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):
        return {}  # unreadable: nothing counts as ours, so nothing is replaced
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    # Only plain relative paths inside the folder count; a manifest is data too.
    return {
        rel: info
        for rel, info in files.items()
        # "." (or "./") names the folder itself, not a file in it: it has no parts at all.
        if isinstance(rel, str) and Path(rel).parts and not Path(rel).is_absolute() and ".." not in Path(rel).parts
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
