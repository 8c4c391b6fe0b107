"""Accuracy against a wall-clock budget on imagenette2-160 (official val): ``fit --budget`` against epoch counts.

    python -m benchmarks.cpu_budget                                  # 3, 6 and 12 minutes, seed 0: about an hour
    python -m benchmarks.cpu_budget --seeds 0 1 2 --plot docs/budget.png
    python -m benchmarks.cpu_budget --smoke --plot /tmp/budget.png   # a check that it runs: seconds

For each budget and seed, one after the other in one invocation on this machine, each run in a fresh process of
its own (as a user starts one: no caches, imports or memory warmed by the run before):

- ``ours``: our recipe (``--config``, by default configs/cpu_speedrun.yaml) through the CLI itself with
  ``--budget``: the budget plans the epochs, the ramp's share of them and the one-cycle, and ends the fit and the
  config's final TTA on time.
- ``ours_epochs``: the same recipe without a budget, at ``max_epochs`` = the budget run's planned length rounded:
  the epoch-count run that takes about the same time (its own wall time is reported; run once per seed and epoch
  count, shared by the budgets that round to it).
- ``fastai``: the chapter's recipe with ``fit_one_cycle`` (``Resize(presize)``, ``aug_transforms(size,
  min_scale=0.75)``, ImageNet normalization, xresnet, label smoothing; at ``--fastai-size`` throughout), given the
  epoch count that fits the budget by its best guess from one measured epoch: ``fit_one_cycle(1)`` of a fresh
  learner is timed (once per seed), then a fresh learner runs ``fit_one_cycle(max(1, floor(budget / that)))``.

Both sides run at ``--precision`` in channels_last (our Trainer's; fastai through ``benchmarks.fastai_cpu.like_ours``,
with a CPU autocast for ``bf16-mixed``, as fastai's own ``to_bf16`` autocasts for CUDA only). Wall times: ``ours``
from the budget's clock start (the call of ``fit``, data preparation inside) to the end of the final accuracy (the
final TTA, else the last validation): ``budget_used_s``; every run also from the Trainer's setup (``fit_s``; fastai:
from building its data loaders) to that end. Accuracy: the final TTA's when the config has one, else the last
validation's (``acc``), and the last validation's (``val_acc``). What followed the last step, which a budget's plans
predicted: the last validation's and the final TTA's seconds (``last_val_s``, ``tta_s``) and, for a budget, the last
step's end on its clock (``training_end_s``, as the plans' ``end_s``). The plot (``--plot``, a PNG): accuracy against
budget, and the wall time used as a share of it, means over seeds with their standard deviation. Last line: one JSON
object."""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L

from benchmarks.common import REPO, fastai_dataloaders, imagenette160, machine, report, rounded
from benchmarks.fastai_cpu import like_ours
from imagenette_sota import quiet
from imagenette_sota.budget import parse_duration

SPEEDRUN = REPO / "configs" / "cpu_speedrun.yaml"
PLOT = REPO / "docs" / "budget.png"


class FitClock(L.Callback):
    """``time.perf_counter()`` at the Trainer's setup (a budget's clock starts earlier, when fit is called), at the
    last training step's end, and at the last validation's start and end, with its accuracy (a final TTA's predict
    loop resets the Trainer's metrics)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.start = time.perf_counter()

    def on_train_batch_end(self, *_: Any) -> None:
        self.train_end = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_end, self.val_acc = time.perf_counter(), trainer.callback_metrics["val/acc"].item()


def ours(configs: list[Path], data_dir: Path, seed: int, extra: list[str], name: str) -> dict[str, Any]:
    """A fit of the recipe through the CLI (``extra``: its budget or epochs); accuracy, wall times, the plan."""
    from imagenette_sota.callbacks import TimeBudget
    from imagenette_sota.cli import cli

    args = ["fit", *(x for c in configs for x in ("--config", str(c))), "--data.root", str(data_dir)]
    args += ["--seed_everything", str(seed), *quiet.CLI_ARGS, *extra]
    print(f"{name}: imagenette-sota {' '.join(args)}", flush=True)
    clock = FitClock()
    run = cli(args, trainer_defaults={"callbacks": [clock]}, save_config_callback=None)
    tta = getattr(run, "final_tta", None)
    end, val_acc = tta["end"] if tta is not None else clock.val_end, clock.val_acc
    budget = next((c for c in run.trainer.callbacks if isinstance(c, TimeBudget)), None)
    out = {
        "acc": tta["acc"] if tta is not None else val_acc,
        "val_acc": val_acc,
        "fit_s": end - clock.start,
        "epochs": run.trainer.current_epoch,
        "steps": run.trainer.global_step,
        "last_val_s": clock.val_end - clock.val_start,  # what follows the last step: a budget's plans predicted it
        "tta_s": tta["s"] if tta is not None else 0.0,
    }
    if budget is not None:
        out |= {"budget_used_s": end - budget.started, "planned_epochs": budget.plan.timeline.end}
        out["training_end_s"] = clock.train_end - budget.started  # on the budget's clock, as the plans' end_s
        out["plans"] = [dict(row) for row in budget.history]  # step, spent, planned steps, predicted end, costs
    print(f"{name}: {out['acc']:.4f} in {out['fit_s']:.1f} s ({out['epochs']} epochs)", flush=True)
    del run
    gc.collect()
    return out


def fastai_fit(data_dir: Path, args: argparse.Namespace, seed: int, epochs: int) -> dict[str, Any]:
    """fit_one_cycle(epochs) of the chapter's recipe on a fresh learner: accuracy and wall time."""
    from fastai.vision.all import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat, Learner, accuracy, set_seed
    from fastai.vision.models import xresnet as fa_models

    set_seed(seed)
    start = time.perf_counter()
    dls = fastai_dataloaders(data_dir, args.fastai_presize, args.fastai_size, args.fastai_bs, args.fastai_workers)
    ls = args.fastai_label_smoothing
    loss = LabelSmoothingCrossEntropyFlat(eps=ls) if ls else CrossEntropyLossFlat()
    learn = Learner(dls, getattr(fa_models, args.fastai_arch)(n_out=10), loss_func=loss, metrics=accuracy)
    like_ours(learn, "bf16" if args.precision.startswith("bf16") else "32")  # our layout and precision
    with learn.no_bar():
        fit_start = time.perf_counter()
        learn.fit_one_cycle(epochs, args.fastai_lr)
    end = time.perf_counter()
    acc = float(learn.recorder.values[-1][2])
    print(f"fastai: {acc:.4f} in {end - start:.1f} s ({epochs} epochs)", flush=True)
    return {"acc": acc, "val_acc": acc, "fit_s": end - start, "one_cycle_s": end - fit_start, "epochs": epochs}


