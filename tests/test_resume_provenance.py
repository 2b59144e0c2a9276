"""A checkpoint is tied to what produced it: --resume with another model file, data file or recipe
is refused naming what changed; only fields that leave the finished epochs as they were may change,
and only when the user accepts each one."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, InterruptOnEvaluate, assert_bad_input
from hypothesis import given
from hypothesis import strategies as st

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import SparsekitError
from sparsekit.provenance import (
    SAFE_CHANGES,
    check_allowed,
    check_resume,
    data_identity,
    differences,
    is_safe,
    provenance,
    shown,
)

MLP = ("--arch", "examples.models:mlp")


ARCH_CHANGED = r"the architecture's code \(its module's file\) differs"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# --- the comparison itself --------------------------------------------------------------------------


def test_differences_name_each_changed_field_by_its_recipe_path():
    saved = {"model_file": "sha256:aa", "recipe": {"finetune": {"epochs": 2, "optimizer": {"lr": 0.1}},
                                                   "pruning": [{"sparsity": 0.5}, {"sparsity": 0.2}]}}  # fmt: skip
    now = {"model_file": "sha256:bb", "recipe": {"finetune": {"epochs": 2, "optimizer": {"lr": 0.2}},
                                                 "pruning": [{"sparsity": 0.5}, {"sparsity": 0.3}]}}  # fmt: skip
    assert differences(saved, now) == {
        "model_file": ("sha256:aa", "sha256:bb"),
        "finetune.optimizer.lr": (0.1, 0.2),
        "pruning.1.sparsity": (0.2, 0.3),
    }
    # A pruning list of another length is one change, not a crash.
    assert differences({"recipe": {"pruning": [1]}}, {"recipe": {"pruning": [1, 2]}}) == {"pruning": ([1], [1, 2])}
    # An input only one side records (a Python script's checkpoint has no model file) is no difference.
    assert differences({"recipe": {}}, {"model_file": "sha256:cc", "recipe": {}}) == {}


def test_only_safe_fields_can_be_accepted():
    assert check_allowed(["finetune.epochs", "benchmark", "export.opset"]) == [
        "finetune.epochs", "benchmark", "export.opset"
    ]  # fmt: skip
    for unsafe in ["finetune.optimizer.lr", "pruning.0.sparsity", "data.batch_size", "seed", "finetune", "model_file"]:
        with pytest.raises(ValueError, match=f"'{unsafe}' cannot be changed on a resume"):
            check_allowed([unsafe])
    assert not is_safe("finetune.epochs_extra") and is_safe("benchmark.runs")
    # A name no recipe has was refused as one that "changes what the finished epochs did"
    for bogus in ["bogus.x", "finetune.bogus", "data.nonsense"]:
        with pytest.raises(ValueError, match=f"'{bogus}' cannot be changed on a resume: no recipe has that field"):
            check_allowed([bogus])
    with pytest.raises(ValueError, match="changes what the finished epochs did"):
        check_allowed(["data.batch_size"])
    assert all(is_safe(s.rstrip(".")) or s.endswith(".") for s in SAFE_CHANGES)


@given(
    epochs=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    lr=st.tuples(st.sampled_from([0.1, 0.01]), st.sampled_from([0.1, 0.01])),
    runs=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    accept_epochs=st.booleans(),
)
def test_a_resume_passes_exactly_when_every_change_is_accepted(epochs, lr, runs, accept_epochs):
    def prov(i):
        finetune = {"epochs": epochs[i], "optimizer": {"lr": lr[i]}}
        return {"recipe": {"finetune": finetune, "benchmark": {"runs": runs[i]}}}

    allowed = ["benchmark"] + (["finetune.epochs"] if accept_epochs else [])
    refused = lr[0] != lr[1] or (epochs[0] != epochs[1] and not accept_epochs)
    if refused:
        with pytest.raises(sparsekit.SparsekitError, match="changed since the checkpoint"):
            check_resume(prov(0), prov(1), allowed=allowed)
    else:
        accepted = check_resume(prov(0), prov(1), allowed=allowed)
        assert set(accepted) == {k for k, changed in [("finetune.epochs", epochs[0] != epochs[1]),
                                                      ("benchmark.runs", runs[0] != runs[1])] if changed}  # fmt: skip


def test_a_checkpoint_without_provenance_is_not_compared():
    assert check_resume(None, {"recipe": {"seed": 1}}) == {}


def test_data_files_are_identified_by_content(tmp_path):
    a = tmp_path / "d.npz"
    np.savez(a, x=np.zeros((4, 3)), y=np.zeros(4))
    first = data_identity(str(a))
    np.savez(a, x=np.ones((4, 3)), y=np.zeros(4))
    assert data_identity(str(a)) != first and first.startswith("d.npz sha256:")
    assert data_identity("digits") == "digits"
    assert data_identity("not_imported_pkg.mod:fn") == "not_imported_pkg.mod:fn"  # never imported to hash it


# --- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def interrupted(tmp_path, mlp_checkpoint, monkeypatch):
    """A prune run stopped by Ctrl-C after its first epoch; returns (model, recipe, out, interrupt)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 2, optimizer: {name: adam, lr: 0.001}}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    interrupt = InterruptOnEvaluate(monkeypatch, 3)  # 1: dense model, 2: after epoch 1, 3: after epoch 2
    out = tmp_path / "o"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 130
    interrupt.restore()
    return mlp_checkpoint, recipe, out


