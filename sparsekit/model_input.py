"""What kind of values a model's input holds: floats, or token ids.

A model whose input goes straight into an ``nn.Embedding`` / ``nn.EmbeddingBag`` (a text classifier) takes integer
ids, and every input sparsekit makes for it (tracing for channel removal, export, the parity check, the benchmark)
must be int64 ids below the vocabulary size, not floats. The answer is found by running the model once on float
zeros and watching whether an embedding receives them; it is remembered per model object (its input dtype does not
change as channels are removed).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .wrappers import unwrap

__all__ = ["example_input", "id_vocab", "id_vocabs"]

_IDS = (nn.Embedding, nn.EmbeddingBag)
_known: weakref.WeakKeyDictionary[nn.Module, int | None] = weakref.WeakKeyDictionary()


class _FedFloats(Exception):
    """Raised from an embedding's pre-hook to stop the probe forward as soon as the answer is known."""


def _float_kw(model: nn.Module) -> dict[str, Any]:
    """The device and floating dtype of the model's first parameter (a float64 model refuses float32 inputs)."""
    param = next(iter(model.parameters()), None)
    if param is None:
        return {}
    return {"device": param.device, **({"dtype": param.dtype} if param.is_floating_point() else {})}


def id_vocab(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """When ``model`` takes token ids (an embedding is fed the model's own input), how many ids there are: the
    smallest ``num_embeddings`` of its embeddings, so every id below it indexes a row of each; None for a model
    that takes floats (or whose forward fails on zeros of ``input_shape`` for another reason, which the caller's
    own run then reports)."""
    # The model inside DDP / torch.compile: its probe must start no collective (DDP broadcasts buffers in forward)
    # and compile nothing.
    model = unwrap(model)
    embeddings = [m for m in model.modules() if isinstance(m, _IDS)]
    if not embeddings:
        return None  # no forward needed: nothing could refuse floats for being floats
    if model in _known:
        return _known[model]

    def before(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            raise _FedFloats

    kw = _float_kw(model)
    handles = [m.register_forward_pre_hook(before) for m in embeddings]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # the probe must not move a BatchNorm's running statistics
    answer: int | None = None
    try:
        with torch.no_grad():
            model(torch.zeros([max(1, int(input_shape[0])), *[int(d) for d in input_shape[1:]]], **kw))
    except _FedFloats:
        answer = min(int(m.num_embeddings) for m in embeddings)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - the user's model failing for another reason: not ours to judge here
        return None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    _known[model] = answer
    return answer


def id_vocabs(model: nn.Module, input_shapes: Sequence[Sequence[int]]) -> list[int | None]:
    """:func:`id_vocab` for a forward of several inputs (``forward(tokens, lengths)``), one answer per input of
    ``input_shapes``: the inputs are float zeros, and an input an embedding is fed (itself or a view of it, by its
    storage) takes ids, and the forward runs again with it as int64 zeros, until no embedding receives floats.
    None for every input the model does not feed an embedding (or when its forward fails for another reason)."""
    model = unwrap(model)
    embeddings = [m for m in model.modules() if isinstance(m, _IDS)]
    answers: list[int | None] = [None] * len(input_shapes)
    if not embeddings:
        return answers
    vocab = min(int(m.num_embeddings) for m in embeddings)
    kw = _float_kw(model)
    shapes = [[max(1, int(s[0])), *[int(d) for d in s[1:]]] for s in input_shapes]
    fed: list[torch.Tensor] = []

    def before(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            fed.append(args[0])
            raise _FedFloats

    handles = [m.register_forward_pre_hook(before) for m in embeddings]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # the probe must not move a BatchNorm's running statistics
    try:
        for _ in input_shapes:  # each run finds at most one more input of ids
            xs = [
                torch.zeros(shape, dtype=torch.long, device=kw.get("device")) if ids else torch.zeros(shape, **kw)
                for shape, ids in zip(shapes, answers, strict=True)
            ]
            fed.clear()
            try:
                with torch.no_grad():
                    model(*xs)
                break
            except _FedFloats:
                storage = fed[0].untyped_storage().data_ptr()
                found = [
                    i for i, x in enumerate(xs) if x.is_floating_point() and x.untyped_storage().data_ptr() == storage
                ]
                if not found:
                    break  # floats the model computed itself: not an input's fault
                answers[found[0]] = vocab
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - the user's model failing for another reason: not ours to judge here
        pass
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return answers


def example_input(
    model: nn.Module, input_shape: Sequence[int], batch: int | None = None, random: bool = False
) -> torch.Tensor:
    """An input for running ``model``: zeros of ``input_shape`` (batch first, e.g. ``[1, 784]``), or seeded values
    with ``random`` (standard normal; token ids uniform below the vocabulary for a model that takes ids);
    ``batch`` replaces the first dimension. On the device of the model's first parameter, in its dtype (CPU
    float32 for a model without parameters), or int64 for a model that takes token ids."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else None
    shape = [int(d) for d in input_shape]
    if batch is not None:
        shape[0] = batch
    vocab = id_vocab(model, input_shape)
    gen = torch.Generator().manual_seed(0)
    if vocab is not None:
        if random:
            return torch.randint(0, vocab, shape, generator=gen).to(device)
        return torch.zeros(shape, dtype=torch.long, device=device)
    kw = _float_kw(model)
    if random:
        return torch.randn(shape, generator=gen).to(**kw)
    return torch.zeros(shape, **kw)
