"""Network architectures: the xresnet family (fastai 2.8 semantics) as plain nn.Modules."""

from imagenette_sota.models.xresnet import (
    ConvBN,
    ResBlock,
    SimpleSelfAttention,
    XResNet,
    init_cnn,
    xresnet18,
    xresnet34,
    xresnet50,
    xresnet101,
    xresnet152,
)

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
