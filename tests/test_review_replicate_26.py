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
