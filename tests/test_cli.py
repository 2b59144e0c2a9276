"""The `sparsekit` command as a user meets it: exit codes, one-line errors, and a real prune run."""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, InterruptOnEvaluate, assert_bad_input, train_on_digits

import sparsekit
from sparsekit.cli import main

# A user's own architecture, not shipped with sparsekit: written to a temp folder and passed as --arch.
USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width=96):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 48), nn.Tanh())
            self.head = nn.Linear(48, 10)

        def forward(self, x):
            return self.head(self.body(x.flatten(1)))

    def build(width=96):
        return Net(width)
""")

USER_RECIPE = textwrap.dedent("""
    version: 1
    model: {input_shape: [1, 64]}
    data: {source: digits, batch_size: 32}
    finetune:
      epochs: 5
      optimizer: {name: adam, lr: 0.002}
      lr_schedule: {name: cosine}
    pruning:
      - method: magnitude
        sparsity: 0.85
        scope: global
        schedule: {start_epoch: 0, end_epoch: 3, every: 0.5}
        layers: {exclude: [head]}
    benchmark: {batch_sizes: [1, 32], runs: 5, warmup: 1}
""")


# The architecture of conftest's mlp_checkpoint, named by the user as --arch: the checkpoint's own
# `factory` would run only with --trust-code (tests/test_trust.py covers that).
MLP = ("--arch", "examples.models:mlp")


def run(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


@pytest.fixture
def user_arch(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "usernet:build"


@pytest.fixture
def trained_state_dict(tmp_path, user_arch):
    """A user's MLP trained on digits, saved as a plain state_dict (not a sparsekit checkpoint)."""
    import usernet

    torch.manual_seed(0)
    model = train_on_digits(usernet.build(), [1, 64], epochs=6, lr=2e-3)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("args", "needle", "command"),
    [
        (["export"], "Missing argument 'MODEL'", "sparsekit export"),
        (["bench", "x.onnx", "--threads", "-3"], "Invalid value for '--threads'", "sparsekit bench"),
        (["prunee"], "No such command 'prunee'. Did you mean 'prune'?", "sparsekit"),
        (["inspect", "--bogus", "m.pt"], "No such option '--bogus'", "sparsekit inspect"),
        (["export", "m.pt", "--input-shape", "1,a"], "expected comma-separated positive integers", "sparsekit export"),
        (["validate", "r.yaml", "--arch", "m:f"], "--arch: only used with MODEL", "sparsekit validate"),
    ],
)
def test_a_usage_error_is_one_error_line_that_says_where_help_is(args, needle, command):
    # click's own layout is a synopsis and a "Try '... --help' for help." line around the error: here the
    # one Error line, like every other bad input, names the help itself.
    result = CliRunner().invoke(main, args, prog_name="sparsekit")
    line = assert_bad_input(result, needle, f"(see '{command} --help')")
    assert result.stderr.strip().splitlines() == [line]  # nothing else on stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["prune", "m.pt", "r.yaml", "--set"], ["bench", "x.onnx", "--runs"]])
def test_an_option_missing_its_value_says_where_help_is_too(args, monkeypatch):
    # click raises these without a context; the command is the first argument
    monkeypatch.setattr("sys.argv", ["sparsekit", *args])
    result = CliRunner().invoke(main, args, prog_name="sparsekit")
    line = assert_bad_input(result, f"Option '{args[-1]}' requires an argument", f"(see 'sparsekit {args[0]} --help')")
    assert result.stderr.strip().splitlines() == [line]


def test_prune_state_dict_with_arch_end_to_end(tmp_path, trained_state_dict, user_arch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(USER_RECIPE)
    out = tmp_path / "out"
    result = run("prune", trained_state_dict, recipe, "-o", out, "--arch", user_arch, "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # exactly one JSON document on stdout

    for name in ("model.pt", "model.onnx", "dense.onnx", "report.json", "report.md", "layer_sparsity.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp*")), "temp files left behind"

    selected = [r for r in report["layers"] if r["name"] != "head"]
    zeros = sum(r["params"] - r["nonzero_params"] for r in selected)
    total = sum(r["params"] for r in selected)
    assert abs(zeros / total - 0.85) <= 0.01
    head = next(r for r in report["layers"] if r["name"] == "head")
    assert head["nonzero_params"] == head["params"]  # excluded layer untouched
    assert report["pruned"]["accuracy"] >= report["dense"]["accuracy"] - 0.03
    assert report["parity"]["ok"] and report["zeros_preserved"]
    assert report["pruned"]["onnx_gzip_bytes"] < 0.5 * report["dense"]["onnx_gzip_bytes"]
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3, 4, 5]
    assert set(report["pruned"]["latency_ms"]) == {"1", "32"}
    for key in ("sparsekit", "torch", "onnx", "onnxruntime"):
        assert key in report["versions"]

    # The saved model is a checkpoint that loads weights-only; the factory it names runs only when the
    # user confirms it (--arch this run, or --trust-code).
    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["format"] == "sparsekit/1" and raw["factory"] == user_arch
    with pytest.raises(sparsekit.TrustError, match="usernet:build"):
        sparsekit.load_model(out / "model.pt")
    model = sparsekit.load_model(out / "model.pt", arch=user_arch)
    assert not any("mask" in k for k in model.state_dict())  # finalize left no buffers behind
    assert_bad_input(run("inspect", out / "model.pt"), "usernet:build", "--arch", "--trust-code")
    insp = run("inspect", out / "model.pt", "--arch", user_arch, "--json")
    assert insp.exit_code == 0, insp.stderr
    info = json.loads(insp.stdout)
    assert abs(info["sparsity"] - report["pruned"]["sparsity"]) < 1e-9
    assert {r["name"] for r in info["layers"]} == {"body.0", "body.2", "head"}

    # A second run into the same folder is refused, --overwrite replaces it.
    again = run("prune", trained_state_dict, recipe, "-o", out, "--arch", user_arch, *FAST)
    assert_bad_input(again, str(out), "--overwrite")

    rerender = run("report", out)
    assert rerender.exit_code == 0, rerender.stderr
    assert "| accuracy" in (out / "report.md").read_text() or "accuracy" in (out / "report.md").read_text()


