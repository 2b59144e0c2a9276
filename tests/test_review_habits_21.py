"""Review round 21 (habits from other toolkits): recipes written the way SparseML, NNI, Distiller,
torch.nn.utils.prune and Torch-Pruning spell them, and near-misses of sparsekit's own schema."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main
from sparsekit.errors import RecipeError, TargetError
from sparsekit.layers import check_names

MAGNITUDE = "version: 1\npruning:\n  - method: magnitude\n"
STRUCTURED = "version: 1\npruning:\n  - method: structured\n"


@pytest.mark.parametrize(
    ("text", "field", "meant"),
    [
        # Torch-Pruning's ignored_layers read "did you mean 'layers'?": the one key that selects what IS pruned.
        (
            STRUCTURED + "    ratio: 0.5\n    ignored_layers: [fc3]\n",
            "pruning[0].ignored_layers",
            "sparsekit's is ignore",
        ),
        (STRUCTURED + "    pruning_ratio: 0.5\n", "pruning[0].pruning_ratio", "sparsekit's is ratio"),
        (STRUCTURED + "    ratio: 0.5\n    iterative_steps: 5\n", "pruning[0].iterative_steps", "sparsekit's is steps"),
        (MAGNITUDE + "    amount: 0.5\n", "pruning[0].amount", "sparsekit's is sparsity"),
        (MAGNITUDE + "    final_sparsity: 0.9\n", "pruning[0].final_sparsity", "sparsekit's is sparsity"),
        (MAGNITUDE + "    sparsity: 0.9\n    update_frequency: 0.5\n", "update_frequency", "schedule: {every: ...}"),
        (MAGNITUDE + "    sparsity: 0.9\n    params: __ALL_PRUNABLE__\n", "pruning[0].params", "layers.include"),
        (MAGNITUDE + "    sparsity: 0.9\n    op_types: [Linear]\n", "pruning[0].op_types", "layers.types"),
        (MAGNITUDE + "    sparsity: 0.9\n    ignored_layers: [fc3]\n", "ignored_layers", "layers: {exclude: ...}"),
        (
            "version: 1\nconfig_list:\n  - {sparsity_per_layer: 0.8, op_types: [Linear]}\n",
            "config_list is NNI's word",
            "pruning",
        ),
        ("version: 1\nmodifiers: []\n", "modifiers: unknown key: modifiers is SparseML's word", "pruning"),
    ],
)
def test_another_toolkits_key_names_the_sparsekit_key(tmp_path, text, field, meant):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    line = assert_bad_input(result, field, meant)
    assert "did you mean 'layers'" not in line
    assert "required key missing" not in line  # pruning_ratio / amount are the size the user wrote
    with pytest.raises(RecipeError, match=meant.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        sparsekit.load_recipe(recipe)


def test_another_toolkits_key_in_an_override_names_the_dotted_path(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MAGNITUDE + "    sparsity: 0.5\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", "pruning.0.amount=0.5"])
    assert_bad_input(result, "write pruning.0.amount as pruning.0.sparsity")


@pytest.mark.parametrize(
    ("method", "meant"),
    [
        # torch.nn.utils.prune's magnitude pruning read "did you mean 'structured'?": the opposite of unstructured.
        ("l1_unstructured", "method: magnitude"),
        ("global_unstructured", "method: magnitude (with scope: global)"),
        ("random_unstructured", "use one of"),
        ("L1NormPruner", "method: structured (with importance: l1)"),
        ("GlobalMagnitudePruningModifier", "method: magnitude"),
        ("AGPPruner", "method: magnitude"),
        ("taylor", "method: gradient (with criterion: taylor"),
        ("movement", "method: gradient (with criterion: movement"),
    ],
)
def test_another_toolkits_method_names_the_sparsekit_method(tmp_path, method, meant):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\npruning:\n  - method: {method}\n    sparsity: 0.5\n", encoding="utf-8")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), f"'{method}'", meant)
    assert "did you mean 'structured'" not in line
    with pytest.raises(RecipeError, match=re.escape(meant)):
        sparsekit.load_recipe(recipe)


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\npruning:\n\t- method: magnitude\n\t  sparsity: 0.9\n",  # indented with tabs
        "version: 1\npruning:\n  - method:\tmagnitude\n    sparsity: 0.9\n",  # a tab after the colon
    ],
)
def test_a_tab_is_named_as_the_fault(tmp_path, text):
    # PyYAML's "found character '\t' that cannot start any token" did not say that YAML takes spaces only.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text, encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "r.yaml (line 3", "tab", "spaces")
    with pytest.raises(RecipeError, match="replace the tab with spaces"):
        sparsekit.load_recipe(recipe)


@pytest.mark.parametrize(
    ("entry", "field", "fraction"),
    [
        # '90%' is how SparseML's docs and papers state a sparsity; the error did not say what to write instead.
        ("sparsity: 90%", "pruning[0].sparsity", "0.9"),
        ("sparsity: '12.5 %'", "pruning[0].sparsity", "0.125"),
        ("sparsity: auto\n    target: 95%", "pruning[0].target", "0.95"),
        ("sparsity: 0.9\n    max_layer_sparsity: 99%", "pruning[0].max_layer_sparsity", "0.99"),
        ("sparsity: 0.9\n    scope: layer\n    layer_sparsity: {fc1: 80%}", "layer_sparsity.fc1", "0.8"),
    ],
)
def test_a_percentage_names_the_fraction(tmp_path, entry, field, fraction):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{MAGNITUDE}    {entry}\n", encoding="utf-8")
    hint = f"a percentage; write it as the fraction {fraction}"
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), field, hint)
    with pytest.raises(RecipeError, match=re.escape(hint)):
        sparsekit.load_recipe(recipe)


@pytest.mark.parametrize(
    ("entry", "named", "write"),
    [
        # Each read only "missing 'method:'", naming neither the key the user did write nor the method it held.
        ("Method: magnitude", "Method: 'magnitude'", "write method: magnitude"),
        ("type: structured\n    ratio: 0.5", "type: 'structured'", "write method: structured"),
        ("class: AutomatedGradualPruner", "class: 'AutomatedGradualPruner'", "write method: magnitude"),
        ("name: l1_unstructured", "name: 'l1_unstructured'", "write method: magnitude"),
    ],
)
def test_an_entry_naming_its_method_under_another_key_says_so(tmp_path, entry, named, write):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\npruning:\n  - {entry}\n    sparsity: 0.5\n", encoding="utf-8")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "pruning[0]", named, write)
    assert "'structured'" not in line or "structured" in entry
    with pytest.raises(RecipeError, match=re.escape(write)):
        sparsekit.load_recipe(recipe)


def test_an_entry_without_any_method_still_lists_the_methods(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npruning:\n  - sparsity: 0.5\n", encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "missing 'method:'; use one of 'magnitude'")


@pytest.mark.parametrize(
    ("where", "text", "field", "write"),
    [
        # YAML 1.1 reads `quantize: no` as false, `~` as null; "got a boolean False" said neither why nor what to write.
        ("export", "{quantize: no}", "export.quantize", "write none"),
        ("export", "{quantize: off}", "export.quantize", "write none"),
        ("export", "{quantize: ~}", "export.quantize", "write none"),
        ("finetune", "{optimizer: {name: yes}}", "finetune.optimizer.name", "write one of them"),
    ],
)
def test_a_yaml_boolean_where_a_word_goes_says_why(tmp_path, where, text, field, write):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\n{where}: {text}\n", encoding="utf-8")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), field, write)
    assert "YAML reads" in line
    with pytest.raises(RecipeError, match=write):
        sparsekit.load_recipe(recipe)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize(
    ("entry", "hint"),
    [
        # SparseML's params: / Distiller's weights: name parameters, SparseML also __ALL_PRUNABLE__ and re:...; each
        # was told only that it "matches no layer".
        ("{method: magnitude, sparsity: 0.5, layers: [fc1.weight]}", "'fc1.weight' names a parameter"),
        ("{method: magnitude, sparsity: 0.5, layers: {exclude: ['*.bias']}}", "write '*'"),
        ("{method: magnitude, sparsity: 0.5, layers: [__ALL_PRUNABLE__]}", "sparsekit's '*'"),
        ("{method: magnitude, sparsity: 0.5, layers: ['re:fc[12]']}", "shell globs"),
    ],
)
def test_a_layer_named_as_other_toolkits_name_it_says_how_to_write_it(entry, hint):
    recipe = sparsekit.Recipe(**yaml.safe_load(f"pruning: [{entry}]"))
    with pytest.raises(TargetError, match=re.escape(hint)):
        sparsekit.Pruner(_Tiny(), recipe, steps_per_epoch=1)


def test_a_parameter_name_in_ignore_says_how_to_write_it():
    with pytest.raises(TargetError, match=r"pruning\[0\]\.ignore: 'fc2\.weight' matches no layer .*write 'fc2'"):
        check_names(_Tiny(), ["fc2.weight"], "pruning[0].ignore")


@pytest.mark.parametrize(
    ("entry", "field", "per_layer"),
    [
        # NNI's and SparseML's one-value-per-layer habit read only "must be a number or 'auto'".
        (
            MAGNITUDE + "    sparsity: {fc1: 0.5, fc2: 0.9}\n",
            "pruning[0].sparsity",
            "layer_sparsity: {layer: fraction}",
        ),
        (MAGNITUDE + "    sparsity: [0.5, 0.9]\n", "pruning[0].sparsity", "layer_sparsity"),
        (STRUCTURED + "    ratio: {fc1: 0.5}\n", "pruning[0].ratio", "layer_ratio: {layer: fraction}"),
    ],
)
def test_per_layer_values_in_the_size_key_name_the_per_layer_key(tmp_path, entry, field, per_layer):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(entry, encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), field, f"per-layer values go in {per_layer}")
    with pytest.raises(RecipeError, match=re.escape(per_layer)):
        sparsekit.load_recipe(recipe)


@pytest.mark.parametrize(("written", "meant"), [("torch.nn.Conv2d", "Conv2d"), ("torch.nn.Linear", "Linear")])
def test_a_layer_type_written_as_its_class_path_names_the_type(tmp_path, written, meant):
    # NNI's op_types and Torch-Pruning's code name torch.nn.Conv2d; no "did you mean" came for the full path.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{MAGNITUDE}    sparsity: 0.5\n    layers: {{types: [{written}]}}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert_bad_input(result, "pruning[0].layers.types[0]", f"did you mean {meant!r}?")


@pytest.mark.parametrize(
    ("finetune", "field", "write"),
    [
        # Lightning / Hugging Face configs name these with a word; "must be a mapping (got text 'adam')" did not say
        # that the word is the mapping's name.
        ("{optimizer: adam}", "finetune.optimizer", "write it as {name: adam}"),
        ("{lr_schedule: cosine}", "finetune.lr_schedule", "write it as {name: cosine}"),
    ],
)
def test_a_word_where_a_named_mapping_goes_says_to_write_its_name(tmp_path, finetune, field, write):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nfinetune: {finetune}\n", encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), field, write)
    with pytest.raises(RecipeError, match=re.escape(write)):
        sparsekit.load_recipe(recipe)


@pytest.mark.parametrize(
    ("text", "field", "meant"),
    [
        # Training settings as Keras / Lightning / Hugging Face name them listed the keys, or guessed nothing.
        ("finetune: {optimizer: {name: adam, learning_rate: 0.1}}", "finetune.optimizer.learning_rate", "is lr"),
        ("finetune: {learning_rate: 0.1}", "finetune.learning_rate", "write it as optimizer: {lr: ...}"),
        ("num_train_epochs: 3", "num_train_epochs", "write it as finetune: {epochs: ...}"),
        ("data: {per_device_train_batch_size: 8}", "data.per_device_train_batch_size", "sparsekit's is batch_size"),
    ],
)
def test_a_training_key_of_another_toolkit_names_the_sparsekit_key(tmp_path, text, field, meant):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\n{text}\n", encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), field, meant)


@pytest.mark.parametrize(
    ("tag", "hint"),
    [
        # A SparseML recipe's first line refused the tag and said nothing of what sparsekit writes instead.
        (
            "!GlobalMagnitudePruningModifier",
            "a pruning entry: SparseML's GlobalMagnitudePruningModifier is sparsekit's",
        ),
        ("!EpochRangeModifier", "its end_epoch is sparsekit's finetune.epochs"),
        ("!LearningRateModifier", "write its settings as sparsekit keys"),
    ],
)
def test_a_sparseml_modifier_tag_says_what_sparsekit_writes(tmp_path, tag, hint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\npruning:\n  - {tag}\n    final_sparsity: 0.9\n", encoding="utf-8")
    assert_bad_input(
        CliRunner().invoke(main, ["validate", str(recipe)]), "r.yaml (line 3", "YAML tag not allowed", hint
    )
    with pytest.raises(RecipeError, match=re.escape(hint)):
        sparsekit.load_recipe(recipe)


@pytest.mark.parametrize("entry", [MAGNITUDE + "    sparsity: 100\n", STRUCTURED + "    ratio: 100\n"])
def test_a_hundred_percent_is_not_answered_with_one(tmp_path, entry):
    # "did you mean 1?" offered a value that is refused too ("must be < 1").
    recipe = tmp_path / "r.yaml"
    recipe.write_text(entry, encoding="utf-8")
    line = assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "must be < 1", "0.99 keeps 1%")
    assert "did you mean 1?" not in line


@pytest.mark.parametrize(
    "text", ["- sparsity_per_layer: 0.8\n  op_types: [Linear]\n", "- method: magnitude\n  sparsity: 0.8\n"]
)
def test_a_recipe_that_is_a_list_of_entries_says_where_they_go(tmp_path, text):
    # An NNI config_list file (a bare list of steps) read only "the recipe must be a YAML mapping (got list)".
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text, encoding="utf-8")
    hint = "a list of pruning entries goes under the key pruning"
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "must be a YAML mapping (got list)", hint)
    with pytest.raises(RecipeError, match=hint):
        sparsekit.load_recipe(recipe)


@pytest.mark.parametrize(
    ("pruning", "hint"),
    [
        # Entries keyed by method (as Distiller keys its pruners) or one entry without its '- ' read only "must be a
        # list, written [a, b]".
        ("  magnitude:\n    sparsity: 0.8\n", "write pruning: [{method: magnitude, sparsity: 0.8}]"),
        ("  method: magnitude\n  sparsity: 0.8\n", "write '- method: ...' under pruning:"),
    ],
)
def test_pruning_written_as_a_mapping_says_how_to_write_the_list(tmp_path, pruning, hint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\npruning:\n{pruning}", encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), "pruning: must be a list", hint)
    with pytest.raises(RecipeError, match=re.escape(hint)):
        sparsekit.load_recipe(recipe)


def test_the_recipe_modules_docstring_examples_run():
    # The module's example loaded the shipped LeNet recipe with finetune.epochs=2, which its schedule (end_epoch 3)
    # refuses: the first line a Python user copies raised a RecipeError.
    import doctest

    import sparsekit.recipe as recipe_module

    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(recipe_module, globs=vars(recipe_module).copy()):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize(
    ("entry", "field", "meant"),
    [
        (STRUCTURED + "    ratio: 0.5\n    pruning_ratio_dict: {fc1: 0.3}\n", "pruning_ratio_dict", "is layer_ratio"),
        (
            MAGNITUDE + "    sparsity: 0.5\n    pruning_ratio_dict: {fc1: 0.3}\n",
            "pruning_ratio_dict",
            "is layer_sparsity",
        ),
        (
            MAGNITUDE + "    sparsity: 0.5\n    max_sparsity_per_layer: 0.9\n",
            "max_sparsity_per_layer",
            "max_layer_sparsity",
        ),
    ],
)
def test_per_layer_keys_of_other_toolkits_name_the_sparsekit_key(tmp_path, entry, field, meant):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(entry, encoding="utf-8")
    assert_bad_input(CliRunner().invoke(main, ["validate", str(recipe)]), f"pruning[0].{field}: unknown key", meant)


@pytest.mark.parametrize("written", ["100%", "150%", "-5%"])
def test_a_percentage_out_of_range_is_not_offered_a_fraction_refused_too(written):
    with pytest.raises(RecipeError) as err:
        sparsekit.load_recipe({"pruning": [{"method": "magnitude", "sparsity": written}]})
    assert "write it as the fraction" not in str(err.value)
    assert "out of range" in str(err.value)
