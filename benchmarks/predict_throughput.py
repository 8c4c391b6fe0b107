"""Images/s classifying the val folder from files: our Predictor vs fastai's ``get_preds`` on the same weights.

    python -m benchmarks.predict_throughput                       # xresnet18 at 64 px (presize 128) and 128 px (160)
    python -m benchmarks.predict_throughput --precision 32        # both sides in fp32
    python -m benchmarks.predict_throughput --mini --limit 100    # a quick check on the mini archive

For each ``--settings size:presize`` a checkpoint of a few xresnet18 steps at those sizes is written; ours is
``Predictor.from_checkpoint(ckpt, precision=...).classify_files(files)`` (decode + presize, the validation transform,
the network with BatchNorm folded in channels_last, softmax, top-5), fastai's is
``learn.get_preds(dl=learn.dls.test_dl(files))`` with the chapter's DataBlock (``Resize(presize)``,
``aug_transforms(size)``, ``Normalize``) and fastai's xresnet18 holding the same weights, given our layout and
precision (channels_last; bf16 autocast through ``benchmarks.fastai_cpu.CPUAutocast``). The same files and batch
size, one after the other in this process, after a warm-up batch each; every run once per round over ``--rounds``
interleaved rounds, each run's best round counting (the machine's speed drifts within minutes). Every run at
``--precision`` (default: bf16 where the CPU has bf16 units, else 32: each side's best). Three time ratios, ours /
fastai for the same files (below 1: ours is faster), each the worst over the settings at the top level:

- ``time_ratio_library``: each library on its default data path (ours: no decoding workers on the CPU,
  ``predict_workers``; fastai: ``defaults.cpus`` workers);
- ``time_ratio_best_of_each``: ours against the faster of fastai with its default workers and with none;
- ``time_ratio_same_work``: ours with fastai's default worker count against fastai with it.

In bf16 ours also runs in fp32 (``ours_fp32``), for ``bf16_top1_agreement_with_fp32``. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import (
    add_precision_argument,
    fastai_dataloaders,
    imagenette160,
    report,
    tiny_checkpoint,
)
from imagenette_sota.hardware import cpu_bf16
from imagenette_sota.predict import Precision, Predictor
from imagenette_sota.trained import load


def ours(ckpt: Path, files: list[Path], bs: int, workers: int | None, precision: Precision) -> tuple[float, Tensor]:
    """Images/s of the Predictor over ``files`` (``workers`` None: its default) and its probabilities."""
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", precision=precision)
    list(predictor.classify_files(files[:bs], batch_size=bs, num_workers=0))  # warm-up
    start = time.perf_counter()
    results = list(predictor.classify_files(files, batch_size=bs, num_workers=workers))
    seconds = time.perf_counter() - start
    return len(files) / seconds, torch.stack([r.probs for _, r in results])


def fastai(
    ckpt: Path,
    data_dir: Path,
    files: list[Path],
    setting: tuple[int, int],
    bs: int,
    workers: int | None,
    precision: Precision,
) -> tuple[float, Tensor]:
    """Images/s of fastai's ``get_preds`` on a test_dl of ``files`` with the checkpoint's weights, and its probs."""
    from fastai.vision.all import CrossEntropyLossFlat, Learner
    from fastai.vision.models import xresnet as fa_models

    from benchmarks.fastai_cpu import like_ours

    size, presize = setting
    dls = fastai_dataloaders(data_dir, presize, size, bs, workers, device="cpu")
    learn = Learner(dls, fa_models.xresnet18(n_out=dls.c), loss_func=CrossEntropyLossFlat())
    learn.model.load_state_dict(load(ckpt).weights)  # the same state-dict layout as ours
    like_ours(learn, precision)
    with learn.no_bar():
        learn.get_preds(dl=learn.dls.test_dl(files[:bs]))  # warm-up
        start = time.perf_counter()
        probs, _ = learn.get_preds(dl=learn.dls.test_dl(files))
        seconds = time.perf_counter() - start
    return len(files) / seconds, probs


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows whose most probable class is the same in ``a`` and ``b``."""
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def runs(
    ckpt: Path, data_dir: Path, files: list[Path], setting: tuple[int, int], args: argparse.Namespace
) -> dict[str, Callable[[], tuple[float, Tensor]]]:
    """The runs of one setting by name, every one at ``--precision`` but ``ours_fp32`` (in bf16: the reference)."""
    from fastai.data.load import defaults  # fastai's default loader workers: every core up to 16

    out = {"ours": partial(ours, ckpt, files, args.bs, None, args.precision)}
    if args.precision == "bf16":
        out["ours_fp32"] = partial(ours, ckpt, files, args.bs, None, "32")
    if not args.skip_fastai:
        fastai_run = partial(fastai, ckpt, data_dir, files, setting, args.bs, precision=args.precision)
        out["fastai_default"] = partial(fastai_run, workers=None)
        out["fastai_0_workers"] = partial(fastai_run, workers=0)
        out["ours_fastai_workers"] = partial(ours, ckpt, files, args.bs, defaults.cpus, args.precision)
    return out


