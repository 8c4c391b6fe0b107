"""The time-budget arithmetic (imagenette_sota/budget.py): durations, the timeline, the plan, the re-timed cycle."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from imagenette_sota.budget import (
    Costs,
    Plan,
    Timeline,
    fit_for,
    parse_duration,
    plan,
    retime,
    retime_one_cycle,
    step_seconds,
)
from imagenette_sota.schedule import Cycle, adam, one_cycle


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150), (" 45 ", 45), (45, 45), (0.5, 0.5)],
)
def test_durations_read_as_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "", "m", "-5m", "5 minutes", "0s", 0, -3, float("nan"), "inf"])
def test_a_bad_duration_is_refused_naming_it(text: str | float) -> None:
    with pytest.raises(ValueError, match=r"budget=.* (is not a duration|must be a positive)"):
        parse_duration(text)


def test_a_scaled_timeline_gives_each_stage_its_share_and_maps_boundaries_consistently() -> None:
    # The book's progressive recipe (a stage change at epoch 4 of 10) in 5 epochs: the change at epoch 2.
    half = Timeline.scaled(5, 10)
    assert retime({0: "128 px", 4: "224 px"}, half, 5) == {0: "128 px", 2: "224 px"}
    # A stretch: 9 configured epochs over 12.4 planned (the last partial).
    for timeline in (Timeline.scaled(12.4, 9), Timeline.scaled(3.3, 9), half.stretched(2.5, 7.2)):
        for e in range(math.ceil(timeline.end)):
            for k in range(math.ceil(timeline.nominal_end)):
                # epoch e runs configured epoch k or later exactly when what began at k has begun by e
                assert (timeline.nominal_epoch(e) >= k) == (timeline.epoch_of(k) <= e), (timeline, e, k)


def test_retime_keeps_the_last_of_colliding_items_and_drops_those_past_the_end() -> None:
    squeezed = Timeline.scaled(3, 9)  # 9 configured epochs in 3
    assert retime({0: "a", 1: "b", 2: "c", 3: "d", 5: "e", 8: "f"}, squeezed, 3) == {0: "a", 1: "d", 2: "e"}


def test_a_stretched_timeline_keeps_what_has_run() -> None:
    timeline = Timeline.scaled(6, 9)
    later = timeline.stretched(4, 8.5)
    for x in (0, 1, 2.5, 4):
        assert later.nominal(x) == pytest.approx(timeline.nominal(x))
    assert later.end == 8.5 and later.nominal(8.5) == pytest.approx(9)
    # the rest of the schedule (nominal 6 to 9) now spreads over planned 4 to 8.5
    assert later.nominal(6.25) == pytest.approx(7.5)
    with pytest.raises(ValueError):
        timeline.stretched(6, 8)  # from the end of the schedule: nothing left to stretch


def costs(
    steps: int = 10, step_s: float = 1.0, val_s: float = 2.0, epoch_s: float = 0.5, final_s: float = 3.0
) -> Costs:
    return Costs(lambda k: steps, lambda k: step_s, lambda k: val_s, epoch_s=epoch_s, final_s=final_s)


def test_the_plan_is_the_longest_fit_that_ends_in_time() -> None:
    # 10 steps of 1 s per epoch, a 2 s validation after each, 0.5 s per later epoch's start, 3 s after the fit.
    # 7 whole epochs: 70 + 7 x 2 + 6 x 0.5 + 3 = 90 s; an 8th of 7 steps: + 7 + 2 + 0.5 = 99.5 s of 100.
    start = Timeline.scaled(5, 5)
    planned = plan(100, start, epoch=0, done=0, step=0, costs=costs(), keep_past=False)
    assert (planned.steps, planned.epochs, planned.seconds) == (77, 8, 99.5) and not planned.overrun
    assert planned.epoch_steps == (10,) * 7 + (7,)
    assert planned.timeline.end == pytest.approx(7.7, abs=0.05) and planned.timeline.nominal_end == 5
    one_more = fit_for(planned.timeline.end + 0.1, start, 0, 0, 0, costs(), keep_past=False)
    assert one_more.steps == 78 and one_more.seconds > 100
    # 3 steps into epoch 2 (23 steps so far), 50 s left: its 7 steps and validation (9 s), 3 whole epochs of 12 s,
    # and 3 steps of a last one with its validation (5 s).
    later = plan(50, planned.timeline, epoch=2, done=3, step=23, costs=costs(epoch_s=0.0, final_s=0.0))
    assert (later.steps, later.epochs, later.seconds) == (23 + 7 + 30 + 3, 7, 50.0)
    assert later.first_epoch == 2 and later.epoch_steps == (10, 10, 10, 10, 3)
    assert later.steps_until(2, 3, 4) == 7 + 10 and later.steps_until(2, 3, 9) == 7 + 30 + 3


def test_a_re_plan_at_an_epoch_end_keeps_the_stages_that_have_run() -> None:
    # Configured: 6 epochs, epoch k's steps cost 1 + k s (growing images). Planned first over about 4.
    growing = Costs(lambda k: 10, lambda k: 1.0 + k, lambda k: 0.0)
    first = plan(150, Timeline.scaled(6, 6), epoch=0, done=5, step=5, costs=growing, keep_past=False)
    ran = [first.timeline.nominal_epoch(e) for e in range(3)]
    # At the end of epoch 2 (its last batch), slower than thought: less time is left.
    again = plan(50, first.timeline, epoch=2, done=10, step=30, costs=growing)
    assert [again.timeline.nominal_epoch(e) for e in range(3)] == ran
    assert again.steps > 30 and again.timeline.end > 3 and again.seconds <= 50
    assert again.timeline.nominal(again.timeline.end) == pytest.approx(6)  # the whole schedule still runs


def test_no_time_left_plans_one_more_step_and_says_it_overruns() -> None:
    tight = plan(1.0, Timeline.scaled(5, 5), epoch=1, done=4, step=14, costs=costs())
    assert tight.overrun and tight.steps == 15 and tight.epochs == 2


def test_a_plan_survives_a_checkpoint_as_plain_types() -> None:
    planned = plan(100, Timeline.scaled(5, 5), epoch=0, done=0, step=0, costs=costs(), keep_past=False)
    state = planned.to_dict()
    assert all(isinstance(v, (int, float, bool, list)) for v in state.values())
    assert Plan.from_dict(state) == planned


def test_step_seconds_predicts_sizes_not_yet_run() -> None:
    assert step_seconds({}, 100.0) == 0.0
    assert step_seconds({100.0: 2.0}, 100.0) == 2.0
    assert step_seconds({100.0: 2.0}, 400.0) == 8.0  # one measurement: in proportion
    line = {100.0: 2.0, 200.0: 3.0}  # 1 s + 0.01 s per unit
    assert step_seconds(line, 400.0) == pytest.approx(5.0)
    assert step_seconds(line, 50.0) == pytest.approx(1.5)
    assert step_seconds({100.0: 3.0, 200.0: 2.0}, 400.0) == pytest.approx(4.0)  # noise: from the nearest


def lrs(scheduler: OneCycleLR, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` further steps (the one each step runs with)."""
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def fastai_lr(cycle: Cycle, pos: float) -> float:
    """fastai's fit_one_cycle learning rate at position ``pos`` of the cycle (combined_cos)."""

    def cos(start: float, end: float, p: float) -> float:
        return start + (1 + math.cos(math.pi * (1 - p))) * (end - start) / 2

    top, low, final = cycle.lr_max, cycle.lr_max / cycle.div, cycle.lr_max / cycle.div_final
    if pos < cycle.pct_start:
        return cos(low, top, pos / cycle.pct_start)
    return cos(top, final, (pos - cycle.pct_start) / (1 - cycle.pct_start))


