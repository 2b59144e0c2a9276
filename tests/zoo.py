"""A zoo of small architectures that stress structural pruning: one per family a user brings.

Every model is a classifier returning logits ``[N, classes]`` at a small width, so the whole zoo runs
in seconds on a CPU; weights are random (deterministic under ``torch.manual_seed``), which is all the
structural tests need. :data:`FAMILIES` maps a family name to ``(factory, input_shape)`` with the
input shape batch first, as a recipe's ``model.input_shape``.

=================  ==================  ================================================================
family             input               what it stresses
=================  ==================  ================================================================
``resnet18``       ``[1, 3, 32, 32]``  basic blocks, residual adds, 1x1 downsampling shortcuts
``mobilenetv2``    ``[1, 3, 8, 8]``    inverted residuals, depthwise convs, ReLU6, linear bottlenecks
``vgg``            ``[1, 3, 8, 8]``    conv-BN stacks, flatten -> Linear, Dropout between Linears
``unet``           ``[1, 3, 32, 32]``  ConvTranspose upsampling, skip concatenation, pooled head
``densenet``       ``[1, 3, 8, 8]``    dense block: every layer's input is a concatenation
``se``             ``[1, 3, 8, 8]``    squeeze-and-excitation gate (Linear inside a conv block)
``aspp``           ``[1, 3, 8, 8]``    parallel dilated branches + image pooling, concatenated
``tcn``            ``[1, 4, 32]``      1-D causal dilated convs (Conv1d) with residuals
``tied_ae``        ``[1, 64]``         autoencoder whose decoder reuses the encoder's weights (tied)
``shared``         ``[1, 3, 8, 8]``    two branches through one conv module called twice
=================  ==================  ================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from examples.models import mobilenetv2_small, resnet18_small

__all__ = ["FAMILIES"]

CLASSES = 5


def resnet18() -> nn.Module:
    """``examples.models:resnet18_small`` on CIFAR-size RGB input, width 4."""
    return resnet18_small(in_channels=3, num_classes=CLASSES, width=4, image_size=32)


def mobilenetv2() -> nn.Module:
    """``examples.models:mobilenetv2_small`` on 8x8 RGB input, width 8 (channels 4 .. 80, last 320)."""
    return mobilenetv2_small(in_channels=3, num_classes=CLASSES, width=8, image_size=8)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class VGG(nn.Module):
    """Two conv-BN-ReLU pairs per stage, max-pool between stages, then a VGG classifier:
    flatten -> ``fc1`` -> ReLU -> Dropout -> ``fc2`` -> ReLU -> Dropout -> ``fc3``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(3, w), _conv_bn(w, w), nn.MaxPool2d(2), _conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w), nn.MaxPool2d(2)
        )
        self.fc1 = nn.Linear(2 * w * 2 * 2, 32)
        self.drop1 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 32)
        self.drop2 = nn.Dropout(0.5)
        self.fc3 = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = self.drop1(F.relu(self.fc1(x)))
        x = self.drop2(F.relu(self.fc2(x)))
        return self.fc3(x)


