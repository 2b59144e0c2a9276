"""File safety review (files, round 26): what sparsekit writes into folders a caller names."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import sparsekit
from sparsekit.errors import OutputError


def _tiny() -> tuple[torch.nn.Module, sparsekit.Recipe, DataLoader]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    loader = DataLoader(TensorDataset(torch.randn(16, 8), torch.randint(0, 3, (16,))), batch_size=8)
    recipe = sparsekit.Recipe(
        version=1,
        finetune={"epochs": 1},
        pruning=[{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"include": ["*"]}}],
    )
    return model, recipe, loader


def test_finetune_never_replaces_a_callers_own_last_pt(tmp_path):
    # last.pt is what many training scripts call their own checkpoint: the first epoch's replaced it silently.
    folder = tmp_path / "ckpts"
    folder.mkdir()
    mine = folder / "last.pt"
    torch.save({"my_model": torch.ones(3)}, mine)
    before = mine.read_bytes()
    model, recipe, loader = _tiny()
    with pytest.raises(OutputError, match=r"last\.pt: exists and is not a checkpoint"):
        sparsekit.finetune(model, recipe, loader, loader, checkpoint_dir=folder, progress=False)
    assert mine.read_bytes() == before
    # A checkpoint an earlier finetune wrote there is its own: a new run (no resume) starts it over.
    mine.unlink()
    sparsekit.finetune(model, recipe, loader, loader, checkpoint_dir=folder, progress=False)
    model, recipe, loader = _tiny()
    sparsekit.finetune(model, recipe, loader, loader, checkpoint_dir=folder, progress=False)
    assert set(torch.load(mine, weights_only=True)) >= {"epoch", "model", "optimizer", "pruner"}


def test_refused_prune_leaves_none_of_the_log_folders_it_made(tmp_path, monkeypatch):
    # --log-dir logs/a/b in a new place: a run refused on its inputs removed b, its DATE-TIME folder, but left
    # logs/a and logs behind, though the comment promised the folders it made go again.
    from click.testing import CliRunner

    from sparsekit.cli import main

    monkeypatch.chdir(tmp_path)
    torch.save(torch.nn.Linear(4, 2).state_dict(), "weights.pt")  # a state_dict with no architecture: refused
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\ndata: {source: synthetic}\npruning:\n  - {method: magnitude, sparsity: 0.5}\n")
    (tmp_path / "kept").mkdir()
    for log_dir in ("logs/a/b", "kept/a/b"):
        res = CliRunner().invoke(main, ["prune", "weights.pt", str(recipe), "-o", "out", "--log-dir", log_dir])
        assert res.exit_code == 2, res.output
        assert "architecture" in res.output
    assert not (tmp_path / "logs").exists()
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())  # the user's folder stays
    assert not (tmp_path / "out").exists()


def test_full_temp_folder_in_a_rehearsal_names_the_temp_folder_not_an_output(tmp_path, monkeypatch):
    # validate's rehearsal exports in a temporary folder: a full one said "/tmp/sparsekit-rehearsal-x/rehearsal.onnx:
    # cannot write it: ...; choose an output on another disk", a path gone when read, and an output never given.
    import errno
    import tempfile

    import onnx

    from sparsekit.rehearsal import rehearse

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    recipe = sparsekit.Recipe(
        version=1, pruning=[{"method": "structured", "ratio": 0.5, "schedule": "oneshot", "ignore": ["2"]}]
    )
    with pytest.raises(OutputError) as caught:
        rehearse(model, recipe, [1, 8], 1)
    said = str(caught.value)
    assert said.startswith(f"{tmp_path}: cannot write the temporary files"), said
    assert "no space left on device" in said and "TMPDIR" in said and "choose an output" not in said
    assert list(tmp_path.iterdir()) == []  # the temporary folder went


BAD_SECOND_BATCH = """
import torch


