"""Precision review: models and files in float16 / bfloat16 / float64, autocast, non-finite weights."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from sparsekit.cli import main


def _gemm_file(path, elem: int, np_dtype) -> str:
    """A Linear 8 -> 4 as one Gemm whose input, weights and output are of ``elem`` (float16 / float64)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np_dtype), "w")
    b = numpy_helper.from_array(np.zeros(4, np_dtype), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", elem, ["batch", 8])],
        [helper.make_tensor_value_info("y", elem, ["batch", 4])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize(("elem", "np_dtype"), [(TensorProto.FLOAT16, np.float16), (TensorProto.DOUBLE, np.float64)])
def test_bench_times_a_float16_or_float64_onnx_file(tmp_path, elem, np_dtype):
    # A model exported in float16 for deployment was refused ("the benchmark feeds one float32 ... tensor"), though
    # onnxruntime runs it and its inputs are drawn as easily as float32's.
    path = _gemm_file(tmp_path / "m.onnx", elem, np_dtype)
    args = ["bench", path, "--batch-size", "1", "--batch-size", "4", "--runs", "3", "--warmup", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["files"][0]["latency_ms"]) == {"1", "4"}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_finetune_of_a_model_given_with_non_finite_weights_blames_the_weights_not_the_lr(value):
    # "training diverged (weights are no longer finite); lower finetune.optimizer.lr" before a single step was
    # taken: the weights came in that way, and no learning rate would help.
    import torch

    import sparsekit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        model[2].weight[1, 2] = value
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    batches = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))]
    with pytest.raises(sparsekit.ModelFileError) as err:
        sparsekit.finetune(model, recipe, batches, batches)
    assert "2.weight" in str(err.value) and "already hold NaN or inf" in str(err.value)
    assert "lower finetune.optimizer.lr" not in str(err.value)


def test_a_run_whose_weights_go_non_finite_after_a_step_still_says_lower_the_lr():
    import torch

    import sparsekit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    batch = (torch.randn(4, 8), torch.randint(0, 3, (4,)))

    class Diverging:
        """Two batches; the weights turn inf after the first step, as a diverging optimizer leaves them."""

        def __len__(self):
            return 2

        def __iter__(self):
            yield batch
            with torch.no_grad():
                model[0].weight.fill_(float("inf"))
            yield batch

    with pytest.raises(sparsekit.RecipeError, match="lower finetune.optimizer.lr"):
        sparsekit.finetune(model, recipe, Diverging(), [batch])


def test_export_parity_of_a_model_whose_outputs_hold_nan_where_onnx_agrees(tmp_path):
    # log of a Linear's outputs: NaN wherever they are negative, in torch and onnxruntime alike. Python's
    # max(0.0, nan) dropped the NaN and np.allclose counted NaN == NaN as a mismatch: "parity max diff 0 (FAILED)",
    # with advice about Python state and data-dependent branches that had nothing to do with it.
    import torch

    import sparsekit

    class LogNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x):
            return torch.log(self.fc(x))

    torch.manual_seed(0)
    res = sparsekit.export_onnx(LogNet(), tmp_path / "m.onnx", input_shape=(1, 6), exporter="torchscript")
    parity = res["parity"]
    assert parity["ok"] is True and parity["max_abs_diff"] < 1e-4
    # The outputs' scale skips torch's NaN: the largest finite |output| (it read None, losing "outputs up to X")
    assert parity["max_abs_output"] is not None and 0 < parity["max_abs_output"] < 100


def test_parity_difference_counts_a_nan_against_a_number_as_infinite():
    import numpy as np

    from sparsekit.onnx.export import _max_abs_diff

    assert _max_abs_diff(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == np.inf
    assert _max_abs_diff(np.array([np.inf, np.nan, 1.0]), np.array([np.inf, np.nan, 1.5])) == 0.5
    assert _max_abs_diff(np.array([np.inf]), np.array([-np.inf])) == np.inf


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_save_model_warns_that_non_finite_weights_make_a_file_load_model_refuses(tmp_path, value):
    # Written without a word, then refused by load_model and every command.
    import torch

    import sparsekit
    from examples.models import mlp

    model = mlp()
    with torch.no_grad():
        model.fc2.weight[3, 5] = value
    with pytest.warns(UserWarning, match=r"weights hold NaN or inf values \(fc2\.weight\)"):
        path = sparsekit.save_model(model, tmp_path / "m.pt", factory="examples.models:mlp", input_shape=[1, 64])
    with pytest.raises(sparsekit.ModelFileError, match="NaN or inf"):
        sparsekit.load_model(path, arch="examples.models:mlp")


def test_save_model_of_finite_weights_gives_no_such_warning(tmp_path):
    import warnings

    import sparsekit
    from examples.models import mlp

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsekit.save_model(mlp(), tmp_path / "m.pt", factory="examples.models:mlp", input_shape=[1, 64])


def test_export_onnx_warns_about_non_finite_weights(tmp_path):
    # Parity agrees with torch's NaN, so the file was written as "ok" with nothing saying its outputs are NaN.
    import torch

    import sparsekit

    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"weights hold NaN or inf values \(2\.weight\)"):
        sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 6), exporter="torchscript")


@pytest.mark.parametrize(
    ("elem", "np_dtype", "size"), [(TensorProto.FLOAT16, np.float16, 2), (TensorProto.DOUBLE, np.float64, 8)]
)
def test_activation_bytes_counts_the_input_at_its_own_width(tmp_path, elem, np_dtype, size):
    # The benchmark's memory cap sized the input as float32 whatever its type; now that bench feeds float16 and
    # float64 files, a float64 input's bytes were counted at half.
    from sparsekit.onnx.graph import activation_bytes

    path = _gemm_file(tmp_path / "m.onnx", elem, np_dtype)
    assert activation_bytes(path, [8]) == size * 8 + size * 4  # the input (8 per sample) and the output (4)
