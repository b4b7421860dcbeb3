"""The episode store: one zarr v3 group per episode under `<root>/episodes/<episode_id>/`.

The rules that keep it crash-safe, in one place:
- A writer holds an flock on `<episode>/.lock` for as long as it writes; the kernel drops it when
  the writer dies, so fsck can tell a crashed episode from a live one.
- Ticks are flushed in chunks of `flush_ticks`; after each flush's files are durable,
  `journal.json` records how many ticks are. Recovery trusts the journal, nothing else.
- Every file is written to a temporary name, fsynced and renamed (see zarr_store.py).
- An episode is committed when `manifest.json` (sha256 of every file) exists. It is written last,
  atomically; committed files are never written again. Readers list only committed episodes.
- Outcome labels given after the commit go to `labels/`, one small file each, never into the
  checksummed files; the newest one wins and the history stays. Only `EpisodeStore.label` writes
  them (named `<labelled_at_ns, 20 digits>-<6 hex>.json`, never dated before the commit).
- An episode's directory name, its manifest's `episode_id` and its attributes' `episode_id` are the
  same id, of the form `new_episode_id` makes (EPISODE_ID_RE); a directory that disagrees is corrupt.
- A committed episode has at least MIN_EPISODE_TICKS ticks of finite values: commit refuses (and
  discards) a shorter one. Episodes from older stores or other paths may still break this;
  `EpisodeData.defect()` says why, and training selections leave such episodes out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import re
import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync
from zarr.storage import LocalStore

from data.codecs import JpegCodec, encode_frame, jpeg_shard, jpeg_shard_layout
from data.files import FileLock, atomic_write_json, fsync_dir, is_disk_full
from data.schema import (
    ACTION,
    ActionSource,
    ACTION_SOURCE,
    IMAGES,
    POLICY_VERSION,
    PROPOSED,
    STATE,
    TIMESTAMP,
    INT64_MAX,
    SOURCE_COUNT_KEYS,
    EpisodeFeatures,
    EpisodeInfo,
    EpisodeStatus,
    Outcome,
    SchemaError,
    Tick,
    check_id,
    check_name,
    validate_tick,
)
from data.zarr_store import DurableLocalStore

STORE_FORMAT = "recap-episode-store"
MANIFEST = "manifest.json"
JOURNAL = "journal.json"
LOCK = ".lock"
LABELS = "labels"
CREATING_SUFFIX = ".creating"  # hidden name of an episode directory until its writer holds the lock
# Files that live beside the zarr data and are not covered by the manifest.
UNCHECKSUMMED = {MANIFEST, JOURNAL, LOCK}

SMALL_CHUNK_TICKS = 300  # time chunk of the non-image arrays (~10 s at 30 Hz)
JPEG_QUALITY = 90

# zarr's fused pipeline runs codecs off its event loop: measured 1.6x faster writes, 1.4x faster
# random frame reads than the default pipeline for this store's layout.
zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.FusedCodecPipeline"})


class StoreError(RuntimeError):
    """The store or one of its episodes cannot be used; the message names which and why."""


class StoreFullError(StoreError):
    """The disk filled up while writing an episode; committed episodes are untouched."""


class EpisodeNotFound(StoreError, KeyError):
    pass


class DegenerateEpisodeError(StoreError):
    """An episode too short to commit (or to train on); the message names it and says why."""


MIN_EPISODE_TICKS = 2  # one tick has no transition: nothing to learn a value or an action chunk from


def new_episode_id(robot_id: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{stamp}-{robot_id}-{secrets.token_hex(3)}"


# What new_episode_id makes: UTC start stamp, robot id, 6 hex digits (at most 128 characters in all).
EPISODE_ID_RE = re.compile(r"^(?=.{1,128}$)[0-9]{8}T[0-9]{6}-[A-Za-z0-9][A-Za-z0-9_.\-]*-[0-9a-f]{6}$")
LABEL_FILE_RE = re.compile(r"^([0-9]{20})-[0-9a-f]{6}\.json$")


def check_episode_id(value: Any) -> str:
    """`value` if it has the form of an id new_episode_id makes, else SchemaError."""
    if not isinstance(value, str) or not EPISODE_ID_RE.match(value):
        raise SchemaError("episode_id", f"{str(value)[:140]!r} is not an episode id (<yyyymmdd>T<hhmmss>-<robot>-<6 hex>)")
    return value


def read_label_file(f: Path, committed_at_ns: int | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the label, None) if `f` is a label file as EpisodeStore.label writes it, else (None, what is wrong
    with it): what the store reads as a label and what fsck keeps are the same files."""
    m = LABEL_FILE_RE.match(f.name)
    if not m or not f.is_file() or f.is_symlink():
        return None, "not a label file written by the store"
    try:
        d = json.loads(f.read_text())
        if not isinstance(d, dict) or set(d) != {"outcome", "labeller", "labelled_at_ns"}:
            return None, "label file has unexpected fields"
        outcome = str(Outcome(d["outcome"]))
        at = d["labelled_at_ns"]
        if type(at) is not int or not 0 <= at <= INT64_MAX:
            return None, "label file has fields of the wrong type"
        check_name("labeller", d["labeller"])
    except SchemaError as e:
        return None, f"label file's {e}"
    except (OSError, ValueError, TypeError) as e:
        return None, f"label file unreadable: {type(e).__name__}"
    if at != int(m.group(1)):
        return None, "label time differs from the file's name"
    if committed_at_ns is not None and at < committed_at_ns:
        return None, "label dated before the episode's commit"
    return {"outcome": outcome, "labeller": d["labeller"], "labelled_at_ns": at}, None


