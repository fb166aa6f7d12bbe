"""CNN: a ResNet with basic residual blocks, laid out and named like `transformers`' `ResNetForImageClassification`.

Keys are HF's (`resnet.embedder.embedder.convolution`, `resnet.encoder.stages.N.layers.M.layer.K.normalization`,
`classifier.1`), so an HF ResNet with `layer_type="basic"` converts by copying; tests compare the two with the same
weights. The `imagenet` stem is HF's (7x7 stride-2 conv + 3x3 max-pool); the `small` stem (3x3 stride-1 conv, no
pool) keeps the resolution of 8-64 pixel images, which the ImageNet stem would shrink 4x before the first block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from plinth.config import PlinthError, option, validate


@dataclass
class CNNConfig:
    """ResNet hyperparameters; the `cnn` family's config.json fields."""

    family: ClassVar[str] = "cnn"

    name: str = option("custom", "preset this config came from (informational)")
    image_size: int = option(32, "input side in pixels the model is trained at (any size runs)", min=1)
    n_channels: int = option(3, "input channels", min=1)
    embedding_size: int = option(32, "channels out of the stem", min=1)
    hidden_sizes: list[int] = option([32, 64, 128], "channels of each stage; each stage after the first halves the "
                                                    "resolution")
    depths: list[int] = option([1, 1, 1], "residual blocks per stage")
    stem: str = option("small", "small (3x3 stride-1 conv) or imagenet (HF's 7x7 stride-2 conv + max-pool)",
                       choices=("small", "imagenet"))
    downsample_in_first_stage: bool = option(False, "stride 2 in the first stage too (HF's option)")
    n_classes: int = option(0, "classes of the classification head (0 = features only)", min=0)

    def __post_init__(self) -> None:
        validate(self, "model config")

    def check(self) -> None:
        """Cross-field rules; raises PlinthError naming the fields."""
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise PlinthError(f"hidden_sizes ({self.hidden_sizes}) and depths ({self.depths}) need one entry per stage")
        if min(self.hidden_sizes) < 1 or min(self.depths) < 1:
            raise PlinthError("hidden_sizes and depths must be positive")


PRESETS: dict[str, dict] = {
    "cnn-test": dict(image_size=16, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]),
    "cnn-tiny": dict(image_size=32, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1]),
    "resnet18": dict(image_size=224, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                     stem="imagenet"),
}


class ConvLayer(nn.Module):
    """conv (no bias) → batch norm → ReLU or nothing (HF `ResNetConvLayer`)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, activation: bool = True) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(c_in, c_out, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.normalization = nn.BatchNorm2d(c_out)
        self.activation = nn.ReLU() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) → (B, c_out, H/stride, W/stride)."""
        return self.activation(self.normalization(self.convolution(x)))


class ShortCut(nn.Module):
    """1x1 conv + batch norm matching the residual's channels and stride (HF `ResNetShortCut`)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
        self.normalization = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) → (B, c_out, H/stride, W/stride)."""
        return self.normalization(self.convolution(x))


class BasicLayer(nn.Module):
    """relu(x' + two 3x3 conv layers(x)), x' = x or its projection (HF `ResNetBasicLayer`)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.shortcut = ShortCut(c_in, c_out, stride) if c_in != c_out or stride != 1 else nn.Identity()
        self.layer = nn.Sequential(ConvLayer(c_in, c_out, stride=stride), ConvLayer(c_out, c_out, activation=False))
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) → (B, c_out, H/stride, W/stride)."""
        return self.activation(self.layer(x) + self.shortcut(x))


class Stage(nn.Module):
    """`depth` basic layers, the first one changing channels and stride (HF `ResNetStage`)."""

    def __init__(self, c_in: int, c_out: int, stride: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(BasicLayer(c_in, c_out, stride), *[BasicLayer(c_out, c_out) for _ in
                                                                         range(depth - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) → (B, c_out, H/stride, W/stride)."""
        return self.layers(x)


class Embeddings(nn.Module):
    """The stem (HF `ResNetEmbeddings`): `embedder` conv layer, then `pooler` (max-pool, or nothing for `small`)."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        big = config.stem == "imagenet"
        self.embedder = ConvLayer(config.n_channels, config.embedding_size, 7 if big else 3, 2 if big else 1)
        self.pooler = nn.MaxPool2d(3, 2, 1) if big else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, embedding_size, H', W')."""
        return self.pooler(self.embedder(x))


class Encoder(nn.Module):
    """The stages (HF `ResNetEncoder`)."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        sizes = [config.embedding_size, *config.hidden_sizes]
        first_stride = 2 if config.downsample_in_first_stage else 1
        self.stages = nn.ModuleList(Stage(sizes[i], sizes[i + 1], first_stride if i == 0 else 2, depth)
                                    for i, depth in enumerate(config.depths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, embedding_size, H, W) → (B, hidden_sizes[-1], H', W')."""
        for stage in self.stages:
            x = stage(x)
        return x


class ResNetBody(nn.Module):
    """Stem, stages and global average pool (HF `ResNetModel`): `forward` → (feature map, pooled (B, C, 1, 1))."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.embedder = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → last feature map (B, C', H', W'), pooled (B, C', 1, 1)."""
        x = self.encoder(self.embedder(pixel_values))
        return x, self.pooler(x)


class CNN(nn.Module):
    """ResNet image classifier built from a `CNNConfig`: `forward(pixel_values)` → logits (B, n_classes), or pooled
    features (B, hidden_sizes[-1]) without classes."""

    config_class = CNNConfig

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        self.resnet = ResNetBody(config)
        self.classifier = (nn.Sequential(nn.Flatten(), nn.Linear(config.hidden_sizes[-1], config.n_classes))
                           if config.n_classes else None)
        for m in self.modules():  # He init for ReLU convs (as HF's ResNetPreTrainedModel)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Globally pooled features (B, hidden_sizes[-1])."""
        return self.resnet(pixel_values)[1].flatten(1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) in fp32, or features without a classifier."""
        pooled = self.resnet(pixel_values)[1]
        return self.classifier(pooled).float() if self.classifier is not None else pooled.flatten(1)

    def flops_per_image(self) -> float:
        """Training FLOPs per image at `config.image_size`: 3 x the forward FLOPs of the convs (2 per multiply-add),
        measured with hooks on one forward pass of a blank image."""
        c, counted = self.config, []

        def hook(m: nn.Conv2d, inputs, out: torch.Tensor) -> None:
            k = m.kernel_size[0] * m.kernel_size[1]
            counted.append(2 * m.in_channels * m.out_channels * k * out.shape[-1] * out.shape[-2] // m.groups)

        handles = [m.register_forward_hook(hook) for m in self.modules() if isinstance(m, nn.Conv2d)]
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                p = next(self.parameters())
                self(torch.zeros(1, c.n_channels, c.image_size, c.image_size, device=p.device, dtype=p.dtype))
        finally:
            self.train(was_training)
            for h in handles:
                h.remove()
        return 3.0 * sum(counted)
