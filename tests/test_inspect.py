"""`sparsekit inspect`: per-layer rows that add up to the totals, truthful MAC columns, unknown shown as
unknown, and the same answer for a .pt and the .onnx exported from it."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bad_input

import sparsekit
from sparsekit.cli import main

CNN = ("--arch", "examples.models:small_cnn", "--kwargs", '{"image_size": 8}')


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def inspected(*args) -> dict:
    result = run("inspect", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def pruned_checkpoint(tmp_path, model, factory, kwargs, shape, recipe):
    """``model`` pruned one shot by ``recipe`` (a dict) and saved as a sparsekit checkpoint."""
    pruner = sparsekit.Pruner(model, sparsekit.Recipe(**recipe), steps_per_epoch=1, context={"input_shape": shape})
    pruned = pruner.finalize()
    path = tmp_path / "pruned.pt"
    sparsekit.save_model(pruned, path, factory=factory, kwargs=kwargs, input_shape=shape, pruner=pruner)
    return path, pruned


CASES = {
    "mlp": (
        "examples.models:mlp",
        {"in_features": 64, "hidden": [64, 32]},
        [1, 64],
        {"pruning": [{"method": "magnitude", "sparsity": 0.83, "layers": {"exclude": ["fc3"]}}]},
    ),
    "cnn-with-batchnorm": (
        "examples.models:small_cnn",
        {"image_size": 8},
        [1, 1, 8, 8],
        {"pruning": [{"method": "magnitude", "sparsity": 0.7, "scope": "layer"}]},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pt_and_exported_onnx_agree(tmp_path, case):
    from examples import models

    factory, kwargs, shape, recipe = CASES[case]
    torch.manual_seed(0)
    model = getattr(models, factory.split(":")[1])(**kwargs)
    pt, pruned = pruned_checkpoint(tmp_path, model, factory, kwargs, shape, recipe)
    onnx_path = tmp_path / "pruned.onnx"
    exported = run("export", pt, "-o", onnx_path, "--exporter", "torchscript", "--storage", "dense", "--trust-code")
    assert exported.exit_code == 0, exported.stderr

    a, b = inspected(pt, "--trust-code"), inspected(onnx_path)
    assert a["format"] == "torch" and b["format"] == "onnx"
    assert 0.5 < a["sparsity"] < 0.9
    # The run's own definition of sparsity (report.json), on both sides: zeros of the prunable weights.
    assert a["sparsity"] == b["sparsity"] == pytest.approx(sparsekit.sparsity(pruned), abs=0)
    rows_a = {r["name"]: r for r in a["layers"]}
    rows_b = {r["name"]: r for r in b["layers"]}
    assert set(rows_a) == set(rows_b)
    for name, row in rows_a.items():
        for key in ("weights", "nonzero_weights", "sparsity", "macs", "effective_macs"):
            assert row[key] == rows_b[name][key], (name, key)
    for key in ("weights", "nonzero_weights", "macs", "effective_macs"):
        assert a[key] == b[key], key
    if case == "mlp":  # nothing to fold: the files hold the same parameters
        assert (a["params"], a["nonzero_params"]) == (b["params"], b["nonzero_params"])
        for name, row in rows_a.items():
            assert (row["params"], row["nonzero_params"]) == (rows_b[name]["params"], rows_b[name]["nonzero_params"])
    else:  # the exporter folds BatchNorm into the convolution before it (which gains a bias)
        assert a["other_params"]["types"] == ["BatchNorm2d"] and b["other_params"]["params"] == 0

    # Sparse storage is another encoding of the same weights: the same counts.
    sparse = tmp_path / "sparse.onnx"
    assert (
        run("export", pt, "-o", sparse, "--exporter", "torchscript", "--storage", "sparse", "--trust-code").exit_code
        == 0
    )
    c = inspected(sparse)
    assert (c["sparsity"], c["nonzero_weights"], c["effective_macs"]) == (
        b["sparsity"],
        b["nonzero_weights"],
        b["effective_macs"],
    )


def test_rows_count_biases_and_add_up_to_the_total(tmp_path):
    from examples.models import small_cnn

    torch.manual_seed(0)
    model = small_cnn(image_size=8)
    path, _ = pruned_checkpoint(
        tmp_path, model, "examples.models:small_cnn", {"image_size": 8}, [1, 1, 8, 8],
        {"pruning": [{"method": "magnitude", "sparsity": 0.5}]},
    )  # fmt: skip
    res = inspected(path, "--trust-code")
    modules = dict(model.named_modules())
    for row in res["layers"]:
        m = modules[row["name"]]
        bias = m.bias.numel() if m.bias is not None else 0
        assert row["weights"] == m.weight.numel() and row["params"] == m.weight.numel() + bias
        assert row["nonzero_params"] == int((m.weight != 0).sum()) + (int((m.bias != 0).sum()) if bias else 0)
    total = sum(p.numel() for p in model.parameters())
    bns = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    bn, bn_nonzero = sum(p.numel() for p in bns), sum(int((p != 0).sum()) for p in bns)  # fresh BN biases are 0
    assert res["params"] == total
    assert sum(r["params"] for r in res["layers"]) + res["other_params"]["params"] == total
    assert res["other_params"] == {"params": bn, "nonzero_params": bn_nonzero, "types": ["BatchNorm2d"]}
    text = run("inspect", path, "--trust-code").stdout
    header = next(line for line in text.splitlines() if line.startswith("layer"))
    assert header.split()[-4:] == ["dense", "MACs", "nonzero", "MACs"]
    assert "(BatchNorm2d)" in text and f"{total:,}" in text.splitlines()[-2]
    # A half-pruned conv: its nonzero MACs are about half its dense MACs, in their own columns.
    conv2 = next(r for r in res["layers"] if r["name"] == "conv2")
    line = next(line for line in text.splitlines() if line.startswith("conv2 "))
    assert line.split()[-2:] == [f"{conv2['macs']:,}", f"{conv2['effective_macs']:,}"]
    assert conv2["effective_macs"] < 0.75 * conv2["macs"]


def test_unknown_macs_are_unknown_not_zero(tmp_path):
    from examples.models import small_cnn

    sd = tmp_path / "cnn.pt"
    torch.save(small_cnn(image_size=8).state_dict(), sd)
    res = inspected(sd, *CNN)  # a conv net's input size cannot be read off its weights
    assert res["input_shape"] is None and res["macs"] is None and res["effective_macs"] is None
    assert all(r["macs"] is None for r in res["layers"])
    assert res["macs_unknown"] == [r["name"] for r in res["layers"]]
    text = run("inspect", sd, *CNN).stdout
    conv1 = next(line for line in text.splitlines() if line.startswith("conv1 "))
    assert conv1.split()[-2:] == ["unknown", "unknown"]
    assert "pass --input-shape for MACs" in text
    known = inspected(sd, *CNN, "--input-shape", "1,1,8,8")
    assert known["macs"] == sum(r["macs"] for r in known["layers"]) > 0


def test_onnx_layers_shape_inference_cannot_size_are_unknown(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1).flatten(1))

    path = tmp_path / "anysize.onnx"
    axes = {"input": {0: "batch", 2: "h", 3: "w"}, "output": {0: "batch"}}
    torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["input"],
                      output_names=["output"], dynamic_axes=axes)  # fmt: skip
    res = inspected(path)
    rows = {r["name"]: r for r in res["layers"]}
    assert rows["conv"]["macs"] is None and rows["fc"]["macs"] == 40
    assert res["macs"] is None and res["macs_unknown"] == ["conv"]
    text = run("inspect", path).stdout
    assert "MACs unknown for conv" in text
    assert next(line for line in text.splitlines() if line.startswith("total")).split()[-2:] == ["unknown"] * 2


USER_NET = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        # Conv2d also takes an unbatched [C, H, W] input: [1, 8, 8] runs, read as one 8x8 channel.
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.conv(x).mean((-2, -1)))

    def build():
        return Net()
""")


