"""--trust-model-file unpickles a whole-module file the user vouches for, but first reads what its pickles name
(never running them): process, file, import or unpickling machinery, and callables whose names are computed
while loading, are refused even then. Ordinary whole modules, in both torch formats, still load."""

from __future__ import annotations

import textwrap
import zipfile

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

from sparsekit.cli import main
from sparsekit.errors import ModelFileError
from sparsekit.modelio import read_model

MODULE = """
import datetime, enum, functools, logging, os, operator, pathlib
import numpy
import torch
from torch import nn

CANARY = {canary!r}


class Kind(enum.Enum):
    WIDE = 1


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)
        self.bn = nn.BatchNorm1d(3)
        self.act = torch.tanh                     # pickled as getattr(torch._C._VariableFunctionsClass, 'tanh')
        self.relu = functools.partial(torch.relu)
        self.gelu = torch.nn.functional.gelu
        self.size, self.dtype, self.where = torch.Size([1, 8]), torch.float16, torch.device("cpu")
        self.cfg = {{"widths": [8, 3], "names": {{"a", "b"}}, "cut": slice(0, 2)}}
        self.method = self.extra                  # a bound method: getattr(<the module>, 'extra')
        self.table = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
        self.scale, self.kind, self.home = numpy.float64(0.5), Kind.WIDE, pathlib.Path("runs/a")
        self.raw, self.when, self.mask = bytes([0, 1]), datetime.date(2026, 12, 2), nn.Parameter(torch.ones(2))
        # at torch.save's protocol 2 these are Python 2 names (__builtin__.xrange, long, unicode)
        self.steps, self.types, self.log = range(4), {{"n": int, "s": str}}, logging.getLogger("sk-test")
        self.register_buffer("pattern", torch.eye(3, 4).to_sparse())  # torch.serialization._get_layout

    def extra(self):
        return 1

    def forward(self, x):
        return self.bn(self.fc(self.act(x)))


class System:
    def __reduce__(self):
        return (os.system, ("touch " + CANARY,))


class Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch ' + {canary!r})",))


class ThroughTorch:
    def __reduce__(self):  # torch.os is the os module: the name says posix.system all the same
        return (getattr(torch.os, "system"), ("touch " + CANARY,))


class Getter:
    def __reduce__(self):
        return (operator.attrgetter("os.system"), ())


class NumpyLoad:
    def __reduce__(self):  # np.load(allow_pickle=True) would unpickle another file
        return (numpy.load, ("x.npy",))


class LoggingConfig:
    def __reduce__(self):  # logging is allowed (a model may hold a Logger); its config submodule runs "()" factories
        return (__import__("logging.config").config.dictConfig,
                ({{"version": 1, "filters": {{"f": {{"()": "os.system", "command": "touch " + CANARY}}}}}},))


class YamlLoad:
    def __reduce__(self):
        import yaml
        return (yaml.unsafe_load, ("!!python/object/apply:os.system ['touch " + CANARY + "']",))


class CollectEnv:
    def __reduce__(self):
        import torch.utils.collect_env
        return (torch.utils.collect_env.run, ("touch " + CANARY,))


class NumpySave:
    def __reduce__(self):  # writes a file where the pickle says
        return (numpy.save, (CANARY, numpy.zeros(1)))


class Sympify:
    def __reduce__(self):  # sympy (a dependency of torch) evaluates the string it is given
        import sympy
        return (sympy.sympify, ("__import__('os').system('touch " + CANARY + "')",))


class OwnLoader:
    def __reduce__(self):  # sparsekit's own code imports and calls what it is told
        import sparsekit.trust
        return (sparsekit.trust.call_user_code, ("sk_trusted_mod:touch", {{}}))


def touch():
    open(CANARY, "w").close()


def holding(payload):
    net = Net()
    net.payload = payload
    return net
"""


