"""The control-plane API as a real uvicorn process with a real Redis: roles, audit, robots,
episodes, versions, deployments and what the inference servers are told."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import redis
import simplejpeg

from data.schema import Outcome
from data.store import EpisodeStore
from data.video import transcode_episode
from services.auth import PERMISSIONS, Role, allowed
from services.serving_channel import read_state
from tests.services.conftest import policy_artifact
from tests.services.forged_uploads import wait_job
from tests.store.helpers import record

# every mutating endpoint: (action in PERMISSIONS, method, path, body)
MUTATIONS = [
    ("tokens.create", "POST", "/v1/tokens", {"name": "matrix-{role}", "role": "teleoperator"}),
    ("tokens.revoke", "DELETE", "/v1/tokens/nobody", None),
    ("robots.register", "POST", "/v1/robots", {"id": "matrix-robot"}),
    ("robots.heartbeat", "POST", "/v1/robots/robot-0/heartbeat", {"version": None}),
    ("episodes.label", "POST", "/v1/episodes/{episode}/label", {"outcome": "failure"}),
    ("episodes.register", "POST", "/v1/episodes/register", {"episode_id": "{episode}"}),
    ("episodes.upload", "POST", "/v1/episodes/upload", "multipart"),
    ("episodes.ship", "POST", "/v1/episodes/ingest", {"episode_id": "{episode}", "sha256": "0" * 64, "size": 1000}),
    ("runs.start", "POST", "/v1/runs", {"method": "bc", "selection": {"robot": ["nobody"]}}),
    ("runs.cancel", "POST", "/v1/runs/run-missing/cancel", None),
    ("versions.register", "POST", "/v1/versions", {"artifact_dir": "/nonexistent"}),
    ("deployments.create", "POST", "/v1/deployments", {"version": "v-missing"}),
    ("deployments.rollback", "POST", "/v1/deployments/rollback", {"target_kind": "fleet"}),
]


def _fill(obj, **kw):
    return json.loads(json.dumps(obj).replace("{role}", kw["role"]).replace("{episode}", kw["episode"])) if obj else obj


def test_role_matrix_every_mutation_by_every_role(shared_stack):
    store = EpisodeStore(shared_stack.settings.store_root)
    ep, _ = record(store, robot="robot-0", cameras=1)
    assert {a for a, *_ in MUTATIONS} == set(PERMISSIONS) - {"audit.read", "exports.create"}
    for action, method, path, body in MUTATIONS:
        for role in Role:
            with shared_stack.client(str(role)) as c:
                path_ = path.replace("{episode}", ep.episode_id)
                if body == "multipart":
                    r = c.post(path_, files={"file": ("x.tar", b"not a tar")})
                else:
                    r = c.request(method, path_, json=_fill(body, role=str(role), episode=ep.episode_id))
            if allowed(role, action):
                assert r.status_code != 403 and r.status_code < 500, (action, role, r.status_code, r.text)
            else:
                assert r.status_code == 403, (action, role, r.status_code, r.text)
                assert "may not" in r.json()["detail"]
    # no token, or a made-up one: 401 everywhere
    for _, method, path, body in MUTATIONS:
        r = httpx.request(method, shared_stack.api.url + path.replace("{episode}", ep.episode_id), json=None)
        assert r.status_code == 401, (path, r.text)
        r = httpx.request(method, shared_stack.api.url + path.replace("{episode}", ep.episode_id),
                          headers={"Authorization": "Bearer rcp_forged"})
        assert r.status_code == 401
    # the audit log holds every attempt with who made it; only admins read it
    with shared_stack.client("admin") as c:
        log = c.get("/v1/audit", params={"limit": 10_000}).json()
    assert len(log) >= len(MUTATIONS) * len(Role)
    denied = [a for a in log if a["status"] == 403]
    assert {a["role"] for a in denied} >= {"teleoperator", "operator", "researcher", "robot"}
    assert any(a["actor"] == "anonymous" and a["status"] == 401 for a in log)
    with shared_stack.client("operator") as c:
        assert c.get("/v1/audit").status_code == 403


def test_versions_deployments_canary_widen_rollback_reach_the_serving_state(stack, tmp_path):
    r = redis.Redis.from_url(stack.settings.redis_url)
    stack.robot_token("arm-1", "cell-a")
    stack.robot_token("arm-2", "cell-a")
    with stack.client("researcher") as c:
        bad = tmp_path / "corrupt"
        policy_artifact(bad, 9)
        (bad / "model.safetensors").write_bytes(b"garbage")
        resp = c.post("/v1/versions", json={"artifact_dir": str(bad)})
        assert resp.status_code == 422 and "model.safetensors" in resp.json()["detail"]
        v1 = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / "a1", 1))}).json()
        v2 = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / "a2", 2)),
                                          "parent_version": v1["id"]}).json()
        assert (v1["id"], v2["id"]) == ("v1", "v2") and v2["parent_version"] == "v1"
        assert c.post("/v1/deployments", json={"version": "v1"}).status_code == 403  # researchers do not deploy
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": "v1"}).status_code == 201
        assert c.get("/v1/deployments/current").json() == {"robot-0": "v1", "arm-1": "v1", "arm-2": "v1"}
        d = c.post("/v1/deployments", json={"version": "v2", "target_kind": "robot", "target": "arm-1",
                                            "stage": "canary"})
        assert d.status_code == 201
        state = read_state(r)
        assert state["robots"] == {"robot-0": "v1", "arm-1": "v2", "arm-2": "v1"}
        assert set(state["versions"]) == {"v1", "v2"} and state["fleet_version"] == "v1"
        # widen to the group, then roll the group back
        assert c.post("/v1/deployments", json={"version": "v2", "target_kind": "group", "target": "cell-a",
                                               "stage": "widen"}).status_code == 201
        assert c.get("/v1/deployments/current").json() == {"robot-0": "v1", "arm-1": "v2", "arm-2": "v2"}
        rb = c.post("/v1/deployments/rollback", json={"target_kind": "group", "target": "cell-a"})
        assert rb.status_code == 201 and rb.json()["version_id"] == "v1"  # what the group ran before: the fleet's
        assert c.get("/v1/deployments/current").json() == {"robot-0": "v1", "arm-1": "v1", "arm-2": "v1"}
        rb = c.post("/v1/deployments/rollback", json={"target_kind": "robot", "target": "robot-0"})
        assert rb.status_code == 422  # nothing was ever deployed to robot-0 itself
        assert c.post("/v1/deployments", json={"version": "v2"}).status_code == 201
        rb = c.post("/v1/deployments/rollback", json={"target_kind": "fleet"})
        assert rb.status_code == 201 and rb.json()["version_id"] == "v1" and rb.json()["stage"] == "rollback"
        assert c.get("/v1/deployments/current").json()["arm-2"] == "v1"  # newest matching deployment wins
        hist = c.get("/v1/deployments").json()
        assert [h["stage"] for h in hist][:2] == ["rollback", "deploy"]
        for bad_body in ({"version": "v1", "target_kind": "robot", "target": "ghost"},
                         {"version": "v1", "target_kind": "moon"}, {"version": ""}, {"version": "v1", "extra": 1}):
            resp = c.post("/v1/deployments", json=bad_body)
            assert resp.status_code == 422, (bad_body, resp.text)
            assert resp.json()["detail"]
        seq = read_state(r)["seq"]
        c.post("/v1/deployments", json={"version": "v2", "target_kind": "robot", "target": "arm-2"})
        assert read_state(r)["seq"] > seq
    with stack.client("robot") as c:  # robot-0's token
        assert c.post("/v1/robots/robot-0/heartbeat", json={"version": "v1"}).json()["reported_version"] == "v1"
        assert c.post("/v1/robots/arm-1/heartbeat", json={"version": "v1"}).status_code == 403
    with stack.client("operator") as c:
        robots = {x["id"]: x for x in c.get("/v1/robots").json()}
        assert robots["robot-0"]["last_seen_ns"] and robots["arm-2"]["assigned_version"] == "v2"
    # revoking a robot token removes it from what the inference servers accept
    with stack.client("admin") as c:
        before = set(read_state(r)["robot_tokens"].values())
        assert c.delete("/v1/tokens/robot-arm-1").json()["revoked"]
        assert "arm-1" in before and "arm-1" not in set(read_state(r)["robot_tokens"].values())


def test_episodes_register_label_upload_and_playback(stack, tmp_path):
    store = EpisodeStore(stack.settings.store_root)
    ep, _ = record(store, robot="robot-0", cameras=1, corrections=range(5, 10))
    with stack.client("robot") as c:
        out = c.post("/v1/episodes/register", json={"episode_id": ep.episode_id}).json()
        assert out["num_correction_ticks"] == 5 and out["cameras"] == ["top"]
        assert c.post("/v1/episodes/register", json={"episode_id": "no-such"}).status_code == 404
    with stack.client("teleoperator") as c:
        assert c.get("/v1/episodes", params={"outcome": "success"}).json()[0]["id"] == ep.episode_id
        lab = c.post(f"/v1/episodes/{ep.episode_id}/label", json={"outcome": "failure"}).json()
        assert lab["outcome"] == "failure" and lab["outcome_labeller"] == "test-teleoperator"
        assert c.post(f"/v1/episodes/{ep.episode_id}/label", json={"outcome": "maybe"}).status_code == 422
        jpg = c.get(f"/v1/episodes/{ep.episode_id}/frames/top/3")
        assert jpg.status_code == 200 and jpg.content[:2] == b"\xff\xd8"
        assert c.get(f"/v1/episodes/{ep.episode_id}/frames/cam9/3").status_code == 404
        assert c.get(f"/v1/episodes/{ep.episode_id}/frames/top/999").status_code == 404
        # the same frames once the episode is on the video tier (JPEG tier dropped)
        ref = ep.images("top")
        assert transcode_episode(store, ep.episode_id).jpeg_dropped
        for t in (3, 0, len(ep) - 1):
            got = c.get(f"/v1/episodes/{ep.episode_id}/frames/top/{t}")
            assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
            img = simplejpeg.decode_jpeg(got.content)
            assert img.shape == ref[t].shape and np.abs(img.astype(int) - ref[t]).mean() < 8  # video + JPEG q85
        assert c.get(f"/v1/episodes/{ep.episode_id}/frames/top/999").status_code == 404
        # upload a Zarr episode recorded elsewhere (a tar of its folder): checked at once, imported by a job
        stack.start_worker()
        other = EpisodeStore(tmp_path / "elsewhere")
        up, _ = record(other, robot="bench-arm", cameras=1, outcome=Outcome.SUCCESS)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(other.episode_dir(up.episode_id), arcname=up.episode_id)
        res = c.post("/v1/episodes/upload", files={"file": ("ep.tar", buf.getvalue())})
        assert res.status_code == 202, res.text
        job = wait_job(c, res.json()["status_url"])
        assert job["status"] == "finished" and job["episode_ids"] == [up.episode_id] and job["format"] == "zarr", job
        got = c.get(f"/v1/episodes/{up.episode_id}").json()
        assert got["robot_id"] == "bench-arm" and got["outcome_labeller"] == "test-teleoperator"
        again = c.post("/v1/episodes/upload", files={"file": ("ep.tar", buf.getvalue())})
        assert again.status_code == 409 and "already" in again.json()["detail"]
        # a tampered episode is refused and named
        (other.episode_dir(up.episode_id) / "zarr.json").write_text("{}")
        buf2 = io.BytesIO()
        with tarfile.open(fileobj=buf2, mode="w") as tar:
            tar.add(other.episode_dir(up.episode_id), arcname=up.episode_id[:-6] + "abcdef")
        bad = c.post("/v1/episodes/upload", files={"file": ("ep.tar", buf2.getvalue())})
        assert bad.status_code == 422 and "manifest names episode" in bad.json()["detail"]
        assert c.post("/v1/episodes/upload", files={"file": ("x.tar", b"\x00" * 100)}).status_code == 400
    # the CLI uploads a folder and follows the job to its episode id
    import os
    import subprocess
    import sys

    up2, _ = record(other, robot="bench-arm", cameras=1)
    env = {**os.environ, "RECAP_API_URL": stack.api.url, "RECAP_TOKEN": stack.tokens["teleoperator"]}
    cli = [sys.executable, "-m", "data.cli_root", "episodes", "upload"]
    out = subprocess.run(cli + [str(up2.path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["episode_ids"] == [up2.episode_id], out.stderr
    out = subprocess.run(cli + [str(up2.path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "error: 409" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_same_new_episode_or_robot_from_requests_at_once(shared_stack):
    """A robot registers an episode while the demo (or a person) already asks for it, and two
    operators add the same robot: every request gets its answer, none a 500."""
    store = EpisodeStore(shared_stack.settings.store_root)
    eps = [record(store, robot=f"racer-{i % 2}", task=f"race-{i}", cameras=1)[0] for i in range(6)]

    def hit(call):
        barrier.wait()
        return call()

    with shared_stack.client("robot") as robot, shared_stack.client("operator") as op, ThreadPoolExecutor(6) as pool:
        for ep in eps:
            barrier = threading.Barrier(4)
            calls = [lambda e=ep.episode_id: robot.post("/v1/episodes/register", json={"episode_id": e}),
                     lambda e=ep.episode_id: op.get(f"/v1/episodes/{e}")] * 2
            codes = [r.status_code for r in pool.map(hit, calls)]
            assert codes == [200] * 4, codes
        for i in range(4):
            barrier = threading.Barrier(3)
            codes = [r.status_code for r in pool.map(hit, [lambda i=i: op.post("/v1/robots", json={"id": f"new-{i}"})] * 3)]
            assert all(c in (201, 409) for c in codes) and 201 in codes, codes
        assert {f"new-{i}" for i in range(4)} <= {r["id"] for r in op.get("/v1/robots").json()}
        assert {e.episode_id for e in eps} <= {r["id"] for r in op.get("/v1/episodes").json()}


@pytest.mark.parametrize("path", ["/openapi.json", "/healthz"])
def test_public_documents(shared_stack, path):
    r = httpx.get(shared_stack.api.url + path)
    assert r.status_code == 200
    if path == "/openapi.json":
        paths = r.json()["paths"]
        assert {"/v1/runs", "/v1/deployments", "/v1/deployments/rollback", "/v1/tokens", "/v1/episodes/upload"} <= set(paths)


def test_cli_talks_to_the_api_with_the_callers_role(stack, tmp_path):
    import subprocess
    import sys

    def recap(*args, role):
        env = {**__import__("os").environ, "RECAP_API_URL": stack.api.url, "RECAP_TOKEN": stack.tokens[role]}
        return subprocess.run([sys.executable, "-m", "data.cli_root", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    art = policy_artifact(tmp_path / "a", 3)
    out = recap("fleet", "register", str(art), role="researcher")
    assert out.returncode == 0 and '"id": "v1"' in out.stdout, out.stderr
    denied = recap("fleet", "deploy", "v1", role="researcher")
    assert denied.returncode == 2 and "error: 403" in denied.stderr and "may not deployments.create" in denied.stderr
    assert recap("fleet", "deploy", "v1", "--robot", "robot-0", role="operator").returncode == 0
    robots = recap("fleet", "robots", role="teleoperator")
    assert robots.returncode == 0 and "robot-0" in robots.stdout and "assigned v1" in robots.stdout
    hist = recap("fleet", "history", role="operator")
    assert "canary" in hist.stdout and "robot:robot-0" in hist.stdout
    tok = recap("tokens", "create", "new-teleop", "--role", "teleoperator", role="admin")
    assert tok.returncode == 0 and "rcp_" in tok.stdout
    help_ = recap("serve", "--help", role="admin")
    assert help_.returncode == 0 and "inference" in help_.stdout and "worker" in help_.stdout


def test_upload_a_lerobot_v3_dataset_as_demonstrations(shared_stack, tmp_path):
    from data.lerobot_io import export_lerobot

    other = EpisodeStore(tmp_path / "elsewhere")
    eps = [record(other, robot="teleop-rig", cameras=1, start=10**18 + i * 10**12)[0] for i in range(2)]
    root = export_lerobot(other, [e.episode_id for e in eps], tmp_path / "lr", use_videos=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname="dataset")
    with shared_stack.client("teleoperator") as c:
        worker = shared_stack.start_worker()
        r = c.post("/v1/episodes/upload", files={"file": ("ds.tar", buf.getvalue())},
                   data={"robot_id": "teleop-rig", "task_id": "push"})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["status_url"], timeout=300)
        assert job["status"] == "finished" and job["format"] == "lerobot" and len(job["episode_ids"]) == 2, job
        got = c.get("/v1/episodes", params={"robot": "teleop-rig"}).json()
        assert len(got) == 2 and all(e["num_ticks"] == 25 and e["outcome"] == "success" for e in got)
    worker.stop()  # nothing the later tests on this stack may queue gets trained


def _audit_rows(stack) -> dict[str, dict]:
    """request id -> audit row (read through the API, as an admin would)."""
    with stack.client("admin") as c:
        return {a["detail"].get("request_id"): a for a in c.get("/v1/audit", params={"limit": 100_000}).json()}


def test_every_mutating_request_is_audited_and_malformed_bodies_get_a_4xx_message(shared_stack):
    """Hundreds of malformed JSON bodies (seeded) across every mutating JSON route, plus requests
    refused before routing (no token, a forged token, a declared body over the limit): each gets a
    JSON 4xx, none a 5xx, and each has its audit row, matched by its request id."""
    from tests.services.hostile_api import bad_bodies, marker, send_bad_bodies

    m = marker()
    bodies = bad_bodies(300, seed=1)
    ep, _ = record(EpisodeStore(shared_stack.settings.store_root), robot="robot-0", cameras=1)
    with shared_stack.client("admin") as c:
        assert c.post("/v1/episodes/register", json={"episode_id": ep.episode_id}).status_code == 200
        counts = send_bad_bodies(c, bodies, m)
    assert not any(s >= 500 for s in counts) and sum(counts.values()) == len(bodies), counts
    assert counts.get(422, 0) > 100, counts
    refused = {f"{m}-anon": httpx.post(shared_stack.api.url + "/v1/robots", json={"id": "x"}, headers={"X-Request-Id": f"{m}-anon"}),
               f"{m}-forged": httpx.post(shared_stack.api.url + "/v1/robots", json={"id": "x"},
                                         headers={"X-Request-Id": f"{m}-forged", "Authorization": "Bearer rcp_forged"})}
    with shared_stack.client("operator") as c:
        refused[f"{m}-big"] = c.post("/v1/robots", content=b"{" + b" " * (1 << 20) + b"}",
                                     headers={"X-Request-Id": f"{m}-big", "Content-Type": "application/json"})
        # a control character in a path parameter (a NUL is an error in PostgreSQL's text columns): 400 before routing
        refused[f"{m}-nul"] = c.post("/v1/episodes/%00/annotations", headers={"X-Request-Id": f"{m}-nul"},
                                     json={"kind": "bad_correction", "start_tick": 0, "end_tick": 1, "reason": "r"})
        for path in ("/v1/episodes/%00/annotations", "/v1/versions/a%0Ab", "/v1/runs/%7F", "/v1/robots/a%C2%85b"):
            r = c.get(path)
            assert r.status_code == 400 and "control character" in r.json()["detail"], (path, r.text)
    assert [r.status_code for r in refused.values()] == [401, 401, 413, 400]
    assert all(r.json()["detail"] for r in refused.values())
    rows = _audit_rows(shared_stack)
    sent = [f"{m}-{i}" for i, (method, *_) in enumerate(bodies) if method in ("POST", "DELETE")] + list(refused)
    missing = [rid for rid in sent if rid not in rows]
    assert not missing, missing[:10]
    assert rows[f"{m}-anon"]["actor"] == "anonymous" and rows[f"{m}-big"]["status"] == 413
    assert rows[f"{m}-big"]["actor"] == "test-operator"


def test_error_bodies_name_no_internals(shared_stack, tmp_path):
    """Messages about files name them relative to what the caller gave, never by this machine's
    absolute paths; a conflict does not echo the database's error."""
    home = shared_stack.settings.home
    with shared_stack.client("researcher") as c:
        bad = tmp_path / "deep" / "corrupt"
        policy_artifact(bad, 9)
        (bad / "model.safetensors").write_bytes(b"garbage")
        r = c.post("/v1/versions", json={"artifact_dir": str(bad)})
        assert r.status_code == 422 and "model.safetensors" in r.json()["detail"]
        assert str(tmp_path) not in r.text, r.text
        r = c.post("/v1/versions", json={"artifact_dir": "/tmp/a\x00b"})
        assert r.status_code == 422 and r.json()["detail"].startswith("body.artifact_dir")
        r = c.post("/v1/versions", json={"artifact_dir": "/tmp/a\u0085b"})  # a C1 control character (NEL)
        assert r.status_code == 422 and r.json()["detail"].startswith("body.artifact_dir")
    with shared_stack.client("teleoperator") as c:
        r = c.get("/v1/episodes/no-such-episode")
        assert r.status_code == 404 and home not in r.text and "no committed episode" in r.json()["detail"]
    with shared_stack.client("operator") as c:
        r = c.get("/v1/robots/%00")  # a control character in the path: refused before routing
        assert r.status_code == 400 and "control character" in r.json()["detail"] and r.headers["x-request-id"]