def test_prune_oneshot_without_finetune_on_checkpoint(tmp_path, mlp_checkpoint):
    out = tmp_path / "o"
    result = run(
        "prune",
        mlp_checkpoint,
        *MLP,
        "recipes/lenet-gradual-magnitude-90.yaml",
        "-o",
        out,
        "--data",
        "digits",
        "--set",
        "model.factory=examples.models:mlp",
        "--set",
        "model.kwargs={in_features: 64, hidden: [64, 32]}",
        "--set",
        "model.input_shape=[1,64]",
        "--set",
        "finetune.epochs=0",
        "--set",
        "pruning.0.schedule=oneshot",
        "--set",
        "pruning.0.sparsity=0.5",
        "--set",
        "benchmark.enabled=false",
        *FAST,
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    layers = {r["name"]: r for r in report["layers"]}
    pruned = [layers["fc1"], layers["fc2"]]
    assert sum(r["params"] - r["nonzero_params"] for r in pruned) == round(0.5 * sum(r["params"] for r in pruned))
    assert layers["fc3"]["sparsity"] == 0.0
    assert report["history"] == []


def test_interrupted_run_resumes(tmp_path, mlp_checkpoint, monkeypatch):
    """Ctrl-C mid-fine-tune exits 130 with finished epochs checkpointed; --resume completes the run."""

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 3, optimizer: {name: adam, lr: 0.001}}\n"
        "pruning: [{method: magnitude, sparsity: 0.7, schedule: {start_epoch: 0, end_epoch: 2},"
        " layers: {exclude: [fc3]}}]\nbenchmark: {enabled: false}\n"
    )
    interrupt = InterruptOnEvaluate(monkeypatch, 3)  # 1: dense model, 2: after epoch 1, 3: after epoch 2
    out = tmp_path / "o"
    first = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST)
    assert first.exit_code == 130, first.stderr
    # The unfinished run lives in DIR/.sparsekit/next until it ends; nothing is published yet.
    ckpt = out / ".sparsekit" / "next" / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    assert not (out / "model.pt").exists() and not (out / "checkpoints").exists()
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1

    interrupt.restore()
    second = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", *FAST)
    assert second.exit_code == 0, second.stderr
    report = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3]
    selected = [r for r in report["layers"] if r["name"] != "fc3"]
    zeros = sum(r["params"] - r["nonzero_params"] for r in selected)
    assert zeros == round(0.7 * sum(r["params"] for r in selected))
    # Bit for bit what an uninterrupted run gives (RNG, shuffle order, optimizer state all restored).
    straight = tmp_path / "straight"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", straight, *FAST).exit_code == 0
    a = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(straight / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- bad inputs: exit 2, one Error: line


def test_messages_name_what_is_wrong_with_the_input_not_a_neighbouring_cause(tmp_path, mlp_checkpoint):
    # export of an ONNX file without -o said "-o x.onnx: is the input MODEL" (an option never given); a cut-short
    # checkpoint said "[Errno 22] Invalid argument"; 1,-3 was "expected comma-separated integers" (they are).
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not really")
    line = assert_bad_input(run("export", onnx_file), str(onnx_file), "is an ONNX file")
    assert "-o " not in line and "input MODEL" not in line
    cut = tmp_path / "cut.pt"
    cut.write_bytes(Path(mlp_checkpoint).read_bytes()[: Path(mlp_checkpoint).stat().st_size // 2])
    assert_bad_input(run("inspect", cut, *MLP), str(cut), "truncated or damaged")
    assert_bad_input(run("export", mlp_checkpoint, *MLP, "--input-shape", "1,-3"), "positive integers")


def test_pickled_module_is_refused(tmp_path, mlp_checkpoint):
    from examples.models import mlp

    path = tmp_path / "whole.pt"
    torch.save(mlp(), path)
    line = assert_bad_input(run("inspect", path), str(path), "--trust-model-file", "state_dict")
    assert "refused" in line
    # With explicit trust it loads.
    assert run("inspect", path, "--trust-model-file", "--input-shape", "1,64").exit_code == 0


def test_torchscript_is_refused(tmp_path):
    from examples.models import mlp

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(mlp(), torch.zeros(1, 64)), path)
    assert_bad_input(run("inspect", path), "TorchScript", "--trust-model-file")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_model_file(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    assert_bad_input(run("inspect", path, "--arch", "examples.models:mlp"), str(path))


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    assert_bad_input(run("inspect", path, "--arch", "examples.models:mlp"), str(path), "safetensors")


def test_state_dict_without_arch(tmp_path):
    from examples.models import mlp

    path = tmp_path / "sd.pt"
    torch.save(mlp().state_dict(), path)
    assert_bad_input(run("inspect", path), str(path), "--arch")


def test_safetensors_with_arch_loads(tmp_path):
    from safetensors.torch import save_file

    from examples.models import mlp

    path = tmp_path / "w.safetensors"
    save_file(mlp().state_dict(), str(path))
    result = run("inspect", path, "--arch", "examples.models:mlp", "--input-shape", "1,64", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["params"] == sum(p.numel() for p in mlp().parameters())


def test_mismatched_weights_name_the_keys(tmp_path):
    from examples.models import mlp

    path = tmp_path / "sd.pt"
    torch.save(mlp(hidden=[32]).state_dict(), path)
    line = assert_bad_input(run("inspect", path, "--arch", "examples.models:mlp"), str(path))
    assert "fc2.weight" in line and "fc3" in line  # a shape mismatch and a missing layer, both named


def test_bad_arch_spec(tmp_path):
    from examples.models import mlp

    path = tmp_path / "sd.pt"
    torch.save(mlp().state_dict(), path)
    assert_bad_input(run("inspect", path, "--arch", "examples.models"), "pkg.module:callable")
    assert_bad_input(run("inspect", path, "--arch", "no_such_pkg.x:y"), "no_such_pkg")
    assert_bad_input(run("inspect", path, "--arch", "examples.models:nope"), "nope")


def test_missing_model_and_recipe_files(tmp_path, mlp_checkpoint):
    assert_bad_input(run("inspect", tmp_path / "nope.pt"), "nope.pt", "not found")
    assert_bad_input(
        run("prune", mlp_checkpoint, *MLP, tmp_path / "nope.yaml", "-o", tmp_path / "o"), "nope.yaml", "not found"
    )
    assert not (tmp_path / "o").exists()  # nothing created on bad input


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("version: 1\npruning:\n  - method: magnitude\n    sparsity: [0.5\n", ["line 5", "YAML"]),
        ("version: 1\npruning: [{method: magnitude, sparsity: 0.5, sparsty: 0.4}]\n", ["pruning[0].sparsty"]),
        ("version: 1\nfinetun: {epochs: 2}\n", ["finetun"]),
        ("version: 1\npruning: [{method: magnitude, sparsity: 1.0}]\n", ["pruning[0].sparsity"]),
        ("version: 1\npruning: [{method: magnitude, sparsity: -0.2}]\n", ["pruning[0].sparsity"]),
        (
            "version: 1\nfinetune: {epochs: 4}\npruning: [{method: magnitude, sparsity: 0.5, "
            "schedule: {start_epoch: 3, end_epoch: 1}}]\n",
            ["pruning[0].schedule"],
        ),
        (
            "version: 1\nfinetune: {epochs: 2}\npruning: [{method: magnitude, sparsity: 0.5, "
            "schedule: {start_epoch: 0, end_epoch: 5}}]\n",
            ["finetune.epochs"],
        ),
        ("version: 1\npruning: [{method: pruneall, sparsity: 0.5}]\n", ["pruning[0]", "pruneall"]),
        ("version: 1\nseed: !!python/object/apply:os.system ['echo hacked']\n", ["tag"]),
        ("version: 2\n", ["version"]),
        ("- just\n- a list\n", ["mapping"]),
    ],
)
def test_bad_recipes_exit_2_and_name_the_field(tmp_path, mlp_checkpoint, text, needles):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    out = tmp_path / "o"
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out), "bad.yaml", *needles)
    assert_bad_input(run("validate", recipe), "bad.yaml", *needles)
    assert not out.exists()


