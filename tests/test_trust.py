"""Files are data: code a recipe or checkpoint names runs only when the user confirms it, never when it
is standard-library or tool machinery, and no file in the working folder shadows a dependency.

Every hostile case checks a canary file that the named code would create: it must never appear."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.data import load_data
from sparsekit.errors import DataError, TrustError
from sparsekit.trust import forget_module, load_callable, store_path, trust_module, trusted_modules

ROOT = Path(__file__).resolve().parent.parent


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), f"hostile code ran: {path} was created"


@pytest.fixture
def weights(tmp_path):
    """A plain state_dict of examples.models:mlp (the architecture is then named by a file or --arch)."""
    from examples.models import mlp

    path = tmp_path / "weights.pt"
    torch.save(mlp(in_features=64, hidden=[16]).state_dict(), path)
    return path


def recipe_file(tmp_path: Path, model: dict, data: str = "digits", name: str = "r.yaml") -> Path:
    doc = {
        "version": 1,
        "model": {"input_shape": [1, 64], **model},
        "data": {"source": data},
        "finetune": {"epochs": 1, "max_steps_per_epoch": 2},
        "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"exclude": ["fc2"]}}],
        "export": {"exporter": "torchscript"},
        "benchmark": {"enabled": False},
    }
    path = tmp_path / name
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def hostile_calls(canary: Path) -> list[tuple[str, dict]]:
    """Callables that would start a process, delete or write files, import or unpickle: each one, if
    called with these arguments, creates (or proves by its effect) the canary."""
    touch = ["touch", str(canary)]
    return [
        ("subprocess:run", {"args": touch}),
        ("subprocess:Popen", {"args": touch}),
        ("subprocess:check_call", {"args": touch}),
        ("os:system", {"command": f"touch {canary}"}),
        ("posix:system", {"command": f"touch {canary}"}),
        ("builtins:exec", {"source": f"open({str(canary)!r}, 'w')"}),
        ("builtins:eval", {"source": f"open({str(canary)!r}, 'w')"}),
        ("runpy:run_path", {"path_name": str(canary)}),
        ("importlib:import_module", {"name": "antigravity"}),
        ("pathlib:Path.touch", {"self": str(canary)}),
        ("shutil:copyfile", {"src": __file__, "dst": str(canary)}),
        ("pickle:loads", {"data": "x"}),
        ("pty:spawn", {"argv": touch}),
        ("torch:load", {"f": str(canary)}),
        ("torch.hub:load", {"repo_or_dir": str(canary), "model": "x"}),
        ("torch.utils.cpp_extension:load_inline", {"name": "x", "cpp_sources": ""}),
        ("numpy:save", {"file": str(canary), "arr": [1]}),
        ("pip._internal.cli.main:main", {"args": ["--version"]}),
        ("yaml:unsafe_load", {"stream": "x"}),
    ]


# --- recipes that name code ----------------------------------------------------------------------


@pytest.mark.parametrize("trust_flag", [[], ["--trust-code"]], ids=["untrusted", "trust-code"])
def test_recipe_naming_machinery_never_runs_it(tmp_path, weights, canary, trust_flag):
    for i, (spec, kwargs) in enumerate(hostile_calls(canary)):
        recipe = recipe_file(tmp_path, {"factory": spec, "kwargs": kwargs}, name=f"r{i}.yaml")
        assert_bad_input(run("validate", recipe, weights, *trust_flag), spec)
        assert_bad_input(run("prune", weights, recipe, "-o", tmp_path / f"o{i}", *trust_flag), spec)
        assert not (tmp_path / f"o{i}").exists()
        # As a data source too.
        recipe = recipe_file(tmp_path, {}, data=spec, name=f"d{i}.yaml")
        assert_bad_input(
            run("prune", weights, recipe, "--arch", "examples.models:mlp", "-o", tmp_path / f"p{i}", *trust_flag)
        )
    assert trusted_modules() == []  # none of them was remembered either


def test_validate_without_model_imports_nothing_the_recipe_names(tmp_path, canary, monkeypatch):
    (tmp_path / "sk_named_mod.py").write_text(f"open({str(canary)!r}, 'w').close()\ndef build():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, {"factory": "sk_named_mod:build"}, data="sk_named_mod:build")
    result = run("validate", recipe, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["names_code"] == {"model.factory": "sk_named_mod:build", "data.source": "sk_named_mod:build"}
    assert "sk_named_mod" not in sys.modules


def test_a_user_module_named_in_a_recipe_runs_only_when_confirmed(tmp_path, weights, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "sk_user_arch.py").write_text(
        textwrap.dedent(f"""
        open({str(marker)!r}, "w").close()
        from examples.models import mlp

        def build(**kw):
            return mlp(**kw)
        """)
    )
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, {"factory": "sk_user_arch:build", "kwargs": {"in_features": 64, "hidden": [16]}})
    line = assert_bad_input(
        run("validate", recipe, weights), str(recipe), "sk_user_arch:build", "--arch", "--trust-code"
    )
    assert "model.factory" in line
    assert not marker.exists() and "sk_user_arch" not in sys.modules  # not even imported
    # Named on the command line this run: confirmed, not remembered.
    assert run("validate", recipe, weights, "--arch", "sk_user_arch:build").exit_code == 0
    assert marker.exists() and trusted_modules() == []
    # --trust-code: runs and is remembered for later runs.
    result = run("validate", recipe, weights, "--trust-code")
    assert result.exit_code == 0, result.stderr
    assert trusted_modules() == ["sk_user_arch"]
    pinned = str((tmp_path / "sk_user_arch.py").resolve())
    assert json.loads(store_path().read_text())["modules"] == {"sk_user_arch": pinned}  # the file, not the name
    assert run("validate", recipe, weights).exit_code == 0
    listed = run("trust", "--json")
    assert json.loads(listed.stdout)["modules"] == ["sk_user_arch"]
    assert run("trust", "--forget", "sk_user_arch").exit_code == 0
    assert_bad_input(run("validate", recipe, weights), "sk_user_arch:build")


def test_trust_command_refuses_machinery(tmp_path, monkeypatch):
    for module in ("os", "subprocess", "importlib", "torch.hub", "pip", "sparsekit.trust", "numpy"):
        assert_bad_input(run("trust", module), module, "never trusted")
    assert_bad_input(run("trust", "not a module"), "not a module name")
    monkeypatch.chdir(tmp_path)
    # (a package name no other test imports: one in sys.modules is found there)
    assert_bad_input(run("trust", "sk_trustpkg.nets"), "sk_trustpkg.nets: not found from here")  # nothing to pin
    (tmp_path / "sk_trustpkg").mkdir()
    (tmp_path / "sk_trustpkg" / "__init__.py").write_text("")
    (tmp_path / "sk_trustpkg" / "nets.py").write_text("")
    assert run("trust", "sk_trustpkg.nets").exit_code == 0
    assert trusted_modules() == ["sk_trustpkg.nets"]
    assert forget_module("sk_trustpkg.nets") and not forget_module("sk_trustpkg.nets")
    # --forget with no module listed the trusted modules and exited 0, forgetting none
    result = run("trust", "--forget")
    assert result.exit_code == 2 and "--forget needs the modules" in result.output


def test_a_trusted_module_name_found_in_another_folder_is_not_trusted(tmp_path, monkeypatch, weights, canary):
    # Trust was kept by name: a downloaded folder holding a hostile mynets.py and a checkpoint naming mynets:build
    # ran it without a word, because the user once trusted their own mynets.
    mine, downloaded = tmp_path / "mine", tmp_path / "downloaded"
    mine.mkdir()
    downloaded.mkdir()
    factory = "from examples.models import mlp\n\ndef build(**kw):\n    return mlp(**kw)\n"
    (mine / "sk_mynets.py").write_text(factory)
    (downloaded / "sk_mynets.py").write_text(f"open({str(canary)!r}, 'w').close()\n" + factory)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(mine)
    assert run("trust", "sk_mynets").exit_code == 0
    recipe = recipe_file(downloaded, {"factory": "sk_mynets:build", "kwargs": {"in_features": 64, "hidden": [16]}})
    monkeypatch.chdir(downloaded)
    line = assert_bad_input(run("validate", recipe, weights), "sk_mynets:build", "is trusted as", "--trust-code")
    assert str((mine / "sk_mynets.py").resolve()) in line and str((downloaded / "sk_mynets.py").resolve()) in line
    assert not canary.exists() and "sk_mynets" not in sys.modules
    monkeypatch.chdir(mine)
    recipe_here = recipe_file(mine, {"factory": "sk_mynets:build", "kwargs": {"in_features": 64, "hidden": [16]}})
    assert run("validate", recipe_here, weights).exit_code == 0  # where it was trusted, it still is


def test_a_trusted_module_that_reexports_machinery_is_still_refused(tmp_path, monkeypatch, canary):
    (tmp_path / "sk_reexport.py").write_text(
        "from os import system\nfrom subprocess import run as build\nimport torch\nload = torch.load\n"
        "class NotAModel:\n    def __init__(self, **kw):\n        pass\n"
    )
    monkeypatch.chdir(tmp_path)
    trust_module("sk_reexport")
    for attr in ("system", "build", "load", "torch.load", "torch.hub.load"):
        with pytest.raises(TrustError, match="never run"):
            load_callable(f"sk_reexport:{attr}", kind="model", named_in="r.yaml", field="model.factory")
    with pytest.raises(sparsekit.SparsekitError, match="not an nn.Module class"):
        load_callable("sk_reexport:NotAModel", kind="model", named_in="r.yaml", field="model.factory")
    # torch's own nn.Module classes are fine as a factory; its functions are not.
    assert load_callable("torch.nn:Linear", kind="model") is torch.nn.Linear
    with pytest.raises(TrustError):
        load_callable("torch.nn.functional:relu", kind="model")


def test_dunder_and_malformed_specs_are_refused():
    for spec in ("examples.models:mlp.__globals__", "examples.models:__builtins__", "a:b:c", "a b:c", ":x", "x:"):
        with pytest.raises(sparsekit.SparsekitError):
            load_callable(spec, kind="model")


# --- checkpoints that name code ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "export", "prune", "validate"])
def test_checkpoint_factory_naming_machinery_never_runs(tmp_path, canary, command):
    from examples.models import mlp

    state = mlp(in_features=64, hidden=[16]).state_dict()
    for i, (spec, kwargs) in enumerate(hostile_calls(canary)[:8]):
        ckpt = tmp_path / f"c{i}.pt"
        torch.save({"format": "sparsekit/1", "factory": spec, "kwargs": kwargs, "input_shape": [1, 64],
                    "state_dict": state, "pruning_history": []}, ckpt)  # fmt: skip
        recipe = recipe_file(tmp_path, {}, name=f"r{i}.yaml")
        args = {
            "inspect": ["inspect", ckpt],
            "export": ["export", ckpt, "-o", tmp_path / f"x{i}.onnx"],
            "prune": ["prune", ckpt, recipe, "-o", tmp_path / f"o{i}"],
            "validate": ["validate", recipe, ckpt],
        }[command]
        assert_bad_input(run(*args), spec)
        assert_bad_input(run(*args, "--trust-code"), spec, "never run")
        assert not (tmp_path / f"x{i}.onnx").exists() and not (tmp_path / f"o{i}").exists()


def test_checkpoint_factory_of_a_user_module_needs_confirmation(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "sk_ckpt_arch.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom examples.models import mlp as build\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    from examples.models import mlp

    ckpt = sparsekit.save_model(mlp(hidden=[8]), tmp_path / "m.pt", "sk_ckpt_arch:build", kwargs={"hidden": [8]},
                                input_shape=[1, 64])  # fmt: skip
    with pytest.raises(TrustError, match="sk_ckpt_arch:build"):
        sparsekit.load_model(ckpt)
    assert not marker.exists()
    assert_bad_input(run("inspect", ckpt), str(ckpt), "factory", "--arch sk_ckpt_arch:build", "--trust-code")
    assert not marker.exists()
    # `build` is examples.models.mlp re-exported: defined in a non-machinery module, so fine once trusted.
    assert isinstance(sparsekit.load_model(ckpt, trust_code=True), torch.nn.Module)
    assert marker.exists() and "sk_ckpt_arch" in trusted_modules()


def test_a_damaged_checkpoint_factory_field_is_bad_input(tmp_path):
    from examples.models import mlp

    for factory in (3, ["os:system"], {"a": 1}, "os.system", "a:b:c"):
        ckpt = tmp_path / "m.pt"
        torch.save({"format": "sparsekit/1", "factory": factory, "kwargs": {}, "state_dict": mlp().state_dict()}, ckpt)
        assert_bad_input(run("inspect", ckpt, "--trust-code"))


# --- user code that exits or raises ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("import sys\ndef loaders():\n    sys.exit(0)\n", "sys.exit(0)"),
        ("import sys\ndef loaders():\n    sys.exit('bye')\n", "sys.exit('bye')"),
        ("def loaders():\n    raise MemoryError('big')\n", "MemoryError"),
        ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
        ("raise SystemExit\n", "sys.exit(None)"),
    ],
)
def test_data_callable_that_exits_is_bad_input(tmp_path, mlp_checkpoint, monkeypatch, body, needle):
    name = f"sk_exit_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    result = run("prune", mlp_checkpoint, recipe_file(tmp_path, {}), "--arch", "examples.models:mlp",
                 "--data", f"{name}:loaders", "-o", tmp_path / "o")  # fmt: skip
    assert_bad_input(result, f"{name}:loaders", needle)
    assert not (tmp_path / "o").exists()


def test_data_errors_name_the_option_or_field_that_gave_the_source(tmp_path, mlp_checkpoint, monkeypatch):
    """A source typed as --data is named as --data (the messages said `data.source`, a recipe field the
    user never wrote); one from --set data.source or a recipe keeps the field's name."""
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, {})
    base = ("prune", mlp_checkpoint, recipe, "--arch", "examples.models:mlp", "-o", tmp_path / "o")
    for source, needle in (("os:system", "standard library"), ("missing.npz", "not found"),
                           ("sk_no_such_mod:fn", "cannot import")):  # fmt: skip
        line = assert_bad_input(run(*base, "--data", source), f"--data {source}", needle)
        assert "data.source" not in line, line
    assert_bad_input(run(*base, "--set", "data.source=os:system"), "data.source 'os:system'")
    with pytest.raises(TrustError, match="data.source 'os:system'"):  # Python: the argument's name
        load_data("os:system")
    assert not (tmp_path / "o").exists()


