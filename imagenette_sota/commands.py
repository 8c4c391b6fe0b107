"""``imagenette-sota classify | export | serve``: a trained checkpoint put to use (the fit/validate/... CLI is cli.py).

Each subcommand is one function taking its argument list and returning the exit status. A missing file or one
that is not a checkpoint of this suite ends with a message naming it and exit status 2, like a bad option.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, get_args

from tqdm import tqdm

from imagenette_sota.atomic import replacing
from imagenette_sota.data.normalization import Statistics as NormalizeMode
from imagenette_sota.predict import Precision, Prediction, Predictor
from imagenette_sota.trained import LEGACY_OPTIONS, CheckpointError
from imagenette_sota.tta import TTAMode

TTA_MODES = get_args(TTAMode)
PROGRESS_FROM = 200  # files: fewer finish before a progress bar would tell anything
PRECISION_HELP = "bf16: the network under bf16 autocast (GPUs, CPUs with bf16 units; ~1e-2 off fp32's probabilities)"


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser with the checkpoint argument and the options an old checkpoint may need."""
    p = argparse.ArgumentParser(prog=f"imagenette-sota {name}", description=description)
    p.add_argument("ckpt", type=Path, help="a checkpoint written by a fit (.ckpt)")
    old = p.add_argument_group("for checkpoints written before they recorded these (the error message says which)")
    old.add_argument(
        "--backbone", help="import path of the network's constructor, e.g. imagenette_sota.models.xresnet50"
    )
    old.add_argument("--presize", type=int)
    old.add_argument("--val_size", type=int)
    old.add_argument("--normalize", choices=get_args(NormalizeMode))
    old.add_argument("--dataset", help="the dataset it was trained on (its class ids and names)")
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """``Predictor.from_checkpoint``'s options that were given: ``precision``, ``backbone`` (imported: the user named
    it) and the legacy options (None: the defaults, typed there once)."""
    given = [k for k in (*LEGACY_OPTIONS, "precision") if getattr(args, k, None) is not None]
    options: dict[str, Any] = {k: getattr(args, k) for k in given}
    if args.backbone:
        module, _, name = args.backbone.rpartition(".")
        try:
            options["backbone"] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise CheckpointError(f"--backbone {args.backbone}: cannot import it ({e}): give module.function") from None
    return options


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
    p = _parser("classify", "Classify image files with a trained checkpoint (the validation preprocessing).")
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
    try:
        predictor = Predictor.from_checkpoint(args.ckpt, args.device, args.tta, **_options(args))
    except CheckpointError as e:
        return _fail(str(e))
    files, unmatched = expand(args.paths)
    for pattern in unmatched:
        print(f"{pattern}: no such file, folder or matching glob", file=sys.stderr)
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

    p = _parser("export", "Export a checkpoint with its preprocessing: uint8 (N, 3, P, P) in, probabilities out.")
    p.add_argument("out", type=Path, help="OUT.pt2, OUT.onnx, or OUT (both)")
    args = p.parse_args(argv)
    try:
        written = exporting.export(args.ckpt, args.out, **_options(args))
    except CheckpointError as e:
        return _fail(str(e))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def serve(argv: list[str]) -> int:
    """``imagenette-sota serve CKPT``: a LitServe endpoint at http://HOST:PORT/predict."""
    p = _parser("serve", "Serve a checkpoint over HTTP (LitServe): POST an image to /predict, get its top-k JSON.")
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
