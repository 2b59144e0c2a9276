"""Sensitivity analysis on files: ``sparsekit sensitivity`` (:func:`run_sensitivity`) and the step of
``sparsekit prune`` that turns ``sparsity: auto`` / ``ratio: auto`` into per-layer values
(:func:`allocate_for_run`). The measurements and the allocation algorithms are in
:mod:`sparsekit.sensitivity`; this module adds the model file, the data, progress, the resumable table
and the output files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from . import distributed as _distributed
from .errors import OutputError, SparsekitError, TargetError, one_line, option, render
from .fsutil import (
    TEMP_SUFFIX,
    keeps_caller_generators,
    lock_folder,
    missing_folders,
    read_regular,
    remove_killed_temps,
    sigint_deferred,
    unlock_folder,
    write_text,
)
from .provenance import describe_changes, differences
from .recipe import Recipe, resolve_recipe

if TYPE_CHECKING:
    from .pipeline import Inputs
    from .sensitivity import Probe, SensitivityTable

ALLOCATION_FILE = "allocation.json"
# The table so far of an unfinished analysis (saved after every probe; what resume continues from). The finished
# files replace the earlier analysis's only when the new one is done, so an interrupted overwrite keeps them.
PARTIAL_FILE = "sensitivity.partial.json"
OUTPUT_FILES = ("sensitivity.json", "sensitivity.png", "sensitivity.md", ALLOCATION_FILE, PARTIAL_FILE)
# SHA-256 of every file above this command wrote: overwrite and resume replace a file only when it is still
# what sparsekit wrote (a hand-written sensitivity.md, or one edited since, is the user's).
MANIFEST_FILE = ".sensitivity-manifest.json"


class _FolderLock:
    """An exclusive lock on an analysis's output folder (:func:`~sparsekit.fsutil.lock_folder`), so two analyses
    never write one folder: the second fails, naming it, instead of mixing its files with the first's. Taken
    once the folder exists (a run whose inputs fail their checks creates none); :meth:`take` again is a no-op."""

    def __init__(self, out: Path, check: Callable[[], None] | None = None) -> None:
        self.out, self.fd, self.check = out, -1, check

    def take(self) -> None:
        """Raise :class:`OutputError` when another live process holds the folder's lock, or (``check``) when the
        folder, looked at again under the lock, may no longer be written."""
        if self.fd >= 0:
            return
        try:
            fd = lock_folder(self.out)
        except OSError as err:
            raise OutputError(
                f"{self.out}: cannot open the output folder ({err.strerror}); check its permissions"
            ) from None
        if fd is None:
            # A prune run flocks its output folder too: the holder may be either command.
            raise OutputError(
                f"{self.out}: another sparsekit sensitivity run is writing this folder (or a prune run: both lock it); "
                f"wait for it to end or choose another output folder ({option('output')})"
            )
        self.fd = fd
        if self.check is not None:
            # The folder was judged before the model and data were loaded; a run that wrote it meanwhile (a prune
            # run's results) would otherwise get this analysis's partial table mixed into its files.
            try:
                self.check()
            except BaseException:
                self.release()
                raise
        _remove_killed_writes(self.out)

    def release(self) -> None:
        if self.fd >= 0:
            unlock_folder(self.fd)
            self.fd = -1


def _remove_killed_writes(out: Path) -> None:
    """Remove the temp files that an analysis killed while writing one of its files (SIGKILL, a power cut) left in
    ``out``: nothing else removes them, and each run killed in its last seconds (the plot) left more. Called under
    the folder's lock, so no live analysis is writing them."""
    from .outputs import remove_stale_temps, temp_target

    own = (*OUTPUT_FILES, MANIFEST_FILE)
    with contextlib.suppress(OSError):  # (the run folders' own sweep, limited to the analysis's file names)
        remove_stale_temps(out, lambda rel: temp_target(rel) in own)


