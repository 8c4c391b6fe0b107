"""``imagenette-sota classify | export | serve``: a trained checkpoint put to use (the fit/validate/... CLI is cli.py).

Each subcommand is one function taking its argument list and returning the exit status. A usage mistake (a missing
file, one that is not a checkpoint of this suite, a device this machine lacks) ends with one message naming it and
exit status 2, like a bad option.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, get_args

import torch
from tqdm import tqdm

from imagenette_sota.atomic import replacing
from imagenette_sota.backbone import TRUSTED
from imagenette_sota.predict import Precision, Prediction, Predictor
from imagenette_sota.trained import CheckpointError
from imagenette_sota.tta import TTAMode

TTA_MODES = get_args(TTAMode)
PROGRESS_FROM = 200  # files: fewer finish before a progress bar would tell anything
PRECISION_HELP = "bf16: the network under bf16 autocast (GPUs, CPUs with bf16 units; ~1e-2 off fp32's probabilities)"
# What each subcommand does (its --help and the tool's overview) and an example of it.
HELP = {
    "classify": "top-k classes of image files, folders and globs, as a table, CSV or JSON lines",
    "export": "the network with its preprocessing as torch.export (.pt2) and ONNX files: uint8 images in",
    "serve": "an HTTP endpoint (LitServe): POST an image to /predict, get its top-k as JSON",
}
EXAMPLES = {
    "classify": "imagenette-sota classify run.ckpt photos/ more/*.jpg --top_k 3 --output answers.csv",
    "export": "imagenette-sota export run.ckpt model   # model.pt2 (+ model.json) and model.onnx",
    "serve": "imagenette-sota serve run.ckpt --port 8000 && curl -F image=@photo.jpg http://127.0.0.1:8000/predict",
}


def _parser(name: str) -> argparse.ArgumentParser:
    """A subcommand's parser: its description and example, the checkpoint and the packages to trust."""
    p = argparse.ArgumentParser(
        prog=f"imagenette-sota {name}",
        description=HELP[name][0].upper() + HELP[name][1:] + ".",
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ckpt", type=Path, help="a checkpoint written by a fit (<run>/checkpoints/*.ckpt)")
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PACKAGE",
        help=f"a package the checkpoint's backbone may be imported from besides {', '.join(TRUSTED)} (only if you "
        "trust the checkpoint: importing runs that package's code)",
    )
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """``Predictor.from_checkpoint``'s options that were given: ``trust``, ``precision`` (None: its default)."""
    return {"trust": tuple(args.trust)} | ({"precision": args.precision} if getattr(args, "precision", None) else {})


def _check_device(p: argparse.ArgumentParser, device: str | None) -> None:
    """Exit 2 (usage) if ``device`` names no device this machine can use, with torch's reason."""
    if device is None:
        return
    try:
        torch.empty(0, device=device)  # torch's own check: the name parses, the device and its driver are there
    except (RuntimeError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        p.error(
            f"--device {device}: not usable here ({reason}); use --device cpu, or leave --device out (CUDA if "
            "available, else the CPU)"
        )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def expand(patterns: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files named by ``patterns`` (files, folders searched recursively, globs) in order; patterns matching none."""
    files: list[Path] = []
    unmatched = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        files += found
        if not found:
            unmatched.append(pattern)
    return list(dict.fromkeys(files)), unmatched


def _matches_nothing(pattern: str) -> str:
    """Why ``pattern`` named no file: a missing path, an empty folder or a glob that matches nothing."""
    if Path(pattern).is_dir():
        return "this folder holds no files"
    return "no file matches this glob" if any(c in pattern for c in "*?[") else "no such file or folder"


def _rows(results: Iterable[tuple[Path, Prediction | str]], top_k: int) -> Iterator[dict[str, Any]]:
    """One flat row per file: path, error, then class_i / name_i / probability_i for i = 1..top_k."""
    for path, result in results:
        row: dict[str, Any] = {"path": str(path), "error": result if isinstance(result, str) else ""}
        if isinstance(result, str):
            print(f"{path}: {result}", file=sys.stderr)
        for i in range(top_k):
            guess = None if isinstance(result, str) or i >= len(result.top) else result.top[i]
            row |= {
                f"class_{i + 1}": guess.class_id if guess else "",
                f"name_{i + 1}": guess.name if guess else "",
                f"probability_{i + 1}": round(guess.probability, 6) if guess else "",
            }
        yield row


def _write(rows: Iterable[dict[str, Any]], output: Path | None, top_k: int) -> None:
    """CSV or JSON lines by ``output``'s extension (atomically), or a table on stdout."""
    if output is None:
        for row in rows:
            answers = [
                f"{row[f'name_{i}']} {row[f'probability_{i}']:.3f}" for i in range(1, top_k + 1) if row[f"name_{i}"]
            ]
            print("\t".join([row["path"], *(answers or [f"error: {row['error']}"])]), flush=True)
        return
    with replacing(output) as tmp, open(tmp, "w", newline="") as f:
        if output.suffix == ".csv":
            fields = [f"{c}_{i}" for i in range(1, top_k + 1) for c in ("class", "name", "probability")]
            writer = csv.DictWriter(f, fieldnames=["path", "error", *fields])
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                record = {"path": row["path"]}
                if row["error"]:
                    record["error"] = row["error"]
                else:
                    record["top_k"] = [
                        {
                            "class_id": row[f"class_{i}"],
                            "name": row[f"name_{i}"],
                            "probability": row[f"probability_{i}"],
                        }
                        for i in range(1, top_k + 1)
                        if row[f"name_{i}"]
                    ]
                f.write(json.dumps(record) + "\n")


def classify(argv: list[str]) -> int:
    """``imagenette-sota classify CKPT PATH...``: top-k per image; exit 1 only if no file could be classified."""
    p = _parser("classify")
    p.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or globs")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: none)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument(
        "--num_workers", type=int, help="decoding processes (default: none on the CPU; on a GPU one per core up to 8)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA if available)")
    p.add_argument("--precision", choices=get_args(Precision), help=PRECISION_HELP)
    p.add_argument("--output", type=Path, help="F.csv or F.jsonl (default: a table on stdout)")
    args = p.parse_args(argv)
    if args.output is not None and args.output.suffix not in (".csv", ".jsonl"):
        p.error(f"--output {args.output}: end the name in .csv or .jsonl")
    if args.top_k < 1 or args.batch_size < 1:
        p.error("--top_k and --batch_size must be >= 1")
    _check_device(p, args.device)
    files, unmatched = expand(args.paths)
    if unmatched:  # a usage mistake, found before the checkpoint is loaded
        p.error("; ".join(f"{pattern}: {_matches_nothing(pattern)}" for pattern in unmatched))
    try:
        predictor = Predictor.from_checkpoint(args.ckpt, args.device, args.tta, **_options(args))
    except CheckpointError as e:
        return _fail(str(e))
    counts = {"classified": 0, "failed": 0}

    def counted(results: Iterable[tuple[Path, Prediction | str]]) -> Iterator[tuple[Path, Prediction | str]]:
        for path, result in results:
            counts["failed" if isinstance(result, str) else "classified"] += 1
            yield path, result

    results = predictor.classify_files(files, args.top_k, args.batch_size, args.num_workers)
    bar = tqdm(results, total=len(files), unit="img", disable=len(files) < PROGRESS_FROM or None, file=sys.stderr)
    _write(_rows(counted(bar), args.top_k), args.output, args.top_k)
    where = f"; written to {args.output}" if args.output else ""
    print(f"classified {counts['classified']}, failed {counts['failed']} of {len(files)} files{where}", file=sys.stderr)
    return 0 if counts["classified"] else 1


def export(argv: list[str]) -> int:
    """``imagenette-sota export CKPT OUT``: OUT.pt2 (+ OUT.json) and OUT.onnx, or the one OUT's suffix names."""
    from imagenette_sota import export as exporting

    p = _parser("export")
    p.add_argument("out", type=Path, help="OUT.pt2, OUT.onnx, or OUT (both)")
    args = p.parse_args(argv)
    try:
        written = exporting.export(args.ckpt, args.out, **_options(args))
    except (CheckpointError, ImportError) as e:  # ImportError: the export extra is not installed (it says which)
        return _fail(str(e))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def serve(argv: list[str]) -> int:
    """``imagenette-sota serve CKPT``: a LitServe endpoint at http://HOST:PORT/predict."""
    p = _parser("serve")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--tta", choices=TTA_MODES)
    p.add_argument("--precision", choices=get_args(Precision), help=PRECISION_HELP)
    # None: ClassifierAPI's own defaults (typed there once)
    p.add_argument("--max_batch_size", type=int, help="requests classified together (default: ClassifierAPI's)")
    p.add_argument("--batch_timeout", type=float, help="seconds to wait to fill a batch (default: ClassifierAPI's)")
    args = p.parse_args(argv)
    try:
        from imagenette_sota import serve as serving
    except ImportError as e:
        return _fail(f"serving needs LitServe: pip install 'imagenette-sota[serve]' ({e})")
    try:
        serving.serve(
            args.ckpt,
            args.host,
            args.port,
            top_k=args.top_k,
            tta=args.tta,
            **{k: v for k in ("max_batch_size", "batch_timeout") if (v := getattr(args, k)) is not None},
            **_options(args),
        )
    except CheckpointError as e:
        return _fail(str(e))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {"classify": classify, "export": export, "serve": serve}
