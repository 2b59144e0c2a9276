"""Review 25 (security): hostile files handed to a user, each fault found pinned here."""

from __future__ import annotations

import sys

import pytest
from conftest import torch_file_with_pickle


def _run_trusted_pickle(tmp_path, monkeypatch, source: str, name: str):
    """``inspect --trust-model-file`` of a torch file whose pickle calls ``usermod:name("touch CANARY")``, the user's
    module (not imported yet) being ``source``: (the CLI result, the canary's path)."""
    from click.testing import CliRunner

    from sparsekit.cli import main

    module = f"usermod_sec25_{abs(hash((source, name))) % 100_000}"
    (tmp_path / f"{module}.py").write_text(f"{source}\n\n\nclass Net:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    payload = b"\x80\x04c" + f"{module}\n{name}\n".encode() + b"\x8c" + bytes([len(command)]) + command + b"\x85R."
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    return CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"]), canary


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("import subprocess\nimport sys\ngather = sys.modules['subprocess'].getoutput", "gather"),
        ("import subprocess\nimport sys\nsp = sys.modules['subprocess']", "sp.getoutput"),
        ("import subprocess\ngather = subprocess.getoutput if True else None", "gather"),
        ("import subprocess\ngather = [subprocess.getoutput][0]", "gather"),
        ("import subprocess\n\n\nclass Tools:\n    gather = (lambda: subprocess.getoutput)()", "Tools.gather"),
    ],
)
def test_a_trusted_pickle_reaching_a_function_through_a_computed_value_in_the_users_module_is_refused(
    tmp_path, monkeypatch, source, name
):
    # An assignment whose value the source reading does not follow (a subscript, a call, a conditional) bound nothing
    # it knew of, and the name passed as the user's own function: unpickling ran a shell command.
    result, canary = _run_trusted_pickle(tmp_path, monkeypatch, source, name)
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