def test_factory_or_forward_that_exits_is_bad_input(tmp_path, monkeypatch, weights):
    (tmp_path / "sk_exit_arch.py").write_text(
        textwrap.dedent("""
        import sys
        import torch

        def build(**kw):
            sys.exit(0)

        class Quits(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = torch.nn.Linear(64, 16)
                self.fc2 = torch.nn.Linear(16, 10)

            def forward(self, x):
                sys.exit(0)
        """)
    )
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, {})
    assert_bad_input(run("inspect", weights, "--arch", "sk_exit_arch:build"), "sk_exit_arch:build", "sys.exit(0)")
    assert_bad_input(run("prune", weights, recipe, "--arch", "sk_exit_arch:Quits", "-o", tmp_path / "o"), "sys.exit")


# --- data paths named in a recipe ----------------------------------------------------------------


def test_recipe_data_file_outside_its_folders_needs_confirmation(tmp_path, monkeypatch):
    import numpy as np

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    npz = elsewhere / "d.npz"
    np.savez(npz, x=np.random.rand(40, 64).astype("float32"), y=np.arange(40) % 10)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    recipe = recipe_file(work, {})
    for named in (str(npz), "../elsewhere/d.npz"):
        with pytest.raises(DataError, match="outside the recipe's folder"):
            load_data(named, input_shape=[1, 64], named_in=recipe)
        assert load_data(named, input_shape=[1, 64]).num_classes == 10  # named by the caller: fine
    (work / "link.npz").symlink_to(npz)
    with pytest.raises(DataError, match="name it yourself: data='link.npz'"):
        load_data("link.npz", input_shape=[1, 64], named_in=recipe)
    shutil.copy(npz, work / "inside.npz")
    assert load_data("inside.npz", input_shape=[1, 64], named_in=recipe).num_classes == 10


