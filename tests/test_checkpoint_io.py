"""Atomic checkpoints: a save that fails or is killed midway leaves the previous checkpoint whole and loadable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from imagenette_sota.checkpoint_io import AtomicCheckpointIO


class Unpicklable:
    """Raises while torch.save pickles it, as a full disk or a bug in a state_dict would."""

    def __reduce__(self) -> tuple:
        raise RuntimeError("cannot pickle this")


def checkpoint(value: float) -> dict:
    return {"epoch": int(value), "state_dict": {"w": torch.full((256, 256), value)}}


def test_saves_replace_the_file_whole(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "nested" / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), path)
    io.save_checkpoint(checkpoint(2.0), path)
    assert io.load_checkpoint(path, weights_only=True)["epoch"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({**checkpoint(2.0), "bad": Unpicklable()}, path)
    assert torch.equal(io.load_checkpoint(path, weights_only=True)["state_dict"]["w"], torch.full((256, 256), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1.0), path)
    # The new checkpoint's bytes are all written, then the process dies before the rename.
    script = f"""
        import os, signal, torch
        from imagenette_sota.checkpoint_io import AtomicCheckpointIO
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        new = {{"epoch": 2, "state_dict": {{"w": torch.zeros(256, 256)}}}}
        AtomicCheckpointIO().save_checkpoint(new, {str(path)!r})
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.full((256, 256), 1.0))
    # The leftover is hidden and not a *.ckpt: neither ckpt_path="last" nor a glob takes it for a checkpoint.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.ckpt.partial", "last.ckpt"]
    assert list(tmp_path.glob("*.ckpt")) == [path]
    AtomicCheckpointIO().save_checkpoint(checkpoint(3.0), path)  # the next save of the file reuses the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
