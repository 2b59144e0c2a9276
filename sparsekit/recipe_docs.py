"""The recipe reference, ``docs/recipe.md``, generated from the schema in :mod:`sparsekit.recipe`.

Every section and every ``method:`` gets a table of its keys (type, default, constraint, description),
read from the pydantic models' fields: their annotations, constraints, defaults and ``description=``
texts. The page is never edited by hand; change the schema and regenerate it. A minimal example recipe
per method is validated while the page is built, and ``tests/test_recipe_docs.py`` fails when the
committed page and the schema disagree.

>>> page = render()
>>> "### method: structured" in page
True
"""

# Regenerate:  python -m sparsekit.recipe_docs
# Check:       python -m sparsekit.recipe_docs --check   (exit 1, naming the first difference, when stale)

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .errors import option
from .errors import render as render_options
from .recipe import (
    METHOD_NAMES,
    METHOD_SPECS,
    MISPLACED_KEYS,
    RECIPE_DOCS,
    Recipe,
    load_recipe,
)
from .recipe_vocabulary import FOREIGN_KEYS, FOREIGN_METHODS, PER_LAYER, SIZE


def source_page(package_dir: Path) -> Path | None:
    """``docs/recipe.md`` of the source tree the package folder ``package_dir`` is in; None for an installed
    package, whose parent folder is site-packages: a page written there would be a stray ``docs/`` folder that
    no uninstall removes."""
    tree = package_dir.parent
    return tree / RECIPE_DOCS if (tree / "pyproject.toml").is_file() else None


DEFAULT_OUTPUT = source_page(Path(__file__).resolve().parent)
"""``docs/recipe.md`` of the source tree this package is in (None when installed)."""
COMMAND = "python -m sparsekit.recipe_docs"

# One minimal, complete recipe per method: each is validated with the real loader while the page is built
# (and again, read back from the page, by the tests). Model and data are the command line's or a
# checkpoint's; these show what the method itself needs.
EXAMPLES: dict[str, str] = {
    "magnitude": """\
version: 1
finetune: {epochs: 4}
pruning:
  - method: magnitude
    sparsity: 0.9                            # 90% of the selected weights become zero
    schedule: {start_epoch: 0, end_epoch: 3}  # gradual (cubic); or: schedule: oneshot
""",
    "gradient": """\
version: 1
finetune: {epochs: 4}
pruning:
  - method: gradient
    criterion: taylor                        # or movement
    sparsity: 0.8
    schedule: {start_epoch: 1, end_epoch: 3}
""",
    "l1": """\
version: 1
finetune: {epochs: 5}
pruning:
  - method: l1
    strength: 1.0e-3                         # lambda in loss + lambda * sum of the unit norms
    mode: proximal                           # shrink by lr * lambda after each optimizer step
    group: row                               # whole neurons (Linear rows) go to zero, then are removed
    target: 0.5                              # half the neurons zero by end_epoch: lambda adapts
    schedule: {start_epoch: 0, end_epoch: 3}
""",
    "max_norm": """\
version: 1
finetune: {epochs: 3}
pruning:
  - method: max_norm
    max_value: 3.0
""",
    "structured": """\
version: 1
finetune: {epochs: 4}
pruning:
  - method: structured
    ratio: 0.5                               # not sparsity: half of the output channels are removed
    steps: 2
    schedule: {start_epoch: 0, end_epoch: 2}
""",
}

COLUMNS = ("Key", "Type", "Default", "Constraint", "Description")

INTRO = f"""\
A recipe is one YAML document with `version: 1`: plain data (mappings, lists, strings, numbers, true/false,
null; no tags but YAML's own scalar ones (!!str, !!int, ...), no duplicate keys, under 1 MB of UTF-8). Every
section is optional and every key not written takes the default shown below. Start from a shipped recipe
(`sparsekit recipes` lists them) and check yours with `sparsekit validate RECIPE [MODEL]`.

- **Unknown keys are errors**, naming their path and the key most likely meant
  (`finetune.epoch: unknown key; did you mean 'epochs'?`), or the section a key written in the wrong one
  belongs in (`data.epochs: unknown key here; epochs is a key of finetune: write it as finetune: {{epochs: ...}}`).
- **Each method has its own keys.** `magnitude` and `gradient` are sized by `sparsity` (the fraction of
  weights set to zero), `structured` by `ratio` (the fraction of output channels removed), `l1` by
  `strength` (lambda) or a `target` fraction, `max_norm` by `max_value`; see [the methods at a
  glance](#methods-at-a-glance).
- **Numbers** must be finite and inside the range in the Constraint column (`x` is the value); checks that
  involve several keys (e.g. `end_epoch <= finetune.epochs`) are in the descriptions.
- **Overrides**: any key can be changed for one run with `{option("set", "key.path=value")}`, list items by
  index (`{option("set", "pruning.0.sparsity=0.8")}`); the value is read as YAML (`0.8`, `true`,
  `[1, 28, 28]`, `null`) and the whole recipe is validated again. A schedule must still end by the last
  fine-tuning epoch, so fewer epochs may need an earlier `end_epoch` too:
  `{option("set", "finetune.epochs=2")} {option("set", "pruning.0.schedule.end_epoch=2")}`.
- **Default** `required` means the key has no default and must be written.
"""


