"""Review (parametrized layers): models whose Linear/Conv weights a parametrization or an old-style norm hook
computes (weight_norm, spectral_norm, a parametrization of the user's own)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import sparsekit
from sparsekit.stats import layer_macs, model_stats

torch.set_num_threads(1)


class _Symmetric(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.triu() + x.triu(1).transpose(-1, -2)


def _mlp(wrap: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old hook-style weight_norm is deprecated
        if wrap == "weight_norm":
            parametrizations.weight_norm(model[3])
        elif wrap == "spectral_norm":
            parametrizations.spectral_norm(model[3])
        elif wrap == "old_weight_norm":
            torch.nn.utils.weight_norm(model[3])
        elif wrap == "symmetric":
            parametrize.register_parametrization(model[3], "weight", _Symmetric())
    return model


def _cnn(wrap: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    if wrap == "old_spectral_norm":
        torch.nn.utils.spectral_norm(model[2])
    else:
        parametrizations.weight_norm(model[2])
    return model


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "old_weight_norm", "symmetric"])
def test_macs_count_a_linear_whose_weight_is_computed(wrap: str) -> None:
    model = _mlp(wrap)
    macs = layer_macs(model, [1, 1, 8, 8])
    assert macs.get("3") == 32 * 32  # was left out: only maskable layers were counted
    assert model_stats(model, [1, 1, 8, 8])["macs"] == 64 * 32 + 32 * 32 + 32 * 10


@pytest.mark.parametrize(
    ("build", "wrap", "expected"),
    [
        (_mlp, "weight_norm", 64 * 32 + 32 * 32 + 32 * 10),
        (_cnn, "old_spectral_norm", 8 * 9 * 64 + 8 * 8 * 9 * 64 + 8 * 10),
    ],
)
def test_inspect_of_the_checkpoint_and_of_its_onnx_agree(tmp_path, build, wrap: str, expected: int) -> None:
    model = build(wrap)
    shape = [1, 1, 8, 8]
    sparsekit.save_model(model, tmp_path / "m.pt", factory="tests.test_review_parametrized_19:_mlp", input_shape=shape)
    sparsekit.export_onnx(model, tmp_path / "m.onnx", shape, exporter="torchscript")
    from sparsekit.inspection import _torch_counts

    torch_side = _torch_counts(model, shape)
    onnx_side = sparsekit.inspect(tmp_path / "m.onnx")
    # The ONNX side left out the Gemm/Conv whose weight the graph computes, and counted spectral_norm's power
    # iteration (weight_orig @ v, no sample's work) as a layer of its own.
    assert torch_side["macs"] == onnx_side["macs"] == expected
    assert onnx_side["other_macs"]["macs"] == torch_side["other_macs"]["macs"] > 0
    assert "MatMul" not in {row["type"] for row in onnx_side["layers"]}


def _l1_target_recipe(group: str) -> sparsekit.Recipe:
    return sparsekit.Recipe(
        version=1,
        model={"input_shape": [1, 1, 8, 8]},
        finetune={"epochs": 2},
        pruning=[
            {"method": "l1", "strength": 1e-3, "group": group, "mode": "proximal", "target": 0.5,
             "remove_dead": True, "schedule": {"start_epoch": 0, "end_epoch": 2}},
        ],
    )  # fmt: skip


def _train(model: nn.Module, pruner: sparsekit.Pruner, steps: int = 10) -> nn.Module:
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        opt.zero_grad()
        (nn.functional.cross_entropy(model(x), y) + pruner.penalty()).backward()
        opt.step()
        pruner.step()
    return pruner.finalize()


def test_an_l1_target_counts_only_units_finalize_can_remove() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )  # fmt: skip
    parametrizations.weight_norm(model[5])  # layer 3's units feed a computed weight: they cannot be removed
    with pytest.warns(UserWarning, match="left out of it"):
        pruner = sparsekit.Pruner(model, _l1_target_recipe("row"), steps_per_epoch=5)
    out = _train(model, pruner)
    report = pruner.methods[0].report()
    # Layer 3's zeroed units counted toward the target (met) and were all kept: fewer units removed than asked.
    assert "3" in report["target_left_out"]
    assert out[1].out_features == 16 and out[3].out_features == 32
    assert bool((out[3].weight != 0).any(dim=1).all())  # left as it is: no unit zeroed for nothing


def test_the_report_says_which_layers_an_l1_target_left_out() -> None:
    from sparsekit.report import MethodResult, _outcome

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )  # fmt: skip
    parametrizations.weight_norm(model[5])
    recipe = _l1_target_recipe("row")
    with pytest.warns(UserWarning):
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=5)
    method = pruner.methods[0]
    result = MethodResult.model_validate({"method": "l1", "layers": list(method.layers), **method.report()})
    remarks = _outcome(0, result, recipe.pruning[0].model_dump(), {}, {}).remarks
    # The summary said only "not pruned: 3, 7 (no pruning entry selects them)".
    assert any("left out of the entry" in r and "3 (its units reach 5" in r for r in remarks)


@pytest.mark.parametrize("wrap", ["grouped", "weight_norm"])
def test_an_l1_target_no_selected_layer_can_meet_by_removal_is_refused(wrap: str) -> None:
    torch.manual_seed(0)
    if wrap == "grouped":
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
        )  # fmt: skip
        group = "channel"
    else:
        model, group = _mlp("weight_norm"), "row"
    # The target was reported met while finalize removed nothing.
    with pytest.raises(sparsekit.errors.RecipeError, match=r"pruning\[0\]\.target: .*remove_dead: false"):
        sparsekit.Pruner(model, _l1_target_recipe(group), steps_per_epoch=5)


class _Positive(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x)


def _mlp_positive_bias() -> nn.Module:
    """Layer 3's bias is parametrized (its weight is a parameter: the layer is selected); layer 1 only feeds it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    parametrize.register_parametrization(model[3], "bias", _Positive())
    return model


