"""Callbacks: whatever changes with the epoch or runs around training."""

from imagenette_sota.callbacks.budget import TimeBudget
from imagenette_sota.callbacks.cycles import OneCycles
from imagenette_sota.callbacks.inspection import Inspection
from imagenette_sota.callbacks.lr_finder import LRFinder
from imagenette_sota.callbacks.progressive import ProgressiveResize, Ramp, Stage
from imagenette_sota.callbacks.scalars import TrainScalars
from imagenette_sota.callbacks.tta import GatherPredictions, TTAPredictor, ValidationPredictions, tta

__all__ = [
    "GatherPredictions",
    "Inspection",
    "LRFinder",
    "OneCycles",
    "ProgressiveResize",
    "Ramp",
    "Stage",
    "TTAPredictor",
    "TimeBudget",
    "TrainScalars",
    "ValidationPredictions",
    "tta",
]
