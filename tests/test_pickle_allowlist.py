"""A trusted load (--trust-model-file) screens a whole pickled module against an allowlist of what a pickled model
needs, not a denylist of machinery: each of a reviewer's escapes below got past the denylist, and ran a command or
created a file. Each is refused (exit 2, nothing created) by the library and the CLI; ordinary whole modules of many
kinds, in every protocol and both torch formats, and .pt2 archives still load and compute the same outputs."""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import logging
import pathlib
import subprocess
import sys
import textwrap
import types
import typing
import uuid
import zipfile

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input
from torch import nn

from sparsekit.cli import main
from sparsekit.errors import ModelFileError
from sparsekit.modelio import _never_unpickled, read_model

CANARY = "CANARY"


class Reduce:
    """Pickles as ``fn(*args)``: the classes below are needed to write a payload, never to load one."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _frag(obj: object) -> bytes:
    """``obj`` as protocol 2 opcodes to splice into a hand-written pickle (no PROTO, no STOP)."""
    import pickle

    return pickle.dumps(obj, protocol=2)[2:-1]


def _code_route(canary: str) -> bytes:
    """re.sub("x", FunctionType(CodeType(...), {}), "x"): re.sub calls the function it is given for each match, a
    function built from a code object, with no REDUCE of its own (pickle itself will not write these names)."""
    fn = eval(f"lambda m: open({canary!r}, 'w').close() or ''")  # noqa: S307 - the payload, never run by the test
    c = fn.__code__
    fields = (c.co_argcount, c.co_posonlyargcount, c.co_kwonlyargcount, c.co_nlocals, c.co_stacksize, c.co_flags,
              c.co_code, c.co_consts, c.co_names, c.co_varnames, c.co_filename, c.co_name, c.co_qualname,
              c.co_firstlineno, c.co_linetable, c.co_exceptiontable, c.co_freevars, c.co_cellvars)  # fmt: skip
    return (b"\x80\x02cre\nsub\n" + _frag("x") + b"ctypes\nFunctionType\nctypes\nCodeType\n" + _frag(fields)
            + b"R}\x86R" + _frag("x") + b"\x87R.")  # fmt: skip


def _payloads(canary: str) -> dict[str, tuple[object, str]]:
    """Reviewer's escape -> (the object to pickle, a name the refusal states)."""
    hints = types.SimpleNamespace(__annotations__={"x": f"__import__('pathlib').Path({canary!r}).touch()"})
    return {
        "uuid": (Reduce(uuid._get_command_stdout, "touch", canary), "uuid._get_command_stdout"),  # type: ignore[attr-defined]
        "typing": (Reduce(typing.get_type_hints, hints), "typing.get_type_hints"),
        "path_touch": (Reduce(pathlib.Path.touch, pathlib.Path(canary)), "pathlib.Path.touch"),
        "path_touch_p4": (Reduce(pathlib.Path.touch, pathlib.Path(canary)), "pathlib.Path.touch"),  # STACK_GLOBAL
        "codecs": (Reduce(codecs.open, canary, "w"), "codecs.open"),
        "file_handler": (Reduce(logging.FileHandler, canary), "logging.FileHandler"),
        # getattr(PosixPath(CANARY), "touch"), called by torch's own _rebuild_from_type_v2 (func(*args))
        "getattr": (
            Reduce(torch._tensor._rebuild_from_type_v2, pathlib.Path(canary).touch, torch.Tensor, (), {}),
            "pathlib.PosixPath.touch",
        ),
    }


def _s(text: str) -> bytes:
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()


def _crafted(canary: str) -> dict[str, tuple[bytes, str]]:
    """Hand-written pickles for names pickle will not write from here: (data.pkl bytes, a name the refusal states)."""
    call = b"\x85R."  # a 1-tuple of the string before it, passed to the callable before that
    return {
        "file_writer": (b"\x80\x02ctorch._C\nPyTorchFileWriter\n" + _s(canary) + call, "torch._C.PyTorchFileWriter"),
        "compiler_cache": (
            b"\x80\x02ctorch.compiler\nload_cache_artifacts\nC\x00" + call,
            "torch.compiler.load_cache_artifacts",
        ),
        # opens an existing file for writing: truncates it
        "datasource": (
            b"\x80\x02cnumpy.lib._datasource\nopen\n" + _s(canary) + _s("w") + b"\x86R.",
            "numpy.lib._datasource.open",
        ),
        # partial(getattr, PosixPath(CANARY), "touch"): getattr as an argument reaches any attribute of anything
        "getattr_arg": (
            b"\x80\x02cfunctools\npartial\nc__builtin__\ngetattr\ncpathlib\nPosixPath\n"
            + _s(canary)
            + b"\x85R"
            + _s("touch")
            + b"\x87R.",
            "builtins.getattr",
        ),
        # BUILD on a class: its slot state is set with setattr, patching Path.touch for the whole process
        "patch_class": (
            b"\x80\x02cpathlib\nPath\nN}" + _s("touch") + b"cbuiltins\nobject\ns\x86b.",
            "pathlib.Path (changed by BUILD)",
        ),
    }


