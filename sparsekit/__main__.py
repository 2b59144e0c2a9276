"""``python -m sparsekit`` and the ``sparsekit`` console script (``torchrun -m sparsekit`` too)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def _terminate(signum: int, frame: object) -> None:
    from .errors import Terminated

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated("stopped by SIGTERM")


def entry() -> None:
    """Run the CLI. A Ctrl-C before a command takes over still exits 130 without a traceback."""
    # `python -m` puts the current folder first on sys.path, so a file there named like a dependency
    # (torch.py, yaml.py, ...) would be imported in its place. Only modules the user names are looked
    # up in the current folder, and only last (sparsekit.trust appends it while importing them).
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    # SIGTERM (a job scheduler's stop) unwinds like Ctrl-C: checkpoints and finished files are kept, temp
    # files removed. A handler someone installed before us (an embedding program) stays theirs.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(130) from None
    try:
        main(prog_name="sparsekit")
    finally:
        # The command is over and its files are complete. Unloading torch and onnxruntime at exit can
        # take a second; a Ctrl-C then must not turn a finished run into a death by signal.
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    entry()
