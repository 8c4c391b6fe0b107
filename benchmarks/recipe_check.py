"""A shipped recipe from its YAML beside fastai's own version of it, same data, same steps, at a reduced scale.

    python -m benchmarks.recipe_check --configs leaderboard_128_5 baseline progressive
    python -m benchmarks.recipe_check --configs leaderboard_128_5 --skip-fastai --overlay my_change.yaml
    python -m benchmarks.recipe_check --configs progressive --skip-ours --fastai-prefilter ours
    python -m benchmarks.recipe_check --configs progressive --skip-fastai --ours-crop batch

Reduced scale (the full recipes take hours per epoch on two CPU cores): a seeded subset of imagenette2-160
(``--train-per-class`` and ``--val-per-class`` images of each class, official split, linked into
``data/recipe_check/``), every image side of the recipe times ``--scale`` (presize, training and validation sizes,
ProgressiveResize's stages), and optionally other epochs (``--epochs``, not for a progressive schedule); batch
sizes, learning rates, schedules, optimizer, loss, mixup and augmentation are the recipe's. Both sides run on the
CPU in fp32.

Ours (``benchmarks/recipe/ours.py``): ``ImagenetteCLI`` on ``configs/<name>.yaml`` after its base (the header's
"An overlay on"), plus any ``--overlay`` YAML, with only the scale, data and quiet-trainer settings overridden.
fastai's (``benchmarks/recipe/fastai_side.py``): the recipe's anchor built from fastai 2.8's objects
(examples/train_imagenette.py for leaderboard_*, the book's chapter for the others), its numbers read from our
parsed config.

The two book pipelines differ by design in two steps, and each can be swapped to measure what it is worth
(``benchmarks/recipe/diagnostics.py``):

- a batch resample that shrinks 2x or more: fastai area-resizes to twice the output and samples that 2x, which
  aliases; ours area-averages by the integer factor that leaves under 2x. It matters where the presize is well over
  twice the training size (the progressive recipe's first stage: 460 to 128 px, here 112 to 32 px).
  ``--fastai-prefilter ours`` gives fastai's resampling ours' filter (``area_prefilter``).
- the random crop: fastai's ``RandomResizedCropGPU`` draws one for the whole batch, ours one per sample.
  ``--ours-crop batch`` gives ours fastai's (``shared_crop``).

Per epoch, each side prints validation accuracy and the mean training loss (fastai's: the raw batch losses
averaged, not its smoothed ``train_loss``). ``--seeds`` runs each side once per training seed (the data subset stays
the same): at this scale the first epochs of one seed differ by several points from seed to seed, so a per-epoch gap
is only meaningful beside that spread. Last line JSON: per config and side each seed's figures and their per-epoch
mean and standard deviation; per config ``acc_gap`` (points, mean ours - mean fastai per epoch) and, with two or more
seeds, ``acc_gap_se`` (its standard error) and ``beyond_bar`` (the epochs whose |acc_gap| exceeds 2 points by more
than 2 standard errors: the gaps seed noise does not explain); ``max_acc_gap_vs_fastai`` (the largest |acc_gap| over
the configs and epochs checked), ``beyond_bar`` per config, and ``configs``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import imagenette160, report
from benchmarks.recipe.ours import ours
from benchmarks.recipe.scale import progressive, scaled, subset
from benchmarks.recipe.stats import BAR, Z, beyond_bar, gap, summary
from imagenette_sota import seeds


def parse() -> argparse.Namespace:
    """The command line (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["leaderboard_128_5", "baseline", "progressive"])
    p.add_argument("--overlay", action="append", default=[], help="a YAML applied after each config (ours only)")
    p.add_argument("--scale", type=float, default=0.25, help="factor on every image side (0.25: 128 px -> 32 px)")
    p.add_argument("--epochs", type=int, help="override the recipes' epochs (default: theirs)")
    p.add_argument("--stop-after", type=int, help="ours only: stop after this many epochs of the recipe's schedule")
    p.add_argument("--seeds", type=int, nargs="+", default=[seeds.DEFAULT], help="training seeds, one run each")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--mini", action="store_true", help="the 300-image mini archive (a smoke run)")
    p.add_argument(
        "--ours-crop",
        choices=["sample", "batch"],
        default="sample",
        help="batch: ours with one random crop per batch, as fastai draws it (a diagnostic, shared_crop)",
    )
    p.add_argument(
        "--fastai-prefilter",
        choices=["fastai", "ours"],
        default="fastai",
        help="ours: fastai's resampling with this suite's area prefilter (a diagnostic, area_prefilter)",
    )
    p.add_argument("--skip-fastai", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    return p.parse_args()


def side_runs(
    label: str,
    name: str,
    configs: list[str],
    config: dict[str, Any],
    data: Path,
    epochs: int | None,
    args: argparse.Namespace,
) -> list[dict]:
    """One side's run of config ``name`` per seed, each printed per epoch."""
    runs = []
    for seed in args.seeds:
        if label == "ours":
            run = ours(configs, config, data, epochs, args.scale, seed, args.stop_after, args.ours_crop)
        else:
            from benchmarks.recipe.fastai_side import fastai_side  # fastai is imported only where its side runs

            run = fastai_side(name, config, data, epochs, args.scale, seed, args.fastai_prefilter)
        for e, (acc, loss) in enumerate(zip(run["acc"], run["loss"], strict=False)):
            print(f"{name} {label:6s} seed {seed} epoch {e}: val acc {acc:.4f}  train loss {loss:.4f}")
        print(f"{name} {label} seed {seed}: {run['steps']} steps in {run['s']:.0f} s", flush=True)
        runs.append(run | {"seed": seed})
    return runs


def check(name: str, args: argparse.Namespace, data: Path, tmp: Path) -> dict[str, Any]:
    """Config ``name``: each side's runs and their summary; with both sides, the per-epoch gap and its verdict."""
    configs, config = scaled(name, args.scale, args.overlay, tmp)
    result: dict[str, Any] = {}
    epochs = None if progressive(config) else args.epochs  # a progressive schedule keeps its epochs
    for label, skip in (("ours", args.skip_ours), ("fastai", args.skip_fastai)):
        if not skip:
            runs = side_runs(label, name, configs, config, data, epochs, args)
            result[label] = {"runs": runs, **summary(runs)}
    if "ours" in result and "fastai" in result:
        result |= gap(result["ours"], result["fastai"])
        result["beyond_bar"] = beyond_bar(result)
        se = result.get("acc_gap_se", [None] * len(result["acc_gap"]))
        for e, (g, s) in enumerate(zip(result["acc_gap"], se, strict=True)):
            print(f"{name} epoch {e}: ours - fastai {g:+.1f} points" + (f" (se {s:.1f})" if s else ""))
        print(f"{name}: epochs beyond {BAR} points by more than {Z} se: {result['beyond_bar']}")
    return result


def main() -> None:
    args = parse()
    data = subset(imagenette160(mini=args.mini), args.train_per_class, args.val_per_class)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: check(name, args, data, Path(tmp)) for name in args.configs}
    gaps = [abs(g) for result in results.values() for g in result.get("acc_gap", [])]
    scale = {"scale": args.scale, "train_per_class": args.train_per_class, "val_per_class": args.val_per_class}
    report(
        {
            **scale,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "ours_crop": args.ours_crop,
            "fastai_prefilter": args.fastai_prefilter,
            "results": results,
            "max_acc_gap_vs_fastai": max(gaps) if gaps else None,
            "bar_points": BAR,
            "beyond_bar": {name: r["beyond_bar"] for name, r in results.items() if "beyond_bar" in r},
            "configs": args.configs,
        }
    )


if __name__ == "__main__":
    main()
