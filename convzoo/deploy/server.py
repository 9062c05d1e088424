"""HTTP service: FastAPI + onnxruntime, a JSON API and a draw-a-digit page. Serving needs no torch.

Every bad request gets a 4xx JSON error and the server keeps serving; uploads are size-limited
before they are read, images are pixel-limited (each, and all of a request's together) before they
are decoded, and nothing from a request is ever used as a file-system path.

Requests are micro-batched: those arriving within a short window after the oldest waiting one (up to
--max-batch requests) are decoded together, one image at a time, and inferred in one onnxruntime
call; a bad image fails only its own request. A batch that takes a few ms at most (small bodies, few
pixels, a small model) runs on the event loop, where a thread hop cost more than the work; any other
in a worker thread. At most BUSY batches run at once and
a bounded number of requests wait (beyond it: 503), so the event loop stays free for /healthz. The
bytes of bodies a worker holds, those still arriving included, count against one budget
(MAX_BODY_BYTES) as they arrive (beyond it: 503; at once when the Content-Length alone does not fit in
what is left), so memory stays bounded however many uploads arrive. Each uvicorn worker process has its own batcher and budget.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..data.images import is_container
from ..errors import ConfigError, repeated_key
from .heap import trim_heap
from .predict import MAX_TOPK, Predictor
from .preprocess import ImageError, ImageTooLarge, NotAnImage, decode_image, open_image, to_array

MAX_UPLOAD = 5 * 1024 * 1024
MAX_BATCH = 64  # images in one request (JSON or multipart); --max-batch counts requests per batch
MAX_REQUEST_PIXELS = 64_000_000  # width*height summed over a request's images, read from their headers
DEFAULT_TOPK = 3
BUSY = 2  # batches decoding or inferring at once; later requests wait on the event loop, not in a thread
# Micro-batching defaults (benchmarks/serve_load.py, README "Serving"): under load batches form from the
# queue anyway; the window only makes a lone request wait for company (1 ms: p99 38-43 ms in 5 of 5 runs
# of 64 clients against 39-57 ms with 2 ms, at the same req/s).
BATCH_WINDOW_MS = 1.0
MAX_BATCH_REQUESTS = 32
MAX_QUEUE = 256  # requests waiting for a batch; one more gets 503
KEEP_ALIVE_TIMEOUT = 5  # s an idle kept-alive connection stays open (uvicorn's default, stated here)
# A batch this small (bodies, pixels and the model's time for its images, together) is decoded and run
# on the event loop, a few ms at most: handing it to a thread cost more than the work (+20-30% req/s
# on LeNet-5, README "Serving"). Larger ones go to a thread, so /healthz never waits long.
INLINE_BYTES = 256 << 10
INLINE_PIXELS = 1 << 18
INLINE_SECONDS = 0.005
# Request body bytes one worker holds at once, from their arrival to their response: being received, waiting
# for a batch or in one (a single body over it still runs when no other is held).
MAX_BODY_BYTES = 64 << 20
# Content types under which the body is tried as one raw image: none, octet-stream, and curl's default.
UNTYPED_BODIES = ("", "application/octet-stream", "application/x-www-form-urlencoded")
# The file holding create_app's keywords as JSON, for the worker processes (a file: 21,843 class names in
# the environment itself passed Linux's 128 KiB limit per variable, and no worker could start)
SETTINGS_ENV = "CONVZOO_SERVE_SETTINGS"

log = logging.getLogger("uvicorn.error")
# python-multipart logs each malformed body as a warning before raising; the client gets that as a 422,
# and the server's log would get a context-free line per bad request.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(model_path, *, max_upload: int = MAX_UPLOAD, threads: int = 1,
               max_pixels: int = MAX_REQUEST_PIXELS, busy: int = BUSY, batch_window_ms: float = BATCH_WINDOW_MS,
               max_batch: int = MAX_BATCH_REQUESTS, max_queue: int = MAX_QUEUE, runtime: str = "auto",
               describe: dict | None = None) -> FastAPI:
    """The app; batch_window_ms=0 turns batching off (every request its own onnxruntime call).
    describe: how to read an ONNX file made elsewhere (Predictor's)."""
    predictor = Predictor(model_path, threads=threads, runtime=runtime, describe=describe)
    checksum = predictor.sha256()
    page = resources.files("convzoo.deploy").joinpath("static/index.html").read_text()
    batcher = Batcher(predictor, max_pixels, window_ms=batch_window_ms,
                      max_batch=max_batch if batch_window_ms > 0 else 1, max_queue=max_queue, busy=busy)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    # redirect_slashes off: Starlette answered `POST /v1/predict/` with a bodiless 307 that clients do not
    # follow with the body; now it is a 404 JSON error naming the real paths.
    app = FastAPI(title="convzoo", description=f"Predictions from {predictor.meta['model']} "
                  f"({predictor.meta.get('dataset', '')})", version="1", lifespan=lifespan, redirect_slashes=False)

    async def predict_raw(body: bytes, query: list[tuple[str, str]]) -> dict:
        """A raw image body (Content-Type image/*, the cheapest single-image request): its one result."""
        topk = query_topk(query) or DEFAULT_TOPK
        results = await batcher.submit(lambda: ([("body", body)], topk), len(body))
        return results[0]

    budget = BodyBudget(MAX_BODY_BYTES)
    app.add_middleware(RawImageRoute, handle=predict_raw, max_upload=max_upload)
    app.add_middleware(UploadGate, budget=budget, max_upload=max_upload)  # outside the raw route: every body
    app.add_middleware(LastResort)  # added last: outermost, so a bug in the raw route is a JSON 500 too

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return error_response(exc)

    @app.exception_handler(ImageError)
    async def image_error(request, exc: ImageError):
        return error_response(exc)

    @app.exception_handler(HTTPException)  # 404, 405, ...: the same {"error": ...} shape as ours
    async def http_error(request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and request.scope.get("raw_path") == b"*":  # the target is the server (RFC 9110)
            if request.method == "OPTIONS":  # `OPTIONS * HTTP/1.1`: what the server allows, no path implied
                return Response(status_code=204, headers={"allow": "GET, HEAD, POST"})
            return JSONResponse({"error": "the request target '*' is only for OPTIONS"}, status_code=400)
        if exc.status_code == 404:
            message = (f"no such path {request.url.path[:100]!r}; the paths are /v1/predict (POST), /v1/model, "
                       "/healthz, /metrics, / (the page) and /docs")
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    # GET routes answer HEAD too (load balancers' health checks); uvicorn sends no body for HEAD.
    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        """This worker's batching and body budget counters, in Prometheus' text format."""
        return batcher.metrics() + budget.metrics()

    @app.get("/v1/model")
    async def model_info():
        meta = predictor.meta
        return {"name": meta["model"], "dataset": meta.get("dataset"), "classes": meta["class_names"],
                "input": meta["input"], "preprocess": meta.get("preprocess"), "sha256": checksum,
                "file": predictor.path.name, "max_upload_bytes": max_upload, "max_batch": MAX_BATCH,
                "max_request_pixels": max_pixels, "runtime": predictor.runtime}

    # HEAD outside the schema: one route for both methods gave each operation id twice (a codegen error,
    # and a warning in the log per worker when /docs was loaded).
    for path, endpoint, response in (("/healthz", healthz, JSONResponse), ("/metrics", metrics, PlainTextResponse),
                                     ("/v1/model", model_info, JSONResponse)):
        app.add_api_route(path, endpoint, methods=["HEAD"], response_class=response, include_in_schema=False)

    @app.post("/v1/predict")
    async def predict(request: Request):
        """A multipart upload (field `file`, and optionally a `topk` field), a raw image body (Content-Type
        image/*), or JSON {"images": [base64, ...], "topk": 3} for a batch; `?topk=` for each, or a topk
        in the body. Any other query parameter, text field or JSON key, or one given twice (topk in both the
        query and the body too), is a 422."""
        body = await read_limited(request, max_upload)
        ctype = request.headers.get("content-type", "").lower()  # image/*: RawImageRoute answered it
        topk = query_topk(request.query_params.multi_items())  # None: not in the query
        if ctype.startswith("multipart/form-data"):
            images, form_topk = await from_multipart(request, body)
            topk = one_topk(topk, None if form_topk is None else parse_topk(form_topk), "multipart field 'topk'")
        elif ctype.startswith("application/json"):
            images = None  # parsed with the batch: in a thread when large (a 5 MB body is not the event loop's work)
        elif ctype.split(";")[0].strip() in UNTYPED_BODIES:
            # `curl --data-binary @cat.jpg` sends form-urlencoded; other clients send octet-stream or
            # nothing: a body that decodes as an image is one, anything else gets the 415 below.
            try:
                return JSONResponse(await predict_raw(body, request.query_params.multi_items()))
            except NotAnImage:
                raise RequestError(415, wrong_type(ctype)) from None
        else:
            raise RequestError(415, wrong_type(ctype))

        def parse():  # with the batch (in a thread unless the batch is small)
            return from_json(body, topk) if images is None else (images, topk)

        results = await batcher.submit(parse, len(body))
        # A JSONResponse as is: FastAPI's jsonable_encoder would walk these plain dicts again.
        return JSONResponse(results[0] if len(results) == 1 and images is not None else {"predictions": results})

    return app


def check_codings(headers: list[tuple[bytes, bytes]]) -> None:
    """A compressed body would be read as a corrupt image (a gzipped PNG: '415 not an image'), and an
    uncompressed one sent with a gzip header served as if the header were not there. Every line of a
    repeated header counts (a second `Content-Encoding: gzip` line was ignored). httptools has already
    removed a Transfer-Encoding's chunked framing, but not a coding before it (`gzip, chunked`)."""
    for name, allowed in ((b"content-encoding", ("identity",)), (b"transfer-encoding", ("identity", "chunked"))):
        codings = [c.strip().lower() for key, value in headers if key == name
                   for c in value.decode("latin-1").split(",") if c.strip()]
        unsupported = [c for c in codings if c not in allowed]
        if unsupported:
            listed = ", ".join(dict.fromkeys(c[:40] for c in unsupported))
            raise RequestError(415, f"{name.decode().title()} {listed!r} is not supported: send the body "
                                    "uncompressed")


def wrong_type(ctype: str) -> str:
    return ("send multipart/form-data (field 'file'), an image/* body or application/json (or an image as "
            f"the whole body), not {ctype[:80] or 'nothing'!r}")


def error_response(exc: Exception) -> JSONResponse:
    """A user's mistake as its status and {"error": ...}."""
    if isinstance(exc, RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status,
                            headers={"Retry-After": "1"} if exc.status == 503 else None)
    status = 415 if isinstance(exc, NotAnImage) else 413 if isinstance(exc, ImageTooLarge) else 422
    return JSONResponse({"error": str(exc)}, status_code=status)


class BodyBudget:
    """The bytes of request bodies one worker holds, from their arrival until their response is sent:
    without it, 300 half-sent 5 MB uploads held 1.5 GB. A body that does not fit is refused (503). Once
    a burst of large bodies has ended, the heap they leave is given back (trim_heap)."""

    def __init__(self, limit: int):
        self.limit, self.held, self.rejected, self.peak, self.trimming = limit, 0, 0, 0, False

    def reserve(self, size: int, own: int = 0) -> bool:
        """Room for `size` more bytes of a request already holding `own` (its body's earlier pieces):
        alone, a body over the limit still runs."""
        if not self.fits(size, own):
            return False
        self.held += size
        self.peak = max(self.peak, self.held)
        return True

    def fits(self, size: int, own: int = 0) -> bool:
        """Whether `size` more bytes fit now (a refusal is counted)."""
        if self.held - own and self.held + size > self.limit:
            self.rejected += 1
            return False
        return True

    def release(self, size: int) -> None:
        self.held -= size
        if not self.held and self.peak >= TRIM_AFTER and not self.trimming:  # not after every small request
            # a second on, when the burst's other connections (refused, still sending) are gone too
            self.trimming = True
            asyncio.get_running_loop().call_later(1.0, self.trim)

    def trim(self) -> None:
        """The heap trimmed if no body is held now; else the next time none is."""
        self.trimming = False
        if not self.held:
            self.peak = 0
            trim_heap()

    def busy(self) -> RequestError:
        return RequestError(503, f"server busy: {self.held / 2**20:.1f} MB of request bodies are being received "
                                 f"or processed (the limit is {self.limit >> 20} MB per worker); try again shortly")

    def metrics(self) -> str:
        values = [("convzoo_body_bytes_held", "gauge", "request body bytes held now (received, those of "
                   "bodies still arriving included)", self.held),
                  ("convzoo_body_bytes_limit", "gauge", "most request body bytes held before 503", self.limit),
                  ("convzoo_body_rejected_total", "counter", "requests answered 503: body budget full", self.rejected)]
        return "".join(f"# HELP {name} {text}\n# TYPE {name} {kind}\n{name} {value}\n"
                       for name, kind, text, value in values)


TRIM_AFTER = 16 << 20  # bytes of bodies held at once after which, once none are, the heap is trimmed


class UploadGate:
    """`POST /v1/predict`'s headers checked before a byte of its body is read: 413 for a Content-Length
    over the upload limit, 415 for a coded body, 503 when the declared size does not fit in what the
    worker's BodyBudget has left now. The body's bytes are reserved as they arrive (503 once they no
    longer fit), not from the Content-Length: reserved up front, 13 clients declaring 5 MB and sending a
    byte every 8 s held the whole budget, and every real upload got 503, for as long as they liked.
    Whatever was reserved is released when the request ends: answered, refused, or its client gone (a
    disconnect or protocol.py's timeouts, a body under its minimum rate included)."""

    def __init__(self, app, budget: BodyBudget, max_upload: int):
        self.app, self.budget, self.max_upload = app, budget, max_upload

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/predict":
            return await self.app(scope, receive, send)
        held = 0

        async def counted():  # the body's bytes reserved as they arrive
            nonlocal held
            message = await receive()
            size = len(message.get("body", b""))
            if size:
                if not self.budget.reserve(size, own=held):
                    raise self.budget.busy()
                held += size
            return message

        try:
            names = {name for name, _ in scope["headers"]}
            if b"content-length" not in names and b"transfer-encoding" not in names:  # was "empty file (0 bytes)"
                raise RequestError(411, "a POST to /v1/predict needs a Content-Length (or Transfer-Encoding: chunked)")
            declared = declared_size(scope["headers"], self.max_upload)
            check_codings(scope["headers"])
            if declared and not self.budget.fits(declared):  # would be refused part-way: refused now
                raise self.budget.busy()
            await self.app(scope, counted, send)
        except RequestError as exc:  # raised here, or by counted() where the app's own handler is not around it
            await error_response(exc)(scope, receive, send)
        finally:
            self.budget.release(held)


def declared_size(headers: list[tuple[bytes, bytes]], limit: int) -> int | None:
    """The Content-Length (None without one: a chunked body), 413 when over `limit`."""
    value = next((v for k, v in headers if k == b"content-length"), b"").strip()
    if not value.isdigit():
        return None  # httptools refuses a malformed one before the app is called
    if int(value) > limit:
        raise RequestError(413, f"upload of {int(value):,} bytes exceeds the {limit:,}-byte limit")
    return int(value)


class RawImageRoute:
    """`POST /v1/predict` with an image/* body, answered in plain ASGI: the busy server's hot path skips
    FastAPI's routing, request objects and dependency solving (+3% req/s on LeNet-5 measured, README
    Serving). The same size limit, checks, results and errors as the FastAPI route; every other
    request goes on to FastAPI."""

    def __init__(self, app, handle, max_upload: int):
        self.app, self.handle, self.max_upload = app, handle, max_upload

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/predict":
            return await self.app(scope, receive, send)
        headers = dict(reversed(scope["headers"]))  # lower-case names; a repeated one: its first value, as Starlette
        if not headers.get(b"content-type", b"").lower().startswith(b"image/"):
            return await self.app(scope, receive, send)
        try:
            body = await read_body(receive, headers.get(b"content-length", b"").decode("latin-1"), self.max_upload)
            if body is None:  # the client went away
                return
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            response = JSONResponse(await self.handle(body, query))
        except (RequestError, ImageError) as exc:
            response = error_response(exc)
        await response(scope, receive, send)


class LastResort:
    """A bug becomes a JSON 500 and the connection stays open; Starlette's own handler would answer,
    then re-raise, and uvicorn would close the connection."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:  # the client closed the connection mid-upload: nobody to answer, no bug to log
            return
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await JSONResponse({"error": "internal error (a bug in convzoo: see the server log)"},
                               status_code=500)(scope, receive, send)


Parse = Callable[[], tuple[list[tuple[str, bytes]], int]]  # a request's (name, image bytes) list and topk


@dataclass
class Job:
    parse: Parse
    size: int  # body bytes (whether the batch may run on the event loop: INLINE_BYTES)
    arrived: float  # event-loop time
    future: asyncio.Future


class Batcher:
    """One per worker process: requests queue here; a collector task takes the oldest one and every
    request that arrives within `window_ms` after it (up to `max_batch`), as soon as one of `busy`
    slots is free, and runs them: on the event loop when small (INLINE_*), else in a worker thread.
    While the slots are busy requests keep queueing, so under load a batch forms without waiting out
    the window."""

    def __init__(self, predictor: Predictor, max_pixels: int, *, window_ms: float, max_batch: int,
                 max_queue: int, busy: int):
        if max_batch < 1 or max_queue < 1 or busy < 1 or window_ms < 0:  # the CLI checks; the API too
            raise ConfigError(f"batching needs max_batch, max_queue, busy >= 1 and window_ms >= 0, got {max_batch}, "
                              f"{max_queue}, {busy}, {window_ms}")
        self.predictor, self.max_pixels = predictor, max_pixels
        self.window, self.max_batch, self.max_queue = window_ms / 1000, max_batch, max_queue
        self.queue: deque[Job] = deque()
        self.slots = asyncio.Semaphore(busy)
        self.wake, self.wanted = asyncio.Event(), 1  # set once `wanted` requests wait
        self.collector = None
        self.running: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self.counts = dict.fromkeys(("requests", "batches", "largest", "rejected", "inline"), 0)
        self.image_seconds = model_seconds(predictor)

    async def submit(self, parse: Parse, size: int) -> list[dict]:
        """The request's results, or its own RequestError/ImageError; 503 when the queue is full."""
        if len(self.queue) >= self.max_queue:  # their bytes: UploadGate's budget
            self.counts["rejected"] += 1
            raise RequestError(503, f"server busy: {len(self.queue)} requests are waiting; try again shortly")
        loop = asyncio.get_running_loop()
        if self.collector is None or self.collector.done():  # started here, in the serving loop
            if self.collector is not None and not self.collector.cancelled() and self.collector.exception():
                log.error("convzoo: the batch collector stopped (%r); restarting it", self.collector.exception())
            self.collector = loop.create_task(self.collect())
        job = Job(parse, size, loop.time(), loop.create_future())
        self.queue.append(job)
        if len(self.queue) >= self.wanted:
            self.wake.set()
        return await job.future

    async def collect(self):
        while True:
            await self.slots.acquire()  # a free slot first: meanwhile requests queue and join this batch
            batch = await self.next_batch()
            self.counts["requests"] += len(batch)
            self.counts["batches"] += 1
            self.counts["largest"] = max(self.counts["largest"], len(batch))
            task = asyncio.get_running_loop().create_task(self.run(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def next_batch(self) -> list[Job]:
        """The oldest waiting request and those that arrive within the window after it (when the
        oldest has waited longer, only those already here)."""
        await self.until_waiting(1)
        deadline = self.queue[0].arrived + self.window
        await self.until_waiting(self.max_batch, deadline - asyncio.get_running_loop().time())
        batch = [self.queue.popleft() for _ in range(min(self.max_batch, len(self.queue)))]
        return batch

    async def until_waiting(self, count: int, timeout: float | None = None):
        """Until `count` requests wait, or `timeout` seconds have passed."""
        if len(self.queue) >= count or (timeout is not None and timeout <= 0):
            return
        self.wanted = count
        self.wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin before Python 3.11
            await asyncio.wait_for(self.wake.wait(), timeout)

    async def run(self, batch: list[Job]):
        try:
            parses = [job.parse for job in batch]
            if sum(job.size for job in batch) > INLINE_BYTES:
                outcomes = await anyio.to_thread.run_sync(run_batch, self.predictor, parses, self.max_pixels)
            else:  # small bodies: parsing them and reading their headers is quick
                parsed = parse_requests(parses)
                opened = None if any_container(parsed) else open_parsed(parsed, self.max_pixels)
                images, area = sizes(opened or [])
                if opened is None:  # an icon: opening one may decode its inner image (a small body, a large one)
                    outcomes = await anyio.to_thread.run_sync(finish_parsed, self.predictor, parsed, self.max_pixels)
                elif area <= INLINE_PIXELS and images * self.image_seconds <= INLINE_SECONDS:
                    self.counts["inline"] += 1
                    outcomes = finish_requests(self.predictor, opened)
                else:
                    outcomes = await anyio.to_thread.run_sync(finish_requests, self.predictor, opened)
        except Exception as exc:  # the model itself failed: every request of the batch gets it (a 500)
            outcomes = [exc] * len(batch)
        finally:
            self.slots.release()
        for job, outcome in zip(batch, outcomes):
            if job.future.done():  # its client went away
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def close(self):
        for task in [self.collector, *self.running]:
            if task is not None:
                task.cancel()

    def metrics(self) -> str:
        c = self.counts
        values = [("convzoo_batch_requests_total", "counter", "requests run through batches", c["requests"]),
                  ("convzoo_batches_total", "counter", "batches run (one onnxruntime call each)", c["batches"]),
                  ("convzoo_batches_inline_total", "counter", "batches small enough to run on the event loop",
                   c["inline"]),
                  ("convzoo_model_seconds_per_image", "gauge", "the model's time per image, measured at start "
                   "(batches of up to 5 ms of it run on the event loop)", self.image_seconds),
                  ("convzoo_batch_largest", "gauge", "most requests in one batch so far", c["largest"]),
                  ("convzoo_queue_rejected_total", "counter", "requests answered 503: queue full", c["rejected"]),
                  ("convzoo_queue_waiting", "gauge", "requests waiting for a batch now", len(self.queue)),
                  ("convzoo_batch_window_seconds", "gauge", "the batching window", self.window),
                  ("convzoo_batch_max_requests", "gauge", "most requests per batch (1: batching off)", self.max_batch),
                  ("convzoo_queue_max_requests", "gauge", "most requests waiting before 503", self.max_queue)]
        return "".join(f"# HELP {name} {text}\n# TYPE {name} {kind}\n{name} {value}\n"
                       for name, kind, text, value in values)


def run_batch(predictor: Predictor, parses: list[Parse], max_pixels: int) -> list:
    """Both halves of a batch (open_requests, then finish_requests): outcomes in the requests' order,
    each a list of results or that request's own exception."""
    return finish_requests(predictor, open_requests(parses, max_pixels))


def open_requests(parses: list[Parse], max_pixels: int) -> list:
    """Each request parsed and its images' headers read, nothing decoded: ([(name, opened image)],
    topk), or the exception that fails only this request (bad input, 4xx; a bug stays its own 500)."""
    return open_parsed(parse_requests(parses), max_pixels)


def parse_requests(parses: list[Parse]) -> list:
    """Each request parsed: ([(name, bytes)], topk), or the exception that fails only this request."""
    parsed = []
    for parse in parses:
        try:
            parsed.append(parse())
        except Exception as exc:  # noqa: BLE001 - it becomes this request's outcome
            parsed.append(exc)
    return parsed


def any_container(parsed: list) -> bool:
    """Whether a parsed request holds an icon file (ICO, ICNS): opening one may decode its inner image
    (up to 40 MP in a few kB), work for a thread, not the event loop."""
    return any(is_container(data) for item in parsed if not isinstance(item, Exception) for _, data in item[0])


def finish_parsed(predictor: Predictor, parsed: list, max_pixels: int) -> list:
    """open_parsed, then finish_requests (in a thread)."""
    return finish_requests(predictor, open_parsed(parsed, max_pixels))


def open_parsed(parsed: list, max_pixels: int) -> list:
    """parse_requests' requests with their images' headers read, nothing decoded (as open_requests)."""
    opened = []
    for item in parsed:
        if isinstance(item, Exception):
            opened.append(item)
            continue
        try:
            blobs, topk = item
            images = [(name, open_image(data, name)) for name, data in blobs]
            total = sum(image.width * image.height for _, image in images)
            if total > max_pixels:
                raise RequestError(413, f"the {len(images)} images hold {total / 1e6:.1f} megapixels together; "
                                        f"the limit per request is {max_pixels / 1e6:.0f}")
            opened.append((images, topk))
        except Exception as exc:  # noqa: BLE001 - it becomes this request's outcome
            opened.append(exc)
    return opened


def sizes(opened: list) -> tuple[int, int]:
    """(images, pixels) of open_requests' good requests."""
    images = [image for item in opened if not isinstance(item, Exception) for _, image in item[0]]
    return len(images), sum(image.width * image.height for image in images)


def model_seconds(predictor: Predictor, rows: int = 8) -> float:
    """The model's time per image in a batch of `rows` zeros: the best of 3 calls after a warm-up, so
    other work on the machine at start-up inflates it as little as possible."""
    spec = predictor.meta["input"]
    x = np.zeros((rows, spec["channels"], spec["size"], spec["size"]), np.float32)
    predictor.run(x)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        predictor.run(x)
        best = min(best, time.perf_counter() - started)
    return best / rows


def finish_requests(predictor: Predictor, opened: list) -> list:
    """open_requests' images decoded one at a time, each at once reduced to its small model input,
    then every good request's inputs in one onnxruntime call, split back."""
    outcomes, inputs, topks, names = [None] * len(opened), {}, {}, {}
    for i, item in enumerate(opened):
        if isinstance(item, Exception):
            outcomes[i] = item
            continue
        images, topks[i] = item
        try:
            arrays = []
            for j, (name, image) in enumerate(images):
                images[j] = (name, None)  # nothing keeps a decoded image beyond its own turn
                arrays.append(to_array(decode_image(image, name), predictor.meta))
                del image
            inputs[i], names[i] = np.concatenate(arrays), [name for name, _ in images]
        except Exception as exc:  # noqa: BLE001 - as in open_requests
            outcomes[i] = exc
    if inputs:
        topk = max(topks[i] for i in inputs)  # each request's top-k is a prefix of the batch's
        rows = iter(predictor.predict_rows(np.concatenate(list(inputs.values())), topk))
        for i, x in inputs.items():
            results = list(islice(rows, len(x)))
            bad = [name for name, r in zip(names[i], results) if r is None]
            outcomes[i] = non_finite(bad) if bad else [{**r, "topk": r["topk"][:topks[i]]} for r in results]
    return outcomes


def non_finite(names: list[str]) -> RequestError:
    """The model gave NaN or inf logits for these images (a raw body is named 'body'): a 422 of its
    own, noted in the log, never a JSON encoder's 500."""
    which = "the image" if names == ["body"] else ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    log.warning("convzoo: the model produced non-finite outputs (NaN or inf) for %s", which)
    return RequestError(422, f"the model produced non-finite outputs (NaN or inf) for {which}; "
                             "it cannot classify this input")


def query_topk(query: list[tuple[str, str]]) -> int | None:
    """The query's `topk`, None without one; `?topk=1&topk=5` (it silently meant 5) and any other parameter
    (`?topK=1` was ignored) are 422s."""
    unknown = [key for key, _ in query if key != "topk"]
    if unknown:
        raise unknown_names("query parameter", unknown, "in the URL; the only one is 'topk'")
    texts = [value for _, value in query]
    if len(texts) > 1:
        raise RequestError(422, f"topk is given {len(texts)} times in the query; give it once")
    return parse_topk(texts[0]) if texts else None


def one_topk(query: int | None, body: int | None, where: str) -> int:
    """The request's topk, from the query or the body; both is a 422 (`?topk=4` with a multipart or JSON
    topk of 1 silently meant 1)."""
    if query is not None and body is not None:
        raise RequestError(422, f"topk is given twice, as ?topk= in the query and as the {where}; give it once")
    return next((k for k in (body, query) if k is not None), DEFAULT_TOPK)


def parse_topk(text: str) -> int:
    """`?topk=`: digits only (no sign, exponent or 30-digit numbers to convert)."""
    return check_topk(int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else text)


def unknown_names(what: str, names: list[str], known: str) -> RequestError:
    """A 422 naming what the request sent that would otherwise be ignored (`topK` for `topk`)."""
    names = list(dict.fromkeys(names))
    listed = ", ".join(repr(name[:40]) for name in names[:5]) + (" ..." if len(names) > 5 else "")
    return RequestError(422, f"unknown {what}{'s' * (len(names) > 1)} {listed} {known}")


def check_topk(value) -> int:
    """An integer 1..MAX_TOPK (more than the classes means all of them); JSON must send a number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOPK:
        raise RequestError(422, f"topk must be an integer from 1 to {MAX_TOPK}, got {str(value)[:40]!r}")
    return value


async def read_body(receive, declared: str, limit: int) -> bytes | None:
    """An ASGI request body up to `limit` bytes (413 beyond it; UploadGate has checked Content-Length);
    None when the client disconnected. A body is read into one buffer (a list of chunks joined at the
    end spread each body over the heap in ~64 KiB pieces, and with hundreds of uploads at once the heap
    stayed fragmented: RSS hundreds of MB above its start once they ended), grown as bytes arrive: it was
    allocated, zero-filled, at the Content-Length before any came (with --max-upload-mb 1000, a 100-byte
    request head took 1 GB until its 408)."""
    size = int(declared) if declared.isdigit() and int(declared) <= limit else 0
    body, filled = bytearray(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        end = filled + len(chunk)
        if end > limit:
            raise RequestError(413, f"upload exceeds the {limit:,}-byte limit")
        if end > len(body) and size > end:  # doubled (few copies), never past the declared size nor
            body.extend(bytes(min(size, 2 * len(body)) - len(body)))  # twice what has arrived
        body[filled:end] = chunk  # within the buffer: in place; beyond it: it grows to fit
        filled = end
        if not message.get("more_body", False):
            del body[filled:]
            # Immutable bytes for the parsers (multipart, JSON, Pillow): one copy, held only until the
            # buffer is freed on return, so a body peaks at twice its size for that moment.
            return bytes(body)


async def read_limited(request: Request, limit: int) -> bytes:
    body = await read_body(request.receive, request.headers.get("content-length", ""), limit)
    if body is None:
        raise ClientDisconnect()
    return body


async def from_multipart(request: Request, body: bytes) -> tuple[list[tuple[str, bytes]], str | None]:
    """The uploaded files as (name, bytes), and the `topk` field's text (None without one)."""
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_BATCH, max_fields=MAX_BATCH)
    except Exception as exc:  # malformed multipart bodies raise parser-specific errors
        raise RequestError(422, f"malformed multipart body ({str(getattr(exc, 'detail', exc))[:200]})") from None
    try:
        parts = form.multi_items()
        misnamed = [k for k, v in parts if hasattr(v, "read") and k not in ("file", "topk")]
        if misnamed:  # `-F image=@x.png` was read as if it were `file`: the field name counts, as a text field's does
            raise unknown_names("multipart file field", misnamed, "(send each image in a field named 'file')")
        files = [((v.filename or k)[:100], await v.read()) for k, v in parts if k == "file" and hasattr(v, "read")]
        texts = [k for k, v in parts if not hasattr(v, "read")]
        topks = form.getlist("topk")
    finally:
        await form.close()
    if not files:
        if "file" in texts:  # curl -F 'file=<x.png' (the file's bytes as text) instead of -F 'file=@x.png'
            raise RequestError(422, "the multipart field 'file' holds text, not a file upload (curl: -F "
                                    "'file=@image.png', with @)")
        if not parts:  # nothing could be read as a part: not "no file", which sends the client to the field name
            raise RequestError(422, "malformed multipart body (" + ("no part could be read: each begins with "
                                    "--BOUNDARY and CRLF-ended header lines" if closed_multipart(request, body)
                                    else "it never ends: no closing boundary") + ")")
        raise RequestError(422, "no file in the multipart body (send the image in a field named 'file')")
    unknown = [name for name in texts if name != "topk"]
    if unknown:  # `-F topK=1` was ignored without a word
        raise unknown_names("multipart field", unknown, "(text, not a file); the only text field is 'topk'")
    if len(topks) > 1:
        raise RequestError(422, f"the multipart field 'topk' is given {len(topks)} times; give it once")
    topk = topks[0] if topks else None
    if topk is not None and not isinstance(topk, str):  # a file sent as `topk`
        raise RequestError(422, "the multipart field 'topk' must be a number, not a file")
    return files, topk


def closed_multipart(request: Request, body: bytes) -> bool:
    """Whether the body holds its closing delimiter (--BOUNDARY--); the parser reads one cut short as
    a form with no parts, which is no reason to tell the client it sent no file."""
    from email.message import Message

    header = Message()
    header["content-type"] = request.headers.get("content-type", "")
    boundary = header.get_param("boundary")
    return isinstance(boundary, str) and b"--" + boundary.encode("latin-1", "replace") + b"--" in body


JSON_KEYS = ("images", "topk")


def distinct_keys(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object_pairs_hook: a key given twice is a 422 (`"topk": 1, "topk": 5` silently meant 5)."""
    problem = repeated_key(pairs)
    if problem:
        raise RequestError(422, problem)
    return dict(pairs)


def from_json(body: bytes, topk: int | None) -> tuple[list[tuple[str, bytes]], int]:
    """The images and topk of a JSON body; `topk`: the query's (None without one)."""
    usage = 'JSON body must be {"images": ["<base64>", ...], "topk": 3}'
    try:
        payload = json.loads(body, object_pairs_hook=distinct_keys)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested deeper than Python recurses
        raise RequestError(422, f"body is not valid JSON; {usage}") from None
    unknown = [key for key in payload if key not in JSON_KEYS] if isinstance(payload, dict) else []
    if unknown:  # `"topK": 5` or `"top_k"` was ignored without a word
        raise unknown_names("key", unknown, "in the JSON body; the keys are 'images' and 'topk'")
    encoded = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(encoded, list) or not all(isinstance(e, str) for e in encoded):
        raise RequestError(422, usage)
    topk = one_topk(topk, check_topk(payload["topk"]) if "topk" in payload else None, "JSON key 'topk'")
    if not 1 <= len(encoded) <= MAX_BATCH:
        raise RequestError(422, f"send between 1 and {MAX_BATCH} images, got {len(encoded)}")
    images = []
    for i, text in enumerate(encoded):
        if text.startswith("data:"):
            text = text.split(",", 1)[-1]
        if any(c in text for c in "\n\r \t"):  # MIME base64 (the `base64` tool's default) breaks lines every 76
            text = "".join(text.split())
        try:
            images.append((f"images[{i}]", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(422, f"images[{i}] is not valid base64") from None
    return images, topk


def serve(model_path, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1, **settings) -> int:
    """Load the model and bind the port here, so either failing is one line (ConvzooError) before
    uvicorn starts; with workers > 1 each worker process loads the model again and has its own
    batcher (the settings, create_app's keywords, travel in a file named in the environment; it lasts
    as long as this call, so a replaced worker reads it too) and, on Linux, its own
    socket (workers.py). The exit status: 0 once stopped, 2 when a worker could not start."""
    import os

    from .protocol import GuardedHttpToolsProtocol  # noqa: F401 - reads CONVZOO_*_TIMEOUT: a bad one is one line here

    with contextlib.ExitStack() as cleanup:  # the settings file deleted and its variable unset on every way out
        if workers == 1:
            app = create_app(model_path, **settings)
        else:
            # fail here, once, not in every worker
            Predictor(model_path, runtime=settings.get("runtime", "auto"), describe=settings.get("describe"))
            settings_file = cleanup.enter_context(tempfile.NamedTemporaryFile("w", prefix="convzoo-serve-",
                                                                              suffix=".json"))
            json.dump({"model_path": str(model_path), **settings}, settings_file)
            settings_file.flush()
            os.environ[SETTINGS_ENV] = settings_file.name
            cleanup.callback(os.environ.pop, SETTINGS_ENV, None)
        return run_server(app if workers == 1 else None, model_path, host, port, workers, settings)


def run_server(app, model_path, host: str, port: int, workers: int, settings: dict) -> int:
    """Bind the port (a socket per worker where the kernel balances them) and run uvicorn until stopped."""
    import uvicorn

    from . import workers as worker_processes
    from .protocol import GuardedHttpToolsProtocol

    balanced = workers > 1 and worker_processes.balanced()
    sockets = worker_processes.bind_each(host, port, workers) if balanced else [worker_processes.listen(host, port)]
    port = sockets[0].getsockname()[1]  # the real one when asked for 0
    window = settings.get("batch_window_ms", BATCH_WINDOW_MS)
    batching = (f"batching {window:g} ms, up to {settings.get('max_batch', MAX_BATCH_REQUESTS)} requests"
                if window > 0 else "batching off")
    print(f"convzoo serve: {model_path} on http://{worker_processes.shown(host)}:{port}/ (API docs at /docs), "
          f"{workers} worker(s), {batching}", flush=True)
    # http=: uvicorn's httptools protocol with a cap on the request head and timeouts (protocol.py);
    # idle kept-alive connections close after timeout_keep_alive.
    options = dict(http=GuardedHttpToolsProtocol, timeout_keep_alive=KEEP_ALIVE_TIMEOUT, log_level="warning")
    try:
        if balanced:
            return worker_processes.run(app_from_environment, options, sockets)
        if workers == 1:
            uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=sockets)
        else:  # uvicorn's public way to run workers on a socket we bound: its file descriptor
            uvicorn.run("convzoo.deploy.server:app_from_environment", factory=True, fd=sockets[0].fileno(),
                        workers=workers, **options)
        return 0
    finally:
        for sock in sockets:
            sock.close()


def app_from_environment() -> FastAPI:
    import os

    return create_app(**json.loads(Path(os.environ[SETTINGS_ENV]).read_text()))
