"""Which callables named inside a file may be imported and called.

A recipe (``model.factory``, ``data.source: pkg.module:callable``) or a checkpoint (``factory``) may
*name* code. Files are data, so sparsekit imports and calls such a name only when the user confirmed
it:

- the user named it directly this run, as an argument (``arch=``, ``data=``, ``load_data(source)``)
  rather than inside a file;
- or the user trusts its module: ``trust_code=True`` trusts the modules the files of this run name
  and remembers them, the way ``torch.hub``'s ``trust_repo`` remembers a repository, in
  ``trusted_modules.json`` under the user's config folder (see :func:`store_path`), each as the file it was
  imported from: a file of the same name elsewhere (a downloaded folder) is not trusted.

Even a confirmed or trusted name is refused when it is not a model or data function of the user's
own: anything from the standard library (process, file-system, import, pickle and exec machinery
live there), from sparsekit's own dependencies or from well-known tool packages; builtins, bound
methods and callable instances. A model factory must be a module-level Python function or an
``nn.Module`` class (a class from torch itself is fine: ``torch.nn:Linear``), a data callable a
module-level Python function; what they return is checked by their callers.

Imports never let a file in the current folder shadow a dependency: the current folder is
*appended* to ``sys.path`` only while a user-named module is imported, then taken off again.

>>> fn = load_callable("examples.models:lenet_300_100", kind="model")          # named by the user
>>> load_callable("os:system", kind="model")                                    # doctest: +SKIP
TrustError: os:system: 'os' is part of Python's standard library, not a model ...
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import re
import stat
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from .errors import API_SPELLING, SparsekitError, TrustError, one_line, option
from .fsutil import global_rng_kept, read_regular, xdg_home

log = logging.getLogger("sparsekit")

Kind = Literal["model", "data"]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC_RE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*$")

# Tool, shell, network, pickle and notebook distributions: none of them builds a model or a data
# loader, and several start processes, write files, import by name or unpickle. Every import name
# they install (pytest also installs `py` and `_pytest`; hypothesis `_hypothesis_*`), and those of
# everything they and sparsekit (extras included) depend on, is never called; so is the standard
# library. The names below are also refused when the distribution's metadata cannot be read.
_TOOL_DISTRIBUTIONS = (
    "pip", "setuptools", "wheel", "virtualenv", "dill", "cloudpickle", "joblib", "pandas", "ipython",
    "ipykernel", "jupyter-client", "jupyter-core", "nbformat", "nbconvert", "pytest", "hypothesis", "mypy",
    "ruff", "requests", "urllib3", "httpx", "paramiko", "fabric", "invoke", "sh", "plumbum", "pexpect",
    "psutil", "docker", "boto3", "botocore", "fsspec", "huggingface-hub", "pyyaml", "click", "execnet", "aiohttp",
)  # fmt: skip
_TOOL_IMPORT_NAMES = frozenset(
    {
        "sparsekit", "pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel", "distutils", "virtualenv",
        "dill", "cloudpickle", "joblib", "pandas", "IPython", "ipykernel", "jupyter_client", "jupyter_core",
        "nbformat", "nbconvert", "pytest", "_pytest", "py", "pluggy", "hypothesis", "mypy", "mypyc", "ruff",
        "requests", "urllib3", "httpx", "paramiko", "fabric", "invoke", "sh", "plumbum", "pexpect", "psutil",
        "docker", "boto3", "botocore", "fsspec", "huggingface_hub", "yaml", "_yaml", "click", "execnet", "aiohttp",
    }
)  # fmt: skip


# --- the remembered list of trusted modules ------------------------------------------------------


def store_path() -> Path:
    """Where trusted modules are remembered: ``$SPARSEKIT_CONFIG_DIR/trusted_modules.json``, else
    ``$XDG_CONFIG_HOME/sparsekit/…`` (absolute ones; a relative one is ignored, as the XDG specification has it), else
    ``~/.config/sparsekit/trusted_modules.json``. The file need not exist; nothing is created or read here."""
    xdg = xdg_home("XDG_CONFIG_HOME")
    given = Path(os.environ["SPARSEKIT_CONFIG_DIR"]).expanduser() if os.environ.get("SPARSEKIT_CONFIG_DIR") else None
    if given is not None and not given.is_absolute():
        # As a relative XDG folder: it named another list in every working directory, one a downloaded project could
        # ship. Ignored, and said each time the list is looked for.
        log.warning(
            "SPARSEKIT_CONFIG_DIR=%s is a relative path, which would name another trusted-modules list in every "
            "working directory: ignored; set it to an absolute path",
            given,
        )
        given = None
    if given is not None:
        base = given
    elif xdg is not None:
        base = xdg / "sparsekit"
    else:
        base = Path.home() / ".config" / "sparsekit"
    return base / "trusted_modules.json"


def trusted_locations() -> dict[str, str]:
    """The modules the user trusts, each with the file (or package folder) it was trusted as: ``{"mypkg.nets":
    "/home/me/proj/mypkg/__init__.py"}``. A module is trusted only where it was: a file of the same name found in
    another folder (a downloaded one) is not. A missing or unreadable store means none (an unreadable one is
    logged as a warning); so does a store of sparsekit 0.3.4 or before, which kept names only. Never raises."""
    path = store_path()
    try:
        unsafe = _unsafe_store(path)
        data = json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as err:
        log.warning("%s: cannot read the trusted-module list (%s); trusting none", path, type(err).__name__)
        return {}
    if unsafe:
        log.warning("%s: %s, so another user could make sparsekit run their code; trusting none", path, unsafe)
        return {}
    mods = data.get("modules") if isinstance(data, dict) else None
    if isinstance(mods, list) and all(isinstance(m, str) and _module_ok(m) for m in mods):
        if mods:
            log.warning(
                "%s: trusts modules by name only (sparsekit 0.3.4 or before), which would trust a file of that name "
                "in any folder; trusting none: trust them again (sparsekit trust MODULE, from the folder they are "
                "imported from)",
                path,
            )
        return {}
    # The store is data too: anything but a mapping of module names to paths trusts nothing, and a name that is
    # never trusted (os, a dependency) is dropped.
    if not isinstance(mods, dict) or not all(
        isinstance(m, str) and _module_ok(m) and isinstance(p, str) and os.path.isabs(p) for m, p in mods.items()
    ):
        log.warning("%s: not a mapping of module names to paths; trusting none (sparsekit trust rewrites it)", path)
        return {}
    return {m: mods[m] for m in sorted(mods) if not _denied(m)}


def _unsafe_store(path: Path) -> str | None:
    """Why the store at ``path`` cannot be believed, or None: as ssh with its key files, a list that says which
    code runs must be the user's and writable by no one else, nor may any folder above it be (group-writable is
    allowed: user-private groups' umask 002 makes every file so; a world-writable sticky folder such as /tmp too).
    Raises FileNotFoundError when there is none."""
    real = Path(os.path.realpath(path))
    st = real.stat()
    if not hasattr(os, "getuid"):
        return None  # no POSIX owners (Windows)
    if st.st_uid != os.getuid():
        return f"{real} belongs to another user (uid {st.st_uid})"
    if st.st_mode & stat.S_IWOTH:
        return f"{real} is writable by every user (chmod o-w it)"
    # Every folder above it, as OpenSSH's safe_path: whoever may rename any of them can put a store of their own
    # in its place (a sticky folder such as /tmp lets no one rename what another user owns).
    for folder in (real.parent, *real.parent.parents):
        st = folder.stat()
        if st.st_uid not in (os.getuid(), 0):
            return f"its folder {folder} belongs to another user (uid {st.st_uid})"
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            return f"its folder {folder} is writable by every user, who could replace it (chmod o-w it)"
    return None


def trusted_modules() -> list[str]:
    """The names of the modules the user trusts (sorted, e.g. ``['mypkg.nets']``; see :func:`trusted_locations`)."""
    return list(trusted_locations())


def is_trusted(module: str) -> bool:
    """Whether ``module`` is trusted and would be imported, here and now, from the file it was trusted as."""
    pinned = trusted_locations().get(module)
    return pinned is not None and module_location(module) == pinned


def module_location(module: str) -> str | None:
    """Where ``module`` would be imported from (its top-level module's file, or a namespace package's first
    folder; symlinks resolved), found without importing anything; None when it is not found."""
    found = _find_top(module)
    where: str | None
    if isinstance(found, types.ModuleType):
        where = getattr(found, "__file__", None) or next(iter(getattr(found, "__path__", None) or []), None)
    elif found is None:
        return None
    else:
        where = found.origin
        if where in (None, "namespace", "built-in", "frozen"):
            where = next(iter(found.submodule_search_locations or []), None)
    return os.path.realpath(where) if where else None


def _find_top(module: str) -> types.ModuleType | importlib.machinery.ModuleSpec | None:
    """``module``'s top-level module when it is imported, else its import spec, found without importing anything
    (the current folder searched last, as for an import); None when it is not found."""
    top = module.split(".")[0]
    if top in sys.modules:
        return sys.modules[top]
    try:
        with _cwd_appended():
            return importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None


def trust_module(module: str) -> Path:
    """Remember ``module`` as trusted, as the place it is imported from here (:func:`module_location`). Raises
    :class:`TrustError` for a module that is never run (standard library, sparsekit's dependencies, tool
    packages), a malformed name or one not found from here, and :class:`~sparsekit.errors.OutputError` when
    the store cannot be written."""
    if not _module_ok(module):
        head, colon, _ = module.partition(":")
        if colon and _module_ok(head):
            # `sparsekit trust mynet:CNN`, as --arch names it: the module is what is trusted.
            # (trust_module is the library's too: the remedy names the module, not a command-line flag)
            raise TrustError(f"{module!r}: a callable (module:name), not a module; trust its module, {head!r}")
        raise TrustError(f"{module!r}: not a module name (e.g. mypkg.nets)")
    reason = _denied(module)
    if reason:
        raise TrustError(f"{module}: {reason}; it is never trusted{_own_file_hint(module)}")
    where = module_location(module)
    if where is None:
        raise TrustError(
            f"{module}: not found from here ({os.getcwd()}); trust it from the folder it is imported from, or "
            "install its package (a module is trusted as the file it is, not by its name)"
        )
    missing = _missing_submodule(module)
    if missing:
        raise TrustError(missing)
    return _write_store({**trusted_locations(), module: where})


def _missing_submodule(module: str) -> str | None:
    """Why a dotted ``module`` whose top-level module exists cannot be imported, or None. Trust is recorded as the
    top-level file, so without this a file name (``mynets.py``: module ``py`` of ``mynets``) or a misspelt submodule
    was listed as trusted though no architecture option could ever name it. Found on the package's folders,
    importing nothing."""
    parts = module.split(".")
    found = _find_top(module)
    if isinstance(found, types.ModuleType):
        search = list(getattr(found, "__path__", None) or [])
    else:
        search = list(getattr(found, "submodule_search_locations", None) or [])
    for i in range(1, len(parts)):
        parent, name = ".".join(parts[:i]), ".".join(parts[: i + 1])
        if not search:
            if i == len(parts) - 1 and parts[-1] == "py" and os.path.isfile(os.path.join(*parts[:-1]) + ".py"):
                return f"{module}: a file name, not a module name: trust its module, {parent}"
            return f"{module}: {parent} is a module, not a package, so it holds no module {parts[i]!r}"
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        if spec is None:
            return f"{module}: package {parent} has no module {parts[i]!r} (looked in {', '.join(search)})"
        search = list(spec.submodule_search_locations or [])
    return None


def forget_module(module: str) -> bool:
    """Stop trusting ``module``; returns whether it was trusted. Raises
    :class:`~sparsekit.errors.OutputError` when the store cannot be rewritten."""
    mods = trusted_locations()
    if module not in mods:
        return False
    _write_store({m: p for m, p in mods.items() if m != module})
    return True


def _write_store(modules: dict[str, str]) -> Path:
    from .errors import OutputError
    from .fsutil import atomic_path, writing

    path = store_path()
    if path.is_symlink():
        # A list kept elsewhere (a dotfiles repository) and linked here: written through the link, as it is read;
        # the atomic rename replaced the user's link with a file of its own.
        path = Path(os.path.realpath(path))
    try:
        with writing(path.parent):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the user's own, whatever the umask
        with atomic_path(path) as tmp:
            doc = {"format": "sparsekit-trust/2", "modules": dict(sorted(modules.items()))}
            tmp.write_text(json.dumps(doc, indent=2) + "\n", "utf-8")
        with writing(path):
            os.chmod(path, 0o600)  # (atomic_path gives the umask's mode: under umask 000 every user could write it)
    except OutputError as err:
        # The disk error's remedy speaks of an output folder, which the user never gave: the list lives in the
        # config folder, which the environment chooses.
        why = str(err).split(": cannot write it: ", 1)[-1].split(";", 1)[0]
        raise OutputError(
            f"{path}: cannot save the trusted-module list ({why}); make {path.parent} writable, or set "
            "SPARSEKIT_CONFIG_DIR to a folder you can write to"
        ) from None
    unsafe = _unsafe_store(path)
    if unsafe:  # a folder others can write, made before: the list would be ignored the next time it is read
        raise OutputError(
            f"{path}: {unsafe}, so sparsekit would not believe the list it just wrote; make the folder yours alone "
            "(chmod 700), or choose another (SPARSEKIT_CONFIG_DIR)"
        )
    return path


# --- resolving a callable -----------------------------------------------------------------------


def split_spec(spec: Any, where: str, error: type[SparsekitError] = TrustError) -> tuple[str, str]:
    """``"pkg.module:callable"`` -> ``("pkg.module", "callable")``. Raises ``error`` (a
    :class:`~sparsekit.errors.SparsekitError` subclass, :class:`TrustError` by default) naming
    ``where`` when ``spec`` is not of that form or names a dunder attribute."""
    if not isinstance(spec, str) or not _SPEC_RE.match(spec):
        shape = "is not of the form pkg.module:callable (e.g. mypkg.nets:build for build() in mypkg/nets.py)"
        if not isinstance(spec, str) and callable(spec):
            raise error(f"{where}: {_object_hint(spec)}")
        hint = _call_hint(spec, where) or module_spec_hint(spec) or _dotted_hint(spec) or _slash_hint(spec)
        raise error(f"{where}: {spec!r} {shape}{hint}")
    module, attr = spec.split(":")
    if any(p.startswith("__") for p in (*module.split("."), *attr.split("."))):
        raise error(f"{where}: {spec!r} names a dunder attribute; name a module-level function or class")
    return module, attr


def _object_hint(obj: Any) -> str:
    """For the class or function itself (``arch=LeNet``, the natural thing to pass in Python): its import path, which
    is what is stored in the checkpoint and imported again, or why it has none. The refusal used to print the
    object's repr as if it were a misspelt string ("<class 'mynet.LeNet'> is not of the form pkg.module:callable")."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    what = f"the {'class' if isinstance(obj, type) else 'callable'} {name or type(obj).__name__} itself was given"
    if not isinstance(module, str) or not isinstance(name, str) or not _SPEC_RE.match(f"{module}:{name}"):
        return (
            f"{what}, which has no import path (a lambda, a local or nested definition, an instance); name a "
            "module-level function or class by its import path, a string such as 'mypkg.nets:build'"
        )
    if module == "__main__":
        return (
            f"{what}, defined in the script being run, which a saved model cannot name: move it into a module of its "
            f"own (e.g. mynet.py beside the script) and give its import path as a string, e.g. 'mynet:{name}'"
        )
    return (
        f"{what}; give its import path as a string (it is stored with the model and imported again): '{module}:{name}'"
    )


