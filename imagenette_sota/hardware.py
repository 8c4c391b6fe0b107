"""What the host CPU can do fast: whether bf16 autocast runs on bf16 units or is emulated."""

from __future__ import annotations

from pathlib import Path

# /proc/cpuinfo's bf16 dot-product units: x86 AVX512-BF16 and AMX-BF16 ("flags"), Arm BF16 ("Features")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU has bf16 units; None where ``cpuinfo`` cannot be read or lists no feature flags."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    lines = [line.split(":", 1) for line in text.splitlines() if line.startswith(("flags", "Features"))]
    if not lines:
        return None
    return any(flag in BF16_FLAGS for _, flags in lines for flag in flags.split())
