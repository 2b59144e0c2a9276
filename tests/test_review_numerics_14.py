"""Review (numerics): the numbers a run reports are of the model the user gave, or the run says how they differ."""

from __future__ import annotations

import torch

from examples.models import mlp
from sparsekit.modelio import read_model

ARCH = "examples.models:mlp"
KW = {"in_features": 64, "hidden": [32], "num_classes": 10}


def test_float64_weights_rounded_to_float32_are_noted(tmp_path):
    # A float64 checkpoint went into the architecture's float32 layers without a word: every value rounded, and the
    # run's accuracy, parity and model.pt were of that rounded float32 model while the file said float64.
    torch.manual_seed(0)
    path = tmp_path / "w64.pt"
    torch.save({k: v.double() for k, v in mlp(**KW).state_dict().items()}, path)
    loaded = read_model(path, ARCH, kwargs=KW)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    (note,) = [n for n in loaded.notes if "float64" in n]
    assert "rounded to the model's float32 layers" in note and "model.to(torch.float64)" in note, note


def test_inspect_says_float64_weights_were_rounded(tmp_path):
    # `sparsekit inspect` of a float64 checkpoint counted the weights after they were rounded into float32 layers
    # without a word: values below float32's range showed as zeros the file does not hold (fc1 sparsity 0.385 of
    # a dense file).
    from click.testing import CliRunner

    import sparsekit
    from sparsekit.cli import main

    torch.manual_seed(0)
    model = mlp(**KW).double()
    with torch.no_grad():
        model.fc1.weight[:4] *= 1e-50  # nonzero in float64, 0.0 in float32
    path = tmp_path / "w64.pt"
    sparsekit.save_model(model, path, factory=ARCH, kwargs=KW, input_shape=[1, 64])
    res = CliRunner().invoke(main, ["inspect", str(path), "--arch", ARCH])
    assert res.exit_code == 0, res.output
    assert "Note: " in res.output and "its weights are float64" in res.output, res.output
    assert "one below float32's range counts as a zero" in res.output
    data = sparsekit.inspect(path, arch=ARCH)
    assert any("float64" in n for n in data["notes"]), data["notes"]


def test_load_model_gives_float64_weights_back_as_saved(tmp_path):
    # sparsekit.save_model(float64 model) then sparsekit.load_model gave a float32 model: every weight rounded (and
    # one below float32's range a zero), silently. Python's load_model now builds the model in the file's dtype.
    import sparsekit

    torch.manual_seed(0)
    model = mlp(**KW).double()
    with torch.no_grad():
        model.fc1.weight[0, 0] = 1e-50
    path = tmp_path / "w64.pt"
    sparsekit.save_model(model, path, factory=ARCH, kwargs=KW, input_shape=[1, 64])
    back = sparsekit.load_model(path, arch=ARCH)
    assert {p.dtype for p in back.parameters()} == {torch.float64}
    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    x = torch.randn(3, 64, dtype=torch.float64)
    assert torch.equal(back(x), model.eval()(x))
    # A float16 file still goes into the float32 layers (README: 'float16/bfloat16 weights load into ... float32')
    torch.save({k: v.half() for k, v in mlp(**KW).state_dict().items()}, tmp_path / "w16.pt")
    half = sparsekit.load_model(tmp_path / "w16.pt", arch=ARCH, kwargs=KW)
    assert {p.dtype for p in half.parameters()} == {torch.float32}


def test_float64_model_takes_float32_batches_and_counts_macs(one_thread):
    # sparsekit.finetune(a float64 model, recipe, float32 loaders) raised "DataError: data: the model fails on a batch
    # of inputs [16, 8]: mat1 and mat2 must have the same dtype" (blaming the data), and sparsekit.layer_report(model,
    # input_shape) a bare RuntimeError: sparsekit fed float32 inputs whatever the model's dtype. Inputs now go in the
    # model's floating dtype (the distillation teacher's too).
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import sparsekit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 13), nn.ReLU(), nn.Linear(13, 3)).double()
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    recipe = {
        "version": 1,
        "model": {"input_shape": [1, 8]},
        "finetune": {"epochs": 2, "distill": {"weight": 0.5, "temperature": 2.0}},
        "pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 1}}],
    }
    sparsekit.finetune(model, recipe, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert sum(int((m.weight == 0).sum()) for m in (model[0], model[2])) == round(0.5 * (104 + 39))
    rows = sparsekit.layer_report(model, [1, 8])
    assert [r["macs"] for r in rows] == [104, 39]


def test_export_says_float64_weights_were_rounded(tmp_path):
    # `sparsekit export w64.pt` wrote the ONNX file of the float32-rounded model and called its parity ok and its
    # zeros kept, without a word that the file's float64 weights (one of them below float32's range) were rounded.
    from click.testing import CliRunner

    import sparsekit
    from sparsekit.cli import main

    torch.manual_seed(0)
    model = mlp(**KW).double()
    path = tmp_path / "w64.pt"
    sparsekit.save_model(model, path, factory=ARCH, kwargs=KW, input_shape=[1, 64])
    res = CliRunner().invoke(
        main, ["export", str(path), "--arch", ARCH, "-o", str(tmp_path / "m.onnx"), "--exporter", "torchscript"]
    )
    assert res.exit_code == 0, res.output
    assert "Note: " in res.stderr and "its weights are float64" in res.stderr, res.stderr