def _analysis_bar(progress: bool, save_to: Path | None = None, lock: _FolderLock | None = None) -> tuple[Any, Any]:
    """A progress bar and the ``progress(probe)`` callback that advances it and, with ``save_to``, saves the
    table so far after every probe (what ``resume`` continues from), noted in the folder's manifest, holding
    ``lock`` on its folder from the first save on."""
    import sys
    import time

    from .train import _say as say_line
    from .train import progress_bar

    # Without a terminal (a log file, a pipe, a batch job) a bar shows only when it ends: a line per layer instead,
    # as fine-tuning prints one per epoch.
    lines = progress and not sys.stderr.isatty()
    bar = progress_bar(progress and not lines)
    task = bar.add_task("sensitivity", total=None, info="")
    start, current = time.perf_counter(), [""]

    def say(layer: str, done: int, total: int) -> None:
        took = time.perf_counter() - start
        # One write with its newline (print() writes the end separately: a Ctrl-C between the two left the
        # Interrupted line on the end of this one).
        say_line(f"sensitivity: {layer} probed ({done}/{total} probes, {took:.1f} s)")

    def advance(probe: Probe) -> None:
        bar.update(task, total=probe.total, completed=probe.done, info=f"{probe.layer} at {probe.value:g}")
        if lines:
            if current[0] and probe.layer != current[0]:
                say(current[0], probe.done - 1, probe.total)  # the probe just done is the next layer's first
            current[0] = probe.layer
            if probe.done >= probe.total:
                say(probe.layer, probe.done, probe.total)
        if save_to is not None:
            # Created with the first result: inputs that fail their checks leave no empty folder behind.
            save_to.parent.mkdir(parents=True, exist_ok=True)
            if lock is not None:
                lock.take()
            text = probe.table.to_json()
            with sigint_deferred():  # the file and its manifest entry together (milliseconds)
                _note_pending(save_to.parent, {save_to.name: _sha256_of(text.encode("utf-8"))})
                write_text(save_to, text)
                _note_written(save_to.parent, [save_to.name])

    return bar, advance


def _sha256_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> str:
    return _sha256_of(path.read_bytes())


def _manifest(out: Path, part: str = "files") -> dict[str, str]:
    """The folder's manifest (file name -> SHA-256); empty when there is none or it is not one of ours. ``part``
    ``pending``: the files being written when it was last written (see :func:`_note_pending`)."""
    path = out / MANIFEST_FILE
    try:
        if path.is_symlink() or not path.is_file():
            return {}
        data = json.loads(read_regular(path).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    files = data.get(part) if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if k in OUTPUT_FILES and isinstance(v, str)}


def _write_manifest(out: Path, files: dict[str, str], pending: dict[str, str]) -> None:
    data: dict[str, Any] = {"written_by": "sparsekit sensitivity", "files": files}
    if pending:
        data["pending"] = pending
    write_text(out / MANIFEST_FILE, json.dumps(data, indent=2))


def _note_pending(out: Path, hashes: dict[str, str]) -> None:
    """Record the SHA-256 of files about to be written into ``out`` (name -> hash), before they are: a run killed
    (SIGKILL) after a file was replaced but before :func:`_note_written` recorded it left a file its manifest did
    not know, so the next ``resume`` and ``overwrite`` refused the folder as holding a file of the user's."""
    _write_manifest(out, _manifest(out), {**_manifest(out, "pending"), **hashes})


def _note_written(out: Path, names: list[str], dropped: tuple[str, ...] = ()) -> None:
    """Record ``names`` (just written into ``out``) in its manifest, and forget ``dropped``. A pending file a killed
    run did write (its content is the hash noted) is recorded too."""
    files = {k: v for k, v in _manifest(out).items() if k not in dropped}
    for name, sha in _manifest(out, "pending").items():
        if name not in dropped and _ours(out / name, {name: sha}):
            files[name] = sha
    files.update({name: _sha256(out / name) for name in names})
    _write_manifest(out, files, {})


