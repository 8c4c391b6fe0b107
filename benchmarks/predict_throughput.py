"""Images/s classifying the val folder from files: our Predictor vs fastai's ``get_preds`` on the same weights.

    python -m benchmarks.predict_throughput                       # xresnet18 at 64 px (presize 128) and 128 px (160)
    python -m benchmarks.predict_throughput --mini --limit 100    # a quick check on the mini archive

For each ``--settings size:presize`` a checkpoint of a few xresnet18 steps at those sizes is written; ours is
``Predictor.from_checkpoint(ckpt).classify_files(files)`` (decode + presize, the validation transform, the network
with BatchNorm folded in channels_last, softmax, top-5), fastai's is ``learn.get_preds(dl=learn.dls.test_dl(files))``
with the chapter's DataBlock (``Resize(presize)``, ``aug_transforms(size)``, ``Normalize``) and fastai's xresnet18
holding the same weights. The same files and batch size, one after the other in this process, after a warm-up batch
each; every run once per round over ``--rounds`` interleaved rounds, each run's best round counting (the machine's
speed drifts within minutes). Two comparisons:

- best of each: ours with its default decoding (none in worker processes on the CPU: ``predict_workers``) against
  the faster of fastai with its default workers (``defaults.cpus``) and with none: ``ratio_vs_fastai``;
- same work: ours with fastai's default worker count against fastai with it: ``same_work_ratio``.

On a CPU with bf16 units ours also runs with ``precision="bf16"`` (opt-in: bf16 autocast), against the same best
fastai figure (fp32): ``bf16_ratio_vs_fastai``, with its top-1 agreement with our fp32 answers.

The last line is one JSON object with ``ratio_vs_fastai`` and ``same_work_ratio`` (the smallest over the settings)
and the per-setting figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import fastai_dataloaders, imagenette160, report, tiny_checkpoint
from imagenette_sota.hardware import cpu_bf16
from imagenette_sota.predict import Precision, Predictor
from imagenette_sota.trained import load


def ours(
    ckpt: Path, files: list[Path], bs: int, workers: int | None, precision: Precision = "32"
) -> tuple[float, torch.Tensor]:
    """Images/s of the Predictor over ``files`` (``workers`` None: its default) and its probabilities."""
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", precision=precision)
    list(predictor.classify_files(files[:bs], batch_size=bs, num_workers=0))  # warm-up
    start = time.perf_counter()
    results = list(predictor.classify_files(files, batch_size=bs, num_workers=workers))
    seconds = time.perf_counter() - start
    return len(files) / seconds, torch.stack([r.probs for _, r in results])


def fastai(ckpt: Path, data_dir: Path, files: list[Path], size: int, presize: int, bs: int, workers: int | None):
    """Images/s of fastai's ``get_preds`` on a test_dl of ``files`` with the checkpoint's weights, and its probs."""
    from fastai.vision.all import CrossEntropyLossFlat, Learner
    from fastai.vision.models import xresnet as fa_models

    dls = fastai_dataloaders(data_dir, presize, size, bs, workers, device="cpu")
    learn = Learner(dls, fa_models.xresnet18(n_out=dls.c), loss_func=CrossEntropyLossFlat())
    learn.model.load_state_dict(load(ckpt).weights)  # the same state-dict layout as ours
    with learn.no_bar():
        learn.get_preds(dl=learn.dls.test_dl(files[:bs]))  # warm-up
        start = time.perf_counter()
        probs, _ = learn.get_preds(dl=learn.dls.test_dl(files))
        seconds = time.perf_counter() - start
    return len(files) / seconds, probs


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows whose most probable class is the same in ``a`` and ``b``."""
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=["64:128", "128:160"], help="validation size:presize, px")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--mini", action="store_true", help="the 300-image archive instead of imagenette2-160")
    p.add_argument("--limit", type=int, help="classify only the first N val files")
    p.add_argument("--rounds", type=int, default=2, help="every run once per round; each run's best round counts")
    p.add_argument("--skip-fastai", action="store_true")
    args = p.parse_args()
    from fastai.data.load import defaults  # fastai's default loader workers: every core up to 16

    data_dir = imagenette160(mini=args.mini)
    files = sorted((data_dir / "val").glob("*/*"))[: args.limit]
    figures: dict = {"images": len(files), "bs": args.bs, "fastai_workers": defaults.cpus}
    figures["threads"] = torch.get_num_threads()
    ratios: dict[str, list[float]] = {"ratio_vs_fastai": [], "same_work_ratio": []}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            size, presize = map(int, setting.split(":"))
            ckpt = tiny_checkpoint(imagenette160(mini=True), Path(tmp) / f"{setting}.ckpt", presize, size, steps=2)
            # Every run once per round, rounds interleaved: the machine's speed drifts within minutes, and the
            # best of each run's rounds compares the two libraries at the same moments.
            runs: dict[str, Callable[[], tuple[float, torch.Tensor]]] = {
                "ours": partial(ours, ckpt, files, args.bs, None)
            }
            if cpu_bf16():
                runs["ours_bf16"] = partial(ours, ckpt, files, args.bs, None, "bf16")
            if not args.skip_fastai:
                runs["ours_fastai_workers"] = partial(ours, ckpt, files, args.bs, defaults.cpus)
                for label, workers in (("fastai_default", None), ("fastai_0_workers", 0)):
                    runs[label] = partial(fastai, ckpt, data_dir, files, size, presize, args.bs, workers)
            best: dict[str, float] = {}
            probs: dict[str, torch.Tensor] = {}
            for _ in range(args.rounds):
                for label, run in runs.items():
                    ips, probs[label] = run()
                    best[label] = max(best.get(label, 0.0), ips)
            row = {f"{label}_images_per_s": ips for label, ips in best.items()}
            if "ours_bf16" in best:
                row["bf16_top1_agreement_with_fp32"] = top1_agreement(probs["ours_bf16"], probs["ours"])
            if not args.skip_fastai:
                fastai_best = max(best["fastai_default"], best["fastai_0_workers"])
                if "ours_bf16" in best:
                    row["bf16_ratio_vs_fastai"] = best["ours_bf16"] / fastai_best
                row |= {
                    "ratio_vs_fastai": best["ours"] / fastai_best,
                    "same_work_ratio": best["ours_fastai_workers"] / best["fastai_default"],
                    # Same weights, each library's own preprocessing (resampling differs slightly): top-1 agreement.
                    "top1_agreement": top1_agreement(probs["ours"], probs["fastai_default"]),
                }
                for key, values in ratios.items():
                    values.append(row[key])
            print(f"{size} px (presize {presize}): " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            figures[f"{size}px"] = {k: round(v, 3) for k, v in row.items()}
    figures |= {key: round(min(values), 3) for key, values in ratios.items() if values}
    report(figures)


if __name__ == "__main__":
    main()
