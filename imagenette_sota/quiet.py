"""A quiet Trainer for scripts, notebooks, tests and benchmarks: no logger, checkpoint, progress bar, model summary
or sanity check, so a run writes no file and does only what it is asked.

``trainer(max_epochs=1).fit(model, datamodule)`` in Python; ``CLI_ARGS``, the same settings as overrides of the
command line (``imagenette-sota fit ... --trainer.logger=false ...``).
"""

from __future__ import annotations

from typing import Any

import lightning as L

SETTINGS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,  # the run does only what it is asked: no validation pass before training
}
# The same settings as command-line overrides: --trainer.logger=false ...
CLI_ARGS: list[str] = [f"--trainer.{key}={str(value).lower()}" for key, value in SETTINGS.items()]


def trainer(**settings: Any) -> L.Trainer:
    """A Trainer with ``SETTINGS``; ``settings`` add to them or override them (e.g. ``enable_checkpointing=True``)."""
    return L.Trainer(**{**SETTINGS, **settings})