def allocate_for_run(
    inputs: Inputs, recipe: Recipe, reuse: list[Path], *, progress: bool
) -> tuple[Recipe, SensitivityTable | None, dict[str, Any] | None]:
    """For ``sparsekit prune``: ``recipe`` with its ``auto`` entries allocated from a sensitivity analysis of
    the loaded model on the validation split (:func:`sparsekit.allocation.auto_allocate`); unchanged, with
    None, None, when it has none. Returns ``(recipe, table, allocation)`` where ``allocation`` is what
    ``allocation.json`` holds (the allocated pruning section and, per entry, the predicted loss increase of
    the allocation and of a uniform one).

    A resumed run reuses the allocation in the first folder of ``reuse`` that holds ``allocation.json``, so
    its checkpoint's masks keep their meaning (a latency target would measure differently twice). Under
    torchrun every rank takes rank 0's allocation."""
    from .allocation import allocate_with_details
    from .sensitivity import RESUME_REFUSED, SensitivityTable, analyze, auto_entries

    wanted = auto_entries(recipe)
    if not wanted:
        return recipe, None, None
    asked = [spec.model_dump(mode="json") for spec in recipe.pruning]
    for folder in reuse:
        saved = folder / ALLOCATION_FILE
        if saved.is_file():
            try:
                allocation = json.loads(read_regular(saved).decode("utf-8"))
                if not isinstance(allocation, dict) or not isinstance(allocation.get("pruning"), list):
                    raise ValueError("not an allocation sparsekit wrote")
            except (OSError, ValueError, RecursionError) as err:
                raise SparsekitError(
                    f"{saved}: cannot reuse its per-layer values ({one_line(err, 120)}); start again with "
                    f"{option('overwrite')}"
                ) from None
            if allocation.get("asked") != asked:
                # Named field by field, as a resume's other refusals are: "another pruning section" alone left the
                # user to find which of their --set overrides or recipe edits it meant.
                changed = describe_changes(
                    differences({"recipe": {"pruning": allocation.get("asked")}}, {"recipe": {"pruning": asked}})
                )
                raise SparsekitError(
                    f"{saved}: its per-layer values were chosen for another pruning section ({changed}); the run "
                    f"cannot continue with them: resume with what the checkpoint was written with, or start again "
                    f"with {option('overwrite')}"
                )
            # A run folder is data: the allocated entries and the notes on them must be what sparsekit writes.
            try:
                _check_allocation(allocation, asked)
                allocated = _with_pruning(recipe, allocation["pruning"])
            except ValueError as err:  # (pydantic's ValidationError is one: its first error says where)
                first = err.errors()[0] if isinstance(err, ValidationError) else None
                why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else one_line(err, 120)
                raise SparsekitError(
                    f"{saved}: cannot reuse its per-layer values ({why}); start again with {option('overwrite')}"
                ) from None
            table_path = folder / "sensitivity.json"
            table = SensitivityTable.load(table_path) if table_path.is_file() else None
            return allocated, table, allocation
    _check_setup(inputs, recipe)
    model = inputs.loaded.model
    cached = _cached_table(inputs)
    bar, advance = _analysis_bar(progress and _distributed.is_main())
    with bar:
        used = _with_source(recipe, inputs.source)

        def analysis(earlier: SensitivityTable | None) -> SensitivityTable:
            return analyze(
                model, used, inputs.bundle.val, progress=advance, input_shape=inputs.shape, entries=wanted,
                resume_from=earlier,
            )  # fmt: skip

        try:
            table = analysis(cached)
        except TargetError as err:
            if cached is None or not err.raw_message.startswith(RESUME_REFUSED):
                raise
            table = analysis(None)  # measured on another model file's weights, other data or settings: afresh
    _cache_table(inputs, table)
    allocated, details = allocate_with_details(model, recipe, table, input_shape=inputs.shape)
    pruning = [spec.model_dump(mode="json") for spec in allocated.pruning]
    pruning = _distributed.broadcast(pruning)  # rank 0's, in case a measured latency differed
    # `asked`: the pruning section as written, so a resume can tell whether these values still answer it.
    allocation = {"asked": asked, "pruning": pruning, "entries": {str(d.index): d.as_dict() for d in details}}
    untrained = table.noise_warning()
    if untrained:
        allocation["warning"] = untrained
    return _with_pruning(recipe, pruning), table, allocation


def _discard_empty(made: list[Path]) -> None:
    """An allocation that fails with nothing probed leaves no folder behind: ``made`` (the output folder and the
    folders above it this run created, deepest first: ``-o new/a/b`` made three) go when empty; they hold nothing to
    resume from (a partial table, when there is one, stays to be resumed)."""
    for folder in made:
        if not folder.is_dir() or folder.is_symlink() or any(folder.iterdir()):
            return
        folder.rmdir()


