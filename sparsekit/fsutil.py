"""Small helpers for the machine: atomic writes that turn disk errors into clear messages, a held
Ctrl-C, the memory available, and the global random generators (seeded, or kept as they were)."""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from .errors import OutputError

# errno -> what the user is told; each is a fact about their disk, not a sparsekit bug (exit 2).
DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for this file system",
}
# Some writers (torch's C++ zip writer, onnx's protobuf I/O) drop the errno; below this much free
# space a failed write is taken to be a full disk.
_NEARLY_FULL_BYTES = 4 << 20


def _errnos(err: BaseException) -> list[int]:
    """The errnos of ``err`` and of the exceptions it was raised from, in that order."""
    seen: set[int] = set()
    out: list[int] = []
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            out.append(e.errno)
        e = e.__cause__ or e.__context__
    return out


def _disk_errno(err: BaseException) -> int | None:
    return next((code for code in _errnos(err) if code in DISK_ERRORS), None)


def _free_bytes(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(p).free
    return None


def file_in_the_way(path: str | os.PathLike[str] | None, code: int | None) -> str | None:
    """For a path under a file (``-o notes.txt/m.onnx``), which mkdir reports as "File exists" and open as "Not a
    directory": the file that stands where a folder must be, and what to do; else None."""
    try:
        p = Path(os.fsdecode(path)) if path else None
        # The path itself only when mkdir refused it: any other error on an existing file is about that file.
        candidates = ([p] if code == errno.EEXIST else []) + list(p.parents) if p is not None else []
        for there in candidates:
            if there.exists() and not there.is_dir():
                return f"{there}: is a file, not a folder, and the output would go inside it; name another path"
    except (OSError, ValueError, TypeError):
        return None
    return None


def name_too_long(path: str | os.PathLike[str] | None, code: int | None) -> str | None:
    """For "File name too long" (ENAMETOOLONG): the part of ``path`` the file system cannot take and what to do;
    else None. Its "check the path and its permissions" sent users to permissions, and named the lock or temp file
    inside an output folder whose own name was the one too long."""
    if code != errno.ENAMETOOLONG or not path:
        return None
    p = Path(os.fsdecode(path))
    for part in [*reversed(p.parents), p]:
        size = len(os.fsencode(part.name))
        if size > NAME_MAX:
            return f"{part}: the name is {size} bytes, more than the {NAME_MAX} file systems take; choose a shorter one"
    return f"{p}: the path is too long for this system; choose a shorter one (or a folder nearer the top)"


def near_file(path: str | os.PathLike[str], most: int = 1000) -> str:
    """For a file not found: "; did you mean 'weights.pt'?" naming the file of the closest name in the folder it was
    looked for in (a missing or extra letter, .yml for .yaml), written as the user wrote the folder; else "". Only the
    first ``most`` names of the folder are read, and hidden files are never offered."""
    import difflib
    import itertools

    try:
        p = Path(os.fsdecode(path))
        with os.scandir(p.parent) as entries:
            names = [
                entry.name
                for entry in itertools.islice(entries, most)
                if not entry.name.startswith(".") and entry.is_file()
            ]
        close = difflib.get_close_matches(p.name, names, n=1, cutoff=0.8)
    except (OSError, ValueError, TypeError):
        return ""
    if not close:
        return ""
    return f"; did you mean {str(p.with_name(close[0]))!r}?"


def dangling_link(path: str | os.PathLike[str] | None) -> str | None:
    """For a path (or a folder above it) that is a symbolic link to nothing, which mkdir reports as "File exists":
    what the link points at and what to do; else None."""
    try:
        p = Path(os.fsdecode(path)) if path else None
        for link in [p, *p.parents] if p is not None else []:
            if link.is_symlink() and not link.exists():
                try:
                    os.stat(link)
                except OSError as err:
                    if err.errno == errno.ELOOP:  # "which does not exist" of a link that leads back to itself misled
                        return (
                            f"{link}: a symbolic link to {os.readlink(link)} that leads back to itself (a loop of "
                            "links); point it at a real file, or name another path"
                        )
                return (
                    f"{link}: a symbolic link to {os.readlink(link)}, which does not exist; create what it points at, "
                    "or name another path"
                )
    except (OSError, ValueError, TypeError):
        return None
    return None


def disk_error(err: BaseException, path: str | os.PathLike[str]) -> OutputError | None:
    """An :class:`OutputError` naming ``path`` when ``err`` (or its cause) is a disk problem (full,
    quota, permission, read-only, file too large; or any failure with under 4 MiB free), else None."""
    path = Path(path)
    code = _disk_errno(err)
    other = _errnos(err)
    if code is None and other and other[0] == errno.EEXIST:
        # mkdir of a folder above `path` that is a file, or a link to nothing: the command's own check said so, the
        # Python API (finetune's checkpoint_dir, save_model, export_onnx) raised the bare FileExistsError.
        blocker = file_in_the_way(path, None) or dangling_link(path.parent)
        if blocker:
            return OutputError(blocker)
    if code is None and other and other[0] in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EBUSY):
        # The OS said what went wrong (no such folder, ...): say that, not "full" (/proc has 0 B free).
        # EBUSY: the rename onto "." (a folder in use), which is a folder like any other to the user.
        why = os.strerror(errno.EISDIR if other[0] == errno.EBUSY and path.is_dir() else other[0])
        if other[0] == errno.ENOTDIR and (blocker := file_in_the_way(path, other[0])):
            return OutputError(blocker)
        if other[0] in (errno.EISDIR, errno.EBUSY) and path.is_dir():
            # a folder where a file goes: "choose an output folder" read as if the folder were the fault's remedy
            return OutputError(f"{path}: cannot write it: it is a folder; give a file name (inside it, say)")
        return OutputError(f"{path}: cannot write it: {why}; choose an output folder you can write to")
    if code is None:
        free = _free_bytes(path.parent)
        if free is None or free >= _NEARLY_FULL_BYTES:
            return None
        code = errno.ENOSPC
    hint = {
        errno.ENOSPC: "free some space or choose an output on another disk",
        errno.EDQUOT: "free some space or choose an output on another disk",
        errno.EFBIG: "choose an output on a file system that takes large files",
    }.get(code, "choose an output folder you can write to")
    return OutputError(f"{path}: cannot write it: {DISK_ERRORS[code]}; {hint}")


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a disk error raised while writing ``path`` (full, no permission, read-only) into an
    :class:`OutputError` naming it; any other error passes through unchanged."""
    try:
        yield
    except (KeyboardInterrupt, OutputError):
        raise
    except Exception as err:
        mapped = disk_error(err, path)
        if mapped is None:
            raise
        raise mapped from err


def identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(device, inode)`` of a file or folder, None when there is none: tells the same folder from a new one of
    the same name (a folder removed and re-created while a run wrote into it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def replaced(path: str | os.PathLike[str], before: tuple[int, int] | None) -> bool:
    """Whether ``path`` is gone, or another file or folder than the one whose :func:`identity` was ``before``. A stat
    that fails for another reason than absence (a network filesystem's timeout, a permission change on a folder
    above) cannot tell, and is not taken for removal."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return (st.st_dev, st.st_ino) != before