def test_an_input_shape_without_its_batch_dim_is_named_as_given(tmp_path, monkeypatch):
    (tmp_path / "anybatch.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    sd = tmp_path / "net.pt"
    torch.save(__import__("anybatch").build().state_dict(), sd)
    arch = ("--arch", "anybatch:build")
    for command in (("inspect", sd, *arch), ("export", sd, *arch, "-o", tmp_path / "n.onnx")):
        line = assert_bad_input(run(*command, "--input-shape", "1,8,8"), "[1, 8, 8]", "--input-shape 1,1,8,8")
        assert "[1, 2, 8, 8]" not in line and "[2, 8, 8]" not in line  # never a shape the user did not give
    assert not (tmp_path / "n.onnx").exists()
    ok = run("export", sd, *arch, "-o", tmp_path / "n.onnx", "--input-shape", "1,1,8,8", "--exporter", "torchscript")
    assert ok.exit_code == 0, ok.stderr
    line = assert_bad_input(run("bench", tmp_path / "n.onnx", "--input-shape", "1,8,8", "--runs", "1"), "1,8,8")
    assert "--input-shape 1,1,8,8" in line
    assert inspected(tmp_path / "n.onnx")["input_shape"] == ["batch", 1, 8, 8]


FC_FIRST = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        # fc is registered first, so sparsekit guesses [1, 144] from it; the input goes to conv: [N, 1, 8, 8].
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4 * 6 * 6, 10)
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    def build():
        return Net()
