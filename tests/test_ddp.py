"""Two processes on the CPU (ddp_spawn, gloo) on 99 validation images, which 2 ranks cannot split evenly.

A fit's and a validation's accuracy equal a one-process recomputation, every image is counted once, rank 0 alone
writes the checkpoints, TTA predicts every image exactly once, and a rank that fails ends the whole run.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from imagenette_sota import quiet
from imagenette_sota.callbacks import ProgressiveResize, Stage, TrainScalars, ValidationPredictions, tta
from imagenette_sota.checkpoint_io import AtomicCheckpointIO
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle
from imagenette_sota.tta import TTASettings

REPO = Path(__file__).resolve().parents[1]
DDP = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
TIMEOUT = 240  # s per DDP run: many times what one takes on 2 cores, so only a hang reaches it
tiny_xresnet = partial(XResNet, layers=(1, 1, 1, 1), widen=0.5)


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail, instead of hanging, when the block takes over `seconds`; stop the processes the block started."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"a DDP run took over {seconds} s: a rank is probably waiting for the other")

    before = set(multiprocessing.active_children())
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for child in set(multiprocessing.active_children()) - before:
            child.terminate()
            child.join()


@pytest.fixture(scope="module")
def odd_dir(mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini dataset without its first validation image: 200 train and 99 val images."""
    root = tmp_path_factory.mktemp("odd") / "imagenette2-160-mini"
    shutil.copytree(mini_dir, root)
    min(p for p in (root / "val").rglob("*.JPEG")).unlink()
    return root


def imagenette(root: Path) -> ImagenetteDataModule:
    return ImagenetteDataModule(root=root, presize=64, train_size=32, batch_size=16, num_workers=0)


def test_validation_sampler_splits_without_repeats(odd_dir: Path) -> None:
    dm = imagenette(odd_dir)
    dm.setup("validate")
    shares = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shares.append(list(dm.val_dataloader().sampler))
    assert sorted(shares[0] + shares[1]) == list(range(99)) and [len(s) for s in shares] == [50, 49]


class FinalLR(Callback):
    """Logs the lr after the last optimizer step (callback metrics come back from spawned processes)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("final_lr", trainer.optimizers[0].param_groups[0]["lr"], sync_dist=True)


class Count(Callback):
    """Logs the number of training and validation images seen, summed over the ranks."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, i: int
    ) -> None:
        self._log(pl_module, "seen/train", batch)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, i: int, dataloader_idx: int = 0
    ) -> None:
        self._log(pl_module, "seen/val", batch)

    @staticmethod
    def _log(pl_module: L.LightningModule, name: str, batch: Any) -> None:
        n = float(len(batch[1]))
        pl_module.log(name, n, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=1)


class Centre(Callback):
    """Listed after a ValidationPredictions: logs the rows it gathered, their accuracy and an order-sensitive sum."""

    def __init__(self, recorder: ValidationPredictions) -> None:
        self.recorder = recorder

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        plain, targets = self.recorder.result["plain"], self.recorder.result["targets"]
        for name, value in centre_figures(plain, targets).items():
            pl_module.log(f"centre/{name}", value)


