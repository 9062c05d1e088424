"""Load test of `convzoo serve` on 127.0.0.1: N concurrent clients post single real MNIST digits
(PNG, multipart) for a bounded time; reports requests/s, p50/p95/p99 latency, errors and the
server's resident memory at the start and end of the run.

    .venv/bin/python benchmarks/serve_load.py --model runs/demo/model.onnx --clients 64 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from PIL import Image

from convzoo.data import formats
from convzoo.data.catalog import MNIST
from convzoo.data.fetch import locate


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def client(url: str, bodies: list[bytes], deadline: float, latencies: list, errors: list, offset: int):
    async with httpx.AsyncClient(timeout=10) as http:
        i = offset
        while time.perf_counter() < deadline:
            body = bodies[i % len(bodies)]
            i += 1
            t = time.perf_counter()
            try:
                r = await http.post(url, files={"file": ("digit.png", body, "image/png")})
                if r.status_code != 200:
                    errors.append(r.status_code)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            latencies.append((time.perf_counter() - t) * 1000)


async def drive(url, bodies, clients, seconds):
    latencies, errors = [], []
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(client(url, bodies, deadline, latencies, errors, k) for k in range(clients)))
    return latencies, errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads in the server")
    parser.add_argument("--data-path", default=os.environ.get("CONVZOO_DATA"))
    args = parser.parse_args()
    located = locate(MNIST, args.data_path, download=False)
    digits = formats.read_idx_images(located.path(MNIST.files[2]))[:200, 0]
    bodies = []
    for d in digits:
        buf = io.BytesIO()
        Image.fromarray(d).save(buf, "PNG")
        bodies.append(buf.getvalue())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "convzoo", "serve", "--model", args.model, "--port", str(port),
                               "--threads", str(args.threads)], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        asyncio.run(drive(base + "/v1/predict", bodies, 4, 2))  # warm-up
        start_rss = rss_mb(server.pid)
        t = time.perf_counter()
        latencies, errors = asyncio.run(drive(base + "/v1/predict", bodies, args.clients, args.seconds))
        elapsed = time.perf_counter() - t
        end_rss = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    lat = np.asarray(latencies)
    print(f"convzoo serve {args.model}: {args.clients} clients x {args.seconds:.0f} s on 127.0.0.1, server "
          f"onnxruntime threads {args.threads}, load generator in the same 2-core machine")
    print(f"requests: {len(lat):,}  ({len(lat) / elapsed:,.0f} req/s), errors: {len(errors)}")
    print(f"latency ms: p50 {np.percentile(lat, 50):.1f}  p95 {np.percentile(lat, 95):.1f}  p99 {np.percentile(lat, 99):.1f}")
    print(f"server RSS: {start_rss:.0f} MB at start, {end_rss:.0f} MB at end")


if __name__ == "__main__":
    main()
