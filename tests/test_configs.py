"""Every experiment config: a commented recipe (an overlay on its family's base) stating the facts, parsing, running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from imagenette_sota.cli import cli

from .usable import check_usable

CONFIGS = Path(__file__).parents[1] / "configs"
BOOK = {
    "model.backbone": "imagenette_sota.models.xresnet50",
    "model.optimizer": "imagenette_sota.optim.adam",
    "data.presize": 460,
    "data.batch_size": 64,
}
NORMALIZED = {**BOOK, "data.normalize": "imagenet", "data.train_size": 224, "model.cycle.lr_max": 3e-3}
LEADERBOARD = {
    "model.backbone.init_args.act": "torch.nn.Mish",
    "model.backbone.init_args.sa": True,
    "model.backbone.init_args.expansion": 4,
    # fit_flat_cos: flat lr, then cosine; beta1 left at ranger's 0.95
    "model.cycle": {"lr_max": 8e-3, "pct_start": 0.75, "div": 1.0, "div_final": 1e5, "moms": None},
    "model.label_smoothing": 0.1,
    "model.weight_decay": 1e-2,
    "model.optimizer.class_path": "imagenette_sota.optim.Ranger",
    "model.optimizer.init_args.mom": 0.95,
    "model.optimizer.init_args.sqr_mom": 0.99,
    "model.optimizer.init_args.eps": 1e-6,
    "model.optimizer.init_args.k": 6,
    "model.optimizer.init_args.alpha": 0.5,
    "data.dataset": "imagenette2-160",
    "data.presize": 160,
    "data.train_size": 128,
    "data.val_size": 128,
    "data.batch_size": 64,
    "data.augment.min_scale": 0.35,
}
# The bases each overlay composes with (--config base.yaml [--config ...] --config overlay.yaml); cpu_quick stands
# alone.
BASE: dict[str, tuple[str, ...]] = {
    name: ("book",)
    for name in ("baseline", "normalize", "progressive", "mixup", "label_smoothing", "book_random_split")
}
BASE |= {f"leaderboard_128_{epochs}": ("leaderboard",) for epochs in (5, 20, 80)}
BASE["leaderboard_xse"] = ("leaderboard", "leaderboard_128_5")
BASE["cpu_speedrun_fp32"] = ("cpu_speedrun",)
# The CPU proxy's recipe (docs/results.md, the CPU proxy): xresnet18, presize 128, 64 px, batch 64, one-cycle at 3e-3.
CPU_PROXY = {
    "model.backbone": "imagenette_sota.models.xresnet18",
    "model.cycle.lr_max": 3e-3,
    "data.presize": 128,
    "data.batch_size": 64,
    "trainer.accelerator": "cpu",
}
# What each recipe must say (dotted keys of the parsed configuration).
FACTS: dict[str, dict[str, Any]] = {
    "baseline": {
        **BOOK,
        "data.normalize": "none",
        "data.train_size": 224,
        "trainer.max_epochs": 5,
        "model.cycle.lr_max": 3e-3,
    },
    "normalize": {**NORMALIZED, "trainer.max_epochs": 5},
    "book_random_split": {
        **BOOK,
        "data.normalize": "none",
        "data.train_size": 224,
        "trainer.max_epochs": 5,
        "model.cycle.lr_max": 3e-3,
        "data.split": "random",
        "data.valid_pct": 0.2,
    },
    "progressive": {
        **BOOK,
        "data.normalize": "imagenet",
        "trainer.max_epochs": 10,
        # fit_one_cycle(4, 3e-3) at 128 px, batch 128; then fine_tune(5, 1e-3) at 224 px, batch 64
        "model.cycle.lr_max": 3e-3,
        "trainer.callbacks.0.class_path": "imagenette_sota.callbacks.ProgressiveResize",
        "trainer.callbacks.0.init_args.schedule.0": {"size": 128, "batch_size": 128},
        "trainer.callbacks.0.init_args.schedule.4": {"size": 224, "batch_size": 64},
        # fine_tune(5, 1e-3) from epoch 4: 1 epoch at pct_start 0.99, 5 at lr / 2, pct_start 0.3, div 5 (FineTune)
        "cycles.fine_tune": {"start_epoch": 4, "epochs": 5, "base_lr": 1e-3, "freeze_epochs": 1},
    },
    "mixup": {**NORMALIZED, "model.mixup_alpha": 0.4, "trainer.max_epochs": 80},
    "label_smoothing": {**NORMALIZED, "model.label_smoothing": 0.1, "trainer.max_epochs": 5},
    "leaderboard_128_5": {**LEADERBOARD, "trainer.max_epochs": 5, "model.mixup_alpha": 0.0},
    "leaderboard_128_20": {**LEADERBOARD, "trainer.max_epochs": 20, "model.mixup_alpha": 0.0},
    "leaderboard_128_80": {**LEADERBOARD, "trainer.max_epochs": 80, "model.mixup_alpha": 0.2},
    "cpu_quick": {"model.backbone": "imagenette_sota.models.xresnet18", "trainer.accelerator": "cpu"},
    "cpu_base": {**CPU_PROXY, "trainer.max_epochs": 8, "model.label_smoothing": 0.0},
    "cpu_speedrun": {
        **CPU_PROXY,
        "trainer.max_epochs": 9,
        "model.label_smoothing": 0.1,
        "trainer.callbacks.0.init_args.ramp": {
            "min_size": 32,
            "max_size": 64,
            "start_epoch": 0,
            "end_epoch": 5,
            "multiple": 8,
            "batch_size": None,
        },
        "data.val_size": 64,
        "final_tta.mode": "flip",
        "trainer.precision": "bf16-mixed",  # the speedrun in bf16 (docs/results.md, CPU time to 80%)
    },
    "gpu_time_to_90": {
        "model.backbone": "imagenette_sota.models.xresnet50",
        "model.cycle.lr_max": 8e-3,
        "model.label_smoothing": 0.1,
        "data.presize": 160,
        "data.val_size": 160,  # FixRes (docs/results.md, GPU)
        "data.batch_size": 256,
        "data.augment.min_scale": 0.35,
        "trainer.max_epochs": 40,
        "trainer.precision": "bf16-mixed",
        "trainer.callbacks.0.init_args.schedule.16.size": 128,
    },
    "gpu_time_to_94": {
        # The leaderboard's model and loss; fastai's Adam with a flat-then-cosine one-cycle (not ranger), unmeasured.
        **{
            k: v
            for k, v in LEADERBOARD.items()
            if k.startswith("model.") and not k.startswith(("model.cycle", "model.optim"))
        },
        "model.cycle.lr_max": 8e-3,
        "model.cycle.pct_start": 0.75,
        "model.cycle.div": 1.0,
        "model.cycle.moms": None,  # fit_flat_cos schedules no beta1
        "data.dataset": "imagenette2-320",
        "data.presize": 224,
        "data.val_size": 224,
        "trainer.max_epochs": 40,
        "trainer.callbacks.1.class_path": "lightning.pytorch.callbacks.EMAWeightAveraging",
        "final_tta.mode": "flip",
    },
}
# The leaderboard's network (fastai's xse_resnext50, MaxPool shortcuts, anti-aliased) over the 5-epoch row.
FACTS["leaderboard_xse"] = {
    **FACTS["leaderboard_128_5"],
    "model.backbone.init_args.groups": 32,
    "model.backbone.init_args.base_width": 4,
    "model.backbone.init_args.reduction": 16,
    "model.backbone.init_args.shortcut_pool": "max",
    "model.backbone.init_args.max_blur": True,
}
# The speedrun without bf16 autocast: every fact of the speedrun's but its precision.
FACTS["cpu_speedrun_fp32"] = {**FACTS["cpu_speedrun"], "trainer.precision": "32-true"}


def lookup(config: Any, key: str) -> Any:
    """The value at a dotted key; numbers index lists."""
    for part in key.split("."):
        config = config[int(part)] if isinstance(config, list) else config[part]
    return config


def test_every_config_is_listed() -> None:
    bases = {base for family in BASE.values() for base in family}
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted({*FACTS, *bases})


def configs(name: str) -> list[str]:
    """The ``--config`` arguments of a recipe: its family's bases, then the recipe."""
    paths = [str(CONFIGS / f"{config}.yaml") for config in (*BASE.get(name, ()), name)]
    return [arg for path in paths for arg in ("--config", path)]


