"""Images/s classifying the val folder from files: our Predictor vs fastai's ``get_preds`` on the same weights.

    python -m benchmarks.predict_throughput                       # xresnet18 at 64 px (presize 128) and 128 px (160)
    python -m benchmarks.predict_throughput --mini --limit 100    # a quick check on the mini archive

For each ``--settings size:presize`` a checkpoint of a few xresnet18 steps at those sizes is written; ours is
``Predictor.from_checkpoint(ckpt).classify_files(files)`` (decode + presize in DataLoader workers, the validation
transform, the network in channels_last, softmax, top-5), fastai's is ``learn.get_preds(dl=learn.dls.test_dl(files))``
with the chapter's DataBlock (``Resize(presize)``, ``aug_transforms(size)``, ``Normalize``) and fastai's xresnet18
holding the same weights. Both read the same files with the same batch size and worker count, one after the other in
this process, after a warm-up batch each. The last line is one JSON object with ``ratio_vs_fastai`` (the smallest
of the per-setting ratios) and the per-setting figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import fastai_dataloaders, imagenette160, report, tiny_checkpoint
from imagenette_sota.predict import Predictor
from imagenette_sota.trained import load


def ours(ckpt: Path, files: list[Path], bs: int, workers: int) -> tuple[float, torch.Tensor]:
    """Images/s of the Predictor over ``files`` and its probabilities."""
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    list(predictor.classify_files(files[:bs], batch_size=bs, num_workers=0))  # warm-up
    start = time.perf_counter()
    results = list(predictor.classify_files(files, batch_size=bs, num_workers=workers))
    seconds = time.perf_counter() - start
    return len(files) / seconds, torch.stack([r.probs for _, r in results])


def fastai(ckpt: Path, data_dir: Path, files: list[Path], size: int, presize: int, bs: int, workers: int):
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=["64:128", "128:160"], help="validation size:presize, px")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mini", action="store_true", help="the 300-image archive instead of imagenette2-160")
    p.add_argument("--limit", type=int, help="classify only the first N val files")
    p.add_argument("--skip-fastai", action="store_true")
    args = p.parse_args()
    data_dir = imagenette160(mini=args.mini)
    files = sorted((data_dir / "val").glob("*/*"))[: args.limit]
    figures: dict = {"images": len(files), "bs": args.bs, "workers": args.workers, "threads": torch.get_num_threads()}
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            size, presize = map(int, setting.split(":"))
            ckpt = tiny_checkpoint(imagenette160(mini=True), Path(tmp) / f"{setting}.ckpt", presize, size, steps=2)
            ours_ips, ours_probs = ours(ckpt, files, args.bs, args.workers)
            row = {"ours_images_per_s": ours_ips}
            if not args.skip_fastai:
                fastai_ips, fastai_probs = fastai(ckpt, data_dir, files, size, presize, args.bs, args.workers)
                row |= {
                    "fastai_images_per_s": fastai_ips,
                    "ratio_vs_fastai": ours_ips / fastai_ips,
                    # Same weights, each library's own preprocessing (resampling differs slightly): top-1 agreement.
                    "top1_agreement": (ours_probs.argmax(1) == fastai_probs.argmax(1)).float().mean().item(),
                }
                ratios.append(row["ratio_vs_fastai"])
            print(f"{size} px (presize {presize}): " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            figures[f"{size}px"] = {k: round(v, 3) for k, v in row.items()}
    if ratios:
        figures["ratio_vs_fastai"] = round(min(ratios), 3)
    report(figures)


if __name__ == "__main__":
    main()
