"""XResNet (ResNet-D with the bag-of-tricks tweaks) as plain PyTorch modules, matching fastai 2.8's xresnet.

Module nesting and names follow fastai's (stem ConvLayers, then stages of blocks with `convpath`/`idpath`), so a
fastai xresnet state dict loads as is (with sa=True the attention conv's spectral-norm keys differ). The same
class builds fastai's ResNeXt and squeeze-excite variants (`xse_resnext50`: the Imagenette leaderboard's 2020-01
network), and the leaderboard entries' anti-aliased max pools (`max_blur`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = [
    "ConvBN",
    "MaxBlurPool2d",
    "ResBlock",
    "SimpleSelfAttention",
    "SqueezeExcite",
    "XResNet",
    "blur_max_pools",
    "init_cnn",
    "xresnet18",
    "xresnet34",
    "xresnet50",
    "xresnet101",
    "xresnet152",
    "xresnext50",
    "xse_resnext50",
]

ShortcutPool = Literal["avg", "max"]


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
        groups: int = 1,
    ) -> None:
        conv = nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
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


class SqueezeExcite(nn.Module):
    """Channel gates from the pooled features: x * sigmoid(W2 act(W1 mean(x))) (Hu et al. 2018; fastai's SEModule)."""

    def __init__(self, channels: int, reduction: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        hidden = math.ceil(channels // reduction / 8) * 8
        # fastai's layout (a ModuleList `layers`, the convs at 1 and 2), so its state dicts load as they are.
        self.layers = nn.ModuleList(
            [
                nn.AdaptiveAvgPool2d(1),
                nn.Sequential(nn.Conv2d(channels, hidden, 1), act()),
                nn.Sequential(nn.Conv2d(hidden, channels, 1), nn.Sigmoid()),
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        """x scaled channel by channel; the output has the input's shape."""
        gate = x
        for layer in self.layers:
            gate = layer(gate)
        return x * gate


class MaxBlurPool2d(nn.Module):
    """Anti-aliased 2x downsampling (Zhang 2019, kornia's MaxBlurPool2d(3)): a 2x2 max at stride 1, then a 3x3
    binomial blur at stride 2, zero-padded. An H x W map becomes ceil(H/2) x ceil(W/2), as the max pools it
    replaces give."""

    def __init__(self) -> None:
        super().__init__()
        row = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (torch.outer(row, row) / 16).view(1, 1, 3, 3), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Max, blur, subsample."""
        h, w = x.shape[-2:]
        if h % 2 or w % 2:  # an odd side gets one -inf row/column, so the 2x2 max keeps ceil(side / 2) outputs
            x = F.pad(x, (0, w % 2, 0, h % 2), value=float("-inf"))
        x = F.max_pool2d(x, 2, stride=1)
        channels = x.shape[1]
        kernel = self.kernel.to(x.dtype).expand(channels, 1, 3, 3)
        return F.conv2d(x, kernel, stride=2, padding=1, groups=channels)


def blur_max_pools(model: nn.Module) -> nn.Module:
    """``model`` with every nn.MaxPool2d replaced by a MaxBlurPool2d, in place (what the MaxBlurPool entries did to
    fastai's model, with kornia's)."""
    for name, child in model.named_children():
        setattr(model, name, MaxBlurPool2d()) if isinstance(child, nn.MaxPool2d) else blur_max_pools(child)
    return model


class ResBlock(nn.Module):
    """Residual block: basic (expansion 1) or bottleneck, ResNet-D shortcut, activation after the sum.

    ``inner``: the width of the 3x3 conv(s) (default ``width``; ResNeXt's is wider and grouped by ``groups``);
    ``reduction``: a squeeze-excite gate on the branch; ``shortcut_pool``: the downsampling before the shortcut's
    1x1 conv; ``max_blur``: that max pool anti-aliased.
    """

    def __init__(
        self,
        c_in: int,
        width: int,
        expansion: int = 1,
        stride: int = 1,
        act: type[nn.Module] = nn.ReLU,
        sa: bool = False,
        *,
        inner: int | None = None,
        groups: int = 1,
        reduction: int | None = None,
        shortcut_pool: ShortcutPool = "avg",
        max_blur: bool = False,
    ) -> None:
        super().__init__()
        c_out, inner = width * expansion, inner or width
        # The stride sits on the 3x3 conv: the first of a basic block, the middle one of a bottleneck.
        if expansion == 1:
            branch = [
                ConvBN(c_in, inner, 3, stride=stride, act=act, groups=groups),
                ConvBN(inner, c_out, 3, zero_bn=True),
            ]
        else:
            branch = [
                ConvBN(c_in, inner, 1, act=act),
                ConvBN(inner, inner, 3, stride=stride, act=act, groups=groups),
                ConvBN(inner, c_out, 1, zero_bn=True),
            ]
        if reduction:
            branch.append(SqueezeExcite(c_out, reduction, act))
        if sa:
            branch.append(SimpleSelfAttention(c_out))
        self.convpath = nn.Sequential(*branch)
        # ResNet-D: pool before the 1x1 conv instead of a strided 1x1 conv that drops 3/4 of the input.
        shortcut: list[nn.Module] = []
        if stride != 1:
            if shortcut_pool == "avg":
                shortcut.append(nn.AvgPool2d(stride, ceil_mode=True))
            else:
                shortcut.append(MaxBlurPool2d() if max_blur else nn.MaxPool2d(stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(ConvBN(c_in, c_out, 1))
        self.idpath = nn.Sequential(*shortcut)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        """act(branch(x) + shortcut(x))."""
        return self.act(self.convpath(x) + self.idpath(x))


class XResNet(nn.Sequential):
    """fastai's XResNet: 3-conv stem, max pool, residual stages, pooled dropout + linear head.

    ResNeXt (fastai's SEResNeXtBlock): ``groups`` > 1 groups the 3x3 convs, ``base_width`` channels per group for
    each 64 of a stage's width; ``reduction`` adds squeeze-excite gates; ``shortcut_pool`` is fastai's ``pool``
    (AvgPool or MaxPool); ``max_blur`` anti-aliases every max pool (the stem's, and the shortcuts' when "max").
    """

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
        groups: int = 1,
        base_width: int = 64,
        reduction: int | None = None,
        shortcut_pool: ShortcutPool = "avg",
        max_blur: bool = False,
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
            # fastai's SEResNeXtBlock: floor(width * base_width / 64) channels in each of `groups` groups.
            inner = width * base_width // 64 * groups
            options = {"inner": inner, "groups": groups, "reduction": reduction}
            options |= {"shortcut_pool": shortcut_pool, "max_blur": max_blur}
            blocks = []
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                last_sa = sa and i == sa_stage and j == n_blocks - 1
                blocks.append(ResBlock(channels, width, expansion, stride, act, last_sa, **options))
                channels = width * expansion
            stages.append(nn.Sequential(*blocks))
        super().__init__(
            *stem,
            MaxBlurPool2d() if max_blur else nn.MaxPool2d(3, stride=2, padding=1),
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


def xresnext50(n_out: int = 1000, **kwargs: Any) -> XResNet:
    """XResNeXt-50 (32x4d): bottleneck blocks (3, 4, 6, 3), 3x3 convs in 32 groups of 4 channels per 64 of width."""
    return XResNet(n_out, (3, 4, 6, 3), expansion=4, groups=32, base_width=4, **kwargs)


def xse_resnext50(n_out: int = 1000, **kwargs: Any) -> XResNet:
    """XSE-ResNeXt-50 (32x4d): XResNeXt-50 with a squeeze-excite gate (reduction 16) in every block."""
    return xresnext50(n_out, reduction=16, **kwargs)
