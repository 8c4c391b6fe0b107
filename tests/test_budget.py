"""TimeBudget in real fits: inside the budget with the learning rate annealed, resumed mid-plan, a foreign module,
DDP (one plan for every rank), and ``fit --budget`` with a final TTA through the CLI.

The budgets are seconds on shared cores: a fit must end within 5 % of its budget, and use at least 75 % of it.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR
from torch.utils.data import DataLoader, TensorDataset

from imagenette_sota import quiet
from imagenette_sota.callbacks import OneCycles, ProgressiveResize, Stage, TimeBudget
from imagenette_sota.cli import cli
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle, FineTune
from imagenette_sota.tta import TTASettings

from .test_ddp import DDP, TIMEOUT, deadline

TINY = {"layers": [1, 1, 1, 1], "widen": 0.25}
tiny_xresnet = partial(XResNet, **TINY)
FINAL_LR = 5e-3 / 2 / 1e5  # fine_tune(base_lr=5e-3)'s last cycle: lr_max base_lr / 2, annealed by div_final


def within(seconds: float, budget: float) -> bool:
    """Ends inside the budget (5 % for shared cores) and uses most of it."""
    return 0.75 * budget <= seconds <= 1.05 * budget


class Trace(Callback):
    """The lr, image size and batch size of every step, and (global step, clock) at each validation's end."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, int, int]] = []  # (epoch, lr, image side, batch size)
        self.validated: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        x = batch[0]
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.steps.append((trainer.current_epoch, lr, x.shape[-1], len(x)))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.final_lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated.append((trainer.global_step, time.perf_counter()))

    def first_epoch_at(self, side: int) -> int:
        return next(epoch for epoch, _, size, _ in self.steps if size == side)


def progressive(mini_dir: Path, budget: TimeBudget, *more: Callback, **trainer: Any) -> tuple[L.Trainer, Any, Any]:
    """The book's shape at a small scale: 2 epochs at 32 px / batch 16, then fine_tune(2) at 40 px / batch 24."""
    dm = ImagenetteDataModule(root=mini_dir, presize=48, train_size=32, batch_size=16, num_workers=0)
    model = ImagenetteClassifier(backbone=tiny_xresnet, num_classes=10, cycle=Cycle(1e-2))
    callbacks = [
        budget,
        ProgressiveResize({0: Stage(32, 16), 2: Stage(40, 24)}),
        OneCycles(fine_tune=FineTune(start_epoch=2, epochs=2, base_lr=5e-3)),
        *more,
    ]
    return quiet.trainer(**{"accelerator": "cpu", "max_epochs": 5, "callbacks": callbacks} | trainer), model, dm


def test_a_fit_ends_inside_its_budget_with_the_learning_rate_annealed(mini_dir: Path, one_thread: None) -> None:
    torch.manual_seed(0)
    budget, trace = TimeBudget(12, warmup_steps=2, measure_steps=3), Trace()
    # max_steps=3 and max_epochs=5 give the shape only: the budget decides the length.
    trainer, model, dm = progressive(mini_dir, budget, EMAWeightAveraging(decay=0.9), trace, max_steps=3)
    budget.start()
    trainer.fit(model, dm)
    plan = budget.plan
    last_step, end = trace.validated[-1]
    assert within(end - budget.started, 12), end - budget.started
    # The fit stopped at the planned step, validated there, with the last cycle's learning rate at its final value.
    assert trainer.global_step == plan.steps == last_step > 3 and trainer.current_epoch == plan.epochs
    assert trace.final_lr == pytest.approx(FINAL_LR)
    # Each stage kept its share of the fit: 40 px from the epoch where the configured epoch 2 landed.
    assert trace.first_epoch_at(40) == plan.timeline.epoch_of(2) > 0
    assert {batch for _, _, size, batch in trace.steps if size == 40} == {24}
    # Planned once, re-planned at every epoch end after that and when the 40 px steps were first measured (the
    # 6th batch of their first epoch: 1 unmeasured, 2 of warm-up, 3 measured); each predicted to end in the budget,
    # unless the cores slowed so late that not even one more step fits (then the plan is that step, flagged overrun).
    # (And inside the last epoch at the halves of its steps left, when this machine's speed leaves enough of them.)
    per_epoch = Counter(epoch for epoch, *_ in trace.steps)
    ends = set(accumulate(per_epoch[e] for e in sorted(per_epoch))) - {trainer.global_step}
    assert ends <= {row["step"] for row in budget.history}
    assert all(row["end_s"] <= 12 or (row["overrun"] and row["steps"] == row["step"] + 1) for row in budget.history)
    first_at_40 = next(i for i, (_, _, size, _) in enumerate(trace.steps) if size == 40)
    assert first_at_40 + 6 in [row["step"] for row in budget.history]


