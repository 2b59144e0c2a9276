"""Review (contract angle, round 14): INTERFACE.md and README.md held against what the code does."""

from __future__ import annotations

import pytest

import sparsekit


def test_load_report_takes_the_run_folder(tmp_path, mlp_checkpoint):
    # `sparsekit report DIR` takes the run's folder, and so does prune's -o; load_report("out") said
    # "out: not found; run sparsekit's prune first" about the folder holding the finished run.
    from conftest import fast_prune

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\nbenchmark: {enabled: false}\n"
    )
    out = tmp_path / "out"
    result = fast_prune(mlp_checkpoint, recipe, out, "--trust-code")
    assert result.exit_code == 0, result.output
    by_folder = sparsekit.load_report(out)
    assert by_folder.to_json() == sparsekit.load_report(out / "report.json").to_json()
    assert sparsekit.load_report(str(out)).pruned.sparsity == by_folder.pruned.sparsity


def test_load_report_of_a_folder_without_a_run_says_so(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sparsekit.SparsekitError, match="holds no finished prune run"):
        sparsekit.load_report(empty)


def _pt2(path, dynamic: bool):
    """A small MLP saved with torch.export: at batch 1 only (torch.export's default) or with a dynamic batch."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    if dynamic:
        program = torch.export.export(model, (torch.randn(2, 12),), dynamic_shapes=({0: torch.export.Dim("b")},))
    else:
        program = torch.export.export(model, (torch.randn(1, 12),))
    torch.export.save(program, str(path))
    return path


def test_export_of_a_batch_one_pt2_names_the_fixed_batch(tmp_path):
    # README: a .pt2 is loaded with --trust-model-file. One exported at batch 1 (torch.export's default) was told
    # "--input-shape [1, 12]: the model runs on one such input but not on a batch of two, so its first dimension
    # is not the batch; give the whole input shape, batch first": what the user had given, and no shape passes.
    from click.testing import CliRunner
    from conftest import assert_bad_input

    from sparsekit.cli import main

    pt2 = _pt2(tmp_path / "m.pt2", dynamic=False)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        main, ["export", str(pt2), "--trust-model-file", "--input-shape", "1,12", "-o", str(out)]
    )
    line = assert_bad_input(result, "compiled graph runs on a batch of 1 but not of 2", "--arch", "dynamic")
    assert "first dimension is not the batch" not in line
    assert not out.exists()

    model = sparsekit.load_model(pt2, trust=True)
    with pytest.raises(sparsekit.ExportError, match="compiled graph runs on a batch of 1") as err:
        sparsekit.export_onnx(model, tmp_path / "py.onnx", input_shape=[1, 12])
    assert "give the shape it takes" not in str(err.value)


def test_export_of_a_pt2_reads_its_input_shape_from_the_graph(tmp_path):
    # A torch.export file records its input's shape; `sparsekit export m.pt2 --trust-model-file` said "cannot
    # tell the input shape; pass --input-shape" about it.
    from click.testing import CliRunner

    from sparsekit.cli import main

    pt2 = _pt2(tmp_path / "d.pt2", dynamic=True)
    out = tmp_path / "d.onnx"
    result = CliRunner().invoke(main, ["export", str(pt2), "--trust-model-file", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert out.is_file()


@pytest.mark.parametrize(("data", "example"), [("mnist5k", "[1,1,28,28]"), ("digits", "[1,1,8,8]")])
def test_input_shape_example_follows_the_data_option(tmp_path, monkeypatch, data, example):
    # A conv model's state_dict and a recipe without model.input_shape: the example shape came from the recipe's
    # data.source (digits by default) even when --data chose another, so `--data mnist5k` was told
    # "--set 'model.input_shape=[1,1,8,8]'", and following it failed on the data's 28x28 samples.
    import torch
    from click.testing import CliRunner
    from torch import nn

    from sparsekit.cli import main

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    (tmp_path / "netmod_contract14.py").write_text(
        "from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), "
        "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n")
    args = ["validate", str(recipe), str(weights), "--arch", "netmod_contract14:build", "--data", data]
    monkeypatch.chdir(tmp_path)  # --arch imports from the current folder, as for a user
    result = CliRunner().invoke(main, args)
    # Review 19: the shape is now taken from the data option's samples (the model runs on them), not asked for.
    assert result.exit_code == 0, (result.output, result.stderr)
    assert f"input {example.replace(',', ', ')}" in result.output


def test_plan_takes_the_overrides_its_errors_name(tmp_path, monkeypatch):
    # sparsekit.plan raised "c.pt: cannot tell the model's input shape; set model.input_shape in the recipe (e.g.
    # overrides=['model.input_shape=[1,1,8,8]'] ...)", and following it was a TypeError: plan() took no overrides
    # (run_prune and load_recipe do).
    import torch
    from torch import nn

    source = (
        "from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), "
        "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n"
    )
    (tmp_path / "planmod_contract14.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    torch.save(model.state_dict(), tmp_path / "c.pt")
    # data: synthetic, whose samples have no shape of their own (review 19: digits' samples now give the shape)
    recipe = {"version": 1, "data": {"source": "synthetic"}, "pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    with pytest.raises(sparsekit.SparsekitError, match=r"overrides=\['model.input_shape=\[1,1,"):
        sparsekit.plan(recipe, "c.pt", arch="planmod_contract14:build")
    res = sparsekit.plan(recipe, "c.pt", arch="planmod_contract14:build", overrides=["model.input_shape=[1,1,8,8]"])
    assert res["model"]["input_shape"] == [1, 1, 8, 8]
    assert res["methods"][0]["final"] is not None
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    assert sparsekit.plan(path, overrides=["seed=5"])["valid"]
    with pytest.raises(TypeError, match="load_recipe"):
        sparsekit.plan(sparsekit.load_recipe(path), overrides=["seed=5"])


@pytest.mark.parametrize("call", ["plan", "run_prune"])
def test_one_override_string_is_named_as_such(tmp_path, call):
    # overrides='seed=3' (one string, not a list) was read character by character: "overrides=['s']: expected
    # key.path=value", naming an override the user never wrote.
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\npruning: [{method: magnitude, sparsity: 0.5}]\n")
    with pytest.raises(sparsekit.RecipeError, match="not one string") as err:
        if call == "plan":
            sparsekit.plan(path, overrides="seed=3")
        else:
            sparsekit.run_prune(tmp_path / "missing.pt", path, tmp_path / "out", overrides="seed=3")
    assert "['s']" not in str(err.value)
    assert not (tmp_path / "out").exists()


def _mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_pruner_remedies_are_spelled_for_what_it_takes(tmp_path):
    # sparsekit.Pruner(model, {... layers: ["zz"]}, ...) said "... or for this run overrides=['pruning.0.layers.
    # include=[...]']", and Pruner(..., overrides=...) is a TypeError: the Pruner takes the recipe as given.
    bad = {"version": 1, "pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": ["zz"]}]}
    with pytest.raises(sparsekit.TargetError, match="matches no layer") as err:
        sparsekit.Pruner(_mlp(), bad, 3)
    assert "overrides=" not in str(err.value)
    assert 'pruning.0.layers.include: ["NAME", ...] in the recipe dict' in str(err.value)

    path = tmp_path / "r.yaml"
    path.write_text("version: 1\npruning: [{method: magnitude, sparsity: 0.5, layers: {exclude: [fc3]}}]\n")
    with pytest.raises(sparsekit.TargetError, match="load_recipe") as err:
        sparsekit.Pruner(_mlp(), str(path), 3)
    assert "for this run overrides=" not in str(err.value)
    # following it works
    fixed = sparsekit.load_recipe(str(path), overrides=['pruning.0.layers.exclude=["2"]'])
    assert sparsekit.Pruner(_mlp(), fixed, 3).methods[0].layers.keys() == {"0"}

    structured = {"version": 1, "pruning": [{"method": "structured", "ratio": 0.5, "ignore": ["zz"]}]}
    with pytest.raises(sparsekit.TargetError, match="in the recipe dict") as err:
        sparsekit.rehearse(_mlp(), structured, input_shape=[1, 8], steps_per_epoch=3)
    assert "overrides=" not in str(err.value)


def test_finetune_remedies_are_spelled_for_what_it_takes():
    # sparsekit.finetune(model, {...}, train, val) said "use auto or cpu (overrides=['finetune.device=cpu'])" and
    # "... for this run overrides=['pruning.0.layers.include=[...]']": finetune() takes no overrides.
    import torch

    batches = [(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))]
    bad_layers = {
        "version": 1,
        "finetune": {"epochs": 1},
        "pruning": [{"method": "magnitude", "sparsity": 0.5, "layers": ["zz"]}],
    }
    with pytest.raises(sparsekit.TargetError, match="in the recipe dict") as err:
        sparsekit.finetune(_mlp(), bad_layers, batches, batches, progress=False)
    assert "overrides=" not in str(err.value)
    if not torch.cuda.is_available():
        gpu = {"version": 1, "finetune": {"epochs": 1, "device": "cuda"}}
        with pytest.raises(sparsekit.RecipeError, match="finetune.device: cpu in the recipe dict") as err:
            sparsekit.finetune(_mlp(), gpu, batches, batches, progress=False)
        assert "overrides=" not in str(err.value)