def _call_hint(spec: Any, where: str) -> str:
    """For a call written out (``mynet:LeNet()``, ``mynet:LeNet(width=64)``, the way one builds the model in
    Python): the callable alone and where its arguments go, as a hint; else "". Only the name is imported and
    called, with the keyword arguments given separately, so nothing written here is evaluated."""
    if not isinstance(spec, str):
        return ""
    m = re.match(r"^\s*([^()]+?)\s*\((.*)\)\s*$", spec, re.DOTALL)
    if not m or not _SPEC_RE.match(m.group(1)):
        return ""
    name, args = m.group(1), m.group(2).strip()
    hint = f"; name the callable without the parentheses ({name!r})"
    if not args:
        return hint
    kwargs: str | None = None  # the arguments as JSON, when all are keywords with literal values
    with contextlib.suppress(SyntaxError, ValueError, TypeError):
        call = ast.parse(f"f({args})", mode="eval").body
        if isinstance(call, ast.Call) and not call.args and all(k.arg for k in call.keywords):
            kwargs = json.dumps({str(k.arg): ast.literal_eval(k.value) for k in call.keywords})
    # A recipe's factory takes its arguments from model.kwargs; a caller's (the command line's, save_model's)
    # from its own kwargs option.
    if where.startswith("model."):
        dest = "the recipe's model.kwargs" + (f" ({kwargs})" if kwargs is not None else "")
    else:
        dest = option("kwargs", kwargs) if kwargs is not None else option("kwargs")
    by_name = "" if kwargs is not None else ", each by its parameter name"
    return f"{hint} and give its arguments as keyword arguments{by_name}: {dest}"


