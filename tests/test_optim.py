"""Ranger (torch's RAdam + our LookAhead) against fastai's ``ranger``, and LookAhead's exact resume."""

from __future__ import annotations

import io
import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from fastai.optimizer import ranger as fastai_ranger
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from imagenette_sota import quiet
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.optim import LookAhead, Ranger
from imagenette_sota.schedule import flat_cos, one_cycle, param_groups

STEPS = 40  # RAdam's unrectified steps (1-5), rectified ones, and six LookAhead syncs (every 6th step)


def toy(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 two-layer regression and its data: gradients of order 1, different at every step."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return (
        model,
        torch.randn(32, 8, generator=g, dtype=torch.float64),
        torch.randn(32, 1, generator=g, dtype=torch.float64),
    )


def trajectory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt, steps: int = STEPS) -> list[torch.Tensor]:
    """The flattened parameters after each of ``steps`` full-batch MSE steps."""
    out = []
    for _ in range(steps):
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    return out


def fastai_and_ours(eps: float) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Trajectories of our Ranger and fastai's ranger with the leaderboard's settings, and the start."""
    # lr 8e-3, mom 0.95, sqr_mom 0.99, wd 1e-2, k 6, alpha 0.5 (fastai's ranger defaults for k and alpha).
    hyper = {"mom": 0.95, "sqr_mom": 0.99, "eps": eps}
    ours_model, x, y = toy()
    theirs_model, _, _ = toy()
    ours = trajectory(ours_model, x, y, Ranger(ours_model.parameters(), lr=8e-3, weight_decay=1e-2, **hyper))
    theirs = trajectory(theirs_model, x, y, fastai_ranger(list(theirs_model.parameters()), lr=8e-3, wd=1e-2, **hyper))
    return ours, theirs, torch.cat([p.detach().flatten() for p in toy()[0].parameters()])


def test_ranger_is_fastai_ranger_without_eps() -> None:
    # With eps = 0 the two are the same arithmetic, step for step, syncs included.
    ours, theirs, start = fastai_and_ours(0.0)
    assert (theirs[-1] - start).abs().max() > 0.05  # it moved
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0, msg=f"step {step + 1}")


def test_ranger_with_the_recipes_eps_stays_within_a_thousandth_of_fastai() -> None:
    # eps = 1e-6: torch adds it before RAdam's bias correction, fastai after (optim.py's module doc), so the paths
    # drift apart slowly, far less than the distance the weights travel.
    ours, theirs, start = fastai_and_ours(1e-6)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert (a - b).abs().max() <= 1e-3 * (b - start).abs().max(), f"step {step + 1}"
    assert not torch.equal(ours[-1], theirs[-1])  # the difference is real: this test bounds it


def test_clear_state_restarts_like_fastai_ranger() -> None:
    # fastai's Lookahead.clear_state resets the step count and the slow weights too (fine_tune calls it twice).
    hyper = {"mom": 0.95, "sqr_mom": 0.99, "eps": 0.0}
    ours_model, x, y = toy()
    theirs_model, _, _ = toy()
    ours = Ranger(ours_model.parameters(), lr=8e-3, weight_decay=1e-2, **hyper)
    theirs = fastai_ranger(list(theirs_model.parameters()), lr=8e-3, wd=1e-2, **hyper)
    trajectory(ours_model, x, y, ours, steps=4)
    trajectory(theirs_model, x, y, theirs, steps=4)
    ours.clear_state()
    theirs.clear_state()
    assert ours.count == 0 and ours.slow is None and not ours.state
    after_ours, after_theirs = trajectory(ours_model, x, y, ours, 9), trajectory(theirs_model, x, y, theirs, 9)
    for a, b in zip(after_ours, after_theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_lookahead_syncs_every_k_steps_from_the_starting_weights() -> None:
    # k=2, alpha=0.5 around SGD (lr 1, gradient 1), slow weights 0: fast -1, -2 -> sync: slow = 0 + 0.5 * (-2 - 0)
    # = -1 and fast restarts there; fast -2, -3 -> sync: slow = -1 + 0.5 * (-3 - (-1)) = -2.
    p = nn.Parameter(torch.zeros(1))
    opt = LookAhead(torch.optim.SGD([p], lr=1.0), k=2, alpha=0.5)
    values = []
    for _ in range(4):
        p.grad = torch.ones(1)
        opt.step()
        values.append(p.item())
    assert values == [-1.0, -1.0, -2.0, -2.0]


def test_lookahead_rejects_bad_settings() -> None:
    params = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="k=0"):
        LookAhead(torch.optim.SGD(params, lr=1.0), k=0)
    with pytest.raises(ValueError, match="alpha=1.5"):
        LookAhead(torch.optim.SGD(params, lr=1.0), alpha=1.5)
    with pytest.raises(KeyError, match="lookahead"):
        Ranger(params).load_state_dict(torch.optim.SGD(params, lr=1.0).state_dict())


def saved(opt: LookAhead) -> dict:
    """The optimizer's state dict through torch.save and torch.load(weights_only=True), as a checkpoint holds it."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("keep_lookahead", [True, False])
