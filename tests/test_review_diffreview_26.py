"""Review of this session's refusals and changes: each test fails on the code before its fix."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsekit

torch.set_num_threads(1)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _empty_tempfile(folder: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


def test_save_model_fills_an_empty_tempfile(tmp_path: Path) -> None:
    # tempfile.NamedTemporaryFile(suffix=".pt") / mkstemp make an empty file whose name is then given to the writer:
    # refusing it as "not a torch checkpoint" blocked a common pattern, though replacing it loses nothing.
    path = _empty_tempfile(tmp_path, ".pt")
    sparsekit.save_model(_mlp(), path, "torch.nn:Linear")
    assert path.stat().st_size > 0


def test_export_onnx_fills_an_empty_tempfile(tmp_path: Path) -> None:
    path = _empty_tempfile(tmp_path, "")  # mkstemp() without a suffix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsekit.export_onnx(_mlp(), path, [1, 8])
    assert path.read_bytes()[:1] != b""


def test_a_non_empty_foreign_file_is_still_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("pruning: []\n")
    with pytest.raises(sparsekit.errors.OutputError):
        sparsekit.save_model(_mlp(), recipe, "torch.nn:Linear")
    assert recipe.read_text() == "pruning: []\n"
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(sparsekit.errors.OutputError):
        sparsekit.export_onnx(_mlp(), ckpt, [1, 8])
    assert ckpt.read_bytes() == b"x"


def _data() -> torch.utils.data.DataLoader:
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def test_finetune_fills_an_empty_last_pt(tmp_path: Path) -> None:
    (tmp_path / "last.pt").touch()
    recipe = sparsekit.Recipe(pruning=[{"method": "magnitude", "sparsity": 0.5}], finetune={"epochs": 1})
    sparsekit.finetune(_mlp(), recipe, _data(), _data(), progress=False, checkpoint_dir=tmp_path)
    assert (tmp_path / "last.pt").stat().st_size > 0


class _Stop(Exception):
    pass


def test_a_resume_whose_checkpoint_diverged_is_told_to_lower_the_lr(tmp_path: Path) -> None:
    # The run's own last optimizer step of an epoch can leave NaN weights with a finite loss: the checkpoint then
    # holds them. Resuming, the first batch's NaN loss was blamed on "the model's weights" given to the run
    # (ModelFileError, "load finite weights"), though this run's training made them: it is divergence (lower the lr).
    recipe = sparsekit.Recipe(pruning=[{"method": "magnitude", "sparsity": 0.5}], finetune={"epochs": 2})

    def stop(row: dict) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        sparsekit.finetune(_mlp(), recipe, _data(), _data(), progress=False, checkpoint_dir=tmp_path, on_epoch=stop)
    ckpt = tmp_path / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] >= 1
    state["model"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()
    }
    torch.save(state, ckpt)
    with pytest.raises(sparsekit.errors.RecipeError, match="training diverged"):
        sparsekit.finetune(_mlp(), recipe, _data(), _data(), progress=False, checkpoint_dir=tmp_path, resume=True)


def test_nan_weights_given_to_a_fresh_run_are_still_the_model_files_fault(tmp_path: Path) -> None:
    model = _mlp()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    recipe = sparsekit.Recipe(pruning=[{"method": "magnitude", "sparsity": 0.5}], finetune={"epochs": 1})
    with pytest.raises(sparsekit.errors.ModelFileError, match="already hold NaN"):
        sparsekit.finetune(model, recipe, _data(), _data(), progress=False)


def test_save_model_does_not_replace_a_zip_that_torch_did_not_write(tmp_path: Path) -> None:
    # Any zip archive passed for torch.save's: a numpy .npz of the user's data was replaced by the checkpoint.
    import numpy as np

    data = tmp_path / "calibration.npz"
    np.savez(data, x=np.zeros((2, 8), np.float32))
    before = data.read_bytes()
    with pytest.raises(sparsekit.errors.OutputError, match="not a torch checkpoint"):
        sparsekit.save_model(_mlp(), data, "torch.nn:Linear")
    assert data.read_bytes() == before
    # a torch.save file (a checkpoint, a state_dict) is still saved over
    own = tmp_path / "own.pt"
    torch.save(_mlp().state_dict(), own)
    sparsekit.save_model(_mlp(), own, "torch.nn:Linear")
    assert torch.load(own, weights_only=True)["format"] == "sparsekit/1"


def test_readme_says_report_rewrites_report_json_too() -> None:
    # `sparsekit report` rewrites report.json (its summary recomputed), as its --help says since it was corrected;
    # the README's command list still said it re-renders report.md and the plots only.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("sparsekit report DIR")]
    assert "report.json's summary" in line
