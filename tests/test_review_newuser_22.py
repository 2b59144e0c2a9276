"""Mends from the twenty-second review as a new user: the installed wheel, followed from the README in an empty folder
with a model of one's own."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from sparsekit.cli import main
from tests.conftest import assert_bad_input

LENET = """
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
"""


def _save_weights(path) -> None:
    torch.save(
        {
            "fc1.weight": torch.ones(6, 8),
            "fc1.bias": torch.ones(6),
            "fc2.weight": torch.ones(3, 6),
            "fc2.bias": torch.ones(3),
        },
        path,
    )


@pytest.mark.parametrize(("name", "arch"), [("code.py", "code:LeNet"), ("yaml", "yaml.nets:LeNet")])
def test_an_own_module_named_like_a_standard_or_installed_one_gets_the_rename(tmp_path, monkeypatch, name, arch):
    # A new user's model in ./code.py (or a package ./yaml/) is hidden by Python's module of that name: the refusal
    # named only that module ("'code' is part of Python's standard library ... never run") and no way forward.
    monkeypatch.chdir(tmp_path)
    if name.endswith(".py"):
        (tmp_path / name).write_text(LENET)
    else:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "nets.py").write_text(LENET)
    _save_weights(tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", arch])
    new = arch.replace(arch.split(".")[0].split(":")[0], "my_" + arch.split(".")[0].split(":")[0], 1)
    assert_bad_input(result, "never run", f"./{name} in the current folder has that name", f"name it as {new}")
    trusted = CliRunner().invoke(main, ["trust", arch.split(":")[0]])
    assert_bad_input(trusted, "never trusted", f"./{name} in the current folder")


def test_a_refused_module_with_no_file_of_that_name_here_gets_no_rename_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save_weights(tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "code:LeNet"])
    line = assert_bad_input(result, "never run")
    assert "current folder" not in line


def test_the_class_itself_as_arch_or_factory_is_answered_with_its_import_path(tmp_path, monkeypatch):
    # arch=LeNet (the class, as one would pass it in Python) was refused as "<class 'mynet22.LeNet'> is not of the
    # form pkg.module:callable", the object's repr read as a misspelt string, with no import path to give.
    import sparsekit
    from tests.conftest import user_module

    mod = user_module(tmp_path, monkeypatch, "mynet22", LENET)
    _save_weights(tmp_path / "w.pt")
    with pytest.raises(sparsekit.SparsekitError, match=r"the class LeNet itself was given.*'mynet22:LeNet'"):
        sparsekit.inspect(tmp_path / "w.pt", arch=mod.LeNet)
    with pytest.raises(
        sparsekit.SparsekitError, match=r"save_model\(factory=\.\.\.\): the class LeNet .*'mynet22:LeNet'"
    ):
        sparsekit.save_model(mod.LeNet(), tmp_path / "m.pt", factory=mod.LeNet)
    script_class = type("Net", (torch.nn.Module,), {"__module__": "__main__"})
    with pytest.raises(sparsekit.SparsekitError, match=r"defined in the script being run.*'mynet:Net'"):
        sparsekit.load_model(tmp_path / "w.pt", arch=script_class)
    with pytest.raises(sparsekit.SparsekitError, match=r"has no import path \(a lambda"):
        sparsekit.load_model(tmp_path / "w.pt", arch=lambda: mod.LeNet())


NEEDS_WIDTH = """
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden, depth=1):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, hidden), nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
"""


def test_a_factory_argument_left_out_or_unknown_names_what_it_takes_and_where_it_goes(tmp_path, monkeypatch):
    # A model of one's own whose class takes its width: "calling it raised TypeError: Net.__init__() missing 1 required
    # positional argument: 'hidden'", with no word of --kwargs, the option that gives it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net22.py").write_text(NEEDS_WIDTH)
    (tmp_path / "lenet22.py").write_text(LENET)
    _save_weights(tmp_path / "w.pt")
    missing = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "net22:Net"])
    assert_bad_input(missing, "'hidden'", "it takes (hidden, depth=1)", """--kwargs '{"hidden": ...}'""")
    unknown = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "lenet22:LeNet", "--kwargs", '{"width": 6}'])
    assert_bad_input(unknown, "'width'", "it takes no arguments: leave out --kwargs")
    given = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "net22:Net", "--kwargs", '{"hidden": 6}'])
    assert given.exit_code == 0, given.output
    import sparsekit

    with pytest.raises(sparsekit.ModelFileError, match=r"""as kwargs=\{"hidden": \.\.\.\}"""):
        sparsekit.load_model(tmp_path / "w.pt", arch="net22:Net")


def test_a_data_callable_that_needs_arguments_says_it_is_called_with_none(tmp_path, monkeypatch):
    # `--data dl22:loaders` whose loaders(batch_size) needs its batch size: "calling it raised TypeError: loaders()
    # missing 1 required positional argument: 'batch_size'" said neither that nothing is passed nor what to do.
    import sparsekit
    from sparsekit.data import load_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dl22.py").write_text(
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n\n\n"
        "def loaders(batch_size):\n"
        "    d = DataLoader(TensorDataset(torch.rand(16, 8), torch.randint(0, 3, (16,))), batch_size=batch_size)\n"
        "    return d, d\n"
    )
    with pytest.raises(
        sparsekit.DataError, match=r"'batch_size'.*called with no arguments: give its parameters defaults"
    ):
        load_data("dl22:loaders", input_shape=[1, 8], num_classes=3)


def test_a_factory_that_returns_its_class_or_nothing_is_told_what_to_return(tmp_path, monkeypatch):
    # "returned a type, not an nn.Module" / "returned a NoneType": true, but not what the slip was.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f22.py").write_text(LENET + "\n\ndef build():\n    return LeNet\n\n\ndef forgot():\n    LeNet()\n")
    _save_weights(tmp_path / "w.pt")
    result = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "f22:build"])
    assert_bad_input(result, "returned the class LeNet itself; return an instance, LeNet(...)")
    result = CliRunner().invoke(main, ["inspect", "w.pt", "--arch", "f22:forgot"])
    assert_bad_input(result, "returned nothing; end it with `return model`")
