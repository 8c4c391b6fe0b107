"""Inference-time folding: a BatchNorm2d that follows a Conv2d becomes that conv's scale and bias."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of eval-mode ``model`` with each Conv2d -> BatchNorm2d pair of a Sequential folded into one Conv2d.

    The same function up to float rounding (an eval-mode BatchNorm is a per-channel affine map), with one pass over
    each activation less (xresnet: every ConvBN). Folded convs keep their weights' memory layout.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs model.eval(): in training a BatchNorm normalizes with batch statistics")
    model = copy.deepcopy(model)
    for block in model.modules():
        if not isinstance(block, nn.Sequential):
            continue
        names = list(block._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = block._modules[first], block._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None:
                fused = fuse_conv_bn_eval(conv, bn)
                if conv.weight.is_contiguous(memory_format=torch.channels_last):
                    fused = fused.to(memory_format=torch.channels_last)
                block._modules[first], block._modules[second] = fused, nn.Identity()
    return model
