"""``sparsekit.inspect()``: what a model file holds — per-layer and whole-model params, nonzeros, weight
sparsity, and multiply-accumulates (dense, and over nonzero weights only).

The ``sparsekit inspect`` command prints this; Python users get the same dict. A ``.pt`` / ``.safetensors``
model and the ``.onnx`` file exported from it give the same layer names, counts, sparsity and MACs (an
ONNX file stores BatchNorm folded into the convolution before it, so its whole-model ``params`` may be
smaller).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import DataError, one_line, option
from .wrappers import int_dims, require_path, unwrap

ROW_KEYS = ("name", "type", "shape", "params", "nonzero_params", "weights", "nonzero_weights", "sparsity", "macs",
            "effective_macs")  # fmt: skip
"""The keys of every per-layer row, for a torch model and an ONNX file alike."""


def inspect(
    path: str | Path,
    *,
    arch: str | None = None,
    kwargs: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    trust: bool = False,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Counts for the model file at ``path``: a sparsekit checkpoint / state_dict / .safetensors
    (loaded as :func:`sparsekit.load_model` does, with ``arch``/``kwargs``, ``trust`` and
    ``trust_code`` meaning the same) or an ``.onnx`` file (read as data; nothing in it is run).

    Returns, for both kinds, ``{"path", "format" ("torch" | "onnx"), "bytes", "params", "nonzero_params",
    "weights", "nonzero_weights", "sparsity", "macs", "effective_macs", "macs_unknown", "other_params",
    "other_macs", "layers"}``:

    - ``layers``: one row per prunable layer (Linear / Conv weights; ONNX: Conv, ConvTranspose, Gemm and
      MatMul nodes whose weight is stored in the file) with the keys of :data:`ROW_KEYS`: ``params`` and
      ``nonzero_params`` count the weight *and* the bias, ``weights`` / ``nonzero_weights`` the weight
      alone, ``sparsity`` is the fraction of the weight that is zero, ``macs`` the dense
      multiply-accumulates for one sample and ``effective_macs`` those of the nonzero weights; both None
      when unknown (no input shape, or ONNX shape inference could not size the layer). A layer whose
      weight an earlier row holds too (tied; in ONNX only where sparsekit's export recorded the tie) adds
      ``shared_with`` (that row's name), ``shared_params`` and ``shared_nonzero`` (what it does not add to
      the totals); a layer whose weight a module that is no row holds (an LM head tied to its Embedding)
      names it in ``shared_with`` (``"emb (Embedding)"``) and adds all of its parameters (shared 0).
    - totals: ``params`` / ``nonzero_params`` over every parameter (torch) or stored weight (ONNX);
      ``other_params`` (``{"params", "nonzero_params", "types"}``) what the rows leave out (BatchNorm,
      embeddings, ...), so rows plus other make the total, less what a tied row shares; ``other_macs``
      (``{"macs", "effective_macs"}``, None without an input shape) those of the Linear/Conv layers that are no row
      (a weight computed by weight_norm, spectral_norm or another parametrization; ONNX: a Conv/Gemm whose weight
      the graph computes from stored tensors); ``weights`` /
      ``nonzero_weights`` / ``sparsity`` over the rows' weights (the prunable weights, a tied one once:
      ``sparsity`` is report.json's); ``macs`` / ``effective_macs`` summed over the rows and ``other_macs``,
      None when some row's are unknown (those rows are listed in ``macs_unknown``).

    A torch model adds ``factory``, ``input_shape`` (batch first, None when unknown: pass one for MACs),
    ``input_shape_note`` (why it is None although one was guessed from the first layer, none being given or
    saved: the model does not accept the guess; else None), ``structurally_pruned`` and ``notes`` (how the file
    was read, :func:`~sparsekit.modelio.read_model`'s: e.g. float64 weights rounded to the model's float32
    layers, which the counts are of); an ONNX file adds
    ``gzip_bytes``, ``bytes_per_nonzero``, ``gzip_bytes_per_nonzero`` (sizes count any external-data file),
    ``input_shape`` (its first input, symbolic dims as names), ``inputs`` (every input's name -> shape) and
    ``non_finite`` (``{initializer: NaN/inf count}``, empty when none: a checkpoint with such weights is refused,
    an ONNX file is only read and reported).

    Raises :class:`~sparsekit.errors.ModelFileError` / :class:`~sparsekit.errors.ExportError` for a
    file that cannot be loaded, :class:`~sparsekit.errors.DataError` when the model does not accept
    ``input_shape`` (batch first; also when it is not a list of positive integers) or the file's saved one (a shape
    only guessed gives ``input_shape_note``); ValueError for ``arch``, ``kwargs`` or ``input_shape`` with an
    ``.onnx`` file (it holds its own); TypeError for a ``path`` that is not a path or ``kwargs`` that are not a dict
    of names."""
    require_path(path, "inspect(path=...)", "count a model in memory with sparsekit.layer_report(model, input_shape)")
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        # The file's graph and input shape are what it counts: arguments for a torch model were dropped without a
        # word (input_shape=[1, 9] for a [batch, 8] file gave its MACs all the same). The command refuses them too.
        given = [n for n, v in (("arch", arch), ("kwargs", kwargs), ("input_shape", input_shape)) if v is not None]
        if given:
            raise ValueError(
                f"inspect({', '.join(f'{n}=...' for n in given)}): {path} is an .onnx file, which holds its own graph "
                "and input shape; these arguments are for .pt / .safetensors models: leave them out"
            )
        return _inspect_onnx(path)
    from .modelio import require_kwargs

    require_kwargs(kwargs, "inspect")
    if input_shape is not None:
        # Checked before the file is read: [1, 784.9] was counted as [1, 784] without a word, 8 failed inside. A
        # shape of integers the model does not take is check_input_shape's, below (it names the one it takes).
        dims = int_dims(input_shape)
        if dims is None:
            raise DataError(
                f"{option('input_shape')}: expected the whole input shape, batch first, as positive integers "
                f"(e.g. [1, 784]), got {input_shape!r}"
            )
        input_shape = dims
    from .modelio import infer_input_shape, read_model, refuse_compiled

    loaded = read_model(path, arch, kwargs=kwargs, trust=trust, trust_code=trust_code)
    refuse_compiled(loaded.model, path, "counts")
    shape = input_shape or loaded.input_shape or infer_input_shape(loaded.model)
    note = None
    if shape:
        origin = shape_origin(path, input_shape, loaded.input_shape)
        try:
            check_input_shape(
                loaded.model, list(shape), origin=origin, fix=(lambda value: "") if origin == GUESSED else None
            )
        except DataError as err:
            if origin != GUESSED:
                raise
            # Only a guess failed, not something the caller or the file said: counts without MACs, and why.
            note, shape = f"MACs unknown: {err}", None
    res: dict[str, Any] = {
        "path": str(path),
        "format": "torch",
        "bytes": path.stat().st_size,
        "factory": loaded.factory,
        "input_shape": list(shape) if shape else None,
        "input_shape_note": note,
        "structurally_pruned": bool(loaded.pruning_history),
        # How the file was read, when that changes the figures (weights wider than the model's layers were rounded,
        # so a value below float32's range counts as a zero the file does not hold): said, not left to be found.
        "notes": list(loaded.notes),
    }
    res.update(_torch_counts(loaded.model, list(shape) if shape else None))
    return res