def test_an_error_quoting_a_line_break_stays_one_line():
    # --set "version=1<newline>seed: 5" printed the Error text across two lines.
    result = run("validate", "lenet-gradual-magnitude-90", "--set", "version=1\nseed: 5")
    line = assert_bad_input(result, "version")
    assert result.stderr.strip() == line and "\\n" in line


def test_bad_set_override(tmp_path, mlp_checkpoint):
    assert_bad_input(
        run("validate", "lenet-gradual-magnitude-90", "--set", "pruning.0.sparsity=2"), "pruning[0].sparsity"
    )
    assert_bad_input(run("validate", "lenet-gradual-magnitude-90", "--set", "pruning.7.sparsity=0.5"), "pruning.7")
    assert_bad_input(run("validate", "lenet-gradual-magnitude-90", "--set", "finetune.epochs"), "key.path=value")


def test_pattern_matching_nothing_lists_prunable_layers(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\npruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot, "
        "layers: {include: ['encoder.*']}}]\n"
    )
    line = assert_bad_input(run("validate", recipe, mlp_checkpoint, *MLP), "encoder.*")
    assert "fc1" in line and "fc2" in line and "fc3" in line
    out = tmp_path / "o"
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST), "encoder.*")


def test_overlapping_methods_are_refused(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\npruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n"
        "  - {method: magnitude, sparsity: 0.3, schedule: oneshot, layers: {include: [fc2]}}\n"
    )
    assert_bad_input(run("validate", recipe, mlp_checkpoint, *MLP), "pruning[0]", "pruning[1]", "fc2")


def test_non_empty_output_folder_refused(tmp_path, mlp_checkpoint):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n")
    assert_bad_input(
        run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST), str(out), "mine.txt", "another output folder"
    )
    assert (out / "mine.txt").read_text() == "user data"


def test_input_shape_mismatch(tmp_path, mlp_checkpoint):
    # A checkpoint saved for 64 features, a recipe written for 784.
    assert_bad_input(
        run("prune", mlp_checkpoint, *MLP, "lenet-gradual-magnitude-90", "-o", tmp_path / "o", *FAST),
        "model.input_shape",
        "[1, 784]",
        "[1, 64]",
    )
    # A state_dict whose architecture cannot take the recipe's input shape.
    from examples.models import mlp

    sd = tmp_path / "sd.pt"
    torch.save(mlp().state_dict(), sd)
    assert_bad_input(
        run("prune", sd, "lenet-gradual-magnitude-90", "-o", tmp_path / "o", "--arch", "examples.models:mlp", *FAST),
        "[1, 784]",
    )
    # Data whose samples do not fit the model.
    npz = tmp_path / "d.npz"
    import numpy as np

    np.savez(npz, x=np.zeros((40, 10), dtype=np.float32), y=np.zeros(40, dtype=np.int64))
    assert_bad_input(
        run(
            "prune",
            mlp_checkpoint,
            *MLP,
            "lenet-gradual-magnitude-90",
            "-o",
            tmp_path / "o",
            "--set",
            "model.input_shape=null",
            "--data",
            npz,
            *FAST,
        ),
        "d.npz",
    )
    assert not (tmp_path / "o").exists()


def test_bad_data_source(tmp_path, mlp_checkpoint):
    assert_bad_input(
        run(
            "prune",
            mlp_checkpoint,
            *MLP,
            "lenet-gradual-magnitude-90",
            "-o",
            tmp_path / "o",
            "--set",
            "model.input_shape=null",
            "--data",
            tmp_path / "missing.npz",
            *FAST,
        ),
        "missing.npz",
    )


def test_bench_bad_inputs(tmp_path):
    notonnx = tmp_path / "x.onnx"
    notonnx.write_text("hello")
    assert_bad_input(run("bench", notonnx, "--runs", "2"), "x.onnx")
    result = run("bench", notonnx, "--batch-size", "0")
    assert result.exit_code == 2 and "Traceback" not in result.stderr


