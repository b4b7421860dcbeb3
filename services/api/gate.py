"""The API's gate: one pure-ASGI middleware every HTTP request passes before and after routing.

Invariants:
- A request to a non-public path is authenticated (bearer token header -> known, non-revoked token)
  before a byte of its body is read; the principal rides in `scope["state"]` for the routes.
- A body is limited by path (`body_limits`, exact paths or prefixes ending in '/', else `default_limit`): a declared Content-Length over the
  limit is refused (413) before the app runs; a streamed body is counted as it is read, and the read
  that crosses the limit raises a 413 into the route, so no more than the limit is ever buffered.
- Every mutating request is audited whatever its outcome (refused before routing, 4xx, 413, 500),
  and the row is written before the answer leaves, so a client that saw the answer finds the row.
- An exception no handler turned into an answer becomes 500 {"detail": "internal error (ref <id>)"};
  the details go to the server log under the same ref, never to the client.
- Every answer carries the request id (`X-Request-Id`: the client's if well-formed, else a new one)
  and browser hardening headers (nosniff, a Content-Security-Policy, no framing).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from data.schema import CONTROL_CHARS
from services.auth import Principal

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
CONTROL = re.compile(f"[{CONTROL_CHARS}]")  # C0, DEL and C1: never in an id or a route: refused before any route sees it
# What a browser may load for our pages: our own scripts, styles and images (and blob: images, the
# dashboard's camera frames); no inline script, no framing.
CSP = ("default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
# Swagger UI's page is FastAPI's, with one inline bootstrap script and no untrusted text in it.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class Gate:
    """`authenticate(token) -> Principal | None` and `audit(entry)` are blocking (database) calls,
    run in the thread pool; `public` paths (exact) and `public_prefixes` need no token."""

    def __init__(self, app: ASGIApp, *, authenticate: Callable[[str], Principal | None],
                 audit: Callable[[dict], None], default_limit: int, body_limits: dict[str, int] | None = None,
                 public: frozenset[str], public_prefixes: tuple[str, ...] = (),
                 docs: frozenset[str] = frozenset()) -> None:
        self.app, self.authenticate, self.audit = app, authenticate, audit
        self.default_limit, self.body_limits = default_limit, body_limits or {}
        self.public, self.public_prefixes, self.docs = public, public_prefixes, docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        rid = given if REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        method, path = scope["method"], scope["path"]
        answered = False
        downstream_failed = False

        async def answer(message: Message) -> None:
            nonlocal answered, downstream_failed
            if message["type"] == "http.response.start":
                answered = True
                if method in MUTATING:
                    await self._audit(scope, rid, message["status"])
                extra = [(b"x-request-id", rid.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
                if not any(k.lower() == b"content-security-policy" for k, _ in message.get("headers", [])):
                    extra.append((b"content-security-policy", (DOCS_CSP if path in self.docs else CSP).encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            try:
                await send(message)
            except BaseException:
                downstream_failed = True
                raise

        try:
            if CONTROL.search(path):  # e.g. a NUL, which PostgreSQL's text columns refuse with an error
                await _json(answer, 400, {"detail": "the request path contains a control character"})
                return
            if not self._is_public(path):
                refusal = await self._authenticate(headers, state)
                if refusal is not None:
                    await _json(answer, *refusal)
                    return
            limit = self._limit(path)
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await _json(answer, 413 if declared.isdigit() else 400,
                            {"detail": f"request body larger than {limit} bytes" if declared.isdigit()
                             else "malformed Content-Length"})
                return
            await self.app(scope, _limited(receive, limit), answer)
        except Exception:
            if downstream_failed:  # the body limiter's own signal, or a client that went away
                raise
            log.exception("internal error (ref %s) on %s %s", rid, method, path)
            if not answered:
                await _json(answer, 500, {"detail": f"internal error (ref {rid})"})

    def _limit(self, path: str) -> int:
        if path in self.body_limits:
            return self.body_limits[path]
        return next((v for k, v in self.body_limits.items() if k.endswith("/") and path.startswith(k)),
                    self.default_limit)

    def _is_public(self, path: str) -> bool:
        return path in self.public or path.startswith(self.public_prefixes)

    async def _authenticate(self, headers: Headers, state: dict) -> tuple[int, dict, dict] | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        challenge = {"www-authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not token:
            return 401, {"detail": "missing bearer token"}, challenge
        p = await run_in_threadpool(self.authenticate, token)
        if p is None:
            return 401, {"detail": "unknown or revoked token"}, challenge
        state["principal"] = p
        return None

    async def _audit(self, scope: Scope, rid: str, status: int) -> None:
        p: Principal | None = scope["state"].get("principal")
        route = getattr(scope.get("route"), "path", None) or _printable(scope["path"])
        entry = {"actor": p.name if p else "anonymous", "role": str(p.role) if p else "-",
                 "action": f"{scope['method']} {route}"[:256], "status": status,
                 "detail": {"path": _printable(scope["path"])[:1024], "request_id": rid,
                            "client": scope["client"][0] if scope.get("client") else None,
                            **scope["state"].get("audit", {})}}  # what a route adds (e.g. a deployment's β)
        try:
            await run_in_threadpool(self.audit, entry)
        except Exception:  # the audit write must not turn a done change into an error
            log.exception("audit write failed (ref %s)", rid)


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def read() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:  # FastAPI lets its own HTTPException through body parsing: a JSON 413
                raise HTTPException(413, f"request body larger than {limit} bytes")
        return message

    return read


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


async def _json(send: Callable[[Message], Awaitable[None]], status: int, body: dict,
                headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *((k.encode(), v.encode()) for k, v in (headers or {}).items())]})
    await send({"type": "http.response.body", "body": data})


class RedactTokens(logging.Filter):
    """Uvicorn's access log line carries the query string: a token put there by a client is masked."""

    SECRET = re.compile(r"((?:^|[?&;])(?:token|access_token|api_key|apikey|key|auth)=)[^&;\s]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.SECRET.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True