def label_file_problem(f: Path, committed_at_ns: int | None) -> str | None:
    """None if `f` is a label file as EpisodeStore.label writes it, else what is wrong with it."""
    return read_label_file(f, committed_at_ns)[1]


def manifest_checksum(files: dict[str, dict[str, Any]]) -> str:
    """One sha256 over the sorted (path, sha256) list: the episode's checksum in the catalog."""
    h = hashlib.sha256()
    for key in sorted(files):
        h.update(f"{key}\t{files[key]['sha256']}\n".encode())
    return h.hexdigest()


def _array_specs(features: EpisodeFeatures) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-tick arrays (besides images): name -> (shape of one tick, dtype)."""
    return {
        TIMESTAMP: ((), "int64"),
        STATE: ((features.state_dim,), "float32"),
        ACTION: ((features.action_dim,), "float32"),
        ACTION_SOURCE: ((), "uint8"),
        PROPOSED: ((features.proposed_chunk, features.action_dim), "float32"),
        POLICY_VERSION: ((), "int16"),
    }


class EpisodeStore:
    """A directory of episodes. Safe for several writer processes and readers at once."""

    def __init__(self, root: str | Path, *, create: bool = True):
        self.root = Path(root).expanduser().resolve()
        self.episodes_dir = self.root / "episodes"
        meta = self.root / "store.json"
        if not meta.exists():
            if not create:
                raise StoreError(f"{self.root} is not an episode store (no store.json)")
            self.episodes_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta, {"format": STORE_FORMAT, "version": 1})  # identical if two processes race
        else:
            try:
                info = json.loads(meta.read_text())
            except (OSError, ValueError) as e:
                raise StoreError(f"{meta} is unreadable: {e}") from e
            if info.get("format") != STORE_FORMAT:
                raise StoreError(f"{meta} does not describe an episode store")
            self.episodes_dir.mkdir(exist_ok=True)

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.root)!r})"

    # -- writing --------------------------------------------------------------------------

    def new_episode(
        self,
        *,
        robot_id: str,
        task_id: str,
        features: EpisodeFeatures,
        fps: float,
        instruction: str = "",
        flush_ticks: int = 10,
        fsync: bool = True,
        episode_id: str | None = None,
        start_time_ns: int | None = None,
        extra: dict[str, Any] | None = None,
        frames_elsewhere: Callable[[], int] | None = None,
    ) -> "EpisodeWriter":
        """`frames_elsewhere`: the camera frames are written by a FrameWriter in another process (the
        bridge's camera process); the function says for how many ticks they are durable."""
        return EpisodeWriter(
            self,
            robot_id=robot_id,
            task_id=task_id,
            features=features,
            fps=fps,
            instruction=instruction,
            flush_ticks=flush_ticks,
            fsync=fsync,
            episode_id=episode_id,
            start_time_ns=start_time_ns,
            extra=extra or {},
            frames_elsewhere=frames_elsewhere,
        )

    # -- listing and reading --------------------------------------------------------------

    def episode_dir(self, episode_id: str) -> Path:
        check_id("episode_id", episode_id)
        return self.episodes_dir / episode_id

    def location(self, episode_id: str) -> str:
        return self.episode_dir(episode_id).as_uri()

    def is_committed(self, episode_id: str) -> bool:
        return (self.episode_dir(episode_id) / MANIFEST).is_file()

    def _dirs(self) -> Iterator[os.DirEntry]:
        try:
            with os.scandir(self.episodes_dir) as it:
                for e in it:
                    if e.is_dir() and not e.name.startswith("."):
                        yield e
        except FileNotFoundError:
            return

    def episode_ids(self) -> list[str]:
        """Committed episodes, oldest first (ids start with their UTC start time)."""
        return sorted(e.name for e in self._dirs() if os.path.isfile(os.path.join(e.path, MANIFEST)))

    def in_flight_ids(self) -> list[str]:
        """Episodes without a manifest: being written now, or left behind by a crash."""
        return sorted(e.name for e in self._dirs() if not os.path.isfile(os.path.join(e.path, MANIFEST)))

    def open(self, episode_id: str) -> "EpisodeData":
        path = self.episode_dir(episode_id)
        if not (path / MANIFEST).is_file():
            if path.exists():
                raise EpisodeNotFound(f"episode {episode_id} is not committed (in flight or crashed; see `recap data fsck`)")
            raise EpisodeNotFound(f"no episode {episode_id} in {self.root}")
        return EpisodeData(path)

    def __iter__(self) -> Iterator["EpisodeData"]:
        for eid in self.episode_ids():
            yield self.open(eid)

    # -- labels ---------------------------------------------------------------------------

    def label(self, episode_id: str, outcome: Outcome | str, labeller: str, at_ns: int | None = None) -> EpisodeInfo:
        """Record a new outcome label for a committed episode; earlier labels are kept."""
        outcome = Outcome(outcome)
        check_name("labeller", labeller)  # who labelled the outcome: catalog text
        ep = self.open(episode_id)
        at_ns = at_ns or time.time_ns()
        committed = ep.manifest.get("committed_at_ns")
        if type(at_ns) is not int or at_ns > INT64_MAX or (type(committed) is int and at_ns < committed):
            raise SchemaError("labelled_at_ns", "a label is an integer time (ns, below 2**63) no earlier than the "
                              "episode's commit")
        label = {"outcome": str(outcome), "labeller": labeller, "labelled_at_ns": at_ns}
        atomic_write_json(ep.path / LABELS / f"{at_ns:020d}-{secrets.token_hex(3)}.json", label)
        fsync_dir(ep.path / LABELS)
        return self.open(episode_id).info


def read_labels(path: Path, committed_at_ns: int | None = None) -> list[dict[str, Any]]:
    """An episode's outcome-label history, oldest first. Only label files as EpisodeStore.label writes
    them count (read_label_file); any other file in `labels/` is skipped here and reported by fsck."""
    label_dir = path / LABELS
    if not label_dir.is_dir():
        return []
    return [lab for f in sorted(label_dir.glob("*.json")) if (lab := read_label_file(f, committed_at_ns)[0])]


class EpisodeData:
    """Read access to one committed episode. Non-image arrays load once, images per frame."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.manifest = json.loads((path / MANIFEST).read_text())
            self.group = zarr.open_group(LocalStore(path, read_only=True), mode="r")
            self.info = EpisodeInfo.from_attrs(self.group.attrs.asdict())
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:  # e.g. an infinite time
            raise StoreError(f"episode {path.name} is unreadable: {e}; run `recap data fsck`") from e
        if self.info.episode_id != path.name:  # never let one directory speak for another episode
            raise StoreError(f"episode {path.name} is unreadable: its attributes name episode "
                             f"{str(self.info.episode_id)[:140]!r}; run `recap data fsck --repair`")
        try:  # nor bring values no writer here makes (one put into the store by hand) into catalog columns or lookups
            self.info.check_values()
        except SchemaError as e:
            raise StoreError(f"episode {path.name} is unreadable: attribute {e}; run `recap data fsck`") from None
        committed = self.manifest.get("committed_at_ns") if isinstance(self.manifest, dict) else None
        self.labels = read_labels(path, committed if type(committed) is int else None)
        if self.labels:
            last = self.labels[-1]
            self.info.outcome = Outcome(last["outcome"])
            self.info.outcome_labeller = last["labeller"]
            self.info.outcome_labelled_at_ns = last["labelled_at_ns"]
        self._cache: dict[str, np.ndarray] = {}
        self._image_arrays: dict[str, zarr.Array] = {}
        self._shard_layout: dict[str, int | None] = {}  # camera -> frames per shard (direct reads)
        self._videos: dict[str, Any] = {}  # camera -> data.video.VideoFrames, opened on first read
        self._tiers: dict[str, str] = {}

    @property
    def episode_id(self) -> str:
        return self.info.episode_id

    @property
    def checksum(self) -> str:
        return self.manifest["checksum"]

    def __len__(self) -> int:
        return self.info.num_ticks

    def array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self.group[name][: self.info.num_ticks]
        return self._cache[name]

    @property
    def timestamps_ns(self) -> np.ndarray:
        return self.array(TIMESTAMP)

    @property
    def state(self) -> np.ndarray:
        return self.array(STATE)

    @property
    def action(self) -> np.ndarray:
        return self.array(ACTION)

    @property
    def action_source(self) -> np.ndarray:
        return self.array(ACTION_SOURCE)

    @property
    def proposed_action(self) -> np.ndarray:
        return self.array(PROPOSED)

    def policy_version(self, t: int) -> str | None:
        i = int(self.array(POLICY_VERSION)[t])
        return None if i < 0 else self.info.policy_versions[i]

    @property
    def cameras(self) -> list[str]:
        return list(self.info.features.cameras)

    def _image_array(self, camera: str) -> zarr.Array:
        if camera not in self._image_arrays:
            if camera not in self.info.features.cameras:
                raise KeyError(f"episode {self.episode_id} has no camera {camera!r}; cameras: {self.cameras}")
            self._image_arrays[camera] = self.group[f"{IMAGES}/{camera}"]
        return self._image_arrays[camera]

    def tier(self, camera: str) -> str:
        """Where `camera`'s frames are read from: "jpeg" (the writer's tier, while the manifest lists
        it) or "video" (data/video.py)."""
        if camera not in self.info.features.cameras:
            raise KeyError(f"episode {self.episode_id} has no camera {camera!r}; cameras: {self.cameras}")
        if camera not in self._tiers:
            from data.video import tiers

            self._tiers[camera] = "video" if tiers(self.manifest, [camera])[camera] == {"video"} else "jpeg"
        return self._tiers[camera]

    def _video(self, camera: str):
        from data.video import VideoFrames, video_key

        v = self._videos.get(camera)
        if v is None or v._pid != os.getpid():  # a forked DataLoader worker opens its own
            meta = self.manifest["video"][camera]
            v = self._videos[camera] = VideoFrames(self.path / video_key(camera), meta,
                                                   self.info.features.cameras[camera].channels)
        return v

    def _jpeg_gone(self, camera: str, start: int, stop: int) -> bool:
        """True when a JPEG shard of ticks [start, stop) is no longer on disk and the manifest now
        lists the camera's video only (its JPEG tier was dropped while this reader was open): the
        caller reads the video instead. zarr reads a missing shard as zeros, hence the check after
        the read (a shard that existed when read stays valid; files never come back)."""
        arr = self._image_array(camera)
        per = int(arr.shards[0]) if arr.shards else 1
        base = self.path / IMAGES / camera / "c"
        if all((base / str(s) / "0" / "0" / "0").exists() for s in range(start // per, (stop - 1) // per + 1)):
            return False
        try:
            fresh = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        if fresh.get("episode_id") == self.episode_id:
            self.manifest, self._tiers = fresh, {}
        return self.tier(camera) == "video"

    def image(self, camera: str, t: int) -> np.ndarray:
        if not 0 <= t < len(self):
            raise IndexError(f"tick {t} out of range for episode {self.episode_id} of {len(self)} ticks")
        if self.tier(camera) == "jpeg":
            img = self._jpeg_frame(camera, t)
            if img is not None:
                return img
            img = self._image_array(camera)[t]
            if not self._jpeg_gone(camera, t, t + 1):
                return img
        return self._video(camera).frame(t)

    def _jpeg_frame(self, camera: str, t: int) -> np.ndarray | None:
        """Tick t's frame read straight from its shard file (data/codecs.read_sharded_jpeg), or None
        when the array's layout is another or the shard/frame is not on disk: the zarr read then
        decides (fill value, or the video tier after a transcode dropped the JPEG tier)."""
        from data.codecs import jpeg_shard_layout, read_sharded_jpeg

        if camera not in self._shard_layout:
            self._shard_layout[camera] = jpeg_shard_layout(self._image_array(camera))
        per = self._shard_layout[camera]
        if per is None:
            return None
        shard = self.path / IMAGES / camera / "c" / str(t // per) / "0" / "0" / "0"
        return read_sharded_jpeg(str(shard), t % per, per, self.info.features.cameras[camera].channels)

    def images(self, camera: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = len(self) if stop is None else min(stop, len(self))
        if self.tier(camera) == "jpeg":
            imgs = self._image_array(camera)[start:stop]
            if stop <= start or not self._jpeg_gone(camera, start, stop):
                return imgs
        spec = self.info.features.cameras[camera]
        out = np.empty((max(0, stop - start), spec.height, spec.width, spec.channels), np.uint8)
        v = self._video(camera)
        for i, t in enumerate(range(start, stop)):
            out[i] = v.frame(t)
        return out

    def frame_count(self, camera: str) -> int:
        """Frames `camera` holds in the tier it is read from."""
        if self.tier(camera) == "video":
            return int(self.manifest["video"][camera]["frames"])
        return self._image_array(camera).shape[0]

    def defect(self) -> str | None:
        """Why this episode cannot be trained on (too short, arrays of another length than its tick
        count, non-finite values, unreadable), or None when it can."""
        n = self.info.num_ticks
        if n < MIN_EPISODE_TICKS:
            return f"{n} tick{'s' if n != 1 else ''} (at least {MIN_EPISODE_TICKS} needed)"
        try:
            for name in (TIMESTAMP, STATE, ACTION, ACTION_SOURCE):
                rows = self.group[name].shape[0]
                if rows < n:
                    return f"{name} has {rows} rows for {n} ticks"
                values = self.array(name)
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    t = int(np.flatnonzero(~np.isfinite(values).reshape(n, -1).all(axis=1))[0])
                    return f"{name} has NaN or infinite values (first at tick {t})"
            for cam in self.cameras:
                rows = self.frame_count(cam)
                if rows < n:
                    return f"camera {cam} has {rows} frames for {n} ticks"
            if not (np.diff(self.timestamps_ns) > 0).all():
                return f"{TIMESTAMP} does not increase"
            if int(self.action_source.max()) > max(ActionSource):
                return f"{ACTION_SOURCE} has unknown values"
        except (KeyError, OSError, ValueError) as e:  # the reason travels to API clients: no paths
            return f"unreadable ({type(e).__name__}; see `recap data fsck`)"
        return None


@dataclass
class _Chunk:
    start: int
    n: int
    arrays: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    encoded: dict[str, list] = field(default_factory=dict)  # camera -> per tick, its JPEG encoding (a future)
    versions: list[str] | None = None  # policy version names known when the chunk was queued


class _FlushThread:
    """The background flush loop both writers run: chunks from `_queue` to `_write_chunk` until None;
    after a failure the rest is drained unwritten and the error waits for the caller's next call."""

    def _flush_loop(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            try:
                self._write_chunk(chunk)
            except BaseException as e:  # reported to the caller on its next call
                self._fail(e)


class EpisodeWriter(_FlushThread):
    """Appends ticks to one episode, flushing every `flush_ticks` from a background thread.

    Memory is bounded: at most one full chunk waits for the flush thread; `append` blocks beyond that.
    `commit()` makes the episode visible atomically; a crash before it leaves the episode for fsck.

    With `frames_elsewhere` the camera frames are written by a FrameWriter in another process: this
    writer creates the image arrays (their metadata exists before the other side writes), then never
    writes them again; ticks come without images; the journal never claims more ticks than
    `frames_elsewhere()` says have durable frames; `commit` takes the FrameWriter's file checksums.
    """

    _QUEUE_DEPTH = 1  # one chunk may wait: bounds memory and what commit() has to drain

    def __init__(self, store: EpisodeStore, *, robot_id: str, task_id: str, features: EpisodeFeatures, fps: float,
                 instruction: str, flush_ticks: int, fsync: bool, episode_id: str | None,
                 start_time_ns: int | None, extra: dict[str, Any],
                 frames_elsewhere: Callable[[], int] | None = None):
        check_id("robot_id", robot_id)
        check_id("task_id", task_id)
        if not (fps > 0):
            raise SchemaError("fps", f"must be positive, got {fps}")
        if flush_ticks < 1:
            raise SchemaError("flush_ticks", "must be >= 1")
        self.store = store
        self.features = features
        self.flush_ticks = int(flush_ticks)
        self.episode_id = episode_id or new_episode_id(robot_id)
        self.path = store.episode_dir(self.episode_id)
        # what the catalog and playback read back must be what an imported episode is held to (verify_episode)
        self.info = EpisodeInfo(
            episode_id=self.episode_id, robot_id=robot_id, task_id=task_id, instruction=instruction, fps=float(fps),
            features=features, start_time_ns=int(start_time_ns or time.time_ns()), extra=dict(extra),
        ).check_values()
        if self.path.exists():
            raise StoreError(f"episode {self.episode_id} already exists in {store.root}")
        # Build the directory under a hidden name, lock it, then rename it into place: listings (and
        # fsck) never see an episode that is not yet locked by its writer.
        creating = store.episodes_dir / f".{self.episode_id}{CREATING_SUFFIX}"
        creating.mkdir(parents=True, exist_ok=False)
        self._lock = FileLock(creating / LOCK)
        if not self._lock.try_acquire():
            raise StoreError(f"episode {self.episode_id} is locked by another writer")
        try:
            atomic_write_json(creating / JOURNAL, {"flushed_ticks": 0, "policy_versions": []}, fsync=fsync)
            os.rename(creating, self.path)
        except BaseException as e:
            self._lock.release()
            shutil.rmtree(creating, ignore_errors=True)
            if is_disk_full(e):
                raise StoreFullError(f"disk full while creating episode {self.episode_id} in {store.root}") from e
            raise
        self._zstore = DurableLocalStore(self.path, fsync=fsync)
        self._fsync = fsync
        self._specs = _array_specs(features)
        self._frames_elsewhere = frames_elsewhere
        # the cameras this writer writes itself (none when a FrameWriter elsewhere does)
        self._own_cameras = {} if frames_elsewhere else dict(features.cameras)
        self._tick_features = replace(features, cameras=self._own_cameras) if frames_elsewhere else features
        # Cameras encode in parallel (libjpeg-turbo releases the GIL).
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(features.cameras)), thread_name_prefix="jpeg")
        self._closed = False
        self._error: BaseException | None = None
        self._last_ts: int | None = None
        self._versions: dict[str, int] = {}
        self._num_ticks = 0  # appended
        self._num_flushed = 0  # durable
        self._source_counts = np.zeros(4, np.int64)
        self._events: list[dict] = []  # note_event
        self._events_dropped = 0
        try:
            self._group = zarr.create_group(self._zstore, attributes=self.info.to_attrs())
            self._arrays: dict[str, zarr.Array] = {}
            for name, (shape, dtype) in self._specs.items():
                self._arrays[name] = self._group.create_array(
                    name, shape=(0, *shape), dtype=dtype, chunks=(SMALL_CHUNK_TICKS, *shape),
                    fill_value=-1 if name == POLICY_VERSION else 0,
                )
            for cam, spec in features.cameras.items():
                arr = self._group.create_array(
                    f"{IMAGES}/{cam}", shape=(0, *spec.shape), dtype="uint8",
                    shards=(self.flush_ticks, *spec.shape), chunks=(1, *spec.shape),
                    serializer=JpegCodec(quality=JPEG_QUALITY), compressors=None, fill_value=0,
                )
                if jpeg_shard_layout(arr) != self.flush_ticks:  # the flushes (here or a FrameWriter's) write it
                    raise StoreError(f"camera {cam}: unexpected zarr sharding layout")
                if cam in self._own_cameras:  # else the FrameWriter's from here on
                    self._arrays[f"{IMAGES}/{cam}"] = arr
        except BaseException as e:
            self._lock.release()
            if is_disk_full(e):
                raise StoreFullError(f"disk full while creating episode {self.episode_id} in {store.root}") from e
            raise
        self._buffer = self._new_chunk(0)
        self._queue: queue.Queue[_Chunk | None] = queue.Queue(maxsize=self._QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._flush_loop, name=f"flush-{self.episode_id}", daemon=True)
        self._thread.start()

    # -- public API -----------------------------------------------------------------------

    @property
    def num_ticks(self) -> int:
        return self._num_ticks

    @property
    def num_flushed(self) -> int:
        return self._num_flushed

    def append(self, tick: Tick) -> None:
        """Validate and append one tick. A bad tick raises SchemaError and changes nothing."""
        self._check_usable()
        t = validate_tick(tick, self._tick_features, self._last_ts)
        b, i = self._buffer, self._buffer.n
        b.arrays[TIMESTAMP][i] = t.timestamp_ns
        b.arrays[STATE][i] = t.state
        b.arrays[ACTION][i] = t.action
        b.arrays[ACTION_SOURCE][i] = int(t.source)
        b.arrays[PROPOSED][i] = t.proposed
        b.arrays[POLICY_VERSION][i] = self._version_index(t.policy_version)
        for cam, img in t.images.items():
            _add_frame(self._pool, b, cam, img)
        b.n += 1
        self._last_ts = t.timestamp_ns
        self._num_ticks += 1
        self._source_counts[int(t.source)] += 1
        if b.n == self.flush_ticks:
            self._enqueue(b)
            self._buffer = self._new_chunk(self._num_ticks)

    MAX_EVENTS = 1000  # per episode; a flood of events beyond it is dropped (and counted)

    def note_event(self, kind: str, at_ns: int, **detail: str) -> None:
        """Something that happened during the episode at time `at_ns` (the ticks' clock), e.g. the
        policy's mistake a teleoperator's takeover answered (kind "mistake", data/effort.py). Kept at
        commit in the episode's attributes, `extra["events"]`, each with the tick it falls on (the
        first tick at or after it; events outside the episode's ticks are dropped). Each flush's
        journal carries the events noted so far, so an episode fsck recovers keeps those that fall on
        its kept ticks. Callable from any thread."""
        check_id("event kind", kind)
        if not isinstance(at_ns, (int, np.integer)) or isinstance(at_ns, bool) or at_ns <= 0:
            raise SchemaError("event", f"at_ns must be a positive integer, got {at_ns!r}")
        if len(self._events) >= self.MAX_EVENTS:
            self._events_dropped += 1
            return
        # free text (a teleoperator's reason): cut to length, a NUL (which catalog text refuses) made visible
        clean = {str(k)[:64].replace("\x00", "\ufffd"): str(v)[:200].replace("\x00", "\ufffd") for k, v in detail.items()}
        self._events.append({**clean, "kind": kind, "t_ns": int(at_ns)})

    def _placed_events(self) -> list[dict]:
        """The noted events with their tick, in time order (after the last flush)."""
        if not self._events:
            return []
        return place_events(self._events, self._arrays[TIMESTAMP][: self._num_flushed])

    def commit(self, outcome: Outcome | str = Outcome.UNKNOWN, labeller: str | None = None,
               frames_written: dict[str, tuple[str, int]] | None = None) -> EpisodeInfo:
        """Flush the rest, then make the episode visible with its manifest. Returns its attributes.

        An episode of fewer than MIN_EPISODE_TICKS ticks is refused: the writer closes, the episode is
        discarded (there is nothing to recover) and DegenerateEpisodeError says so.
        `frames_written`: with frames written elsewhere, what FrameWriter.finish returned, after it
        returned: every frame of every tick is durable then."""
        self._check_usable()
        if labeller is not None:
            check_name("labeller", labeller)
        if self._frames_elsewhere is not None and frames_written is None:
            raise StoreError(f"episode {self.episode_id}: its frames are written elsewhere; commit needs their files")
        outcome = Outcome(outcome)
        if self._num_ticks < MIN_EPISODE_TICKS:
            self._discard()
            raise DegenerateEpisodeError(
                f"episode {self.episode_id} has {self._num_ticks} tick{'s' if self._num_ticks != 1 else ''} "
                f"(at least {MIN_EPISODE_TICKS} needed): not committed, discarded")
        if self._buffer.n:
            self._enqueue(self._buffer)
        self._finish_thread()
        self._raise_if_failed()
        try:
            self._resize(self._num_flushed)
            self.info.num_ticks = self._num_flushed
            self.info.end_time_ns = self._last_ts if self._last_ts is not None else self.info.start_time_ns
            self.info.status = EpisodeStatus.COMPLETE
            self.info.outcome = outcome
            if outcome != Outcome.UNKNOWN:
                self.info.outcome_labeller = labeller or self.info.robot_id
                self.info.outcome_labelled_at_ns = time.time_ns()
            self.info.policy_versions = list(self._versions)
            events = self._placed_events()
            if events:
                self.info.extra["events"] = events
            if self._events_dropped:
                self.info.extra["events_dropped"] = self._events_dropped
            self.info.extra["source_counts"] = dict(zip(SOURCE_COUNT_KEYS, map(int, self._source_counts)))
            self.info.check_values()  # what EpisodeData will hold it to: never commit an episode that cannot be opened
            self._group.attrs.put(self.info.to_attrs())
            self._sync_dirs()
            files = {k: v for k, v in self._zstore.written.items() if (self.path / k).is_file()}
            files |= frames_written or {}  # the image arrays' metadata, last written there
            write_manifest(self.path, self.info, files, fsync=self._fsync)
            (self.path / JOURNAL).unlink(missing_ok=True)
        except BaseException as e:
            self._fail(e)
            self._close()
            if is_disk_full(e):
                raise StoreFullError(f"disk full while committing episode {self.episode_id}; "
                                     "it stays in flight for `recap data fsck`") from e
            raise
        self._close()
        return self.info

    def abandon(self) -> None:
        """Stop writing without committing: the flushed part stays for fsck to recover."""
        if self._closed:
            return
        self._fail(StoreError("abandoned"))
        self._finish_thread()
        self._close()

    def discard(self) -> None:
        """Stop writing and delete the episode: nothing of it is kept (e.g. it could not start)."""
        if not self._closed:
            self._discard()

    def _discard(self) -> None:
        """Stop writing and delete the episode directory while still holding its lock."""
        self._fail(StoreError("discarded"))
        self._finish_thread()
        self._closed = True
        self._pool.shutdown(wait=True)
        try:  # hidden first, so no listing sees it half deleted; fsck removes the rest after a crash
            hidden = self.store.episodes_dir / f".{self.episode_id}{CREATING_SUFFIX}"
            os.rename(self.path, hidden)
            shutil.rmtree(hidden, ignore_errors=True)
        finally:
            self._lock.release()

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            if exc_type is None:
                self.commit()
            else:
                self.abandon()

    # -- internals ------------------------------------------------------------------------

    def _version_index(self, version: str | None) -> int:
        if version is None:
            return -1
        if version not in self._versions:  # its name passed validate_tick's check_name
            if len(self._versions) >= np.iinfo(np.int16).max:
                raise SchemaError("policy_version", "too many distinct policy versions in one episode")
            self._versions[version] = len(self._versions)
        return self._versions[version]

    def _new_chunk(self, start: int) -> _Chunk:
        n = self.flush_ticks
        arrays = {name: np.zeros((n, *shape), dtype) for name, (shape, dtype) in self._specs.items()}
        images = {cam: np.zeros((n, *spec.shape), np.uint8) for cam, spec in self._own_cameras.items()}
        return _Chunk(start, 0, arrays, images)

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"episode {self.episode_id} writer is closed")
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            e = self._error
            if not self._closed and threading.current_thread() is not self._thread:
                # A failed writer lets go of its episode at once, so fsck can recover it.
                self._finish_thread()
                self._close()
            if is_disk_full(e):
                raise StoreFullError(f"disk full while writing episode {self.episode_id}: it stays in flight with "
                                     f"{self._num_flushed} ticks for `recap data fsck`; committed episodes are intact") from e
            raise StoreError(f"writing episode {self.episode_id} failed: {e!r}") from e

    def _enqueue(self, chunk: _Chunk) -> None:
        chunk.versions = list(self._versions)
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def _finish_thread(self) -> None:
        if self._thread.is_alive():
            while True:
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if not self._thread.is_alive():
                        break
            self._thread.join()

    def _fail(self, e: BaseException) -> None:
        if self._error is None:
            self._error = e

    def _close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)
        self._lock.release()

    def _resize(self, n: int) -> None:
        for name, arr in self._arrays.items():
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def _sync_dirs(self) -> None:
        _sync_dirs(self._zstore, self.path, self._fsync)

    def _write_chunk(self, c: _Chunk) -> None:
        end = c.start + c.n
        # Arrays only ever grow, to exactly the flushed length: shrinking would make zarr delete chunks.
        # The metadata of every array, then the per-tick arrays, are written concurrently on zarr's
        # event loop (one round trip each instead of one per array: a flush took ~150 ms, most of it
        # waiting on those round trips, and commit() waits for the last flush).
        grow = [a.async_array.resize((end, *a.shape[1:])) for a in self._arrays.values() if a.shape[0] != end]
        if grow:
            zarr_sync(_gather(grow))
        zarr_sync(_gather([self._arrays[name].async_array.setitem(slice(c.start, end), c.arrays[name][: c.n])
                           for name in self._specs]))
        _write_shards(self._zstore, c, self._own_cameras, self.flush_ticks)
        self._sync_dirs()
        durable = end
        if self._frames_elsewhere is not None:  # recovery keeps only ticks whose frames are on disk too
            durable = min(end, int(self._frames_elsewhere()))
        journal = {"flushed_ticks": durable, "policy_versions": c.versions or []}
        if self._events:  # placed on the kept ticks by recovery (fsck) if the episode never commits
            journal["events"] = list(self._events)
        atomic_write_json(self.path / JOURNAL, journal, fsync=self._fsync)
        self._num_flushed = end


