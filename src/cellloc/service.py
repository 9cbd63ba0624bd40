"""The prediction service: upload a field's channel files, get its cells and their classes.

A FastAPI app (``create_app``) served by uvicorn (``python src/serve.py``):

- ``POST /predict``: the channel files as multipart fields named after the task's channels (or
  one multi-page TIFF named ``image``) -> JSON: field size, per cell its id, bounding box, area,
  per-class scores and top classes (``?masks=true`` adds each cell's mask in the submission's
  RLE encoding, ``?overlay=true`` the overlay picture as base64 PNG).
- ``POST /overlay``: the same upload -> the overlay PNG (cells outlined in their top class's
  colour, with a legend).
- ``GET /health``: 200 with what is loaded once the model is ready, 503 before.
- ``GET /``: the upload page; ``GET /docs``: the interactive API docs (served locally).

Why the overlay comes back with the upload and not from a later ``GET /results/{id}``: a GET
needs the server to keep a picture of the user's field after the request ends, which is the
one thing it must not do with unpublished data, and it breaks as soon as two replicas sit
behind a load balancer (the GET lands on the other one). Every answer here is a pure function
of its request, so replicas need no shared state.

Load: a field goes through the pipeline in a thread pool of ``workers`` threads, never on the
event loop; at most ``workers + queue`` requests are admitted at once (reading, waiting or
running), and the next one gets 503 with ``Retry-After`` at once, so memory is bounded by the
admitted requests' uploads and fields whatever the number of clients. Uploads are read into
memory while counting bytes (:mod:`cellloc.uploads`): nothing is written to disk.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
# (``request: Request``) at definition time, and ``Request`` is imported inside create_app so
# that importing this module needs no web packages.
import asyncio
import base64
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import opt
from .errors import InputError
from .fieldio import encode_png
from .render import class_colours, class_overlay
from .runtime import AUTO, RUNTIME_HELP, runtime_choices
from .service_model import FieldPrediction, ServiceModel
from .tasks import TASKS, get_task
from .uploads import STACK_FIELD, MultipartCollector, Part, UploadError, UploadLimits, field_from_parts

log = logging.getLogger("cellloc.service")
WEB_DIR = Path(__file__).parent / "web"


@dataclass
class ServiceConfig:
    """Options of ``python src/serve.py``."""

    models: str = opt("", "training run folder (models/<run>); empty: segmentation only, cells without classes")
    image_models: str = opt("", "cell models: an image-level run of the same task whose field score each cell is blended with")
    task: str = opt("hpa-sc", "task: its channel files, classes and level", choices=TASKS.names())
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = opt(8000, "port to listen on")
    device: str = opt("cpu", "torch device for the classifier (cpu, cuda)")
    runtime: str = opt(AUTO, RUNTIME_HELP, choices=runtime_choices())
    tta: int = opt(1, "dihedral views averaged per crop", choices=[1, 2, 4, 8])
    workers: int = opt(1, "fields predicted at once (threads; torch already uses every core for one)")
    queue: int = opt(4, "requests that may wait for a worker; past workers + queue a request gets 503 with Retry-After")
    max_upload_mb: float = opt(64.0, "largest request body in MiB (413, enforced while reading)")
    max_pixels: int = opt(6144 * 6144, "largest channel image, width x height (413, read from the header before decoding)")
    top_k: int = opt(3, "top classes listed per cell and for the field")
    overlay_side: int = opt(1024, "longer side of the overlay picture, pixels (the field is shrunk to fit)")
    log_level: str = opt("info", "uvicorn log level", choices=["critical", "error", "warning", "info", "debug"])

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue < 0:
            raise ValueError("--workers must be >= 1 and --queue >= 0")
        if self.max_upload_mb <= 0 or self.max_pixels < 1:
            raise ValueError("--max-upload-mb and --max-pixels must be positive")
        if self.top_k < 1 or self.overlay_side < 16:
            raise ValueError("--top-k must be >= 1 and --overlay-side >= 16")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")

    @property
    def limits(self) -> UploadLimits:
        return UploadLimits(max_bytes=int(self.max_upload_mb * 2**20), max_pixels=int(self.max_pixels))


# --------------------------------------------------------------------------- answers (pure functions)


def top_classes(scores: np.ndarray, names: tuple[str, ...], k: int) -> list[dict]:
    """The ``k`` highest scores of one (n_classes,) vector as ``[{class, name, score}]``, best first."""
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"class": int(c), "name": names[c], "score": round(float(scores[c]), 4)} for c in order]


def cells_json(pred: FieldPrediction, names: tuple[str, ...], top_k: int, masks: bool = False) -> list[dict]:
    """One object per cell of a prediction (see the module docstring); scores align with ``names``."""
    from .submission import encode_field

    t = pred.table
    ids = [int(c) for c in t["cell_id"]]
    rles = encode_field(pred.cells, ids) if masks and ids else {}
    out = []
    for i, r in enumerate(t.itertuples(index=False)):
        cell = {"id": int(r.cell_id), "bbox": [int(r.x0), int(r.y0), int(r.x1), int(r.y1)], "area": int(r.area),
                "centroid": [float(r.centroid_x), float(r.centroid_y)], "nucleus_area": int(r.nucleus_area),
                "edge": bool(r.edge), "scores": None, "top": []}
        if pred.cell_scores is not None:
            s = pred.cell_scores[i]
            cell["scores"] = [round(float(v), 4) for v in s]
            cell["top"] = top_classes(s, names, top_k)
        if masks:
            cell["mask"] = rles[int(r.cell_id)]
        out.append(cell)
    return out


def overlay_png(image: np.ndarray, pred: FieldPrediction, model: ServiceModel, max_side: int) -> tuple[bytes, float]:
    """(PNG bytes of the class overlay, its scale in overlay pixels per field pixel)."""
    top = (np.argmax(pred.cell_scores, axis=1) if pred.cell_scores is not None and len(pred.table)
           else np.full(len(pred.table), -1))
    rgb = class_overlay(image, pred.cells, pred.table["cell_id"].to_numpy(), top, model.class_names,
                        model.channels, max_side=max_side)
    return encode_png(rgb, compression=3), min(1.0, max_side / max(pred.cells.shape))


def predict_upload(parts: dict[str, Part], model: ServiceModel, cfg: ServiceConfig,
                   masks: bool = False, overlay: bool = False) -> dict:
    """A request's parts -> its JSON answer (runs in a worker thread; raises UploadError/InputError)."""
    t0 = time.perf_counter()
    image = field_from_parts(parts, model.channels, cfg.max_pixels)
    t1 = time.perf_counter()
    pred = model.predict(image)
    names = model.class_names
    h, w = image.shape[:2]
    field = {"width": w, "height": h, "channels": list(model.channels), "dtype": str(image.dtype),
             "n_cells": len(pred.table), "scores": None, "top": []}
    if pred.field_scores is not None:
        field["scores"] = [round(float(v), 4) for v in pred.field_scores]
        field["top"] = top_classes(pred.field_scores, names, cfg.top_k)
    answer = {"task": model.task.name, "level": model.level, "run": model.run, "classes": list(names),
              "field": field, "cells": cells_json(pred, names, cfg.top_k, masks)}
    if overlay:
        png, scale = overlay_png(image, pred, model, cfg.overlay_side)
        answer["overlay"] = {"png": base64.b64encode(png).decode("ascii"), "scale": scale}
    answer["seconds"] = {"decode": round(t1 - t0, 4), **{k: round(v, 4) for k, v in pred.seconds.items()},
                         "total": round(time.perf_counter() - t0, 4)}
    return answer