#: Where an input shape came from when neither the caller nor the file gave one (:func:`shape_origin`).
GUESSED = "the input shape guessed from the first layer"


def shape_origin(path: Any, given: Sequence[int] | None, saved: Sequence[int] | None) -> str:
    """Where an input shape came from, for messages: the caller's option, the checkpoint, or a guess from the
    first layer (:data:`GUESSED`)."""
    if given:
        return option("input_shape")
    if saved:
        return f"{path}: its saved input_shape"
    return GUESSED


def shapes_to_try(model: Any, dims: list[int]) -> list[list[int]]:
    """Batch-1 input shapes the first layer suggests, other than ``dims``: ``[1, in_features]`` for a Linear,
    ``[1, in_channels, *dims[2:]]`` for a convolution when ``dims`` has its rank, and ``[1, in_channels,
    *dims[1:]]`` when ``dims`` left the channels out (``1,256`` for a Conv1d audio model of ``[N, 1, 256]``
    inputs was told only "give the shape it takes"), and ``[1, in_channels, *dims]`` when it left out both the batch
    and the channels (``8,8`` for a Conv2d of one-channel 8x8 images, ``256`` for that audio model)."""
    from .modelio import first_conv_shape, infer_input_shape

    shapes = [
        infer_input_shape(model),
        first_conv_shape(model, dims[2:]) if len(dims) > 2 else None,
        first_conv_shape(model, dims[1:]) if len(dims) > 1 else None,
        first_conv_shape(model, dims),
    ]
    return [s for s in shapes if s and s != dims]


