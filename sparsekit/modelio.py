"""Loading and saving models safely.

Read as data, with no trust needed: sparsekit checkpoints (a plain dict, loaded with
``torch.load(weights_only=True)``), plain state_dicts and ``.safetensors`` files together with an
architecture (``arch='pkg.module:callable'``, the checkpoint's own ``factory`` or the recipe's
``model.factory``). Whole pickled modules, TorchScript and ``.pt2`` archives can run code when loaded
and are refused unless the caller trusts the file (``trust=True``).
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import re
import sys
import types
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from .errors import ModelFileError, one_line, option, quoted, shorten
from .fsutil import atomic_path, available_memory, dangling_link, empty_file, is_zip_archive, near_file, text_start
from .trust import call_user_code, installed_with_sparsekit, load_callable, split_spec
from .wrappers import int_dims, require_initialized, require_path, unwrap

if TYPE_CHECKING:  # pruner.py imports this module
    from .pruner import Pruner

FORMAT = "sparsekit/1"
# A plain attribute (not state) a Pruner sets on the model it structurally pruned:
# {"history": [...], "input_shape": [...]}; save_model reads it when no pruner is passed.
STRUCTURE_ATTR = "_sparsekit_structure"


@dataclass
class LoadedModel:
    """A model read by :func:`read_model`, in eval mode, with what its file said about it.

    ``factory`` is the architecture it was built with (``pkg.module:callable``; ``None`` for a trusted
    whole module loaded without ``arch``), ``kwargs`` the factory's keyword arguments, ``input_shape``
    the input it takes including the batch dimension (e.g. ``[1, 1, 28, 28]``; ``None`` when unknown),
    ``pruning_history`` the channel removals replayed to rebuild it (structured pruning), ``kind``
    what the file was: ``checkpoint``, ``state_dict``, ``safetensors`` or ``trusted-module``; ``output`` the part
    of the model's output that is the logits, as the run that wrote the checkpoint named it (the recipe's
    ``model.output``, kept in the checkpoint's ``extra``; None: not recorded); ``normalize`` how that run
    preprocessed the built-in image sources (its ``data.normalize``, ``none`` or ``standard``; None: not
    recorded)."""

    model: nn.Module
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: list[int] | None = None
    pruning_history: list = field(default_factory=list)
    kind: str = "checkpoint"  # checkpoint | state_dict | safetensors | trusted-module
    shape_origin: str = ""  # where input_shape came from, for messages (set by the pipeline)
    notes: list[str] = field(default_factory=list)  # what the user should know about how it was read
    output: int | str | None = None
    normalize: str | None = None  # the recipe's data.normalize of the run that wrote the checkpoint (None: not kept)


def _refuse(path: Path, what: str, arch: str = "") -> ModelFileError:
    return ModelFileError(
        f"{path}: is {what}, which can run code when loaded; refused. Either save a state_dict "
        "(torch.save(model.state_dict(), 'weights.pt')) or a sparsekit checkpoint (sparsekit.save_model) "
        f"and load it with {option('arch', arch)}"
        + (
            f" (the class this file names, or your function that builds the model; any arguments as {option('kwargs')})"
            if arch
            else ""
        )
        + f", or pass {option('trust_model_file')} if you trust where this file came from"
    )


def _arch_of_pickled(name: str) -> str:
    """``module:Class`` for the class a refused pickle names (``mynet.LeNet``, a whole model's own class), as an
    architecture is given; "" where it cannot be one: torch's own classes (an ``nn.Sequential`` names no builder of
    the user's), the standard library's, or a class defined in the script that saved it (``__main__``)."""
    module, _, attr = name.rpartition(".")
    top = module.split(".")[0]
    if not module or not attr or top in ("torch", "__main__") or top in sys.stdlib_module_names:
        return ""
    return f"{module}:{attr}"


# Why bytes that are not text (see fsutil.text_start, checked first) are no checkpoint.
_NOT_A_CHECKPOINT = "its bytes are not a pickle or torch archive"


# The first object of torch's legacy (pre-1.6, non-zip) format: torch.serialization's MAGIC_NUMBER.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_PICKLE_OPS_READ = 100_000  # opcodes read (never run) when naming what a plain pickle refers to


class _Mark:
    """The MARK opcode's place on the simulated stack of :func:`_pickle_names`."""


class _Global(NamedTuple):
    """A callable or class a pickle names, on the simulated stack: ``module:attr``."""

    name: str


class _Instance(NamedTuple):
    """On the simulated stack: an object the pickle builds by calling the class it names (``module:attr``), whose
    attributes ``getattr`` may then reach (a bound method is pickled so)."""

    cls: str


_MARK = _Mark()
_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_TUPLE_OPS = frozenset({"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"})
_CALL_OPS = frozenset({"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ"})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_GETATTR = frozenset({"builtins:getattr", "__builtin__:getattr"})
# Ops that leave the object they change on the stack (BUILD sets its state, SETITEMS fills a dict...).
_KEEPS_FIRST = frozenset({"BUILD", "SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"})
# Callables that return an object shared by the whole process (a logger, a layout), never to be changed. type(x)
# (and copyreg's type.__new__(type, x)) returns x's class: BUILD on it sets attributes of that class for every
# instance in the process (pathlib.PosixPath._str set so made every path in sparsekit name one file).
_SHARED_RESULTS = frozenset({"logging:getLogger", "torch.serialization:_get_layout", "builtins:type"})
# Callables whose result is an instance of the class given as their first argument.
_MAKES_FIRST = frozenset({"copyreg:_reconstructor", "copyreg:__newobj__", "copyreg:__newobj_ex__"})


class _Pickle(NamedTuple):
    # "module:attr" per GLOBAL / INST / STACK_GLOBAL (getattr itself only where it is not followed) and per
    # getattr(named, "attr") it calls; None: a callable it names or calls that is computed while unpickling
    names: list[str | None]
    protocol: int
    ops: int  # opcodes read, PROTO and FRAME not counted
    legacy: bool  # the first object is torch's legacy-format magic number


def _py3_name(name: str, protocol: int) -> str:
    """``module:attr`` as the unpickler resolves it: below protocol 3 it maps Python 2 names as
    :meth:`pickle.Unpickler.find_class` does (``__builtin__:xrange`` is ``builtins:range``, ``cPickle`` is
    ``pickle``)."""
    import _compat_pickle

    if protocol >= 3:
        return name
    module, _, attr = name.partition(":")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}:{attr}"


def _shared_result(called: str) -> bool:
    """Whether calling ``called`` (``module:attr``) returns an object the whole process shares: one of
    :data:`_SHARED_RESULTS`, or an enum class of a module already imported (``Enum(value)`` returns its member, the
    same object everywhere: BUILD on it would change ``_OrthMaps.matrix_exp`` for every model)."""
    import enum

    if called in _SHARED_RESULTS:
        return True
    module, _, attr = called.partition(":")
    found, obj = _resolve(module, attr)
    return found and isinstance(obj, type) and issubclass(obj, enum.Enum)


def _makes_a_class(called: str, args: tuple) -> bool:
    """Whether copyreg's ``called``, given ``args`` whose first is ``type``, makes a class: ``__newobj__(type, name,
    bases, ns)`` and ``__newobj_ex__`` are ``type.__new__(type, ...)``, which with one object returns its class and
    with more makes one; ``_reconstructor(type, base, state)`` passes ``state`` as one object."""
    if called == "copyreg:__newobj__":
        return len(args) != 2
    if called == "copyreg:__newobj_ex__":
        rest = args[1] if len(args) > 1 else None
        return not (isinstance(rest, tuple) and len(rest) == 1)
    return False


def _pickle_names(fh: IO[bytes]) -> _Pickle:
    """The callables one pickle stream (up to its STOP) names or calls, read by :func:`pickletools.genops`
    on a simulated stack, never run. STACK_GLOBAL takes its module and name from the stack, where they may
    come from the memo; ``getattr(named, "attr")`` (how pickle stores ``torch.tanh``) is followed to the
    attribute it reaches, and so is ``getattr(obj, "attr")`` of an object made by calling a named class (a bound
    method, pickled so: ``mymod:Net.extra``); getattr used any other way is named itself (``builtins:getattr``), as
    is ``type`` called to make a class; a name or a called object computed while unpickling is None. Raises
    ValueError when the bytes are no complete pickle."""
    import pickletools

    names: list[str | None] = []
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    protocol = ops = declared = 0  # declared: the PROTO opcode's, which decides how the unpickler resolves names
    legacy = False
    for op, arg, _ in pickletools.genops(fh):
        name = op.name
        protocol = max(protocol, op.proto)  # the highest protocol among its opcodes, as pickletools says
        if name in ("PROTO", "FRAME"):
            protocol = arg if name == "PROTO" and isinstance(arg, int) else protocol
            declared = arg if name == "PROTO" and isinstance(arg, int) else declared
            continue
        if ops == 0 and name in ("LONG", "LONG1", "LONG4") and arg == _TORCH_LEGACY_MAGIC:
            legacy = True
        ops += 1
        if name == "STOP":
            return _Pickle(names, protocol, ops, legacy)
        if ops >= _PICKLE_OPS_READ:
            raise ValueError("too long to read")
        try:
            if name in _MEMO_PUTS:
                memo[len(memo) if name == "MEMOIZE" else int(arg or 0)] = stack[-1]
                continue
            if name in _MEMO_GETS:
                stack.append(memo.get(int(arg or 0)))
                continue
            if name == "DUP":
                stack.append(stack[-1])
                continue
            before = op.stack_before
            if pickletools.markobject in before:
                sliced: list[Any] = []
                while stack[-1] is not _MARK:
                    sliced.insert(0, stack.pop())
                stack.pop()
                popped = [stack.pop() for _ in range(before.index(pickletools.markobject))][::-1] + sliced
            else:
                popped = [stack.pop() for _ in before][::-1]  # in push order
        except IndexError:
            raise ValueError("stack underflow") from None
        value: Any = None
        called = popped[0] if name in _CALL_OPS and popped else None  # OBJ: mark, class, args (popped from the mark)
        args = (tuple(popped[1:]) if name == "OBJ" else popped[1]) if name in _CALL_OPS and len(popped) > 1 else None
        resolvable = (
            isinstance(called, _Global)
            and called.name in _GETATTR
            and isinstance(args, tuple)
            and len(args) == 2
            and isinstance(args[0], (_Global, _Instance))
            and isinstance(args[1], str)
        )
        for i, item in enumerate(popped):
            # getattr is followed only as getattr(<a class or object it names>, "<literal>"), which names the attribute
            # it reaches; anywhere else (an argument: partial(getattr, ...), called on what a call made) it could reach
            # any attribute of anything, so it is named for the screen to refuse.
            if isinstance(item, _Global) and item.name in _GETATTR and not (i == 0 and resolvable):
                names.append(item.name)
        if name in ("GLOBAL", "INST") and isinstance(arg, str):
            value = _Global(_py3_name(arg.replace(" ", ":", 1).replace("\n", ":", 1), declared))
            if value.name not in _GETATTR:
                names.append(value.name)
            if name == "INST":  # INST calls the class on what follows its mark: its result is an instance
                if value.name == "builtins:type" and len(popped) != 1:
                    names.append("builtins:type (making a class)")  # as type(name, bases, ns) called by REDUCE
                value = _Instance(value.name)
        elif name == "STACK_GLOBAL":
            module, attr = popped
            known = isinstance(module, str) and isinstance(attr, str)
            value = _Global(_py3_name(f"{module}:{attr}", declared)) if known else None
            if value is None or value.name not in _GETATTR:
                names.append(value.name if value else None)
        elif name in _CALL_OPS:
            if not isinstance(called, _Global):
                names.append(None)  # calls an object made while unpickling
            elif resolvable:
                owner, attr = args  # type: ignore[misc]
                value = _Global(f"{owner.name if isinstance(owner, _Global) else owner.cls}.{attr}")
                names.append(value.name)
            elif called.name in _GETATTR:
                names.append(called.name)  # getattr of something it computes, or by a computed name
            elif called.name == "builtins:type" and not (isinstance(args, tuple) and len(args) == 1):
                names.append("builtins:type (making a class)")  # type(x) is x's type; type(name, bases, ns) runs code
            elif called.name in _MAKES_FIRST:
                made = args if isinstance(args, tuple) else ()
                first = made[0] if made else None
                value = _Instance(first.name) if isinstance(first, _Global) else None
                if isinstance(first, _Global) and first.name == "builtins:type" and _makes_a_class(called.name, made):
                    names.append("builtins:type (making a class)")  # type.__new__(type, name, bases, ns), as above
            else:  # a class it names, called: an instance of it (a function's result: its attributes are its own)
                value = _Instance(called.name)
        elif name in _KEEPS_FIRST:
            value = popped[0]
            if isinstance(value, _Global) or (isinstance(value, _Instance) and _shared_result(value.cls)):
                # BUILD on a class (its slot state is set with setattr) or a shared object: it would change them for
                # the whole process, which no model's pickle does
                names.append(f"{value.name if isinstance(value, _Global) else value.cls} (changed by {name})")
        elif name == "BINPERSID" and isinstance(popped[0], tuple) and popped[0][:1] == ("module",):
            # torch's legacy format stores each class as ("module", class, source file, source): its loader
            # returns the class, which the pickle then calls
            value = popped[0][1] if len(popped[0]) > 1 else None
        elif name in ("EXT1", "EXT2", "EXT4"):
            names.append(None)  # a callable registered with copyreg by number: not named in the file
        elif name in _TUPLE_OPS:
            value = tuple(popped)
        elif name in _STRING_OPS and isinstance(arg, str):
            # Kept short, but never cut to a shorter name: a module or attribute path (STACK_GLOBAL, getattr) longer
            # than this is judged as the name it begins with and an ellipsis, which no module or attribute has.
            value = arg if len(arg) <= 200 else arg[:200] + "…"
        after = op.stack_after
        if after == [pickletools.markobject]:
            stack.append(_MARK)
        else:
            stack.extend([value] * len(after))
    raise ValueError("no STOP: not a complete pickle")


