"""Review round 22, a review of the round's own diff: fixes that covered one example, or fired falsely."""

from __future__ import annotations

import os

import torch

import sparsekit


def _tiny_run() -> tuple[torch.nn.Module, dict, list]:
    from examples.models import mlp

    torch.manual_seed(0)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    recipe = {"version": 1, "finetune": {"epochs": 3}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    return mlp(in_features=8, hidden=[16], num_classes=3), recipe, data


def test_a_relative_checkpoint_dir_survives_a_chdir_while_training(tmp_path, monkeypatch):
    # The removed-folder check read a relative checkpoint_dir from the new working folder after the user's
    # on_epoch changed it: "ck: removed while training" for a folder nobody removed, and no epoch 2 or 3.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    model, recipe, data = _tiny_run()
    _, history, _ = sparsekit.finetune(
        model, recipe, data, data[:1], progress=False, checkpoint_dir="runs/ck",
        on_epoch=lambda row: os.chdir(tmp_path / "b"),
    )  # fmt: skip
    assert len(history) == 3
    assert torch.load(tmp_path / "a" / "runs" / "ck" / "last.pt", weights_only=False)["epoch"] == 3
    assert not list((tmp_path / "b").iterdir())  # the later epochs did not go to the new working folder


def test_an_l1_window_that_rounds_to_one_optimizer_step_says_so():
    # The recipe check now refuses end_epoch <= start_epoch; a window that is empty only once epochs become optimizer
    # steps (0 to 0.4 at 1 step per epoch) still read "this window is empty (start_epoch=0, end_epoch=0.4)", no why.
    import pytest

    from sparsekit.errors import RecipeError

    model, _, _ = _tiny_run()
    recipe = {
        "version": 1,
        "finetune": {"epochs": 2},
        "pruning": [
            {"method": "l1", "strength": 0.001, "target": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 0.4}}
        ],
    }
    with pytest.raises(RecipeError) as err:
        sparsekit.Pruner(model, recipe, steps_per_epoch=1)
    assert "epochs 0 and 0.4 are the same optimizer step (0) at 1 step per epoch" in str(err.value)
    assert "give end_epoch 1 or more" in str(err.value)
    # at 10 steps per epoch the same window spans 4 steps: no error
    sparsekit.Pruner(model, recipe, steps_per_epoch=10)


def test_a_names_raw_bytes_beside_an_unwritable_character_are_written_as_they_were():
    # The look-alike handler took a run of unwritable text as either all raw bytes or all look-alikes: "→" next to a
    # file name's undecodable bytes (or "ü\udce9" in one name) wrote the bytes as "?".
    import sparsekit.__main__  # noqa: F401 - registers the handler

    assert "→caf\udcc3\udca9".encode("ascii", "sparsekit.lookalike") == b"->caf\xc3\xa9"
    assert "ü\udce9 – x".encode("ascii", "sparsekit.lookalike") == b"?\xe9 - x"
    assert "– …".encode("latin-1", "sparsekit.lookalike") == b"- ..."


def test_a_one_channel_conv_given_batch_and_length_is_not_told_only_of_the_batch():
    # 476ef20 put a Conv1d's channels back for [1, 256] (the audio model's batch and length); the message then said
    # "did you leave out the batch dimension?", the other reading, for the very example it was made for.
    import pytest
    from torch import nn

    from sparsekit.errors import DataError
    from sparsekit.inspection import check_input_shape

    audio = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 254, 3))
    with pytest.raises(DataError) as err:
        check_input_shape(audio, [1, 256])
    assert "the model takes [1, 1, 256]: did you leave out the batch dimension, or the channels" in str(err.value)
    # where only the batch can be missing (3 channels given first), the question stays the batch's alone
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(DataError) as err:
        check_input_shape(rgb, [3, 8, 8])
    assert "the model takes [1, 3, 8, 8]: did you leave out the batch dimension? (" in str(err.value)


def test_a_linear_first_models_own_shape_is_suggested_before_the_datas():
    # 5c4aeeb put the data's sample shape first, for conv models whose first layer knows no image size; an MLP that
    # flattens was then told the digits' [1, 1, 8, 8] instead of its Linear's [1, 64] (test_bad_inputs pins it).
    import pytest
    from torch import nn

    from sparsekit.errors import DataError
    from sparsekit.inspection import check_input_shape

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 3))
    with pytest.raises(DataError) as err:
        check_input_shape(mlp, [1, 32], prefer=[[1, 1, 8, 8], [1, 64]])
    assert "the model takes [1, 64] (" in str(err.value)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 3))
    with pytest.raises(DataError) as err:  # a conv's guess keeps the given size: the data's shape still comes first
        check_input_shape(cnn, [1, 1, 8, 8], prefer=[[1, 3, 32, 32]])
    assert "the model takes [1, 3, 32, 32] (" in str(err.value)