def _cli_spelling(name: str, value: str) -> str:
    # The page is read by command-line users: options as the CLI's flags (it alone knows them).
    from .cli import FLAGS

    return f"{FLAGS.get(name, name)} {value}".strip()


SPECS: dict[str, type[BaseModel]] = dict(zip(METHOD_NAMES, METHOD_SPECS, strict=True))

# --- types, constraints and defaults -------------------------------------------------------------------

_KIND = {int: "integer", float: "number", str: "string", bool: "true/false", type(None): "null", Any: "any value"}
_PLURAL = {"integer": "integers", "number": "numbers", "string": "strings", "mapping": "mappings"}


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return f"{value:g}"


def _yaml(value: Any) -> str:
    """``value`` as it would be written in a recipe (YAML flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _limits(metadata: Sequence[Any]) -> list[str]:
    """The constraints in pydantic/annotated-types ``metadata`` in words: ``0 <= x < 1``, ``1 to 64 items``."""
    flat: list[Any] = []
    for m in metadata:
        flat.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    # (operator as read left to right, bound): 0 < x, x <= 100
    low: tuple[str, Any] | None = next(((">", m.gt) for m in flat if isinstance(m, at.Gt)), None)
    low = low or next(((">=", m.ge) for m in flat if isinstance(m, at.Ge)), None)
    high: tuple[str, Any] | None = next((("<", m.lt) for m in flat if isinstance(m, at.Lt)), None)
    high = high or next((("<=", m.le) for m in flat if isinstance(m, at.Le)), None)
    out = []
    if low and high:
        out.append(f"{_number(low[1])} {low[0].replace('>', '<')} x {high[0]} {_number(high[1])}")
    elif low:
        out.append(f"x {low[0]} {_number(low[1])}")
    elif high:
        out.append(f"x {high[0]} {_number(high[1])}")
    shortest = next((m.min_length for m in flat if isinstance(m, at.MinLen)), None)
    longest = next((m.max_length for m in flat if isinstance(m, at.MaxLen)), None)
    if shortest is not None and longest is not None:
        out.append(f"{_number(shortest)} to {_number(longest)} entries")
    elif longest is not None:
        out.append(f"at most {_number(longest)} entries")
    elif shortest is not None:
        out.append(f"at least {_number(shortest)} entries")
    return out


def _describe(tp: Any) -> tuple[str, list[str]]:
    """(the kind of value ``tp`` takes, in words; its constraints in words)."""
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *metadata = get_args(tp)
        kind, limits = _describe(inner)
        return kind, _limits(metadata) + limits
    if origin is Literal:
        values = get_args(tp)
        kind = " or ".join(dict.fromkeys(_KIND[type(v)] for v in values))
        shown = ", ".join(f"`{_yaml(v)}`" for v in values)
        return kind, [shown if len(values) == 1 else f"one of {shown}"]
    if origin in (Union, UnionType):
        alternatives = get_args(tp)
        parts = [_describe(a) for a in alternatives]
        kind = " or ".join(dict.fromkeys(k for k, _ in parts))
        allowed = [_literals(a) for a in alternatives]
        if all(vs is not None for vs in allowed):  # e.g. auto | true | false: one list of values
            return kind, [f"one of {', '.join(f'`{_yaml(v)}`' for vs in allowed for v in vs or ())}"]
        limits = [", ".join(lim) for k, lim in parts if lim]
        return kind, [" or ".join(limits)] if limits else []
    if origin is list:
        kind, limits = _describe(get_args(tp)[0])
        return f"list of {_PLURAL.get(kind, kind)}", [f"each {lim}" for lim in limits]
    if origin is dict:
        kind, limits = _describe(get_args(tp)[1])
        return f"mapping {{name: {kind}}}", [f"each value {lim}" for lim in limits]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping", []
    return _KIND.get(tp, getattr(tp, "__name__", str(tp))), []


def _literals(tp: Any) -> tuple[Any, ...] | None:
    """The values a literal-like type allows (a Literal's, or true/false), else None."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) is Literal:
        return get_args(tp)
    return (True, False) if tp is bool else None


def _model_in(tp: Any) -> type[BaseModel] | None:
    """The model class a field's annotation holds (through ``Annotated`` and ``| None``), if any."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, UnionType):
        models = [a for a in get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        plain = type(value)().model_dump()
        changed = {k: v for k, v in value.model_dump().items() if v != plain[k]}
        return f"`{_yaml(changed)}`, other keys as listed" if changed else "each key's default"
    return f"`{_yaml(value)}`"


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell: pipes escaped, and asterisks outside `code` spans."""
    pieces = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("*", "\\*") for i, p in enumerate(pieces))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def _link(heading: str) -> str:
    return f"[{heading}](#{_slug(heading)})"