def test_plain_values_and_aliases_of_the_users_own_classes_still_pass(tmp_path, monkeypatch):
    from sparsekit.modelio import _users_own_name

    module = "usermod_sec25_own"
    (tmp_path / f"{module}.py").write_text(
        "import sys\nSIZES = [1, 2]\n\n\nclass Net:\n    depth = 3\n\n\nOther = Net\nLEVEL = len(sys.argv)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert _users_own_name(module, "Net")
    assert _users_own_name(module, "Other")
    assert not _users_own_name(module, "LEVEL")  # computed at import: judged unknown


@pytest.mark.parametrize(
    "source",
    [
        "import subprocess\nglobals()['gather'] = subprocess.getoutput",
        "import subprocess\nimport sys\nsetattr(sys.modules[__name__], 'gather', subprocess.getoutput)",
        "exec('from subprocess import getoutput as gather')",
    ],
)
def test_a_trusted_pickle_naming_what_no_statement_of_the_users_module_binds_is_refused(tmp_path, monkeypatch, source):
    # A name no statement of the module binds (set through globals(), setattr on the module, exec) was judged by its
    # spelling alone and passed as the user's own function: unpickling ran a shell command.
    result, canary = _run_trusted_pickle(tmp_path, monkeypatch, source, "gather")
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


def test_names_a_star_import_or_a_block_binds_still_pass(tmp_path, monkeypatch):
    from sparsekit.modelio import _users_own_name

    (tmp_path / "layers_sec25.py").write_text("class Block:\n    pass\n")
    (tmp_path / "stars_sec25.py").write_text("from layers_sec25 import *\n")
    (tmp_path / "blocks_sec25.py").write_text("import sys\nif sys.platform:\n    class Net:\n        pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("layers_sec25", "stars_sec25", "blocks_sec25"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert _users_own_name("stars_sec25", "Block")
    assert _users_own_name("blocks_sec25", "Net")
    assert not _users_own_name("blocks_sec25", "Gone")


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("import functools\nimport subprocess\ngather = functools.partial(subprocess.getoutput)", "gather"),
        ("import subprocess\ngather = lambda command: subprocess.getoutput(command)  # noqa: E731", "gather"),
    ],
)
def test_a_trusted_pickle_naming_a_callable_object_of_an_imported_users_module_is_refused(
    tmp_path, monkeypatch, source, name
):
    # With the user's module already imported (a training script's `from mymod import Net` before
    # sparsekit.load_model(path, trust=True)) a name bound to a partial of subprocess.getoutput or to a lambda passed
    # as the user's own (a partial has no __qualname__ to judge it by): unpickling ran a shell command.
    import importlib

    import sparsekit
    from sparsekit.errors import ModelFileError

    module = f"usermod_sec25_imp_{abs(hash(source)) % 100_000}"
    (tmp_path / f"{module}.py").write_text(f"{source}\n\n\nclass Net:\n    def forward(self):\n        pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.import_module(module)
    canary = tmp_path / "CANARY"
    command = f"touch {canary}".encode()
    payload = b"\x80\x04c" + f"{module}\n{name}\n".encode() + b"\x8c" + bytes([len(command)]) + command + b"\x85R."
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    with pytest.raises(ModelFileError, match="not on the list of what a pickled model needs"):
        sparsekit.load_model(tmp_path / "model.pt", trust=True)
    assert not canary.exists()
    from sparsekit.modelio import _users_own_name

    assert _users_own_name(module, "Net")
    assert _users_own_name(module, "Net.forward")


def test_a_trusted_pickle_calling_a_method_of_an_object_an_imported_users_module_holds_is_refused(
    tmp_path, monkeypatch
):
    # `LOG = open("train.log", "a")` in the user's (imported) module: mymod:LOG.truncate resolved, statically, to
    # the file class's method, which has no __module__ to judge it by, and passed as the user's own: unpickling
    # emptied the user's log.
    import importlib

    import sparsekit
    from sparsekit.errors import ModelFileError

    module = "usermod_sec25_log"
    log = tmp_path / "train.log"
    log.write_text("epoch 1: loss 0.5\n")
    (tmp_path / f"{module}.py").write_text(
        f"LOG = open({str(log)!r}, 'a')\n\n\nclass Net:\n    def forward(self):\n        pass\n\n\nNET = Net()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    mod = importlib.import_module(module)
    try:
        torch_file_with_pickle(
            tmp_path / "model.pt", b"\x80\x04c" + f"{module}\nLOG.truncate\n".encode() + b"K\x00\x85R."
        )
        with pytest.raises(ModelFileError, match="not on the list of what a pickled model needs"):
            sparsekit.load_model(tmp_path / "model.pt", trust=True)
        from sparsekit.modelio import _users_own_name

        assert _users_own_name(module, "NET.forward")  # a method of the user's own object stays allowed
    finally:
        mod.LOG.close()
    assert log.read_text() == "epoch 1: loss 0.5\n"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        (
            "import subprocess\n\n\ndef _pick(fn):\n    return subprocess.getoutput\n\n\n"
            "@_pick\ndef gather(c):\n    pass",
            "gather",
        ),
        (
            "import functools\nimport subprocess\n\n\ndef _pick(fn):\n    return subprocess.getoutput\n\n\n"
            "@functools.partial(_pick)\ndef gather(c):\n    pass",
            "gather",
        ),
        (
            "import subprocess\n\n\nclass Tools:\n    @(lambda fn: subprocess.getoutput)\n"
            "    def gather(c):\n        pass",
            "Tools.gather",
        ),
    ],
)
def test_a_trusted_pickle_naming_a_definition_a_decorator_replaced_is_refused(tmp_path, monkeypatch, source, name):
    # `@pick def gather` binds gather to what pick returns (subprocess.getoutput), but the source reading took it for
    # the user's own function: unpickling ran a shell command.
    result, canary = _run_trusted_pickle(tmp_path, monkeypatch, source, name)
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


