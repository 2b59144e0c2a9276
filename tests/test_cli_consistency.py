"""The command line as a whole: every option explained, the same options where the same thing is meant,
fast commands that stay fast (no torch/onnx import), shipped recipes shown whole."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner
from conftest import ROOT, assert_bad_input

from sparsekit.cli import main
from sparsekit.recipe_catalog import RECIPES_DIR


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def commands() -> dict[str, click.Command]:
    return dict(main.commands)


def options(command: click.Command) -> list[click.Option]:
    ctx = click.Context(command, info_name=command.name, parent=click.Context(main, info_name="sparsekit"))
    return [p for p in command.get_params(ctx) if isinstance(p, click.Option)]


def test_every_option_of_every_command_has_help():
    missing = [
        f"{name} {'/'.join(opt.opts)}" for name, cmd in commands().items() for opt in options(cmd) if not opt.help
    ]
    top = [o for o in main.get_params(click.Context(main)) if isinstance(o, click.Option)]
    missing += ["sparsekit " + "/".join(o.opts) for o in top if not o.help]
    assert missing == []
    assert len(commands()) >= 9  # the walk really saw the commands
    for name, cmd in commands().items():
        assert cmd.help and len(cmd.help.split()) > 5, name
        assert run(name, "--help").exit_code == 0, name


def test_kwargs_wherever_arch_and_it_needs_arch():
    with_arch = [name for name, cmd in commands().items() if any("--arch" in o.opts for o in options(cmd))]
    assert set(with_arch) >= {"prune", "validate", "export", "inspect", "sensitivity"}
    for name in with_arch:
        assert any("--kwargs" in o.opts for o in options(commands()[name])), name
    for args in (("inspect", "m.pt"), ("export", "m.pt"), ("prune", "m.pt", "r.yaml"), ("validate", "r.yaml", "m.pt"),
                 ("sensitivity", "m.pt", "r.yaml")):  # fmt: skip
        assert_bad_input(run(*args, "--kwargs", '{"width": 8}'), "--kwargs", "--arch")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["recipes"], ["recipes", "lenet-gradual-magnitude-90"], ["validate", "lenet-gradual-magnitude-90"]],
)
def test_fast_commands_do_not_import_torch_or_onnx(argv):
    code = textwrap.dedent(f"""
        import sys
        from sparsekit.cli import main
        try:
            main({argv!r})
        except SystemExit as e:
            assert e.code in (0, None), e.code
        heavy = sorted(m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy), file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stderr, proc.stderr  # none of them loaded
    assert proc.stdout.strip()


def test_recipes_show_whole_descriptions_and_one_recipe_in_full():
    result = run("recipes", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    lenet = rows["lenet-gradual-magnitude-90"]
    # The whole leading comment block, not its first line.
    assert lenet["description"].startswith("LeNet-300-100 on mnist5k:")
    assert lenet["description"].endswith("in the sparsekit repository).")
    text = run("recipes").stdout
    for row in rows.values():
        assert row["description"].endswith((".", ")", "]")), row["name"]  # a sentence's end, never cut mid-way
        assert " ".join(row["description"].split()) in " ".join(text.split()), row["name"]
    assert max(len(line) for line in text.splitlines()) <= 100

    full = run("recipes", "lenet-gradual-magnitude-90")
    assert full.exit_code == 0, full.stderr
    assert full.stdout == (RECIPES_DIR / "lenet-gradual-magnitude-90.yaml").read_text()
    one = json.loads(run("recipes", "lenet-gradual-magnitude-90.yaml", "--json").stdout)
    assert one["name"] == "lenet-gradual-magnitude-90" and "version: 1" in one["text"]
    assert_bad_input(run("recipes", "lenet-gradual-magnitude-9"), "lenet-gradual-magnitude-9", "did you mean")


def test_export_normalize_reaches_the_data_loader(tmp_path, mlp_checkpoint, monkeypatch):
    import sparsekit.data
    from sparsekit.errors import DataError

    seen = {}

    def fake_load_data(source, **kwargs):
        seen.update(kwargs, source=source)
        raise DataError("stop here")

    monkeypatch.setattr(sparsekit.data, "load_data", fake_load_data)
    out = tmp_path / "q.onnx"
    base = ("export", mlp_checkpoint, "--arch", "examples.models:mlp", "-o", out, "--quantize", "int8")
    assert_bad_input(run(*base, "--data", "digits", "--normalize", "standard"), "stop here")
    assert seen["source"] == "digits" and seen["normalize"] == "standard" and seen["input_shape"] == [1, 64]
    assert_bad_input(run(*base, "--data", "digits"), "stop here")
    assert seen["normalize"] == "none"  # the built-in sources' default: pixels in [0, 1]
    assert_bad_input(run(*base, "--normalize", "standard"), "--normalize", "--data")
    assert_bad_input(run(*base, "--data", "x.npz", "--normalize", "standard"), "--normalize standard", "x.npz")
    assert not out.exists()