def _dotted_hint(spec: Any) -> str:
    """For ``mynet.Net`` (the dotted path Python prints for a class): ``mynet:Net`` as a hint; else ""."""
    if not isinstance(spec, str) or ":" in spec or "." not in spec:
        return ""
    if spec.endswith(".py"):  # a file alone (`mynet.py`): its import name, and the callable still to name
        meant = spec.replace("\\", "/").removeprefix("./").removesuffix(".py").replace("/", ".") + ":NAME"
        return (
            f"; a module is named by its import name, not its file, and the callable follows a colon: {meant!r}"
            if _SPEC_RE.match(meant)
            else ""
        )
    module, _, attr = spec.rpartition(".")
    meant = f"{module}:{attr}"
    return f"; did you mean {meant!r}?" if _SPEC_RE.match(meant) else ""


def _slash_hint(spec: Any) -> str:
    """For ``mynet/Net`` (a path's separator between module and callable) or a module alone (``mynet``): the
    spec meant, as a hint; else ""."""
    if not isinstance(spec, str) or ":" in spec:
        return ""
    if "/" in spec and not spec.endswith(".py"):
        module, _, attr = spec.replace("\\", "/").removeprefix("./").rpartition("/")
        meant = f"{module.replace('/', '.')}:{attr}"
        return f"; did you mean {meant!r}?" if _SPEC_RE.match(meant) else ""
    if _SPEC_RE.match(f"{spec}:NAME"):
        return f"; name the callable after a colon: '{spec}:NAME'"
    return ""


