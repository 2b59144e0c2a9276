"""Review (apidoc, round 22): the Python API called as its docstrings document it, and with wrong arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sparsekit


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_export_opset_too_new_asks_for_a_lower_one(tmp_path):
    # An opset newer than any exporter writes was answered "Ask for a higher opset".
    with pytest.raises(sparsekit.ExportError, match="Ask for a lower opset") as info:
        sparsekit.export_onnx(_mlp(), tmp_path / "m.onnx", [1, 8], opset=1000)
    assert "higher" not in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_finetune_resume_without_checkpoint_dir_is_refused():
    # resume=True with no checkpoint_dir trained from epoch 1 without a word: the documented argument was ignored.
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}], "finetune": {"epochs": 1}}
    with pytest.raises(ValueError, match=r"resume=True\) needs checkpoint_dir"):
        sparsekit.finetune(_mlp(), recipe, batches, batches, progress=False, resume=True)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    sparsekit.export_onnx(_mlp(), path, [1, 8])
    return path


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("runs", 2.5),
        ("warmup", 1.5),
        ("threads", "2"),
        ("min_runs", 2.5),
        ("seed", "a"),
        ("seed", None),
        ("seed", -1),
        ("budget_s", "1"),
        ("precision", "a"),
    ],
)
def test_benchmark_option_of_wrong_type_is_an_export_error(onnx_file, option, value):
    # "Raises ExportError for bad options": these raised numpy's / onnxruntime's TypeError or ValueError
    # (or, seed=None, fed unseeded data).
    with pytest.raises(sparsekit.ExportError, match=rf"benchmark\({option}=\.\.\.\)"):
        sparsekit.benchmark(onnx_file, [1], **{"runs": 5, "warmup": 1, "budget_s": None, option: value})


def test_pruner_argument_that_is_not_a_pruner_is_a_type_error(tmp_path):
    # save_model(pruner=...) and finetune(pruner=...) given something else (a pruner.state_dict(), say) failed with
    # AttributeError: "'dict' object has no attribute 'model_history'" / "... 'model'".
    model = _mlp()
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}], "finetune": {"epochs": 1}}
    state = sparsekit.Pruner(model, recipe, 2).state_dict()
    with pytest.raises(TypeError, match=r"save_model\(pruner=\.\.\.\): expected the sparsekit.Pruner"):
        sparsekit.save_model(model, tmp_path / "m.pt", "examples.models:mlp", pruner=state)
    assert not (tmp_path / "m.pt").exists()
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    with pytest.raises(TypeError, match=r"finetune\(pruner=\.\.\.\): expected a sparsekit.Pruner"):
        sparsekit.finetune(_mlp(), recipe, batches, batches, progress=False, pruner=state)


def test_inspect_onnx_refuses_torch_only_arguments(onnx_file):
    # input_shape / arch / kwargs were ignored for an .onnx file (the command refuses them): input_shape=[1, 9]
    # for a file of input [batch, 8] returned its counts as if it fitted.
    with pytest.raises(ValueError, match=r"inspect\(input_shape=\.\.\.\): .*\.onnx file"):
        sparsekit.inspect(onnx_file, input_shape=[1, 9])
    with pytest.raises(ValueError, match=r"inspect\(arch=\.\.\., kwargs=\.\.\.\)"):
        sparsekit.inspect(onnx_file, arch="examples.models:mlp", kwargs={"in_features": 8})
    assert sparsekit.inspect(onnx_file)["format"] == "onnx"


@pytest.mark.parametrize("shape", [[1, 8.9], [1, "8"], [True, 8], 8, "1,8", [8]])
def test_layer_report_and_inspect_refuse_a_malformed_input_shape(tmp_path, shape):
    # [1, 8.9] / [1, '8'] / [True, 8] were counted as [1, 8] without a word; 8 and '1,8' failed with
    # "'int' object is not iterable" / "invalid literal for int()"; [8] with torch's matmul error.
    with pytest.raises(ValueError, match=r"layer_report\(input_shape=\.\.\.\) must be the whole shape"):
        sparsekit.layer_report(_mlp(), shape)
    from examples.models import mlp

    kwargs = {"in_features": 8, "hidden": [6], "num_classes": 3}
    path = sparsekit.save_model(mlp(**kwargs), tmp_path / "m.pt", "examples.models:mlp", kwargs=kwargs)
    # [8] is a shape of integers the model does not take: the DataError naming the one it takes, as before
    with pytest.raises(sparsekit.DataError, match=r"input_shape.*\[1, 8\]" if shape == [8] else "expected the whole"):
        sparsekit.inspect(path, input_shape=shape, arch="examples.models:mlp")
    assert sparsekit.inspect(path, input_shape=(1, 8), arch="examples.models:mlp")["macs"] == 66


@pytest.mark.parametrize("optimizer", [None, "params"])
def test_update_optimizer_of_no_optimizer_is_a_type_error(optimizer):
    # None, or model.parameters() for the optimizer, failed with "'NoneType' object has no attribute 'param_groups'".
    model = _mlp()
    pruner = sparsekit.Pruner(model, {"pruning": [{"method": "magnitude", "sparsity": 0.5}]}, 2)
    given = list(model.parameters()) if optimizer == "params" else optimizer
    with pytest.raises(TypeError, match=r"update_optimizer\(optimizer=\.\.\.\): expected the optimizer"):
        pruner.update_optimizer(given)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert pruner.update_optimizer(sgd) is sgd


def test_plan_and_run_prune_take_a_data_file_as_a_path(tmp_path):
    # data=Path('d.npz') failed with "'PosixPath' object has no attribute 'strip'" (plan) / "... 'endswith'"
    # (run_prune); a number likewise, where a TypeError naming the argument is due.
    from examples.models import mlp
    from sparsekit.pipeline import check_inputs

    kwargs = {"in_features": 8, "hidden": [6], "num_classes": 3}
    model = sparsekit.save_model(
        mlp(**kwargs), tmp_path / "m.pt", "examples.models:mlp", kwargs=kwargs, input_shape=[1, 8]
    )
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((24, 8)).astype("float32"), y=rng.integers(0, 3, 24))
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}], "finetune": {"epochs": 0}}
    # what plan(data=...) and run_prune(data=...) load the data with
    inputs = check_inputs(model, sparsekit.load_recipe(recipe), arch="examples.models:mlp", data=data)
    assert inputs.bundle.train is not None
    with pytest.raises(TypeError, match=r"plan\(data=\.\.\.\): expected a data source"):
        sparsekit.plan(recipe, model, arch="examples.models:mlp", data=3)
    with pytest.raises(TypeError, match=r"run_prune\(data=\.\.\.\): expected a data source"):
        sparsekit.run_prune(model, recipe, tmp_path / "out", arch="examples.models:mlp", data=3, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("progress", ["line", "bar", 1])
def test_finetune_progress_of_another_value_is_refused(progress, capsys):
    # progress="line" (a typo of "lines") trained with no progress printed, without a word.
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}], "finetune": {"epochs": 1}}
    with pytest.raises(ValueError, match=r"finetune\(progress=\.\.\.\): expected True, False or 'lines'"):
        sparsekit.finetune(_mlp(), recipe, batches, batches, progress=progress)
    sparsekit.finetune(_mlp(), recipe, batches, batches, progress="lines")
    assert "epoch 1" in capsys.readouterr().err


def test_save_model_help_states_the_input_shape_it_refuses(tmp_path):
    # help(sparsekit.save_model) said it raises when input_shape "is a list of at least two positive integers":
    # the shape it takes, not the one it refuses.
    doc = " ".join(sparsekit.save_model.__doc__.split())
    assert "``input_shape`` is not a list of at least two positive integers" in doc
    with pytest.raises(sparsekit.ModelFileError, match="input_shape"):
        sparsekit.save_model(_mlp(), tmp_path / "m.pt", "examples.models:mlp", input_shape=[8])
    sparsekit.save_model(_mlp(), tmp_path / "m.pt", "examples.models:mlp", input_shape=[1, 8])


def test_finalize_help_says_which_targets_it_warns_about():
    # help(Pruner.finalize) sent the reader to a private method ("see :meth:`_warn_missed`"), which help() of the
    # public API does not show, for which targets it warns about.
    doc = " ".join(sparsekit.Pruner.finalize.__doc__.split())
    assert "_warn_missed" not in doc
    assert "weight sparsity (``magnitude``, ``gradient``) or l1 ``target``" in doc
    model = _mlp()
    entry = {"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1}}
    pruner = sparsekit.Pruner(model, {"pruning": [entry], "finetune": {"epochs": 1}}, 4)
    with pytest.warns(sparsekit.TargetMissedWarning):
        pruner.finalize()  # no step taken: the magnitude entry ended short of 0.5, as the help says


def test_output_and_report_paths_of_another_type_name_the_argument(tmp_path):
    # export_onnx(model, None, ...), save_model(model, None, ...), run_prune(..., out=None) and load_report(None)
    # raised pathlib's "expected str, bytes or os.PathLike object, not NoneType", naming no argument.
    model = _mlp()
    with pytest.raises(TypeError, match=r"export_onnx\(path=\.\.\.\): expected a file's path"):
        sparsekit.export_onnx(model, None, [1, 8])
    with pytest.raises(TypeError, match=r"save_model\(path=\.\.\.\): expected a file's path"):
        sparsekit.save_model(model, None, "examples.models:mlp")
    with pytest.raises(TypeError, match=r"run_prune\(out=\.\.\.\): expected a file's path"):
        sparsekit.run_prune(tmp_path / "m.pt", "lenet-gradual-magnitude-90", None)
    with pytest.raises(TypeError, match=r"load_report\(path=\.\.\.\): expected a file's path"):
        sparsekit.load_report(None)


@pytest.mark.parametrize(("name", "tol"), [("rtol", -1.0), ("atol", float("nan")), ("rtol", "1e-4"), ("atol", None)])
def test_export_tolerance_that_is_no_tolerance_is_an_export_error(tmp_path, name, tol):
    # rtol=-1 / atol=nan wrote the file and returned parity "ok": False for a file that matches the model; "1e-4"
    # failed inside numpy with "ufunc 'isfinite' not supported".
    with pytest.raises(sparsekit.ExportError, match=rf"{name} must be a finite number >= 0"):
        sparsekit.export_onnx(_mlp(), tmp_path / "m.onnx", [1, 8], **{name: tol})
    assert not (tmp_path / "m.onnx").exists()


def test_finetune_on_epoch_and_teacher_of_the_wrong_type_are_refused_before_training():
    # on_epoch=3 trained the first epoch, then failed with "'int' object is not callable"; teacher=a state_dict
    # failed with "'collections.OrderedDict' object has no attribute 'eval'".
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}], "finetune": {"epochs": 1}}
    with pytest.raises(TypeError, match=r"finetune\(on_epoch=\.\.\.\): expected a function"):
        sparsekit.finetune(_mlp(), recipe, batches, batches, progress=False, on_epoch=3)
    distill = {**recipe, "finetune": {"epochs": 1, "distill": {"weight": 0.5}}}
    with pytest.raises(TypeError, match=r"finetune\(teacher=\.\.\.\): expected the dense torch.nn.Module"):
        sparsekit.finetune(_mlp(), distill, batches, batches, progress=False, teacher=_mlp().state_dict())
    rows = []
    sparsekit.finetune(_mlp(), recipe, batches, batches, progress=False, on_epoch=rows.append)
    assert [r["epoch"] for r in rows] == [1]


@pytest.mark.parametrize("scorers", [[lambda w, g: w.abs()], (lambda w, g: w.abs(),)])
def test_scorers_given_as_a_list_is_a_type_error(scorers):
    # A list of scorers (one per entry) was read as keys: "scorers: key <function <lambda> at 0x...> is not an index
    # of the recipe's pruning list", a ValueError about a function's address.
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    with pytest.raises(TypeError, match=r"scorers: expected a dict \{index: scorer\}.*scorers=\{0: fn\}"):
        sparsekit.Pruner(_mlp(), recipe, 2, scorers=scorers)
    sparsekit.Pruner(_mlp(), recipe, 2, scorers={0: scorers[0]})


def test_load_report_of_a_folder_without_one_names_the_python_argument(tmp_path):
    # The library's message named the command's flag: "... holds no finished prune run (its -o folder has one)".
    with pytest.raises(sparsekit.SparsekitError, match="holds no finished prune run") as info:
        sparsekit.load_report(tmp_path)
    assert str(info.value).endswith("holds no finished prune run (the out=... folder of one has it)")
