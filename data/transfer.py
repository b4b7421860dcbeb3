"""Bringing episodes written elsewhere (an upload, another robot's store) into a store.

Invariants:
- An archive is judged from its tar headers (and its two small JSON members) before one byte of it
  is extracted: only directories and regular files, safe names, no name twice, at most
  `max_members` members, each at most `max_member_bytes`, and in all at most
  `ArchiveLimits.max_expanded_bytes(compressed size)` bytes.
- A Zarr episode upload is one folder; its name, its manifest's `episode_id` and its attributes'
  `episode_id` are the same id of the form `new_episode_id` makes, and no episode with that id is in
  the store. It holds the files its manifest lists and nothing else (`.lock` and `journal.json` are
  dropped); it carries no label history (`labels/`): labels are made through the store only.
- Adoption verifies the copy against its own manifest, then re-commits it under the store's
  authority: the outcome it carries is recorded as labelled by the uploader at upload time, the
  correction counts are recounted from the data, a fresh manifest is written; the copy is made under
  a temporary name and renamed into place, so a half-copied episode is never visible.
- Shipping (a robot sends its committed episodes, robot_bridge/shipper.py): the robot reads an
  episode as `EpisodeTar`, a tar whose bytes depend only on the manifest and the files it lists
  (sorted names, zero times and owners), so its sha256 is the same after any restart; the central
  side keeps a partial upload per (episode id, that sha256) in an `IngestSpool`. A chunk is kept
  only when its own sha256 matches and it starts where the partial ends; the partial's length is
  recorded after the chunk's bytes are written, so a killed process leaves a verified prefix (the
  bytes are not fsynced per chunk: after a power loss the length may promise bytes the disk lost,
  and the whole's re-hash at the commit catches that; the partial is then discarded and sent again).
  The whole is re-hashed before its headers are judged like any upload's and the episode adopted;
  the adopted episode records the sha256 it was shipped as (`extra.shipped_sha256`), which makes a
  second ship of the same bytes a no-op and a different episode under the same id a conflict.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import zarr
from zarr.storage import LocalStore

from data.files import FileLock, atomic_write_json, fsync_dir, sha256_file
from data.fsck import manifest_problem, stray_files, verify_episode
from data.schema import ACTION_SOURCE, IMAGES, EpisodeInfo, Outcome, count_sources
from data.store import (
    CREATING_SUFFIX,
    JOURNAL,
    LABELS,
    LOCK,
    MANIFEST,
    EpisodeStore,
    StoreError,
    _array_specs,
    check_episode_id,
    write_manifest,
)


class UploadRefused(StoreError):
    """An upload is refused; the message tells the uploader why (no server paths)."""


class ArchiveMalformed(UploadRefused):
    """Not a tar we accept: unreadable, links, odd names, a name twice."""


class ArchiveTooLarge(UploadRefused):
    """Too many members, or more bytes than the limits allow once expanded."""


class EpisodeRefused(UploadRefused):
    """A readable archive whose content is not an acceptable episode or dataset."""


class EpisodeExists(UploadRefused):
    """The episode id is in the store (or its catalog) already."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_compressed_bytes: int = 4 << 30
    max_members: int = 100_000
    max_member_bytes: int = 2 << 30
    expansion_ratio: int = 20  # zarr chunks and JPEG frames are compressed already; tar headers are not
    floor_bytes: int = 64 << 20  # small archives of many tiny files expand by more than the ratio
    cap_bytes: int = 16 << 30

    def max_expanded_bytes(self, compressed_bytes: int) -> int:
        return min(self.cap_bytes, max(self.floor_bytes, self.expansion_ratio * compressed_bytes))


LIMITS = ArchiveLimits()
SHIPPED_SHA256 = "shipped_sha256"  # attribute of a shipped episode: the sha256 of the EpisodeTar it came as
SMALL_JSON_BYTES = 16 << 20  # manifest.json and zarr.json are read while the headers are checked
_NAME_PART = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")