def _prose(doc: str | None) -> str:
    """A docstring as Markdown: ``x`` and :role:`x` become `x`."""
    text = inspect.cleandoc(doc or "")
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


# --- the page --------------------------------------------------------------------------------------------


class _Sections:
    """Headings of the nested mappings, by class: the first path a class is met at names its section."""

    def __init__(self) -> None:
        self.heading: dict[type[BaseModel], str] = {}

    def add(self, cls: type[BaseModel], heading: str) -> None:
        self.heading.setdefault(cls, heading)


def _order(cls: type[BaseModel]) -> list[str]:
    """A section's keys as its table lists them: ``method`` first, then the required keys, then the others
    in the schema's order, with the ``layers`` every method shares last."""
    fields = cls.model_fields
    return sorted(fields, key=lambda k: (k != "method", not fields[k].is_required(), k == "layers"))


def _table(cls: type[BaseModel], sections: _Sections) -> list[str]:
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name in _order(cls):
        field = cls.model_fields[name]
        kind, limits = _describe(field.annotation)
        limits = _limits(field.metadata) + limits
        nested = _model_in(field.annotation)
        if nested is not None and nested in sections.heading:
            kind = f"{kind}, see {_link(sections.heading[nested])}"
        if name == "pruning" and cls is Recipe:
            kind = f"list of mappings, see {_link('pruning')}"
            limits = []
        constraint = _cell("; ".join(limits))
        if field.is_required():
            constraint = "; ".join(["**required**", *([constraint] if constraint else [])])
        cells = [f"`{name}`", _cell(kind), _cell(_default(field)), constraint, _cell(field.description or "")]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _required(spec: type[BaseModel]) -> list[str]:
    return [name for name, field in spec.model_fields.items() if field.is_required()]


def _method_section(method: str, spec: type[BaseModel], sections: _Sections) -> Iterator[str]:
    yield f"### method: {method}"
    yield ""
    docs = [spec.__dict__.get("__doc__")]
    # magnitude and gradient share their sizing keys through a private base: its text is theirs too.
    docs += [base.__dict__.get("__doc__") for base in spec.__mro__[1:] if base.__name__ == "_Ranked"]
    for doc in docs:
        if doc:
            yield _prose(doc)
            yield ""
    required = [f"`method: {method}`"] + [f"`{k}`" for k in _required(spec) if k != "method"]
    yield f"- **Required keys:** {', '.join(required)}."
    for (owner, key), (_, why) in MISPLACED_KEYS.items():
        if owner == method:
            yield f"- **Not `{key}`:** {why}."
    yield ""
    yield from _table(spec, sections)
    yield ""
    yield "Minimal example:"
    yield ""
    yield "```yaml"
    yield EXAMPLES[method].rstrip("\n")
    yield "```"
    yield ""


def _glance() -> Iterator[str]:
    yield "### Methods at a glance"
    yield ""
    yield "| method | required keys | what it does |"
    yield "|---|---|---|"
    for method, spec in SPECS.items():
        required = ", ".join(f"`{k}`" for k in _required(spec) if k != "method")
        what = spec.model_fields["method"].description or ""
        yield f"| {_link(f'method: {method}')} | {required} | {_cell(what)} |"
    yield ""


