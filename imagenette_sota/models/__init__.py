"""Network architectures: the xresnet family (fastai 2.8 semantics) as plain nn.Modules."""

from imagenette_sota.models import xresnet
from imagenette_sota.models.fold import fold_batchnorm
from imagenette_sota.models.xresnet import *  # noqa: F403 (the public names are xresnet.__all__)

__all__ = [*xresnet.__all__, "fold_batchnorm"]
