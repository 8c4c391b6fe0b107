"""Callbacks: whatever changes with the epoch or runs around training."""

from imagenette_sota.callbacks.lr_finder import LRFinder

__all__ = ["LRFinder"]
