"""Review round 22, the lead's own fixes: items left alone in earlier rounds."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import RecipeError

MAGNITUDE = "version: 1\npruning:\n  - method: magnitude\n    sparsity: 0.5\n"


@pytest.mark.parametrize(
    ("setting", "meant"),
    [
        # YAML's `key: value` habit: the example was always `finetune.epochs=2`, whatever the user set
        ("pruning.0.sparsity:0.5", "--set pruning.0.sparsity=0.5"),
        ("finetune.lr: 0.1", "--set finetune.lr=0.1"),
        ("finetune.epochs", "--set finetune.epochs=VALUE"),
    ],
)
def test_a_setting_without_equals_is_shown_as_the_users_own_key(tmp_path, setting, meant):
    (tmp_path / "r.yaml").write_text(MAGNITUDE, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "r.yaml"), "--set", setting])
    assert_bad_input(result, "expected key.path=value", meant)


def test_the_python_api_words_the_same_example_as_overrides():
    with pytest.raises(RecipeError, match=r"e\.g\. overrides=\['finetune\.lr=0\.1'\]"):
        sparsekit.load_recipe("lenet-gradual-magnitude-90", overrides=["finetune.lr: 0.1"])


def test_a_split_setting_before_the_model_says_to_join_them(tmp_path, monkeypatch):
    # `prune --set k v MODEL RECIPE`: v took MODEL's place and click named RECIPE as the extra argument.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(MAGNITUDE, encoding="utf-8")
    result = CliRunner().invoke(main, ["prune", "--set", "pruning.0.sparsity", "0.5", "w.pt", "r.yaml"])
    assert_bad_input(result, "--set pruning.0.sparsity 0.5", "write --set pruning.0.sparsity=0.5")
    assert "unexpected extra argument" not in result.output


@pytest.mark.parametrize(
    ("spec", "meant"),
    [
        ("mynet/Net", "did you mean 'mynet:Net'?"),
        ("pkg/nets/build", "did you mean 'pkg.nets:build'?"),
        ("mynet", "name the callable after a colon: 'mynet:NAME'"),
        # was "did you mean 'mynet:py'?"
        ("mynet.py", "not its file, and the callable follows a colon: 'mynet:NAME'"),
    ],
)
def test_an_arch_spec_in_another_shape_is_shown_the_one_meant(spec, meant):
    from sparsekit.errors import TrustError
    from sparsekit.trust import split_spec

    with pytest.raises(TrustError) as err:
        split_spec(spec, "--arch")
    assert meant in str(err.value)
    assert "did you mean 'mynet:py'" not in str(err.value)


def test_a_misspelt_module_names_the_close_one_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet.py").write_text("raise SystemExit('imported')\n", encoding="utf-8")  # never imported
    torch.save(torch.nn.Linear(8, 3).state_dict(), tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "mynett:Net", "--input-shape", "8"])
    assert_bad_input(result, "cannot import module 'mynett'", "did you mean 'mynet' (in the current folder)?")
    # a module that is found but fails inside (a missing dependency) gets no such guess
    (tmp_path / "other.py").write_text("import mynett_dependency\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "other:Net", "--input-shape", "8"])
    assert "did you mean" not in result.output


def test_a_checkpoint_folder_removed_mid_training_is_not_re_created(tmp_path):
    # rm -r of the folder while training went on: each later epoch's checkpoint re-created it (and with it a
    # folder posing as the run's, holding only the later epochs).
    from examples.models import mlp
    from sparsekit.errors import OutputError

    torch.manual_seed(0)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    run = tmp_path / "run"
    recipe = {"version": 1, "finetune": {"epochs": 3}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    removed = []

    def remove_after_first(row):
        if not removed:
            import shutil

            assert (run / "ckpt" / "last.pt").is_file()  # epoch 1 was checkpointed
            shutil.rmtree(run)
            removed.append(row)

    with pytest.raises(OutputError, match=r"removed while training .*epoch 2's checkpoint was not written"):
        sparsekit.finetune(
            mlp(in_features=8, hidden=[16], num_classes=3), recipe, data, data[:1], progress=False,
            checkpoint_dir=run / "ckpt", on_epoch=remove_after_first,
        )  # fmt: skip
    assert removed and not run.exists()


def test_an_output_folder_removed_mid_run_is_not_called_kept(tmp_path, mlp_checkpoint):
    # The error named a staging file and said "The run's last checkpoint is kept in OUT", which went with the folder.
    import shutil

    from sparsekit.errors import OutputError

    out = tmp_path / "o"
    recipe = (
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits, batch_size: 64}\n"
        "finetune: {epochs: 2, max_steps_per_epoch: 2}\npruning:\n  - method: magnitude\n    sparsity: 0.5\n"
        "export: {exporter: torchscript}\nbenchmark: {enabled: false}\n"
    )
    (tmp_path / "r.yaml").write_text(recipe, encoding="utf-8")

    def remove(message):
        if out.exists():
            shutil.rmtree(out)

    with pytest.raises(OutputError) as err:
        sparsekit.run_prune(
            mlp_checkpoint, tmp_path / "r.yaml", out, arch="examples.models:mlp", progress=False, notify=remove
        )
    assert str(err.value).startswith(f"{out}: removed while the run was writing into it")
    assert "kept in" not in str(err.value)


def test_publishing_refuses_a_folder_removed_since_begin(tmp_path):
    import shutil

    from sparsekit.errors import OutputError
    from sparsekit.outputs import RunFolder

    folder = RunFolder(tmp_path / "o")
    stage = folder.begin()
    try:
        shutil.rmtree(tmp_path / "o")
        (stage / "report.json").parent.mkdir(parents=True)  # what a later write's mkdir(parents=True) did
        (stage / "report.json").write_text("{}", encoding="utf-8")
        with pytest.raises(OutputError, match="removed while the run was writing into it"):
            folder.publish()
    finally:
        folder.unlock()


def test_resuming_with_persistent_loader_workers_warns_that_it_is_not_bit_identical(tmp_path):
    # Their random state lives in the worker processes, which no checkpoint holds: the resume's augmentation
    # differed silently while the README promised bit for bit.
    from torch.utils.data import DataLoader, TensorDataset

    from examples.models import mlp

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 8), torch.randint(0, 3, (16,)))
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    model = mlp(in_features=8, hidden=[16], num_classes=3)
    val = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))]
    sparsekit.finetune(model, recipe, DataLoader(data, batch_size=8), val, progress=False, checkpoint_dir=tmp_path)
    recipe["finetune"]["epochs"] = 2
    persistent = DataLoader(data, batch_size=8, num_workers=1, persistent_workers=True)
    with pytest.warns(UserWarning, match="persistent_workers=True") as caught:
        sparsekit.finetune(
            mlp(in_features=8, hidden=[16], num_classes=3), recipe, persistent, val, progress=False,
            checkpoint_dir=tmp_path, resume=True, allow_changes=["finetune.epochs"],
        )  # fmt: skip
    assert any(w.filename == __file__ for w in caught if "persistent" in str(w.message))  # points at the call


@pytest.mark.parametrize(("noise", "said"), [(0.04, False), (0.7, True)])
def test_a_latency_verdict_measured_too_noisily_says_it_is_not_to_be_trusted(noise, said):
    # "batch 32: 18.329 -> 0.541 ms (...): faster" stood beside the note "The benchmark was too noisy to measure
    # latency ... before trusting any latency figure of this run": the line read as a 34x result.
    from test_report_summary import MLP_SHAPE, _prune, _recipe, _report

    from examples.models import mlp
    from sparsekit.report import render_markdown, render_summary

    recipe = _recipe([{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}])
    dense, model, pruner = _prune(mlp(in_features=64, hidden=[32]), recipe, MLP_SHAPE)
    report = _report(dense, model, pruner, recipe, MLP_SHAPE, latency={"1": (1.0, 0.04), "32": (0.03, noise)})
    line = next(ln for ln in render_summary(report, "out").splitlines() if "batch 32:" in ln)
    assert line.endswith("faster, too noisy to trust") is said and "faster" in line
    one = next(ln for ln in render_summary(report, "out").splitlines() if "batch 1:" in ln)
    assert "too noisy" not in one
    row = next(ln for ln in render_markdown(report).splitlines() if ln.startswith("| latency p50, batch 32"))
    assert ("too noisy to trust" in row) is said


@pytest.mark.parametrize(
    ("setting", "meant"),
    [("pruning.0.layers.include=fc1", "write [fc1]"), ("pruning.0.layers.include=fc1, fc2", "write [fc1, fc2]")],
)
def test_one_name_where_a_list_is_taken_is_shown_as_the_list(tmp_path, setting, meant):
    # "must be a list, written [a, b] (got text 'fc2')" left the user to work out that [fc2] was all it took.
    (tmp_path / "r.yaml").write_text(MAGNITUDE, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "r.yaml"), "--set", setting])
    assert_bad_input(result, "pruning[0].layers.include: must be a list", meant)


def test_each_rank_draws_its_own_numpy_and_python_noise(monkeypatch):
    # finetune seeding numpy and random with the recipe's seed on every rank gave every shard the same augmentation
    # noise under torchrun, overriding a user's per-rank seeds. Rank 0 keeps a single process's draws.
    import random

    import numpy as np

    from examples.models import mlp
    from sparsekit import distributed

    drawn: list[tuple[float, float]] = []

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            drawn.append((float(np.random.rand()), random.random()))
            return torch.zeros(8), 0

    def draws(rank: int) -> list[tuple[float, float]]:
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        drawn.clear()
        recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
        loader = torch.utils.data.DataLoader(Noisy(), batch_size=4)
        val = [(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long))]
        sparsekit.finetune(mlp(in_features=8, hidden=[8], num_classes=3), recipe, loader, val, progress=False)
        return list(drawn)

    single, again, other = draws(0), draws(0), draws(1)
    assert single == again
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(single, other, strict=True))


def test_finetune_leaves_the_callers_numpy_and_python_generators_as_they_were():
    # finetune seeds them from the recipe (for the data's augmentation), which left the caller's reseeded: a sweep
    # drawing each trial's settings with random.choice after each finetune drew the same trial every time.
    import random

    import numpy as np

    from examples.models import mlp

    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    data = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))]
    random.seed(1)
    np.random.seed(1)
    expected = (random.random(), float(np.random.rand()))
    random.seed(1)
    np.random.seed(1)
    sparsekit.finetune(mlp(in_features=8, hidden=[8], num_classes=3), recipe, data, data, progress=False)
    assert (random.random(), float(np.random.rand())) == expected
    import inspect

    assert "checkpoint_dir" in inspect.signature(sparsekit.finetune).parameters  # help() still shows its arguments


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path):
    # It was found at the first save, after the first epoch had trained.
    from examples.models import mlp
    from sparsekit.errors import OutputError

    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    recipe = {"version": 1, "finetune": {"epochs": 2}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    batches = [(torch.randn(4, 8), torch.randint(0, 3, (4,)))]
    read: list[int] = []

    class Counted:
        def __len__(self):
            return 1

        def __iter__(self):
            read.append(1)
            return iter(batches)

    with pytest.raises(OutputError, match=r"notes\.txt"):
        sparsekit.finetune(
            mlp(in_features=8, hidden=[8], num_classes=3), recipe, Counted(), batches, progress=False,
            checkpoint_dir=tmp_path / "notes.txt",
        )  # fmt: skip
    assert read == []  # no epoch trained
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "x"


def test_a_folder_whose_stat_fails_for_another_reason_is_not_taken_for_removed(tmp_path, monkeypatch):
    # A network filesystem's timeout (EIO, ESTALE) while the run checks its folder read as "removed while the run was
    # writing into it", stopping a run whose folder was there.
    import errno
    import os

    from sparsekit import fsutil

    before = fsutil.identity(tmp_path)
    assert not fsutil.replaced(tmp_path, before)
    assert fsutil.replaced(tmp_path / "gone", before)
    real = os.stat

    def flaky(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(tmp_path):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", flaky)
    assert not fsutil.replaced(tmp_path, before)