@dataclass
class ArchivePlan:
    """What inspect_archive found: the format, the episode id (Zarr), and the members to extract."""

    format: Literal["zarr", "lerobot"]
    prefix: str  # "<folder>/" or "" when the dataset sits at the archive's root
    members: list[tarfile.TarInfo]
    expanded_bytes: int
    episode_id: str | None = None
    dropped: list[str] = field(default_factory=list)  # members left out on purpose (.lock, journal.json)


@contextmanager
def open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    """The tar at `path` (plain, gzip, bzip2 or xz); ArchiveMalformed if it is none of these."""
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise ArchiveMalformed(f"not a readable tar archive (plain, gzip, bzip2 or xz): {type(e).__name__}") from None
    try:
        yield tar
    finally:
        tar.close()


def _member_name(m: tarfile.TarInfo) -> str:
    name = m.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if m.isdir() else name
    shown = name[:200].encode("unicode_escape").decode()
    if name.startswith("/"):
        raise ArchiveMalformed(f"member {shown!r} has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise ArchiveMalformed(f"member {shown!r} points outside the archive")
    if not all(_NAME_PART.match(p) and p not in (".",) for p in parts):
        raise ArchiveMalformed(f"member {shown!r}: names may hold only letters, digits, '_', '.', '-'")
    return name


def inspect_archive(tar: tarfile.TarFile, compressed_bytes: int, limits: ArchiveLimits = LIMITS) -> ArchivePlan:
    """Judge an archive from its headers (module invariants); ArchivePlan, or UploadRefused naming why."""
    if compressed_bytes > limits.max_compressed_bytes:
        raise ArchiveTooLarge(f"upload of {compressed_bytes} bytes exceeds {limits.max_compressed_bytes}")
    max_total = limits.max_expanded_bytes(compressed_bytes)
    files: dict[str, tarfile.TarInfo] = {}
    seen: set[str] = set()
    small: dict[str, bytes] = {}
    total = 0
    try:
        while (m := tar.next()) is not None:
            if len(seen) >= limits.max_members:
                raise ArchiveTooLarge(f"more than {limits.max_members} members")
            name = _member_name(m)
            if name in seen:
                raise ArchiveMalformed(f"member {name!r} appears twice")
            seen.add(name)
            if m.issym() or m.islnk():
                raise ArchiveMalformed(f"member {name!r} is a link; links are refused")
            if m.isdir():
                continue
            if not m.isfile() or m.issparse():
                raise ArchiveMalformed(f"member {name!r} is not a regular file")
            if m.size > limits.max_member_bytes:
                raise ArchiveTooLarge(f"member {name!r} of {m.size} bytes exceeds {limits.max_member_bytes}")
            total += m.size
            if total > max_total:
                raise ArchiveTooLarge(f"the archive expands to more than {max_total} bytes, the limit for an "
                                      f"upload of {compressed_bytes} bytes")
            files[name] = m
            if name.rsplit("/", 1)[-1] in (MANIFEST, "zarr.json") and name.count("/") <= 1 and m.size <= SMALL_JSON_BYTES:
                small[name] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        if isinstance(e, UploadRefused):
            raise
        raise ArchiveMalformed(f"the tar archive is damaged: {type(e).__name__}") from None
    if not files:
        raise EpisodeRefused("the archive holds no files")
    tops = {n.split("/", 1)[0] for n in seen}
    prefix = f"{next(iter(tops))}/" if len(tops) == 1 and all("/" in n for n in files) else ""
    if prefix + MANIFEST in files or MANIFEST in files:
        return _zarr_plan(files, small, prefix, total)
    if prefix + "meta/info.json" in files:
        return ArchivePlan("lerobot", prefix, list(files.values()), total)
    raise EpisodeRefused("the archive holds neither a Zarr episode (a folder with manifest.json and zarr.json) "
                         "nor a LeRobot v3 dataset (meta/info.json)")


def _json(small: dict[str, bytes], name: str, what: str) -> object:
    if name not in small:
        raise EpisodeRefused(f"{what} is missing or larger than {SMALL_JSON_BYTES} bytes")
    try:
        return json.loads(small[name])
    except (ValueError, RecursionError):
        raise EpisodeRefused(f"{what} is not valid JSON") from None


def _zarr_plan(files: dict[str, tarfile.TarInfo], small: dict[str, bytes], prefix: str, total: int) -> ArchivePlan:
    if not prefix:
        raise EpisodeRefused("a Zarr episode upload is one folder named after its episode id")
    folder = prefix[:-1]
    try:
        check_episode_id(folder)
    except ValueError as e:
        raise EpisodeRefused(f"folder name: {e}") from None
    manifest = _json(small, prefix + MANIFEST, "manifest.json")
    problem = manifest_problem(manifest)
    if problem:
        raise EpisodeRefused(problem)
    if manifest["episode_id"] != folder:
        raise EpisodeRefused(f"the manifest names episode {manifest['episode_id'][:140]!r}, the folder {folder!r}")
    group = _json(small, prefix + "zarr.json", "zarr.json")
    try:
        info = EpisodeInfo.from_attrs(group["attributes"])  # type: ignore[index]
        if not isinstance(info.episode_id, str) or type(info.num_ticks) is not int:
            raise TypeError("episode_id or num_ticks of the wrong type")
    except Exception as e:  # any malformed attribute is the uploader's error, named
        raise EpisodeRefused(f"episode attributes unreadable: {type(e).__name__}: {str(e)[:200]}") from None
    if info.episode_id != folder:
        raise EpisodeRefused(f"the attributes name episode {info.episode_id[:140]!r}, the folder {folder!r}")
    if info.num_ticks != manifest["num_ticks"]:
        raise EpisodeRefused("tick count in attributes and manifest differ")
    listed = manifest["files"]
    keep, dropped = [], []
    for name, m in files.items():
        key = name[len(prefix):]
        if key == MANIFEST:
            keep.append(m)
        elif key in (LOCK, JOURNAL):
            dropped.append(key)
        elif key.split("/", 1)[0] == LABELS:
            raise EpisodeRefused(f"the upload carries label history ({key}); outcome labels are made through the API")
        elif key not in listed:
            raise EpisodeRefused(f"file {key} is not listed in the manifest")
        elif m.size != listed[key]["size"]:
            raise EpisodeRefused(f"file {key} is {m.size} bytes, the manifest says {listed[key]['size']}")
        else:
            keep.append(m)
    missing = sorted(set(listed) - {m.name[len(prefix):] for m in keep})
    if missing:
        raise EpisodeRefused(f"file {missing[0]} is listed in the manifest but not in the archive")
    return ArchivePlan("zarr", prefix, keep, sum(m.size for m in keep), folder, dropped)


def ensure_new(store: EpisodeStore, episode_id: str, catalog=None) -> None:
    """EpisodeExists if the store (or the catalog, when given) knows `episode_id` already."""
    if store.episode_dir(episode_id).exists() or (store.episodes_dir / f".{episode_id}{CREATING_SUFFIX}").exists():
        raise EpisodeExists(f"episode {episode_id} is already in the store")
    if catalog is not None:
        try:
            catalog.get(episode_id)
        except KeyError:
            return
        raise EpisodeExists(f"episode {episode_id} is already in the catalog")


def extract_archive(tar: tarfile.TarFile, plan: ArchivePlan, dest: Path,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Extract the members `plan` kept (in archive order) under `dest`; returns the dataset's folder."""
    done = 0
    for m in plan.members:
        tar.extract(m, dest, filter="data")
        done += m.size
        if progress:
            progress(done, plan.expanded_bytes)
    return dest / plan.prefix if plan.prefix else dest


def adopt_episode(store: EpisodeStore, src: str | Path, *, uploaded_by: str, at_ns: int | None = None,
                  extra: dict | None = None, move: bool = False) -> str:
    """Copy the committed episode at `src` into `store` and re-commit it there (module invariants);
    returns its id. `extra`: more attributes to record (a shipped episode's sha256). `move`: `src` is
    a scratch copy (an extracted upload): renamed instead of copied where it is on the store's file
    system. UploadRefused naming the problem for anything it will not take."""
    src = Path(src)
    try:
        episode_id = check_episode_id(src.name)
    except ValueError as e:
        raise EpisodeRefused(f"folder name: {e}") from None
    problem = verify_episode(src)
    if problem:
        raise EpisodeRefused(f"episode {episode_id} refused: {problem}")
    if (src / LABELS).exists():
        raise EpisodeRefused(f"episode {episode_id} refused: it carries label history; labels are made through the API")
    strays = [k for k in stray_files(src) if k not in (LOCK, JOURNAL)]
    if strays:
        raise EpisodeRefused(f"episode {episode_id} refused: file {strays[0]} is not listed in its manifest")
    ensure_new(store, episode_id)
    at_ns = at_ns or time.time_ns()
    final = store.episode_dir(episode_id)
    tmp = final.with_name(f".{episode_id}.{uuid.uuid4().hex[:8]}.adopt")
    try:
        try:
            if not move:
                raise OSError
            src.rename(tmp)
            for name in (LOCK, JOURNAL):
                (tmp / name).unlink(missing_ok=True)
        except OSError:  # a copy, or another file system
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(LOCK, JOURNAL))
        _recommit(tmp, uploaded_by, at_ns, extra or {})
        try:
            tmp.rename(final)
        except OSError:  # another import of the same id won the race
            raise EpisodeExists(f"episode {episode_id} is already in the store") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(final.parent)
    return episode_id


def _recommit(path: Path, uploaded_by: str, at_ns: int, extra: dict) -> None:
    """Rewrite the copy's attributes under the store's authority and write its own manifest."""
    old = json.loads((path / MANIFEST).read_text())
    group = zarr.open_group(LocalStore(path), mode="r+")
    info = EpisodeInfo.from_attrs(group.attrs.asdict())
    from data.video import tiers

    names = list(_array_specs(info.features)) + [f"{IMAGES}/{cam}" for cam, t in
                                                 tiers(old, info.features.cameras).items() if "jpeg" in t]
    for name in names:  # readers slice every array to num_ticks: each must hold exactly that many
        try:
            n = group[name].shape[0]
        except Exception:  # a missing or unreadable array is the uploader's error, named
            raise EpisodeRefused(f"episode {info.episode_id} refused: array {name} is missing") from None
        if n != info.num_ticks:
            raise EpisodeRefused(f"episode {info.episode_id} refused: array {name} holds {n} ticks, "
                                 f"the attributes say {info.num_ticks}")
    if info.outcome != Outcome.UNKNOWN:
        info.outcome_labeller, info.outcome_labelled_at_ns = uploaded_by, at_ns
    else:
        info.outcome_labeller = info.outcome_labelled_at_ns = None
    src = np.asarray(group[ACTION_SOURCE][: info.num_ticks]) if info.num_ticks else np.zeros(0, np.uint8)
    info.extra = {k: v for k, v in info.extra.items() if k not in ("source_counts", SHIPPED_SHA256)}
    info.extra["source_counts"] = count_sources(src)
    info.extra["uploaded_by"], info.extra["uploaded_at_ns"] = uploaded_by, at_ns
    info.extra.update(extra)
    group.attrs.put(info.to_attrs())
    files = {k: (v["sha256"], v["size"]) for k, v in old["files"].items() if k != "zarr.json"}
    files["zarr.json"] = (sha256_file(path / "zarr.json"), (path / "zarr.json").stat().st_size)
    for d in sorted({(path / k).parent for k in files}, key=lambda p: -len(p.parts)):
        fsync_dir(d)
    write_manifest(path, info, files, video=old.get("video"))


# -- shipping: a robot's committed episode as a deterministic tar, and the central spool ---------

TAR_BLOCK = 512
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class EpisodeTar:
    """The committed episode at `path` as an uncompressed tar (its manifest, then the files it lists,
    sorted; no label history, no lock or journal), read at any offset without a copy on disk. The
    bytes depend only on the manifest and the files, so the sha256 is stable across restarts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.episode_id = check_episode_id(self.path.name)
        try:
            self.manifest_bytes = (self.path / MANIFEST).read_bytes()
            self.manifest = json.loads(self.manifest_bytes)
        except (OSError, ValueError) as e:
            raise StoreError(f"episode {self.episode_id}: manifest unreadable ({type(e).__name__})") from None
        problem = manifest_problem(self.manifest)
        if problem:
            raise StoreError(f"episode {self.episode_id}: {problem}")
        self.checksum: str = self.manifest["checksum"]
        self._starts: list[int] = []
        self._parts: list[bytes | tuple[str, int]] = []  # header/padding bytes, or (manifest key, size)
        off = 0
        for key, size in [(MANIFEST, len(self.manifest_bytes))] + [
                (k, v["size"]) for k, v in sorted(self.manifest["files"].items())]:
            ti = tarfile.TarInfo(f"{self.episode_id}/{key}")
            ti.size, ti.mtime, ti.mode, ti.type = size, 0, 0o644, tarfile.REGTYPE
            for part, n in ((ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"), None), ((key, size), size),
                            (bytes(-size % TAR_BLOCK), None)):
                n = len(part) if n is None else n
                if n:
                    self._starts.append(off)
                    self._parts.append(part)
                    off += n
        self._starts.append(off)
        self._parts.append(bytes(2 * TAR_BLOCK))  # end of archive
        self.size = off + 2 * TAR_BLOCK

    def _part_len(self, i: int) -> int:
        p = self._parts[i]
        return p[1] if isinstance(p, tuple) else len(p)

    def read(self, offset: int, n: int) -> bytes:
        """`n` bytes (fewer at the end) from `offset`; StoreError if a file changed size meanwhile."""
        out = bytearray()
        i = bisect.bisect_right(self._starts, offset) - 1
        while n > 0 and 0 <= i < len(self._parts):
            start, p = self._starts[i], self._parts[i]
            skip = offset - start
            take = min(n, self._part_len(i) - skip)
            if isinstance(p, tuple):
                data = (self.manifest_bytes[skip:skip + take] if p[0] == MANIFEST
                        else _read_at(self.path / p[0], skip, take))
                if len(data) != take:
                    raise StoreError(f"episode {self.episode_id}: file {p[0]} is shorter than its manifest says")
            else:
                data = p[skip:skip + take]
            out += data
            offset, n, i = offset + take, n - take, i + 1
        return bytes(out)

    def digest(self, block: int = 4 << 20) -> str:
        """The tar's sha256, checking every file against the manifest on the way (StoreError naming the
        first that differs: a corrupt local copy is never shipped)."""
        whole = hashlib.sha256()
        for i, p in enumerate(self._parts):
            if not isinstance(p, tuple) or p[0] == MANIFEST:
                whole.update(p if not isinstance(p, tuple) else self.manifest_bytes)
                continue
            one, size = hashlib.sha256(), 0
            try:
                with open(self.path / p[0], "rb") as f:
                    while chunk := f.read(block):
                        one.update(chunk)
                        whole.update(chunk)
                        size += len(chunk)
            except OSError as e:
                raise StoreError(f"episode {self.episode_id}: file {p[0]} unreadable ({e.strerror})") from None
            if size != p[1] or one.hexdigest() != self.manifest["files"][p[0]]["sha256"]:
                raise StoreError(f"episode {self.episode_id}: file {p[0]} differs from its manifest (sha256)")
        return whole.hexdigest()


def _read_at(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


class ChunkRefused(UploadRefused):
    """A chunk (or the whole shipped tar) whose sha256 is not the one announced: nothing was kept."""


class OffsetMismatch(UploadRefused):
    """A chunk that does not start where the partial upload ends; `offset` is where it does."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


