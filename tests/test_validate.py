"""`sparsekit validate`: the dry run prints the schedule the run will follow (compared with real runs),
checks the data against the model, and says in words what each method will do."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main

MLP = ("--arch", "examples.models:mlp")

BASE = """
    version: 1
    seed: 0
    model: {{input_shape: [1, 64]}}
    data: {{source: digits, batch_size: 64}}
    finetune: {{epochs: {epochs}, optimizer: {{name: adam, lr: 0.002}}{extra}}}
    pruning:
{pruning}
    export: {{exporter: torchscript}}
    benchmark: {{enabled: false}}
"""

# Schedules whose update points do not fall on epoch ends (every 0.3 epoch, a start at 0.5): a prediction
# laid out on another clock, or read half an update early or late, differs from the run after some epoch.
PRUNING = {
    "magnitude-global-cubic": (
        3,
        "",
        """
      - method: magnitude
        sparsity: 0.8
        scope: global
        schedule: {start_epoch: 0, end_epoch: 2.5, every: 0.3}
        layers: {exclude: [fc3]}
""",
    ),
    "gradient-layer-linear-capped": (
        3,
        ", max_steps_per_epoch: 7",
        """
      - method: gradient
        criterion: taylor
        sparsity: 0.7
        scope: layer
        schedule: {start_epoch: 0.5, end_epoch: 2, every: 0.25, init_sparsity: 0.2, curve: linear}
        layers: {exclude: [fc3]}
""",
    ),
    "oneshot-without-finetuning": (
        0,
        "",
        """
      - method: gradient
        sparsity: 0.6
        schedule: oneshot
        calibration_batches: 2
        layers: {exclude: [fc3]}