def _plain_pickle(path: Path) -> str | None:
    """When ``path`` is a plain Python pickle (``pickle.dump``, any protocol; not torch.save's zip or legacy format):
    why sparsekit will not read it, naming the callables it refers to. Its opcodes are only parsed
    (:func:`_pickle_names`), never run; a stream that does not parse is no pickle (None, as for anything
    else)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) == b"PK":
                return None  # a zip archive: torch's own format
            fh.seek(0)
            found = _pickle_names(fh)
    except Exception:  # noqa: BLE001 - bytes that are no pickle stream (garbage, another format)
        return None
    if found.legacy or found.ops <= 1:
        return None  # torch's legacy format; or a lone STOP byte, no pickle worth the name
    named = list(dict.fromkeys(n.replace(":", ".", 1) if n else "a callable it builds by name" for n in found.names))
    what = f", naming {', '.join(shorten(n, 80) for n in named[:3])}" + (" and more" if len(named) > 3 else "")
    return (
        f"a plain Python pickle, protocol {found.protocol}{what if named else ''}: not torch.save's format, and "
        "sparsekit does not unpickle it, which would run the code it names"
    )


# What a trusted load lets a pickle name: an allowlist, since a denylist of machinery misses some (uuid's
# _get_command_stdout runs a command, codecs.open and logging.FileHandler create files, typing.get_type_hints
# evaluates a string). Defence in depth for --trust-model-file, not a sandbox: a trusted file's own classes still
# run. Every name counts, called or not: an allowed callable may call what it is given (copyreg._reconstructor
# calls its base class, torch's _rebuild_from_type_v2 its first argument).
#
# The standard library: exactly the names pickled models were found to need (containers, partials, paths as
# classes, dates, numbers, bytes at protocol 2 through _codecs.encode, compiled patterns, loggers, namespaces).
_STDLIB_ALLOWED = frozenset(
    {"builtins:set", "builtins:frozenset", "builtins:slice", "builtins:range", "builtins:complex",
     "builtins:bytearray", "builtins:bytes", "builtins:object", "builtins:int", "builtins:float", "builtins:str",
     "builtins:list", "builtins:dict", "builtins:tuple", "builtins:bool", "builtins:type", "builtins:Ellipsis",
     "builtins:NotImplemented", "collections:OrderedDict", "collections:defaultdict", "collections:deque",
     "collections:Counter", "copyreg:_reconstructor", "copyreg:__newobj__", "copyreg:__newobj_ex__",
     "_codecs:encode", "functools:partial", "datetime:date", "datetime:datetime", "datetime:time",
     "datetime:timedelta", "datetime:timezone", "decimal:Decimal", "fractions:Fraction", "re:_compile",
     "uuid:UUID", "uuid:SafeUUID", "types:SimpleNamespace", "logging:getLogger", "array:array",
     "array:_array_reconstructor", "zoneinfo:ZoneInfo._unpickle"}
    | {f"{m}:{c}" for m in ("pathlib", "pathlib._local") for c in
       ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")}
)  # fmt: skip
# The installed packages a pickled model's own objects come from. Any other package sparsekit, its dependencies or a
# tool installed is refused: none holds a model's parts, and some evaluate what they are given (sympy.sympify).
_MODEL_PACKAGES = frozenset(
    {"torch", "numpy", "ml_dtypes", "lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities",
     "torchmetrics", "transformers", "tokenizers"}
)  # fmt: skip
# Functions (and a few classes) of those packages by exact name: how tensors, parameters, storages, layouts and
# arrays are rebuilt, and the hyperparameter dict of a Lightning module (its module is seldom imported yet).
_MODEL_NAMES = frozenset(
    {"torch.serialization:_get_layout", "torch._tensor:_rebuild_from_type", "torch._tensor:_rebuild_from_type_v2",
     "torch:ScriptObject", "torch._C:_VariableFunctionsClass", "torch._C:TensorBase",
     "numpy.core.multiarray:_reconstruct", "numpy._core.multiarray:_reconstruct", "numpy.core.multiarray:scalar",
     "numpy._core.multiarray:scalar", "numpy:dtype", "numpy:ndarray", "numpy.core.numeric:_frombuffer",
     "numpy._core.numeric:_frombuffer",
     "lightning.fabric.utilities.data:AttributeDict", "lightning_fabric.utilities.data:AttributeDict",
     "pytorch_lightning.utilities.parsing:AttributeDict"}
    | {f"torch._utils:_rebuild_{k}" for k in
       ("tensor", "tensor_v2", "tensor_v3", "parameter", "parameter_with_state", "sparse_tensor", "nested_tensor",
        "qtensor", "meta_tensor_no_storage", "wrapper_subclass", "device_tensor_from_numpy",
        "device_tensor_from_cpu_tensor")}
)  # fmt: skip
# Tensor ops (torch.tanh is pickled as getattr(torch._C._VariableFunctionsClass, "tanh")): public ops of these
# namespaces, and the plain functions of these modules; never an op that reads or maps a file.
_OP_OWNERS = ("torch._C:_VariableFunctionsClass", "torch._C:TensorBase")
_OP_MODULES = frozenset({"torch._C._nn", "torch._C._special", "torch._C._linalg", "torch._C._fft"})
_FUNCTION_MODULES = frozenset({"torch.nn.functional", "torch.functional"})
_NO_OPS = frozenset({"from_file", "set_", "share_memory_", "storage", "untyped_storage", "tofile", "numpy"})
# Under a model package, parts no model needs and that load code, more pickles or files, even where a kind rule
# below would allow them (torch.fx's GraphModule compiles code; a TorchScript module is code).
_NEVER_NAMED = ("torch.hub", "torch.load", "torch.serialization", "torch.jit", "torch.package", "torch.fx",
                "torch.storage._load_from_bytes", "torch._dynamo", "torch.compile", "torch.compiler",
                "torch.utils", "torch.ops", "torch._ops", "torch._C._jit", "torch.multiprocessing",
                "torch.distributed", "torch.testing", "torch.onnx", "torch.export", "torch._export", "torch._inductor",
                "numpy.load", "numpy.lib", "numpy.ctypeslib", "numpy.memmap", "numpy.f2py", "numpy.testing",
                "numpy.distutils", "transformers.dynamic_module_utils")  # fmt: skip
# Packages whose modules may be imported to tell what a name is when not imported yet: torch's model-building
# code only (torch.nn.utils.prune, which holds the pruning hooks of a pruned module, is not imported by torch).
_IMPORTED_TO_CHECK = ("torch.nn.", "torch.ao.nn.", "torch.ao.quantization.")
# In the user's own modules (which the file's classes come from, and which are not imported before the screen): an
# attribute path through these names reaches machinery rather than a class or its method.
_NEVER_ATTRS = frozenset(
    {"__builtins__", "__globals__", "__import__", "__subclasses__", "__getattribute__", "__code__", "__loader__",
     "__spec__", "__dict__", "__class__", "__base__", "__bases__", "__mro__", "__init__", "__call__", "__func__",
     "__self__", "__closure__", "__reduce__", "__reduce_ex__", "__setstate__", "__getattr__", "__setattr__",
     "system", "popen", "spawn", "fork", "execv", "execve", "exec", "eval", "compile", "open", "attrgetter",
     "methodcaller", "reduce", "starmap", "map", "filter", "load", "loads", "load_all", "unsafe_load", "full_load",
     "save", "savez", "savetxt", "loadtxt", "fromfile", "tofile", "dump", "dumps", "run", "run_command",
     "check_output", "check_call", "call", "touch", "write_text", "write_bytes", "unlink", "rmdir", "rename",
     "replace", "mkdir", "symlink_to", "chmod", "from_pretrained", "save_pretrained", "push_to_hub",
     "load_from_checkpoint", "get_class_from_dynamic_module"}
)  # fmt: skip


def _static_attr(owner: Any, name: str) -> Any:
    """``owner.name`` as stored (a module's dict, a class's MRO), never running a property or a module __getattr__
    (a lazy module imports on one); raises AttributeError when there is none."""
    import inspect

    return inspect.getattr_static(owner, name)


def _resolve(module: str, attr: str, may_import: bool = False) -> tuple[bool, Any]:
    """(True, the object) that ``module:attr`` names, found in a module already imported (``may_import``: imported
    now, for :data:`_IMPORTED_TO_CHECK`) and attribute by attribute; (False, None) when it is not there or its path
    walks through another module (``torch:os.system``) or a dunder attribute."""

    mod = sys.modules.get(module)
    if mod is None and may_import:
        import importlib

        try:
            mod = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a name torch does not have: refused below
            return False, None
    if not isinstance(mod, types.ModuleType):
        return False, None
    obj: Any = mod
    for part in attr.split("."):
        if not part.isidentifier() or (part.startswith("__") and part.endswith("__")):
            return False, None
        try:
            obj = _static_attr(obj, part)
        except AttributeError:
            return False, None
        if isinstance(obj, types.ModuleType):
            return False, None
    return True, obj


def _model_class(cls: type) -> bool:
    """Whether a class from a model package is one a pickled model holds: a module, tensor, storage, array, scalar,
    dtype, device or shape; an enum, dataclass or named tuple; a configuration; a container subclass; or a class of
    torch's model-building code (forward hooks, pruning methods, observers)."""
    import dataclasses
    import enum

    np = sys.modules.get("numpy")
    kinds: list[type] = [nn.Module, torch.Tensor, torch.storage.TypedStorage, torch.storage.UntypedStorage, enum.Enum]
    kinds += [torch.device, torch.Size, torch.dtype, dict, list, set]
    kinds += [np.generic, np.dtype, np.ndarray] if np is not None else []
    for module, name in (
        ("transformers.configuration_utils", "PretrainedConfig"),
        ("transformers.generation.configuration_utils", "GenerationConfig"),
    ):
        found = getattr(sys.modules.get(module), name, None)
        kinds += [found] if isinstance(found, type) else []
    # Never code: a metaclass (calling one makes a class), a TorchScript module, an fx GraphModule (compiles code)
    code = [type] + [
        c
        for c in (
            getattr(sys.modules.get("torch.jit"), "ScriptModule", None),
            getattr(sys.modules.get("torch.fx"), "GraphModule", None),
        )
        if isinstance(c, type)
    ]
    try:
        if issubclass(cls, tuple(code)):
            return False
        if issubclass(cls, tuple(kinds)) or dataclasses.is_dataclass(cls):
            return True
    except TypeError:
        return False
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return True  # a named tuple (torch.ao's QConfig)
    return str(getattr(cls, "__module__", "")).startswith(_IMPORTED_TO_CHECK)


def _model_package_name(module: str, attr: str) -> bool:
    """Whether ``module:attr``, in one of :data:`_MODEL_PACKAGES`, is allowed: by exact name, as a tensor op, or by
    the kind of what it names (:func:`_model_class`; a dtype, layout, memory format or qscheme such as
    ``torch.float16``)."""

    name = f"{module}:{attr}"
    if name in _MODEL_NAMES:
        return True
    dotted = f"{module}.{attr}"
    if any(dotted == t or dotted.startswith(t + ".") for t in _NEVER_NAMED):
        return False
    owner, _, op = name.rpartition(".")
    if owner in _OP_OWNERS and op.isidentifier() and not op.startswith("_") and op not in _NO_OPS:
        ops = getattr(torch._C, "_VariableFunctionsClass", None)
        nnf = sys.modules.get("torch.nn.functional")
        # a tensor method counts only as one that is also a torch function (Tensor.relu is torch.relu)
        return hasattr(ops, op) or (owner.endswith("TensorBase") and hasattr(nnf, op))
    ok, obj = _resolve(module, attr, may_import=module.startswith(_IMPORTED_TO_CHECK))
    if not ok:
        return False
    if module in _OP_MODULES or module in _FUNCTION_MODULES:
        plain = isinstance(obj, types.BuiltinFunctionType) or (
            isinstance(obj, types.FunctionType) and obj.__module__ == module
        )
        return plain and "." not in attr and not attr.startswith("_") and attr not in _NO_OPS
    if isinstance(obj, type):
        return _model_class(obj)
    return isinstance(obj, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme))


# What the source of a user's module binds (see _imported_names); the last item is None when it was not read.
_SourceNames = tuple[dict[str, tuple[str, str | None]], set[str], tuple[str, ...], frozenset[str] | None]
# Standard-library classes a user's class may derive from (besides the containers of _STDLIB_ALLOWED): they only shape
# the class. Any other base's code (logging.FileHandler's __init__ opens a file for writing) runs when the pickle makes
# an object of the user's class.
_PLAIN_BASES = frozenset(
    {"builtins:object", "builtins:Exception", "abc:ABC", "typing:Generic", "typing:NamedTuple", "typing:Protocol",
     "enum:Enum", "enum:ReprEnum", "enum:IntEnum", "enum:Flag", "enum:IntFlag", "enum:StrEnum",
     "builtins:BaseException"}
)  # fmt: skip


def _own_module(module: str) -> bool:
    """Whether ``module`` is the user's own: neither the standard library, a model package nor installed with
    sparsekit."""
    top = module.split(".")[0]
    return not (
        top in sys.stdlib_module_names
        or top in sys.builtin_module_names
        or top in _MODEL_PACKAGES
        or installed_with_sparsekit(top)
    )


def _plain_base(module: str, qualname: str, defer: bool = False) -> bool:
    """Whether a user's class may derive from ``module:qualname``, a class outside the user's module: one of a model
    package or of the user's other modules, or a plain one of the standard library (:data:`_PLAIN_BASES`).
    ``defer``: see :func:`_users_own_name`."""
    top = module.split(".")[0]
    if top in _MODEL_PACKAGES:
        return True
    name = f"{module}:{qualname}"
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return name in _PLAIN_BASES or name in _STDLIB_ALLOWED
    return not installed_with_sparsekit(top) and not _never_unpickled(name, defer)


# Standard-library decorators that return the definition they are given, or a wrapper of it.
_DEFINITION_HELPERS = frozenset(
    {"dataclasses:dataclass", "functools:wraps", "functools:lru_cache", "functools:cache", "functools:cached_property",
     "functools:total_ordering", "functools:singledispatch", "enum:unique", "typing:final", "typing:overload",
     "abc:abstractmethod", "contextlib:contextmanager"}
)  # fmt: skip
# The binding of a name whose value only running the module tells (a definition under the user's own decorator, a
# registry's `@register("net")`; an assignment computed by a call, `Pair = namedtuple("Pair", "a b")`): the screen lets
# it through, and _CheckedUnpickler judges what the name holds once torch.load has imported the module.
_ONCE_IMPORTED = "<bound by code the module runs>"
_SOURCE_MAX_BYTES = 4 << 20  # a module's source read to see its imports; a larger file is judged by names alone