""")


def test_a_guessed_input_shape_that_does_not_fit_is_said_to_be_a_guess(tmp_path, monkeypatch):
    (tmp_path / "fcfirst.py").write_text(FC_FIRST)
    monkeypatch.syspath_prepend(str(tmp_path))
    sd = tmp_path / "net.pt"
    torch.save(__import__("fcfirst").build().state_dict(), sd)
    arch = ("--arch", "fcfirst:build")
    # inspect: the table all the same, MACs unknown, and a note saying why.
    result = run("inspect", sd, *arch)
    assert result.exit_code == 0, result.stderr
    (note,) = [line for line in result.stdout.splitlines() if line.startswith("Note:")]
    assert "MACs unknown: the input shape guessed from the first layer [1, 144]" in note
    assert "the model does not accept it" in note and note.endswith("(--input-shape)")
    assert next(line for line in result.stdout.splitlines() if line.startswith("total")).split()[-2:] == ["unknown"] * 2
    res = inspected(sd, *arch)
    assert res["input_shape"] is None and res["macs"] is None and "guessed" in res["input_shape_note"]
    assert [r["name"] for r in res["layers"]] == ["fc", "conv"] and res["params"] == 1450 + 40
    assert inspected(sd, *arch, "--input-shape", "1,1,8,8")["input_shape_note"] is None
    # A shape the user gave is not a guess: still an error.
    assert_bad_input(run("inspect", sd, *arch, "--input-shape", "1,144"), "--input-shape [1, 144]")
    # export: the error says the shape was guessed, and how to give one.
    line = assert_bad_input(
        run("export", sd, *arch, "-o", tmp_path / "n.onnx"),
        "the input shape guessed from the first layer [1, 144]",
        "sparsekit guessed it: pass e.g. --input-shape",
    )
    assert "neither --input-shape nor the file gave one" in line
    assert not (tmp_path / "n.onnx").exists()


def test_inspect_onnx_refuses_torch_only_options(tmp_path, mlp_checkpoint):
    onnx_path = tmp_path / "m.onnx"
    assert run("export", mlp_checkpoint, "-o", onnx_path, "--exporter", "torchscript", "--trust-code").exit_code == 0
    assert_bad_input(run("inspect", onnx_path, "--input-shape", "1,64"), "--input-shape", ".onnx")


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_int8_files_count_the_same_layers(tmp_path, case):
    from examples import models

    factory, kwargs, shape, recipe = CASES["mlp" if case == "mlp" else "cnn-with-batchnorm"]
    torch.manual_seed(0)
    model = getattr(models, factory.split(":")[1])(**kwargs)
    pt, _ = pruned_checkpoint(tmp_path, model, factory, kwargs, shape, recipe)
    # BatchNorm folds into the convolutions in ONNX (which gain a bias): compare with the fp32 ONNX file.
    fp32_onnx = tmp_path / "fp32.onnx"
    result = run("export", pt, "-o", fp32_onnx, "--exporter", "torchscript", "--storage", "dense", "--trust-code")
    assert result.exit_code == 0, result.stderr
    fp32 = inspected(fp32_onnx)
    dynamic = tmp_path / "dynamic.onnx"  # MatMulInteger / ConvInteger layers, no calibration data
    result = run("export", pt, "-o", dynamic, "--quantize", "int8", "--exporter", "torchscript", "--trust-code")
    assert result.exit_code == 0, result.stderr
    q = inspected(dynamic)
    rows = {r["name"]: r for r in q["layers"]}
    assert {r["type"] for r in rows.values()} == {"MatMulInteger"} | ({"ConvInteger"} if case == "cnn" else set())
    assert q["other_params"]["params"] == 0  # each bias counted with its layer (a conv's behind a Reshape)
    for row in fp32["layers"]:
        other = rows[row["name"]]
        assert (other["weights"], other["params"], other["shape"]) == (row["weights"], row["params"], row["shape"])
        # Rounding to int8 can only add zeros; pruned zeros stay zero.
        assert row["nonzero_weights"] - 0.02 * row["weights"] <= other["nonzero_weights"] <= row["nonzero_weights"]
        assert other["macs"] == row["macs"]  # integer matmuls are sized like their float ones
        assert other["effective_macs"] <= row["effective_macs"]
    assert q["params"] == fp32["params"] and q["sparsity"] >= fp32["sparsity"]


def test_onnx_weights_that_are_nan_or_inf_are_reported_not_refused(tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from examples.models import mlp

    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    sparsekit.export_onnx(mlp(), path, [1, 64], exporter="torchscript", check_parity=False)
    clean = inspected(str(path))
    assert clean["non_finite"] == {}
    assert "Warning" not in run("inspect", str(path)).output

    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 2)
    values = numpy_helper.to_array(init).copy()
    values.flat[[3, 7]] = [np.nan, np.inf]
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(path))
    assert inspected(str(path))["non_finite"] == {init.name: 2}
    result = run("inspect", str(path))
    assert result.exit_code == 0, result.output
    assert f"Warning: 2 stored weights are NaN or inf, in {init.name} (2)" in result.stderr  # warnings: stderr


def test_a_bias_the_exporter_stored_once_counts_for_every_layer_that_uses_it(tmp_path):
    # Untrained BatchNorms fold into all-zero conv biases; TorchScript stores equal tensors once and hands
    # the copies out through Identity nodes. Each conv still has its own bias: every row counts it.
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
    ).eval()
    path = tmp_path / "m.onnx"
    sparsekit.export_onnx(model, path, [1, 1, 8, 8], exporter="torchscript")
    import onnx

    assert any(n.op_type == "Identity" for n in onnx.load(str(path)).graph.node)  # the case under test
    rows = inspected(path)["layers"]
    assert [r["params"] - r["weights"] for r in rows] == [8, 8, 8]


def test_layers_sharing_one_stored_weight_keep_their_own_names(tmp_path):
    # Two Linear layers with equal weights: TorchScript stores the tensor once and feeds the second layer
    # through Identity('0.weight' -> '2.weight'); the second row is layer 2, not a second layer 0.
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with torch.no_grad():
        model[2].weight.copy_(model[0].weight)
        model[2].bias.copy_(model[0].bias)
    path = tmp_path / "m.onnx"
    sparsekit.export_onnx(model, path, [1, 8], exporter="torchscript")
    import onnx

    assert any(n.op_type == "Identity" for n in onnx.load(str(path)).graph.node)
    assert [(r["name"], r["params"]) for r in inspected(path)["layers"]] == [("0", 72), ("2", 72)]


class _TiedReshaped(torch.nn.Module):
    """fc2 reuses fc1's weight (tied), and the input is reshaped by its own batch size (Shape -> Reshape in
    ONNX, which plain shape inference cannot follow)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(256, 256), torch.nn.Linear(256, 256), torch.nn.Linear(256, 10)
        self.fc2.weight = self.fc1.weight

    def forward(self, x):
        h = torch.relu(self.conv(x.reshape(x.shape[0], 1, 8, 8))).reshape(x.shape[0], -1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(h)))))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_tied_and_reshaping_models_give_the_same_rows_for_pt_and_onnx(tmp_path, exporter):
    torch.manual_seed(0)
    model = _TiedReshaped().eval()
    with torch.no_grad():
        model.fc1.weight.mul_(model.fc1.weight.abs() > 0.03)  # some zeros, in the shared weight
    pt = tmp_path / "m.pt"
    torch.save(model.state_dict(), pt)
    onnx_path = tmp_path / "m.onnx"
    sparsekit.export_onnx(model, onnx_path, [1, 64], exporter=exporter)
    a = inspected(pt, "--arch", f"{__name__}:_TiedReshaped", "--input-shape", "1,64")
    b = inspected(onnx_path)
    distinct = sum(p.numel() for p in model.parameters())  # the shared weight once
    assert a["params"] == b["params"] == distinct
    assert a["nonzero_params"] == b["nonzero_params"] == sum(int((p != 0).sum()) for p in model.parameters())
    assert [r["name"] for r in a["layers"]] == [r["name"] for r in b["layers"]] == ["conv", "fc1", "fc2", "fc3"]
    assert {r["name"]: r.get("shared_with") for r in b["layers"]}["fc2"] == "fc1"
    assert b["macs"] is not None and a["macs"] == b["macs"] == 4 * 9 * 64 + 2 * 256 * 256 + 2560
    assert a["sparsity"] == pytest.approx(b["sparsity"]) == pytest.approx(sparsekit.sparsity(model))
    text = run("inspect", onnx_path).stdout
    assert "MACs unknown" not in text
    # The graph holds one node per call: tied modules and one module called twice read alike there, not in the .pt.
    assert "fc2 shares its weight with fc1 (tied, or one layer the forward calls more than once" in text
    text = run("inspect", pt, "--arch", f"{__name__}:_TiedReshaped", "--input-shape", "1,64").stdout
    assert "fc2 shares its weight with fc1 (tied):" in text