HOSTILE = [*_payloads("x"), "code_route", *_crafted("x")]


def _hostile_file(tmp_path: pathlib.Path, kind: str) -> tuple[pathlib.Path, str]:
    canary = str(tmp_path / CANARY)
    path = tmp_path / f"{kind}.pt"
    net = nn.Linear(2, 2)
    if kind == "code_route" and sys.version_info[:2] not in ((3, 11), (3, 12), (3, 13)):
        pytest.skip("code objects are built with this Python's CodeType fields")
    if kind == "code_route" or kind in _crafted(canary):
        body, needle = (_code_route(canary), "types.CodeType") if kind == "code_route" else _crafted(canary)[kind]
        torch.save(net, tmp_path / "real.pt")
        with zipfile.ZipFile(tmp_path / "real.pt") as z, zipfile.ZipFile(path, "w") as out:
            for member in z.namelist():
                out.writestr(member, body if member.endswith("data.pkl") else z.read(member))
        return path, needle
    net.payload, needle = _payloads(canary)[kind]
    torch.save(net, path, pickle_protocol=4 if kind.endswith("_p4") else 2)
    return path, needle


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_reviewer_escape_is_refused_even_when_trusted(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path, needle = _hostile_file(tmp_path, kind)
    canary = tmp_path / CANARY
    if kind == "datasource":
        canary.write_text("keep")  # the payload would truncate it
    with pytest.raises(ModelFileError, match="does not unpickle it even when trusted") as err:
        read_model(path, trust=True)
    said = str(err.value)
    assert needle in said and "not on the list of what a pickled model needs" in said, said
    assert_bad_input(CliRunner().invoke(main, ["inspect", str(path), "--trust-model-file"]), path.name, needle)
    assert (canary.read_text() == "keep") if kind == "datasource" else not canary.exists()


@pytest.mark.parametrize(
    "name",
    ["builtins:getattr", "builtins:eval", "builtins:type (making a class)", "types:CodeType", "types:FunctionType",
     "re:sub", "pathlib:PosixPath.touch", "pathlib:Path.write_text", "logging:FileHandler", "codecs:open",
     "uuid:_get_command_stdout", "typing:get_type_hints", "torch._C:PyTorchFileWriter", "torch:os",
     "torch:_C", "torch.compiler:load_cache_artifacts", "numpy.lib._datasource:open", "numpy:load",
     "torch.storage:_load_from_bytes", "torch._C:_VariableFunctionsClass.from_file", "torch.nn.functional:_pad",
     "torch.nn.functional:torch", "mymodel_pkg:os.system", "mymodel_pkg:subprocess", "mymodel_pkg:Net.__globals__",
     "(an object it builds):touch", "torch.not_imported_anywhere:Thing"],
)  # fmt: skip
def test_names_off_the_list_are_refused(name):
    assert _never_unpickled(name)


@pytest.mark.parametrize(
    "name",
    ["collections:OrderedDict", "builtins:set", "copyreg:_reconstructor", "_codecs:encode", "functools:partial",
     "pathlib:PosixPath", "datetime:datetime", "re:_compile", "torch._utils:_rebuild_tensor_v2",
     "torch._tensor:_rebuild_from_type_v2", "torch.nn.parameter:Parameter", "torch:float16", "torch:Size",
     "torch:FloatStorage", "torch.nn.modules.linear:Linear", "torch.nn.functional:relu", "torch._C._nn:gelu",
     "torch._C:_VariableFunctionsClass.tanh", "torch._C:TensorBase.relu", "numpy:ndarray",
     "numpy._core.multiarray:_reconstruct", "numpy.core.multiarray:_reconstruct", "torch.nn.utils.prune:L1Unstructured",
     "mymodel_pkg.nets:Net", "mymodel_pkg.nets:Net.Inner"],
)  # fmt: skip
def test_what_models_need_is_allowed(name):
    assert not _never_unpickled(name)


def test_a_name_imported_into_the_users_module_is_judged_where_it_is_from(tmp_path, monkeypatch):
    (tmp_path / "sk_reexport_mod.py").write_text(
        "import os\nfrom codecs import open as cop\nfrom torch.nn import Linear\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.import_module("sk_reexport_mod")
    try:
        for name in ("sk_reexport_mod:cop", "sk_reexport_mod:os", "sk_reexport_mod:os.system"):
            assert _never_unpickled(name), name
        assert not _never_unpickled("sk_reexport_mod:Linear")
    finally:
        sys.modules.pop("sk_reexport_mod", None)


MODULE = """
import collections, dataclasses, datetime, decimal, enum, fractions, functools, pathlib, re, types, uuid
import numpy
import torch
from torch import nn


class Color(enum.Enum):
    RED = 1


class Flag(enum.IntFlag):
    A = 1


@dataclasses.dataclass
class Cfg:
    width: int = 8
    name: str = "x"


@dataclasses.dataclass(frozen=True)
class Frozen:
    width: int = 8


class Rich(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        self.md = nn.ModuleDict({"a": nn.Linear(3, 3)})
        self.ml = nn.ModuleList([nn.Conv1d(1, 1, 1), nn.LayerNorm(3), nn.Embedding(5, 3)])
        self.pl = nn.ParameterList([nn.Parameter(torch.ones(3))])
        self.pd = nn.ParameterDict({"p": nn.Parameter(torch.zeros(3))})
        self.register_buffer("buf", torch.arange(3.0))
        self.register_buffer("sparse", torch.eye(3).to_sparse())
        self.od, self.dd = collections.OrderedDict(a=1), collections.defaultdict(list, {"a": [1]})
        self.dq, self.counter = collections.deque([1, 2]), collections.Counter("aab")
        self.color, self.flag, self.cfg, self.frozen = Color.RED, Flag.A, Cfg(), Frozen()
        self.path, self.pure = pathlib.Path("runs/x"), pathlib.PurePosixPath("a/b")
        self.when = datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.timezone.utc)
        self.delta, self.day = datetime.timedelta(1), datetime.date(2026, 1, 1)
        self.rx, self.part = re.compile(r"a+b", re.I), functools.partial(nn.functional.relu, inplace=False)
        self.dec, self.frac, self.uid = decimal.Decimal("1.5"), fractions.Fraction(1, 3), uuid.UUID(int=5)
        self.ns, self.half = types.SimpleNamespace(a=1), torch.float16
        self.dev, self.size = torch.device("cpu"), torch.Size([2])
        self.misc = [1j, bytearray(b"x"), b"\\x00\\xff", frozenset({1}), {2}, slice(1, 2), range(3), type(None), int]
        self.fns = [torch.tanh, torch.relu, torch.Tensor.relu, nn.functional.gelu, torch.einsum]
        self.table, self.scalar = numpy.arange(6.0).reshape(2, 3), numpy.float32(2)
        self.method = self.extra

    def extra(self):
        return 1

    def forward(self, x):
        return self.part(self.seq(x)) + self.ml[1](self.md["a"](torch.tanh(self.seq(x)))) + self.buf


class Light(nn.Module):
    pass
"""

LIGHTNING = """
import lightning.pytorch as L
from torch import nn


class Lit(L.LightningModule):
    def __init__(self, width=8):
        super().__init__()
        self.save_hyperparameters()
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc(x)
"""


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    (tmp_path / "sk_allow_mod.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import importlib

    mod = importlib.import_module("sk_allow_mod")
    importlib.reload(mod)
    yield mod
    sys.modules.pop("sk_allow_mod", None)


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    a.eval()
    with contextlib.suppress(NotImplementedError):  # a .pt2 archive's module: exported in eval mode
        b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("how", [{}, {"pickle_protocol": 4}, {"pickle_protocol": 5}, {"legacy": True}])
def test_a_module_holding_what_models_hold_loads_when_trusted(tmp_path, own_module, how, monkeypatch):
    model = own_module.Rich()
    path = tmp_path / "rich.pt"
    legacy = how.pop("legacy", False)
    torch.save(model, path, _use_new_zipfile_serialization=not legacy, **how)
    x = torch.randn(4, 8)
    loaded = read_model(path, trust=True).model
    _same(model, loaded, x)
    assert loaded.path == model.path and loaded.when == model.when and loaded.rx == model.rx
    assert loaded.dd["b"] == [] and loaded.color is own_module.Color.RED and loaded.fns[0] is torch.tanh
    assert loaded.misc == model.misc and loaded.method() == 1 and loaded.sparse.is_sparse
    # the CLI's process has not imported the user's module before the screen: it is found in the current folder
    monkeypatch.delitem(sys.modules, "sk_allow_mod")
    result = CliRunner().invoke(main, ["inspect", str(path), "--trust-model-file"])
    assert result.exit_code == 0, result.output


def _torch_models() -> dict[str, nn.Module]:
    import torch.ao.quantization as q
    from torch.nn.utils import prune

    observed = nn.Sequential(nn.Linear(8, 3), q.MinMaxObserver(), q.HistogramObserver())
    observed.qconfig = q.default_qconfig
    return {
        "quantized": q.quantize_dynamic(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)), {nn.Linear}),
        "observers": observed,
        "pruned": prune.l1_unstructured(nn.Linear(8, 3), "weight", 0.5),
        "spectral": nn.utils.spectral_norm(nn.Linear(8, 3)),
        "bf16": nn.Sequential(nn.Linear(8, 3)).to(torch.bfloat16),
    }


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["quantized", "observers", "pruned", "spectral", "bf16"])
def test_torch_models_of_other_kinds_load_when_trusted(tmp_path, kind):
    model = _torch_models()[kind]
    torch.save(model, tmp_path / "m.pt")
    loaded = read_model(tmp_path / "m.pt", trust=True).model
    _same(model.float() if kind == "bf16" else model, loaded.float() if kind == "bf16" else loaded, torch.randn(4, 8))