class IngestBusy(UploadRefused):
    """Another request works on the same partial upload right now."""


@dataclass
class IngestState:
    episode_id: str
    sha256: str
    size: int
    offset: int = 0
    status: Literal["receiving", "done"] = "receiving"


class IngestSpool:
    """The central side of shipping (module invariants): partial uploads under `directory`, one per
    (episode id, sha256), adopted into `store` and indexed in `catalog` once whole and verified."""

    MAX_CHUNK_BYTES = 16 << 20
    STALE_S = 7 * 24 * 3600  # a partial nobody resumed for this long is removed

    def __init__(self, directory: Path, store: EpisodeStore, catalog, limits: ArchiveLimits = LIMITS):
        self.dir, self.store, self.catalog, self.limits = Path(directory), store, catalog, limits
        self.dir.mkdir(parents=True, exist_ok=True)

    def _key(self, episode_id: str, sha256: str) -> Path:
        try:
            check_episode_id(episode_id)
        except ValueError as e:
            raise EpisodeRefused(str(e)) from None
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
            raise EpisodeRefused("sha256 must be 64 lowercase hex digits")
        return self.dir / f"{episode_id}.{sha256}"

    @contextmanager
    def _locked(self, key: Path) -> Iterator[None]:
        lock = FileLock(key.with_suffix(key.suffix + ".lock"))
        if not lock.try_acquire():
            raise IngestBusy("another request is working on this upload; retry in a moment")
        try:
            yield
        finally:
            lock.release()

    def _state(self, key: Path) -> dict | None:
        try:
            return json.loads(key.with_suffix(key.suffix + ".json").read_text())
        except (OSError, ValueError):
            return None

    def _drop(self, key: Path) -> None:
        for suffix in (".json", ".part"):
            key.with_suffix(key.suffix + suffix).unlink(missing_ok=True)
        shutil.rmtree(key.with_suffix(key.suffix + ".extract"), ignore_errors=True)

    def shipped(self, episode_id: str, sha256: str) -> bool:
        """True if the store holds this episode as shipped with this sha256 (indexing it if the catalog
        missed it); EpisodeExists if it holds another episode under the id; else False."""
        if self.store.is_committed(episode_id):
            try:
                ep = self.store.open(episode_id)
            except StoreError as e:  # the central copy is there but unreadable: shipping again cannot mend it
                raise EpisodeExists(f"episode {episode_id} is in the store but cannot be read there ({e}); "
                                    "not shipped again") from None
            if ep.info.extra.get(SHIPPED_SHA256) != sha256:
                raise EpisodeExists(f"episode {episode_id} is already in the store, not as shipped with this sha256")
            try:
                self.catalog.get(episode_id)
            except KeyError:
                self.catalog.register(ep)
            return True
        ensure_new(self.store, episode_id, self.catalog)
        return False

    def open(self, episode_id: str, sha256: str, size: int) -> IngestState:
        """Start or resume: where the partial ends (`offset`), or status done if shipped already."""
        key = self._key(episode_id, sha256)
        if type(size) is not int or not 0 < size <= self.limits.max_compressed_bytes:
            raise ArchiveTooLarge(f"size must be 1..{self.limits.max_compressed_bytes} bytes")
        if self.shipped(episode_id, sha256):
            return IngestState(episode_id, sha256, size, size, "done")
        with self._locked(key):
            state = self._state(key)
            if state is not None and state["size"] != size:
                raise EpisodeRefused(f"this upload was opened with size {state['size']}, not {size}")
            if state is None:
                free = shutil.disk_usage(self.dir).free
                if free < 2 * size:  # the partial, then the adopted copy
                    raise ArchiveTooLarge(f"the central store has {free >> 20} MiB free, too little for {size >> 20} MiB")
                self._sweep(episode_id, key)
                state = {"size": size, "offset": 0}
                key.with_suffix(key.suffix + ".part").touch()
                atomic_write_json(key.with_suffix(key.suffix + ".json"), state)
            part = key.with_suffix(key.suffix + ".part")
            if part.stat().st_size != state["offset"]:  # bytes past the recorded length were never confirmed
                os.truncate(part, state["offset"])
            return IngestState(episode_id, sha256, size, state["offset"])

    def _sweep(self, episode_id: str, key: Path) -> None:
        """Remove partials of this episode under another sha256 (the robot re-read it) and stale ones."""
        now = time.time()
        for f in self.dir.glob("*.json"):
            other = self.dir / f.name[: -len(".json")]
            if other != key and (other.name.startswith(episode_id + ".") or now - f.stat().st_mtime > self.STALE_S):
                lock = FileLock(other.with_suffix(other.suffix + ".lock"))
                if lock.try_acquire():
                    try:
                        self._drop(other)
                    finally:
                        lock.release()
                    other.with_suffix(other.suffix + ".lock").unlink(missing_ok=True)
        for f in self.dir.glob("*.lock"):  # what finished uploads leave behind
            if not f.with_suffix(".json").exists() and now - f.stat().st_mtime > 24 * 3600:
                f.unlink(missing_ok=True)

    def append(self, episode_id: str, sha256: str, offset: int, data: bytes, chunk_sha256: str) -> IngestState:
        """Keep `data` at `offset` if its sha256 is `chunk_sha256` and the partial ends at `offset`."""
        key = self._key(episode_id, sha256)
        if len(data) > self.MAX_CHUNK_BYTES:
            raise ArchiveTooLarge(f"a chunk holds at most {self.MAX_CHUNK_BYTES} bytes")
        if not data:
            raise EpisodeRefused("an empty chunk")
        if hashlib.sha256(data).hexdigest() != chunk_sha256:
            raise ChunkRefused("the chunk's sha256 differs from X-Chunk-Sha256 (damaged in transit?); "
                               "nothing was kept, send it again")
        with self._locked(key):
            state = self._state(key)
            if state is None:
                if self.shipped(episode_id, sha256):
                    raise OffsetMismatch("the episode is shipped already", 0)
                raise EpisodeRefused("no such upload: open it first (POST /v1/episodes/ingest)")
            if offset != state["offset"]:
                raise OffsetMismatch(f"the upload continues at byte {state['offset']}, not {offset}", state["offset"])
            if offset + len(data) > state["size"]:
                raise ArchiveTooLarge(f"the chunk runs past the announced size of {state['size']} bytes")
            part = key.with_suffix(key.suffix + ".part")
            with open(part, "r+b") as f:
                f.truncate(offset)
                f.seek(offset)
                f.write(data)
            state["offset"] = offset + len(data)
            atomic_write_json(key.with_suffix(key.suffix + ".json"), state, fsync=False)
            return IngestState(episode_id, sha256, state["size"], state["offset"])

    def commit(self, episode_id: str, sha256: str, *, uploaded_by: str,
               outcome: str | None = None) -> IngestState:
        """Verify the whole, judge it like any upload, adopt and index it; `outcome`: the robot's newest
        label, made after its commit, recorded as a label by `uploaded_by`. Idempotent."""
        key = self._key(episode_id, sha256)
        with self._locked(key):
            state = self._state(key)
            if self.shipped(episode_id, sha256):
                self._drop(key)
                return IngestState(episode_id, sha256, state["size"] if state else 0, 0, "done")
            if state is None:
                raise EpisodeRefused("no such upload: open it first (POST /v1/episodes/ingest)")
            if state["offset"] != state["size"]:
                raise EpisodeRefused(f"the upload is incomplete: {state['offset']} of {state['size']} bytes")
            part = key.with_suffix(key.suffix + ".part")
            if sha256_file(part) != sha256:
                self._drop(key)
                raise ChunkRefused("the whole upload's sha256 differs from the one announced; "
                                   "it was discarded, send it again from the start")
            with open_archive(part) as tar:
                plan = inspect_archive(tar, part.stat().st_size, self.limits)
                if plan.format != "zarr" or plan.episode_id != episode_id:
                    self._drop(key)
                    raise EpisodeRefused(f"the upload is not the Zarr episode {episode_id}")
                extract = key.with_suffix(key.suffix + ".extract")
                shutil.rmtree(extract, ignore_errors=True)
                for d in self.store.episodes_dir.glob(f".{episode_id}.*.adopt"):  # left by a killed process
                    shutil.rmtree(d, ignore_errors=True)
                root = extract_archive(tar, plan, extract)
            try:
                adopt_episode(self.store, root, uploaded_by=uploaded_by, extra={SHIPPED_SHA256: sha256}, move=True)
            except UploadRefused:
                self._drop(key)
                raise
            if outcome is not None:
                self.store.label(episode_id, outcome, uploaded_by)
            self.catalog.register(self.store.open(episode_id))
            self._drop(key)
            return IngestState(episode_id, sha256, state["size"], state["size"], "done")
