"""Review 22, angle "recipes": the shipped recipes run on models that are not the examples (a user's own MLP/CNN)."""

from __future__ import annotations

import torch
from torch import nn

import sparsekit


def test_a_layer_that_reached_its_ratio_is_not_named_as_short_by_an_earlier_steps_rounding():
    # mobilenetv2-structured-50 (ratio 0.5, 3 steps, round_to 16) on a CNN with 16- and 24-wide layers: the 16-wide
    # one keeps exactly 8 (round_to moved it at step 2, not at the end); the 24-wide one keeps 16 (0.333 of 0.5).
    # The report's "short of the 0.500 asked" listed the exact layer first and hid the short one as "1 more".
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 4))
    spec = {"method": "structured", "ratio": 0.5, "steps": 3, "schedule": {"start_epoch": 0, "end_epoch": 2}}
    r = sparsekit.Recipe(model={"input_shape": [1, 20]}, finetune={"epochs": 3}, pruning=[spec])
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=1)
    for _ in range(3):
        pruner.step()
    assert (model[0].out_features, model[2].out_features) == (8, 16)
    report = pruner.methods[0].report()
    rows = report["per_layer"]
    assert rows["0"]["achieved"] == rows["0"]["asked"] == 0.5
    assert rows["0"]["reason"] is None  # nothing to explain: it lost the half asked
    assert rows["2"]["reason"] is not None and "keeps all 16 channels instead of 12" in rows["2"]["reason"]
    assert report["reason"].startswith("'2': round_to 16") and "'0'" not in report["reason"]


class _RGBNet(nn.Module):
    """A user's CNN on 3x32x32 images; its global pooling takes any image size, so the first layer cannot tell it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x).relu()).flatten(1))


def test_a_shipped_recipes_input_shape_refused_suggests_the_datas_sample_shape(tmp_path, monkeypatch):
    # mobilenetv2-structured-50 ([1, 1, 8, 8]) with one's own 3x32x32 CNN and --data imgs.npz: the remedy said
    # [1, 3, 8, 8] (the recipe's image size), which the next run refused as not the data's (3, 32, 32).
    import numpy as np
    import pytest

    from sparsekit.errors import DataError
    from sparsekit.pipeline import check_inputs

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("imgs.npz", x=rng.normal(size=(16, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 4, 16))
    sparsekit.save_model(_RGBNet(), "net.pt", factory=f"{__name__}:_RGBNet", input_shape=None)
    recipe = sparsekit.load_recipe("mobilenetv2-structured-50")
    recipe.model.input_shape = [1, 1, 8, 8]  # the recipe's, over the checkpoint's (none saved)
    with pytest.raises(DataError) as err:
        check_inputs("net.pt", recipe, arch=f"{__name__}:_RGBNet", data="imgs.npz")
    assert "the model takes [1, 3, 32, 32]" in str(err.value), err.value


def test_validate_of_a_recipe_alone_refuses_an_l1_entry_with_an_empty_window(tmp_path):
    # `sparsekit validate lenet-l1-row-50 --set pruning.0.schedule=oneshot` printed "valid ... 0.5 of the units zero
    # by epoch 0"; prune then refused the same recipe once the model and data were loaded.
    from click.testing import CliRunner

    from sparsekit.cli import main

    for override in ("pruning.0.schedule=oneshot", "pruning.0.schedule.end_epoch=0"):
        result = CliRunner().invoke(main, ["validate", "lenet-l1-row-50", "--set", override])
        assert result.exit_code == 2, result.output
        assert "pruning[0].schedule: l1 acts on every step" in result.output and "window is empty" in result.output
    assert CliRunner().invoke(main, ["validate", "lenet-l1-row-50"]).exit_code == 0


def test_a_shipped_recipes_json_catalog_entry_saved_as_a_recipe_is_named_for_what_it_is(tmp_path):
    # `sparsekit recipes cnn-structured-50 --json > r.json` then `sparsekit validate r.json` read: "model: must be a
    # mapping ...; name: unknown key; path: unknown key; ...", never saying the file is the catalog entry.
    from click.testing import CliRunner

    from sparsekit.cli import main

    listed = CliRunner().invoke(main, ["recipes", "cnn-structured-50", "--json"])
    assert listed.exit_code == 0, listed.output
    (tmp_path / "r.json").write_text(listed.output)
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    assert "catalog entry of the shipped recipe 'cnn-structured-50'" in result.output
    assert "sparsekit recipes cnn-structured-50 > my-recipe.yaml" in result.output
    assert "unknown key" not in result.output


def test_an_input_shape_without_its_batch_that_the_first_conv_refuses_is_told_to_put_the_batch_first():
    # model.input_shape [3, 32, 32] for a 3-channel CNN (the batch left out): [1, 32, 32] reads as one 32x32 image of
    # one channel, the conv refuses it, and the message said only "give the shape it takes, batch first".
    import pytest

    from sparsekit.errors import DataError
    from sparsekit.inspection import check_input_shape

    with pytest.raises(DataError) as err:
        check_input_shape(_RGBNet(), [3, 32, 32])
    assert "the model takes [1, 3, 32, 32]: did you leave out the batch dimension?" in str(err.value), err.value


def test_an_entry_short_of_its_ratio_is_explained_by_the_layers_that_fell_short_not_one_rounded_past_it():
    # cnn-structured-50 on a 24/40/48-wide model: 24 -> 16 and 48 -> 32 (short), 40 -> 16 (past 0.5: 20 rounds to
    # 16); "short of the 0.500 asked" listed the 40-wide layer, which removed more than asked.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 24), nn.ReLU(), nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 48), nn.ReLU())
    model.append(nn.Linear(48, 4))
    spec = {"method": "structured", "ratio": 0.5, "schedule": "oneshot"}
    r = sparsekit.Recipe(model={"input_shape": [1, 20]}, finetune={"epochs": 1}, pruning=[spec])
    pruner = sparsekit.Pruner(model, r, steps_per_epoch=1)
    pruner.step()
    assert [model[i].out_features for i in (0, 2, 4)] == [16, 16, 32]
    report = pruner.methods[0].report()
    assert report["achieved"] < report["asked"]
    assert "'0'" in report["reason"] and "'4'" in report["reason"] and "'2'" not in report["reason"], report["reason"]
