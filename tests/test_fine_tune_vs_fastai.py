"""The book's recipe in miniature as one Lightning fit, against fastai's Learner making the same calls.

fastai: ``fit_one_cycle(1, 3e-3)`` then ``fine_tune(2, 1e-3)`` (whose freeze() and unfreeze() call
``opt.clear_state()``). Ours: ``ImagenetteClassifier(cycle=Cycle(3e-3))`` with ``OneCycles(fine_tune=FineTune(1, 2,
1e-3))`` over four epochs. At every batch: the lr, beta1 and Adam's step count of the first parameter (the step count
restarts where the optimizer state was cleared).
"""

from __future__ import annotations

import lightning as L
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import fine_tune, fit_one_cycle  # noqa: F401 (patches Learner)
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from imagenette_sota import quiet
from imagenette_sota.callbacks import OneCycles
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle, FineTune

BATCHES, BS = 7, 4  # batches per epoch, batch size


def images() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    n = BATCHES * BS
    return TensorDataset(torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def head(n_out: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, n_out))


class FastaiRecord(Callback):
    """(lr, beta1, Adam step count of the first parameter) as each training batch steps."""

    order = 60

    def __init__(self) -> None:
        self.seen: list[tuple[float, float, int]] = []

    def after_batch(self) -> None:
        if self.training:
            _, _, state, hypers = self.opt.all_params()[0]
            self.seen.append((float(hypers["lr"]), float(hypers["mom"]), int(state["step"])))


class Record(L.Callback):
    """The same, from the torch optimizer a Lightning fit steps."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float, int]] = []
        self.hypers: tuple[float, float] = (0.0, 0.0)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Tensor, i: int) -> None:
        group = trainer.optimizers[0].param_groups[0]
        self.hypers = (group["lr"], group["betas"][0])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, out, batch, i: int) -> None:
        optimizer = trainer.optimizers[0]
        first = next(p for group in optimizer.param_groups for p in group["params"])
        self.seen.append((*self.hypers, int(optimizer.state[first]["step"])))


def test_fit_one_cycle_then_fine_tune_equals_fastai() -> None:
    dl = DataLoader(images(), batch_size=BS)
    record = FastaiRecord()
    learn = Learner(DataLoaders(dl, dl), head(3), loss_func=CrossEntropyLossFlat(), cbs=record)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 3e-3)
        learn.fine_tune(2, 1e-3)
    theirs = record.seen

    torch.manual_seed(0)
    model = ImagenetteClassifier(backbone=head, num_classes=3, cycle=Cycle(3e-3), channels_last=False)
    ours = Record()
    trainer = quiet.trainer(
        accelerator="cpu",
        max_epochs=4,
        callbacks=[OneCycles(fine_tune=FineTune(start_epoch=1, epochs=2, base_lr=1e-3)), ours],
        limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=DataLoader(images(), batch_size=BS, shuffle=True))
    assert [s for *_, s in theirs] == [*range(1, 8), *range(1, 8), *range(1, 15)]  # fastai cleared twice
    assert [s for *_, s in ours.seen] == [s for *_, s in theirs]
    torch.testing.assert_close(
        torch.tensor([h[:2] for h in ours.seen], dtype=torch.float64),
        torch.tensor([h[:2] for h in theirs], dtype=torch.float64),
    )
