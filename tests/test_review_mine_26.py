"""Fixes from the thirteenth session's own review (items earlier notes left alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import sparsekit
import sparsekit.train as train_mod
from examples.models import mlp


def _recipe(epochs: int = 2) -> sparsekit.Recipe:
    return sparsekit.Recipe(
        finetune={"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05}},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "layers": {"exclude": ["fc3"]}}],
    )


def _data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 64, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(n)]


def test_a_long_epoch_without_a_terminal_says_how_far_it_is_between_its_epoch_lines(capsys, monkeypatch):
    # A log file showed nothing until an epoch ended: an hour-long epoch read as a hung job.
    monkeypatch.setattr(train_mod, "LINE_EVERY_S", 0.0)
    data = _data(4)
    sparsekit.finetune(mlp(), _recipe(), data, data[:1], progress="lines")
    lines = capsys.readouterr().err.splitlines()
    heads = [line.split(",")[0] for line in lines]
    assert heads == [
        "epoch 1/2: step 1/4", "epoch 1/2: step 2/4", "epoch 1/2: step 3/4", "epoch 1/2: train loss " + lines[3][22:28],
        "epoch 2/2: step 1/4", "epoch 2/2: step 2/4", "epoch 2/2: step 3/4", "epoch 2/2: train loss " + lines[7][22:28],
    ]  # fmt: skip
    assert "step 3/4, train loss so far " in lines[2] and lines[2].endswith(" s)")


def test_a_short_epoch_prints_its_epoch_line_alone(capsys):
    data = _data(4)
    sparsekit.finetune(mlp(), _recipe(), data, data[:1], progress="lines")
    assert [line.split(":")[0] for line in capsys.readouterr().err.splitlines()] == ["epoch 1/2", "epoch 2/2"]


def test_inspect_of_a_half_precision_file_says_what_a_prune_run_would_do_not_that_inspect_trains(tmp_path):
    torch.save(mlp().half().state_dict(), tmp_path / "h.pt")
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "sparsekit", "inspect", "h.pt", "--arch", "examples.models:mlp"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    said = run.stdout + run.stderr
    assert "so a prune run trains in float32 and writes model.pt in float32" in said
    assert "so the run trains" not in said


def test_an_option_given_twice_says_the_last_one_is_used_and_repeatable_ones_say_nothing(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sparsekit.cli import main

    monkeypatch.chdir(tmp_path)
    torch.save(mlp().state_dict(), "m.pt")
    both = CliRunner().invoke(main, ["inspect", "m.pt", "--arch", "examples.models:lenet_300_100", "--arch",
                                     "examples.models:mlp"])  # fmt: skip
    assert both.exit_code == 0, both.output
    assert "Note: --arch given 2 times; the last one is used (examples.models:mlp)" in both.stderr
    once = CliRunner().invoke(main, ["inspect", "m.pt", "--arch", "examples.models:mlp"])
    assert once.exit_code == 0 and "given" not in once.stderr
    # --set may be given many times (each one a setting): no note, unless one key is set twice
    sets = CliRunner().invoke(main, ["validate", "--set", "finetune.epochs=4", "--set", "seed=3",
                                     "lenet-gradual-magnitude-90"])  # fmt: skip
    assert sets.exit_code == 0 and "given" not in sets.stderr, sets.stderr
    twice = CliRunner().invoke(main, ["validate", "--set", "finetune.epochs=2", "--set", "finetune.epochs=4",
                                      "lenet-gradual-magnitude-90"])  # fmt: skip
    said = "Note: --set finetune.epochs given 2 times; the last one is used (finetune.epochs=4)"
    assert twice.exit_code == 0 and said in twice.stderr, twice.stderr


def test_a_relative_cache_dir_is_ignored_with_one_warning_as_a_relative_config_dir_is(tmp_path, monkeypatch, caplog):
    # A downloaded project could ship ./cache with its own list of the packages never run: a relative value named
    # another cache in every working directory.
    from sparsekit import fsutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", "cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(fsutil, "_IGNORED_CACHE", set())
    with caplog.at_level("WARNING", logger="sparsekit"):
        assert fsutil.cache_dir() == tmp_path / "xdg" / "sparsekit"
        assert fsutil.cache_dir() == tmp_path / "xdg" / "sparsekit"
    said = [r.getMessage() for r in caplog.records if "SPARSEKIT_CACHE_DIR" in r.getMessage()]
    assert len(said) == 1 and "relative path" in said[0]
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert fsutil.cache_dir() == tmp_path / "mine"


def test_a_pattern_naming_a_modules_second_registration_says_which_name_it_goes_by():
    import pytest
    from torch import nn

    from sparsekit.errors import TargetError

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            lin = nn.Linear(8, 8)
            self.blocks = nn.ModuleList([lin, lin])  # one layer applied twice, listed by torch as blocks.0 alone
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = torch.relu(block(x))
            return self.head(x)

    for field in ("include", "exclude"):
        recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": {field: ["blocks.1"]}}]}
        said = r"'blocks.1' is the module 'blocks.0', registered twice.*write 'blocks.0'"
        with pytest.raises(TargetError, match=said):
            sparsekit.Pruner(Twice(), {**recipe, "finetune": {"epochs": 1}}, steps_per_epoch=2)
    pruner = sparsekit.Pruner(Twice(), {"pruning": [{"method": "magnitude", "sparsity": 0.5,
                                                     "layers": {"include": ["blocks.0"]}}], "finetune": {"epochs": 1}},
                              steps_per_epoch=2)  # fmt: skip
    assert list(pruner.methods[0].layers) == ["blocks.0"]


def test_structureds_tied_weight_refusal_names_the_module_sharing_the_tensor():
    import pytest
    from torch import nn

    from sparsekit.errors import TargetError

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 16)
            self.p = nn.Linear(16, 16)
            self.out = nn.Linear(16, 20, bias=False)
            self.out.weight = self.emb.weight  # the output layer reuses the embedding table

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.p(self.emb(x))))

    recipe = {"model": {"input_shape": [1, 5]}, "pruning": [{"method": "structured", "ratio": 0.5}],
              "finetune": {"epochs": 1}}  # fmt: skip
    with pytest.raises(TargetError, match=r"'out.weight' \(the same tensor as 'emb.weight'\) is used 1 more time"):
        sparsekit.Pruner(Tied(), recipe, steps_per_epoch=2)


def _interrupting_timer(monkeypatch, at: int = 2) -> list[int]:
    """Make the benchmark's timed runs raise KeyboardInterrupt at its ``at``-th batch size (as a Ctrl-C there would)."""
    import sparsekit.onnx.bench as bench_mod

    real, calls = bench_mod._timed_runs, []

    def timed(sessions, feeds, *args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(sessions, feeds, *args, **kwargs)

    monkeypatch.setattr(bench_mod, "_timed_runs", timed)
    return calls


def test_ctrl_c_during_bench_keeps_the_batch_sizes_already_timed(tmp_path, monkeypatch):
    import pytest
    from click.testing import CliRunner
    from torch import nn

    from sparsekit.cli import main
    from sparsekit.onnx import benchmark, export_onnx

    path = tmp_path / "tiny.onnx"
    export_onnx(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)), path, [1, 16], exporter="torchscript")
    _interrupting_timer(monkeypatch)
    with pytest.raises(KeyboardInterrupt) as caught:
        benchmark(path, batch_sizes=(1, 8), runs=20, warmup=2)
    partial = caught.value.partial  # type: ignore[attr-defined]
    assert partial["interrupted"] is True and partial["batch_sizes"] == [1]
    assert list(partial["files"][0]["latency_ms"]) == ["1"] and partial["runs_done"]["1"] >= 1
    assert "interrupted before batch size 8 was timed" in partial["notes"][-1]
    # Interrupted before any batch size was timed: nothing to keep, the interruption as it was.
    _interrupting_timer(monkeypatch, at=1)
    with pytest.raises(KeyboardInterrupt) as first:
        benchmark(path, batch_sizes=(1, 8), runs=20, warmup=2)
    assert not hasattr(first.value, "partial")
    # The command prints the table of what it timed, then stops as interrupted (130).
    _interrupting_timer(monkeypatch)
    result = CliRunner().invoke(main, ["bench", str(path), "-b", "1", "-b", "8", "--runs", "20", "--json"])
    assert result.exit_code == 130, result.output
    document = json.loads(result.stdout)
    assert document["interrupted"] is True and document["batch_sizes"] == [1]
    assert "Interrupted" in result.stderr


