"""A new user's first hour with their own models (review 19): what the summary and report.md say must be
what happened to each layer."""

from __future__ import annotations

import pytest
import torch

from examples.models import mlp
from sparsekit.report import render_markdown, render_summary, summarize
from tests.test_report_summary import _prune, _recipe, _report

MLP_SHAPE = [1, 64]


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"method": "structured", "ratio": 0.5, "schedule": "oneshot", "round_to": None}, "classifier head"),
        ({"method": "structured", "ratio": 0.5, "schedule": "oneshot", "round_to": None, "ignore": ["fc3"]}, "ignore"),
        ({"method": "l1", "strength": 1e-3, "group": "row"}, "output layer"),
    ],
)
def test_the_head_an_entry_selected_but_left_out_is_not_said_to_be_selected_by_no_entry(entry, words):
    # layers: '*' (the default) selects fc3; the entry leaves it out (structured's ignore, group lasso's head).
    # Saying "no pruning entry selects it" sent the user to widen a glob that already matched it.
    torch.manual_seed(0)
    recipe = _recipe([entry], model={"input_shape": MLP_SHAPE})
    dense, model, pruner = _prune(mlp(), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    s = summarize(report)
    assert s.excluded == ["fc3"]
    assert words in s.excluded_why["fc3"] and "pruning[0]" in s.excluded_why["fc3"]
    for text in (render_summary(report, "out"), render_markdown(report)):
        assert "no pruning entry selects" not in text
        assert words in text


def test_a_layer_no_entry_selects_is_still_said_so():
    torch.manual_seed(0)
    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "layers": ["fc1"]}], model={"input_shape": MLP_SHAPE})
    dense, model, pruner = _prune(mlp(), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE)
    s = summarize(report)
    assert s.excluded == ["fc2", "fc3"] and s.excluded_why == {}
    assert "not pruned: fc2, fc3 (no pruning entry selects them)" in render_summary(report, "out")


def test_inspect_gives_an_int8_file_of_a_weight_norm_model_the_rows_of_its_fp32_file_and_pt(tmp_path):
    # README: a Linear whose weight is computed (weight_norm) is no row, its MACs on the other line, "on both
    # sides". The int8 quantizer folds g * v / |v| into a stored weight: the int8 file listed fc2 as a row, and
    # its whole-file sparsity (0.48 here) disagreed with the .pt's and the fp32 file's (0.70).
    import sparsekit
    from sparsekit.onnx.export import export_int8

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    torch.nn.utils.parametrizations.weight_norm(model[2])
    with torch.no_grad():
        model[0].weight[:, :48] = 0  # some sparsity, so the totals tell whether the folded weight counts
    export_int8(model, tmp_path / "q.onnx", [1, 64], fp32_path=tmp_path / "f.onnx", exporter="torchscript")
    fp32, int8 = (sparsekit.inspect(tmp_path / f) for f in ("f.onnx", "q.onnx"))
    assert [r["name"] for r in fp32["layers"]] == ["0", "4"]  # as the .pt side: weight_norm's layer is no row
    assert [r["name"] for r in int8["layers"]] == ["0", "4"]
    assert int8["macs"] == fp32["macs"] == 64 * 64 + 64 * 32 + 32 * 10
    assert int8["sparsity"] == pytest.approx(fp32["sparsity"], abs=0.01)
    assert "tensors" not in int8["layers"][0]


def test_a_cnn_on_the_users_own_npz_needs_no_input_shape(tmp_path, monkeypatch):
    # A CNN's first layer does not tell its input size; the .npz's x does ((n, 1, 16, 16)): the dry run asked
    # for model.input_shape, though the only shape it could be was in the file it was told to read.
    import numpy as np
    from click.testing import CliRunner

    from examples.models import small_cnn
    from sparsekit.cli import main

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(small_cnn(width=8, image_size=16).state_dict(), "cnn.pt")
    rng = np.random.default_rng(0)
    np.savez("mine.npz", x=rng.random((40, 1, 16, 16), dtype=np.float32), y=rng.integers(0, 10, 40))
    (tmp_path / "r.yaml").write_text("version: 1\ndata: {source: mine.npz}\n")
    args = ["validate", "r.yaml", "cnn.pt", "--arch", "examples.models:small_cnn"]
    res = CliRunner().invoke(main, [*args, "--kwargs", '{"width": 8, "image_size": 16}'])
    assert res.exit_code == 0, res.output
    assert "input [1, 1, 16, 16]" in res.output
