"""A wheel user's review: the README's commands for an installed wheel, run as a shell runs them, and the Python API
as its README and its types present it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_readme_wheel_extras_command_names_the_wheel_file(tmp_path):
    # pip expands no glob: the shell must turn `sparsekit-*.whl` into the file's name before pip sees it,
    # which a `*` inside quotes never is ('./sparsekit-*.whl[lightning]' failed: "not a valid wheel filename")
    commands = [c.replace("\n", " ") for c in re.findall(r"`(pip install[^`]*\.whl[^`]*\[lightning\][^`]*)`", README)]
    assert commands, "the README shows how to install the wheel with an extra"
    wheel = "sparsekit-0.0.0-py3-none-any.whl"
    (tmp_path / wheel).write_bytes(b"")
    for command in commands:
        argv = command.replace("pip install", "printf '%s\\n'", 1)
        out = subprocess.run(["bash", "-c", argv], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        assert out.split() == [f"./{wheel}[lightning]"], (command, out)


def test_the_readme_says_when_run_prune_returns_none():
    # run_prune is typed `Report | None` (None on torchrun ranks other than 0): a user who types the README's
    # `report.pruned.accuracy` under mypy --strict gets union-attr errors unless the README says why and what to do
    import typing

    import sparsekit

    returns = typing.get_type_hints(sparsekit.run_prune)["return"]
    assert type(None) in typing.get_args(returns)
    (row,) = [line for line in README.splitlines() if line.startswith("| `report = sparsekit.run_prune(")]
    assert "None" in row and "is not None" in row, row


def test_run_sensitivity_takes_a_recipe_file_kwargs_and_overrides_as_run_prune_does(tmp_path, monkeypatch):
    # The Python side of `sparsekit sensitivity --kwargs ... --set ...`: run_sensitivity took a Recipe object alone
    # (a recipe file's path raised AttributeError: 'str' object has no attribute 'pruning') and no kwargs=, which the
    # README promises wherever arch= is; run_prune and plan take all three.
    import torch

    from sparsekit.analysis import run_sensitivity

    (tmp_path / "wheel24net.py").write_text(
        "from torch import nn\n\n\ndef build(width=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))\n"
    )
    (tmp_path / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: synthetic, synthetic_samples: 128, batch_size: 64}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "wheel24net", raising=False)
    torch.manual_seed(0)
    sd = {
        "1.weight": torch.randn(12, 64),
        "1.bias": torch.zeros(12),
        "3.weight": torch.randn(10, 12),
        "3.bias": torch.zeros(10),
    }
    torch.save(sd, tmp_path / "w.pt")
    res = run_sensitivity(
        "w.pt",
        "r.yaml",
        "sens",
        arch="wheel24net:build",
        kwargs={"width": 12},  # the weights are 12 wide, the factory's default 8: refused without it
        overrides=["pruning.0.layers=['1']"],
        max_batches=1,
        progress=False,
    )
    assert [layer for layer, _ in res["ranking"]] == ["1"]  # the override left layer 3 out
    assert (tmp_path / "sens" / "sensitivity.json").is_file()


def test_validates_first_batch_errors_name_the_source_as_the_user_gave_it(tmp_path, monkeypatch):
    # validate's (plan's) first-batch checks said "data.source 'mydata:bad'" whoever named the source: for
    # `--data mydata:bad` a recipe field the user never wrote, and for a recipe's own source not the recipe file.
    # Every other data error names the data option, or the recipe file before its field.
    import sparsekit

    (tmp_path / "wheel24data.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n\n\ndef bad():\n"
        "    ds = TensorDataset(torch.randn(32, 64), torch.randint(11, 20, (32,)))\n"
        "    return DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=16)\n"
    )
    (tmp_path / "wheel24lin.py").write_text("from torch import nn\n\n\ndef build():\n    return nn.Linear(64, 10)\n")
    (tmp_path / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: 'wheel24data:bad'}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEKIT_CONFIG_DIR", str(tmp_path / "cfg"))  # trust_code below remembers the module
    for name in ("wheel24data", "wheel24lin"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import torch

    torch.save(torch.nn.Linear(64, 10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(sparsekit.DataError) as given:
        sparsekit.plan("r.yaml", "w.pt", arch="wheel24lin:build", data="wheel24data:bad")
    message = str(given.value)
    # (the labels are checked against the model's outputs when the data loads: worded by that check since)
    assert "label 19 is outside the model's 10 outputs" in message and "data.source" not in message, message
    assert message.startswith("data='wheel24data:bad'"), message  # the Python spelling of the data option
    with pytest.raises(sparsekit.DataError) as named:
        sparsekit.plan("r.yaml", "w.pt", arch="wheel24lin:build", trust_code=True)
    assert str(named.value).startswith("r.yaml: data.source 'wheel24data:bad': label 19 is outside"), str(named.value)


def test_forgetting_a_module_that_was_not_trusted_is_a_warning_line(tmp_path):
    # README: every command prints its warnings as `Warning: ...` lines on stderr. `trust --forget` of a name that
    # was not trusted (a misspelt one: nothing was forgotten) printed a bare "mypkg.net: was not trusted".
    env = {**os.environ, "SPARSEKIT_CONFIG_DIR": str(tmp_path / "cfg"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "sparsekit", "trust", "--forget", "wheel24.never"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("Warning: wheel24.never: was not trusted"), run.stderr
