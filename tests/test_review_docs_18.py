"""The documentation as a contract: the examples that --help texts teach work as written."""

from __future__ import annotations

import re
import shlex

import click
import pytest
from click.testing import CliRunner
from conftest import ROOT

import sparsekit
from sparsekit.cli import main

# The top-level --help makes my-recipe.yaml with `sparsekit recipes lenet-gradual-magnitude-90 > my-recipe.yaml`.
MY_RECIPE = "lenet-gradual-magnitude-90"


def help_examples() -> list[tuple[str, list[str]]]:
    """Every `sparsekit ...` command line in every command's --help, continuation lines joined."""
    found = []
    for name in ["", *main.commands]:
        text = CliRunner().invoke(main, [*([name] if name else []), "--help"]).output
        joined = text.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            if "sparsekit " not in line or line.startswith(("Usage:", "(")):
                continue
            # A shell pipe or redirection ends the command line (`> my-recipe.yaml`, `| less`).
            words = shlex.split(line.split("#", 1)[0].split(">", 1)[0].split("|", 1)[0])
            if "sparsekit" not in words:
                continue
            words = words[words.index("sparsekit") + 1 :]
            if words and words[0] in main.commands:
                found.append((name or "sparsekit", words))
    return found


def test_help_examples_parse_and_their_overrides_validate():
    examples = help_examples()
    assert len(examples) >= 15, examples  # the walk really saw the examples
    bad = []
    for where, words in examples:
        command = main.commands[words[0]]
        try:
            ctx = command.make_context(words[0], list(words[1:]), parent=click.Context(main, info_name="sparsekit"))
        except click.ClickException as err:
            bad.append(f"{where}: {' '.join(words)}: {err.format_message()}")
            continue
        recipe = ctx.params.get("recipe")
        if recipe is None:
            continue
        recipe = MY_RECIPE if str(recipe) == "my-recipe.yaml" else str(recipe)
        try:
            sparsekit.load_recipe(recipe, overrides=list(ctx.params.get("overrides") or ()))
        except sparsekit.RecipeError as err:
            bad.append(f"{where}: {' '.join(words)}: {err}")
    assert bad == []


def test_every_int8_figure_in_the_readme_names_the_benchmark_that_produced_it():
    readme = (ROOT / "README.md").read_text()
    # A paragraph, list item or table row quoting int8 against fp32 ("0.60x of fp32", "0.254x of fp32").
    blocks = [b for b in re.split(r"\n\s*\n|\n(?=\|)|\n(?=- )", readme) if re.search(r"\d\.\d+x of fp32", b)]
    assert len(blocks) >= 2, blocks  # the int8 speed paragraph and the methods table's int8 row
    unnamed = [b[:120] for b in blocks if not re.search(r"benchmarks/\w+\.py", b)]
    assert unnamed == []


def test_every_benchmark_script_the_docs_name_exists():
    docs = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "results" / "README.md"]
    named = {m for doc in docs for m in re.findall(r"benchmarks/(\w+)\.py", doc.read_text())}
    assert "int8_speed" in named
    missing = sorted(n for n in named if not (ROOT / "benchmarks" / f"{n}.py").is_file())
    assert missing == []


def test_the_readme_synopsis_of_every_command_names_all_its_options():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Commands\n\n```\n", 1)[1].split("```", 1)[0]
    synopsis: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        m = re.match(r"sparsekit (\w+)", line)
        name = m.group(1) if m else name  # indented lines go on the command above
        if name:
            synopsis[name] = synopsis.get(name, "") + line.split("  #", 1)[0] + "\n"
    # Said once in the prose below the block for every command: --kwargs "wherever --arch is accepted",
    # --no-progress, --debug; --help everywhere.
    prose = {"--kwargs", "--no-progress", "--debug", "--help"}
    missing = []
    for cmd_name, cmd in main.commands.items():
        for param in cmd.params:
            spellings = [o for o in getattr(param, "opts", []) if o.startswith("-")]
            if not spellings or prose & set(spellings):
                continue
            text = synopsis.get(cmd_name, "")
            if not any(re.search(re.escape(o) + r"(?![\w-])", text) for o in spellings):
                missing.append(f"{cmd_name} {spellings[-1]}")
    assert missing == []


RECIPE = {
    "version": 1,
    "model": {"input_shape": [1, 64]},
    "data": {"source": "digits", "batch_size": 64},
    "finetune": {"epochs": 1},
    "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot", "layers": {"exclude": ["fc3"]}}],
    "benchmark": {"enabled": False},
}


def test_run_prune_and_plan_take_the_kwargs_their_errors_ask_for(tmp_path):
    """A state_dict made with other factory kwargs than the defaults: the error says "give them: kwargs={...}", as
    `--kwargs` does on the command line, but run_prune and plan took no kwargs (TypeError). They now do."""
    import torch

    from examples.models import mlp

    torch.save(mlp(hidden=[32, 16]).state_dict(), tmp_path / "w.pt")
    arch = "examples.models:mlp"
    with pytest.raises(sparsekit.ModelFileError, match=r"kwargs=\{\.\.\.\}"):
        sparsekit.plan(RECIPE, tmp_path / "w.pt", arch=arch)
    res = sparsekit.plan(RECIPE, tmp_path / "w.pt", arch=arch, kwargs={"hidden": [32, 16]})
    assert res["model"]["factory"] == arch
    assert res["methods"][0]["layers"] == ["fc1", "fc2"]
    with pytest.raises(TypeError, match=r"plan\(kwargs=\.\.\.\).*recipe\.model\.kwargs"):
        sparsekit.plan(sparsekit.load_recipe(RECIPE), tmp_path / "w.pt", arch=arch, kwargs={"hidden": [32, 16]})
    with pytest.raises(TypeError, match=r"run_prune\(kwargs=\.\.\.\): expected a dict"):
        sparsekit.run_prune(tmp_path / "w.pt", RECIPE, tmp_path / "out", arch=arch, kwargs='{"hidden": [32, 16]}')
    assert not (tmp_path / "out").exists()  # refused before the folder is touched


def test_report_names_every_file_it_rewrote(mlp_checkpoint, tmp_path):
    """`sparsekit report DIR` re-renders report.md and the plots (its help, the README) and rewrites report.json,
    but said only "Wrote DIR/report.md"."""
    import yaml
    from conftest import fast_prune

    out, recipe = tmp_path / "out", tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert fast_prune(mlp_checkpoint, recipe, out, "--arch", "examples.models:mlp").exit_code == 0
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots  # the run drew some
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"Wrote {out / 'report.md'}")
    assert all(name in line for name in ["report.json", *plots]), line