class _TiedNoBias(torch.nn.Module):
    """enc and dec share a bias-free weight: torch exports them as MatMuls, dec's weight through an Identity."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(64, 64, bias=False)
        self.mid = torch.nn.Linear(64, 64)
        self.dec = torch.nn.Linear(64, 64, bias=False)
        self.dec.weight = self.enc.weight
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.dec(torch.relu(self.mid(torch.relu(self.enc(x)))))))


def test_a_bias_free_tie_read_through_an_identity_counts_once_and_keeps_its_macs(tmp_path):
    # inspect of the ONNX file counted the shared weight twice (13,002 params for 8,906) and had no MACs for dec.
    torch.manual_seed(0)
    model = _TiedNoBias().eval()
    with torch.no_grad():
        model.enc.weight.mul_(model.enc.weight.abs() > 0.05)
    pt, onnx_path = tmp_path / "m.pt", tmp_path / "m.onnx"
    torch.save(model.state_dict(), pt)
    sparsekit.export_onnx(model, onnx_path, [1, 64], exporter="torchscript")
    import onnx

    assert any(n.op_type == "Identity" for n in onnx.load(str(onnx_path)).graph.node)
    a = inspected(pt, "--arch", f"{__name__}:_TiedNoBias", "--input-shape", "1,64")
    b = inspected(onnx_path)
    assert a["params"] == b["params"] == sum(p.numel() for p in model.parameters())
    assert a["nonzero_params"] == b["nonzero_params"]
    assert b["macs"] == a["macs"] == 3 * 64 * 64 + 640
    assert {r["name"]: r.get("shared_with") for r in b["layers"]}["dec"] == "enc"


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_equal_but_untied_layers_count_for_each_layer(tmp_path, exporter):
    # deepcopy'd blocks start equal; the dynamo exporter stores equal tensors once and every layer reads that one
    # name. Not a tie (torch holds three weights), so each layer counts, under its own name.
    import copy

    block = torch.nn.Linear(16, 16)
    model = torch.nn.Sequential(block, torch.nn.ReLU(), copy.deepcopy(block), torch.nn.ReLU(), copy.deepcopy(block))
    path = tmp_path / "m.onnx"
    sparsekit.export_onnx(model, path, [1, 16], exporter=exporter)
    res = inspected(path)
    assert res["params"] == sum(p.numel() for p in model.parameters()) == 3 * 272
    names = [r["name"] for r in res["layers"]]
    assert len(set(names)) == 3 and not any(r.get("shared_with") for r in res["layers"])


def test_a_matmul_weight_read_through_a_transpose_shows_torchs_layout(tmp_path):
    # Stored [out, in] and transposed in the graph for MatMul: the stored layout is torch's already.
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, 12), np.float32), "fc.weight")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "fc.bias")
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["fc.weight"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["h"]),
            helper.make_node("Add", ["h", "fc.bias"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w, b],
    )
    path = tmp_path / "t.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    (row,) = inspected(path)["layers"]
    assert row["shape"] == [3, 12] and row["params"] == 39


class _TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = torch.nn.Linear(8, 16), torch.nn.Linear(4, 16), torch.nn.Linear(16, 3)

    def forward(self, x, z):
        return self.head(torch.relu(self.a(x) + self.b(z)))


def test_inspect_names_every_input_of_an_onnx_file(tmp_path):
    # Before: only the first input's shape was shown, as if the file took one input.
    path = tmp_path / "two.onnx"
    torch.onnx.export(
        _TwoInputs().eval(),
        (torch.randn(1, 8), torch.randn(1, 4)),
        str(path),
        dynamo=False,
        input_names=["x", "z"],
        dynamic_axes={"x": {0: "n"}, "z": {0: "n"}},
    )
    res = inspected(path)
    assert res["inputs"] == {"x": ["n", 8], "z": ["n", 4]}
    assert res["input_shape"] == ["n", 8]  # the first, as before
    text = run("inspect", path)
    assert text.exit_code == 0, text.stderr
    assert "inputs x ['n', 8], z ['n', 4]" in text.stdout.splitlines()[0]
