"""Review round 13 (faults earlier reviews found and left): what the user saw, and what they see now."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import RecipeError

BASE = """\
version: 1
model: {input_shape: [1, 8]}
pruning:
  - method: magnitude
    sparsity: 0.5
"""


@pytest.mark.parametrize(
    ("line", "override", "needle"),
    [
        # "--set finetune.epochs=2: 'finetune' is a value, not a mapping": the override was blamed, not the recipe.
        (
            "finetune: 5\n",
            "finetune.epochs=2",
            "r.yaml: finetune: must be a mapping, written {key: value} (got a number 5)",
        ),
        # "'export.opset' is not an index of a list of 0": the recipe's `export: []` was the fault.
        ("export: []\n", "export.opset=17", "r.yaml: export: must be a mapping, written {key: value} (got a list [])"),
    ],
)
def test_an_override_into_a_bad_recipe_value_blames_the_recipe(tmp_path, line, override, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + line)
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", override])
    assert_bad_input(result, needle, f"--set {override} sets a key inside it")
    with pytest.raises(RecipeError, match="must be a mapping"):
        sparsekit.load_recipe(recipe, overrides=[override])


def test_an_override_into_a_value_an_earlier_override_set_still_blames_the_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", "finetune=5", "--set", "finetune.epochs=2"])
    assert_bad_input(result, "--set finetune.epochs=2: 'finetune' is a value, not a mapping")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        # pydantic's raw "version: Input should be 1".
        (BASE.replace("version: 1", "version: 2"), ["version: must be 1, the only recipe format", "(got a number 2)"]),
        # "Input should be 'global' or 'layer'": neither the value given nor the likely meaning.
        (
            BASE + "    scope: glob\n",
            ["pruning[0].scope: must be 'global' or 'layer' (got text 'glob'); did you mean 'global'?"],
        ),
        (
            BASE + "finetune: {epochs: 1, optimizer: {name: Adam, lr: 0.1}}\n",
            ["finetune.optimizer.name: must be 'sgd', 'adam' or 'adamw' (got text 'Adam'); did you mean 'adam'?"],
        ),
    ],
)
def test_a_value_outside_a_fixed_set_says_what_was_given(tmp_path, text, needles):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), *needles)
    assert "Input should be" not in line


def test_no_guess_between_equally_close_choices(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + "    layers: {types: [Conv]}\n")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "(got text 'Conv')")
    assert "did you mean" not in line


LONG = "k" * 1100


@pytest.mark.parametrize(
    "text",
    [
        # PyYAML's words by where the key stands, none saying why: "could not find expected ':'", "mapping values
        # are not allowed here", "expected ',' or '}', but got ':'".
        f"version: 1\n{LONG}: 1\n",
        f"version: 1\nmodel:\n  kwargs:\n    {LONG}: 1\n",
        f'version: 1\n"{LONG}": 1\n',
        f"version: 1\nmodel: {{kwargs: {{{LONG}: 1}}}}\n",
    ],
)
def test_a_key_longer_than_yaml_reads_says_so(tmp_path, text):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert_bad_input(
        CliRunner().invoke(main, ["validate", str(recipe)]), "a key of 1,100 characters", "at most 1,024", "? KEY"
    )


def test_the_explicit_key_the_message_suggests_is_read(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        BASE.replace("model: {input_shape: [1, 8]}", f"model:\n  input_shape: [1, 8]\n  kwargs:\n    ? {LONG}\n    : 1")
    )
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output + result.stderr


def test_a_short_key_without_its_colon_keeps_yaml_words(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nfinetune\n")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "could not find expected ':'")


def _relu_onnx(path, shape):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("batch", "needle"),
    [
        # "benchmark it with --batch-size 1000000000000 alone": a value the option itself refuses (1..1,048,576).
        (10**12, "above the largest batch size it takes (1,048,576)"),
        (2_000_000, "above the largest batch size it takes (1,048,576)"),
        (0, "which no batch size can feed"),  # "--batch-size 0 alone"
    ],
)
def test_a_fixed_batch_dim_no_batch_size_can_feed_is_not_suggested(tmp_path, batch, needle):
    path = _relu_onnx(tmp_path / "m.onnx", [batch, 8])
    line = assert_bad_input(CliRunner().invoke(main, ["bench", str(path)]), needle, "dynamic batch dim")
    assert "--batch-size" not in line


def test_a_fixed_batch_dim_within_the_limit_is_still_suggested(tmp_path):
    path = _relu_onnx(tmp_path / "m.onnx", [4, 8])
    assert_bad_input(CliRunner().invoke(main, ["bench", str(path)]), "--batch-size 4 alone")


def _l1_run(skip_every=0, lr_given=None, optimizer=True):
    """An l1 proximal Pruner over layer 0 of a small MLP, stepped with torch.amp.GradScaler; every ``skip_every``-th
    step's gradient is made inf, so the scaler skips that optimizer step. Returns the layer's weight after each
    optimizer.step() and after each pruner.step()."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    recipe = {
        "version": 1,
        "model": {"input_shape": [1, 8]},
        "finetune": {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.1}},
        "pruning": [{"method": "l1", "mode": "proximal", "strength": 0.5, "proximal_every": 1, "layers": ["0"]}],
    }
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    x = torch.randn(4, 8)
    seen = []
    for i in range(1, 5):
        opt.zero_grad()
        scaler.scale(model(x).sum()).backward()
        if skip_every and i % skip_every == 0:
            model[0].weight.grad[0, 0] = float("inf")
        if optimizer:
            scaler.step(opt)
            scaler.update()
        before = model[0].weight.detach().clone()
        pruner.step(lr=lr_given)
        seen.append((before, model[0].weight.detach().clone()))
    return seen