@pytest.fixture
def files(tmp_path, monkeypatch):
    canary = tmp_path / "CANARY"
    (tmp_path / "sk_trusted_mod.py").write_text(textwrap.dedent(MODULE.format(canary=str(canary))))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("sk_trusted_mod")
    importlib.reload(mod)
    paths = {}
    torch.save(mod.Net(), paths.setdefault("zip", tmp_path / "net.pt"))
    torch.save(mod.Net(), paths.setdefault("legacy", tmp_path / "legacy.pt"), _use_new_zipfile_serialization=False)
    for name in (
        "System",
        "Eval",
        "ThroughTorch",
        "Getter",
        "NumpyLoad",
        "LoggingConfig",
        "YamlLoad",
        "CollectEnv",
        "NumpySave",
        "Sympify",
        "OwnLoader",
    ):
        torch.save(mod.holding(getattr(mod, name)()), paths.setdefault(name, tmp_path / f"{name}.pt"))
    torch.save(
        mod.holding(mod.System()), paths.setdefault("legacy_System", tmp_path / "legacy_system.pt"),
        _use_new_zipfile_serialization=False,
    )  # fmt: skip

    def crafted(name: str, body: bytes) -> None:  # the zip archive of a real file, its data.pkl replaced
        with zipfile.ZipFile(paths["zip"]) as z, zipfile.ZipFile(tmp_path / f"{name}.pt", "w") as out:
            for member in z.namelist():
                out.writestr(member, body if member.endswith("data.pkl") else z.read(member))
        paths[name] = tmp_path / f"{name}.pt"

    def s(text: str) -> bytes:
        return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()

    # getattr(getattr(torch._C, "os"), "system")("touch CANARY"), written by hand
    get = b"c__builtin__\ngetattr\n"
    crafted("chain", b"\x80\x02" + get + get + b"ctorch\n_C\n" + s("os") + b"\x86R" + s("system") + b"\x86R"
            + s(f"touch {canary}") + b"\x85R.")  # fmt: skip
    # STACK_GLOBAL whose module name is the result of a call (str.join): unknown until it runs
    crafted("computed", b"\x80\x04" + b"c__builtin__\nstr\n" + s("join") + b"\x86" + b"\x93" + s("")
            + s("o") + s("s") + b"\x86\x86R" + s("system") + b"\x93" + s(f"touch {canary}") + b"\x85R.")  # fmt: skip
    crafted("garbled", b"\x80\x02garbage that is no pickle")
    crafted("stdlib", b"\x80\x02cantigravity\ngeohash\n.")  # importing it opens a web browser
    # protocol 2 maps Python 2 names: cPickle.loads is pickle.loads, which would unpickle the string given
    crafted("cpickle", b"\x80\x02ccPickle\nloads\n" + s("x") + b"\x85R.")
    # list(map(F, [cmd])) calls a computed F without a REDUCE of its own
    crafted("map", b"\x80\x02c__builtin__\nlist\nc__builtin__\nmap\nc__builtin__\nprint\n]" + s("x")
            + b"a\x86R\x85R.")  # fmt: skip
    # a member named data.PKL: torch finds it all the same
    with zipfile.ZipFile(paths["System"]) as z, zipfile.ZipFile(tmp_path / "case.pt", "w") as out:
        for member in z.namelist():
            out.writestr(member[:-4] + ".PKL" if member.endswith("data.pkl") else member, z.read(member))
    paths["case"] = tmp_path / "case.pt"
    # a legacy-format file with an empty zip appended: torch reads the legacy pickle (its first bytes decide)
    empty_zip = tmp_path / "empty.zip"
    zipfile.ZipFile(empty_zip, "w").close()
    paths["legacy_zip"] = tmp_path / "legacy_zip.pt"
    paths["legacy_zip"].write_bytes(paths["legacy_System"].read_bytes() + empty_zip.read_bytes())
    from examples.models import mlp

    torch.save(mlp().state_dict(), paths.setdefault("p4", tmp_path / "p4.pt"), pickle_protocol=4)
    crafted("ext", b"\x80\x02\x82\x01)R.")  # EXT1 1: a callable registered with copyreg by number, called
    return paths, canary


def test_ordinary_whole_modules_load_when_trusted(files):
    paths, canary = files
    x = torch.randn(4, 8)
    for kind in ("zip", "legacy"):
        model = read_model(paths[kind], trust=True).model
        assert model.act is torch.tanh and model(x).shape == (4, 3), kind
        assert model.steps == range(4) and model.types == {"n": int, "s": str} and model.pattern.is_sparse
    assert not canary.exists()


def test_a_state_dict_saved_with_pickle_protocol_4_is_named_and_loads_when_trusted(files):
    """torch's weights-only loader cannot read protocol 4's FRAME opcode: it was "not a pickle or torch archive"."""
    paths, _ = files
    with pytest.raises(ModelFileError, match="saved with pickle protocol 4 or 5"):
        read_model(paths["p4"], arch="examples.models:mlp")
    loaded = read_model(paths["p4"], arch="examples.models:mlp", trust=True)
    assert loaded.kind == "state_dict" and loaded.model.fc1.weight.shape == (128, 64)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("System", "posix.system"),
        ("legacy_System", "posix.system"),
        ("Eval", "builtins.eval"),
        ("ThroughTorch", "posix.system"),
        ("Getter", "operator.attrgetter"),
        ("chain", "torch._C.os"),
        ("computed", "a callable whose name it computes while loading"),
        ("NumpyLoad", "numpy"),
        ("cpickle", "pickle.loads"),
        ("map", "builtins.map"),
        ("case", "posix.system"),
        ("legacy_zip", "system"),
        ("stdlib", "antigravity.geohash"),
        ("LoggingConfig", "logging.config.dictConfig"),
        ("YamlLoad", "yaml"),
        ("CollectEnv", "torch.utils.collect_env.run"),
        ("Sympify", "sympy"),
        ("OwnLoader", "sparsekit.trust.call_user_code"),
        ("NumpySave", "numpy.save"),
    ],
)
def test_machinery_is_refused_even_when_trusted(files, name, needle):
    paths, canary = files
    with pytest.raises(ModelFileError, match="does not unpickle it even when trusted") as err:
        read_model(paths[name], trust=True)
    assert needle.replace("builtins", "") in str(err.value), str(err.value)
    result = CliRunner().invoke(main, ["inspect", str(paths[name]), "--trust-model-file"])
    assert_bad_input(result, str(paths[name]), "even when trusted")
    assert not canary.exists()


def test_a_pickle_the_reader_cannot_follow_is_not_unpickled(files):
    paths, canary = files
    with pytest.raises(ModelFileError):
        read_model(paths["garbled"], trust=True)
    assert not canary.exists()
    from sparsekit.modelio import _screen_trusted

    for name in ("garbled", "ext"):  # the screen itself, before any load (torch's refusal comes first here)
        with pytest.raises(ModelFileError, match="computes while loading"):
            _screen_trusted(paths[name])
        with pytest.raises(ModelFileError):
            read_model(paths[name], trust=True)
    assert not canary.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_a_pickle_cut_short_is_named_damaged_not_a_pickled_object(tmp_path, trust):
    # A state_dict whose data.pkl ends mid-name was "a pickled Python object that names collections.Orde (e.g. a
    # whole nn.Module ...)", then with the trust flag "names a callable whose name it computes": it is damaged.
    good, cut = tmp_path / "good.pt", tmp_path / "cut.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(cut, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, data[:15] if info.filename.endswith("data.pkl") else data)
    with pytest.raises(ModelFileError, match="its pickle ends before it is complete: the file is truncated"):
        read_model(cut, trust=trust)