def test_a_relative_recipe_data_path_says_where_it_leads(tmp_path, monkeypatch):
    # Run from the project folder with the recipe in r/: '../x.npz' is read from the current folder (the
    # project's parent), not from r/, so it is another file, outside both folders; the error says where it
    # leads. The same file as an absolute path lies in the current folder: followed, as documented.
    import numpy as np

    project = tmp_path / "project"
    (project / "r").mkdir(parents=True)
    np.savez(project / "x.npz", x=np.random.rand(40, 64).astype("float32"), y=np.arange(40) % 10)
    monkeypatch.chdir(project)
    recipe = recipe_file(project / "r", {})
    with pytest.raises(DataError) as err:
        load_data("../x.npz", input_shape=[1, 64], named_in=recipe)
    assert f"'../x.npz' (read from the current folder: {tmp_path.resolve() / 'x.npz'})" in str(err.value)
    assert "outside the recipe's folder and the current folder" in str(err.value)
    assert "name it yourself: data='../x.npz'" in str(err.value)
    assert load_data(str(project / "x.npz"), input_shape=[1, 64], named_in=recipe).num_classes == 10
    assert load_data("x.npz", input_shape=[1, 64], named_in=recipe).num_classes == 10


def test_a_recipe_data_path_in_the_home_folder_is_not_followed(tmp_path, monkeypatch):
    # Found by review: "~/secret.npz" passed the check (resolve() took "~" for a folder under the current one)
    # and was then read from the home folder, outside both roots.
    import numpy as np

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    np.savez(home / "secret.npz", x=np.random.rand(40, 64).astype("float32"), y=np.arange(40) % 10)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    recipe = recipe_file(work, {})
    with pytest.raises(DataError) as err:
        load_data("~/secret.npz", input_shape=[1, 64], named_in=recipe)
    assert f"'~/secret.npz' ({home.resolve() / 'secret.npz'})" in str(err.value)
    assert "outside the recipe's folder and the current folder" in str(err.value)
    assert load_data("~/secret.npz", input_shape=[1, 64]).num_classes == 10  # named by the caller: fine


