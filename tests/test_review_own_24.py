"""Own review, session 11: what a killed writer leaves is cleaned up without touching what the user had."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import torch_file_with_pickle
from torch import nn

import sparsekit
from sparsekit.outputs import RunFolder


def _age(path, seconds=3600):
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_an_export_killed_before_its_staging_mark_leaves_nothing_the_next_export_keeps(tmp_path):
    # SIGKILL between mkdtemp and writing the mark left `.m.onnx.XXXXXXXX.sparsekit.tmp/` empty and unmarked: no
    # later export removed it. An empty private one goes now; a user's of the same shape holding a file stays.
    killed = tmp_path / ".m.onnx.k1lled00.sparsekit.tmp"
    killed.mkdir(mode=0o700)
    _age(killed)
    mine = tmp_path / ".m.onnx.backup01.sparsekit.tmp"
    mine.mkdir(mode=0o700)
    (mine / "notes.txt").write_text("precious")
    _age(mine)
    shared = tmp_path / ".m.onnx.shared00.sparsekit.tmp"  # empty, but made under the usual umask: not mkdtemp's
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    _age(shared)
    sparsekit.export_onnx(nn.Sequential(nn.Linear(4, 3)), tmp_path / "m.onnx", input_shape=(1, 4))
    assert (tmp_path / "m.onnx").is_file()
    assert not killed.exists()
    assert (mine / "notes.txt").read_text() == "precious"
    assert shared.is_dir()


def _finished_run(out):
    done = RunFolder.prepare(out, inputs=[], overwrite=False, resume=False)
    (done.begin() / "model.onnx").write_bytes(b"onnx")
    done.publish()
    done.unlock()
    return out


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
def test_a_run_folder_with_an_empty_unmarked_staging_folder_is_not_refused(tmp_path, resume):
    # `.model.onnx.XXXXXXXX.sparsekit.tmp/`, empty and 0700, is what an export killed before its mark leaves beside
    # the run's model.onnx: --overwrite and --resume refused the folder as holding a file no run wrote.
    out = _finished_run(tmp_path / "out")
    killed = out / ".model.onnx.k1lled00.sparsekit.tmp"
    killed.mkdir(mode=0o700)
    run = RunFolder.prepare(out, inputs=[], overwrite=not resume, resume=resume)
    run.begin()
    run.unlock()
    assert not killed.exists()
    assert run.removed_temps == [".model.onnx.k1lled00.sparsekit.tmp"]


def test_a_users_private_folder_that_gains_a_file_is_never_removed_by_the_empty_folder_rule(tmp_path):
    # The empty-folder rule removes with rmdir: a folder holding anything is the user's and stays, reported.
    out = _finished_run(tmp_path / "out")
    mine = out / ".model.onnx.mybackup.sparsekit.tmp"
    mine.mkdir(mode=0o700)
    (mine / "x").write_text("mine")
    with pytest.raises(sparsekit.errors.OutputError, match=r"\.model\.onnx\.mybackup\.sparsekit\.tmp"):
        RunFolder.prepare(out, inputs=[], overwrite=True, resume=False).begin()
    assert (mine / "x").read_text() == "mine"


@pytest.mark.parametrize(
    "local",
    [
        "def helper():\n    from my_helpers import Thing as sp\n    return sp\n",
        "class Tool:\n    def run(self):\n        import my_helpers as sp\n        return sp\n",
        "async def fetch():\n    from my_helpers import Thing as sp\n    return sp\n",
    ],
    ids=["function", "method", "async"],
)
def test_an_import_inside_a_function_does_not_hide_what_the_module_binds(tmp_path, monkeypatch, local):
    # Function-level imports bind locals, never the module's attribute: `import subprocess as sp` at the top and
    # `from my_helpers import Thing as sp` inside a function made the screen judge `usermod:sp.getoutput` as the
    # harmless `my_helpers:Thing.getoutput`, and unpickling it (--trust-model-file) ran a shell command.
    _screen_refuses_sp_getoutput(tmp_path, monkeypatch, f"import subprocess as sp\n\n\n{local}")


def test_a_function_binding_a_global_by_import_is_judged_as_that_import(tmp_path, monkeypatch):
    # Only imports in the module's scope bind its attributes, but a function's import of a name it declares global
    # binds one when called (here at import time): `sp` is subprocess though no top-level line imports it.
    source = "def load():\n    global sp\n    import subprocess as sp\n\n\nload()\n"
    _screen_refuses_sp_getoutput(tmp_path, monkeypatch, source)


def _screen_refuses_sp_getoutput(tmp_path, monkeypatch, top):
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = f"usermod_own24_{abs(hash(top)) % 10_000}"
    (tmp_path / f"{module}.py").write_text(f"{top}\n\nclass Net:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    call = b"\x8c" + bytes([len(command)]) + command + b"\x85R."  # getoutput("touch CANARY")
    payload = b"\x80\x04c" + f"{module}\nsp.getoutput\n".encode() + call
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


def test_the_screen_reads_a_module_edited_since_it_last_judged_it(tmp_path, monkeypatch):
    # The parse of a user's module was cached by its name: in a long-lived process (a notebook, a service loading
    # files with trust), a module edited to import subprocess as sp was still judged by its old harmless text.
    from sparsekit.modelio import _users_own_name

    module = "usermod_own24_edited"
    source = tmp_path / f"{module}.py"
    source.write_text("from my_helpers import Thing as sp\n\n\nclass Net:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert _users_own_name(module, "sp.getoutput")  # my_helpers: the user's own, not imported to judge it
    stamp = source.stat().st_mtime_ns
    source.write_text("import subprocess as sp\n\n\nclass Net:\n    pass\n")
    os.utime(source, ns=(stamp + 10**9, stamp + 10**9))
    assert not _users_own_name(module, "sp.getoutput")
    assert _users_own_name(module, "Net")


@pytest.fixture
def denied_names_cache(tmp_path, monkeypatch):
    from sparsekit import trust

    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "cache"))
    caches = (trust._denied_distributions, trust._denied_import_names, trust._denied_files)
    for cache in caches:
        cache.cache_clear()
    yield tmp_path / "cache" / "denied-import-names.json"
    for cache in caches:
        cache.cache_clear()


def _plugin_dist(site, top):
    # an installed pytest plugin (test tooling: denied), as pip lays it out
    (site / top).mkdir()
    (site / top / "__init__.py").write_text("")
    info = site / f"pytest_{top}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pytest-{top}\nVersion: 0.1\n")
    (info / "top_level.txt").write_text(f"{top}\n")
    (info / "RECORD").write_text(f"{top}/__init__.py,,\n")
    (info / "entry_points.txt").write_text(f"[pytest11]\n{top} = {top}\n")


def test_the_denied_import_names_are_read_from_the_cache_while_nothing_is_installed_or_removed(
    tmp_path, monkeypatch, denied_names_cache
):
    # Reading every installed distribution's metadata took ~0.16 s of CPU on each run naming an architecture.
    import importlib.metadata

    from sparsekit import trust

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    first = trust._denied_import_names()
    assert "onnx" in first and "click" in first and denied_names_cache.is_file()
    trust._denied_import_names.cache_clear()
    trust._denied_distributions.cache_clear()

    def no_scan(**_kwargs):
        raise AssertionError("the installed distributions were read again")

    with monkeypatch.context() as patched:
        patched.setattr(importlib.metadata, "distributions", no_scan)
        assert trust._denied_import_names() == first  # a new process: read from the cache
    # A tool installed since (a new dist-info in a folder on the path) is denied at once: the cache is not used.
    _plugin_dist(site, "own24tool")
    trust._denied_import_names.cache_clear()
    trust._denied_distributions.cache_clear()
    assert trust.installed_with_sparsekit("own24tool")
    assert not trust.installed_with_sparsekit("own24_never_installed")


def test_a_damaged_denied_names_cache_is_read_as_none(denied_names_cache):
    from sparsekit import trust

    denied_names_cache.parent.mkdir(parents=True)
    for text in ("{", '{"key": 1, "names": ["x"]}', "[]", '{"key": null, "names": [1]}'):
        denied_names_cache.write_text(text)
        trust._denied_import_names.cache_clear()
        assert "onnx" in trust._denied_import_names()
    key = trust._install_state()
    denied_names_cache.write_text(json.dumps({"key": key, "names": [1, 2]}))
    assert trust._read_names_cache(key) is None


def test_the_folder_a_linked_module_file_is_imported_from_is_found_through_the_link(tmp_path, monkeypatch):
    # _import_root resolves only the module files that can be this one (same name, or a link): a module imported as
    # pkg24.nets from a link to real/impl.py is still found, and the root is the folder above pkg24.
    from sparsekit.provenance import _import_root

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "impl.py").write_text("X = 1\n")
    (tmp_path / "pkg24").mkdir()
    (tmp_path / "pkg24" / "__init__.py").write_text("")
    (tmp_path / "pkg24" / "nets.py").symlink_to(tmp_path / "real" / "impl.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("pkg24", "pkg24.nets"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    __import__("pkg24.nets")
    assert _import_root(str(tmp_path / "real" / "impl.py")) == tmp_path.resolve()
    assert _import_root(str(tmp_path / "pkg24" / "__init__.py")) == tmp_path.resolve()
    assert _import_root(str(tmp_path / "real" / "other.py")) == (tmp_path / "real").resolve()  # no module: its folder


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_max_norm_holds_its_bound_on_half_precision_weights(dtype):
    # The scale was rounded to the weights' dtype and each product rounded again: bf16 rows ended at 0.5011 for a
    # max_value of 0.5, and the report's "norm <= max_value" was false.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).to(dtype)
    recipe = {"pruning": [{"method": "max_norm", "max_value": 0.5}], "finetune": {"epochs": 1}}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=20, context={"input_shape": [1, 64]})
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # (Adam's eps underflows in float16: NaN weights)
    norms = []
    for _ in range(20):
        loss = -model(torch.randn(16, 64, dtype=dtype).abs()).float().mean()  # pushes weights outward, to the bound
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
        norms += [float(layer.weight.float().norm(dim=1).max()) for layer in (model[0], model[2])]
    assert all(0.49 < n <= 0.5 for n in norms[-4:]), norms[-4:]
    assert max(norms) <= 0.5, max(norms)


def test_a_label_past_the_models_outputs_found_in_training_names_the_data_source(tmp_path, monkeypatch):
    # prune found it in the first training batch and said only "data: label 19 is outside the model's 10 outputs":
    # neither the source nor who named it (the data option, or the recipe file's data.source).
    (tmp_path / "own24data.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n\n\ndef bad():\n"
        "    ds = TensorDataset(torch.randn(32, 64), torch.randint(11, 20, (32,)))\n"
        "    return DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=16)\n"
    )
    (tmp_path / "own24lin.py").write_text("from torch import nn\n\n\ndef build():\n    return nn.Linear(64, 10)\n")
    (tmp_path / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: 'own24data:bad'}\nfinetune: {epochs: 1}\n"
        "benchmark: {enabled: false}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEKIT_CONFIG_DIR", str(tmp_path / "cfg"))
    for name in ("own24data", "own24lin"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    torch.save(nn.Linear(64, 10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(sparsekit.DataError) as given:
        sparsekit.run_prune("w.pt", "r.yaml", "out1", arch="own24lin:build", data="own24data:bad", progress=False)
    assert str(given.value).startswith("data='own24data:bad': label 1"), str(given.value)
    assert "outside the model's 10 outputs" in str(given.value)
    with pytest.raises(sparsekit.DataError) as named:
        sparsekit.run_prune("w.pt", "r.yaml", "out2", arch="own24lin:build", trust_code=True, progress=False)
    assert str(named.value).startswith("r.yaml: data.source 'own24data:bad': label 1"), str(named.value)


def test_inspecting_an_onnx_file_imports_no_torch(tmp_path):
    # An .onnx file is read as data, but inspect imported torch (~1.5-3.6 s) for three metadata key names that lived
    # in sparsekit.onnx.export.
    import subprocess
    import textwrap
    from pathlib import Path

    sparsekit.export_onnx(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), tmp_path / "m.onnx", (1, 4))
    code = textwrap.dedent(f"""
        import sys
        from sparsekit.cli import main
        try:
            main(["inspect", {str(tmp_path / "m.onnx")!r}])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        print("TORCH=" + str("torch" in sys.modules), file=sys.stderr)
    """)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH=False" in proc.stderr, proc.stderr
    assert "Gemm" in proc.stdout


def test_a_gradient_entry_whose_every_gradient_overflowed_says_so_at_finalize():
    # GradScaler skips an optimizer step whose gradients hold inf; when it skipped every one, finalize said "got no
    # gradients ... call loss.backward() before pruner.step()" to a loop that did exactly that.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    recipe = {
        "pruning": [{"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "schedule": "oneshot"}],
        "finetune": {"epochs": 1},
    }
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4, context={"input_shape": [1, 8]})
    for _ in range(4):
        model(torch.randn(4, 8)).sum().backward()
        for p in model.parameters():
            p.grad.fill_(float("inf"))  # what an fp16 overflow leaves; GradScaler then skips optimizer.step()
        pruner.step()
        model.zero_grad()
    with pytest.raises(sparsekit.errors.TargetError, match=r"held inf or NaN .* GradScaler") as err:
        pruner.finalize()
    assert "call loss.backward()" not in str(err.value)


@pytest.mark.parametrize("where", [b"PK\x01\x02", b"PK\x03\x04"], ids=["central", "local"])
def test_a_checkpoint_whose_zip_version_field_is_damaged_is_bad_input(tmp_path, where):
    # zipfile raises NotImplementedError ("zip file version 12.8") for a version field past what it reads, as one
    # flipped byte makes: inspect exited 1, "unexpected failure" (test_bad_inputs' hypothesis run found it at random).
    from click.testing import CliRunner

    from sparsekit.cli import main

    good = tmp_path / "ok.pt"
    torch.save(nn.Linear(4, 3).state_dict(), good)
    data = bytearray(good.read_bytes())
    at = data.index(where)
    data[at + (6 if where == b"PK\x01\x02" else 4)] = 0x80
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 2, result.output
    assert "unexpected failure" not in result.output and "Error:" in result.output


def test_an_older_versions_temp_files_inside_dot_sparsekit_are_still_removed(tmp_path):
    # Temps were named with tempfile's plain ".tmp" before ".sparsekit.tmp": what a killed run of an older version
    # left inside .sparsekit (sparsekit's own folder) was never removed after the change; beside the outputs such a
    # name is the user's, reported and kept.
    import tempfile

    out = _finished_run(tmp_path / "out")
    old_stage = out / ".sparsekit" / "next"
    old_stage.mkdir()
    (old_stage / "checkpoints").mkdir()
    left = [
        Path(tempfile.mkstemp(prefix=".last.pt.", suffix=".tmp", dir=old_stage / "checkpoints")[1]),
        Path(tempfile.mkdtemp(prefix=".next.", suffix=".tmp", dir=out / ".sparsekit")),
    ]
    run = RunFolder.prepare(out, inputs=[], overwrite=True, resume=False)
    run.begin()
    run.unlock()
    assert not any(p.exists() for p in left)
    beside = Path(tempfile.mkstemp(prefix=".model.onnx.", suffix=".tmp", dir=out)[1])
    with pytest.raises(sparsekit.errors.OutputError, match=re.escape(beside.name)):
        RunFolder.prepare(out, inputs=[], overwrite=True, resume=False).begin()
    assert beside.exists()


def test_the_denied_import_names_are_those_packages_distributions_gives_the_denied_distributions(denied_names_cache):
    # The names are read in one pass over the denied distributions' own top_level.txt / RECORD (importlib.metadata's
    # packages_distributions() read every distribution's file list, ~4x the time): the same names, on this install.
    import importlib.metadata

    from sparsekit import trust

    denied = set(trust._denied_distributions())
    assert {"onnx", "numpy", "pytest", "click"} <= denied
    expected = {
        name
        for name, owners in importlib.metadata.packages_distributions().items()
        if any(trust._norm(owner) in denied for owner in owners)
    } | {"torch"}
    assert trust._denied_import_names() == expected
    assert trust._record_top_names('pkg/a.py,sha256=x,1\n"odd,name.py",,\nsix.py,,\npkg/data.bin,,\n') == {
        "pkg",
        "six",
        "odd,name",
    }
