"""The lr and beta1 of every batch against what fastai's own Learner sets, on a tiny real Learner.

fastai runs ``fit_one_cycle`` / ``fine_tune`` over synthetic batches; a callback records the optimizer's lr and
momentum (Adam's beta1) as each batch steps. Ours: ``adam`` + ``one_cycle`` per cycle of ``fine_tune``'s plan,
read from the torch optimizer before each step.
"""

from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import fine_tune, fit_one_cycle  # noqa: F401 (patches Learner)
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from imagenette_sota import schedule
from imagenette_sota.schedule import Cycle, adam, one_cycle

BATCHES = 7  # per epoch


class Hypers(Callback):
    """Records (lr, beta1) of the last parameter group as each training batch steps."""

    order = 60

    def before_fit(self) -> None:
        self.seen = getattr(self, "seen", [])

    def after_batch(self) -> None:
        if self.training:
            hypers = self.opt.hypers[-1]
            self.seen.append((hypers["lr"], hypers["mom"]))


def learner() -> tuple[Learner, Hypers]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(BATCHES * 4, 6, generator=g), torch.randint(0, 3, (BATCHES * 4,), generator=g))
    dl = DataLoader(data, batch_size=4)
    hypers = Hypers()
    return Learner(DataLoaders(dl, dl), nn.Linear(6, 3), loss_func=CrossEntropyLossFlat(), cbs=hypers), hypers


def ours(plan: tuple[tuple[int, Cycle], ...]) -> list[tuple[float, float]]:
    """(lr, beta1) at every batch of the plan's cycles, each cycle a new one-cycle over its batches."""
    model = nn.Linear(6, 3)
    optimizer, seen = adam(model, plan[0][1].lr_max), []
    for epochs, cycle in plan:
        scheduler = one_cycle(optimizer, cycle, epochs * BATCHES)
        for _ in range(epochs * BATCHES):
            seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"][0]))
            optimizer.step()
            scheduler.step()
    return seen


def assert_same(ours: list[tuple[float, float]], theirs: list[tuple[float, float]]) -> None:
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(theirs, dtype=torch.float64))


@pytest.mark.parametrize("epochs", [1, 3])
def test_one_cycle_equals_fit_one_cycle(epochs: int) -> None:
    learn, hypers = learner()
    learn.fit_one_cycle(epochs, 3e-3)
    assert len(hypers.seen) == epochs * BATCHES
    assert_same(ours(((epochs, Cycle(3e-3)),)), hypers.seen)


def test_fine_tune_equals_fastai_fine_tune() -> None:
    learn, hypers = learner()
    learn.fine_tune(2, 1e-3)  # one frozen epoch at pct_start 0.99, then 2 epochs at base_lr / 2, div 5
    assert len(hypers.seen) == 3 * BATCHES
    assert_same(ours(schedule.fine_tune(2, 1e-3)), hypers.seen)
