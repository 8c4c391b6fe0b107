"""Serve a checkpoint over HTTP with LitServe (the ``serve`` extra): POST an image, get its top-k as JSON.

    imagenette-sota serve run/checkpoints/last.ckpt --port 8000
    curl -F image=@photo.jpg http://127.0.0.1:8000/predict
    # {"top_k": [{"class_id": "n03888257", "name": "parachute", "probability": 0.93}, ...]}

Requests are batched on the server (``max_batch_size``, ``batch_timeout``), a batch's uploads are decoded in parallel
threads (PIL releases the GIL), and the batch goes through the ``Predictor``. A bad
upload (not an image, truncated, no ``image`` field, not multipart) is answered 4xx with the reason; it never fails
the good requests batched with it, and the server keeps serving.
"""

from __future__ import annotations

import io
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import litserve as ls
import torch
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from imagenette_sota.data.dataset import BadImageError
from imagenette_sota.predict import Prediction, Predictor
from imagenette_sota.trained import load
from imagenette_sota.tta import TTAMode

PATH = "/predict"
FIELD = "image"  # the multipart form field holding the file
HOW = f"POST the image file as multipart form field {FIELD!r} (curl -F {FIELD}=@photo.jpg URL{PATH})"


class Rejected(str):
    """Why an upload could not be classified (the 400 response's message)."""


class Upload(NamedTuple):
    """An uploaded file's name and bytes, not decoded yet."""

    name: str
    data: bytes


class RequireMultipart:
    """ASGI middleware: a POST to the endpoint that is not a multipart upload is answered 415 with how to send it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 415 for a non-multipart POST to ``PATH``; pass everything else on."""
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            if not content_type.startswith("multipart/form-data"):
                await JSONResponse({"error": f"got content-type {content_type!r}: {HOW}"}, 415)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ClassifierAPI(ls.LitAPI):
    """LitServe's LitAPI around ``Predictor``: decode each upload, classify a batch, one JSON answer per upload."""

    def __init__(
        self,
        checkpoint: str | Path,
        top_k: int = 5,
        tta: TTAMode | None = None,
        max_batch_size: int = 16,
        batch_timeout: float = 0.01,
        **options: Any,
    ) -> None:
        """Args: the checkpoint, answers per image, TTA mode, LitServe's batching (images, seconds to wait), and
        ``options`` of ``Predictor.from_checkpoint`` (``precision``, ``trust``)."""
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=PATH)
        self.checkpoint, self.top_k, self.tta, self.options = str(checkpoint), top_k, tta, options
        self.pool: ThreadPoolExecutor | None = None

    def setup(self, device: str) -> None:
        """Load the checkpoint on ``device`` (in the inference worker)."""
        self.predictor = Predictor.from_checkpoint(self.checkpoint, device=device, tta=self.tta, **self.options)

    def decode_request(self, request) -> Upload | Rejected:  # no annotation: LitServe then passes the form
        """The upload's bytes (decoded with the rest of its batch, in ``batch``), or why there are none."""
        upload = request.get(FIELD) if hasattr(request, "get") else None
        if not isinstance(upload, UploadFile):
            return Rejected(f"no file in form field {FIELD!r}: {HOW}")
        return Upload(upload.filename or "the upload", upload.file.read())

    def decode(self, item: Upload | Rejected) -> torch.Tensor | Rejected:
        """The upload presized like a validation image, or why it cannot be (never raises: it shares a batch)."""
        if isinstance(item, Rejected):
            return item
        file = io.BytesIO(item.data)
        file.name = item.name  # the Predictor's error names it
        try:
            return self.predictor.prepared(file)
        except BadImageError as e:
            return Rejected(re.sub(r"<_io.BytesIO object at 0x[0-9a-f]+>", "the upload", str(e)))

    def batch(self, inputs: list[Upload | Rejected]) -> list[torch.Tensor | Rejected]:
        """The batch's uploads decoded in parallel threads; it stays a list (``predict`` skips the rejected)."""
        if self.pool is None:  # made here, in the inference worker process, on first use
            self.pool = ThreadPoolExecutor(len(os.sched_getaffinity(0)), thread_name_prefix="decode")
        return list(self.pool.map(self.decode, inputs))

    def predict(self, x: Any) -> Any:
        """Classify the decoded images of a batch (or of one request when batching is off)."""
        items = x if isinstance(x, list) else [self.decode(x)]
        good = [i for i, item in enumerate(items) if isinstance(item, torch.Tensor)]
        probs = self.predictor.probabilities(torch.stack([items[i] for i in good])) if good else None
        answers = self.predictor.top(probs, self.top_k) if good else []
        out: list[Prediction | Rejected] = list(items)
        for i, answer in zip(good, answers, strict=True):
            out[i] = answer
        return out if isinstance(x, list) else out[0]

    def unbatch(self, output: list[Prediction | Rejected]) -> list[Prediction | Rejected]:
        """One output per request, in order."""
        return output

    def encode_response(self, output: Prediction | Rejected) -> Response:
        """200 with the top-k, or 400 with the reason."""
        if isinstance(output, Rejected):
            return JSONResponse({"error": str(output)}, status_code=400)
        top = [{"class_id": g.class_id, "name": g.name, "probability": g.probability} for g in output.top]
        return JSONResponse({"top_k": top})


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Run the server until interrupted; ``kwargs`` go to ``ClassifierAPI``. A bad checkpoint fails here, first."""
    load(checkpoint, kwargs.get("trust", ()))  # CheckpointError now, not in the inference worker
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: LitServe then ends its worker processes too
    server = ls.LitServer(ClassifierAPI(checkpoint, **kwargs), accelerator="auto", middlewares=[RequireMultipart])
    server.run(host=host, port=port, generate_client_file=False, num_api_servers=1)
