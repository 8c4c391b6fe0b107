"""Process-group hygiene: a gloo (CPU) group is destroyed at exit, as Lightning does for NCCL groups only."""

from __future__ import annotations

import atexit

import torch.distributed as dist

_registered = False


def destroy_process_group_at_exit() -> None:
    """Once per process, with a process group up: destroy it at interpreter exit, whatever its backend.

    A gloo group left to interpreter finalization can abort its process ("terminate called without an active
    exception": its worker threads outlive the interpreter), which ``ddp_spawn`` reports as a failed rank after the
    work is done. Lightning registers this for NCCL only.
    """
    global _registered
    if _registered or not (dist.is_available() and dist.is_initialized()):
        return
    atexit.register(_destroy)
    _registered = True


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
