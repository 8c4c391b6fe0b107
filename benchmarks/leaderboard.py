"""The Imagenette leaderboard's 128 px rows at full scale: a shipped ``leaderboard_128_*`` config, one fit per seed,
each appending one JSON line to ``benchmarks/results/leaderboard.jsonl``.

    python -m benchmarks.leaderboard --config configs/leaderboard_128_5.yaml              # CPU: bf16 if it has units
    python -m benchmarks.leaderboard --config configs/leaderboard_128_5.yaml --seeds 0 1 2 --precision config  # GPU
    python -m benchmarks.leaderboard --config configs/leaderboard_128_5.yaml --fastai      # + fastai's own recipe
    python -m benchmarks.leaderboard --config configs/leaderboard_128_5.yaml configs/leaderboard_xse.yaml  # + overlay
    python -m benchmarks.leaderboard --smoke                                               # seconds, mini archive
    MODULE=benchmarks.leaderboard bash benchmarks/gpu.sh --config configs/leaderboard_128_5.yaml --seeds 0 1 2 --fastai

Ours is ``imagenette-sota fit --config configs/leaderboard.yaml --config CONFIG [--config OVERLAY ...]`` (the line's
``command``; an overlay such as leaderboard_xse.yaml changes the row's network, and fastai's side follows it) on the
whole of Imagenette, validating on all of the official val split every epoch; ``--fastai`` adds fastai's own recipe (its
``examples/train_imagenette.py`` as ``benchmarks.recipe.fastai_side`` builds it) on the same data and precision, the
like-for-like row. ``--precision``: ``config`` keeps the config's (``16-mixed``: GPU only); by default bf16 autocast
on a CPU with bf16 units (elsewhere bf16 is emulated, slower), fp32 on other CPUs, the config's on a GPU. A line:
config, side, precision, epochs, seed, per-epoch accuracy and wall seconds (from the fit's start to each validation's
end), the preparation before the fit, device, machine, date (UTC) and data archive. Last line: one JSON object.

On a lent GPU (``benchmarks/gpu.sh`` with ``MODULE`` set, ``.gpu-data`` carried): the data is the 128 px WebP copy
where ../shared/data is absent, the lines go to ``--out`` (``$OUT``), and a run that would not end inside
``--budget`` seconds (judged from the runs before it, per epoch) is skipped and named in the last line.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import FULL_ARCHIVE, REPO, archive, fresh_root, machine, report, rounded
from benchmarks.cpu_proxy import EpochClock
from imagenette_sota import quiet
from imagenette_sota.hardware import cpu_bf16

CONFIGS = REPO / "configs"
BASE = CONFIGS / "leaderboard.yaml"
RESULTS = REPO / "benchmarks" / "results" / "leaderboard.jsonl"
# --smoke: the recipe's structure at a size the CPU runs in seconds.
SMOKE_EPOCHS = SMOKE_BATCHES = 2  # both sides at --smoke: epochs, and batches an epoch
SMOKE = ["--data.presize", "40", "--data.train_size", "32", "--data.val_size", "32", "--data.batch_size", "16"]
SMOKE += ["--trainer.max_epochs", str(SMOKE_EPOCHS)]
SMOKE += [f"--trainer.limit_{split}_batches={SMOKE_BATCHES}" for split in ("train", "val")]
SMOKE_SCALE = 0.25  # fastai's side at --smoke: every image side times this (128 px crops: 32)


def device_name() -> str:
    """The accelerator's name, else the CPU's model and whether it has bf16 units."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    return f"{model}, {os.cpu_count()} cores, bf16 units: {cpu_bf16()}"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def precision_for(asked: str) -> str | None:
    """Lightning's precision for ``--precision`` (None: the config's own)."""
    if asked == "config" or (asked == "auto" and torch.cuda.is_available()):
        return None
    if asked == "auto":
        return "bf16-mixed" if cpu_bf16() else "32-true"
    return asked


def ours(config: list[Path], seed: int, precision: str | None, data: tuple[Path, str], smoke: bool) -> dict[str, Any]:
    """One fit of ``config`` (a row, then any overlays) over the leaderboard base through the CLI on a fresh data root:
    per-epoch accuracy."""
    from imagenette_sota.cli import cli

    configs = [BASE, *config]
    settings = ["--seed_everything", str(seed)] + (["--trainer.precision", precision] if precision else [])
    shown = ["fit", *(x for c in configs for x in ("--config", str(c.relative_to(REPO)))), *settings]
    args = ["fit", *(x for c in configs for x in ("--config", str(c))), *settings]
    with fresh_root() as root:
        extra = ["--data.root", str(root), "--data.url", str(data[0]), "--data.md5", data[1], *quiet.CLI_ARGS]
        extra += SMOKE if smoke else []
        print(f"ours: imagenette-sota {' '.join(shown)}", flush=True)
        clock = EpochClock()
        start = time.perf_counter()
        run = cli([*args, *extra], trainer_defaults={"callbacks": [clock]}, save_config_callback=None)
        trainer = run.trainer
        line = {
            "side": "ours",
            "command": f"imagenette-sota {' '.join(shown)}",
            "precision": str(trainer.precision),
            "epochs": trainer.max_epochs,
            "batch_size": run.datamodule.batch_size,
            "train_images": len(run.datamodule.train_set),
            "val_images": len(run.datamodule.val_set),
        }
        del run
    gc.collect()
    acc, epoch_s = list(clock.accs), list(clock.times)
    return line | {"epoch_acc": acc, "epoch_s": epoch_s, "fit_s": epoch_s[-1], "prepare_s": clock.start - start}