class Batches:
    def __init__(self, bad):
        self.bad = bad

    def __len__(self):
        return 3

    def __iter__(self):
        yield torch.randn(8, 8), torch.randint(0, 3, (8,))
        if self.bad:  # the checks read the first batch only: this one fails in training, inside the run folder
            yield torch.randn(8, 8), torch.full((8,), 99)
        yield torch.randn(8, 8), torch.randint(0, 3, (8,))
        yield torch.randn(8, 8), torch.randint(0, 3, (8,))


def make():
    return Batches(True), Batches(False)


def net():
    return torch.nn.Sequential(torch.nn.Linear(8, 3))
"""


def test_failed_prune_into_a_new_nested_folder_leaves_none_of_the_folders_it_made(tmp_path, monkeypatch):
    # -o new/a/b: a run that failed once training had begun removed b (and its .sparsekit) but left new/a and new.
    from click.testing import CliRunner

    from sparsekit.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "files26_bad_second_batch.py").write_text(BAD_SECOND_BATCH)
    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 3)).state_dict(), "weights.pt")
    (tmp_path / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 8]}\nfinetune: {epochs: 1}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot, layers: {include: ['*']}}\n"
    )
    res = CliRunner().invoke(
        main,
        ["prune", "weights.pt", "r.yaml", "-o", "new/a/b", "--data", "files26_bad_second_batch:make",
         "--arch", "files26_bad_second_batch:net"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "label 99" in res.output
    assert not (tmp_path / "new").exists()


def test_export_onnx_never_replaces_a_file_that_is_not_onnx(tmp_path):
    # export_onnx(model, "model.pt", ...): the checkpoint's path given for the file to write was replaced by the
    # ONNX graph without a word; a .onnx path (and a file sparsekit exported there) is replaced as before.
    model = torch.nn.Sequential(torch.nn.Linear(8, 3))
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(OutputError, match=r"model\.pt: exists and is not an \.onnx file"):
        sparsekit.export_onnx(model, ckpt, (1, 8), exporter="torchscript")
    assert ckpt.read_bytes() == before
    other = tmp_path / "model.bin"  # a name of the caller's choosing, new: written, and then sparsekit's own
    for _ in range(2):
        assert sparsekit.export_onnx(model, other, (1, 8), exporter="torchscript")["parity"]["ok"]
    (tmp_path / "m.onnx").write_bytes(b"old")
    sparsekit.export_onnx(model, tmp_path / "m.onnx", (1, 8), exporter="torchscript")
    assert (tmp_path / "m.onnx").stat().st_size > 3


def test_save_model_never_replaces_a_file_that_is_not_a_checkpoint(tmp_path):
    # save_model(model, "recipe.yaml", ...) (or onto an .onnx file) replaced the user's file with a checkpoint.
    model = torch.nn.Sequential(torch.nn.Linear(8, 3))
    for name, content in (("recipe.yaml", b"version: 1\n"), ("model.onnx", b"\x08\x07\x12\x07pytorch")):
        mine = tmp_path / name
        mine.write_bytes(content)
        with pytest.raises(OutputError, match=rf"{name}: exists and is not a torch checkpoint"):
            sparsekit.save_model(model, mine, factory="pkg.nets:build")
        assert mine.read_bytes() == content
    # A state_dict or a checkpoint there is the model's own file: saved over, as before.
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    for _ in range(2):
        sparsekit.save_model(model, ckpt, factory="pkg.nets:build")
    assert torch.load(ckpt, weights_only=True)["factory"] == "pkg.nets:build"


def test_report_help_says_report_json_is_rewritten_too(tmp_path):
    # `sparsekit report` rewrites report.json (its summary recomputed), as its own refusal says, but its help
    # promised only report.md and the plots.
    from click.testing import CliRunner

    from sparsekit.cli import main

    for args in (["report", "--help"], ["--help"]):
        out = CliRunner().invoke(main, args).output
        line = next(line for line in out.splitlines() if "Re-render" in line)
        assert "json" in line, line
