"""Review (int8 angle, round 27): int8 calibration, export and bench of users' own models and files."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from sparsekit.errors import ExportError
from sparsekit.onnx import export_onnx, quantize_int8

torch.set_num_threads(1)


class _ImageAndMeta(nn.Module):
    """A forward of two tensors, as README's "Models of several inputs" prunes and exports."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(5, 16), nn.Linear(16, 4)

    def forward(self, image, meta):
        return self.head(torch.relu(self.a(image) + self.b(meta)))


def _two_input_file(tmp_path):
    torch.manual_seed(0)
    model = _ImageAndMeta().eval()
    path = tmp_path / "two.onnx"
    export_onnx(model, path, input_shape=[[1, 8], [1, 5]])
    g = torch.Generator().manual_seed(1)
    image, meta, y = torch.randn(48, 8, generator=g), torch.randn(48, 5, generator=g), torch.randint(0, 4, (48,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(image, meta, y), batch_size=16)
    return model, path, image, meta, loader


def test_a_model_of_several_inputs_calibrates_on_the_batches_finetune_takes(tmp_path, one_thread):
    # ((image, meta), labels) is what sparsekit.finetune trains such a model on; calibration refused it
    # ("give calibration batches as dicts"), so the loader a model was fine-tuned with could not calibrate it.
    model, path, image, meta, loader = _two_input_file(tmp_path)
    batches = [((a, b), y) for a, b, y in loader]
    info = quantize_int8(path, tmp_path / "two.int8.onnx", calibration=batches)
    assert info["mode"] == "static" and info["calibration_batches"] == 3
    session = ort.InferenceSession(str(tmp_path / "two.int8.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": image.numpy(), "meta": meta.numpy()})[0]
    with torch.no_grad():
        want = model(image, meta).numpy()
    # Each tensor calibrated its own input: int8 outputs within a few quantization steps of fp32.
    assert np.max(np.abs(got - want)) < 0.1 * np.max(np.abs(want))


def test_a_batch_with_the_wrong_number_of_inputs_is_named(tmp_path, one_thread):
    _, path, image, meta, _ = _two_input_file(tmp_path)
    with pytest.raises(ExportError, match=r"holds 3 input\(s\) but the model takes 2 \['image', 'meta'\]"):
        quantize_int8(path, tmp_path / "q.onnx", calibration=[((image, meta, meta), None)])
    assert not (tmp_path / "q.onnx").exists()


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("src") / "mlp.onnx"
    export_onnx(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval(), path, (1, 6))
    return path


def _quantize(src, out):
    quantize_int8(src, out, calibration=[np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)])


def _sparse(src, out):
    from sparsekit.onnx import to_sparse_storage

    to_sparse_storage(src, out)


def _choose(src, out):
    from sparsekit.onnx import choose_storage

    choose_storage(src, out, "dense")


@pytest.mark.parametrize("write", [_quantize, _sparse, _choose], ids=["quantize_int8", "to_sparse_storage", "choose"])
@pytest.mark.parametrize("name", ["notes.txt", "model.pt"])
def test_no_onnx_writer_replaces_a_users_file_not_named_onnx(tmp_path, small_onnx, write, name, one_thread):
    # export_onnx refused a user's checkpoint as its output; quantize_int8, to_sparse_storage and choose_storage
    # replaced it with an ONNX graph without a word.
    from sparsekit.errors import OutputError

    mine = tmp_path / name
    mine.write_bytes(b"the user's own bytes")
    with pytest.raises(OutputError, match="is not an .onnx file"):
        write(small_onnx, mine)
    assert mine.read_bytes() == b"the user's own bytes"
    write(small_onnx, tmp_path / "fresh.onnx")  # an .onnx name is written, as before
    assert (tmp_path / "fresh.onnx").stat().st_size > 0


@pytest.mark.parametrize("inputs", ["image only", "tuple", "dict"])
def test_eval_data_of_a_model_of_several_inputs_is_refused_before_quantizing(tmp_path, inputs, one_thread):
    # Scoring feeds one input: a tuple of the inputs was read as "2 inputs but 48 labels", and one array failed after
    # the whole quantization with onnxruntime's "Required inputs (['meta']) are missing from input feed".
    _, path, image, meta, loader = _two_input_file(tmp_path)
    x = {"image only": image, "tuple": (image, meta), "dict": {"image": image, "meta": meta}}[inputs]
    with pytest.raises(ExportError, match=r"eval_data scores a model of one input") as err:
        quantize_int8(path, tmp_path / "q.onnx", [((image, meta), None)], eval_data=(x, torch.zeros(48, dtype=int)))
    assert "labels" not in str(err.value) and "missing" not in str(err.value)
    assert not (tmp_path / "q.onnx").exists()


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.body, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn2(self.body(torch.relu(self.bn(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_inspect_names_an_int8_conv_with_its_batchnorm_folded_in_as_the_fp32_file_does(tmp_path, static, one_thread):
    # The TorchScript exporter folds each BatchNorm into its Conv and may store the folded weight as "onnx::Conv_NN"
    # (here: a BatchNorm with a zeroed scale): the layer is named by its node ("/body/Conv" -> body), which the int8
    # file's short names renamed ("n8", "nb"), so `sparsekit inspect` listed a layer the model does not have.
    from sparsekit.inspection import inspect

    torch.manual_seed(0)
    model = _ConvBN().eval()
    with torch.no_grad():
        model.bn2.weight[1] = 0  # a channel a BatchNorm-scale criterion silenced: its folded weight is stored anew
    fp32 = tmp_path / "cnn.onnx"
    export_onnx(model, fp32, (1, 1, 8, 8), exporter="torchscript")
    assert "body.weight" not in {t.name for t in onnx.load(str(fp32)).graph.initializer}  # the case at hand
    calibration = [np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)] if static else None
    quantize_int8(fp32, tmp_path / "q.onnx", calibration=calibration)
    names = [row["name"] for row in inspect(fp32)["layers"]]
    assert names == ["stem", "body", "fc"]
    assert [row["name"] for row in inspect(tmp_path / "q.onnx")["layers"]] == names
