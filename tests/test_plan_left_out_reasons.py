"""``validate`` names why a layer is left out: group lasso has no ``ignore``, so its head is not "in ignore"."""

from __future__ import annotations

import torch


def test_group_lasso_head_left_out_is_not_said_to_be_in_ignore(tmp_path):
    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    torch.save(mlp(in_features=64, hidden=[32]).state_dict(), tmp_path / "w.pt")
    recipe = {
        "version": 1,
        "model": {"input_shape": [1, 64], "kwargs": {"hidden": [32]}},
        "data": {"source": "digits"},
        "finetune": {"epochs": 1},
        "pruning": [{"method": "l1", "strength": 1.0e-3, "group": "row"}],
    }
    res = sparsekit.plan(recipe, tmp_path / "w.pt", arch="examples.models:mlp", steps_per_epoch=2)
    (row,) = [r for r in res["methods"][0]["left_out"] if r["name"] == "fc2"]
    assert "ignore" not in row["reason"].split(":")[0], row["reason"]  # l1 has no ignore key to put it in
    assert "layers.include" in row["reason"]
    recipe["pruning"] = [{"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot"}]
    res = sparsekit.plan(recipe, tmp_path / "w.pt", arch="examples.models:mlp", steps_per_epoch=2)
    (row,) = [r for r in res["methods"][0]["left_out"] if r["name"] == "fc2"]
    assert row["reason"].startswith("in ignore")  # structured's own ignore default: unchanged