def _table_cache(inputs: Inputs) -> Path | None:
    """Where the last analysis of this model file is kept (one per file path, in the cache folder), or None under
    torchrun (every rank analyses, and rank 0's allocation is taken)."""
    if _distributed.world_size() > 1:
        return None
    import hashlib

    from .fsutil import cache_dir

    key = hashlib.sha256(os.fsencode(os.path.abspath(inputs.model_path))).hexdigest()[:32]
    return cache_dir() / "sensitivity" / f"{key}.json"


def _cached_table(inputs: Inputs) -> SensitivityTable | None:
    """The last analysis of this model file (None when there is none or it cannot be read). A run whose allocation
    failed (an unreachable target, exit 2) leaves no run folder, and its corrected rerun analysed every layer again;
    :func:`~sparsekit.sensitivity.analyze` takes the cached table only when it was measured on the same weights, data
    and settings (its fingerprint and setup hashes), so a stale one costs nothing but the check."""
    from .sensitivity import SensitivityTable

    path = _table_cache(inputs)
    if path is None or not path.is_file():
        return None
    try:
        return SensitivityTable.from_json(read_regular(path))
    except (OSError, SparsekitError, RecursionError):
        return None


def _cache_table(inputs: Inputs, table: SensitivityTable) -> None:
    """Keep ``table`` for :func:`_cached_table` (a cache: a write that fails is no error)."""
    path = _table_cache(inputs)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_killed_temps(path)
        write_text(path, table.to_json())
    except (OSError, SparsekitError):
        pass


def _check_setup(inputs: Inputs, recipe: Recipe) -> None:
    """Raise, before the analysis rather than after it, what building the run's Pruner raises whatever values
    the allocation chooses (two entries masking one layer, a structured entry reshaping the weights another
    masks, ...): it is built on a weightless copy of the model (:func:`sparsekit.rehearsal.meta_copy`) with
    uniform stand-ins for the auto values (:func:`sparsekit.allocation.placeholder_recipe`, as ``validate``
    rehearses them). What fails there only for want of values is left to the checks after the allocation. A
    ``gradient`` entry's layers must get gradients (not frozen, on the path to the logits), checked as ``validate``
    does: a frozen layer was refused only after the whole analysis had run."""
    from .allocation import placeholder_recipe
    from .pruner import Pruner
    from .rehearsal import _check_gradient_reach, meta_copy

    try:
        pruner = Pruner(
            meta_copy(inputs.loaded.model),
            placeholder_recipe(recipe),
            inputs.steps_per_epoch,
            context={"input_shape": list(inputs.shape)},
        )
    except SparsekitError:
        raise
    except Exception:  # noqa: BLE001 - a check that reads values cannot run on meta tensors
        return
    if any(spec.method == "gradient" for spec in recipe.pruning):
        _check_gradient_reach(pruner, list(inputs.shape))  # (checks nothing where the copy cannot run on meta)


def _with_source(recipe: Recipe, source: str) -> Recipe:
    """``recipe`` with the data source the run used (the data option's, when given), so the sensitivity table
    records the data its validation batches came from."""
    if recipe.data.source == source:
        return recipe
    return recipe.keep_origin(recipe.model_copy(update={"data": recipe.data.model_copy(update={"source": source})}))


def _own_name(name: str) -> bool:
    """Whether ``name`` is one of the analysis's files (its manifest included), or the temp file a killed write of
    one left behind."""
    from .outputs import temp_target

    own = (*OUTPUT_FILES, MANIFEST_FILE)
    return name in own or temp_target(name) in own


