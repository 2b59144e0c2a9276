"""Example model factories for sparsekit recipes and ``--arch``.

Each factory is a plain function with JSON-able keyword arguments, so a checkpoint can rebuild the
model from ``factory`` + ``kwargs`` (e.g. ``examples.models:small_cnn`` with ``{"width": 16}``).
Layers have stable names (``fc1``, ``conv2``, ``layer1.conv1`` ...) for recipe patterns such as
``exclude: ["fc3"]``. Construction is deterministic under ``torch.manual_seed``.

=================  =====================  ===============================
factory            input (per sample)     data source
=================  =====================  ===============================
``lenet_300_100``  ``[784]``              ``mnist5k`` (input_shape [1, 784])
``small_cnn``      ``[1, 28, 28]``        ``mnist5k``; ``image_size=8`` for ``digits``
``resnet_small``   ``[1, 28, 28]``        ``mnist5k``; ``image_size=8`` for ``digits``
``mlp``            ``[64]``               ``digits`` (input_shape [1, 64])
=================  =====================  ===============================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "ResNetSmall",
    "SmallCNN",
    "lenet_300_100",
    "mlp",
    "resnet_small",
    "small_cnn",
]


class MLP(nn.Module):
    """Fully connected ReLU network with layers ``fc1 .. fcK``; the last one is the classifier.

    The input is flattened, so ``[N, 784]`` and ``[N, 1, 28, 28]`` both work.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        sizes = [int(in_features), *(int(h) for h in hidden), int(num_classes)]
        self.names = [f"fc{i}" for i in range(1, len(sizes))]
        for name, fan_in, fan_out in zip(self.names, sizes[:-1], sizes[1:], strict=True):
            self.add_module(name, nn.Linear(fan_in, fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        *hidden, head = (getattr(self, name) for name in self.names)
        for layer in hidden:
            x = F.relu(layer(x))
        return head(x)


class SmallCNN(nn.Module):
    """Three conv-bn-relu-maxpool blocks (w, 2w, 4w channels), then ``fc1`` (128) and ``fc2``.

    The convolutions hold nearly all the MACs (about 7.4M of 7.6M per 28x28 image at ``width=32``),
    so removing channels structurally shortens inference, not just the parameter count.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"small_cnn needs image_size >= 8 (three 2x2 poolings), got {image_size}")
        w = int(width)
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.pool = nn.MaxPool2d(2)
        side = image_size // 2 // 2 // 2
        self.fc1 = nn.Linear(4 * w * side * side, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = self.pool(F.relu(self.bn3(self.conv3(x))))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers and a residual add; a 1x1 conv-bn ``shortcut`` when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """Stem ``conv1``/``bn1``, blocks ``layer1`` (w), ``layer2`` (2w, /2), ``layer3`` (4w, /2), ``fc``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"resnet_small needs image_size >= 4 (two stride-2 blocks), got {image_size}")
        w = int(width)
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = BasicBlock(w, w)
        self.layer2 = BasicBlock(w, 2 * w, stride=2)
        self.layer3 = BasicBlock(2 * w, 4 * w, stride=2)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        # Global average pooling makes the head independent of image_size.
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def lenet_300_100(in_features: int = 784, num_classes: int = 10) -> MLP:
    """LeNet-300-100: ``fc1`` (784->300), ``fc2`` (300->100), ``fc3`` (100->10), ReLU between.

    Input ``[N, 784]`` or ``[N, 1, 28, 28]`` (flattened); recipe ``input_shape: [1, 784]``.
    """
    return MLP(in_features, (300, 100), num_classes)


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: int = 28) -> SmallCNN:
    """Small conv-bn-relu CNN (``conv1..3``, ``bn1..3``, ``fc1``, head ``fc2``).

    Input ``[N, in_channels, image_size, image_size]``; recipe ``input_shape: [1, 1, 28, 28]``
    for mnist5k, or ``image_size=8`` with ``[1, 1, 8, 8]`` for digits.
    """
    return SmallCNN(in_channels, num_classes, width, image_size)


def resnet_small(in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28) -> ResNetSmall:
    """Small residual CNN with BatchNorm (stem, three BasicBlocks, global average pooling, ``fc``).

    Input ``[N, in_channels, image_size, image_size]``; any ``image_size >= 4`` works since the
    head follows global pooling. Recipe ``input_shape: [1, 1, 28, 28]`` for mnist5k.
    """
    return ResNetSmall(in_channels, num_classes, width, image_size)


def mlp(in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10) -> MLP:
    """ReLU MLP for the 8x8 digits data: ``fc1`` (64->128), ``fc2`` (128->64), head ``fc3``.

    Input ``[N, 64]`` or ``[N, 1, 8, 8]`` (flattened); recipe ``input_shape: [1, 64]``.
    """
    return MLP(in_features, hidden, num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet_300_100": lenet_300_100,
    "small_cnn": small_cnn,
    "resnet_small": resnet_small,
    "mlp": mlp,
}
