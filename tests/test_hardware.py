"""bf16 on the CPU: detected from the CPU's flags, and a fit that would run it emulated says so before it starts."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import pytest

from imagenette_sota import module as module_file
from imagenette_sota import quiet
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.hardware import cpu_bf16
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve svebf16 i8mm bf16 dgh rng\nCPU implementer\t: 0x41\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull asimddp ssbs\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(ZEN4, True), (SKYLAKE, False), (SAPPHIRE_RAPIDS, True), (GRAVITON3, True), (GRAVITON2, False)],
)
def test_cpu_bf16_reads_the_bf16_unit_flags(cpuinfo: str, expected: bool, tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert cpu_bf16(tmp_path / "cpuinfo") is expected


def test_cpu_bf16_claims_nothing_without_feature_flags(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: some CPU\n")
    assert cpu_bf16(tmp_path / "cpuinfo") is None  # an architecture that lists no flags: unknown, no warning
    assert cpu_bf16(tmp_path / "absent") is None  # not Linux


@pytest.mark.parametrize("has_units", [False, True])
def test_a_bf16_fit_on_a_cpu_without_bf16_units_warns_with_the_fix(
    has_units: bool, mini_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module_file, "cpu_bf16", lambda: has_units)
    dm = ImagenetteDataModule(root=mini_dir, presize=40, train_size=32, batch_size=8, num_workers=0)
    model = ImagenetteClassifier(backbone=partial(XResNet, layers=(1, 1, 1, 1), widen=0.25))
    trainer = quiet.trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, dm)
    emulated = [str(w.message) for w in caught if "without bf16 units" in str(w.message)]
    assert trainer.global_step == 1
    if has_units:
        assert emulated == []
    else:
        assert len(emulated) == 1 and "--trainer.precision 32-true" in emulated[0]
