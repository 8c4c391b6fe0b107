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


def test_recipe_check_gap_is_the_difference_of_seed_means_with_its_standard_error() -> None:
    from benchmarks.recipe_check import gap, summary

    ours = summary([{"acc": [0.1, 0.5], "loss": [2.0, 1.0]}, {"acc": [0.3, 0.5], "loss": [2.2, 1.2]}])
    fastai = summary([{"acc": [0.2, 0.4], "loss": [2.0, 1.0]}, {"acc": [0.2, 0.6], "loss": [2.0, 1.0]}])
    assert ours["n"] == 2 and ours["acc_mean"] == [0.2, 0.5] and ours["loss_mean"] == [2.1, 1.1]
    # sd of {0.1, 0.3} is 0.1 * sqrt(2); of {0.2, 0.2} is 0: se = 100 * sqrt(0.02 / 2) = 10 points
    assert [round(g, 6) for g in gap(ours, fastai)["acc_gap"]] == [0.0, 0.0]
    assert gap(ours, fastai)["acc_gap_se"] == [10.0, 10.0]
    single = summary([{"acc": [0.3], "loss": [1.0]}])
    assert "acc_sd" not in single and gap(single, summary([{"acc": [0.25], "loss": [1.0]}])) == {"acc_gap": [5.0]}
