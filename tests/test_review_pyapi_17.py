"""Review (helper y3): the Python API as a user's own code uses it, under a type checker."""

from __future__ import annotations

import collections.abc
import types
import typing

import pytest


def _accepts(hint: object, value: object) -> bool:
    """Whether the resolved annotation ``hint`` admits ``value`` by its runtime type (unions, generics by origin)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(arm, value) for arm in typing.get_args(hint))
    if hint is typing.Any:
        return True
    origin = typing.get_origin(hint) or hint
    return isinstance(origin, type) and isinstance(value, origin)


def _public_callables():
    import sparsekit

    yield "Pruner", sparsekit.Pruner.__init__
    for name in ("finetune", "rehearse", "plan", "run_prune", "load_recipe", "layer_report", "inspect"):
        yield name, getattr(sparsekit, name)
    for module, cls in (
        ("sparsekit.integrations.lightning", "SparsekitCallback"),
        ("sparsekit.integrations.transformers", "SparsekitTrainerCallback"),
    ):
        try:
            yield cls, getattr(__import__(module, fromlist=[cls]), cls).__init__
        except ImportError:  # the extra is not installed
            continue


def test_annotations_admit_what_the_calls_take():
    """`mypy --strict` on a user's script refused calls the library takes and documents: a recipe dict given to
    SparsekitCallback / SparsekitTrainerCallback ('expected "Recipe | str | PathLike[str]"'), a read-only mapping
    to Pruner (its recipe was `dict[str, Any]` where finetune/rehearse/plan take a Mapping), a tuple of overrides
    to load_recipe (`list[str]`, where run_prune/plan take a Sequence), and a tuple input shape to layer_report and
    inspect (`list[int]`, where export_onnx/rehearse/save_model take a tuple, as INTERFACE.md's example passes)."""
    recipe = types.MappingProxyType({"pruning": [{"method": "magnitude", "sparsity": 0.5}]})
    wanted = {"recipe": recipe, "path": recipe, "overrides": ("seed=3",), "input_shape": (1, 20)}
    checked = set()
    for name, fn in _public_callables():
        hints = typing.get_type_hints(fn)
        for param, value in wanted.items():
            if param in hints and not (name != "load_recipe" and param == "path"):
                assert _accepts(hints[param], value), (name, param, hints[param])
                checked.add((name, param))
    assert {("Pruner", "recipe"), ("load_recipe", "overrides"), ("layer_report", "input_shape")} <= checked


def test_callbacks_take_a_recipe_dict_at_runtime():
    # (what the annotation now admits works: the callbacks read a dict as the Pruner does)
    lightning = pytest.importorskip("sparsekit.integrations.lightning")
    callback = lightning.SparsekitCallback(
        types.MappingProxyType({"pruning": [{"method": "magnitude", "sparsity": 0.5}]})
    )
    assert callback.recipe.pruning[0].method == "magnitude"
    assert isinstance(callback.recipe.pruning, collections.abc.Sequence)


@pytest.mark.parametrize("call", ["sparsity", "layer_report", "export_onnx", "finetune", "rehearse", "Pruner"])
def test_a_state_dict_or_path_given_as_the_model_is_a_type_error_naming_the_call(call, tmp_path):
    """`sparsekit.sparsity(torch.load("m.pt"))` (a state_dict) raised "AttributeError: 'collections.OrderedDict'
    object has no attribute 'named_modules'" from sparsekit/layers.py, as did layer_report, export_onnx
    ('... no attribute parameters') and finetune; rehearse's TypeError named Pruner(model=...), a call the user never
    made. Each public function taking a model now says which call and argument, and what to do."""
    import sparsekit
    from examples.models import lenet_300_100

    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}], "finetune": {"epochs": 1}}
    args = {
        "sparsity": (),
        "layer_report": (),
        "export_onnx": (tmp_path / "m.onnx", [1, 784]),
        "finetune": (recipe, [], []),
        "rehearse": (recipe, [1, 784], 4),
        "Pruner": (recipe, 4),
    }[call]
    fn = getattr(sparsekit, call)
    with pytest.raises(
        TypeError,
        match=rf"^{call}\(model=\.\.\.\): expected a torch.nn.Module, got OrderedDict; .*"
        r"load_state_dict",
    ):
        fn(lenet_300_100().state_dict(), *args)
    with pytest.raises(TypeError, match=rf"^{call}\(model=\.\.\.\).* got str; .*sparsekit.load_model\('m.pt'\)"):
        fn("m.pt", *args)
    assert not (tmp_path / "m.onnx").exists()