def ratios(ips: dict[str, float]) -> dict[str, float]:
    """The time ratios, ours / fastai, from the runs' images/s (a time ratio is fastai's images/s over ours)."""
    return {
        "time_ratio_library": ips["fastai_default"] / ips["ours"],
        "time_ratio_best_of_each": max(ips["fastai_default"], ips["fastai_0_workers"]) / ips["ours"],
        "time_ratio_same_work": ips["fastai_default"] / ips["ours_fastai_workers"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=["64:128", "128:160"], help="validation size:presize, px")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--mini", action="store_true", help="the 300-image archive instead of imagenette2-160")
    p.add_argument("--limit", type=int, help="classify only the first N val files")
    p.add_argument("--rounds", type=int, default=2, help="every run once per round; each run's best round counts")
    p.add_argument("--skip-fastai", action="store_true")
    add_precision_argument(p)
    args = p.parse_args()
    from fastai.data.load import defaults

    data_dir = imagenette160(mini=args.mini)
    files = sorted((data_dir / "val").glob("*/*"))[: args.limit]
    figures: dict = {"images": len(files), "bs": args.bs, "fastai_workers": defaults.cpus}
    figures |= {"threads": torch.get_num_threads(), "bf16_units": cpu_bf16()}
    figures |= {"precision": args.precision, "fastai_precision": args.precision}
    worst: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            size, presize = map(int, setting.split(":"))
            ckpt = tiny_checkpoint(imagenette160(mini=True), Path(tmp) / f"{setting}.ckpt", presize, size, steps=2)
            # Every run once per round, rounds interleaved: the machine's speed drifts within minutes, and the
            # best of each run's rounds compares the two libraries at the same moments.
            setting_runs = runs(ckpt, data_dir, files, (size, presize), args)
            ips: dict[str, float] = {}
            probs: dict[str, Tensor] = {}
            for _ in range(args.rounds):
                for label, run in setting_runs.items():
                    images_per_s, probs[label] = run()
                    ips[label] = max(ips.get(label, 0.0), images_per_s)
            row = {f"{label}_images_per_s": value for label, value in ips.items()}
            if "ours_fp32" in probs:
                row["bf16_top1_agreement_with_fp32"] = top1_agreement(probs["ours"], probs["ours_fp32"])
            if not args.skip_fastai:
                for key, value in ratios(ips).items():
                    row[key] = value
                    worst.setdefault(key, []).append(value)
                # Same weights, each library's own preprocessing (resampling differs slightly): top-1 agreement.
                row["top1_agreement"] = top1_agreement(probs["ours"], probs["fastai_default"])
            print(f"{size} px (presize {presize}): " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            figures[f"{size}px"] = {k: round(v, 3) for k, v in row.items()}
    figures |= {key: round(max(values), 3) for key, values in worst.items()}
    report(figures)


if __name__ == "__main__":
    main()