def test_unexpected_failure_exit_1_and_debug_traceback(tmp_path, monkeypatch):
    import sparsekit.recipe as recipe_mod

    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(recipe_mod, "load_recipe", boom)
    result = run("validate", "lenet-gradual-magnitude-90")
    assert result.exit_code == 1 and "Traceback" not in result.stderr and "--debug" in result.stderr
    result = run("validate", "lenet-gradual-magnitude-90", "--debug")
    assert result.exit_code == 1 and "Traceback" in result.stderr


# ---------------------------------------------------------------- the other commands


def test_validate_dry_run_lists_layers_and_targets(mlp_checkpoint):
    result = run(
        "validate",
        "lenet-gradual-magnitude-90",
        mlp_checkpoint,
        *MLP,
        "--set",
        "model.input_shape=[1,64]",
        "--set",
        "model.factory=null",
        "--set",
        "data.source=digits",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    (method,) = res["methods"]
    assert method["layers"] == ["fc1", "fc2"]
    targets = method["targets_per_epoch"]
    assert len(targets) == 8
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.9)
    assert targets[2] == pytest.approx(0.9)  # end_epoch 3 reached
    assert 0 < targets[0] < 0.9
    # What the run reaches: round(target * weights) zeros of the 6,144 selected weights.
    assert method["expected_per_epoch"] == [round(t * 6144) / 6144 for t in targets]
    assert res["steps_per_epoch"] == 23  # digits: 1,438 training samples in batches of 64


def test_recipes_lists_shipped(tmp_path):
    result = run("recipes", "--json")
    assert result.exit_code == 0
    names = {r["name"] for r in json.loads(result.stdout)}
    assert {"lenet-gradual-magnitude-90", "cnn-layer-magnitude-80"} <= names


def test_recipes_reference_prints_the_page_errors_point_to():
    # Errors say "see docs/recipe.md", which an installed wheel does not hold: the command prints the same page.
    from pathlib import Path

    from sparsekit.recipe import RECIPE_DOCS

    result = run("recipes", "--reference")
    assert result.exit_code == 0, result.stderr
    page = (Path(__file__).resolve().parent.parent / RECIPE_DOCS).read_text(encoding="utf-8")
    assert result.stdout.strip() == page.strip()
    both = run("recipes", "lenet-gradual-magnitude-90", "--reference")
    assert both.exit_code == 2 and "--reference" in both.stderr


def test_export_and_bench_commands(tmp_path, mlp_checkpoint):
    onnx_path = tmp_path / "m.onnx"
    result = run("export", mlp_checkpoint, *MLP, "-o", onnx_path, "--exporter", "torchscript", "--json")
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    assert res["parity"]["ok"] and onnx_path.is_file()
    result = run(
        "bench", onnx_path, onnx_path, "--runs", "5", "--warmup", "1", "-b", "1", "-b", "8", "--json", "--no-progress"
    )
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    assert len(res["files"]) == 2
    assert set(res["files"][0]["latency_ms"]) == {"1", "8"}
    insp = run("inspect", onnx_path, "--json")
    assert insp.exit_code == 0, insp.stderr


def test_help_teaches():
    result = run("--help")
    assert result.exit_code == 0
    for cmd in ("prune", "export", "bench", "inspect", "validate", "recipes", "report"):
        assert cmd in result.output
    assert "--set" in run("prune", "--help").output


def test_prune_with_int8_and_sparse_storage(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\n"
        "pruning: [{method: magnitude, sparsity: 0.8, schedule: oneshot, layers: {exclude: [fc3]}}]\n"
        "export: {quantize: int8, sparse_storage: true}\nbenchmark: {batch_sizes: [4], runs: 5, warmup: 1}\n"
    )
    out = tmp_path / "o"
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "What this recipe can buy" in result.stderr  # told before the run
    report = json.loads((out / "report.json").read_text())
    q = report["int8"]
    assert q["mode"] == "static" and (out / "model.int8.onnx").is_file()
    assert q["zeros"]["zeros_ok"] and q["zeros"]["fp32_zeros"] > 0
    assert q["eval"]["top1_agreement"] >= 0.95
    assert abs(q["eval"]["int8_accuracy"] - report["pruned"]["accuracy"]) < 0.05
    assert q["onnx_bytes"] < 0.6 * report["pruned"]["onnx_bytes"]  # tiny model: scales and graph weigh in
    assert set(q["latency_ms"]) == {"4"}
    st = report["storage"]  # sparse_storage: true ships model.onnx with sparse initializers
    assert st["encoding"] == "sparse" and st["bytes"] == (out / "model.onnx").stat().st_size
    assert st["bytes"] < report["pruned"]["onnx_bytes"] and not (out / "model.sparse.onnx").exists()
    assert onnx.load(str(out / "model.onnx")).graph.sparse_initializer
    md = (out / "report.md").read_text()
    assert "int8" in md and "entropy estimate" in md