def fastai(config: list[Path], seed: int, precision: str | None, data: tuple[Path, str], smoke: bool) -> dict[str, Any]:
    """fastai's own recipe for ``config`` (a row, then any overlays; ``benchmarks.recipe.fastai_side``) at full
    scale, at ``precision`` (None: the one the composed configs set, as the CLI parses them)."""
    row, overlays = config[0], [str(c) for c in config[1:]]
    from benchmarks.recipe.fastai_side import fastai_side
    from benchmarks.recipe.scale import scaled
    from imagenette_sota.data import ImagenetteDataModule

    with fresh_root() as root, tempfile.TemporaryDirectory() as tmp:
        dm = ImagenetteDataModule(root=root, url=str(data[0]), md5=data[1], cache=False)  # extract only
        start = time.perf_counter()
        dm.prepare_data()
        prepare_s = time.perf_counter() - start
        scale = SMOKE_SCALE if smoke else 1.0
        _, parsed = scaled(row.stem, scale, overlays, Path(tmp))
        precision = precision or parsed["trainer"]["precision"]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        run = fastai_side(
            row.stem,
            parsed,
            dm.data_dir,
            SMOKE_EPOCHS if smoke else None,
            scale,
            seed,
            precision=precision,
            device=device,
            workers=None,  # fastai's default loader workers
            limit_batches=SMOKE_BATCHES if smoke else None,
        )
    epoch_s = run["epoch_s"]
    shown = " ".join(str(c.relative_to(REPO)) for c in config)
    return {
        "side": "fastai",
        "command": f"python -m benchmarks.leaderboard --config {shown} --fastai",
        "precision": precision,
        "epochs": len(run["acc"]),
        "batch_size": parsed["data"]["batch_size"],
        "epoch_acc": run["acc"],
        "epoch_s": epoch_s,
        "fit_s": epoch_s[-1],
        "prepare_s": prepare_s,
    }


def append(path: Path, line: dict[str, Any]) -> None:
    """Append one JSON line in one write (a run killed mid-write leaves no partial line behind a complete one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = [CONFIGS / "leaderboard_128_5.yaml"]
    p.add_argument("--config", type=Path, nargs="+", default=default, help="a leaderboard_128_* file, then overlays")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    choices = ["auto", "config", "32-true", "bf16-mixed", "16-mixed"]
    p.add_argument("--precision", choices=choices, default="auto", help="both sides' (see above)")
    p.add_argument("--fastai", action="store_true", help="also fastai's own recipe, first seed only")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--archive", type=Path, help="default: imagenette2-160 from ../shared/data (--smoke: the mini)")
    p.add_argument("--md5", help="of --archive")
    p.add_argument("--results", type=Path, help=f"the JSON lines file (default {RESULTS.relative_to(REPO)})")
    p.add_argument("--out", type=Path, help="a folder: the lines go to OUT/leaderboard.jsonl (gpu.sh passes $OUT)")
    p.add_argument("--budget", type=float, help="seconds in all: skip a run that would not end inside it")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 batches an epoch, the mini archive")
    return p


def data_archive(args: argparse.Namespace) -> tuple[Path, str]:
    """``--archive``, else imagenette2-160 from ../shared/data, else (a lent GPU) the carried 128 px WebP copy."""
    if args.archive:
        return args.archive, args.md5 or ""
    if args.smoke or FULL_ARCHIVE.exists():
        return archive(args.smoke)
    from benchmarks.gpu.run import WEBP_ARCHIVE, WEBP_MD5

    return WEBP_ARCHIVE, WEBP_MD5


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    args = parser().parse_args(argv)
    data = data_archive(args)
    smoke_results = Path(tempfile.gettempdir()) / "leaderboard-smoke.jsonl"
    results = args.results or (args.out / "leaderboard.jsonl" if args.out else smoke_results if args.smoke else RESULTS)
    config = [c.resolve() for c in args.config]
    precision = precision_for(args.precision)
    common = {
        "config": " ".join(str(c.relative_to(REPO)) for c in config),
        "device": device_name(),
        "machine": machine(),
        "data": data[0].name,
        "smoke": args.smoke,
        "torch": torch.__version__,
    }
    lines, skipped = [], []
    runs = [] if args.skip_ours else [("ours", seed) for seed in args.seeds]
    runs += [("fastai", args.seeds[0])] if args.fastai else []
    for side, seed in runs:
        if args.budget is not None and lines:
            per_epoch = max((line["prepare_s"] + line["fit_s"]) / line["epochs"] for line in lines)
            if time.perf_counter() - start + per_epoch * lines[-1]["epochs"] > args.budget:
                skipped.append(f"{side} seed {seed}")
                continue
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if side == "ours":
            line = ours(config, seed, precision, data, args.smoke)
        else:
            line = fastai(config, seed, precision, data, args.smoke)
        line = rounded(common | line | {"seed": seed, "date": date})
        append(results, line)
        print(f"{side} seed {seed}: {line['epoch_acc']} in {line['fit_s']:.0f} s -> {results}", flush=True)
        lines.append(line)
    report({"results": str(results), "lines": lines, "skipped": skipped})


if __name__ == "__main__":
    main()
