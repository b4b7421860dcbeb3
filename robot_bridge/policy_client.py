"""Asking the inference server for the next chunk, off the control loop: one request in flight at
a time in a background thread; the answer is handed to the arbiter, which drops it if it is stale.
Speaks the shared wire format (data/wire.py, torch-free), so a robot computer needs neither torch
nor the server stack. An answer that is malformed, of the wrong shape or not finite is dropped and
counted (`dropped`): it never reaches the arbiter.

What the served version reads comes from the server (`GET /v1/spec`, this robot's token): its
`n_obs_steps`, the control ticks a request carries. The client learns it before its first request
and again whenever an answer comes from another version or the server refuses a request (422); the
bridge keeps that many ticks (`TickHistory`), and each request carries the last n_obs_steps - 1 of
them before the current one in `history`, shaped to the version's n at sending (`TickHistory.window`).
A request the server refuses (422: it cannot answer this observation) is counted (`rejected`, the
server's message in `last_rejection`) and each distinct message logged once: never a silent hold."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import numpy as np

from data.wire import MAX_HISTORY, MSGPACK, WireError, decode_answer, encode_request
from robot_bridge.arbitration import TickHistory

log = logging.getLogger(__name__)
SPEC_RETRY_S = 1.0  # the spec is asked for again at most this often after a failure or a refusal


class PolicyClient:
    def __init__(self, url: str, token: str, on_chunk, timeout_s: float = 1.0, action_dim: int | None = None):
        base = url.rstrip("/")
        self.url, self.spec_url, self.on_chunk, self.action_dim = base + "/v1/act", base + "/v1/spec", on_chunk, action_dim
        self.http = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": MSGPACK})
        self._pending: tuple | None = None
        self._cv = threading.Condition()
        self._stop = False
        self.errors = 0
        self.answers = 0
        self.dropped = 0  # answers refused as malformed, of the wrong shape or not finite
        self.rejected = 0  # requests the server refused (422): it cannot answer this observation
        self.last_error = ""
        self.last_rejection = ""
        self._logged: set[str] = set()  # rejection messages already logged
        self.spec_version: str | None = None  # the version the spec below is of (None: not learnt yet)
        self.n_obs_steps = 1  # control ticks the served version reads
        self._spec_due, self._spec_next = True, 0.0
        self.round_trips_ms: list[float] = []  # request sent -> answer read, the newest 1000
        self.round_trip_count = 0
        self._thread = threading.Thread(target=self._run, name="policy-client", daemon=True)
        self._thread.start()

    def request(self, tick: int, state: np.ndarray, images: dict[str, np.ndarray], instruction: str,
                past: list[tuple[np.ndarray, dict]] = (), episode_tick: int | None = None) -> None:
        """Non-blocking: replaces any request not yet sent. `past`: the episode's ticks before this
        one, oldest first (TickHistory.past); `episode_tick`: this tick's index within the episode
        (the time input of a version's value-guided chunk selection)."""
        with self._cv:
            self._pending = (tick, state, images, instruction, list(past), episode_tick)
            self._cv.notify()

    @property
    def busy(self) -> bool:
        with self._cv:
            return self._pending is not None

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)
        self.http.close()

    def check_answer(self, body: bytes) -> dict | None:
        """The decoded answer, or None (counted in `dropped`) if it is not a finite chunk of
        action_dim vectors."""
        try:
            doc = decode_answer(body, binary=True)
        except WireError as e:
            self.dropped += 1
            self.last_error = f"answer dropped: {e.message}"
            return None
        if self.action_dim is not None and doc["actions"].shape[1] != self.action_dim:
            self.dropped += 1
            self.last_error = f"answer dropped: actions of shape {list(doc['actions'].shape)}, expected (chunk, {self.action_dim})"
            return None
        return doc

    def _learn_spec(self) -> None:
        """What the version served to this robot reads (GET /v1/spec); on failure the last one known
        stays and it is asked for again within SPEC_RETRY_S."""
        if not self._spec_due or time.monotonic() < self._spec_next:
            return
        self._spec_next = time.monotonic() + SPEC_RETRY_S
        try:
            r = self.http.get(self.spec_url)
            if r.status_code != 200:
                raise RuntimeError(f"spec: {r.status_code}: {_detail(r)}")
            doc = r.json()
            n, version = doc.get("n_obs_steps", 1), doc.get("version")
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_HISTORY + 1 or not isinstance(version, str):
                raise RuntimeError(f"spec: n_obs_steps {str(n)[:20]!r} of version {str(version)[:40]!r} is not usable")
        except Exception as e:  # the server is down, or nothing is deployed yet: asked again later
            self.last_error = str(e)
            return
        if (n, version) != (self.n_obs_steps, self.spec_version):
            log.info("served version %s reads the last %d control tick(s)", version[:40], n)
        self.n_obs_steps, self.spec_version, self._spec_due = n, version, False

    def _rejected(self, message: str) -> None:
        self.rejected += 1
        self.last_rejection = message
        self._spec_due = True  # e.g. another version now, reading another number of ticks
        if message not in self._logged and len(self._logged) < 64:
            self._logged.add(message)
            log.warning("the inference server refused a request (422), the arm holds: %s", message)

    def _run(self) -> None:
        self._learn_spec()  # before the first episode, so the bridge keeps the ticks its first request needs
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                tick, state, images, instruction, past, episode_tick = self._pending
            try:
                self._learn_spec()
                n = self.n_obs_steps
                history = TickHistory.window(past, (state, images), n)[:-1] if n > 1 else ()
                t0 = time.perf_counter()
                r = self.http.post(self.url, content=encode_request(state, images, instruction, seed=tick,
                                                                    history=history, tick=episode_tick))
                if r.status_code != 200:
                    detail = _detail(r)
                    if r.status_code == 422:
                        self._rejected(detail)
                    raise RuntimeError(f"{r.status_code}: {detail}")
                self.answers += 1
                self.round_trips_ms = self.round_trips_ms[-999:] + [(time.perf_counter() - t0) * 1e3]
                self.round_trip_count += 1
                doc = self.check_answer(r.content)
                if doc is not None:
                    if doc["version"] != self.spec_version:  # a new deployment: what does it read?
                        self._spec_due = True
                    self.on_chunk(doc["actions"], doc["version"], tick)
            except Exception as e:  # the server is down or refuses: the arbiter holds position
                self.errors += 1
                self.last_error = str(e)
                time.sleep(0.05)
            finally:
                with self._cv:
                    if self._pending is not None and self._pending[0] == tick:
                        self._pending = None


def _detail(r: httpx.Response) -> str:
    """The server's message for a refused request (its JSON `detail`), short."""
    try:
        detail = r.json().get("detail")
    except Exception:
        detail = None
    return (detail if isinstance(detail, str) else r.text)[:300]
