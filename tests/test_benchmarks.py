"""The prepared GPU script runs end to end on the CPU (--smoke), so it cannot rot between lent machines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO

# Every section but `compiled`: inductor compiling xresnet18 takes ~90 s on these cores (tests/test_xresnet.py
# compiles it with the eager backend; the section is the throughput section run with compile=True).
SECTIONS = ("env", "throughput", "time_to_90", "fastai", "fast_paths")


def test_gpu_smoke_runs_every_section_without_errors(mini_archive: Path, tmp_path: Path) -> None:
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    command = [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--jpegs", str(mini_archive)]
    command += ["--out", str(out), "--scratch", str(scratch), "--budget", "600", "--sections", *SECTIONS]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((out / "gpu.json").read_text())
    assert figures["errors"] == {} and figures["skipped"] == {}
    assert set(SECTIONS) - {"env"} <= set(figures) and figures["env"]["device"] == "cpu"
    assert figures["throughput"]["32"]["model_only"]["ips"] > 0 and figures["fastai"]["fastai"].startswith("2.8")
    assert [row["epoch"] for row in figures["time_to_90"]["history"]] == [0, 1]
