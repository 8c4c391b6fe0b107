"""The reduced scale: a seeded subset of the images, every image side times the scale, the recipe's parsed config."""

from __future__ import annotations

import contextlib
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import DATA_ROOT, REPO

CONFIGS = REPO / "configs"


def side(px: int, scale: float) -> int:
    """An image side times the scale, a multiple of 8 (at least 16)."""
    return max(16, round(px * scale / 8) * 8)


def subset(source: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """A folder of links to a seeded choice of images per class and split of ``source`` (made once)."""
    out = DATA_ROOT / "recipe_check" / f"{source.name}-{train_per_class}-{val_per_class}-{seed}"
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    rng = random.Random(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            files = sorted(folder.iterdir())
            (tmp / split / folder.name).mkdir(parents=True)
            for f in rng.sample(files, min(n, len(files))):
                (tmp / split / folder.name / f.name).symlink_to(f.resolve())
    tmp.rename(out)  # complete or absent
    return out


def family(name: str) -> list[str]:
    """The config names a run of ``name`` composes: its base (its header's "An overlay on X.yaml"), then itself."""
    header = [line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines() if line.startswith("#")]
    bases = [m.group(1) for line in header if (m := re.match(r"# An overlay on (\S+)\.yaml", line))]
    return [*bases, name]


def scaled(name: str, scale: float, overlays: list[str], tmp: Path) -> tuple[list[str], dict[str, Any]]:
    """``--config`` arguments of the recipe (ProgressiveResize's stage sizes times ``scale``: list items take no
    CLI override) and any overlays, and the configuration they parse to."""
    args = []
    for part in family(name):
        config = yaml.safe_load((CONFIGS / f"{part}.yaml").read_text())
        for callback in config.get("trainer", {}).get("callbacks", []):
            for stage in callback.get("init_args", {}).get("schedule", {}).values():
                if stage.get("size"):
                    stage["size"] = side(stage["size"], scale)
        path = tmp / f"{part}.yaml"
        path.write_text(yaml.safe_dump(config))
        args += ["--config", str(path)]
    args += [a for o in overlays for a in ("--config", o)]
    from imagenette_sota.cli import cli

    with tempfile.TemporaryFile("w+") as out:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli(["fit", *args, "--print_config"])
        out.seek(0)
        return args, yaml.safe_load(out.read())


def progressive(config: dict[str, Any]) -> dict[str, Any]:
    """The init_args of the config's ProgressiveResize ({} without one); schedule keys as ints."""
    for callback in config["trainer"].get("callbacks") or []:
        if callback["class_path"].endswith("ProgressiveResize"):
            init = dict(callback["init_args"])
            init["schedule"] = {int(k): v for k, v in (init.get("schedule") or {}).items()}
            return init
    return {}


def stages(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(size, batch size) of each ProgressiveResize stage that sets a size (sizes already scaled)."""
    schedule = progressive(config).get("schedule", {})
    return [(s["size"], s["batch_size"]) for _, s in sorted(schedule.items()) if s.get("size")]
