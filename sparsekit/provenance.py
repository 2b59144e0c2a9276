"""What a resume checkpoint belongs to, and whether a resumed run still matches it.

A fine-tuning checkpoint (``checkpoints/last.pt``) records the *provenance* of the run that wrote it:
the resolved recipe (every field, overrides applied), and when the run came from the CLI the
SHA-256 of the model file, the architecture it was built with and the data source (a file's SHA-256,
a callable's module file's SHA-256, a built-in's name). A resume compares the run's provenance
with the checkpoint's before any training step: a run that mixed two models, two data sets or two
recipes in one history would report a result nobody asked for, so any difference is refused, naming
each field that changed. A few fields do not change what the checkpoint's epochs did (more epochs,
the device, what happens after training); the user may accept changes to those, one by one.

>>> saved = {"recipe": {"finetune": {"epochs": 3}}}
>>> now = {"recipe": {"finetune": {"epochs": 5}}}
>>> differences(saved, now)
{'finetune.epochs': (3, 5)}
>>> check_resume(saved, now, allowed=["finetune.epochs"])
{'finetune.epochs': (3, 5)}
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import SparsekitError, option

#: Recipe fields a resumed run may change when the user accepts it: they do not alter what the epochs
#: already trained did. A name ending in ``.`` covers a whole section (everything after training).
SAFE_CHANGES = ("finetune.epochs", "finetune.device", "finetune.log", "export.", "benchmark.")

# Recipe fields added since checkpoints were first written, with their defaults: a checkpoint written before one
# existed lacks it, which is no change while the recipe leaves it at the default (its run trained that way).
ADDED_FIELDS: dict[str, Any] = {"finetune.lr_schedule.hold_epochs": 0}

# Provenance keys that are not recipe fields, with the words that name them in an error.
_INPUTS = {
    "model_file": "the model file",
    "arch": "the architecture",
    "arch_code": "the architecture's code (its module's file)",
    "arch_deps": "the code of the modules of yours the architecture imports",
    "data": "the data source",
    "data_deps": "the code of the modules of yours the data callable imports",
}


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks (no copy of the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_identity(source: str) -> str:
    """What identifies a data source: ``name`` for a built-in, ``path sha256:HEX`` for a ``.npz`` file,
    ``pkg.module:callable sha256:HEX`` (the module's file) for a callable already imported; the name
    alone when there is no file to hash. Never imports anything. (The user's modules the callable's module
    imports are ``data_deps``, see :func:`provenance`.)"""
    # "~/d.npz" as the data loader reads it (it expands "~"): unexpanded, no file was found here, the name alone
    # was recorded, and a resume with other bytes in that file was not refused.
    path = Path(source).expanduser()
    if source.endswith(".npz") and path.is_file():
        return f"{path.name} sha256:{file_sha256(path)}"
    module_file = _module_file(source)
    if module_file is not None:
        return f"{source} sha256:{file_sha256(module_file)}"
    return source


def provenance(
    recipe: Mapping[str, Any],
    *,
    model_file: str | Path | None = None,
    arch: str | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """The provenance a checkpoint records: ``recipe`` (the resolved recipe as JSON data, e.g.
    ``Recipe.model_dump(mode="json")``) and, when known, the model file's SHA-256, the architecture
    (``pkg.module:callable``, optionally followed by its keyword arguments), the SHA-256 of the file of
    the architecture's module when it is imported (``arch_code``: the same name with other code in it, e.g. a
    ReLU made a Tanh, builds another model), the data source's identity (:func:`data_identity`), and
    ``arch_deps`` / ``data_deps``: the SHA-256 over the user's modules the architecture's (data callable's) module
    imports, when there are any (:func:`local_imports`; a helper's ReLU made a Tanh builds another model too).
    A checkpoint from before a key existed is not compared on it."""
    out: dict[str, Any] = {"recipe": dict(recipe)}
    if model_file is not None:
        out["model_file"] = f"sha256:{file_sha256(model_file)}"
    if arch is not None:
        out["arch"] = arch
        files = _arch_files(arch)
        if files:
            out["arch_code"] = f"sha256:{_files_digest(files)}"
            deps = local_imports(files)
            if deps:
                out["arch_deps"] = f"sha256:{_files_digest(deps)}"
    if data is not None:
        out["data"] = data_identity(data)
        module_file = _module_file(data)
        deps = local_imports([module_file]) if module_file is not None else []
        if deps:
            out["data_deps"] = f"sha256:{_files_digest(deps)}"
    return out


def _module_file(source: str) -> str | None:
    """The source file of the module of ``pkg.module:callable`` when it is imported and is a file; else None."""
    if ":" not in source:
        return None
    module = sys.modules.get(source.split(":", 1)[0])
    file = getattr(module, "__file__", None)
    return str(file) if isinstance(file, str) and Path(file).is_file() else None


def _arch_files(arch: str) -> list[str]:
    """The files of the architecture's module and of the module that defines the callable (a package's
    ``__init__`` may re-export it from another file), when they are imported and are files; sorted."""
    if ":" not in arch:
        return []
    module_name, _, rest = arch.partition(":")
    module = sys.modules.get(module_name)
    factory = getattr(module, rest.split(" ", 1)[0].split(".", 1)[0], None)
    defining_name = getattr(factory, "__module__", None)
    defining = sys.modules.get(defining_name) if isinstance(defining_name, str) else None
    files = [getattr(m, "__file__", None) for m in (module, defining)]
    return sorted({f for f in files if isinstance(f, str) and Path(f).is_file()})


def _files_digest(files: Iterable[str]) -> str:
    """SHA-256 over the files' own SHA-256s, in the order given (the one-file case: that file's digest hashed)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()


