"""ProgressiveResize and OneCycles: their schedules, what a real fit sees epoch by epoch, and resuming mid-schedule."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from imagenette_sota import quiet
from imagenette_sota.callbacks import OneCycles, ProgressiveResize, Ramp, Stage, TrainScalars
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle, FineTune, adam, one_cycle

SEED = 3
# 200 training images: batch 50 -> 4 steps, batch 100 -> 2, batch 40 -> 5 (the last partial batch is dropped).
SCHEDULE = {0: Stage(32, 50), 1: Stage(48, 100), 2: Stage(batch_size=40)}
# Epochs 0-1 are one cycle of 4 + 2 = 6 steps, the module's (lr 1e-2); epoch 2 starts a new cycle of 5 steps.
CYCLES = {2: Cycle(5e-3, pct_start=0.5, div=5.0)}
tiny_xresnet = partial(XResNet, layers=(1, 1, 1, 1), widen=0.5)


pytestmark = pytest.mark.usefixtures("one_thread")


def fastai_lr(cycle: Cycle, i: int, n: int) -> float:
    """fastai's fit_one_cycle lr at batch i of n (cosine warm-up to lr_max over pct_start, cosine down)."""

    def cos(start: float, end: float, pos: float) -> float:
        return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2

    pos, c = i / n, cycle
    if pos < c.pct_start:
        return cos(c.lr_max / c.div, c.lr_max, pos / c.pct_start)
    return cos(c.lr_max, c.lr_max / c.div_final, (pos - c.pct_start) / (1 - c.pct_start))


class Probe(Callback):
    """Records what each batch really gets: (epoch, shape) of train and val inputs, and the lr of each step."""

    def __init__(self) -> None:
        self.train: list[tuple[int, tuple[int, ...]]] = []
        self.val: list[tuple[int, tuple[int, ...]]] = []
        self.lrs: list[tuple[int, float]] = []
        self.logged: dict[int, tuple[float, float]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        epoch = trainer.current_epoch
        self.train.append((epoch, tuple(batch[0].shape)))
        self.lrs.append((epoch, trainer.optimizers[0].param_groups[0]["lr"]))

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int, dataloader_idx: int = 0
    ) -> None:
        self.val.append((trainer.current_epoch, tuple(batch[0].shape)))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = trainer.callback_metrics
        self.logged[trainer.current_epoch] = (m["train/image_size"].item(), m["train/batch_size"].item())


def imagenette(mini_dir: Path) -> ImagenetteDataModule:
    """The mini archive at 64 px presize; the sizes and batch sizes come from the schedule."""
    return ImagenetteDataModule(root=mini_dir, presize=64, train_size=64, batch_size=8, num_workers=0)


def classifier() -> ImagenetteClassifier:
    torch.manual_seed(SEED)
    return ImagenetteClassifier(backbone=tiny_xresnet, num_classes=10, cycle=Cycle(1e-2))


def fit(mini_dir: Path, ckpt_dir: Path, first_epoch: int = 0) -> tuple[Probe, ImagenetteClassifier, L.Trainer]:
    """Three epochs of SCHEDULE, checkpointing every epoch; resumed from epoch `first_epoch`'s start if > 0.

    Nothing is reseeded on resume: crops, augmentation and shuffle are functions of the run seed and the position.
    """
    L.seed_everything(SEED, verbose=False)
    model, probe = classifier(), Probe()
    callbacks = [ProgressiveResize(SCHEDULE), OneCycles(CYCLES), TrainScalars(), probe]
    if first_epoch == 0:
        callbacks.append(ModelCheckpoint(ckpt_dir, filename="{epoch}", save_top_k=-1))
    trainer = quiet.trainer(accelerator="cpu", max_epochs=3, enable_checkpointing=first_epoch == 0, callbacks=callbacks)
    ckpt = ckpt_dir / f"epoch={first_epoch - 1}.ckpt" if first_epoch else None
    trainer.fit(model, datamodule=imagenette(mini_dir), ckpt_path=ckpt)
    return probe, model, trainer


@pytest.fixture(scope="module")
def uninterrupted(mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Probe, nn.Module, Path]:
    """The 3-epoch fit without interruption, and the folder of its per-epoch checkpoints."""
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    probe, model, trainer = fit(mini_dir, ckpt_dir)
    assert trainer.reload_dataloaders_every_n_epochs == 1  # batch sizes change: the callback asked for it
    return probe, model, ckpt_dir


