"""HTTP service: FastAPI + onnxruntime, a JSON API and a draw-a-digit page. Serving needs no torch.

Every bad request gets a 4xx JSON error and the server keeps serving; uploads are size-limited
before they are read, images are pixel-limited (each, and all of a request's together) before they
are decoded, and nothing from a request is ever used as a file-system path. Decoding and inference
run in worker threads, at most BUSY requests at a time, one image at a time: the event loop stays
free for /healthz and memory stays bounded however many large requests arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
from importlib import resources

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from ..errors import ConfigError
from .predict import Predictor
from .preprocess import ImageError, ImageTooLarge, NotAnImage, decode_image, open_image, to_array

MAX_UPLOAD = 5 * 1024 * 1024
MAX_BATCH = 64
MAX_REQUEST_PIXELS = 64_000_000  # width*height summed over a request's images, read from their headers
MAX_TOPK = 1000
BUSY = 2  # requests decoding or inferring at once; later ones wait on the event loop, not in a thread

log = logging.getLogger("uvicorn.error")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(model_path, *, max_upload: int = MAX_UPLOAD, threads: int = 1,
               max_pixels: int = MAX_REQUEST_PIXELS, busy: int = BUSY) -> FastAPI:
    predictor = Predictor(model_path, threads=threads)
    checksum = predictor.sha256()
    page = resources.files("convzoo.deploy").joinpath("static/index.html").read_text()
    limiter = anyio.CapacityLimiter(busy)
    app = FastAPI(title="convzoo", description=f"Predictions from {predictor.meta['model']} "
                  f"({predictor.meta.get('dataset', '')})", version="1")
    app.add_middleware(LastResort)

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(ImageError)
    async def image_error(request, exc: ImageError):
        status = 415 if isinstance(exc, NotAnImage) else 413 if isinstance(exc, ImageTooLarge) else 422
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(HTTPException)  # 404, 405, ...: the same {"error": ...} shape as ours
    async def http_error(request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info():
        meta = predictor.meta
        return {"name": meta["model"], "dataset": meta.get("dataset"), "classes": meta["class_names"],
                "input": meta["input"], "preprocess": meta.get("preprocess"), "sha256": checksum,
                "file": predictor.path.name, "max_upload_bytes": max_upload, "max_batch": MAX_BATCH,
                "max_request_pixels": max_pixels}

    @app.post("/v1/predict")
    async def predict(request: Request):
        """A multipart upload (field `file`), a raw image body (Content-Type image/*), or
        JSON {"images": [base64, ...], "topk": 3} for a batch; `?topk=` for the first two."""
        body = await read_limited(request, max_upload)
        ctype = request.headers.get("content-type", "").lower()
        topk = parse_topk(request.query_params.get("topk", "3"))
        if ctype.startswith("multipart/form-data"):
            images = await from_multipart(request, body)
        elif ctype.startswith("application/json"):
            images = None  # parsed in the worker thread: a 5 MB body is not the event loop's work
        elif ctype.startswith("image/"):  # the raw image as the body: the cheapest single-image request
            images = [("body", body)]
        else:
            raise RequestError(415, "send multipart/form-data (field 'file'), an image/* body or application/json, "
                                    f"not {ctype[:80] or 'nothing'!r}")

        def work():
            blobs, k = from_json(body, topk) if images is None else (images, topk)
            return predict_blobs(predictor, blobs, k, max_pixels)

        results = await anyio.to_thread.run_sync(work, limiter=limiter)
        if len(results) == 1 and images is not None:
            return results[0]
        return {"predictions": results}

    return app


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
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await JSONResponse({"error": "internal error (a bug in convzoo: see the server log)"},
                               status_code=500)(scope, receive, send)


def predict_blobs(predictor: Predictor, blobs: list[tuple[str, bytes]], topk: int, max_pixels: int) -> list[dict]:
    """In a worker thread: every header first (each image and the request's pixel budget), then one
    image at a time, decoded and at once reduced to its small model input."""
    opened = [open_image(data, name) for name, data in blobs]
    total = sum(im.width * im.height for im in opened)
    if total > max_pixels:
        raise RequestError(413, f"the {len(opened)} images hold {total / 1e6:.1f} megapixels together; "
                                f"the limit per request is {max_pixels / 1e6:.0f}")
    arrays = []
    for i, (name, _) in enumerate(blobs):
        image, opened[i] = opened[i], None  # nothing keeps a decoded image beyond its own turn
        arrays.append(to_array(decode_image(image, name), predictor.meta))
        del image
    return predictor.predict_arrays(np.concatenate(arrays), topk)


def parse_topk(text: str) -> int:
    """`?topk=`: digits only (no sign, exponent or 30-digit numbers to convert)."""
    return check_topk(int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else text)


def check_topk(value) -> int:
    """An integer 1..MAX_TOPK (more than the classes means all of them); JSON must send a number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOPK:
        raise RequestError(422, f"topk must be an integer from 1 to {MAX_TOPK}, got {str(value)[:40]!r}")
    return value


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"upload of {int(declared):,} bytes exceeds the {limit:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"upload exceeds the {limit:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def from_multipart(request: Request, body: bytes) -> list[tuple[str, bytes]]:
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_BATCH, max_fields=MAX_BATCH)
    except Exception as exc:  # malformed multipart bodies raise parser-specific errors
        raise RequestError(422, f"malformed multipart body ({str(getattr(exc, 'detail', exc))[:200]})") from None
    try:
        files = [((v.filename or k)[:100], await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
    finally:
        await form.close()
    if not files:
        raise RequestError(422, "no file in the multipart body (send the image in a field named 'file')")
    return files


def from_json(body: bytes, topk: int) -> tuple[list[tuple[str, bytes]], int]:
    usage = 'JSON body must be {"images": ["<base64>", ...], "topk": 3}'
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested deeper than Python recurses
        raise RequestError(422, f"body is not valid JSON; {usage}") from None
    encoded = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(encoded, list) or not all(isinstance(e, str) for e in encoded):
        raise RequestError(422, usage)
    if "topk" in payload:
        topk = check_topk(payload["topk"])
    if not 1 <= len(encoded) <= MAX_BATCH:
        raise RequestError(422, f"send between 1 and {MAX_BATCH} images, got {len(encoded)}")
    images = []
    for i, text in enumerate(encoded):
        if text.startswith("data:"):
            text = text.split(",", 1)[-1]
        try:
            images.append((f"images[{i}]", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(422, f"images[{i}] is not valid base64") from None
    return images, topk


def serve(model_path, host: str = "127.0.0.1", port: int = 8000, *, threads: int = 1, max_upload: int = MAX_UPLOAD,
          workers: int = 1):
    """Load the model and bind the port here, so either failing is one line (ConvzooError) before
    uvicorn starts; with workers > 1 each worker process loads the model again (from the environment)."""
    import os

    import uvicorn

    if workers == 1:
        target, factory = create_app(model_path, threads=threads, max_upload=max_upload), False
    else:
        Predictor(model_path)  # fail here, once, with a clear error, not in every worker
        os.environ.update(CONVZOO_SERVE_MODEL=str(model_path), CONVZOO_SERVE_THREADS=str(threads),
                          CONVZOO_SERVE_MAX_UPLOAD=str(max_upload))
        target, factory = "convzoo.deploy.server:app_from_environment", True
    sock = bind(host, port)
    port = sock.getsockname()[1]  # the real one when asked for 0
    shown = f"[{host}]" if ":" in host else host
    print(f"convzoo serve: {model_path} on http://{shown}:{port}/ (API docs at /docs), {workers} worker(s)", flush=True)
    config = uvicorn.Config(target, factory=factory, host=host, port=port, workers=workers, log_level="warning")
    try:
        if workers == 1:
            uvicorn.Server(config).run(sockets=[sock])
        else:  # uvicorn's public way to run workers on a socket we bound: its file descriptor
            uvicorn.run(target, factory=factory, fd=sock.fileno(), workers=workers, log_level="warning")
    finally:
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A socket bound the way uvicorn binds one; a busy port or unknown host is a ConfigError."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:  # also socket.gaierror for a host that does not resolve
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)  # connections queue from now on, while uvicorn starts (it listens again, same socket)
    sock.set_inheritable(True)
    return sock


def app_from_environment() -> FastAPI:
    import os

    return create_app(os.environ["CONVZOO_SERVE_MODEL"], threads=int(os.environ["CONVZOO_SERVE_THREADS"]),
                      max_upload=int(os.environ["CONVZOO_SERVE_MAX_UPLOAD"]))