def test_a_re_timed_cycle_goes_on_from_its_position_and_ends_annealed_on_the_new_step() -> None:
    cycle = Cycle(1e-2)
    optimizer = adam(nn.Linear(2, 2), cycle.lr_max)
    scheduler = one_cycle(optimizer, cycle, 100)
    before = lrs(scheduler, optimizer, 40)  # 40 of 100 steps: position 0.4
    scheduler.load_state_dict(retime_one_cycle(scheduler.state_dict(), 30))  # the rest in 30 steps, not 60
    after = lrs(scheduler, optimizer, 30)
    # Position 0.4 becomes step 20 of 50: every later step is fastai's one-cycle of 50 steps, the warm-up's end too.
    assert after == pytest.approx([fastai_lr(cycle, (20 + i) / 50) for i in range(30)], rel=1e-9)
    # No jump: the change at the re-timing is no bigger than the steps around it.
    assert abs(after[0] - before[-1]) <= 1.01 * max(abs(a - b) for a, b in zip(after[1:3], after[:2], strict=True))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cycle.lr_max / cycle.div_final)  # annealed


def test_a_foreign_one_cycle_lr_is_re_timed_too() -> None:
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    scheduler = OneCycleLR(optimizer, max_lr=0.1, total_steps=50)  # torch's defaults: pct_start 0.3, div 25, 1e4
    lrs(scheduler, optimizer, 10)
    scheduler.load_state_dict(retime_one_cycle(scheduler.state_dict(), 200))
    start, span = scheduler.last_epoch, scheduler.total_steps - 1
    after = lrs(scheduler, optimizer, 200)
    assert start == round(10 / 49 * span) and span == start + 200  # the same position, 200 steps to go
    peak = start + max(range(200), key=after.__getitem__)
    assert peak / span == pytest.approx((0.3 * 50 - 1) / 49, abs=1 / span)  # torch's peak: at the same share
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 25 / 1e4)
    with pytest.raises(ValueError, match="OneCycleLR"):
        retime_one_cycle({"last_epoch": 3}, 10)