def test_a_shape_without_batch_and_channels_is_given_both(tmp_path):
    # The batch left out ([3, 32, 32]) or the channels ([1, 256]) got the shape the model takes; both left out (8,8 for
    # one-channel 8x8 images, 256 for a one-channel audio clip) still read only "give the shape it takes".
    import pytest
    from torch import nn

    from sparsekit.errors import DataError, ExportError
    from sparsekit.inspection import check_input_shape

    torch.manual_seed(0)
    image = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    audio = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 254, 3))
    for model, dims, takes in ((image, [8, 8], "[1, 1, 8, 8]"), (audio, [256], "[1, 1, 256]")):
        with pytest.raises(DataError) as err:
            check_input_shape(model, dims)
        assert f"the model takes {takes} (" in str(err.value)
    with pytest.raises(ExportError, match=r"the model takes \[1, 1, 8, 8\]"):  # export_onnx's own check likewise
        sparsekit.export_onnx(image, tmp_path / "m.onnx", input_shape=[8, 8])
    assert not (tmp_path / "m.onnx").exists()


def test_export_tolerances_may_be_numpy_numbers(tmp_path):
    # b270af0's check took only Python int and float: rtol=np.float32(1e-3) (a tolerance computed with numpy) was
    # refused as "must be a finite number >= 0, got np.float32(0.001)", which it is.
    import numpy as np
    import pytest

    from sparsekit.errors import ExportError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 3))
    for tol in (np.float32(1e-3), np.int64(0), np.float64(1e-4)):
        info = sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=[1, 8], rtol=tol, atol=tol + 1e-5)
        assert info["parity"] is not None and info["parity"]["ok"]
    for bad in (np.float32("nan"), np.int64(-1), "1e-4", True):
        with pytest.raises(ExportError, match="rtol must be a finite number >= 0"):
            sparsekit.export_onnx(model, tmp_path / "n.onnx", input_shape=[1, 8], rtol=bad)
    assert not (tmp_path / "n.onnx").exists()


def test_a_too_noisy_slower_verdict_gives_no_channel_advice_and_is_flagged_in_the_table():
    # bd32e95 flagged the summary's latency lines at a batch whose A/A control swung past 50%; the advice "Channel
    # removal made the model slower in onnxruntime (batch 32: 3.000x of dense)" and report.md's benchmark table
    # still stated that batch's verdict as a result, beside the note that no latency figure could be trusted.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_report_summary import MLP_SHAPE, _prune, _recipe, _report

    from examples.models import mlp
    from sparsekit.report import _slower_after_removal, render_markdown

    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, latency={"1": (1.3, 0.04), "32": (3.0, 0.7)})
    report.methods[0].method = "structured"  # a run that removed channels
    assert _slower_after_removal(report) == "batch 1: 1.300x of dense"
    rows = {ln.split("|")[1].strip(): ln for ln in render_markdown(report).splitlines() if ln.startswith("| ")}
    assert rows["32"].endswith("| slower, too noisy to trust |") and rows["1"].endswith("| slower |")
    # int8's "slower than fp32" advice likewise: only the batch measured within trustworthy noise is named
    from sparsekit.report import _int8_slower

    report = _report(
        dense, model, pruner, recipe, MLP_SHAPE, latency={"1": (1.0, 0.04), "32": (1.0, 0.7)},
        int8_latency={"1": (2.0, 0.04), "32": (3.0, 0.7)},
    )  # fmt: skip
    said = _int8_slower(report)
    assert "slower than the pruned fp32 model (batch 1):" in said, said


def test_a_file_or_a_dangling_link_where_the_python_api_makes_a_folder_is_named(tmp_path):
    # The command names them (cli's own check); from Python, finetune(checkpoint_dir=a file) and save_model under a
    # link to nothing raised the bare "FileExistsError: [Errno 17] File exists" (mkdir's word for both).
    import pytest

    from sparsekit.errors import OutputError

    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "gone").symlink_to(tmp_path / "nothere")
    model, recipe, data = _tiny_run()
    with pytest.raises(OutputError, match=r"notes\.txt: is a file, not a folder"):
        sparsekit.finetune(model, recipe, data, data[:1], progress=False, checkpoint_dir=tmp_path / "notes.txt")
    with pytest.raises(OutputError, match=r"gone: a symbolic link to .*nothere, which does not exist"):
        sparsekit.save_model(model, tmp_path / "gone" / "m.pt", factory="examples.models:mlp", input_shape=[1, 8])
    assert not (tmp_path / "nothere").exists()


def test_an_input_shape_held_in_a_numpy_array_or_tensor_is_taken():
    # 96daa95's check refused layer_report(model, np.array([1, 8])) as not "positive integers, got array([1, 8])"
    # (the Pruner's context input_shape likewise); a float array is still refused.
    import numpy as np
    import pytest

    model, recipe, _ = _tiny_run()
    for shape in (np.array([1, 8]), torch.tensor([1, 8]), np.array([1, 8], dtype=np.int32)):
        assert sparsekit.layer_report(model, shape)[0]["macs"] == 8 * 16
    sparsekit.Pruner(model, recipe, steps_per_epoch=4, context={"input_shape": np.array([1, 8])})
    with pytest.raises(ValueError, match="as positive integers"):
        sparsekit.layer_report(model, np.array([1.0, 8.5]))
