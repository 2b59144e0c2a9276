"""The example model factories: output shapes, input layouts, names, determinism."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from examples.models import MODELS, lenet_300_100, mlp, resnet_small, small_cnn

INPUTS = {
    "lenet_300_100": (784,),
    "small_cnn": (1, 28, 28),
    "resnet_small": (1, 28, 28),
    "resnet18_small": (1, 28, 28),
    "mobilenetv2_small": (1, 28, 28),
    "mlp": (64,),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_factory_gives_ten_logits(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    assert model(torch.randn(3, *INPUTS[name])).shape == (3, 10)


def test_registry_and_docstrings():
    assert set(MODELS) == set(INPUTS)
    for factory in MODELS.values():
        assert "Input" in (factory.__doc__ or "")


def test_lenet_layers_and_input_layouts():
    model = lenet_300_100().eval()
    linears = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linears == {"fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)}
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(x), model(x.reshape(4, 784)))


def test_mlp_hidden_sizes_and_digits_layout():
    model = mlp(hidden=[32], num_classes=5).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert names == ["fc1", "fc2"]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize("factory", [small_cnn, resnet_small])
@pytest.mark.parametrize("image_size", [28, 8])
def test_cnns_on_mnist_and_digits_sizes(factory, image_size):
    model = factory(image_size=image_size, num_classes=7).eval()
    assert model(torch.randn(2, 1, image_size, image_size)).shape == (2, 7)


def test_cnns_other_channels_and_width():
    assert small_cnn(in_channels=3, width=8, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert resnet_small(in_channels=3, width=4, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_small_cnn_names_and_conv_dominated_macs():
    model = small_cnn()
    names = dict(model.named_modules())
    for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "fc1", "fc2"):
        assert name in names
    macs = {"conv": 0, "linear": 0}

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            macs["conv"] += output[0].numel() * module.weight[0].numel()
        else:
            macs["linear"] += module.weight.numel()

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(count)
    model.eval()(torch.randn(1, 1, 28, 28))
    # Structured channel pruning only pays off in latency if the convolutions dominate.
    assert macs["conv"] > 10 * macs["linear"]


def test_small_cnn_rejects_too_small_images():
    with pytest.raises(ValueError, match="image_size"):
        small_cnn(image_size=4)


def test_resnet_blocks_have_residual_shortcuts():
    model = resnet_small()
    assert isinstance(model.layer1.shortcut, nn.Identity)
    assert isinstance(model.layer2.shortcut[0], nn.Conv2d)
    assert isinstance(model.fc, nn.Linear)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) >= 7


@pytest.mark.parametrize("name", sorted(MODELS))
def test_construction_is_deterministic(name):
    torch.manual_seed(123)
    a = MODELS[name]().state_dict()
    torch.manual_seed(123)
    b = MODELS[name]().state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kwargs_round_trip_through_json():
    kwargs = json.loads(json.dumps({"in_features": 64, "hidden": [16, 8], "num_classes": 3}))
    model = mlp(**kwargs)
    assert model(torch.randn(2, 64)).shape == (2, 3)