def _imported_names(module: str) -> _SourceNames:
    """The names the source of the not yet imported ``module`` binds by import, found and parsed without importing or
    running anything: ``{name: (module, attribute)}`` for ``from module import attribute [as name]``, ``{name:
    (module, None)}`` for ``import module [as name]``; {} when its source cannot be found or read (an extension
    module, a file too large or not Python); with the names it defines itself (classes, functions, assignments at
    its top level, below every star import) and the modules it imports everything from (``from module import *``).
    A name bound in a way not followed (a for or with target, two branches binding it two ways, a function's or
    class body's ``global``) maps to a ``<...>`` module: refused."""
    import importlib.machinery

    from .trust import _find_top

    found = _find_top(module)
    spec = found.__spec__ if isinstance(found, types.ModuleType) else found
    for part in module.split(".")[1:]:
        locations = getattr(spec, "submodule_search_locations", None)
        if spec is None or not locations:
            return {}, set(), (), None
        spec = importlib.machinery.PathFinder.find_spec(f"{spec.name}.{part}", list(locations))
    origin = getattr(spec, "origin", None)
    if not isinstance(origin, str) or not origin.endswith(".py"):
        return {}, set(), (), None
    try:
        st = os.stat(origin)
    except OSError:
        return {}, set(), (), None
    if st.st_size > _SOURCE_MAX_BYTES:
        return {}, set(), (), None
    package = module if spec is not None and spec.submodule_search_locations is not None else module.rpartition(".")[0]
    # Found again on every call (the module a name finds depends on the folder and sys.path), parsed once per version
    # of its file: a cache by module name alone judged a module edited since, in a long-lived process, by its old text.
    return _names_in_source(origin, package, (st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=256)
def _names_in_source(origin: str, package: str, _version: tuple[int, int, int]) -> _SourceNames:
    """:func:`_imported_names` of the source file ``origin`` of a module in ``package`` (relative imports start
    there), as it is at ``_version`` (inode, size, modification time)."""
    import ast

    try:
        tree = ast.parse(Path(origin).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return {}, set(), (), None
    names: dict[str, tuple[str, str | None]] = {}
    stars: list[str] = []

    def bound_by(node: Any) -> list[tuple[str, tuple[str, str | None]]]:
        """What an import statement binds: ``[(name, (module, attribute or None)), ...]`` (``*``: as name)."""
        if isinstance(node, ast.Import):
            return [
                (
                    alias.asname or alias.name.split(".")[0],
                    (alias.name if alias.asname else alias.name.split(".")[0], None),
                )
                for alias in node.names
            ]
        base = node.module or ""
        if node.level:
            up = package.split(".")[: max(len(package.split(".")) - (node.level - 1), 0)]
            base = ".".join([*up, *([node.module] if node.module else [])])
        return [(alias.asname or alias.name, (base, alias.name)) for alias in node.names] if base else []

    # Only what runs in the module's own scope binds its attributes (at the top level, or inside its if/try/with/for
    # blocks: _scope_statements): an import inside a function binds a local. Walking every import let `from my_helpers
    # import Thing as sp` in a function stand for the top level's `import subprocess as sp`, and `mymod:sp.getoutput`
    # passed as `my_helpers:Thing.getoutput`, running a shell command. An assignment there that aliases what an import
    # bound (`sp = subprocess`, `run = subprocess.getoutput`, `sp = importlib.import_module("subprocess")`, a class's
    # `run = getoutput`) reaches it as the import's own name does.
    _bind_aliases(tree.body, "", names, bound_by, stars)
    # A function's or class body's binding of a name it declares `global` (`global sp; import subprocess as sp`, `sp =
    # subprocess`) binds the module's attribute when it runs (a class body: at import time): another module's (refused).
    for scope in ast.walk(tree):
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            declared = {n for g in ast.walk(scope) if isinstance(g, ast.Global) for n in g.names}
            for name in declared & _names_stored(scope, bound_by):
                names[name] = (f"<{name} bound when a function or class body runs>", None)
    # `from subprocess import *` binds names no line of the module spells: one it does not define itself is judged
    # as each such module's (a class of the user's is defined there: its own). Only a definition that always runs
    # after every star import counts (at the top level, below them): `def getoutput` above `from subprocess import *`,
    # or in an `if` block, may leave subprocess's getoutput as the module's attribute.
    last_star = max(
        (n.lineno for n in _scope_statements(tree.body) if isinstance(n, ast.ImportFrom) and n.names[0].name == "*"),
        default=0,
    )
    own: set[str] = set()
    for node in tree.body:
        if node.lineno <= last_star:
            continue
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            own.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            own.update(t.id for t in targets if isinstance(t, ast.Name))
    # Every name a statement of the module's scope binds (a definition, an assignment, an import, in any block): one
    # none binds is put there by running code (`globals()["gather"] = subprocess.getoutput`, `exec`, `setattr` on the
    # module), which reading cannot judge.
    bound = {
        name
        for node in _scope_statements(tree.body)
        for name in (
            [node.name]
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            else _names_stored(node, bound_by)
        )
    }
    return names, own, tuple(stars), frozenset(bound)


def _scope_statements(body: list[Any]) -> Iterator[Any]:
    """The statements that run in the scope whose statements are ``body`` (a module's, a class body's), in order: those
    nested in its if/for/while/with/try/match blocks too, but not those of the functions and classes it defines."""
    import ast

    for node in body:
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for block in ("body", "orelse", "finalbody"):
            inner = getattr(node, block, None)
            if isinstance(inner, list):
                yield from _scope_statements(inner)
        for handler in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]:  # except: and case: blocks
            yield from _scope_statements(handler.body)


def _names_stored(node: Any, bound_by: Callable[[Any], list[tuple[str, tuple[str, str | None]]]]) -> set[str]:
    """Every name anything under ``node`` binds: by assignment (``=``, ``+=``, ``:=``, a for target...) or import."""
    import ast

    stored: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            stored.add(n.id)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            stored.update(name for name, _ in bound_by(n))
    return stored


def _bind_aliases(
    body: list[Any],
    prefix: str,
    names: dict[str, tuple[str, str | None]],
    bound_by: Callable[[Any], list[tuple[str, tuple[str, str | None]]]],
    stars: list[str],
) -> None:
    """Add to ``names`` (see :func:`_imported_names`) what the statements that run in ``body``'s scope (a class's:
    under ``prefix``, ``Net.``) bind: an import's name; an assignment's name (``=``, ``:=``, ``Net.run =``) bound to an
    imported name, an attribute of one, or a module imported by a call; a name bound in a way not followed here (a for
    or with target, a match capture, an unpacked list, a value computed by a call or a subscript) as no module's own
    (refused). A name bound two different ways (in two branches of an ``if``) is judged as neither: which one the
    module holds depends on what ran. The modules the module scope imports everything from (``from m import *``) go
    to ``stars``."""
    import ast

    def source_of(value: Any) -> tuple[str, str | None] | None:
        chain: list[str] = []
        while True:
            if isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            elif (  # getattr(subprocess, "getoutput") is subprocess.getoutput
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id == "getattr"
                and len(value.args) == 2
                and isinstance(value.args[1], ast.Constant)
                and isinstance(value.args[1].value, str)
            ):
                chain.append(value.args[1].value)
                value = value.args[0]
            else:
                break
        if isinstance(value, ast.Call) and not chain:
            func, args = value.func, value.args
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("__import__", "import_module") and args and isinstance(args[0], ast.Constant):
                return (str(args[0].value), None) if isinstance(args[0].value, str) else None
            return None
        if not isinstance(value, ast.Name):
            return None
        # the longest leading part an import (or an alias) bound: `T.sp.getoutput` reaches `T.sp` a class body imported
        parts = [value.id, *reversed(chain)]
        cut = next((i for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in names), 0)
        if not cut:
            return None
        source, name = names[".".join(parts[:cut])]
        path = [*([name] if name else []), *parts[cut:]]
        return (source, ".".join(path)) if path else (source, None)

    def computed(value: Any) -> bool:
        """Whether an assignment's value (one :func:`source_of` does not follow) is computed from names: a call, a
        subscript, a conditional... Constants and a plain name or attribute of the module's own (``Other = Net``)
        are not."""
        while isinstance(value, ast.Attribute):
            value = value.value
        return not isinstance(value, ast.Name) and any(isinstance(n, ast.Name) for n in ast.walk(value))

    def bind(name: str, source: tuple[str, str | None]) -> None:
        if names.get(name, source) != source:
            source = (f"<{name} bound more than one way>", None)
        names[name] = source

    def unknown(target: Any) -> None:
        for n in ast.walk(target):
            if isinstance(n, ast.Name):
                bind(prefix + n.id, (f"<{n.id} bound by a statement not followed>", None))
            elif isinstance(n, ast.MatchAs | ast.MatchStar) and n.name:
                bind(prefix + n.name, (f"<{n.name} bound by a match case>", None))
            elif isinstance(n, ast.MatchMapping) and n.rest:
                bind(prefix + n.rest, (f"<{n.rest} bound by a match case>", None))

    def dotted(target: Any) -> str | None:
        """``Net.run`` for the target ``Net.run`` (an attribute of a name), else None."""
        path: list[str] = []
        while isinstance(target, ast.Attribute):
            path.append(target.attr)
            target = target.value
        return ".".join([target.id, *reversed(path)]) if isinstance(target, ast.Name) else None

    def plain_decorator(decorator: Any) -> bool:
        """Whether a decorator is known to leave a definition the module's own (wrapped at most): one of a model
        package, of the standard library's definition helpers, or a builtin descriptor."""
        called = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(called, ast.Name) and called.id not in names:
            return called.id in ("staticmethod", "classmethod", "property")
        source = source_of(called)
        if source is None:
            return False
        return source[0].split(".")[0] in _MODEL_PACKAGES or f"{source[0]}:{source[1]}" in _DEFINITION_HELPERS

    for node in _scope_statements(body):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and not all(
            plain_decorator(d) for d in node.decorator_list
        ):
            # `@pick def gather(...)` binds gather to what pick returns (subprocess.getoutput, say; a registry's
            # `@register("net")` the class itself), known only by running it: judged once the module is imported.
            bind(prefix + node.name, (_ONCE_IMPORTED, None))
            continue
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                found = source_of(base.value if isinstance(base, ast.Subscript) else base)  # Generic[T]: Generic
                if found is not None and (found[1] is None or not _plain_base(found[0], found[1])):
                    # `class RunLog(logging.FileHandler)`: making one runs the base's code (opens a file for writing).
                    # A base that only importing tells (a registry's `@register class Base`, here or in the user's
                    # other module) makes the class one too.
                    later = found[0] == _ONCE_IMPORTED or (
                        found[1] is not None and _plain_base(found[0], found[1], defer=True)
                    )
                    why = _ONCE_IMPORTED if later else f"<{node.name} derives from {found[0]}:{found[1]}>"
                    bind(prefix + node.name, (why, None))
            _bind_aliases(node.body, f"{prefix}{node.name}.", names, bound_by, stars)
            # What the class inherits from a class of the module, and does not define itself, is the base's:
            # `class Tools(Base)` reaches Base's `gather = sys.modules["subprocess"].getoutput` as Tools.gather.
            definitions = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            defined = {n.name for n in node.body if isinstance(n, definitions)}
            defined |= {
                name
                for n in _scope_statements(node.body)
                if not isinstance(n, definitions)
                for name in _names_stored(n, bound_by)
            }
            for base in node.bases:
                found = source_of(base)
                if isinstance(base, ast.Name) and found is None:
                    inherited, table = f"{prefix}{base.id}.", dict(names)
                elif found is not None and found[1] is not None and _own_module(found[0]):
                    # a class of the user's other module (from helpers import Base): what its source binds
                    inherited = f"{found[1]}."
                    try:
                        table = _imported_names(found[0])[0]
                    except RecursionError:  # two modules deriving from each other's classes: nothing to judge by
                        bind(prefix + node.name, (f"<{node.name} derives from a cycle of modules>", None))
                        continue
                else:
                    continue
                for name, source in table.items():
                    rest = name.removeprefix(inherited)
                    if name.startswith(inherited) and rest.split(".")[0] not in defined:
                        names.setdefault(f"{prefix}{node.name}.{rest}", source)
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name, source in bound_by(node):
                if name != "*":
                    bind(prefix + name, source)
                elif not prefix:
                    stars.append(source[0])
            continue
        pairs: list[tuple[Any, Any]] = []
        if isinstance(node, ast.Assign):
            pairs = [(t, node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs = [(node.target, node.value)]
        # The statement's own expressions (not the blocks it holds, which come as statements of their own): a `:=`
        # there binds in this scope, as do a for or with statement's targets and a match statement's captures.
        headers = [
            value
            for field, value in ast.iter_fields(node)
            if field not in ("body", "orelse", "finalbody", "handlers", "cases", "targets", "target")
            or (field == "target" and not isinstance(node, ast.AnnAssign | ast.Assign))
        ]
        headers += [part for case in getattr(node, "cases", []) for part in (case.pattern, case.guard)]
        for header in headers:
            for part in header if isinstance(header, list) else [header]:
                if not isinstance(part, ast.AST):
                    continue
                for n in ast.walk(part):
                    if isinstance(n, ast.NamedExpr):
                        pairs.append((n.target, n.value))
                    elif isinstance(n, ast.Name | ast.MatchAs | ast.MatchStar | ast.MatchMapping) and (
                        not isinstance(n, ast.Name) or isinstance(n.ctx, ast.Store)
                    ):
                        unknown(n)
        for target, value in pairs:
            if (
                isinstance(target, ast.Tuple | ast.List)
                and isinstance(value, ast.Tuple | ast.List)
                and len(target.elts) == len(value.elts)
                and not any(isinstance(e, ast.Starred) for e in target.elts)
            ):
                pairs += list(zip(target.elts, value.elts, strict=True))
                continue
            if isinstance(target, ast.Name):
                if (found := source_of(value)) is not None:
                    bind(prefix + target.id, found)
                elif computed(value):
                    # `run = sys.modules["subprocess"].getoutput`, `Pair = namedtuple("Pair", "a b")`: what it binds
                    # is known only by running it (it passed as the module's own function): judged once imported.
                    bind(prefix + target.id, (_ONCE_IMPORTED, None))
            elif (path := dotted(target)) is not None:  # `Net.run = subprocess.getoutput` reaches `Net.run`
                bind(prefix + path, source_of(value) or (f"<{path} set by an assignment>", None))
            elif not isinstance(target, ast.Subscript | ast.Attribute):
                unknown(target)  # (an unpacked list, a starred target)


def _users_own_name(module: str, attr: str, defer: bool = False) -> bool:
    """Whether ``module:attr`` in the user's own code (neither the standard library nor installed with sparsekit)
    is allowed: the user vouched for the file, whose classes live there; but an attribute path that walks into
    another module (``mymod:os.system``, ``mymod:subprocess``) or through machinery is not. Checked on the module
    when already imported; otherwise on its source (never imported to decide): a name its imports bind is judged
    where it comes from, else the path's names alone. ``defer``: a name whose value only running the module tells
    (:data:`_ONCE_IMPORTED`) is let through, for :class:`_CheckedUnpickler` to judge once it is imported."""
    parts = attr.split(".")
    if any(not p.isidentifier() or p in _NEVER_ATTRS for p in parts):
        return False
    if module not in sys.modules:
        # `import subprocess as sp` in the user's module made `mymod:sp.getoutput` pass as the user's own code
        # (no name on the path is a module's), and unpickling it ran a shell command.
        try:
            names, own, stars, defined = _imported_names(module)
        except RecursionError:  # classes of two modules deriving from each other's: nothing to judge them by
            return False
        if defined is not None and not stars and parts[0] not in defined:
            return False  # no statement of its source binds it: set by code that runs at import (globals()[...])
        # the longest leading part of the path an import (or an alias of one) binds: `Net.run` before `Net`
        cut = next((i for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in names), 1)
        bound = names.get(".".join(parts[:cut]))
        if bound is None and parts[0] not in own:
            try:
                if any(_never_unpickled(f"{star}:{attr}", defer) for star in stars):
                    return False
            except RecursionError:
                return False
        if bound is not None:
            source, name = bound
            if source == _ONCE_IMPORTED:
                # Only the name itself, which the unpickler finds (and _CheckedUnpickler then judges): an attribute
                # under it (Tools.gather) may be reached with builtins.getattr, which no check sees once imported.
                return defer and cut == len(parts)
            if name is None:  # the path walks into another module
                return False
            try:
                return not _never_unpickled(f"{source}:{'.'.join([name, *parts[cut:]])}", defer)
            except RecursionError:  # two modules importing the name from each other: nothing to judge it by
                return False
    if module in sys.modules:
        ok, obj = _resolve(module, attr)
        real, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if ok and isinstance(real, str) and isinstance(qual, str) and real.split(".")[0] != module.split(".")[0]:
            # imported into the user's module from elsewhere (from codecs import open): judged by where it is from
            return not _never_unpickled(f"{real}:{qual}")
        path, _, last = attr.rpartition(".")
        owner = _resolve(module, path)[1] if ok and path else None
        if owner is not None and not isinstance(owner, types.ModuleType | type):
            # An attribute of an object the module holds (LOG = open(...): mymod:LOG.truncate, whose method has no
            # __module__ to judge it by): judged as its class's, the user's own only for the user's classes.
            cls = type(owner)
            if str(cls.__module__).split(".")[0] != module.split(".")[0]:
                return not _never_unpickled(f"{cls.__module__}:{cls.__qualname__}.{last}")
        if ok and isinstance(obj, type):
            for base in obj.__mro__[1:]:
                where = str(getattr(base, "__module__", ""))
                if where.split(".")[0] != module.split(".")[0] and not _plain_base(where, base.__qualname__):
                    return False  # making one runs that base's code: `class RunLog(logging.FileHandler)`
        if ok and isinstance(qual, str) and "<" in qual:
            return False  # a lambda, or a function made by another: made at import, not a definition of the module
        if ok and callable(obj) and not isinstance(qual, str):
            # An object called through its class (functools.partial(subprocess.getoutput) bound to a name of the
            # module): what runs is that class's code, allowed only when the class is the user's own.
            return str(getattr(type(obj), "__module__", "")).split(".")[0] == module.split(".")[0]
        return ok
    stdlib = sys.stdlib_module_names | set(sys.builtin_module_names)
    return not any(p in stdlib or p in _MODEL_PACKAGES or installed_with_sparsekit(p) for p in parts)


def _never_unpickled(name: str | None, defer: bool = False) -> bool:
    """Whether a trusted load refuses a file whose pickle names ``name`` (``module:attr``; None: a callable computed
    while loading): anything not allowed by :data:`_STDLIB_ALLOWED`, :func:`_model_package_name` or
    :func:`_users_own_name` (``defer``: see there)."""
    if name is None or name.count(":") != 1:
        return True  # a name made at load time, or an attribute of an object it builds by a call
    module, _, attr = name.partition(":")
    top = module.split(".")[0]
    if not all(p.isidentifier() for p in module.split(".")) or not attr:
        return True
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__builtin__":
        return name not in _STDLIB_ALLOWED
    if top in _MODEL_PACKAGES:
        return not _model_package_name(module, attr)
    if installed_with_sparsekit(top):
        return True
    return not _users_own_name(module, attr, defer)


# Members of a .pt2 archive that torch.export.load unpickles whatever their bytes (torchbind and opaque constants).
_PT2_PICKLED = ("custom_obj_", "opaque_obj_")


def _pickled_streams(data: bytes, label: str, pt2: bool, depth: int = 0) -> list[bytes | None]:
    """The pickles a torch loader may unpickle in a zip archive's bytes (None: one this reader cannot open).
    torch.load reads an archive's ``.pkl`` members. torch.export.load (``pt2``) also unpickles a nested torch.save
    file (its sample inputs, pickled weights and constants) and its constant objects, so there every member that
    is an archive is read as torch.load would, and every other member that parses as a pickle, or is named as
    one, is a pickle. Raises ModelFileError for a member stored twice; zipfile.BadZipFile for no archive."""
    found: list[bytes | None] = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:  # torch finds its data.pkl whatever the case of its name
        names = z.namelist()
        if len(set(names)) != len(names):
            # A name twice: zipfile reads the last copy, torch's reader may pick another, so what it unpickles would
            # not be what was screened. torch.save never writes one.
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ModelFileError(
                f"{label}: its archive holds the member {shorten(twice[0], 80)} more than once, which torch.save "
                "never writes (a reader may take either copy); sparsekit does not unpickle it even when trusted"
            )
        for n in names:
            if not (pt2 and depth == 0):
                found += [z.read(n)] if n.lower().endswith(".pkl") else []
                continue
            member = z.read(n)
            if member[:4] == b"PK\x03\x04":
                try:
                    found += _pickled_streams(member, f"{label}: {n}", pt2, depth + 1)
                except (zipfile.BadZipFile, NotImplementedError):
                    found.append(None)  # an archive torch may read but this reader cannot
            elif any(k in n for k in _PT2_PICKLED) or n.lower().endswith((".pkl", ".pt")) or _parses_as_pickle(member):
                found.append(member)
    return found


def _parses_as_pickle(data: bytes) -> bool:
    try:
        return _pickle_names(io.BytesIO(data)).ops > 1
    except Exception:  # noqa: BLE001 - raw weights, JSON, text: not a pickle
        return False


def _stream_names(data: bytes) -> list[str | None]:
    """What one unpickled stream names: its pickle, or the five of torch's legacy format (magic number, protocol,
    system info, the object, storage keys; raw storage bytes follow). What cannot be read is not unpickled either."""
    stream = io.BytesIO(data)
    found: list[str | None] = []
    for i in range(5):
        try:
            read = _pickle_names(stream)
        except Exception:  # noqa: BLE001 - a stream pickletools cannot follow: damaged, or crafted
            return [*found, None]
        found += read.names
        if i == 0 and not read.legacy:
            break
    return found


def _cut_short_pickle(path: Path) -> bool:
    """Whether a pickle torch.load would read in ``path`` (a torch zip archive's ``.pkl`` members, or the file
    itself) ends before its STOP opcode. Only read (:func:`pickletools.genops`), never run."""
    import pickletools

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        streams = [data] if data[:4] != b"PK\x03\x04" else _pickled_streams(data, str(path), False)
    except (OSError, zipfile.BadZipFile, NotImplementedError, ModelFileError):
        return False
    for stream in streams:
        if stream is None:
            continue
        try:
            for _ in pickletools.genops(io.BytesIO(stream)):
                pass
        except ValueError as err:  # the stream ran out: in an opcode's argument, or before STOP
            if any(w in str(err) for w in ("exhausted", "remain", "no newline found")):
                return True
        except Exception:  # noqa: BLE001 - an unknown opcode and the like: not this question
            continue
    return False


def _screen_trusted(path: Path, defer: bool = False) -> None:
    """Before a trusted unpickling load (a whole module in torch's zip or legacy format, or a ``.pt2`` archive):
    ModelFileError when the file's pickles name anything not on the list of what a pickled model needs
    (:func:`_never_unpickled`), or a callable whose name is computed at load time. The pickles are only read
    (:func:`_pickle_names`), never run. ``defer``: the load that follows judges with :class:`_CheckedUnpickler`
    what only importing a user's module tells (see :func:`_users_own_name`)."""
    found: list[str | None] = []
    streams: list[bytes | None]
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        # torch.load tells its formats apart by the first bytes, not by a zip directory anywhere in the file:
        # a legacy pickle with a zip appended is read as the pickle, and screened as one here.
        pt2 = path.suffix.lower() == ".pt2"
        streams = [data] if data[:4] != b"PK\x03\x04" and not pt2 else _pickled_streams(data, str(path), pt2)
    except (OSError, zipfile.BadZipFile, NotImplementedError, EOFError, ValueError):
        streams = [None]  # a zip this reader cannot open: whatever torch would read in it is not screened
    for stream in streams:
        found += [None] if stream is None else _stream_names(stream)
    bad = list(
        dict.fromkeys(
            n.replace(":", ".", 1) if n else "a callable whose name it computes while loading"
            for n in found
            if _never_unpickled(n, defer)
        )
    )
    if bad:
        raise _refused_names(path, bad)


def _refused_names(path: Path, bad: list[str]) -> ModelFileError:
    """The error of a trusted load refusing a file whose pickles name ``bad`` (``module.attr``)."""
    return ModelFileError(
        f"{path}: its pickle names {', '.join(shorten(b, 80) for b in bad[:3])}"
        f"{' and more' if len(bad) > 3 else ''}, which {'are' if len(bad) > 1 else 'is'} not on the list of what "
        "a pickled model needs (it could run code, start processes, touch files or unpickle more); sparsekit "
        "does not unpickle it even when trusted. If the file is yours, load it in Python and save its state_dict "
        "or a sparsekit checkpoint (sparsekit.save_model)"
    )


class _RefusedOnImport(Exception):
    """Raised inside torch.load by :class:`_CheckedUnpickler`: the name (``module.attr``) it refused."""


class _CheckedUnpickler(pickle.Unpickler):
    """The unpickler of a trusted load: a name of the user's own modules is judged again once its module is imported
    (by the rules for an imported module), before the pickle can call what it holds. The screen read the source, where
    what a decorator returns or a call computes is unknown (a registry's ``@register`` returns the class, but another
    decorator could return subprocess.getoutput)."""

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        # (found as a protocol 0-2 pickle's Python 2 names are: __builtin__ is builtins, never the user's module)
        module, _, name = _py3_name(f"{module}:{name}", 2).partition(":")
        if _own_module(module) and _never_unpickled(f"{module}:{name}"):
            raise _RefusedOnImport(f"{module}.{name}")
        return found


def _checked_load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`_CheckedUnpickler`: torch's legacy format reads its first pickles (magic
    number, protocol, system info) with the pickle module's ``load``, and a payload there ran unchecked."""
    return _CheckedUnpickler(file, **kwargs).load()


# What torch.load(pickle_module=...) uses of a pickle module: its Unpickler (both formats) and load (the legacy one)
_CHECKED_PICKLE = types.SimpleNamespace(Unpickler=_CheckedUnpickler, load=_checked_load, __name__="pickle")


def _check_unpacked_size(path: Path) -> None:
    """Refuse a zip archive (torch's and torch.export's format) whose members hold more bytes once
    unpacked than this machine has memory free: torch reads every member whole into memory, and
    reads compressed ones too, so a few MB of deflated zeros can declare tens of GiB (torch never
    compresses what it writes). Reads only the archive's directory. Raises ModelFileError."""
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(info.file_size for info in z.infolist())
    # (NotImplementedError: zipfile's word for a version or compression field it does not know, as damage gives)
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError):
        return  # not a zip archive (or unreadable): the readers below say what it is
    free = available_memory()
    if free is not None and unpacked > free:
        raise ModelFileError(
            f"{path}: its archive members hold {unpacked / 2**30:,.1f} GiB once unpacked (the file is "
            f"{path.stat().st_size / 2**30:,.1f} GiB), more than this machine's {free / 2**30:,.1f} GiB of free "
            "memory; the file is damaged or built to exhaust memory, or the model is too large for this machine"
        )


def _archive_members(path: Path) -> list[str]:
    """The member names of ``path`` when it is a zip archive (torch's checkpoint format), [] otherwise.
    Raises ModelFileError when a member fails its CRC-32: torch.load does not check them, so a damaged
    file would load with wrong weights."""
    try:
        with zipfile.ZipFile(path) as z:
            names, bad = z.namelist(), z.testzip()
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError):
        return []  # not a zip archive (or unreadable): the reader below says what it is
    except Exception as err:  # noqa: BLE001 - a damaged archive can fail inside zlib too
        names, bad = [], one_line(err, 80)
    if bad is not None:
        raise ModelFileError(
            f"{path}: damaged: its member {bad} does not match its checksum (the file changed after it was "
            "written, e.g. an interrupted copy or a bad disk); copy or save it again"
        )
    return names


