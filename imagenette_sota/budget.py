"""Training to a wall-clock budget, the arithmetic: durations, the timeline that stretches a schedule, the plan.

A configured fit has a shape in epochs (``max_epochs``, the epochs where ``ProgressiveResize`` stages and
``OneCycles`` cycles begin); a budget decides its length. The planned fit is mapped onto the configured one by a
``Timeline``: planned epoch ``e`` runs what configured ("nominal") epoch ``floor(timeline.nominal(e))`` ran, and a
stage or cycle that began at nominal epoch ``k`` begins at planned epoch ``timeline.epoch_of(k)``: each keeps its
share of the fit. ``plan`` finds the longest fit whose predicted wall time (training steps, the validation after each
epoch, per-epoch overheads, what follows the fit) ends within the seconds left; its last epoch may stop early, at
the planned number of optimizer steps. A re-plan keeps the past of the timeline and stretches only what is left, so
no stage already run changes; ``retime_one_cycle`` stretches the running ``OneCycleLR`` the same way, keeping its
position in the cycle, so the learning rate goes on from where it is and still ends annealed. callbacks/budget.py
(``TimeBudget``) measures the costs and applies the plan.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any, TypeVar

T = TypeVar("T")
EPS = 1e-9  # epochs: a boundary that lands on an epoch (up to float error) begins there
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh])")


def parse_duration(value: str | float, name: str = "budget") -> float:
    """Seconds of ``value``: a number of seconds, or text such as ``90s``, ``10m``, ``1h``, ``1h30m`` or ``2.5m``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = DURATION.findall(text)
            if not parts or DURATION.sub("", text).strip():
                raise ValueError(f"{name}={value!r} is not a duration: write it as 90s, 10m, 1h or 1h30m") from None
            seconds = sum(float(number) * UNITS[unit] for number, unit in parts)
    else:
        raise ValueError(f"{name}={value!r} is not a duration: write it as 90s, 10m, 1h or 1h30m")
    if not seconds > 0 or math.isinf(seconds):  # NaN fails the first test
        raise ValueError(f"{name}={value!r} must be a positive, finite duration (e.g. 90s, 10m, 1h)")
    return seconds


@dataclass(frozen=True)
class Timeline:
    """Planned epochs (x) against the configured schedule's epochs (y): piecewise linear through ``points``.

    ``points`` start at (0, 0), increase in both coordinates and end at (planned end, configured end).
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        points = tuple((float(x), float(y)) for x, y in self.points)
        object.__setattr__(self, "points", points)
        if len(points) < 2 or points[0] != (0.0, 0.0):
            raise ValueError(f"a Timeline starts at (0, 0) and has an end, got {points}")
        if any(x1 <= x0 or y1 <= y0 for (x0, y0), (x1, y1) in pairwise(points)):
            raise ValueError(f"a Timeline's points must increase in both coordinates, got {points}")

    @classmethod
    def scaled(cls, planned: float, nominal: float) -> Timeline:
        """The configured schedule's ``nominal`` epochs spread evenly over ``planned`` epochs."""
        return cls(((0.0, 0.0), (planned, nominal)))

    @property
    def end(self) -> float:
        """The planned fit's length in epochs (its last epoch may be a fraction)."""
        return self.points[-1][0]

    @property
    def nominal_end(self) -> float:
        """The configured fit's length in epochs (``max_epochs``)."""
        return self.points[-1][1]

    def nominal(self, planned: float) -> float:
        """The configured schedule's position at planned epoch position ``planned`` (extended linearly past the end)."""
        return _interpolate(self.points, planned)

    def planned(self, nominal: float) -> float:
        """The planned epoch position of the configured schedule's position ``nominal``."""
        return _interpolate(tuple((y, x) for x, y in self.points), nominal)

    def nominal_epoch(self, epoch: int) -> int:
        """The configured epoch whose stage and cycle planned epoch ``epoch`` runs."""
        return math.floor(self.nominal(epoch) + EPS)

    def epoch_of(self, nominal_epoch: int) -> int:
        """The planned epoch where what began at configured epoch ``nominal_epoch`` begins."""
        return max(0, math.ceil(self.planned(nominal_epoch) - EPS))

    def stretched(self, at: float, end: float) -> Timeline:
        """This timeline up to planned position ``at``, then what is left of the schedule spread up to ``end``."""
        if not (end > at >= 0 and self.nominal(at) < self.nominal_end):
            raise ValueError(f"a Timeline is stretched from a point inside it to a later end, got at={at}, end={end}")
        kept = [p for p in self.points if p[0] < at]
        joint = [(at, self.nominal(at))] if at > 0 else []
        return Timeline((*kept, *joint, (end, self.nominal_end)))