def centre_figures(plain: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Rows, accuracy, and the probabilities weighted by their row number (a row out of place changes it)."""
    weights = torch.arange(1, len(plain) + 1, dtype=torch.float64)[:, None]
    accuracy = (plain.argmax(1) == targets).double().mean().item()
    return {"rows": float(len(plain)), "acc": accuracy, "sum": (plain.double() * weights).sum().item()}


class ListedIO(AtomicCheckpointIO):
    """AtomicCheckpointIO that also appends "<pid> <path>" to ``listing`` for every save."""

    def __init__(self, listing: Path) -> None:
        super().__init__()
        self.listing = listing

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        with open(self.listing, "a") as f:
            f.write(f"{os.getpid()} {path}\n")


def test_ddp_fit_validation_accuracy_is_exact(odd_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ImagenetteClassifier(backbone=tiny_xresnet, num_classes=10, cycle=Cycle(1e-2))
    dm = imagenette(odd_dir)
    checkpoints, listing = tmp_path / "ckpt", tmp_path / "saves.txt"
    recorder = ValidationPredictions()
    trainer = quiet.trainer(
        max_epochs=1,
        enable_checkpointing=True,  # the checkpoint writes are under test
        callbacks=[
            ProgressiveResize({0: Stage(32, 16)}),
            TrainScalars(),
            FinalLR(),
            Count(),
            ModelCheckpoint(checkpoints, filename="{epoch}", save_last=True),
            recorder,
            Centre(recorder),
        ],
        plugins=[ListedIO(listing)],
        **DDP,
    )
    with deadline(TIMEOUT):
        trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    # 2 ranks x 6 batches of 16 of their 100 training images (the partial batch dropped); each val image once.
    assert metrics["seen/train"].item() == 192 and metrics["seen/val"].item() == 99
    # One process wrote each checkpoint once, atomically: exactly these files, nothing left beside them.
    # (ddp_spawn's rank 0 also saves the final weights to a temporary .temp.ckpt for the main process to load.)
    saves = [line.split(" ", 1) for line in listing.read_text().splitlines()]
    expected = ["epoch=0.ckpt", "last.ckpt"]
    assert len({pid for pid, _ in saves}) == 1
    assert sorted(Path(path).name for _, path in saves if Path(path).parent == checkpoints) == expected
    assert sorted(p.name for p in checkpoints.iterdir()) == expected
    # Each rank trains on its 100 of the 200 images: 6 steps of 16 (global batch 32), the whole cycle.
    assert metrics["final_lr"].item() == pytest.approx(model.cycle.lr_max / model.cycle.div_final)
    assert metrics["train/image_size"].item() == 32 and metrics["train/batch_size"].item() == 16
    ddp_acc = metrics["val/acc"].item()
    assert ddp_acc * 99 == pytest.approx(round(ddp_acc * 99), abs=1e-4)  # counted over 99 images, not 100
    one = quiet.trainer(accelerator="cpu", devices=1).validate(model, datamodule=dm, verbose=False)[0]
    assert one["val/acc"] == pytest.approx(ddp_acc, abs=1e-6)
    # Every rank gathered the validation's centre view of all 99 images in dataset order (for a final TTA).
    plain, targets = tta(quiet.trainer(accelerator="cpu", devices=1), model, dm, TTASettings(n=0))
    expected = centre_figures(plain, targets)
    assert metrics["centre/rows"].item() == 99 and metrics["centre/acc"].item() == pytest.approx(ddp_acc, abs=1e-6)
    assert metrics["centre/sum"].item() == pytest.approx(expected["sum"], rel=1e-5)
    # A 2-process validation (ddp_fork: no re-import per process) counts the same 99 images to the same metrics.
    with deadline(TIMEOUT):
        two_ranks = quiet.trainer(callbacks=[Count()], **{**DDP, "strategy": "ddp_fork"})
        two = two_ranks.validate(model, dm, verbose=False)[0]
    assert two["seen/val"] == 99
    assert two["val/acc"] == pytest.approx(one["val/acc"], abs=1e-6)
    assert two["val/loss"] == pytest.approx(one["val/loss"], rel=1e-5)


def test_tta_under_ddp_predicts_each_image_once(odd_dir: Path) -> None:
    torch.manual_seed(0)
    model = tiny_xresnet(10).eval()
    dm, one = imagenette(odd_dir), quiet.trainer(accelerator="cpu", devices=1)
    centre = tta(one, model, dm, TTASettings(n=0))[0]
    # The centre view has no randomness: equal row by row, i.e. the same images in the same order. (ddp_fork is
    # ddp_spawn without re-importing Lightning in each process, much faster.)
    with deadline(TIMEOUT):
        ddp_centre, targets = tta(quiet.trainer(**{**DDP, "strategy": "ddp_fork"}), model, dm, TTASettings(n=0))
    assert ddp_centre.shape == (99, 10) and torch.equal(targets, torch.tensor(dm.val_set.targets))
    torch.testing.assert_close(ddp_centre, centre)
    with deadline(TIMEOUT):
        augmented = tta(quiet.trainer(**DDP), model, dm, TTASettings(n=8))[0]
    seed0, seed1 = (tta(one, model, dm, TTASettings(n=8, seed=s))[0] for s in (0, 1))
    # Other ranks draw other augmentations: DDP differs from one process about as much as another seed does,
    # and moves each prediction away from the centre view the same way (cosine about 0.8, like two seeds).
    assert (augmented - seed0).abs().mean() < 2 * (seed0 - seed1).abs().mean()
    moved = F.cosine_similarity((augmented - centre).flatten(), (seed0 - centre).flatten(), dim=0)
    assert moved > 0.5


class FailAt(Callback):
    """Raises on rank ``rank`` when training step ``step`` starts; the other rank goes on into the next collective."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"rank {self.rank} fails on purpose at step {self.step}")


def test_a_failing_rank_ends_the_whole_run(odd_dir: Path, tmp_path: Path) -> None:
    trainer = {
        **quiet.SETTINGS,
        **DDP,
        "strategy": "ddp",  # the CLI starts itself again for rank 1, as on a real machine
        "max_epochs": 1,
        "default_root_dir": str(tmp_path),  # where the CLI saves config.yaml without a logger
        "callbacks": [{"class_path": "tests.test_ddp.FailAt", "init_args": {"rank": 1, "step": 1}}],
    }
    config = {
        "trainer": trainer,
        "model": {"backbone": {"class_path": "imagenette_sota.models.XResNet", "init_args": {"layers": [1] * 4}}},
        "data": {"root": str(odd_dir), "presize": 48, "train_size": 32, "batch_size": 16, "num_workers": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "imagenette_sota", "fit", "--config", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    run = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, **pipes)
    try:
        out, _ = run.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # the launcher and the rank it started
        pytest.fail(f"the run hung after rank 1 failed:\n{run.communicate()[0]}")
    assert run.returncode != 0
    assert "RuntimeError: rank 1 fails on purpose at step 1" in out


def test_a_process_group_is_destroyed_at_exit_whatever_its_backend(tmp_path: Path) -> None:
    # Lightning leaves a gloo group to interpreter finalization, where its threads can abort the process (SIGABRT).
    # A handler registered before ours runs after it (atexit is last in, first out) and sees the group gone.
    script = f"""
import atexit
import torch.distributed as dist
from imagenette_sota.distributed import destroy_process_group_at_exit
dist.init_process_group("gloo", init_method="file://{tmp_path / "store"}", rank=0, world_size=1)
atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
destroy_process_group_at_exit()
destroy_process_group_at_exit()  # a second call: its handler finds the group gone and does nothing
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.strip() == "initialized at exit: False"
