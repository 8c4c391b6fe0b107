"""The prepared GPU script runs end to end on the CPU (--smoke), so it cannot rot between lent machines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .helpers import REPO

# Every section but `compiled`: inductor compiling xresnet18 takes minutes on these cores (tests/test_xresnet.py
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
    from benchmarks.recipe.stats import gap, summary

    ours = summary([{"acc": [0.1, 0.5], "loss": [2.0, 1.0]}, {"acc": [0.3, 0.5], "loss": [2.2, 1.2]}])
    fastai = summary([{"acc": [0.2, 0.4], "loss": [2.0, 1.0]}, {"acc": [0.2, 0.6], "loss": [2.0, 1.0]}])
    assert ours["n"] == 2 and ours["acc_mean"] == [0.2, 0.5] and ours["loss_mean"] == [2.1, 1.1]
    # sd of {0.1, 0.3} is 0.1 * sqrt(2); of {0.2, 0.2} is 0: se = 100 * sqrt(0.02 / 2) = 10 points
    assert [round(g, 6) for g in gap(ours, fastai)["acc_gap"]] == [0.0, 0.0]
    assert gap(ours, fastai)["acc_gap_se"] == [10.0, 10.0]
    single = summary([{"acc": [0.3], "loss": [1.0]}])
    assert "acc_sd" not in single and gap(single, summary([{"acc": [0.25], "loss": [1.0]}])) == {"acc_gap": [5.0]}


def test_recipe_check_flags_only_gaps_past_the_bar_by_more_than_two_standard_errors() -> None:
    from benchmarks.recipe.stats import beyond_bar

    # |gap| - 2 against 2 se: 4.5 - 2 = 2.5 > 2 * 1.2 (flagged); 4.5 - 2 = 2.5 < 2 * 1.5; -6 - ... = 4 > 2 * 1.9
    result = {"acc_gap": [4.5, 4.5, -6.0, 1.0, 2.5], "acc_gap_se": [1.2, 1.5, 1.9, 0.0, 0.0]}
    assert beyond_bar(result) == [0, 2, 4]
    assert beyond_bar({"acc_gap": [1.9, -2.1]}) == [1]  # one run a side: any gap past the bar


def test_area_prefilter_gives_fastai_resampling_our_filter_and_restores_its_own() -> None:
    from fastai.vision.all import TensorImage

    from benchmarks.recipe.diagnostics import area_prefilter
    from imagenette_sota.data import augment as aug

    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    ours = aug.resize(x, 32)  # a 3x shrink: 3x3 area averages

    def fastai_resize() -> torch.Tensor:
        return TensorImage(x.clone()).affine_coord(sz=32, align_corners=False).as_subclass(torch.Tensor)

    with area_prefilter():
        assert torch.allclose(fastai_resize(), ours, atol=1e-6)
    assert (fastai_resize() - ours).abs().max() > 0.05  # fastai's own: area to 64 px, then a 2x bilinear sample


def test_shared_crop_draws_one_crop_per_batch_and_restores_per_sample_crops() -> None:
    from benchmarks.recipe.diagnostics import shared_crop
    from imagenette_sota.data import augment as aug

    crop_only = aug.Augment(min_scale=0.35, flip_p=0.0, p_affine=0.0, max_lighting=0.0)
    with shared_crop():
        m = crop_only.matrices(8, generator=torch.Generator().manual_seed(0))
        assert torch.equal(m, m[:1].expand_as(m)) and not torch.equal(m[0], torch.eye(3))
        flips = aug.Augment(min_scale=0.35, flip_p=0.5).matrices(8, generator=torch.Generator().manual_seed(0))
        assert len({round(float(v), 6) for v in flips[:, 0, 0].abs()}) > 1  # rotation and zoom stay per sample
    m = crop_only.matrices(8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(m, m[:1].expand_as(m))


def test_budget_smoke_runs_both_sides_and_draws_the_figure(mini_archive: Path, tmp_path: Path) -> None:
    png = tmp_path / "budget.png"
    command = [sys.executable, "-m", "benchmarks.cpu_budget", "--smoke", "--plot", str(png)]
    env = {**os.environ, "IMAGENETTE_BENCH_ROOT": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    (run,) = figures["runs"]
    assert run["budget_s"] == 5 and {"ours", "ours_epochs", "fastai"} <= set(run)
    ours = run["ours"]
    assert ours["steps"] == ours["plans"][-1]["steps"] and ours["budget_used_s"] > 0
    # What followed the last step, on the budget's clock: the last validation, then the config's flip TTA.
    assert 0 < ours["training_end_s"] and ours["last_val_s"] > 0 and ours["tta_s"] > 0
    assert ours["training_end_s"] + ours["last_val_s"] + ours["tta_s"] <= ours["budget_used_s"]
    assert run["ours_epochs"]["epochs"] == max(1, round(run["ours"]["planned_epochs"]))
    assert run["fastai"]["epochs"] == max(1, int(5 // run["fastai"]["measured_epoch_s"]))
    assert all(0 <= run[side]["acc"] <= 1 for side in ("ours", "ours_epochs", "fastai"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_leaderboard_smoke_appends_one_line_per_run_of_each_side(tmp_path: Path) -> None:
    """A row with an overlay (the entries' network): both sides build it, each run appends one line."""
    results = tmp_path / "leaderboard.jsonl"
    results.write_text('{"earlier": "line"}\n')  # appended to, never rewritten
    configs = ["configs/leaderboard_128_5.yaml", "configs/leaderboard_xse.yaml"]
    command = [sys.executable, "-m", "benchmarks.leaderboard", "--smoke", "--seeds", "3", "--fastai"]
    command += ["--config", *configs, "--results", str(results), "--precision", "32-true"]
    env = {**os.environ, "IMAGENETTE_BENCH_ROOT": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    earlier, ours, fastai = (json.loads(line) for line in results.read_text().splitlines())
    assert earlier == {"earlier": "line"}
    assert json.loads(done.stdout.strip().splitlines()[-1])["lines"] == [ours, fastai]
    assert (ours["side"], fastai["side"]) == ("ours", "fastai") and ours["seed"] == fastai["seed"] == 3
    assert ours["config"] == fastai["config"] == " ".join(configs)
    assert ours["precision"] == fastai["precision"] == "32-true"
    shipped = " ".join(f"--config {c}" for c in ["configs/leaderboard.yaml", *configs])
    assert ours["command"] == f"imagenette-sota fit {shipped} --seed_everything 3 --trainer.precision 32-true"
    assert fastai["command"] == f"python -m benchmarks.leaderboard --config {' '.join(configs)} --fastai"
    for line in (ours, fastai):
        assert line["epochs"] == len(line["epoch_acc"]) == len(line["epoch_s"]) == 2
        assert all(0 <= a <= 1 for a in line["epoch_acc"]) and line["epoch_s"] == sorted(line["epoch_s"])
        assert line["fit_s"] == line["epoch_s"][-1] > 0 and line["date"].endswith("Z") and line["smoke"] is True
    assert ours["val_images"] == 100 and ours["data"] == "imagenette2-160-mini.tgz"


def test_fastai_side_builds_the_network_the_overlay_asks_for(tmp_path: Path) -> None:
    """leaderboard_xse: fastai's side is its own xse_resnext50 (MaxPool shortcuts, anti-aliased), sized as ours."""
    from torch import nn

    from benchmarks.recipe.fastai_side import network
    from benchmarks.recipe.scale import scaled
    from imagenette_sota.models import MaxBlurPool2d, SqueezeExcite, xse_resnext50

    _, parsed = scaled("leaderboard_128_5", 1.0, [str(REPO / "configs" / "leaderboard_xse.yaml")], tmp_path)
    with torch.device("meta"):
        theirs = network(parsed["model"])
        ours = xse_resnext50(10, act=nn.Mish, sa=True, shortcut_pool="max", max_blur=True)

    def count(model: nn.Module, kind: type[nn.Module]) -> int:
        return sum(isinstance(m, kind) for m in model.modules())

    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    assert count(theirs, MaxBlurPool2d) == count(ours, MaxBlurPool2d) == 4 and count(theirs, nn.MaxPool2d) == 0
    assert count(ours, SqueezeExcite) == 16 and count(theirs, nn.Mish) == count(ours, nn.Mish)
