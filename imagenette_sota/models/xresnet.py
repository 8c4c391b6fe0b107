"""XResNet (ResNet-D with the bag-of-tricks tweaks) as plain PyTorch modules, matching fastai 2.8's xresnet.

Module nesting and names follow fastai's (stem ConvLayers, then stages of blocks with `convpath`/`idpath`), so a
fastai xresnet state dict loads as is (with sa=True the attention conv's spectral-norm keys differ).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = [
    "ConvBN",
    "ResBlock",
    "SimpleSelfAttention",
    "XResNet",
    "init_cnn",
    "xresnet18",
    "xresnet34",
    "xresnet50",
    "xresnet101",
    "xresnet152",
]


def init_cnn(module: nn.Module) -> None:
    """Kaiming-normal weights and zero biases for every Conv2d and Linear inside `module` (fastai's init_cnn)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvBN(nn.Sequential):
    """Conv2d without bias, BatchNorm2d, then an optional activation (fastai's ConvLayer)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: type[nn.Module] | None = None,
        zero_bn: bool = False,
    ) -> None:
        conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        bn = nn.BatchNorm2d(c_out)
        # fastai's BatchZero: the branch starts as the identity, so a deep net trains like a shallow one at first.
        nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
        layers: list[nn.Module] = [conv, bn]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SimpleSelfAttention(nn.Module):
    """x + gamma * (x x^T) W x over the flattened positions, W a spectral-normed 1x1 conv (fastai, sym=False)."""

    def __init__(self, n_in: int) -> None:
        super().__init__()
        conv = nn.Conv1d(n_in, n_in, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        self.conv = spectral_norm(conv)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the attention; the output has the input's shape."""
        flat = x.flatten(2)  # (B, C, H, W) -> (B, C, H*W)
        gram = torch.bmm(flat, flat.transpose(1, 2))  # (B, C, C)
        out = self.gamma * torch.bmm(gram, self.conv(flat)) + flat
        return out.reshape(x.shape)  # (B, C, H*W) -> (B, C, H, W)


class ResBlock(nn.Module):
    """Residual block: basic (expansion 1) or bottleneck, ResNet-D shortcut, activation after the sum."""

    def __init__(
        self,
        c_in: int,
        width: int,
        expansion: int = 1,
        stride: int = 1,
        act: type[nn.Module] = nn.ReLU,
        sa: bool = False,
    ) -> None:
        super().__init__()
        c_out = width * expansion
        # The stride sits on the 3x3 conv: the first of a basic block, the middle one of a bottleneck.
        if expansion == 1:
            branch = [
                ConvBN(c_in, width, 3, stride=stride, act=act),
                ConvBN(width, c_out, 3, zero_bn=True),
            ]
        else:
            branch = [
                ConvBN(c_in, width, 1, act=act),
                ConvBN(width, width, 3, stride=stride, act=act),
                ConvBN(width, c_out, 1, zero_bn=True),
            ]
        if sa:
            branch.append(SimpleSelfAttention(c_out))
        self.convpath = nn.Sequential(*branch)
        # ResNet-D: average-pool before the 1x1 conv instead of a strided 1x1 conv that drops 3/4 of the input.
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool2d(stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(ConvBN(c_in, c_out, 1))
        self.idpath = nn.Sequential(*shortcut)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        """act(branch(x) + shortcut(x))."""
        return self.act(self.convpath(x) + self.idpath(x))


class XResNet(nn.Sequential):
    """fastai's XResNet: 3-conv stem, max pool, residual stages, pooled dropout + linear head."""

    def __init__(
        self,
        n_out: int = 1000,
        layers: Sequence[int] = (2, 2, 2, 2),
        expansion: int = 1,
        *,
        c_in: int = 3,
        act: type[nn.Module] = nn.ReLU,
        p: float = 0.0,
        sa: bool = False,
        widen: float = 1.0,
        stem_channels: Sequence[int] = (32, 32, 64),
    ) -> None:
        stem_sizes = [c_in, *stem_channels]
        stem = [
            ConvBN(stem_sizes[i], stem_sizes[i + 1], 3, stride=2 if i == 0 else 1, act=act)
            for i in range(len(stem_channels))
        ]
        # Stages beyond the fourth (fastai's "deep" variants) are 256 wide.
        widths = [int(w * widen) for w in [64, 128, 256, 512, *[256] * (len(layers) - 4)][: len(layers)]]
        # fastai puts the attention in the last block of stage len(layers) - 4, i.e. the FIRST stage of a
        # 4-stage net, not the last one.
        sa_stage = len(layers) - 4
        stages: list[nn.Module] = []
        channels = stem_sizes[-1]
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                last_sa = sa and i == sa_stage and j == n_blocks - 1
                blocks.append(ResBlock(channels, width, expansion, stride=stride, act=act, sa=last_sa))
                channels = width * expansion
            stages.append(nn.Sequential(*blocks))
        super().__init__(
            *stem,
            nn.MaxPool2d(3, stride=2, padding=1),
            *stages,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(p),
            nn.Linear(channels, n_out),
        )
        init_cnn(self)

    def __getitem__(self, idx: int | slice) -> nn.Module:
        """One child by index, or a plain nn.Sequential for a slice (e.g. model[:-4] is the body)."""
        if isinstance(idx, slice):
            # nn.Sequential would rebuild the slice as type(self)(...), which XResNet's signature refuses.
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)


def xresnet18(n_out: int = 1000, **kwargs: Any) -> XResNet:
    """XResNet-18: basic blocks (2, 2, 2, 2)."""
    return XResNet(n_out, (2, 2, 2, 2), expansion=1, **kwargs)


def xresnet34(n_out: int = 1000, **kwargs: Any) -> XResNet:
    """XResNet-34: basic blocks (3, 4, 6, 3)."""
    return XResNet(n_out, (3, 4, 6, 3), expansion=1, **kwargs)


def xresnet50(n_out: int = 1000, **kwargs: Any) -> XResNet:
    """XResNet-50: bottleneck blocks (3, 4, 6, 3)."""
    return XResNet(n_out, (3, 4, 6, 3), expansion=4, **kwargs)


def xresnet101(n_out: int = 1000, **kwargs: Any) -> XResNet:
    """XResNet-101: bottleneck blocks (3, 4, 23, 3)."""
    return XResNet(n_out, (3, 4, 23, 3), expansion=4, **kwargs)


def xresnet152(n_out: int = 1000, **kwargs: Any) -> XResNet:
    """XResNet-152: bottleneck blocks (3, 8, 36, 3)."""
    return XResNet(n_out, (3, 8, 36, 3), expansion=4, **kwargs)