def test_resume_with_another_model_file_is_refused(tmp_path, interrupted):
    model, recipe, out = interrupted
    other = tmp_path / "other.pt"
    state = torch.load(model, weights_only=True)
    state["state_dict"] = {k: v + 0.01 for k, v in state["state_dict"].items()}
    torch.save(state, other)
    before = (out / ".sparsekit" / "next" / "checkpoints" / "last.pt").read_bytes()
    result = run("prune", other, *MLP, recipe, "-o", out, "--resume", *FAST)
    assert_bad_input(result, str(out), "the model file differs", "--overwrite")
    # Nothing was trained on, and the checkpoint is as the first run left it.
    assert (out / ".sparsekit" / "next" / "checkpoints" / "last.pt").read_bytes() == before
    assert not (out / "report.json").exists()


def test_resume_with_other_data_is_refused(tmp_path, interrupted):
    model, recipe, out = interrupted
    from sklearn.datasets import load_digits

    digits = load_digits()
    own = tmp_path / "own.npz"
    np.savez(own, x=(digits.data / 16).astype("float32"), y=digits.target)
    result = run("prune", model, *MLP, recipe, "-o", out, "--resume", "--data", own, *FAST)
    assert_bad_input(result, "the data source differs", "digits then, own.npz sha256:")


def test_resume_with_a_changed_learning_rate_names_it_and_cannot_be_accepted(interrupted):
    model, recipe, out = interrupted
    changed = ["--set", "finetune.optimizer.lr=0.01"]
    result = run("prune", model, *MLP, recipe, "-o", out, "--resume", *changed, *FAST)
    assert_bad_input(result, "finetune.optimizer.lr: 0.001 then, 0.01 now")
    accepted = run("prune", model, *MLP, recipe, "-o", out, "--resume", *changed, "--allow-change",
                   "finetune.optimizer.lr", *FAST)  # fmt: skip
    assert_bad_input(accepted, "'finetune.optimizer.lr' cannot be changed on a resume", "finetune.epochs")


def test_more_epochs_need_the_users_acceptance_and_are_reported(interrupted):
    model, recipe, out = interrupted
    more = ["--set", "finetune.epochs=3"]
    refused = run("prune", model, *MLP, recipe, "-o", out, "--resume", *more, *FAST)
    assert_bad_input(refused, "finetune.epochs: 2 then, 3 now", "--allow-change finetune.epochs")
    done = run("prune", model, *MLP, recipe, "-o", out, "--resume", *more, "--allow-change", "finetune.epochs", *FAST)
    assert done.exit_code == 0, done.stderr
    assert "resuming with accepted changes: finetune.epochs 2 -> 3" in done.stderr
    report = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3]
    assert any("finetune.epochs 2 -> 3" in n for n in report["notes"])
    # The new checkpoint belongs to the new recipe: resuming the finished run again needs no acceptance.
    again = run("prune", model, *MLP, recipe, "-o", out, "--resume", *more, *FAST)
    assert again.exit_code == 0, again.stderr


def test_allow_change_without_resume_is_a_usage_error(tmp_path, mlp_checkpoint):
    result = run("prune", mlp_checkpoint, *MLP, "lenet-gradual-magnitude-90", "-o", tmp_path / "o",
                 "--allow-change", "finetune.epochs")  # fmt: skip
    assert result.exit_code == 2 and "--allow-change goes with --resume" in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_architecture_is_compared_as_in_effect_not_as_spelled(interrupted):
    """The checkpoint names its own factory: naming it again with --arch (or not) is the same run."""
    model, recipe, out = interrupted
    done = run("prune", model, recipe, "-o", out, "--resume", "--trust-code", *FAST)  # the first run passed --arch
    assert done.exit_code == 0, done.stderr


