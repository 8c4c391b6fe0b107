"""``imagenette-sota classify``: real photos plus broken files; rows, error rows, summary and exit status."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from imagenette_sota.cli import main
from imagenette_sota.predict import Predictor


@pytest.fixture(scope="module")
def folder(photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 10 photos in class subfolders, a truncated JPEG, a text file and an empty file."""
    root = tmp_path_factory.mktemp("mine")
    for photo in photos:
        (root / photo.parent.name).mkdir()
        shutil.copy(photo, root / photo.parent.name / photo.name)
    (root / "truncated.jpg").write_bytes(photos[0].read_bytes()[:3000])
    (root / "notes.txt").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    return root


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


BAD = ("empty.png", "notes.txt", "truncated.jpg")


def test_classify_a_folder_to_csv(tiny_ckpt: Path, folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "answers.csv"
    code, _, err = run(["classify", str(tiny_ckpt), str(folder), "--top_k", "3", "--output", str(out)], capsys)
    assert code == 0
    assert "classified 10, failed 3 of 13 files" in err
    for name in BAD:  # each bad file named on stderr with the reason
        assert any(line.startswith(str(folder / name)) for line in err.splitlines()), name
    assert "image file is truncated" in err
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert len(rows) == 13 and all(rows[n]["error"] and not rows[n]["name_1"] for n in BAD)
    predictor = Predictor.from_checkpoint(tiny_ckpt, device="cpu")
    photos = sorted(folder.glob("*/*.JPEG"))
    for photo, answer in zip(photos, predictor(photos, top_k=3), strict=True):
        row = rows[photo.name]
        assert row["error"] == ""
        assert [row[f"name_{i}"] for i in (1, 2, 3)] == [g.name for g in answer.top]
        assert float(row["probability_1"]) == pytest.approx(answer.top[0].probability, abs=1e-6)
    assert not list(tmp_path.glob(".*partial*"))  # written atomically


def test_classify_globs_jsonl_and_stdout(tiny_ckpt: Path, folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "answers.jsonl"
    code, _, err = run(["classify", str(tiny_ckpt), str(folder / "*" / "*.JPEG"), "--output", str(out)], capsys)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and len(records) == 10 and all(len(r["top_k"]) == 5 for r in records)
    assert "classified 10, failed 0 of 10 files" in err
    code, stdout, _ = run(["classify", str(tiny_ckpt), str(folder / "notes.txt"), str(folder / "n03888257")], capsys)
    lines = stdout.splitlines()
    assert code == 0 and len(lines) == 2 and "error: cannot decode image" in lines[0]


def test_nothing_classified_exits_non_zero(tiny_ckpt: Path, folder: Path, capsys) -> None:
    code, _, err = run(["classify", str(tiny_ckpt), *(str(folder / n) for n in BAD)], capsys)
    assert code == 1 and "classified 0, failed 3 of 3 files" in err


def test_bad_checkpoint_is_named_exit_2(folder: Path, tmp_path: Path, capsys) -> None:
    for ckpt, reason in ((folder / "notes.txt", "not a checkpoint"), (tmp_path / "missing.ckpt", "does not exist")):
        code, out, err = run(["classify", str(ckpt), str(folder)], capsys)
        assert code == 2 and f"{ckpt} " in err and reason in err and out == ""


def test_classify_precision_bf16_gives_the_bf16_predictors_answers(
    tiny_ckpt: Path, folder: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "answers.jsonl"
    photos = sorted(folder.glob("*/*.JPEG"))
    code, _, _ = run(
        ["classify", str(tiny_ckpt), *map(str, photos), "--precision", "bf16", "--output", str(out)], capsys
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    bf16 = Predictor.from_checkpoint(tiny_ckpt, device="cpu", precision="bf16")
    written = [record["top_k"][0]["probability"] for record in records]
    assert written == pytest.approx([answer.top[0].probability for answer in bf16(photos)], abs=1e-6)
    fp32 = Predictor.from_checkpoint(tiny_ckpt, device="cpu")
    assert written != pytest.approx([answer.top[0].probability for answer in fp32(photos)], abs=1e-6)
