"""Review of the Python API as a user's own training script calls it (misuse gives a clear error naming the fix)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsekit

RECIPE: dict[str, Any] = {
    "version": 1,
    "finetune": {"epochs": 1},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}],
}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


_CALLS: dict[str, tuple[Callable[[nn.Module, Path], object], type[Exception]]] = {
    "Pruner": (lambda m, d: sparsekit.Pruner(m, RECIPE, 2), sparsekit.TargetError),
    "sparsity": (lambda m, d: sparsekit.sparsity(m), ValueError),
    "layer_report": (lambda m, d: sparsekit.layer_report(m), ValueError),
    "export_onnx": (lambda m, d: sparsekit.export_onnx(m, d / "m.onnx", input_shape=[1, 8]), sparsekit.ExportError),
    "save_model": (lambda m, d: sparsekit.save_model(m, d / "m.pt", factory="pkg.mod:build"), sparsekit.ModelFileError),
    "rehearse": (lambda m, d: sparsekit.rehearse(m, RECIPE, [1, 8], steps_per_epoch=2), sparsekit.TargetError),
}


@pytest.mark.parametrize("call", sorted(_CALLS))
@pytest.mark.parametrize("where", ["whole", "one layer"])
def test_a_model_on_the_meta_device_is_refused_naming_the_layer_and_how_to_load_weights(
    call: str, where: str, tmp_path: Path
) -> None:
    # A model built under torch.device("meta") (shapes only, weights to be loaded later) failed deep inside torch:
    # "Tensor.item() cannot be called on meta tensors" (sparsity, layer_report, the Pruner's first step) or
    # "Cannot copy out of meta tensor; no data!" (export_onnx, save_model), naming neither the model nor the fix.
    model = _mlp()
    if where == "whole":
        model = model.to("meta")
    else:
        model[2].to("meta")
    fn, error = _CALLS[call]
    with pytest.raises(error, match="meta device") as caught:
        fn(model, tmp_path)
    message = str(caught.value)
    assert f"{call}(model=...)" in message
    assert ("'0'" if where == "whole" else "'2'") in message
    assert "load_state_dict(state, assign=True)" in message
    assert not list(tmp_path.iterdir())


def test_a_meta_model_given_its_weights_is_taken() -> None:
    real = _mlp()
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    model.load_state_dict(real.state_dict(), assign=True)
    assert sparsekit.sparsity(model) == 0.0
    pruner = sparsekit.Pruner(model, RECIPE, 2)
    pruner.step()
    assert sparsekit.sparsity(pruner.finalize()) == pytest.approx(0.5, abs=0.02)


def _samples() -> TensorDataset:
    torch.manual_seed(0)
    return TensorDataset(torch.randn(16, 8), torch.randint(0, 2, (16,)))


@pytest.mark.parametrize("argument", ["train_loader", "val_loader"])
def test_a_dataset_given_for_a_loader_says_to_wrap_it_in_a_dataloader(argument: str) -> None:
    # finetune(model, recipe, dataset, ...) read the dataset's samples as batches: "a batch holds torch.int64 labels
    # of shape []; labels must be integer class indices ... not one-hot rows", a message about labels that sent the
    # user to their labels; as val_loader it "yields no batches", naming no way out for a Dataset.
    loaders: dict[str, Any] = {
        "train_loader": DataLoader(_samples(), batch_size=4),
        "val_loader": [(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))],
    }
    loaders[argument] = _samples()
    with pytest.raises(sparsekit.DataError, match=r"single samples, not batches.*DataLoader\(dataset, batch_size="):
        sparsekit.finetune(_mlp(), RECIPE, loaders["train_loader"], loaders["val_loader"], progress=False)


def test_samples_with_python_int_labels_are_named_as_samples() -> None:
    samples = [(torch.randn(8), 1), (torch.randn(8), 0)]  # what a torchvision-style dataset yields
    with pytest.raises(sparsekit.DataError, match="one label, 1, not one per input.*DataLoader"):
        sparsekit.finetune(_mlp(), RECIPE, samples, samples, progress=False)


def test_sensitivity_and_int8_calibration_say_to_wrap_a_dataset(tmp_path: Path) -> None:
    from sparsekit.onnx import quantize_int8
    from sparsekit.sensitivity import analyze

    with pytest.raises(sparsekit.DataError, match=r"analyze\(val_loader=\.\.\.\).*DataLoader\(dataset"):
        analyze(_mlp(), RECIPE, _samples(), input_shape=[1, 8])  # type: ignore[arg-type]
    sparsekit.export_onnx(_mlp(), tmp_path / "m.onnx", input_shape=[1, 8])
    # "calibration batch 1 for input 'input' has shape [8]; the model takes rank 2", and no more
    with pytest.raises(sparsekit.ExportError, match=r"has shape \[8\].*single samples.*DataLoader\(dataset"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", calibration=_samples())
    assert not (tmp_path / "q.onnx").exists()


STRUCTURED: dict[str, Any] = {
    "version": 1,
    "finetune": {"epochs": 1},
    "pruning": [{"method": "structured", "ratio": 0.5, "schedule": "oneshot"}],
}


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    )


def test_update_optimizer_of_an_optimizer_over_another_model_is_refused() -> None:
    # Taken without a word: the optimizer that trains the model kept stepping the removed parameters, the model's new
    # ones never trained, and the "optimizer was not updated" warning was silenced by the call.
    import copy

    model = _cnn()
    copy_opt = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = sparsekit.Pruner(model, STRUCTURED, 1, context={"input_shape": [1, 1, 6, 6]})
    nn.functional.cross_entropy(model(torch.randn(4, 1, 6, 6)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    pruner.step()
    assert pruner.structure_changed
    assert not pruner.trains(copy_opt) and pruner.trains(optimizer)
    with pytest.raises(ValueError, match="holds none of the pruned model's parameters.*the optimizer that trains"):
        pruner.update_optimizer(copy_opt)
    assert pruner.structure_changed  # still told to update the real one
    assert pruner.update_optimizer(optimizer) is optimizer
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    assert pruner.update_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))  # one built afresh: taken


L1: dict[str, Any] = {
    "version": 1,
    "finetune": {"epochs": 2},
    "pruning": [{"method": "l1", "strength": 1.0e-2, "mode": "penalty", "threshold": 1.0e-3}],
}


def _l1_loop_warnings(order: list[str]) -> list[str]:
    model = _mlp()
    pruner = sparsekit.Pruner(model, L1, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: dict[str, Callable[[torch.Tensor, torch.Tensor], object]] = {
        "zero_grad": lambda x, y: optimizer.zero_grad(),
        "backward": lambda x, y: nn.functional.cross_entropy(model(x), y).backward(),
        "regularize": lambda x, y: pruner.regularize(),
        "optimizer.step": lambda x, y: optimizer.step(),
        "pruner.step": lambda x, y: pruner.step(),
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            x, y = torch.randn(8, 8), torch.randint(0, 2, (8,))
            for call in order:
                calls[call](x, y)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "order",
    [
        ["zero_grad", "backward", "optimizer.step", "regularize", "pruner.step"],
        ["zero_grad", "backward", "optimizer.step", "pruner.step", "regularize"],
        ["regularize", "zero_grad", "backward", "optimizer.step", "pruner.step"],
    ],
)
def test_regularize_whose_gradient_zero_grad_discards_is_warned(order: list[str]) -> None:
    # Its gradient was reset by the next zero_grad() before any optimizer step used it: the L1 penalty never acted,
    # without a word (or, called after optimizer.step(), blamed on pruner.step() "before optimizer.step()").
    told = _l1_loop_warnings(order)
    assert len(told) == 1, told
    assert "zero_grad() reset before any optimizer step used it" in told[0]
    assert "after loss.backward() and before optimizer.step()" in told[0]


@pytest.mark.parametrize(
    "order",
    [
        ["zero_grad", "backward", "regularize", "optimizer.step", "pruner.step"],
        ["zero_grad", "regularize", "backward", "optimizer.step", "pruner.step"],  # accumulates into the same .grad
    ],
)
def test_regularize_before_the_optimizer_step_is_not_warned(order: list[str]) -> None:
    assert _l1_loop_warnings(order) == []


@pytest.mark.parametrize("checkpoint", [True, 3, None])
def test_prepare_resume_names_a_checkpoint_that_is_no_folder_path(checkpoint: object) -> None:
    # HF's resume_from_checkpoint=True (the last checkpoint) given here failed in pathlib: "expected str, bytes or
    # os.PathLike object, not bool", naming neither the argument nor how to find the folder.
    pytest.importorskip("transformers")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    with pytest.raises(TypeError, match=r"prepare_resume\(checkpoint=\.\.\.\).*get_last_checkpoint"):
        SparsekitTrainerCallback(RECIPE).prepare_resume(object(), checkpoint)  # type: ignore[arg-type]


def test_prepare_resume_names_a_trainer_that_is_not_one(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from sparsekit.integrations.transformers import SparsekitTrainerCallback

    (tmp_path / "pruner.pt").write_bytes(b"")
    with pytest.raises(TypeError, match=r"prepare_resume\(trainer=\.\.\.\): expected the transformers.Trainer"):
        SparsekitTrainerCallback(RECIPE).prepare_resume(None, tmp_path)  # type: ignore[arg-type]


def test_a_missing_recipe_file_names_the_python_way_to_list_shipped_ones_too():
    # The library's message named only the command, to a Python caller (y4's find).
    import sparsekit
    from sparsekit.errors import RecipeError

    with pytest.raises(RecipeError, match=r"nope\.yaml: recipe file not found.*sparsekit\.shipped_recipes\(\)"):
        sparsekit.Pruner(torch.nn.Linear(2, 2), "nope.yaml", 1)