def test_export_int8_static_with_data(tmp_path, mlp_checkpoint):
    onnx_path = tmp_path / "m.onnx"
    result = run(
        "export",
        mlp_checkpoint,
        *MLP,
        "-o",
        onnx_path,
        "--exporter",
        "torchscript",
        "--quantize",
        "int8",
        "--data",
        "digits",
        "--storage",
        "sparse",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    res = json.loads(result.stdout)
    assert res["int8"]["mode"] == "static" and res["int8"]["eval"]["top1_agreement"] >= 0.95
    assert res["int8"]["path"] == str(onnx_path) and res["storage"]["encoding"] == "sparse"
    assert onnx.load(str(onnx_path)).graph.sparse_initializer
    assert not (tmp_path / "m.int8.onnx").exists() and not (tmp_path / "m.fp32.onnx").exists()
    assert_bad_input(run("export", mlp_checkpoint, *MLP, "-o", onnx_path, "--data", "digits"), "--data")


def test_export_and_bench_shape_and_provider_errors(tmp_path):
    from examples.models import small_cnn

    sd = tmp_path / "cnn.pt"
    torch.save(small_cnn().state_dict(), sd)
    # A conv net's input size cannot be read off its weights.
    assert_bad_input(run("export", sd, "--arch", "examples.models:small_cnn"), "--input-shape")
    # An output not named .onnx is refused before anything is loaded or written.
    (tmp_path / "notes.txt").write_text("mine")
    refused = run("export", sd, "--arch", "examples.models:small_cnn", "-o", tmp_path / "notes.txt")
    assert refused.exit_code == 2 and "name the output file NAME.onnx" in refused.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
    onnx_path = tmp_path / "cnn.onnx"
    ok = run(
        "export",
        sd,
        "--arch",
        "examples.models:small_cnn",
        "--input-shape",
        "1,1,28,28",
        "-o",
        onnx_path,
        "--exporter",
        "torchscript",
    )
    assert ok.exit_code == 0, ok.stderr
    assert_bad_input(
        run("bench", onnx_path, "--provider", "CUDAExecutionProvider", "--runs", "2"),
        "CUDAExecutionProvider",
        "available",
    )
    assert_bad_input(run("bench", onnx_path, "--runs", "2", "--input-shape", "1,3,32,32"), "1, 3, 32, 32")
    assert_bad_input(run("bench", tmp_path / "missing.onnx"), "missing.onnx")


HELDOUT_CNN = textwrap.dedent("""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn_a = nn.BatchNorm2d(c)
            self.b = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn_b = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))

    class Net(nn.Module):
        def __init__(self, c=8):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            self.block = Block(c)
            self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
            self.hidden = nn.Linear(c * 16, 48)
            self.classifier = nn.Linear(48, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(self.dw(self.block(self.stem(x))), 2)
            return self.classifier(torch.relu(self.hidden(x.flatten(1))))
""")


def test_combined_methods_on_a_heldout_residual_cnn(tmp_path, monkeypatch):
    """Group L1 on the convs, then structured removal of hidden units, fine-tuned under max-norm. (round_to 8:
    48 hidden units in two steps end at 24; under the default 16 the second step's tie keeps 32.)"""
    (tmp_path / "heldout_cnn.py").write_text(HELDOUT_CNN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import heldout_cnn

    torch.manual_seed(0)
    model = train_on_digits(heldout_cnn.Net(), [1, 1, 8, 8], epochs=3, lr=3e-3)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    recipe = tmp_path / "combo.yaml"
    recipe.write_text(
        textwrap.dedent("""
        version: 1
        model: {input_shape: [1, 1, 8, 8]}
        data: {source: digits, batch_size: 32}
        finetune: {epochs: 4, optimizer: {name: adam, lr: 0.003}, lr_schedule: {name: cosine}}
        pruning:
          - {method: l1, strength: 0.002, mode: proximal, group: channel, layers: {types: [Conv2d], exclude: [dw]},
             schedule: {start_epoch: 0, end_epoch: 2}}
          - {method: structured, ratio: 0.5, steps: 2, schedule: {start_epoch: 1, end_epoch: 3},
             layers: {types: [Linear]}, round_to: 8}
          - {method: max_norm, max_value: 2.0, layers: {types: [Linear]}}
        benchmark: {enabled: false}
    """)
    )
    out = tmp_path / "out"
    result = run("prune", weights, recipe, "--arch", "heldout_cnn:Net", "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["ok"]
    assert report["pruned"]["accuracy"] >= report["dense"]["accuracy"] - 0.03
    layers = {r["name"]: r for r in report["layers"]}
    assert layers["hidden"]["shape"] == [24, 128] and layers["classifier"]["shape"] == [10, 24]
    pruned = sparsekit.load_model(out / "model.pt", arch="heldout_cnn:Net")  # factory + replayed history
    assert pruned.hidden.out_features == 24
    for name in ("hidden", "classifier"):
        norms = getattr(pruned, name).weight.norm(dim=1)
        assert float(norms.max()) <= 2.0 * (1 + 1e-5)
    assert pruned(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert "structured" in {m["method"] for m in report["methods"]}


def test_recipe_model_mismatch_leaves_previous_results_untouched(tmp_path, mlp_checkpoint):
    out = tmp_path / "o"
    good = tmp_path / "good.yaml"
    good.write_text(
        "version: 1\npruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    assert run("prune", mlp_checkpoint, *MLP, good, "-o", out, *FAST).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npruning: [{method: l1, strength: 0.01, group: channel}]\n")  # no conv layers
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, bad, "-o", out, "--overwrite", *FAST), "pruning[0].group")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_diverging_training_is_a_clear_error(tmp_path, mlp_checkpoint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nfinetune: {epochs: 2, optimizer: {name: sgd, lr: 1.0e+8}}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", tmp_path / "o", *FAST), "finetune", "lr")


def test_more_bad_inputs_exit_2(tmp_path, mlp_checkpoint, monkeypatch):
    (tmp_path / "userbits.py").write_text(
        textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def broken():
            raise RuntimeError("cannot build")

        def big_labels():
            ds = TensorDataset(torch.randn(64, 64), torch.full((64,), 42))
            return DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=16)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nfinetune: {epochs: 1}\npruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    sd = tmp_path / "sd.pt"
    from examples.models import mlp

    torch.save(mlp().state_dict(), sd)
    assert_bad_input(run("inspect", sd, "--arch", "userbits:broken"), "userbits:broken", "cannot build")
    assert_bad_input(
        run("prune", mlp_checkpoint, *MLP, recipe, "-o", tmp_path / "o", "--data", "userbits:big_labels", *FAST),
        "label 42",
    )
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert_bad_input(run("prune", mlp_checkpoint, *MLP, recipe, "-o", blocker / "sub", *FAST), "afile")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07garbage")
    assert_bad_input(run("inspect", fake), "fake.onnx")
    assert_bad_input(run("prune", fake, recipe, "-o", tmp_path / "o2"), "ONNX")
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.json").write_text('{"schema": 1}')
    assert_bad_input(run("report", rep), str(rep), "no sparsekit run")
    ckpt = tmp_path / "nostate.pt"
    torch.save({"format": "sparsekit/1", "factory": "examples.models:mlp"}, ckpt)
    assert_bad_input(run("inspect", ckpt), "nostate.pt")


def test_resume_refuses_a_changed_recipe(tmp_path, mlp_checkpoint, monkeypatch):

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nfinetune: {epochs: 2}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    interrupt = InterruptOnEvaluate(monkeypatch, 3)
    out = tmp_path / "o"
    assert run("prune", mlp_checkpoint, *MLP, recipe, "-o", out, *FAST).exit_code == 130
    interrupt.restore()
    changed = run(
        "prune", mlp_checkpoint, *MLP, recipe, "-o", out, "--resume", "--set", "pruning.0.sparsity=0.6", *FAST
    )
    assert_bad_input(changed, str(out), "pruning.0.sparsity: 0.5 then, 0.6 now", "--overwrite")


def test_nan_inputs_are_blamed_on_the_data_not_the_learning_rate(tmp_path, mlp_checkpoint, monkeypatch):
    (tmp_path / "sk_nan_data.py").write_text(
        "import torch\n"
        "def loaders():\n"
        "    x = torch.randn(64, 64)\n"
        "    x[5, 3] = float('nan')\n"
        "    y = torch.arange(64) % 10\n"
        "    ds = torch.utils.data.TensorDataset(x, y)\n"
        "    return torch.utils.data.DataLoader(ds, batch_size=64), torch.utils.data.DataLoader(ds, batch_size=64)\n"
    )
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: {input_shape: [1, 64]}\nfinetune: {epochs: 1}\n"
                      "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n")  # fmt: skip
    result = run("prune", mlp_checkpoint, *MLP, recipe, "--data", "sk_nan_data:loaders", "-o", tmp_path / "o", *FAST)
    line = assert_bad_input(result, "NaN or inf", "inputs")
    assert "lr" not in line


GLU_MODULE = textwrap.dedent("""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class GluNet(nn.Module):
        # conv -> GLU along channels: the two halves of conv1's output are value and gate
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = F.glu(self.conv1(x), dim=1)
            x = F.relu(self.conv2(x)).mean((2, 3))
            return self.head(x)

    def build():
        return GluNet()
""")


def test_a_layout_that_cannot_lose_channels_is_refused_before_training(tmp_path, monkeypatch):
    """Issue 10: torch-pruning used to fail inside the first removal (exit 1) after validate said ok."""
    (tmp_path / "glunet.py").write_text(GLU_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import glunet

    torch.manual_seed(0)
    model_path = tmp_path / "glu.pt"
    sparsekit.save_model(glunet.build(), model_path, factory="glunet:build", input_shape=[1, 1, 8, 8])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 1, 8, 8]}\ndata: {source: digits, batch_size: 32}\n"
        "finetune: {epochs: 1}\npruning: [{method: structured, ratio: 0.5}]\n"
    )
    arch = ("--arch", "glunet:build")
    assert_bad_input(run("validate", recipe, model_path, *arch), "conv1", "ignore")
    out = tmp_path / "o"
    from sparsekit import pipeline

    monkeypatch.setattr(pipeline, "finetune", lambda *a, **k: pytest.fail("training started"))
    assert_bad_input(run("prune", model_path, recipe, *arch, "-o", out, *FAST), "conv1", "ignore")
    assert not out.exists()  # refused before the output folder was touched