def test_stage_at_and_cycles_resolve_the_books_recipe() -> None:
    resize = ProgressiveResize({0: Stage(128, 128), 4: Stage(224, 64)})
    tune = FineTune(start_epoch=4, epochs=5, base_lr=1e-3)
    cycles = OneCycles(fine_tune=tune)
    stages = [resize.stage_at(e) for e in range(tune.end_epoch)]
    assert [(s.size, s.batch_size) for s in stages] == [(128, 128)] * 4 + [(224, 64)] * 6 and tune.end_epoch == 10
    assert cycles.schedule == {4: Cycle(1e-3, pct_start=0.99), 5: Cycle(5e-4, pct_start=0.3, div=5.0)}
    assert cycles.clears == {4, 5}  # fastai's freeze() and unfreeze() clear the optimizer state
    assert resize.stage_at(1000) == Stage(224, 64)  # the last stage holds to the end
    assert ProgressiveResize({0: Stage(96), 3: Stage(batch_size=32)}).stage_at(2) == Stage(96, None)
    assert OneCycles({0: Cycle(1e-2), 3: Cycle(1e-3)}, clear_state=True).clears == {3}


def test_schedule_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"epoch 0 with a size, got epochs \[1\]"):
        ProgressiveResize({1: Stage(128)})
    with pytest.raises(ValueError, match=r"epochs must be integers >= 0, got \[-1\]"):
        ProgressiveResize({0: Stage(128), -1: Stage(64)})
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        Stage(128, 0)
    with pytest.raises(ValueError, match="must set a size or a batch_size"):
        Stage()
    with pytest.raises(ValueError, match="a schedule or a ramp"):
        ProgressiveResize({0: Stage(128)}, ramp=Ramp(128, 224, 0, 4))
    with pytest.raises(ValueError, match=r"epochs must be integers >= 0, got \[-2\]"):
        OneCycles({-2: Cycle(1e-3)})
    with pytest.raises(ValueError, match=r"both start a cycle at epoch\(s\) \[4\]"):
        OneCycles({4: Cycle(1e-3)}, fine_tune=FineTune(4, 5))
    with pytest.raises(ValueError, match=r"pct_start=1.5 must be in \(0, 1\)"):
        Cycle(1e-3, pct_start=1.5)
    with pytest.raises(ValueError, match="start_epoch=5, end_epoch=5"):
        Ramp(128, 224, 5, 5)


def test_ramp_rounds_sizes_and_keeps_memory_constant() -> None:
    ffcv = ProgressiveResize(ramp=Ramp(160, 192, start_epoch=11, end_epoch=13, batch_size=256))
    assert [ffcv.stage_at(e).size for e in (0, 11, 12, 13, 99)] == [160, 160, 192, 192, 192]
    assert ffcv.stage_at(0).batch_size == 256 * 192**2 // 160**2 == 368 and ffcv.stage_at(13).batch_size == 256
    ramp = Ramp(128, 256, start_epoch=0, end_epoch=4)
    assert [ramp.size_at(e) for e in range(5)] == [128, 160, 192, 224, 256]
    assert all(s.batch_size is None for s in ramp.stages().values())
    assert Ramp(100, 200, 0, 10).size_at(1) == 100  # 110 rounds to 96, clamped to min_size


