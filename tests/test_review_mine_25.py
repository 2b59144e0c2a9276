"""Review (my own fixes, session 25): faults earlier notes left alone."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

import sparsekit

pytestmark = pytest.mark.usefixtures("one_thread")


def _penalty_loop(*, in_loss: str, regularize: bool, steps: int = 10) -> list[str]:
    """A loop with an l1 penalty entry: ``in_loss`` is how it uses ``pruner.penalty()`` ("loss": added to the loss,
    "logged": computed with grad and only read, "no_grad": computed under no_grad, "": not at all); returns the
    warnings that name both calls."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    entry = {"method": "l1", "strength": 1e-2, "mode": "penalty", "group": "none"}
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [entry]}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,)))
            if in_loss == "loss":
                loss = loss + pruner.penalty()
            elif in_loss == "logged":
                float(pruner.penalty())
            elif in_loss == "no_grad":
                with torch.no_grad():
                    float(pruner.penalty())
            loss.backward()
            if regularize:
                pruner.regularize()
            optimizer.step()
            pruner.step()
        pruner.finalize()
    return [str(w.message) for w in caught if "penalty() was added to the loss" in str(w.message)]


def test_penalty_in_the_loss_and_regularize_as_well_is_warned_as_the_penalty_applied_twice():
    # Both add lambda * sign(w) to .grad: the run trained with twice the recipe's strength, with no word.
    told = _penalty_loop(in_loss="loss", regularize=True)
    assert len(told) == 1
    assert "regularize() ran too" in told[0] and "acts twice" in told[0]


@pytest.mark.parametrize(
    ("in_loss", "regularize"),
    [("loss", False), ("", True), ("logged", True), ("no_grad", True)],
)
def test_one_way_of_applying_the_penalty_or_only_reading_it_is_not_warned(in_loss, regularize):
    assert _penalty_loop(in_loss=in_loss, regularize=regularize) == []


@pytest.mark.parametrize("source", ["x.NPZ", "data/Train.Npz"])
def test_an_npz_file_named_with_an_upper_case_suffix_is_told_how_to_name_it(source):
    # "is not a known source; valid sources: ... path/to/file.npz" for x.NPZ left the user to spot the case.
    from sparsekit.recipe import source_problem

    told = source_problem(source)
    assert told is not None and f"lower-case .npz ({source[:-4]}.npz)" in told
    assert source_problem(source[:-4] + ".npz") is None


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("finetune: !!omap\n  - epochs: 1\n", "!!omap"),
        ("finetune: {epochs: 1}\npruning: !!pairs\n  - method: magnitude\n", "!!pairs"),
        ("finetune:\n  epochs: 1\n  x: !!set {a, b}\n", "!!set"),
    ],
)
def test_yaml_collection_tags_are_refused_naming_the_tag_and_line(tmp_path, text, tag):
    # !!omap was "finetune[0]: a tuple is not allowed; ... quote it if it is text": neither the tag nor the line.
    from sparsekit.errors import RecipeError
    from sparsekit.recipe_yaml import read_yaml

    path = tmp_path / "r.yaml"
    path.write_text("version: 1\n" + text)
    with pytest.raises(RecipeError, match=rf"r\.yaml \(line \d+, column \d+\): YAML tag not allowed \({tag}\)"):
        read_yaml(path)


def test_a_collection_tag_in_an_override_is_refused_not_kept_as_text():
    from sparsekit.errors import RecipeError
    from sparsekit.recipe_yaml import apply_overrides

    with pytest.raises(RecipeError, match=r"YAML tag not allowed \(!!omap\)"):
        apply_overrides({"version": 1}, ["model.kwargs.x=!!omap [a: 1]"])