def test_finetune_refuses_a_pruner_built_over_another_model():
    """`finetune(model, recipe, ..., pruner=Pruner(other, recipe, n))` (a pruner built over a copy, or before the model
    was built again) trained `model` dense while the pruner masked `other`, and returned `other`, untrained, with its
    accuracy in the history; only finalize() warned that no optimizer held the pruned weights."""
    import torch

    import sparsekit
    from examples.models import lenet_300_100

    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}], "finetune": {"epochs": 1}}
    batches = [(torch.randn(8, 784), torch.randint(0, 10, (8,))) for _ in range(2)]
    model, other = lenet_300_100(), lenet_300_100()
    before = [p.detach().clone() for p in model.parameters()]
    pruner = sparsekit.Pruner(other, recipe, steps_per_epoch=2)
    with pytest.raises(ValueError, match=r"finetune\(pruner=\.\.\.\): the pruner was built over another model object"):
        sparsekit.finetune(model, recipe, batches, batches[:1], pruner=pruner, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # not trained either
    # the same model behind a wrapper is the same model
    trained, _, same = sparsekit.finetune(
        torch.nn.DataParallel(model),
        recipe,
        batches,
        batches[:1],
        pruner=sparsekit.Pruner(model, recipe, 2),
        progress=False,
    )
    assert trained is model and same.model is model


@pytest.mark.parametrize(
    ("context", "error", "words"),
    [
        (
            [1, 784],
            TypeError,
            r"Pruner\(context=\.\.\.\): expected a dict such as \{'input_shape': \[1, 784\]\}, got list",
        ),
        (
            {"input_shape": "1,784"},
            ValueError,
            r"input_shape must be the whole shape of one input, batch first.*'1,784'",
        ),
        ({"input_shape": [784]}, ValueError, r"input_shape must be the whole shape of one input, batch first.*\[784\]"),
        ({"input_size": [1, 784]}, ValueError, r"unknown key 'input_size'; the one key is 'input_shape'"),
    ],
)
def test_pruner_context_misuse_names_the_argument(context, error, words):
    """Pruner(..., context=[1, 784]) raised "cannot convert dictionary update sequence element #0 to a sequence",
    context={'input_shape': '1,784'} "invalid literal for int() with base 10: ','", and a misspelt key was ignored
    (the recipe's shape, or none, used instead of the one meant)."""
    import sparsekit
    from examples.models import lenet_300_100

    recipe = {"pruning": [{"method": "structured", "ratio": 0.5}], "finetune": {"epochs": 1}}
    with pytest.raises(error, match=words):
        sparsekit.Pruner(lenet_300_100(), recipe, 4, context=context)
    assert sparsekit.Pruner(lenet_300_100(), recipe, 4, context={"input_shape": (1, 784)}).context == {
        "input_shape": (1, 784)
    }


@pytest.mark.parametrize(
    ("call", "remedy"),
    [
        ("run_prune", r"sparsekit.save_model\(model, 'model.pt'"),
        ("plan", r"sparsekit.save_model\(model, 'model.pt'"),
        ("load_model", "it is a model already"),
        ("inspect", r"sparsekit.layer_report\(model, input_shape\)"),
        ("benchmark", r"sparsekit.export_onnx\(model, 'model.onnx', input_shape\)"),
    ],
)
def test_a_model_object_where_a_file_goes_is_a_type_error_with_the_way_out(call, remedy, tmp_path):
    """`sparsekit.run_prune(model, recipe, "out")` (the model object, not its file) raised "TypeError: expected str,
    bytes or os.PathLike object, not MLP" from inside pathlib; so did plan(recipe, model), load_model(model) and
    inspect(model), and benchmark(model) "'MLP' object is not iterable". Each now names its argument and says what
    to do with a model in memory."""
    import sparsekit
    from examples.models import lenet_300_100

    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}], "finetune": {"epochs": 1}}
    model = lenet_300_100()
    calls = {
        "run_prune": lambda m: sparsekit.run_prune(m, recipe, tmp_path / "out", progress=False),
        "plan": lambda m: sparsekit.plan(recipe, m),
        "load_model": lambda m: sparsekit.load_model(m),
        "inspect": lambda m: sparsekit.inspect(m),
        "benchmark": lambda m: sparsekit.benchmark([m]),
    }
    with pytest.raises(
        TypeError,
        match=rf"^{call}\(\w+=\.\.\.\): expected a file's path .*got \w+, a model in memory; "
        rf".*{remedy}",
    ):
        calls[call](model)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_rehearse_takes_a_float64_or_half_model(dtype):
    """sparsekit.rehearse(model.double(), structured recipe, ...) failed with ExportError "the model's parameters
    are float64, and sparsekit exports float32 models: export model.float() instead", a remedy for a call the user
    did not make, although the Pruner, finetune and layer_report take such models. Its export check now exports
    its own copy in float32 (as prune exports); the model given keeps its dtype."""
    import torch
    from torch import nn

    import sparsekit

    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 4)
    ).to(getattr(torch, dtype))
    recipe = {"pruning": [{"method": "structured", "ratio": 0.5, "schedule": "oneshot"}], "finetune": {"epochs": 1}}
    result = sparsekit.rehearse(model, recipe, [1, 1, 8, 8], 4)
    assert result.exported and result.parity is not None and result.parity["ok"]
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    assert model[0].out_channels == 8


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("sparsekit.integrations.lightning", "SparsekitCallback"),
        ("sparsekit.integrations.transformers", "SparsekitTrainerCallback"),
    ],
)
@pytest.mark.parametrize("shape", ["1,784", 784, [784]])
def test_trainer_callbacks_check_input_shape_as_the_pruner_does(module, name, shape):
    """SparsekitCallback(recipe, input_shape='1,784') raised "invalid literal for int() with base 10: ','",
    input_shape=784 "'int' object is not iterable", and [784] (no batch dimension) was taken, to fail at the start of
    fit inside tracing. Each is now a ValueError naming the callback's argument; a tuple still works."""
    callback = getattr(pytest.importorskip(module), name)
    recipe = {"pruning": [{"method": "structured", "ratio": 0.5}]}
    with pytest.raises(ValueError, match=rf"^{name}\(input_shape=\.\.\.\) must be the whole shape of one input, batch"):
        callback(recipe, input_shape=shape)
    assert callback(recipe, input_shape=(1, 784)).input_shape == [1, 784]


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("sparsekit.integrations.lightning", "SparsekitCallback"),
        ("sparsekit.integrations.transformers", "SparsekitTrainerCallback"),
    ],
)
def test_trainer_callbacks_take_a_numpy_integer_steps_per_epoch_as_the_pruner_does(module, name):
    """Pruner(model, recipe, np.int64(4)) works, but SparsekitCallback(recipe, steps_per_epoch=np.int64(4)) (a count
    computed with numpy) was refused: "steps_per_epoch must be a positive int ..., not np.int64(4)"."""
    import numpy as np

    callback = getattr(pytest.importorskip(module), name)
    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}]}
    made = callback(recipe, steps_per_epoch=np.int64(4))
    assert made.steps_per_epoch == 4 and type(made.steps_per_epoch) is int
    for bad in (2.5, "4", True):  # as the Pruner refuses them (one check, sparsekit.schedule)
        with pytest.raises(TypeError, match=rf"^{name}\(steps_per_epoch=\.\.\.\): expected an int"):
            callback(recipe, steps_per_epoch=bad)
    with pytest.raises(ValueError, match="steps_per_epoch must be > 0"):
        callback(recipe, steps_per_epoch=0)


