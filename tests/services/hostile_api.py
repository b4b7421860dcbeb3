"""Hostile input for the control-plane API, shared by its tests and by bench/probes/api.py: markup
for every user-controlled field the dashboard shows, malformed JSON bodies for every mutating route,
and the checks that nothing got through (no element created in the page, no 5xx, an audit row for
every mutating request)."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field

import httpx

from data.schema import ActionSource, Outcome
from data.store import EpisodeStore
from data.synthetic import SyntheticFrames
from tests.store.helpers import PERIOD, T0, small_features

PWNED = "__pwned"  # the global an injected script would set


def markup(i: int) -> list[str]:
    """Payloads tagged with `pwn<i>` ids: an element with such an id in the page is an injection."""
    act = f"window.{PWNED}=(window.{PWNED}||0)+1"
    return [f'<img src=x id=pwn{i}a onerror="{act}">', f"<b id=pwn{i}b>bold</b>",
            f'"><svg id=pwn{i}c onload="{act}">', f"</td><script id=pwn{i}d>{act}</script>",
            f"' onmouseover='{act}' id='pwn{i}e"]


@dataclass
class Injection:
    tried: list[tuple[str, str]] = field(default_factory=list)  # (field, payload) put through the API

    def add(self, name: str, payload: str, response: httpx.Response | None = None) -> None:
        assert response is None or response.status_code < 300, (name, response.status_code, response.text)
        self.tried.append((name, payload))


def _episode(store: EpisodeStore, *, robot: str, task: str, instruction: str, version: str, start: int) -> str:
    feats = small_features(1)
    frames = SyntheticFrames(feats, n_frames=4)
    w = store.new_episode(robot_id=robot, task_id=task, features=feats, fps=30, instruction=instruction,
                          flush_ticks=10, start_time_ns=start)
    for t in range(6):
        w.append(frames.tick(t, start + t * PERIOD, ActionSource.POLICY, version))
    return w.commit(Outcome.SUCCESS, "tester").episode_id


def inject_dashboard_fields(stack, artifact_dir: str, rounds: int = 1) -> Injection:
    """Markup into every field the dashboard shows that the API accepts it in: a robot's reported
    version (heartbeat), an episode's instruction and policy version (recorded by a robot, registered
    through the API), a deployment's note, a training run's recipe. Robot ids, groups, task ids, token
    names, run and version ids are identifiers: the API and the store refuse markup there."""
    inj = Injection()
    store = EpisodeStore(stack.settings.store_root)
    with stack.client("admin") as admin, stack.client("operator") as op, stack.client("researcher") as res:
        for bad in ({"id": "<b>x</b>"}, {"id": "inj-ok", "group": "<b id=pwn>"}):
            r = op.post("/v1/robots", json=bad)
            assert r.status_code == 422, r.text
        version = res.post("/v1/versions", json={"artifact_dir": artifact_dir})
        assert version.status_code == 201, version.text
        for i in range(rounds):
            for j, payload in enumerate(markup(i)):
                robot = f"inj-{i}-{j}"
                token = stack.robot_token(robot)
                with httpx.Client(base_url=stack.api.url, headers={"Authorization": f"Bearer {token}"}) as rc:
                    inj.add("heartbeat version", payload,
                            rc.post(f"/v1/robots/{robot}/heartbeat", json={"version": payload}))
                    eid = _episode(store, robot=robot, task="inj-task", instruction=payload, version=payload,
                                   start=T0 + (i * 10 + j) * 3600 * 10**9)
                    inj.add("episode instruction and policy version", payload,
                            rc.post("/v1/episodes/register", json={"episode_id": eid}))
                inj.add("deployment note", payload,
                        op.post("/v1/deployments", json={"version": version.json()["id"], "target_kind": "robot",
                                                         "target": robot, "note": payload}))
                inj.add("run recipe", payload,
                        res.post("/v1/runs", json={"method": "bc", "selection": {"robot": [robot]},
                                                   "recipe": {"cameras": [payload],
                                                              "task_max_len": {payload: 10}}}))
        assert admin.get("/healthz").status_code == 200
    return inj


INJECTED = (
    "const found = document.querySelectorAll("
    "'[id^=\"pwn\"], img[src=\"x\"], [onerror], [onload], [onmouseover], main script, main svg svg, main b');"
    f"return {{elements: found.length, ran: window.{PWNED} || 0, text: document.body.innerText}};")


def dashboard_verdict(browser, url: str, token: str, inj: Injection, timeout: float = 60.0) -> dict:
    """Load the dashboard with `token`, wait for it to render, then count injected elements, script
    runs, and payloads not shown as literal text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/#token={token}")
    WebDriverWait(browser, timeout).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1")
    seen = browser.execute_script(INJECTED)
    missing = sorted({p for _, p in inj.tried if p not in seen["text"]})
    return {"elements": seen["elements"], "scripts_ran": seen["ran"], "not_shown_literally": missing,
            "error": browser.find_element(By.ID, "error").text}


def headless_chromium():
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


# ---- malformed JSON bodies ------------------------------------------------------------------------

