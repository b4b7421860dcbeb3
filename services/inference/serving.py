"""What the server serves (robot -> version and the deployment's guidance β), as one immutable snapshot (ServingTable), kept current by a watcher on
the Redis deployment channel; and the micro-batcher that runs one model call for every request
waiting on the same version.

Hot swap: the watcher loads every version the new state needs (verified) *before* it replaces the
table with one reference assignment. A request resolves robot -> version -> loaded model from the
table it read on arrival and holds that model to the end: a swap between two requests never fails
one and never mixes versions inside one.

Reconciling: states are numbered by the control database's serving sequence (and its epoch). The
watcher applies a state only if it is newer than the table's (or from another epoch), so the table
never goes back; besides the channel's announcements it polls the stored stamp every `poll_s` and
loads the stored state when it is ahead, so an announcement missed (a dropped subscription, a
failed load) is made up within about `poll_s` of the API's reconciler storing the newest state."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import redis

from services.inference.runtime import Observation, load_runtime
from services.serving_channel import read_stamp, read_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingTable:
    seq: int = 0
    robots: dict[str, str | None] = field(default_factory=dict)  # robot -> version
    fleet_version: str | None = None
    runtimes: dict = field(default_factory=dict)  # version -> runtime
    tokens: dict[str, str] = field(default_factory=dict)  # token sha256 -> robot id
    epoch: str | None = None  # the control database the state came from
    betas: dict[str, float | None] = field(default_factory=dict)  # robot -> its deployment's β override
    fleet_beta: float | None = None  # ... for robots the registry does not know yet

    def behind(self, epoch: str | None, seq: int) -> bool:
        """Is a state numbered (epoch, seq) newer than this table?"""
        return epoch != self.epoch or seq > self.seq

    def version_for(self, robot_id: str) -> str | None:
        return self.robots[robot_id] if robot_id in self.robots else self.fleet_version

    def beta_for(self, robot_id: str) -> float | None:
        """The guidance β the robot's deployment asks for; None: the artifact's."""
        return self.betas.get(robot_id) if robot_id in self.robots else self.fleet_beta

    def served_beta(self, robot_id: str) -> float | None:
        """The β the robot's chunks are computed with: its deployment's override, else the artifact's."""
        version, beta = self.version_for(robot_id), self.beta_for(robot_id)
        if version not in self.runtimes:
            return None
        return self.runtimes[version].beta if beta is None else beta


class StateWatcher:
    """Follows the deployment channel in a thread; `on_swap(old, new)` after each swap."""

    def __init__(self, redis_url: str, channel: str, on_swap=None, poll_s: float = 1.0):
        self.r = redis.Redis.from_url(redis_url)
        self.channel, self.on_swap, self.poll_s = channel, on_swap, poll_s
        self.table = ServingTable()
        self.load_failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="state-watcher", daemon=True)

    def start(self) -> None:
        try:
            state = read_state(self.r)
            if state:
                self.apply(state)
        except redis.RedisError as e:  # Redis away: serve nothing yet, the thread keeps trying
            log.warning("deployment channel: %s; retrying", e)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def apply(self, state: dict) -> bool:
        """Load what `state` needs, then swap; False (and the old table kept) if it is not newer, is
        not a numbered state, a version fails to load or a β override is not a finite number."""
        epoch, seq = state.get("epoch"), state.get("seq")
        if not isinstance(epoch, str) or not isinstance(seq, int):
            log.warning("ignored a serving state without a sequence number")
            return False
        with self._lock:
            old = self.table
            if not old.behind(epoch, seq):
                return False
            runtimes = {}
            try:
                betas = {r: _beta(b) for r, b in state.get("betas", {}).items()}
                fleet_beta = _beta(state.get("fleet_beta"))
                for vid, entry in state.get("versions", {}).items():
                    runtimes[vid] = old.runtimes[vid] if vid in old.runtimes else load_runtime(vid, entry)
            except Exception as e:  # a corrupt or missing artifact, a bad β: keep serving the old table
                self.load_failures += 1
                log.error("serving state %s refused, keeping %s: %s", state.get("seq"), old.seq, e)
                return False
            new = ServingTable(seq, dict(state.get("robots", {})), state.get("fleet_version"),
                               runtimes, dict(state.get("robot_tokens", {})), epoch, betas, fleet_beta)
            self.table = new  # the swap: one reference assignment
        log.info("serving state %d: %s", new.seq, json.dumps({"robots": new.robots, "fleet": new.fleet_version,
                                                             "betas": {r: b for r, b in new.betas.items() if b is not None},
                                                             "fleet_beta": new.fleet_beta}))
        if self.on_swap:
            self.on_swap(old, new)
        return True

    def _run(self) -> None:
        last_poll = time.monotonic()
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.r.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.channel)
                    state = read_state(self.r)  # anything published while we were not listening
                    if state:
                        self.apply(state)
                msg = pubsub.get_message(timeout=0.5)
                if msg and msg.get("type") == "message":
                    self.apply(json.loads(msg["data"]))
                if time.monotonic() - last_poll > self.poll_s:
                    last_poll = time.monotonic()
                    stamp = read_stamp(self.r)  # one short GET; the document only when it is ahead
                    if stamp and self.table.behind(*stamp) and (state := read_state(self.r)):
                        self.apply(state)
            except redis.RedisError as e:
                log.warning("deployment channel: %s; retrying", e)
                pubsub = None
                self._stop.wait(1.0)
            except (ValueError, TypeError, AttributeError) as e:  # a malformed message must not end the watcher
                log.warning("ignored a malformed serving state: %s", e)


