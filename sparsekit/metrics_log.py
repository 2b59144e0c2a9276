"""Training metrics to files: ``steps.csv`` (one row per optimizer step; under torchrun the loss of rank 0's batch),
``epochs.csv`` (one row per epoch, with the sparsity of every layer and how many mask entries changed), and
TensorBoard event files when the ``tensorboard`` package is installed (``pip install tensorboard``; point
TensorBoard's log folder at it).

A resumed run continues the same files: rows past the checkpoint it resumes from are dropped first (and
TensorBoard purges events from that step on), so the files read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("sparsekit")

# Beside the logs: the names of the files sparsekit created in the folder. A file of the user's with the same
# name and header (steps.csv with step,epoch,loss,lr is what anyone's loop might write) is never started over.
MARKER = ".sparsekit-metrics.json"

STEP_FIELDS = ["step", "epoch", "loss", "lr"]
EPOCH_FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_accuracy", "lr", "sparsity", "mask_changes"]


class MetricsLog:
    """Appends metric rows under ``folder`` (created if needed).

    ``resume_step``: the optimizer step the run resumes after; rows with a larger step are removed from
    existing CSV files first. Step rows are buffered and flushed with every epoch row, so the per-step
    cost is a list append. Raises OSError when ``folder`` cannot be written, and
    :class:`~sparsekit.errors.OutputError` when it holds a non-empty ``steps.csv`` or ``epochs.csv`` that is not a
    metrics log sparsekit wrote (one :data:`MARKER` does not list, another header, or a link): those are the user's,
    never rewritten. Rewrites (a resume's cut) go through a temp file and a rename."""

    def __init__(self, folder: str | Path, resume_step: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.steps_path = self.folder / "steps.csv"
        self.epochs_path = self.folder / "epochs.csv"
        created = _created(self.folder)
        for path, ours in ((self.steps_path, _steps_header), (self.epochs_path, _epochs_header)):
            _check_ours(path, ours, path.name in created)
        self._layer_fields: list[str] = []
        _truncate(self.steps_path, resume_step)
        # A new run writes its own epochs.csv header: its model's layers (the sparsity/NAME columns) need not be an
        # earlier run's, whose header left the new layers' values out and its own columns blank.
        _truncate(self.epochs_path, resume_step, keep_header=False)
        self._pending: list[list[Any]] = []
        self._tb = _tensorboard(self.folder, resume_step)

    def step(self, step: int, epoch: float, loss: float, lr: float) -> None:
        """One optimizer step: ``loss`` (the loss it trained on, nats: the batch's cross-entropy, mixed with the
        distillation loss when ``finetune.distill`` is set), ``lr`` (the rate it trained at)."""
        self._pending.append([step, round(epoch, 6), loss, lr])
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/lr", lr, step)

    def epoch(self, row: dict[str, Any], step: int, layers: dict[str, float], mask_changes: int) -> None:
        """One epoch: ``row`` is the history row (see :func:`sparsekit.finetune`), ``layers`` the sparsity of
        each prunable layer (fraction of zero weights), ``mask_changes`` the mask entries that flipped
        during the epoch. Writes the buffered step rows too."""
        _append(self.steps_path, STEP_FIELDS, self._pending)
        self._pending = []
        if not self._layer_fields:
            self._layer_fields = _existing_layer_fields(self.epochs_path) or [f"sparsity/{n}" for n in layers]
        values = [row.get(k) for k in EPOCH_FIELDS[:1]] + [step] + [row.get(k) for k in EPOCH_FIELDS[2:7]]
        values.append(mask_changes)
        values += [layers.get(f.removeprefix("sparsity/"), "") for f in self._layer_fields]
        _append(self.epochs_path, EPOCH_FIELDS + self._layer_fields, [values])
        if self._tb is not None:
            for key in ("val_loss", "val_accuracy", "sparsity", "train_loss"):
                if row.get(key) is not None:
                    self._tb.add_scalar(f"epoch/{key}", row[key], step)
            self._tb.add_scalar("epoch/mask_changes", mask_changes, step)
            for name, value in layers.items():
                self._tb.add_scalar(f"sparsity/{name}", value, step)
            self._tb.flush()

    def close(self) -> None:
        """Write what is buffered and close the TensorBoard writer."""
        if self._pending:
            _append(self.steps_path, STEP_FIELDS, self._pending)
            self._pending = []
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _steps_header(header: list[str]) -> bool:
    return header == STEP_FIELDS


def _epochs_header(header: list[str]) -> bool:
    return header[: len(EPOCH_FIELDS)] == EPOCH_FIELDS and all(
        h.startswith("sparsity/") for h in header[len(EPOCH_FIELDS) :]
    )


def _created(folder: Path) -> set[str]:
    """The log files :data:`MARKER` says sparsekit created in ``folder`` (none when it is missing or unreadable)."""
    from .fsutil import read_regular

    try:
        names = json.loads(read_regular(folder / MARKER))
    except (OSError, ValueError):
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def _check_ours(path: Path, ours: Callable[[list[str]], bool], created: bool) -> None:
    """OutputError unless ``path`` is absent, empty, or a log of sparsekit's (``created`` by it, per :data:`MARKER`,
    and ``ours(header)``): a resume drops its later rows and a new run starts it over, which would destroy a file of
    the user's of the same name."""
    from .errors import OutputError

    if not path.is_symlink() and not path.exists():
        return
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError("not a regular file")
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), None)
        if header is not None and not ours(header):
            raise ValueError(f"its header is {','.join(header)[:80]!r}")
        if header is not None and not created:
            raise ValueError(f"{MARKER} beside it does not list it")
    except (OSError, ValueError, csv.Error, UnicodeDecodeError) as err:
        raise OutputError(
            f"{path}: not a metrics log sparsekit wrote ({err}); sparsekit never rewrites your files: choose "
            "another log folder"
        ) from None


def _tensorboard(folder: Path, resume_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: CSV only
        return None
    return SummaryWriter(str(folder), purge_step=resume_step + 1 if resume_step else None)


def _existing_layer_fields(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), [])
    return [h for h in header if h.startswith("sparsity/")]


def _append(path: Path, fields: list[str], rows: list[list[Any]]) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    if new and path.name not in _created(path.parent):
        # Listed before the file exists: a kill in between leaves a name listed and no file, never the reverse.
        from .fsutil import write_text

        write_text(path.parent / MARKER, json.dumps(sorted(_created(path.parent) | {path.name})) + "\n")
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(fields)
        writer.writerows(rows)


def _truncate(path: Path, resume_step: int, keep_header: bool = True) -> None:
    """Keep the header and the rows whose ``step`` is at most ``resume_step`` (all gone when 0). ``keep_header``
    False: a new run (0) empties the file, header too."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    at = header.index("step") if "step" in header else None
    # A row with fewer fields than the header is the end of one a killed run was writing (a flush of many rows is
    # several writes): its step cut short ("52" -> "5") read as an early step, and the cut row was kept.
    kept = [r for r in body if at is not None and resume_step and len(r) == len(header) and _int(r[at]) <= resume_step]
    from .fsutil import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *kept] if resume_step or keep_header else [])


def _int(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 1 << 62
