"""Asking the inference server for the next chunk, off the control loop: one request in flight at
a time in a background thread; the answer is handed to the arbiter, which drops it if it is stale.
Speaks the shared wire format (data/wire.py, torch-free), so a robot computer needs neither torch
nor the server stack. An answer that is malformed, of the wrong shape or not finite is dropped and
counted (`dropped`): it never reaches the arbiter."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import numpy as np

from data.wire import MSGPACK, WireError, decode_answer, encode_request

log = logging.getLogger(__name__)


class PolicyClient:
    def __init__(self, url: str, token: str, on_chunk, timeout_s: float = 1.0, action_dim: int | None = None):
        self.url, self.on_chunk, self.action_dim = url.rstrip("/") + "/v1/act", on_chunk, action_dim
        self.http = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": MSGPACK})
        self._pending: tuple | None = None
        self._cv = threading.Condition()
        self._stop = False
        self.errors = 0
        self.answers = 0
        self.dropped = 0  # answers refused as malformed, of the wrong shape or not finite
        self.last_error = ""
        self.round_trips_ms: list[float] = []  # request sent -> answer read, the newest 1000
        self.round_trip_count = 0
        self._thread = threading.Thread(target=self._run, name="policy-client", daemon=True)
        self._thread.start()

    def request(self, tick: int, state: np.ndarray, images: dict[str, np.ndarray], instruction: str) -> None:
        """Non-blocking: replaces any request not yet sent."""
        with self._cv:
            self._pending = (tick, state, images, instruction)
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

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                tick, state, images, instruction = self._pending
            try:
                t0 = time.perf_counter()
                r = self.http.post(self.url, content=encode_request(state, images, instruction, seed=tick))
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
                self.answers += 1
                self.round_trips_ms = self.round_trips_ms[-999:] + [(time.perf_counter() - t0) * 1e3]
                self.round_trip_count += 1
                doc = self.check_answer(r.content)
                if doc is not None:
                    self.on_chunk(doc["actions"], doc["version"], tick)
            except Exception as e:  # the server is down or refuses: the arbiter holds position
                self.errors += 1
                self.last_error = str(e)
                time.sleep(0.05)
            finally:
                with self._cv:
                    if self._pending is not None and self._pending[0] == tick:
                        self._pending = None