def test_sizes_batch_sizes_and_lrs_inside_a_fit(uninterrupted: tuple[Probe, nn.Module, Path]) -> None:
    probe, _, _ = uninterrupted
    assert probe.train == [(0, (50, 3, 32, 32))] * 4 + [(1, (100, 3, 48, 48))] * 2 + [(2, (40, 3, 48, 48))] * 5
    # Validation follows the train size; its batch is the data module's default, twice the train batch.
    assert probe.val == [(0, (100, 3, 32, 32)), (1, (100, 3, 48, 48)), (2, (80, 3, 48, 48)), (2, (20, 3, 48, 48))]
    assert probe.logged == {0: (32.0, 50.0), 1: (48.0, 100.0), 2: (48.0, 40.0)}
    lrs = [lr for _, lr in probe.lrs]
    first, second = classifier().cycle, CYCLES[2]
    # The module's whole-fit estimate (4 steps x 3 epochs) is replaced at epoch 0 by the stage's 6 steps.
    expected = [fastai_lr(first, i, 6) for i in range(6)] + [fastai_lr(second, i, 5) for i in range(5)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_resume_mid_schedule_equals_the_uninterrupted_run(
    uninterrupted: tuple[Probe, nn.Module, Path], mini_dir: Path
) -> None:
    probe, model, ckpt_dir = uninterrupted
    resumed_probe, resumed, _ = fit(mini_dir, ckpt_dir, first_epoch=1)
    assert resumed_probe.train == [t for t in probe.train if t[0] >= 1]
    assert resumed_probe.val == [v for v in probe.val if v[0] >= 1]
    assert resumed_probe.lrs == [lr for lr in probe.lrs if lr[0] >= 1]
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


class Shapes(L.LightningDataModule):
    """Not Imagenette: random images resized to the public ``train_size`` / ``val_size`` on the device."""

    def __init__(self) -> None:
        super().__init__()
        self.train_size, self.val_size, self.batch_size = 8, 12, 2
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.rand(32, 3, 24, 24, generator=g), torch.randint(0, 2, (32,), generator=g))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=16)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        x, y = batch
        size = self.train_size if self.trainer.training else self.val_size
        return F.interpolate(x, size=(size, size), mode="bilinear"), y


class Net(L.LightningModule):
    """Not ImagenetteClassifier: no ``cycle`` attribute; a one-cycle (ours or torch's, or another scheduler)."""

    def __init__(self, scheduler: str = "one_cycle") -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        self.scheduler = scheduler

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/loss", F.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> dict[str, Any]:
        opt = adam(self.net, 1.0)
        if self.scheduler == "one_cycle":
            sched = one_cycle(opt, Cycle(1.0), self.trainer.estimated_stepping_batches)
        elif self.scheduler == "torch_one_cycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1.0, total_steps=self.trainer.estimated_stepping_batches)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_reuse_with_another_module_and_data_module(tmp_path: Path) -> None:
    cycle = Cycle(0.1, pct_start=0.5)

    def run(ckpt: Path | None = None) -> Probe:
        probe = Probe()
        callbacks = [ProgressiveResize({0: Stage(8, 8), 1: Stage(16, 4)}), OneCycles({0: cycle}), TrainScalars(), probe]
        callbacks.append(ModelCheckpoint(tmp_path, filename="{epoch}", save_top_k=-1))
        trainer = quiet.trainer(accelerator="cpu", max_epochs=2, enable_checkpointing=True, callbacks=callbacks)
        trainer.fit(Net(), datamodule=Shapes(), ckpt_path=ckpt)
        return probe

    probe = run()
    assert probe.train == [(0, (8, 3, 8, 8))] * 4 + [(1, (4, 3, 16, 16))] * 8
    assert {shape[-1] for _, shape in probe.val} == {12}
    assert [lr for _, lr in probe.lrs] == pytest.approx([fastai_lr(cycle, i, 12) for i in range(12)], rel=1e-6)
    assert probe.logged == {0: (8.0, 8.0), 1: (16.0, 4.0)}
    # This data module keeps no state: the callback sizes the epoch a resumed fit starts with (on_train_start).
    resumed = run(tmp_path / "epoch=0.ckpt")
    assert resumed.train == probe.train[4:] and resumed.lrs == probe.lrs[4:]


def test_a_scheduler_that_cannot_be_resumed_is_refused() -> None:
    trainer = quiet.trainer(accelerator="cpu", max_epochs=1, callbacks=[OneCycles({0: Cycle(0.1)})])
    with pytest.raises(TypeError, match="replaces the module's LambdaLR with a OneCycleLR"):
        trainer.fit(Net(scheduler="constant"), datamodule=Shapes())