def test_a_recipe_data_path_into_a_hidden_folder_needs_confirmation(tmp_path, monkeypatch):
    # SECURITY.md: paths a recipe names are never followed into hidden files or folders (~/.ssh, .git, ...).
    import numpy as np

    (tmp_path / ".hidden").mkdir()
    np.savez(tmp_path / ".hidden" / "d.npz", x=np.random.rand(40, 64).astype("float32"), y=np.arange(40) % 10)
    shutil.copy(tmp_path / ".hidden" / "d.npz", tmp_path / ".d.npz")
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, {})
    for named in (".hidden/d.npz", str(tmp_path / ".hidden" / "d.npz"), ".d.npz"):
        with pytest.raises(DataError, match=r"in a hidden file or folder.*name it yourself: data="):
            load_data(named, input_shape=[1, 64], named_in=recipe)
        assert load_data(named, input_shape=[1, 64]).num_classes == 10  # named by the caller: fine
    # A recipe kept in a hidden folder may name the files beside it.
    inner = recipe_file(tmp_path / ".hidden", {})
    assert load_data(str(tmp_path / ".hidden" / "d.npz"), input_shape=[1, 64], named_in=inner).num_classes == 10


# --- the import path ---------------------------------------------------------------------------


def test_resolving_leaves_the_import_path_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "sk_path_mod.py").write_text("from examples.models import mlp as build\n")
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    assert load_callable("sk_path_mod:build", kind="model") is not None
    assert sys.path == before and str(tmp_path) not in sys.path