class SeveralInputsError(DataError):
    """The model's forward needs more than the one tensor sparsekit's commands feed it: no input shape helps."""


def _several_inputs(model: Any, err: Exception) -> bool:
    """Whether calling ``model`` on one tensor failed for want of more inputs: a ``TypeError`` about missing
    arguments, or a forward whose signature requires more than one."""
    import inspect

    if isinstance(err, TypeError) and "required positional argument" in str(err):
        return True
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin or C-level forward: nothing to read
        return False
    required = [
        p for p in params if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return len(required) > 1


def check_input_shape(
    model: Any,
    shape: Sequence[int],
    *,
    fix: Callable[[str], str] | None = None,
    origin: str = "input shape",
    prefer: Sequence[Sequence[int]] = (),
) -> None:
    """Check that ``model`` runs on ``shape`` read batch first: on zeros of ``[1, *shape[1:]]`` and of
    ``[2, *shape[1:]]``. Raises :class:`~sparsekit.errors.DataError` naming ``shape``, where it came from
    (``origin``, e.g. ``"m.pt: its input_shape"``) and how to give another otherwise: ``fix(value)`` words the
    remedy for a shape ``value`` (``""``: no particular one); by default the caller's input-shape option
    (:func:`~sparsekit.errors.option`), e.g. a recipe's ``option("set", f"model.input_shape={value}")`` elsewhere.
    ``prefer``: shapes to suggest first when ``shape`` fails and the model runs on them (the data's samples).

    Both batch sizes are tried because many layers also take an input without its batch dimension (a
    Conv2d takes ``[C, H, W]``): ``1,8,8`` given for a model of ``[N, 1, 8, 8]`` inputs runs at batch 1,
    with the 1 read as its channel, and fails only later (export traces at batch 2), with an error
    quoting a shape the user never gave. The message then suggests the shape with a batch dimension."""
    import torch

    remedy = fix or (lambda value: option("input_shape", value))

    def paren(words: str) -> str:  # a remedy of "" (the caller words its own) leaves no empty brackets
        return f" ({words})" if words else ""

    dims = [int(d) for d in shape]
    from . import model_input

    def fails(batch_shape: list[int]) -> Exception | None:
        try:
            with torch.no_grad():
                # zeros in the model's dtype, or token ids (int64) for a model whose input feeds an embedding
                model(model_input.example_input(model, batch_shape))
        except (MemoryError, DataError):  # DataError: ours (e.g. model.output names no part), not a shape
            raise
        except Exception as err:  # noqa: BLE001 - the user's model on a shape: bad input, not our bug
            return err
        return None

    modes = [(m, m.training) for m in model.modules()]  # each module's own (a frozen BatchNorm stays frozen)
    model.eval()
    try:
        first = fails([1, *dims[1:]])
        from .surgery import integer_input_advice

        if first is not None and integer_input_advice(first):
            raise DataError(
                f"{origin} {dims}: the model takes integer input (token ids for an nn.Embedding, say; "
                f"{one_line(first, 120)}), and sparsekit feeds token ids only to a model whose input goes into an "
                "nn.Embedding or nn.EmbeddingBag module (not F.embedding on a weight of its own): look the ids up "
                "with such a module, or give the model a forward that takes float input"
            )
        stateless = [
            name
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is None
        ]
        if first is not None and stateless and "Expected more than 1 value per channel" in str(first):
            # No shape is at fault, and the one given was told to change: such a BatchNorm normalizes over the
            # batch in eval mode too, so one sample cannot run and each output depends on the rest of its batch.
            raise DataError(
                f"{origin} {dims}: BatchNorm layer(s) {', '.join(map(repr, stateless[:5]))} keep no running statistics "
                f"(track_running_stats=False), so in eval mode they normalize over the batch: a batch of 1 cannot "
                f"run ({one_line(first, 100)}), and each sample's output depends on the others in its batch, which "
                "an exported model for inference cannot do; build them with track_running_stats=True and train, or "
                "use nn.LayerNorm / nn.GroupNorm"
            )
        if first is not None and _several_inputs(model, first):
            raise SeveralInputsError(
                f"{origin} {dims}: the model's forward takes several inputs ({one_line(first, 120)}); sparsekit's "
                "commands feed it one tensor of that shape, so no input shape fits: wrap the model in a module whose "
                "forward takes one tensor, or drive sparsekit.Pruner from your own training loop, which calls the "
                "model as you do"
            )
        if first is not None:
            # One the first layer tells (a Linear's in_features, a conv's in_channels at the given size), if the
            # model runs on it: a shipped recipe's [1, 784] for one's own 64-input MLP said only "give the shape".
            # The data's own sample shape first: the first layer's guess keeps the recipe's image size (a shipped
            # recipe's [1, 1, 8, 8] for one's own 3x32x32 CNN suggested [1, 3, 8, 8], which the data then refused).
            # Then the shape with a batch dimension put first: [3, 32, 32] for a 3-channel CNN reads as a batch of 3
            # of 32x32 one-channel images, which the first conv refuses (not "a batch of one runs, of two not").
            # Of the data's shapes, one the first layer also tells comes first (digits as [1, 64] for an MLP that
            # flattens, not [1, 1, 8, 8]).
            guesses, data = shapes_to_try(model, dims), [[int(d) for d in c] for c in prefer]
            tries = [c for c in data if c in guesses] + data + [[1, *dims]] + guesses
            runs = (c for c in tries if c != dims and fails(c) is None and fails([2, *c[1:]]) is None)
            takes = next(runs, None)
            left_out = ": did you leave out the batch dimension?" if takes == [1, *dims] else ""
            if left_out and dims[0] == 1 and len(dims) > 1:
                from .modelio import first_conv_shape

                if first_conv_shape(model, dims[1:]) == takes:
                    # A one-channel conv given [1, 256]: the batch of 1 with the channels left out reads the same
                    # (the example the channels' suggestion was made for), which "the batch dimension" alone denied.
                    left_out = (
                        ": did you leave out the batch dimension, or the channels (the first layer takes 1 channel)?"
                    )
            advice = (
                f"; the model takes {takes}{left_out}{paren(remedy(str(takes)))}"
                if takes
                else f"; give the shape it takes, batch first{paren(remedy(''))}"
            )
            raise DataError(f"{origin} {dims}: the model does not accept it ({one_line(first, 160)}){advice}")
        at_two = fails([2, *dims[1:]])
        if at_two is None:
            return
        from .modelio import compiled_module, fixed_batch_words

        if compiled_module(model):
            # torch.export specializes the batch of its example input unless told otherwise.
            raise DataError(f"{origin} {dims}: {fixed_batch_words(at_two)}")
        guess = [1, *dims]
        # Two causes fail alike: a shape without its batch, or a forward that fixes the batch (x.view(1, -1)); the
        # second was told only to give the shape batch first, which it was.
        where = f": {remedy('')}" if remedy("") else ""
        hint = (
            f", so its first dimension is not the batch; the model takes {guess}: did you leave out the batch "
            f"dimension?{paren(remedy(str(guess)))}"
            if fails([2, *dims]) is None
            else f": either its first dimension is not the batch (give the whole input shape, batch first{where}), "
            "or the forward fixes the batch size (a view or reshape to a constant such as x.view(1, -1)); sparsekit "
            "exports and measures several batch sizes, so write it for any batch (x.flatten(1), x.view(x.size(0), -1))"
        )
        raise DataError(f"{origin} {dims}: the model runs on one such input but not on a batch of two{hint}")
    finally:
        for module, training in modes:
            module.training = training


def _torch_counts(model: Any, shape: list[int] | None) -> dict[str, Any]:
    """Rows and totals of a torch model (see :func:`inspect`)."""
    import torch

    from .layers import prunable_layers
    from .masks import count_true, weight_of
    from .stats import layer_macs, other_macs, sparsity
    from .surgery import tied_parameters

    model = unwrap(model)
    layers = prunable_layers(model)
    macs = layer_macs(model, shape) if shape else None  # layers the forward pass never reaches: 0
    rows: list[dict[str, Any]] = []
    owner: dict[int, str] = {}  # parameter -> the first row that counts it (tied weights are one tensor)
    for name, module in layers.items():
        weight = weight_of(module)
        bias = getattr(module, "bias", None)
        n, nz = weight.numel(), count_true(weight)
        params, nonzero = n, nz
        shared_with = owner.get(id(weight))
        shared = (n, nz) if shared_with else (0, 0)
        owner.setdefault(id(weight), name)
        if isinstance(bias, torch.Tensor):
            b, bnz = bias.numel(), count_true(bias)
            params, nonzero = params + b, nonzero + bnz
            if id(bias) in owner:
                shared = (shared[0] + b, shared[1] + bnz)
            owner.setdefault(id(bias), name)
        dense = None if macs is None else macs.get(name, 0)
        rows.append(_row(name, type(module).__name__, list(weight.shape), params, nonzero, n, nz, dense))
        if shared_with:
            rows[-1].update(shared_with=shared_with, shared_params=shared[0], shared_nonzero=shared[1])
    # A weight tied to a module that is no row (an LM head tied to its Embedding): the row counts it, once.
    modules = dict(model.named_modules(remove_duplicate=False))
    for holders in tied_parameters(model):
        names = list(dict.fromkeys(n for n, _ in holders))
        rows_here = [r for r in rows if r["name"] in names and not r.get("shared_with")]
        outside = [n for n in names if n not in layers]
        if rows_here and outside:
            named = ", ".join(f"{n} ({type(modules[n]).__name__})" for n in outside)
            rows_here[0].update(shared_with=named, shared_params=0, shared_nonzero=0)
    owned = set(owner)
    other = [(m, p) for m in model.modules() for p in m.parameters(recurse=False) if id(p) not in owned]
    seen: set[int] = set()
    other_params = other_nonzero = 0
    types: list[str] = []
    for module, p in other:
        if id(p) in seen:
            continue
        seen.add(id(p))
        other_params += p.numel()
        other_nonzero += count_true(p)
        if type(module).__name__ not in types:
            types.append(type(module).__name__)
    # The Linear/Conv layers that are no row (their weight is computed: weight_norm, spectral_norm, another
    # parametrization) run all the same, as Gemm/Conv nodes of the ONNX file: their MACs go with the other params.
    extra = None if macs is None else other_macs(model, macs)
    totals = _totals(rows, other_params, other_nonzero, types, extra)
    totals["sparsity"] = sparsity(model)  # the run's own definition (report.json), equal to the rows'
    return totals


def _row(
    name: str, kind: str, shape: list[int], params: int, nonzero: int, weights: int, nonzero_weights: int,
    macs: int | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "name": name,
        "type": kind,
        "shape": shape,
        "params": params,
        "nonzero_params": nonzero,
        "weights": weights,
        "nonzero_weights": nonzero_weights,
        "sparsity": 1 - nonzero_weights / weights if weights else 0.0,
        "macs": macs,
        "effective_macs": None if macs is None else (round(macs * nonzero_weights / weights) if weights else 0),
    }


def _totals(
    rows: list[dict[str, Any]],
    other_params: int,
    other_nonzero: int,
    types: list[str],
    other_macs: tuple[int, int] | None = (0, 0),
) -> dict[str, Any]:
    """Totals of ``rows`` and the rest: ``other_macs`` (dense, nonzero) of layers that are no row, None if unknown."""
    # A row whose weight another row already holds (tied: ``shared_with``) adds its MACs, not its parameters.
    own = [r for r in rows if not r.get("shared_with")]
    weights = sum(r["weights"] for r in own)
    nonzero_weights = sum(r["nonzero_weights"] for r in own)
    unknown = [r["name"] for r in rows if r["macs"] is None]
    return {
        "params": sum(r["params"] - r.get("shared_params", 0) for r in rows) + other_params,
        "nonzero_params": sum(r["nonzero_params"] - r.get("shared_nonzero", 0) for r in rows) + other_nonzero,
        "weights": weights,
        "nonzero_weights": nonzero_weights,
        "sparsity": 1 - nonzero_weights / weights if weights else 0.0,
        "macs": None if unknown or other_macs is None else sum(r["macs"] for r in rows) + other_macs[0],
        "effective_macs": (
            None if unknown or other_macs is None else sum(r["effective_macs"] for r in rows) + other_macs[1]
        ),
        "macs_unknown": unknown,
        "other_params": {"params": other_params, "nonzero_params": other_nonzero, "types": types},
        "other_macs": {
            "macs": None if other_macs is None else other_macs[0],
            "effective_macs": None if other_macs is None else other_macs[1],
        },
        "layers": rows,
    }


def _inspect_onnx(path: Path) -> dict[str, Any]:
    from .onnx import load_onnx, onnx_macs, onnx_sizes

    model = load_onnx(path)  # a clear error naming the file if it is not ONNX
    sizes = onnx_sizes(path)
    counted = onnx_macs(path)["layers"]
    macs = {row["node"]: row["macs"] for row in counted}
    # A Conv/Gemm whose weight the graph computes (weight_norm, spectral_norm) is no row: its MACs go with the rest.
    computed = [row for row in counted if row.get("computed_weight")]
    arrays = _onnx_arrays(model.graph)  # every stored tensor, converted once
    rows, used = _onnx_rows(model, macs, arrays)
    # So is one whose computed weight the int8 quantizer folded and stored: sparsekit's export names them.
    from .onnx.files import COMPUTED_KEY

    folded = set(_recorded_names(model, COMPUTED_KEY))
    computed += [r for r in rows if r["name"] in folded]
    rows = [r for r in rows if r["name"] not in folded]
    used -= {t for r in computed for t in r.pop("tensors", ())}
    for r in rows:
        r.pop("tensors", None)
    extra = (sum(r["macs"] or 0 for r in computed), sum(r["effective_macs"] or 0 for r in computed))
    other_params, other_nonzero = _onnx_other(model.graph, used)
    res: dict[str, Any] = {
        "path": str(path),
        "format": "onnx",
        "bytes": sizes["bytes"],
        "gzip_bytes": sizes["gzip_bytes"],
    }
    inputs = _onnx_inputs(model)
    res["input_shape"] = next(iter(inputs.values()), None)
    res["inputs"] = inputs
    res.update(_totals(rows, other_params, other_nonzero, ["other initializers"] if other_params else [], extra))
    res["non_finite"] = _onnx_non_finite(arrays)
    nonzero = res["nonzero_params"]
    res["bytes_per_nonzero"] = sizes["bytes"] / nonzero if nonzero else None
    res["gzip_bytes_per_nonzero"] = sizes["gzip_bytes"] / nonzero if nonzero else None
    return res


def _onnx_non_finite(arrays: dict[str, tuple[Any, str]]) -> dict[str, int]:
    """NaN / inf values per floating-point initializer (sparse ones too) that holds any: a checkpoint with
    them is refused, an ONNX file is only read, so inspect says so instead."""
    import numpy as np

    out = {}
    for name, (array, stored) in arrays.items():
        if name == stored and array.dtype.kind == "f":
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                out[name] = bad
    return out


def _onnx_inputs(model: Any) -> dict[str, list[int | str]]:
    """The graph's inputs (initializers excluded), name -> shape (symbolic dims as names, "?" when unnamed)."""
    from .onnx.graph import graph_inputs

    return {
        i.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in i.type.tensor_type.shape.dim]
        for i in graph_inputs(model)
    }


