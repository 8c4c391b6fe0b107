"""Optimizers of the fastai recipes: fastai's Adam, and ranger (RAdam with decoupled weight decay + LookAhead).

Each takes parameters (or parameter groups) first, so a class or function here is a LightningCLI
``OptimizerCallable``: ``model.optimizer: {class_path: imagenette_sota.optim.Ranger, init_args: {eps: 1.0e-6}}``.

``Ranger`` is fastai's ``ranger`` (``Lookahead(RAdam(...), k=6, alpha=0.5)``) built on ``torch.optim.RAdam``. The
two differ in one place only: fastai adds ``eps`` to ``sqrt(v / (1 - beta2**t))``, torch to ``sqrt(v)`` before
the bias correction, so torch's effective eps is ``eps / sqrt(1 - beta2**t)``: 4.1x fastai's at the first
rectified step (t=6 for beta2=0.99), 1.0x after a few hundred steps. With ``eps=0`` the two agree exactly
(tests/test_optim.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

BETAS = (0.9, 0.99)  # fastai Adam's (mom, sqr_mom)
EPS = 1e-5
WEIGHT_DECAY = 0.01  # fastai's default wd, decoupled (true_wd)
FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")  # device types with torch's fused AdamW kernel

OptimizerCallable = Callable[[Iterable[Any]], Optimizer]  # parameters or groups -> optimizer (LightningCLI's)


def adam(
    params: Iterable[Any], lr: float = 1e-3, mom: float = BETAS[0], sqr_mom: float = BETAS[1], eps: float = EPS
) -> torch.optim.AdamW:
    """fastai's Adam with true weight decay (AdamW, betas (mom, sqr_mom), eps 1e-5), fused kernel where supported.

    Weight decay comes with the parameter groups (``schedule.param_groups``: none on norms and biases).
    """
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    # The fused kernel is the fastest AdamW step where it exists (benchmarks/fast_paths/); elsewhere torch chooses.
    fused = all(p.device.type in FUSED_DEVICES for p in tensors) or None
    return torch.optim.AdamW(groups, lr=lr, betas=(mom, sqr_mom), eps=eps, fused=fused)


class LookAhead(Optimizer):
    """LookAhead (Zhang et al. 2019) around any optimizer, as fastai's ``Lookahead``: every ``k`` steps the slow
    weights move ``alpha`` of the way to the fast ones, and the fast weights restart from them.

    The slow weights are the parameters as they were before the first step. ``param_groups``, ``state`` and
    ``defaults`` are the wrapped optimizer's own (schedulers set its lr and betas); ``state_dict`` holds the wrapped
    optimizer's state plus the step count and the slow weights, so a resumed run continues exactly.
    """

    def __init__(self, optimizer: Optimizer, k: int = 6, alpha: float = 0.5) -> None:
        if k < 1:
            raise ValueError(f"LookAhead k={k!r}: the number of fast steps between syncs must be >= 1")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"LookAhead alpha={alpha!r}: the slow weights' step must be in (0, 1]")
        self.optimizer, self.k, self.alpha = optimizer, k, alpha
        self.count = 0
        self.slow: list[list[Tensor]] | None = None
        # What Optimizer.__init__ sets besides groups and state (hook registries, the profiled step), which live
        # in the wrapped optimizer here.
        Optimizer.__setstate__(self, {})

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The wrapped optimizer's parameter groups."""
        return self.optimizer.param_groups

    @property
    def state(self) -> dict[Tensor, Any]:  # type: ignore[override]
        """The wrapped optimizer's per-parameter state."""
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped optimizer's defaults."""
        return self.optimizer.defaults

    def clear_state(self) -> None:
        """fastai's ``Lookahead.clear_state``: the inner optimizer's state, the step count and the slow weights."""
        self.optimizer.state.clear()
        self.count, self.slow = 0, None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of the wrapped optimizer; every k-th, the slow weights' update and the fast weights' reset."""
        if self.slow is None:
            self.slow = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]
        loss = self.optimizer.step(closure)  # it evaluates the closure with gradients on
        self.count += 1
        if self.count % self.k == 0:
            for slow_group, group in zip(self.slow, self.param_groups, strict=True):
                for slow, fast in zip(slow_group, group["params"], strict=True):
                    slow.add_(fast - slow, alpha=self.alpha)
                    fast.copy_(slow)
        return loss

    def __getstate__(self) -> dict[str, Any]:
        """Everything (Optimizer's own pickles only groups, state and defaults, which live in the wrapped one)."""
        return self.__dict__

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped optimizer's zero_grad."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, plus ``lookahead``: the step count and the slow weights."""
        return {**self.optimizer.state_dict(), "lookahead": {"count": self.count, "slow": self.slow}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the wrapped optimizer, the step count and the slow weights (onto the parameters' devices)."""
        if "lookahead" not in state_dict:
            raise KeyError("this optimizer state has no 'lookahead' entry: it was not saved by a LookAhead optimizer")
        inner = {key: value for key, value in state_dict.items() if key != "lookahead"}
        self.optimizer.load_state_dict(inner)
        saved = state_dict["lookahead"]
        self.count = int(saved["count"])
        self.slow = None
        if saved["slow"] is not None:
            self.slow = [
                [p.detach().clone().copy_(s) for p, s in zip(g["params"], slow_group, strict=True)]
                for g, slow_group in zip(self.param_groups, saved["slow"], strict=True)
            ]


class Ranger(LookAhead):
    """fastai's ``ranger``: ``torch.optim.RAdam`` with decoupled weight decay, inside LookAhead(k, alpha).

    fastai's defaults; the Imagenette leaderboard's train_imagenette.py passes eps=1e-6 and mom=0.95 too.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        mom: float = 0.95,
        sqr_mom: float = 0.99,
        eps: float = 1e-6,
        weight_decay: float = WEIGHT_DECAY,
        k: int = 6,
        alpha: float = 0.5,
    ) -> None:
        """Args:
        params: parameters or parameter groups (a group's own ``weight_decay`` or ``lr`` wins).
        lr: learning rate (a schedule usually sets it). mom, sqr_mom: RAdam's beta1, beta2. eps: RAdam's epsilon.
        weight_decay: decoupled (true) weight decay. k, alpha: LookAhead's sync period and slow step.
        """
        radam = torch.optim.RAdam(
            params, lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True
        )
        super().__init__(radam, k=k, alpha=alpha)