# every JSON route a client can mutate through, with a valid body to start the mutations from
ROUTES = [
    ("POST", "/v1/tokens", {"name": "fuzz", "role": "teleoperator"}),
    ("POST", "/v1/robots", {"id": "fuzz-robot", "group": "default"}),
    ("POST", "/v1/robots/robot-0/heartbeat", {"version": "v1"}),
    ("POST", "/v1/episodes/register", {"episode_id": "nope"}),
    ("POST", "/v1/episodes/nope/label", {"outcome": "failure"}),
    ("POST", "/v1/episodes/ingest", {"episode_id": "20260101T000000-robot-0-abcdef", "sha256": "0" * 64, "size": 100}),
    ("POST", f"/v1/episodes/ingest/20260101T000000-robot-0-abcdef/{'0' * 64}/commit", {"outcome": "success"}),
    ("POST", "/v1/runs", {"method": "bc", "selection": {"since_ns": 0},
                          "recipe": {"value": {"steps": 1}, "task_max_len": {"t": 5}}, "seed": 1}),
    ("POST", "/v1/versions", {"artifact_dir": "/nonexistent", "parent_version": None}),
    ("POST", "/v1/deployments", {"version": "v-missing", "target_kind": "fleet", "target": "*", "note": ""}),
    ("POST", "/v1/deployments/rollback", {"target_kind": "robot", "target": "robot-0"}),
    ("POST", "/v1/deployments", {"version": "v-missing", "target_kind": "robot", "target": "robot-0",
                                 "gate": {"min_episodes": 3, "threshold": 0.8}}),
    ("POST", "/v1/episodes/evaluation", {"episode_ids": ["nope"], "evaluation": True}),
    ("POST", "/v1/episodes/nope/annotations", {"kind": "bad_correction", "start_tick": 1, "end_tick": 2, "reason": "r"}),
]

HOSTILE_VALUES = [10**400, -(10**400), 2**70, -(2**64), float("inf"), float("nan"), "NaN", "a\x00b", "\x00",
                  "x" * 100_000, "\ud800", "\u202e<b>", "../../etc/passwd", "/" * 5000, [], {}, [[[[[[]]]]]],
                  True, None, 0.5, -1, "", " ", "\n", {"$ne": 1}, [1] * 10_000]
RAW = [b"", b"{", b"[", b"null", b"123", b'"str"', b"{\"a\":}", b"\xff\xfe\x00", b"{" * 5000 + b"}" * 5000,
       b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e999999}', b'{"a": 1' + b"0" * 5000 + b"}",
       b'{"version": "\\ud800"}', b'{"id": "a", "id": "b"}', b"\x00" * 64]


def _mutate(rng: random.Random, body: dict) -> object:
    body = json.loads(json.dumps(body))
    kind = rng.randrange(5)
    keys = list(body)
    if kind == 0 and keys:  # a field's value replaced by something hostile
        body[rng.choice(keys)] = rng.choice(HOSTILE_VALUES)
    elif kind == 1:  # an unknown field
        body[rng.choice(["extra", "__proto__", "\x00", "a" * 300])] = rng.choice(HOSTILE_VALUES)
    elif kind == 2 and keys:  # a value at some depth replaced, or a key added there
        d = body
        while rng.random() < 0.7 and any(isinstance(v, dict) for v in d.values()):
            d = rng.choice([v for v in d.values() if isinstance(v, dict)])
        d[rng.choice(list(d) + ["lr", "steps"])] = rng.choice(HOSTILE_VALUES)
    elif kind == 3 and keys:  # a field missing
        del body[rng.choice(keys)]
    else:  # the whole body hostile
        return rng.choice(HOSTILE_VALUES)
    return body


def bad_bodies(n: int, seed: int = 0) -> list[tuple[str, str, bytes, str]]:
    """`n` malformed requests (method, path, body bytes, content type), seeded, then a few malformed
    paths and query strings (NUL bytes reach PostgreSQL as an error unless refused first)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        method, path, valid = ROUTES[i % len(ROUTES)]
        if rng.random() < 0.2:
            body, ctype = rng.choice(RAW), rng.choice(["application/json", "text/plain", "application/x-msgpack"])
        else:
            body = json.dumps(_mutate(rng, valid), allow_nan=True).encode("utf-8", "surrogatepass")
            ctype = "application/json"
        out.append((method, path, body, ctype))
    for weird in ("/v1/robots/%00", "/v1/robots/" + "a" * 5000, "/v1/runs/%00/cancel", "/v1/tokens/%FF%FE",
                  "/v1/versions/%00", "/v1/runs/..%2F..%2Fetc", "/v1/episodes?robot=%00", "/v1/episodes?task=a%00",
                  "/v1/audit?actor=%00", "/v1/runs?status=%00", "/v1/episodes?since_ns=" + "9" * 400,
                  "/v1/episodes/%00/annotations", "/v1/episodes/%00/ticks"):
        out.append(("DELETE" if weird.startswith("/v1/tokens") else "GET" if "cancel" not in weird else "POST",
                    weird, b"", "application/json"))
    return out


def send_bad_bodies(client: httpx.Client, bodies, marker: str = "") -> dict[int, int]:
    """Send each body (with a unique X-Request-Id under `marker` when given); status -> count."""
    counts: dict[int, int] = {}
    for i, (method, path, body, ctype) in enumerate(bodies):
        headers = {"Content-Type": ctype}
        if marker:
            headers["X-Request-Id"] = f"{marker}-{i}"
        r = client.request(method, path, content=body, headers=headers)
        assert r.headers.get("content-type", "").startswith("application/json"), (method, path, r.status_code, r.text)
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
    return counts


def marker() -> str:
    return "m" + uuid.uuid4().hex[:12]