def test_ranger_resumes_exactly_from_its_state_dict(keep_lookahead: bool) -> None:
    # Stop after 8 steps (2 past a sync, so the slow weights differ from the fast ones), restart a new model and
    # optimizer from the saved state, run 16 more: the same weights as 24 steps without a stop. Restoring only
    # RAdam's state (the slow weights and the count lost) must not give them.
    whole_model, x, y = toy()
    whole = trajectory(whole_model, x, y, Ranger(whole_model.parameters(), lr=8e-3), steps=24)
    model, _, _ = toy()
    opt = Ranger(model.parameters(), lr=8e-3)
    trajectory(model, x, y, opt, steps=8)
    state, weights = saved(opt), {k: v.clone() for k, v in model.state_dict().items()}
    assert state["lookahead"]["count"] == 8 and len(state["lookahead"]["slow"]) == 1
    resumed_model, _, _ = toy(seed=1)
    resumed_model.load_state_dict(weights)
    resumed_opt = Ranger(resumed_model.parameters(), lr=8e-3)
    if keep_lookahead:
        resumed_opt.load_state_dict(state)
    else:
        resumed_opt.optimizer.load_state_dict({k: v for k, v in state.items() if k != "lookahead"})
    resumed = trajectory(resumed_model, x, y, resumed_opt, steps=16)
    assert torch.equal(resumed[-1], whole[-1]) is keep_lookahead


def test_schedulers_drive_the_wrapped_optimizer() -> None:
    # The flat-cos cycle sets lr on the groups Ranger shares with RAdam; beta1 is left at ranger's mom.
    model = nn.Linear(2, 2)
    opt = Ranger(param_groups(model, 1e-2), lr=1.0)
    sched = one_cycle(opt, flat_cos(8e-3), 10)
    for _ in range(9):
        opt.step()
        sched.step()
    inner = opt.optimizer.param_groups[0]
    lo, pos = 8e-3 / 1e5, (0.9 - 0.75) / 0.25  # batch 9 of 10: 60% into the cosine
    assert inner["lr"] == pytest.approx(lo + (8e-3 - lo) * (1 + math.cos(math.pi * pos)) / 2, rel=1e-9)
    assert inner is opt.param_groups[0] and inner["betas"] == (0.95, 0.99) and inner["weight_decay"] == 1e-2


TINY = {"layers": [1, 1, 1, 1], "widen": 0.25}


def fit(mini_dir: Path, run: Path, epochs: int, resume: Path | None = None) -> dict[str, torch.Tensor]:
    """The module with Ranger and flat-cos, 4 steps per epoch on the mini archive; the final weights."""
    L.seed_everything(3)
    dm = ImagenetteDataModule(root=mini_dir, presize=40, train_size=32, batch_size=16, num_workers=0)
    model = ImagenetteClassifier(
        backbone=partial(XResNet, **TINY),
        num_classes=10,
        cycle=flat_cos(8e-3),
        optimizer=partial(Ranger, mom=0.95, eps=1e-6),
    )
    trainer = quiet.trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=run, filename="{epoch}", save_top_k=-1)],
    )
    trainer.fit(model, dm, ckpt_path=resume, weights_only=True)
    assert isinstance(trainer.optimizers[0], Ranger) and trainer.optimizers[0].count == 4 * epochs
    return model.state_dict()


def test_a_lightning_fit_with_ranger_resumes_exactly(mini_dir: Path, tmp_path: Path, one_thread: None) -> None:
    # Epoch 0 ends at step 4, two steps before the first sync: its checkpoint must carry the slow weights.
    whole = fit(mini_dir, tmp_path / "whole", epochs=2)
    resumed = fit(mini_dir, tmp_path / "resumed", epochs=2, resume=tmp_path / "whole" / "epoch=0.ckpt")
    for name, value in whole.items():
        assert torch.equal(resumed[name], value), name
