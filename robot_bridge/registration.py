"""Committed episodes are registered with the control-plane API; when it is unreachable the
registration waits on disk (one small file per episode, written atomically) and is retried, so a
restart of the bridge delivers what a previous run could not."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx

from data.files import atomic_write_bytes

log = logging.getLogger(__name__)


class PendingRegistrations:
    def __init__(self, directory: Path, api_url: str | None, token: str | None, retry_s: float = 2.0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.api_url, self.token, self.retry_s = api_url, token, retry_s
        self.delivered = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registrations", daemon=True)
        if api_url:
            self._thread.start()

    def add(self, episode_id: str) -> None:
        atomic_write_bytes(self.dir / f"{episode_id}.json", json.dumps({"episode_id": episode_id}).encode())
        self._wake.set()

    def pending(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def deliver_once(self) -> int:
        n = 0
        with httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10) as c:
            for eid in self.pending():
                try:
                    r = c.post("/v1/episodes/register", json={"episode_id": eid})
                except httpx.HTTPError as e:
                    log.info("API unreachable (%s); %d registration(s) wait on disk", e, len(self.pending()))
                    return n
                if r.status_code in (200, 404, 422):  # done, or refused for good (logged)
                    if r.status_code != 200:
                        log.error("episode %s refused by the API: %s", eid, r.text[:300])
                    (self.dir / f"{eid}.json").unlink(missing_ok=True)
                    n += 1
                    self.delivered += r.status_code == 200
                else:
                    log.warning("registration of %s: %s %s", eid, r.status_code, r.text[:200])
                    return n
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pending():
                self.deliver_once()
            self._wake.wait(self.retry_s)
            self._wake.clear()
