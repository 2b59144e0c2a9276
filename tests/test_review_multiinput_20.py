"""Models whose forward takes more than one tensor: (image, metadata), (x, mask), a dict batch."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import TargetError


class TwoTower(nn.Module):
    """forward(image, meta): an image tower and a metadata tower joined by a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
        self.meta = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.img(image), self.meta(meta)], 1))


def _recipe(*entries: dict) -> dict:
    return {"pruning": list(entries), "finetune": {"epochs": 1}}


STRUCTURED = {"method": "structured", "ratio": 0.5, "round_to": None}


@pytest.mark.parametrize("context", [None, {"input_shape": [1, 3, 4]}])
def test_structured_on_a_two_input_forward_says_no_shape_fits(context: dict | None) -> None:
    # The trace feeds one tensor; the advice was "check model.input_shape", which no shape can satisfy.
    model = TwoTower()
    with pytest.raises(TargetError) as caught:
        pruner = sparsekit.Pruner(model, _recipe(STRUCTURED), steps_per_epoch=2, context=context)
        model(torch.randn(4, 3, 4), torch.randn(4, 5))  # the first batch builds the methods (no context)
        pruner.step()
    text = str(caught.value)
    assert "several inputs" in text and "unstructured method" in text
    assert "check model.input_shape" not in text