def test_definitions_under_plain_decorators_still_pass(tmp_path, monkeypatch):
    from sparsekit.modelio import _users_own_name

    module = "usermod_sec25_deco"
    (tmp_path / f"{module}.py").write_text(
        "import dataclasses\nfrom functools import lru_cache\n\nimport torch\n\n\n@dataclasses.dataclass(frozen=True)\n"
        "class Config:\n    width: int = 4\n\n\n@lru_cache\ndef table():\n    return 1\n\n\n@torch.no_grad()\n"
        "def score(x):\n    return x\n\n\nclass Net:\n    @staticmethod\n    def build():\n        pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    for name in ("Config", "table", "score", "Net.build"):
        assert _users_own_name(module, name), name


@pytest.mark.parametrize("imported", [False, True])
def test_a_trusted_pickle_making_a_users_class_derived_from_a_file_writer_is_refused(tmp_path, monkeypatch, imported):
    # `class RunLog(logging.FileHandler)` in the user's module passed as the user's own class, and the pickle made
    # RunLog("victim.txt", "w"): FileHandler's __init__ emptied the user's file.
    import importlib

    from click.testing import CliRunner

    from sparsekit.cli import main

    module = f"usermod_sec25_base_{int(imported)}"
    (tmp_path / f"{module}.py").write_text("import logging\n\n\nclass RunLog(logging.FileHandler):\n    pass\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    if imported:
        importlib.import_module(module)
    payload = b"\x80\x04c" + f"{module}\nRunLog\n".encode() + b"\x8c\x0avictim.txt\x8c\x01w\x86R."
    torch_file_with_pickle(tmp_path / "model.pt", payload)
    result = CliRunner().invoke(main, ["inspect", "model.pt", "--trust-model-file"])
    assert victim.read_text() == "keep me\n"
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


@pytest.mark.parametrize("imported", [False, True])
def test_users_classes_of_plain_bases_still_pass(tmp_path, monkeypatch, imported):
    import importlib

    from sparsekit.modelio import _users_own_name

    module = f"usermod_sec25_plain_{int(imported)}"
    (tmp_path / f"{module}.py").write_text(
        "import enum\nfrom abc import ABC\nfrom typing import Generic, TypeVar\n\nfrom torch import nn\n\n"
        "T = TypeVar('T')\n\n\nclass Mode(enum.IntEnum):\n    A = 1\n\n\nclass Base(nn.Module, ABC):\n    pass\n\n\n"
        "class Net(Base, Generic[T]):\n    pass\n\n\nclass Table(dict):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    if imported:
        importlib.import_module(module)
    for name in ("Mode", "Base", "Net", "Table"):
        assert _users_own_name(module, name), name


def test_a_trusted_pickle_reaching_a_function_a_class_inherits_from_a_class_of_the_module_is_refused(
    tmp_path, monkeypatch
):
    # `class Tools(Base)` with Base's `gather = sys.modules["subprocess"].getoutput`: Base.gather was refused, but
    # Tools.gather, the same function reached through inheritance, passed as the user's own: unpickling ran it.
    source = (
        "import subprocess\nimport sys\n\n\nclass Base:\n    gather = sys.modules['subprocess'].getoutput\n\n\n"
        "class Tools(Base):\n    pass"
    )
    result, canary = _run_trusted_pickle(tmp_path, monkeypatch, source, "Tools.gather")
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output


def test_what_a_class_defines_over_its_bases_still_passes(tmp_path, monkeypatch):
    from sparsekit.modelio import _users_own_name

    module = "usermod_sec25_inherit"
    (tmp_path / f"{module}.py").write_text(
        "import sys\n\n\nclass Base:\n    gather = sys.modules['subprocess'].getoutput\n\n    def forward(self):\n"
        "        pass\n\n\nclass Tools(Base):\n    def gather(self):\n        pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert _users_own_name(module, "Tools.gather")  # Tools' own method, over Base's
    assert _users_own_name(module, "Tools.forward")  # inherited from a plain method of Base
    assert not _users_own_name(module, "Base.gather")


def test_a_trusted_pickle_reaching_a_function_a_class_inherits_from_the_users_other_module_is_refused(
    tmp_path, monkeypatch
):
    # The same through `from helpers import Base; class Tools(Base)`: Tools.gather is helpers.Base.gather.
    helpers = "helpers_sec25"
    (tmp_path / f"{helpers}.py").write_text(
        "import subprocess\nimport sys\n\n\nclass Base:\n    gather = sys.modules['subprocess'].getoutput\n\n"
        "    def forward(self):\n        pass\n"
    )
    monkeypatch.delitem(sys.modules, helpers, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = f"from {helpers} import Base\n\n\nclass Tools(Base):\n    pass"
    result, canary = _run_trusted_pickle(tmp_path, monkeypatch, source, "Tools.gather")
    assert not canary.exists()
    assert result.exit_code == 2, result.output
    assert "not on the list of what a pickled model needs" in result.output
    from sparsekit.modelio import _users_own_name

    module = next(p.stem for p in tmp_path.glob("usermod_sec25_*.py"))
    assert _users_own_name(module, "Tools.forward")


def test_classes_of_two_modules_deriving_from_each_other_are_refused_not_a_crash(tmp_path, monkeypatch):
    from sparsekit.modelio import _users_own_name

    (tmp_path / "cyc_a_sec25.py").write_text("from cyc_b_sec25 import B\n\n\nclass A(B):\n    pass\n")
    (tmp_path / "cyc_b_sec25.py").write_text("from cyc_a_sec25 import A\n\n\nclass B(A):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("cyc_a_sec25", "cyc_b_sec25"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert not _users_own_name("cyc_a_sec25", "A.forward")