# At most this many files of the user's are read and hashed for one module's imports.
_MAX_LOCAL_FILES = 200


def local_imports(files: Sequence[str]) -> list[str]:
    """The user's own modules that the Python files ``files`` import, directly or through each other, sorted,
    ``files`` themselves left out: every ``import`` and ``from ... import`` statement in them (anywhere: a
    function's too), relative ones included, whose module is a ``.py`` file (or a package's ``__init__.py``)
    in the folder the first file is imported from, outside installed packages (site-packages, the
    interpreter's prefix) and sparsekit; then theirs, in turn, up to :data:`_MAX_LOCAL_FILES`.

    Read from the source, not from what is imported: the same files give the same list whatever was imported
    before, or when. Never imports or runs anything. The folder the first file is imported from is found by
    its module name in ``sys.modules`` (``/x`` for ``/x/nets.py``, or ``/x/pkg/nets.py`` as ``pkg.nets``);
    without one, its own folder."""
    given = [str(Path(f).resolve()) for f in files if f and Path(f).is_file()]
    if not given:
        return []
    root = _import_root(given[0])
    skip = [Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    skip = [s for s in [*skip, Path(__file__).resolve().parent] if not root.is_relative_to(s)]

    def local(path: Path) -> bool:
        return (
            path.is_file()
            and path.is_relative_to(root)
            and not any(part in ("site-packages", "dist-packages") for part in path.parts)
            and not any(path.is_relative_to(s) for s in skip)
        )

    def resolve(name: str) -> Path | None:
        if not name or not all(part.isidentifier() for part in name.split(".")):
            return None
        base = root.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if local(candidate.resolve()):
                return candidate.resolve()
        return None

    seen = set(given)
    found: list[str] = []
    todo = [Path(f) for f in given]
    while todo and len(found) < _MAX_LOCAL_FILES:
        path = todo.pop()
        for name in _imported_names(path, root):
            dep = resolve(name)
            if dep is not None and str(dep) not in seen and len(found) < _MAX_LOCAL_FILES:
                seen.add(str(dep))
                found.append(str(dep))
                todo.append(dep)
    return sorted(found)


def _imported_names(path: Path, root: Path) -> list[str]:
    """Every module name the file's import statements name (``a.b`` for ``import a.b``: ``a`` and ``a.b``; for
    ``from a import b``: ``a`` and ``a.b``, which is a module or a name in ``a``), relative ones made absolute
    by the file's place under ``root``. A file Python cannot parse names none; so does one its parser runs out of
    stack on (a generated expression of some 100,000 terms: RecursionError, or MemoryError for the parser's own)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    # The file's package, for relative imports: none for a file outside ``root`` (a factory re-exported from
    # another folder on the import path), whose relative imports are then not followed.
    package = list(path.relative_to(root).parts[:-1]) if path.is_relative_to(root) else None
    names: list[str] = []

    def with_parents(name: str) -> None:
        parts = name.split(".")
        names.extend(".".join(parts[: i + 1]) for i in range(len(parts)))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                with_parents(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1
                if package is None or up > len(package):
                    continue
                base = package[: len(package) - up]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            if module:
                with_parents(module)
            for alias in node.names:
                if alias.name != "*":
                    names.append(f"{module}.{alias.name}" if module else alias.name)
    return names


def _import_root(file: str) -> Path:
    """The folder ``file`` is imported from: its module's name in ``sys.modules`` tells how many folders up (one
    per dot, one more for a package's ``__init__.py``); a file no imported module has: its own folder."""
    path = Path(file).resolve()
    for name, module in list(sys.modules.items()):
        mfile = getattr(module, "__file__", None)
        # Resolving every module's file (~2,000 after torch and onnx are imported) took ~0.09 s of CPU a run: only a
        # file of the same name, or a link (which may have another), can be this one.
        if not isinstance(mfile, str) or not mfile:
            continue
        if (os.path.basename(mfile) == path.name or os.path.islink(mfile)) and Path(mfile).resolve() == path:
            levels = name.count(".") + (1 if path.name == "__init__.py" else 0)
            if levels < len(path.parents):
                return path.parents[levels]
    return path.parent


def recipe_record(recipe: Mapping[str, Any], device_type: str) -> dict[str, Any]:
    """The part of a resolved recipe (``Recipe.model_dump(mode="json")``) that a checkpoint records:
    ``model.factory`` and ``model.kwargs`` left out (the architecture in effect is recorded as ``arch``,
    wherever it was named: the checkpoint, the recipe or the command line), and ``finetune.device`` as
    the device type the run trains on (``cpu``, ``cuda``, ``mps``: ``auto`` and ``cpu`` are the same run
    on a machine without a GPU; torchrun's ranks each use their own ``cuda:N``)."""
    out = copy.deepcopy(dict(recipe))
    model = out.get("model")
    if isinstance(model, dict):
        model.pop("factory", None)
        model.pop("kwargs", None)
    finetune = out.get("finetune")
    if isinstance(finetune, dict):
        finetune["device"] = device_type
    return out


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every field that differs between two provenances, ``{dotted name: (saved, now)}``: recipe fields
    by their recipe path (``finetune.optimizer.lr``, ``pruning.0.sparsity``), the inputs as
    ``model_file``, ``arch``, ``data``. A key only one side has counts only when both sides have it at
    the top level (a checkpoint from a Python script has no ``model_file``: that is no difference)."""
    diff: dict[str, tuple[Any, Any]] = {}
    same_data = "data" in saved and "data" in now and _same_file(saved["data"], now["data"])
    for key in _INPUTS:
        if key in saved and key in now and saved[key] != now[key]:
            if key == "data" and same_data:
                continue  # the same .npz bytes under another name or folder (as for the model file)
            diff[key] = (saved[key], now[key])
    _walk(saved.get("recipe", {}), now.get("recipe", {}), "", diff)
    for key, default in ADDED_FIELDS.items():
        if key in diff and diff[key][0] is None:
            # The saved run predates the field and trained at its default: a change from it is named from that
            # value ("null then, 3 now" named a null the user never wrote, and no recipe may write).
            if diff[key][1] == default:
                del diff[key]
            else:
                diff[key] = (default, diff[key][1])
    if same_data:
        diff.pop("data.source", None)  # the recipe's path to those same bytes
    return diff


def change_lines(changes: Mapping[str, tuple[Any, Any]]) -> list[str]:
    """Accepted changes as the report lists them: ``finetune.epochs 2 -> 3``."""
    return [f"{k} {shown(a)} -> {shown(b)}" for k, (a, b) in changes.items()]


def _same_file(a: Any, b: Any) -> bool:
    """Whether two :func:`data_identity` values are the same ``.npz`` file's bytes, whatever its name."""
    parts = [str(v).rpartition(" sha256:") for v in (a, b)]
    return all(head.endswith(".npz") and digest for head, _, digest in parts) and parts[0][2] == parts[1][2]


def _walk(a: Any, b: Any, prefix: str, diff: dict[str, tuple[Any, Any]]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            _walk(a.get(key), b.get(key), f"{prefix}{key}.", diff)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, f"{prefix}{i}.", diff)
    elif a != b:
        diff[prefix.rstrip(".")] = (a, b)


def is_safe(field: str) -> bool:
    """Whether a resumed run may change ``field`` (a dotted recipe path) when the user accepts it."""
    return any(field == s or (s.endswith(".") and field.startswith(s)) for s in SAFE_CHANGES)


def refuse_one_string(allowed: object) -> None:
    """TypeError for ``allow_changes`` given as one string (``allow_changes="finetune.epochs"``): a string is
    iterable, and its letters were read as fields ("'f' cannot be changed on a resume: no recipe has that field")."""
    if isinstance(allowed, str | bytes):
        raise TypeError(f"allow_changes must be a list of recipe fields, not one string: allow_changes=[{allowed!r}]")


def check_allowed(allowed: Iterable[str]) -> list[str]:
    """The user's accepted changes, each a recipe field (or section) from :data:`SAFE_CHANGES`.
    Raises ValueError naming the first that is not one (TypeError for one string, :func:`refuse_one_string`)."""
    refuse_one_string(allowed)
    out = []
    for name in allowed:
        field = name.strip().rstrip(".")
        if not (is_safe(field) or any(s == field + "." for s in SAFE_CHANGES)):
            safe = [s.rstrip(".") for s in SAFE_CHANGES]
            meant = next(iter(difflib.get_close_matches(field, safe, n=1, cutoff=0.9)), None)  # a typo of one
            if meant:
                why = f"did you mean {meant!r}?"
            elif not _is_recipe_field(field):  # 'bogus.x' does not change anything: say it is no field at all
                why = "no recipe has that field."
            else:
                why = "it changes what the finished epochs did."
            raise ValueError(f"{name!r} cannot be changed on a resume: {why} Fields that can: {', '.join(safe)}")
        out.append(field)
    return out


def _is_recipe_field(field: str) -> bool:
    """Whether ``field`` (dotted) names a recipe field or section, as far as the schema's sections go: past a
    list or a method entry (``pruning.0.sparsity``) any name is taken to be one."""
    from pydantic import BaseModel

    from .recipe import Recipe  # here: provenance is imported by modules the recipe schema needs

    model: Any = Recipe
    for part in field.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return True
        info = model.model_fields.get(part)
        if info is None:
            return False
        model = info.annotation
    return True


def check_resume(
    saved: Mapping[str, Any] | None, now: Mapping[str, Any], *, allowed: Iterable[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """Compare a checkpoint's provenance (``saved``; None for checkpoints written before provenance was
    recorded: nothing to compare) with the resumed run's (``now``). Returns the accepted differences
    (fields in ``allowed``, see :func:`check_allowed`). Raises :class:`~sparsekit.errors.SparsekitError`
    naming every other difference, saying which of them could be accepted."""
    if not saved:
        return {}
    accepted = check_allowed(allowed)
    diff = differences(saved, now)

    def covered(field: str) -> bool:
        return any(field == a or field.startswith(a + ".") for a in accepted)

    refused = {k: v for k, v in diff.items() if not covered(k)}
    if refused:
        shown = describe_changes(refused)
        safe = [k for k in refused if is_safe(k)]
        if safe and len(safe) == len(refused):
            hint = f"to continue with the new value, accept the change: {option('allow_change', ','.join(safe))}"
        else:
            hint = "resume with what the checkpoint was written with"
        raise SparsekitError(f"the run changed since the checkpoint was written: {shown}; {hint}")
    return {k: v for k, v in diff.items() if covered(k)}


def describe_changes(diff: Mapping[str, tuple[Any, Any]]) -> str:
    """:func:`differences`' result as an error names it: ``finetune.optimizer.lr: 0.001 then, 0.01 now; ...``
    (the first six, then how many more)."""
    parts = [_describe(k, old, new) for k, (old, new) in diff.items()]
    return "; ".join(parts[:6]) + (f"; and {len(parts) - 6} more" if len(parts) > 6 else "")


def _describe(key: str, old: Any, new: Any) -> str:
    if key in _INPUTS:
        return f"{_INPUTS[key]} differs ({_short(old)} then, {_short(new)} now)"
    return f"{key}: {_short(old)} then, {_short(new)} now"


def shown(value: Any) -> str:
    """A recipe value as a recipe writes it: ``null``, ``true``, ``2`` for the float 2.0 that a whole number read
    into a float field becomes, lists and mappings in YAML's flow style; text as it is."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, str) and _reads_otherwise(value):
        return json.dumps(value)  # "null", "2", "": as a recipe must write that text
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    return str(value)


def _reads_otherwise(text: str) -> bool:
    """Whether YAML reads ``text`` written bare as something other than that text (null, a number, a bool)."""
    try:
        return yaml.safe_load(text) != text
    except yaml.YAMLError:
        return True


def _short(value: Any) -> str:
    text = shown(value)
    if text.startswith("sha256:") or " sha256:" in text:
        head, _, digest = text.rpartition("sha256:")
        text = f"{head}sha256:{digest[:12]}"
    return text if len(text) <= 60 else text[:57] + "..."
