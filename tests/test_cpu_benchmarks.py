"""The CPU benchmarks against fastai: fastai given our precision, the memory of a process tree, and each script's
smoke run (seconds, on the mini archive) giving ratios that are the quotients of the runs it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imagenette_sota.hardware import cpu_bf16

from .helpers import REPO

BEST = "bf16" if cpu_bf16() else "32"  # what the scripts run both sides at by default
MIB = 2**20


def last_json(module: str, args: list[str], bench_root: Path) -> dict:
    """Run ``python -m module args`` with its data under ``bench_root``; its last line, parsed."""
    env = os.environ | {"IMAGENETTE_BENCH_ROOT": str(bench_root)}
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_first_run(figures: dict, run: str) -> None:
    """A run's clock: preparation and fit apart, the first run their sum; its tree's memory peaks."""
    prepare, fit, first = (figures[f"{run}_{key}"] for key in ("prepare_s", "fit_s", "first_run_s"))
    assert prepare > 0 and fit > 0 and first >= fit
    assert first == pytest.approx(prepare + fit, abs=2e-4)  # (each rounded to 4 decimals)
    rss, pss = figures[f"{run}_peak_rss_gib"], figures[f"{run}_peak_pss_gib"]
    assert rss >= pss > 0 and rss >= figures[f"{run}_rss_at_start_gib"]


def test_peak_memory_sums_every_child_process() -> None:
    from benchmarks.common import PeakMemory

    hold = "import time; block = b'x' * (200 * 2**20); print('ready', flush=True); time.sleep(60)"
    before = PeakMemory()
    before.sample(pss=True)
    with PeakMemory(interval=0.05, pss_every=1) as memory:
        children = [subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE) for _ in range(2)]
        try:
            assert [child.stdout.readline() for child in children] == [b"ready\n"] * 2
            deadline = time.monotonic() + 20  # the background thread's samples, not one asked for here
            while memory.peak_pss - before.peak_pss < 400 * MIB and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for child in children:
                child.kill()
                child.wait()
    # Both children's 200 MiB at once: the sum, where the largest child's peak alone would be half of it.
    assert memory.peak_rss - memory.start_rss >= 400 * MIB
    assert memory.peak_pss - before.peak_pss >= 400 * MIB
    assert memory.figures()["peak_rss_gib"] == memory.peak_rss / 2**30


def test_cpu_autocast_runs_fastais_forward_in_bf16_and_leaves_fp32_outside(mini_dir: Path, one_thread: None) -> None:
    from fastai.callback.core import Callback
    from fastai.callback.training import ShortEpochCallback
    from fastai.vision.all import CrossEntropyLossFlat, Learner
    from fastai.vision.models.xresnet import xresnet18

    from benchmarks.common import fastai_dataloaders
    from benchmarks.fastai_cpu import like_ours

    dls = fastai_dataloaders(mini_dir, presize=40, size=32, bs=16, workers=0, device="cpu")
    seen: list[tuple[torch.dtype, bool, bool]] = []  # (dtype, channels_last, training) of the first conv's output
    after_loss: list[tuple[torch.dtype, torch.dtype, bool]] = []  # (prediction, loss, autocast on) after each loss

    def record(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last), torch.is_grad_enabled()))

    class LossDtypes(Callback):  # (a name of its own: fastai sets it on the Learner, snake-cased)
        order = 90  # after CPUAutocast (10)

        def after_loss(self) -> None:
            after_loss.append((self.pred.dtype, self.loss.dtype, torch.is_autocast_enabled("cpu")))

    for precision, inside in (("bf16", torch.bfloat16), ("32", torch.float32)):
        seen.clear()
        after_loss.clear()
        torch.manual_seed(0)
        learn = like_ours(Learner(dls, xresnet18(n_out=10), loss_func=CrossEntropyLossFlat()), precision)
        learn.model[0][0].register_forward_hook(record)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, cbs=[ShortEpochCallback(pct=0.1), LossDtypes()])  # a couple of training and validation batches
        assert {training for _, _, training in seen} == {True, False}, "both training and validation batches"
        assert all(dtype == inside and channels_last for dtype, channels_last, _ in seen), precision
        # The loss from fp32 predictions (as MixedPrecision does), and autocast left once it is computed.
        assert set(after_loss) == {(torch.float32, torch.float32, False)}
        assert all(p.dtype == torch.float32 for p in learn.model.parameters())  # autocast casts, never converts
        seen.clear()
        with torch.no_grad():
            out = learn.model.eval()(torch.randn(2, 3, 32, 32))
        assert out.dtype == torch.float32 and seen[0][0] == torch.float32  # outside the fit: fp32


@pytest.fixture(scope="module")
def time_to_accuracy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bench")
    args = ["--mini", "--epochs", "1", "--fastai-epochs", "2", "--limit-batches", "2", "--target", "0"]
    args += ["--fastai-presize", "40", "--fastai-size", "32", "--fastai-bs", "16"]
    return root, last_json("benchmarks.cpu_time_to_accuracy", args, root)


def test_time_to_accuracy_divides_its_own_runs_for_both_ratios(time_to_accuracy: tuple[Path, dict]) -> None:
    _, f = time_to_accuracy
    assert f["precision"] == f["fastai_precision"] == f["ours_precision"] == f["library_ours_precision"] == BEST
    assert f["fastai_channels_last"] is True
    assert f["best_of_each_runs"] == ["ours", "fastai"] and f["library_runs"] == ["library_ours", "fastai"]
    best, library = f["time_ratio_best_of_each"], f["time_ratio_library"]
    assert best == pytest.approx(f["ours_time_to_target_s"] / f["fastai_time_to_target_s"], rel=1e-3)
    assert library == pytest.approx(f["library_ours_fit_s"] / f["fastai_fit_s"], rel=1e-3)
    first = f["ours_first_run_to_target_s"] / f["fastai_first_run_to_target_s"]
    assert f["time_ratio_best_of_each_first_run"] == pytest.approx(first, rel=1e-3)
    first = f["library_ours_first_run_s"] / f["fastai_first_run_s"]
    assert f["time_ratio_library_first_run"] == pytest.approx(first, rel=1e-3)
    # The library pair: the chapter's recipe in our configs over fastai's epochs (--epochs is our best recipe's).
    assert f["ours_configs"] == ["configs/cpu_speedrun.yaml"] and f["library_ours_configs"] == ["configs/cpu_base.yaml"]
    assert f["ours_max_epochs"] == 1 and f["library_ours_max_epochs"] == len(f["fastai_epoch_acc"]) == 2


def test_time_to_accuracy_counts_each_first_runs_preparation(time_to_accuracy: tuple[Path, dict]) -> None:
    root, f = time_to_accuracy
    for run in ("ours", "library_ours", "fastai"):
        assert_first_run(f, run)
        reached = f[f"{run}_prepare_s"] + f[f"{run}_time_to_target_s"]
        assert f[f"{run}_first_run_to_target_s"] == pytest.approx(reached, abs=2e-4)
    assert f["ours_cache"] and f["library_ours_cache"]  # each built its cache inside its preparation
    assert not list(root.glob("first-run-*"))  # every fresh data root removed after its run


def test_cpu_proxy_gives_fastai_our_precision_and_divides_the_two_fits(tmp_path: Path) -> None:
    args = ["--mini", "--epochs", "1", "--limit-batches", "2", "--presize", "40", "--size", "32", "--bs", "16"]
    f = last_json("benchmarks.cpu_proxy", args, tmp_path)
    assert f["precision"] == f["ours_precision"] == f["fastai_precision"] == BEST
    assert f["ours_channels_last"] is f["fastai_channels_last"] is True
    assert f["library_runs"] == f["best_of_each_runs"] == ["ours", "fastai"]  # one recipe on both sides
    assert f["time_ratio_library"] == pytest.approx(f["ours_fit_s"] / f["fastai_fit_s"], rel=1e-3)
    assert f["time_ratio_library_first_run"] == pytest.approx(f["ours_first_run_s"] / f["fastai_first_run_s"], rel=1e-3)
    assert len(f["fastai_epoch_acc"]) == len(f["ours_epoch_acc"]) == 1
    for run in ("ours", "fastai"):
        assert_first_run(f, run)


def test_predict_throughput_time_ratios_are_fastais_images_per_s_over_ours(tmp_path: Path) -> None:
    args = ["--mini", "--limit", "32", "--rounds", "1", "--settings", "32:40", "--bs", "16"]
    f = last_json("benchmarks.predict_throughput", args, tmp_path)
    row = f["32px"]
    ours, default, none = (row[f"{run}_images_per_s"] for run in ("ours", "fastai_default", "fastai_0_workers"))
    assert f["precision"] == f["fastai_precision"] == BEST
    assert row["time_ratio_library"] == pytest.approx(default / ours, rel=1e-2)
    assert row["time_ratio_best_of_each"] == pytest.approx(max(default, none) / ours, rel=1e-2)
    assert row["time_ratio_same_work"] == pytest.approx(default / row["ours_fastai_workers_images_per_s"], rel=1e-2)
    assert {k: f[k] for k in ("time_ratio_library", "time_ratio_best_of_each")} == {
        k: row[k] for k in ("time_ratio_library", "time_ratio_best_of_each")
    }  # one setting: the worst over the settings is its own
