"""``imagenette-sota serve``: a real LitServe server on 127.0.0.1 answering uploads of real photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagenette_sota.predict import Predictor

pytest.importorskip("litserve")
from imagenette_sota.serve_client import bad_uploads, post_image, running_server, send


@pytest.mark.parametrize("tta", [None, "augment"])
def test_served_answers_equal_the_predictor_and_bad_uploads_get_4xx(
    tiny_ckpt: Path, photos: list[Path], tmp_path: Path, tta: str | None
) -> None:
    # Augmented TTA too: an image's draws follow its pixels, so the server's batching cannot change its answer.
    predictor = Predictor.from_checkpoint(tiny_ckpt, device="cpu", tta=tta)
    expected = predictor(photos, top_k=3)
    good = [(p.read_bytes(), p.name, True) for p in photos]
    bad = bad_uploads(good[0][0], 4)  # truncated, text, empty, raw body
    uploads = [u for pair in zip(good, bad, strict=False) for u in pair] + good[len(bad) :]  # interleaved
    log = tmp_path / "server.log"
    options = ["--top_k", "3", "--max_batch_size", "8", *(["--tta", tta] if tta else [])]
    with running_server(tiny_ckpt, options, log) as url:
        results = send(url, uploads, 8)  # good and bad in flight together: they share server batches
        after = post_image(url, *good[-1])
    answers = {}
    for upload, (status, answer, _) in zip(uploads, results, strict=True):
        if upload in bad:
            assert 400 <= status < 500 and answer.get("error"), (upload[1], status, answer)
        else:
            assert status == 200, (upload[1], answer, log.read_text()[-2000:])
            answers[upload[1]] = answer["top_k"]
    assert len(answers) == 10
    assert after[0] == 200
    for photo, want in zip(photos, expected, strict=True):
        got = answers[photo.name]
        assert [g["name"] for g in got] == [g.name for g in want.top]
        assert [g["probability"] for g in got] == pytest.approx([g.probability for g in want.top], abs=1e-5)