def _unpickle_trusted(path: Path) -> Any:
    """Unpickle a file the user vouched for (the trust flag). Its classes are imported by the names the
    file holds: the current folder is searched too (last), as for a script run there, and a class whose
    module cannot be found is bad input naming that module."""
    _screen_trusted(path, defer=True)
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_CHECKED_PICKLE)
    except _RefusedOnImport as err:
        raise _refused_names(path, [str(err)]) from None
    except (ImportError, AttributeError) as err:
        missing = getattr(err, "name", None) or one_line(err, 120)
        raise ModelFileError(
            f"{path}: the pickled model needs the code of {missing!r}, which cannot be imported from here; run from "
            "the folder that holds its module or add that folder to PYTHONPATH (better: save a state_dict or a "
            "sparsekit checkpoint, which need no pickled code)"
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises many types
        raise ModelFileError(f"{path}: cannot be unpickled ({one_line(err, 160)}); the file is damaged") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _truncated_zip(path: Path) -> bool:
    """Whether ``path`` starts as a zip archive (torch's format) but has no readable end (central directory)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        return head == b"PK\x03\x04" and not is_zip_archive(path)
    except OSError:
        return False


def _numpy_archive(path: Path) -> bool:
    """Whether ``path`` is a zip archive of ``.npy`` arrays only (``numpy.savez``), not torch's format."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    # (NotImplementedError: zipfile's word for a version field it does not know, as damage gives; EOFError a cut one)
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError, EOFError):
        return False
    return bool(names) and all(n.endswith(".npy") and "/" not in n for n in names)


def _safetensors(path: Path) -> bool:
    """Whether ``path`` is a safetensors file: named so (in any case, ``MODEL.SAFETENSORS``), or laid out as one
    under another name (``model.bin``): a little-endian u64 header length, then a JSON header inside the file."""
    if path.suffix.lower() == ".safetensors":
        return True
    found = _head(path)
    return found is not None and _safetensors_layout(*found)


