"""Review: the Lightning / transformers callbacks used from a user's own script."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")


class _Gated(nn.Module):
    """A GLU-like block (two parallel Linear branches multiplied) with BatchNorm: not a model in the repo."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.bn, self.o = nn.Linear(8, 16), nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.bn(self.a(x) * torch.sigmoid(self.b(x))))


class _Lit(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _Gated()

    def training_step(self, batch, _i):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch, _i):
        self.log("v", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _structured_setup(tmp_path, end_epoch: int):
    """A structured 0.5 recipe file (removals from epoch 0 to ``end_epoch``) and a loader of 4 seeded batches."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {input_shape: [2, 8]}\npruning:\n  - method: structured\n    ratio: 0.5\n"
        f"    schedule: {{start_epoch: 0, end_epoch: {end_epoch}}}\n"
    )
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,)))
    return recipe, torch.utils.data.DataLoader(data, batch_size=8)


def test_validate_from_mid_structured_checkpoint(tmp_path):
    """validate(ckpt_path=...) of a checkpoint written while channels were removed used to fail with a bare
    state_dict size mismatch, callback attached: setup only hooked the restore for fit."""
    from sparsekit.integrations.lightning import SparsekitCallback

    recipe, loader = _structured_setup(tmp_path, end_epoch=3)
    kw = dict(enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False)
    callback = SparsekitCallback(recipe, submodule="net", finalize=False)
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], default_root_dir=tmp_path, **kw)
    trainer.fit(_Lit(), loader)
    ckpt = tmp_path / "c.ckpt"
    trainer.save_checkpoint(ckpt)
    assert callback.pruner is not None and callback.pruner.model.a.out_features < 16

    fresh = _Lit()
    evaluator = pl.Trainer(callbacks=[SparsekitCallback(recipe, submodule="net")], default_root_dir=tmp_path, **kw)
    (result,) = evaluator.validate(fresh, loader, ckpt_path=ckpt)
    assert fresh.net.a.out_features == callback.pruner.model.a.out_features
    assert torch.isfinite(torch.tensor(result["v"]))


def test_validate_the_best_checkpoint_after_a_finalizing_fit_on_the_same_module(tmp_path):
    """fit (finalize=True) then trainer.validate(module, ckpt_path=best): the checkpoint, written before finalize,
    holds the pruner's removals, and replaying them on the module finalize had already shrunk removed the same
    channels twice (ModelFileError: 'removes indices [...] but the layer has 8 channels')."""
    from sparsekit.integrations.lightning import SparsekitCallback

    recipe, loader = _structured_setup(tmp_path, end_epoch=0)
    callback = SparsekitCallback(recipe, submodule="net")
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[callback], default_root_dir=tmp_path, enable_progress_bar=False, logger=False
    )
    module = _Lit()
    trainer.fit(module, loader, loader)
    assert module.net.a.out_features == 8  # finalized: channels physically gone
    best = trainer.checkpoint_callback.best_model_path
    saved = torch.load(best, weights_only=False)["state_dict"]
    (result,) = trainer.validate(module, loader, ckpt_path=best)
    assert module.net.a.out_features == 8
    assert torch.equal(module.net.a.weight, saved["net.a.weight"])  # the checkpoint's weights, loaded as they are
    assert torch.isfinite(torch.tensor(result["v"]))
