"""Faults for the episode shipper, shared by tests/services/test_ship.py and bench/ship.py: a robot's
store of real episodes, the shipper as its own process (kill -9 at any moment), the receiving API
killed and restarted, the central side down for a while, a half-sent episode (and a chunk torn
mid-body), a chunk damaged in transit, the same episode shipped twice; and after each, the census:
nothing committed on the robot lost, nothing unverified central, no duplicates."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from data.fsck import verify_episode
from data.schema import ActionSource, Outcome
from data.store import EpisodeStore
from data.synthetic import SyntheticFrames, features
from data.transfer import SHIPPED_SHA256, EpisodeTar
from robot_bridge.shipper import EpisodeShipper, ShipDeferred, ShipperConfig
from services.launch import Process, start_python, start_uvicorn

ROBOT = "robot-0"  # the test stack's robot token speaks for it


@dataclass
class RobotSide:
    root: Path
    cameras: int = 2
    height: int = 48
    width: int = 64
    ticks: int = 60
    expected: dict[str, str] = field(default_factory=dict)  # every episode committed: id -> sha256 of its tar

    def record(self, n: int = 1) -> list[str]:
        """`n` episodes through the real writer; each is remembered as committed."""
        store = EpisodeStore(self.root)
        feats = features(self.cameras, self.height, self.width, state_dim=6, action_dim=6)
        frames = SyntheticFrames(feats, n_frames=16)
        out = []
        for _ in range(n):
            w = store.new_episode(robot_id=ROBOT, task_id="push", features=feats, fps=30, fsync=False)
            t0 = time.time_ns()
            for t in range(self.ticks):
                w.append(frames.tick(t, t0 + t * 33_333_333, ActionSource.POLICY, "v1"))
            info = w.commit(Outcome.SUCCESS, "tester")
            self.expected[info.episode_id] = EpisodeTar(store.episode_dir(info.episode_id)).digest()
            out.append(info.episode_id)
        return out


@dataclass
class Census:
    lost: list[str]  # committed on the robot, now neither there (verified) nor central (verified)
    unverified: list[str]  # central or catalogued, but not a verified copy of what the robot committed
    duplicates: list[str]  # catalogued twice, or central under an id the robot never committed
    local: int
    central: int

    @property
    def clean(self) -> bool:
        return not (self.lost or self.unverified or self.duplicates)


def census(robot: RobotSide, central_root: Path, api: str, admin_token: str) -> Census:
    """Read in the order the product writes, so an episode moving on meanwhile is never miscounted: the
    catalog (indexed after the store holds the episode), the robot (a copy goes only after the central
    store holds it), then the central store."""
    r = httpx.get(f"{api}/v1/episodes", params={"robot": ROBOT, "limit": 100_000},
                  headers={"Authorization": f"Bearer {admin_token}"}, timeout=60)
    r.raise_for_status()
    catalog = [e["id"] for e in r.json()]
    local_store, central_store = EpisodeStore(robot.root), EpisodeStore(central_root)
    local = {e for e in local_store.episode_ids() if verify_episode(local_store.episode_dir(e)) is None}
    central, unverified = set(), []
    for eid in central_store.episode_ids():
        ok = verify_episode(central_store.episode_dir(eid)) is None
        if ok and central_store.open(eid).info.extra.get(SHIPPED_SHA256) == robot.expected.get(eid):
            central.add(eid)
        else:
            unverified.append(eid)
    unverified += [e for e in catalog if e not in central and e not in unverified]
    duplicates = [e for e, n in Counter(catalog).items() if n > 1] + [e for e in central if e not in robot.expected]
    lost = [e for e in robot.expected if e not in local and e not in central]
    return Census(lost, unverified, duplicates, len(local), len(central))


def shipper_process(name: str, robot: RobotSide, api: str, token: str, logs: Path, *, rate: float = 0.0,
                    chunk: int = 64 << 10, keep_newest: int = 2, keep_hours: float = 0.0, once: bool = False) -> Process:
    """`recap bridge ship` as its own process (what the systemd unit runs)."""
    args = ["-m", "robot_bridge.cli", "ship", "--store", str(robot.root), "--api", api, "--rate", str(rate),
            "--chunk-bytes", str(chunk), "--keep-newest", str(keep_newest), "--keep-hours", str(keep_hours),
            "--poll", "0.2"] + (["--once"] if once else [])
    return start_python(name, args, logs, {"RECAP_ROBOT_TOKEN": token, "PYTHONUNBUFFERED": "1"})


def config(robot: RobotSide, api: str, token: str, **kw) -> ShipperConfig:
    return ShipperConfig(api_url=api, token=token, store_root=robot.root, **{"chunk_bytes": 64 << 10,
                                                                              "keep_newest": 1000, "poll_s": 0.2,
                                                                              "retry_max_s": 1.0, **kw})


class BitFlip(httpx.HTTPTransport):
    """Flips one random bit in the body of the first `times` chunks, after the shipper hashed them:
    damage in transit."""

    def __init__(self, times: int, seed: int = 0):
        super().__init__()
        self.left, self.rng = times, random.Random(seed)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and self.left > 0:
            body = bytearray(request.read())
            i = self.rng.randrange(len(body))
            body[i] ^= 1 << self.rng.randrange(8)
            self.left -= 1
            request = httpx.Request(request.method, request.url, headers=request.headers, content=bytes(body))
        return super().handle_request(request)


class LinkDropsAfter(httpx.HTTPTransport):
    """Lets `chunks` chunks through, then the link is down."""

    def __init__(self, chunks: int):
        super().__init__()
        self.left = chunks

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            if self.left <= 0:
                raise httpx.ConnectError("link down")
            self.left -= 1
        return super().handle_request(request)


def torn_chunk(api: str, token: str, episode_id: str, sha: str, offset: int, data: bytes) -> None:
    """A chunk whose sender dies halfway through its body."""
    host, port = api.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((f"PUT /v1/episodes/ingest/{episode_id}/{sha}?offset={offset} HTTP/1.1\r\nHost: {host}\r\n"
                   f"Authorization: Bearer {token}\r\nX-Chunk-Sha256: {'0' * 64}\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode() + data[: len(data) // 2])
    time.sleep(0.2)


def restart_api(stack, down_s: float = 0.0) -> None:
    """kill -9 the API, keep it down `down_s`, start it again on the same port."""
    stack.api.kill()
    time.sleep(down_s)
    stack.api = start_uvicorn("api", "services.api.app:create_app", stack.logs, stack.env(), port=stack.api.port)


def ship_until_done(shipper: EpisodeShipper, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            shipper.run_once()
            if not shipper.pending():
                return
        except ShipDeferred:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def partial_offsets(stack) -> dict[str, tuple[int, int]]:
    """The central side's open partial uploads: name -> (bytes held, size)."""
    out = {}
    for f in (Path(stack.settings.uploads_dir) / "ingest").glob("*.json"):
        try:
            st = json.loads(f.read_text())
            out[f.name] = (st["offset"], st["size"])
        except (OSError, ValueError, KeyError):
            continue
    return out


