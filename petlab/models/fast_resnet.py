"""A small residual net for training from scratch on a CPU (`fast_resnet`).

The shape follows the DAWNBench-winning "ResNet-9" (Myrtle.ai): a few wide 3x3 convolutions with
max-pooling between them and two residual pairs, instead of many thin layers. Wide 3x3 convs are
what oneDNN runs best on a CPU (dense, channels_last, bf16), and a short net keeps the per-layer
overhead small at batch 32-64. A stride-2 stem makes 128-160 px input cost what 32 px CIFAR
images cost the original: about 0.4 G multiply-adds per 128 px image, against ResNet18's 1.8 G at
224 px and the seed CNN's 13.6 G.

Global average pooling makes it work at any input size from 32 px up.
"""

from __future__ import annotations

from torch import nn


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


def stage(in_channels: int, out_channels: int, residual: bool) -> nn.Sequential:
    layers = [conv_bn(in_channels, out_channels), nn.MaxPool2d(2)]
    if residual:
        layers.append(Residual(out_channels))
    return nn.Sequential(*layers)


class FastResNet(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.stem = conv_bn(3, width // 2, stride=2)  # 128 px -> 64
        self.layer1 = stage(width // 2, width, residual=True)  # -> 32
        self.layer2 = stage(width, width * 2, residual=False)  # -> 16
        self.layer3 = stage(width * 2, width * 4, residual=True)  # -> 8
        self.layer4 = stage(width * 4, width * 8, residual=False)  # -> 4
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width * 8, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(x))
