"""Load test of `convzoo serve` on 127.0.0.1 with micro-batching on and off, against a same-run
baseline: N concurrent clients post single real MNIST digits (PNG, multipart or raw image/png body)
for a bounded time; reports requests/s, p50/p90/p99 latency, every error (wrk's
connect/read/write/timeout socket errors and non-2xx responses, each and in total), the server's
resident memory and OS thread count (all workers) at the start and end of the run, for every
server, the batches one worker formed (its /metrics), and the ratios batched/unbatched and
batched/baseline.

The baseline is the plain tutorial way to serve the same ONNX file: a minimal FastAPI app (defined
below, started with uvicorn in a subprocess with the same worker count and onnxruntime threads)
whose async handler reads the upload, decodes it with Pillow, converts it to grey 28x28 (resize),
normalises it with the mean/std from the file's metadata, pads it to the model's input size and
runs onnxruntime on the event loop. convzoo runs twice, with `--batch-window-ms` (batched) and with
0 (unbatched: every request its own onnxruntime call). All servers get the same client, duration
and requests, one after the other (never at once).

The load comes from wrk (Debian's `wrk`, compiled, so the 2 cores go to the server) or, without
it, from Python httpx clients in this process.

    .venv/bin/python benchmarks/serve_load.py --model runs/demo/model.onnx --clients 64 --seconds 20 --workers 2
    .venv/bin/python benchmarks/serve_load.py --model runs/demo/model.onnx --no-baseline   # convzoo only
    .venv/bin/python benchmarks/serve_load.py --model runs/demo/model.onnx --body raw --batch-window-ms 5
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
import tempfile
import time

import numpy as np
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handler's annotations here
from PIL import Image

from arguments import run

BASELINE_ENV = "SERVE_LOAD_BASELINE"  # "model path|onnxruntime threads" for the baseline's workers
WRK_ERRORS = ("connect", "read", "write", "timeout", "non-2xx/3xx")


# --- the baseline: the tutorial FastAPI + onnxruntime app (imported by uvicorn's workers) -----------

def baseline_app():
    """uvicorn factory (`serve_load:baseline_app --factory`): the model and threads come from BASELINE_ENV."""
    import onnx
    import onnxruntime as ort

    from convzoo.metadata import read_onnx_metadata

    path, threads = os.environ[BASELINE_ENV].rsplit("|", 1)
    meta = read_onnx_metadata(onnx.load(path), path)
    spec, classes = meta["input"], meta["class_names"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    size, channels = spec["size"], spec["channels"]
    side = min(28, size)
    mean = np.asarray(spec["mean"], np.float32)[:, None, None]
    std = np.asarray(spec["std"], np.float32)[:, None, None]
    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/v1/predict")
    async def predict(request: Request):
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            data = await form["file"].read()
        else:
            data = await request.body()
        image = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB").resize((side, side))
        pixels = np.asarray(image, np.float32).reshape(side, side, channels).transpose(2, 0, 1) / 255.0
        before = (size - side) // 2
        pixels = np.pad(pixels, ((0, 0), (before, size - side - before), (before, size - side - before)))
        x = ((pixels - mean) / std)[None].astype(np.float32)
        logits = session.run(None, {input_name: x})[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = [{"class": classes[i], "index": int(i), "probability": float(probs[i])} for i in np.argsort(-probs)[:3]]
        return {**top[0], "topk": top}

    return app


# --- measuring ------------------------------------------------------------------------------------

def process_tree(pid: int) -> tuple[float, int, float]:
    """(resident MB, OS threads, CPU seconds used so far) of `pid` and all its descendants (uvicorn's
    workers), children of any thread."""
    rss, threads, cpu, todo, seen = 0.0, 0, 0.0, [pid], set()
    while todo and len(seen) < 1000:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{p}/stat") as f:
                utime, stime = f.read().rsplit(")", 1)[1].split()[11:13]  # fields 14 and 15, in clock ticks
            rss += int(fields["VmRSS"].split()[0]) / 1024
            threads += int(fields["Threads"])
            cpu += (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, KeyError):
            continue  # a process that just ended
    return rss, threads, cpu


def multipart(body: bytes, boundary: str = "convzooBOUNDARY") -> tuple[bytes, str]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def parse_wrk(out: str) -> dict:
    """wrk's report -> figures, with every error it counts: the `Socket errors:` line (connect, read,
    write, timeout; printed only when one is non-zero) and `Non-2xx or 3xx responses:`."""
    def ms(label):
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1, "s": 1000}[unit]
    errors = dict.fromkeys(WRK_ERRORS, 0)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors.update(zip(WRK_ERRORS[:4], map(int, socket_errors.groups())))
    elif "Socket errors" in out:
        raise ValueError(f"unrecognised wrk socket-error line in:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors["non-2xx/3xx"] = int(non_2xx.group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50": ms(50), "p90": ms(90), "p99": ms(99), "errors": errors}


def run_wrk(url, body: bytes, ctype: str, clients: int, seconds: float, tmp: str) -> dict:
    script = os.path.join(tmp, "post.lua")
    escaped = "".join("\\%03d" % c for c in body)  # Lua decimal escapes keep the bytes exact
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{ctype}"\nwrk.body = "{escaped}"\n')
    done = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script, url],
                          capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


async def client(url: str, requests: list[dict], deadline: float, latencies: list, errors: dict, offset: int):
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        i = offset
        while time.perf_counter() < deadline:
            request = requests[i % len(requests)]
            i += 1
            t = time.perf_counter()
            try:
                r = await http.post(url, **request)
                if not 200 <= r.status_code < 400:
                    errors["non-2xx/3xx"] = errors.get("non-2xx/3xx", 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            latencies.append((time.perf_counter() - t) * 1000)


async def drive(url, requests, clients, seconds):
    latencies, errors = [], {"non-2xx/3xx": 0}
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(client(url, requests, deadline, latencies, errors, k) for k in range(clients)))
    return latencies, errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(which: str, args, port: int) -> subprocess.Popen:
    if which == "baseline":
        command = [sys.executable, "-m", "uvicorn", "serve_load:baseline_app", "--factory",
                   "--app-dir", os.path.dirname(os.path.abspath(__file__)), "--host", "127.0.0.1",
                   "--port", str(port), "--workers", str(args.workers), "--log-level", "warning"]
        env = {**os.environ, BASELINE_ENV: f"{os.path.abspath(args.model)}|{args.threads}"}
    else:
        window = args.batch_window_ms if which == "batched" else 0
        command = [sys.executable, "-m", "convzoo", "serve", "--model", args.model, "--port", str(port),
                   "--threads", str(args.threads), "--workers", str(args.workers),
                   "--batch-window-ms", str(window), "--max-batch", str(args.max_batch)]
        env = os.environ
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


def batch_counts(base: str) -> tuple[int, int, int] | None:
    """(requests, batches, largest batch) from the /metrics of the worker that answers; None for the baseline."""
    import httpx

    r = httpx.get(base + "/metrics", timeout=10)
    if r.status_code != 200:
        return None
    values = dict(line.rsplit(" ", 1) for line in r.text.splitlines() if line and not line.startswith("#"))
    return (int(float(values["convzoo_batch_requests_total"])), int(float(values["convzoo_batches_total"])),
            int(float(values["convzoo_batch_largest"])))


def wait_healthy(server: subprocess.Popen, base: str, which: str) -> None:
    import httpx

    for _ in range(600):  # at most ~60 s
        if server.poll() is not None:
            raise SystemExit(f"{which} server exited with {server.returncode} before answering /healthz")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{which} server did not answer /healthz within 60 s")


def measure(which: str, args, bodies: list[bytes]) -> dict:
    """Start one server, warm it up, load it for args.seconds, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = base + "/v1/predict"
    if args.body == "multipart":
        requests = [{"files": {"file": ("digit.png", b, "image/png")}} for b in bodies]
    else:
        requests = [{"content": b, "headers": {"Content-Type": "image/png"}} for b in bodies]
    server = start(which, args, port)
    try:
        wait_healthy(server, base, which)
        latencies, errors = asyncio.run(drive(url, requests, 4, 2))  # warm-up, and a check that it answers
        if sum(errors.values()):
            raise SystemExit(f"{which} server failed the warm-up: {errors}")
        at_start = process_tree(server.pid)
        if args.client == "wrk":
            body, ctype = multipart(bodies[0]) if args.body == "multipart" else (bodies[0], "image/png")
            with tempfile.TemporaryDirectory() as tmp:
                r = run_wrk(url, body, ctype, args.clients, args.seconds, tmp)
        else:
            t = time.perf_counter()
            latencies, errors = asyncio.run(drive(url, requests, args.clients, args.seconds))
            lat = np.asarray(latencies)
            r = {"rps": len(lat) / (time.perf_counter() - t), "requests": len(lat), "p50": np.percentile(lat, 50),
                 "p90": np.percentile(lat, 90), "p99": np.percentile(lat, 99), "errors": errors}
        at_end = process_tree(server.pid)
        r["rss"], r["threads"] = (at_start[0], at_end[0]), (at_start[1], at_end[1])
        r["cpu_ms"] = (at_end[2] - at_start[2]) * 1000 / max(r["requests"], 1)  # robust to the machine's other load
        r["batches"] = batch_counts(base)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    return r


