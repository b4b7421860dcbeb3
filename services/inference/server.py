"""The inference server (FastAPI under uvicorn): POST /v1/act and the /v1/stream WebSocket answer an
observation with an action chunk, the version that computed it and the server's timing; robot
tokens only; Prometheus metrics at /metrics.

    recap serve inference --port 8001        # RECAP_REDIS_URL, RECAP_CHANNEL as the API's
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import time
from contextlib import asynccontextmanager

import msgpack
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.inference.serving import MicroBatcher, StateWatcher
from services.inference.wire import MSGPACK, BadRequest, decode_body, encode_answer, parse_observation
from services.settings import ServiceSettings

log = logging.getLogger(__name__)


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
    metrics = Metrics()
    watcher = StateWatcher(settings.redis_url, settings.channel, on_swap=metrics.swapped)
    batcher = MicroBatcher(max_batch=int(os.environ.get("RECAP_MAX_BATCH", "32")),
                           max_wait_s=float(os.environ.get("RECAP_BATCH_WAIT_MS", "0")) / 1e3,
                           inline=os.environ.get("RECAP_MODEL_THREAD", "0") != "1",
                           company_wait_s=float(os.environ.get("RECAP_BATCH_COMPANY_MS", "10")) / 1e3,
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
            raise BadRequest(401, "missing bearer token")
        robot = table.tokens.get(hashlib.sha256(token.encode()).hexdigest())
        if robot is None:
            raise BadRequest(401, "unknown or revoked robot token")
        return robot

    async def act(doc_or_body, token: str | None, content_type: str | None) -> tuple[bytes, str, int]:
        t0 = time.perf_counter()
        table = watcher.table  # one snapshot for the whole request
        robot = robot_of(token, table)
        version = table.version_for(robot)
        if version is None or version not in table.runtimes:
            raise BadRequest(503, f"no policy version is deployed to robot {robot}")
        runtime = table.runtimes[version]
        doc = decode_body(doc_or_body, content_type) if isinstance(doc_or_body, bytes) else doc_or_body
        obs = parse_observation(doc, runtime.spec)
        actions, timing = await batcher.submit(runtime, obs, robot)
        timing["server_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        metrics.latency.labels(version).observe(timing["server_ms"] / 1e3)
        metrics.requests.labels(version, "200").inc()
        binary = content_type is not None and content_type.startswith(MSGPACK)
        return encode_answer(actions, version, timing | {"robot": robot}, binary), version, 200

    def bearer(header: str | None) -> str | None:
        if header and header.lower().startswith("bearer "):
            return header[7:].strip()
        return None

    @app.post("/v1/act", summary="Observation -> action chunk",
              responses={200: {"description": "actions (chunk x action_dim), version, timing"},
                         401: {"description": "robot token missing or unknown"},
                         413: {"description": "body too large"}, 422: {"description": "invalid observation"},
                         503: {"description": "nothing deployed to this robot"}})
    async def act_http(request: Request) -> Response:
        ctype = request.headers.get("content-type")
        try:
            body = await request.body()
            payload, _, _ = await act(body, bearer(request.headers.get("authorization")), ctype)
        except BadRequest as e:
            metrics.requests.labels("-", str(e.status)).inc()
            return JSONResponse({"detail": e.message}, status_code=e.status)
        return Response(payload, media_type=MSGPACK if ctype and ctype.startswith(MSGPACK) else "application/json")

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket):
        """Binary frames of msgpack act requests (or text frames of JSON) -> answers in kind; an
        error answers {"error", "status"} and keeps the connection."""
        token = bearer(ws.headers.get("authorization")) or ws.query_params.get("token")
        await ws.accept()
        try:
            while True:
                msg = await ws.receive()
                if msg.get("type") == "websocket.disconnect":
                    return
                binary = msg.get("bytes") is not None
                body = msg["bytes"] if binary else (msg.get("text") or "").encode()
                try:
                    payload, _, _ = await act(body, token, MSGPACK if binary else "application/json")
                except BadRequest as e:
                    metrics.requests.labels("-", str(e.status)).inc()
                    err = {"error": e.message, "status": e.status}
                    payload = msgpack.packb(err) if binary else JSONResponse(err).body
                if binary:
                    await ws.send_bytes(payload)
                else:
                    await ws.send_text(payload.decode())
        except WebSocketDisconnect:
            return

    @app.get("/v1/serving", summary="The serving table: state number, robot -> version, loaded versions")
    def serving() -> dict:
        t = watcher.table
        return {"seq": t.seq, "robots": t.robots, "fleet_version": t.fleet_version,
                "versions": {v: rt.spec.to_dict() for v, rt in t.runtimes.items()},
                "load_failures": watcher.load_failures}

    @app.get("/metrics", summary="Prometheus metrics")
    def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "seq": watcher.table.seq}

    return app