def test_resuming_an_interrupted_run_names_the_checkpoint_its_interrupt_named(tmp_path, mlp_checkpoint, monkeypatch):
    # The interrupt line said "OUT/.sparsekit/next/checkpoints/last.pt holds epoch 1" and --resume then said
    # "resuming from OUT/checkpoints/last.pt", a file that did not exist: two names for one checkpoint.
    from click.testing import CliRunner
    from conftest import InterruptOnEvaluate

    from sparsekit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 2, max_steps_per_epoch: 2}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    out = tmp_path / "out"
    args = ["prune", str(mlp_checkpoint), str(recipe), "--arch", "examples.models:mlp", "--data", "digits"]
    args += ["--no-progress", "--set", "benchmark.runs=5", "-o", str(out)]
    interrupt = InterruptOnEvaluate(monkeypatch, 3)  # at the end of epoch 2: epoch 1 is checkpointed
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 130, first.output + first.stderr
    staged = out / ".sparsekit" / "next" / "checkpoints" / "last.pt"
    assert f"{staged} holds epoch 1" in first.stderr
    interrupt.restore()
    again = CliRunner().invoke(main, [*args, "--resume"])
    assert again.exit_code == 0, again.output + again.stderr
    assert f"resuming from {staged}: 1 of 2 epochs finished" in again.stderr


@pytest.mark.parametrize(
    ("include", "exclude"),
    [(["*"], ["*"]), (["fc1", "fc2"], ["fc*"]), (["fc1"], ["fc1", "x"]), (["a.*", "fc1"], ["**"])],
)
def test_layers_that_exclude_everything_they_include_are_refused_without_a_model(include, exclude):
    # Recipe-only validate said "valid"; prune failed only once the model was loaded.
    from sparsekit.errors import RecipeError

    entry = {"method": "magnitude", "sparsity": 0.5, "layers": {"include": include, "exclude": exclude}}
    with pytest.raises(RecipeError, match=r"pruning\[0\]\.layers: exclude .* leaves out everything include"):
        sparsekit.load_recipe({"version": 1, "pruning": [entry]})


@pytest.mark.parametrize(("include", "exclude"), [(["*"], ["fc*"]), (["fc*"], ["fc1"]), (["fc1", "fc2"], ["fc1"])])
def test_layers_whose_patterns_may_leave_a_layer_are_valid_without_a_model(include, exclude):
    entry = {"method": "magnitude", "sparsity": 0.5, "layers": {"include": include, "exclude": exclude}}
    assert sparsekit.load_recipe({"version": 1, "pruning": [entry]}).pruning[0].layers.exclude == exclude


def test_structured_removal_keeps_a_channels_last_model_channels_last():
    # torch-pruning's new parameters are contiguous: a model trained channels_last had every pruned conv converted
    # back and forth at each later step (and lost the layout it was set up with).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3),
        nn.Flatten(), nn.LazyLinear(4),
    )  # fmt: skip
    model(torch.randn(2, 3, 8, 8))
    model = model.to(memory_format=torch.channels_last)
    entry = {"method": "structured", "ratio": 0.5, "importance": "l2", "round_to": None, "schedule": "oneshot"}
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [entry], "model": {"input_shape": [1, 3, 8, 8]}}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    pruner.step()
    assert pruner.structure_changed
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert convs[0].weight.shape[0] < 16  # channels were removed
    for conv in convs:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_an_allow_change_no_resume_may_make_names_the_option(tmp_path, mlp_checkpoint):
    # "Error: 'bogus.field' cannot be changed on a resume: ..." named no option, where the option's other errors do.
    from click.testing import CliRunner

    from sparsekit.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 1, max_steps_per_epoch: 2}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    args = ["prune", str(mlp_checkpoint), str(recipe), "--arch", "examples.models:mlp", "--data", "digits"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "o"), "--resume", "--allow-change", "bogus.field"])
    assert result.exit_code == 2
    told = "Error: --allow-change: 'bogus.field' cannot be changed on a resume: no recipe has that field"
    assert told in result.stderr
    with pytest.raises(sparsekit.SparsekitError, match=r"^allow_changes=\[\.\.\.\]: 'bogus.field' cannot be changed"):
        sparsekit.run_prune(mlp_checkpoint, recipe, tmp_path / "p", arch="examples.models:mlp", resume=True,
                            allow_changes=["bogus.field"])  # fmt: skip