def _interpolate(points: tuple[tuple[float, float], ...], x: float) -> float:
    """y at ``x`` on the polyline through ``points`` (x increasing), the first and last segments extended."""
    for (x0, y0), (x1, y1) in pairwise(points):
        if x <= x1 or (x1, y1) == points[-1]:
            return y0 + (x - x0) * (y1 - y0) / (x1 - x0)
    raise AssertionError("unreachable: a Timeline has at least two points")


def retime(schedule: Mapping[int, T], timeline: Timeline, epochs: int) -> dict[int, T]:
    """``{configured epoch: item}`` as ``{planned epoch: item}``, keeping the items that begin before ``epochs``.

    Items that land on the same planned epoch: the one configured last wins (the others would last no epoch).
    """
    planned: dict[int, T] = {}
    for epoch in sorted(schedule):
        start = timeline.epoch_of(epoch)
        if start < epochs or epoch == 0:
            planned[start] = schedule[epoch]
    return planned


@dataclass(frozen=True)
class Costs:
    """What an epoch costs, by the configured epoch it runs (``Timeline.nominal_epoch``), as measured so far.

    steps: optimizer steps of a whole epoch. step_s: seconds per optimizer step. val_s: seconds of the validation
    after the epoch. epoch_s: seconds per epoch beside steps and validation (loader start, checkpoints).
    final_s: seconds after the fit's last validation (a final TTA). val_every: the Trainer's
    ``check_val_every_n_epoch`` (0: no validation).
    """

    steps: Callable[[int], int]
    step_s: Callable[[int], float]
    val_s: Callable[[int], float]
    epoch_s: float = 0.0
    final_s: float = 0.0
    val_every: int = 1