def _check_examples() -> None:
    """Every method has an example, and each validates (as a file, with the real loader) to that method."""
    import tempfile

    missing = [m for m in METHOD_NAMES if m not in EXAMPLES]
    if missing:
        raise ValueError(f"recipe_docs.EXAMPLES has no example for method(s) {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as tmp:
        for method, text in EXAMPLES.items():
            path = Path(tmp) / f"{method}.yaml"
            path.write_text(text, encoding="utf-8")
            recipe = load_recipe(path)  # a RecipeError here is a broken example
            if [m.method for m in recipe.pruning] != [method]:
                raise ValueError(f"the example for {method} does not hold exactly one {method} entry")


def render() -> str:
    """The whole reference page (Markdown), from the schema. Raises ValueError or RecipeError when an
    example recipe is missing or does not validate."""
    _check_examples()
    sections = _Sections()
    # Name every nested mapping first, so that a table can link to a section further down the page: a
    # top-level section, its sub-mappings (finetune.optimizer), then those of the methods (pruning[].schedule).
    top = [(name, cls) for name, field in Recipe.model_fields.items() if (cls := _model_in(field.annotation))]
    for name, cls in top:
        sections.add(cls, name)
    for name, cls in top:
        for sub, sub_field in cls.model_fields.items():
            if (nested := _model_in(sub_field.annotation)) is not None:
                sections.add(nested, f"{name}.{sub}")
    shared: list[tuple[str, type[BaseModel]]] = []
    for spec in SPECS.values():
        for sub, sub_field in spec.model_fields.items():
            nested = _model_in(sub_field.annotation)
            if nested is not None and nested not in sections.heading:
                sections.add(nested, f"pruning[].{sub}")
                shared.append((f"pruning[].{sub}", nested))

    names = [name for name, field in Recipe.model_fields.items() if name == "pruning" or _model_in(field.annotation)]
    lines = [
        "# Recipe reference",
        "",
        f"<!-- Generated from the schema in sparsekit/recipe.py by `{COMMAND}`: edit the schema's",
        "descriptions, then regenerate; in the sparsekit repository, tests/test_recipe_docs.py fails when this page",
        "and the schema differ. -->",
        "",
        render_options(INTRO, _cli_spelling),
        "Sections: " + ", ".join(_link(h) for h in ["Top level", *names]) + ".",
        "",
        *_section("Top level", Recipe, sections, "##", doc=False),
    ]
    for name in names:
        if name == "pruning":
            lines.extend(_pruning(sections, shared))
            continue
        cls = _model_in(Recipe.model_fields[name].annotation)
        assert cls is not None
        lines.extend(_section(name, cls, sections, "##"))
        for sub, sub_field in cls.model_fields.items():
            nested = _model_in(sub_field.annotation)
            if nested is not None and sections.heading[nested] == f"{name}.{sub}":
                lines.extend(_section(f"{name}.{sub}", nested, sections, "###"))
    lines.extend(_foreign())
    return "\n".join(lines).rstrip("\n") + "\n"


def _foreign() -> list[str]:
    """The keys of other pruning toolkits that a recipe's error translates (FOREIGN_KEYS), as a table."""
    lines = [
        "## Keys from other toolkits",
        "",
        "A recipe holding one of these keys is refused; the error names the sparsekit key that does its work "
        "(size: `sparsity`, or `ratio` for structured, `target` for l1).",
        "",
        "| Key | Whose | sparsekit | Note |",
        "|---|---|---|---|",
    ]
    for key, (whose, path, note) in FOREIGN_KEYS.items():
        home = {SIZE: "size", PER_LAYER: "`layer_sparsity` (`layer_ratio` for structured)"}.get(path, f"`{path}`")
        if path == "layers.exclude":
            home += " (`ignore` for structured)"
        if path == "steps":
            home += " (structured; else `schedule.every`)"
        lines.append(f"| `{key}` | {whose} | {home} | {_cell(note)} |")
    lines += [
        "",
        "So is a `method:` that names another toolkit's pruner (written in any case, with or without `_`, `-` and a "
        "`Pruner`, `Modifier` or `PruningModifier` suffix: `l1_unstructured`, `L1NormPruner`, "
        "`GlobalMagnitudePruningModifier`); the error names the sparsekit method:",
        "",
        "| Name | Whose | sparsekit | Note |",
        "|---|---|---|---|",
    ]
    for name, (whose, method, note) in FOREIGN_METHODS.items():
        lines.append(f"| `{name}` | {whose or 'common'} | `method: {method}` | {_cell(note)} |")
    return [*lines, ""]


def _section(heading: str, cls: type[BaseModel], sections: _Sections, level: str, doc: bool = True) -> list[str]:
    lines = [f"{level} {heading}", ""]
    text = cls.__dict__.get("__doc__") if doc else None
    if text:
        lines.extend([_prose(text), ""])
    return [*lines, *_table(cls, sections), ""]


def _pruning(sections: _Sections, shared: list[tuple[str, type[BaseModel]]]) -> list[str]:
    lines = [
        "## pruning",
        "",
        "`pruning:` is a list of entries, applied together, each on its own schedule (empty: nothing is "
        "pruned). Each entry is a mapping whose `method:` says which keys it takes: "
        + ", ".join(_link(f"method: {m}") for m in METHOD_NAMES)
        + ". Entries may share layers where their effects compose: l1 and max_norm with any entry, and "
        "structured with structured (a later one removes its ratio of the channels left); two magnitude / gradient "
        "entries on the same weights, or a structured entry that removes channels of weights (or inputs of weights) "
        "one of them masks, are refused "
        "(`sparsekit validate RECIPE MODEL` names the layer: exclude it from one entry). Every entry takes `layers` "
        f"({_link('pruning[].layers')}), and all but max_norm a `schedule` ({_link('pruning[].schedule')}).",
        "",
        *_glance(),
    ]
    for method, spec in SPECS.items():
        lines.extend(_method_section(method, spec, sections))
    for heading, cls in shared:
        lines.extend(_section(heading, cls, sections, "###"))
    return lines


# --- the command -----------------------------------------------------------------------------------------


def first_difference(expected: str, found: str) -> str:
    """Where ``found`` (the page on disk) first differs from ``expected`` (the page the schema gives), in
    one line: the line number, the section (and table key) it is in, and both texts around the change."""
    want, have = expected.splitlines(), found.splitlines()
    n = next((i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b), min(len(want), len(have)))
    where = next((ln.lstrip("# ") for ln in reversed(want[: n + 1]) if ln.startswith("#")), "the top")
    new = want[n] if n < len(want) else None
    old = have[n] if n < len(have) else None
    row = re.match(r"\| `([^`]+)` \|", new or old or "")
    if row:
        where += f"', key '{row.group(1)}"
    # Show both texts from a little before their first differing character.
    col = next((i for i, (a, b) in enumerate(zip(new or "", old or "", strict=False)) if a != b), 0)
    start = max(col - 20, 0)

    def clip(text: str | None) -> str:
        if text is None:
            return "nothing (end of page)"
        part = ("…" if start else "") + text[start:]
        return repr(part if len(part) <= 60 else part[:59] + "…")

    return f"line {n + 1} (section '{where}'): the schema gives {clip(new)}, the page has {clip(old)}"


def check(path: Path) -> str | None:
    """None when ``path`` holds the page the schema gives; else a one-line message naming the difference."""
    expected = render()
    try:
        found = path.read_text(encoding="utf-8")
    except OSError as err:
        return f"{path}: cannot read it ({err.strerror or err}); generate it with: {COMMAND}"
    if found == expected:
        return None
    return f"{path} is stale: {first_difference(expected, found)}; regenerate it with: {COMMAND}"


def write(path: Path) -> bool:
    """Write the page to ``path`` atomically (a complete old or new file, never half of one); True when
    its text changed."""
    from .fsutil import write_text

    text = render()
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    write_text(path, text)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page (exit 0), or with the check option compare it (exit 1 and one line when stale)."""
    # This module is a command of its own, like cli.py, the one module whose strings name flags (see
    # tests/test_no_cli_in_library.py): its two options are spelled from their names.
    dashes = "-" * 2
    parser = argparse.ArgumentParser(prog=COMMAND, description="Generate the recipe reference from the schema.")
    parser.add_argument(f"{dashes}check", action="store_true", help="exit 1 when the page is not what the schema gives")
    parser.add_argument(f"{dashes}output", type=Path, default=DEFAULT_OUTPUT, help="the page (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.output is None:
        print(
            f"{COMMAND}: this sparsekit is installed, not a source tree, so there is no docs/recipe.md to write: "
            f"give the page's path ({dashes}output PATH), or print it with: sparsekit recipes {dashes}reference",
            file=sys.stderr,
        )
        return 2
    if args.check:
        problem = check(args.output)
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    changed = write(args.output)
    print(f"{args.output}: {'written' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
