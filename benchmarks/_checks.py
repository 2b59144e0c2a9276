"""Range checks for the benchmark scripts' options, run right after argparse: an out-of-range value (``--runs 0``,
``--sparsity 1.5``) used to end in a traceback, some only after minutes of training; now the script stops at once
with argparse's usage line and exit status 2."""

from __future__ import annotations

import argparse


def _values(args: argparse.Namespace, name: str) -> list[float]:
    value = getattr(args, name)
    values = value if isinstance(value, list) else [value]
    return [v for v in values if v is not None]  # None: the option was not given and has a list default later


def check(
    ap: argparse.ArgumentParser,
    args: argparse.Namespace,
    at_least: dict[str, float] | None = None,
    fractions: tuple[str, ...] = (),
) -> None:
    """``ap.error`` (exit 2) naming the option when one of ``at_least``'s options is below its bound or one of
    ``fractions`` is not strictly between 0 and 1."""
    for name, low in (at_least or {}).items():
        for v in _values(args, name):
            if v < low:
                ap.error(f"--{name.replace('_', '-')} must be >= {low:g} (got {v:g})")
    for name in fractions:
        for v in _values(args, name):
            if not 0 < v < 1:
                ap.error(f"--{name.replace('_', '-')} must be a fraction between 0 and 1, both excluded (got {v:g})")
