"""Asking the inference server for the next chunk, off the control loop: one request in flight at
a time in a background thread; the answer is handed to the arbiter, which drops it if it is stale.
Speaks the server's msgpack wire format (services/inference/wire.py) without importing it, so a
robot computer needs neither torch nor the server stack."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import msgpack
import numpy as np

log = logging.getLogger(__name__)


def _arr(x: np.ndarray, dtype: str) -> dict:
    x = np.ascontiguousarray(x, dtype=dtype)
    return {"dtype": dtype, "shape": list(x.shape), "data": x.tobytes()}


class PolicyClient:
    def __init__(self, url: str, token: str, on_chunk, timeout_s: float = 1.0):
        self.url, self.on_chunk = url.rstrip("/") + "/v1/act", on_chunk
        self.http = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "application/msgpack"})
        self._pending: tuple | None = None
        self._cv = threading.Condition()
        self._stop = False
        self.errors = 0
        self.answers = 0
        self.last_error = ""
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

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                tick, state, images, instruction = self._pending
            body = msgpack.packb({"state": _arr(state, "float32"),
                                  "images": {k: _arr(v, "uint8") for k, v in images.items()},
                                  "instruction": instruction, "seed": tick})
            try:
                r = self.http.post(self.url, content=body)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
                doc = msgpack.unpackb(r.content, raw=False)
                a = doc["actions"]
                chunk = np.frombuffer(a["data"], np.float32).reshape(a["shape"])
                self.answers += 1
                self.on_chunk(chunk, doc["version"], tick)
            except Exception as e:  # the server is down or refuses: the arbiter holds position
                self.errors += 1
                self.last_error = str(e)
                time.sleep(0.05)
            finally:
                with self._cv:
                    if self._pending is not None and self._pending[0] == tick:
                        self._pending = None