def missing_folders(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` and its ancestors that do not exist (yet), deepest first: the folders a ``mkdir(parents=True)`` of
    ``path`` would create, and a run that made them removes again (when empty) if it fails."""
    missing = []
    for p in (Path(path), *Path(path).parents):
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    return missing


def nearest_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a folder, else its nearest ancestor that is (the folder a write there would re-create
    the rest under)."""
    here = Path(path)
    while not here.is_dir() and here != here.parent:
        here = here.parent
    return here


# The empty file every ONNX staging folder (sparsekit.onnx.files.staging) holds from its first moment, so that only a
# folder sparsekit made is ever removed as a killed writer's: a user's folder of the same name
# (`.model.onnx.backup01.tmp`) was removed with everything in it by the next export beside it.
STAGING_MARK = ".sparsekit-staging"

# The end of every temp file and folder sparsekit makes beside an output (".NAME.XXXXXXXX.sparsekit.tmp", mkstemp's
# random part between): a later run removes only names of this shape as a killed writer's. With the plain ".tmp"
# of tempfile's, a user's private `.report.md.draft001.tmp` beside a run's report.md had the same shape and was
# deleted by the next `prune --overwrite`.
TEMP_SUFFIX = ".sparsekit.tmp"

# The longest file name (in bytes) the usual file systems take: ext4, XFS, btrfs, APFS.
NAME_MAX = 255


def temp_prefix(name: str) -> str:
    """The start of the temp names sparsekit makes for ``name``: ``.NAME.``, and for a name too long to fit in a
    temp name (``.NAME.XXXXXXXX.sparsekit.tmp`` is 24 bytes longer) ``.CUT~HASH.``: its start and a hash of the
    whole. An output named with up to 255 bytes, which the file system takes, was refused with "File name too
    long" about a temp name the user never gave."""
    room = NAME_MAX - len(f"..XXXXXXXX{TEMP_SUFFIX}")
    raw = os.fsencode(name)
    if len(raw) <= room:
        return f".{name}."
    digest = hashlib.sha256(raw).hexdigest()[:8]
    # Cut whole characters: bytes cut inside a UTF-8 character became a lone surrogate ('\udcc3'), which a message
    # naming the temp (a full disk's) printed as such and which no UTF-8 text (JSON, a log) can hold
    cut = name
    while len(os.fsencode(cut)) > room - len(digest) - 1:
        cut = cut[:-1]
    return f".{cut}~{digest}."


def temp_shape(name: str) -> re.Pattern[str]:
    """The exact shape of a temp name tempfile made for ``name`` (:func:`temp_prefix`, its 8 random characters,
    :data:`TEMP_SUFFIX`): what a clean-up may remove as sparsekit's own, and nothing else."""
    return re.compile(re.escape(temp_prefix(name)) + r"[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


def remove_killed_temps(path: str | os.PathLike[str], age: float = 3600.0) -> None:
    """Remove the temp files that writes of ``path`` killed before their rename (SIGKILL, a power cut) left beside
    it: ``.NAME.XXXXXXXX.sparsekit.tmp`` regular files over ``age`` seconds old (a live write's is seconds old). For
    the cache files any run may write at any time, where no lock says which writer is gone; nothing else removes
    them, so every kill left one more. Never raises."""
    path = Path(path)
    shape = temp_shape(path.name)
    with contextlib.suppress(OSError), os.scandir(path.parent) as found:
        for entry in found:
            if not shape.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: leave it
                if (
                    entry.is_file(follow_symlinks=False)
                    and time.time() - entry.stat(follow_symlinks=False).st_mtime > age
                ):
                    os.unlink(entry.path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in the same folder; on success it is renamed to ``path``, on error removed.

    A finished file is therefore either the old one or the complete new one, never half-written.
    Raises :class:`OutputError` naming ``path`` when the disk is full, read-only or not writable."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
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


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A new temporary folder (in the temp folder, ``$TMPDIR``), removed with everything in it when the block ends:
    for files a check writes and reads back (a rehearsal's ONNX export, a latency sweep). A disk error while writing
    in it (a full or read-only temp folder) is an :class:`OutputError` about the temp folder: its remedy, "choose an
    output on another disk", named an output the user never gave, at a temp path that was gone when they read it."""
    base = tempfile.gettempdir()

    def about_temp(why: str) -> OutputError:
        return OutputError(
            f"{base}: cannot write the temporary files sparsekit checks with there ({why}); make room there (or make "
            "it writable), or set the TMPDIR environment variable to another folder"
        )

    try:
        tmp = tempfile.mkdtemp(prefix=prefix)
    except OSError as err:
        raise about_temp(DISK_ERRORS.get(err.errno or 0, err.strerror or str(err))) from None
    try:
        yield Path(tmp)
    except OutputError as err:
        said = err.raw_message
        if not said.startswith(tmp + os.sep) or ": cannot write it: " not in said:
            raise
        raise about_temp(said.split(": cannot write it: ", 1)[1].split(";", 1)[0]) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file at ``path``. Raises OSError when it is missing, unreadable or not a
    regular file: a named pipe is opened without waiting for a writer and refused (reading one blocks until
    another process writes), a device (``/dev/zero`` never ends) or socket is refused. For the files
    sparsekit reads from folders a user or another process can write into (manifests, reports, stores)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a named pipe, device or socket)", str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # closed with fh
            return fh.read()
    finally:
        if fd >= 0:
            os.close(fd)


def is_zip_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable zip archive (torch's checkpoint format, numpy's .npz). Never raises:
    ``zipfile.is_zipfile`` raises BadZipFile itself on some damaged ends (a multi-disk count in a zip64
    locator), where a damaged file must still be reported as bad input."""
    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError):
        return False


def empty_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an empty regular file (not a link): replacing it loses nothing. ``tempfile``'s
    ``mkstemp`` and ``NamedTemporaryFile`` make one, whose name a caller then gives a writer to fill. Never raises."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (see :func:`atomic_path`). Raises
    :class:`OutputError` naming ``path`` when the disk is full, read-only or not writable."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (and a SIGTERM that is handled in Python, see ``sparsekit._terminate``) until the
    block ends, then raise it: KeyboardInterrupt, or :class:`~sparsekit.errors.Terminated` (main thread
    only; elsewhere a no-op). A signal that is ignored or left to the OS's default stays so."""
    got: list[int] = []
    held: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(sig)
            if callable(current):  # not SIG_IGN / SIG_DFL / None: Python raises on it, so hold it
                held[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        yield
        return
    try:
        yield
    finally:
        for signum, previous in held.items():
            signal.signal(signum, previous)
    if signal.SIGTERM in got:
        from .errors import Terminated

        raise Terminated("stopped by SIGTERM")
    if got:
        raise KeyboardInterrupt


# Descriptors holding a folder's flock (:func:`lock_folder`). A forked child (a DataLoader worker) inherits them,
# and a flock lives while any copy is open: the child closes its copies at once, so the parent's release releases.
_FOLDER_LOCKS: set[int] = set()


def _close_folder_locks_in_child() -> None:
    for fd in _FOLDER_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _FOLDER_LOCKS.clear()


os.register_at_fork(after_in_child=_close_folder_locks_in_child)


def lock_folder(path: str | os.PathLike[str], *, wait: bool = False) -> int | None:
    """Open the folder ``path`` and take an exclusive ``flock`` on it (the kernel drops it when the process
    ends, also when killed: nothing is ever stale). Returns the descriptor to pass to :func:`unlock_folder`, or
    None when another process holds the lock (``wait=False``; ``wait=True`` waits for it). On a file system
    without flock (NFS, some FUSE mounts) the descriptor comes back unlocked: the lock guards against a second
    run, and a run goes on without it rather than fail. Raises OSError when the folder cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        pass  # ENOLCK, EOPNOTSUPP, ...: no flock on this file system
    _FOLDER_LOCKS.add(fd)
    return fd


def unlock_folder(fd: int) -> None:
    """Release a lock :func:`lock_folder` took (closing its descriptor)."""
    _FOLDER_LOCKS.discard(fd)
    os.close(fd)


def _proc_kib(path: str, key: str) -> int | None:
    """Bytes of the ``key: N kB`` line of a Linux /proc file, or None where there is none."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``); None when unknown."""
    return _proc_kib("/proc/meminfo", "MemAvailable")


# A model file (a .pt, an .onnx) cloned without git-lfs: the right file, not yet fetched.
GIT_LFS_POINTER = "it is a Git LFS pointer, not the file: fetch it with git lfs pull"


def text_start(path: str | os.PathLike[str]) -> str | None:
    """``"it is a text file, starting '...'"`` (or ``"the file is empty"``, :data:`GIT_LFS_POINTER`) when ``path``
    holds no binary data in its first 64 bytes (model files, torch's and ONNX's, are binary), else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
        # Incremental: a character cut at byte 64 is not a decoding error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except (OSError, UnicodeDecodeError):
        return None
    if not head:
        return "the file is empty"
    text = text.removeprefix("\ufeff")  # a byte-order mark
    if not all(c.isprintable() or c in "\t\r\n" for c in text):
        return None
    if text.startswith("version https://git-lfs"):
        return GIT_LFS_POINTER
    start = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"it is a text file, starting {start!r}" if start else "it is a text file of blank lines"


def too_large_to_unpack(path: str | os.PathLike[str]) -> str | None:
    """Why reading the zip archive ``path`` (torch's checkpoint format) would exhaust this machine's memory, from its
    directory alone; None when it fits, is no zip archive or the free memory is unknown. torch.load reads every
    member whole, compressed ones too, though torch never compresses what it writes: a few MB of deflated zeros
    can declare tens of GiB, which a file sparsekit reads back (a run folder's checkpoint) must not."""
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError):
        return None  # not a zip archive (or unreadable): whoever reads it says what it is
    free = available_memory()
    if free is None or unpacked <= free:
        return None
    return (
        f"its archive members hold {unpacked / 2**30:,.1f} GiB once unpacked (a file of {os.path.getsize(path):,} "
        f"bytes), more than this machine's {free / 2**30:,.1f} GiB of free memory"
    )


def private_memory() -> int | None:
    """Bytes of this process's private data mappings (Linux ``VmData``: what ``RLIMIT_DATA`` limits); None
    when unknown."""
    return _proc_kib("/proc/self/status", "VmData")


_IGNORED_CACHE: set[str] = set()  # relative SPARSEKIT_CACHE_DIR values warned of (see cache_dir)


def cache_dir() -> Path:
    """sparsekit's cache folder: ``$SPARSEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/sparsekit``, else
    ``~/.cache/sparsekit``. It holds parsed built-in datasets, the import names of the installed packages sparsekit
    never runs code from (``denied-import-names.json``, see :mod:`sparsekit.trust`), the last sensitivity analysis of
    each model file a ``prune`` run allocated from (``sensitivity/``) and, for the ``sparsekit``
    command, matplotlib's font cache (``matplotlib/``). Deleting it is always safe. A relative
    ``$SPARSEKIT_CACHE_DIR`` is ignored with a warning, as a relative ``$XDG_CACHE_HOME`` is."""
    given = os.environ.get("SPARSEKIT_CACHE_DIR")
    if given:
        path = Path(given).expanduser()
        if path.is_absolute():
            return path
        # It named another cache in every working directory: one a downloaded project could ship, with its own list of
        # the packages never run and its own sensitivity tables. Ignored, as SPARSEKIT_CONFIG_DIR's relative value is.
        if given not in _IGNORED_CACHE:  # said once per process, not at each of a run's several looks at its cache
            _IGNORED_CACHE.add(given)
            import logging

            logging.getLogger("sparsekit").warning(
                "SPARSEKIT_CACHE_DIR=%s is a relative path, which would name another cache in every working "
                "directory: ignored; set it to an absolute path",
                given,
            )
    xdg = xdg_home("XDG_CACHE_HOME")
    if xdg is not None:
        return xdg / "sparsekit"
    return Path.home() / ".cache" / "sparsekit"


def xdg_home(variable: str) -> Path | None:
    """``$variable`` (``XDG_CACHE_HOME``, ``XDG_CONFIG_HOME``) as a folder, or None when unset, empty or relative:
    the XDG Base Directory specification has a relative path ignored (it would name another folder in every
    working directory, and the trusted-modules list must not follow the user into a downloaded project)."""
    value = os.environ.get(variable)
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else None


def seed_generators(seed: int, rank: int = 0) -> None:
    """Seed torch's global generator with ``seed``, numpy's and Python's with ``seed + rank`` (under torchrun each
    rank draws its own augmentation noise; rank 0 draws what a single process does)."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed((seed + rank) % 2**32)  # numpy's global generator takes 32-bit seeds
    random.seed(seed + rank)


@contextlib.contextmanager
def global_rng_kept(*, torch: bool = True) -> Iterator[None]:
    """Put Python's, numpy's and (``torch=True``) torch's global random generators back as they were (those already
    imported).
    Importing a module may draw from them (rich's import draws from Python's; scikit-learn imports rich), so a
    module imported after seeding, the user's code or one sparsekit imports when first needed, shifted what the same
    seed gives: a data module imported after the CLI seeded (a user's script imports first), or the first
    ``sparsekit.finetune`` in a process against the next."""
    import random
    import sys

    np = sys.modules.get("numpy")
    th = sys.modules.get("torch") if torch else None
    py_state = random.getstate()
    np_state = np.random.get_state() if np is not None else None
    torch_state = th.get_rng_state() if th is not None else None
    # torch.manual_seed seeds every GPU's generator too: a caller's CUDA draws (dropout on the GPU) were left reseeded
    # from the recipe after run_prune, though its CPU generator came back. (One not yet initialized holds nothing.)
    cuda = th.cuda if th is not None and th.cuda.is_initialized() else None
    cuda_states = cuda.get_rng_state_all() if cuda is not None else None
    try:
        yield
    finally:
        random.setstate(py_state)
        if np is not None:
            np.random.set_state(np_state)
        if th is not None:
            th.set_rng_state(torch_state)
        if cuda is not None:
            cuda.set_rng_state_all(cuda_states)


P = ParamSpec("P")
R = TypeVar("R")


def keeps_caller_generators(*, torch: bool) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator: the wrapped function puts the global generators back as :func:`global_rng_kept` does when it
    returns or raises. The Python API's entries seed them from the recipe (a data callable's split and augmentation
    draw what the command line's do), which left a caller's own generators reseeded: a sweep drawing its next trial
    with ``random.choice`` after each call drew the same one every time."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def kept(*args: P.args, **kwargs: P.kwargs) -> R:
            with global_rng_kept(torch=torch):
                return fn(*args, **kwargs)

        return kept

    return wrap