EMBED_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    class EmbedNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):  # token ids, given as floats
            return self.fc(self.emb(x.long()).mean(1))

    def build():
        return EmbedNet()
""")


def test_a_model_that_takes_token_ids_is_refused_up_front(tmp_path, monkeypatch):
    """Found by review: an nn.Embedding front failed on the random export input (exit 1)."""
    (tmp_path / "embednet.py").write_text(EMBED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import embednet

    model_path = tmp_path / "e.pt"
    sparsekit.save_model(embednet.build(), model_path, factory="embednet:build", input_shape=[1, 12])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: synthetic}\nfinetune: {epochs: 1}\npruning: [{method: magnitude, sparsity: 0.5}]\n"
    )
    out = tmp_path / "o"
    arch = ("--arch", "embednet:build")
    assert_bad_input(run("prune", model_path, recipe, *arch, "-o", out, *FAST), "random normal inputs", "Embedding")
    assert not out.exists()
    assert_bad_input(run("export", model_path, *arch, "-o", tmp_path / "e.onnx"), "random float32 input")
    assert not (tmp_path / "e.onnx").exists()


def _interrupted_prune(tmp_path, mlp_checkpoint) -> str:
    """A one-epoch prune that a patched step interrupts: exit 130; its last stderr line."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    result = run("prune", mlp_checkpoint, *MLP, recipe, "-o", tmp_path / "o", *FAST)
    assert result.exit_code == 130, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("call", "stage"),
    [
        (1, "while exporting dense.onnx, before training started. Finished files are complete, unfinished ones were "
            "not written; no epoch was checkpointed: `--resume` starts the training over."),
        # After training, the message says so and that a resume does not train again (it said "continues from the
        # last finished epoch", as if training were left).
        (2, "while exporting model.onnx, after training finished (the checkpoint holds epoch 1 of 1). Finished files "
            "are complete, unfinished ones were not written; `--resume` skips the finished training and redoes only "
            "what follows it."),
    ],
)  # fmt: skip
def test_an_interrupt_outside_training_says_what_the_run_was_doing(tmp_path, mlp_checkpoint, monkeypatch, call, stage):
    import sparsekit.onnx

    real, calls = sparsekit.onnx.export_onnx, []

    def export(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sparsekit.onnx, "export_onnx", export)
    last = _interrupted_prune(tmp_path, mlp_checkpoint)
    assert last == f"Interrupted: {stage}"