def _ours(path: Path, manifest: dict[str, str], pending: dict[str, str] | None = None) -> bool:
    """Whether ``path`` is a file an earlier ``sparsekit sensitivity`` wrote and nobody changed since (so
    ``overwrite`` may replace it): its SHA-256 is the one the folder's ``manifest`` recorded, or one of the
    ``pending`` files that a run killed while writing them had noted."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        sha = _sha256(path)
        return manifest.get(path.name) == sha or (pending or {}).get(path.name) == sha
    except OSError:
        return False


def _check_writable(out: Path) -> None:
    """Raise :class:`OutputError` when ``out`` cannot be created or written: the folder is made only with the first
    result, so without this check a read-only place failed after the model, the data and the first probe were
    done (minutes on a large model)."""
    import os

    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(
            f"{out}: {folder} is not a folder, so nothing can be written there; choose another output "
            f"folder ({option('output')})"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"{out}: cannot write it: {folder} is not writable (permissions or a read-only disk); "
            f"choose an output folder you can write to ({option('output')})"
        )


def _check_folder(out: Path, *, resume: bool, overwrite: bool, final: bool = False) -> None:
    """Raise :class:`OutputError` unless ``out`` holds nothing but an earlier analysis's unchanged files (one
    that ``resume`` or ``overwrite`` allows). ``final``: the check again just before the results move in (the
    user may have put a file there while the analysis ran), when this run's own partial table is there."""
    existing = [name for name in OUTPUT_FILES if (out / name).exists() or (out / name).is_symlink()]
    manifest, pending = _manifest(out), _manifest(out, "pending")
    foreign = [name for name in existing if not _ours(out / name, manifest, pending)]
    # A folder holding anything else is someone's: the analysis goes into its own folder, as a prune run does.
    others = sorted(p.name for p in out.iterdir() if not _own_name(p.name)) if out.is_dir() else []
    if others and not foreign:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise OutputError(
            f"{out}: holds {shown}, which sparsekit sensitivity did not write; it writes only into a new or empty "
            f"folder, or one holding an earlier analysis: choose another output folder ({option('output')})"
        )
    if existing and MANIFEST_FILE not in {p.name for p in out.iterdir()}:
        raise OutputError(
            f"{out}: holds {', '.join(existing)} with no {MANIFEST_FILE}: an analysis of sparsekit 0.3.4 or before "
            "(which cannot be told from files of your own) or files that are yours; nothing there is replaced: move "
            f"them away, or choose another output folder ({option('output')})"
        )
    if foreign:
        raise OutputError(
            f"{out}: holds {', '.join(foreign)}, which sparsekit sensitivity did not write or which changed since "
            f"it did; nothing there is replaced: choose another output folder ({option('output')})"
        )
    if existing and not (resume or overwrite or final):
        raise OutputError(
            f"{out}: holds an earlier analysis ({', '.join(existing)}); continue it with {option('resume')} "
            f"or replace it with {option('overwrite')}"
        )


def _publish(out: Path, table: SensitivityTable, allocation: dict[str, Any] | None) -> dict[str, str]:
    """Write the finished analysis into ``out``: each file first to a temp file beside its place (the plot takes
    seconds), then all renamed into place and recorded in the manifest with Ctrl-C held (milliseconds), so the
    folder holds the earlier analysis or this one, never a mix, and a manifest that knows its files. The partial
    table goes, and an earlier allocation when this analysis makes none (checked ours before). Returns ``{kind:
    path}`` (``json``, ``plot``, ``markdown``, and ``allocation`` when there is one)."""
    import os
    import tempfile

    names = {"json": "sensitivity.json", "plot": "sensitivity.png", "markdown": "sensitivity.md"}
    if allocation is not None:
        names["allocation"] = ALLOCATION_FILE
    temps: dict[str, Path] = {}
    try:
        for kind, name in names.items():
            fd, made = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=out)
            os.close(fd)
            temps[kind] = Path(made)
        temps["json"].write_text(table.to_json(), encoding="utf-8")
        table.write_plot(temps["plot"])
        temps["markdown"].write_text(table.to_markdown(), encoding="utf-8")
        if allocation is not None:
            temps["allocation"].write_text(json.dumps(allocation, indent=2), encoding="utf-8")
        stale = (PARTIAL_FILE,) + ((ALLOCATION_FILE,) if allocation is None else ())
        umask = os.umask(0)
        os.umask(umask)
        with sigint_deferred():
            _note_pending(out, {name: _sha256(temps[kind]) for kind, name in names.items()})
            for kind, name in names.items():
                os.chmod(temps[kind], 0o666 & ~umask)  # (mkstemp makes 0600; a finished file gets the usual mode)
                os.replace(temps[kind], out / name)
            for name in stale:
                (out / name).unlink(missing_ok=True)
            _note_written(out, list(names.values()), dropped=stale)
    except (OSError, OutputError) as err:
        # The temp files are gone when the error is read: it names the file each was to become (a full disk said
        # "/out/.sensitivity.png.576z07pz.tmp: cannot write it", a file the user never finds).
        said = err.raw_message if isinstance(err, OutputError) else str(err)
        for kind, tmp in temps.items():
            said = said.replace(str(tmp), str(out / names[kind]))
        if isinstance(err, OutputError):
            raise OutputError(said) from None
        raise OutputError(
            f"{out}: cannot write the analysis ({said}); check the folder's free space and permissions"
        ) from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return {kind: str(out / name) for kind, name in names.items()}