def report(which: str, r: dict) -> None:
    total = sum(r["errors"].values())
    each = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"
    print(f"{which}: requests: {r['requests']:,} ({r['rps']:,.0f} req/s), errors: {total} ({each})")
    print(f"{which}: latency ms: p50 {r['p50']:.1f}  p90 {r['p90']:.1f}  p99 {r['p99']:.1f}; "
          f"server CPU time per request {r['cpu_ms']:.2f} ms")
    print(f"{which}: server RSS: {r['rss'][0]:.0f} MB at start, {r['rss'][1]:.0f} MB at end; "
          f"OS threads (all processes): {r['threads'][0]} at start, {r['threads'][1]} at end")
    if r["batches"]:
        requests, batches, largest = r["batches"]
        print(f"{which}: one worker's /metrics: {requests:,} requests in {batches:,} onnxruntime batches "
              f"(mean {requests / max(batches, 1):.1f}, largest {largest})")


def compare(name: str, a: dict, b: dict) -> None:
    print(f"{name}: req/s {a['rps'] / b['rps']:.2f}x, p50 {a['p50'] / b['p50']:.2f}x, p99 {a['p99'] / b['p99']:.2f}x, "
          f"CPU per request {a['cpu_ms'] / b['cpu_ms']:.2f}x, RSS at end {a['rss'][1] / b['rss'][1]:.2f}x, "
          f"errors {sum(a['errors'].values())} vs "
          f"{sum(b['errors'].values())}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (both servers)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker (both servers)")
    parser.add_argument("--batch-window-ms", type=float, default=1.0, help="convzoo's window when batched")
    parser.add_argument("--max-batch", type=int, default=32, help="convzoo's most requests per batch")
    parser.add_argument("--unbatched", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure convzoo with batching off (default: yes)")
    parser.add_argument("--body", choices=["multipart", "raw"], default="multipart")
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the tutorial FastAPI app on the same model (default: yes)")
    parser.add_argument("--data-path", default=os.environ.get("CONVZOO_DATA"))
    args = parser.parse_args()
    if args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk), or use --client httpx")
    if not 1 <= args.clients <= 10_000 or not 0 < args.seconds <= 3600 or not 1 <= args.workers <= 64 \
            or not 0 < args.batch_window_ms <= 1000 or not 1 <= args.max_batch <= 256:
        raise SystemExit("--clients 1..10000, --seconds 0..3600, --workers 1..64, --batch-window-ms 0..1000 "
                         "(above 0), --max-batch 1..256")

    from convzoo.data import formats
    from convzoo.data.catalog import MNIST
    from convzoo.data.fetch import locate

    located = locate(MNIST, args.data_path, download=False)
    digits = formats.read_idx_images(located.path(MNIST.files[2]))[:200, 0]
    bodies = []
    for d in digits:
        buf = io.BytesIO()
        Image.fromarray(d).save(buf, "PNG")
        bodies.append(buf.getvalue())

    servers = ["batched"] + (["unbatched"] if args.unbatched else []) + (["baseline"] if args.baseline else [])
    results = {which: measure(which, args, bodies) for which in servers}
    if args.client == "wrk":
        load = f"wrk: 1 thread, {args.clients} connections, its default 2 s timeout"
    else:
        load = f"httpx: {args.clients} asyncio clients in 1 Python process"
    print(f"{args.model}: {args.workers} uvicorn worker(s) x {args.threads} onnxruntime thread(s) per server; "
          f"{load}, {args.seconds:g} s per server, {args.body} single-image requests "
          f"({', then '.join(servers)}, one at a time); client and servers on the same {os.cpu_count()}-core machine")
    print(f"batched: convzoo serve --batch-window-ms {args.batch_window_ms:g} --max-batch {args.max_batch}"
          + ("; unbatched: --batch-window-ms 0 (every request its own onnxruntime call)" if args.unbatched else ""))
    if args.baseline:
        print("baseline: minimal FastAPI app, Pillow grey 28x28 resize + pad, onnxruntime on the event loop")
    for which in servers:
        report(which, results[which])
    for other in servers[1:]:
        compare(f"batched/{other}", results["batched"], results[other])


if __name__ == "__main__":
    run(main)
