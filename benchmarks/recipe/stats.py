"""Seeds' figures summed up per epoch, and which gaps between the two sides seed noise does not explain."""

from __future__ import annotations

import statistics
from typing import Any

BAR, Z = 2.0, 2.0  # the bar (points) and how many standard errors past it make a gap real


def summary(runs: list[dict]) -> dict[str, Any]:
    """``n`` (the runs) and per epoch the mean and (two or more runs) the sample standard deviation of ``acc`` and
    ``loss``."""
    out: dict[str, Any] = {"n": len(runs)}
    for key in ("acc", "loss"):
        columns = list(zip(*(r[key] for r in runs), strict=True))
        out[f"{key}_mean"] = [statistics.fmean(c) for c in columns]
        if len(runs) > 1:
            out[f"{key}_sd"] = [statistics.stdev(c) for c in columns]
    return out


def gap(ours: dict, fastai: dict) -> dict[str, list[float]]:
    """Per epoch, points: mean ours - mean fastai (two ``summary``s), and with two or more runs a side its standard
    error."""
    out = {"acc_gap": [round(100 * (a - b), 2) for a, b in zip(ours["acc_mean"], fastai["acc_mean"], strict=True)]}
    if "acc_sd" in ours and "acc_sd" in fastai:
        sds = zip(ours["acc_sd"], fastai["acc_sd"], strict=True)
        out["acc_gap_se"] = [round(100 * (a * a / ours["n"] + b * b / fastai["n"]) ** 0.5, 2) for a, b in sds]
    return out


def beyond_bar(result: dict[str, list[float]], bar: float = BAR, z: float = Z) -> list[int]:
    """Epochs whose gap exceeds ``bar`` points by more than ``z`` standard errors (with one run a side: by any
    amount), the gaps that seed noise does not explain."""
    se = result.get("acc_gap_se", [0.0] * len(result["acc_gap"]))
    return [e for e, (g, s) in enumerate(zip(result["acc_gap"], se, strict=True)) if abs(g) - bar > z * s]