def _check_allocation(allocation: dict[str, Any], asked: list[dict[str, Any]]) -> None:
    """ValueError unless ``allocation`` (read from an ``allocation.json``) allocates the pruning section ``asked``
    entry for entry, the same methods in the same order, with notes per entry as :func:`allocation_summary`
    reads them: a mapping of entry index to ``values`` (layer -> number), the predicted and uniform loss
    increases (numbers or null) and a ``note`` (text or null)."""

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    methods = [e.get("method") if isinstance(e, dict) else None for e in allocation["pruning"]]
    if methods != [e.get("method") for e in asked]:
        raise ValueError(f"its entries' methods {methods} are not the pruning section's")
    entries = allocation.get("entries")
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise ValueError("its entries are not a mapping of entry index to notes")
    for index, entry in entries.items():
        values = entry.get("values") or {}
        losses = [entry.get("predicted_loss_increase"), entry.get("uniform_loss_increase")]
        if (
            not isinstance(values, dict)
            or not all(number(v) for v in values.values())
            or not all(v is None or number(v) for v in losses)
            or not isinstance(entry.get("note") or "", str)
        ):
            raise ValueError(f"its notes on entry {index} are not numbers where numbers belong")


def _with_pruning(recipe: Recipe, pruning: list[dict[str, Any]]) -> Recipe:
    new = Recipe.model_validate({**recipe.model_dump(mode="json"), "pruning": pruning})
    return recipe.keep_origin(new)


def allocation_summary(allocation: dict[str, Any], warning: bool = True) -> str:
    """One line per allocated entry: its target and the predicted loss increase against a uniform choice; then
    a ``Warning:`` line when the analysis behind it ran on a model at chance accuracy (``warning=False``: not; the
    CLI prints it on stderr)."""
    lines = []
    for index, entry in allocation["entries"].items():
        predicted, uniform = entry.get("predicted_loss_increase"), entry.get("uniform_loss_increase")
        values = entry.get("values") or {}
        spread = f"{min(values.values()):.3f}..{max(values.values()):.3f}" if values else "-"
        line = f"pruning[{index}]: auto -> per-layer values {spread} over {len(values)} layer(s)"
        # What the chosen channels reach, measured on a pruned copy: the MACs (and latency) prune's report will show,
        # so validate's plan says it before the run (the line named the per-layer values alone).
        reached, target = entry.get("reached") or {}, entry.get("target") or {}
        if isinstance(reached.get("latency"), float) and isinstance(target.get("latency"), float):
            line += f"; latency {reached['latency']:.3f} of dense measured (target_latency {target['latency']:g})"
        if isinstance(reached.get("macs"), float):
            asked = f" (target_macs {target['macs']:g})" if isinstance(target.get("macs"), float) else ""
            line += f"; MACs {reached['macs']:.3f} of dense{asked}"
        if predicted is not None and uniform is not None:
            line += (
                f"; predicted loss increase {predicted:.3f} vs {uniform:.3f} uniform (nats/sample, before fine-tuning)"
            )
        if entry.get("note"):
            line += f"; {entry['note']}"
        lines.append(line)
    if warning and isinstance(allocation.get("warning"), str):
        lines.append(f"Warning: {allocation['warning']}")
    return "\n".join(lines)


