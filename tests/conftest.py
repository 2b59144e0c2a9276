from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # examples.models is importable as --arch/factory

# A test run started in the background by a shell without job control (`( pytest & )`, some CI runners) inherits
# SIGINT ignored, and so would every process it starts: the tests that send Ctrl-C to a sparsekit process would see
# nothing happen. A terminal's Ctrl-C is what they test, so the run gets Python's own handler back (a handled signal,
# unlike an ignored one, is reset to the default in the processes it starts).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch, tmp_path_factory):
    # `--arch examples.models:...` resolves from the current directory, as for a user at the repo root.
    monkeypatch.chdir(ROOT)
    # Each test starts trusting no module, and --trust-code never writes into the real home folder.
    monkeypatch.setenv("SPARSEKIT_CONFIG_DIR", str(tmp_path_factory.mktemp("sparsekit-config")))
    # Parsed datasets are cached once per test session, never in the real home folder.
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sparsekit-cache"))
    torch.manual_seed(0)


def assert_bad_input(result, *needles: str) -> str:
    """A CLI result that is bad input: exit 2, exactly one `Error:` line containing every needle, no
    traceback. Returns the line."""
    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, result.output, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


class InterruptOnEvaluate:
    """Ctrl-C (KeyboardInterrupt) on the n-th evaluation of a prune run: 1 is the dense model, 2 the
    end of epoch 1, 3 the end of epoch 2. ``restore()`` puts the real evaluation back."""

    def __init__(self, monkeypatch, n: int) -> None:
        import sparsekit.pipeline as pipeline_mod
        import sparsekit.train as train_mod

        self.real, self.calls, self.n = train_mod.evaluate, 0, n
        self.targets = [(train_mod, "evaluate"), (pipeline_mod, "evaluate")]
        self.monkeypatch = monkeypatch
        for mod, name in self.targets:
            monkeypatch.setattr(mod, name, self)

    def __call__(self, model, loader, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.real(model, loader, *args, **kwargs)

    def restore(self) -> None:
        for mod, name in self.targets:
            self.monkeypatch.setattr(mod, name, self.real)


def torch_file_with_pickle(path, payload: bytes) -> None:
    """A torch.save zip archive whose data.pkl is ``payload`` (a pickle written by hand: hostile-file tests)."""
    import types

    class Pickler:
        def __init__(self, f, protocol=2):
            self.f = f

        def dump(self, obj):
            self.f.write(payload)

    torch.save({}, path, pickle_module=types.SimpleNamespace(Pickler=Pickler, __name__="hand"))


def train_on_digits(model, input_shape, epochs, lr, batch_size=32):
    """A short Adam run on scikit-learn's digits: a model trained the way a user's would be."""
    from sparsekit.data import load_data

    data = load_data("digits", batch_size=batch_size, seed=0, input_shape=input_shape)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for x, y in data.train:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model


@pytest.fixture
def mlp_checkpoint(tmp_path):
    """A briefly trained digits MLP saved as a sparsekit checkpoint."""
    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    model = train_on_digits(mlp(in_features=64, hidden=[64, 32]), [1, 64], epochs=4, lr=3e-3, batch_size=64)
    path = tmp_path / "mlp.pt"
    sparsekit.save_model(
        model, path, factory="examples.models:mlp", kwargs={"in_features": 64, "hidden": [64, 32]}, input_shape=[1, 64]
    )
    return path


FAST = [
    "--set",
    "export.exporter=torchscript",
    "--set",
    "benchmark.runs=5",
    "--set",
    "benchmark.warmup=1",
    "--no-progress",
]
os.environ.setdefault("MPLBACKEND", "Agg")


def fast_prune(model_path, recipe_path, out, *options: str):
    """``sparsekit prune MODEL RECIPE -o OUT OPTIONS... FAST`` in-process (click's CliRunner): the result."""
    from click.testing import CliRunner

    from sparsekit.cli import main

    args = ["prune", str(model_path), str(recipe_path), *options, "-o", str(out), *FAST]
    return CliRunner().invoke(main, args)


def user_module(tmp_path, monkeypatch, name: str, source: str):
    """Write ``source`` as the user's module ``name`` in ``tmp_path``, importable (as ``--arch name:factory``
    finds it) for this test, and return it imported."""
    import importlib

    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


@pytest.fixture
def one_thread():
    """torch on one thread for tests of tiny tensors: a second thread only adds synchronization, which
    stalls badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
