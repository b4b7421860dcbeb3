"""Probe: hostile bodies against a real inference server. A small native policy is registered and
deployed; a seeded corpus of malformed, mistyped, truncated and extreme-valued bodies (JSON and
msgpack) goes over HTTP and the WebSocket; then several anonymous 200 MB bodies are streamed at the
server while a robot keeps asking for actions, and the server's RSS is sampled throughout."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from data.wire import MSGPACK, encode_request
from tests.services.conftest import policy_artifact
from tests.services.wire_bodies import Spec, bad_bodies, check_answer, content_type, finite_state_refused, ws_exchange

BODIES = 2400  # each sent over HTTP and over the WebSocket: inference_bad_bodies counts both
FLOODERS, FLOOD_BYTES, FLOOD_S = 4, 200 << 20, 3.0


def _flood(port: int, chunked: bool, sent: list[int]) -> None:
    """Anonymous 200 MB bodies, one after another for FLOOD_S, each streamed until the server stops
    reading it."""
    end = time.monotonic() + FLOOD_S
    while time.monotonic() < end:
        _flood_once(port, chunked, sent)


def _flood_once(port: int, chunked: bool, sent: list[int]) -> None:
    n = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {FLOOD_BYTES}"
            s.sendall(f"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Type: {MSGPACK}\r\n{length}\r\n\r\n".encode())
            block = (b"100000\r\n" + b"\0" * (1 << 20) + b"\r\n") if chunked else b"\0" * (1 << 20)
            for _ in range(FLOOD_BYTES >> 20):
                s.sendall(block)
                n += len(block)
    except OSError:
        pass
    sent.append(n)


def run(stack, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    d = policy_artifact(work / "art", 0, cameras=["top"], image_size=(24, 32))
    with stack.client("researcher") as c:
        version = c.post("/v1/versions", json={"artifact_dir": str(d)}).json()["id"]
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": version})
    inf = stack.start_inference("inference-wire")
    try:
        return _probe(stack, inf, version)
    finally:
        inf.stop()
        stack.extra.remove(inf)


def _probe(stack, inf, version: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        served = httpx.get(inf.url + "/v1/serving").json()
        if version in served["versions"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    spec = Spec.of(served["versions"][version])
    auth = {"Authorization": f"Bearer {stack.tokens['robot']}"}
    tried = five_xx = dropped = served_bad = extreme_tried = extreme_not_refused = 0
    http = httpx.Client(base_url=inf.url, headers=auth, timeout=30)
    ws_url = inf.url.replace("http", "ws") + "/v1/stream"
    ws = connect(ws_url, additional_headers=auth, max_size=None)
    for body in bad_bodies(seed=2026, spec=spec, n=BODIES):
        r = http.post("/v1/act", content=body.data, headers={"Content-Type": content_type(body)})
        tried += 1
        outcomes = [(r.status_code, r.content, r.text)]
        try:
            outcomes.append(ws_exchange(ws, body))
        except ConnectionClosed as e:
            if e.rcvd is None:
                dropped += 1
            elif e.rcvd.code == 1011:
                five_xx += 1
            ws = connect(ws_url, additional_headers=auth, max_size=None)
        tried += 1
        for status, payload, message in outcomes:
            five_xx += status >= 500
            wrong = check_answer(spec, status, payload, body.binary)
            served_bad += wrong is not None and status == 200
            if body.extreme:
                extreme_tried += 1
                extreme_not_refused += not finite_state_refused(status, message)
    ws.close()

    # valid requests with finite but unusual states: every 200 finite and within the action range
    rng = np.random.default_rng(0)
    image = {"top": np.zeros((24, 32, 3), np.uint8)}
    for scale in (1, 10, 50, 99):
        for _ in range(25):
            r = http.post("/v1/act", content=encode_request(rng.normal(size=spec.state_dim) * scale, image),
                          headers={"Content-Type": MSGPACK})
            five_xx += r.status_code >= 500
            served_bad += check_answer(spec, r.status_code, r.content, True) is not None

    # anonymous 200 MB bodies while a robot keeps asking: the server's RSS, sampled all along
    server = psutil.Process(inf.popen.pid)
    valid = encode_request(np.zeros(spec.state_dim), image)
    before: list[float] = []
    for _ in range(50):  # warm: the baseline is the server already serving
        t0 = time.perf_counter()
        http.post("/v1/act", content=valid, headers={"Content-Type": MSGPACK})
        before.append((time.perf_counter() - t0) * 1e3)
    baseline = max(server.memory_info().rss for _ in range(20) if not time.sleep(0.01))
    sent: list[int] = []
    lat: list[float] = []
    flooders = [threading.Thread(target=_flood, args=(inf.port, i % 2 == 1, sent)) for i in range(FLOODERS)]
    rss = [baseline]
    flooding = threading.Event()
    flooding.set()

    def sample() -> None:  # every 5 ms while the flood lasts
        while flooding.is_set():
            rss.append(server.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in flooders:
        t.start()
    while any(t.is_alive() for t in flooders) or len(lat) < 50:
        t0 = time.perf_counter()
        r = http.post("/v1/act", content=valid, headers={"Content-Type": MSGPACK})
        lat.append((time.perf_counter() - t0) * 1e3)
        five_xx += r.status_code >= 500
    for t in flooders:
        t.join()
    flooding.clear()
    sampler.join()
    peak = max(rss)
    http.close()
    return {"inference_bad_bodies": tried, "inference_5xx": five_xx, "ws_dropped_without_close": dropped,
            "nonfinite_actions_served": served_bad, "extreme_states_tried": extreme_tried,
            "extreme_states_not_refused": extreme_not_refused,
            "anonymous_bytes_buffered_max": max(0, peak - baseline),
            "anonymous_bodies_streamed": len(sent), "anonymous_bytes_sent_max": max(sent),
            "valid_p50_ms_before_flood": round(statistics.median(before), 2),
            "valid_p50_ms_during_flood": round(statistics.median(lat), 2)}
