"""Faults found while replicating issue 12's LeNet comparison (sparsekit against torch.nn.utils.prune)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from sparsekit.cli import main
from sparsekit.modelio import read_model


def test_a_whole_model_saved_with_torch_nn_utils_prune_hooks_on_is_read_with_its_masks_baked_in(tmp_path):
    # torch.save(model) of the baseline arm before prune.remove keeps the mask hooks: every command left the masked
    # layers out (their weight is computed in the forward pass), so inspect showed fc1 and fc2 as one unnamed row at
    # sparsity 0.000 and prune refused the shipped recipe as selecting no layer. A state_dict saved so was already
    # read as weight_orig * weight_mask; the whole model now is too.
    import torch.nn.utils.prune as torch_prune

    from examples.models import mlp

    torch.manual_seed(0)
    model = mlp()
    torch_prune.global_unstructured(
        [(model.fc1, "weight"), (model.fc2, "weight")], torch_prune.L1Unstructured, amount=0.9
    )
    expected = model.fc1.weight.detach().clone()  # weight_orig * weight_mask
    torch.save(model, tmp_path / "m.pt")

    loaded = read_model(tmp_path / "m.pt", trust=True)
    fc1 = loaded.model.fc1
    assert not fc1._forward_pre_hooks and "weight_orig" not in dict(fc1.named_parameters())
    torch.testing.assert_close(fc1.weight, expected, rtol=0, atol=0)
    assert any("fc1.weight, fc2.weight held torch.nn.utils.prune's masks" in n for n in loaded.notes), loaded.notes

    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.pt"), "--trust-model-file"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith("fc")}
    assert set(rows) == {"fc1", "fc2", "fc3"}, result.output
    zeros = sum(int((getattr(model, n).weight == 0).sum()) for n in ("fc1", "fc2"))
    total = model.fc1.weight.numel() + model.fc2.weight.numel()
    assert zeros / total == pytest.approx(0.9, abs=1e-3)
    assert float(rows["fc1"][5]) > 0.5, result.output  # the sparsity column: 0.000 before


@pytest.mark.parametrize("how", ["torch_prune", "weight_norm"])
def test_a_recipe_whose_every_layer_has_a_computed_weight_names_them_not_a_rename(how):
    # A model still under torch.nn.utils.prune's hooks (the baseline arm before prune.remove) or weight_norm on every
    # layer the shipped LeNet recipe selects: the Pruner said "include/exclude leave no layer to prune; prunable
    # layers are: fc3 (Linear); name this model's layers in pruning[0].layers.include", though fc1 and fc2 are
    # there under the names the recipe uses. It now names them, what computes their weight and the call that
    # gives it back.
    import sparsekit
    from examples.models import lenet_300_100

    model = lenet_300_100()
    if how == "torch_prune":
        import torch.nn.utils.prune as torch_prune

        torch_prune.global_unstructured(
            [(model.fc1, "weight"), (model.fc2, "weight")], torch_prune.L1Unstructured, amount=0.5
        )
        call = "torch.nn.utils.prune.remove(layer, 'weight')"
    else:
        from torch.nn.utils.parametrizations import weight_norm

        model.fc1, model.fc2 = weight_norm(model.fc1), weight_norm(model.fc2)
        call = "torch.nn.utils.parametrize.remove_parametrizations(layer, 'weight')"
    with pytest.raises(sparsekit.TargetError) as caught:
        sparsekit.Pruner(model, "lenet-gradual-magnitude-90", steps_per_epoch=4)
    message = str(caught.value)
    assert "(fc1, fc2)" in message and call in message, message
    assert "name this model's layers" not in message, message


def test_a_model_already_at_the_asked_sparsity_is_not_a_missed_target(tmp_path):
    # The torch arm's model, saved after prune.remove at 90% of fc1+fc2, then fine-tuned by sparsekit with the same 90%
    # (its zeros held): the entry had nothing left to zero, and the run said "target missed: entry 0 (magnitude)
    # achieved nothing", exit 2 under --strict, though the 0.9 asked was there. Asked for more (0.95), it zeroes more
    # and says nothing of the zeros it came with.
    import json

    import torch.nn.utils.prune as torch_prune
    from conftest import FAST

    import sparsekit
    from examples.models import mlp

    kwargs = {"in_features": 64, "hidden": [32, 32]}
    torch.manual_seed(0)
    model = mlp(**kwargs)
    params = [(model.fc1, "weight"), (model.fc2, "weight")]
    torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=0.9)
    for layer, name in params:
        torch_prune.remove(layer, name)
    path = tmp_path / "m.pt"
    sparsekit.save_model(model, path, factory="examples.models:mlp", kwargs=kwargs, input_shape=[1, 64])
    for asked in (0.9, 0.95):
        recipe = tmp_path / f"r{asked}.yaml"
        recipe.write_text(
            "version: 1\ndata: {source: digits}\nfinetune: {epochs: 0}\nbenchmark: {enabled: false}\n"
            f"pruning:\n  - {{method: magnitude, sparsity: {asked}, schedule: oneshot,"
            " layers: {include: [fc1, fc2]}}\n"
        )
        out = tmp_path / f"o{asked}"
        args = ["prune", str(path), "--arch", "examples.models:mlp", str(recipe), "-o", str(out), "--strict", *FAST]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (asked, result.output)
        (entry,) = json.loads((out / "report.json").read_text())["summary"]["methods"]
        assert not entry["nothing"] and entry["achieved"] == pytest.approx(asked, abs=1e-3), entry
        assert ("zeroed no weight itself" in " ".join(entry["remarks"])) is (asked == 0.9), entry
