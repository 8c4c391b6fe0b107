"""The env section: what ran (GPU, driver, library versions) and whether the training transform syncs the host."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from typing import Any

import torch


def env(device: torch.device) -> dict[str, Any]:
    """What ran: GPU, driver, library versions."""
    import PIL
    import torchvision
    from PIL import features

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "pillow_webp": features.check("webp"),
        "device": str(device),
    }
    try:
        import lightning

        out["lightning"] = lightning.__version__
    except ImportError as e:
        out["lightning"] = f"missing: {e}"
    if device.type == "cuda":
        out |= {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30,
        }
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            out["nvidia_smi"] = f"failed: {e}"
        out["train_transform_host_syncs"] = transform_syncs(device)
    print(json.dumps(out), flush=True)
    return out


def transform_syncs(device: torch.device) -> str:
    """ "none" when the data module's training transform of a uint8 batch queues without a host sync, else why."""
    from imagenette_sota import seeds
    from imagenette_sota.data import ImagenetteDataModule

    dm = ImagenetteDataModule(presize=128, train_size=112)
    x = torch.randint(0, 256, (64, 3, 128, 128), dtype=torch.uint8, device=device)
    dm.train_transform(x, seeds.generator(0))  # first call: copies the normalization statistics once
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        dm.train_transform(x, seeds.generator(1))
        return "none"
    except RuntimeError as e:
        return f"synced: {e}".splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
