"""The shortest wall time to a target validation accuracy on imagenette2-160 (official val), on this CPU.

    python -m benchmarks.cpu_time_to_accuracy [--target 0.80] [recipe options of benchmarks.cpu_proxy]

Trains one recipe of this suite (the options are cpu_proxy's: arch, epochs, presize, size, --ramp for
progressive resizing, --val-size, label smoothing, ...), validating after every epoch, and reports the wall
time from the start of the fit to the end of the first validation at or above ``--target`` (training and
every validation so far included; data preparation and the decode-once cache build excluded), and
``ours_time_to_target_one_val_s``: the same less the earlier validations, i.e. a run that validates once
(``ours_one_val_s``: the whole run validating only at its end).
fastai runs the same recipe where its ``fit_one_cycle`` can express it (fixed train size, validation at the train size);
with a ramp it trains at the fixed ``--fastai-size`` (default ``--size``), validating at that size. The schedule is one
cycle over ``--epochs``: time-to-accuracy is the time of the shortest such run that ends above the target,
not of a longer run that passes it midway. Last line: one JSON object.
"""

from __future__ import annotations

import argparse

from benchmarks.common import imagenette160, peak_rss_gib, report
from benchmarks.cpu_proxy import fastai_run, ours, parser, recipe, rounded


def first_reaching(times: list[float], accs: list[float], target: float) -> float | None:
    """Wall seconds at the first validation with accuracy >= ``target`` (None if never)."""
    return next((t for t, a in zip(times, accs, strict=True) if a >= target), None)


def validating_once(times: list[float], val_s: list[float], accs: list[float], target: float | None) -> float | None:
    """Wall seconds at the first validation >= ``target`` (None: the last one), less the validations before it.

    Our training draws no randomness from the global streams (imagenette_sota.seeds), so validating or not
    leaves the trained weights unchanged: this is the time of a run that validates only there, to timing noise.
    """
    last = len(accs) - 1
    hit = last if target is None else next((i for i, a in enumerate(accs) if a >= target), None)
    return None if hit is None else times[hit] - sum(val_s[:hit])


def main() -> None:
    p = parser()
    p.description = __doc__
    p.add_argument("--target", type=float, default=0.80, help="validation accuracy to reach")
    p.add_argument("--fastai-size", type=int, help="fastai's fixed size when the recipe ramps (default: --size)")
    p.add_argument("--fastai-workers", type=int, default=2, help="fastai's loader workers (it has no cache)")
    args = p.parse_args()
    data_dir = imagenette160()
    figures = recipe(args) | {"target": args.target}
    if not args.skip_ours:
        run, _, _ = ours(data_dir, args)
        figures |= run
        figures["ours_peak_rss_gib"] = peak_rss_gib()
        figures["ours_time_to_target_s"] = first_reaching(run["ours_epoch_s"], run["ours_epoch_acc"], args.target)
        clock = run["ours_epoch_s"], run["ours_val_s"], run["ours_epoch_acc"]
        figures["ours_time_to_target_one_val_s"] = validating_once(*clock, args.target)
        figures["ours_one_val_s"] = validating_once(*clock, None)
        print(f"ours: {run['ours_acc']:.4f} in {run['ours_s']:.0f} s", flush=True)
    if not args.skip_fastai:
        fastai_args = argparse.Namespace(**vars(args))
        fastai_args.size, fastai_args.workers = args.fastai_size or args.size, args.fastai_workers
        figures |= {"fastai_size": fastai_args.size, "fastai_workers": fastai_args.workers}
        run = fastai_run(data_dir, fastai_args)
        figures |= run
        figures["fastai_time_to_target_s"] = first_reaching(run["fastai_epoch_s"], run["fastai_epoch_acc"], args.target)
        print(f"fastai: {run['fastai_acc']:.4f} in {run['fastai_s']:.0f} s", flush=True)
    if figures.get("ours_time_to_target_s") and figures.get("fastai_time_to_target_s"):
        figures["time_ratio_vs_fastai"] = figures["ours_time_to_target_s"] / figures["fastai_time_to_target_s"]
    report(rounded(figures))


if __name__ == "__main__":
    main()