def summary(runs: list[dict[str, Any]], sides: list[str]) -> dict[str, dict[str, Any]]:
    """Per budget and side: mean and sd (over seeds) of accuracy and wall time."""
    out: dict[str, dict[str, Any]] = {}
    for budget in dict.fromkeys(r["budget"] for r in runs):
        rows = [r for r in runs if r["budget"] == budget]
        figures: dict[str, Any] = {"budget_s": rows[0]["budget_s"], "seeds": len(rows)}
        for side in sides:
            for key in ("acc", "fit_s"):
                values = [r[side][key] for r in rows if side in r]
                if values:
                    figures[f"{side}_{key}_mean"] = statistics.fmean(values)
                    if len(values) > 1:
                        figures[f"{side}_{key}_sd"] = statistics.stdev(values)
        out[budget] = figures
    return out


def plot(table: dict[str, dict[str, Any]], sides: list[str], path: Path, title: str) -> None:
    """A PNG: accuracy against the budget (left) and the wall time used, as a share of it (right).

    Means over seeds, the seeds' standard deviation as error bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "ours": "ours: fit --budget",
        "ours_epochs": "ours: max_epochs of the same length",
        "fastai": "fastai: fit_one_cycle, epochs guessed from one",
    }
    minutes = [row["budget_s"] / 60 for row in table.values()]
    fig, (acc, used) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for side in sides:
        rows = list(table.values())
        if any(f"{side}_acc_mean" not in row for row in rows):
            continue
        for ax, key, scale in ((acc, "acc", [100.0] * len(rows)), (used, "fit_s", [100 / r["budget_s"] for r in rows])):
            means = [row[f"{side}_{key}_mean"] * k for row, k in zip(rows, scale, strict=True)]
            sds = [row.get(f"{side}_{key}_sd", 0.0) * k for row, k in zip(rows, scale, strict=True)]
            ax.errorbar(minutes, means, yerr=sds, marker="o", capsize=3, label=labels[side])
    acc.set_ylabel("validation accuracy (%)")
    used.set_ylabel("wall time, fit to final accuracy (% of the budget)")
    used.axhline(100, color="grey", lw=0.8, ls="--")
    for ax in (acc, used):
        ax.set_xlabel("budget (minutes)")
        ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("--budgets", nargs="+", default=["3m", "6m", "12m"], help="durations: 90s, 3m, 1h")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--config", type=Path, nargs="+", default=[SPEEDRUN], help="our recipe (several: composed)")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"], help="both sides")
    p.add_argument("--plot", type=Path, default=PLOT, help="the PNG to draw")
    p.add_argument("--mini", action="store_true", help="the 300-image archive")
    smoke_help = "a check that it runs: --mini, --budgets 5s, one seed, a small XResNet, fastai at 32 px in-process"
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    p.add_argument("--skip-fastai", action="store_true")
    p.add_argument("--skip-epochs", action="store_true", help="no ours_epochs runs")
    fastai = p.add_argument_group("fastai's side: the chapter's recipe at the CPU recipe's scale")
    fastai.add_argument("--fastai-arch", default="xresnet18")
    fastai.add_argument("--fastai-presize", type=int, default=128)
    fastai.add_argument("--fastai-size", type=int, default=64)
    fastai.add_argument("--fastai-bs", type=int, default=64)
    fastai.add_argument("--fastai-lr", type=float, default=3e-3)
    fastai.add_argument("--fastai-label-smoothing", type=float, default=0.1)
    fastai.add_argument("--fastai-workers", type=int, help="default: fastai's own (every core up to 16)")
    one = p.add_argument_group("one run in this process (what the invocation starts for each run)")
    one.add_argument("--one", choices=["ours", "fastai"], help=argparse.SUPPRESS)
    one.add_argument("--one-seed", type=int, default=0, help=argparse.SUPPRESS)
    one.add_argument("--one-budget", help=argparse.SUPPRESS)
    one.add_argument("--one-epochs", type=int, help=argparse.SUPPRESS)
    return p


def one_run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The run ``--one`` names, in this process."""
    if args.one == "fastai":
        return fastai_fit(data_dir, args, args.one_seed, args.one_epochs)
    settings = ["--trainer.precision", args.precision]
    if args.smoke:
        settings += ["--model.backbone", "imagenette_sota.models.XResNet", "--model.backbone.layers", "[1, 1, 1, 1]"]
        settings += ["--model.backbone.widen", "0.25"]
    if args.one_budget is not None:
        return ours(args.config, data_dir, args.one_seed, [*settings, "--budget", args.one_budget], "ours")
    return ours(args.config, data_dir, args.one_seed, [*settings, "--trainer.max_epochs", str(args.one_epochs)], "ours")