def _beta(b) -> float | None:
    """A β override from the state document: a finite number or None (anything else refuses the state)."""
    if b is None:
        return None
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not np.isfinite(b):
        raise ValueError(f"beta {b!r} is not a finite number")
    return float(b)


@dataclass
class _Pending:
    runtime: object
    obs: Observation
    future: asyncio.Future
    enqueued: float
    robot: str = ""
    beta: float | None = None  # None: the artifact's


class MicroBatcher:
    """Requests that arrive while the model is busy are answered by the next single batched call
    (per version, up to `max_batch`). `max_wait_s` > 0 also holds a lone request that long for
    company; 0 (the default) adds no latency to a single robot.

    `company_wait_s`: robots that ask again at once after an answer (closed loop, as in a
    saturated fleet) would otherwise split into alternating half batches: whoever is back first
    starts a call while the rest queue behind it. So a call waits for the robots of the previous
    call whose usual turnaround (answer -> next request) is shorter than the company limit:
    `company_wait_s`, or `company_share` of the previous call's model time where that is longer. A
    robot left behind waits for the whole call it missed, then for its own: while the wait is a
    small share of a call, waiting is cheaper (with 8 robots over HTTP, each answer and request is
    handled in turn on the server, and each client takes its turn on its own machine, so the last
    robot's turnaround is several times one robot's). A robot alone, or robots that run their chunk
    before asking again (the bridge asks ahead of time, hundreds of ms later), are never waited for."""

    def __init__(self, max_batch: int = 32, max_wait_s: float = 0.0, on_batch=None, inline: bool = True,
                 company_wait_s: float = 0.0, company_share: float = 0.25):
        self.max_batch, self.max_wait_s, self.on_batch = max_batch, max_wait_s, on_batch
        self.company_wait_s, self.company_share = company_wait_s, company_share
        self._last_model_s = 0.0  # model time of the previous loop's calls
        self._answered_at: dict[str, tuple[float, float]] = {}  # robot -> (its last answer went out, _blocked_s)
        self._blocked_s = 0.0  # total time inline model calls held the event loop
        self._turnaround: dict[str, float] = {}  # robot -> running mean of answer -> next request (s)
        self._last_call: set[str] = set()  # robots answered by the previous loop's calls
        self._last_call_end = float("-inf")
        # inline (default): the model runs on the event loop itself; requests arriving meanwhile wait in
        # the socket buffers and form the next batch. Measured (bench/serving, one robot): ~14 ms less per
        # round trip than handing each batch to a model thread. Off: a dedicated model thread.
        self.inline = inline
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, runtime, obs: Observation, robot: str = "", beta: float | None = None) -> tuple[np.ndarray, dict]:
        """`beta`: the deployment's guidance override (None: the artifact's); requests for the same
        version at the same β share a model call."""
        fut = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        if robot in self._answered_at:
            # the robot's own turnaround: not the time its request sat unread while a model call held the loop
            at, busy_at = self._answered_at[robot]
            ta = (now - at) - (self._blocked_s - busy_at)
            self._turnaround[robot] = ta if robot not in self._turnaround else 0.7 * self._turnaround[robot] + 0.3 * ta
        await self.queue.put(_Pending(runtime, obs, fut, now, robot, beta))
        try:
            return await fut
        finally:  # the answer goes out now: the robot's turnaround counts from here
            self._answered_at[robot] = (time.perf_counter(), self._blocked_s)

    def company_limit(self) -> float:
        """How long a call waits for the robots of the previous one, at most (s); 0: never."""
        if self.company_wait_s <= 0:
            return 0.0
        return max(self.company_wait_s, self.company_share * self._last_model_s)

    def _company(self, now: float) -> set[str]:
        """The robots the next call waits for (see the class docstring)."""
        limit = self.company_limit()
        if limit <= 0 or now - self._last_call_end > limit:
            return set()
        return {r for r in self._last_call if self._turnaround.get(r, float("inf")) < limit}

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            company = self._company(time.perf_counter())
            deadline = loop.time() + max(self.max_wait_s, self.company_limit() if company else 0.0)
            while len(items) < self.max_batch:
                try:
                    items.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                if self.max_wait_s <= 0 and company <= {it.robot for it in items}:
                    break
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self._last_call = {it.robot for it in items}
            groups: dict[tuple[int, float | None], list[_Pending]] = {}
            for it in items:
                groups.setdefault((id(it.runtime), it.beta), []).append(it)
            model_s = 0.0
            for group in groups.values():
                rt, beta = group[0].runtime, group[0].beta
                t0 = time.perf_counter()
                try:
                    obs = [g.obs for g in group]
                    out = rt.act(obs, beta) if self.inline else await loop.run_in_executor(self.executor, rt.act, obs, beta)
                except Exception as e:
                    for g in group:
                        if not g.future.done():
                            g.future.set_exception(e)
                    continue
                t1 = time.perf_counter()
                infer_ms = (t1 - t0) * 1e3
                self._last_call_end = t1
                model_s += t1 - t0
                self._last_model_s = model_s  # what a robot left behind now would wait for
                if self.inline:
                    self._blocked_s += t1 - t0
                if self.on_batch:
                    self.on_batch(len(group), infer_ms)
                for i, g in enumerate(group):
                    if not g.future.done():
                        g.future.set_result((out[i], {"queue_ms": round((t0 - g.enqueued) * 1e3, 3),
                                                      "infer_ms": round(infer_ms, 3), "batch_size": len(group)}))
