"""The inference server (FastAPI under uvicorn): POST /v1/act and the /v1/stream WebSocket answer an
observation with an action chunk, the version that computed it and the server's timing; robot
tokens only; GET /v1/spec tells a robot what its version reads (the bridge learns `n_obs_steps`
there); Prometheus metrics at /metrics.

Invariants: the token is checked before any body is read (HTTP: the Authorization header; the
WebSocket: the handshake's, else closed with 1008), and a body never grows past the served policy's
limit in memory; a malformed body is a 4xx (400/413/422), never a 5xx or a WebSocket dropped without
a close frame; every answered action is finite and within the policy's envelope (guard.py); no token
appears in a log line.

    recap serve inference --port 8001        # RECAP_REDIS_URL, RECAP_CHANNEL as the API's
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import re
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from starlette.requests import ClientDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.inference.serving import MicroBatcher, StateWatcher
from data.wire import schemas
from services.inference.guard import NonFiniteActions
from services.inference.wire import (MSGPACK, WireError, decode_request, encode_answer, encode_error, is_msgpack,
                                     parse_observation)
from services.settings import ServiceSettings

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 32 << 20  # the cap on any act body, whatever the served policy's inputs

_SECRET = re.compile(r"(?i)(token=|bearer\s+)[^\s&\"']+|\brcp_[A-Za-z0-9_\-]+")


class RedactTokens(logging.Filter):
    """No token in any log line, wherever a client put it (a query string, a header echoed back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        red = _SECRET.sub(lambda m: (m.group(1) or "") + "[redacted]", msg)
        if red != msg:
            record.msg, record.args = red, ()
        return True


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.latency = Histogram("recap_inference_latency_seconds", "Server time per act request", ["version"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2))
        self.batch = Histogram("recap_inference_batch_size", "Requests per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64))
        self.infer = Histogram("recap_inference_model_seconds", "Model time per batched call", registry=self.registry,
                               buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5))
        self.requests = Counter("recap_inference_requests_total", "Act requests by version and status",
                                ["version", "status"], registry=self.registry)
        self.clipped = Counter("recap_inference_actions_clipped_total",
                               "Answers whose actions were clipped to the policy's action range", ["version"],
                               registry=self.registry)
        self.nonfinite = Counter("recap_inference_nonfinite_actions_total",
                                 "Policy answers holding NaN or infinity (refused, never sent)", ["version"],
                                 registry=self.registry)
        self.seq = Gauge("recap_inference_serving_seq", "Serving state number in use", registry=self.registry)
        self.loaded = Gauge("recap_inference_version_loaded", "Versions loaded (1) in the current table",
                            ["version"], registry=self.registry)
        self.gc_pause = Histogram("recap_inference_gc_pause_seconds", "Garbage collections (they stop every request)",
                                  ["generation"], registry=self.registry,
                                  buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5))
        self._gc_t0 = 0.0

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc_pause.labels(str(info["generation"])).observe(time.perf_counter() - self._gc_t0)

    def swapped(self, old, new) -> None:
        self.seq.set(new.seq)
        for v in old.runtimes:
            if v not in new.runtimes:
                self.loaded.labels(v).set(0)
        for v in new.runtimes:
            self.loaded.labels(v).set(1)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings.from_env()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "services"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    metrics = Metrics()
    watcher = StateWatcher(settings.redis_url, settings.channel, on_swap=metrics.swapped)
    batcher = MicroBatcher(max_batch=int(os.environ.get("RECAP_MAX_BATCH", "32")),
                           max_wait_s=float(os.environ.get("RECAP_BATCH_WAIT_MS", "0")) / 1e3,
                           inline=os.environ.get("RECAP_MODEL_THREAD", "0") != "1",
                           company_wait_s=float(os.environ.get("RECAP_BATCH_COMPANY_MS", "10")) / 1e3,
                           company_share=float(os.environ.get("RECAP_BATCH_COMPANY_SHARE", "0.25")),
                           on_batch=lambda n, ms: (metrics.batch.observe(n), metrics.infer.observe(ms / 1e3)))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        watcher.start()
        batcher.start()
        # torch and the rest live as long as the process (~500k objects): a full collection scanning them
        # took ~200 ms, stopping every request; frozen, collections only look at what came later
        gc.freeze()
        gc.callbacks.append(metrics.on_gc)
        yield
        gc.callbacks.remove(metrics.on_gc)
        await batcher.stop()
        watcher.stop()

    app = FastAPI(title="recap inference server", lifespan=lifespan, version="1",
                  description="Observation -> action chunk for robots. Bodies are JSON or msgpack "
                              f"(Content-Type {MSGPACK}); robot tokens only.")
    app.state.watcher, app.state.batcher, app.state.metrics = watcher, batcher, metrics

    def robot_of(token: str | None, table) -> str:
        if not token:
            raise WireError(401, "missing bearer token (the Authorization header)")
        robot = table.tokens.get(hashlib.sha256(token.encode()).hexdigest())
        if robot is None:
            raise WireError(401, "unknown or revoked robot token")
        return robot

    def resolve(token: str | None) -> tuple[str, str, object, float | None]:
        """(robot, version, runtime, β override) for a token, from one snapshot of the table: before any body."""
        table = watcher.table
        robot = robot_of(token, table)
        version = table.version_for(robot)
        if version is None or version not in table.runtimes:
            raise WireError(503, f"no policy version is deployed to robot {robot}")
        return robot, version, table.runtimes[version], table.beta_for(robot)

    def body_limit(runtime) -> int:
        return min(runtime.spec.max_body_bytes(), MAX_BODY_BYTES)

    async def act(body: bytes, binary: bool, robot: str, version: str, runtime, beta: float | None) -> bytes:
        t0 = time.perf_counter()
        obs = parse_observation(decode_request(body, binary), runtime.spec)
        actions, timing = await batcher.submit(runtime, obs, robot, beta)
        try:
            actions, clipped = runtime.spec.envelope.bound_actions(actions)
        except NonFiniteActions:
            metrics.nonfinite.labels(version).inc()
            raise
        flags = []
        if clipped:
            flags.append("actions_clipped")
            metrics.clipped.labels(version).inc()
        timing["server_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        metrics.latency.labels(version).observe(timing["server_ms"] / 1e3)
        metrics.requests.labels(version, "200").inc()
        return encode_answer(actions, version, timing | {"robot": robot}, binary, flags)

    async def read_body(request: Request, limit: int) -> bytes:
        """The body, refused by its declared size and again while it streams in: never more than
        `limit` bytes are held."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise WireError(413, f"request body of {int(declared)} bytes exceeds this policy's limit of {limit} bytes")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise WireError(413, f"request body of more than {limit} bytes exceeds this policy's limit")
        except ClientDisconnect:  # a robot killed or cut off mid-request: nobody is left to answer (counted)
            raise WireError(499, "the client went away before its request body arrived") from None
        return bytes(body)

    def bearer(header: str | None) -> str | None:
        if header and header.lower().startswith("bearer "):
            return header[7:].strip()
        return None

    request_schema, answer_schema, components = schemas()
    bodies = {"application/json": {"schema": request_schema}, MSGPACK: {"schema": request_schema}}

    @app.post("/v1/act", summary="Observation -> action chunk",
              openapi_extra={"requestBody": {"required": True, "content": bodies}},
              responses={200: {"description": "actions (chunk x action_dim), version, timing, flags",
                               "content": {"application/json": {"schema": answer_schema},
                                           MSGPACK: {"schema": answer_schema}}},
                         400: {"description": "body is not valid JSON or msgpack"},
                         401: {"description": "robot token missing or unknown (answered before the body is read)"},
                         413: {"description": "body too large for the served policy"},
                         422: {"description": "invalid or out-of-range observation, or a non-finite policy answer"},
                         503: {"description": "nothing deployed to this robot"}})
    async def act_http(request: Request) -> Response:
        binary = is_msgpack(request.headers.get("content-type"))
        body_read = False
        try:
            robot, version, runtime, beta = resolve(bearer(request.headers.get("authorization")))
            body = await read_body(request, body_limit(runtime))
            body_read = True
            payload = await act(body, binary, robot, version, runtime, beta)
        except WireError as e:
            metrics.requests.labels("-", str(e.status)).inc()
            # a body left unread is not drained: the connection closes after the answer
            return JSONResponse({"detail": e.message}, status_code=e.status,
                                headers=None if body_read else {"Connection": "close"})
        return Response(payload, media_type=MSGPACK if binary else "application/json")

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket):
        """Binary frames of msgpack act requests (or text frames of JSON) -> answers in kind. The
        robot token comes in the Authorization header of the handshake; without a valid one the
        connection is closed at once (1008). An error answers {"error", "status"} and keeps the
        connection."""
        token = bearer(ws.headers.get("authorization"))
        await ws.accept()
        try:
            robot_of(token, watcher.table)
        except WireError as e:
            metrics.requests.labels("-", str(e.status)).inc()
            await ws.close(code=1008, reason=e.message)
            return
        try:
            while True:
                msg = await ws.receive()
                if msg.get("type") == "websocket.disconnect":
                    return
                binary = msg.get("bytes") is not None
                body = msg["bytes"] if binary else (msg.get("text") or "").encode()
                try:
                    robot, version, runtime, beta = resolve(token)
                    if len(body) > body_limit(runtime):
                        raise WireError(413, f"message of {len(body)} bytes exceeds this policy's limit of "
                                             f"{body_limit(runtime)} bytes")
                    payload = await act(body, binary, robot, version, runtime, beta)
                except WireError as e:
                    metrics.requests.labels("-", str(e.status)).inc()
                    payload = encode_error(e.message, e.status, binary)
                if binary:
                    await ws.send_bytes(payload)
                else:
                    await ws.send_text(payload.decode())
        except WebSocketDisconnect:
            return
        except Exception:  # a defect of ours: logged, and the robot gets a close frame, not a dropped socket
            log.exception("stream failed")
            with contextlib.suppress(Exception):
                await ws.close(code=1011)

    @app.get("/v1/spec", summary="What this robot's version reads and answers (robot token): the served "
                                  "version and its input spec (state_dim, action_dim, chunk, cameras, envelope, "
                                  "n_obs_steps: the ticks a request carries, the current one and n - 1 in `history`)",
             responses={401: {"description": "robot token missing or unknown"},
                        503: {"description": "nothing deployed to this robot"}})
    def spec(request: Request):
        try:
            robot, version, runtime, _ = resolve(bearer(request.headers.get("authorization")))
        except WireError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status)
        return {"robot": robot, "version": version, **runtime.spec.to_dict()}

    @app.get("/v1/serving", summary="The serving table: state number, robot -> version and the β it is served "
                                     "with, loaded versions (with their artifact's β)")
    def serving() -> dict:
        t = watcher.table
        return {"seq": t.seq, "robots": t.robots, "fleet_version": t.fleet_version,
                "betas": {r: t.served_beta(r) for r in t.robots}, "fleet_beta": t.fleet_beta,
                "versions": {v: rt.spec.to_dict() | {"artifact_beta": rt.beta} for v, rt in t.runtimes.items()},
                "load_failures": watcher.load_failures}

    @app.get("/metrics", summary="Prometheus metrics")
    def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "seq": watcher.table.seq}

    default_openapi = app.openapi

    def openapi() -> dict:  # the wire Structs' schemas (data/wire.py) join the document's components
        if app.openapi_schema is None:
            default_openapi().setdefault("components", {}).setdefault("schemas", {}).update(components)
        return app.openapi_schema

    app.openapi = openapi
    return app