def place_events(events: list[dict], ts: np.ndarray) -> list[dict]:
    """Episode events (each with `t_ns`) on the episode's ticks (timestamps `ts`): each gets the first
    tick at or after it; those outside the ticks are dropped; in time order."""
    out = []
    for ev in sorted(events, key=lambda e: e["t_ns"]):
        if len(ts) and ts[0] <= ev["t_ns"] <= ts[-1]:
            out.append({**ev, "tick": int(np.searchsorted(ts, ev["t_ns"], side="left"))})
    return out


async def _gather(coros: list) -> None:
    await asyncio.gather(*coros)


def _add_frame(pool: ThreadPoolExecutor, b: _Chunk, cam: str, img: np.ndarray, encoded=None):
    """Copy a camera frame into the chunk (the caller may reuse its buffer) and JPEG-encode it now, on
    the pool: encoding is spread over the episode instead of bunched at each flush. `encoded`: this
    very frame's encoding at an earlier tick (a camera slower than the control loop repeats its
    frame), stored again without encoding it again. Returns the frame's encoding (a future)."""
    if encoded is None:
        b.images[cam][b.n] = img
        encoded = pool.submit(encode_frame, b.images[cam][b.n], JPEG_QUALITY)
    b.encoded.setdefault(cam, []).append(encoded)
    return encoded


