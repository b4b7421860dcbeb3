"""The episode shipper: a robot on its own computer records into its local store, and its committed
episodes reach the central store by themselves, in the background (its own process, `recap bridge
ship`, or its own thread): the control loop never waits on the network.

How an episode travels (the central side is IngestSpool in data/transfer.py, under
`/v1/episodes/ingest`):
- It is read as an `EpisodeTar` (deterministic bytes); its sha256 is computed once, checking every
  file against the manifest on the way (a corrupt local copy is never sent), and kept in the
  ledger, `<store>/shipping/<episode>.json`, so a restart does not read it again.
- The central side is asked where its verified partial copy ends; chunks go from there, each with
  its sha256 (a chunk damaged in transit is refused and sent again), paced to `rate_bytes_s`.
- The commit makes the central side re-hash the whole, adopt the episode and index it; the answer
  `done` is written to the ledger. Shipping again is a no-op (`done` at once), never a duplicate.
- A local copy is deleted only when the central side says `done` for it again at that moment, and
  only when it is neither among the `keep_newest` newest episodes nor younger than `keep_hours`.
  The directory is renamed to a hidden name first, so a crash mid-delete never leaves a torn
  episode that readers would list.
kill -9 at any instant loses nothing: the ledger is written atomically, the store is only read
until the central side has confirmed, and the central partial holds only verified bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from data.files import atomic_write_json, fsync_dir
from data.store import MANIFEST, EpisodeStore, StoreError, read_labels
from data.transfer import EpisodeTar

log = logging.getLogger(__name__)

LEDGER = "shipping"  # under the store root
DELETING_SUFFIX = ".shipped"  # hidden name of a confirmed episode while it is deleted


@dataclass(frozen=True)
class ShipperConfig:
    api_url: str
    token: str
    store_root: Path
    rate_bytes_s: float = 0.0  # bandwidth cap; 0: unlimited
    chunk_bytes: int = 4 << 20
    keep_newest: int = 20  # retention: confirmed episodes kept locally beyond these two limits are deleted
    keep_hours: float = 24.0
    poll_s: float = 5.0  # how often the store is looked at for new committed episodes
    retry_max_s: float = 60.0  # back-off ceiling while the central side is unreachable
    timeout_s: float = 30.0
    commit_timeout_s: float = 900.0  # the central side re-hashes and adopts the whole episode


class ShipDeferred(Exception):
    """The central side is unreachable or busy: try again later (nothing is lost)."""


@dataclass
class ShipCounters:
    shipped: int = 0  # episodes the central side confirmed during this run
    already_there: int = 0  # of those, confirmed at once (a second ship)
    bytes_sent: int = 0
    send_s: float = 0.0  # wall time spent sending chunks (throughput: bytes_sent / send_s)
    chunks_refused: int = 0  # damaged in transit: refused centrally, sent again
    resumed: int = 0  # uploads continued from a central partial copy
    deleted: int = 0  # local copies removed past retention
    deferrals: int = 0
    refused: dict = field(default_factory=dict)  # episode -> why the central side will not take it


def ledger_dir(store_root: Path) -> Path:
    return Path(store_root) / LEDGER


def _ledger(store_root: Path, episode_id: str) -> dict:
    try:
        return json.loads((ledger_dir(store_root) / f"{episode_id}.json").read_text())
    except (OSError, ValueError):
        return {}


def backlog(store_root: Path) -> dict:
    """What waits to be shipped: committed episodes the central side has not confirmed, and their
    bytes (from their manifests), plus those refused (kept locally; the ledger says why)."""
    store = EpisodeStore(store_root, create=False)
    n = size = refused = 0
    oldest = None
    for eid in store.episode_ids():
        rec = _ledger(store_root, eid)
        if rec.get("confirmed_at_ns"):
            continue
        if rec.get("refused"):
            refused += 1
            continue
        n += 1
        oldest = oldest or eid
        try:
            manifest = json.loads((store.episode_dir(eid) / MANIFEST).read_text())
            size += sum(int(f["size"]) for f in manifest["files"].values())
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return {"episodes": n, "bytes": size, "refused": refused, "oldest": oldest}


class BacklogProbe:
    """backlog() at most every `every_s` (the bridge's ~/stats asks once a second)."""

    def __init__(self, store_root: Path, every_s: float = 10.0):
        self.store_root, self.every_s = Path(store_root), every_s
        self._at, self._value = -1e9, None

    def shipping(self) -> bool:
        """Whether a shipper works on this store (robots on the central file system have none)."""
        return (self.store_root / LEDGER).is_dir()

    def __call__(self) -> dict | None:
        if time.monotonic() - self._at >= self.every_s:
            self._at = time.monotonic()
            try:
                self._value = backlog(self.store_root)
            except (OSError, StoreError) as e:
                self._value = {"error": str(e)[:200]}
        return self._value


def disk_status(store_root: Path, reserve_mb: float) -> dict:
    """Free space under the store against the reserve an episode may not start below."""
    free_mb = shutil.disk_usage(store_root).free / (1 << 20)
    return {"disk_free_mb": round(free_mb, 1), "disk_reserve_mb": reserve_mb, "disk_low": free_mb < reserve_mb}


def disk_refusal(store_root: Path, reserve_mb: float) -> str | None:
    """Why an episode may not start now (the disk is below the reserve), or None."""
    d = disk_status(store_root, reserve_mb)
    if not d["disk_low"]:
        return None
    return (f"refused: {d['disk_free_mb']:.0f} MB free under {store_root}, below the reserve of {reserve_mb:g} MB "
            "(disk_reserve_mb); the shipper frees space once the central store confirms episodes past retention "
            "(`recap bridge ship --status` shows the backlog)")


class EpisodeShipper:
    """Ships the committed episodes of one store (module docstring). `transport`: httpx's transport
    (the default, or another, e.g. through a proxy)."""

    def __init__(self, cfg: ShipperConfig, transport: httpx.BaseTransport | None = None):
        self.cfg = cfg
        self.store = EpisodeStore(cfg.store_root, create=False)  # a mistyped path is an error, not a new store
        self.ledger = ledger_dir(self.store.root)
        self.ledger.mkdir(exist_ok=True)
        self.counters = ShipCounters()
        self.last_error: str | None = None
        self.http = httpx.Client(base_url=cfg.api_url, headers={"Authorization": f"Bearer {cfg.token}"},
                                 timeout=cfg.timeout_s, transport=transport)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_send = 0.0

    # -- the ledger ---------------------------------------------------------------------------

    def _record(self, episode_id: str) -> dict:
        return _ledger(self.store.root, episode_id)

    def _write(self, episode_id: str, rec: dict) -> None:
        atomic_write_json(self.ledger / f"{episode_id}.json", rec)

    # -- one episode ----------------------------------------------------------------------------

    def _call(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise ShipDeferred(f"central side unreachable: {type(e).__name__}: {e}") from None
        if r.status_code >= 500 or r.status_code in (401, 408, 413, 429):  # down, busy, full or our token
            raise ShipDeferred(f"{method} {url}: {r.status_code} {r.text[:200]}")
        return r

    def _detail(self, r: httpx.Response) -> str:
        try:
            return str(r.json().get("detail"))[:300]
        except ValueError:
            return r.text[:300]

    def _refuse(self, episode_id: str, rec: dict, r: httpx.Response) -> bool:
        rec["refused"] = f"{r.status_code}: {self._detail(r)}"
        self._write(episode_id, rec)
        self.counters.refused[episode_id] = rec["refused"]
        log.error("episode %s refused by the central side (kept here): %s", episode_id, rec["refused"])
        return False

    def _pace(self, n: int) -> None:
        if self.cfg.rate_bytes_s <= 0:
            return
        now = time.monotonic()
        if self._next_send > now:
            self._stop.wait(self._next_send - now)
        self._next_send = max(now, self._next_send) + n / self.cfg.rate_bytes_s

    def _open(self, episode_id: str, sha: str, size: int) -> dict:
        r = self._call("POST", "/v1/episodes/ingest", json={"episode_id": episode_id, "sha256": sha, "size": size})
        if r.status_code == 409 and "working on" in r.text:  # another request on this upload: soon done
            raise ShipDeferred(self._detail(r))
        if r.status_code != 200:
            return {"conflict": r}
        return r.json()

    def ship(self, episode_id: str) -> bool:
        """Send one committed episode until the central side confirms it; True when it did. False
        when it was refused for good (recorded in the ledger, the local copy kept). ShipDeferred when
        the central side cannot be reached now."""
        rec = self._record(episode_id)
        if rec.get("confirmed_at_ns"):
            return True
        tar = EpisodeTar(self.store.episode_dir(episode_id))
        if rec.get("checksum") != tar.checksum:  # new, or the episode's files changed: read it again
            rec = {"checksum": tar.checksum}
        if rec.get("refused"):
            return False
        if not rec.get("sha256"):
            try:
                rec["sha256"], rec["size"] = tar.digest(), tar.size
            except StoreError as e:
                rec["refused"] = f"local copy does not match its manifest: {e}"
                self._write(episode_id, rec)
                self.counters.refused[episode_id] = rec["refused"]
                log.error("episode %s not shipped: %s (run `recap data fsck`)", episode_id, e)
                return False
            self._write(episode_id, rec)
        sha, size = rec["sha256"], rec["size"]
        state = self._open(episode_id, sha, size)
        if "conflict" in state:
            return self._refuse(episode_id, rec, state["conflict"])
        if state["status"] == "done":
            self.counters.already_there += 1
        else:
            offset = int(state["offset"])
            self.counters.resumed += offset > 0
            log.info("episode %s: sending from byte %d of %d", episode_id, offset, size)
            t0 = time.monotonic()
            try:
                self._send(episode_id, tar, sha, offset)
            finally:
                self.counters.send_s += time.monotonic() - t0
            committed = tar.manifest.get("committed_at_ns")
            labels = read_labels(tar.path, committed if type(committed) is int else None)
            body = {"outcome": labels[-1]["outcome"]} if labels else {}
            r = self._call("POST", f"/v1/episodes/ingest/{episode_id}/{sha}/commit", json=body,
                           timeout=self.cfg.commit_timeout_s)
            if r.status_code == 409:
                raise ShipDeferred(self._detail(r))
            if r.status_code == 422 and "whole upload" in r.text:  # the central copy was discarded
                del rec["sha256"]  # read the local copy again (and check it) before the next try
                self._write(episode_id, rec)
                raise ShipDeferred(self._detail(r))
            if r.status_code != 200:
                return self._refuse(episode_id, rec, r)
        rec["confirmed_at_ns"] = time.time_ns()
        self._write(episode_id, rec)
        self.counters.shipped += 1
        log.info("episode %s shipped (%d bytes, sha256 %s…)", episode_id, size, sha[:12])
        return True

    def _send(self, episode_id: str, tar: EpisodeTar, sha: str, offset: int) -> None:
        chunk = self.cfg.chunk_bytes
        if self.cfg.rate_bytes_s > 0:  # bursts of at most about a second
            chunk = max(64 << 10, min(chunk, int(self.cfg.rate_bytes_s)))
        refused_in_a_row = 0
        while offset < tar.size:
            if self._stop.is_set():
                raise ShipDeferred("stopping")
            data = tar.read(offset, chunk)
            self._pace(len(data))
            r = self._call("PUT", f"/v1/episodes/ingest/{episode_id}/{sha}", params={"offset": offset},
                           content=data, headers={"X-Chunk-Sha256": _sha256(data),
                                                  "Content-Type": "application/octet-stream"})
            if r.status_code == 200:
                offset = int(r.json()["offset"])
                self.counters.bytes_sent += len(data)
                refused_in_a_row = 0
            elif r.status_code == 409 and "X-Upload-Offset" in r.headers:
                offset = int(r.headers["X-Upload-Offset"])  # e.g. an earlier run's chunk did arrive
            elif r.status_code == 409:
                raise ShipDeferred(self._detail(r))
            elif r.status_code == 422 and "chunk" in r.text:
                self.counters.chunks_refused += 1
                refused_in_a_row += 1
                log.warning("episode %s: chunk at %d refused (%s); sending it again", episode_id, offset,
                            self._detail(r))
                if refused_in_a_row >= 5:
                    raise ShipDeferred("five chunks in a row refused: the link damages data")
            else:
                raise ShipDeferred(f"chunk at {offset}: {r.status_code} {self._detail(r)}")

    # -- retention -------------------------------------------------------------------------------

    def prune(self) -> int:
        """Delete local copies the central side confirms again now, past the retention limits."""
        for d in self.store.episodes_dir.glob(f".*{DELETING_SUFFIX}"):  # a delete a crash interrupted
            shutil.rmtree(d, ignore_errors=True)
        ids = self.store.episode_ids()
        keep = set(ids[-self.cfg.keep_newest:]) if self.cfg.keep_newest > 0 else set()
        cutoff = time.time_ns() - int(self.cfg.keep_hours * 3600e9)
        n = 0
        for eid in ids:
            rec = self._record(eid)
            if eid in keep or not rec.get("confirmed_at_ns") or self._stop.is_set():
                continue
            path = self.store.episode_dir(eid)
            try:
                manifest = json.loads((path / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            if manifest.get("checksum") != rec.get("checksum") or manifest.get("committed_at_ns", 0) > cutoff:
                continue
            state = self._open(eid, rec["sha256"], rec["size"])  # the central side confirms it now
            if state.get("status") != "done":
                log.warning("episode %s: the central side no longer confirms it; shipping it again", eid)
                self._write(eid, {"checksum": rec["checksum"], "sha256": rec["sha256"], "size": rec["size"]})
                continue
            hidden = path.with_name(f".{eid}{DELETING_SUFFIX}")
            path.rename(hidden)
            fsync_dir(path.parent)
            shutil.rmtree(hidden, ignore_errors=True)
            n += 1
        self.counters.deleted += n
        return n

    # -- the loop --------------------------------------------------------------------------------

    def pending(self) -> list[str]:
        """Committed episodes not yet confirmed nor refused, oldest first."""
        out = []
        for eid in self.store.episode_ids():
            rec = self._record(eid)
            if not rec.get("confirmed_at_ns") and not rec.get("refused"):
                out.append(eid)
        return out

    def run_once(self) -> int:
        """Ship every pending episode, then apply retention; the number shipped. ShipDeferred when the
        central side became unreachable on the way (what was confirmed stays confirmed)."""
        n = 0
        for eid in self.pending():
            if self._stop.is_set():
                break
            try:
                n += self.ship(eid)
            except StoreError as e:  # deleted or changed under us (fsck): looked at again next pass
                log.warning("episode %s: %s", eid, e)
        self.prune()
        self._status()
        return n

    def _status(self) -> None:
        atomic_write_json(self.ledger / "status.json",
                          {"updated_at_ns": time.time_ns(), "backlog": backlog(self.store.root),
                           "counters": asdict(self.counters), "last_error": self.last_error}, fsync=False)

    def run(self) -> None:
        """Until stop(): ship, wait `poll_s` (or back off while the central side is unreachable)."""
        failures = 0
        while not self._stop.is_set():
            try:
                self.run_once()
                failures, self.last_error = 0, None
                wait = self.cfg.poll_s
            except ShipDeferred as e:
                failures += 1
                self.counters.deferrals += 1
                self.last_error = str(e)
                wait = min(self.cfg.retry_max_s, 0.5 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)
                log.info("shipping deferred (%s); next try in %.1f s", e, wait)
                try:
                    self._status()
                except OSError:
                    pass
            self._stop.wait(wait)

    def start(self) -> "EpisodeShipper":
        self._thread = threading.Thread(target=self.run, name="shipper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.http.close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
