"""Review of this session's changes (diffreview): each test fails on the code before its fix."""

from __future__ import annotations

import sys

import pytest


@pytest.mark.parametrize(
    "source",
    [
        # a class body's `global` binds the module's attribute while the module is imported
        "class _Load:\n    global sp\n    import subprocess as sp\n",
        # assignments in the module's if/try blocks run at import time as the top level's do
        "import subprocess\nif True:\n    sp = subprocess\n",
        "import subprocess\ntry:\n    sp = subprocess\nexcept ImportError:\n    pass\n",
        # a function that assigns a name it declares global, called at import time
        "import subprocess\n\n\ndef load():\n    global sp\n    sp = subprocess\n\n\nload()\n",
        "import subprocess\n(sp := subprocess)\n",
        "import subprocess\nfor sp in (subprocess,):\n    pass\n",
        "import contextlib\nimport subprocess\nwith contextlib.nullcontext(subprocess) as sp:\n    pass\n",
        "import subprocess\n[sp] = [subprocess]\n",
        "import subprocess\nsp = getattr(subprocess, 'getoutput')\n",
        # a class body's import inside an if block, aliased at the top level
        "class Tools:\n    if True:\n        import subprocess as sp\n\n\nsp = Tools.sp\n",
        # two branches binding one name two ways: which one ran is not known from the source
        "import subprocess as sp\nif False:\n    from own24_helpers import Thing as sp\n",
    ],
    ids=[
        "class-global",
        "if",
        "try",
        "function-global",
        "walrus",
        "for",
        "with",
        "unpack",
        "getattr",
        "class-if",
        "two",
    ],
)
def test_the_trust_screen_follows_every_binding_the_module_scope_runs(tmp_path, monkeypatch, source):
    # The screen's module-scope walk (imports only, the top level's assignments only) missed these, and judged
    # `usermod:sp.getoutput` by its names alone: allowed, so unpickling it under --trust-model-file ran a command.
    from sparsekit.modelio import _users_own_name

    module = f"usermod_diffreview24_{abs(hash(source)) % 100_000}"
    (tmp_path / f"{module}.py").write_text(f"{source}\n\nclass Net:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert not _users_own_name(module, "sp.getoutput")
    assert _users_own_name(module, "Net")  # the module's own class stays allowed


@pytest.fixture
def names_cache(tmp_path, monkeypatch):
    from sparsekit import trust

    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "cache"))
    caches = (trust._denied_distributions, trust._denied_import_names, trust._denied_files)
    for cache in caches:
        cache.cache_clear()
    yield tmp_path / "cache" / "denied-import-names.json"
    for cache in caches:
        cache.cache_clear()


@pytest.mark.parametrize("entry", [b"/nonexistent/diffreview24", 24])
def test_an_odd_sys_path_entry_does_not_stop_the_denied_names(monkeypatch, names_cache, entry):
    # The cache key scanned every sys.path entry as a folder: a bytes entry (which Python's import system skips) gave
    # bytes names, and `.endswith(".dist-info")` raised TypeError out of every trusted load naming an architecture.
    from sparsekit import trust

    monkeypatch.setattr(sys, "path", [*sys.path, entry])
    key = trust._install_state()
    assert repr(entry) in key
    assert "torch" in trust._denied_import_names()


@pytest.mark.parametrize("group", [None, "row"])
@pytest.mark.parametrize("had_grad", [True, False])
def test_regularize_leaves_plain_gradients_outside_autograd(group, had_grad):
    # Adding adds_penalty() between @torch.no_grad() and add_penalty_grad moved the decorator: the in-place penalty
    # gradient (lambda * sign(w), lambda * w / ||w||) was built by autograd, so every weight's .grad became a
    # tensor requiring grad with a graph (MulBackward0, AddBackward0) behind it after each pruner.regularize().
    import torch
    from torch import nn

    import sparsekit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))
    entry = {"method": "l1", "mode": "penalty", "strength": 1e-3, "remove_dead": False, "proximal_every": 1}
    if group:
        entry["group"] = group
    recipe = sparsekit.Recipe(finetune={"epochs": 2}, pruning=[entry], model={"input_shape": [1, 12]})
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if had_grad else None
    pruner.regularize()
    grad = model[0].weight.grad  # (the output layer is the head l1's rows leave alone)
    assert grad is not None and float(grad.abs().sum()) > 0  # the penalty's gradient was added
    assert not grad.requires_grad and grad.grad_fn is None