def module_spec_hint(spec: Any) -> str:
    """For a spec that names a file relative to here (``mypkg/nets.py:build``, ``nets.py:build``): the spec of the
    module meant, as a hint; else ""."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        return ""
    path, attr = spec.split(":")
    parts = path.replace("\\", "/").removeprefix("./").removesuffix(".py").split("/")
    meant = f"{'.'.join(parts)}:{attr}"
    if not path.endswith(".py") or not _SPEC_RE.match(meant):
        return ""
    return f"; a module is named by its import name, not its file: {meant!r}"


def load_callable(
    spec: str,
    *,
    kind: Kind,
    named_in: str | os.PathLike[str] | None = None,
    field: str = "",
    trust_code: bool = False,
    error: type[SparsekitError] = TrustError,
) -> Callable[..., Any]:
    """Import ``pkg.module:callable`` and return it, after every check in the module docstring.

    ``named_in`` is the file that names the callable (a recipe or checkpoint) and ``field`` where in
    it (``model.factory``); ``None`` means the user named it directly, and ``field`` is then the
    caller's option that named it (``arch``, ``data``: messages spell it as the caller would) or a
    plain label. A file-named callable needs ``trust_code=True`` (which also remembers its module, once it
    imported and held the callable) or a module the user trusted before. Raises :class:`TrustError` when
    it is not confirmed or never run, and ``error`` when it is malformed, cannot be imported or found, or
    is not a function (or, for a model, an ``nn.Module`` class).
    """
    where = _where(spec, named_in, field)
    module, attr = split_spec(spec, where, error)
    torch_class = kind == "model" and module.split(".")[0] == "torch"  # e.g. torch.nn:Linear
    check_runnable(spec, kind=kind, named_in=named_in, field=field, error=error)
    remember = named_in is not None and _require_trust(spec, module, named_in, field, trust_code)
    obj: Any = _import(module, where, error)
    reason = _denied_file(getattr(obj, "__file__", None))
    if reason and not torch_class:
        raise TrustError(f"{where}: {reason}, so it is never run{_own_file_hint(module, attr)}")
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            # With no near name, "has no 'Nope'" left the user to open the file: name what it defines to call.
            own = [n for n in names if callable(getattr(obj, n, None)) and getattr(getattr(obj, n), "__module__", None)
                   == getattr(obj, "__name__", None)]  # fmt: skip
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; it defines {', '.join(own[:8])}{', ...' if len(own) > 8 else ''}: name one as {module}:NAME"
                if own
                else f"; it defines no function or class to call: name the module that builds the {kind}"
            )
            raise error(f"{where}: module {module!r} has no {attr!r}{hint}")
        obj = getattr(obj, part)
    _check_shape(obj, where, kind, error)
    if remember:  # only a module that imported and holds what was named: not one that failed
        _remember(module, named_in)
    return obj


def check_runnable(
    spec: str,
    *,
    kind: Kind,
    named_in: str | os.PathLike[str] | None = None,
    field: str = "",
    error: type[SparsekitError] = TrustError,
) -> None:
    """Raise :class:`TrustError` when ``pkg.module:callable`` is one :func:`load_callable` never runs (standard
    library, sparsekit's dependencies, tool packages), whatever the user confirms; ``error`` when it is malformed.
    Nothing is imported: the module is only looked up, so ``validate`` can refuse what ``prune`` would."""
    where = _where(spec, named_in, field)
    module, attr = split_spec(spec, where, error)
    if kind == "model" and module.split(".")[0] == "torch":  # e.g. torch.nn:Linear
        return
    reason = _denied(module) or _denied_file(_top_level_origin(module))
    if reason:
        raise TrustError(f"{where}: {reason}, so it is never run{_own_file_hint(module, attr)}")


def call_user_code(
    fn: Callable[..., Any], where: str, error: type[SparsekitError], kwargs: dict[str, Any] | None = None
) -> Any:
    """Call a user's factory or data callable with ``kwargs`` and return what it returns; whatever it
    raises, ``sys.exit()`` and unusable kwargs included, becomes ``error`` (a
    :class:`~sparsekit.errors.SparsekitError` subclass) naming ``where``. A SparsekitError it raises
    passes through; Ctrl-C still interrupts."""
    try:
        return fn(**(kwargs or {}))
    except KeyboardInterrupt:
        raise
    except SparsekitError:
        raise
    except SystemExit as exc:
        raise error(f"{where}: calling it called sys.exit({exc.code!r}); it must return, not exit") from None
    except BaseException as exc:  # noqa: BLE001 - the user's code failed: bad input, not our bug
        raise error(f"{where}: calling it raised {one_line(exc)}") from None


def _where(spec: str, named_in: str | os.PathLike[str] | None, field: str) -> str:
    if named_in is None:
        if field in API_SPELLING:  # the caller's option: arch='m:f' in Python, the flag on the command line
            return option(field, spec) if isinstance(spec, str) else option(field)  # an object: no value to quote
        return f"{field} {spec!r}" if field else repr(spec)
    return f"{named_in}: {field} {spec!r}" if field else f"{named_in}: {spec!r}"


def _require_trust(spec: str, module: str, named_in: str | os.PathLike[str], field: str, trust_code: bool) -> bool:
    """Raise TrustError unless the module is trusted or ``trust_code`` confirms it; True when it is to be
    remembered (confirmed now, not yet trusted)."""
    if is_trusted(module):
        return False
    if not trust_code:
        name = "data" if field.startswith("data") else "arch"
        pinned = trusted_locations().get(module)
        elsewhere = (
            f" (module {module!r} is trusted as {pinned}; here it is {module_location(module) or 'not found'})"
            if pinned
            else ""
        )
        if module.split(".")[0] == "examples" and module_location(module) is None:
            # A shipped recipe's example model, from an install without the repository: confirming it cannot work.
            raise TrustError(
                f"{named_in}: {field or 'the file'} names {spec!r}, the example model of the sparsekit repository, "
                f"which is not here (examples/ is not part of the installed package): for your own model pass "
                f"{option(name, 'your_module:your_factory')} (the function that builds it), or run from a clone of "
                "the repository"
            )
        if module_location(module) is None:
            # Confirming code that is not on the import path from here cannot work either: the confirmation was then
            # refused with "cannot import module"; the remedy is the folder (or package) that holds it.
            # A module trusted there needs no confirmation once it is found again.
            where, confirm = (
                (f" (it is trusted as {pinned})", "")
                if pinned
                else ("", f" and confirm it with {option(name, spec)} or {option('trust_code')}")
            )
            raise TrustError(
                f"{named_in}: {field or 'the file'} names the code {spec!r}, whose module {module!r} is not found "
                f"from this folder{where}: run from the folder that holds it (or install its package){confirm}, "
                f"or name your own with {option(name, 'your_module:your_factory')}"
            )
        # A recipe's factory is only a default (a shipped recipe names its example model): weights of one's own
        # architecture need one's own builder, which confirming the recipe's would not give.
        own = (
            f"; if the model file holds weights of your own architecture, name the function that builds it instead: "
            f"{option(name, 'your_module:your_factory')}"
            if field == "model.factory"
            else ""
        )
        raise TrustError(
            f"{named_in}: {field or 'the file'} names the code {spec!r}{elsewhere}; a file's code runs only when "
            f"you confirm it: pass {option(name, spec)} for this run, or {option('trust_code')} to trust module "
            f"{module!r} from now on{own}"
        )
    return True


def _remember(module: str, named_in: str | os.PathLike[str] | None) -> None:
    try:
        path = trust_module(module)
    except SparsekitError as err:  # a read-only home: trusted for this run, not remembered
        log.warning("trusting %s for this run only: %s", module, err)
        return
    log.warning("trusted module %s (named in %s); remembered in %s", module, named_in, path)


def _module_ok(name: str) -> bool:
    return bool(re.fullmatch(rf"{_IDENT}(?:\.{_IDENT})*", name))


def _denied(module: str) -> str | None:
    """Why a module is never run, or None."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return f"{top!r} is part of Python's standard library, not a model or data module"
    if top in _TOOL_IMPORT_NAMES or top in _denied_import_names():
        return f"{top!r} belongs to sparsekit, its dependencies or a tool package, not a model or data module"
    return None


def _own_file_hint(module: str, attr: str = "") -> str:
    """The remedy when the current folder holds a file or package of the refused module's top-level name: the user's
    own code.py or test/, which the installed module of that name hides (the current folder is searched last, so
    that it cannot shadow one), and which no confirmation makes importable under that name. Without this the
    refusal named only the standard-library or installed module and left the user with no way forward."""
    top = module.split(".")[0]
    origin = _top_level_origin(top)
    for name in (f"{top}.py", top):
        if os.path.isfile(name) if name.endswith(".py") else os.path.isdir(name):
            real, here = os.path.realpath(origin or ""), os.path.realpath(name)
            if origin and (real == here or real.startswith(here + os.sep)):
                return ""  # it is the module Python imports (sparsekit's own checkout, run from its root)
            new = f"my_{top}"
            spec = f"{new}{module[len(top) :]}:{attr}" if attr else f"{new}{module[len(top) :]}"
            renamed = f"{new}.py" if name.endswith(".py") else new
            return (
                f"; {os.path.join('.', name)} in the current folder has that name, but Python's own or an installed "
                f"module of that name comes first: rename it (e.g. to {renamed}) and name it as {spec}"
            )
    return ""


def installed_with_sparsekit(top: str) -> bool:
    """Whether the top-level import name ``top`` is sparsekit's, or was installed by one of its
    dependencies (extras included, with everything they depend on) or a tool package (pip, pytest, ...)."""
    return top in _TOOL_IMPORT_NAMES or top in _denied_import_names()


def _top_level_origin(module: str) -> str | None:
    """The file a top-level module would be imported from, found without importing anything."""
    found = _find_top(module)
    if isinstance(found, types.ModuleType):
        # A namespace package (a folder without __init__.py, e.g. a tests/ folder) has no __file__.
        return getattr(found, "__file__", None) or ("namespace" if hasattr(found, "__path__") else "built-in")
    return None if found is None else (found.origin or "namespace")


def _denied_file(origin: str | None) -> str | None:
    """Why a module file is never run, or None: it is part of the Python installation (its test
    suite and private extension modules included, which ``sys.stdlib_module_names`` leaves out), or
    was installed by sparsekit, one of its dependencies or a tool package, whatever name it is
    imported under (onnxruntime, for one, puts a folder of its own scripts on ``sys.path``)."""
    if not origin or origin == "namespace":
        return None
    if origin in ("built-in", "frozen"):
        return "it is built into Python, not a model or data module"
    real = os.path.realpath(origin)
    installed = "site-packages" in real or "dist-packages" in real  # else a user's own folder: no file list
    if installed and real in _denied_files():
        return f"{origin} was installed by sparsekit, one of its dependencies or a tool package"
    for root in _python_roots():
        if real.startswith(root + os.sep) and "site-packages" not in real and "dist-packages" not in real:
            return f"{origin} is part of the Python installation, not a model or data module"
    return None


@functools.lru_cache(maxsize=1)
def _python_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths})