class VirtualClock(Callback):
    """A steady clock for a TimeBudget, listed before it: a batch of 16 at 32 px takes ``batch_s`` (others in
    proportion to their pixels), a validation ``val_s``; nothing else takes time. Plans are then exact."""

    def __init__(self, batch_s: float = 0.1, val_s: float = 0.3) -> None:
        self.now, self.batch_s, self.val_s = 0.0, batch_s, val_s

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, batch_idx: int
    ) -> None:
        x = batch[0]
        self.now += self.batch_s * len(x) / 16 * (x.shape[-1] / 32) ** 2

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.now += self.val_s


def clocked(budget: TimeBudget, clock: VirtualClock) -> TimeBudget:
    budget.clock = clock
    return budget


def rounded(rows: list[Any]) -> list[list[float]]:
    """Rows of numbers (dicts' values or tuples), to 9 digits: float sums in another order differ in the last."""
    return [[round(float(v), 9) for v in (row.values() if isinstance(row, dict) else row)] for row in rows]


class CrashAt(Callback):
    """Fails when epoch ``epoch`` starts, after the checkpoint of the one before."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("crash on purpose")


def test_a_resumed_fit_goes_on_with_its_plan_and_the_time_it_spent(
    mini_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    def run(name: str, *more: Callback, ckpt_path: str | None = None) -> tuple[TimeBudget, Trace, VirtualClock, Any]:
        torch.manual_seed(0)
        clock, trace = VirtualClock(), Trace()
        budget = clocked(TimeBudget(10, warmup_steps=2, measure_steps=3), clock)
        save = ModelCheckpoint(tmp_path / name, filename="{epoch}", save_last=True, save_top_k=-1)
        trainer, model, dm = progressive(mini_dir, budget, trace, save, *more, enable_checkpointing=True)
        trainer.callbacks.insert(0, clock)  # the clock moves before the budget reads it
        trainer.fit(model, dm, ckpt_path=ckpt_path)
        return budget, trace, clock, trainer

    whole, whole_trace, whole_clock, _ = run("whole")
    with pytest.raises(RuntimeError, match="crash on purpose"):
        run("crashed", CrashAt(2))
    saved = torch.load(tmp_path / "crashed" / "last.ckpt", weights_only=True)
    state = saved["callbacks"]["TimeBudget"]
    # Planned, then re-planned at epoch 0's end, after its validation and at epoch 1's end.
    assert saved["epoch"] == 1 and [row["step"] for row in state["history"]][1:] == [12, 13, 24]
    budget, trace, clock, trainer = run("resumed", ckpt_path=str(tmp_path / "crashed" / "last.ckpt"))
    # The resumed fit went on as the whole one did: its plans, and the stage, batch and lr of every step after it.
    assert rounded(budget.history) == rounded(whole.history) and len(budget.history) > 3
    assert rounded(trace.steps) == rounded([s for s in whole_trace.steps if s[0] >= 2])
    # The time spent before the checkpoint counted: the two runs together end where the whole one did, on time.
    assert budget.spent_before == state["spent_s"] > 2
    assert budget.spent_before + clock.now == pytest.approx(whole_clock.now) and 9.5 <= whole_clock.now <= 10
    assert trainer.global_step == budget.plan.steps == whole.plan.steps and trace.final_lr == pytest.approx(FINAL_LR)


class Foreign(L.LightningModule):
    """Not this package's: a linear model with torch's OneCycleLR (or another scheduler), 20 ms per step."""

    def __init__(self, scheduler: str = "one_cycle") -> None:
        super().__init__()
        self.net, self.scheduler = nn.Linear(8, 2), scheduler

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        time.sleep(0.02)  # a steady step: the plan's arithmetic, not this machine's load, decides the length
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        steps = int(self.trainer.estimated_stepping_batches)
        schedulers = {
            "one_cycle": lambda: OneCycleLR(optimizer, 0.1, total_steps=steps),
            "cosine": lambda: CosineAnnealingLR(optimizer, steps),
        }
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedulers[self.scheduler](), "interval": "step"}}


def loaders(n: int = 160, val_batch: int = 80) -> tuple[DataLoader, DataLoader]:
    """``n`` random (8 features, 2 classes) pairs: training batches of 16, validation batches of ``val_batch``."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 8, generator=g), torch.randint(2, (n,), generator=g))
    return DataLoader(data, batch_size=16), DataLoader(data, batch_size=val_batch)