class UNet(nn.Module):
    """Encoder ``enc1`` (w) / ``enc2`` (2w) / ``bottleneck`` (4w) with max-pooling, decoder ``up2``,
    ``up1`` (ConvTranspose 2x2, stride 2) whose output is concatenated with the encoder's skip tensor
    before ``dec2`` / ``dec1``, a 1x1 ``seg`` conv, then global pooling and a Linear ``head``."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        w = width
        self.enc1 = _conv_bn(3, w)
        self.enc2 = _conv_bn(w, 2 * w)
        self.bottleneck = _conv_bn(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _conv_bn(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _conv_bn(2 * w, w)
        self.seg = nn.Conv2d(w, 8, 1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.seg(d1)), 1), 1))


class DenseLayer(nn.Module):
    """BN-ReLU-conv producing ``growth`` channels, concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class DenseNet(nn.Module):
    """Stem ``conv0``, a dense block of three layers (``block.0..2``, growth g), a transition
    (BN-ReLU-1x1 ``trans.conv``-avg-pool), a second dense block, BN-ReLU, global pooling, ``fc``."""

    def __init__(self, stem: int = 8, growth: int = 4) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        c = stem
        layers = []
        for _ in range(3):
            layers.append(DenseLayer(c, growth))
            c += growth
        self.block1 = nn.Sequential(*layers)
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2))
        c //= 2
        layers = []
        for _ in range(2):
            layers.append(DenseLayer(c, growth))
            c += growth
        self.block2 = nn.Sequential(*layers)
        self.bn_final = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.trans(self.block1(self.conv0(x))))
        x = F.relu(self.bn_final(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SEBlock(nn.Module):
    """Squeeze-and-excitation: global pooling, ``fc1`` (C -> C/r) ReLU, ``fc2`` (C/r -> C) sigmoid,
    channel-wise rescaling of the input."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class SENet(nn.Module):
    """Stem ``conv1``, an SE-residual block (``conv2``-BN-ReLU-``conv3``-BN, ``se``, identity add), a
    strided ``conv4``, global pooling, ``fc``."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        self.se = SEBlock(w)
        self.conv4 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(x)))))
        x = F.relu(x + self.se(out))
        x = F.relu(self.bn4(self.conv4(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ASPP(nn.Module):
    """DeepLab-style atrous spatial pyramid pooling after a stem: parallel ``b0`` (1x1), ``b1`` / ``b2``
    (3x3, dilation 2 / 3) and ``pool`` (global average -> 1x1 conv -> upsampled back), concatenated and
    fused by the 1x1 ``project``; global pooling and ``fc``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn(3, w)
        self.b0 = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(w, w, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(w, w, 3, padding=3, dilation=3, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w, w, 1), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(4 * w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.fc = nn.Linear(w, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="nearest")
        x = self.project(torch.cat([self.b0(x), self.b1(x), self.b2(x), pooled], dim=1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TemporalBlock(nn.Module):
    """Two causal dilated Conv1d (left padding only) with ReLU and dropout, and a residual add through
    a 1x1 ``downsample`` conv when the channel count changes."""

    def __init__(self, cin: int, cout: int, dilation: int, kernel: int = 3) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(cin, cout, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(cout, cout, kernel, dilation=dilation)
        self.drop = nn.Dropout(0.1)
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        out = self.drop(F.relu(self.conv2(F.pad(out, (self.pad, 0)))))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class TCN(nn.Module):
    """Temporal convolutional network on ``[N, 4, 32]``: blocks ``tcn.0..2`` (dilations 1, 2, 4),
    global average over time, ``fc``."""

    def __init__(self, in_channels: int = 4, width: int = 8) -> None:
        super().__init__()
        w = width
        self.tcn = nn.Sequential(TemporalBlock(in_channels, w, 1), TemporalBlock(w, w, 2), TemporalBlock(w, 2 * w, 4))
        self.fc = nn.Linear(2 * w, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.tcn(x).mean(dim=2))


class TiedAutoencoder(nn.Module):
    """Encoder ``enc1`` (64 -> 32), ``enc2`` (32 -> 16); the decoder reuses their weights transposed
    (tied weights, own biases ``dec1_bias`` / ``dec2_bias``) to reconstruct the 64 inputs, which a
    Linear ``head`` classifies (a denoising front-end)."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.enc1 = nn.Linear(features, 32)
        self.enc2 = nn.Linear(32, 16)
        self.dec1_bias = nn.Parameter(torch.zeros(32))
        self.dec2_bias = nn.Parameter(torch.zeros(features))
        self.head = nn.Linear(features, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.enc2(F.relu(self.enc1(torch.flatten(x, 1)))))
        h = F.relu(F.linear(z, self.enc2.weight.t(), self.dec1_bias))
        recon = F.linear(h, self.enc1.weight.t(), self.dec2_bias)
        return self.head(recon)


class SharedBranches(nn.Module):
    """Stem ``stem``, two branches ``left`` (3x3) and ``right`` (1x1) that both go through the same
    ``shared`` conv module (called twice), summed, then global pooling and ``fc``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 3, padding=1)
        self.left = nn.Conv2d(w, w, 3, padding=1)
        self.right = nn.Conv2d(w, w, 1)
        self.shared = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.fc = nn.Linear(2 * w, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        a = F.relu(self.shared(F.relu(self.left(x))))
        b = F.relu(self.shared(F.relu(self.right(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(a + b, 1), 1))


FAMILIES: dict[str, tuple[Callable[[], nn.Module], list[int]]] = {
    "resnet18": (resnet18, [1, 3, 32, 32]),
    "mobilenetv2": (mobilenetv2, [1, 3, 8, 8]),
    "vgg": (VGG, [1, 3, 8, 8]),
    "unet": (UNet, [1, 3, 32, 32]),
    "densenet": (DenseNet, [1, 3, 8, 8]),
    "se": (SENet, [1, 3, 8, 8]),
    "aspp": (ASPP, [1, 3, 8, 8]),
    "tcn": (TCN, [1, 4, 32]),
    "tied_ae": (TiedAutoencoder, [1, 64]),
    "shared": (SharedBranches, [1, 3, 8, 8]),
}
"""family -> (factory taking no arguments, batch-first input shape)."""
