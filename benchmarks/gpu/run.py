"""The run's bookkeeping: its archives, sections and their time needs, the figures and their file."""

from __future__ import annotations

import gc
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import fast_paths
from benchmarks.common import MINI_MD5, REPO

GPU_DATA = REPO / ".gpu-data"
WEBP_ARCHIVE, WEBP_MD5 = GPU_DATA / "imagenette2-128-webp.tgz", "8cf62a33641bdb39c0dae5e503c111f7"
JPEG_ARCHIVE, JPEG_MD5 = GPU_DATA / "imagenette2-160-mini.tgz", MINI_MD5
SECTIONS = ("env", "throughput", "time_to_90", "fastai", "compiled", "fast_paths")
# Seconds a section needs at least to be started (full settings; --smoke needs far less).
NEEDS = {"env": 0, "throughput": 40, "time_to_90": 60, "fastai": 40, "compiled": 90, "fast_paths": 30}


class Run:
    """The figures so far, the deadline, and the file they are written to after every section."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.start = out, time.perf_counter()
        self.deadline = self.start + budget_s
        self.figures: dict[str, Any] = {"errors": {}, "skipped": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        """Seconds left in the budget."""
        return self.deadline - time.perf_counter()

    def section(self, name: str, need: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` as section ``name`` if ``need`` seconds are left; record its figures or its error."""
        if self.left() < need:
            self.figures["skipped"][name] = f"{self.left():.0f} s left, needs about {need:.0f}"
            print(f"== {name}: skipped ({self.figures['skipped'][name]})", flush=True)
            return
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        start = time.perf_counter()
        try:
            self.figures[name] = fn()
        except Exception as e:  # a section's failure must not cost the others their figures
            traceback.print_exc()
            self.figures["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        self.figures.setdefault("section_s", {})[name] = round(time.perf_counter() - start, 1)
        self.save()

    def save(self) -> None:
        """Rewrite OUT/gpu.json with the figures so far."""
        self.figures["wall_s"] = round(time.perf_counter() - self.start, 1)
        tmp = self.out / "gpu.json.part"
        tmp.write_text(json.dumps(rounded(self.figures), indent=1))
        tmp.replace(self.out / "gpu.json")  # whole or not at all, even if the run is killed meanwhile


def rounded(value: Any) -> Any:
    """Floats rounded to 4 significant-ish places, recursively (for a readable JSON line)."""
    if isinstance(value, float):
        return round(value, 4) if abs(value) < 100 else round(value, 1)
    if isinstance(value, dict):
        return {str(k): rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def free(device: torch.device) -> None:
    """Collect garbage, forget compiled graphs and start a new peak-memory window."""
    # Without the reset a later setting reuses (or, past dynamo's recompile limit, silently runs eager) the graphs
    # compiled for an earlier one, and its "compiled" figures time those instead of its own.
    torch._dynamo.reset()
    gc.collect()
    fast_paths.reset_peak(device)
