"""The ASGI app: the page (``/``, ``/batch``), its result panel (``/ui/case``) and the REST
API under ``/api/v1``. Models load once, at start (``readyz`` says when); every error is
problem+json; each request is logged on one structured line without patient data."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from neurosono import __version__
from neurosono.pipeline.predict import Prediction
from neurosono.serve.case_view import render_case, templates
from neurosono.serve.engine import RETRY_AFTER_S, Engine
from neurosono.serve.problems import ProblemBody, ProblemError, problem_response, problem_responses
from neurosono.serve.settings import ServeSettings
from neurosono.serve.uploads import read_case

ACCESS_LOG = logging.getLogger("neurosono.serve.access")
SERVER_LOG = logging.getLogger("neurosono.serve")
API = "/api/v1"
PROTECTED = (f"{API}/predict", f"{API}/models", "/ui/")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The page loads nothing from outside: the browser enforces it.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CASE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "tv": {"type": "string", "format": "binary", "description": "the TV image"},
                    "tc": {"type": "string", "format": "binary", "description": "the TC image"},
                    "ga_weeks": {"type": "string", "description": "gestational age: 21.4 or 21+3"},
                    "spacing_mm": {
                        "type": "string",
                        "description": "mm per pixel, for images that carry no spacing",
                    },
                    "frame": {"type": "string", "description": "frame of a multi-frame DICOM (0-based)"},
                },
                "description": "at least one of tv and tc (PNG, JPEG, BMP, TIFF or DICOM)",
            }
        }
    },
}
CASE_ERRORS = (400, 401, 413, 415, 422, 503, 504)


def create_app(settings: ServeSettings | None = None, engine: Engine | None = None) -> FastAPI:
    """The app for ``settings``; ``engine`` given (tests, embedding) or loaded at start."""
    settings = settings or ServeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = None
        if app.state.engine is None:  # an engine passed in belongs to the caller, who closes it
            loader = asyncio.create_task(_load(app, settings))
        yield
        if loader is not None:
            if not loader.done():
                loader.cancel()
            elif app.state.engine is not None:
                await asyncio.to_thread(app.state.engine.close)

    app = FastAPI(
        title="neurosono",
        version=__version__,
        summary="Two-stage fetal neurosonography screening on TV and TC planes: research use only.",
        docs_url=None,  # the interactive docs pull scripts from a CDN; the schema is served instead
        redoc_url=None,
        openapi_url=f"{API}/openapi.json",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.load_error = None
    app.state.settings = settings
    app.mount("/static", StaticFiles(packages=[("neurosono.serve", "static")]), name="static")
    _handlers(app)
    _middleware(app, settings)
    _routes(app, settings)
    app.openapi = lambda: _openapi(app)
    return app


async def _load(app: FastAPI, settings: ServeSettings) -> None:
    started = time.perf_counter()
    try:
        app.state.engine = await asyncio.to_thread(Engine.load, settings)
    except Exception as exc:  # a model that cannot load: readyz says why, the server stays up
        app.state.load_error = f"{type(exc).__name__}: {exc}"
        SERVER_LOG.error(json.dumps({"event": "models_failed", "error": app.state.load_error}))
        return
    SERVER_LOG.info(
        json.dumps(
            {
                "event": "models_ready",
                "workers": settings.workers,
                "s": round(time.perf_counter() - started, 1),
            }
        )
    )


def _engine(request: Request) -> Engine:
    engine = request.app.state.engine
    if engine is None:
        error = request.app.state.load_error
        if error:
            raise ProblemError(503, f"the models could not be loaded ({error})")
        raise ProblemError(503, "the models are still loading", {"Retry-After": str(RETRY_AFTER_S)})
    return engine


def _handlers(app: FastAPI) -> None:
    def rid(request: Request) -> str | None:
        return getattr(request.state, "request_id", None)

    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, exc: ProblemError):
        return problem_response(exc.status, exc.detail, rid(request), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"{request.url.path}: no such page or endpoint"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(exc.status_code, detail, rid(request), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return problem_response(422, f"{where}: {first.get('msg', 'invalid')}", rid(request))

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception):
        SERVER_LOG.error(
            json.dumps({"event": "error", "request_id": rid(request), "error": type(exc).__name__}),
            exc_info=exc,
        )
        return problem_response(
            500, "internal error; the server log has it under this request id", rid(request)
        )


def _middleware(app: FastAPI, settings: ServeSettings) -> None:
    @app.middleware("http")
    async def around(request: Request, call_next):
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        started = time.perf_counter()
        path = request.url.path
        if settings.token is not None and path.startswith(PROTECTED) and not _authorised(request, settings):
            response = problem_response(
                401,
                "this server needs 'Authorization: Bearer TOKEN' (the token of its --token-file)",
                request.state.request_id,
                {"WWW-Authenticate": "Bearer"},
            )
        else:
            try:
                response = await call_next(request)
            except ProblemError as exc:  # raised outside a route (e.g. while the body streams)
                response = problem_response(exc.status, exc.detail, request.state.request_id, exc.headers)
        response.headers["X-Request-ID"] = request.state.request_id
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if path.startswith((API, "/ui/")):
            response.headers["Cache-Control"] = "no-store"  # results are about a patient
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers["Content-Security-Policy"] = PAGE_POLICY
        route = request.scope.get("route")
        ACCESS_LOG.info(
            json.dumps(
                {
                    "request_id": request.state.request_id,
                    "method": request.method,
                    "route": getattr(route, "path", None)
                    or ("/static" if path.startswith("/static/") else "-"),
                    "status": response.status_code,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                }
            )
        )
        return response


def _authorised(request: Request, settings: ServeSettings) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.token.encode())


def _page(request: Request, name: str, page: str) -> HTMLResponse:
    engine = request.app.state.engine
    model = (
        engine.info
        if engine
        else {
            "name": "loading",
            "neurosono_version": __version__,
            "runtime": "-",
            "notice": "models are loading; the page works once they are ready",
        }
    )
    html = (
        templates()
        .get_template(name)
        .render(
            title="One case" if page == "case" else "Batch",
            page=page,
            model=model,
            regions=engine.regions if engine else [],
            token_required=request.app.state.settings.token is not None,
        )
    )
    return HTMLResponse(html)


def _routes(app: FastAPI, settings: ServeSettings) -> None:
    limits = {"max_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels}

    @app.get("/", include_in_schema=False)
    async def case_page(request: Request) -> HTMLResponse:
        return _page(request, "index.html.j2", "case")

    @app.get("/batch", include_in_schema=False)
    async def batch_page(request: Request) -> HTMLResponse:
        return _page(request, "batch.html.j2", "batch")

    @app.post("/ui/case", include_in_schema=False)
    async def case_panel(request: Request) -> HTMLResponse:
        engine = _engine(request)
        upload = await read_case(request, **limits)
        html = await engine.run(
            lambda p: render_case(p.predict_loaded(upload.images, upload.ga_weeks), upload)
        )
        return HTMLResponse(html)

    @app.post(
        f"{API}/predict",
        response_model=Prediction,
        summary="P(abnormal), the decision, regions, attributions, biometry and warnings for one case",
        description="The same JSON as `neurosono predict --json`; `inputs.*.path` names the field.",
        openapi_extra={"requestBody": CASE_BODY},
        responses=problem_responses(*CASE_ERRORS),
    )
    async def predict(request: Request) -> JSONResponse:
        engine = _engine(request)
        upload = await read_case(request, **limits)
        result = await engine.run(lambda p: p.predict_loaded(upload.images, upload.ga_weeks))
        return JSONResponse(result.to_dict())

    @app.get(f"{API}/models", summary="The models this server runs", responses=problem_responses(401, 503))
    async def models(request: Request) -> dict:
        engine = _engine(request)
        info, meta = engine.info, engine.meta
        rule = meta.get("indeterminate")
        return {
            "name": info["name"],
            "neurosono_version": info["neurosono_version"],
            "runtime": info.get("runtime"),
            "trained_on": info.get("trained_on"),
            "notice": info["notice"],
            "files": {k: v for k, v in info.items() if k.endswith("_sha256")},
            "regions": engine.regions,
            "stage2_regions": list(meta["regions"]),
            "threshold": round(float(meta["threshold"]), 4),
            "min_support": rule["min_support"] if rule else None,
            "biometry": engine.has_biometry,
            "workers": engine.workers,
        }

    @app.get(f"{API}/healthz", summary="The server is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get(f"{API}/readyz", summary="The models are loaded", responses=problem_responses(503))
    async def readyz(request: Request) -> dict:
        engine = _engine(request)
        return {"status": "ready", "pending": engine.pending, "capacity": engine.capacity}


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["ProblemBody"] = (
            ProblemBody.model_json_schema()
        )
        app.openapi_schema = schema
    return app.openapi_schema