def test_an_int8_export_says_when_an_earlier_fp32_file_beside_it_is_not_its_own(tmp_path, mlp_checkpoint):
    # After `export -o q.onnx --quantize int8 --keep-fp32`, the same export without --keep-fp32 left the earlier
    # q.fp32.onnx beside the new q.onnx with no word, ready to be benchmarked against the wrong model.
    from click.testing import CliRunner

    from sparsekit.cli import main

    q = tmp_path / "q.onnx"
    args = ["export", str(mlp_checkpoint), "--arch", "examples.models:mlp", "--exporter", "torchscript", "-o", str(q)]
    first = CliRunner().invoke(main, [*args, "--quantize", "int8", "--keep-fp32"])
    assert first.exit_code == 0, first.stderr
    assert "is an earlier export's fp32 model" not in first.stdout
    again = CliRunner().invoke(main, [*args, "--quantize", "int8"])
    assert again.exit_code == 0, again.stderr
    assert f"Note: {tmp_path / 'q.fp32.onnx'} is an earlier export's fp32 model, not this one's" in again.stdout


def test_the_unfollowed_masks_warning_names_the_pruners_own_model_between_its_steps():
    # Written between optimizer.step() and pruner.step(), the Pruner's own model was called "a copy of the model made
    # while a Pruner ran (an EMA's AveragedModel, copy.deepcopy)": the wrong cause, and no word of the right order.
    from sparsekit.masks import unfollowed_masks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step()
        pruner.step()
    assert unfollowed_masks(model, "save") is None
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    told = unfollowed_masks(model, "save")
    assert told is not None and "the Pruner's own model between optimizer.step() and pruner.step()" in told


def test_exports_data_shape_error_speaks_of_its_own_option_not_the_recipe(tmp_path, mlp_checkpoint):
    # "... but model.input_shape [1, 64] takes ... or set model.input_shape to [1, 21] (--input-shape 1,21)": export
    # has no recipe; its shape comes from the checkpoint or --input-shape.
    import numpy as np
    from click.testing import CliRunner

    from sparsekit.cli import main

    np.savez(tmp_path / "d.npz", x=np.zeros((8, 21), "float32"), y=np.zeros(8, "int64"))
    args = ["export", str(mlp_checkpoint), "--arch", "examples.models:mlp", "-o", str(tmp_path / "q.onnx")]
    result = CliRunner().invoke(main, [*args, "--quantize", "int8", "--data", str(tmp_path / "d.npz")])
    assert result.exit_code == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert "but the input shape [1, 64] takes samples" in line and "or pass --input-shape 1,21 if" in line
    assert "model.input_shape" not in line