def test_the_architectures_code_is_compared_when_its_module_changed(tmp_path, monkeypatch):
    # The same pkg.module:callable with other code in it (a ReLU made a Tanh) builds another model: resuming a
    # checkpoint of the first with the second would train one run on two architectures.
    import importlib

    (tmp_path / "my_nets_for_resume.py").write_text("def build():\n    return 'relu'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("my_nets_for_resume")
    saved = provenance({}, arch="my_nets_for_resume:build {}")
    assert saved["arch_code"].startswith("sha256:")
    assert check_resume(saved, provenance({}, arch="my_nets_for_resume:build {}")) == {}
    (tmp_path / "my_nets_for_resume.py").write_text("def build():\n    return 'tanh'\n")
    with pytest.raises(SparsekitError, match=ARCH_CHANGED):
        check_resume(saved, provenance({}, arch="my_nets_for_resume:build {}"))
    old = {k: v for k, v in saved.items() if k != "arch_code"}  # a checkpoint from before arch_code: not compared
    assert check_resume(old, provenance({}, arch="my_nets_for_resume:build {}")) == {}


def test_the_code_of_a_re_exported_factory_is_compared_too(tmp_path, monkeypatch):
    # --arch pkg:build where pkg/__init__.py says `from .nets import build`: the code is in pkg/nets.py.
    import importlib

    pkg = tmp_path / "reexport_pkg_for_resume"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .nets import build\n")
    (pkg / "nets.py").write_text("def build():\n    return 'relu'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("reexport_pkg_for_resume")
    saved = provenance({}, arch="reexport_pkg_for_resume:build {}")
    (pkg / "nets.py").write_text("def build():\n    return 'tanh'\n")
    with pytest.raises(SparsekitError, match=ARCH_CHANGED):
        check_resume(saved, provenance({}, arch="reexport_pkg_for_resume:build {}"))


def test_the_same_data_file_under_another_name_is_the_same_data(tmp_path):
    # A model file is compared by its bytes alone; the data file was compared by name too ("the data source differs
    # (d1.npz sha256:7cfe64066624 then, d1copy.npz sha256:7cfe64066624 now)")
    first, copy, other = tmp_path / "d1.npz", tmp_path / "sub" / "d1copy.npz", tmp_path / "d2.npz"
    copy.parent.mkdir()
    np.savez(first, x=np.zeros((4, 3), "float32"), y=np.arange(4))
    copy.write_bytes(first.read_bytes())
    np.savez(other, x=np.ones((4, 3), "float32"), y=np.arange(4))
    assert differences(provenance({}, data=str(first)), provenance({}, data=str(copy))) == {}
    assert "data" in differences(provenance({}, data=str(first)), provenance({}, data=str(other)))
    assert "data" in differences(provenance({}, data="digits"), provenance({}, data=str(first)))
    # named by the recipe: its data.source differs too, and is the same bytes as well
    saved = provenance({"data": {"source": "d1.npz"}}, data=str(first))
    assert differences(saved, provenance({"data": {"source": "sub/d1copy.npz"}}, data=str(copy))) == {}
    assert "data.source" in differences(saved, provenance({"data": {"source": "d2.npz"}}, data=str(other)))


def test_changes_are_shown_as_the_recipe_writes_them():
    saved = {"recipe": {"finetune": {"max_steps_per_epoch": None, "log": False}, "seed": [1, None]}}
    now = {"recipe": {"finetune": {"max_steps_per_epoch": 3, "log": True}, "seed": [2.0, True, 5]}}
    with pytest.raises(SparsekitError) as err:
        check_resume(saved, now)
    message = str(err.value)  # said "None then", "False then", "[1, None] then"
    assert (shown("null"), shown(""), shown("2"), shown(float("inf")), shown("d.npz")) == (
        '"null"',
        '""',
        '"2"',
        ".inf",
        "d.npz",
    )  # text YAML would read as something else is quoted, as a recipe must write it
    for part in ("finetune.max_steps_per_epoch: null then, 3 now", "finetune.log: false then, true now",
                 "seed: [1, null] then, [2, true, 5] now"):  # fmt: skip
        assert part in message, message


def test_an_accepted_change_is_what_a_later_resume_compares_with(interrupted):
    model, recipe, out = interrupted
    assert run("prune", model, *MLP, recipe, "-o", out, "--resume", *FAST).exit_code == 0  # finish the run
    changed = ["--set", "benchmark.budget_s=3"]
    done = run("prune", model, *MLP, recipe, "-o", out, "--resume", *changed, "--allow-change", "benchmark", *FAST)
    assert done.exit_code == 0, done.stderr
    # The folder's results are the changed run's: the original recipe is now the change (no epoch was left to
    # train, so no new checkpoint recorded it, and the original resumed silently)
    assert_bad_input(
        run("prune", model, *MLP, recipe, "-o", out, "--resume", *FAST), "benchmark.budget_s: 3 then, 2 now"
    )
    assert run("prune", model, *MLP, recipe, "-o", out, "--resume", *changed, *FAST).exit_code == 0
    # fewer epochs than the run finished: refused before a "resuming with accepted changes" line said otherwise
    fewer = run("prune", model, *MLP, recipe, "-o", out, "--resume", *changed, "--set", "finetune.epochs=1",
                "--allow-change", "finetune.epochs", *FAST)  # fmt: skip
    assert_bad_input(fewer, "finetune.epochs: 1, but the run in", "already finished epoch 2")
    assert "resuming with accepted changes" not in fewer.stderr


def test_a_damaged_checkpoint_is_named_as_damaged_not_as_resumable(interrupted):
    model, recipe, out = interrupted
    ckpt = out / ".sparsekit" / "next" / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # a kill while it was copied
    line = assert_bad_input(run("prune", model, *MLP, recipe, "-o", out, "--resume", *FAST), "damaged or incomplete")
    assert "--resume continues from it" not in line and "--overwrite" in line  # said it "does not fit", resume it
    ckpt.unlink()
    ckpt.mkdir()  # not damage: a folder where the file goes
    line = assert_bad_input(
        run("prune", model, *MLP, recipe, "-o", out, "--resume", *FAST), "cannot be read (it is a folder)"
    )
    assert "damaged or incomplete" not in line
    ckpt.rmdir()
    import argparse

    torch.save({"step": argparse.Namespace(a=1)}, ckpt)  # a pickled object where sparsekit writes plain data
    line = assert_bad_input(run("prune", model, *MLP, recipe, "-o", out, "--resume", *FAST), "objects other than")
    assert "weights_only" not in line  # torch's advice to load it unsafely is not sparsekit's
    # --allow-change naming nothing was accepted without a word
    assert_bad_input(run("prune", model, *MLP, recipe, "-o", out, "--resume", "--allow-change", "", *FAST), "names no")


def test_a_resume_with_no_epoch_left_announces_no_training_metrics(interrupted):
    model, recipe, out = interrupted
    assert run("prune", model, *MLP, recipe, "-o", out, "--resume", *FAST).exit_code == 0  # finish the run
    logged = ["--set", "finetune.log=true", "--allow-change", "finetune.log"]
    done = run("prune", model, *MLP, recipe, "-o", out, "--resume", *logged, *FAST)
    assert done.exit_code == 0, done.stderr
    assert "training metrics:" not in done.stderr and not (out / "logs").exists()  # it named a folder never written


def test_a_change_accepted_by_a_resume_that_stopped_is_still_in_the_report(interrupted, monkeypatch):
    model, recipe, out = interrupted
    more = ["--set", "finetune.epochs=3"]
    stop = InterruptOnEvaluate(monkeypatch, 2)  # 1: dense model, 2: after the resumed run's first epoch
    stopped = run(
        "prune", model, *MLP, recipe, "-o", out, "--resume", *more, "--allow-change", "finetune.epochs", *FAST
    )
    assert stopped.exit_code == 130 and "resuming with accepted changes: finetune.epochs 2 -> 3" in stopped.stderr
    stop.restore()
    done = run("prune", model, *MLP, recipe, "-o", out, "--resume", *more, *FAST)  # nothing left to accept
    assert done.exit_code == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert any("finetune.epochs 2 -> 3" in n for n in report["notes"]), report["notes"]  # the note was lost


def test_the_code_of_the_users_modules_the_factory_imports_is_compared_too(tmp_path, monkeypatch):
    # nets.py imports helpers beside it (`from act_helper import act`, `import blocks_helper`, a package's module):
    # a ReLU made a Tanh in a helper builds another model, which hashing nets.py alone missed (the resume went on).
    import importlib

    (tmp_path / "act_helper_for_resume.py").write_text("def act():\n    return 'relu'\n")
    (tmp_path / "blocks_helper_for_resume.py").write_text("WIDTH = 8\n")
    (tmp_path / "unused_helper_for_resume.py").write_text("X = 1\n")  # imported elsewhere, not by the factory
    pkg = tmp_path / "helper_pkg_for_resume"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text("DEPTH = 2\n")
    (pkg / "data.py").write_text("ROWS = 3\n")  # a sibling the factory does not import
    (tmp_path / "nets_using_helpers_for_resume.py").write_text(
        "import blocks_helper_for_resume\nimport helper_pkg_for_resume.layers\nimport torch\n\n"
        "def build():\n    from act_helper_for_resume import act  # (imported where it is used)\n"
        "    return act(), blocks_helper_for_resume.WIDTH, helper_pkg_for_resume.layers.DEPTH\n"
    )
    (tmp_path / "data_using_helpers_for_resume.py").write_text(
        "from act_helper_for_resume import act\n\ndef loaders():\n    return act()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("nets_using_helpers_for_resume", "data_using_helpers_for_resume"):
        importlib.import_module(name)
    arch, data = "nets_using_helpers_for_resume:build {}", "data_using_helpers_for_resume:loaders"
    saved = provenance({}, arch=arch, data=data)
    assert {"arch_code", "arch_deps", "data", "data_deps"} <= set(saved)
    # What else was imported, and when, changes nothing: the imports are read from the files.
    importlib.import_module("unused_helper_for_resume")
    importlib.import_module("helper_pkg_for_resume.data")
    assert check_resume(saved, provenance({}, arch=arch, data=data)) == {}
    (tmp_path / "unused_helper_for_resume.py").write_text("X = 2\n")
    (pkg / "data.py").write_text("ROWS = 4\n")
    assert check_resume(saved, provenance({}, arch=arch, data=data)) == {}  # modules the factory does not import
    for path, edited in (
        (pkg / "layers.py", "DEPTH = 3\n"),
        (tmp_path / "blocks_helper_for_resume.py", "WIDTH = 16\n"),
    ):
        before = path.read_text()
        path.write_text(edited)
        with pytest.raises(SparsekitError, match="the code of the modules of yours the architecture imports differs"):
            check_resume(saved, provenance({}, arch=arch, data=data))
        path.write_text(before)
    assert check_resume(saved, provenance({}, arch=arch, data=data)) == {}
    (tmp_path / "act_helper_for_resume.py").write_text("def act():\n    return 'tanh'\n")
    with pytest.raises(SparsekitError, match=r"architecture imports differs(.|\n)*data callable imports differs"):
        check_resume(saved, provenance({}, arch=arch, data=data))
    # A checkpoint from before the helpers were compared: resumed while the factory's own file is the same.
    old = {k: v for k, v in saved.items() if k not in ("arch_deps", "data_deps")}
    assert check_resume(old, provenance({}, arch=arch, data=data)) == {}


def test_an_architecture_imported_from_a_zip_file_has_no_code_to_compare(tmp_path, monkeypatch):
    # The helpers' search put the zip member's path (m.zip/zipnets.py) in the hash: "Not a directory", exit 2.
    import importlib
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.zip", "w") as z:
        z.writestr("zipnets_for_resume.py", "import json\n\ndef build():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "m.zip"))
    importlib.import_module("zipnets_for_resume")
    saved = provenance({}, arch="zipnets_for_resume:build {}", data="zipnets_for_resume:build")
    assert "arch_code" not in saved and "arch_deps" not in saved and "data_deps" not in saved


def test_a_factory_re_exported_from_another_folder_on_the_path_is_hashed(tmp_path, monkeypatch):
    # `--arch here_nets:build` where here_nets.py says `from there_nets import build`, and there_nets.py lies in
    # another folder on the import path: its relative position under the first folder was asked for (ValueError).
    import importlib

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "there_nets_for_resume.py").write_text("from . import nothing\n\ndef build():\n    return 1\n")
    (tmp_path / "a" / "here_nets_for_resume.py").write_text("from there_nets_for_resume import build\n")
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.setitem(sys.modules, "there_nets_for_resume", _module_from(tmp_path / "b" / "there_nets_for_resume.py"))
    importlib.import_module("here_nets_for_resume")
    saved = provenance({}, arch="here_nets_for_resume:build {}")
    assert saved["arch_code"].startswith("sha256:") and "arch_deps" not in saved


def _module_from(path):
    """A module object for ``path`` whose code is ``build`` alone (its relative import is never run)."""
    import types

    module = types.ModuleType(path.stem)
    module.__file__ = str(path)
    exec("def build():\n    return 1\n", module.__dict__)
    module.build.__module__ = path.stem
    return module
