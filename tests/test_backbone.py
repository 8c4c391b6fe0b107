"""Backbone records: what a checkpoint writes down about its network, built again only from trusted packages."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from imagenette_sota.backbone import build, record
from imagenette_sota.models import XResNet, xresnet18
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.trained import CheckpointError, load

SMALL = {"layers": [1, 1, 1, 1], "widen": 0.25}
CLI_SPELLING = {
    "class_path": "imagenette_sota.models.XResNet",
    "init_args": {**SMALL, "act": "torch.nn.Mish", "sa": True},
}


def tiny(n_out: int) -> nn.Module:
    """A backbone from a package outside the trusted ones (this test module)."""
    return XResNet(n_out, **SMALL)


def shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        (xresnet18, "imagenette_sota.models.xresnet18"),  # the shortest path that exports it, as a config spells it
        (partial(XResNet, act=nn.Mish, sa=True, **SMALL), CLI_SPELLING),  # classes among the arguments by path
        (CLI_SPELLING, CLI_SPELLING),  # the CLI's config, as it parsed model.backbone
    ],
)
def test_a_record_is_plain_data_that_builds_the_same_network(backbone, expected) -> None:
    spec = record(backbone)
    assert spec == expected
    assert json.loads(json.dumps(spec)) == spec  # plain data: checkpoints still load with weights_only=True
    original = backbone if callable(backbone) else partial(XResNet, act=nn.Mish, sa=True, **SMALL)
    with torch.device("meta"):
        assert shapes(build(spec)(10)) == shapes(original(10))
    if backbone is xresnet18:
        assert build(spec) is xresnet18  # an import path is the function itself


def test_what_cannot_be_written_down_is_none_and_such_a_checkpoint_is_named(tiny_ckpt: Path, tmp_path: Path) -> None:
    assert record(lambda n: xresnet18(n)) is None
    assert record(partial(XResNet, act=lambda: nn.ReLU())) is None
    assert ImagenetteClassifier(backbone=lambda n: XResNet(n, **SMALL)).backbone_record is None
    saved = torch.load(tiny_ckpt, weights_only=True)
    torch.save({**saved, "backbone": None}, tmp_path / "lambda.ckpt")
    with pytest.raises(CheckpointError, match="does not record how to build its network: .* a lambda"):
        load(tmp_path / "lambda.ckpt")


def test_only_trusted_packages_are_imported_unless_the_caller_names_more() -> None:
    with pytest.raises(ValueError, match=r"its backbone names tests\.test_backbone\.tiny, outside .*--trust tests"):
        build("tests.test_backbone.tiny")
    nested = {"class_path": "imagenette_sota.models.XResNet", "init_args": {"act": "subprocess.Popen"}}
    with pytest.raises(ValueError, match=r"names subprocess\.Popen"):
        build(nested)
    assert build("tests.test_backbone.tiny", trust=["tests"]) is tiny  # named by the caller: imported