def test_an_interrupt_just_after_an_export_names_the_export(tmp_path, mlp_checkpoint, monkeypatch):
    # Between the export and the next timed phase the run said "after" the phase before the export (the plots,
    # for model.onnx), as if the file had not been exported and checked yet.
    import sparsekit.onnx

    real = sparsekit.onnx.export_onnx

    class Interrupting(dict):
        def items(self):
            raise KeyboardInterrupt

    def export(*args, **kwargs):
        return {**real(*args, **kwargs), "seconds": Interrupting()}

    monkeypatch.setattr(sparsekit.onnx, "export_onnx", export)
    last = _interrupted_prune(tmp_path, mlp_checkpoint)
    assert last.startswith("Interrupted: after exporting dense.onnx and checking it, before training started"), last


def test_an_interrupt_while_the_pruner_is_set_up_says_no_epoch_was_checkpointed(tmp_path, mlp_checkpoint, monkeypatch):
    # Between the dense model's measurements and the first epoch (the pruner's rehearsal and trace: seconds on a
    # large model) it said "`--resume` continues from the last finished epoch", with none finished.
    import sparsekit.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sparsekit.pipeline, "Pruner", interrupted)
    last = _interrupted_prune(tmp_path, mlp_checkpoint)
    assert last == (
        "Interrupted: while pruning and fine-tuning, before training started. Finished files are complete, "
        "unfinished ones were not written; no epoch was checkpointed: `--resume` starts the training over."
    )


def test_an_interrupt_that_does_not_say_where_reads_the_folder_for_what_resume_will_do(tmp_path):
    # Another torchrun rank, waiting for rank 0, is interrupted where no stage is noted: it said "`--resume`
    # continues from the last finished epoch" with none finished. The folder says whether one was.
    from sparsekit.cli import _interrupt_message

    out = tmp_path / "o"
    (out / ".sparsekit" / "next").mkdir(parents=True)
    assert _interrupt_message("prune", False, "", out) == (
        "Interrupted: Finished files are complete, unfinished ones were not written; no epoch was checkpointed: "
        "`--resume` starts the training over."
    )
    (out / ".sparsekit" / "next" / "checkpoints").mkdir()
    (out / ".sparsekit" / "next" / "checkpoints" / "last.pt").write_bytes(b"x")
    # An epoch interrupted before any was checkpointed says so once (it said "no epoch was checkpointed" twice).
    assert _interrupt_message("prune", False, "in epoch 1 of 30; no epoch was checkpointed", out) == (
        "Interrupted: in epoch 1 of 30; no epoch was checkpointed. Finished files are complete, unfinished ones were "
        "not written; `--resume` starts the training over."
    )
    assert _interrupt_message("prune", True, "in epoch 2 of 3", out) == (
        "Terminated (SIGTERM): in epoch 2 of 3. Finished files are complete, unfinished ones were not written; "
        "`--resume` continues from the last finished epoch."
    )


def test_an_interrupt_python_wrapped_in_another_error_is_still_an_interrupt(tmp_path, mlp_checkpoint, monkeypatch):
    # Python 3.11 raises RuntimeError("Error calling __set_name__ ...") from a Ctrl-C that lands while a class is
    # built (pydantic's recipe classes, during start-up): it exited 1 with "unexpected failure".
    import sparsekit.pipeline

    def wrapped(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            raise RuntimeError("Error calling __set_name__ on 'PydanticDescriptorProxy' instance") from err

    monkeypatch.setattr(sparsekit.pipeline, "load_data", wrapped)
    last = _interrupted_prune(tmp_path, mlp_checkpoint)
    assert last.startswith("Interrupted:") and "unexpected" not in last, last


def test_an_interrupt_before_anything_was_kept_says_to_run_the_same_command_again(
    tmp_path, mlp_checkpoint, monkeypatch
):
    # It offered `--resume`, which then failed: "no such folder, so there is no run to resume".
    import sparsekit.pipeline

    real = sparsekit.pipeline.load_data

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sparsekit.pipeline, "load_data", interrupt)
    last = _interrupted_prune(tmp_path, mlp_checkpoint)
    assert last.startswith("Interrupted: while loading the data") and last.endswith(
        "nothing was kept to resume: run the same command again."
    ), last
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(sparsekit.pipeline, "load_data", real)
    again = run("prune", mlp_checkpoint, *MLP, tmp_path / "r.yaml", "-o", tmp_path / "o", *FAST)
    assert again.exit_code == 0, again.stderr


def test_a_second_interrupt_while_the_first_unwinds_keeps_the_first_ones_place(tmp_path, mlp_checkpoint, monkeypatch):
    # A Ctrl-C in an epoch, then another while the run unwinds: the message said where the second one landed
    # ("after pruning and fine-tuning"), not the epoch and what the checkpoint holds.
    import sparsekit.outputs

    real_unlock = sparsekit.outputs.RunFolder.unlock
    calls = []

    def unlock(self):
        real_unlock(self)
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt  # the second Ctrl-C, while cleaning up

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # the first, in epoch 1

    monkeypatch.setattr(sparsekit.outputs.RunFolder, "unlock", unlock)
    monkeypatch.setattr("sparsekit.pruner.Pruner.step", interrupt)
    last = _interrupted_prune(tmp_path, mlp_checkpoint)
    assert calls and last.startswith("Interrupted: in epoch 1 of 1; no epoch was checkpointed."), last


@pytest.mark.parametrize(
    ("target", "stage"),
    [
        # Between phases (no phase's own words): the phase that had just run.
        ("sparsekit.pipeline.method_results", "after saving model.pt, after training finished (the checkpoint "
         "holds epoch 1 of 1)"),
        # After the last epoch, inside the fine-tuning phase: it read "while pruning and fine-tuning" and offered to
        # continue from the last finished epoch.
        ("sparsekit.pruner.Pruner.finalize", "while finalizing the pruned model, after training finished (the "
         "checkpoint holds epoch 1 of 1)"),
    ],
)  # fmt: skip
def test_an_interrupt_between_phases_and_after_the_last_epoch_says_training_had_finished(
    tmp_path, mlp_checkpoint, monkeypatch, target, stage
):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupt)
    last = _interrupted_prune(tmp_path, mlp_checkpoint)
    assert last == (
        f"Interrupted: {stage}. Finished files are complete, unfinished ones were not written; `--resume` skips the "
        "finished training and redoes only what follows it."
    )


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "/nonexistent/model.pt"],  # a library error
        ["inspect", "--bogus"],  # a usage error click raises before the command runs
        ["bench"],  # a missing argument
        ["recipes", "no-such-recipe"],
    ],
)
def test_json_commands_print_one_json_document_on_stdout_when_they_fail(args):
    # INTERFACE: --json gives exactly one JSON document on stdout; a failure printed nothing there
    result = CliRunner().invoke(main, [*args, "--json"])
    line = assert_bad_input(result)
    doc = json.loads(result.stdout)
    assert doc == {"error": line.removeprefix("Error: "), "exit_code": 2}