def _console_script() -> Path | None:
    exe = Path(sys.executable).parent / "sparsekit"
    return exe if exe.exists() else None


@pytest.mark.skipif(_console_script() is None, reason="the sparsekit console script is not installed")
def test_files_in_the_working_folder_do_not_shadow_dependencies(tmp_path):
    """A folder holding modules named like sparsekit's dependencies: the real ones are imported."""
    work = tmp_path / "work"
    work.mkdir()
    canaries = []
    for dep in ("torch_pruning", "onnx", "onnxruntime", "yaml", "click", "pydantic", "numpy", "rich", "safetensors"):
        canary = tmp_path / f"shadowed-{dep}"
        (work / f"{dep}.py").write_text(f"open({str(canary)!r}, 'w').close()\nraise SystemExit('shadowed')\n")
        canaries.append(canary)
    (work / "sk_work_arch.py").write_text("from examples.models import small_cnn as build\n")
    from examples.models import small_cnn

    torch.save(small_cnn(width=8, image_size=8).state_dict(), work / "cnn.pt")
    (work / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 1, 8, 8], kwargs: {width: 8, image_size: 8}}\n"
        "finetune: {epochs: 1}\n"
        "pruning: [{method: structured, ratio: 0.5, schedule: oneshot}]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # examples.models, as for a user with it installed
    result = subprocess.run(
        [str(_console_script()), "validate", "r.yaml", "cnn.pt", "--arch", "sk_work_arch:build"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "structured" in result.stdout
    for canary in canaries:
        assert not canary.exists(), f"{canary.name}: a file in the working folder was imported"


def test_every_module_of_the_tool_and_dependency_distributions_is_refused():
    """Not just the well-known names: every top-level module the installed dev tools and sparsekit's
    dependencies bring (hypothesis's `_hypothesis_ftz_detector`, pytest's `py`, mypy's `mypyc`, ...)."""
    import importlib.metadata

    from sparsekit.trust import _denied

    dists = {"hypothesis", "pytest", "mypy", "pluggy", "numpy", "onnx", "torch-pruning", "pyyaml", "click"}
    names = [
        imp
        for imp, owners in importlib.metadata.packages_distributions().items()
        if any(o.lower().replace("_", "-") in dists for o in owners) and imp.isidentifier()
    ]
    assert {"_hypothesis_ftz_detector", "py", "mypyc", "_pytest"} <= set(names)
    for name in names:
        assert _denied(name), name
        with pytest.raises(TrustError, match="never run"):
            load_callable(f"{name}:anything", kind="data", named_in="r.yaml", field="data.source", trust_code=True)
    assert trusted_modules() == []
    assert _denied("examples.models") is None and _denied("mypkg.nets") is None


def test_python_m_does_not_import_the_working_folder_first(tmp_path):
    """`python -m sparsekit` puts the current folder first on sys.path; modules there named like the
    standard library or a dependency must still not be imported."""
    work = tmp_path / "work"
    work.mkdir()
    names = ("typing", "__future__", "yaml", "click", "json", "re", "numpy", "torch")
    for name in names:
        (work / f"{name}.py").write_text(f"open({str(tmp_path / ('canary-' + name))!r}, 'w').close()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # sparsekit itself, as an installed package would be
    for args in (["recipes"], ["validate", str(ROOT / "recipes" / "lenet-gradual-magnitude-90.yaml")]):
        result = subprocess.run(
            [sys.executable, "-m", "sparsekit", *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("canary-*")) == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("raise GeneratorExit('odd')", "GeneratorExit"),
        ("raise MemoryError('no room')", "out of memory"),
        ("raise RuntimeError('line one\\n' + 'C++ frame\\n' * 60)", "line one"),
    ],
)
def test_user_forward_raising_anything_is_bad_input(tmp_path, monkeypatch, weights, body, needle):
    name = f"sk_odd_arch_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
        import torch

        class Odd(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = torch.nn.Linear(64, 16)
                self.fc2 = torch.nn.Linear(16, 10)

            def forward(self, x):
                {body}
        """)
    )
    monkeypatch.chdir(tmp_path)
    line = assert_bad_input(run("inspect", weights, "--arch", f"{name}:Odd", "--input-shape", "1,64"), needle)
    assert "C++ frame" not in line
    line = assert_bad_input(run("prune", weights, recipe_file(tmp_path, {}), "--arch", f"{name}:Odd", "-o",
                                tmp_path / "o"))  # fmt: skip
    assert len(line) < 600


def test_hostile_checkpoint_contents_are_bad_input(tmp_path):
    from examples.models import mlp

    state = mlp(in_features=64, hidden=[16]).state_dict()
    base = {"format": "sparsekit/1", "factory": "examples.models:mlp", "kwargs": {"in_features": 64, "hidden": [16]},
            "input_shape": [1, 64], "state_dict": state, "pruning_history": []}  # fmt: skip
    sparse_state = {**state, "fc1.weight": state["fc1.weight"].to_sparse()}
    cases = {
        "history-root": {**base, "pruning_history": [["", True, [0]]]},
        "history-int": {**base, "pruning_history": 5},
        "history-inf": {**base, "pruning_history": [["fc1", True, [float("inf")]]]},
        "shape-huge": {**base, "input_shape": [1, 100000, 100000]},
        "shape-text": {**base, "input_shape": "abc"},
        "kwargs-huge": {**base, "kwargs": {"in_features": 2**70}},
        "kwargs-list": {**base, "kwargs": [1, 2]},
        "sparse-tensor": {**base, "state_dict": sparse_state},
        "int-weights": {**base, "state_dict": {**state, "fc1.weight": state["fc1.weight"].to(torch.int32)}},
    }
    for name, ckpt in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(ckpt, path)
        line = assert_bad_input(run("inspect", path, "--trust-code"), str(path))
        assert len(line) < 600, (name, line)


def test_python_installation_modules_outside_stdlib_names_are_refused(tmp_path, canary):
    """`sys.stdlib_module_names` leaves out CPython's own test suite and private extension modules;
    they are part of the installation all the same."""
    import importlib.util

    specs = [("test.support:run_in_subinterp", {"code": f"open({str(canary)!r}, 'w')"})]
    specs += [(f"{m}:anything", {}) for m in ("_testcapi", "xxlimited", "_xxsubinterpreters")]
    for spec, kwargs in specs:
        if importlib.util.find_spec(spec.split(":")[0].split(".")[0]) is None:
            continue  # not shipped by this Python build
        ckpt = tmp_path / "c.pt"
        torch.save({"format": "sparsekit/1", "factory": spec, "kwargs": kwargs, "state_dict": {}}, ckpt)
        assert_bad_input(run("inspect", ckpt, "--trust-code"), spec, "never run")
    assert trusted_modules() == []


def test_modules_a_dependency_puts_on_the_import_path_are_refused(canary):
    """onnxruntime.quantization appends onnxruntime/transformers to sys.path: its scripts become
    importable under plain names. They were installed by a dependency, so they never run."""
    import onnxruntime.quantization  # noqa: F401

    for spec in ("benchmark_helper:output_details", "import_utils:is_installed"):
        with pytest.raises(TrustError, match="installed by sparsekit, one of its dependencies"):
            load_callable(spec, kind="model", named_in="m.pt", field="factory", trust_code=True)


def test_more_hostile_checkpoint_contents_are_bad_input(tmp_path, monkeypatch):
    from examples.models import mlp

    state = mlp(in_features=64, hidden=[16]).state_dict()
    base = {"format": "sparsekit/1", "factory": "examples.models:mlp", "kwargs": {"in_features": 64, "hidden": [16]},
            "input_shape": [1, 64], "state_dict": state, "pruning_history": []}  # fmt: skip
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    cases = {
        "history-tensor": {**base, "pruning_history": [["fc1", torch.ones(3), [0]]]},
        "history-deep": {**base, "pruning_history": [[deep, True, [0]]]},
        "kwargs-deep": {**base, "kwargs": {"hidden": deep}},
        "kwargs-int-key": {**base, "kwargs": {1: 2}},
        "batch-huge": {**base, "input_shape": [80_000_000, 64], "pruning_history": [["fc1", True, [0]]]},
    }
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # only so that this test can pickle the deep lists
    try:
        for name, ckpt in cases.items():
            torch.save(ckpt, tmp_path / f"{name}.pt")
    finally:
        sys.setrecursionlimit(limit)
    for name in cases:
        path = tmp_path / f"{name}.pt"
        assert_bad_input(run("inspect", path, "--arch", "examples.models:mlp"), str(path))
    # kwargs from a file that build a model too large for memory: refused before anything is allocated.
    import sparsekit.modelio as modelio

    monkeypatch.setattr(modelio, "available_memory", lambda: 64 << 20)  # a 64 MiB machine
    path = tmp_path / "wide.pt"
    torch.save({**base, "kwargs": {"in_features": 64, "hidden": [50_000_000]}}, path)
    assert_bad_input(run("inspect", path, "--arch", "examples.models:mlp"), "GiB", "memory available")


def test_odd_user_code_and_state_files_are_bad_input(tmp_path, monkeypatch, mlp_checkpoint):
    (tmp_path / "sk_odd_data.py").write_text(
        textwrap.dedent("""
        import torch

        class Weird(Exception):
            def __str__(self):
                raise ValueError("no text")

        def ints():
            x, y = torch.randint(0, 5, (32, 64)), torch.arange(32) % 10
            return [(x, y)], [(x, y)]

        class Deep(torch.utils.data.Dataset):
            def __len__(self):
                return 64
            def __getitem__(self, i):
                if i > 40:
                    raise RecursionError("maximum recursion depth exceeded")
                return torch.randn(64), i % 10

        def deep():
            loader = torch.utils.data.DataLoader(Deep(), batch_size=16)
            return loader, loader

        class Endless(list):
            def __len__(self):
                return 10**30

        def endless():
            return Endless([1]), Endless([1])

        def weird():
            raise Weird()
        """)
    )
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, {}, name="r.yaml")
    for source, needle in (("ints", "floating-point"), ("deep", "RecursionError"), ("endless", "more batches"),
                           ("weird", "Weird")):  # fmt: skip
        result = run("prune", mlp_checkpoint, recipe, "--arch", "examples.models:mlp", "--data",
                     f"sk_odd_data:{source}", "-o", tmp_path / f"o-{source}")  # fmt: skip
        assert_bad_input(result, needle)
    deep = "[" * 100_000 + "]" * 100_000
    assert run("inspect", mlp_checkpoint, "--arch", "examples.models:mlp", "--kwargs", deep).exit_code == 2
    # sparsekit's own state files, nested absurdly deep: treated as unreadable, never a crash.
    out = tmp_path / "out"
    (out / ".sparsekit").mkdir(parents=True)
    for name in ("manifest.json", "lock"):
        (out / ".sparsekit" / name).write_text(deep)
    os.utime(out / ".sparsekit" / "lock", (1, 1))  # an unreadable, old lock: its run died long ago
    (out / "report.json").write_text(deep)
    assert_bad_input(run("report", out), "report.json")
    assert_bad_input(run("prune", mlp_checkpoint, recipe, "--arch", "examples.models:mlp", "-o", out,
                         "--overwrite"), "report.json")  # fmt: skip
    store_path().parent.mkdir(parents=True, exist_ok=True)
    store_path().write_text(deep)
    assert run("trust", "--json").exit_code == 0 and trusted_modules() == []


@pytest.mark.parametrize(
    "modules",
    ['"mymod"', '["mymod", 1]', '{"mymod": true}', '{"mymod": "relative.py"}', '["mymod", "not a name"]',
     '["mymod"]', '{"mymod": "/x/mymod.py", "os": "/x/os.py"}'],
)  # fmt: skip
def test_a_malformed_trust_store_trusts_nothing(modules, tmp_path, monkeypatch):
    """The store is data: a string (once read letter by letter, so 'm', 'y', ... became trusted), a list (names
    alone, as sparsekit 0.3.4 kept them: a file of that name anywhere) or anything but names with absolute paths
    trusts nothing; a module that is never trusted (os) is dropped."""
    store_path().parent.mkdir(parents=True, exist_ok=True)
    store_path().write_text(f'{{"format": "sparsekit-trust/2", "modules": {modules}}}')
    assert trusted_modules() == (["mymod"] if "os" in modules else [])
    (tmp_path / "mymod.py").write_text("")
    monkeypatch.chdir(tmp_path)
    trust_module("mymod")  # rewritten whole, from nothing
    assert json.loads(store_path().read_text())["modules"] == {"mymod": str((tmp_path / "mymod.py").resolve())}


@pytest.mark.parametrize(
    ("source", "spec"),
    [
        ("raise ImportError('no such dependency')\n", "sk_broken_arch1:build"),  # fails to import
        ("x = 1\n", "sk_broken_arch2:build"),  # imports, but has no build
        ("build = 3\n", "sk_broken_arch3:build"),  # build is not a function
    ],
    ids=["import-fails", "missing", "not-callable"],
)
def test_trust_code_remembers_only_a_module_that_imported_and_holds_the_callable(
    tmp_path, monkeypatch, weights, source, spec
):
    module = spec.split(":")[0]
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, {"factory": spec})
    assert_bad_input(run("validate", recipe, weights, "--trust-code"), module)
    assert trusted_modules() == []
    assert not store_path().exists() or json.loads(store_path().read_text())["modules"] == []


def test_a_missing_examples_module_says_it_lives_in_the_repository_not_the_wheel():
    """The README's and --help's example runs name examples.models, which a wheel does not install."""
    from sparsekit.errors import ModelFileError
    from sparsekit.trust import _import

    with pytest.raises(ModelFileError, match=r"examples/ is in the sparsekit repository, not in the installed package"):
        _import("examples.no_such_models", "--arch examples.no_such_models:f", ModelFileError)
    with pytest.raises(ModelFileError) as info:
        _import("no_such_package_zz.models", "--arch no_such_package_zz.models:f", ModelFileError)
    assert "repository" not in str(info.value)


def test_a_recipes_example_factory_without_the_repository_asks_for_ones_own(monkeypatch):
    """A wheel user's plain state_dict with a shipped recipe: the recipe names examples.models:small_cnn, and the
    error said to pass it or to trust it, neither of which can work without the repository's examples/."""
    import sparsekit.trust as trust

    # examples/ is not here; the mine.* modules below are (one not found is said so: test_review_newuser_20.py).
    monkeypatch.setattr(trust, "module_location", lambda module: None if module.startswith("examples") else "/m")
    monkeypatch.setattr(trust, "is_trusted", lambda module: False)
    with pytest.raises(TrustError) as info:
        trust._require_trust("examples.models:small_cnn", "examples.models", "cnn-structured-50", "model.factory", 0)
    said = str(info.value)
    assert "example model of the sparsekit repository" in said and "your_module:your_factory" in said
    assert "trust_code" not in said and "--trust-code" not in said
    # A module that is there: confirm it, or (a recipe's factory is only a default) name one's own builder; a
    # plain state_dict of one's own CNN with a shipped recipe was told only to pass or trust examples.models.
    with pytest.raises(TrustError) as info:
        trust._require_trust("mine.models:net", "mine.models", "r.yaml", "model.factory", False)
    said = str(info.value)
    assert "names the code 'mine.models:net'" in said and "example model" not in said
    assert said.endswith("name the function that builds it instead: arch='your_module:your_factory'"), said
    with pytest.raises(TrustError) as info:  # a data callable: no builder to name
        trust._require_trust("mine.data:load", "mine.data", "r.yaml", "data.source", False)
    assert "your_module" not in str(info.value)


def test_a_trust_store_others_can_write_trusts_nothing(tmp_path, monkeypatch, caplog):
    # Found by review: a store of mode 666 (or in a folder of mode 777) was believed, so another local user could
    # add their module and have a checkpoint's factory run without a flag. Group-writable stays fine (umask 002).
    (tmp_path / "mymod.py").write_text("")
    monkeypatch.chdir(tmp_path)
    trust_module("mymod")
    path = store_path()
    folder_mode = path.parent.stat().st_mode & 0o7777
    for target, mode, trusted in (
        (path, 0o666, False),
        (path, 0o664, True),
        (path.parent, 0o777, False),
        (path.parent, 0o1777, True),  # sticky, as /tmp: others cannot replace a file they do not own
        (path.parent, folder_mode, True),
        # a folder further up: whoever may rename the store's folder can put another in its place (only the
        # store's own folder was checked)
        (path.parent.parent, 0o777, False),
        (path.parent.parent, 0o1777, True),
        (path.parent.parent, path.parent.parent.stat().st_mode & 0o7777, True),
    ):
        target.chmod(mode)
        caplog.clear()
        assert (trusted_modules() == ["mymod"]) is trusted, (target, oct(mode))
        assert trusted or "writable by every user" in caplog.text


def test_trust_writes_a_store_it_will_believe_whatever_the_umask(tmp_path, monkeypatch):
    # Found by review: under umask 000 `sparsekit trust` wrote a mode-666 store, said "no trusted modules" and
    # exited 0, and the next run ignored the store as writable by every user.
    import os

    from sparsekit.errors import OutputError

    (tmp_path / "mymod.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEKIT_CONFIG_DIR", str(tmp_path / "cfg"))
    old = os.umask(0)
    try:
        trust_module("mymod")
    finally:
        os.umask(old)
    assert trusted_modules() == ["mymod"]
    assert store_path().stat().st_mode & 0o777 == 0o600 and store_path().parent.stat().st_mode & 0o077 == 0
    store_path().parent.chmod(0o777)  # a folder made before, that every user can write: said, not a silent exit 0
    with pytest.raises(OutputError, match="writable by every user"):
        trust_module("mymod")
    store_path().parent.chmod(0o700)


def test_a_dotted_or_misspelt_callable_gets_the_spelling_meant(tmp_path, monkeypatch):
    # `--arch mynet.Net` (Python's dotted path) said only "not of the form pkg.module:callable", and a misspelt
    # name only "has no 'Nett'"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sk_dotted_nets.py").write_text("from torch import nn\n\nclass Net(nn.Linear):\n    pass\n")
    with pytest.raises(TrustError, match=r"did you mean 'sk_dotted_nets:Net'\?"):
        load_callable("sk_dotted_nets.Net", kind="model")
    with pytest.raises(TrustError, match=r"has no 'Nett'; did you mean 'Net'\?"):
        load_callable("sk_dotted_nets:Nett", kind="model")
    with pytest.raises(TrustError) as caught:
        load_callable("sk_dotted_nets", kind="model")  # no dot: nothing to suggest
    assert "did you mean" not in str(caught.value)
