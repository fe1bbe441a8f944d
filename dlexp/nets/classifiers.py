"""Image classifiers, from softmax regression to ResNet: plain nn.Modules taking (B, C, H, W) images."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    """The activation module called `name` (one of ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Number of features `features` produces for one image, found by a dry run (eval mode: BN on 1 sample)."""
    training = features.training
    with torch.no_grad():
        n = features.eval()(torch.zeros(1, in_channels, image_size, image_size)).numel()
    features.train(training)
    return n


def _head(in_features: int, hidden: list[int], num_classes: int, dropout: float) -> nn.Sequential:
    """Dense classifier head: (dropout, linear, relu) per hidden size, then the logits layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(in_features, num_classes))


class Softmax(nn.Module):
    """Softmax regression: logits = W x + b on the flattened image."""

    input_kinds = ("image",)  # the data kinds it takes (checked against dataset.kind before a run)

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))  # (B, C*H*W) -> (B, classes)


class MLP(nn.Module):
    """Fully connected net; layers are named layer1, layer2, ... so they can be reused or frozen by name."""

    input_kinds = ("image",)

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden: list[int] = (300, 200, 100),
        activation: str = "relu",
        batch_norm: str = "none",
        dropout: float = 0.0,
        init: str = "he",
    ) -> None:
        super().__init__()
        if batch_norm not in ("none", "last", "all"):
            raise ValueError(f"batch_norm must be none, last or all, got '{batch_norm}'")
        if init not in ("he", "xavier", "default"):
            raise ValueError(f"init must be he, xavier or default, got '{init}'")
        in_features = in_channels * image_size * image_size
        for i, width in enumerate(hidden, start=1):
            bn = batch_norm == "all" or (batch_norm == "last" and i == len(hidden))
            layer = nn.Sequential(nn.Linear(in_features, width))
            if bn:
                layer.append(nn.BatchNorm1d(width))
            layer.append(make_activation(activation))
            if dropout > 0:
                layer.append(nn.Dropout(dropout))
            self.add_module(f"layer{i}", layer)
            in_features = width
        self.n_hidden = len(hidden)
        self.out = nn.Linear(in_features, num_classes)
        if init != "default":
            self._init_weights(init, activation)

    def _init_weights(self, init: str, activation: str) -> None:
        # He init suits the ReLU family, Xavier suits tanh/sigmoid (the notes' variance_scaling_initializer)
        nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if init == "he":
                    nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, self.n_hidden + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.out(x)

    def as_sequential(self) -> nn.Sequential:
        """The forward as a chain of this net's own modules (shared): frozen-prefix caching splits it."""
        layers = [(f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, self.n_hidden + 1)]
        return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), *layers, ("out", self.out)]))


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 input: conv6(5x5, pad 2) - maxpool - conv16(5x5) - maxpool - 120 - 84 - classes."""

    input_kinds = ("image",)

    def __init__(self, in_channels: int, image_size: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = _head(_flat_size(self.features, in_channels, image_size), [120, 84], num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # 28x28 -> (B, 16*5*5) -> logits

    def as_sequential(self) -> nn.Sequential:
        """The forward as a chain of this net's own modules (shared): frozen-prefix caching splits it."""
        return nn.Sequential(*self.features, nn.Flatten(), *self.classifier)


class ConvNet(nn.Module):
    """The notes' CNN: per channel count a conv-BN-ReLU-maxpool layer (layer1, layer2, ...), then a linear layer."""

    input_kinds = ("image",)

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        channels: list[int] = (16, 32),
        kernel_size: int = 5,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers, c_in = [], in_channels
        for i, out_channels in enumerate(channels, start=1):
            block = [nn.Conv2d(c_in, out_channels, kernel_size, padding=kernel_size // 2)]
            block += [nn.BatchNorm2d(out_channels)] if batch_norm else []
            block += [nn.ReLU(), nn.MaxPool2d(2)]
            layers.append((f"layer{i}", nn.Sequential(*block)))
            c_in = out_channels
        self.features = nn.Sequential(OrderedDict(layers))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(_flat_size(self.features, in_channels, image_size), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x).flatten(1)))  # 28x28 -> (B, 32*7*7) -> logits

    def as_sequential(self) -> nn.Sequential:
        """The forward as a chain of this net's own modules (shared): frozen-prefix caching splits it."""
        return nn.Sequential(OrderedDict([*self.features.named_children(), ("flatten", nn.Flatten()),
                                          ("dropout", self.dropout), ("fc", self.fc)]))


VGG_STAGES = {11: [1, 1, 2, 2, 2], 13: [2, 2, 2, 2, 2], 16: [2, 2, 3, 3, 3], 19: [2, 2, 4, 4, 4]}


class VGG(nn.Module):
    """VGG-style net: five stages of 3x3 convs (width x 1,2,4,8,8), max pooling while the map is >= 2 pixels."""

    input_kinds = ("image",)

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        depth: int = 13,
        width: int = 16,
        batch_norm: bool = True,
        hidden: list[int] = (256, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth not in VGG_STAGES:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_STAGES)}, got {depth}")
        layers: list[nn.Module] = []
        size, c_in = image_size, in_channels
        for n_convs, mult in zip(VGG_STAGES[depth], [1, 2, 4, 8, 8]):
            for _ in range(n_convs):
                layers += [nn.Conv2d(c_in, width * mult, 3, padding=1)]
                layers += [nn.BatchNorm2d(width * mult)] if batch_norm else []
                layers += [nn.ReLU()]
                c_in = width * mult
            if size >= 2:  # 28x28 input: 14, 7, 3, 1, then no more pooling
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = _head(_flat_size(self.features, in_channels, image_size), list(hidden), num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def as_sequential(self) -> nn.Sequential:
        """The forward as a chain of this net's own modules (shared): frozen-prefix caching splits it."""
        return nn.Sequential(*self.features, nn.Flatten(), *self.classifier)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, stages of BasicBlocks doubling width and halving size, global pool."""

    input_kinds = ("image",)

    def __init__(self, in_channels: int, num_classes: int, blocks: list[int] = (3, 3, 3), width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, c_in = [], width
        for i, n_blocks in enumerate(blocks):
            c_out, stride = width * 2**i, 1 if i == 0 else 2
            stage = [BasicBlock(c_in, c_out, stride)] + [BasicBlock(c_out, c_out, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, width * 2**(stages-1), H', W')
        return self.fc(x.mean(dim=(2, 3)))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 conv (one filter per channel) then pointwise 1x1 conv, each with BN and ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU()
        )
        self.pointwise = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SeparableNet(nn.Module):
    """MobileNet-style net: a 3x3 stem, then separable blocks (stride 2 each), global pool, dropout, linear."""

    input_kinds = ("image",)

    def __init__(
        self, in_channels: int, num_classes: int, channels: list[int] = (32, 64, 128), dropout: float = 0.0
    ) -> None:
        super().__init__()
        stem = channels[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        blocks, c_in = [], stem
        for c_out in channels:
            blocks.append(SeparableBlock(c_in, c_out, stride=2))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.blocks(self.stem(x)).mean(dim=(2, 3))))