def test_a_users_own_log_with_sparsekits_header_is_never_started_over(tmp_path):
    # finetune(log_dir=D) emptied D/steps.csv of the user's own loop, whose header was sparsekit's (step,epoch,loss,lr):
    # a header alone said "sparsekit wrote it". Now only a file sparsekit created there (its marker lists it).
    from sparsekit.errors import OutputError
    from sparsekit.metrics_log import MetricsLog

    mine = "step,epoch,loss,lr\n1,0.1,2.3,0.01\n"
    (tmp_path / "steps.csv").write_text(mine)
    with pytest.raises(OutputError, match=r"steps\.csv: not a metrics log sparsekit wrote .*does not list it"):
        MetricsLog(tmp_path)
    assert (tmp_path / "steps.csv").read_text() == mine
    # sparsekit's own log in a folder is still cut back on a resume, and started over by a new run
    ours = tmp_path / "ours"
    log = MetricsLog(ours)
    for step in (1, 2, 3, 4):
        log.step(step, step / 2, 1.0, 0.1)
        if step % 2 == 0:
            log.epoch({"epoch": step // 2, "val_accuracy": 0.5, "sparsity": 0.1}, step, {"a": 0.1}, 1)
    log.close()
    MetricsLog(ours, resume_step=2).close()
    assert (ours / "steps.csv").read_text().splitlines()[1:] == ["1,0.5,1.0,0.1", "2,1.0,1.0,0.1"]
    MetricsLog(ours).close()
    assert (ours / "steps.csv").read_text().splitlines() == ["step,epoch,loss,lr"]


@pytest.mark.parametrize("track", [False, True])
def test_exporting_batchnorm_without_running_statistics_warns_that_outputs_depend_on_the_batch(tmp_path, track):
    # Parity said ok and nothing else was said, though each sample's output changed with the rest of its batch
    # (0.095 on sample 0 between batches of 4 and 1).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=track), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=[1, 1, 8, 8])
    told = [str(w.message) for w in caught if "keep no running statistics" in str(w.message)]
    assert len(told) == (0 if track else 1)
    if not track:
        assert "'1'" in told[0] and "depends on the others in its batch" in told[0]


@pytest.mark.parametrize(("samples", "warned"), [(18, True), (99, True), (100, False), (400, False)])
def test_a_sensitivity_table_from_a_tiny_validation_split_is_warned_of(samples, warned):
    # val_fraction 0.01 (18 samples) gave an allocation that was a guess, with no word.
    import sparsekit.sensitivity as sens

    table = sens.SensitivityTable(
        dense_accuracy=0.9, dense_loss=0.3, val_samples=samples, classes=10, fingerprint="x",
        input_shape=[1, 64], model_macs=1, grid={},
    )  # fmt: skip
    told = table.noise_warning()
    assert (told is not None) == warned
    if warned:
        assert f"only {samples} validation sample(s)" in told and "data.val_fraction" in told


def test_a_prune_whose_allocation_failed_reuses_its_analysis_when_run_again(tmp_path, mlp_checkpoint, monkeypatch):
    # An unreachable target_macs exits 2 and leaves no run folder: the corrected rerun probed every layer again.
    from click.testing import CliRunner
    from test_sensitivity_cli import StopAfter

    from sparsekit.cli import main

    model = tmp_path / "m.pt"
    model.write_bytes(mlp_checkpoint.read_bytes())  # a path of this test's own: the cache is kept per model file
    recipe = tmp_path / "r.yaml"
    text = (
        "data: {source: digits}\nfinetune: {epochs: 1, max_steps_per_epoch: 2}\n"
        "pruning: [{method: structured, ratio: auto, target_macs: TARGET}]\nbenchmark: {enabled: false}\n"
    )
    args = ["prune", str(model), str(recipe), "--arch", "examples.models:mlp", "--no-progress"]
    recipe.write_text(text.replace("TARGET", "0.01"))
    counted = StopAfter(monkeypatch, None)
    failed = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a")])
    assert failed.exit_code == 2, failed.stderr
    probes = counted.calls
    assert probes > 1 and not (tmp_path / "a").exists()
    recipe.write_text(text.replace("TARGET", "0.5"))
    counted.calls = 0
    fixed = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b")])
    assert fixed.exit_code == 0, fixed.stderr
    assert counted.calls == 0  # every probe and the dense model from the first run's analysis
    # Other weights in the same file: analysed afresh, not read from the cache.
    torch.manual_seed(1)
    from examples.models import mlp

    sparsekit.save_model(mlp(), model, factory="examples.models:mlp", input_shape=[1, 64])
    again = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "c")])
    assert again.exit_code == 0, again.stderr
    assert counted.calls == probes