def _write_shards(zstore: DurableLocalStore, c: _Chunk, cameras, flush_ticks: int) -> None:
    """Write the chunk's shard file of each camera (its frames' JPEG bytes in zarr's sharding layout,
    data/codecs.jpeg_shard) through the durable store (fsync, sha256 for the manifest). The chunk
    starts a shard: chunks are `flush_ticks` long, the last one shorter."""
    for cam in cameras:
        frames = [f.result() for f in c.encoded.get(cam, [])[: c.n]]
        key = f"{IMAGES}/{cam}/c/{c.start // flush_ticks}/0/0/0"
        zstore.set_sync(key, default_buffer_prototype().buffer.from_bytes(jpeg_shard(frames, flush_ticks)))


def _sync_dirs(zstore: DurableLocalStore, root: Path, fsync: bool) -> None:
    """fsync the directories of keys renamed into place since the last call (and their parents)."""
    if not fsync:
        zstore.take_dirty()
        return
    dirs: set[Path] = set()
    for key in zstore.take_dirty():
        d = (root / key).parent
        while d != root and d not in dirs:
            dirs.add(d)
            d = d.parent
    for d in sorted(dirs, key=lambda p: -len(p.parts)):
        fsync_dir(d)
    fsync_dir(root)


class FrameWriter(_FlushThread):
    """Writes one episode's camera frames from another process than its EpisodeWriter's (the bridge's
    camera process, which receives the frames): the EpisodeWriter (`frames_elsewhere`) created the
    image arrays and writes everything else; this writes only `images/<camera>` (its shards and, as
    they grow, its metadata), so no file has two writers. The format is the EpisodeWriter's own: one
    JPEG per frame, one shard per `flush_ticks`, written and fsynced the same way.

    `add` takes each tick's frames in tick order; full chunks are flushed from a background thread
    (one may wait: `add` blocks beyond that). `durable` is how many ticks' frames are on disk: the
    EpisodeWriter's journal never claims more. `finish(n)` flushes the rest and returns the sha256 of
    every file written, for the EpisodeWriter's commit; `abandon()` stops without flushing."""

    def __init__(self, path: str | Path, cameras: list[str], *, flush_ticks: int, fsync: bool = True):
        self.path = Path(path)
        self.cameras = list(cameras)
        self.flush_ticks = int(flush_ticks)
        self._zstore = DurableLocalStore(self.path, fsync=fsync)
        self._fsync = fsync
        self._arrays = {cam: zarr.open_array(self._zstore, path=f"{IMAGES}/{cam}", mode="r+") for cam in self.cameras}
        for cam, arr in self._arrays.items():
            if arr.shape[0] != 0 or jpeg_shard_layout(arr) != self.flush_ticks:
                raise StoreError(f"episode {self.path.name}: {IMAGES}/{cam} is not a new image array of "
                                 f"{self.flush_ticks}-tick shards")
        self._shape = {cam: tuple(arr.shape[1:]) for cam, arr in self._arrays.items()}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.cameras)), thread_name_prefix="jpeg")
        self.count = 0  # ticks added
        self.durable = 0  # ticks whose frames are on disk
        self.encodes = 0  # frames encoded (a repeated frame is not encoded again)
        self._last: dict[str, tuple[int | None, object]] = {}  # camera -> its previous frame's (stamp, encoding)
        self._error: BaseException | None = None
        self._buffer = self._new_chunk(0)
        self._queue: queue.Queue[_Chunk | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._flush_loop, name=f"frames-{self.path.name}", daemon=True)
        self._thread.start()

    def add(self, tick: int, frames: list[np.ndarray], stamps: list[int] | None = None) -> None:
        """The frames (in `cameras` order) of tick `tick`, which must be the next one. `stamps`: each
        frame's own stamp; a frame with the stamp of the camera's previous tick's frame is that same
        frame (a 30 fps camera under a 50 Hz loop repeats 2 frames in 5) and is not encoded again."""
        self._raise_if_failed()
        if tick != self.count:
            raise StoreError(f"episode {self.path.name}: frames of tick {tick} given, tick {self.count} expected")
        if stamps is not None and len(stamps) != len(self.cameras):
            raise StoreError(f"episode {self.path.name}: {len(stamps)} stamps for {len(self.cameras)} cameras")
        b = self._buffer
        for i, (cam, img) in enumerate(zip(self.cameras, frames)):
            if img.shape != self._shape[cam]:
                raise StoreError(f"episode {self.path.name}: camera {cam} frame of shape {img.shape}, "
                                 f"expected {self._shape[cam]}")
            stamp = None if stamps is None else int(stamps[i])
            last = self._last.get(cam)
            again = last[1] if stamp is not None and last is not None and last[0] == stamp else None
            self._last[cam] = (stamp, _add_frame(self._pool, b, cam, img, again))
            self.encodes += again is None
        b.n += 1
        self.count += 1
        if b.n == self.flush_ticks:
            self._put(b)
            self._buffer = self._new_chunk(self.count)

    def finish(self, ticks: int) -> dict[str, tuple[str, int]]:
        """Flush the rest; once every one of `ticks` ticks' frames is durable, the files written
        (key -> (sha256, size)). Raises StoreError when frames are missing or writing failed."""
        if self.count != ticks:
            self.abandon()
            raise StoreError(f"episode {self.path.name}: frames of {self.count} ticks, {ticks} recorded")
        if self._buffer.n:
            self._put(self._buffer)
        self._stop()
        self._raise_if_failed()
        return dict(self._zstore.written)

    def abandon(self) -> None:
        self._fail(StoreError("abandoned"))
        self._stop()

    def _new_chunk(self, start: int) -> _Chunk:
        images = {cam: np.zeros((self.flush_ticks, *shape), np.uint8) for cam, shape in self._shape.items()}
        return _Chunk(start, 0, {}, images)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if is_disk_full(self._error):
                raise StoreFullError(f"disk full while writing the frames of episode {self.path.name}") from self._error
            raise StoreError(f"writing the frames of episode {self.path.name} failed: {self._error!r}") from self._error

    def _fail(self, e: BaseException) -> None:
        if self._error is None:
            self._error = e

    def _put(self, chunk: _Chunk | None) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def _stop(self) -> None:
        self._put(None)
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _write_chunk(self, chunk: _Chunk) -> None:
        end = chunk.start + chunk.n
        grow = [a.async_array.resize((end, *a.shape[1:])) for a in self._arrays.values() if a.shape[0] < end]
        if grow:  # grow first, as the EpisodeWriter does
            zarr_sync(_gather(grow))
        _write_shards(self._zstore, chunk, self.cameras, self.flush_ticks)
        _sync_dirs(self._zstore, self.path, self._fsync)
        self.durable = end


def write_manifest(path: Path, info: EpisodeInfo, written: dict[str, tuple[str, int]], *, fsync: bool = True,
                   video: dict | None = None) -> dict:
    """The commit point: list every data file with its sha256, then atomically write the manifest.
    The data files' directories must already be fsynced. `video`: the video tier's description
    (data/video.py), for an episode that has one."""
    files = {k: {"sha256": sha, "size": size} for k, (sha, size) in sorted(written.items()) if k not in UNCHECKSUMMED}
    manifest = {
        "episode_id": info.episode_id,
        "status": str(info.status),
        "num_ticks": info.num_ticks,
        "committed_at_ns": time.time_ns(),
        "files": files,
        "checksum": manifest_checksum(files),
    }
    if video:
        manifest["video"] = video
    atomic_write_json(path / MANIFEST, manifest, fsync=fsync)
    if fsync:
        fsync_dir(path)
    return manifest
