"""Process-group hygiene: a gloo (CPU) group is destroyed at exit, as Lightning does for NCCL groups only."""

from __future__ import annotations

import atexit

import torch.distributed as dist


def destroy_process_group_at_exit() -> None:
    """With a process group up: destroy it at interpreter exit, whatever its backend.

    A gloo group left to interpreter finalization can abort its process ("terminate called without an active
    exception": its worker threads outlive the interpreter), which ``ddp_spawn`` reports as a failed rank after the
    work is done. Lightning registers this for NCCL only. Calling it again adds a handler that finds nothing to do.
    """
    if dist.is_available() and dist.is_initialized():
        atexit.register(_destroy)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
