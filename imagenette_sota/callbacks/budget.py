"""TimeBudget: a fit that ends on time, with the learning rate annealed (the arithmetic: imagenette_sota/budget.py).

    imagenette-sota fit --config configs/cpu_speedrun.yaml --budget 10m   # the CLI adds TimeBudget("10m")

The configured ``max_epochs`` gives the fit's shape (the epochs where stages and cycles begin); the budget decides
its length. What it does, and when (public trainer state only):

- ``setup``: the clock starts (unless ``start()`` started it before: the CLI does when it calls ``fit``, so that data
  preparation - a first cache build - is inside the budget); ``max_steps`` is lifted, and the log says that the
  budget decides.
- After ``warmup_steps`` + ``measure_steps`` optimizer steps (or at the first epoch's last batch, if sooner): the
  plan. Measured: seconds per step by training image size and batch size (not the first steps of a fit, of a size,
  or of an epoch: compilation, cuDNN tuning and loader start are inside the budget but not the measurement),
  seconds per validation by validation size, and per-epoch overheads; a size not yet run is predicted from those
  run (``budget.step_seconds``); a validation not yet run from the validation loader's first batches, loaded,
  transformed and predicted before the first plan (the training speed misjudges inference: no backward, other
  kernels, another batch size). The plan sets the Trainer's ``fit_loop.max_epochs`` and
  ``fit_loop.epoch_loop.max_steps``, re-times the ``schedule`` of a ``ProgressiveResize`` and of ``OneCycles`` among
  the callbacks (each stage and cycle keeps its share of the fit), and stretches the running ``OneCycleLR`` to its
  new end through its ``state_dict`` (``budget.retime_one_cycle``): the learning rate goes on from where it is.
- At each epoch's last batch, at the step after each validation (its measured seconds replace the prediction the plan
  before it made), when a new image size's steps are first measured, and, once the plan's rest lies in one epoch
  (which no epoch end re-checks), each time half of its steps left have run while more than ``measure_steps`` would
  remain: a re-plan with what has been measured; what has run stays as it ran.
- At the planned last step: ``trainer.should_stop``, so that the last epoch, which may stop early, is validated.
- The plan and each re-plan go to the log and to the loggers (``budget/*`` scalars), and into checkpoints: a resumed
  fit goes on with the same plan, the time spent before counted, and re-plans after its first step.
- Under DDP rank 0 measures and plans, and every rank follows its plan (``strategy.broadcast``).

The budget covers the clock's start to the end of the last validation and of the final TTA (``final_tta``, which the
CLI gives it; planned without its centre view, which the CLI takes from the last validation: ``ValidationPredictions``).
Those two run after the last re-plan, so a drift in the machine's speed then cannot be re-timed: each plan keeps
``tail_margin`` of their predicted seconds back, beside ``margin`` of the budget. The module must step one
``OneCycleLR`` per optimizer step (or have no scheduler): another scheduler is refused when training starts.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import OneCycleLR

from imagenette_sota.budget import Costs, Plan, Timeline, parse_duration, plan, retime, retime_one_cycle, step_seconds
from imagenette_sota.callbacks.cycles import OneCycles
from imagenette_sota.callbacks.progressive import ProgressiveResize
from imagenette_sota.checks import check_numbers
from imagenette_sota.schedule import epoch_steps
from imagenette_sota.tta import TTASettings

FORWARD_SHARE = 1 / 3  # a forward pass is about a third of a training step's arithmetic (forward + backward)
PROBE_BATCHES = 2  # validation batches timed before the first plan, after one untimed


class TimeBudget(Callback):
    """Plans the fit to end within ``budget`` and re-times it as speeds are measured (see the module doc)."""

    clock = staticmethod(time.perf_counter)  # seconds; a test may give an instance a clock of its own

    def __init__(
        self,
        budget: str | float,
        warmup_steps: int = 5,
        measure_steps: int = 10,
        margin: float = 0.01,
        tail_margin: float = 0.05,
        final_tta: TTASettings | None = None,
    ) -> None:
        """Args:
        budget: wall time from the start of ``fit`` to the final accuracy: ``90s``, ``10m``, ``1h``, or seconds.
        warmup_steps: steps not measured at the start of a fit and of each new image size (compilation, tuning).
        measure_steps: steps measured, after the warm-up, before the first plan.
        margin: share of the budget kept back for what was not measured.
        tail_margin: share of the last validation's and the final TTA's predicted seconds kept back (they follow the
            last re-plan: what they take beyond the prediction cannot be made up).
        final_tta: the TTA that follows the fit (the CLI's ``final_tta``), planned for: its views but the centre
            one, which the last validation predicted (the CLI's final TTA takes it from there).
        """
        self.budget, self.seconds = budget, parse_duration(budget)
        check_numbers(
            warmup_steps=(warmup_steps, "an integer >= 0", isinstance(warmup_steps, int) and warmup_steps >= 0),
            measure_steps=(measure_steps, "an integer >= 1", isinstance(measure_steps, int) and measure_steps >= 1),
            margin=(margin, "in [0, 0.5)", 0 <= margin < 0.5),
            tail_margin=(tail_margin, "in [0, 1)", 0 <= tail_margin < 1),
        )
        self.warmup_steps, self.measure_steps = warmup_steps, measure_steps
        self.margin, self.tail_margin, self.final_tta = margin, tail_margin, final_tta
        self.started: float | None = None  # self.clock() at the clock's start
        self.spent_before = 0.0  # seconds spent by the earlier runs of a resumed fit
        self.nominal_epochs = 0  # the configured max_epochs: the shape the plan scales
        self.plan: Plan | None = None
        self.history: list[dict[str, float]] = []  # one row per plan: when, and what it decided
        # Measured: seconds per optimizer step by pixels per step, per validation by pixels per validation image.
        self.step_s: dict[float, float] = {}
        self.val_s: dict[float, float] = {}
        self.epoch_s = {"start": 0.0, "end": 0.0}  # per-epoch overheads: loader start; after validation
        self._nominal: dict[str, Any] = {}
        self._session: dict[str, Any] = {}
        self._measured: set[float] = set()  # the amounts of work (pixels per step) whose steps have been measured

    # --- the clock -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the clock now (the CLI calls it when ``fit`` is called); else it starts at ``setup``."""
        self.started = self.clock()

    def elapsed(self) -> float:
        """Seconds of the budget spent: this run's since the clock started, and those of the runs it resumes."""
        return self.spent_before + (self.clock() - self.started if self.started is not None else 0.0)

    # --- hooks ---------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Start the clock; take the configured shape; lift ``max_steps``: the budget decides the length."""
        if stage != "fit" or trainer.fast_dev_run:
            return
        if self.started is None:
            self.start()
        self.nominal_epochs = trainer.max_epochs if (trainer.max_epochs or -1) > 0 else 1
        resize, cycles = _find(trainer, ProgressiveResize), _find(trainer, OneCycles)
        self._nominal = {
            "stages": {k: resize.stage_at(k) for k in resize.epochs} if resize else None,
            "resize": (dict(resize.schedule), list(resize.epochs)) if resize else None,
            "cycles": (dict(cycles.schedule), set(cycles.clears), list(cycles.epochs)) if cycles else None,
        }
        ignored = f"; max_steps={trainer.max_steps} is ignored" if trainer.max_steps >= 0 else ""
        trainer.fit_loop.epoch_loop.max_steps = -1
        rank_zero_info(
            f"TimeBudget: the budget ({self.budget} = {self.seconds:.0f} s) decides this fit's length; "
            f"max_epochs={trainer.max_epochs} gives its shape (the epochs where its stages and cycles begin){ignored}"
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed fit: apply its plan (the running cycle's state comes back with the scheduler's)."""
        self._session = {"step": trainer.global_step, "seen": set(), "rough": set()}
        if self.plan is not None and not trainer.fast_dev_run:
            # max_steps waits for on_train_start: set while Lightning restores the loops, it would make them
            # iteration-based, and the epoch the checkpoint was saved at the end of would end a second time.
            self._apply(trainer, self.plan, None, max_steps=False)
            rank_zero_info(
                f"TimeBudget: resumed with {self.spent_before:.1f} s of the budget spent; the plan goes on: "
                f"{self.plan.steps} steps in {self.plan.timeline.end:.2f} epochs"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse a learning-rate schedule the budget cannot end on time; a resumed plan's steps end the fit."""
        if trainer.fast_dev_run:
            return
        if self.plan is not None:
            trainer.fit_loop.epoch_loop.max_steps = self.plan.steps
            # As a fit that had gone on would (its checkpoint follows a validation), and on this machine's speed.
            self._session.update(recheck=trainer.global_step + 1, recheck_why=" (resumed)")
        configs = trainer.lr_scheduler_configs
        if not configs:
            rank_zero_info("TimeBudget: no learning-rate scheduler: the budget times the fit's steps only")
            return
        if len(configs) != 1 or configs[0].interval != "step" or not isinstance(configs[0].scheduler, OneCycleLR):
            kinds = ", ".join(f"{type(c.scheduler).__name__} (interval={c.interval!r})" for c in configs)
            raise ValueError(
                f"TimeBudget ends the fit on time with the learning rate annealed by re-timing one OneCycleLR stepped "
                f"every optimizer step; this module configures {kinds}. Return "
                "{'scheduler': OneCycleLR(...), 'interval': 'step'} from configure_optimizers, or train without a "
                "budget (max_epochs)."
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch's measurements; the last epoch's time after its validation is an overhead."""
        now, session = self.clock(), self._session
        if "last_end" in session:
            self.epoch_s["end"] = max(0.0, now - session["last_end"] - session.get("val", 0.0))
        size, batch = self._shape(trainer, self._nominal_epoch(trainer.current_epoch))
        session.update(
            epoch_start=now,
            work=float(size * size * batch * trainer.accumulate_grad_batches),
            last=None,
            total=0.0,
            count=0,
            val=0.0,
        )
        session.setdefault("first_epoch", trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Measure the step; plan or re-plan when it is time; stop at the planned last step."""
        if trainer.fast_dev_run or not self._session:
            return
        measured = self._measure(trainer, batch_idx)
        step, last_batch = trainer.global_step, batch_idx + 1 == trainer.num_training_batches
        done = math.ceil((batch_idx + 1) / trainer.accumulate_grad_batches)  # optimizer steps of this epoch so far
        if self.plan is None:
            if last_batch or step - self._session["step"] >= self.warmup_steps + self.measure_steps:
                self._measured.add(self._session["work"])  # the first plan has measured this size
                self._time_validation(trainer, pl_module)
                self._session["last"] = self.clock()  # the probe's seconds are not the next step's
                self._replan(trainer, done, first=True)
        elif step < self.plan.steps and (last_batch or measured or step == self._session.get("recheck")):
            epoch = trainer.current_epoch
            why = f"at the end of epoch {epoch}" if last_batch else f"after {step} steps"
            why += "" if last_batch else " (a new size measured)" if measured else self._session["recheck_why"]
            self._replan(trainer, done, first=False, why=why)
        if self.plan is not None and step >= self.plan.steps:
            trainer.should_stop = True  # stops after this batch's validation (Lightning validates a stopping fit)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        """The sanity check's batches: after its first, each is what a validation batch costs."""
        if trainer.sanity_checking and self._session:
            self._session.setdefault("sanity", []).append(self.clock())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Time the fit's validations (not the sanity check)."""
        self._session["val_start"] = self.clock()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the validation's seconds by its image size."""
        start = self._session.pop("val_start", None)
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or start is None:
            return
        seconds = self.clock() - start
        self._session["val"] = self._session.get("val", 0.0) + seconds
        self.val_s[self._val_work(trainer, self._nominal_epoch(trainer.current_epoch))] = seconds
        if self.plan is not None and trainer.global_step < self.plan.steps:
            # The plan that led here predicted this validation (from a probe or one before it): re-plan after the
            # next step with what it took, or a plan whose rest is short would end on a stale prediction.
            self._session.update(recheck=trainer.global_step + 1, recheck_why=" (a validation measured)")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the other callbacks back their configured schedules."""
        if stage == "fit" and self._nominal:
            self._retime_callbacks(trainer, None)

    def state_dict(self) -> dict[str, Any]:
        """The plan, the measurements and the seconds spent (plain types: checkpoints load with weights_only)."""
        return {
            "budget_s": self.seconds,
            "spent_s": self.elapsed(),
            "nominal_epochs": self.nominal_epochs,
            "plan": None if self.plan is None else self.plan.to_dict(),
            "history": list(self.history),
            "step_s": [list(item) for item in self.step_s.items()],
            "val_s": [list(item) for item in self.val_s.items()],
            "epoch_s": dict(self.epoch_s),
            "measured": sorted(self._measured),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Go on with a checkpoint's plan and measurements, its seconds spent counted (a new budget re-plans)."""
        self.spent_before = state_dict["spent_s"]
        self.nominal_epochs = state_dict["nominal_epochs"]
        self.plan = None if state_dict["plan"] is None else Plan.from_dict(state_dict["plan"])
        self.history = list(state_dict["history"])
        self.step_s = {w: s for w, s in state_dict["step_s"]}
        self.val_s = {w: s for w, s in state_dict["val_s"]}
        self.epoch_s = dict(state_dict["epoch_s"])
        self._measured = set(state_dict["measured"])
        if state_dict["budget_s"] != self.seconds:
            rank_zero_info(f"TimeBudget: the budget is now {self.seconds:.0f} s (was {state_dict['budget_s']:.0f})")

    # --- measuring -----------------------------------------------------------------------------------------
    def _measure(self, trainer: L.Trainer, batch_idx: int) -> bool:
        """Batch-to-batch seconds after the warm-ups; what else the epoch's training took is its start overhead.

        True when this batch completes the first ``measure_steps`` measured steps of an image and batch size: the
        plan's prediction for it can give way to a measurement.
        """
        now, session = self.clock(), self._session
        work = session["work"]
        if batch_idx > 0 and session["last"] is not None:  # the first batch's time includes the loader's start
            if work not in session["seen"]:
                session["seen"].add(work)
                session["warm"] = 0
            session["warm"] = session.get("warm", 0) + 1
            if session["warm"] > self.warmup_steps:
                session["total"] += now - session["last"]
                session["count"] += 1
        session["last"] = session["last_end"] = now
        if session["count"]:
            self.step_s[work] = session["total"] / session["count"] * trainer.accumulate_grad_batches
            session["rough"].discard(work)
        elif work not in self.step_s or work in session["rough"]:
            # Nothing measured after a warm-up yet: the epoch's time so far per batch (an overestimate) stands in.
            self.step_s[work] = (now - session["epoch_start"]) / (batch_idx + 1) * trainer.accumulate_grad_batches
            session["rough"].add(work)
        if batch_idx + 1 == trainer.num_training_batches and trainer.current_epoch > session["first_epoch"]:
            batches = batch_idx + 1
            batch_s = self.step_s.get(work, 0.0) / trainer.accumulate_grad_batches
            self.epoch_s["start"] = max(0.0, now - session["epoch_start"] - batches * batch_s)
        if session["count"] == self.measure_steps and work not in self._measured:
            self._measured.add(work)
            return True
        return False

    def _time_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Seconds of a validation, before any has run (rank 0): the sanity check's batches after its first, where
        it ran two or more; else the validation loader's first batches as a validation runs them (loaded, moved to
        the device, through the data module's ``val_transform`` if it has one, and the module's forward pass in the
        Trainer's precision context), timed from the first one's end: its loader start is no batch's cost. A module
        whose forward takes no such batch keeps the prediction from the training speed."""
        images = self._val_images(trainer)
        if self.val_s or not images or not trainer.is_global_zero or trainer.limit_val_batches == 0:
            return
        sanity, loader = self._session.get("sanity", []), trainer.val_dataloaders
        if len(sanity) >= 2 and getattr(loader, "batch_size", None):
            batch_s = (sanity[-1] - sanity[0]) / (len(sanity) - 1)
            self.val_s[self._val_work(trainer, 0)] = predicted = batch_s * math.ceil(images / loader.batch_size)
            rank_zero_info(f"TimeBudget: a validation predicted at {predicted:.1f} s (from the sanity check)")
            return
        if loader is None:
            loader = trainer.datamodule.val_dataloader()  # not yet the Trainer's: _val_images counted this one
        transform = getattr(trainer.datamodule, "val_transform", None)
        ends, training, start = [], pl_module.training, self.clock()
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for batch in loader:
                    x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(pl_module.device)
                    x = transform(x) if transform is not None else x
                    pl_module(x)
                    _synchronize(x.device)
                    ends.append(self.clock())
                    if len(ends) > PROBE_BATCHES:
                        break
        except (TypeError, ValueError, RuntimeError, AttributeError) as err:
            rank_zero_info(f"TimeBudget: validation predicted from the training speed ({type(err).__name__}: {err})")
            return
        finally:
            pl_module.train(training)
        if not ends:
            return
        batch_s = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else ends[0] - start
        batches = math.ceil(images / (getattr(loader, "batch_size", None) or len(x)))
        work = self._val_work(trainer, self._nominal_epoch(trainer.current_epoch))  # the transform's size now
        self.val_s[work] = predicted = batch_s * batches
        rank_zero_info(
            f"TimeBudget: a validation at {math.isqrt(int(work))} px predicted at {predicted:.1f} s ({batches} "
            f"batches of {len(x)} images, {batch_s:.2f} s each as its first {len(ends)} ran)"
        )

    def _nominal_epoch(self, epoch: int) -> int:
        """The configured epoch that planned ``epoch`` runs."""
        return self.plan.timeline.nominal_epoch(epoch) if self.plan is not None else epoch

    def _shape(self, trainer: L.Trainer, nominal_epoch: int) -> tuple[int, int]:
        """(training image side, batch size) of configured epoch ``nominal_epoch``; a side of 1 when unknown."""
        stages, dm = self._nominal.get("stages"), trainer.datamodule
        size, batch = getattr(dm, "train_size", None), None
        if stages:
            stage = stages[max(k for k in stages if k <= nominal_epoch)]
            size, batch = stage.size, stage.batch_size
        batch = batch or getattr(dm, "batch_size", None) or trainer.train_dataloader.batch_size
        return int(size or 1), int(batch)

    def _val_work(self, trainer: L.Trainer, nominal_epoch: int) -> float:
        """Pixels per validation image after configured epoch ``nominal_epoch`` (validation size, else training)."""
        side = getattr(trainer.datamodule, "val_size", None) or self._shape(trainer, nominal_epoch)[0]
        return float(side * side)

    def _costs(self, trainer: L.Trainer) -> Costs:
        """What each configured epoch costs, from the measurements so far."""
        accumulate = trainer.accumulate_grad_batches

        def work(k: int) -> float:
            size, batch = self._shape(trainer, k)
            return float(size * size * batch * accumulate)

        images = self._val_images(trainer) if not self.val_s else 0.0

        def val_s(k: int) -> float:
            if self.val_s:
                return step_seconds(self.val_s, self._val_work(trainer, k))
            # None yet: the images at the training speed per pixel, forward only.
            per_pixel = step_seconds(self.step_s, work(k)) / work(k)
            return images * self._val_work(trainer, k) * per_pixel * FORWARD_SHARE

        last = self.nominal_epochs - 1
        every = 0 if trainer.limit_val_batches == 0 else (trainer.check_val_every_n_epoch or 1)
        return Costs(
            steps=lambda k: epoch_steps(trainer, self._shape(trainer, k)[1]),
            step_s=lambda k: step_seconds(self.step_s, work(k)),
            val_s=val_s,
            epoch_s=self.epoch_s["start"] + self.epoch_s["end"],
            final_s=self._final_passes(every) * val_s(last),
            val_every=every,
        )

    def _final_passes(self, val_every: int) -> int:
        """Passes of the final TTA over the validation images: its centre view is the last validation's, if any."""
        if self.final_tta is None:
            return 0
        return self.final_tta.passes - (1 if val_every and self.final_tta.passes > 1 else 0)

    @staticmethod
    def _val_images(trainer: L.Trainer) -> float:
        """Validation images of this rank per validation, before any validation has run (its loader's dataset)."""
        loader = trainer.val_dataloaders
        if loader is None and trainer.datamodule is not None and hasattr(trainer.datamodule, "val_dataloader"):
            loader = trainer.datamodule.val_dataloader()
        if loader is None or isinstance(loader, (list, tuple)) or not hasattr(loader, "dataset"):
            return 0.0
        images = math.ceil(len(loader.dataset) / trainer.world_size)
        limit = trainer.limit_val_batches
        batch = loader.batch_size or 1
        return min(images, limit * batch) if isinstance(limit, int) else images * limit

    # --- planning ------------------------------------------------------------------------------------------
    def _replan(self, trainer: L.Trainer, done: int, first: bool, why: str = "") -> None:
        """Plan on rank 0 from what has been measured, ``done`` steps into the epoch; every rank applies it."""
        epoch, step = trainer.current_epoch, trainer.global_step
        payload = None
        if trainer.is_global_zero:
            timeline = self.plan.timeline if self.plan else Timeline.scaled(self.nominal_epochs, self.nominal_epochs)
            costs = self._costs(trainer)
            left = self.seconds * (1 - self.margin) - self.tail_margin * self._tail_s(costs) - self.elapsed()
            payload = plan(left, timeline, epoch, done, step, costs, keep_past=not first).to_dict()
        new = Plan.from_dict(trainer.strategy.broadcast(payload, src=0))
        previous, self.plan = self.plan, new
        self._apply(trainer, new, done)
        self._report(trainer, new, previous, why)
        # No epoch end re-checks a plan whose rest lies in one epoch (this one, or the next from this one's end):
        # re-plan when half its steps left have run (every rank alike: the plan is the same), while more than
        # measure_steps would be left to measure after it.
        left, rest = new.steps - step, [n - (done if i == 0 else 0) for i, n in enumerate(new.epoch_steps)]
        ending = sum(r > 0 for r in rest) == 1 and left - left // 2 > self.measure_steps
        half = step + left // 2 if ending else None
        self._session.update(recheck=half, recheck_why=" (half the last epoch's rest run)")

    def _tail_s(self, costs: Costs) -> float:
        """Predicted seconds of what follows the last training step: the last validation and the final TTA."""
        return (costs.val_s(self.nominal_epochs - 1) if costs.val_every else 0.0) + costs.final_s

    def _apply(self, trainer: L.Trainer, new: Plan, done: int | None, max_steps: bool = True) -> None:
        """The plan's length to the Trainer, its timeline to the stages and cycles; stretch the running cycle.

        ``done``: optimizer steps into the current epoch (None: leave the running cycle as it is).
        """
        trainer.fit_loop.max_epochs = new.epochs
        if max_steps:
            trainer.fit_loop.epoch_loop.max_steps = new.steps
        starts = self._retime_callbacks(trainer, new)
        configs = trainer.lr_scheduler_configs
        if done is not None and configs and isinstance(configs[0].scheduler, OneCycleLR):
            epoch = trainer.current_epoch
            following = min((s for s in starts if s > epoch), default=new.epochs)
            scheduler = configs[0].scheduler
            scheduler.load_state_dict(retime_one_cycle(scheduler.state_dict(), new.steps_until(epoch, done, following)))

    def _retime_callbacks(self, trainer: L.Trainer, new: Plan | None) -> list[int]:
        """Set the stages' and cycles' epochs to the plan's (None: back to the configured); the cycles' starts."""
        resize, cycles = _find(trainer, ProgressiveResize), _find(trainer, OneCycles)
        if resize and self._nominal.get("resize"):
            schedule, epochs = self._nominal["resize"]
            if new is not None:
                schedule = retime(self._nominal["stages"], new.timeline, new.epochs)
                epochs = sorted(schedule)
            resize.schedule, resize.epochs = schedule, epochs
        starts = [0]
        if cycles and self._nominal.get("cycles"):
            schedule, clears, epochs = self._nominal["cycles"]
            if new is not None:
                tagged = retime({k: (c, k in clears) for k, c in schedule.items()}, new.timeline, new.epochs)
                schedule = {k: c for k, (c, _) in tagged.items()}
                clears = {k for k, (_, clear) in tagged.items() if clear}
                epochs = sorted(schedule)
            cycles.schedule, cycles.clears, cycles.epochs = schedule, clears, epochs
            starts += epochs
        return starts

    def _report(self, trainer: L.Trainer, new: Plan, previous: Plan | None, why: str) -> None:
        """The plan to the log and to the loggers (``why``: when a re-plan was made, for the log)."""
        spent = self.elapsed()
        length = new.timeline.end
        row = {"step": trainer.global_step, "spent_s": spent, "steps": new.steps, "epochs": length}
        # What the prediction rests on: a step now, and the fit's last validation.
        step_s = self.step_s.get(self._session.get("work", 0.0), 0.0)
        val_s = self._costs(trainer).val_s(self.nominal_epochs - 1)
        row |= {"end_s": spent + new.seconds, "step_s": step_s, "val_s": val_s, "overrun": float(new.overrun)}
        self.history.append(row)
        if not trainer.is_global_zero:
            return
        when = f"after {trainer.global_step} steps" if previous is None else why
        was = "" if previous is None else f" (was {previous.steps})"
        rank_zero_info(
            f"TimeBudget: {'re-plan' if previous else 'plan'} {when}, {spent:.1f} s spent: {new.steps} steps{was} in "
            f"{length:.2f} epochs ({self.nominal_epochs} configured), predicted to end at {row['end_s']:.1f} s of "
            f"{self.seconds:.0f} s (a step {step_s:.3f} s, the last validation {val_s:.1f} s)"
        )
        if new.overrun:
            rank_zero_warn(
                f"TimeBudget: the budget of {self.seconds:.0f} s is overrun: the fit ends after one more step, at "
                f"about {row['end_s']:.0f} s"
            )
        scalars = {f"budget/{k}": float(v) for k, v in row.items() if k != "step"}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)


def _synchronize(device: torch.device) -> None:
    """Wait for the accelerator's queued work (a CUDA kernel returns before it has run)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _find(trainer: L.Trainer, kind: type) -> Any:
    """The first callback of ``kind`` among the Trainer's, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)
