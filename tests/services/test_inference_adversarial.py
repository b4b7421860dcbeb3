"""The inference server against hostile clients, as a real uvicorn process: property-based and
seeded corpora of malformed bodies (JSON and msgpack, HTTP and WebSocket) never get a 5xx or a
dropped connection; extreme states are refused naming the value; every 200 is finite and within the
policy's action range; a model that answers NaN never reaches a robot; anonymous bodies are refused
before they are read; no token reaches a log line."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from data.stats import FeatureStats
from data.wire import MSGPACK, decode_answer, encode_request
from tests.services.conftest import policy_artifact
from tests.services.test_inference import _wait_serving
from tests.services.wire_bodies import (Spec, bad_bodies, check_answer, content_type, finite_state_refused,
                                       hostile_bodies, ws_exchange)


def _serve_one(stack, tmp_path, **artifact_kw) -> tuple:
    d = policy_artifact(tmp_path / "art", 0, **artifact_kw)
    with stack.client("researcher") as c:
        v = c.post("/v1/versions", json={"artifact_dir": str(d)}).json()["id"]
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": v}).status_code == 201
    inf = stack.start_inference()
    s = _wait_serving(inf.url, lambda s: v in s["versions"])
    return inf, Spec.of(s["versions"][v])


@pytest.mark.slow
def test_hostile_bodies_never_get_a_server_error_or_a_dropped_connection(stack, tmp_path):
    inf, spec = _serve_one(stack, tmp_path, cameras=["top"], image_size=(12, 16))
    tok = stack.tokens["robot"]
    auth = {"Authorization": f"Bearer {tok}"}
    problems: list[str] = []
    http = httpx.Client(base_url=inf.url, headers=auth, timeout=30)
    ws = connect(inf.url.replace("http", "ws") + "/v1/stream", additional_headers=auth, max_size=None)

    def exchange(body) -> None:
        r = http.post("/v1/act", content=body.data, headers={"Content-Type": content_type(body)})
        for where, (status, payload, message) in {
                "http": (r.status_code, r.content, r.text),
                "ws": ws_exchange(ws, body)}.items():
            if where == "ws":
                message = payload.decode("utf-8", "replace")
            wrong = check_answer(spec, status, payload, body.binary)
            if wrong is None and body.extreme and not finite_state_refused(status, message):
                wrong = f"extreme state answered {status}: {message[:200]}"
            if wrong:
                problems.append(f"{body.kind} over {where}: {wrong}")

    try:
        for body in bad_bodies(seed=12, spec=spec, n=260):  # every kind, 20 times
            exchange(body)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(hostile_bodies(spec))
        def property_based(body):
            exchange(body)

        property_based()
        # an extreme state is named in the refusal
        state = np.array([0.1, 0.2, 0.3, 3e38], np.float32)
        r = http.post("/v1/act", content=encode_request(state, {"top": np.zeros((12, 16, 3), np.uint8)}),
                      headers={"Content-Type": MSGPACK})
        assert r.status_code == 422 and r.json()["detail"].startswith("state[3]: 3e+38 is outside"), r.text
        # the connection survived all of it and still answers
        ws.send(encode_request(np.zeros(4), {"top": np.zeros((12, 16, 3), np.uint8)}))
        assert decode_answer(ws.recv(timeout=30), binary=True)["actions"].shape == (4, 3)
    finally:
        http.close()
        ws.close()
    assert problems == []
    metrics = httpx.get(inf.url + "/metrics").text
    assert 'status="422"' in metrics and 'status="500"' not in metrics


def test_anonymous_bodies_are_refused_unread_and_tokens_stay_out_of_logs(stack, tmp_path):
    inf, spec = _serve_one(stack, tmp_path)
    tok = stack.tokens["robot"]
    server = psutil.Process(inf.popen.pid)
    before = server.memory_info().rss
    took, sent = [], []

    def flood(chunked: bool) -> None:  # a 200 MB body, streamed by a client with no token
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", inf.port)) as s:
            length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {200 << 20}"
            s.sendall(f"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Type: {MSGPACK}\r\n{length}\r\n\r\n".encode())
            block, n = (b"100000\r\n" + b"\0" * (1 << 20) + b"\r\n") if chunked else b"\0" * (1 << 20), 0
            s.settimeout(10)
            try:
                for _ in range(200):
                    s.sendall(block)
                    n += len(block)
            except OSError:
                pass  # the server answered and closed: the rest of the body is never read
            sent.append(n)
            took.append(time.monotonic() - t0)

    threads = [threading.Thread(target=flood, args=(i % 2 == 1,)) for i in range(4)]
    for t in threads:
        t.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, server.memory_info().rss)
        time.sleep(0.005)
    assert peak - before < 4 << 20, f"the server grew by {(peak - before) >> 20} MiB under anonymous bodies"
    assert max(sent) < 100 << 20 and max(took) < 5, (sent, took)
    r = httpx.post(inf.url + "/v1/act", content=b"\0" * (50 << 20), headers={"Content-Type": MSGPACK})
    assert r.status_code == 401 and "bearer" in r.json()["detail"]
    # an authenticated body is limited by the policy's inputs, by declaration and while streaming
    auth = {"Authorization": f"Bearer {tok}", "Content-Type": MSGPACK}
    r = httpx.post(inf.url + "/v1/act", content=b"\0" * (1 << 20), headers=auth)
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    r = httpx.post(inf.url + "/v1/act", content=iter([b"\0" * (64 << 10)] * 16), headers=auth)
    assert r.status_code == 413
    # a robot that dies halfway through its request body (SIGKILL, a cut cable): counted, never an error
    with socket.create_connection(("127.0.0.1", inf.port)) as s:
        s.sendall(f"POST /v1/act HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nContent-Type: {MSGPACK}\r\n"
                  f"Content-Length: 4000\r\n\r\n".encode() + b"\0" * 1000)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while 'status="499"' not in (metrics := httpx.get(inf.url + "/metrics").text):
        assert time.monotonic() < deadline, "the cut-off request was not counted"
        time.sleep(0.1)
    assert "Traceback" not in inf.log_text() and "Exception in ASGI application" not in inf.log_text()
    # tokens only in headers: a query-string token is not accepted, and no token is ever logged
    with connect(inf.url.replace("http", "ws") + f"/v1/stream?token={tok}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with connect(inf.url.replace("http", "ws") + f"/v1/stream?token={tok}",
                 additional_headers={"Authorization": f"Bearer {tok}"}) as ws:
        ws.send(encode_request(np.zeros(4), {}))
        assert decode_answer(ws.recv(timeout=30), binary=True)["actions"].shape == (4, 3)
    log = inf.log_text()
    assert "/v1/stream" in log and tok not in log and tok[4:] not in log


def test_a_policy_that_answers_nan_never_reaches_a_robot_and_clipping_is_flagged(stack, tmp_path):
    from training.artifacts import write_artifact
    from training.policies.native import NativeFlowPolicy, NativePolicyConfig

    # v1: weights holding NaN (every answer NaN); v2: a training action range so narrow every answer is clipped
    cfg = NativePolicyConfig(state_dim=4, action_dim=3, chunk=4, hidden=32, flow_steps=4, cameras=[], seed=0)
    model = NativeFlowPolicy(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    rng = np.random.default_rng(0)
    narrow = FeatureStats.of(rng.uniform(-0.01, 0.01, size=(64, 3)))
    stats = {"observation.state": FeatureStats.of(rng.normal(size=(64, 4))), "action": narrow}
    write_artifact(tmp_path / "nan", kind="policy", model=model, config=cfg.to_dict() | {"type": "native_flow"},
                   stats=stats, lineage={"run": "nan"}, metrics={})
    write_artifact(tmp_path / "narrow", kind="policy", model=NativeFlowPolicy(cfg),
                   config=cfg.to_dict() | {"type": "native_flow"}, stats=stats, lineage={"run": "narrow"}, metrics={})
    with stack.client("researcher") as c:
        v1, v2 = (c.post("/v1/versions", json={"artifact_dir": str(tmp_path / n)}).json()["id"] for n in ("nan", "narrow"))
    tok2 = stack.robot_token("arm-2")
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": v1}).status_code == 201
        assert c.post("/v1/deployments", json={"version": v2, "target_kind": "robot", "target": "arm-2",
                                               "stage": "canary"}).status_code == 201
    inf = stack.start_inference()
    _wait_serving(inf.url, lambda s: {v1, v2} <= set(s["versions"]) and s["robots"].get("arm-2") == v2)
    for binary in (True, False):
        r = httpx.post(inf.url + "/v1/act", content=encode_request(np.zeros(4), {}, binary=binary),
                       headers={"Authorization": f"Bearer {stack.tokens['robot']}",
                                "Content-Type": MSGPACK if binary else "application/json"})
        assert r.status_code == 422 and "not finite" in r.json()["detail"] and "nan" not in r.text.lower()
        r = httpx.post(inf.url + "/v1/act", content=encode_request(np.zeros(4), {}, binary=binary),
                       headers={"Authorization": f"Bearer {tok2}", "Content-Type": MSGPACK if binary else "application/json"})
        ans = decode_answer(r.content, binary)
        assert r.status_code == 200 and ans["flags"] == ["actions_clipped"]
        assert (np.abs(ans["actions"]) <= 0.01).all()
    metrics = httpx.get(inf.url + "/metrics").text
    assert f'recap_inference_nonfinite_actions_total{{version="{v1}"}} 2.0' in metrics
    assert f'recap_inference_actions_clipped_total{{version="{v2}"}} 2.0' in metrics
