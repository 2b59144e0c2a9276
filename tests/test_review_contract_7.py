"""Contract review 7: what INTERFACE.md and README.md promise, checked against what the commands do."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from torch import nn

from sparsekit.cli import main

ARCH = ["--arch", "examples.models:mlp", "--kwargs", '{"in_features": 8, "hidden": [6], "num_classes": 3}']


def _mlp() -> nn.Module:
    from examples.models import mlp

    torch.manual_seed(0)
    return mlp(in_features=8, hidden=[6], num_classes=3).eval()


def test_a_trusted_pt2_archive_is_exported_not_an_unexpected_failure(tmp_path):
    # INTERFACE §1: a .pt2 is refused "with the two ways out", one of them --trust-model-file. With it, every
    # command that put the model in eval mode ended in exit 1 (torch.export's module refuses eval()).
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(_mlp(), (torch.randn(2, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "m.pt2")
    args = ["export", str(tmp_path / "m.pt2"), "--trust-model-file", "--input-shape", "1,8"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "m.onnx").is_file()


def test_a_trusted_torchscript_archive_with_arch_has_the_layers_of_that_architecture(tmp_path):
    # With --trust-model-file and --arch, a TorchScript file's weights are the named architecture's: its layers
    # are found (they were none: `prune` refused every recipe with "prunable layers are: none", `inspect` gave no
    # rows and 0 MACs).
    model = _mlp()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 8)), tmp_path / "ts.pt")
    args = ["inspect", str(tmp_path / "ts.pt"), "--trust-model-file", *ARCH, "--input-shape", "1,8", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    import json

    rows = json.loads(result.stdout)["layers"]
    assert [r["name"] for r in rows] == ["fc1", "fc2"]
    assert sum(r["macs"] for r in rows) == 8 * 6 + 6 * 3


def test_report_schema_says_which_file_onnx_bytes_measures():
    # INTERFACE §4's pruned.onnx_bytes: a user checks it against `ls -l model.onnx`. It is the dense-stored
    # export's size (dense and pruned compared like with like), which model.onnx is not when export.sparse_storage
    # shipped sparse initializers (a 90% LeNet: 203,323 B in the report, 86,938 B on disk); the schema said only
    # "ONNX file size in bytes".
    from sparsekit.report import report_schema

    props = report_schema()["$defs"]["Result"]["properties"]
    assert "dense initializers" in props["onnx_bytes"]["description"]
    assert "storage.bytes" in props["onnx_bytes"]["description"]
    assert "description" in props["onnx_gzip_bytes"]


def test_a_misspelt_allow_change_field_is_named_as_a_typo():
    # `--resume --allow-change finetune.epoch` said the field "changes what the finished epochs did": the wrong
    # cause for a typo of finetune.epochs, which may be changed.
    import pytest

    from sparsekit.provenance import check_allowed

    with pytest.raises(ValueError, match=r"'finetune\.epoch' .*did you mean 'finetune\.epochs'\?"):
        check_allowed(["finetune.epoch"])
    with pytest.raises(ValueError, match=r"'finetune\.optimizer\.lr' .*changes what the finished epochs did"):
        check_allowed(["finetune.optimizer.lr"])
    assert check_allowed(["finetune.epochs", "benchmark"]) == ["finetune.epochs", "benchmark"]


def test_inspect_of_a_trusted_torchscript_file_without_arch_asks_for_it_instead_of_counting_nothing(tmp_path):
    # Its layers are compiled code, not Linear/Conv modules: inspect printed no rows and "0" dense MACs for a
    # model of 66 (with --input-shape too), a wrong figure rather than an unknown one.
    from conftest import assert_bad_input

    torch.jit.save(torch.jit.trace(_mlp(), torch.zeros(1, 8)), tmp_path / "ts.pt")
    args = ["inspect", str(tmp_path / "ts.pt"), "--trust-model-file", "--input-shape", "1,8"]
    assert_bad_input(CliRunner().invoke(main, args), "TorchScript", "--arch")


def test_prune_and_validate_of_a_trusted_torchscript_file_without_arch_ask_for_it(tmp_path):
    # prune/validate/sensitivity with --trust-model-file and no --arch: the recipe was set up on the compiled module
    # and failed with "the recipe cannot be set up on this model (AttributeError: 'OrderedDictWrapper' object has no
    # attribute 'get')", which named neither the cause nor the way out.
    from conftest import assert_bad_input

    torch.jit.save(torch.jit.trace(_mlp(), torch.zeros(1, 8)), tmp_path / "ts.pt")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {input_shape: [1, 8]}\ndata: {source: synthetic}\nfinetune: {epochs: 1}\n"
        "pruning: [{method: magnitude, sparsity: 0.5}]\n"
    )
    ts = str(tmp_path / "ts.pt")
    for args in (["prune", ts, str(recipe), "-o", str(tmp_path / "out")], ["validate", str(recipe), ts]):
        assert_bad_input(CliRunner().invoke(main, [*args, "--trust-model-file"]), "TorchScript", "--arch")
    assert not (tmp_path / "out").exists()


def test_a_pruner_over_a_torchscript_module_is_a_type_error_with_the_way_out():
    import pytest

    import sparsekit

    scripted = torch.jit.trace(_mlp(), torch.zeros(1, 8))
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    with pytest.raises(TypeError, match=r"TorchScript.*load_state_dict"):
        sparsekit.Pruner(scripted, recipe, steps_per_epoch=4)


def test_a_missing_model_file_is_named_before_the_output_folder(tmp_path):
    # `prune nope.pt RECIPE -o out` into a folder holding an earlier run said "holds an earlier sparsekit run; pass
    # --overwrite ..."; after following that advice the user learnt the model file did not exist.
    from conftest import assert_bad_input

    out = tmp_path / "out"
    (out / ".sparsekit").mkdir(parents=True)
    (out / ".sparsekit" / "manifest.json").write_text('{"files": []}')
    (out / "report.json").write_text("{}")
    result = CliRunner().invoke(
        main, ["prune", str(tmp_path / "nope.pt"), "lenet-gradual-magnitude-90", "-o", str(out)]
    )
    assert_bad_input(result, "nope.pt: model file not found")
    assert (out / "report.json").read_text() == "{}"
