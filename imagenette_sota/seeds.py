"""Seeds as pure functions of where a draw happens in training: a resumed run draws what an uninterrupted one did.

Nothing in training draws from the global RNG streams, which a checkpoint does not restore: the train sampler gives
every sample a seed from (run seed, epoch, dataset index) for its crop position, the data module seeds the batch
augmentation from (run seed, rank, optimizer step, batch within the step), the module its mixup / cutmix from (run
seed, rank, epoch, batch index), and test-time augmentation its presize crops from (seed, sample, view). The run
seed is the one ``seed_everything`` exported, as Lightning's samplers read it.
"""

from __future__ import annotations

import hashlib
import os

import torch

DEFAULT = 42  # the run seed of every CLI run that does not set seed_everything

# Stream numbers: the same position in training seeds unrelated draws in each stream.
CROP, AUGMENT, MIX, TTA_CROP = 0, 1, 2, 3


def run_seed() -> int:
    """The seed ``seed_everything`` exported (``PL_GLOBAL_SEED``); 0 when none was set, as in Lightning's samplers."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def derive(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers ``parts``; other tuples give unrelated seeds."""
    data = b"".join(int(p).to_bytes(8, "little", signed=True) for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A new generator on ``device`` seeded with ``seed`` (cheap: no device work, no host sync)."""
    return torch.Generator(device=device).manual_seed(seed)
