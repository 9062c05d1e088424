"""HTTP service: FastAPI + onnxruntime, a JSON API and a draw-a-digit page. Serving needs no torch.

Every bad request gets a 4xx JSON error and the server keeps serving; uploads are size-limited
before they are read, images are pixel-limited before they are decoded, and nothing from a request
is ever used as a file-system path.
"""

from __future__ import annotations

import base64
import binascii
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from .predict import Predictor
from .preprocess import ImageError, load_image

MAX_UPLOAD = 5 * 1024 * 1024
MAX_BATCH = 64


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(model_path, *, max_upload: int = MAX_UPLOAD, threads: int = 1) -> FastAPI:
    predictor = Predictor(model_path, threads=threads)
    checksum = predictor.sha256()
    page = resources.files("convzoo.deploy").joinpath("static/index.html").read_text()
    app = FastAPI(title="convzoo", description=f"Predictions from {predictor.meta['model']} "
                  f"({predictor.meta.get('dataset', '')})", version="1")

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

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
                "file": predictor.path.name, "max_upload_bytes": max_upload}

    @app.post("/v1/predict")
    async def predict(request: Request):
        """A multipart upload (field `file`), a raw image body (Content-Type image/*), or
        JSON {"images": [base64, ...], "topk": 3} for a batch."""
        body = await read_limited(request, max_upload)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            images, topk = await from_multipart(request, body), int(request.query_params.get("topk", 3))
        elif ctype.startswith("application/json"):
            images, topk = from_json(body)
        elif ctype.startswith("image/"):  # the raw image as the body: the cheapest single-image request
            images, topk = [("body", body)], int(request.query_params.get("topk", 3))
        else:
            raise RequestError(415, "send multipart/form-data (field 'file'), an image/* body or application/json, "
                                    f"not {ctype or 'nothing'!r}")
        decoded = [decode(data, name) for name, data in images]
        results = predictor.predict_images(decoded, topk=max(1, min(topk, len(predictor.classes))))
        if len(results) == 1 and not ctype.startswith("application/json"):
            return results[0]
        return {"predictions": results}

    return app


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
        raise RequestError(422, f"malformed multipart body ({exc})") from None
    files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
    if not files:
        raise RequestError(422, "no file in the multipart body (send the image in a field named 'file')")
    return files


def from_json(body: bytes) -> tuple[list[tuple[str, bytes]], int]:
    import json

    try:
        payload = json.loads(body)
        encoded = payload["images"]
        assert isinstance(encoded, list) and all(isinstance(e, str) for e in encoded)
        topk = int(payload.get("topk", 3))
    except (ValueError, KeyError, TypeError, AssertionError):
        raise RequestError(422, 'JSON body must be {"images": ["<base64>", ...], "topk": 3}') from None
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


def decode(data: bytes, name: str):
    try:
        return load_image(data, name)
    except ImageError as exc:
        text = str(exc)
        status = 415 if "not an image" in text else 413 if "megapixel" in text else 422
        raise RequestError(status, text) from None


def serve(model_path, host: str = "127.0.0.1", port: int = 8000, *, threads: int = 1, max_upload: int = MAX_UPLOAD,
          workers: int = 1):
    """Run uvicorn; with workers > 1 each worker process loads the model itself (from the environment)."""
    import os

    import uvicorn

    print(f"convzoo serve: {model_path} on http://{host}:{port}/ (API docs at /docs), {workers} worker(s)", flush=True)
    if workers == 1:
        uvicorn.run(create_app(model_path, threads=threads, max_upload=max_upload), host=host, port=port,
                    log_level="warning")
        return
    Predictor(model_path)  # fail here, once, with a clear error, not in every worker
    os.environ.update(CONVZOO_SERVE_MODEL=str(model_path), CONVZOO_SERVE_THREADS=str(threads),
                      CONVZOO_SERVE_MAX_UPLOAD=str(max_upload))
    uvicorn.run("convzoo.deploy.server:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


def app_from_environment() -> FastAPI:
    import os

    return create_app(os.environ["CONVZOO_SERVE_MODEL"], threads=int(os.environ["CONVZOO_SERVE_THREADS"]),
                      max_upload=int(os.environ["CONVZOO_SERVE_MAX_UPLOAD"]))