def _shrunk_by(before, after):
    """The shrink a proximal step applied: the change of every weight it left nonzero (all equal)."""
    alive = after != 0
    moved = (after - before)[alive].abs()
    assert alive.any() and moved.max().item() == pytest.approx(moved.min().item(), rel=1e-3)
    return moved.max().item()


def test_a_step_gradscaler_skipped_takes_no_proximal_shrink():
    # The skipped steps (2, 4) still soft-thresholded every weight by lr * lambda (0.05), an update no optimizer made.
    for i, (before, after) in enumerate(_l1_run(skip_every=2), 1):
        if i % 2:
            assert _shrunk_by(before, after) == pytest.approx(0.05, rel=1e-3)
        else:
            assert torch.equal(before, after), i


def test_a_loop_without_torch_optim_still_shrinks():
    # No optimizer ever steps: the recipe's rate (or the lr given) applies at every step, as documented.
    for lr in (None, 0.2):
        for before, after in _l1_run(optimizer=False, lr_given=lr)[:2]:
            assert _shrunk_by(before, after) == pytest.approx(0.5 * (lr or 0.1), rel=1e-3)


def _inference_mlp():
    with torch.inference_mode():
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


INFERENCE_RECIPE = {
    "version": 1,
    "model": {"input_shape": [1, 8]},
    "pruning": [{"method": "magnitude", "sparsity": 0.5}],
}


@pytest.mark.parametrize("entry", [{"method": "magnitude", "sparsity": 0.5}, {"method": "structured", "ratio": 0.5}])
def test_a_model_built_in_inference_mode_is_named_as_such(entry):
    # magnitude: torch's "Inplace update to inference tensor outside InferenceMode is not allowed"; structured: "cannot
    # trace ... Inference tensors cannot be saved for backward ...; check model.input_shape" (the wrong advice).
    with pytest.raises(sparsekit.errors.TargetError) as err:
        sparsekit.Pruner(_inference_mlp(), {**INFERENCE_RECIPE, "pruning": [entry]}, steps_per_epoch=4)
    assert "inference tensors" in str(err.value) and "outside torch.inference_mode()" in str(err.value)
    assert "input_shape" not in str(err.value)


def test_structured_inside_inference_mode_gets_the_same_advice():
    with torch.inference_mode():
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        recipe = {**INFERENCE_RECIPE, "pruning": [{"method": "structured", "ratio": 0.5}]}
        with pytest.raises(sparsekit.errors.TargetError) as err:
            sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    assert "outside torch.inference_mode()" in str(err.value)
    assert "check model.input_shape" not in str(err.value)


def test_a_one_shot_prune_inside_inference_mode_still_works():
    with torch.inference_mode():
        model = _inference_mlp()
        pruner = sparsekit.Pruner(model, INFERENCE_RECIPE, steps_per_epoch=4)
        pruner.step()
        pruner.finalize()
    weights = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()])
    assert (weights == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


PARAMETRIZED = """\
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm


def build(bias=False):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16, bias=bias), nn.ReLU(), nn.Linear(16, 16, bias=bias),
                          nn.ReLU(), nn.Linear(16, 10))
    weight_norm(model[1])
    spectral_norm(model[3])
    return model
"""


@pytest.mark.parametrize("bias", [False, True])
def test_a_parametrized_layer_left_out_is_named(tmp_path, monkeypatch, bias):
    # A bias-free weight_norm/spectral_norm layer holds no parameter of its own, so `include: *` left it out without
    # a word; validate listed only "1.parametrizations.weight (ParametrizationList): ParametrizationList is not a
    # prunable kind", naming no layer (with a bias, that row came on top of the layer's).
    from conftest import user_module

    from sparsekit.layers import unselected_layers

    mod = user_module(tmp_path, monkeypatch, "parametrized_net", PARAMETRIZED)
    rows = unselected_layers(mod.build(bias=bias))
    assert [(r["name"], r["type"]) for r in rows] == [("1", "ParametrizedLinear"), ("3", "ParametrizedLinear")]
    assert all("parametrization" in r["reason"] for r in rows)
    model = tmp_path / "m.pt"
    sparsekit.save_model(mod.build(bias=bias), model, factory="parametrized_net:build", kwargs={"bias": bias})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 1, 8, 8]}\npruning:\n  - {method: magnitude, sparsity: 0.5}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(recipe), str(model), "--trust-code"])
    assert result.exit_code == 0, result.output + result.stderr
    left = [line for line in result.output.splitlines() if "left out" in line]
    assert [line.split("(")[0].strip() for line in left] == ["left out 1", "left out 3"], left


TIED = """\
import torch
from torch import nn


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.mid, self.dec = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.head(self.dec(torch.relu(self.mid(self.enc(x)))))


def build():
    return Tied()
"""


def test_inspect_rows_of_tied_layers_add_up_to_the_total(tmp_path, monkeypatch):
    # dec's row repeated enc's weight: the rows added up to 884 params, the total said 628, and no row was marked.
    from conftest import user_module

    mod = user_module(tmp_path, monkeypatch, "tied_net", TIED)
    model = tmp_path / "m.pt"
    sparsekit.save_model(mod.build(), model, factory="tied_net:build", input_shape=[1, 16])
    result = CliRunner().invoke(main, ["inspect", str(model), "--trust-code"])
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.output.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("layer"))) + 1 :]
    rows = {line.split("  ")[0].strip(): line.split() for line in table[:4]}
    assert list(rows) == ["enc", "mid", "dec (tied)", "head"]
    params = [int(r[-5].replace(",", "")) for r in rows.values()]
    total = next(line for line in table if line.startswith("total")).split()
    assert sum(params) == int(total[1].replace(",", "")) == 628
