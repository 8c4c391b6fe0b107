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

Ours: ``ImagenetteCLI`` on ``configs/<name>.yaml`` after its base (the header's "An overlay on"), plus any
``--overlay`` YAML, with only the scale, data and quiet-trainer settings overridden. fastai's: the recipe's anchor
with fastai 2.8's objects, its numbers read from our parsed config:

- leaderboard_*: examples/train_imagenette.py: ``RandomResizedCrop(size, min_scale=0.35)`` + ``FlipItem`` on
  the images, ImageNet normalization, ``xresnet50(act_cls=Mish, sa=True)``, ``LabelSmoothingCrossEntropy``,
  ``ranger``, ``fit_flat_cos``, ``MixUp`` where the recipe mixes.
- baseline, normalize, label_smoothing: the book's ``Resize(presize)`` + ``aug_transforms(size, min_scale=0.75)``,
  ``xresnet50``, ``fit_one_cycle``.
- progressive: the same at the first stage's size and batch, ``fit_one_cycle``, then the dataloaders of the
  second stage and ``fine_tune``.

The two book pipelines differ by design in two steps, and each can be swapped to measure what it is worth:

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
import contextlib
import dataclasses
import random
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import yaml

from benchmarks.common import DATA_ROOT, QUIET_FIT, REPO, imagenette160, report
from imagenette_sota import seeds
from imagenette_sota.data import augment as aug

CONFIGS = REPO / "configs"
BAR, Z = 2.0, 2.0  # the bar (points) and how many standard errors past it make a gap real
QUIET = [
    *QUIET_FIT,
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
    "--inspection.max_images=0",
    "--inspection.top_losses=0",
    "--inspection.confusion_matrix=false",
    "--data.num_workers=0",
]


def subset(source: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """A folder of links to a seeded choice of images per class and split of ``source`` (made once)."""
    out = DATA_ROOT / "recipe_check" / f"{source.name}-{train_per_class}-{val_per_class}-{seed}"
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    rng = random.Random(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            files = sorted(folder.iterdir())
            (tmp / split / folder.name).mkdir(parents=True)
            for f in rng.sample(files, min(n, len(files))):
                (tmp / split / folder.name / f.name).symlink_to(f.resolve())
    tmp.rename(out)  # complete or absent
    return out


def family(name: str) -> list[str]:
    """The config names a run of ``name`` composes: its base (its header's "An overlay on X.yaml"), then itself."""
    header = [line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines() if line.startswith("#")]
    bases = [m.group(1) for line in header if (m := re.match(r"# An overlay on (\S+)\.yaml", line))]
    return [*bases, name]


def scaled(name: str, scale: float, overlays: list[str], tmp: Path) -> tuple[list[str], dict[str, Any]]:
    """``--config`` arguments of the recipe (ProgressiveResize's stage sizes times ``scale``: list items take no
    CLI override) and any overlays, and the configuration they parse to."""
    args = []
    for part in family(name):
        config = yaml.safe_load((CONFIGS / f"{part}.yaml").read_text())
        for callback in config.get("trainer", {}).get("callbacks", []):
            for stage in callback.get("init_args", {}).get("schedule", {}).values():
                if stage.get("size"):
                    stage["size"] = side(stage["size"], scale)
        path = tmp / f"{part}.yaml"
        path.write_text(yaml.safe_dump(config))
        args += ["--config", str(path)]
    args += [a for o in overlays for a in ("--config", o)]
    from imagenette_sota.cli import cli

    with tempfile.TemporaryFile("w+") as out:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli(["fit", *args, "--print_config"])
        out.seek(0)
        return args, yaml.safe_load(out.read())


def side(px: int, scale: float) -> int:
    """An image side times the scale, a multiple of 8 (at least 16)."""
    return max(16, round(px * scale / 8) * 8)


class EpochLog(L.Callback):
    """Per epoch: validation accuracy and the mean training loss; stops the fit after ``stop`` epochs if given."""

    def __init__(self, stop: int | None = None) -> None:
        self.acc: list[float] = []
        self.loss: list[float] = []
        self.stop = stop

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.loss.append(trainer.callback_metrics["train/loss_epoch"].item())
        if self.stop is not None and len(self.loss) >= self.stop:
            trainer.should_stop = True  # the schedule stays the whole recipe's: its first epochs only

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.acc.append(trainer.callback_metrics["val/acc"].item())


def ours(
    configs: list[str],
    config: dict[str, Any],
    data: Path,
    epochs: int | None,
    scale: float,
    seed: int,
    stop: int | None = None,
    crop: str = "sample",
) -> dict:
    """Fit the recipe (``configs``: its --config arguments) with this suite at the reduced scale, seeded with
    ``seed``; per-epoch accuracy and training loss. ``crop="batch"`` fits inside ``shared_crop``."""
    from imagenette_sota.cli import ImagenetteCLI, ImagenetteTrainer
    from imagenette_sota.data import ImagenetteDataModule
    from imagenette_sota.module import ImagenetteClassifier

    d = config["data"]
    sizes = [
        f"--data.presize={side(d['presize'], scale)}",
        f"--data.train_size={side(d['train_size'], scale)}",
        f"--data.val_size={side(d['val_size'], scale) if d.get('val_size') else 'null'}",
    ]
    cli_args = list(configs)
    cli_args += [*QUIET, f"--data.root={data}", "--data.cache=true", f"--seed_everything={seed}", *sizes]
    cli_args += [f"--trainer.max_epochs={epochs}"] if epochs else []
    run = ImagenetteCLI(
        ImagenetteClassifier,
        ImagenetteDataModule,
        trainer_class=ImagenetteTrainer,
        args=cli_args,
        save_config_callback=None,
        run=False,
    )
    log = EpochLog(stop)
    run.trainer.callbacks.append(log)
    start = time.perf_counter()
    with shared_crop() if crop == "batch" else contextlib.nullcontext():
        run.trainer.fit(run.model, run.datamodule)
    return {"acc": log.acc, "loss": log.loss, "steps": run.trainer.global_step, "s": time.perf_counter() - start}


@contextlib.contextmanager
def area_prefilter() -> Iterator[None]:
    """fastai's batch resampling with this suite's prefilter, while inside.

    fastai's ``_grid_sample`` area-resizes a big shrink to twice the output, then samples it 2x with bilinear
    (``align_corners=True``): aliased. Ours area-averages by the integer factor that leaves the shrink in [1, 2)
    (``augment.prepool_factors``), here from the batch's sampled span as fastai measures it. A diagnostic: it swaps
    a step where the two pipelines' pixels differ by design, to see what the difference is worth.
    """
    import fastai.vision.augment as fa

    original = fa._grid_sample

    def grid_sample(x, coords, mode="bilinear", padding_mode="reflection", align_corners=None):
        if mode == "bilinear":
            x = aug.area_average(x, int(_shrink(x, coords, align_corners)))
        return F.grid_sample(x, coords, mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    fa._grid_sample = grid_sample
    try:
        yield
    finally:
        fa._grid_sample = original


@contextlib.contextmanager
def shared_crop() -> Iterator[None]:
    """Ours' augmentation with one random crop for the whole batch, as fastai's ``RandomResizedCropGPU`` draws it,
    while inside; flip, rotation, zoom, warp and lighting stay per sample. A diagnostic, like ``area_prefilter``."""
    original = aug.Augment.matrices

    def matrices(self, n: int, device="cpu", generator=None) -> torch.Tensor:
        rest = original(dataclasses.replace(self, min_scale=1.0, ratio=(1.0, 1.0)), n, device, generator)
        crop = original(dataclasses.replace(self, flip_p=0.0, p_affine=0.0), 1, device, generator)  # the crop alone
        return crop.expand(n, 3, 3) @ rest

    aug.Augment.matrices = matrices
    try:
        yield
    finally:
        aug.Augment.matrices = original


def _shrink(x: torch.Tensor, coords: torch.Tensor, align_corners: bool | None) -> float:
    """Input pixels per output pixel of a grid_sample, the smaller axis's, from the batch's sampled span (as fastai
    estimates its zoom: min and max over the batch)."""
    steps = []
    for axis, (n_in, n_out) in enumerate(((x.shape[-1], coords.shape[-2]), (x.shape[-2], coords.shape[-3]))):
        span = (coords[..., axis].max() - coords[..., axis].min()).item()  # between the outer output pixels' centres
        steps.append(span * ((n_in - 1) / 2 if align_corners else n_in / 2) / max(n_out - 1, 1))
    return min(steps)


def fastai_side(
    name: str,
    config: dict[str, Any],
    data: Path,
    epochs: int | None,
    scale: float,
    seed: int,
    prefilter: str = "fastai",
) -> dict:
    """fastai's version of the recipe (see the module doc) on the same data, scale and number of steps, seeded;
    ``prefilter="ours"`` runs it inside ``area_prefilter``."""
    from fastai.callback.core import Callback
    from fastai.vision.all import (
        Adam,
        CategoryBlock,
        CrossEntropyLossFlat,
        DataBlock,
        FlipItem,
        GrandparentSplitter,
        ImageBlock,
        LabelSmoothingCrossEntropyFlat,
        Learner,
        MixUp,
        Normalize,
        RandomResizedCrop,
        Resize,
        accuracy,
        aug_transforms,
        get_image_files,
        imagenet_stats,
        parent_label,
        ranger,
        set_seed,
    )
    from fastai.vision.models.xresnet import xresnet50

    m, d, t = config["model"], config["data"], config["trainer"]
    epochs = epochs or t["max_epochs"]
    norm = [Normalize.from_stats(*imagenet_stats)] if d["normalize"] == "imagenet" else []
    leaderboard = name.startswith("leaderboard")

    def dls(size: int, bs: int):
        if leaderboard:  # train_imagenette.py's get_dls
            item, batch = [RandomResizedCrop(size, min_scale=0.35), FlipItem(0.5)], norm
        else:  # the book's presizing
            item, batch = [Resize(side(d["presize"], scale))], [*aug_transforms(size=size, min_scale=0.75), *norm]
        block = DataBlock(
            blocks=(ImageBlock, CategoryBlock),
            get_items=get_image_files,
            splitter=GrandparentSplitter(valid_name="val"),
            get_y=parent_label,
            item_tfms=item,
            batch_tfms=batch,
        )
        return block.dataloaders(data, bs=bs, num_workers=0, device=torch.device("cpu"))

    losses: list[list[float]] = []
    accs: list[float] = []

    class EpochValues(Callback):
        """Per epoch: the raw training batch losses and the validation accuracy (fine_tune's fits included)."""

        order = 60  # after the Recorder (50) has recorded the epoch

        def before_epoch(self) -> None:
            losses.append([])

        def after_batch(self) -> None:
            if self.training:
                losses[-1].append(float(self.loss.detach()))

        def after_epoch(self) -> None:
            accs.append(float(self.recorder.values[-1][2]))

    backbone = m["backbone"]
    init = backbone.get("init_args", {}) if isinstance(backbone, dict) else {}
    act = torch.nn.Mish if init.get("act") == "torch.nn.Mish" else torch.nn.ReLU
    optimizer = m["optimizer"]
    if isinstance(optimizer, dict) and optimizer["class_path"].endswith("Ranger"):
        o = optimizer["init_args"]
        opt_func = partial(ranger, mom=o["mom"], sqr_mom=o["sqr_mom"], eps=o["eps"], k=o["k"], alpha=o["alpha"])
    else:
        opt_func = Adam  # fastai's default: mom 0.9, sqr_mom 0.99, eps 1e-5
    smoothing = m["label_smoothing"]
    loss = LabelSmoothingCrossEntropyFlat(eps=smoothing) if smoothing else CrossEntropyLossFlat()
    cbs = [EpochValues()] + ([MixUp(m["mixup_alpha"])] if m["mixup_alpha"] else [])

    set_seed(seed)
    stages = _stages(config)
    first_size, first_bs = stages[0] if stages else (side(d["train_size"], scale), d["batch_size"])
    net = xresnet50(n_out=10, act_cls=act, sa=bool(init.get("sa", False)))
    learn = Learner(dls(first_size, first_bs), net, loss_func=loss, opt_func=opt_func, metrics=accuracy, cbs=cbs)
    start = time.perf_counter()
    c, wd = m["cycle"], m["weight_decay"]
    filtered = area_prefilter() if prefilter == "ours" else contextlib.nullcontext()
    with learn.no_bar(), learn.no_logging(), filtered:
        if c["moms"] is None and c["div"] == 1.0:
            learn.fit_flat_cos(epochs, c["lr_max"], div_final=c["div_final"], pct_start=c["pct_start"], wd=wd)
        elif config.get("cycles", {}).get("fine_tune"):  # the book's progressive resizing
            tune = config["cycles"]["fine_tune"]
            learn.fit_one_cycle(tune["start_epoch"], c["lr_max"], wd=wd)  # at the first stage's size and batch
            learn.dls = dls(*stages[1])
            learn.fine_tune(tune["epochs"], tune["base_lr"], freeze_epochs=tune.get("freeze_epochs", 1), wd=wd)
        else:
            one = {"div": c["div"], "div_final": c["div_final"], "pct_start": c["pct_start"], "wd": wd}
            learn.fit_one_cycle(epochs, c["lr_max"], **one)
    wall = time.perf_counter() - start
    steps = sum(len(e) for e in losses)
    return {"acc": accs, "loss": [sum(e) / len(e) for e in losses], "steps": steps, "s": wall}


def _progressive(config: dict[str, Any]) -> dict[str, Any]:
    """The init_args of the config's ProgressiveResize ({} without one); schedule keys as ints."""
    for callback in config["trainer"].get("callbacks") or []:
        if callback["class_path"].endswith("ProgressiveResize"):
            init = dict(callback["init_args"])
            init["schedule"] = {int(k): v for k, v in (init.get("schedule") or {}).items()}
            return init
    return {}


def _stages(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(size, batch size) of each ProgressiveResize stage that sets a size (sizes already scaled)."""
    schedule = _progressive(config).get("schedule", {})
    return [(s["size"], s["batch_size"]) for _, s in sorted(schedule.items()) if s.get("size")]


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


def main() -> None:
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
    args = p.parse_args()
    data = subset(imagenette160(mini=args.mini), args.train_per_class, args.val_per_class)
    results: dict[str, Any] = {}
    gaps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            configs, config = scaled(name, args.scale, args.overlay, Path(tmp))
            result: dict[str, Any] = {}
            epochs = None if _progressive(config) else args.epochs  # a progressive schedule keeps its epochs
            for label, skip in (("ours", args.skip_ours), ("fastai", args.skip_fastai)):
                if skip:
                    continue
                runs = []
                for seed in args.seeds:
                    if label == "ours":
                        run = ours(configs, config, data, epochs, args.scale, seed, args.stop_after, args.ours_crop)
                    else:
                        run = fastai_side(name, config, data, epochs, args.scale, seed, args.fastai_prefilter)
                    for e, (acc, loss) in enumerate(zip(run["acc"], run["loss"], strict=False)):
                        print(f"{name} {label:6s} seed {seed} epoch {e}: val acc {acc:.4f}  train loss {loss:.4f}")
                    print(f"{name} {label} seed {seed}: {run['steps']} steps in {run['s']:.0f} s", flush=True)
                    runs.append(run | {"seed": seed})
                result[label] = {"runs": runs, **summary(runs)}
            if "ours" in result and "fastai" in result:
                result |= gap(result["ours"], result["fastai"])
                result["beyond_bar"] = beyond_bar(result)
                gaps += [abs(g) for g in result["acc_gap"]]
                se = result.get("acc_gap_se", [None] * len(result["acc_gap"]))
                for e, (g, s) in enumerate(zip(result["acc_gap"], se, strict=True)):
                    print(f"{name} epoch {e}: ours - fastai {g:+.1f} points" + (f" (se {s:.1f})" if s else ""))
                print(f"{name}: epochs beyond {BAR} points by more than {Z} se: {result['beyond_bar']}")
            results[name] = result
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