def overlay_upload(parts: dict[str, Part], model: ServiceModel, cfg: ServiceConfig) -> bytes:
    image = field_from_parts(parts, model.channels, cfg.max_pixels)
    return overlay_png(image, model.predict(image), model, cfg.overlay_side)[0]


# --------------------------------------------------------------------------- load control


class Admission:
    """At most ``workers`` fields in the pipeline at once and ``queue`` more admitted; 503 past that.

    A request is admitted before its body is read and leaves when its answer is made, so the
    memory held by uploads and fields is bounded by ``workers + queue`` requests.
    """

    def __init__(self, workers: int, queue: int) -> None:
        self.workers = workers
        self.capacity = workers + queue
        self.active = 0
        self._slots = asyncio.Semaphore(workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cellloc-predict")
        self._mean_seconds = 1.0  # running mean of one field's time, for Retry-After

    def enter(self) -> bool:
        if self.active >= self.capacity:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead divided among the workers."""
        return max(1, math.ceil(self._mean_seconds * self.active / self.workers))

    async def run(self, fn: Callable, *args):
        """``fn(*args)`` in a worker thread once one is free.

        The worker's place is given back when the thread finishes, not when the awaiting request
        goes away (a cancelled request cannot stop its thread), so at most ``workers`` fields are
        ever in the pipeline.
        """
        await self._slots.acquire()
        t0 = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

        def done(_) -> None:
            self._slots.release()
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - t0)

        future.add_done_callback(done)
        return await asyncio.shield(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ModelHolder:
    """The model, loaded once in a background thread so ``/health`` can answer 503 while it loads."""

    def __init__(self, load: Callable[[], ServiceModel], on_error: Callable[[str], None] | None = None) -> None:
        self.model: ServiceModel | None = None
        self.error: str | None = None
        self._load, self._on_error = load, on_error
        self._thread = threading.Thread(target=self._run, name="cellloc-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            self.model = self._load()
            log.info("model ready in %.1f s: %s", time.perf_counter() - t0, self.model.info())
        except Exception as exc:  # report any failure through /health and the callback, never a dead thread
            self.error = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.error)
            if self._on_error:
                self._on_error(self.error)


# --------------------------------------------------------------------------- the app


def _upload_schema(channels: tuple[str, ...]) -> dict:
    """OpenAPI request body of the upload endpoints (the parser is ours, so FastAPI cannot infer it)."""
    props = {c: {"type": "string", "format": "binary", "description": f"{c} channel (PNG, TIFF or JPEG, grey, 8 or 16 bit)"}
             for c in channels}
    props[STACK_FIELD] = {"type": "string", "format": "binary",
                          "description": f"instead of the channel files: one TIFF with {len(channels)} planes ({', '.join(channels)})"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": props}}}}}


ERRORS = {400: "missing, extra or duplicate field; malformed body", 413: "upload over the byte or pixel limit",
          415: "not multipart/form-data, or a file that is no PNG/TIFF/JPEG", 422: "corrupt file, channels of different sizes",
          503: "model still loading, or busy (see Retry-After)"}


def create_app(cfg: ServiceConfig, load: Callable[[], ServiceModel],
               on_load_error: Callable[[str], None] | None = None):
    """The FastAPI app; ``load`` builds the model (called once, in a background thread at startup)."""
    from contextlib import asynccontextmanager

    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    holder = ModelHolder(load, on_load_error)
    admission: Admission | None = None
    limits = cfg.limits
    channels = get_task(cfg.task).channels

    @asynccontextmanager
    async def lifespan(app):
        nonlocal admission
        admission = Admission(cfg.workers, cfg.queue)
        holder.start()
        yield
        admission.close()

    app = FastAPIOffline(title="cellloc", version="0.1.0", lifespan=lifespan, redoc_url=None,
                         description="Segment a microscopy field into cells and say where in each cell the protein is.")
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the service goes on")

    def ready() -> ServiceModel | JSONResponse:
        if holder.model is not None:
            return holder.model
        if holder.error:
            return error(503, f"model failed to load: {holder.error}")
        return error(503, "model still loading; retry shortly", {"Retry-After": "5"})

    async def upload_parts(request: Request) -> dict[str, Part]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise UploadError(413, f"request: {int(declared):,} bytes is over the upload limit of {limits.max_bytes:,} bytes")
        collector = MultipartCollector(request.headers.get("content-type"), limits.max_bytes, max_parts=len(channels) + 4)
        async for chunk in request.stream():
            collector.feed(chunk)
        return collector.close()

    async def handle(request: Request, fn: Callable, *args):
        model = ready()
        if isinstance(model, JSONResponse):
            return model
        assert admission is not None
        if not admission.enter():
            return error(503, f"busy: {admission.capacity} requests in progress; retry later",
                         {"Retry-After": str(admission.retry_after())})
        try:
            parts = await upload_parts(request)
            return await admission.run(fn, parts, model, cfg, *args)
        except ClientDisconnect:
            return error(400, "request: the client went away before its upload ended")
        except UploadError as exc:
            return error(exc.status, str(exc))
        except InputError as exc:
            return error(422, str(exc))
        finally:
            admission.leave()

    @app.post("/predict", summary="Cells of an uploaded field, with their class scores",
              openapi_extra=_upload_schema(channels), responses={k: {"description": v} for k, v in ERRORS.items()})
    async def predict(request: Request, masks: bool = False, overlay: bool = False):
        """Upload one field as its channel files (multipart fields named after the task's channels) or
        one multi-page TIFF named ``image``. ``masks``: add each cell's mask (COCO RLE, zlib, base64:
        the submission's encoding); ``overlay``: add the overlay picture (base64 PNG)."""
        out = await handle(request, predict_upload, masks, overlay)
        return out if isinstance(out, Response) else JSONResponse(out)

    @app.post("/overlay", summary="The overlay picture of an uploaded field (PNG)", openapi_extra=_upload_schema(channels),
              responses={200: {"content": {"image/png": {}}}, **{k: {"description": v} for k, v in ERRORS.items()}})
    async def overlay(request: Request):
        """Same upload as ``/predict``; answers the field with each cell outlined in its top class's colour and a legend."""
        out = await handle(request, overlay_upload)
        return out if isinstance(out, Response) else Response(out, media_type="image/png")

    @app.get("/health", summary="Readiness: 200 once the model is loaded, 503 before")
    async def health():
        model = ready()
        if isinstance(model, JSONResponse):
            return model
        names = model.class_names or get_task(cfg.task).label_set.names
        colours = ["#%02x%02x%02x" % tuple(int(v) for v in c) for c in class_colours(len(names))]
        busy = {"active": admission.active if admission else 0, "capacity": admission.capacity if admission else 0}
        return {"status": "ok", **model.info(), "colours": colours if model.class_names else [],
                "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "stack_field": STACK_FIELD},
                "load": busy}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    return app


def run_server(cfg: ServiceConfig, load: Callable[[], ServiceModel] | None = None) -> None:
    """Serve ``cfg`` with uvicorn until interrupted; a model that fails to load stops it with an InputError."""
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise InputError('the service needs its extra packages: pip install -e ".[serve]"') from None
    from .service_model import load_service_model

    if load is None:
        def load() -> ServiceModel:
            return load_service_model(cfg.models or None, cfg.task, cfg.device, cfg.tta,
                                      image_models=cfg.image_models or None, runtime=cfg.runtime)

    failed: list[str] = []
    server: uvicorn.Server | None = None

    def stop(message: str) -> None:
        failed.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(cfg, load, stop)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                           timeout_graceful_shutdown=10))
    server.run()
    if failed:
        raise InputError(f"{cfg.models or 'model'}: {failed[0]}")
    if not server.started:
        raise InputError(f"{cfg.host}:{cfg.port}: the server could not start (port in use?)")
