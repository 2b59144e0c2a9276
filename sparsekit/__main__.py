"""``python -m sparsekit`` and the ``sparsekit`` console script (``torchrun -m sparsekit`` too)."""

from __future__ import annotations

import os
import sys


def entry() -> None:
    """Run the CLI. A Ctrl-C before a command takes over still exits 130 without a traceback."""
    # `python -m` puts the current folder first on sys.path, so a file there named like a dependency
    # (torch.py, yaml.py, ...) would be imported in its place. Only modules the user names are looked
    # up in the current folder, and only last (sparsekit.trust appends it while importing them).
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(130) from None
    main(prog_name="sparsekit")


if __name__ == "__main__":
    entry()
