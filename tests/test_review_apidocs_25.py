"""Review of the public Python API as a library user reads it (signatures, type hints, documented errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.analysis import run_sensitivity

RECIPE = {
    "version": 1,
    "model": {"input_shape": [1, 8]},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": {"include": ["*"]}}],
}


def test_run_sensitivity_takes_a_path_for_data(tmp_path: Path) -> None:
    # data= is typed and documented like run_prune's: a pathlib.Path to a missing .npz is the DataError naming it,
    # not AttributeError "'PosixPath' object has no attribute 'strip'".
    model_file = tmp_path / "m.pt"
    torch.save(nn.Linear(8, 2).state_dict(), model_file)
    missing = tmp_path / "nothere.npz"
    with pytest.raises(sparsekit.DataError, match="nothere.npz"):
        run_sensitivity(model_file, RECIPE, tmp_path / "out", data=missing, progress=False)
    with pytest.raises(TypeError, match="run_sensitivity"):
        run_sensitivity(model_file, RECIPE, tmp_path / "out", data=3, progress=False)  # type: ignore[arg-type]


def test_update_optimizer_is_typed_to_return_the_optimizer_given() -> None:
    # It updates the optimizer in place and returns it: `optimizer = pruner.update_optimizer(optimizer)` with an SGD
    # was a mypy error ("Optimizer" assigned to "SGD") while the hint said any Optimizer came back.
    import typing

    hints = typing.get_type_hints(sparsekit.Pruner.update_optimizer)
    assert isinstance(hints["return"], typing.TypeVar)
    assert hints["return"] is hints["optimizer"]
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    pruner = sparsekit.Pruner(model, RECIPE, steps_per_epoch=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert pruner.update_optimizer(optimizer) is optimizer


@pytest.mark.parametrize(("steps", "error"), [(0, ValueError), (1.5, TypeError)])
def test_rehearse_names_its_own_steps_per_epoch(steps: object, error: type[Exception]) -> None:
    # A bad steps_per_epoch was reported as "Pruner(steps_per_epoch=...)", a call the user of rehearse never made.
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(error, match=r"^rehearse\(steps_per_epoch=\.\.\.\)"):
        sparsekit.rehearse(model, RECIPE, [1, 8], steps)  # type: ignore[arg-type]


AUTO = {
    "version": 1,
    "model": {"input_shape": [1, 8]},
    "pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.5}],
}


def _val() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 8, generator=g), torch.randint(0, 2, (8,), generator=g))]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # an empty loader (or max_batches=0) allocated on 0 samples without a word
        ({"val_loader": []}, sparsekit.DataError, "no samples"),
        ({"max_batches": 0}, ValueError, r"auto_allocate\(max_batches=\.\.\.\)"),
        ({"max_batches": -1}, ValueError, r"auto_allocate\(max_batches=\.\.\.\)"),  # islice's "Stop argument"
        (
            {"val_loader": None},
            sparsekit.DataError,
            r"auto_allocate\(val_loader=\.\.\.\)",
        ),  # "'NoneType' is not iterable"
        ({"val_loader": [torch.zeros(4, 8)]}, sparsekit.DataError, r"\(inputs, labels\)"),  # "too many values"
        ({"model": None}, TypeError, r"auto_allocate\(model=\.\.\.\)"),  # "has no attribute 'modules'"
        ({"input_shape": 8}, ValueError, "batch first"),  # "'int' object is not iterable"
        ({"grid": [0.5]}, TypeError, "grid: expected a dict"),  # "'list' object has no attribute 'items'"
        ({"grid": {"unstructured": "0.5"}}, TypeError, "expected a list"),  # float('.')
        ({"progress": True}, TypeError, r"auto_allocate\(progress=\.\.\.\)"),
        ({"resume_from": {}}, TypeError, "SensitivityTable"),
    ],
)
def test_auto_allocate_refuses_bad_arguments_as_documented(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    from sparsekit.allocation import auto_allocate

    args: dict[str, object] = {
        "model": nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)),
        "val_loader": _val(),
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        auto_allocate(args.pop("model"), AUTO, args.pop("val_loader"), **args)  # type: ignore[arg-type]


def test_analyze_and_allocate_name_their_own_arguments() -> None:
    from sparsekit.allocation import allocate
    from sparsekit.sensitivity import analyze

    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"^entries: expected a list"):
        analyze(model, AUTO, _val(), entries=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^allocate\(table=\.\.\.\)"):  # "'NoneType' object has no attribute 'layer'"
        allocate(model, AUTO, None, input_shape=[1, 8])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^allocate\(input_shape=\.\.\.\)"):
        allocate(model, AUTO, analyze(model, AUTO, _val(), grid={"unstructured": [0.5]}), input_shape=8)  # type: ignore[arg-type]


def test_check_zeros_names_the_weight_of_a_one_layer_model_as_its_state_dict_does(tmp_path: Path) -> None:
    # A model that is itself a Linear reported its weight as ".weight", a name neither the model nor the file has.
    from sparsekit.onnx import check_zeros

    model = nn.Linear(8, 4)
    with torch.no_grad():
        model.weight[:, :4] = 0
    path = tmp_path / "lin.onnx"
    info = sparsekit.export_onnx(model, path, input_shape=(1, 8), exporter="torchscript")
    assert [layer["name"] for layer in info["zeros"]["layers"]] == ["weight"]
    result = check_zeros(model, path)
    assert [layer["name"] for layer in result["layers"]] == ["weight"]
    assert result["layers"][0]["onnx_zeros"] == 16


def test_index_dtype_for_refuses_an_index_no_type_holds() -> None:
    import numpy as np

    from sparsekit.onnx import index_dtype_for

    assert index_dtype_for(127) is np.int8 and index_dtype_for(128) is np.int16
    with pytest.raises(ValueError, match="max_index"):  # was StopIteration leaking out of the call
        index_dtype_for(2**63)
    with pytest.raises(ValueError, match="max_index"):  # was int8
        index_dtype_for(-1)


def test_save_model_types_pruner_as_the_pruner_it_requires() -> None:
    # save_model(pruner=...) raises TypeError for anything but a Pruner (pruner.state_dict(), say), while its hint
    # was Any: a type checker let the mistake through.
    import inspect

    from sparsekit.modelio import save_model

    annotation = inspect.signature(save_model).parameters["pruner"].annotation
    assert annotation.replace(" ", "") in ("Pruner|None", "Optional[Pruner]")


@pytest.mark.parametrize("kwargs", [[8, 4], "in_features=8", {1: 2}])
@pytest.mark.parametrize("call", ["load_model", "inspect"])
def test_model_readers_refuse_kwargs_that_are_not_a_dict_of_names(tmp_path: Path, call: str, kwargs: object) -> None:
    # Was a ModelFileError quoting "inspect.Signature.bind() argument after ** must be a mapping, not list", as if the
    # file were at fault; run_prune and plan say a TypeError naming the argument.
    path = tmp_path / "sd.pt"
    torch.save(nn.Linear(8, 4).state_dict(), path)
    with pytest.raises(TypeError, match=rf"^{call}\(kwargs=\.\.\.\)"):
        getattr(sparsekit, call)(path, arch="torch.nn:Linear", kwargs=kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scorers": [len]}, TypeError, "scorers: expected a dict"),  # "cannot convert dictionary update sequence"
        ({"scorers": {3: len}}, ValueError, "scorers: key 3"),  # found only once fit had started
        ({"submodule": 3}, TypeError, r"\(submodule=\.\.\.\)"),
        ({"finalize": "no"}, TypeError, r"\(finalize=\.\.\.\)"),  # a true value: it finalized
    ],
)
def test_trainer_callbacks_check_their_options_when_built(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    from sparsekit.integrations.lightning import SparsekitCallback

    with pytest.raises(error, match=match):
        SparsekitCallback(RECIPE, **kwargs)  # type: ignore[arg-type]
