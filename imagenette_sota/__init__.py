"""imagenette_sota: train image classifiers from scratch to state-of-the-art accuracy, fast (Lightning)."""

__version__ = "0.1.0"