# QLinearConv / QLinearMatMul / QGemm: a QOperator-format int8 file's layers (onnxruntime's quantize_static with
# QuantFormat.QOperator), whose weight is input 3 (tensors.layer_weight).
_WEIGHTED = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
)
# Ops whose output a bias Add may follow: an int8 layer's output is cast and rescaled first.
_PASS_THROUGH = ("Cast", "Mul")


def _onnx_rows(
    model: Any, macs: dict[str, int], arrays: dict[str, tuple[Any, str]]
) -> tuple[list[dict[str, Any]], set[str]]:
    """One row per Conv / ConvTranspose / Gemm / MatMul (or int8 ConvInteger / MatMulInteger) node of the
    main graph whose weight is stored in the file (dense, sparse, or int8, behind a DequantizeLinear or
    not), named after the weight (``fc1.weight`` -> ``fc1``, as torch names the layer), else after the node.
    Also returns the names of the stored tensors the rows count (weights and biases)."""

    from .onnx.tensors import QLINEAR_LAYERS, count_nonzero_weight, layer_weight, weight_zero_points

    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # An exporter stores equal tensors once and hands the copies out through Identity nodes (TorchScript does
    # for the all-zero biases BatchNorm folding gives an untrained model): each layer still has its own.
    arrays = dict(arrays)
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]

    def bias_after(output: str) -> str | None:
        """A 1-D stored tensor added to ``output`` (through a Cast / rescaling Mul), the MatMul way."""
        for _ in range(4):
            nexts = consumers.get(output, [])
            if len(nexts) != 1:
                return None
            node = nexts[0]
            if node.op_type in ("Add", "QLinearAdd"):  # QLinearAdd: operands 0 and 3, the rest scales and zero points
                operands = (
                    node.input if node.op_type == "Add" else [node.input[i] for i in (0, 3) if i < len(node.input)]
                )
                other = [i for i in operands if i != output]
                ok = len(other) == 1 and other[0] in arrays and arrays[other[0]][0].ndim == 1
                return other[0] if ok else None
            if node.op_type not in _PASS_THROUGH:
                return None
            output = node.output[0]
        return None

    zeros = weight_zero_points(model.graph)  # an asymmetric int8 weight stores 0.0 as its zero point
    readers: dict[str, int] = {}  # weight name -> how many layer nodes read it (tied, or equal values stored once)
    for node in model.graph.node:
        if node.op_type in _WEIGHTED and layer_weight(node):
            readers[layer_weight(node)] = readers.get(layer_weight(node), 0) + 1
    transposed = {n.output[0] for n in model.graph.node if n.op_type == "Transpose" and n.output}
    # Which readers share one weight in torch too: only sparsekit's export records it (the dynamo exporter also
    # stores equal tensors once and has every layer read that one name).
    tie_of: dict[str, int] = {}
    for i, group in enumerate(_tied_layers(model)):
        tie_of.update(dict.fromkeys(group, i))
    from .onnx.files import REUSED_KEY

    reused = set(_recorded_names(model, REUSED_KEY))
    rows: list[dict[str, Any]] = []
    used: set[str] = set()  # stored tensors the rows count
    read: dict[str, str] = {}  # tensor name a node reads -> the first row reading it
    from .onnx.graph import constant_values

    # A product of stored tensors alone (spectral_norm's power iteration, W @ v) is no layer: it runs on no sample.
    constant = constant_values(model.graph)
    for node in model.graph.node:
        weight = layer_weight(node)
        if node.op_type not in _WEIGHTED or weight not in arrays or node.input[0] in constant:
            continue
        w, origin = arrays[weight]
        bias_at = QLINEAR_LAYERS[node.op_type][1] if node.op_type in QLINEAR_LAYERS else 2
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "QLinearConv", "QGemm"):
            has_bias = bias_at is not None and len(node.input) > bias_at and node.input[bias_at] in arrays
            bias_name = node.input[bias_at] if has_bias and bias_at is not None else None
        else:  # MatMul (torch's Linear exported as MatMul + Add), ConvInteger, MatMulInteger
            bias_name = bias_after(node.output[0])
        n, nz = int(w.size), count_nonzero_weight(w, zeros.get(origin))
        params, nonzero = n, nz
        first = read.get(origin)  # an earlier row reads the same stored tensor (directly or through an Identity)
        key = node.name or node.output[0]
        # The name the node reads the weight by: an Identity's output (`2.weight`) names this layer, the
        # stored tensor it aliases (`0.weight`) another one; a tied weight's later users by their node.
        named = weight if ".weight" in weight else origin
        if readers[weight] > 1 and bias_name is not None and ".bias" in bias_name:
            name = bias_name.split(".bias")[0]  # a tied weight names one of its layers; each has its own bias
        elif ".weight" in named and readers[weight] == 1:
            name = named.split(".weight")[0]
        elif named.startswith("/") and "/weight/" in named and readers[weight] == 1:
            # A weight the exporter computed and stored (weight_norm's g * v / |v|, folded, then int8): TorchScript
            # names it by the layer's scope, "/3/weight/weight.0/Mul_output_0" -> 3; the node's own name was "na".
            name = named.split("/weight/")[0].strip("/").replace("/", ".")
        else:
            name = key.strip("/").rsplit("/", 1)[0] or key
        if any(r["name"] == name for r in rows):  # equal weights and biases stored once: the node tells them apart
            name = key.strip("/").rsplit("/", 1)[0] or key
        # Counted once only for a tie the file records, or a layer it records as called again (each call a node
        # reading the one weight); equal values an exporter stored once count for each layer.
        tied = first is not None and first in tie_of and tie_of.get(name) == tie_of[first]
        tied = tied or (first is not None and first in reused)
        shared_with = first if tied else None
        shared = (n, nz) if shared_with else (0, 0)
        used.add(origin)
        read.setdefault(origin, name)
        if bias_name is not None:
            bias, bias_origin = arrays[bias_name]
            b, bnz = int(bias.size), count_nonzero_weight(bias, zeros.get(bias_origin))
            params, nonzero = params + b, nonzero + bnz
            if bias_origin in read and shared_with:
                shared = (shared[0] + b, shared[1] + bnz)
            used.add(bias_origin)
            read.setdefault(bias_origin, name)
        # torch's layout, [out, in]: a MatMul's weight is stored [in, out] (dynamic int8 stores Gemm weights so).
        # So is a QLinearMatMul's, and a QGemm's unless it sets transB.
        matmul = node.op_type in ("MatMul", "MatMulInteger", "QLinearMatMul") or (
            node.op_type == "QGemm" and not any(a.name == "transB" and a.i for a in node.attribute)
        )
        matmul = matmul and w.ndim == 2 and weight not in transposed
        shape = list(w.shape)[::-1] if matmul else list(w.shape)
        rows.append(_row(name, node.op_type, shape, params, nonzero, n, nz, macs.get(key)))
        # The stored tensors this row alone counts (a caller giving the row up hands them to the other line).
        rows[-1]["tensors"] = [t for t in (origin, bias_origin if bias_name is not None else None) if t and not tied]
        if shared_with:
            rows[-1].update(shared_with=shared_with, shared_params=shared[0], shared_nonzero=shared[1])
    return rows, used


