"""Load test of `convzoo serve` on 127.0.0.1: N concurrent clients post single real MNIST digits
(PNG, multipart or raw image/png body) for a bounded time; reports requests/s, p50/p95/p99 latency,
errors and the server's resident memory (all workers) at the start and end of the run.

The load comes from wrk (Debian's `wrk`, compiled, so the 2 cores go to the server) or, without
it, from Python httpx clients in this process.

    .venv/bin/python benchmarks/serve_load.py --model runs/demo/model.onnx --clients 64 --seconds 20 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import shutil
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
    """Resident memory of `pid` and its children (uvicorn workers)."""
    total = 0.0
    for p in [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
        with open(f"/proc/{p}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return total


def multipart(body: bytes, boundary: str = "convzooBOUNDARY") -> tuple[bytes, str]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def run_wrk(url, body: bytes, ctype: str, clients: int, seconds: float, tmp: str):
    script = os.path.join(tmp, "post.lua")
    escaped = "".join("\\%03d" % c for c in body)  # Lua decimal escapes keep the bytes exact
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{ctype}"\nwrk.body = "{escaped}"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    def ms(label):
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1, "s": 1000}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)), "p50": ms(50), "p90": ms(90),
            "p99": ms(99), "errors": (int(errors.group(1)) if errors else 0) + (int(timeouts.group(1)) if timeouts else 0)}


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
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker")
    parser.add_argument("--body", choices=["multipart", "raw"], default="multipart")
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
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
                               "--threads", str(args.threads), "--workers", str(args.workers)], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        asyncio.run(drive(base + "/v1/predict", bodies, 4, 2))  # warm-up
        start_rss = rss_mb(server.pid)
        if args.client == "wrk":
            import tempfile

            body, ctype = multipart(bodies[0]) if args.body == "multipart" else (bodies[0], "image/png")
            with tempfile.TemporaryDirectory() as tmp:
                r = run_wrk(base + "/v1/predict", body, ctype, args.clients, args.seconds, tmp)
        else:
            t = time.perf_counter()
            latencies, errors = asyncio.run(drive(base + "/v1/predict", bodies, args.clients, args.seconds))
            lat = np.asarray(latencies)
            r = {"rps": len(lat) / (time.perf_counter() - t), "requests": len(lat), "p50": np.percentile(lat, 50),
                 "p90": np.percentile(lat, 90), "p99": np.percentile(lat, 99), "errors": len(errors)}
        end_rss = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    print(f"convzoo serve {args.model}: {args.workers} worker(s) x {args.threads} onnxruntime thread(s); "
          f"{args.clients} {args.client} clients x {args.seconds:.0f} s, {args.body} single-image requests, "
          "client and server on the same 2-core machine")
    print(f"requests: {r['requests']:,} ({r['rps']:,.0f} req/s), errors: {r['errors']}")
    print(f"latency ms: p50 {r['p50']:.1f}  p90 {r['p90']:.1f}  p99 {r['p99']:.1f}")
    print(f"server RSS: {start_rss:.0f} MB at start, {end_rss:.0f} MB at end")


if __name__ == "__main__":
    main()
