"""README's examples, run as written: the quick start's train + prune, the "your own model" commands,
the `--set` advice and every YAML recipe block. A README edit that breaks one fails here.

Commands are taken from README.md itself (not copied here); only output paths move to a temp folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def _command_lines() -> list[str]:
    """Every command line of README's bash blocks, comments removed."""
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)]), **env}
    exe = [sys.executable, "-m", "sparsekit"] if argv[0] == "sparsekit" else [sys.executable]
    return subprocess.run([*exe, *argv[1:]], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def test_quick_start_trains_and_prunes_as_written(tmp_path):
    (quick,) = [c for c in _command_lines() if "examples/train.py" in c and "sparsekit prune" in c]
    steps = [shlex.split(part) for part in quick.split("&&")]
    train, prune = steps[-2], steps[-1]  # after creating the venv and installing
    assert train[:2] == ["python", "examples/train.py"] and prune[:2] == ["sparsekit", "prune"]
    train = [(str(ROOT / a) if a == "examples/train.py" else a) for a in train]
    assert _run(train, tmp_path).returncode == 0
    result = _run(prune, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / prune[prune.index("-o") + 1]
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["ok"] and report["zeros_preserved"]
    for name in ("model.pt", "model.onnx", "dense.onnx", "report.md", "report.json"):
        assert (out / name).is_file(), name  # what the README says the folder holds


def test_your_own_model_commands_work_as_written(tmp_path):
    """README: "mypkg/nets.py defines build(width=...)", a state_dict, digits data, 85%."""
    lines = [c for c in _command_lines() if "mypkg.nets:build" in c]
    assert len(lines) == 2, lines
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from torch import nn\n\n\ndef build(width=32):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))\n"
    )
    import torch

    sys.path.insert(0, str(tmp_path))
    try:
        from mypkg.nets import build  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(build().state_dict(), tmp_path / "weights.pt")
    (tmp_path / "my-recipe.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\nfinetune: {epochs: 2, optimizer: {name: adam, lr: 0.002}}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.85, schedule: {start_epoch: 0, end_epoch: 1}}\n"
        "benchmark: {batch_sizes: [1], runs: 20}\n"
    )
    for line in sorted(lines, key=lambda c: "validate" not in c):  # the dry run first, as README says
        result = _run(shlex.split(line), tmp_path)
        assert result.returncode == 0, (line, result.stderr[-3000:])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["source"] == "digits"


def test_the_set_advice_for_a_shorter_run_is_right(tmp_path):
    advice = re.search(r"`(--set finetune\.epochs=2 --set pruning\.0\.schedule\.end_epoch=2[^`]*)`", README)
    assert advice, "README's --set example for a shorter run"
    ok = _run(["sparsekit", "validate", "lenet-gradual-magnitude-90", *shlex.split(advice.group(1))], tmp_path)
    assert ok.returncode == 0, ok.stderr
    args = shlex.split(advice.group(1))
    pairs = [args[i : i + 2] for i in range(0, len(args), 2)]  # ["--set", "key=value"] each
    without = [a for pair in pairs if "end_epoch" not in pair[1] for a in pair]
    bad = _run(["sparsekit", "validate", "lenet-gradual-magnitude-90", *without], tmp_path)
    assert bad.returncode == 2 and "pruning.0.schedule.end_epoch=2" in bad.stderr


@pytest.mark.parametrize("index", range(len(_blocks("yaml"))))
def test_every_yaml_block_is_a_valid_recipe(tmp_path, index):
    text = _blocks("yaml")[index]
    assert isinstance(yaml.safe_load(text), dict)
    if "(one entry of each kind and form, each valid alone" in text:  # the reference: a catalogue of entries
        from sparsekit.recipe import load_recipe

        data = yaml.safe_load(text)
        for entry in data["pruning"]:
            load_recipe({**data, "pruning": [entry]})
        text = yaml.safe_dump({**data, "pruning": []})
    (tmp_path / "r.yaml").write_text(text)
    result = _run(["sparsekit", "validate", str(tmp_path / "r.yaml")], tmp_path)
    assert result.returncode == 0, result.stderr