def fresh(side: str, seed: int, *run: str) -> dict[str, Any]:
    """A run in a fresh process, as a user starts one (no warm caches, imports or memory of the run before)."""
    command = [sys.executable, "-m", "benchmarks.cpu_budget", *sys.argv[1:], "--one", side, "--one-seed", str(seed)]
    done = subprocess.run([*command, *run], capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    print("\n".join(line for line in lines[:-1] if not line.startswith("{")), flush=True)
    for line in (line for line in done.stderr.splitlines() if line.startswith("TimeBudget:")):
        print(line, file=sys.stderr, flush=True)  # the plans and re-plans, as they came
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} {' '.join(run)} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    args = parser().parse_args()
    if args.smoke:
        args.mini, args.budgets, args.seeds = True, ["5s"], args.seeds[:1]
        args.fastai_presize, args.fastai_size, args.fastai_workers = 48, 32, 0
    data_dir = imagenette160(args.mini)
    if args.one:
        print(json.dumps(one_run(args, data_dir)), flush=True)
        return
    budgets = {b: parse_duration(b, "--budgets") for b in args.budgets}
    sides = ["ours", *([] if args.skip_epochs else ["ours_epochs"]), *([] if args.skip_fastai else ["fastai"])]
    runs, by_epochs = [], {}  # by_epochs: (seed, epochs) -> an ours_epochs run (budgets that round alike share it)
    epoch_s: dict[int, float] = {}  # seed -> fastai's measured epoch (a user measures once, then picks N per budget)
    for budget, seconds in budgets.items():
        for seed in args.seeds:
            row: dict[str, Any] = {"budget": budget, "budget_s": seconds, "seed": seed}
            row["ours"] = fresh("ours", seed, "--one-budget", budget)
            if not args.skip_epochs:
                epochs = max(1, round(row["ours"]["planned_epochs"]))
                if (seed, epochs) not in by_epochs:
                    by_epochs[seed, epochs] = fresh("ours", seed, "--one-epochs", str(epochs))
                row["ours_epochs"] = by_epochs[seed, epochs]
            if not args.skip_fastai:
                # fastai's best guess: one epoch measured (in a process of its own), the epochs that fit the budget.
                if seed not in epoch_s:
                    epoch_s[seed] = fresh("fastai", seed, "--one-epochs", "1")["one_cycle_s"]
                measured = epoch_s[seed]
                epochs = max(1, math.floor(seconds / measured))
                print(f"fastai: one epoch took {measured:.1f} s, so fit_one_cycle({epochs}) for {budget}", flush=True)
                row["fastai"] = fresh("fastai", seed, "--one-epochs", str(epochs)) | {"measured_epoch_s": measured}
            runs.append(row)
    table = summary(runs, sides)
    where = "mini archive" if args.mini else "imagenette2-160"
    title = f"{where}, {args.precision}, {', '.join(c.stem for c in args.config)}; seeds {args.seeds}; {machine()}"
    plot(table, sides, args.plot, title)
    print(f"plot: {args.plot}", flush=True)
    figures = {"precision": args.precision, "mini": args.mini, "configs": [str(c) for c in args.config]}
    figures |= {"seeds": args.seeds, "plot": str(args.plot), "summary": table, "runs": runs}
    report(rounded(figures))


if __name__ == "__main__":
    main()