def test_structured_names_a_parametrized_bias_and_its_remedy() -> None:
    recipe = sparsekit.Recipe(
        version=1, model={"input_shape": [1, 1, 8, 8]}, finetune={"epochs": 1},
        pruning=[{"method": "structured", "ratio": 0.5, "schedule": "oneshot"}],
    )  # fmt: skip
    # Was "torch-pruning failed removing channels for '3' (KeyError: "attribute 'bias' already exists"), a layout it
    # does not model": no word of the parametrization nor of the call that removes it.
    with pytest.raises(sparsekit.errors.SparsekitError, match=r"'3', whose bias is computed .*layer, 'bias'\)"):
        sparsekit.Pruner(_mlp_positive_bias(), recipe, steps_per_epoch=1)


def test_an_l1_target_leaves_out_a_layer_whose_bias_is_parametrized_and_removes_the_others_units() -> None:
    model = _mlp_positive_bias()
    with pytest.warns(UserWarning, match="'3': its bias is computed"):
        pruner = sparsekit.Pruner(model, _l1_target_recipe("row"), steps_per_epoch=5)
    # Layer 1's units only feed layer 3's weight (its inputs), which shrinks: they can go.
    assert list(pruner.methods[0].layers) == ["1"]
    out = _train(model, pruner)
    assert out[1].out_features == 16 and out[3].in_features == 16 and out[3].out_features == 32


class _MatrixExp(nn.Module):
    """A layer whose weight is exp(A) computed in forward (orthogonal's way, without a parametrization): neither
    exporter converts linalg_matrix_exp."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(8, 8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ torch.linalg.matrix_exp(self.a - self.a.T)


def test_auto_export_failing_with_both_exporters_says_so(tmp_path) -> None:
    # auto had tried TorchScript first, then said the dynamo failure's "(--exporter torchscript may succeed)".
    with pytest.raises(sparsekit.errors.ExportError) as err:
        sparsekit.export_onnx(_MatrixExp(), tmp_path / "m.onnx", [1, 8])
    assert "both exporters" in str(err.value) and "may succeed" not in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("exporter", ["auto", "dynamo"])
def test_a_parametrization_the_exporters_cannot_convert_exports_computed(tmp_path, exporter: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    parametrizations.orthogonal(model[0])  # matrix_exp: neither exporter converted it, so no run could export
    x = torch.randn(3, 8)
    before = model(x)
    res = sparsekit.export_onnx(model, tmp_path / "m.onnx", [1, 8], exporter=exporter)
    assert res["parity"]["ok"] and "'0' computed once" in res["fallback"]
    assert parametrize.is_parametrized(model[0])  # the user's model is left as it was
    assert torch.equal(model(x), before)


def test_an_int8_file_names_the_layer_whose_weight_the_exporter_computed(tmp_path) -> None:
    from sparsekit.onnx.export import export_int8

    model = _mlp("weight_norm")
    export_int8(model, tmp_path / "q.onnx", [1, 1, 8, 8], exporter="torchscript")
    rows = sparsekit.inspect(tmp_path / "q.onnx")["layers"]
    # The folded g * v / |v| weight is stored as "/3/weight/weight.0/Mul_output_0...": the row was named "na".
    # Named "3", it is the layer the export records as computed, so it is no row, as on the torch side.
    assert [r["name"] for r in rows] == ["1", "5"]


def test_sensitivity_names_a_layer_whose_weight_is_computed_among_those_left_out() -> None:
    from sparsekit.sensitivity import analyze

    model = _cnn("weight_norm")
    recipe = sparsekit.Recipe(
        version=1, model={"input_shape": [1, 1, 8, 8]}, finetune={"epochs": 1},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}],
    )  # fmt: skip
    torch.manual_seed(0)
    loader = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    table = analyze(model, recipe, loader, grid={"unstructured": [0.5]})
    # Conv '2' holds 89% of the MACs, yet the analysis named neither it nor why it was not probed.
    left = {row.name: row.reason for row in table.left_out}
    assert "weight is computed in the forward pass" in left["2"]
    assert {row.name for row in table.layers} == {"0", "6"}


def test_a_checkpoint_whose_state_dict_keys_are_not_names_is_a_model_file_error(tmp_path) -> None:
    from sparsekit.errors import ModelFileError
    from sparsekit.modelio import read_model

    path = tmp_path / "ckpt.pt"
    torch.save({"format": "sparsekit/1", "state_dict": {1: torch.zeros(1)}}, path)
    # Was AttributeError: 'int' object has no attribute 'endswith' (a traceback, exit 1); found by test_properties.
    with pytest.raises(ModelFileError, match="missing keys"):
        read_model(path, arch="examples.models:mlp", trust_code=True)
