"""Property tests: whatever a user feeds the loaders, they answer with a result or a SparsekitError;
the capped global ranking prunes exactly what it should.

A recipe loader that raises anything but RecipeError (OverflowError, RecursionError, KeyError, ...)
shows a traceback and exit 1 instead of ``Error: <field>: <what to do>`` and exit 2; a model loader
likewise must answer ModelFileError for any bytes.
"""

from __future__ import annotations

import copy
import inspect
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsekit.cli import RECIPES_DIR
from sparsekit.errors import ModelFileError, RecipeError
from sparsekit.masks import LOWEST, global_topk_masks, layer_cap
from sparsekit.modelio import read_model
from sparsekit.recipe import Recipe, load_recipe

# SPARSEKIT_EXAMPLES=5000 for a longer hunt; the default keeps this file to a few seconds.
# function_scoped_fixture: tmp_path is shared by the examples of one test; each example overwrites
# its file first, so nothing leaks from one example to the next.
FAST = settings(
    max_examples=int(os.environ.get("SPARSEKIT_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))

# A recipe using every section, so random edits land deep inside the schema.
BASE: dict[str, Any] = {
    "version": 1,
    "seed": 0,
    "model": {"factory": "examples.models:mlp", "kwargs": {"in_features": 64, "hidden": [32]}, "input_shape": [1, 64]},
    "data": {"source": "synthetic", "batch_size": 32, "val_fraction": 0.2, "synthetic_samples": 256},
    "finetune": {
        "epochs": 4,
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
        "lr_schedule": {"name": "step", "step_size": 1, "gamma": 0.5},
        "loss": "cross_entropy",
        "max_steps_per_epoch": 2,
    },
    "pruning": [
        {
            "method": "magnitude",
            "sparsity": 0.8,
            "scope": "global",
            "schedule": {"start_epoch": 0, "end_epoch": 3, "every": 1, "init_sparsity": 0.0, "curve": "cubic"},
            "layers": {"include": ["*"], "exclude": ["fc3"], "types": ["Linear"]},
        },
        {"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "calibration_batches": 2},
        {"method": "l1", "strength": 1e-4, "mode": "proximal", "group": "row", "threshold": 1e-3},
        {"method": "max_norm", "max_value": 3.0},
        {
            "method": "structured",
            "ratio": 0.5,
            "importance": "l2",
            "steps": 2,
            "min_channels": 1,
            "calibration_batches": 2,
            "schedule": "oneshot",
            "ignore": ["fc3"],
        },
    ],
    "export": {"onnx": True, "opset": 18, "quantize": "none", "exporter": "dynamo", "sparse_storage": False},
    "benchmark": {"enabled": True, "batch_sizes": [1, 32], "threads": 1, "warmup": 20, "runs": 200},
}


def _schema_words(model: type, out: set[str]) -> set[str]:
    """Every key and literal value the schema knows (keys, method names, enum choices)."""
    for name, field in model.model_fields.items():
        out.add(name)
        for arg in _type_args(field.annotation):
            if isinstance(arg, type) and hasattr(arg, "model_fields") and arg.__name__ not in out:
                out.add(arg.__name__)
                _schema_words(arg, out)
            elif isinstance(arg, str):
                out.add(arg)
    return out


def _type_args(tp: Any) -> list[Any]:
    args = [tp]
    for a in getattr(tp, "__args__", ()) or ():
        args += _type_args(a)
    for a in getattr(tp, "__metadata__", ()) or ():
        args += _type_args(a)
    return args


WORDS = sorted(w for w in _schema_words(Recipe, set()) if not w[:1].isupper()) + ["oneshot", "<<"]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


BASE_PATHS = _paths(BASE)
KEY_PATHS = [".".join(str(p) for p in path) for path in BASE_PATHS if path]

EDGE_NUMBERS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    0,
    -1,
    1e-320,
    1e300,
    -1e300,
    2**31,
    2**53 + 1,
    2**63,
    2**64,
    10**30,
    -(2**63) - 1,
    True,
    False,
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(EDGE_NUMBERS)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
keys = st.sampled_from(WORDS) | st.text(max_size=8) | st.integers(-3, 3) | st.none() | st.booleans()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_recipes(draw: st.DrawFn) -> Any:
    """BASE with a few random edits: replace a value, delete a key, or add a key, at random paths."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            if draw(st.integers(0, 20)) == 0:
                return draw(values)  # sometimes the whole document is junk
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "insert"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(keys)] = draw(values)
        elif isinstance(parent[path[-1]], list):
            parent[path[-1]].insert(draw(st.integers(0, len(parent[path[-1]]))), draw(values))
    return doc


# Pieces of YAML syntax: random sequences of them reach anchors, aliases, tags, merges, complex keys,
# several documents and directives far more often than random characters do.
YAML_PIECES = [
    "a: ",
    "- ",
    "\n",
    "\n  ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    ": ",
    "? ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "!!set ",
    "!!binary ",
    "!!timestamp ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!str ",
    "!!omap ",
    "!!pairs ",
    "!!merge ",
    "!!python/tuple ",
    "!!python/object/apply:os.system ",
    "!custom ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "2024-13-45",
    "2001-12-14t21:59:43.10-05:00",
    ".inf",
    "-.inf",
    ".nan",
    "1e400",
    "0x",
    "0b",
    "1:2:3",
    "yes",
    "~",
    '"\\x00"',
    "'",
    '"',
    "|\n",
    ">\n",
    "#",
    "\t",
    "\x00",
    "\ufeff",
    "\x85",
    "aGVsbG8=",
    "finetune",
    "pruning",
    "method: magnitude",
    "schedule",
    "end_epoch",
    "epochs",
    "kwargs",
]
yaml_like_text = st.lists(st.sampled_from(YAML_PIECES) | st.text(max_size=4), max_size=40).map("".join)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def _load(tmp_path: Path, content: str | bytes, overrides: list[str] | None = None) -> Recipe | None:
    """load_recipe on ``content``: a Recipe or None for a RecipeError; any other exception fails the test."""
    path = tmp_path / "recipe.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as err:
        assert str(err).strip(), "a RecipeError says what is wrong"
        return None
    assert isinstance(recipe, Recipe)
    return recipe


@FAST
@given(text=st.text(max_size=300) | yaml_like_text)
def test_any_text_is_a_recipe_or_a_recipe_error(tmp_path, text):
    _load(tmp_path, text)


@FAST
@given(data=st.binary(max_size=300))
def test_any_bytes_are_a_recipe_or_a_recipe_error(tmp_path, data):
    _load(tmp_path, data)


@FAST
@given(doc=mutated_recipes())
def test_edited_recipes_are_a_recipe_or_a_recipe_error(tmp_path, doc):
    recipe = _load(tmp_path, _dump(doc))
    if recipe is not None:
        # What validates is usable as is: JSON-able and round-trips through validation again.
        dumped = recipe.model_dump(mode="json")
        assert Recipe.model_validate(dumped) == recipe


def test_base_recipe_is_valid(tmp_path):
    # The mutation tests start from here: if BASE were invalid, they would only test rejections.
    assert _load(tmp_path, _dump(BASE)) is not None


yaml_scalar_text = (
    st.sampled_from(YAML_PIECES)
    | scalars.map(lambda v: _dump(v).removesuffix("\n...\n").strip())
    | values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
    | st.text(max_size=20)
)
override = st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(KEY_PATHS), yaml_scalar_text).map("=".join),
    st.tuples(st.sampled_from(KEY_PATHS) | st.text(max_size=10), st.sampled_from(["", ".", "..", ".0", ".²", ".-1"]))
    .map("".join)
    .map(lambda k: k + "=1"),
)


@FAST
@given(recipe=st.sampled_from(RECIPES), overrides=st.lists(override, max_size=4))
def test_any_overrides_give_a_recipe_or_a_recipe_error(recipe, overrides):
    try:
        result = load_recipe(recipe, overrides)
    except RecipeError as err:
        assert str(err).strip()
    else:
        assert isinstance(result, Recipe)


# --- model files ---------------------------------------------------------------------------------

TORCH_MEMBERS = [
    "archive/data.pkl",
    "archive/version",
    "archive/byteorder",
    "archive/data/0",
    "archive/.data/version",
    "archive/code/__torch__.py",
    "archive/constants.pkl",
    ".data/serialization_id",
]


@st.composite
def zip_archives(draw: st.DrawFn) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for _ in range(draw(st.integers(0, 4))):
            name = draw(
                st.sampled_from(TORCH_MEMBERS)
                | st.text(st.characters(min_codepoint=32, exclude_categories=["Cs"]), min_size=1, max_size=20)
            )
            content = draw(
                st.binary(max_size=64)
                | st.sampled_from([b"3", b"little", b"\x80\x02}q\x00.", pickle.dumps({"a": 1}, protocol=2)])
            )
            z.writestr(name, content)
    return buf.getvalue()


plain_objects = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _torch_saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


model_bytes = st.one_of(
    st.binary(max_size=400),
    st.tuples(st.sampled_from([b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80\x05"]), st.binary(max_size=200)).map(
        b"".join
    ),
    zip_archives(),
    plain_objects.map(lambda o: pickle.dumps(o, protocol=2)),
    plain_objects.map(_torch_saved),
    # Damaged real files: a valid torch.save with bytes cut off or flipped.
    st.tuples(plain_objects.map(_torch_saved), st.integers(0, 10_000)).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)]),
)

# Another session is adding a trust check to read_model; pass its confirmation only if it exists.
_TRUST: dict[str, Any] = {"trust_code": True} if "trust_code" in inspect.signature(read_model).parameters else {}


@FAST
@given(content=model_bytes, suffix=st.sampled_from([".pt", ".pt", ".pth", ".bin", ".safetensors"]))
@pytest.mark.parametrize("arch", [None, "examples.models:mlp"])
def test_any_bytes_as_a_model_file_are_a_model_file_error(tmp_path, content, suffix, arch):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelFileError):
        if arch is None:
            read_model(path)
        else:
            read_model(path, arch=arch, **_TRUST)


@FAST
@given(content=st.binary(max_size=200))
def test_any_bytes_with_safetensors_header_shape_are_a_model_file_error(tmp_path, content):
    # A safetensors file starts with an 8-byte little-endian header length, then JSON.
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + content)
    with pytest.raises(ModelFileError):  # at best a tensor "w" that the mlp does not have
        read_model(path, arch="examples.models:mlp", **_TRUST)


checkpoint_fields = st.fixed_dictionaries(
    {},
    optional={
        "factory": st.sampled_from(["examples.models:mlp", "nocolon", "os:system", ""]) | plain_objects,
        "kwargs": st.sampled_from([{}, {"hidden": [8]}, {"bogus": 1}]) | plain_objects,
        "input_shape": st.sampled_from([[1, 64], [1, 0], [], None]) | plain_objects,
        "state_dict": st.sampled_from([{}, {"fc1.weight": torch.zeros(2, 2)}, {1: torch.zeros(1)}]) | plain_objects,
        "pruning_history": st.sampled_from([[], [["fc1", "out", [0]]], [{"x": 1}]]) | plain_objects,
        "extra": plain_objects,
    },
)


@FAST
@given(fields=checkpoint_fields)
def test_damaged_sparsekit_checkpoints_are_model_file_errors(tmp_path, fields):
    # A file that passes the weights-only load and claims the sparsekit format, with any field values.
    path = tmp_path / "ckpt.pt"
    path.write_bytes(_torch_saved({"format": "sparsekit/1", **fields}))
    with pytest.raises(ModelFileError):
        read_model(path, arch="examples.models:mlp", **_TRUST)


# ----------------------------------------------------------------------------- capped global ranking


def _greedy_capped(scores: dict[str, torch.Tensor], sparsity: float, cap: float) -> torch.Tensor:
    """Reference: walk the scores lowest first (stable), pruning each unless its layer is full."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    owner = [i for i, n in enumerate(names) for _ in range(scores[n].numel())]
    caps = [max(layer_cap(scores[n].numel(), cap), int((scores[n] == LOWEST).sum())) for n in names]
    left, taken = round(sparsity * flat.numel()), [0] * len(names)
    keep = torch.ones_like(flat, dtype=torch.bool)
    for idx in torch.argsort(flat, stable=True).tolist():
        if left == 0:
            break
        if taken[owner[idx]] < caps[owner[idx]]:
            taken[owner[idx]] += 1
            keep[idx] = False
            left -= 1
    return keep


layer_scores = st.lists(
    st.tuples(
        st.integers(1, 40),  # layer size
        st.integers(0, 40),  # weights already pruned (clipped to the size)
        st.sampled_from([2, 5, 1000]),  # distinct score values: few means many ties
    ),
    min_size=1,
    max_size=5,
)


@FAST
@given(layers=layer_scores, sparsity=st.floats(0, 0.999), cap=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_capped_global_ranking_is_exact_and_respects_every_cap(layers, sparsity, cap, seed):
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for i, (size, pruned, values) in enumerate(layers):
        s = torch.randint(0, values, (size,), generator=g).float()
        s[torch.randperm(size, generator=g)[: min(pruned, size)]] = LOWEST
        scores[f"l{i}"] = s
    masks = global_topk_masks(scores, sparsity, max_layer_sparsity=cap)
    total = sum(s.numel() for s in scores.values())
    caps = {n: max(layer_cap(s.numel(), cap), int((s == LOWEST).sum())) for n, s in scores.items()}
    pruned = {n: int((~m).sum()) for n, m in masks.items()}
    already = sum(int((s == LOWEST).sum()) for s in scores.values())
    for n, s in scores.items():
        assert pruned[n] <= caps[n]  # no layer above its cap (or above what was pruned before)
        if round(sparsity * total) >= already:  # targets only rise: what was pruned stays pruned
            assert not bool(masks[n][s == LOWEST].any())
    # The global count is exact whenever the caps allow it, and as close as they allow otherwise.
    assert sum(pruned.values()) == min(round(sparsity * total), sum(caps.values()))
    assert torch.equal(torch.cat([masks[n].flatten() for n in scores]), _greedy_capped(scores, sparsity, cap))
    if cap >= 1:  # no cap: the plain global ranking, bit for bit
        assert all(torch.equal(masks[n], m) for n, m in global_topk_masks(scores, sparsity).items())


@FAST
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64))
def test_the_ranking_keys_order_floats_as_float_comparison_does(values):
    # The global ranking selects on uint32 keys of the float32 scores: they must order as the floats do, with
    # -0.0 and +0.0 one key (float comparison has them equal), through infinities and subnormals.
    import numpy as np

    from sparsekit.masks import _sort_keys

    v = np.array(values, dtype=np.float32)
    keys = _sort_keys(v)
    for i in range(len(v)):
        assert np.array_equal(keys[i] < keys, v[i] < v) and np.array_equal(keys[i] == keys, v[i] == v)
