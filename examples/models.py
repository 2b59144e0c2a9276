"""Example model factories for sparsekit recipes and ``--arch``.

Each factory is a plain function with JSON-able keyword arguments, so a checkpoint can rebuild the
model from ``factory`` + ``kwargs`` (e.g. ``examples.models:small_cnn`` with ``{"width": 16}``).
Layers have stable names (``fc1``, ``conv2``, ``layer1.conv1`` ...) for recipe patterns such as
``exclude: ["fc3"]``. Construction is deterministic under ``torch.manual_seed``.

=====================  ==================  =====================================================
factory                input (per sample)  data source
=====================  ==================  =====================================================
``lenet_300_100``      ``[784]``           ``mnist5k`` (input_shape [1, 784])
``small_cnn``          ``[1, 28, 28]``     ``mnist5k``; ``image_size=8`` for ``digits``
``resnet_small``       ``[1, 28, 28]``     ``mnist5k``; ``image_size=8`` for ``digits``
``resnet18_small``     ``[1, 28, 28]``     ``mnist5k``; ``image_size=8`` for ``digits``;
                                           ``in_channels=3, image_size=32`` for CIFAR-size images
``mobilenetv2_small``  ``[1, 28, 28]``     ``mnist5k``; ``image_size=8`` for ``digits``;
                                           ``in_channels=3, image_size=32`` for CIFAR-size images
``mlp``                ``[64]``            ``digits`` (input_shape [1, 64])
=====================  ==================  =====================================================
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
    "InvertedResidual",
    "MobileNetV2Small",
    "ResNet18Small",
    "ResNetSmall",
    "SmallCNN",
    "lenet_300_100",
    "mlp",
    "mobilenetv2_small",
    "resnet18_small",
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


class ResNet18Small(nn.Module):
    """ResNet-18 layout at a small width: stem ``conv1``/``bn1`` (3x3, stride 1, no max-pool), four
    stages ``layer1`` .. ``layer4`` of two :class:`BasicBlock` each (w, 2w, 4w, 8w channels; the first
    block of stages 2-4 halves the resolution and has a 1x1 conv-bn ``shortcut``), global average
    pooling and ``fc``. Layer names: ``layer2.0.conv1``, ``layer2.0.shortcut.0``, ``fc`` ...
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"resnet18_small needs image_size >= 8 (three stride-2 stages), got {image_size}")
        w = int(width)
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, stride=2), BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, stride=2), BasicBlock(4 * w, 4 * w))
        self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, stride=2), BasicBlock(8 * w, 8 * w))
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 ``expand`` conv-bn-ReLU6 (absent when ``expansion == 1``), 3x3 depthwise
    ``dw`` conv-bn-ReLU6 (carries the stride), linear 1x1 ``project`` conv-bn; a residual add when the
    stride is 1 and the channel count is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand: nn.Module | None = None
        if expansion != 1:
            self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand is not None:
            out = F.relu6(self.expand_bn(self.expand(out)))
        out = F.relu6(self.dw_bn(self.dw(out)))
        out = self.project_bn(self.project(out))
        return x + out if self.use_residual else out


# MobileNetV2's stages (expansion t, channels c at width 32, blocks n, stride s of the first block).
MOBILENETV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Small(nn.Module):
    """MobileNetV2 layout (17 :class:`InvertedResidual` blocks in ``blocks.0`` .. ``blocks.16``, ReLU6,
    depthwise convolutions, linear bottlenecks) with every channel count scaled by ``width / 32``
    (``width=32`` is the paper's 1.0x), a stride-1 stem ``conv1``/``bn1`` of ``width`` channels for
    small images (four stride-2 stages: 28 -> 2, 8 -> 1), 1x1 ``conv_last``/``bn_last`` (40 x width),
    global average pooling, ``dropout`` (0.2) and ``fc``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"mobilenetv2_small needs image_size >= 8, got {image_size}")
        w = int(width)
        if w < 2:
            raise ValueError(f"mobilenetv2_small needs width >= 2, got {w}")
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        blocks: list[nn.Module] = []
        channels = w
        for t, c, n, s in MOBILENETV2_STAGES:
            out = max(1, round(c * w / 32))
            for i in range(n):
                blocks.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.conv_last = nn.Conv2d(channels, 40 * w, 1, bias=False)
        self.bn_last = nn.BatchNorm2d(40 * w)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(40 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv1(x)))
        x = F.relu6(self.bn_last(self.conv_last(self.blocks(x))))
        return self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


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


def resnet18_small(in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28) -> ResNet18Small:
    """ResNet-18-style net (stem, 4 stages x 2 BasicBlocks of w/2w/4w/8w channels with downsampling
    1x1 shortcuts, global average pooling, ``fc``); 11.2M parameters at ``width=64``, 0.7M at 16.

    Input ``[N, in_channels, image_size, image_size]``, any ``image_size >= 8``: recipe
    ``input_shape: [1, 1, 28, 28]`` for mnist5k, ``image_size=8`` with ``[1, 1, 8, 8]`` for digits,
    ``in_channels=3, image_size=32`` for CIFAR-sized images.
    """
    return ResNet18Small(in_channels, num_classes, width, image_size)


def mobilenetv2_small(
    in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28
) -> MobileNetV2Small:
    """MobileNetV2-style net (inverted residuals, depthwise 3x3 convs, ReLU6, linear bottlenecks,
    dropout before ``fc``) with channels scaled by ``width / 32``; ``width=16`` is the 0.5x net.

    Input ``[N, in_channels, image_size, image_size]``, any ``image_size >= 8``: recipe
    ``input_shape: [1, 1, 28, 28]`` for mnist5k, ``image_size=8`` with ``[1, 1, 8, 8]`` for digits,
    ``in_channels=3, image_size=32`` for CIFAR-sized images.
    """
    return MobileNetV2Small(in_channels, num_classes, width, image_size)


def mlp(in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10) -> MLP:
    """ReLU MLP for the 8x8 digits data: ``fc1`` (64->128), ``fc2`` (128->64), head ``fc3``.

    Input ``[N, 64]`` or ``[N, 1, 8, 8]`` (flattened); recipe ``input_shape: [1, 64]``.
    """
    return MLP(in_features, hidden, num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet_300_100": lenet_300_100,
    "small_cnn": small_cnn,
    "resnet_small": resnet_small,
    "resnet18_small": resnet18_small,
    "mobilenetv2_small": mobilenetv2_small,
    "mlp": mlp,
}
