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
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import imagenette160, report, tiny_checkpoint
from imagenette_sota.serve_client import bad_uploads, post_image, running_server, send


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
