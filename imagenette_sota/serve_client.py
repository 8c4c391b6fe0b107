"""A client of ``imagenette-sota serve``: run a server on 127.0.0.1 for the length of a block, and POST images to it.

    with running_server("run/checkpoints/last.ckpt", ["--top_k", "3"]) as url:
        status, answer, seconds = post_image(url, Path("photo.jpg").read_bytes(), "photo.jpg")

For checks of a deployment, its tests and its load benchmark: a real HTTP client (urllib over TCP), no framework.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from imagenette_sota.serve import FIELD, PATH

HOST = "127.0.0.1"  # never another interface


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    ckpt: Path | str, args: Sequence[str] = (), log: Path | None = None, timeout: float = 300
) -> Iterator[str]:
    """``imagenette-sota serve ckpt *args`` on a free port of 127.0.0.1 until the block ends; yields its base URL.

    The server runs in its own process group (it and its LitServe workers end together); ``log`` receives its output.
    """
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    command = [sys.executable, "-m", "imagenette_sota", "serve", str(ckpt), "--host", HOST, "--port", str(port)]
    server = subprocess.Popen([*command, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        _wait_healthy(server, url, timeout, log)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if log:
            out.close()


def _wait_healthy(server: subprocess.Popen, url: str, timeout: float, log: Path | None) -> None:
    """Return once ``url``/health answers 200; raise if the server exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} (log: {log})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not answer /health within {timeout} s (log: {log})")
        time.sleep(0.5)


def post_image(url: str, data: bytes, filename: str = "image.jpg", form: bool = True) -> tuple[int, dict, float]:
    """POST ``data`` as the multipart field the server reads (or as a raw body): (status, JSON answer, seconds)."""
    if form:
        boundary = uuid.uuid4().hex
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{FIELD}"; filename="{filename}"\r\n'
        body = (head + "Content-Type: application/octet-stream\r\n\r\n").encode() + data
        body += f"\r\n--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    else:
        body, content_type = data, "image/jpeg"
    request = urllib.request.Request(f"{url}{PATH}", data=body, headers={"Content-Type": content_type})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            status, answer = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    seconds = time.perf_counter() - start
    try:
        return status, json.loads(answer), seconds
    except ValueError:
        return status, {"raw": answer.decode("latin-1")}, seconds


def send(url: str, uploads: Sequence[tuple[bytes, str, bool]], concurrency: int) -> list[tuple[int, dict, float]]:
    """Every upload ``(data, filename, as form)`` from ``concurrency`` client threads; the answers in their order."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda u: post_image(url, *u), uploads))


def bad_uploads(jpeg: bytes, n: int) -> list[tuple[bytes, str, bool]]:
    """``n`` uploads the server must answer 4xx, cycling through a truncated JPEG, text, an empty file, a raw body."""
    kinds = [(jpeg[: len(jpeg) // 3], "truncated.jpg", True), (b"not an image", "notes.txt", True)]
    kinds += [(b"", "empty.png", True), (jpeg, "raw.jpg", False)]
    return [kinds[i % len(kinds)] for i in range(n)]
