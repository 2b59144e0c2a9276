"""Files are data, a review of files read and written: a torch archive whose compressed members unpack to more
than the machine's free memory, a local module whose generated code Python's parser runs out of stack on, a run
folder's checkpoint whose provenance record is not a mapping or that finished a negative epoch, and its
allocation.json tampered with."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import FAST, assert_bad_input

import sparsekit
from sparsekit.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_torch_archive_that_unpacks_past_free_memory_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
    from examples.models import mlp

    torch.save(mlp().state_dict(), tmp_path / "plain.pt")
    bomb = tmp_path / "bomb.pt"  # torch reads deflated members too: 1,000x its size once unpacked
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
        z.writestr("plain/padding", bytes(8 << 20))
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr("sparsekit.modelio.available_memory", lambda: 4 << 20)  # stands for GiB against TiB
    assert_bad_input(run("inspect", bomb, "--arch", "examples.models:mlp"), "bomb.pt", "GiB once unpacked")
    monkeypatch.setattr("sparsekit.modelio.available_memory", lambda: 1 << 30)
    assert run("inspect", bomb, "--arch", "examples.models:mlp").exit_code == 0  # what fits is read as before


def test_a_local_module_the_parser_runs_out_of_stack_on_names_no_imports(tmp_path):
    from sparsekit.provenance import local_imports

    (tmp_path / "sk_nets8.py").write_text("import sk_helper8\n\n\ndef table():\n    import sk_table8\n")
    (tmp_path / "sk_helper8.py").write_text("import sk_table8\n")
    # generated code no one imports: ast.parse raised RecursionError, a prune run's provenance exited 1
    (tmp_path / "sk_table8.py").write_text("x = 1" + " + 1" * 300_000 + "\n")
    found = local_imports([str(tmp_path / "sk_nets8.py")])
    assert [Path(p).name for p in found] == ["sk_helper8.py", "sk_table8.py"]  # still hashed, as a file


def _resume_tampered(tmp_path, key, value):
    """A finished run whose checkpoint's ``key`` is set to ``value`` (its manifest updated to match), resumed."""
    from examples.models import mlp

    sparsekit.save_model(mlp(), tmp_path / "m.pt", "examples.models:mlp", input_shape=[1, 64])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {source: digits}\nfinetune: {epochs: 1, max_steps_per_epoch: 2}\n"
        "pruning: [{method: magnitude, sparsity: 0.5}]\nbenchmark: {enabled: false}\n"
    )
    arch, folder = ["--arch", "examples.models:mlp"], tmp_path / "out"
    assert run("prune", tmp_path / "m.pt", recipe, "-o", folder, *arch, *FAST).exit_code == 0
    path = folder / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    state[key] = value
    torch.save(state, path)
    data = path.read_bytes()  # as the author of a shared run folder would: the manifest agrees with the file
    manifest = json.loads((folder / ".sparsekit" / "manifest.json").read_text())
    manifest["files"]["checkpoints/last.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / ".sparsekit" / "manifest.json").write_text(json.dumps(manifest))
    return run("prune", tmp_path / "m.pt", recipe, "-o", folder, *arch, *FAST, "--resume",
               "--allow-change", "finetune.epochs", "--set", "finetune.epochs=2")  # fmt: skip


@pytest.mark.parametrize("record", [[1, 2], "abc", {"accepted": 5}])
def test_a_checkpoint_whose_provenance_record_is_not_a_mapping_is_refused_on_resume(tmp_path, record):
    result = _resume_tampered(tmp_path, "provenance", record)
    assert_bad_input(result, "last.pt", "provenance")  # exit 1: AttributeError / TypeError, unexpected failure
    assert not (tmp_path / "out" / ".sparsekit" / "next").exists()  # refused before the run began


def test_a_checkpoint_that_finished_a_negative_epoch_is_refused_on_resume(tmp_path):
    result = _resume_tampered(tmp_path, "epoch", -5)  # trained 7 epochs numbered -4 ... 2, and exited 0
    assert_bad_input(result, "last.pt", "does not fit", "finished epoch -5")


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    from examples.models import mlp

    tmp = tmp_path_factory.mktemp("auto")
    sparsekit.save_model(mlp(), tmp / "m.pt", "examples.models:mlp", input_shape=[1, 64])
    (tmp / "r.yaml").write_text(
        "data: {source: digits}\nfinetune: {epochs: 1, max_steps_per_epoch: 2}\n"
        "pruning: [{method: magnitude, sparsity: auto, target: 0.5}]\nbenchmark: {enabled: false}\n"
    )
    result = run("prune", tmp / "m.pt", tmp / "r.yaml", "-o", tmp / "base", "--arch", "examples.models:mlp", *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    return tmp


def _entry(allocation, key, value):
    allocation["pruning"][0][key] = value


@pytest.mark.parametrize(
    "tamper, needle",
    [
        (lambda a: a.update(pruning=[5]), "methods [None]"),
        (lambda a: a.update(pruning=a["pruning"] * 2), "methods ['magnitude', 'magnitude']"),
        (lambda a: _entry(a, "layer_sparsity", {"fc1": "x"}), "pruning.0.magnitude.layer_sparsity.fc1"),
        (lambda a: a.update(entries=[1]), "entries are not a mapping"),
        (lambda a: a.pop("entries"), "entries are not a mapping"),
        (lambda a: a["entries"]["0"].update(values={"fc1": "x"}), "notes on entry 0"),
    ],
)
def test_a_tampered_allocation_in_a_run_folder_is_refused_on_resume_naming_it(auto_run, tmp_path, tamper, needle):
    folder = tmp_path / "out"
    shutil.copytree(auto_run / "base", folder)
    path = folder / "allocation.json"
    allocation = json.loads(path.read_text())
    tamper(allocation)
    path.write_text(json.dumps(allocation))
    data = path.read_bytes()  # as the author of a shared run folder would: the manifest agrees with the file
    manifest = json.loads((folder / ".sparsekit" / "manifest.json").read_text())
    manifest["files"]["allocation.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / ".sparsekit" / "manifest.json").write_text(json.dumps(manifest))
    result = run("prune", auto_run / "m.pt", auto_run / "r.yaml", "-o", folder, "--arch", "examples.models:mlp",
                 *FAST, "--resume", "--allow-change", "finetune.epochs", "--set", "finetune.epochs=2")  # fmt: skip
    # a ValidationError, AttributeError, KeyError or a format code's ValueError exited 1; two entries for one were
    # blamed on the recipe
    assert_bad_input(result, "allocation.json: cannot reuse its per-layer values", needle)
