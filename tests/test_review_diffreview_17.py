"""Review of the day's changes: faults in what landed, each pinned by a test that failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_bad_input
from torch import nn


def test_fixed_batch_file_calibrates_on_a_loader_whose_last_batch_is_short(tmp_path, one_thread):
    # A file exported at batch 16 (torch.onnx.export without dynamic axes) calibrated from a DataLoader of 16-sample
    # batches over 40 samples: the last batch holds 8, and quantize_int8 failed with "calibration batch 3 has 8
    # sample(s) but the model's batch dim is fixed at 16: give batches of 16 samples", which the user had done.
    from torch.utils.data import DataLoader, TensorDataset

    from sparsekit.onnx import quantize
    from sparsekit.onnx.quantize import quantize_int8

    torch.manual_seed(0)
    path = tmp_path / "fixed16.onnx"
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    torch.onnx.export(model, (torch.randn(16, 4),), str(path), dynamo=False)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    info = quantize_int8(path, tmp_path / "q.onnx", calibration=loader)
    assert info["mode"] == "static" and info["calibration_batches"] == 3
    # Every sample reaches the calibration (the short batch padded with copies, which leave MinMax ranges as they
    # are), in slices of the file's batch.
    import onnx

    reader = quantize._Reader(loader, list(onnx.load(str(path)).graph.input), 100)
    fed = []
    while (feed := reader.get_next()) is not None:
        fed.append(next(iter(feed.values())))
    assert [len(f) for f in fed] == [16, 16, 16]
    np.testing.assert_array_equal(np.concatenate(fed)[:40], x.numpy())
    np.testing.assert_array_equal(fed[-1][8:], np.repeat(x.numpy()[-1:], 8, axis=0))


def test_benchmark_takes_any_iterable_of_paths_again(tmp_path, one_thread):
    # benchmark(Path(".").glob("*.onnx")) (a generator) or a set of paths ran before today's model-object check,
    # which took only a str, a PathLike or a Sequence: "benchmark(paths=...): expected a file's path (a str or
    # pathlib.Path), got generator". A model in memory is still refused as one, an nn.Sequential too.
    from sparsekit import benchmark

    torch.onnx.export(nn.Linear(4, 2), (torch.randn(1, 4),), str(tmp_path / "a.onnx"), dynamo=False)
    quick = {"batch_sizes": [1], "warmup": 1, "runs": 2, "budget_s": None, "min_runs": 1}
    for given in (tmp_path.glob("*.onnx"), {tmp_path / "a.onnx"}):
        assert len(benchmark(given, **quick)["files"]) == 1
    with pytest.raises(TypeError, match="got Sequential, a model in memory; export it first"):
        benchmark(nn.Sequential(nn.Linear(4, 2)), **quick)


def test_a_misplaced_key_in_an_override_is_given_its_dotted_path():
    # Today's misplaced-key message spelled its remedy in YAML for --set too: "--set finetune.lr=0.1: ... write it
    # as optimizer: {lr: ...}", no path an override can take. An override now gets the whole dotted path.
    from click.testing import CliRunner

    from sparsekit import load_recipe
    from sparsekit.cli import main
    from sparsekit.errors import RecipeError

    res = CliRunner().invoke(main, ["validate", "lenet-gradual-magnitude-90", "--set", "finetune.lr=0.1"])
    line = assert_bad_input(res, "--set finetune.lr=0.1", "write finetune.lr as finetune.optimizer.lr")
    assert "{lr" not in line
    with pytest.raises(RecipeError, match="write epochs as finetune.epochs"):
        load_recipe("lenet-gradual-magnitude-90", ["epochs=3"])
    with pytest.raises(RecipeError, match=r"write pruning\.0\.every as pruning\.0\.schedule\.every"):
        load_recipe("lenet-gradual-magnitude-90", ["pruning.0.every=0.5"])
    # the same for a key in a sibling section, a top-level key and a pruning entry's key (a file gets YAML there)
    for given, said in [
        ("data.epochs=3", "write data.epochs as finetune.epochs"),
        ("data.seed=3", "write data.seed as seed"),
        ("finetune.exclude=[fc3]", r"write finetune\.exclude as pruning\.N\.layers\.exclude \(N: the entry's index"),
    ]:
        with pytest.raises(RecipeError, match=said):
            load_recipe("lenet-gradual-magnitude-90", [given])
    # In a file the YAML remedy stays: there it is what to write.
    with pytest.raises(RecipeError, match=r"write it as optimizer: \{lr: ...\}"):
        load_recipe({"pruning": [], "finetune": {"lr": 0.1}})
    with pytest.raises(RecipeError, match=r"write it as pruning: \[\{method: \.\.\.\}\]"):
        load_recipe({"pruning": [], "finetune": {"method": "l1"}})


def test_the_one_sample_advice_is_given_only_for_a_one_sample_failure():
    # Today's advice for a BatchNorm model failing on a one-sample training batch was added to every failure on
    # one: at batch size 1 a model that does not take the input's shape read "mat1 and mat2 shapes cannot be
    # multiplied (1x10 and 8x16); this training batch holds a single sample (BatchNorm, ...): choose a
    # data.batch_size that leaves at least 2 samples", sending the user to a batch size that was not at fault.
    from torch.utils.data import DataLoader, TensorDataset

    import sparsekit
    from sparsekit.errors import DataError

    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": ["0"]}], "finetune": {"epochs": 1}}
    y = torch.zeros(3, dtype=torch.long)
    wrong = DataLoader(TensorDataset(torch.randn(3, 10), y), batch_size=1)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(DataError, match=r"cannot be multiplied \(1x10 and 8x4\)$"):
        sparsekit.finetune(model, recipe, wrong, wrong, progress=False)
    # A BatchNorm model on a one-sample batch still gets it.
    ragged = DataLoader(TensorDataset(torch.randn(3, 8), y), batch_size=2)
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    with pytest.raises(DataError, match="holds a single sample"):
        sparsekit.finetune(model, recipe, ragged, ragged, progress=False)