@functools.lru_cache(maxsize=1)
def _denied_files() -> frozenset[str]:
    """Real paths of every Python source and extension file the denied distributions installed."""
    files: set[str] = set()
    installed = _installed()  # (one pass, as for the import names: no search of the path per name)
    for name in _denied_in(installed):
        for dist, _reqs in installed.get(name, []):
            try:
                entries = dist.files or []
            except Exception:  # noqa: BLE001, S112 - its RECORD unreadable (not UTF-8): its names still count
                # (a RECORD not in UTF-8 raised UnicodeDecodeError out of every load of a module from site-packages)
                continue
            for entry in entries:
                if entry.suffix in (".py", ".so", ".pyd", ".pyc"):
                    files.add(os.path.realpath(str(entry.locate())))
    return frozenset(files)


@functools.lru_cache(maxsize=1)
def _denied_import_names() -> frozenset[str]:
    """Import names installed by the denied distributions (see :func:`_denied_distributions`).

    Kept between runs in the cache folder (``denied-import-names.json``), keyed on what Python finds distributions
    in (:func:`_install_state`): reading the installed distributions' metadata (~0.1 s of CPU even as done below)
    was nearly all of a run's ``load`` phase when the architecture is named by the caller. A cache that cannot be
    read or written only costs that time again."""
    key = _install_state()
    cached = _read_names_cache(key)
    if cached is not None:
        return cached
    try:
        installed = _installed()
        denied = _denied_in(installed)
    except Exception:  # noqa: BLE001 - broken metadata on the user's machine must not stop a run
        return frozenset({"torch"})
    names = {"torch"}
    # Only the denied distributions' files are read: each one's top_level.txt, else the top-level names of the .py
    # files its RECORD lists, as importlib.metadata.packages_distributions() infers them. That function read every
    # distribution's file list through PackagePath objects (~0.1 s of CPU here: a first run's whole load phase), and
    # one distribution's unreadable metadata (a top_level.txt not in UTF-8) raised out of it for all: the list was
    # then {"torch"}, and every dependency passed as the user's own code. One that cannot be read is left out now;
    # the others count.
    for name in denied:
        for dist, _reqs in installed.get(name, []):
            try:
                declared = (dist.read_text("top_level.txt") or "").split()
                names.update(declared or _record_top_names(dist.read_text("RECORD") or ""))
            except Exception:  # noqa: BLE001, S112 - this distribution's metadata is what is broken: the others count
                continue
    found = frozenset(names)
    _write_names_cache(key, found)
    return found


