"""What the host CPU can do fast: whether bf16 autocast runs on bf16 units or is emulated."""

from __future__ import annotations

from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of the x86 bf16 dot-product units


def cpu_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU has bf16 units (AVX512-BF16 or AMX-BF16); None where ``cpuinfo`` cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return any(flag in flags for flag in BF16_FLAGS)