@dataclass(frozen=True)
class Plan:
    """A fit that ends within the budget: its timeline, optimizer steps and epochs, and its predicted wall time.

    seconds: predicted from the moment of planning to the end of what follows the fit. overrun: not even one more
    step fits in the time left (the plan is then the shortest). first_epoch, epoch_steps: the planned optimizer
    steps of each epoch from the one it was made in (whole epochs; the last one's up to the fit's end).
    """

    timeline: Timeline
    steps: int
    epochs: int
    seconds: float
    overrun: bool = False
    first_epoch: int = 0
    epoch_steps: tuple[int, ...] = ()

    def steps_until(self, epoch: int, done: int, until: int) -> int:
        """Optimizer steps from ``done`` steps into planned ``epoch`` to the start of epoch ``until`` (or the end)."""
        planned = self.epoch_steps[epoch - self.first_epoch : until - self.first_epoch]
        return sum(planned) - done

    def to_dict(self) -> dict[str, Any]:
        """Plain types only: checkpoints load with ``weights_only=True``."""
        state = {k: getattr(self, k) for k in ("steps", "epochs", "seconds", "overrun", "first_epoch")}
        return state | {"points": [list(p) for p in self.timeline.points], "epoch_steps": list(self.epoch_steps)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Plan:
        """The inverse of ``to_dict``."""
        timeline = Timeline(tuple(tuple(p) for p in state["points"]))
        scalars = (state[k] for k in ("steps", "epochs", "seconds", "overrun", "first_epoch"))
        return cls(timeline, *scalars, epoch_steps=tuple(state["epoch_steps"]))


def fit_for(
    end: float, timeline: Timeline, epoch: int, done: int, step: int, costs: Costs, keep_past: bool = True
) -> Plan:
    """The fit that stretches what is left of ``timeline`` to end at planned epoch ``end``.

    Now is ``done`` optimizer steps into planned ``epoch`` (``done`` = its steps: at its last batch), ``step`` steps
    into the fit (the Trainer's ``global_step``). ``keep_past=False``: the whole schedule is spread evenly up to
    ``end`` instead (the first plan, made in the first epoch, which runs the first configured epoch either way).
    The predicted seconds count the rest of the current epoch and its validation, each later epoch, and
    ``costs.final_s``.
    """
    n = costs.steps(timeline.nominal_epoch(epoch))
    at = epoch + min(done, n) / n
    stretched = timeline.stretched(at, end) if keep_past else Timeline.scaled(end, timeline.nominal_end)
    last = max(math.ceil(end - EPS) - 1, epoch)
    seconds, steps, per_epoch = costs.final_s, step, []
    for e in range(epoch, last + 1):
        k = stretched.nominal_epoch(e)
        whole = costs.steps(k)
        planned = whole if e < last else max(1, round((end - last) * whole))
        if e == epoch:
            planned = max(planned, done + 1) if e == last else max(planned, done)
        left = planned - done if e == epoch else planned
        seconds += left * costs.step_s(k) + (costs.epoch_s if e > epoch else 0.0)
        if costs.val_every and (e + 1) % costs.val_every == 0:
            seconds += costs.val_s(k)
        steps += left
        per_epoch.append(planned)
    return Plan(stretched, steps, last + 1, seconds, first_epoch=epoch, epoch_steps=tuple(per_epoch))


def plan(
    seconds: float, timeline: Timeline, epoch: int, done: int, step: int, costs: Costs, keep_past: bool = True
) -> Plan:
    """The longest fit predicted to end within ``seconds`` from now (the arguments: ``fit_for``'s).

    At least one more optimizer step (``overrun`` when even that does not fit). The search is over the planned end,
    a real number of epochs, by bisection to a fraction of a step.
    """
    n = costs.steps(timeline.nominal_epoch(epoch))
    lo = epoch + (done + 0.5) / n  # half a step past now: one more step

    def fit(end: float) -> Plan:
        return fit_for(end, timeline, epoch, done, step, costs, keep_past)

    shortest = fit(lo)
    if shortest.seconds > seconds:
        return replace(shortest, overrun=True)
    width = 1.0
    while fit(lo + width).seconds <= seconds and width < 1e6:
        width *= 2
    hi = lo + width
    while (hi - lo) * n > 0.25:  # to a quarter of a step
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fit(mid).seconds <= seconds else (lo, mid)
    return fit(lo)


def step_seconds(measured: Mapping[float, float], work: float) -> float:
    """Seconds per step at ``work`` (pixels per step) from the seconds ``measured`` at other amounts of work.

    One measurement: in proportion (for more work an overestimate, since a step also has a fixed part). More:
    the least-squares line ``a + b * work`` through them, or in proportion to the nearest if its slope is not
    positive (noise). Nothing measured: 0.
    """
    if work in measured:
        return measured[work]
    if not measured:
        return 0.0
    nearest = min(measured, key=lambda w: abs(math.log(w / work)))
    if len(measured) > 1:
        xs, ys = list(measured), list(measured.values())
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        if slope > 0:
            return max(my + slope * (work - mx), measured[nearest] * min(1.0, work / nearest))
    return measured[nearest] * work / nearest


def retime_one_cycle(state: Mapping[str, Any], steps_left: int) -> dict[str, Any]:
    """A ``OneCycleLR.state_dict()`` stretched so that its cycle ends ``steps_left`` steps from now.

    The position in the cycle (steps taken / steps of the cycle) is kept, and so the learning rate and momentum: the
    next step goes on from where the cycle is, the rest of the curve spread over ``steps_left`` steps. A finished
    cycle, or ``steps_left`` < 1, is returned as it is.
    """
    missing = [k for k in ("total_steps", "last_epoch", "_schedule_phases") if k not in state]
    if missing:
        raise ValueError(f"not a OneCycleLR state (missing {missing}): the budget re-times OneCycleLR only")
    new = copy.deepcopy(dict(state))
    span = state["total_steps"] - 1  # fastai's position i / span (schedule.one_cycle); torch's to within a step
    done = state["last_epoch"]
    if steps_left < 1 or span < 1 or done >= span:
        return new
    position = done / span
    new_done = round(position * steps_left / (1 - position))
    new_span = new_done + steps_left
    for phase in new["_schedule_phases"]:
        phase["end_step"] = phase["end_step"] * new_span / span
    new["_schedule_phases"][-1]["end_step"] = float(new_span)
    new["total_steps"], new["last_epoch"] = new_span + 1, new_done
    return new