def test_save_model_refuses_a_pruner_whose_removals_do_not_fit_the_model(tmp_path):
    """save_model(model, path, factory, pruner=pruner) with a model other than the one pruner.finalize() returned
    (a fresh instance, the dense original) wrote the pruner's channel removals beside the unpruned weights without a
    word; load_model then failed with "weights do not match the architecture ... shape mismatch", blaming the kwargs.
    A copy of the pruned model still saves and loads."""
    import copy

    import torch

    import sparsekit
    from examples.models import small_cnn

    recipe = {
        "model": {"input_shape": [1, 1, 28, 28]},
        "pruning": [{"method": "structured", "ratio": 0.5, "schedule": "oneshot"}],
        "finetune": {"epochs": 1},
    }
    model = small_cnn()
    pruner = sparsekit.Pruner(model, recipe, 1)
    pruned = pruner.finalize()
    with pytest.raises(sparsekit.ModelFileError, match=r"save_model\(pruner=\.\.\.\): the model given is not the one"):
        sparsekit.save_model(small_cnn(), tmp_path / "m.pt", "examples.models:small_cnn", pruner=pruner)
    assert not (tmp_path / "m.pt").exists()
    sparsekit.save_model(copy.deepcopy(pruned), tmp_path / "m.pt", "examples.models:small_cnn", pruner=pruner)
    back = sparsekit.load_model(tmp_path / "m.pt", arch="examples.models:small_cnn")
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(back(x), pruned.eval()(x))