def _head(path: Path) -> tuple[bytes, int] | None:
    """``path``'s first 9 bytes and its size, or None when it cannot be read (the full read reports that)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        return head, path.stat().st_size
    except OSError:
        return None


def _safetensors_layout(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes whose first 9 bytes are ``head`` is laid out as safetensors: a
    little-endian u64 header length that fits the file, then the JSON header's opening brace."""
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def _named_safetensors(path: Path) -> str:
    """What a file named ``.safetensors`` that is not one holds, when that is telling (its reader's "header too
    large" is not: it read the first 8 bytes of another format as a length), else ""."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return ""
    # torch.save's zip archive, or its legacy format (a pickle whose first object is a LONG1 magic number)
    if head in (b"PK\x03\x04", b"\x80\x02\x8a\x0a"):
        return "; it is a torch.save file, named .safetensors: rename it to .pt"
    text = text_start(path)
    return f"; {text}" if text and head else ""


def _refuse_text(path: Path) -> None:
    """ModelFileError when ``path`` holds text (a script, a config, an LFS pointer), not a torch file."""
    text = text_start(path)
    if text is not None:
        raise ModelFileError(
            f"{path}: not a readable PyTorch checkpoint ({text}); expected a sparsekit checkpoint, "
            "a state_dict .pt or a .safetensors file"
        )


def precheck_model_file(path: Path) -> None:
    """The checks of the model file that need no reading beyond its first bytes: it exists, is a file, is not an
    ONNX file nor text. ``run_prune`` makes them before the output folder's, so one run names the first problem
    in the order a user fixes them (the model file, then where the results go), not the folder first."""
    check_model_path(path)
    refuse_onnx(path)
    if path.suffix.lower() not in (".safetensors", ".pt2"):  # those have their own readers and messages
        _refuse_text(path)
    if _not_loadable(path):
        # Bytes no reader takes fail at once, so the full read costs nothing here and words the error as
        # read_model does; a loadable file is not read twice.
        _read(path, trust=False)


def _not_loadable(path: Path) -> bool:
    """Whether ``path``'s first bytes (and zip directory) already show no reader takes it: a file named
    .safetensors without that layout, a zip archive cut short or of numpy arrays (.npz), or bytes that are neither
    a zip archive nor a binary pickle (the weights-only loader reads pickle protocol 2 and up, which start 0x80).
    Anything else, including a torch archive whose members are damaged, is left to the full read."""
    found = _head(path) if path.suffix.lower() != ".pt2" else None
    if found is None:
        return False
    head, size = found
    laid_out = _safetensors_layout(head, size)
    if path.suffix.lower() == ".safetensors" or laid_out:
        return not laid_out
    if head[:4] == b"PK\x03\x04":
        return _truncated_zip(path) or _numpy_archive(path)
    return head[:1] != b"\x80"


def refuse_onnx(path: Path) -> None:
    """ModelFileError when ``path`` is named as an ONNX file, where a PyTorch model is expected."""
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(
            f"{path}: is an ONNX file; prune/export/validate take the PyTorch model (.pt or .safetensors). "
            "`sparsekit bench` and `sparsekit inspect` read ONNX files, and sparsekit.onnx.quantize_int8(FILE, OUT, "
            "calibration) makes an int8 model of one"
        )


def check_model_path(path: Path) -> None:
    """ModelFileError unless ``path`` is an existing regular file (the first thing :func:`read_model` checks;
    ``run_prune`` checks it before the output folder, so a mistyped name is the first error, not the second)."""
    if not path.exists():
        # A link to nothing is no missing name: "model file not found" pointed at the link, which is there.
        raise ModelFileError(dangling_link(path) or f"{path}: model file not found{near_file(path)}")
    if path.is_dir():
        if (path / "model.pt").is_file():
            # A run's output folder (`prune -o out`, then `inspect out`): naming the file in it is the remedy, where
            # "expected a model file" left the user to guess which of the run's files that is.
            raise ModelFileError(
                f"{path}: is a folder; the model a prune run wrote there is {path / 'model.pt'}: give that file"
            )
        raise ModelFileError(
            f"{path}: is a directory, expected a model file (.pt or .safetensors; `sparsekit inspect` and "
            "`sparsekit bench` also read .onnx)"
        )
    if not path.is_file():  # a device (/dev/zero reads forever), a pipe (blocks until written), a socket
        raise ModelFileError(f"{path}: is not a regular file (a device, pipe or socket); give the model file itself")
    try:
        # Opened once here: a file without read permission passed every check made from its first bytes (each
        # gives up on an OSError), so the output folder was named first and the file only later, in torch's words.
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ModelFileError(
            f"{path}: cannot read the model file ({err.strerror or err}); give yourself read permission "
            "(chmod u+r) or copy it somewhere you can read"
        ) from None


class _Unread:
    """Stands in for an object beside the weights of a training checkpoint (``{"state_dict": ..., "args":
    argparse.Namespace(...)}``, as timm's and many training scripts save): built from nothing, so none of the named
    code is imported or run. ``name`` is the global the file named."""

    name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Unread:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _weights_beside_objects(path: Path) -> dict | None:
    """A training checkpoint (a dict with its weights under one of :data:`_STATE_DICT_KEYS`) whose other entries
    name classes the weights-only loader refuses: the dict, those objects replaced by :class:`_Unread`, so that
    its other entries are ignored as documented rather than refusing the file. None when the refused names are
    needed by the weights themselves (a pickled nn.Module), or the file is no such checkpoint."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - a file's data: whatever it is, the caller's refusal stands
        return None
    if not names or len(names) > 64:
        return None
    stubs = [(type("_Unread", (_Unread,), {"name": n}), n) for n in names]
    try:
        with torch.serialization.safe_globals(stubs):  # type: ignore[arg-type]
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - e.g. a blocked module (os, sys): refused as before
        return None
    if not isinstance(obj, dict) or obj.get("format") == FORMAT:
        return None
    for key in _STATE_DICT_KEYS:
        state = obj.get(key)
        if isinstance(state, dict) and state:
            ok = all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
            return obj if ok else None
    return None


def _unread_names(obj: Any, depth: int = 0) -> list[str]:
    """The globals :func:`_weights_beside_objects` left unread in ``obj`` (its containers, a few levels deep)."""
    if isinstance(obj, _Unread):
        return [obj.name]
    if depth > 4 or not isinstance(obj, (dict, list, tuple)):
        return []
    values = obj.values() if isinstance(obj, dict) else obj
    return list(dict.fromkeys(n for v in values for n in _unread_names(v, depth + 1)))


def _read(path: Path, trust: bool) -> tuple[Any, str]:
    """Return (object, kind) from a file, refusing anything that would execute code."""
    check_model_path(path)
    refuse_onnx(path)
    _check_unpacked_size(path)  # before anything unpacks a member: its zip directory declares the sizes
    if _safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelFileError(f"{path}: not a valid safetensors file ({err}){_named_safetensors(path)}") from None
    if path.suffix.lower() == ".pt2":
        if not trust:
            raise _refuse(path, "a torch.export archive (.pt2)")
        _screen_trusted(path)  # its pickled members (sample inputs, pickled weights and constants) first
        module = torch.export.load(str(path)).module()
        # torch.export's module refuses train() and eval() (NotImplementedError), which every command calls: its
        # graph has the mode it was exported in baked in, so nn.Module's own, which only set the flags, do no harm.
        for name in ("train", "eval"):
            vars(module).pop(name, None)
        return module, "trusted-module"
    members = _archive_members(path)
    if any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in members):  # TorchScript
        if not trust:
            raise _refuse(path, "a TorchScript archive")
        return torch.jit.load(str(path), map_location="cpu"), "trusted-module"
    _refuse_text(path)  # before unpickling: text can read as pickle opcodes ("c..." names a class to import)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        # A pickled object is refused by the weights-only unpickler for a class or function it names ("Unsupported
        # global: GLOBAL mymod.Net", or since torch 2.13 for some modules "Trying to load unsupported GLOBAL
        # posix.system whose module posix is blocked"); other refusals ("Unsupported operand", "invalid load key")
        # mean the bytes are no valid pickle at all: garbage, or another format.
        named = re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", text, re.IGNORECASE)
        plain = _plain_pickle(path)
        # torch.save(obj, path, pickle_protocol=4 or 5): the weights-only loader knows no FRAME (149) or
        # protocol 5 buffer opcodes (150-152). A pickle all the same, not garbage.
        framed = re.search(r"Unsupported operand (149|150|151|152)\b", text) is not None
        if framed and not plain:
            if not trust:
                raise ModelFileError(
                    f"{path}: saved with pickle protocol 4 or 5 (torch.save(..., pickle_protocol=4)), which torch's "
                    "safe weights-only loader cannot read: re-save it with torch.save's default protocol, or pass "
                    f"{option('trust_model_file')} if you trust where this file came from"
                ) from None
            obj = _unpickle_trusted(path)  # screened first; a state_dict or checkpoint is then what it is
            return (obj, "trusted-module") if isinstance(obj, nn.Module) else _kind_of(obj, path)
        if named is None or plain:
            # torch.load reads no plain pickle, trusted or not: unpickling one would only run what it names.
            why = plain or _NOT_A_CHECKPOINT
            raise ModelFileError(
                f"{path}: not a readable PyTorch checkpoint ({why}); expected a sparsekit checkpoint, a state_dict "
                ".pt (torch.save(model.state_dict(), path)) or a .safetensors file"
            ) from None
        if _cut_short_pickle(path):
            # torch reports the last name it read before the end ("GLOBAL collections.Orde"): no object to trust
            raise ModelFileError(
                f"{path}: not a readable PyTorch checkpoint (its pickle ends before it is complete: the file is "
                "truncated or damaged, e.g. an incomplete copy or download)"
            ) from None
        # A training checkpoint's weights beside objects of its run (the arguments as an argparse.Namespace, a
        # config class): its other entries are ignored, so those objects are left unbuilt, trusted or not.
        beside = _weights_beside_objects(path)
        if beside is not None:
            return beside, "state_dict"
        if not trust:
            raise _refuse(
                path,
                f"a pickled Python object that names {named.group(1)} (e.g. a whole nn.Module saved with "
                "torch.save(model))",
                _arch_of_pickled(named.group(1)),
            ) from None
        # The one unpickling load: reached only with trust=True (the CLI's trust flag), which the user passes
        # for a file they vouch for, after the weights-only load has refused it. Never a silent retry.
        return _unpickle_trusted(path), "trusted-module"
    except Exception as err:  # noqa: BLE001 - torch raises many unrelated types on garbage input
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # The unpickler's bare "101" (a KeyError for an unknown opcode) says nothing: say what the bytes are.
        why = first if len(first) > 12 and not first.isdigit() else _NOT_A_CHECKPOINT
        if _truncated_zip(path):  # torch says "[Errno 22] Invalid argument" or "failed finding central directory"
            why = "a torch archive cut short: the file is truncated or damaged, e.g. an incomplete copy or download"
        why = _plain_pickle(path) or why  # torch says "Invalid magic number; corrupt file?"
        if _numpy_archive(path):  # torch says "file in archive is not in a subdirectory: x.npy"
            why = "a numpy .npz archive: data, not a model"

        raise ModelFileError(
            f"{path}: not a readable PyTorch checkpoint ({why}); expected a sparsekit checkpoint, "
            "a state_dict .pt or a .safetensors file"
        ) from None
    return _kind_of(obj, path)


def _kind_of(obj: Any, path: Path) -> tuple[Any, str]:
    """``(obj, "checkpoint" | "state_dict")`` for a loaded dict; ModelFileError for another sparsekit format."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj, "checkpoint"
    fmt = obj.get("format") if isinstance(obj, dict) else None
    # Any other sparsekit format, or a dict shaped like a checkpoint under another format: not a state_dict.
    shaped = isinstance(obj, dict) and {"state_dict", "factory"} <= obj.keys()
    if isinstance(fmt, str) and (fmt.lower().startswith("sparsekit") or shaped):
        from . import __version__

        raise ModelFileError(
            f"{path}: a sparsekit checkpoint of format {fmt[:40]!r}, which sparsekit {__version__} does not read "
            f"(it reads {FORMAT!r}); upgrade sparsekit, or re-save the model with this version"
        )
    return obj, "state_dict"


# The most values one input sample may have (a 16k x 16k RGB image): a file asking for more is damaged
# or hostile, and allocating it for a test forward pass would exhaust memory.
MAX_INPUT_VALUES = 2**28


def _checked_shape(shape: Any, path: Path) -> list[int] | None:
    """A checkpoint's ``input_shape``: None, or a list of positive ints of sane total size."""
    if shape is None:
        return None
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ModelFileError(f"{path}: its 'input_shape' {shape!r} is not a list of positive integers; damaged")
    values = 1
    for d in shape:  # the batch dim too: a rebuild traces a tensor of exactly this shape
        values *= d
    if values > MAX_INPUT_VALUES:
        raise ModelFileError(f"{path}: its 'input_shape' {shape} asks for {values:,} input values; damaged")
    return shape


# The keys of a training checkpoint (a dict with 'epoch', 'optimizer', ...) that the model's state_dict is read from.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    outer = obj
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    what, where = f"a {type(obj).__name__}", ""
    if isinstance(obj, dict) and not obj:  # (an empty safetensors file, say): "a dict, not a mapping" said nothing
        what = "no weights at all (an empty dict)"
    if obj is outer and isinstance(obj, dict) and obj:
        what = f"a dict of {', '.join(_short(k, 40) for k in list(obj)[:8])}{', …' if len(obj) > 8 else ''}"
        where = (
            f"; a training checkpoint's weights are read from its {', '.join(map(repr, _STATE_DICT_KEYS[:-1]))} or "
            f"{_STATE_DICT_KEYS[-1]!r} entry: save the model's state_dict under one of those keys, or alone"
        )
    raise ModelFileError(f"{path}: holds {what}, not a state_dict (a mapping of parameter names to tensors){where}")


def build_model(
    factory: str,
    kwargs: dict[str, Any] | None = None,
    where: str = "model.factory",
    *,
    named_in: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
    probe: bool = False,
    caller_field: str = "arch",
    kwargs_from: str | None = None,
) -> nn.Module:
    """Call the architecture ``factory`` (``pkg.module:callable``) with ``kwargs`` and check it
    returns an ``nn.Module`` (on the CPU, in the mode the factory leaves it). With ``probe`` (kwargs
    read from a file), the model is first built on the meta device to refuse one that needs more
    than 80% of the memory available, before any memory is allocated.

    ``named_in`` is the file that named the factory (a checkpoint or recipe) and ``where`` its field
    there (``factory``, ``model.factory``); ``None`` means the caller named it directly, by
    ``caller_field`` (the ``arch`` option, or an override of ``model.factory``), and messages say so.
    ``kwargs_from``: where ``kwargs`` were read when that is not where the factory was named (``"r.yaml:
    model.kwargs"`` beside the arch option), for messages. See :mod:`sparsekit.trust` for what runs.
    Raises :class:`~sparsekit.errors.TrustError` when a file-named factory is not confirmed or is
    never run, :class:`ModelFileError` when it cannot be imported, fails, would not fit in memory or
    returns something else.
    """
    field = where if named_in is not None else caller_field  # the caller's own: arch='m:f' / the CLI's flag
    fn = load_callable(factory, kind="model", named_in=named_in, field=field, trust_code=trust_code,
                       error=ModelFileError)  # fmt: skip
    if named_in is not None:
        label = f"{named_in}: {where} {factory}"
    else:
        label = option(field, factory) if field == "arch" else f"{field} {factory}"
    given = _short(kwargs or {})
    label = f"{label} with kwargs {given}" if kwargs_from is None else f"{kwargs_from} {given} for {label}"
    _check_arguments(fn, kwargs or {}, label)
    if probe:
        _check_size_on_meta(fn, kwargs or {}, label)
    model = call_user_code(fn, label, ModelFileError, kwargs or {})
    if not isinstance(model, nn.Module):
        # The two slips of a hand-written factory: returning the class instead of building it, and no return at all.
        hint = (
            f": it returned the class {model.__name__} itself; return an instance, {model.__name__}(...)"
            if isinstance(model, type)
            else ": it returned nothing; end it with `return model`"
            if model is None
            else ""
        )
        raise ModelFileError(f"{label}: returned a {type(model).__name__}, not an nn.Module{hint}")
    # A factory returning torch.compile(model) or nn.DataParallel(model): the wrapper's names (_orig_mod.fc1,
    # module.fc1) are in no state_dict of the model, nor in what sparsekit writes, and the model's own weights were
    # refused as "missing keys ['_orig_mod.fc1.weight', ...]"; the commands prune and save the model inside, as the
    # Pruner does.
    return unwrap(model)


def _check_arguments(fn: Any, kwargs: dict[str, Any], label: str) -> None:
    """Raise :class:`ModelFileError` when the factory's signature does not take ``kwargs`` (a required argument left
    out, a name it does not have), naming what it takes and where its arguments go. Calling it anyway said only
    "calling it raised TypeError: Net.__init__() missing 1 required positional argument: 'hidden'", leaving the user
    to find the option that passes it. A TypeError raised inside the factory is the factory's own, and left to the
    call."""
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a callable whose signature cannot be read: the call itself will say
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = [p for p in signature.parameters.values() if p.kind in named]
        takes = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params)
        if not params:
            raise ModelFileError(
                f"{label}: {exc}; it takes no arguments: leave out {option('kwargs')} (in a recipe, model.kwargs)"
            ) from None
        required = [p.name for p in params if p.default is p.empty] or [params[0].name]
        example = "{" + ", ".join(f'"{name}": ...' for name in required) + "}"
        raise ModelFileError(
            f"{label}: {exc}; it takes ({takes}): give its arguments by name as {option('kwargs', example)} (in a "
            "recipe, model.kwargs)"
        ) from None


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - RecursionError for absurdly nested data, a hostile __repr__
        text = f"<{type(value).__name__}>"
    return shorten(text, limit)


