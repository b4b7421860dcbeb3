"""The control-plane API (FastAPI): robots, episodes, training runs, policy versions, deployments,
tokens and the audit log, plus the dashboard page. Run it with uvicorn:

    recap serve api --host 127.0.0.1 --port 8000      # RECAP_HOME, RECAP_REDIS_URL, ...
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.api.context import AppContext, authenticate
from services.api.gate import Gate, RedactTokens
from services.api.publish import StateReconciler, publish_serving_state
from services.api.routers import audit, dashboard, deployments, episodes, live, review, robots, runs, tokens, versions
from services.auth import Role, token_digest
from services.control.models import ApiToken, AuditEntry
from services.settings import ServiceSettings

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 256 << 10  # every route but the upload (episodes.MAX_UPLOAD_BYTES): JSON documents are small
DOCS_ASSETS = "/docs-assets"  # Swagger UI served from the installed package: /docs works with no internet
PUBLIC = frozenset({"/", "/review", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
PUBLIC_PREFIXES = ("/static/", DOCS_ASSETS + "/")
# an absolute file-system path (/a/b or deeper) in an error message: only its last component is shown
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"():,]+/)+([^\s/'\"():,]+)")


def bootstrap_admin(c: AppContext, token: str) -> None:
    """On a fresh control plane, the token in RECAP_BOOTSTRAP_ADMIN_TOKEN becomes the first admin."""
    with c.db.session() as s:
        if s.scalar(select(ApiToken).limit(1)) is None:
            s.add(ApiToken(name="admin", role=str(Role.ADMIN), token_sha256=token_digest(token),
                           created_at_ns=time.time_ns(), created_by="bootstrap"))
            log.info("bootstrap admin token installed")


def _record(c: AppContext, entry: dict) -> None:
    with c.db.session() as s:
        s.add(AuditEntry(at_ns=time.time_ns(), **entry))


def public_message(text: str) -> str:
    """An error message as a client may see it: no absolute paths of this machine."""
    return ABSOLUTE_PATH.sub(r"\1", text)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings.from_env()
    c = AppContext(settings)
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await run_in_threadpool(_startup, c)
        reconciler = StateReconciler(c)  # heals a publish that was lost (Redis down, a crash)
        reconciler.start()
        c.gates.start()  # canary gates decide even when no request comes (services/canary.py)
        try:
            yield
        finally:
            c.gates.stop()
            reconciler.stop()

    app = FastAPIOffline(title="recap control plane", lifespan=lifespan, redoc_url=None, static_url=DOCS_ASSETS,
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Robots, episodes, training runs, policy versions and deployments of a RECAP loop. "
                                     "Every call carries `Authorization: Bearer <token>`; what a role may do is in "
                                     "services/auth.py.",
                         version="1")
    app.state.ctx = c
    for r in (tokens, robots, episodes, review, runs, versions, deployments, audit, live, dashboard):
        app.include_router(r.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC), name="static")

    app.add_middleware(Gate, authenticate=lambda token: authenticate(c, token), audit=lambda e: _record(c, e),
                       default_limit=JSON_BODY_LIMIT, body_limits={"/v1/episodes/upload": episodes.MAX_UPLOAD_BYTES,
                                                            "/v1/episodes/ingest/": episodes.MAX_CHUNK_BYTES},
                       public=PUBLIC, public_prefixes=PUBLIC_PREFIXES, docs=frozenset({"/docs"}))
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())

    @app.exception_handler(IntegrityError)
    async def conflict(request: Request, exc: IntegrityError):
        """Two requests created the same row at once; the loser is told to retry, not a 500."""
        log.info("integrity conflict (ref %s): %s", request.state.request_id, exc.orig)
        return JSONResponse({"detail": "conflicting concurrent change, retry the request"}, status_code=409)

    @app.exception_handler(redis.RedisError)
    async def queue_down(request: Request, exc: redis.RedisError):
        log.error("redis unavailable (ref %s): %s", request.state.request_id, exc)
        return JSONResponse({"detail": f"the job queue is unavailable, retry later (ref {request.state.request_id})"},
                            status_code=503)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException):
        detail = public_message(exc.detail) if isinstance(exc.detail, str) else exc.detail
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        return JSONResponse({"detail": f"{'.'.join(map(str, first['loc']))}: {first['msg']}", "errors": errors},
                            status_code=422)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"ok": True}

    return app


def _startup(c: AppContext) -> None:
    c.db  # migrate before the first request
    c.catalog
    token = os.environ.get("RECAP_BOOTSTRAP_ADMIN_TOKEN")
    if token:
        bootstrap_admin(c, token)
    publish_serving_state(c)  # servers starting later read the stored state