def test_allow_changes_given_as_one_string_is_a_type_error(tmp_path, mlp_checkpoint):
    """run_prune(..., allow_changes="finetune.epochs") and finetune(..., allow_changes="finetune.epochs") read the
    string letter by letter: "'f' cannot be changed on a resume: no recipe has that field", and run_prune only after
    loading the data and evaluating the dense model. Now a TypeError showing the list it belongs in, up front."""
    import torch

    import sparsekit
    from examples.models import lenet_300_100

    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}], "finetune": {"epochs": 1}}
    with pytest.raises(TypeError, match=r"allow_changes must be a list .*allow_changes=\['finetune.epochs'\]"):
        sparsekit.run_prune(
            mlp_checkpoint,
            recipe,
            tmp_path / "out",
            arch="examples.models:mlp",
            allow_changes="finetune.epochs",
            progress=False,
        )
    assert not (tmp_path / "out").exists()
    batches = [(torch.randn(4, 784), torch.randint(0, 10, (4,)))]
    with pytest.raises(TypeError, match=r"allow_changes must be a list"):
        sparsekit.finetune(lenet_300_100(), recipe, batches, batches, allow_changes="finetune.epochs", progress=False)


def test_a_field_no_resume_may_change_is_refused_before_the_folder_is_touched(tmp_path, mlp_checkpoint):
    """run_prune(..., allow_changes=["bogus.x"]) without resume was refused only inside finetune, after the folder
    was prepared and the dense model evaluated: now up front, as a resume refuses it."""
    import sparsekit
    from sparsekit.errors import SparsekitError

    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}], "finetune": {"epochs": 1}}
    with pytest.raises(SparsekitError, match=r"'bogus.x' cannot be changed on a resume: no recipe has that field"):
        sparsekit.run_prune(
            mlp_checkpoint, recipe, tmp_path / "out", arch="examples.models:mlp", allow_changes=["bogus.x"]
        )
    assert not (tmp_path / "out").exists()


def test_a_failed_run_closes_the_plot_workers_pipes(tmp_path):
    """A run_prune that failed after its plot worker started (a bad allow_changes entry, a data error in training)
    stopped the worker but left its three pipes open: "ResourceWarning: unclosed file <_io.TextIOWrapper name=5>"
    per call, file descriptors held until garbage collection in a notebook that retries."""
    from sparsekit.plots import PlotWorker

    with PlotWorker(tmp_path) as plots:
        plots.start()
        proc = plots._proc
        assert proc is not None
    assert proc.poll() is not None
    assert proc.stdin.closed and proc.stdout.closed and proc.stderr.closed


@pytest.mark.parametrize(("value", "words"), [("4", "got '4'"), (2.5, "got 2.5")])
def test_plan_steps_per_epoch_of_another_type_names_plan(value, words):
    """plan(recipe, model, steps_per_epoch="4") raised "'<=' not supported between instances of 'str' and 'int'",
    and 2.5 the TypeError of a Pruner(steps_per_epoch=...) the user never built; a numpy integer is taken."""
    import numpy as np

    import sparsekit

    recipe = {"pruning": [{"method": "magnitude", "sparsity": 0.5}], "finetune": {"epochs": 1}}
    with pytest.raises(TypeError, match=rf"^plan\(steps_per_epoch=\.\.\.\): expected an int .*{words}"):
        sparsekit.plan(recipe, "model.pt", steps_per_epoch=value)
    assert sparsekit.plan(recipe, steps_per_epoch=np.int64(4))["valid"]


def test_export_and_rehearse_refuse_a_fractional_or_text_input_shape(tmp_path):
    """export_onnx(model, path, [1, 784.9]) exported for [1, 784] (int() cut the fraction) and took ["1", "784"] and
    [True, 784] as numbers; rehearse(model, recipe, [1, 784.9], n) the same. Both now refuse them, as save_model and
    the Pruner do; numpy integers still work."""
    import numpy as np

    import sparsekit
    from examples.models import lenet_300_100

    for shape in ([1, 784.9], ["1", "784"], [True, 784]):
        with pytest.raises(sparsekit.ExportError, match="input_shape must be a list of integers"):
            sparsekit.export_onnx(lenet_300_100(), tmp_path / "m.onnx", shape)
        with pytest.raises(ValueError, match=r"rehearse\(input_shape=\.\.\.\) must be the whole shape"):
            sparsekit.rehearse(lenet_300_100(), {"pruning": [{"method": "magnitude", "sparsity": 0.5}]}, shape, 4)
    assert not (tmp_path / "m.onnx").exists()
    sparsekit.export_onnx(lenet_300_100(), tmp_path / "m.onnx", [np.int64(1), np.int64(784)], exporter="torchscript")
    assert (tmp_path / "m.onnx").exists()
