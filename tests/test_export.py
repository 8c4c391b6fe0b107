"""``imagenette-sota export``: .pt2 and .onnx with preprocessing inside, checked in a process without this package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imagenette_sota.cli import main
from imagenette_sota.predict import Predictor

# Runs in a fresh interpreter that never imports imagenette_sota: plain torch.export.load and onnxruntime.
CHECK = """
import json, sys
import numpy as np, onnxruntime, torch
x = np.load(sys.argv[1])
program = torch.export.load(sys.argv[2]).module()
session = onnxruntime.InferenceSession(sys.argv[3])
out = {}
for n in (len(x), 3, 1):  # the batch size is dynamic
    out[f"pt2_{n}"] = program(torch.from_numpy(x[:n])).detach().numpy().tolist()
    out[f"onnx_{n}"] = session.run(None, {"images": x[:n]})[0].tolist()
out["onnx_meta"] = session.get_modelmeta().custom_metadata_map
out["input"] = [(i.name, i.type, i.shape) for i in session.get_inputs()]
out["ours_imported"] = "imagenette_sota" in sys.modules
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    with pytest.raises(SystemExit) as e:
        main(["export", str(tiny_ckpt), str(out)])
    assert e.value.code == 0
    return out


def test_exported_graphs_match_the_predictor(exported: Path, tiny_ckpt: Path, photos: list[Path], tmp_path) -> None:
    predictor = Predictor.from_checkpoint(tiny_ckpt, device="cpu")
    x = torch.stack([predictor.presized(p) for p in photos])  # (10, 3, 64, 64) uint8: real photos, one grayscale
    want = predictor.probabilities(x).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pt2, onnx = exported.with_name("model.pt2"), exported.with_name("model.onnx")
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path / "x.npy"), str(pt2), str(onnx)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["ours_imported"] is False
    for n in (10, 3, 1):
        for fmt in ("pt2", "onnx"):
            got = np.array(out[f"{fmt}_{n}"])
            assert got.shape == (n, 10)
            assert np.abs(got - want[:n]).max() < 1e-4, (fmt, n)
    assert out["input"][0][:2] == ["images", "tensor(uint8)"] and out["input"][0][2][1:] == [3, 64, 64]
    meta, side = out["onnx_meta"], json.loads(exported.with_name("model.json").read_text())
    assert json.loads(meta["class_names"]) == side["class_names"] == predictor.class_names
    assert json.loads(meta["classes"]) == side["classes"] == predictor.classes
    assert int(meta["presize"]) == side["presize"] == 64


def test_export_one_format_by_suffix_and_bad_checkpoint(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "notes.txt"), str(tmp_path / "m.pt2")])
    assert e.value.code == 2 and "notes.txt is not a checkpoint" in capsys.readouterr().err
    assert not list(tmp_path.glob("m*"))
