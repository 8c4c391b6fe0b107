"""A fit's checkpoint put to every use: ``classify`` and ``export`` through the command line, and the ``serve``
endpoint's predictor; test_configs.py runs it on the checkpoint of every config."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from imagenette_sota.cli import main
from imagenette_sota.predict import Predictor

# The backbones already exported: tracing depends on the network (and the validation transform, the same code for
# every config), so one export per backbone is enough; classify and the server's predictor run on every checkpoint.
EXPORTED: set[str] = set()


def command(args: list[str]) -> None:
    """``imagenette-sota args``, which must succeed."""
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0


def check_usable(trainer: L.Trainer, folder: Path, photos: list[Path]) -> None:
    """Save the fit's checkpoint under ``folder`` and use it: classify two photos, export it, serve a photo."""
    ckpt = folder / "fit.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["backbone"] is not None  # how to build the network: recorded for every config
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    expected = predictor(photos[:2], top_k=3)

    command(["classify", str(ckpt), *map(str, photos[:2]), "--top_k", "3", "--output", str(folder / "answers.jsonl")])
    answers = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    assert [[g["name"] for g in a["top_k"]] for a in answers] == [[g.name for g in p.top] for p in expected]

    if (key := json.dumps(saved["backbone"], sort_keys=True)) not in EXPORTED:
        command(["export", str(ckpt), str(folder / "model.pt2")])
        x = torch.stack([predictor.presized(photo) for photo in photos[:2]])
        probs = torch.export.load(folder / "model.pt2").module()(x)
        torch.testing.assert_close(probs, predictor.probabilities(x), atol=1e-4, rtol=0)
        EXPORTED.add(key)

    serve = pytest.importorskip("imagenette_sota.serve")
    api = serve.ClassifierAPI(ckpt, top_k=3)
    api.setup("cpu")
    upload = serve.Upload(photos[0].name, photos[0].read_bytes())
    response = api.encode_response(api.predict([api.decode(upload)])[0])
    assert response.status_code == 200
    assert [g["name"] for g in json.loads(response.body)["top_k"]] == [g.name for g in expected[0].top]