def test_a_legacy_format_files_first_pickle_is_judged_once_the_users_module_is_imported(tmp_path, monkeypatch):
    # torch's legacy format reads its first pickles (magic number, protocol, sys info) with pickle_module.load, not
    # pickle_module.Unpickler: a payload there calling a name the screen deferred (a decorator's, known only once
    # imported) ran unchecked.
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = "usermod_mine25_legacy"
    (tmp_path / f"{module}.py").write_text(
        "import subprocess\n\n\ndef register(name):\n    return lambda fn: subprocess.getoutput\n\n\n"
        '@register("net")\ndef gather(c):\n    pass\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    payload = b"\x80\x02c" + f"{module}\ngather\n".encode() + b"U" + bytes([len(command)]) + command + b"\x85R."
    import pickle

    from torch.serialization import MAGIC_NUMBER

    # Not a zip: the legacy format, whose first pickle is the magic number and whose second (the protocol) is this
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    rest = [pickle.dumps(x, protocol=2) for x in (info, {"a": 1}, [])]  # sys info, the object, storage keys
    (tmp_path / "model.pt").write_bytes(b"".join([pickle.dumps(MAGIC_NUMBER, protocol=2), payload, *rest]))
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert not canary.exists()
    assert result.exit_code == 2, result.output


def _version_64(data: bytes) -> bytes:
    """``data`` (a zip archive) with its first central-directory entry's "version needed" set to 6.4: zipfile then
    raises NotImplementedError("zip file version 6.4") while reading the directory, as a flipped bit can make it."""
    at = data.index(b"PK\x01\x02") + 6
    return data[:at] + (64).to_bytes(2, "little") + data[at + 2 :]


def test_a_zip_whose_version_field_is_damaged_is_refused_as_damage(tmp_path, mlp_checkpoint):
    # A hypothesis run of test_bad_inputs met "Error: unexpected failure: NotImplementedError: zip file version 6.4"
    # (exit 1) from a damaged .pt; the readers that open a zip's directory now take it as damage.
    import numpy as np
    from click.testing import CliRunner

    from sparsekit.cli import main
    from sparsekit.modelio import _numpy_archive
    from sparsekit.onnx.files import _zip_names

    bad = tmp_path / "ck.pt"
    bad.write_bytes(_version_64(mlp_checkpoint.read_bytes()))
    assert _numpy_archive(bad) is False and _zip_names(bad) is None
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 2, result.output
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 64), "float32"), y=np.zeros(8, "int64"))
    (tmp_path / "d.npz").write_bytes(_version_64((tmp_path / "d.npz").read_bytes()))
    from sparsekit.data import load_data
    from sparsekit.errors import DataError

    with pytest.raises(DataError):
        load_data(str(tmp_path / "d.npz"), input_shape=[1, 64])


def test_a_dict_output_error_gives_the_override_for_one_run(tmp_path, mlp_checkpoint):
    # "set model.output: logits in the recipe" only; export's words named its option, validate's and prune's no --set.
    from sparsekit.errors import DataError
    from sparsekit.logits import select_logits

    out = {"logits": torch.zeros(2, 3), "aux": torch.zeros(2)}
    with pytest.raises(DataError) as err:
        select_logits(out, None, "m.pt")
    assert "set model.output: logits in the recipe (or for this run overrides=['model.output=logits'])" in str(
        err.value
    )


def test_open_session_refuses_a_thread_count_benchmark_refuses(tmp_path):
    # open_session(threads=-1) was taken without a word (onnxruntime's own default), where benchmark(threads=-1)
    # refuses it; latency_table({}) raised KeyError: 'files'.
    from sparsekit.onnx import latency_table, open_session

    for bad in (-1, 1.5, True, 5000):
        with pytest.raises(ValueError, match=r"open_session\(threads=\.\.\.\): a whole number 0\.\.1024"):
            open_session(tmp_path / "missing.onnx", threads=bad)
    with pytest.raises(ValueError, match=r"latency_table\(result=\.\.\.\): expected what sparsekit\.onnx\.benchmark"):
        latency_table({})


def test_a_folder_given_as_model_says_which_files_the_commands_read(tmp_path):
    from sparsekit.errors import ModelFileError
    from sparsekit.modelio import check_model_path

    with pytest.raises(ModelFileError, match=r"is a directory, expected a model file \(\.pt or \.safetensors; .*onnx"):
        check_model_path(tmp_path)
