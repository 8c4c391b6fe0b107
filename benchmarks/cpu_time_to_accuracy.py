"""The shortest wall time to a target validation accuracy on imagenette2-160 (official val), ours vs fastai.

    python -m benchmarks.cpu_time_to_accuracy                       # configs/cpu_speedrun.yaml, then fastai
    python -m benchmarks.cpu_time_to_accuracy --lever base ema      # one lever at a time on configs/cpu_base.yaml
    python -m benchmarks.cpu_time_to_accuracy --mini --epochs 1 --limit-batches 3   # a smoke run

Ours is a recipe read from config files, run through the ``imagenette-sota fit`` CLI itself (no logger, no
checkpoints): by default ``configs/cpu_speedrun.yaml``; ``--lever NAME ...`` runs ``configs/cpu_base.yaml`` with
``configs/cpu_levers/NAME.yaml`` on top, one run per name (``base``: the base alone), so each lever's accuracy and
time can be compared with the base's. fastai runs the chapter's recipe with ``fit_one_cycle`` (its DataBlock:
``Resize(presize)``, ``aug_transforms(size, min_scale=0.75)``, ImageNet normalization; cpu_proxy's ``fastai_run``) at
``--fastai-epochs`` (8), with fastai's default loader workers.

The clock starts when the fit starts (data preparation and the one-time cache build before it excluded) and reads
at every validation's end, and at the end of the config's ``final_tta`` (flip TTA after the fit). Reported:
``ours_time_to_target_s``, the first of those at or above ``--target``; ``ours_time_to_target_one_val_s``, the
same less the validations before it (a run that validates only there: validating draws nothing that training
uses, tests/test_resume.py); fastai's ``fastai_time_to_target_s``; ``time_ratio_vs_fastai`` of the two when both
reached it; ``time_ratio_at_fastai_final_acc``, our first reading at or above fastai's final accuracy over fastai's
wall time (defined when a side misses the target); and each side's peak resident memory. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from benchmarks.common import REPO, imagenette160, peak_rss_gib, report, reset_peak_rss
from benchmarks.cpu_proxy import EpochClock, fastai_run, rounded
from imagenette_sota import quiet

SPEEDRUN = REPO / "configs" / "cpu_speedrun.yaml"
BASE = REPO / "configs" / "cpu_base.yaml"
LEVERS = REPO / "configs" / "cpu_levers"


def lever_names() -> list[str]:
    """``base`` and the overlays in configs/cpu_levers/."""
    return ["base", *sorted(p.stem for p in LEVERS.glob("*.yaml"))]


def first_reaching(times: list[float], accs: list[float], target: float) -> float | None:
    """Wall seconds at the first validation with accuracy >= ``target`` (None if never)."""
    return next((t for t, a in zip(times, accs, strict=True) if a >= target), None)


def validating_once(times: list[float], val_s: list[float], accs: list[float], target: float | None) -> float | None:
    """Wall seconds at the first validation >= ``target`` (None: the last one), less the validations before it."""
    last = len(accs) - 1
    hit = last if target is None else next((i for i, a in enumerate(accs) if a >= target), None)
    return None if hit is None else times[hit] - sum(val_s[:hit])


def ours(configs: list[Path], data_dir: Path, args: argparse.Namespace, name: str) -> dict:
    """Fit the recipe of ``configs`` through the CLI; per-validation wall time and accuracy, ``final_tta`` last."""
    from imagenette_sota.cli import cli

    overrides = ["--data.root", str(data_dir), "--seed_everything", "0", *quiet.CLI_ARGS]
    if args.epochs is not None:
        overrides += ["--trainer.max_epochs", str(args.epochs)]
    if args.limit_batches is not None:
        n = str(args.limit_batches)
        overrides += ["--trainer.limit_train_batches", n, "--trainer.limit_val_batches", n]
    args_list = ["fit", *(x for c in configs for x in ("--config", str(c))), *overrides]
    print(f"{name}: imagenette-sota {' '.join(args_list)}", flush=True)
    clock = EpochClock()
    reset_peak_rss()
    start = time.perf_counter()
    # No config.yaml: without a logger the CLI would write it into the working directory.
    run = cli(args_list, trainer_defaults={"callbacks": [clock]}, save_config_callback=None)
    wall = time.perf_counter() - start  # from the CLI's start: parsing, data preparation and the cache included
    times, val_s, accs = list(clock.times), list(clock.val_s), list(clock.accs)
    tta = getattr(run, "final_tta", None)
    if tta is not None:  # the end-of-fit TTA is one more "validation": its accuracy at the time it ended
        times.append(tta["end"] - clock.start)
        val_s.append(tta["s"])
        accs.append(tta["acc"])
    out = {
        "configs": [str(c.relative_to(REPO)) if c.is_relative_to(REPO) else str(c) for c in configs],
        "acc": accs[-1],
        "fit_s": times[-1],
        "cli_s": wall,
        "epoch_acc": clock.accs,
        "epoch_s": clock.times,
        "val_s": clock.val_s,
        "final_tta": None if tta is None else {"acc": tta["acc"], "s": tta["s"]},
        "cache": type(run.datamodule.train_set).__name__ == "CachedImages",  # what the defaults came to
        "workers": run.datamodule.train_dataloader().num_workers,  # (a loader starts no process until iterated)
        "readings": {"s": times, "acc": accs},  # every validation's end, then the final TTA's
        "time_to_target_s": first_reaching(times, accs, args.target),
        "time_to_target_one_val_s": validating_once(times, val_s, accs, args.target),
        "one_val_s": validating_once(times, val_s, accs, None),
        "peak_rss_gib": peak_rss_gib(),
    }
    print(
        f"{name}: {out['acc']:.4f} at {out['fit_s']:.0f} s; {args.target:.0%} at {out['time_to_target_s']}", flush=True
    )
    del run
    gc.collect()
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, nargs="+", default=[SPEEDRUN], help="our recipe (several: composed)")
    p.add_argument("--lever", nargs="+", choices=lever_names(), help="runs on configs/cpu_base.yaml, one per name")
    p.add_argument("--target", type=float, default=0.80, help="validation accuracy to reach")
    p.add_argument("--epochs", type=int, help="override the configs' max_epochs (smoke runs); fastai: --fastai-epochs")
    p.add_argument("--limit-batches", type=int, help="train/val batches per epoch of our fits (smoke runs only)")
    p.add_argument("--mini", action="store_true", help="the 300-image archive (smoke runs)")
    p.add_argument("--skip-fastai", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    fastai = p.add_argument_group("fastai's side: the chapter's recipe at the CPU proxy's scale")
    fastai.add_argument("--fastai-epochs", type=int, default=8)
    fastai.add_argument("--fastai-arch", default="xresnet18")
    fastai.add_argument("--fastai-presize", type=int, default=128)
    fastai.add_argument("--fastai-size", type=int, default=64)
    fastai.add_argument("--fastai-bs", type=int, default=64)
    fastai.add_argument("--fastai-lr", type=float, default=3e-3)
    fastai.add_argument("--fastai-label-smoothing", type=float, default=0.0)
    fastai.add_argument("--fastai-workers", type=int, help="default: fastai's own (every core up to 16)")
    return p


def main() -> None:
    args = parser().parse_args()
    data_dir = imagenette160(args.mini)
    figures: dict = {"target": args.target, "mini": args.mini, "limit_batches": args.limit_batches}
    runs = (
        {"ours": args.config}
        if not args.lever
        else {n: [BASE] + ([] if n == "base" else [LEVERS / f"{n}.yaml"]) for n in args.lever}
    )
    if not args.skip_ours:
        for name, configs in runs.items():
            figures |= {f"{name}_{k}": v for k, v in ours(configs, data_dir, args, name).items()}
    if not args.skip_fastai:
        fastai_args = argparse.Namespace(
            arch=args.fastai_arch,
            presize=args.fastai_presize,
            size=args.fastai_size,
            bs=args.fastai_bs,
            lr=args.fastai_lr,
            epochs=args.fastai_epochs,
            label_smoothing=args.fastai_label_smoothing,
            fastai_workers=args.fastai_workers,
        )
        figures |= {k if k.startswith("fastai") else f"fastai_{k}": v for k, v in vars(fastai_args).items()}
        reset_peak_rss()
        run = fastai_run(data_dir, fastai_args)
        figures |= run
        figures["fastai_peak_rss_gib"] = peak_rss_gib()
        figures["fastai_time_to_target_s"] = first_reaching(run["fastai_epoch_s"], run["fastai_epoch_acc"], args.target)
        print(f"fastai: {run['fastai_acc']:.4f} in {run['fastai_s']:.0f} s", flush=True)
    for name in runs:
        ours_s, fastai_s = figures.get(f"{name}_time_to_target_s"), figures.get("fastai_time_to_target_s")
        prefix = "" if name == "ours" else f"{name}_"
        if ours_s and fastai_s:
            figures[f"{prefix}time_ratio_vs_fastai"] = ours_s / fastai_s
        # Also defined when a side misses --target: our first reading at fastai's final accuracy / fastai's wall time.
        if (readings := figures.get(f"{name}_readings")) and "fastai_acc" in figures:
            reached = first_reaching(readings["s"], readings["acc"], figures["fastai_acc"])
            ratio = None if reached is None else reached / figures["fastai_s"]
            figures[f"{prefix}time_ratio_at_fastai_final_acc"] = ratio
    report(rounded(figures))


if __name__ == "__main__":
    main()