def _check_size_on_meta(fn: Any, kwargs: dict[str, Any], label: str) -> None:
    """Refuse kwargs (read from a file) that build a model too large for this machine's memory."""
    try:
        with torch.device("meta"):
            probe = fn(**kwargs)
    except BaseException as err:  # noqa: BLE001 - cannot build on meta: the real build reports its own errors
        if isinstance(err, KeyboardInterrupt):
            raise
        return
    if not isinstance(probe, nn.Module):
        return
    # (a lazy module's uninitialized parameter has no size yet, and raises on numel(): it is left out)
    tensors = [*probe.parameters(), *probe.buffers()]
    uninitialized = (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)
    n_bytes = sum(t.numel() * t.element_size() for t in tensors if not isinstance(t, uninitialized))
    available = available_memory()
    if available is not None and n_bytes > 0.8 * available:
        raise ModelFileError(
            f"{label}: builds a model of {n_bytes / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of "
            "memory available; check the kwargs"
        )


# What a key prefix that every key of a state_dict carries usually means.
_PREFIX_ORIGINS = {
    "module.": "saved inside DataParallel or DistributedDataParallel",
    "_orig_mod.": "saved after torch.compile",
}


def _wrapper_prefix(keys: list[str], own: list[str]) -> tuple[str, str] | None:
    """``(prefix, where it likely came from)`` when ``keys`` are exactly ``own`` with one prefix ending in a dot
    before each (a wrapper's or a training module's attribute name), else None."""
    if not keys or len(keys) != len(own):
        return None
    ends = [k for k in own if keys[0].endswith("." + k)]
    prefix = keys[0][: len(keys[0]) - len(max(ends, key=len))] if ends else ""
    if not prefix or {prefix + k for k in own} != set(keys):
        return None
    return prefix, _PREFIX_ORIGINS.get(prefix, f"saved from a module holding the model as {prefix[:-1]!r}")


def _inner_prefixes(keys: list[str], own: list[str]) -> list[str]:
    """The prefixes (ending in a dot) behind which ``keys`` hold every one of ``own``, beside other keys: the file
    is a larger module's state_dict (a Lightning module holding the model and a loss with a weight, an EMA copy)."""
    if not own:
        return []
    # A file's keys need not be names ({1: tensor}): those hold no prefix (k.endswith raised AttributeError: exit 1).
    keys = [k for k in keys if isinstance(k, str)]
    keyset = set(keys)
    found = {k[: len(k) - len(own[0])] for k in keys if k.endswith("." + own[0])}
    # Only where the prefix holds nothing else: a key of its own beyond the architecture's is an architecture that
    # differs (a layer added since), for which the usual hint stands.
    return sorted(
        p for p in found if all(p + k in keyset for k in own) and sum(k.startswith(p) for k in keys) == len(own)
    )


def _computed_in_file(missing: list[str], unexpected: list[Any]) -> list[str]:
    """The missing keys that the file holds as a parametrization's parts (``fc1.parametrizations.weight.original0``)
    or the older hooks' (``fc1.weight_g`` and ``fc1.weight_v``; ``fc1.weight_orig`` of spectral_norm)."""
    extra = {k for k in unexpected if isinstance(k, str)}
    found = []
    for key in missing:
        owner, _, name = key.rpartition(".")
        prefix = f"{owner}." if owner else ""
        parts = f"{prefix}parametrizations.{name}."
        if (
            any(k.startswith(parts + "original") for k in extra)
            or {key + "_g", key + "_v"} <= extra
            or (key + "_orig" in extra and key + "_mask" not in extra)
        ):
            found.append(key)
    return found


