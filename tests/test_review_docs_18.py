"""The documentation as a contract: the examples that --help texts teach work as written."""

from __future__ import annotations

import shlex

import click
from click.testing import CliRunner

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