def test_an_internal_error_is_a_500_with_a_ref_audited_and_logged(tmp_path):
    """A broken catalog (a table dropped under the running API) makes starting a run fail inside the
    handler: the client gets 500 with a ref and no internals, the audit log has the 500, and the
    server log has the traceback under the same ref (which is why this stack ends with one)."""
    import sqlite3

    from tests.services.conftest import running_stack

    with pytest.raises(AssertionError, match="api logged an error"):
        with running_stack(tmp_path) as stack:
            db = sqlite3.connect(stack.settings.store_root / "catalog.sqlite")
            db.execute("ALTER TABLE episodes RENAME TO episodes_gone")
            db.commit()
            db.close()
            with stack.client("researcher") as c:
                r = c.post("/v1/runs", json={"method": "bc"}, headers={"X-Request-Id": "broken-catalog-1"})
            assert r.status_code == 500, r.text
            assert r.json() == {"detail": "internal error (ref broken-catalog-1)"}
            row = _audit_rows(stack)["broken-catalog-1"]
            assert row["status"] == 500 and row["action"] == "POST /v1/runs" and row["actor"] == "test-researcher"
            log = stack.api.log_text()
            assert "internal error (ref broken-catalog-1)" in log and "no such table: episodes" in log


def test_anonymous_bodies_are_refused_before_they_are_read(shared_stack):
    """Auth comes before the body: anonymous 100 MB bodies (declared, or streamed without a length)
    are answered 401 without the API buffering them; an authenticated one over the limit gets 413."""
    import psutil

    proc = psutil.Process(shared_stack.api.popen.pid)
    before = proc.memory_info().rss

    def chunks(n=100):
        for _ in range(n):
            yield b"x" * (1 << 20)

    for headers in ({}, {"Authorization": "Bearer rcp_forged"}):
        for content in (b"x" * (100 << 20), chunks()):
            try:
                r = httpx.post(shared_stack.api.url + "/v1/episodes/upload", content=content, headers=headers, timeout=60)
                assert r.status_code == 401, r.text
            except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                pass  # the server answered and closed while the client still sent: refused either way
    assert proc.memory_info().rss - before < 16 << 20
    with shared_stack.client("operator") as c:
        r = c.post("/v1/robots", content=chunks(2), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"]


def test_docs_work_offline_and_pages_carry_security_headers(shared_stack):
    import re

    docs = httpx.get(shared_stack.api.url + "/docs")
    assert docs.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", docs.text) + re.findall(r"url: ?'([^']+)'", docs.text)
    assert urls and not [u for u in urls if "://" in u or u.startswith("//")], urls
    assert "https://" not in docs.text and "http://" not in docs.text
    for u in urls:
        r = httpx.get(shared_stack.api.url + u)
        assert r.status_code == 200 and len(r.content) > 0, u
    for path in ("/", "/review"):
        page = httpx.get(shared_stack.api.url + path)
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in page.text and "style=" not in page.text  # all script and style from files
    for asset in ("/static/dashboard.js", "/static/dashboard.css", "/static/review.js"):
        assert httpx.get(shared_stack.api.url + asset).status_code == 200
    assert "innerHTML" not in httpx.get(shared_stack.api.url + "/static/dashboard.js").text


def test_tokens_in_a_query_string_never_reach_the_access_log(shared_stack, tmp_path):
    """`recap serve api` logs every request; a client that puts a token in the query string does not
    get it written there (the API reads tokens from the Authorization header only)."""
    import sys

    from services.launch import free_port, start_process, wait_healthy

    port = free_port()
    api = start_process("api-logged", [sys.executable, "-m", "data.cli_root", "serve", "api", "--port", str(port)],
                        tmp_path / "logs", {**shared_stack.env(), "RECAP_HOME": str(tmp_path / "home2")})
    api.url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(api)
        secret = "rcp_secret_in_query"
        r = httpx.get(api.url + f"/v1/robots?token={secret}&x=1")
        assert r.status_code == 401  # a query token is no credential
        httpx.get(api.url + f"/healthz?access_token={secret}")
    finally:
        api.stop()
    log = api.log_text()
    assert "/v1/robots?token=***&x=1" in log and "access_token=***" in log, log[-2000:]
    assert secret not in log