def _fold_torch_prune(state: dict[str, Any], own: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``state`` with each tensor the model has but the file holds as torch.nn.utils.prune's ``NAME_orig`` and
    ``NAME_mask`` (the model has neither) replaced by their product; and the names so read."""
    folded = [
        k
        for k in own
        if k not in state
        and k + "_orig" not in own
        and isinstance(state.get(k + "_orig"), torch.Tensor)
        and isinstance(state.get(k + "_mask"), torch.Tensor)
        and state[k + "_orig"].shape == state[k + "_mask"].shape
    ]
    if not folded:
        return state, []
    state = dict(state)
    for k in folded:
        orig, mask = state.pop(k + "_orig"), state.pop(k + "_mask")
        state[k] = orig * mask.to(orig.dtype)
    return state, folded


def _bake_torch_prune(model: nn.Module, path: Path) -> list[str]:
    """Make permanent the torch.nn.utils.prune masks of a whole model saved while they were on (before
    ``prune.remove``), as :func:`_fold_torch_prune` reads a state_dict saved so; the note to show, else [].

    Such a layer's weight is computed in the forward pass (``weight_orig * weight_mask``), so every command
    left it out: inspect listed its layers as one unnamed row at sparsity 0.000, and prune refused the recipe
    as selecting no layer while naming only the layers the mask hooks did not cover."""
    prune = sys.modules.get("torch.nn.utils.prune")  # a file holding such hooks imported it when unpickled
    if prune is None:
        return []
    baked = []
    for name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                tensor = hook._tensor_name
                prune.remove(module, tensor)
                baked.append(f"{name}.{tensor}" if name else tensor)
    if not baked:
        return []
    return [
        f"{path}: {shorten(', '.join(baked), 120)} held torch.nn.utils.prune's masks (saved before "
        "torch.nn.utils.prune.remove); read as weight_orig * weight_mask, as prune.remove would have stored it"
    ]


def load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, factory: str, kwargs: dict[str, Any] | None = None
) -> list[str]:
    """Copy ``state`` (parameter name -> tensor, read from ``path``) into ``model`` strictly: every key
    present, none extra, every shape equal, dense tensors of the model's kind (floating or integer).
    ``factory`` names the architecture in messages. Raises :class:`ModelFileError` naming the missing,
    unexpected and mis-shaped keys (a few of each).

    Keys that are exactly the model's with one prefix before each (``module.`` from DataParallel/DDP,
    ``_orig_mod.`` from torch.compile, ``model.`` from a training module such as Lightning's) are read without
    it: the mapping is still one to one. Returns the notes to show (that prefix), else []."""
    own = model.state_dict()
    notes: list[str] = []
    prefixed = _wrapper_prefix(list(state), list(own))
    if prefixed is not None:
        # The same weights under a wrapper's attribute name: refusing them only made the user strip it by hand.
        prefix, origin = prefixed
        state = {k[len(prefix) :]: v for k, v in state.items()}
        notes.append(f"{path}: every weight's name starts with {prefix!r} ({origin}); read without that prefix")
    state, folded = _fold_torch_prune(state, own)
    if folded:
        # A state_dict saved while torch.nn.utils.prune's hooks were on (before prune.remove) holds each pruned
        # tensor as NAME_orig and NAME_mask, which the architecture does not have: "missing keys ['fc1.weight']"
        # left the user to work out the product that prune.remove would have stored.
        notes.append(
            f"{path}: {shorten(', '.join(folded), 120)} stored as torch.nn.utils.prune's NAME_orig and NAME_mask "
            "(saved before torch.nn.utils.prune.remove); read as their product, as prune.remove would have stored it"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    odd = [
        f"{k} ({v.layout}, {v.dtype}{', nested' if v.is_nested else ''})"
        if isinstance(v, torch.Tensor)
        else f"{k} (a {type(v).__name__})"
        for k, v in state.items()
        if k in own
        and (
            not isinstance(v, torch.Tensor)
            or v.is_nested  # a nested tensor has no shape to compare: asking raises
            or v.layout != torch.strided
            or v.is_floating_point() != own[k].is_floating_point()
        )
    ]
    # A dense tensor of the other kind is almost always a cast applied to every tensor of a state_dict ({k:
    # v.half()}), which turns integer buffers (BatchNorm's num_batches_tracked) into floats: say that, not "dense".
    kinds = [
        (k, v)
        for k, v in state.items()
        if k in own
        and isinstance(v, torch.Tensor)
        and not v.is_nested
        and v.layout == torch.strided
        and v.is_floating_point() != own[k].is_floating_point()
    ]
    if odd and len(kinds) == len(odd) and all(v.is_floating_point() for _, v in kinds):
        raise ModelFileError(
            f"{path}: tensors {[f'{k} ({v.dtype}; the model has {own[k].dtype})' for k, v in kinds[:4]]} are "
            "floating where the model's are integers: a cast applied to every tensor of the state_dict also "
            "converts integer buffers (BatchNorm's num_batches_tracked); cast the floating tensors only, or save "
            "model.state_dict() as it is"
        )
    if odd:
        raise ModelFileError(
            f"{path}: tensors {odd[:4]} are not plain dense tensors of the model's kind; save the weights "
            "with model.state_dict() (dense tensors)"
        )
    # A lazy module's uninitialized parameter (LazyLinear) has no shape to compare (asking raises): load_state_dict
    # gives it the file's, as after its first forward pass.
    uninitialized = (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)
    lazy = {k for k, v in own.items() if isinstance(v, uninitialized)}
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and k not in lazy and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' …' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{' …' if len(unexpected) > 6 else ''}")
        if shapes:
            parts.append(f"shape mismatch (file vs model) {shapes[:4]}")
        # Only smaller weights with the same names: channels were removed, but the file has no history.
        narrowed = (
            not missing
            and not unexpected
            and all(
                state[k].dim() == own[k].dim()
                and all(a <= b for a, b in zip(state[k].shape, own[k].shape, strict=True))
                for k in own
                if k in state and k not in lazy
            )
        )
        built = f"with kwargs {_short(kwargs)}" if kwargs else "with no kwargs"
        inner = _inner_prefixes(list(state), list(own)) if missing else []
        if inner:
            # Every weight is there, one level down, beside other parts: "check the architecture" sent the user
            # looking in the wrong place. Which part to take (the model, its EMA copy, a teacher) is theirs to say.
            named = " and ".join(repr(p) for p in inner[:3])
            others = ", ".join(_short(k, 40) for k in state if not k.startswith(inner[-1]))
            raise ModelFileError(
                f"{path}: holds every weight of {factory} under {named}, beside {len(state) - len(own)} other "
                f"key(s) ({shorten(others, 120)}): a "
                "larger module's state_dict (e.g. a Lightning module holding the model and a loss, an EMA copy or "
                f"a teacher). Save the part you mean alone, e.g. torch.save(module.{inner[-1][:-1]}.state_dict(), "
                "'weights.pt'), and pass that file"
            )
        computed = _computed_in_file(missing, unexpected)
        if computed:
            # weight_norm / spectral_norm saved as they train: "check the architecture and its kwargs" sent the user
            # looking at the wrong thing; the file holds each weight as the parts its forward computes it from.
            raise ModelFileError(
                f"{path}: {shorten(', '.join(computed), 120)} of {factory} stored as the parts a weight_norm or "
                f"spectral_norm computes it from ({'; '.join(parts)}); save the state_dict after "
                "torch.nn.utils.parametrize.remove_parametrizations(layer, 'weight') (remove_weight_norm or "
                "remove_spectral_norm for torch.nn.utils.weight_norm / spectral_norm), or build the architecture "
                "with the same weight_norm or spectral_norm"
            )
        hooked = [
            k[: -len("_orig")]
            for k in missing
            if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in missing and k[: -len("_orig")] in unexpected
        ]
        if hooked:
            # The factory itself applies torch.nn.utils.prune (its layers hold NAME_orig and NAME_mask), the file the
            # plain weights: "check the architecture and its kwargs" gave no hint of the hooks.
            raise ModelFileError(
                f"{path}: {factory} builds {shorten(', '.join(hooked), 120)} under torch.nn.utils.prune's hooks "
                "(NAME_orig and NAME_mask), while the file holds the plain weights; build the model without "
                "torch.nn.utils.prune, or call torch.nn.utils.prune.remove(layer, 'weight') in the factory before "
                "returning it (sparsekit's own masks replace it)"
            )
        hint = (
            f"The file's layers are narrower than the architecture builds {built}: either it needs the kwargs the "
            f"weights were made with (give them: {option('kwargs')}, or model.kwargs in a recipe), or the model was "
            "structurally pruned and saved without its pruning history (save it with "
            "sparsekit.save_model(model, path, factory, pruner=pruner))"
            if shapes and narrowed
            else f"Check the architecture and its kwargs ({built[5:]}; give them: {option('kwargs')}, or "
            "model.kwargs in a recipe)"
        )
        raise ModelFileError(f"{path}: weights do not match the architecture {factory}: {'; '.join(parts)}. {hint}")
    try:
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - e.g. a dtype torch cannot copy: the file does not fit
        raise ModelFileError(f"{path}: its weights cannot be loaded into {factory} ({one_line(err)})") from None
    return notes


def _wide_dtype(state: dict[str, Any], into: set[torch.dtype]) -> torch.dtype | None:
    """The one floating dtype of ``state``'s tensors when it is wider than every dtype of ``into`` (the model's
    floating dtypes): float64 weights of a float32 architecture. None when they mix dtypes or are no wider
    (float16 weights go into the float32 layers, as documented)."""
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) != 1 or not into:
        return None
    (dtype,) = dtypes
    return dtype if all(dtype.itemsize > d.itemsize for d in into) else None


def _precision_note(
    state: dict[str, Any], path: Path, into: dict[str, torch.Tensor] | None = None, for_api: bool = False
) -> list[str]:
    """Notes (in a list, empty when none is due) when ``state``'s floating tensors (read from ``path``) are of
    another width than those of the model they are loaded into (``into``; float32 when not given): narrower
    (float16, bfloat16): the run trains in the wider dtype, and the model file it writes is larger than the
    user's; wider (float64): the weights were rounded to the model's dtype, and everything the run measures and
    writes is of those rounded weights."""
    narrow: dict[str, None] = {}  # dtype names, in order of first appearance
    wide: dict[str, None] = {}
    rounded: dict[str, None] = {}  # wider dtypes of the file, rounded into the model's
    into_narrow: dict[str, None] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            continue
        own = into[k].dtype if into is not None and k in into else torch.float32
        if v.element_size() < own.itemsize:
            narrow[str(v.dtype).removeprefix("torch.")] = None
            wide[str(own).removeprefix("torch.")] = None
        elif v.element_size() > own.itemsize:
            rounded[str(v.dtype).removeprefix("torch.")] = None
            into_narrow[str(own).removeprefix("torch.")] = None
    notes = []
    if narrow:
        # Not converted back on save: the fine-tuned weights are the wider ones, and the ONNX file, parity and
        # benchmarks are of those; a narrower model.pt would no longer be the model they describe.
        to, back = next(iter(wide)), next(iter(narrow))
        # (sparsekit.load_model, ``for_api``, starts no run and writes no model.pt: what it returns is what changed)
        then = (
            f"the model returned is {to}"
            if for_api
            else f"a prune run trains in {to} and writes model.pt in {to} (larger than your file)"
        )
        notes.append(
            f"{path}: its weights are {' and '.join(narrow)}; they were loaded into the model's "
            f"{' and '.join(wide)} layers, so {then}. To ship {back} again, convert the loaded result: "
            f"model.to(torch.{back})"
        )
    if rounded:
        # The model's layers are the architecture's (float32 unless it builds others): copying wider weights into
        # them rounds every value, so the dense accuracy, parity and model.pt are of the rounded model. Said,
        # since nothing else shows it: the counts and shapes are the same.
        to, back = next(iter(into_narrow)), next(iter(rounded))
        notes.append(
            f"{path}: its weights are {' and '.join(rounded)}; they were rounded to the model's "
            f"{' and '.join(into_narrow)} layers, and every figure is of the rounded weights (one below {to}'s "
            f"range counts as a zero): a prune run evaluates, trains and writes model.pt in {to}. To go on in "
            f"{back}, convert the loaded result: model.to(torch.{back}) (the rounding stays)"
        )
    return notes


def load_model(
    path: str | Path,
    arch: str | None = None,
    *,
    kwargs: dict[str, Any] | None = None,
    trust: bool = False,
    trust_code: bool = False,
) -> nn.Module:
    """Load any accepted model file (see the module docstring) and return the model in eval mode, on
    the CPU, in float32 when it was a trusted whole module, except that float64 weights (a float64 model
    saved with :func:`save_model`) give a float64 model, as saved: float16/bfloat16 ones go into the
    architecture's float32 layers.

    ``arch`` names the architecture (``pkg.module:callable``) yourself, and ``kwargs`` the keyword
    arguments to build it with (they replace a checkpoint's own). Without ``arch``, a checkpoint's
    own ``factory`` is imported only with ``trust_code=True`` or when its module is trusted (see
    :mod:`sparsekit.trust`). ``trust=True`` allows unpickling a whole module (runs code). How the file was read,
    where it matters (a wrapper's key prefix dropped, torch.nn.utils.prune's ``NAME_orig``/``NAME_mask`` folded,
    weights rounded into the architecture's dtype), is a UserWarning, as the commands print it.
    Raises :class:`ModelFileError` for a missing, unreadable, unsafe or mismatched file,
    :class:`~sparsekit.errors.TrustError` for a factory that is not confirmed or is never run, and TypeError for a
    ``path`` that is not a path or ``kwargs`` that are not a dict of names (as ``run_prune`` and ``plan``).

    >>> model = sparsekit.load_model("sparsekit-out/model.pt", arch="examples.models:lenet_300_100")
    >>> model = sparsekit.load_model("sparsekit-out/model.pt", trust_code=True)   # the file's factory
    >>> model = sparsekit.load_model("weights.pt", arch="mypkg.nets:mlp", kwargs={"hidden": [32, 16]})
    """
    # Built outside inference mode even when called inside it (a serving or evaluation function under
    # torch.inference_mode()): a structurally pruned checkpoint is rebuilt by tracing the model, which inference
    # tensors cannot take part in; the model returned runs under inference mode all the same.
    require_path(path, "load_model(path=...)", "it is a model already: load_model reads a model file")
    require_kwargs(kwargs, "load_model")
    with torch.inference_mode(False):
        loaded = read_model(path, arch, kwargs=kwargs, trust=trust, trust_code=trust_code, keep_wide=True)
    # What the commands print as they read a file (a wrapper's prefix dropped, torch.nn.utils.prune's NAME_orig and
    # NAME_mask folded, weights rounded into another dtype): a Python caller was told none of it.
    for note in loaded.notes:
        warnings.warn(note, stacklevel=2)
    return loaded.model


def require_kwargs(kwargs: object, call: str) -> None:
    """TypeError naming ``call`` unless ``kwargs`` is None or a mapping of names: a list or a string was a
    ModelFileError quoting Python's "argument after ** must be a mapping, not list", as if the file were at fault
    (``run_prune`` and ``plan`` say this TypeError)."""
    if kwargs is None:
        return
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        got = (
            type(kwargs).__name__ if not isinstance(kwargs, Mapping) else f"a {type(kwargs).__name__} of non-text keys"
        )
        raise TypeError(
            f"{call}(kwargs=...): expected a dict of the model factory's keyword arguments by name "
            f"(e.g. {{'hidden': 128}}), got {got}"
        )


def compiled_module(obj: Any) -> bool:
    """Whether ``obj`` is a TorchScript or torch.export module: compiled code that keeps no Linear/Conv layer
    classes for a method to prune or for :func:`~sparsekit.stats.layer_macs` to count."""
    return isinstance(obj, torch.jit.ScriptModule | torch.fx.GraphModule)


def refuse_compiled(model: Any, path: str | os.PathLike[str], purpose: str) -> None:
    """Raise :class:`ModelFileError` when ``model`` is a compiled module (:func:`compiled_module`) with no Linear /
    Conv layer left to prune or count. Loaded with an architecture named, :func:`read_model` puts the file's weights
    into that instead, so the message says how. ``purpose``: what sparsekit would do with the layers ("prunes")."""
    from .layers import prunable_layers

    if compiled_module(model) and not prunable_layers(model):
        raise ModelFileError(
            f"{path}: a TorchScript or torch.export module, whose layers are compiled code rather than the Linear / "
            f"Conv modules sparsekit {purpose}; name its architecture ({option('arch', 'pkg.module:callable')}: the "
            "file's weights are loaded into it)"
        )


def fixed_batch_words(err: BaseException) -> str:
    """Why a compiled module (:func:`compiled_module`) that runs on a batch of 1 fails on a batch of 2, and what
    to do: the remedy of "give the shape it takes" asked for what the user had given, and no shape could pass."""
    return (
        f"the file's compiled graph runs on a batch of 1 but not of 2 ({one_line(err, 120)}): it was traced or "
        "exported for one batch size, and sparsekit exports, checks and benchmarks the model with a batch "
        "dimension; export it again with a dynamic batch (torch.export's dynamic_shapes), or name its architecture "
        f"({option('arch', 'pkg.module:callable')}: the file's weights are loaded into it)"
    )


def read_model(
    path: str | Path,
    arch: str | None = None,
    *,
    kwargs: dict[str, Any] | None = None,
    input_shape: list[int] | None = None,
    trust: bool = False,
    trust_code: bool = False,
    fallback_factory: str | None = None,
    fallback_kwargs: dict[str, Any] | None = None,
    fallback_named_in: str | os.PathLike[str] | None = None,
    fallback_confirmed: bool = False,
    probe: bool | None = None,
    kwargs_from: str | None = None,
    keep_wide: bool = False,
) -> LoadedModel:
    """Like :func:`load_model` but returns a :class:`LoadedModel`: the model with its factory, kwargs,
    input shape and pruning history. ``arch`` overrides a checkpoint's factory and ``kwargs`` its
    kwargs; ``input_shape`` (with the batch dimension, e.g. ``[1, 784]``) is used when the file has
    none. ``fallback_factory``/``fallback_kwargs`` (the recipe's ``model`` section, read from
    ``fallback_named_in``) apply only when neither ``arch`` nor the file names an architecture (the
    kwargs only with that factory); the returned ``notes`` say when a fallback factory was not used. A
    factory named by the file or the recipe runs only when confirmed (``trust_code`` or a trusted
    module); ``arch`` is the caller's own choice, and so is the fallback with ``fallback_confirmed``
    (the caller set it, e.g. by an override). ``kwargs_from``: where the given ``kwargs`` were read
    (``"r.yaml: model.kwargs"``), for messages. ``probe`` (default: when the kwargs come from a
    file) first builds the model on the meta device to refuse one too large for the memory. ``keep_wide``: weights
    of one floating dtype wider than the model's layers (float64) make the model that dtype, read exactly as
    saved (:func:`load_model`); without it they are rounded into the layers, with a note (a prune run, its export
    and parity work in float32).

    Raises :class:`ModelFileError` for an unreadable, unsafe or mismatched file and
    :class:`~sparsekit.errors.TrustError` for unconfirmed code."""
    path = Path(path)
    kwargs_given = kwargs
    obj, kind = _read(path, trust)
    if kind == "trusted-module":
        if not isinstance(obj, nn.Module):
            raise ModelFileError(f"{path}: holds a {type(obj).__name__}, not an nn.Module or a state_dict")
        if not (arch and compiled_module(obj)):
            check_finite(obj, path)
            baked = _bake_torch_prune(obj, path)
            if keep_wide and _wide_dtype(obj.state_dict(), {torch.float32}) is not None:
                return LoadedModel(obj.eval(), arch, kwargs or {}, input_shape, kind=kind, notes=baked)
            note = baked + _precision_note(obj.state_dict(), path)
            return LoadedModel(obj.float().eval(), arch, kwargs or {}, input_shape, kind=kind, notes=note)
        # TorchScript and torch.export keep no layer classes a method could prune: their weights go into the
        # architecture named, checked strictly as a state_dict's are.
        obj, kind = obj.state_dict(), "state_dict"
    history: list = []
    # Who named the architecture: the caller (arch), the file itself, or the recipe.
    named_in: str | os.PathLike[str] | None = None
    where = "model.factory"
    if kind == "checkpoint":
        own = obj.get("factory")
        if own is not None and not isinstance(own, str):
            raise ModelFileError(f"{path}: its 'factory' is a {type(own).__name__}, not 'pkg.module:callable'")
        factory = arch or own or fallback_factory
        if not arch and own:
            named_in, where = path, "factory"
        if kwargs is None:
            if own:
                kwargs, kwargs_from = obj.get("kwargs") or {}, None if named_in is not None else f"{path}: kwargs"
            else:
                kwargs = _fallback_kwargs(factory, fallback_factory, fallback_kwargs)
        input_shape = input_shape or _checked_shape(obj.get("input_shape"), path)
        history = obj.get("pruning_history") or []
        if not isinstance(history, list):
            raise ModelFileError(f"{path}: its 'pruning_history' is a {type(history).__name__}, not a list; damaged")
        if history:  # checked here, before anything else is asked of the file (an input shape to replay it)
            from .surgery import normalize_history

            try:
                normalize_history(history)
            except Exception as err:  # noqa: BLE001 - a file's data: anything may be in there
                raise ModelFileError(
                    f"{path}: its pruning_history is malformed ({one_line(err, 120)}); expected [[module_name, "
                    "is_out_channel, [indices]], ...] as sparsekit.save_model writes it: the file is damaged"
                ) from None
        state = obj.get("state_dict")
        if not isinstance(state, dict):
            raise ModelFileError(f"{path}: a sparsekit checkpoint without a state_dict; the file is damaged")
        if not isinstance(kwargs, dict):
            raise ModelFileError(
                f"{path}: its 'kwargs' is a {type(kwargs).__name__}, not a mapping; the file is damaged"
            )
        if not all(isinstance(k, str) for k in kwargs):
            raise ModelFileError(f"{path}: its 'kwargs' have keys that are not names (strings); damaged")
        try:
            json.dumps(kwargs, allow_nan=False)  # plain, finite, not absurdly nested: what save_model writes
        except (TypeError, ValueError, RecursionError) as err:
            raise ModelFileError(f"{path}: its 'kwargs' are not plain JSON data ({one_line(err, 120)})") from None
    else:
        factory = arch or fallback_factory
        state = _state_dict_of(obj, path)
        if kwargs is None:
            kwargs = _fallback_kwargs(factory, fallback_factory, fallback_kwargs)
    if kwargs_from is None and kwargs_given is None and kwargs and kwargs is fallback_kwargs:  # (caller's factory)
        kwargs_from = f"{fallback_named_in or 'the recipe'}: model.kwargs"
    notes = []
    unread = _unread_names(obj) if kind == "state_dict" else []
    if unread:
        notes.append(
            f"{path}: read its weights only; the other entries name {', '.join(shorten(n, 60) for n in unread[:3])}"
            f"{' and more' if len(unread) > 3 else ''}, which were not unpickled (not needed to build the model)"
        )
    # Not said when the caller's arch option named the factory and nothing of the recipe's is dropped with it: that
    # is the usual way to prune one's own model with a shipped recipe (which names its example model), and the
    # same line at the start and in the summary's notes of every such run taught nothing.
    said_by_caller = bool(arch) and not fallback_kwargs and not fallback_confirmed
    if fallback_factory and factory and factory != fallback_factory and not said_by_caller:
        # Not an error: a shipped recipe names its example model, and any model may be pruned with it.
        chosen = (
            f"{factory}, named by the caller, builds the model" if arch else f"{path} names its own factory {factory}"
        )
        dropped = " (nor its model.kwargs)" if fallback_kwargs else ""
        named = f"{fallback_named_in or 'the recipe'}: model.factory {fallback_factory}"
        if fallback_confirmed:  # set by an override: it is the recipe's fallback, which the checkpoint's own beats
            named = f"the override model.factory={fallback_factory} (the recipe's, which only the arch option beats)"
        notes.append(f"{named} was not used{dropped}: {chosen}")
    if factory and not arch and named_in is None and not fallback_confirmed:
        named_in, where = fallback_named_in or "the recipe", "model.factory"
    if not factory:
        in_recipe = f" or set model.factory in {fallback_named_in}" if fallback_named_in is not None else ""
        raise ModelFileError(
            # (the example is the user's own module: examples.models is the repository's, not in an installed wheel)
            f"{path}: is a plain state_dict with no architecture; name it ({option('arch')}: the function that "
            f"builds your model, e.g. mypkg.nets:build for build() in mypkg/nets.py){in_recipe}"
        )
    if probe is None:
        probe = kwargs_given is None  # the kwargs came from the checkpoint or the recipe, not the caller
    model = build_model(
        factory,
        kwargs,
        where,
        named_in=named_in,
        trust_code=trust_code,
        probe=probe,
        caller_field="override model.factory" if fallback_confirmed and not arch else "arch",
        kwargs_from=kwargs_from if named_in is None else None,
    )
    if history:
        if not input_shape:
            raise ModelFileError(f"{path}: a structurally pruned checkpoint needs its input_shape to rebuild")
        from .surgery import replay_history

        try:
            model = replay_history(model, history, input_shape)
        except ModelFileError as err:
            saved = obj.get("kwargs") if isinstance(obj, dict) else None
            hint = ""
            if kwargs_given is not None and isinstance(saved, dict) and saved != kwargs_given:
                # The likely cause: the history's channel counts are the saved architecture's, not this one's.
                hint = (
                    f"; it was saved with kwargs {_short(saved)}, not the {_short(kwargs_given)} given: give none "
                    "to rebuild it with its own"
                )
            raise ModelFileError(f"{path}: {quoted(err)}{hint}") from None
    floating = {v.dtype for v in model.state_dict().values() if v.is_floating_point()}
    wide = _wide_dtype(state, floating) if keep_wide else None
    if wide is not None:
        model = model.to(wide)  # read as saved: copying into the float32 layers would round every weight
    notes += load_weights(model, state, path, factory, kwargs)
    check_finite(model, path)
    notes += _precision_note(state, path, model.state_dict(), for_api=keep_wide)  # (keep_wide: load_model's read)
    shape = list(input_shape) if input_shape else None
    if history:
        # The model carries the removals it was rebuilt with, as a Pruner marks the models it prunes: a Pruner
        # over it, or save_model without one, writes them before any new ones (else a re-pruned or re-saved
        # checkpoint could not be rebuilt).
        object.__setattr__(model, STRUCTURE_ATTR, {"history": list(history), "input_shape": shape})
    output = _recorded_output(obj, path) if kind == "checkpoint" else None
    extra = obj.get("extra") if kind == "checkpoint" else None
    normalize = extra.get("normalize") if isinstance(extra, dict) else None
    return LoadedModel(
        model.eval(),
        factory,
        dict(kwargs),
        shape,
        history,
        kind,
        notes=notes,
        output=output,
        # anything else than a value the recipe allows is no record (a hand-edited file): the default then applies
        normalize=normalize if normalize in ("none", "standard") else None,
    )


def _recorded_output(checkpoint: dict, path: Path) -> int | str | None:
    """The checkpoint's ``extra["output"]`` (the recipe's ``model.output`` of the run that wrote it), checked as
    the recipe checks it. Raises :class:`ModelFileError` when it is not an index 0..1000 or a 1..200-character
    name."""
    from .recipe import is_output_part

    extra = checkpoint.get("extra")
    value = extra.get("output") if isinstance(extra, dict) else None
    if is_output_part(value):
        return value
    raise ModelFileError(
        f"{path}: its extra 'output' (the part of the model's output that is the logits) is "
        f"{shorten(repr(value), 40)}, not an index 0..1000 or a name; the file is damaged"
    )


def _fallback_kwargs(
    factory: str | None, fallback_factory: str | None, kwargs: dict[str, Any] | None
) -> dict[str, Any]:
    """The recipe's ``model.kwargs`` when they belong to ``factory`` (the recipe names it, or no factory at all)."""
    return (kwargs or {}) if fallback_factory in (None, factory) else {}


def non_finite_tensors(model: nn.Module) -> list[str]:
    """The names of ``model``'s parameters holding NaN or inf and of its buffers holding NaN (what
    :func:`check_finite` refuses)."""
    # Detached: under torch.inference_mode a parameter that requires grad made isfinite fail ("functions with out=...
    # arguments don't support automatic differentiation"), so save_model failed there.
    # (a meta tensor, a rehearsal's shapes-only copy, holds no values to check)
    bad = [
        n
        for n, p in model.named_parameters()
        if p.is_floating_point() and not p.is_meta and not bool(torch.isfinite(p.detach()).all())
    ]
    return bad + [
        n
        for n, b in model.named_buffers()
        if b.is_floating_point() and not b.is_meta and bool(torch.isnan(b.detach()).any())
    ]


def check_finite(model: nn.Module, path: str | Path) -> None:
    """Refuse a model read from ``path`` whose parameters hold NaN or inf, or whose buffers hold NaN
    (inf is legitimate in a buffer, e.g. an attention mask of -inf): nothing can be pruned, exported or
    measured from it. Raises :class:`ModelFileError` naming the first few such tensors."""
    bad = non_finite_tensors(model)
    if bad:
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise ModelFileError(
            f"{path}: weights hold NaN or inf values ({', '.join(bad[:4])}{more}); nothing to prune, export or "
            "measure. Check the training that wrote it (a diverged run) or load an earlier checkpoint"
        )


def _torch_archive(path: Path) -> bool:
    """Whether ``path`` is a zip archive as torch.save writes it (a ``data.pkl`` member, in any case, as torch reads
    it): any zip passed for one, a numpy ``.npz`` of the user's data or a ``.zip`` of images, was replaced too."""
    if not is_zip_archive(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.rsplit("/", 1)[-1].lower() == "data.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return False


def _refuse_non_torch_target(path: Path) -> None:
    """Raise :class:`~sparsekit.errors.OutputError` when ``path`` exists and is not a file torch.save writes (a zip
    archive): ``save_model(model, "recipe.yaml", ...)`` or onto an ``.onnx`` file replaced the user's file with a
    checkpoint without a word. A checkpoint or state_dict there is replaced, as before (saving over one's own)."""
    if not path.is_file() or _torch_archive(path) or empty_file(path):
        # (nothing there, or a folder: the writer's own error says so; an empty file: a tempfile made for it)
        return
    from .errors import OutputError

    raise OutputError(
        f"{path}: exists and is not a torch checkpoint (torch.save's zip archive); saving the model would replace "
        "it: give the path of the .pt file to write"
    )


def save_model(
    model: nn.Module,
    path: str | Path,
    factory: str,
    *,
    kwargs: dict[str, Any] | None = None,
    input_shape: list[int] | tuple[int, ...] | None = None,
    pruner: Pruner | None = None,
    pruning_history: list | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a sparsekit checkpoint of ``model`` (a DDP wrapper is unwrapped) to ``path``, atomically;
    returns ``path``. It holds the weights (copied to the CPU), ``factory`` (``pkg.module:callable``
    rebuilding the architecture) with its ``kwargs``, the ``input_shape`` with the batch dimension, the
    structured-pruning history (from ``pruner`` when not given, else the one a :class:`~sparsekit.Pruner`
    recorded on the model itself) and ``extra`` metadata, and loads with ``torch.load(weights_only=True)``.

    Raises :class:`ModelFileError` when ``factory`` is not of the form ``pkg.module:callable``, ``input_shape`` is
    not a list of at least two positive integers (batch first), a structurally pruned model has no input shape to replay
    its history on, ``pruner`` pruned a model of other shapes than ``model``, kwargs/history/extra are not JSON-able,
    or kwargs have a key that is not a string or a NaN/inf (load_model refuses such a file as damaged), and
    :class:`~sparsekit.errors.OutputError` when the file cannot be written (disk full, read-only) or ``path`` is an
    existing non-empty file that torch.save did not write (a recipe, an ONNX file: never replaced), and
    TypeError when ``model`` is not an ``nn.Module`` or ``pruner`` not a :class:`~sparsekit.Pruner`. Warns when the
    weights hold NaN or inf (load_model refuses such a file)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"save_model(model=...): expected a torch.nn.Module, got {type(model).__name__}; the arguments are "
            "(model, path, factory)"
        )
    from .pruner import Pruner  # here: pruner.py imports this module

    if pruner is not None and not isinstance(pruner, Pruner):
        # Anything else failed on an attribute of it ("'dict' object has no attribute 'model_history'"): a
        # pruner.state_dict() passed for the Pruner, say.
        raise TypeError(
            f"save_model(pruner=...): expected the sparsekit.Pruner that pruned the model, got {type(pruner).__name__}"
            "; or leave it out (the history a Pruner recorded on the model is saved then)"
        )
    require_path(path, "save_model(path=...)", "the arguments are (model, path, factory)")
    _refuse_non_torch_target(Path(path))
    # What load_model refuses as a damaged file is refused here, before anything is written: a factory not of the
    # form pkg.module:callable, an input shape of zeros, fractions or texts (1.5 was cut to 1 without a word).
    split_spec(factory, "save_model(factory=...)", ModelFileError)
    if input_shape is not None:
        input_shape = _shape_to_save(input_shape)
    model = unwrap(model)
    require_initialized(model, "save_model", ModelFileError)
    from .masks import unfollowed_masks

    if (unfollowed := unfollowed_masks(model, f"save_model({str(path)!r})")) is not None:
        warnings.warn(unfollowed, stacklevel=2)
    if bad := non_finite_tensors(model):
        # Written without a word, the file was then refused by load_model and every command ("weights hold NaN or
        # inf"): say so while the run that made them is at hand. A warning, not an error: the file still records it.
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        warnings.warn(
            f"save_model({str(path)!r}): the weights hold NaN or inf values ({', '.join(bad[:4])}{more}); "
            "load_model and every sparsekit command refuse such a file. Save finite weights (from before the "
            "training diverged)",
            stacklevel=2,
        )
    # Without pruner=, the history and input shape the Pruner left on the model (STRUCTURE_ATTR): a
    # structurally pruned model saved without them could not be rebuilt at load.
    own = getattr(model, STRUCTURE_ATTR, None) or {}
    if pruner is not None and pruning_history is None:
        _check_pruner_fits(model, pruner)
    if pruning_history is None:
        pruning_history = pruner.model_history if pruner is not None else own.get("history", [])
    history = list(pruning_history)
    if input_shape is None:
        input_shape = (pruner.context.get("input_shape") if pruner is not None else None) or own.get("input_shape")
    if history and not input_shape:
        raise ModelFileError(
            f"save_model({path}): a structurally pruned model is rebuilt by replaying its history on an input; "
            "pass input_shape=[1, ...]"
        )
    try:
        json.dumps([kwargs or {}, history, extra or {}])
    except TypeError as err:
        raise ModelFileError(f"save_model: kwargs, history and extra must be JSON-able ({err})") from None
    # The kwargs are called as factory(**kwargs) at load, which refuses keys that are not names and NaN/inf (not
    # JSON) as a damaged file: refused here, before the file is written, rather than by every later command.
    _check_kwargs_to_save(kwargs or {})
    # No copy of a tensor that torch.save writes as it is (on the CPU, owning its whole storage): a copy
    # of every weight would double a large model's memory for the time of the write.
    state = {k: _compact(v.detach().cpu()) for k, v in model.state_dict().items()}
    checkpoint = {
        "format": FORMAT,
        "factory": factory,
        "kwargs": dict(kwargs or {}),
        "input_shape": [int(d) for d in input_shape] if input_shape else None,
        "state_dict": state,
        "pruning_history": history,
        "extra": dict(extra or {}),
    }
    path = Path(path)
    # Through a Python file object: a full disk then raises OSError(ENOSPC), which atomic_path turns into
    # a clear error naming the path (torch's own writer reports only 'unexpected pos').
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(checkpoint, fh)
    return path


def _check_pruner_fits(model: nn.Module, pruner: Any) -> None:
    """ModelFileError when ``pruner``'s model (the one :meth:`~sparsekit.Pruner.finalize` returned) has other weight
    shapes than ``model``: its history would be replayed on the factory's model at load, and the weights saved from
    ``model`` would not fit what that gives ("weights do not match the architecture ... shape mismatch", blaming the
    kwargs). Written without a word, the file could not be loaded. A copy of the pruned model fits."""
    theirs = getattr(pruner, "model", None)
    if not isinstance(theirs, nn.Module) or theirs is model:
        return
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    other = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    differ = [k for k in ours if k in other and ours[k] != other[k]]
    if differ or ours.keys() != other.keys():
        detail = (
            f"{differ[0]} {list(ours[differ[0]])} where the pruner's model has {list(other[differ[0]])}"
            if differ
            else "other parameter names"
        )
        raise ModelFileError(
            f"save_model(pruner=...): the model given is not the one the pruner pruned ({detail}), so its channel "
            "removals would not fit it at load: pass the model pruner.finalize() returned, or leave pruner out"
        )


def _check_kwargs_to_save(kwargs: Any) -> None:
    """ModelFileError when save_model's ``kwargs`` are not what load_model takes: a mapping of names (strings) to
    plain, finite JSON data."""
    if not isinstance(kwargs, Mapping):
        raise ModelFileError(
            f"save_model(kwargs=...): expected a dict of the factory's keyword arguments, got {type(kwargs).__name__}"
        )
    odd = [k for k in kwargs if not isinstance(k, str)]
    if odd:
        raise ModelFileError(
            f"save_model(kwargs=...): key {odd[0]!r} is not a name (string); the factory is called as factory(**kwargs)"
        )
    try:
        json.dumps(kwargs, allow_nan=False)
    except ValueError as err:
        raise ModelFileError(f"save_model(kwargs=...): must be finite JSON data ({err}); NaN and inf are not") from None


def _shape_to_save(shape: Any) -> list[int]:
    """``shape`` (save_model's input_shape) as a list of positive ints; ModelFileError when it is not one."""
    problem = ModelFileError(
        f"save_model(input_shape=...): expected the whole input shape, batch first, as positive integers "
        f"(e.g. [1, 784]), got {shorten(repr(shape), 120)}"
    )
    dims = int_dims(shape)  # int, numpy and torch integers; not 1.5 or "1"
    if dims is None:
        raise problem
    if len(dims) < 2:
        # One dimension is the features without the batch (a recipe's model.input_shape refuses it as well): written,
        # every command that opens the file failed on it ("the model does not accept it") instead of this call.
        raise ModelFileError(
            f"save_model(input_shape=...): {dims} has no batch dimension: give the whole input, batch first "
            f"(e.g. [1, {dims[0]}] for {dims[0]} features)"
        )
    return dims


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is contiguous and spans its whole storage, else a compact copy (torch.save
    writes a view's entire storage)."""
    whole = t.is_contiguous() and t.storage_offset() == 0
    if whole and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone()


def first_layer(model: nn.Module) -> nn.Module | None:
    """The first module (registration order) holding parameters of its own, unless they are still lazy (a
    LazyLinear before its first forward); None when there is none. What the input-shape guesses read."""
    for m in model.modules():
        own = next(iter(m.parameters(recurse=False)), None)
        if own is None:
            continue
        return None if isinstance(own, nn.parameter.UninitializedParameter) else m
    return None


def first_conv_shape(model: nn.Module, size: Sequence[int] | None = None) -> list[int] | None:
    """``[1, in_channels, *size]`` when :func:`first_layer` is a convolution (``size``: a placeholder length,
    image or volume for its rank when None), else None; None too when ``size`` does not have its rank."""
    m = first_layer(model)
    if not isinstance(m, nn.modules.conv._ConvNd):
        return None
    rank = len(m.kernel_size)
    dims = list(size) if size is not None else {1: [128], 2: [28, 28], 3: [16, 32, 32]}.get(rank, [])
    return [1, int(m.in_channels), *dims] if len(dims) == rank else None


def takes_tokens(model: nn.Module) -> bool:
    """Whether :func:`first_layer` is an ``nn.Embedding`` / ``nn.EmbeddingBag``: the model most likely takes token
    ids, whose input shape is the batch and a sequence length (``[1, 128]``), not an image's."""
    return isinstance(first_layer(model), nn.Embedding | nn.EmbeddingBag)


def input_shape_example(model: nn.Module) -> str:
    """An input shape to suggest where none is known, comma-separated for the shape option: the first layer's
    channels with a placeholder size (:func:`first_conv_shape`: a Conv2d of 1 input channel ``1,1,28,28``; Conv1d
    ``1,C,128``; Conv3d ``1,C,16,32,32``), ``1,128`` (a sequence of token ids) for an embedding first,
    ``1,3,32,32`` when it tells nothing."""
    return ",".join(str(v) for v in first_conv_shape(model) or ([1, 128] if takes_tokens(model) else [1, 3, 32, 32]))


def infer_input_shape(model: nn.Module) -> list[int] | None:
    """A batch-1 input shape ``[1, in_features]`` when the first module holding parameters is a Linear
    (a guess: modules are taken in registration order). None whenever that is not sure: the first is a
    convolution of any kind (Conv1d/2d/3d, ConvTranspose: the length or image size is unknown), a
    normalization, an embedding, a lazy module, ... or there is none; the recipe's ``model.input_shape``
    must then say it."""
    m = first_layer(model)
    if isinstance(m, nn.Linear):
        return [1, int(m.in_features)]
    return _exported_input_shape(model)


def _exported_input_shape(model: nn.Module) -> list[int] | None:
    """The input shape a torch.export module (a trusted ``.pt2``) was exported with, batch first, when it takes
    one tensor: its graph records it. Such a module keeps no Linear for :func:`first_layer` to read, so
    ``sparsekit export model.pt2`` said "cannot tell the input shape" about a file that states it. A dynamic
    dimension (a symbol) is taken as 1 in the batch and unknown elsewhere."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    values = [n.meta.get("val") for n in model.graph.nodes if n.op == "placeholder"]
    if len(values) != 1 or not isinstance(values[0], torch.Tensor):
        return None
    dims = list(values[0].shape)
    if not dims or not all(isinstance(d, int) for d in dims[1:]):
        return None
    return [1 if not isinstance(dims[0], int) else int(dims[0]), *(int(d) for d in dims[1:])]
