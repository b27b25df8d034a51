"""The CRAFT text detector (Baek et al., CVPR 2019) as a plain PyTorch module.

Written here (no torchvision: there is no CPU build of it to depend on) so that the published
``craft_mlt_25k.pth`` state_dict loads *strictly*. That fixes the module layout:

* ``basenet.slice1..slice4`` are consecutive pieces of torchvision's ``vgg16_bn().features``, and
  each piece keeps the layer's index in that ``Sequential`` as its module name (the checkpoint keys
  are ``basenet.slice2.14.weight`` and so on), so :func:`vgg16_bn_features` rebuilds the exact
  index sequence and the slices borrow the same module objects under the same names.
* ``basenet.slice5`` replaces VGG's fc6/fc7 with a stride-1 max-pool, a dilated 3x3 conv and a 1x1
  conv (all at 1/16 resolution).
* ``upconv1..4`` are "double conv" blocks (1x1 conv + BN + ReLU, 3x3 conv + BN + ReLU) of a U-shaped
  decoder that upsamples bilinearly to each skip connection's size and concatenates.
* ``conv_cls`` maps the 32-channel feature to 2 score maps: character *region* and *affinity*.

The forward pass returns ``(maps, feature)``: maps are NHWC ``[N, H/2, W/2, 2]`` (region, affinity),
as the reference implementation returns them, so postprocessing code written for CRAFT applies as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's "D" configuration (VGG16): channel counts, "M" = 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

# [start, stop) indices of vgg16_bn().features taken by each CRAFT slice; the outputs are relu2_2,
# relu3_2, relu4_3 and relu5_3 in the reference naming (though each slice actually ends at the BN
# *before* that ReLU; the next slice starts with the ReLU).
SLICE_BOUNDS: tuple[tuple[int, int], ...] = ((0, 12), (12, 19), (19, 29), (29, 39))


def vgg16_bn_features() -> list[nn.Module]:
    """The layers of torchvision's ``vgg16_bn().features`` in order (index = position in the list)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_ch = int(item)
        conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    return layers


def _indexed_slice(layers: list[nn.Module], start: int, stop: int) -> nn.Sequential:
    seq = nn.Sequential()
    for idx in range(start, stop):
        seq.add_module(str(idx), layers[idx])
    return seq


class VGG16BNBase(nn.Module):
    """VGG16-BN trunk cut into CRAFT's five slices; returns the five feature maps deepest first."""

    def __init__(self) -> None:
        super().__init__()
        layers = vgg16_bn_features()
        self.slice1 = _indexed_slice(layers, *SLICE_BOUNDS[0])
        self.slice2 = _indexed_slice(layers, *SLICE_BOUNDS[1])
        self.slice3 = _indexed_slice(layers, *SLICE_BOUNDS[2])
        self.slice4 = _indexed_slice(layers, *SLICE_BOUNDS[3])
        self.slice5 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
            nn.Conv2d(1024, 1024, kernel_size=1),
        )

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        s1 = self.slice1(x)  # 128 ch, 1/2
        s2 = self.slice2(s1)  # 256 ch, 1/4
        s3 = self.slice3(s2)  # 512 ch, 1/8
        s4 = self.slice4(s3)  # 512 ch, 1/16
        s5 = self.slice5(s4)  # 1024 ch, 1/16
        return s5, s4, s3, s2, s1


class DoubleConv(nn.Module):
    """1x1 conv squeezing the concatenated (upsampled + skip) channels, then a 3x3 conv; BN + ReLU each."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + mid_ch, mid_ch, kernel_size=1),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CRAFT(nn.Module):
    """CRAFT: VGG16-BN encoder, U-shaped decoder, 2-channel (region, affinity) head at 1/2 resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.basenet = VGG16BNBase()
        self.upconv1 = DoubleConv(1024, 512, 256)
        self.upconv2 = DoubleConv(512, 256, 128)
        self.upconv3 = DoubleConv(256, 128, 64)
        self.upconv4 = DoubleConv(128, 64, 32)
        self.conv_cls = nn.Sequential(
            nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, kernel_size=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 2, kernel_size=1),
        )  # fmt: skip

    @staticmethod
    def _up_cat(y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([y, skip], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s5, s4, s3, s2, s1 = self.basenet(x)
        y = self.upconv1(torch.cat([s5, s4], dim=1))
        y = self.upconv2(self._up_cat(y, s3))
        y = self.upconv3(self._up_cat(y, s2))
        feature = self.upconv4(self._up_cat(y, s1))
        maps = self.conv_cls(feature)
        return maps.permute(0, 2, 3, 1), feature


__all__ = ["CRAFT", "DoubleConv", "VGG16BNBase", "vgg16_bn_features"]
