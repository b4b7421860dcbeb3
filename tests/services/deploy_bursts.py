"""Concurrent deploy bursts against a real stack, shared by tests/services/test_deploy_consistency.py
and bench/probes/deploy.py: a few small native policy versions, robots in two groups streaming
`/v1/act` at two inference servers, operator threads deploying and rolling back to robots, groups
and the fleet at once, and the checks: what every server serves against what the control
database says (`GET /v1/deployments/serving` and `/current`), and whether any robot's answers
ever went back to an older deployment state."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from services.inference.wire import MSGPACK, decode_answer, encode_request
from services.launch import Process
from tests.services.conftest import policy_artifact

STATE_DIM = 4
GROUPS = ("cell-a", "cell-b")


@dataclass
class Fleet:
    robots: dict[str, str]  # robot -> group
    tokens: dict[str, str]  # robot -> its token
    versions: list[str]
    servers: list[Process] = field(default_factory=list)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))  # kept alive: checks stay quick


def setup_fleet(stack, work: Path, *, n_versions: int = 4, n_robots: int = 4, n_servers: int = 2,
                name: str = "inference") -> Fleet:
    """Register versions and robots, deploy the first version to the fleet, start the servers and
    wait until each holds the database's state."""
    versions = []
    with stack.client("researcher") as c:
        for i in range(n_versions):
            r = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(work / f"art{i}", 100 + i))})
            assert r.status_code == 201, r.text
            versions.append(r.json()["id"])
    robots = {f"{name}-arm-{i}": GROUPS[i % len(GROUPS)] for i in range(n_robots)}
    tokens = {r: stack.robot_token(r, g) for r, g in robots.items()}
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": versions[0]}).status_code == 201
    fleet = Fleet(robots, tokens, versions)
    for i in range(n_servers):
        fleet.servers.append(stack.start_inference(name=f"{name}-{i}"))
    assert wait_converged(stack, fleet, 30.0) is not None, "servers never took the first state"
    return fleet


def db_state(stack, fleet: Fleet | None = None, path: str = "/v1/deployments/serving") -> dict:
    http = fleet.http if fleet else httpx
    r = http.get(stack.api.url + path, headers={"Authorization": f"Bearer {stack.tokens['operator']}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def server_state(p: Process, fleet: Fleet | None = None) -> dict:
    return (fleet.http if fleet else httpx).get(p.url + "/v1/serving", timeout=10).json()


def converged(stack, fleet: Fleet) -> bool:
    """Every server holds the database's state: the same sequence number, robots and fleet version."""
    db = db_state(stack, fleet)
    return all((s := server_state(p, fleet))["seq"] == db["seq"] and s["robots"] == db["robots"]
               and s["fleet_version"] == db["fleet_version"] for p in fleet.servers)


def wait_converged(stack, fleet: Fleet, timeout: float, poll_s: float = 0.02) -> float | None:
    """Seconds until `converged`, None if not within `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if converged(stack, fleet):
            return time.monotonic() - t0
        time.sleep(poll_s)
    return None


def divergences(stack, fleet: Fleet) -> list[str]:
    """Robots some server would answer with another version than `GET /v1/deployments/current` says."""
    current = db_state(stack, fleet, "/v1/deployments/current")
    out = []
    for p in fleet.servers:
        s = server_state(p, fleet)
        for robot, version in current.items():
            served = s["robots"].get(robot, s["fleet_version"])
            if served != version:
                out.append(f"{p.name}: {robot} served {served}, deployed {version}")
    return out


def burst(stack, fleet: Fleet, rng: np.random.Generator, *, operators: int = 4, actions: int = 3) -> dict:
    """`operators` threads, released together, each making `actions` random deploys or rollbacks to
    a robot, a group or the fleet. Returns the answer statuses, the 5xx answers and when the last
    call returned (time.monotonic)."""
    plans = []
    for _ in range(operators):
        plan = []
        for _ in range(actions):
            kind = ["fleet", "group", "robot"][rng.integers(3)]
            target = {"fleet": "*", "group": GROUPS[rng.integers(len(GROUPS))],
                      "robot": list(fleet.robots)[rng.integers(len(fleet.robots))]}[kind]
            if rng.random() < 0.25:
                plan.append(("/v1/deployments/rollback", {"target_kind": kind, "target": target}))
            else:
                version = fleet.versions[rng.integers(len(fleet.versions))]
                plan.append(("/v1/deployments", {"version": version, "target_kind": kind, "target": target}))
        plans.append(plan)
    statuses: Counter = Counter()
    errors: list[str] = []
    start = threading.Barrier(operators)

    def operate(plan):
        with stack.client("operator") as c:
            start.wait()
            for path, body in plan:
                try:
                    r = c.post(path, json=body)
                except httpx.HTTPError as e:
                    errors.append(f"{path} {body}: {e!r}")
                    continue
                statuses[r.status_code] += 1
                if r.status_code >= 500 or (r.status_code >= 400 and "rollback" not in path):
                    errors.append(f"{path} {body}: {r.status_code} {r.text}")

    threads = [threading.Thread(target=operate, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"statuses": statuses, "errors": errors, "ended": time.monotonic()}


class RobotStreams:
    """One thread per robot asking its server (robot i -> server i mod n) for actions until
    stopped; every answer's version in order, every failure (a non-200 answer or a transport error)."""

    def __init__(self, fleet: Fleet, pause_s: float = 0.02):
        self.fleet, self.pause_s = fleet, pause_s
        self.answers: dict[str, list[str]] = {r: [] for r in fleet.robots}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._stream, args=(r, fleet.servers[i % len(fleet.servers)]))
                         for i, r in enumerate(fleet.robots)]

    def __enter__(self) -> "RobotStreams":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _stream(self, robot: str, server: Process) -> None:
        rng = np.random.default_rng(abs(hash(robot)) % 2**32)
        headers = {"Authorization": f"Bearer {self.fleet.tokens[robot]}", "Content-Type": MSGPACK}
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                try:
                    r = http.post(server.url + "/v1/act", content=encode_request(rng.normal(size=STATE_DIM), {}, "push"),
                                  headers=headers)
                except httpx.HTTPError as e:
                    self.failures.append(f"{robot}: {e!r}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{robot}: {r.status_code} {r.text[:200]}")
                else:
                    self.answers[robot].append(decode_answer(r.content, binary=True)["version"])
                self._stop.wait(self.pause_s)