def test_a_foreign_module_s_one_cycle_lr_ends_on_time_and_annealed(tmp_path: Path) -> None:
    budget, trace = TimeBudget(5, warmup_steps=2, measure_steps=3), Trace()
    trainer = quiet.trainer(accelerator="cpu", max_epochs=3, callbacks=[budget, trace], logger=CSVLogger(tmp_path, ""))
    budget.start()
    trainer.fit(Foreign(), *loaders())
    _, end = trace.validated[-1]
    assert within(end - budget.started, 5), end - budget.started
    assert trainer.global_step == budget.plan.steps and budget.plan.epochs > 3
    assert trace.final_lr == pytest.approx(0.1 / 25 / 1e4)  # torch's final learning rate: max_lr / div / final div
    # Its shape kept through the re-timings: up to max_lr, then down all the way, no step back.
    lrs = [lr for _, lr, _, _ in trace.steps]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.1, rel=0.01) and 0 < peak < len(lrs) / 2
    assert lrs[: peak + 1] == sorted(lrs[: peak + 1]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    # Each plan went to the logger, at the step it was made.
    rows = list(csv.DictReader((tmp_path / "version_0" / "metrics.csv").open()))
    logged = [(int(r["step"]), float(r["budget/steps"])) for r in rows if r.get("budget/steps")]
    assert logged == [(row["step"], row["steps"]) for row in budget.history]


class Instant(Foreign):
    """Foreign with a forward pass of any batch, for the first plan to time a validation (on a test's clock: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Slowing(Callback):
    """A clock for a TimeBudget, listed before it: the first ``slow`` batches take 0.2 s, the rest 0.1 s (a machine
    busy with something else while the first plan measures); validations take no time."""

    def __init__(self, slow: int = 8) -> None:
        self.now, self.slow, self.batches = 0.0, slow, 0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, *_: Any) -> None:
        self.batches += 1
        self.now += 0.2 if self.batches <= self.slow else 0.1


def test_a_plan_inside_its_last_epoch_is_re_checked_before_it_ends() -> None:
    """Planned in the first epoch of 40 steps to end inside it from the slow steps, the fit ends near its budget:
    re-planned each time half the steps left have run, not stopped where the slow steps' plan said."""
    clock, trace = Slowing(), Trace()
    budget = clocked(TimeBudget(6, warmup_steps=2, measure_steps=3), clock)
    trainer = quiet.trainer(accelerator="cpu", max_epochs=1, callbacks=[clock, budget, trace], num_sanity_val_steps=0)
    budget.start()
    trainer.fit(Instant(), *loaders(640, 320))
    first, *rechecks = budget.history
    assert first["steps"] < 40 and first["step_s"] == pytest.approx(0.2)  # the slow steps' plan ends in epoch 0
    # Re-planned at half its steps left, and at the halves after (each from the one before), as the average sped up.
    assert rechecks[0]["step"] == first["step"] + (first["steps"] - first["step"]) // 2
    assert rechecks[0]["steps"] > first["steps"] and rechecks[0]["step_s"] < 0.2
    assert 0.95 * 6 <= clock.now <= 6 and trainer.global_step == budget.plan.steps  # ended on time
    assert trace.final_lr == pytest.approx(0.1 / 25 / 1e4)


def test_a_plan_whose_rest_lies_in_the_next_epoch_is_re_checked_in_it() -> None:
    """Re-planned at the first epoch's end (20 steps) to end inside the second: re-checked at half its steps left."""
    clock = Slowing()
    budget = clocked(TimeBudget(5, warmup_steps=2, measure_steps=3), clock)
    trainer = quiet.trainer(accelerator="cpu", max_epochs=1, callbacks=[clock, budget], num_sanity_val_steps=0)
    budget.start()
    trainer.fit(Instant(), *loaders(320, 320))
    at_end = next(row for row in budget.history if row["step"] == 20)
    assert 20 < at_end["steps"] < 40  # the plan's rest lay in epoch 1
    assert 20 + (at_end["steps"] - 20) // 2 in [row["step"] for row in budget.history]
    assert 0.95 * 5 <= clock.now <= 5


def test_each_plan_keeps_back_a_share_of_the_last_validation_and_the_final_tta() -> None:
    """They follow the last re-plan (no step is left to re-time): ``tail_margin`` of their predicted seconds is kept
    back. 0.1 s a step, 1 s a validation: once one has run, each plan ends its fit, its validation and a flip TTA's
    mirrored pass (its centre view is the validation's) a step short of the budget less both margins at most, so on
    the test's clock the fit ends inside."""
    clock = VirtualClock(batch_s=1.6, val_s=1.0)  # 16 rows of 8 features: a step is 1.6 * (8 / 32) ** 2 = 0.1 s
    flip = TTASettings(mode="flip")
    budget = clocked(TimeBudget(11, 2, 3, margin=0.01, tail_margin=0.05, final_tta=flip), clock)
    trainer = quiet.trainer(accelerator="cpu", max_epochs=3, callbacks=[clock, budget], num_sanity_val_steps=0)
    budget.start()
    trainer.fit(Instant(), *loaders())
    kept = 11 * budget.margin + budget.tail_margin * flip.passes * 1.0  # 0.11 s + 5 % of 2 s
    measured = [row for row in budget.history if row["val_s"] == 1.0]
    assert len(measured) >= 2
    assert all(11 - kept - 0.1 < row["end_s"] <= 11 - kept + 1e-9 for row in measured), measured
    assert clock.now + (flip.passes - 1) * 1.0 == pytest.approx(budget.history[-1]["end_s"])  # and the TTA after


class EvalClocked(Instant):
    """Instant, whose forward pass outside training (the first plan's probe of validation batches) takes ``forward_s``
    on ``clock``, and each validation batch ``step_s``: the probe's two timed batches of 80 (of 160) predict 2 of
    ``forward_s``, a validation takes 2 of ``step_s``."""

    def __init__(self, clock: VirtualClock, forward_s: float, step_s: float) -> None:
        super().__init__()
        self.clock, self.forward_s, self.step_s = clock, forward_s, step_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.clock.now += self.forward_s
        return super().forward(x)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.clock.now += self.step_s
        super().validation_step(batch, batch_idx)


def test_a_validation_that_took_other_than_predicted_is_re_planned_after() -> None:
    """The probe predicts 2.5 s a validation; they take 0.5 s. Planned to end 3 steps after the first validation
    (too few for a re-check at half of them), the fit re-plans at the step after it and uses its budget."""
    clock = VirtualClock(batch_s=1.6, val_s=0.0)  # 0.1 s a step; validations take what EvalClocked says
    budget = clocked(TimeBudget(9.1, warmup_steps=2, measure_steps=5), clock)
    trainer = quiet.trainer(accelerator="cpu", max_epochs=3, callbacks=[clock, budget], num_sanity_val_steps=0)
    budget.start()
    trainer.fit(EvalClocked(clock, forward_s=1.25, step_s=0.25), *loaders())
    first, at_end, after, *_ = budget.history
    assert first["val_s"] == pytest.approx(2.5) and first["steps"] == at_end["steps"] == 13  # 3 steps into epoch 1
    assert after["step"] == 11 and after["val_s"] == pytest.approx(0.5) and after["steps"] > 13
    assert 0.9 * 9.1 <= clock.now <= 9.1 and trainer.global_step == budget.plan.steps


def test_a_budget_spent_before_the_plan_ends_stops_after_one_more_step_annealed_and_says_so() -> None:
    """The probe predicts no time for a validation (Instant's forward pass); it takes 3 s, past the budget of 2 s.
    The re-plan after it can only end the fit: one more step, the learning rate annealed, flagged and warned."""
    clock, trace = VirtualClock(batch_s=1.6, val_s=3.0), Trace()  # 0.1 s a step
    budget = clocked(TimeBudget(2, warmup_steps=2, measure_steps=3), clock)
    trainer = quiet.trainer(accelerator="cpu", max_epochs=3, callbacks=[clock, budget, trace], num_sanity_val_steps=0)
    budget.start()
    with pytest.warns(UserWarning, match="the budget of 2 s is overrun"):
        trainer.fit(Instant(), *loaders())
    *before, last = budget.history
    assert before and not any(row["overrun"] for row in before) and before[-1]["steps"] > 12
    assert last["overrun"] and last["step"] == 11 and last["steps"] == trainer.global_step == 12 and last["end_s"] > 2
    assert trace.final_lr == pytest.approx(0.1 / 25 / 1e4)


class SlowImages(Foreign):
    """Foreign, with a forward pass of 50 ms (of any batch) and validation steps of 30 ms."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return x.flatten(1)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        time.sleep(0.03)
        super().validation_step(batch, batch_idx)


@pytest.mark.parametrize(("sanity", "expected"), [(0, 0.05 * 160 / 80), (2, 0.03 * 160 / 80)])
def test_the_first_plan_times_a_validation_before_any_has_run(sanity: int, expected: float) -> None:
    """No sanity check: the validation loader's second batch through the forward pass (80 images a batch); with one:
    the sanity check's second batch. The model trains on in training mode."""
    budget, seen = TimeBudget(5, warmup_steps=2, measure_steps=3), {}

    class Snapshot(Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
            seen.setdefault("modes", set()).add(pl_module.training)

        def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not trainer.sanity_checking:
                seen.setdefault("val_s", dict(budget.val_s))

    trainer = quiet.trainer(
        accelerator="cpu", max_epochs=3, callbacks=[budget, Snapshot()], num_sanity_val_steps=sanity
    )
    budget.start()
    trainer.fit(SlowImages(), *loaders())
    (predicted,) = seen["val_s"].values()
    assert predicted == pytest.approx(expected, rel=0.3) and seen["modes"] == {True}


def test_a_schedule_the_budget_cannot_re_time_is_refused_at_the_start() -> None:
    trainer = quiet.trainer(accelerator="cpu", max_epochs=3, callbacks=[TimeBudget(5)])
    with pytest.raises(ValueError, match=r"re-timing one OneCycleLR.*CosineAnnealingLR"):
        trainer.fit(Foreign("cosine"), *loaders())
    assert trainer.global_step == 0


class Skewed(Callback):
    """Gives rank 1 half the budget, and compares the ranks' plans at every epoch end (before any rank stops).

    Were the plan not rank 0's for all, rank 1 would plan a shorter fit: the ranks would stop apart and hang.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.global_rank == 1:
            budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
            budget.seconds /= 2

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
        plans = trainer.strategy.all_gather(torch.tensor(budget.plan.steps)).tolist()
        if len(set(plans)) > 1:
            raise AssertionError(f"the ranks planned {plans} steps")
        for reduce in ("min", "max"):
            pl_module.log(f"step_{reduce}", float(trainer.global_step), reduce_fx=reduce, sync_dist=True)
        pl_module.log("planned", float(budget.plan.steps), sync_dist=True)
        pl_module.log("final_lr", trainer.optimizers[0].param_groups[0]["lr"], sync_dist=True)


def test_under_ddp_every_rank_follows_rank_0_s_plan(mini_dir: Path) -> None:
    torch.manual_seed(0)
    clock = VirtualClock()
    trainer, model, dm = progressive(mini_dir, clocked(TimeBudget(8, 1, 2), clock), Skewed(), **DDP)
    trainer.callbacks.insert(0, clock)
    with deadline(TIMEOUT):
        trainer.fit(model, dm)
    m = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert m["step_min"] == m["step_max"] == m["planned"] > 5 * 6  # more than 5 epochs of 6 steps per rank
    assert m["final_lr"] == pytest.approx(FINAL_LR)


def test_cli_fit_with_a_budget_ends_after_its_final_tta_inside_it(
    mini_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["fit", "--data.root", str(mini_dir), "--data.presize", "48", "--data.train_size", "32"]
    args += ["--data.batch_size", "16", "--data.num_workers", "0", "--model.backbone", "imagenette_sota.models.XResNet"]
    args += ["--model.backbone.layers", "[1, 1, 1, 1]", "--model.backbone.widen", "0.25"]
    args += ["--trainer.accelerator", "cpu", "--trainer.max_epochs", "2", "--trainer.logger", "false"]
    args += ["--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path)]
    args += ["--final_tta", "{mode: flip}", "--budget", "0.25m"]
    with caplog.at_level(logging.INFO):
        run = cli(args)
    budget = next(c for c in run.trainer.callbacks if isinstance(c, TimeBudget))
    assert budget.seconds == 15 and budget.final_tta.mode == "flip"  # the final TTA is planned for
    assert within(run.final_tta["end"] - budget.started, 15), run.final_tta["end"] - budget.started
    assert "the budget (0.25m = 15 s) decides this fit's length; max_epochs=2 gives its shape" in caplog.text
    assert run.trainer.global_step == budget.plan.steps


def test_cli_refuses_a_budget_that_is_no_duration(mini_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli(["fit", "--data.root", str(mini_dir), "--trainer.logger", "false", "--budget", "10 min"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "budget='10 min' is not a duration" in err and "--budget" in err


def test_max_steps_that_end_an_epoch_early_end_its_cycle_annealed(mini_dir: Path, one_thread: None) -> None:
    # What a budget's last epoch relies on: OneCycles times a cycle to max_steps, and ProgressiveResize's check of
    # the scheduler's room counts the steps the epoch will take.
    dm = ImagenetteDataModule(root=mini_dir, presize=48, train_size=32, batch_size=16, num_workers=0)
    model = ImagenetteClassifier(backbone=tiny_xresnet, num_classes=10, cycle=Cycle(1e-2))
    trace = Trace()
    resize, cycles = ProgressiveResize({0: Stage(32, 16), 1: Stage(32, 24)}), OneCycles({1: Cycle(5e-3)})
    trainer = quiet.trainer(accelerator="cpu", max_epochs=3, max_steps=12 + 8 + 3, callbacks=[resize, cycles, trace])
    trainer.fit(model, dm)
    assert trainer.global_step == 23 and trace.steps[-1][0] == 2  # 3 steps into epoch 2 (of 8)
    assert trace.final_lr == pytest.approx(5e-3 / 1e5)
