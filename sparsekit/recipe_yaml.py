"""Reading recipe YAML as plain, bounded data, and ``key.path=value`` overrides
(``load_recipe(path, overrides=[...])``).

Recipes come from anywhere, so the reader accepts only what a page of settings holds: one UTF-8
YAML document of mappings with string keys, lists, strings, numbers, booleans and null, read with a
safe loader (no Python objects are ever built). Anything else — a huge file, deep nesting, an alias
bomb, a tag other than YAML's own scalar ones (``!!str``, ``!!int``, ``!!float``, ...), duplicate keys —
is a :class:`~sparsekit.errors.RecipeError` naming the file and line.

>>> data = read_yaml("my-recipe.yaml")
>>> data = apply_overrides(data, ["finetune.epochs=2", "pruning.0.sparsity=0.8"])
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError, option
from .errors import shorten as short
from .fsutil import dangling_link, near_file

# What a recipe file may hold. A recipe is a page of settings; these limits are orders of magnitude
# above any real one and stop hostile or broken input (huge files, deep nesting, alias bombs that
# expand to billions of nodes) before parsing, deep-copying or validating it takes forever.
MAX_TEXT_BYTES = 1_000_000
MAX_NODES = 100_000  # values in the document with every alias expanded
MAX_DEPTH = 64  # nesting of mappings/lists; PyYAML, deepcopy and pydantic all recurse
MAX_OVERRIDE_CHARS = 65_536  # one override item


def describe(value: Any) -> str:
    """How a non-JSON value reads to a user who wrote YAML, e.g. ``'a date/time (!!timestamp)'``."""
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time (!!timestamp)"
    if isinstance(value, bytes | bytearray):
        return "binary data (!!binary)"
    if isinstance(value, set | frozenset):
        return "a set (!!set)"
    return f"a {type(value).__name__}"


def _key_problem(key: Any) -> str:
    if isinstance(key, bool):
        return f"key {key!r} is not a name: YAML reads unquoted yes/no/on/off/true/false as booleans; quote the key"
    if key is None:
        return "a key is empty or null (~); every key is a name"
    return f"key {short(repr(key))} is not a name; quote it (e.g. '{short(str(key))}': ...)"


def check_plain_data(data: Any, source: str) -> None:
    """Refuse what no recipe holds, before anything walks it: values other than mappings with
    string keys, lists, strings, numbers, booleans and null; nesting deeper than MAX_DEPTH; more than
    MAX_NODES values with aliases expanded; aliases that contain themselves.

    PyYAML shares the object behind every use of an alias, so a few lines of ``&a [*b, *b, ...]``
    load instantly but expand to billions of values for anything that copies or validates them.
    Counting with a memo per shared object costs one visit per distinct object and stops early.
    Raises :class:`~sparsekit.errors.RecipeError` naming ``source`` and the path of the offending value."""
    sizes: dict[int, int] = {}  # id(container) -> values inside it, aliases expanded
    active: set[int] = set()  # containers on the current path: seeing one again is a cycle

    def fail(path: str, problem: str) -> RecipeError:
        return RecipeError(f"{source}: {short(path, 120)}: {problem}" if path else f"{source}: {problem}")

    def walk(value: Any, path: str, depth: int) -> int:
        if isinstance(value, str) and "\x00" in value:
            raise fail(path, "holds a NUL character (\\x00), which no setting takes; remove it")
        if value is None or isinstance(value, bool | int | float | str):
            return 1
        if not isinstance(value, dict | list):
            raise fail(path, f"{describe(value)} is not allowed; recipes hold only plain data, quote it if it is text")
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise fail(path, "refers to itself (a recursive YAML alias)")
        if depth >= MAX_DEPTH:
            raise fail(path, f"nested deeper than {MAX_DEPTH} levels; a recipe is a few levels deep")
        active.add(key)
        total = 1
        if isinstance(value, dict):
            children = []
            for k, v in value.items():
                if not isinstance(k, str):
                    raise fail(path, _key_problem(k))
                children.append((f"{path}.{short(k)}" if path else short(k), v))
        else:
            children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        for child_path, child in children:
            total += walk(child, child_path, depth + 1)
            if total > MAX_NODES:
                raise fail(
                    path,
                    f"expands to more than {MAX_NODES:,} values (YAML aliases are counted each time they are "
                    "used); a recipe is a page of settings",
                )
        active.discard(key)
        sizes[key] = total
        return total

    walk(data, "", 0)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` (no Python objects are ever built) with three changes for recipes:
    a duplicate key is an error instead of silently keeping the last value; unquoted dates stay
    strings (a recipe has no dates); a value its tag cannot build (``!!int abc``, ``2024-13-45``
    with ``!!timestamp``, ``!!bool maybe``) is a YAML error with a line, not a ValueError/KeyError."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._keys_checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Check before the merge (`<<: *base`) rewrites node.value: keys merged in may be overridden
        # legitimately, keys written twice may not. A merged node is flattened more than once.
        if id(node) not in self._keys_checked:
            self._keys_checked.add(id(node))
            seen: dict[tuple[str, str], Any] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    k = (key_node.tag, key_node.value)
                    if k in seen:
                        raise _DuplicateKey(
                            "while constructing a mapping",
                            node.start_mark,
                            f"found duplicate key {short(key_node.value)!r} (first written on line "
                            f"{seen[k].line + 1}); remove one of them",
                            key_node.start_mark,
                        )
                    seen[k] = key_node.start_mark
        super().flatten_mapping(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node.tag in _COLLECTION_TAGS:
            # PyYAML builds !!omap and !!pairs as lists of tuples, !!set as a set: "finetune[0]: a tuple is not
            # allowed" named neither the tag nor the line. Refused as any other tag a recipe does not take (and in
            # an override too, as the set it built was: not kept as text).
            raise _CollectionTag(
                None, None, f"could not determine a constructor for the tag '{node.tag}'", node.start_mark
            )
        if isinstance(node, yaml.ScalarNode) and node.tag in _NUMBER_TAGS:
            problem = number_problem(str(node.value))
            if problem:
                raise _NumberProblem(None, None, problem, node.start_mark)
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as err:
            what = f" {short(node.value)!r}" if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read{what} as {_tag(node.tag)} ({type(err).__name__}: {err})", node.start_mark
            ) from None


class _NumberProblem(yaml.constructor.ConstructorError):
    """A number written so that it cannot be read as its value (:func:`number_problem`): never text either."""


class _CollectionTag(yaml.constructor.ConstructorError):
    """``!!omap``, ``!!pairs`` or ``!!set``: YAML's own collection tags, which build no plain data."""


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key written twice in one mapping: YAML that was read, so never taken as text either."""


class _RefusedValue(RecipeError):
    """:class:`_NumberProblem`, :class:`_DuplicateKey` or :class:`_CollectionTag` as a recipe error: an override
    value holding one is refused, not kept as text (the override ``finetune={epochs: 3, epochs: 4}`` said "must be
    a mapping (got text ...)", hiding the key written twice)."""


# Python refuses to read whole numbers longer than this (sys.get_int_max_str_digits()'s default).
MAX_INT_DIGITS = 4300


def number_problem(text: str) -> str | None:
    """Why the number written as ``text`` cannot be read as its value, or None: a whole number too long for
    Python to read, or a float so small it would silently become 0 (``1e-400``)."""
    t = text.strip().replace("_", "")
    if re.fullmatch(r"[-+]?[0-9]+", t) and len(t.lstrip("+-")) > MAX_INT_DIGITS:
        return f"a whole number with {len(t.lstrip('+-')):,} digits; no setting takes one near that large"
    if re.fullmatch(r"[-+]?0[0-7]+", t):  # YAML 1.1 reads 010 as octal 8, a surprise in a count of epochs
        digits = t.lstrip("+-").lstrip("0") or "0"
        return f"{short(text)} starts with 0, which YAML reads as an octal number ({t} is {int(t, 8)}); write {digits}"
    mantissa = re.split("[eE]", t)[0]
    if re.fullmatch(r"[-+]?([0-9]*\.[0-9]*|[0-9]+)([eE][-+]?[0-9]+)?", t) and re.search(r"[1-9]", mantissa):
        try:
            value = float(t)
        except (ValueError, OverflowError):
            return None
        if value == 0.0:
            return f"{short(text)} is too small for a 64-bit float: it would be read as 0"
    return None


def _no_base60(regexp: re.Pattern[str]) -> re.Pattern[str]:
    # YAML 1.1 reads 1:30:00 as the base-60 number 5400: in a recipe that is a typo, not a number.
    return re.compile("^(?![^\n]*:)" + regexp.pattern.removeprefix("^"), regexp.flags)


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_COLLECTION_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("omap", "pairs", "set"))
_RecipeLoader.yaml_implicit_resolvers = {
    first: [
        (tag, _no_base60(regexp) if tag in _NUMBER_TAGS else regexp)
        for tag, regexp in resolvers
        if tag != "tag:yaml.org,2002:timestamp"
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.1 (PyYAML) reads 1e-3 and 1.5e3 as text: its floats need a dot and a signed exponent (1.0e-3, 1.5e+3).
# YAML 1.2 and every other tool
# read it as a number, and it is how learning rates and L1 strengths are written. Checked after the
# int and float resolvers, so 3 stays an int and 1.5 a float.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
for _first in "-+.0123456789":
    _RecipeLoader.yaml_implicit_resolvers.setdefault(_first, []).append(("tag:yaml.org,2002:float", _EXPONENT_FLOAT))


def _tag(tag: str | None) -> str:
    return short(str(tag).replace("tag:yaml.org,2002:", "!!"))


# YAML reads a plain `key: value` key of at most 1024 characters (the spec's limit on an implicit key).
MAX_IMPLICIT_KEY = 1024


def _long_key(text: str, mark: Any) -> int | None:
    """The length of the implicit key that ends at (or just after) ``mark`` in ``text`` when it is longer than
    YAML allows, else None. PyYAML reports such a key as "could not find expected ':'", "mapping values are not
    allowed here" or "expected ',' or '}', but got ':'" (by where the key stands), none saying why."""
    if mark is None:
        return None
    lines = text.splitlines()
    if not 0 <= mark.line < len(lines):
        return None
    line = lines[mark.line]
    colon = line.find(":", mark.column)
    if colon < 0:
        return None
    # the key: the text before the colon, after the indentation, a list's "- " and a flow mapping's "{" or ","
    key = re.split(r"[{,]\s*", line[:colon].lstrip(" -"))[-1].strip()
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
        key = key[1:-1]
    if ": " in key:  # a long value holding a colon (`note: ...: x`): some other fault
        return None
    return len(key) if len(key) > MAX_IMPLICIT_KEY else None


def _modifier_hint(tag: str) -> str:
    """For a SparseML recipe's ``!GlobalMagnitudePruningModifier`` tag: what sparsekit writes instead; else ""."""
    from .recipe import foreign_method  # recipe imports this module

    name = tag.removeprefix("!")
    if not name.endswith("Modifier"):
        return ""
    foreign = foreign_method(name)
    if foreign:
        return (
            f"; a SparseML modifier is written as a pruning entry: {foreign[0]} (pruning: [{{method: {foreign[1]}}}])"
        )
    if name == "EpochRangeModifier":
        return "; a SparseML modifier: its end_epoch is sparsekit's finetune.epochs"
    return "; a SparseML modifier: write its settings as sparsekit keys (pruning entries, finetune)"


def _yaml_problem(err: yaml.YAMLError, text: str = "") -> tuple[str, Any]:
    """(what is wrong, mark) for a PyYAML error, in a user's words."""
    problem = str(getattr(err, "problem", None) or "")
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    long_key = _long_key(text, mark) if isinstance(err, yaml.scanner.ScannerError | yaml.parser.ParserError) else None
    if long_key:
        return (
            f"a key of {long_key:,} characters: YAML reads a `key: value` key of at most {MAX_IMPLICIT_KEY:,}; "
            "shorten it, or write it as an explicit key: `? KEY` on one line, then `: VALUE` on the next",
            mark,
        )
    if isinstance(err, yaml.reader.ReaderError):
        return f"invalid YAML: {err.reason} (character {err.character!r} at offset {err.position})", None
    if isinstance(err, yaml.constructor.ConstructorError):
        tag = re.search(r"for the tag '([^']*)'", problem)
        if tag:
            return (
                f"YAML tag not allowed ({_tag(tag.group(1))}); recipes are plain data: mappings, lists, "
                f"strings, numbers, true/false and null{_modifier_hint(tag.group(1))}",
                mark,
            )
        if "unhashable key" in problem:
            return "a key is itself a list or mapping (a `? ` complex key); keys are plain names", mark
        context = f"{err.context}: " if err.context and "duplicate" not in problem else ""
        return f"invalid YAML value: {context}{problem}", mark
    if "'\\t'" in problem or "tab character" in problem:
        # PyYAML's "found character '\t' that cannot start any token" did not say that tabs are the fault: editors
        # and other tools' recipes indent with them, and YAML allows only spaces there.
        return (
            "a tab character: YAML indents (and separates a key from its value) with spaces only; replace the tab "
            "with spaces",
            mark,
        )
    if isinstance(err, yaml.composer.ComposerError) and "single document" in str(err.context or ""):
        return "holds more than one YAML document (separated by ---); a recipe is one document", mark
    return f"invalid YAML: {problem or short(str(err), 300)}", mark


def _parse_yaml(text: str, source: str) -> Any:
    """One YAML document as plain Python data; every failure is a RecipeError naming the line."""
    loader = None
    try:
        loader = _RecipeLoader(text)  # the reader refuses control characters already here
        return loader.get_single_data()
    except yaml.YAMLError as err:
        problem, mark = _yaml_problem(err, text)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        kind = _RefusedValue if isinstance(err, _NumberProblem | _DuplicateKey | _CollectionTag) else RecipeError
        raise kind(f"{source}{where}: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{source}: nested deeper than {MAX_DEPTH} levels; a recipe is a few levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def _as_setting(item: str) -> str:
    """The ``key.path=value`` an override without ``=`` most likely meant, for the error's example: YAML's
    ``key: value`` (or ``key:value``) joined by ``=``, a lone key given ``=VALUE``; a generic example when the
    text is no key path at all."""
    key, colon, value = item.partition(":")
    key, value = key.strip(), value.strip()
    if not re.fullmatch(r"[A-Za-z_][\w-]*(?:(?:\.|\[)\w+\]?)*", key):
        return "finetune.epochs=2"
    if not colon:
        return f"{key}=VALUE"
    return f"{key}={value or 'VALUE'}"


def _parse_value(text: str, item: str) -> Any:
    where = option("set", short(item, 120))
    problem = number_problem(text)
    if problem:  # a number, but not one that can be read as itself: not a string either
        raise RecipeError(f"{where}: {problem}")
    try:
        value = _parse_yaml(text, where)
    except _RefusedValue:
        raise  # {lr: 1e-400} or {epochs: 3, epochs: 4}: YAML, with a number that would change or a key twice
    except RecipeError:
        return text  # not YAML: the words as a string (a path, a glob, ...), as before
    check_plain_data(value, where)
    return value


def dotted_path(path: str) -> str:
    """A field path as overrides spell it: ``pruning[0].sparsity`` -> ``pruning.0.sparsity``."""
    return re.sub(r"\[(\d+)\]", r".\1", path)


# An index is ASCII digits: '²'.isdigit() is True but int('²') raises; 9 digits is past any list.
_INDEX = re.compile(r"[0-9]{1,9}")


def _unshared_copy(value: Any) -> Any:
    """A copy of plain data in which every mapping and list is its own. YAML aliases (``schedule: *s`` in two
    pruning entries) and deepcopy share one object between their uses, so an override of one use
    (``pruning.0.schedule.end_epoch=2``) silently changed every other use too."""
    if isinstance(value, dict):
        return {k: _unshared_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared_copy(v) for v in value]
    return value


def override_list(overrides: Any) -> list[Any]:
    """``overrides`` (a list, tuple or other iterable of ``key.path=value`` strings) as a list, read once. One
    string is iterable too, and its characters were read as overrides (``overrides=['f']: expected
    key.path=value``): a :class:`~sparsekit.errors.RecipeError` showing the list it belongs in, as for any value
    that is not an iterable."""
    if isinstance(overrides, str | bytes) or not isinstance(overrides, Iterable):
        one = isinstance(overrides, str)
        example = option("set", short(overrides, 120) if isinstance(overrides, str) else "finetune.epochs=2")
        what = "one string" if one else f"a {type(overrides).__name__}"
        raise RecipeError(f"overrides must be a list of 'key.path=value' strings, not {what}: e.g. {example}")
    return list(overrides)


def apply_overrides(
    data: dict[str, Any],
    overrides: list[str],
    check_key: Callable[[Sequence[str], str, dict[str, Any]], str | None] | None = None,
    expand: Callable[[Sequence[str], Any, dict[str, Any]], Any] | None = None,
    check_value: Callable[[Sequence[str], dict[str, Any]], str | None] | None = None,
    source: str | os.PathLike[str] = "recipe",
) -> dict[str, Any]:
    """A copy of ``data`` (a recipe's plain data) with ``key.path=value`` overrides applied in order
    (list items by index: ``pruning.0.sparsity=0.8``). Each value is read as YAML (``0.8``, ``true``,
    ``[1, 28, 28]``, ``null``), or kept as text when it is not YAML; missing mappings on the path are
    created. ``data`` itself is not changed.

    ``check_key(parents, key, data)`` (the schema's, from :func:`sparsekit.recipe.load_recipe`; this
    module knows no schema) is asked about every key on a path that ``data`` does not hold yet: the
    problem it returns (``"unknown key; did you mean 'epochs'?"``) is the error, naming the override.
    ``expand(path, value, data)`` (the schema's too) is asked for the mapping a plain value or list on the path
    stands for (``schedule: oneshot``, ``layers: [fc1]``), so that a key inside it can be set.
    ``check_value(path, data)`` (the schema's too) is asked, when a path runs into a plain value or a list that
    ``source`` wrote (no earlier override set it), what is wrong with that value itself: with ``finetune: 5`` the
    recipe is at fault, and its problem is the error, naming ``source``.

    Raises :class:`~sparsekit.errors.RecipeError` naming the override when it is not a
    ``key.path=value`` string, is longer than ``MAX_OVERRIDE_CHARS``, has an empty or too deep key, an
    index outside its list, a path through a plain value, a key ``check_key`` refuses, or a value that
    is not plain data."""
    if not isinstance(data, dict):
        raise RecipeError(f"the recipe must be a YAML mapping to apply overrides to (got {type(data).__name__})")
    overrides = override_list(overrides)
    check_plain_data(data, "recipe")  # bounded (aliases expanded) before the copy below walks it
    data = _unshared_copy(data)
    overridden: set[tuple[str, ...]] = set()  # the paths earlier overrides set: what they hold is no fault of source's

    def blocked(parts: list[str], depth: int, shown: str, why: str) -> RecipeError:
        # The path runs into a value that is not a mapping (or a list, for a key that is not an index) at
        # parts[:depth]. When the recipe wrote it and the schema refuses it there (`finetune: 5`), the recipe is
        # at fault, not the override: "--set finetune.epochs=2: 'finetune' is a value, not a mapping".
        here = tuple(parts[:depth])
        if check_value is not None and not any(here[:i] in overridden for i in range(1, depth + 1)):
            problem = check_value(here, data)
            if problem:
                return RecipeError(f"{os.fspath(source)}: {problem}; fix it there ({shown} sets a key inside it)")
        return RecipeError(f"{shown}: {why}")

    for item in overrides:
        if not isinstance(item, str):
            raise RecipeError(f"override {short(repr(item))}: expected a 'key.path=value' string")
        shown = option("set", short(item, 120))  # as the caller wrote it: --set ... (overrides=[...] in Python)
        if len(item) > MAX_OVERRIDE_CHARS:
            raise RecipeError(f"{shown}: longer than {MAX_OVERRIDE_CHARS:,} characters")
        if "=" not in item:
            raise RecipeError(f"{shown}: expected key.path=value, e.g. {option('set', _as_setting(item))}")
        key, _, raw = item.partition("=")
        key = dotted_path(key.strip())  # pruning[0].sparsity, as errors print paths
        parts = key.split(".")
        if any(not part.strip() for part in parts):
            raise RecipeError(
                f"{shown}: empty part in the key {short(key, 120)!r}; expected key.path=value, "
                f"e.g. {option('set', 'pruning.0.sparsity=0.8')}"
            )
        if len(parts) > MAX_DEPTH:
            raise RecipeError(f"{shown}: a key path of {len(parts)} parts is deeper than any recipe")
        value = _parse_value(raw, item)
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = short(".".join(parts[: depth + 1]), 120)
            if isinstance(node, list):
                if not _INDEX.fullmatch(part) or int(part) >= len(node):
                    raise blocked(parts, depth, shown, _not_an_index(parts, depth, len(node)))
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                problem = check_key(parts[:depth], part, data) if check_key and part not in node else None
                if problem:
                    raise RecipeError(f"{shown}: {where}: {problem}")
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:  # absent or `key: null`: a new mapping to fill in
                        # pruning.0.sparsity with no pruning list (elsewhere a digit is a key: layer_ratio.0)
                        if depth == 0 and part == "pruning" and _INDEX.fullmatch(parts[1]):
                            example = option("set", "pruning=[{method: magnitude, sparsity: 0.8}]")
                            raise RecipeError(
                                f"{shown}: the recipe has no pruning list to take item {parts[1]} of; give the whole "
                                f"list, e.g. {example}"
                            )
                        node[part] = {}
                    elif expand is not None and not isinstance(node[part], dict):
                        inner = node[part]
                        if not (isinstance(inner, list) and _INDEX.fullmatch(parts[depth + 1])):
                            # A shorthand the schema reads as a mapping (`schedule: oneshot`, `layers: [fc1]`): an
                            # override of a key inside it failed as "'pruning.0.schedule' is a value, not a mapping".
                            node[part] = expand(parts[: depth + 1], inner, data)
                    node = node[part]
            else:
                raise blocked(parts, depth, shown, f"{short('.'.join(parts[:depth]), 120)!r} is a value, not a mapping")
        overridden.add(tuple(parts))
    return data


def _not_an_index(parts: list[str], depth: int, size: int) -> str:
    """Why ``parts[depth]`` names no item of the list of ``size`` at ``parts[:depth]``, and the way out: an override
    sets an item the recipe has; it cannot add one (``pruning.1`` of a one-entry list), the whole list can be given."""
    where = short(".".join(parts[: depth + 1]), 120)
    listed = short(".".join(parts[:depth]), 120)
    last = f" to {listed}.{size - 1}" if size > 1 else ""
    have = f"its items are {listed}.0{last}" if size else "it is empty"
    if not _INDEX.fullmatch(parts[depth]):
        return f"{where!r} is not an index of a list of {size} ({have})"
    return (
        f"{where!r} is not an index of a list of {size} ({have}): an override sets an item the recipe has and cannot "
        f"add one; write the new item in the recipe, or give the whole list with it as YAML, e.g. "
        f"{option('set', listed + '=[{...}, {...}]')}"
    )


def _model_file_kind(head: bytes) -> str | None:
    """What model file ``head`` (a file's first 16 bytes) starts like, or None: a zip archive (torch.save's
    format), a pickle, safetensors (an 8-byte header length, then its JSON header) or ONNX (a protobuf whose
    first field is ir_version: tag 0x08, then a small version number)."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch.save model file?)"
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return "a Python pickle (a model file?)"
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 1 << 32:  # (text: >= 2**61)
        return "a safetensors file"
    if len(head) >= 2 and head[0] == 0x08 and 3 <= head[1] <= 20:
        return "an ONNX model (by its first bytes)"
    return None


def _npz_start(raw: bytes) -> bool:
    """Whether ``raw`` starts as ``numpy.savez`` writes: a zip archive whose first member is an ``.npy`` array
    (torch.save's members sit in a folder, ``archive/data.pkl``). Read from the first local header, so a file cut
    at the size limit is told all the same."""
    if not raw.startswith(b"PK\x03\x04") or len(raw) < 30:
        return False
    length = int.from_bytes(raw[26:28], "little")
    name = raw[30 : 30 + length]
    return name.endswith(b".npy") and b"/" not in name


def _shipped_hint(path: Path) -> str:
    """For a recipe file not found: the shipped recipe its name means (the repository's ``recipes/x.yaml`` from
    another folder or a wheel install, a misspelled name), else where the shipped ones are listed."""
    import difflib

    from .recipe_catalog import shipped_recipes

    try:
        names = [row["name"] for row in shipped_recipes()]
    except RecipeError:
        return ""
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if stem in names:
        return f"; a shipped recipe has that name: give {stem!r} (its name, without a folder)"
    close = difflib.get_close_matches(stem, names, n=1)
    if close:
        return f"; did you mean the shipped recipe {close[0]!r}? (`sparsekit recipes` lists them)"
    # (the library raises this too: a script's author is told the Python way beside the command)
    return " (shipped ones: `sparsekit recipes`, or sparsekit.shipped_recipes() in Python)"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The recipe file at ``path`` as plain data: a mapping with string keys of lists, strings,
    numbers, booleans and null (at most ``MAX_TEXT_BYTES`` of UTF-8 YAML, one document, no tags but YAML's own
    scalar ones, no duplicate keys or dates). Raises :class:`~sparsekit.errors.RecipeError` naming the file (and the
    line, for YAML errors) when it is missing, unreadable, too large, not UTF-8, not YAML, empty, not a
    mapping or holds anything but plain data."""
    path = Path(path)
    pipe = False
    try:
        if str(path) == "-" and not path.exists():  # Unix tools' stdin
            raise RecipeError(
                "-: recipe file not found; sparsekit reads no recipe from standard input: give the recipe's path "
                "(a shell's <(command) works)"
            )
        if not path.exists():
            # A link to nothing is no missing name: "recipe file not found" pointed at the link, which is there.
            raise RecipeError(
                dangling_link(path) or f"{path}: recipe file not found{near_file(path) or _shipped_hint(path)}"
            )
        if path.is_dir():
            raise RecipeError(f"{path}: is a directory, expected a YAML recipe file")
        mode = path.stat().st_mode
        pipe = stat.S_ISFIFO(mode)
        if pipe:
            # A pipe: `<(cat r.yaml)` from a shell. Opened without waiting (a named pipe nobody writes to blocked
            # forever), then read to its end: empty when nobody writes.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb") as f:
                raw = f.read(MAX_TEXT_BYTES + 1)
        elif not stat.S_ISREG(mode):  # a device (/dev/zero never ends) or a socket
            raise RecipeError(f"{path}: is not a regular file (a device or socket); give the recipe file itself")
        else:
            # Read at most one byte past the limit (a file may grow while it is read).
            with path.open("rb") as f:
                raw = f.read(MAX_TEXT_BYTES + 1)
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        # OSError's text repeats the path, whole: strerror alone after the path cut short (ENAMETOOLONG's is 6 kB).
        reason = getattr(err, "strerror", None) or err
        raise RecipeError(f"{short(str(path), 200)}: cannot read the recipe ({reason})") from None
    if _npz_start(raw):  # data, not a model: "check the order of the arguments" would not help
        raise RecipeError(
            f"{path}: a numpy .npz archive (data), not a recipe; a recipe is YAML and names such a file in its "
            "data.source: start from a shipped one (`sparsekit recipes`)"
        )
    kind = _model_file_kind(raw[:16])
    if kind:  # the commonest slip: prune and sensitivity take MODEL RECIPE, validate RECIPE [MODEL]
        raise RecipeError(
            f"{path}: {kind}, not a recipe; check the order of the arguments: `sparsekit prune MODEL RECIPE`, "
            "`sparsekit sensitivity MODEL RECIPE`, `sparsekit validate RECIPE [MODEL]`"
        )
    if len(raw) > MAX_TEXT_BYTES:
        raise RecipeError(
            f"{path}: larger than {MAX_TEXT_BYTES:,} bytes; a recipe is a page of settings (is this the right file?)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); save the recipe as UTF-8"
        ) from None
    # Parsed with a safe loader only: a recipe never constructs Python objects (!!python/... is refused).
    data = _parse_yaml(text, str(path))
    if data is None and pipe and not raw:
        # A named pipe nothing had written to (mkfifo, or a writer not started yet): "the recipe is empty" sent
        # the user to a file that is not one.
        raise RecipeError(
            f"{path}: a pipe with nothing written to it (a named pipe is read without waiting for a writer); give "
            "the recipe file itself, or start what writes to the pipe first"
        )
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty; start from a shipped one (`sparsekit recipes`)")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: {not_a_mapping(data)}")
    check_plain_data(data, str(path))
    return data


def not_a_mapping(data: Any) -> str:
    """Why a recipe that is not a mapping is refused, and, for a list of mappings (a file holding only the pruning
    steps, as NNI's config_list is written), where such a list goes."""
    why = f"the recipe must be a YAML mapping (got {type(data).__name__})"
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        why += (
            "; a list of pruning entries goes under the key pruning: write `version: 1` and `pruning:` on lines "
            "of their own above it, the list indented under pruning:"
        )
    return why