def test_a_one_cycle_sized_for_constant_batches_is_refused_before_it_runs() -> None:
    """torch's OneCycleLR over ``estimated_stepping_batches`` (1 step x 2 epochs) cannot take the fit's 1 + 4 steps."""
    resize = ProgressiveResize({0: Stage(32, 32), 1: Stage(48, 8)})
    probe = Probe()
    trainer = quiet.trainer(accelerator="cpu", max_epochs=2, callbacks=[resize, TrainScalars(), probe])
    message = r"this fit takes 5 optimizer steps with the stages' batch sizes, but the OneCycleLR has 2 of its 2 left"
    with pytest.raises(RuntimeError, match=message + r".*OneCycles.*total_steps"):
        trainer.fit(Net(scheduler="torch_one_cycle"), datamodule=Shapes())
    assert probe.train == []  # refused when training starts, before its first step
    assert resize.total_steps(trainer) == 1 + 4


def test_the_module_scheduler_running_until_the_first_cycle_is_checked_before_it_runs() -> None:
    """Net's OneCycleLR (3 epochs x 1 step) runs until OneCycles' cycle at epoch 2: epochs 0-1 take 1 + 4 steps."""
    resize = ProgressiveResize({0: Stage(32, 32), 1: Stage(48, 8)})
    probe = Probe()
    callbacks = [resize, OneCycles({2: Cycle(0.1)}), TrainScalars(), probe]
    trainer = quiet.trainer(accelerator="cpu", max_epochs=3, enable_checkpointing=False, callbacks=callbacks)
    message = r"epochs 0 to 1 \(until a new cycle\) takes 5 optimizer steps .* the OneCycleLR has 3 of its 3 left"
    with pytest.raises(RuntimeError, match=message):
        trainer.fit(Net(scheduler="torch_one_cycle"), datamodule=Shapes())
    assert probe.train == []


def test_fine_tune_clears_the_optimizer_state_and_resumes_exactly(tmp_path: Path) -> None:
    """fastai's fine_tune: Adam's step counts (and moments) restart at each of its two cycles; resume replays that."""

    class Steps(Callback):
        def __init__(self) -> None:
            self.steps: list[tuple[int, int]] = []  # (epoch, Adam's step count of the first weight before the step)

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
            state = trainer.optimizers[0].state.get(next(pl_module.parameters()), {})
            self.steps.append((trainer.current_epoch, int(state.get("step", 0))))

    class InOrder(Shapes):  # no shuffle: a resumed run must see the same batches without a seeded sampler
        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.data, batch_size=self.batch_size, drop_last=True)

    def run(ckpt: Path | None = None) -> tuple[Steps, Probe, Net]:
        torch.manual_seed(0)
        steps, probe, net = Steps(), Probe(), Net()
        cycles = OneCycles({0: Cycle(0.1)}, fine_tune=FineTune(start_epoch=1, epochs=1, base_lr=0.1))
        checkpoints = ModelCheckpoint(tmp_path, filename="{epoch}", save_top_k=-1)
        callbacks = [cycles, TrainScalars(), steps, probe, checkpoints]
        trainer = quiet.trainer(accelerator="cpu", max_epochs=3, enable_checkpointing=True, callbacks=callbacks)
        trainer.fit(net, datamodule=InOrder(), ckpt_path=ckpt)
        return steps, probe, net

    steps, probe, net = run()
    assert steps.steps == [(e, i) for e in range(3) for i in range(16)]  # 32 images, batch 2: 16 steps an epoch
    tuned = FineTune(1, 1, 0.1).cycles()
    expected = [fastai_lr(Cycle(0.1), i, 16) for i in range(16)]
    expected += [fastai_lr(tuned[1], i, 16) for i in range(16)] + [fastai_lr(tuned[2], i, 16) for i in range(16)]
    assert [lr for _, lr in probe.lrs] == pytest.approx(expected, rel=1e-6)
    resumed_steps, resumed_probe, resumed = run(tmp_path / "epoch=1.ckpt")
    assert resumed_steps.steps == steps.steps[32:] and resumed_probe.lrs == probe.lrs[32:]
    for (name, a), b in zip(net.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_a_fit_that_would_stretch_fine_tune_is_refused() -> None:
    cycles = OneCycles(fine_tune=FineTune(start_epoch=1, epochs=1))  # epochs 1 and 2: the fit must end at 3
    trainer = quiet.trainer(accelerator="cpu", max_epochs=4, callbacks=[cycles])
    with pytest.raises(ValueError, match="max_epochs=4: fine_tune from epoch 1 ends at epoch 3.*max_epochs to 3"):
        trainer.fit(Net(), datamodule=Shapes())