@pytest.mark.parametrize("name", sorted(BASE))
def test_overlays_say_only_how_they_differ(name: str) -> None:
    """An overlay is a few lines; none repeats a value its base already sets."""
    overlay = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())

    def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix.rstrip("."): tree}
        return {k: v for key, sub in tree.items() for k, v in leaves(sub, f"{prefix}{key}.").items()}

    base = {k: v for b in BASE[name] for k, v in leaves(yaml.safe_load((CONFIGS / f"{b}.yaml").read_text())).items()}
    repeated = {key for key, value in leaves(overlay).items() if base.get(key) == value}
    assert not repeated, f"{name}.yaml repeats {sorted(repeated)} of {', '.join(BASE[name])}"
    settings = [line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines() if not line.startswith("#")]
    assert len(settings) <= 16, f"{name}.yaml has {len(settings)} lines of settings"


def shrunk(path: Path, tmp_path: Path) -> Path:
    """The config with its progressive stages at 32 px and batch 4 (the CLI cannot override list items)."""
    config = yaml.safe_load(path.read_text())
    for callback in config.get("trainer", {}).get("callbacks", []):
        for stage in callback["init_args"].get("schedule", {}).values():
            stage.update({key: value for key, value in (("size", 32), ("batch_size", 4)) if key in stage})
        ramp = callback["init_args"].get("ramp", {})
        ramp.update(
            {key: value for key, value in (("min_size", 24), ("max_size", 32), ("batch_size", 4)) if key in ramp}
        )
    if config.get("data", {}).get("val_size"):
        config["data"]["val_size"] = 32
    out = tmp_path / path.name
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.mark.parametrize("name", sorted(FACTS))
def test_config_states_its_recipe_runs_and_its_checkpoint_is_usable(
    name: str, mini_dir: Path, tmp_path: Path, photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    path = CONFIGS / f"{name}.yaml"
    header = path.read_text().splitlines()[:3]
    assert all(line.startswith("# ") for line in header)  # what it reproduces, before any setting
    assert " ".join(configs(name)).replace(str(CONFIGS), "configs") in path.read_text()  # the command it states
    with pytest.raises(SystemExit):
        cli(["fit", *configs(name), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    for key, value in FACTS[name].items():
        assert lookup(config, key) == value, key
    small = ["--data.presize", "40", "--data.train_size", "32", "--data.val_size", "32", "--data.batch_size", "4"]
    run = cli(
        [
            "fit",
            *configs(name)[:-1],
            str(shrunk(path, tmp_path)),
            "--data.root",
            str(mini_dir),
            "--data.num_workers",
            "0",
            *small,
            "--trainer.precision",
            "32-true",  # the GPU recipes' mixed precision is no use on a CPU
            "--trainer.accelerator",
            "cpu",
            "--trainer.fast_dev_run",
            "1",
        ]
    )
    assert run.trainer.global_step == 1
    assert torch.isfinite(run.trainer.callback_metrics["val/loss"])
    check_usable(run.trainer, tmp_path, photos)  # classify, export, serve


@pytest.mark.parametrize("lever", sorted(p.stem for p in (CONFIGS / "cpu_levers").glob("*.yaml")))
def test_each_cpu_lever_composes_with_the_base_and_runs(
    lever: str, mini_dir: Path, tmp_path: Path, photos: list[Path]
) -> None:
    # benchmarks.cpu_time_to_accuracy --lever NAME runs exactly this composition.
    torch.set_num_threads(1)
    path = CONFIGS / "cpu_levers" / f"{lever}.yaml"
    assert path.read_text().startswith("# Lever: ")
    overlay = yaml.safe_load(path.read_text())
    small = ["--data.presize", "40", "--data.train_size", "32", "--data.batch_size", "4", "--data.num_workers", "0"]
    run = cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "cpu_base.yaml"),
            "--config",
            str(shrunk(path, tmp_path)),
            "--data.root",
            str(mini_dir),
            *small,
            *(["--data.val_size", "36"] if "val_size" in overlay.get("data", {}) else []),
            "--trainer.fast_dev_run",
            "1",
        ]
    )
    assert run.trainer.global_step == 1
    check_usable(run.trainer, tmp_path, photos)  # classify, export, serve
    config = run.config["fit"]
    base = yaml.safe_load((CONFIGS / "cpu_base.yaml").read_text())
    assert lookup(config, "model.backbone").__name__ == base["model"]["backbone"].rsplit(".", 1)[1]  # the base's
    shrunk_keys = {"data.presize", "data.train_size", "data.batch_size", "data.val_size"}
    for group, settings in overlay.items():  # and the lever on top of it (where the test did not shrink it)
        for key, value in settings.items() if group in ("model", "data", "trainer") else ():
            if f"{group}.{key}" not in shrunk_keys and key != "callbacks":
                for field, want in value.items() if isinstance(value, dict) else [(None, value)]:  # e.g. a Cycle's
                    dotted = f"{group}.{key}" + (f".{field}" if field else "")
                    assert lookup(config, dotted) == want, dotted
    if "final_tta" in overlay:
        assert vars(config["final_tta"])["mode"] == overlay["final_tta"]["mode"]
    if "callbacks" in overlay.get("trainer", {}):
        names = {type(c).__name__ for c in run.trainer.callbacks}
        assert overlay["trainer"]["callbacks"][0]["class_path"].rsplit(".", 1)[1] in names