def _record_top_names(record: str) -> set[str]:
    """The top-level import names of the ``.py`` files a RECORD lists (``pkg/mod.py`` -> ``pkg``, ``six.py`` ->
    ``six``): importlib.metadata's inference for a distribution without ``top_level.txt``, on the text itself."""
    import csv

    tops = set()
    for row in csv.reader(record.splitlines()):  # (RECORD is CSV: a path holding a comma is quoted)
        path = row[0] if row else ""
        if path.endswith(".py"):
            head, sep, _ = path.partition("/")
            tops.add(head if sep else path[: -len(".py")])
    return tops


_NAMES_CACHE = "denied-import-names.json"


_METADATA_ENDS = (".dist-info", ".egg-info", ".egg-link", ".pth")


def _install_state() -> list[Any]:
    """What the installed distributions' import names depend on, to key :func:`_denied_import_names`' cache: the
    Python and sparsekit versions, and for each ``sys.path`` entry its distributions' metadata folders (and .pth
    files) with their modification times. Installing, upgrading or removing a package (pip, uv, conda) adds, removes
    or rewrites a ``*.dist-info`` folder; a folder added to the path (a .pth file, PYTHONPATH) is a new entry. (Not
    the folders' own times: the current folder, on the path under ``python -m``, changes with every file made there.)"""
    from . import __version__

    state: list[Any] = [sys.version, sys.prefix, __version__]
    for entry in sys.path:
        if not isinstance(entry, str | os.PathLike) or not isinstance(os.fspath(entry), str):
            # (bytes, or anything else put on the path: Python's import system skips such an entry; scanned as a str
            # entry is, its bytes names failed the .endswith below with a TypeError that stopped every run)
            state.append(repr(entry))
            continue
        path = os.path.abspath(entry or os.curdir)
        try:
            if not os.path.isdir(path):
                st = os.stat(path)
                state.append([path, st.st_mtime_ns, st.st_size])
                continue
            with os.scandir(path) as found:
                meta = sorted(
                    [e.name, e.stat(follow_symlinks=True).st_mtime_ns] for e in found if e.name.endswith(_METADATA_ENDS)
                )
            state.append([path, meta])
        except OSError:
            state.append([path, None])
    return state


