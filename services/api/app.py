"""The control-plane API (FastAPI): robots, episodes, training runs, policy versions, deployments,
tokens and the audit log, plus the dashboard page. Run it with uvicorn:

    recap serve api --host 127.0.0.1 --port 8000      # RECAP_HOME, RECAP_REDIS_URL, ...
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.api.context import AppContext
from services.api.publish import StateReconciler, publish_serving_state
from services.api.routers import audit, dashboard, deployments, episodes, robots, runs, tokens, versions
from services.auth import Role, token_digest
from services.control.models import ApiToken, AuditEntry
from services.settings import ServiceSettings

log = logging.getLogger(__name__)

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def bootstrap_admin(c: AppContext, token: str) -> None:
    """On a fresh control plane, the token in RECAP_BOOTSTRAP_ADMIN_TOKEN becomes the first admin."""
    with c.db.session() as s:
        if s.scalar(select(ApiToken).limit(1)) is None:
            s.add(ApiToken(name="admin", role=str(Role.ADMIN), token_sha256=token_digest(token),
                           created_at_ns=time.time_ns(), created_by="bootstrap"))
            log.info("bootstrap admin token installed")


def _record(c: AppContext, request: Request, status: int) -> None:
    p = getattr(request.state, "principal", None)
    route = request.scope.get("route")
    with c.db.session() as s:
        s.add(AuditEntry(at_ns=time.time_ns(), actor=p.name if p else "anonymous", role=str(p.role) if p else "-",
                         action=f"{request.method} {getattr(route, 'path', request.url.path)}", status=status,
                         detail={"path": request.url.path, "client": request.client.host if request.client else None}))


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings.from_env()
    c = AppContext(settings)
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await run_in_threadpool(_startup, c)
        reconciler = StateReconciler(c)  # heals a publish that was lost (Redis down, a crash)
        reconciler.start()
        try:
            yield
        finally:
            reconciler.stop()

    app = FastAPI(title="recap control plane", lifespan=lifespan,
                  description="Robots, episodes, training runs, policy versions and deployments of a RECAP loop. "
                              "Every call carries `Authorization: Bearer <token>`; what a role may do is in "
                              "services/auth.py.",
                  version="1")
    app.state.ctx = c
    for r in (tokens, robots, episodes, runs, versions, deployments, audit, dashboard):
        app.include_router(r.router)

    @app.middleware("http")
    async def audit_mutations(request: Request, call_next):
        response = await call_next(request)
        if request.method in MUTATING:
            try:
                await run_in_threadpool(_record, c, request, response.status_code)
            except Exception:  # the audit write must not turn a done change into an error
                log.exception("audit write failed")
        return response

    @app.exception_handler(IntegrityError)
    async def conflict(request: Request, exc: IntegrityError):
        """Two requests created the same row at once; the loser is told to retry, not a 500."""
        return JSONResponse({"detail": f"conflicting concurrent change, retry the request: {exc.orig}"},
                            status_code=409)

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


