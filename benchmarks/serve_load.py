"""Load on ``imagenette-sota serve`` at 127.0.0.1: latency, throughput, and bad uploads that must not hurt good ones.

    python -m benchmarks.serve_load                                   # tiny checkpoint, mini val JPEGs, 400 requests
    python -m benchmarks.serve_load --ckpt run/checkpoints/last.ckpt --requests 2000 --concurrency 16

Starts the server in its own process group on a free port of 127.0.0.1 (never another interface), sends
``--requests`` uploads of real JPEGs from ``--concurrency`` client threads (urllib over TCP: a real HTTP client),
then a burst of good uploads with ``--bad`` bad ones mixed in (truncated JPEGs, text, empty files, a raw non-form
body), then one more good request, and stops the server. Prints p50/p99 latency, requests/s, error counts and
whether every good request was answered 200; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import imagenette160, report, tiny_checkpoint

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    ckpt: Path, args: Sequence[str] = (), log: Path | None = None, timeout: float = 300
) -> Iterator[str]:
    """``imagenette-sota serve ckpt`` on a free port of 127.0.0.1 until the block ends; yields its base URL."""
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    command = [sys.executable, "-m", "imagenette_sota", "serve", str(ckpt), "--host", HOST, "--port", str(port)]
    server = subprocess.Popen([*command, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode} (log: {log})")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not answer /health within {timeout} s (log: {log})")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own process group: the server and its LitServe workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if log:
            out.close()


def post_image(url: str, data: bytes, filename: str = "image.jpg", form: bool = True) -> tuple[int, dict, float]:
    """POST ``data`` as multipart field ``image`` (or as a raw body): (status, JSON answer, seconds)."""
    if form:
        boundary = uuid.uuid4().hex
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        body = (head + "Content-Type: application/octet-stream\r\n\r\n").encode() + data
        body += f"\r\n--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    else:
        body, content_type = data, "image/jpeg"
    request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": content_type})
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
    """Every upload ``(data, filename, as form)`` from ``concurrency`` client threads; results in order."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda u: post_image(url, *u), uploads))


def bad_uploads(jpeg: bytes, n: int) -> list[tuple[bytes, str, bool]]:
    """``n`` bad uploads cycling through a truncated JPEG, text, an empty file and a raw (non-form) body."""
    kinds = [(jpeg[: len(jpeg) // 3], "truncated.jpg", True), (b"not an image", "notes.txt", True)]
    kinds += [(b"", "empty.png", True), (jpeg, "raw.jpg", False)]
    return [kinds[i % len(kinds)] for i in range(n)]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, help="a fit's checkpoint (default: a few steps of xresnet18 on the mini set)")
    p.add_argument("--images", type=Path, help="folder of JPEGs to upload (default: the mini archive's val)")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--bad", type=int, default=40, help="bad uploads mixed into the burst")
    p.add_argument("--max_batch_size", type=int, default=16)
    p.add_argument("--batch_timeout", type=float, default=0.01)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or tiny_checkpoint(imagenette160(mini=True), Path(tmp) / "tiny.ckpt")
        folder = args.images or imagenette160(mini=True) / "val"
        jpegs = [(f.read_bytes(), f.name, True) for f in sorted(folder.rglob("*.JPEG"))]
        good = [jpegs[i % len(jpegs)] for i in range(args.requests)]
        mixed = [(u, True) for u in good[: args.bad * 3]] + [(u, False) for u in bad_uploads(jpegs[0][0], args.bad)]
        mixed = [mixed[i] for i in sorted(range(len(mixed)), key=lambda i: (i * 7919) % len(mixed))]  # interleaved
        burst = [u for u, _ in mixed]
        serve_args = ["--max_batch_size", str(args.max_batch_size), "--batch_timeout", str(args.batch_timeout)]
        with running_server(ckpt, serve_args, Path(tmp) / "server.log") as url:
            send(url, good[: args.concurrency * 2], args.concurrency)  # warm-up: worker start, first batches
            start = time.perf_counter()
            results = send(url, good, args.concurrency)
            wall = time.perf_counter() - start
            burst_results = send(url, burst, args.concurrency)
            after = post_image(url, *jpegs[0])
    latencies = [s for status, _, s in results if status == 200]
    burst_good = [r for (_, ok), r in zip(mixed, burst_results, strict=True) if ok]
    burst_bad = [r for (_, ok), r in zip(mixed, burst_results, strict=True) if not ok]
    figures = {
        "requests": len(results),
        "concurrency": args.concurrency,
        "max_batch_size": args.max_batch_size,
        "ok": sum(status == 200 for status, _, _ in results),
        "errors": sum(status != 200 for status, _, _ in results),
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "requests_per_s": len(results) / wall,
        "burst_good": len(burst_good),
        "burst_good_ok": sum(status == 200 for status, _, _ in burst_good),
        "burst_bad": len(burst_bad),
        "burst_bad_4xx": sum(400 <= status < 500 for status, _, _ in burst_bad),
        "burst_bad_other": sum(not 400 <= status < 500 for status, _, _ in burst_bad),
        "after_burst_ok": after[0] == 200,
    }
    figures["every_good_answered"] = (
        figures["ok"] == figures["requests"] and figures["burst_good_ok"] == len(burst_good) and after[0] == 200
    )
    print(
        f"{figures['requests']} requests, {args.concurrency} clients: p50 {figures['p50_ms']:.0f} ms, p99 "
        f"{figures['p99_ms']:.0f} ms, {figures['requests_per_s']:.1f} requests/s, {figures['errors']} errors; burst: "
        f"{figures['burst_good_ok']}/{len(burst_good)} good answered 200, {figures['burst_bad_4xx']}/{len(burst_bad)} "
        f"bad answered 4xx; every good request answered: {figures['every_good_answered']}",
        flush=True,
    )
    report({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()})


if __name__ == "__main__":
    main()