def test_l1_head_warning_on_a_two_input_forward_does_not_ask_for_a_shape() -> None:
    model = TwoTower()
    spec = {"method": "l1", "strength": 0.1, "group": "row", "remove_dead": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparsekit.Pruner(model, _recipe(spec), steps_per_epoch=2)  # no shape: one is guessed from the first Linear
    texts = [str(w.message) for w in caught if "classifier head" in str(w.message)]
    assert texts and "several inputs" in texts[0] and "set model.input_shape" not in texts[0]


class DictBatch(TwoTower):
    """forward(batch): the batch a collate function returns, {"image": ..., "meta": ...}."""

    def forward(self, batch: dict) -> torch.Tensor:  # type: ignore[override]
        return super().forward(batch["image"], batch["meta"])


def test_structured_on_a_dict_batch_does_not_ask_for_a_shape() -> None:
    # It said "passed no batch tensor ... set model.input_shape", and a shape given then failed in the trace.
    model = DictBatch()
    pruner = sparsekit.Pruner(model, _recipe(STRUCTURED), steps_per_epoch=2)
    with pytest.raises(TargetError) as caught:
        model({"image": torch.randn(4, 3, 4), "meta": torch.randn(4, 5)})
    text = str(caught.value)
    assert "inside a dict" in text and "unstructured method" in text and "set model.input_shape" not in text
    with pytest.raises(TargetError, match="could not be set up on the first batch"):
        pruner.step()


def test_export_onnx_of_a_two_input_forward_does_not_ask_for_another_shape(tmp_path) -> None:
    with pytest.raises(sparsekit.ExportError) as caught:
        sparsekit.export_onnx(TwoTower(), tmp_path / "m.onnx", input_shape=(1, 3, 4))
    text = str(caught.value)
    assert "several inputs" in text and "one shape per input" in text
    assert "give the shape it takes" not in text
    assert not (tmp_path / "m.onnx").exists()


def test_layer_report_counts_macs_of_a_two_input_forward_from_its_inputs() -> None:
    # input_shape feeds one tensor, which a forward(image, meta) refuses: its MACs could not be counted at all.
    model = TwoTower()
    batch = (torch.randn(4, 3, 4), torch.randn(4, 5))
    rows = {r["name"]: r for r in sparsekit.layer_report(model, inputs=batch)}
    # per sample (the batch of 4 is cut to one): in_features * out_features
    assert {n: r["macs"] for n, r in rows.items()} == {"img.1": 12 * 8, "meta.0": 5 * 8, "head": 16 * 3}
    with torch.no_grad():
        model.meta[0].weight[:4] = 0
    assert sparsekit.layer_report(model, inputs=batch)[1]["effective_macs"] == 20
    with pytest.raises(TypeError, match=r"inputs\[1\]"):
        sparsekit.layer_report(model, inputs=(batch[0], [1.0, 2.0]))


def _two_input_batches(n: int = 3) -> list:
    gen = torch.Generator().manual_seed(0)
    return [
        (
            (torch.randn(8, 3, 4, generator=gen), torch.randn(8, 5, generator=gen)),
            torch.randint(0, 3, (8,), generator=gen),
        )
        for _ in range(n)
    ]


def test_finetune_trains_a_two_input_model_on_tuple_batches() -> None:
    # ((image, meta), labels) batches: the tuple went to .to() and failed as "'tuple' object has no attribute 'to'".
    torch.manual_seed(0)
    model = TwoTower()
    data = _two_input_batches()
    recipe = _recipe({"method": "magnitude", "sparsity": 0.5})
    model, history, pruner = sparsekit.finetune(model, recipe, data, data, progress=False)
    assert len(history) == 1 and 0.0 <= history[0]["val_accuracy"] <= 1.0
    model = pruner.finalize()
    assert sparsekit.sparsity(model) == pytest.approx(0.5, abs=0.02)


def test_finetune_refuses_dict_inputs_naming_the_tuple_it_takes() -> None:
    data = [({"image": x, "meta": m}, y) for (x, m), y in _two_input_batches(1)]
    with pytest.raises(sparsekit.DataError, match=r"inputs are a dict .*\(\(input1, input2, \.\.\.\), labels\)"):
        sparsekit.finetune(TwoTower(), _recipe({"method": "magnitude", "sparsity": 0.5}), data, data, progress=False)


def test_a_two_input_models_checkpoint_records_no_one_input_shape(tmp_path) -> None:
    # The first batch's first tensor ([1, 3, 4], the image) was recorded as the model's input shape and written
    # into the checkpoint as "the full input shape" of a model that takes two.
    model = TwoTower()
    pruner = sparsekit.Pruner(model, _recipe({"method": "magnitude", "sparsity": 0.5}), steps_per_epoch=2)
    model(torch.randn(4, 3, 4), torch.randn(4, 5))
    path = sparsekit.save_model(model, tmp_path / "m.pt", factory="mypkg.nets:build", pruner=pruner)
    assert torch.load(path, weights_only=True)["input_shape"] is None


def test_a_one_input_model_still_takes_its_shape_from_the_first_batch(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    pruner = sparsekit.Pruner(model, _recipe({"method": "magnitude", "sparsity": 0.5}), steps_per_epoch=2)
    model(torch.randn(4, 6))
    path = sparsekit.save_model(model, tmp_path / "m.pt", factory="mypkg.nets:build", pruner=pruner)
    assert torch.load(path, weights_only=True)["input_shape"] == [1, 6]


TWO_TOWER_FILE = """
import torch
from torch import nn


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = nn.Linear(12, 8)
        self.meta = nn.Linear(5, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, image, meta):
        return self.head(torch.cat([self.img(image.flatten(1)), self.meta(meta)], 1))


def build():
    return TwoTower()
"""


def test_inspect_of_a_two_input_model_does_not_point_at_input_shape(tmp_path, monkeypatch) -> None:
    # Its note said "... so no input shape fits ..." and then "(--input-shape)", the flag it had just ruled out.
    from click.testing import CliRunner

    from sparsekit.cli import main

    (tmp_path / "twotower_review20.py").write_text(TWO_TOWER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "two.pt"
    torch.save(__import__("twotower_review20").build().state_dict(), weights)
    result = CliRunner().invoke(main, ["inspect", str(weights), "--arch", "twotower_review20:build"])
    assert result.exit_code == 0, result.stderr
    (note,) = [line for line in result.stdout.splitlines() if line.startswith("Note:")]
    assert "several inputs" in note and "--input-shape" not in note


class ConvTwoTower(nn.Module):
    """A conv image tower first (no input shape is guessed from it) and a Linear metadata tower."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.meta = nn.Linear(5, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.img(image), self.meta(meta)], 1))


def test_l1_group_mismatch_on_a_two_input_model_does_not_ask_for_a_shape() -> None:
    # The mismatch (a Linear under group: channel) came with "set model.input_shape in the recipe", which no
    # shape can satisfy for forward(image, meta).
    spec = {"method": "l1", "strength": 0.1, "group": "channel", "remove_dead": False}
    with pytest.raises(sparsekit.RecipeError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsekit.Pruner(ConvTwoTower(), _recipe(spec), steps_per_epoch=2)
    assert "group: row" in str(caught.value) and "model.input_shape" not in str(caught.value)


def test_export_onnx_writes_one_input_per_tensor_of_a_two_input_forward(tmp_path) -> None:
    # export_onnx fed one tensor of input_shape and refused such a model; one shape per input now exports it.
    import onnxruntime as ort

    torch.manual_seed(0)
    model = TwoTower()
    with torch.no_grad():
        model.img[1].weight[:, ::2] = 0  # zeros that must survive the export
    result = sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=[[1, 3, 4], [1, 5]])
    assert result["parity"]["ok"] and result["zeros"]["zeros_ok"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("image", [3, 4]), ("meta", [5])]
    image, meta = torch.randn(3, 3, 4), torch.randn(3, 5)
    (got,) = session.run(None, {"image": image.numpy(), "meta": meta.numpy()})
    assert got == pytest.approx(model.eval()(image, meta).detach().numpy(), abs=1e-5)