class SeqMonitor:
    """Polls every server's serving sequence number; any decrease is recorded."""

    def __init__(self, fleet: Fleet, poll_s: float = 0.05):
        self.fleet, self.poll_s = fleet, poll_s
        self.decreases: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> "SeqMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = {p.name: -1 for p in self.fleet.servers}
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(self.poll_s):
                self._sample(http, last)

    def _sample(self, http: httpx.Client, last: dict[str, int]) -> None:
        for p in self.fleet.servers:
            seq = http.get(p.url + "/v1/serving").json()["seq"]
            self.samples += 1
            if seq < last[p.name]:
                self.decreases.append(f"{p.name}: {last[p.name]} -> {seq}")
            last[p.name] = seq


def assignment_history(stack, fleet: Fleet) -> list[dict[str, str | None]]:
    """robot -> version after each deployment in commit order (the serving sequence serialises
    deployments, so their ids are in commit order): entry k is the state after the first k."""
    with stack.client("operator") as c:
        deps = sorted(c.get("/v1/deployments", params={"limit": 10_000}).json(), key=lambda d: d["id"])
    state: dict[str, str | None] = {r: None for r in fleet.robots}
    out = [dict(state)]
    for d in deps:
        for robot, group in fleet.robots.items():
            if d["target_kind"] == "fleet" or (d["target_kind"] == "group" and d["target"] == group) \
                    or (d["target_kind"] == "robot" and d["target"] == robot):
                state[robot] = d["version_id"]
        out.append(dict(state))
    return out


def went_back(answers: dict[str, list[str]], history: list[dict[str, str | None]]) -> list[str]:
    """Robots whose answers are not in the order of the deployment history: each answer must come
    from the state the previous one came from or a later one."""
    out = []
    for robot, versions in answers.items():
        k = 0
        for i, v in enumerate(versions):
            while k < len(history) and history[k][robot] != v:
                k += 1
            if k == len(history):
                out.append(f"{robot}: answer {i} ({v}) from an older state than the one before it")
                break
    return out