def test_a_pruned_module_loads_in_a_fresh_process(tmp_path):
    """torch.nn.utils.prune (its pruning hooks) is not imported by torch: the screen imports torch.nn's own modules
    to tell what a name is, and nothing else."""
    from torch.nn.utils import prune

    torch.save(prune.l1_unstructured(nn.Linear(8, 3), "weight", 0.5), tmp_path / "p.pt")
    done = subprocess.run(
        [sys.executable, "-m", "sparsekit", "inspect", str(tmp_path / "p.pt"), "--trust-model-file"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_lightning_module_loads_when_trusted(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    (tmp_path / "sk_lit_mod.py").write_text(textwrap.dedent(LIGHTNING))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("sk_lit_mod")
    model = mod.Lit()
    torch.save(model, tmp_path / "lit.pt")
    try:
        loaded = read_model(tmp_path / "lit.pt", trust=True).model
    finally:
        sys.modules.pop("sk_lit_mod", None)
    _same(model, loaded, torch.randn(2, 8))
    assert loaded.hparams["width"] == 8


def _pt2(tmp_path: pathlib.Path) -> tuple[nn.Module, pathlib.Path]:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), tmp_path / "m.pt2")
    return model, tmp_path / "m.pt2"


def test_a_pt2_archive_loads_when_trusted(tmp_path):
    model, path = _pt2(tmp_path)
    _same(model, read_model(path, trust=True).model, torch.randn(2, 4))


@pytest.mark.parametrize("member", ["sample_inputs", "opaque"])
def test_a_pt2_archive_whose_pickles_name_machinery_is_refused(tmp_path, monkeypatch, member):
    """torch.export.load unpickles the archive's sample inputs (falling back to weights_only=False) and its opaque
    constants: each is screened as a whole-module file's pickle is."""
    monkeypatch.chdir(tmp_path)
    _, path = _pt2(tmp_path)
    canary = str(tmp_path / CANARY)
    payload = io.BytesIO()
    torch.save(((Reduce(codecs.open, canary, "w"),), {}), payload)
    hostile = tmp_path / "hostile.pt2"
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(hostile, "w") as out:
        for name in z.namelist():
            data = z.read(name)
            if member == "sample_inputs" and "sample_inputs" in name:
                data = payload.getvalue()
            elif member == "opaque" and name.endswith("model_constants_config.json"):
                entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
                data = json.dumps({"config": {"evil": entry}}).encode()
            out.writestr(name, data)
        if member == "opaque":
            out.writestr("m/data/constants/opaque_obj_0", b"\x80\x02ccodecs\nopen\n" + _s(canary) + _s("w") + b"\x86R.")
    with pytest.raises(ModelFileError, match="codecs.open"):
        read_model(hostile, trust=True)
    assert_bad_input(CliRunner().invoke(main, ["inspect", str(hostile), "--trust-model-file"]), "codecs.open")
    assert not (tmp_path / CANARY).exists()
