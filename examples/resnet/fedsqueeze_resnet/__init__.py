"""A CIFAR-style ResNet (He et al., 2016) for fedsqueeze: 3 stages of basic blocks with batch norm.

``resnet(depth=20)`` is ResNet-20 (3 x 3 blocks, 16/32/64 channels, 272k
parameters on 28x28 grey images); ``depth`` is 6n + 2. Nothing in it knows
fedsqueeze: FedAvg and the autoencoder method take it as it is; FedCompress
reads its penultimate embedding at the input of ``fc`` (the last
``nn.Linear``); REFT cuts its channels with torch-pruning, which keeps the
residual additions consistent.
"""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (a 1x1 conv and BN where the shape changes), then ReLU."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, blocks: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, inputs = [], width
        for stage in range(3):
            outputs = width * 2 ** stage
            for block in range(blocks):
                stages.append(BasicBlock(inputs, outputs, 2 if stage and not block else 1))
                inputs = outputs
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(inputs, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


def resnet(input_shape: tuple[int, int, int], num_classes: int, depth: int = 20, width: int = 16) -> nn.Module:
    """ResNet-``depth`` (6n + 2: 8, 14, 20, 32, ...) with ``width`` channels in its first stage."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 (8, 14, 20, ...), not {depth}")
    if len(input_shape) != 3:
        raise ValueError(f"a ResNet takes images (C, H, W), not inputs of shape {list(input_shape)}")
    return ResNet(input_shape[0], num_classes, (depth - 2) // 6, width)
