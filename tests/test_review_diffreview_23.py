"""Review of this session's changes (review 23, diffreview): faults found by reading the diff, each pinned here."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import torch_file_with_pickle


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("import subprocess\nsp = subprocess", "sp.getoutput"),
        ("import subprocess\ngather = subprocess.getoutput", "gather"),
        ("from subprocess import getoutput\ngather = getoutput", "gather"),
        ("import importlib\nsp = importlib.import_module('subprocess')", "sp.getoutput"),
        ("import subprocess\nsp, x = subprocess, 1", "sp.getoutput"),
        ("import subprocess\n\n\nclass Tools:\n    gather = subprocess.getoutput", "Tools.gather"),
        ("class Tools:\n    import subprocess as sp", "Tools.sp.getoutput"),
        ("class Tools:\n    from subprocess import getoutput", "Tools.getoutput"),
    ],
)
def test_a_trusted_pickle_reaching_a_function_through_an_alias_in_the_users_module_is_refused(
    tmp_path, monkeypatch, source, name
):
    # The screen read the user's module's imports (`import subprocess as sp`) but not an assignment aliasing one
    # (`sp = subprocess`, `gather = subprocess.getoutput`): `usermod:sp.getoutput` passed as the user's own code and
    # unpickling it ran a shell command.
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = f"usermod_dr23_{abs(hash(source)) % 100_000}"
    (tmp_path / f"{module}.py").write_text(f"{source}\n\n\nclass Net:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    payload = b"\x80\x04c" + f"{module}\n{name}\n".encode() + b"\x8c" + bytes([len(command)]) + command + b"\x85R."
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


def test_aliases_of_the_users_own_classes_still_pass(tmp_path, monkeypatch):
    from sparsekit.modelio import _users_own_name

    module = "usermod_dr23_own"
    (tmp_path / "layers_dr23.py").write_text("class Block:\n    pass\n")
    (tmp_path / f"{module}.py").write_text(
        "import subprocess\nfrom layers_dr23 import Block\nAlias = Block\n\n\nclass Net:\n    pass\n\n\nOther = Net\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert _users_own_name(module, "Net")
    assert _users_own_name(module, "Alias")
    assert _users_own_name(module, "Other")


@pytest.fixture
def fresh_denied_lists():
    from sparsekit import trust

    caches = (trust._denied_distributions, trust._denied_import_names, trust._denied_files)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def _installed(site, dist: str, top: str, plugin: bool) -> None:
    (site / top).mkdir()
    (site / top / "__init__.py").write_text("")
    (site / top / "models.py").write_text("def net():\n    pass\n")
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "top_level.txt").write_text(f"{top}\n")
    (info / "RECORD").write_text(f"{top}/__init__.py,,\n{top}/models.py,,\n")
    if plugin:
        (info / "entry_points.txt").write_text(f"[pytest11]\n{top} = {top}.models\n")


def test_a_model_package_that_registers_a_pytest_plugin_is_not_a_tool_package(
    tmp_path, monkeypatch, fresh_denied_lists
):
    # Every distribution with a pytest11 entry point was denied, with all it depends on: a lab's own model package
    # sharing its fixtures with its tests was refused ("belongs to sparsekit, its dependencies or a tool package").
    from sparsekit.trust import installed_with_sparsekit

    site = tmp_path / "site"
    site.mkdir()
    _installed(site, "mylab-dr23", "mylab_dr23", plugin=True)
    _installed(site, "pytest-dr23", "pytest_dr23_plugin", plugin=True)
    monkeypatch.syspath_prepend(str(site))
    assert not installed_with_sparsekit("mylab_dr23")
    assert installed_with_sparsekit("pytest_dr23_plugin")  # a pytest plugin proper is still test tooling


@pytest.mark.parametrize("call", ["export_onnx", "save_model"])
def test_a_lazy_layer_holding_only_buffers_is_refused_naming_it(tmp_path, call):
    # The lazy-layer check looked at parameters only: a LazyBatchNorm1d(affine=False), whose running_mean and
    # running_var are uninitialized buffers, failed deep inside with torch's "Attempted to use an uninitialized
    # parameter in <method 'detach' ...>".
    from torch import nn

    import sparsekit

    model = nn.Sequential(nn.Linear(4, 4), nn.LazyBatchNorm1d(affine=False), nn.Linear(4, 3))
    calls = {
        "export_onnx": lambda: sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 4)),
        "save_model": lambda: sparsekit.save_model(model, tmp_path / "m.pt", factory="pkg.mod:build"),
    }
    with pytest.raises(
        sparsekit.SparsekitError, match=rf"^{call}\(model=...\): layer '1' \(LazyBatchNorm1d\).*running"
    ):
        calls[call]()
    assert not any(tmp_path.iterdir())


def test_the_callers_gpu_generators_are_put_back_too(monkeypatch):
    # run_prune, plan and run_sensitivity put the caller's generators back (keeps_caller_generators), but only
    # torch's CPU one: torch.manual_seed reseeds every GPU's, so a sweep's CUDA draws repeated after each call.
    # (No GPU here: torch.cuda's state calls are stood in for.)
    from sparsekit.fsutil import keeps_caller_generators

    states = {"now": ["callers"]}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states["now"]))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: states.__setitem__("now", list(new)))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: states.__setitem__("now", [f"seeded {seed}"]))

    @keeps_caller_generators(torch=True)
    def run() -> None:
        torch.manual_seed(7)

    before = torch.get_rng_state()
    run()
    assert states["now"] == ["callers"]
    assert torch.equal(torch.get_rng_state(), before)


def test_a_group_lasso_built_again_on_the_first_batch_warns_once(tmp_path):
    # A Pruner without an input shape builds a group lasso entry twice (again on the first batch): every warning of
    # the first build came again from inside the first forward pass, the second attributed to torch's module.py.
    import warnings

    from torch import nn

    import sparsekit

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 8, 3)),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    recipe = {
        "version": 1,
        "data": {"source": "digits"},
        "finetune": {"epochs": 2},
        "pruning": [
            {
                "method": "l1",
                "group": "channel",
                "strength": 0.01,
                "remove_dead": True,
                "layers": {"types": ["Conv2d"]},
                "schedule": {"start_epoch": 0, "end_epoch": 2},
            }
        ],
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=4)
        model(torch.randn(2, 1, 8, 8))
    left_out = [w for w in caught if "is left out, not pruned" in str(w.message)]
    assert len(left_out) == 1, [str(w.message) for w in caught]
    assert left_out[0].filename == __file__
    assert pruner.methods[0].input_shape == [1, 1, 8, 8]  # (built again, on the first batch's shape)


def test_load_model_of_half_weights_warns_of_the_model_it_returns_not_of_a_run(tmp_path, monkeypatch):
    # load_model now passes the read's notes on as warnings, but the float16 one spoke of a prune run: "the run trains
    # in float32 and writes model.pt in float32 (larger than your file)", where load_model runs nothing and writes
    # nothing.
    import sparsekit

    (tmp_path / "mods_dr23.py").write_text("from torch import nn\n\n\ndef net():\n    return nn.Linear(4, 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mods_dr23", raising=False)
    torch.save({k: v.half() for k, v in torch.nn.Linear(4, 3).state_dict().items()}, tmp_path / "h.pt")
    with pytest.warns(UserWarning, match="float16") as caught:
        model = sparsekit.load_model(tmp_path / "h.pt", arch="mods_dr23:net")
    note = next(str(w.message) for w in caught if "float16" in str(w.message))
    assert "the run" not in note and "model.pt" not in note, note
    assert "the model returned is float32" in note and "model.to(torch.float16)" in note
    assert model.weight.dtype == torch.float32
