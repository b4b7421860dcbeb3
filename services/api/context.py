"""What every request handler reaches through dependencies: the databases, the store, Redis and
the training queue (FastAPI's dependency style: no globals), and the caller's identity."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import redis
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from rq import Queue
from sqlalchemy import select

from data.catalog import Catalog
from data.store import EpisodeStore
from services.auth import Principal, Role, allowed, token_digest
from services.control import ControlDB
from services.control.models import ApiToken
from services.settings import ServiceSettings

if TYPE_CHECKING:
    from services.canary import GateKeeper


@dataclass
class AppContext:
    settings: ServiceSettings

    @cached_property
    def db(self) -> ControlDB:
        return ControlDB(self.settings.control_db_url)

    @cached_property
    def store(self) -> EpisodeStore:
        return EpisodeStore(self.settings.store_root)

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog.for_store(self.store, self.settings.catalog_url)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url)

    @cached_property
    def gates(self) -> "GateKeeper":
        """The canary gates' keeper: looks after episode registrations and labels, and in a thread."""
        from services.api.publish import publish_serving_state
        from services.canary import GateKeeper

        return GateKeeper(self.db, self.catalog, publish=lambda: publish_serving_state(self))

    @cached_property
    def queue(self) -> Queue:
        return Queue(self.settings.queue, connection=self.redis)


def ctx(request: Request) -> AppContext:
    return request.app.state.ctx


_bearer = HTTPBearer(auto_error=False, description="An API token (`recap tokens create`).")


def authenticate(c: AppContext, token: str) -> Principal | None:
    """The principal of a known, non-revoked token (the gate calls this before reading any body)."""
    with c.db.session() as s:
        t = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
        if t is None or t.revoked_at_ns is not None:
            return None
        return Principal(t.name, Role(t.role), t.robot_id)


def principal(request: Request, _: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """Who is calling: authenticated by the gate (services/api/gate.py) before routing; the bearer
    scheme is declared here so the OpenAPI document shows it."""
    p = getattr(request.state, "principal", None)
    if p is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return p


def require(action: str):
    """Dependency: the caller's role may perform `action` (services.auth.PERMISSIONS), else 403."""

    def check(p: Principal = Depends(principal)) -> Principal:
        if not allowed(p.role, action):
            raise HTTPException(403, f"role {p.role} may not {action}")
        return p

    check.__name__ = f"require_{action.replace('.', '_')}"
    return check


def now_ns() -> int:
    return time.time_ns()
