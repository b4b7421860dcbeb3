"""The control-plane API as an outsider meets it: markup in every field the dashboard shows (loaded
in headless Chromium), seeded malformed JSON bodies on every mutating route, anonymous large bodies,
and whether every mutating request (a success, a refusal or a 5xx) left its audit row.

Figures: dashboard_injections_tried, elements_injected, dashboard_scripts_ran, audit_mutations_sent,
audit_missing, api_bad_bodies, api_5xx, api_anonymous_bytes_buffered_max.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.services.conftest import policy_artifact
from tests.services.hostile_api import (bad_bodies, dashboard_verdict, headless_chromium, inject_dashboard_fields,
                                        marker, send_bad_bodies)

BAD_BODIES = 600
ANONYMOUS_BODIES = 4  # at once, 200 MB each
ANONYMOUS_BYTES = 200 << 20


def run(stack, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    figures = {}
    figures.update(_dashboard(stack, work))
    figures.update(_bodies_and_audit(stack))
    figures["api_anonymous_bytes_buffered_max"] = _anonymous_rss_growth(stack)
    with stack.client("researcher") as c:  # the runs started here must not reach a later family's worker
        for r in c.get("/v1/runs", params={"status": "queued", "limit": 10_000}).json():
            c.post(f"/v1/runs/{r['id']}/cancel")
    return figures


def _dashboard(stack, work: Path) -> dict:
    inj = inject_dashboard_fields(stack, str(policy_artifact(work / "artifact", 7)), rounds=2)
    browser = headless_chromium()
    try:
        verdict = dashboard_verdict(browser, stack.api.url, stack.tokens["operator"], inj)
    finally:
        browser.quit()
    return {"dashboard_injections_tried": len(inj.tried), "elements_injected": verdict["elements"],
            "dashboard_scripts_ran": verdict["scripts_ran"],
            "dashboard_payloads_not_shown": len(verdict["not_shown_literally"])}


def _bodies_and_audit(stack) -> dict:
    m = marker()
    bodies = bad_bodies(BAD_BODIES, seed=12)
    # successes and refusals before routing, each with its own request id
    good = [("POST", "/v1/robots", {"id": f"audit-{i}"}, "operator") for i in range(10)]
    good += [("POST", "/v1/robots/robot-0/heartbeat", {"version": f"v{i}"}, "robot") for i in range(10)]
    good += [("POST", "/v1/tokens", {"name": f"audit-token-{i}", "role": "teleoperator"}, "admin") for i in range(5)]
    good += [("DELETE", f"/v1/tokens/audit-token-{i}", None, "admin") for i in range(5)]
    good += [("POST", "/v1/robots", {"id": "x"}, role) for role in ("researcher", "teleoperator")]  # 403
    sent: list[str] = []
    statuses: dict[int, int] = {}
    for i, (method, path, body, role) in enumerate(good):
        rid = f"{m}-ok-{i}"
        with stack.client(role) as c:
            r = c.request(method, path, json=body, headers={"X-Request-Id": rid})
        sent.append(rid)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    for i, headers in enumerate(({}, {"Authorization": "Bearer rcp_forged"}, {"Authorization": "Basic abc"})):
        rid = f"{m}-anon-{i}"
        r = httpx.post(stack.api.url + "/v1/deployments", json={"version": "v1"}, headers={**headers, "X-Request-Id": rid})
        sent.append(rid)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    with stack.client("admin") as c:
        counts = send_bad_bodies(c, bodies, m)
    sent += [f"{m}-{i}" for i, (method, *_) in enumerate(bodies) if method in ("POST", "PUT", "PATCH", "DELETE")]
    for k, v in counts.items():
        statuses[k] = statuses.get(k, 0) + v
    with stack.client("admin") as c:
        rows = {a["detail"].get("request_id") for a in c.get("/v1/audit", params={"limit": 100_000}).json()}
    return {"audit_mutations_sent": len(sent), "audit_missing": sum(rid not in rows for rid in sent),
            "api_bad_bodies": len(bodies), "api_5xx": sum(v for k, v in statuses.items() if k >= 500),
            "api_statuses": {str(k): v for k, v in sorted(statuses.items())}}


def _anonymous_rss_growth(stack) -> int:
    """Peak RSS growth of the API process while anonymous clients send 200 MB bodies at once."""
    proc = psutil.Process(stack.api.popen.pid)
    base = proc.memory_info().rss
    peak = base
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.01)

    def send(i: int):
        def chunks():
            block = b"x" * (1 << 20)
            for _ in range(ANONYMOUS_BYTES >> 20):
                yield block
        headers = {"Content-Length": str(ANONYMOUS_BYTES)} if i % 2 else {}  # declared, and streamed unannounced
        try:
            httpx.post(stack.api.url + "/v1/episodes/upload", content=chunks(), headers=headers, timeout=120)
        except httpx.HTTPError:
            pass  # answered 401 and closed while the client still sent

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    senders = [threading.Thread(target=send, args=(i,)) for i in range(ANONYMOUS_BODIES)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    done.set()
    sampler.join()
    assert httpx.get(stack.api.url + "/healthz").status_code == 200
    return max(0, peak - base)