def test_max_norm_on_a_channels_last_model_copies_no_weight_to_learn_it_cannot_fuse(monkeypatch):
    # _NormBuffer.build runs at every pruner.step() while it has built no buffer; on a channels_last model it copied
    # every conv weight (flatten(1)) before finding the copies no views, ~45% of the step's norm check, then the plain
    # path computed the norms again.
    import torch
    from torch import nn

    import sparsekit
    from sparsekit.methods.max_norm import _NormBuffer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(32, 4))
    model = model.to(memory_format=torch.channels_last)
    recipe = sparsekit.Recipe(
        finetune={"epochs": 1}, pruning=[{"method": "max_norm", "max_value": 0.3}], model={"input_shape": [1, 3, 6, 6]}
    )
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
    flattened = []
    real = torch.Tensor.flatten

    def counting(self, *args, **kwargs):
        flattened.append(self.shape)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "flatten", counting)
    assert _NormBuffer.build(pruner.methods[0]._layout) is None
    assert flattened == []
    monkeypatch.undo()
    # and the bound still holds on it (the plain path)
    with torch.no_grad():
        model[0].weight.mul_(10)
    pruner.step()
    assert float(model[0].weight.flatten(1).norm(dim=1).max()) <= 0.3 + 1e-6


def test_a_gradient_entry_whose_gradients_were_zeroed_is_told_so_though_one_step_overflowed():
    # The overflow message ("held inf or NaN ... start GradScaler at a lower init_scale") was given whenever any
    # scored step had overflowed; an fp16 loop's first step usually does, so a loop zeroing its gradients before
    # pruner.step() (the real fault here) was told to lower GradScaler's init_scale instead.
    import torch
    from torch import nn

    import sparsekit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    recipe = {
        "pruning": [{"method": "gradient", "criterion": "taylor", "sparsity": 0.5, "schedule": "oneshot"}],
        "finetune": {"epochs": 1},
    }
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4, context={"input_shape": [1, 8]})
    for step in range(4):
        model(torch.randn(4, 8)).sum().backward()
        for p in model.parameters():
            p.grad.fill_(float("inf")) if step == 0 else p.grad.zero_()  # then zero_grad() before pruner.step()
        pruner.step()
        model.zero_grad()
    with pytest.raises(sparsekit.errors.TargetError, match=r"optimizer\.zero_grad\(\) after it") as err:
        pruner.finalize()
    assert "init_scale" not in str(err.value)


@pytest.mark.parametrize(
    "source",
    [
        "from subprocess import *\n\nif False:\n    def getoutput(cmd):\n        return cmd\n",
        "def getoutput(cmd):\n    return cmd\n\n\nfrom subprocess import *\n",
    ],
    ids=["conditional-def", "def-before-star"],
)
def test_a_definition_a_star_import_may_override_is_judged_as_the_star_modules(tmp_path, monkeypatch, source):
    # `own` (names the module defines itself, trusted over what `from subprocess import *` binds) took every def:
    # one in an if block that may not run, or one above the star import that replaces it, let
    # `usermod:getoutput` pass as the user's own function while the module's attribute is subprocess.getoutput.
    from sparsekit.modelio import _users_own_name

    module = f"usermod_diffreview24_star_{abs(hash(source)) % 100_000}"
    (tmp_path / f"{module}.py").write_text(f"{source}\n\nclass Net:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert not _users_own_name(module, "getoutput")
    assert _users_own_name(module, "Net")  # defined below the star import: the module's own


def test_one_distribution_with_unreadable_metadata_does_not_empty_the_denied_names(tmp_path, monkeypatch, names_cache):
    # importlib.metadata.packages_distributions() raised UnicodeDecodeError for one package's top_level.txt not in
    # UTF-8, and the denied import names fell back to {"torch"}: onnx, yaml, pytest ... then passed as the user's code.
    from sparsekit import trust

    site = tmp_path / "site"
    (site / "latin24").mkdir(parents=True)
    (site / "latin24" / "__init__.py").write_text("")
    info = site / "latin24-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: latin24\nVersion: 0.1\n")
    (info / "top_level.txt").write_bytes(b"latin24\n\xe9t\xe9\n")
    (info / "RECORD").write_text("latin24/__init__.py,,\n")
    monkeypatch.syspath_prepend(str(site))
    names = trust._denied_import_names()
    assert {"onnx", "yaml", "click", "_pytest"} <= names
    assert trust.installed_with_sparsekit("onnxruntime")
    assert not trust.installed_with_sparsekit("latin24")


def test_a_denied_distribution_with_an_unreadable_file_list_does_not_stop_a_load(tmp_path, monkeypatch, names_cache):
    # _denied_files caught only PackageNotFoundError: a tool package (a pytest plugin) whose RECORD is not UTF-8 raised
    # UnicodeDecodeError out of the check of every module file under site-packages (--arch from an installed package).
    import yaml

    from sparsekit import trust

    site = tmp_path / "site"
    (site / "latin24r").mkdir(parents=True)
    (site / "latin24r" / "__init__.py").write_text("")
    info = site / "pytest_latin24r-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-latin24r\nVersion: 0.1\n")
    (info / "top_level.txt").write_text("latin24r\n")
    (info / "entry_points.txt").write_text("[pytest11]\nlatin24r = latin24r\n")
    (info / "RECORD").write_bytes(b"latin24r/__init__.py,,\nlatin24r/\xe9t\xe9.py,,\n")
    monkeypatch.syspath_prepend(str(site))
    assert trust.installed_with_sparsekit("latin24r")  # its import names are denied all the same
    assert "installed by sparsekit" in (trust._denied_file(yaml.__file__) or "")