""",
    ),
}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_recipe(tmp_path, name: str):
    epochs, extra, pruning = PRUNING[name]
    path = tmp_path / f"{name}.yaml"
    text = textwrap.dedent(BASE.format(epochs=epochs, extra=extra, pruning=pruning.strip("\n")))
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", list(PRUNING))
def test_validate_predicts_exactly_the_sparsity_the_run_reaches(tmp_path, mlp_checkpoint, name):
    recipe = write_recipe(tmp_path, name)
    dry = run("validate", recipe, mlp_checkpoint, *MLP, "--json")
    assert dry.exit_code == 0, dry.stderr
    plan = json.loads(dry.stdout)

    out = tmp_path / "out"
    real = run("prune", mlp_checkpoint, recipe, *MLP, "-o", out, "--no-progress", "--json")
    assert real.exit_code == 0, real.stderr
    report = json.loads(real.stdout)

    predicted = [row["sparsity"] for row in plan["schedule"]["history"]]
    reached = [row["sparsity"] for row in report["history"]]
    epochs = PRUNING[name][0]
    assert len(predicted) == len(reached) == epochs
    assert predicted == pytest.approx(reached, abs=1e-12)
    assert plan["schedule"]["final"]["sparsity"] == pytest.approx(report["pruned"]["sparsity"], abs=1e-12)
    (method,) = plan["methods"]
    assert len(method["targets_per_epoch"]) == epochs  # no "after epoch 1" without fine-tuning
    (row,) = report["methods"]
    assert method["final"] == pytest.approx(row["achieved"], abs=1e-12)
    if epochs:
        # The run's own clock: digits has 1,438 training samples, 23 batches of 64, unless capped.
        assert plan["steps_per_epoch"] == (7 if "capped" in name else 23)
        assert len(set(round(v, 6) for v in predicted)) > 1  # the schedule really moves between epochs
    else:
        assert plan["schedule"]["history"] == [] and report["history"] == []
        assert "after epoch" not in run("validate", recipe, mlp_checkpoint, *MLP).stdout


def test_validate_text_shows_the_run_clock_and_each_method_in_words(tmp_path, mlp_checkpoint):
    result = run("validate", "lenet-gradual-magnitude-90", mlp_checkpoint, *MLP, "--set", "model.factory=null",
                 "--set", "model.input_shape=[1,64]", "--set", "data.source=digits")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert (
        "pruning[0] magnitude: zero the 90% smallest-|w| weights of fc1, fc2 (global ranking, no layer above 99%), "
        "rising along a cubic schedule from epoch 0 to 3, mask updated every 1/8 epoch "
        "(every 3 of the epoch's 23 steps)"
    ) in text
    assert "23 optimizer steps per epoch (one per training batch), 184 in all" in text
    assert "one of shape [64, 64] runs through the model: [64, 10]" in text
    # Epochs 4-8 hold the final target: shown as one range, once.
    assert "its weights zero after epoch 1: " in text and "3-8: 0.900" in text
    assert "model sparsity, as report.json's history will show it, after epoch" in text


def test_validate_describes_structured_l1_and_max_norm(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(
        textwrap.dedent("""
            version: 1
            model: {input_shape: [1, 64]}
            data: {source: digits}
            finetune: {epochs: 2}
            pruning:
              - method: structured
                ratio: 0.5
                steps: 2
                schedule: {start_epoch: 0, end_epoch: 1}
                layers: {include: [fc1]}
              - {method: l1, strength: 1.0e-4, mode: proximal, threshold: 1.0e-3, layers: {include: [fc2]}}
              - {method: max_norm, max_value: 3.0, layers: {include: [fc3]}}
        """)
    )
    result = run("validate", recipe, mlp_checkpoint, *MLP, "--json")
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    structured, l1, max_norm = res["methods"]
    assert structured["description"].startswith(
        "structured: remove 50% of the output channels of fc1 (l2 importance, layer scope"
    )
    assert "in 2 removal events from epoch 0 to 1" in structured["description"]
    assert structured["expected_per_epoch"] == pytest.approx([0.5, 0.5])  # 64 channels: 16 + 16 removed
    assert "soft threshold" in l1["description"] and "known only after training" in l1["description"]
    assert l1["expected_per_epoch"] is None and max_norm["expected_per_epoch"] is None
    assert "makes no zeros" in max_norm["description"]
    text = run("validate", recipe, mlp_checkpoint, *MLP).stdout
    assert "its effect follows from training: known only after the run" in text
    assert "(plus l1's zeros)" in text


def test_validate_without_a_model_describes_and_imports_nothing(tmp_path):
    result = run("validate", "lenet-gradual-magnitude-90", "--json")
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    assert res["methods"] == [] and "schedule" not in res
    (text,) = res["descriptions"]
    assert "of the layers matching * except fc3" in text and "every 1/8 epoch" in text
    assert_bad_input(run("validate", "lenet-gradual-magnitude-90", "--arch", "examples.models:mlp"), "MODEL")


def test_validate_refuses_data_that_does_not_fit_the_model(tmp_path, mlp_checkpoint):
    # mnist5k's 28x28 images for a 64-input model.
    line = assert_bad_input(run("validate", "lenet-gradual-magnitude-90", mlp_checkpoint, *MLP,
                                "--set", "model.factory=null", "--set", "model.input_shape=null"),  # fmt: skip
                            "mnist5k")  # fmt: skip
    assert "[1, 64]" in line or "64 values" in line
    # Labels beyond the model's ten outputs.
    bad = tmp_path / "labels.npz"
    rng = np.random.default_rng(0)
    np.savez(bad, x=rng.random((200, 64), dtype=np.float32), y=np.arange(200) % 20)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {input_shape: [1, 64]}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    line = assert_bad_input(run("validate", recipe, mlp_checkpoint, *MLP, "--data", bad), "labels.npz")
    assert "19" in line and "10" in line
    # Data of the wrong shape, named on the command line: named with the model's shape.
    wrong = tmp_path / "wide.npz"
    np.savez(wrong, x=rng.random((100, 3, 9), dtype=np.float32), y=np.arange(100) % 10)
    assert_bad_input(run("validate", recipe, mlp_checkpoint, *MLP, "--data", wrong), "wide.npz", "[1, 64]")


def test_validate_steps_per_epoch_override(tmp_path, mlp_checkpoint):
    recipe = write_recipe(tmp_path, "magnitude-global-cubic")
    res = json.loads(run("validate", recipe, mlp_checkpoint, *MLP, "--steps-per-epoch", "10", "--json").stdout)
    assert res["steps_per_epoch"] == 10 and res["steps_per_epoch_from"] == "given"
    own = json.loads(run("validate", recipe, mlp_checkpoint, *MLP, "--json").stdout)
    assert own["steps_per_epoch"] == 23 and own["steps_per_epoch_from"] == "data"


def test_validate_and_prune_take_kwargs_for_arch(tmp_path):
    from examples.models import mlp

    torch.manual_seed(0)
    weights = tmp_path / "narrow.pt"
    torch.save(mlp(in_features=64, hidden=[16]).state_dict(), weights)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, layers: {exclude: [fc2]}}]\nbenchmark: {enabled: false}\n"
        "export: {exporter: torchscript}\n"
    )
    # The default mlp has two hidden layers: the file's weights do not fit it.
    assert_bad_input(run("validate", recipe, weights, *MLP), str(weights))
    kwargs = ("--kwargs", '{"in_features": 64, "hidden": [16]}')
    dry = run("validate", recipe, weights, *MLP, *kwargs, "--json")
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout)["methods"][0]["layers"] == ["fc1"]
    out = tmp_path / "out"
    result = run("prune", weights, recipe, *MLP, *kwargs, "-o", out, "--no-progress")
    assert result.exit_code == 0, result.stderr
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["kwargs"] == {"in_features": 64, "hidden": [16]}
    assert sparsekit.load_model(out / "model.pt", arch="examples.models:mlp").fc1.out_features == 16
    assert_bad_input(run("validate", recipe, weights, "--kwargs", "{}"), "--kwargs", "--arch")
    assert_bad_input(run("prune", weights, recipe, "--kwargs", "[1]", *MLP), "--kwargs", "JSON object")


@pytest.mark.parametrize(
    ("pruning", "needle"),
    [
        ("[{method: structured, ratio: 0.5, schedule: oneshot, ignore: [zzz]}]",
         "pruning[0].ignore: 'zzz' matches no layer"),
        ("[{method: magnitude, sparsity: 0.5, schedule: oneshot}, {method: gradient, sparsity: 0.5, "
         "schedule: oneshot}]", "pruning[0] (magnitude) and pruning[1] (gradient)"),
    ],
    ids=["ignore", "overlap"],
)  # fmt: skip
def test_errors_found_against_the_model_name_the_recipe_file(tmp_path, mlp_checkpoint, pruning, needle):
    # A schema error names the recipe file; one that needs the model (a pattern, an overlap) must too.
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "model: {input_shape: [1, 64]}\ndata: {source: digits}\nfinetune: {epochs: 1, max_steps_per_epoch: 2}\n"
        f"pruning: {pruning}\n"
    )
    for args in (["validate", recipe, mlp_checkpoint], ["prune", mlp_checkpoint, recipe, "-o", tmp_path / "o"]):
        assert_bad_input(run(*args, "--trust-code"), f"{recipe}: {needle}")


def test_an_error_about_a_model_file_named_like_a_field_is_not_blamed_on_the_recipe(tmp_path):
    # `model.pt` (the name sparsekit itself writes) starts like the field model.*: the error is the file's.
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model: {input_shape: [1, 64]}\ndata: {source: digits}\n")
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage")
    line = assert_bad_input(run("validate", recipe, bad, "--arch", "examples.models:mlp"), f"{bad}: not a readable")
    assert str(recipe) not in line


@pytest.mark.parametrize(("field", "yaml", "flag"), [
    # (a user's module that does not exist: one prune never runs, os:system, is refused by validate as by prune)
    ("model.factory", "model: {factory: 'mynets:build', input_shape: [1, 64]}\ndata: {source: digits}\n", "--arch"),
    ("data.source", "model: {input_shape: [1, 64]}\ndata: {source: 'mydata:load'}\n", "--data"),
])  # fmt: skip
def test_recipe_only_validate_says_it_imported_nothing_and_what_prune_would_need(tmp_path, monkeypatch, field, yaml,
                                                                                 flag):  # fmt: skip
    # validate never runs what a recipe names, so it must not say that it "runs" it: it checked the recipe only,
    # and prune would import the callable only once the user confirms it.
    import os

    monkeypatch.setattr(os, "system", lambda *a: pytest.fail("validate ran the factory"))
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml + "pruning: [{method: magnitude, sparsity: 0.5}]\n")
    # The named modules exist (one that is not found from here is said so instead: test_review_newuser_20.py).
    for module in ("mynets", "mydata"):
        (tmp_path / f"{module}.py").write_text("import os\nos.system('false')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run("validate", recipe)
    assert result.exit_code == 0, result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(f"{field} names code")]
    assert "validate checks the recipe only and imported nothing" in line
    assert "prune would import and call it only once you confirm it" in line
    assert f"the same callable given as {flag}, --trust-code" in line and "runs it" not in line


def test_validate_says_which_layers_l1_can_zero_but_not_remove(tmp_path):
    """layer1.conv2's channels are the stem's channels (a residual add); with the stem outside the entry, the
    units l1 zeroes there stay in the model: validate says so before any training."""
    from examples.models import resnet_small

    torch.save(resnet_small(image_size=8).state_dict(), tmp_path / "rn.pt")
    recipe = tmp_path / "l1.yaml"
    recipe.write_text(
        textwrap.dedent("""
        version: 1
        model: {input_shape: [1, 1, 8, 8]}
        data: {source: digits, batch_size: 64}
        finetune: {epochs: 1}
        pruning:
          - method: l1
            mode: proximal
            group: channel
            strength: 1e-4
            target: 0.5
            schedule: {start_epoch: 0, end_epoch: 1}
            layers: {include: [layer1.conv1, layer1.conv2]}
        """)
    )
    args = ["validate", str(recipe), str(tmp_path / "rn.pt"), "--arch", "examples.models:resnet_small"]
    res = CliRunner().invoke(main, [*args, "--kwargs", '{"image_size": 8}'])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "cannot be removed" in line]
    # With a target, such a layer is left out of the entry (its zeroed units counted toward the target and all
    # stayed; review parametrized_19), and validate says why.
    assert len(lines) == 1 and lines[0].strip().startswith("left out layer1.conv2 (Conv2d):") and "conv1's" in lines[0]
    res = CliRunner().invoke(main, [*args, "--kwargs", '{"image_size": 8}', "--json"])
    left_out = {row["name"]: row["reason"] for row in json.loads(res.output)["methods"][0]["left_out"]}
    assert "its units cannot be removed" in left_out["layer1.conv2"]
    assert "cannot_remove" not in json.loads(res.output)["methods"][0]


def test_a_structured_entry_the_rehearsal_shows_removing_nothing_is_a_warning(tmp_path):
    # a depthwise conv's channels are its expand conv's, which the entry leaves out: validate said nothing (exit 0)
    # and prune trained, exported and benchmarked, then ended with "achieved nothing" (exit 2 with --strict)
    from examples.models import mobilenetv2_small

    factory, shape = "examples.models:mobilenetv2_small", [1, 1, 8, 8]
    model = mobilenetv2_small(image_size=8)
    sparsekit.save_model(model, tmp_path / "mb.pt", factory=factory, kwargs={"image_size": 8}, input_shape=shape)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 1, 8, 8]}\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: structured, ratio: 0.5, layers: {include: [blocks.0.dw]}}]\n"
    )
    args = ["validate", str(recipe), str(tmp_path / "mb.pt"), "--arch", "examples.models:mobilenetv2_small"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "Warning: pruning[0] structured removed no output channel of its 1 layer(s) in the rehearsal" in res.stderr
    doc = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    assert len(doc["warnings"]) == 1 and "achieved nothing" in doc["warnings"][0]


@pytest.mark.parametrize("round_to", ["16", "null"])
def test_validate_warns_of_a_structured_ratio_prune_will_report_missed(tmp_path, round_to):
    # round_to 16 keeps 16 of conv1's 32 channels for ratio 0.3 (0.5 removed): validate printed both numbers with
    # exit 0 and no warning, then prune warned "target missed" (exit 2 with --strict). Its prediction is prune's check.
    from examples.models import small_cnn

    factory, shape = "examples.models:small_cnn", [1, 1, 8, 8]
    path = tmp_path / "cnn.pt"
    sparsekit.save_model(small_cnn(image_size=8), path, factory=factory, kwargs={"image_size": 8}, input_shape=shape)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 1, 8, 8]}\ndata: {source: digits}\nfinetune: {epochs: 0}\n"
        f"pruning: [{{method: structured, ratio: 0.3, round_to: {round_to}, layers: {{include: [conv1]}}}}]\n"
        "export: {exporter: torchscript}\nbenchmark: {enabled: false}\n"
    )
    res = run("validate", recipe, path, "--arch", factory)
    assert res.exit_code == 0, res.output
    warned = [line for line in res.stderr.splitlines() if line.startswith("Warning: pruning[0]")]
    pruned = run("prune", path, recipe, "-o", tmp_path / "out", "--strict", "--arch", factory)
    if round_to == "16":
        assert len(warned) == 1 and "0.500 of its channels, 0.300 asked" in warned[0], res.output
        assert pruned.exit_code == 2 and "target missed" in pruned.output, pruned.output
    else:
        assert warned == [], res.output
        assert pruned.exit_code == 0, pruned.output