def write_allocation(stage: Path, table: SensitivityTable | None, allocation: dict[str, Any] | None) -> None:
    """Write the analysis behind an ``auto`` allocation into a run's staging folder: ``sensitivity.json``,
    ``.png``, ``.md`` and ``allocation.json`` (nothing when the recipe had no ``auto`` entry)."""
    from .sensitivity import write_outputs

    if allocation is None:
        return
    if table is not None:
        write_outputs(table, stage)
    write_text(stage / ALLOCATION_FILE, json.dumps(allocation, indent=2))


def _more_batches(loader: Any, limit: int) -> bool:
    """Whether ``loader`` yields more than ``limit`` batches (its ``len`` when it has one, else by counting)."""
    try:
        return len(loader) > limit
    except TypeError:
        return sum(1 for _ in loader) > limit


# seeded from the recipe inside; the caller's own generators are put back on return
@keeps_caller_generators(torch=True)
def run_sensitivity(
    model_path: str | Path,
    recipe: Recipe | Mapping[str, Any] | str | os.PathLike[str],
    out: str | Path,
    *,
    arch: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    data: str | os.PathLike[str] | None = None,
    trust: bool = False,
    trust_code: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    max_batches: int | None = None,
    progress: bool = True,
    overrides: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``sparsekit sensitivity``: prune every layer the recipe selects alone, one shot, at a grid of
    sparsities (channel ratios for ``structured``), evaluate on the validation split without fine-tuning,
    and write ``sensitivity.json`` (the table), ``sensitivity.png`` (curves) and ``sensitivity.md`` (the
    ranking) into ``out``; with ``auto`` entries also the per-layer values they get (``allocation.json``).

    The table is saved after every probe, so an interrupted analysis continues with ``resume=True``.
    ``out`` may not hold an earlier analysis unless ``resume`` or ``overwrite`` is given.
    ``max_batches`` caps the validation batches per evaluation (faster, noisier). ``recipe``, ``kwargs`` and
    ``overrides`` as for :func:`~sparsekit.pipeline.run_prune`: a Recipe, a recipe file, a shipped recipe's name or a
    dict; the factory's keyword arguments (the recipe's ``model.kwargs``); ``key.path=value`` strings.

    Returns ``{"table": SensitivityTable, "files": {kind: path}, "ranking": [(layer, score), ...] (most
    sensitive first; score = mean validation-loss increase, nats per sample), "allocation": {...} or
    None, "recipe": the allocated recipe or None, "batches_left_out": whether ``max_batches`` left validation
    batches out}``. Raises the errors of a prune run's input checks
    (:func:`sparsekit.pipeline.check_inputs`) and :class:`~sparsekit.errors.OutputError` for ``out``."""
    from .allocation import allocate_with_details
    from .data import check_npz_option
    from .modelio import precheck_model_file
    from .outputs import guard_location
    from .pipeline import check_inputs, data_option, naming_training_source
    from .sensitivity import _ANALYSED, NOTHING_TO_ANALYSE, RESUME_REFUSED, SensitivityTable, analyze, auto_entries

    # A file's pathlib.Path is taken as its path, as run_prune and plan take it (it failed as "'PosixPath' object
    # has no attribute 'strip'").
    data = data_option(data, "run_sensitivity")
    recipe = resolve_recipe(recipe, kwargs, overrides, "run_sensitivity", arch)
    out = Path(out)
    if not any(spec.method in _ANALYSED for spec in recipe.pruning):
        # Said before the model and data are loaded, naming the recipe (analyze, later, knows no file).
        # Only an override of a method (or of a whole entry or the list) can have left no entry to analyse.
        where = recipe.blame(NOTHING_TO_ANALYSE, decided_by=["method"]) or "recipe"
        raise TargetError(f"{where}: {NOTHING_TO_ANALYSE}")
    # The user's own model file before the output folder (as a prune run): a missing or unreadable one first.
    precheck_model_file(Path(model_path))
    if data is not None:  # the caller's .npz file (missing, a folder, damaged): before the folder, too
        check_npz_option(data)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is not a folder; choose another output folder ({option('output')})")
    # As for a prune run: never the root or home folder, nor a folder holding the model, recipe or data.
    source = data or recipe.data.source
    guard_location(
        out, [Path(p) for p in (model_path, recipe.source, source if source.endswith(".npz") else None) if p]
    )
    lock = _FolderLock(out, check=lambda: _check_folder(out, resume=resume, overwrite=overwrite))
    try:
        if out.is_dir():  # before the check, so a live analysis there is named as such, not as an earlier one
            lock.take()
        _check_folder(out, resume=resume, overwrite=overwrite)
        _check_writable(out)
        inputs = check_inputs(model_path, recipe, arch=arch, data=data, trust=trust, trust_code=trust_code)
        partial = out / PARTIAL_FILE
        earlier = None
        if resume:
            # An unfinished analysis's table, else a finished one's (then nothing is left to probe: it is written
            # again)
            table_path = partial if partial.is_file() else out / "sensitivity.json"
            if table_path.is_file():
                try:
                    earlier = SensitivityTable.load(table_path)
                except (ValueError, OSError, RecursionError) as err:
                    raise SparsekitError(
                        f"{table_path}: cannot continue from it ({err}); start again with {option('overwrite')}"
                    ) from None
        # The earlier analysis stays until this one is finished: an interrupted overwrite leaves it as it was (an
        # unfinished analysis's partial table is the only thing it starts over from).
        bar, advance = _analysis_bar(progress, save_to=partial, lock=lock)
        try:
            # (a fault found in the validation batches, "data: label 30 is outside ...", names the source as prune's)
            with bar, naming_training_source(inputs):
                table = analyze(
                    inputs.loaded.model,
                    _with_source(recipe, inputs.source),
                    inputs.bundle.val,
                    progress=advance,
                    resume_from=earlier,
                    input_shape=inputs.shape,
                    max_batches=max_batches,
                )
        except TargetError as err:
            if earlier is None or not err.raw_message.startswith(RESUME_REFUSED):
                raise
            # The library's words ("analyse from scratch") named neither the folder's table nor the option that
            # starts over, so a user resuming with a changed setting was left guessing.
            why = err.raw_message.removeprefix(RESUME_REFUSED).split("; analyse from scratch")[0].strip()
            raise TargetError(
                f"{table_path}: cannot be resumed: it was measured on another setup {why}; start again with "
                f"{option('overwrite')}, or resume with the same model, data, seed and recipe settings"
            ) from None
        made = missing_folders(out)  # (none when a probe saved a partial table into it)
        out.mkdir(parents=True, exist_ok=True)
        lock.take()
        allocation: dict[str, Any] | None = None
        allocated = None
        wanted = auto_entries(recipe)
        if wanted:
            try:
                allocated, details = allocate_with_details(inputs.loaded.model, recipe, table, input_shape=inputs.shape)
            except SparsekitError as err:
                if not (out / PARTIAL_FILE).is_file():
                    _discard_empty(made)
                    raise
                # The analysis finished and only the allocation failed: its table stays in the partial file, which
                # was not said, so a user who fixed the target met "holds an earlier analysis" next, not knowing
                # the probes were kept.
                kept = copy.copy(err)
                kept.raw_message = (
                    f"{err.raw_message}. The analysis itself finished: its table is kept in {out / PARTIAL_FILE}; "
                    f"after changing the entry, run again with {option('resume')} to allocate from it without "
                    "probing again"
                )
                kept.args = (render(kept.raw_message), *err.args[1:])
                raise kept from None
            except BaseException:
                _discard_empty(made)
                raise
            pruning = [spec.model_dump(mode="json") for spec in allocated.pruning]
            allocation = {
                "asked": [spec.model_dump(mode="json") for spec in recipe.pruning],
                "pruning": pruning,
                "entries": {str(d.index): d.as_dict() for d in details},
            }
            untrained = table.noise_warning()
            if untrained:
                allocation["warning"] = untrained
        _check_folder(out, resume=resume, overwrite=overwrite, final=True)
        files = _publish(out, table, allocation)
    finally:
        lock.release()
    return {
        "table": table,
        "files": files,
        "ranking": [(row.name, row.score()) for row in table.ranking()],
        "allocation": allocation,
        "recipe": allocated,
        # whether max_batches left validation batches out (False when the split has no more batches than that)
        "batches_left_out": max_batches is not None and _more_batches(inputs.bundle.val, max_batches),
    }