def test_export_fills_an_empty_file_given_as_its_output_as_the_python_api_does(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sparsekit.cli import main

    monkeypatch.chdir(tmp_path)
    torch.save(mlp().state_dict(), "m.pt")
    (tmp_path / "e.onnx").write_bytes(b"")  # -o "$(mktemp --suffix .onnx)"
    result = CliRunner().invoke(main, ["export", "m.pt", "--arch", "examples.models:mlp", "-o", "e.onnx",
                                       "--exporter", "torchscript"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.onnx").stat().st_size > 1000
    (tmp_path / "mine.onnx").write_bytes(b"x")  # not empty, not sparsekit's: still never replaced
    refused = CliRunner().invoke(main, ["export", "m.pt", "--arch", "examples.models:mlp", "-o", "mine.onnx"])
    assert refused.exit_code == 2 and (tmp_path / "mine.onnx").read_bytes() == b"x"


def test_a_pruner_built_on_weights_holding_nan_or_inf_says_so():
    import pytest

    model = mlp()
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
        model.fc2.weight[1, 1] = float("inf")
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}], "finetune": {"epochs": 1}}
    with pytest.warns(UserWarning, match=r"weights hold NaN or inf values \(fc1.weight, fc2.weight\)") as caught:
        sparsekit.Pruner(model, recipe, steps_per_epoch=2)
    assert caught[0].filename == __file__  # the user's line, not sparsekit's


def test_sensitivity_whose_allocation_fails_with_nothing_probed_leaves_no_parent_it_made(tmp_path, monkeypatch):
    # -o new/a/b: the failed allocation removed b alone and left the empty new/a it had made (a prune run removes
    # them all). test_review_archs_12's command: nothing to probe, then the allocation fails.
    from click.testing import CliRunner
    from conftest import assert_bad_input
    from test_review_archs_12 import failing_allocation

    from sparsekit.cli import main

    args = failing_allocation(tmp_path, monkeypatch)
    (tmp_path / "kept").mkdir()  # a folder of the user's above the new ones: stays
    out = tmp_path / "kept" / "new" / "a" / "b"
    assert_bad_input(CliRunner().invoke(main, [*args, "-o", str(out), "--no-progress"]), "target_macs")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()