def _read_names_cache(key: list[Any]) -> frozenset[str] | None:
    from .fsutil import cache_dir

    try:
        path = cache_dir() / _NAMES_CACHE
        if path.stat().st_size > 1 << 20:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = data.get("names") if isinstance(data, dict) and data.get("key") == key else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return frozenset(names) | {"torch"}


def _write_names_cache(key: list[Any], names: frozenset[str]) -> None:
    import tempfile

    from .fsutil import TEMP_SUFFIX, cache_dir, remove_killed_temps

    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        remove_killed_temps(folder / _NAMES_CACHE)
        fd, tmp = tempfile.mkstemp(prefix=f".{_NAMES_CACHE}.", suffix=TEMP_SUFFIX, dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": key, "names": sorted(names)}, f)
            os.replace(tmp, folder / _NAMES_CACHE)  # a concurrent run reads the old file or this one, never half
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        log.debug("%s not written: %s", _NAMES_CACHE, err)


@functools.lru_cache(maxsize=1)
def _denied_distributions() -> tuple[str, ...]:
    """sparsekit's dependencies (extras included) and the tool distributions, with everything they
    depend on, as normalized names; sparsekit itself is left out (its own modules are in
    ``_TOOL_IMPORT_NAMES``; a user's modules beside an editable checkout must stay usable)."""
    return _denied_in(_installed())


Installed = dict[str, list[tuple[Any, list[str]]]]


def _installed() -> Installed:
    """Every distribution on ``sys.path`` (its str entries: a bytes one fails importlib.metadata), by normalized
    name: ``[(distribution, its Requires-Dist lines)]``, in path order. One pass, each METADATA parsed once: asking
    importlib.metadata for each name's requirements searched the path again for every one (~0.09 s of CPU)."""
    found: Installed = {}
    path = [entry for entry in sys.path if isinstance(entry, str)]
    for dist in importlib.metadata.distributions(path=path):
        try:
            meta = dist.metadata
            name = meta["Name"]
            if not name:
                continue
            reqs = meta.get_all("Requires-Dist")
            found.setdefault(_norm(name), []).append((dist, list(reqs) if reqs is not None else dist.requires or []))
        except Exception:  # noqa: BLE001, S112 - this distribution's metadata is what is broken: the others count
            continue
    return found


def _denied_in(installed: Installed) -> tuple[str, ...]:
    """:func:`_denied_distributions` among ``installed`` (:func:`_installed`)."""
    seen: set[str] = set()
    todo = [(name, False) for name in (*_TOOL_DISTRIBUTIONS, *_pytest_plugins())] + [("sparsekit", True)]
    while todo:
        dist, with_extras = todo.pop()
        dist = _norm(dist)
        if dist in seen:
            continue
        seen.add(dist)
        for _found, reqs in installed.get(dist, []):  # (every copy on the path: the union is the safer list)
            for req in reqs:
                name, _, marker = req.partition(";")
                if "extra" in marker and not with_extras:  # another package's optional extras: not installed
                    continue
                m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", name)
                if m:
                    todo.append((m.group(1), False))
    seen.discard("sparsekit")
    return tuple(sorted(seen))


def _pytest_plugins() -> list[str]:
    """The installed pytest plugins (entry point group ``pytest11``) named as such (``pytest-xdist``, ``pytest-cov``):
    test tooling, never a model or data package. pytest-xdist brings execnet, whose functions start any command line
    as a "gateway": a trusted pickle naming them ran one (only pytest's own distribution was on the tool list). Only
    those named ``pytest*``: any package may register a plugin (a lab's own model package sharing its fixtures,
    hydra-core, jaxtyping), and such a package and all it depends on were refused as "a tool package"."""
    try:
        plugins = {ep.dist.name for ep in importlib.metadata.entry_points(group="pytest11") if ep.dist}
    except Exception:  # noqa: BLE001 - broken metadata on the user's machine must not stop a run
        return []
    return sorted(name for name in plugins if _norm(name).startswith("pytest"))


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


@contextlib.contextmanager
def _cwd_appended() -> Iterator[None]:
    # Like `python -m`, a module in the current folder is importable, but only at the end of the
    # path (an installed package always wins) and only while the user-named module is imported.
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _import(module: str, where: str, error: type[SparsekitError]) -> types.ModuleType:
    importlib.invalidate_caches()  # a module written moments ago (generated, or by a test) is found
    try:
        with _cwd_appended(), global_rng_kept():
            return importlib.import_module(module)
    except KeyboardInterrupt:
        raise
    except ImportError as exc:
        # The README's and --help's examples name examples.models, which lives in the repository, not in the
        # installed package: say where it is rather than leave a wheel's user looking for it.
        hint = (
            " (examples/ is in the sparsekit repository, not in the installed package: run from a clone, or copy "
            "its examples folder into the current folder)"
            if module.split(".")[0] == "examples" and getattr(exc, "name", "") in ("examples", module)
            else f"; a module is named by its import name, not its file: {module.removesuffix('.py')!r}"
            if module.endswith(".py")
            else _near_module(module, exc)
        )
        raise error(
            f"{where}: cannot import module {module!r} ({one_line(exc)}); run from the folder that contains it "
            f"or install its package{hint}"
        ) from None
    except SystemExit as exc:
        raise error(f"{where}: importing {module!r} called sys.exit({exc.code!r})") from None
    except BaseException as exc:  # noqa: BLE001 - the user's module raised while importing
        raise error(f"{where}: importing {module!r} raised {one_line(exc)}") from None


def _near_module(module: str, exc: ImportError) -> str:
    """For a misspelt top-level module (``mynett`` beside ``mynet.py``): the module in the current folder whose
    name is closest, as a hint; else "". Only file names are read: nothing is imported."""
    top = module.split(".")[0]
    if getattr(exc, "name", None) != top:  # the module was found; something it imports was not
        return ""
    with contextlib.suppress(OSError):
        here = [
            entry.name.removesuffix(".py")
            for entry in os.scandir(".")
            if entry.name.endswith(".py")
            or (entry.is_dir() and os.path.isfile(os.path.join(entry.path, "__init__.py")))
        ]
        close = difflib.get_close_matches(top, [n for n in here if n.isidentifier()], n=1)
        if close:
            return f"; did you mean {close[0] + module[len(top) :]!r} (in the current folder)?"
    # Rightly spelt, but run from the wrong folder (`sparsekit prune proj/weights.pt ... --arch mynet:LeNet` from
    # proj's parent, or from inside the output folder): name the nearby folder that holds it, so the fix is a `cd`.
    elsewhere = _folder_holding(top)
    if elsewhere:
        return f"; {top!r} is in {elsewhere}/: run from that folder"
    return ""


def _folder_holding(top: str, most: int = 200) -> str:
    """The parent folder or a sub-folder of the current one (the first ``most`` of them, so a huge folder costs
    little) holding module ``top`` as ``top.py`` or a package; else "". Only file names are read."""

    def holds(folder: str) -> bool:
        return os.path.isfile(os.path.join(folder, f"{top}.py")) or os.path.isfile(
            os.path.join(folder, top, "__init__.py")
        )

    with contextlib.suppress(OSError):
        if holds(".."):
            return ".."
        with os.scandir(".") as entries:
            subfolders = sorted(
                entry.name
                for entry in itertools.islice(entries, most)
                if entry.is_dir() and not entry.name.startswith(".")
            )
        for name in subfolders:
            if holds(name):
                return name
    return ""


def _check_shape(obj: Any, where: str, kind: Kind, error: type[SparsekitError]) -> None:
    """A model factory is a function or an nn.Module class; a data callable is a function. Both must
    be defined outside the standard library and the tool/dependency packages (a user module that
    re-exports ``os.system`` is caught here)."""
    from torch import nn

    if isinstance(obj, type):
        if kind == "model" and issubclass(obj, nn.Module):
            return
        wanted = "an nn.Module class or a function returning one" if kind == "model" else "a function"
        raise error(f"{where}: is the class {obj.__qualname__}, not {wanted}; it is never run")
    if not isinstance(obj, types.FunctionType):
        what = "the model factory" if kind == "model" else "the function returning (train_loader, val_loader)"
        raise error(
            f"{where}: is a {type(obj).__name__} object, not a callable module-level Python function, so it is "
            f"never run; name {what}"
        )
    defined_in = getattr(obj, "__module__", None) or ""
    source = getattr(sys.modules.get(defined_in), "__file__", None)
    reason = (_denied(defined_in) or _denied_file(source)) if defined_in else "it has no module"
    if reason:
        raise TrustError(f"{where}: resolves to {defined_in}.{obj.__qualname__}: {reason}, so it is never run")
