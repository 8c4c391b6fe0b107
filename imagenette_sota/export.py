"""Export a checkpoint's model with its preprocessing inside: uint8 (N, 3, presize, presize) in, probabilities out.

``torch.export`` (``OUT.pt2``, class names in ``OUT.json`` beside it) and ONNX through ``torch.onnx``
(``OUT.onnx``, class names in its metadata; needs the ``export`` extra: onnx, onnxscript). The batch size is
dynamic. The graph runs the data module's ``val_transform`` (resize to the validation size, normalize), traced, not
re-written; images are presized as the ``Predictor`` does (``Predictor.presized``), outside the graph. Load them
without this package::

    probs = torch.export.load("model.pt2").module()(uint8_batch)
    probs = onnxruntime.InferenceSession("model.onnx").run(None, {"images": uint8_batch.numpy()})[0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from imagenette_sota.atomic import replacing
from imagenette_sota.models import fold_batchnorm
from imagenette_sota.predict import WithPreprocessing
from imagenette_sota.trained import Trained, load

FORMATS = (".pt2", ".onnx")
MAX_BATCH = 4096  # the dynamic batch dimension's upper bound in the exported graphs


def metadata(trained: Trained) -> dict[str, Any]:
    """What a user of the exported file needs to know besides the graph."""
    p = trained.presize
    return {
        "classes": list(trained.classes),
        "class_names": list(trained.class_names),
        "presize": p,
        "input": f"images: uint8 (N, 3, {p}, {p}) RGB, each decoded, short side resized to {p} and centre-cropped",
        "output": f"probabilities: float32 (N, {len(trained.classes)}) in the order of classes",
        "checkpoint": trained.source,
    }


def targets(out: str | Path) -> list[Path]:
    """The files ``export`` writes for ``out``: itself if it ends in .pt2 or .onnx, else ``out``.pt2 and .onnx."""
    out = Path(out)
    return [out] if out.suffix in FORMATS else [out.with_name(out.name + suffix) for suffix in FORMATS]


def export(checkpoint: str | Path, out: str | Path, **options: Any) -> list[Path]:
    """Write the checkpoint's model as ``targets(out)``; ``options`` as for ``trained.load``. Returns the files."""
    trained = load(checkpoint, **options)
    network = fold_batchnorm(trained.network(channels_last=False))  # plain NCHW, BatchNorm folded as the Predictor's
    model = WithPreprocessing(network, trained.data_module()).eval()
    example = torch.randint(0, 256, (2, 3, trained.presize, trained.presize), dtype=torch.uint8)
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    meta = metadata(trained)
    program = torch.export.export(model, (example,), dynamic_shapes=shapes)  # traced once, written in both formats
    written = []
    for path in targets(out):
        if path.suffix == ".pt2":
            with replacing(path) as tmp:
                torch.export.save(program, tmp)
            json_path = path.with_suffix(".json")
            with replacing(json_path) as tmp:
                tmp.write_text(json.dumps(meta, indent=1) + "\n")
            written += [path, json_path]
        else:
            written.append(_onnx(program, meta, path))
    return written


def _onnx(program: torch.export.ExportedProgram, meta: dict[str, Any], path: Path) -> Path:
    """ONNX through torch.onnx's exporter, ``meta`` as string metadata (lists as JSON)."""
    try:
        import onnxscript  # noqa: F401 (torch.onnx's exporter needs it)
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'imagenette-sota[export]' ({e})") from e
    onnx_program = torch.onnx.export(
        program, dynamo=True, input_names=["images"], output_names=["probabilities"], verbose=False
    )
    onnx_program.model.metadata_props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    with replacing(path) as tmp:
        onnx_program.save(tmp)
    return path
