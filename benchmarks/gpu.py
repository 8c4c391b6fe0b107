"""One prepared run for a lent GPU: throughput and memory, time to 90 %, fastai side by side, fast paths.

    make gpu-data                          # here, once: the WebP archive, 300 JPEGs and wheels into .gpu-data/
    bash benchmarks/gpu.sh                 # on the device machine (carry .gpu-data): installs, runs this, < 8 min
    python -m benchmarks.gpu --smoke       # on a CPU in seconds: every section end to end on tiny settings
    python -m benchmarks.gpu --sections env throughput --budget 300 --out /tmp/gpu

Data: imagenette2-128-webp (every Imagenette image at a short side of 128 px, WebP), extracted by the suite's
own ``prepare_data`` into ``--scratch`` and cached presized (``cache=True``): figures are "Imagenette at 128 px
source resolution". Sections, in this order (each in its own try/except: a failure is recorded under
``errors`` and the run goes on; a section that no longer fits the ``--budget`` is listed under ``skipped``):

- ``env``: GPU name, driver, torch / CUDA / cuDNN / torchvision / lightning versions, Pillow's WebP support, and
  whether the training transform queues without a host sync (``torch.cuda.set_sync_debug_mode("error")``).
- ``throughput``: ``--arch`` (xresnet50) training images/s at each of ``--sizes`` (128, 224), batch ``--bs``,
  bf16 autocast + channels_last, eager: ``model_only`` (random tensors on the device: forward, label-smoothed
  cross entropy, backward, fused AdamW), ``e2e_workers`` (ImagenetteDataModule with cache=True, DataLoader
  workers, the on-device Augment, ImagenetteClassifier, a Lightning Trainer with precision="bf16-mixed") and
  ``e2e_device`` (the same with both cached splits held whole on the GPU: no workers, no copies); ratios
  end-to-end / model-only; peak ``torch.cuda.max_memory_allocated`` (GiB) of each.
- ``time_to_90``: from scratch until validation accuracy on the whole val split reaches ``--t90-target``
  (default recipe below), wall seconds of training + validation up to that epoch (Trainer start-up
  included, the one-time cache build not); the best accuracy and per-epoch history otherwise.
- ``fastai``: fastai's Learner (same architecture, DataBlock with ``Resize(128)`` + ``aug_transforms``, bf16,
  channels_last) images/s at each size, if fastai imports; ``ours_vs_fastai`` against ``e2e_workers``.
- ``compiled``: the throughput section's model-only and best end-to-end settings with ``torch.compile``
  (compile seconds apart).
- ``fast_paths``: ``benchmarks.fast_paths`` on the device (fp32 / channels_last / bf16, AdamW kernels) and
  PIL vs nvJPEG decoding of the 300 real JPEGs of imagenette2-160-mini.

Time-to-90 recipe: xresnet50, presize 128, 96 px for the first 8 epochs then 128 px, validation at 128 px,
batch 256, fastai Adam + one-cycle at 8e-3 over 20 epochs, label smoothing 0.1, Augment(min_scale=0.35),
stop at the first epoch with val accuracy >= 0.90. Every figure is printed (flushed) as it is measured,
``OUT/gpu.json`` is rewritten after each section (so a timeout still leaves figures), and the last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from benchmarks import fast_paths
from benchmarks.common import MINI_MD5, REPO, report

if TYPE_CHECKING:
    import lightning as L

    from imagenette_sota.data import ImagenetteDataModule

GPU_DATA = REPO / ".gpu-data"
WEBP_ARCHIVE, WEBP_MD5 = GPU_DATA / "imagenette2-128-webp.tgz", "8cf62a33641bdb39c0dae5e503c111f7"
JPEG_ARCHIVE, JPEG_MD5 = GPU_DATA / "imagenette2-160-mini.tgz", MINI_MD5
SECTIONS = ("env", "throughput", "time_to_90", "fastai", "compiled", "fast_paths")
# Seconds a section needs at least to be started (full settings; --smoke needs far less).
NEEDS = {"env": 0, "throughput": 40, "time_to_90": 60, "fastai": 40, "compiled": 90, "fast_paths": 30}


# --- bookkeeping ---------------------------------------------------------------------------------------------
class Run:
    """The figures so far, the deadline, and the file they are written to after every section."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.start = out, time.perf_counter()
        self.deadline = self.start + budget_s
        self.figures: dict[str, Any] = {"errors": {}, "skipped": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        """Seconds left in the budget."""
        return self.deadline - time.perf_counter()

    def section(self, name: str, need: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` as section ``name`` if ``need`` seconds are left; record its figures or its error."""
        if self.left() < need:
            self.figures["skipped"][name] = f"{self.left():.0f} s left, needs about {need:.0f}"
            print(f"== {name}: skipped ({self.figures['skipped'][name]})", flush=True)
            return
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        start = time.perf_counter()
        try:
            self.figures[name] = fn()
        except Exception as e:  # a section's failure must not cost the others their figures
            traceback.print_exc()
            self.figures["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        self.figures.setdefault("section_s", {})[name] = round(time.perf_counter() - start, 1)
        self.save()

    def save(self) -> None:
        """Rewrite OUT/gpu.json with the figures so far."""
        self.figures["wall_s"] = round(time.perf_counter() - self.start, 1)
        tmp = self.out / "gpu.json.part"
        tmp.write_text(json.dumps(rounded(self.figures), indent=1))
        tmp.replace(self.out / "gpu.json")  # whole or not at all, even if the run is killed meanwhile


def rounded(value: Any) -> Any:
    """Floats rounded to 4 significant-ish places, recursively (for a readable JSON line)."""
    if isinstance(value, float):
        return round(value, 4) if abs(value) < 100 else round(value, 1)
    if isinstance(value, dict):
        return {str(k): rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def free(device: torch.device) -> None:
    """Collect garbage and start a new peak-memory window."""
    gc.collect()
    fast_paths.reset_peak(device)


# --- data ----------------------------------------------------------------------------------------------------
def extract(archive: Path, md5: str, scratch: Path, workers: int) -> tuple[Path, dict[str, float]]:
    """Extract ``archive`` with the suite's own prepare_data into ``scratch``; return the folder and seconds."""
    from imagenette_sota.data import ImagenetteDataModule

    dm = ImagenetteDataModule(root=scratch, url=str(archive), md5=md5, num_workers=workers)
    start = time.perf_counter()
    dm.prepare_data()
    return dm.data_dir, {"extract_s": time.perf_counter() - start}


def build_cache(data_dir: Path, presize: int, workers: int) -> float:
    """Fill the presized cache of both splits once (``cache=True``); return the seconds it took."""
    from imagenette_sota.data import ImagenetteDataModule

    start = time.perf_counter()
    dm = ImagenetteDataModule(root=data_dir, presize=presize, train_size=presize, num_workers=workers, cache=True)
    dm.prepare_data()
    return time.perf_counter() - start


class DeviceBatches:
    """Batches cut from a cached split held whole on the device: as ``CachedImages`` crops, without workers.

    Train: a new random order each pass and a random crop position along each image's long side; otherwise the
    dataset order and the centred crop. Has ``dataset`` (the split it serves), ``batch_size`` and ``drop_last`` like
    a DataLoader, for code that counts steps (``callbacks.progressive.epoch_steps``).
    """

    def __init__(
        self, dataset: Dataset, pixels: Tensor, labels: Tensor, slack: Tensor, transposed: Tensor, batch_size: int
    ) -> None:
        self.pixels, self.labels, self.slack, self.transposed = pixels, labels, slack, transposed
        self.dataset, self.batch_size = dataset, batch_size
        self.train = self.drop_last = dataset.train

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, p, device = len(self.labels), self.pixels.shape[-2], self.pixels.device
        order = torch.randperm(n, device=device) if self.train else torch.arange(n, device=device)
        cols = torch.arange(p, device=device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            slack = self.slack[idx]
            offset = (torch.rand(len(idx), device=device) * (slack + 1)).long() if self.train else slack // 2
            index = (offset[:, None] + cols).view(-1, 1, 1, p).expand(-1, 3, p, p)  # (B, 3, P, P) column indices
            crop = self.pixels[idx].gather(3, index)  # (B, 3, P, W) -> (B, 3, P, P)
            crop = torch.where(self.transposed[idx].view(-1, 1, 1, 1), crop.transpose(2, 3), crop)
            yield crop, self.labels[idx]


def device_data_module(device: torch.device, **kwargs: Any) -> ImagenetteDataModule:
    """An ImagenetteDataModule (cache=True) whose loaders serve ``DeviceBatches`` from the device."""
    from imagenette_sota.data import ImagenetteDataModule

    class DeviceResident(ImagenetteDataModule):
        """Both cached splits copied whole to the device once; augmentation as usual in on_after_batch_transfer."""

        def __init__(self) -> None:
            super().__init__(cache=True, **kwargs)
            self._on_device: dict[str, tuple[Tensor, ...]] = {}

        def _split(self, name: str) -> tuple[Tensor, ...]:
            if name not in self._on_device:
                ds = self.train_set if name == "train" else self.val_set
                if ds is None:
                    raise RuntimeError("call setup() before asking for a dataloader")
                rows = np.asarray(ds.rows)
                pixels = torch.from_numpy(np.load(ds.pixels_path, mmap_mode="r")[rows]).to(device)
                extent = torch.as_tensor(np.asarray(ds.extent)[rows], device=device)
                transposed = torch.as_tensor(np.asarray(ds.transposed)[rows], device=device)
                labels = torch.as_tensor(ds.labels, device=device)
                self._on_device[name] = (pixels, labels, extent - ds.presize, transposed)
            return self._on_device[name]

        def train_dataloader(self) -> DeviceBatches:  # type: ignore[override]
            return DeviceBatches(self.train_set, *self._split("train"), self.batch_size)

        def val_dataloader(self) -> DeviceBatches:  # type: ignore[override]
            return DeviceBatches(self.val_set, *self._split("val"), self.eval_batch_size)

    return DeviceResident()


# --- sections ------------------------------------------------------------------------------------------------
def env(device: torch.device) -> dict[str, Any]:
    """What ran: GPU, driver, library versions."""
    import PIL
    import torchvision
    from PIL import features

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "pillow_webp": features.check("webp"),
        "device": str(device),
    }
    try:
        import lightning

        out["lightning"] = lightning.__version__
    except ImportError as e:
        out["lightning"] = f"missing: {e}"
    if device.type == "cuda":
        out |= {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30,
        }
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            out["nvidia_smi"] = f"failed: {e}"
        out["train_transform_host_syncs"] = transform_syncs(device)
    print(json.dumps(out), flush=True)
    return out


def transform_syncs(device: torch.device) -> str:
    """ "none" when the data module's training transform of a uint8 batch queues without a host sync, else why."""
    from imagenette_sota import seeds
    from imagenette_sota.data import ImagenetteDataModule

    dm = ImagenetteDataModule(presize=128, train_size=112)
    x = torch.randint(0, 256, (64, 3, 128, 128), dtype=torch.uint8, device=device)
    dm.train_transform(x, seeds.generator(0))  # first call: copies the normalization statistics once
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        dm.train_transform(x, seeds.generator(1))
        return "none"
    except RuntimeError as e:
        return f"synced: {e}".splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def model_only(args: argparse.Namespace, size: int, device: torch.device, compile: bool) -> dict[str, Any]:
    """Training images/s on random tensors: the model's arithmetic alone (bf16 + channels_last unless --fp32)."""
    free(device)
    model = fast_paths.build(args.arch, device, channels_last=not args.fp32, compile=compile)
    opt = fast_paths.optimizer(model)
    x, y = fast_paths.batch(args.bs, size, device, channels_last=not args.fp32)
    out = fast_paths.time_steps(model, opt, x, y, not args.fp32, args.batches, args.warmup, label_smoothing=0.1)
    out["peak_gib"] = fast_paths.peak_gib(device)
    if compile:
        out["compile_s"] = out["first_step_s"]
    del model, opt, x, y
    return out


def quiet_trainer(device: torch.device, args: argparse.Namespace, **kwargs: Any) -> L.Trainer:
    """A one-device Trainer in bf16 (``--fp32``: fp32) without logger, checkpoints, bars or sanity checks."""
    import lightning as L  # installed by gpu.sh only if missing: imported late

    return L.Trainer(
        accelerator=device.type if device.type != "cuda" else "gpu",
        devices=1,
        precision="32-true" if args.fp32 else "bf16-mixed",
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        benchmark=device.type == "cuda",
        **kwargs,
    )


def end_to_end(
    args: argparse.Namespace, data_dir: Path, size: int, device: torch.device, loader: str, compile: bool
) -> dict[str, Any]:
    """Training images/s of a Lightning fit: data module + on-device Augment + ImagenetteClassifier, bf16."""
    import lightning as L

    from imagenette_sota import models
    from imagenette_sota.data import ImagenetteDataModule
    from imagenette_sota.module import ImagenetteClassifier

    class Clock(L.Callback):
        """Images/s from the end of the warm-up batches to the end of the last batch (device synchronized)."""

        def __init__(self) -> None:
            self.start, self.images, self.first_s, self.fit_start, self.seconds = 0.0, 0, 0.0, 0.0, 0.0

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.fit_start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
            if batch_idx == 0:
                fast_paths.sync(device)
                self.first_s = time.perf_counter() - self.fit_start
            if batch_idx == args.warmup - 1:
                fast_paths.sync(device)
                self.start = time.perf_counter()
            elif batch_idx >= args.warmup:
                self.images += len(batch[1])
                if batch_idx == args.warmup + args.batches - 1:
                    fast_paths.sync(device)
                    self.seconds = time.perf_counter() - self.start

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not self.seconds and self.images:  # the epoch had fewer batches than asked for
                fast_paths.sync(device)
                self.seconds = time.perf_counter() - self.start

    free(device)
    common = {
        "root": data_dir,
        "presize": args.presize,
        "train_size": size,
        "batch_size": args.bs,
        "num_workers": args.workers,
    }
    dm = device_data_module(device, **common) if loader == "device" else ImagenetteDataModule(cache=True, **common)
    model = ImagenetteClassifier(
        backbone=getattr(models, args.arch), num_classes=10, label_smoothing=0.1, channels_last=not args.fp32
    )
    if compile:
        model.model.compile()  # as ImagenetteClassifier(compile=True), after channels_last
    clock = Clock()
    trainer = quiet_trainer(
        device,
        args,
        max_epochs=1,
        limit_train_batches=args.warmup + args.batches,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(model, dm)
    out = {
        "ips": clock.images / clock.seconds,
        "first_batch_s": clock.first_s,
        "peak_gib": fast_paths.peak_gib(device),
    }
    if compile:
        out["compile_s"] = clock.first_s
    del trainer, model, dm
    return out


def throughput(
    args: argparse.Namespace, run: Run, data_dir: Path, device: torch.device, compile: bool
) -> dict[str, Any]:
    """Model-only and end-to-end images/s and peak memory at each size (eager, or compiled)."""
    name = "compiled" if compile else "throughput"
    out: dict[str, Any] = {}
    run.figures[name] = out  # visible to save() as it fills
    for size in args.sizes:
        if out and run.left() < NEEDS[name] / (1 if compile else 2):
            out[str(size)] = f"skipped: {run.left():.0f} s left"
            continue
        figures: dict[str, Any] = out.setdefault(str(size), {})
        try:
            figures["model_only"] = model_only(args, size, device, compile)
        except Exception as e:
            traceback.print_exc()
            figures["model_only"] = f"{type(e).__name__}: {e}"[:500]
        print(f"{name} {size} px model-only: {figures['model_only']}", flush=True)
        run.save()
        if compile:  # the faster loader of the eager run, or the workers if there was none
            eager = run.figures.get("throughput", {}).get(str(size))
            loaders = [eager.get("best_loader", "workers") if isinstance(eager, dict) else "workers"]
        else:
            loaders = ["workers", "device"]
        for loader in loaders:
            try:
                figures[f"e2e_{loader}"] = end_to_end(args, data_dir, size, device, loader, compile)
                if isinstance(figures["model_only"], dict):
                    figures[f"ratio_{loader}"] = figures[f"e2e_{loader}"]["ips"] / figures["model_only"]["ips"]
            except Exception as e:
                traceback.print_exc()
                figures[f"e2e_{loader}"] = f"{type(e).__name__}: {e}"[:500]
            print(f"{name} {size} px e2e ({loader} loader): {figures[f'e2e_{loader}']}", flush=True)
            run.save()
        measured = {k: figures[f"e2e_{k}"]["ips"] for k in loaders if isinstance(figures.get(f"e2e_{k}"), dict)}
        if measured:
            figures["best_loader"] = max(measured, key=measured.__getitem__)
    return out


def time_to_target(
    args: argparse.Namespace, run: Run, data_dir: Path, device: torch.device, deadline: float
) -> dict[str, Any]:
    """Wall seconds of a from-scratch fit until val accuracy >= target (or the best accuracy by the deadline)."""
    import lightning as L

    from imagenette_sota import models
    from imagenette_sota.callbacks import ProgressiveResize, Stage
    from imagenette_sota.data import ImagenetteDataModule
    from imagenette_sota.data.augment import Augment
    from imagenette_sota.module import ImagenetteClassifier
    from imagenette_sota.schedule import Cycle

    out: dict[str, Any] = {
        "recipe": {
            "arch": args.t90_arch,
            "epochs": args.t90_epochs,
            "sizes": f"{args.t90_small} px until epoch {args.t90_switch}, then {args.t90_size} px",
            "val_size": args.t90_size,
            "presize": args.presize,
            "bs": args.t90_bs,
            "lr": args.t90_lr,
            "label_smoothing": 0.1,
            "min_scale": args.t90_min_scale,
            "loader": args.t90_loader,
            "precision": "32-true" if args.fp32 else "bf16-mixed",
            "channels_last": not args.fp32,
        },
        "target": args.t90_target,
        "deadline_s": deadline - time.perf_counter(),
        "history": [],
    }
    run.figures["time_to_90"] = out  # saved after every epoch: a timeout still leaves the history

    class StopAtTarget(L.Callback):
        """After each validation: record the accuracy; stop at the target or when the deadline has passed."""

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
                return
            acc, elapsed = float(trainer.callback_metrics["val/acc"]), time.perf_counter() - start
            size = trainer.datamodule.train_size
            out["history"].append({"epoch": trainer.current_epoch, "size": size, "acc": acc, "s": elapsed})
            print(f"time_to_90 epoch {trainer.current_epoch} ({size} px): val acc {acc:.4f} at {elapsed:.1f} s")
            if acc > out.get("best_acc", -1.0):
                out["best_acc"], out["best_epoch"] = acc, trainer.current_epoch
            if acc >= args.t90_target and "seconds" not in out:
                out["seconds"], out["epochs_run"] = elapsed, trainer.current_epoch + 1
                trainer.should_stop = True
            elif time.perf_counter() > deadline:
                out["stopped_by_budget"] = True
                trainer.should_stop = True
            run.save()

    free(device)
    L.seed_everything(0, verbose=False)
    common = {
        "root": data_dir,
        "presize": args.presize,
        "train_size": args.t90_small,
        "val_size": args.t90_size,
        "batch_size": args.t90_bs,
        "val_batch_size": 2 * args.t90_bs,
        "num_workers": args.workers,
        "augment": Augment(min_scale=args.t90_min_scale),
    }
    if args.t90_loader == "device":
        dm = device_data_module(device, **common)
    else:
        dm = ImagenetteDataModule(cache=True, **common)
    model = ImagenetteClassifier(
        backbone=getattr(models, args.t90_arch),
        num_classes=10,
        cycle=Cycle(args.t90_lr),
        label_smoothing=0.1,
        channels_last=not args.fp32,
    )
    stages = {0: Stage(args.t90_small), args.t90_switch: Stage(args.t90_size)}
    trainer = quiet_trainer(
        device,
        args,
        max_epochs=args.t90_epochs,
        callbacks=[ProgressiveResize(stages), StopAtTarget()],
        **({"limit_train_batches": args.limit_batches, "limit_val_batches": args.limit_batches} if args.smoke else {}),
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    out["fit_s"] = time.perf_counter() - start
    out["reached"] = "seconds" in out
    out["peak_gib"] = fast_paths.peak_gib(device)
    del trainer, model, dm
    return out


def fastai_throughput(args: argparse.Namespace, run: Run, data_dir: Path, device: torch.device) -> dict[str, Any]:
    """fastai Learner images/s at each size (bf16 and channels_last on CUDA), and ours / fastai."""
    import mimetypes

    mimetypes.add_type("image/webp", ".webp")  # before fastai's import: its image_extensions come from mimetypes
    try:
        from fastai.callback.core import Callback, CancelFitException
        from fastai.vision.all import CrossEntropyLossFlat, Learner
        from fastai.vision.models import xresnet as fa_models
    except ImportError as e:
        return {"skipped": f"fastai does not import: {e}"}
    import fastai

    from benchmarks.common import fastai_dataloaders

    class Clock(Callback):
        order = 99

        def before_fit(self) -> None:
            self.seen, self.start, self.images, self.seconds = 0, 0.0, 0, 0.0

        def after_batch(self) -> None:
            if not self.training:
                return
            self.seen += 1
            if self.seen == args.warmup:
                fast_paths.sync(device)
                self.start = time.perf_counter()
            elif self.seen > args.warmup:
                self.images += len(self.yb[0])
                if self.seen == args.warmup + args.batches:
                    fast_paths.sync(device)
                    self.seconds = time.perf_counter() - self.start
                    raise CancelFitException

    out: dict[str, Any] = {"fastai": fastai.__version__}
    for size in args.sizes:
        if len(out) > 1 and run.left() < NEEDS["fastai"] / 2:
            out[str(size)] = f"skipped: {run.left():.0f} s left"
            continue
        free(device)
        dls = fastai_dataloaders(data_dir, args.presize, size, args.bs, args.workers, device=str(device))
        clock = Clock()
        learn = Learner(dls, getattr(fa_models, args.arch)(n_out=10), loss_func=CrossEntropyLossFlat(), cbs=clock)
        if device.type == "cuda" and not args.fp32:
            learn = learn.to_bf16().to_channelslast()
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, 3e-3)
        figures: dict[str, Any] = {"ips": clock.images / clock.seconds, "peak_gib": fast_paths.peak_gib(device)}
        ours = run.figures.get("throughput", {}).get(str(size), {}).get("e2e_workers")
        if isinstance(ours, dict):
            figures["ours_vs_fastai"] = ours["ips"] / figures["ips"]
        out[str(size)] = figures
        print(f"fastai {size} px: {figures}", flush=True)
        del learn, dls
    return out


def device_fast_paths(args: argparse.Namespace, jpeg_dir: Path | None, device: torch.device) -> dict[str, Any]:
    """benchmarks.fast_paths on this device at the first size: layout/precision/optimizer variants, decoding."""
    size = args.sizes[0]
    out: dict[str, Any] = {"arch": args.arch, "size": size, "bs": args.bs}
    free(device)
    variants = ("baseline", "adamw_foreach") if args.fp32 else fast_paths.VARIANTS
    out["train"] = fast_paths.train_variants(args.arch, size, args.bs, args.batches, args.warmup, device, variants)
    if jpeg_dir is not None:
        files = fast_paths.jpeg_files(jpeg_dir, args.decode_images)
        out["decode"] = fast_paths.decode_compare(files, args.presize, device)
    return out


# --- main ----------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--smoke`` overrides the sizes for a CPU check in seconds)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks" / "out" / "gpu")))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/imagenette-gpu"), help="extraction folder")
    parser.add_argument("--archive", type=Path, default=None, help="default: the WebP copy (--smoke: --jpegs)")
    parser.add_argument("--md5", default=None, help="of --archive (default: the default archive's; 'none': no check)")
    parser.add_argument("--jpegs", type=Path, default=JPEG_ARCHIVE, help="JPEG archive for the decode comparison")
    parser.add_argument("--decode-images", type=int, default=300, help="JPEGs decoded by fast_paths")
    budget_help = "seconds in all (default 440, --smoke 1800); sections that no longer fit are skipped"
    parser.add_argument("--budget", type=float, default=None, help=budget_help)
    fp32_help = "fp32 NCHW, not bf16 autocast + channels_last (--smoke on a CPU sets it: bf16 convs crawl there)"
    parser.add_argument("--fp32", action="store_true", help=fp32_help)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="xresnet50")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--bs", type=int, default=256)
    parser.add_argument("--presize", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(max((os.cpu_count() or 1) - 2, 1), 16))
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches (cuDNN autotuning, compiling)")
    parser.add_argument("--batches", type=int, default=25, help="timed batches per setting")
    parser.add_argument("--t90-arch", default="xresnet50")
    parser.add_argument("--t90-epochs", type=int, default=20)
    parser.add_argument("--t90-small", type=int, default=96, help="train size (px) of the first epochs")
    parser.add_argument("--t90-switch", type=int, default=8, help="epoch from which --t90-size is used")
    parser.add_argument("--t90-size", type=int, default=128, help="later train size and the validation size (px)")
    parser.add_argument("--t90-bs", type=int, default=256)
    parser.add_argument("--t90-lr", type=float, default=8e-3)
    parser.add_argument("--t90-min-scale", type=float, default=0.35)
    parser.add_argument("--t90-loader", choices=("workers", "device"), default="workers")
    parser.add_argument("--t90-target", type=float, default=0.90)
    parser.add_argument("--t90-max-s", type=float, default=170.0, help="stop the fit after this many seconds")
    parser.add_argument("--limit-batches", type=int, default=2, help="--smoke: batches per epoch of time_to_90")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU settings on the 300-JPEG archive")
    args = parser.parse_args(argv)
    if args.archive is None:
        args.archive = args.jpegs if args.smoke else WEBP_ARCHIVE
        args.md5 = args.md5 or (JPEG_MD5 if args.smoke else WEBP_MD5)
    args.md5 = None if args.md5 == "none" else args.md5
    args.budget = args.budget or (1800.0 if args.smoke else 440.0)
    if args.smoke:
        args.fp32 = args.fp32 or args.device == "cpu"
        args.arch = args.t90_arch = "xresnet18"
        args.sizes, args.presize, args.bs, args.t90_bs = [32], 32, 8, 8
        args.t90_small, args.t90_size, args.t90_switch, args.t90_epochs = 24, 32, 1, 2
        args.warmup, args.batches, args.workers, args.decode_images = 1, 2, min(args.workers, 2), 40
        args.scratch = args.scratch.with_name(args.scratch.name + "-smoke")
        if args.out == REPO / "benchmarks" / "out" / "gpu":
            args.out = args.out.with_name("gpu-smoke")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    needs = {k: (1 if args.smoke else v) for k, v in NEEDS.items()}
    run = Run(args.out, args.budget)
    run.figures["settings"] = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not k.startswith("t90")
    }
    print(f"gpu benchmark: sections {args.sections}, budget {args.budget:.0f} s, out {args.out}", flush=True)
    if "env" in args.sections:
        run.section("env", 0, lambda: env(device))

    data: dict[str, Any] = {}

    def prepare() -> dict[str, Any]:
        data["dir"], figures = extract(args.archive, args.md5, args.scratch, args.workers)
        figures["cache_build_s"] = build_cache(data["dir"], args.presize, args.workers)
        figures["folder"] = str(data["dir"])
        print(f"data: {figures}", flush=True)
        return figures

    run.section("data", 0, prepare)
    jpeg_dir: Path | None = None
    if "fast_paths" in args.sections:
        try:
            jpeg_dir = extract(args.jpegs, JPEG_MD5, args.scratch, args.workers)[0]
        except Exception as e:
            run.figures["errors"]["jpegs"] = f"{type(e).__name__}: {e}"
    if "dir" not in data:
        print("no data: only env and fast_paths can run", flush=True)
    with_data = {"throughput", "time_to_90", "fastai", "compiled"}
    for name in args.sections:
        if name == "env" or (name in with_data and "dir" not in data):
            continue
        if name == "throughput":
            run.section(name, needs[name], lambda: throughput(args, run, data["dir"], device, compile=False))
        elif name == "compiled":
            run.section(name, needs[name], lambda: throughput(args, run, data["dir"], device, compile=True))
        elif name == "time_to_90":
            later = sum(needs[s] for s in args.sections[args.sections.index(name) + 1 :]) / 2
            limit = min(args.t90_max_s, run.left() - later)
            run.section(
                name,
                needs[name],
                lambda limit=limit: time_to_target(args, run, data["dir"], device, time.perf_counter() + limit),
            )
        elif name == "fastai":
            run.section(name, needs[name], lambda: fastai_throughput(args, run, data["dir"], device))
        elif name == "fast_paths":
            run.section(name, needs[name], lambda: device_fast_paths(args, jpeg_dir, device))
    run.save()
    report(rounded(run.figures))


if __name__ == "__main__":
    main()