def _tied_layers(model: Any) -> list[list[str]]:
    """The groups of layers sharing one weight that sparsekit's export recorded in the file (else none)."""
    import json

    from .onnx.files import TIED_KEY

    for prop in model.metadata_props:
        if prop.key == TIED_KEY:
            try:
                groups = json.loads(prop.value)
            except (ValueError, RecursionError):
                return []
            ok = isinstance(groups, list) and all(
                isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups
            )
            return groups if ok else []
    return []


def _recorded_names(model: Any, key: str) -> list[str]:
    """The module names sparsekit's export recorded under ``key`` (a JSON list of names; else none)."""
    import json

    for prop in model.metadata_props:
        if prop.key == key:
            try:
                names = json.loads(prop.value)
            except (ValueError, RecursionError):
                return []
            return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else []
    return []


def _onnx_other(graph: Any, used: set[str]) -> tuple[int, int]:
    """Elements and nonzeros of the stored weights the rows leave out (BatchNorm, embeddings, an int8 norm scale,
    ...), not counting quantization scales and zero points."""
    from onnx import numpy_helper

    from .onnx import densify
    from .onnx.tensors import count_nonzero_weight, weight_predicate, weight_zero_points

    # The weights count_params counts (bench and report.json): a selector of its own here took float tensors
    # only and left out an int8 one a DequantizeLinear feeds to a BatchNorm or LayerNorm, so the totals differed.
    is_weight = weight_predicate(graph)
    zeros = weight_zero_points(graph)
    params = nonzero = 0
    for init in graph.initializer:
        if init.name not in used and is_weight(init.name, init.data_type):
            arr = numpy_helper.to_array(init)
            params, nonzero = params + int(arr.size), nonzero + count_nonzero_weight(arr, zeros.get(init.name))
    for sparse in graph.sparse_initializer:
        name = sparse.values.name
        if name not in used and is_weight(name, sparse.values.data_type):
            arr = densify(sparse)
            params, nonzero = params + int(arr.size), nonzero + count_nonzero_weight(arr, zeros.get(name))
    return params, nonzero


def _onnx_arrays(graph: Any) -> dict[str, tuple[Any, str]]:
    """Stored tensors by name, as ``(array, name of the stored tensor)``: initializers, sparse ones densified,
    and the outputs of a DequantizeLinear, Transpose or Reshape of one (a quantized or transposed weight, a
    bias reshaped to broadcast over a dynamic-int8 convolution's output), each as the stored array."""
    from onnx import numpy_helper

    from .onnx import densify

    arrays = {i.name: (numpy_helper.to_array(i), i.name) for i in graph.initializer}
    arrays.update({s.values.name: (densify(s), s.values.name) for s in graph.sparse_initializer})
    for op in ("DequantizeLinear", "Transpose", "Reshape"):
        for node in graph.node:
            if node.op_type == op and node.input and node.input[0] in arrays:
                arrays[node.output[0]] = arrays[node.input[0]]
    return arrays