def test_under_torchrun_only_rank_0_prints_the_json_document(monkeypatch):
    # every rank failed with its own {"error": ...} on the one stdout torchrun shares
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(main, ["inspect", "/nonexistent/model.pt", "--json"])
    assert_bad_input(result, "rank 1: ")
    assert result.stdout == ""


EMBED_LONG_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    class EmbedNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):  # token ids as torch gives them: int64
            return self.fc(self.emb(x).mean(1))

    def build():
        return EmbedNet()
""")


def test_a_model_that_takes_integer_ids_is_not_blamed_on_its_shape(tmp_path, monkeypatch):
    """Found by review: an nn.Embedding taking int64 ids failed on the float check input with "the model does not
    accept [1, 12]; give the shape it takes", though the shape was right. Review 19: it is exported, with an int64
    input, as a wrong shape is still refused."""
    (tmp_path / "embedlong.py").write_text(EMBED_LONG_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import embedlong

    model_path = tmp_path / "e.pt"
    torch.save(embedlong.build().state_dict(), model_path)
    arch = ("--arch", "embedlong:build", "--input-shape", "1,12")
    result = run("export", model_path, *arch, "-o", tmp_path / "e.onnx")
    assert result.exit_code == 0, result.output
    import onnx

    assert onnx.load(str(tmp_path / "e.onnx")).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


CONV_FIRST_MODULE = textwrap.dedent("""
    from torch import nn

    def build():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
""")


def test_an_unknown_input_shape_is_asked_for_with_the_data_sources_sample_shape(tmp_path, monkeypatch):
    """Found by review: with --data digits (8x8 images) the message suggested model.input_shape=[1,1,28,28]."""
    (tmp_path / "convfirst.py").write_text(CONV_FIRST_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import convfirst

    model_path = tmp_path / "c.pt"
    torch.save(convfirst.build().state_dict(), model_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nfinetune: {epochs: 1}\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    out = tmp_path / "o"
    # Review 19: the data's own sample shape is now taken when the model runs on it, not only suggested.
    result = run("prune", model_path, recipe, "--arch", "convfirst:build", "--data", "digits", "-o", out, *FAST)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert json.loads((out / "report.json").read_text())["pruned"]["sparsity"] > 0.4


def test_report_on_an_interrupted_run_advises_resume_not_a_new_prune(tmp_path):
    # It said "run `sparsekit prune ... -o DIR` first", which refuses that folder (it holds an earlier run).
    out = tmp_path / "o"
    (out / ".sparsekit" / "next" / "checkpoints").mkdir(parents=True)
    result = run("report", out)
    assert_bad_input(result, str(out), "--resume")


def test_export_without_an_input_shape_suggests_the_first_layers_channels(tmp_path):
    # A 1-channel CNN saved as a plain state_dict was told "e.g. --input-shape 1,3,32,32".
    from examples.models import small_cnn

    weights = tmp_path / "cnn.pt"
    torch.save(small_cnn().state_dict(), weights)
    result = run("export", weights, "--arch", "examples.models:small_cnn", "-o", tmp_path / "c.onnx")
    line = assert_bad_input(result, "cannot tell the input shape", "--input-shape 1,1,28,28")
    assert "1,3,32,32" not in line
    from sparsekit.modelio import input_shape_example

    assert input_shape_example(torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3))) == "1,4,128"
    assert input_shape_example(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv3d(2, 8, 3))) == "1,2,16,32,32"
    assert input_shape_example(torch.nn.Sequential(torch.nn.BatchNorm2d(3))) == "1,3,32,32"


def test_a_recipe_input_shape_the_model_rejects_suggests_the_one_its_first_layer_takes(tmp_path):
    # A shipped LeNet recipe ([1, 784]) for one's own 64-input MLP said only "give the shape it takes"; a conv
    # model given the wrong channel count is told the count its first conv takes, at the size given.
    from examples.models import mlp, small_cnn
    from sparsekit.errors import DataError
    from sparsekit.inspection import check_input_shape

    with pytest.raises(DataError, match=r"the model takes \[1, 64\]"):
        check_input_shape(mlp(), [1, 784])
    with pytest.raises(DataError, match=r"the model takes \[1, 1, 28, 28\]"):
        check_input_shape(small_cnn(), [1, 3, 28, 28])
    with pytest.raises(DataError) as info:  # nothing the first layer tells runs: no shape is made up
        check_input_shape(small_cnn(), [1, 3, 28])
    assert "the model takes" not in str(info.value) and "give the shape it takes" in str(info.value)


def test_a_suggested_option_pastes_into_a_shell_as_one_argument():
    # `--set model.input_shape=[1,20]` was shown unquoted: zsh stops at the unmatched glob, and a space in a
    # --data path split it in two. Each rendered remedy now splits back into the flag and the value given.
    from sparsekit.cli import _flag
    from sparsekit.errors import option, render

    for name, value in (
        ("set", "model.input_shape=[1,20]"),
        ("set", "pruning=[{method: magnitude, sparsity: 0.8}]"),
        ("data", "my data/x.npz"),
        ("arch", "pkg.nets:build"),
        ("set", "finetune.epochs=2"),
    ):
        shown = render(f"do this: {option(name, value)}", _flag).removeprefix("do this: ")
        assert shlex.split(shown)[1:] == [value], shown
    assert render(option("set", "finetune.epochs=2"), _flag) == "--set finetune.epochs=2"  # plain stays plain