def kill9_trial(rng: random.Random, robot: RobotSide, stack, name: str, *, rate: float, window: tuple[float, float],
                chunk: int = 64 << 10) -> dict:
    """One new episode; the shipper started as a process and, once it sends an episode, killed -9
    after a random delay (mid-chunk, between chunks, committing, deleting past retention, hashing the
    next). Says whether it was killed part-way through an episode it had been sending."""
    robot.record(1)
    p = shipper_process(name, robot, stack.api.url, stack.tokens["robot"], stack.logs, rate=rate, chunk=chunk)
    deadline = time.monotonic() + 120
    while "sending from byte" not in p.log_text() and p.alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # its imports take seconds on a loaded machine; a kill before it works proves little
    before = partial_offsets(stack)
    delay = rng.uniform(*window)
    time.sleep(delay)
    after = partial_offsets(stack)
    p.kill()
    flowing = any(before.get(k, (0, 0))[0] < held < size for k, (held, size) in after.items())
    return {"delay_s": round(delay, 2), "mid_transfer": flowing}


def api_kill_trial(rng: random.Random, robot: RobotSide, stack, *, rate: float, down_s: float = 0.0) -> EpisodeShipper:
    """A shipper thread at work; the API killed -9 at a random moment (and kept down `down_s`: an
    outage), restarted; the shipper finishes by itself."""
    robot.record(2)
    shipper = EpisodeShipper(config(robot, stack.api.url, stack.tokens["robot"], rate_bytes_s=rate)).start()
    try:
        time.sleep(rng.uniform(0.2, 1.5))
        restart_api(stack, down_s)
        deadline = time.monotonic() + 120
        while shipper.pending() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        shipper.stop()
    return shipper


def half_sent_trial(robot: RobotSide, stack) -> tuple[EpisodeShipper, EpisodeShipper, int]:
    """Part of an episode sent, then a chunk torn mid-body, then the link down; a fresh shipper
    resumes where the central side's verified copy ends. (first shipper, second, tar size)."""
    (eid,) = robot.record(1)
    api, token = stack.api.url, stack.tokens["robot"]
    first = EpisodeShipper(config(robot, api, token, chunk_bytes=16 << 10), transport=LinkDropsAfter(3))
    try:
        first.run_once()
    except ShipDeferred:
        pass
    first.stop()
    tar = EpisodeTar(EpisodeStore(robot.root).episode_dir(eid))
    sha = robot.expected[eid]
    torn_chunk(api, token, eid, sha, 3 * (16 << 10), tar.read(3 * (16 << 10), 16 << 10))
    second = EpisodeShipper(config(robot, api, token, chunk_bytes=16 << 10))
    ship_until_done(second)
    second.stop()
    return first, second, tar.size


def corrupt_trial(robot: RobotSide, stack, flips: int = 3) -> EpisodeShipper:
    robot.record(1)
    shipper = EpisodeShipper(config(robot, stack.api.url, stack.tokens["robot"], chunk_bytes=32 << 10),
                             transport=BitFlip(flips))
    ship_until_done(shipper)
    shipper.stop()
    return shipper


def twice_trial(robot: RobotSide, stack) -> list[EpisodeShipper]:
    """The robot forgets what it shipped (its ledger is gone) and two shippers ship the whole store at
    once: every episode answers done, none is catalogued twice."""
    from robot_bridge.shipper import ledger_dir

    robot.record(1)
    for f in ledger_dir(robot.root).glob("*.json"):
        f.unlink()
    shippers = [EpisodeShipper(config(robot, stack.api.url, stack.tokens["robot"])) for _ in range(2)]
    threads = [threading.Thread(target=ship_until_done, args=(s,)) for s in shippers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for s in shippers:
        s.stop()
    return shippers
