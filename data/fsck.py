"""`recap data fsck`: check every episode against its manifest and recover crashed ones.

What it does, per episode directory:
- committed (manifest present): re-hash every listed file; report missing or changed files,
  unreadable metadata and a directory whose manifest or attributes name another episode as corrupt
  (never "repaired" by guessing; `--repair` moves them to `<root>/quarantine/` so readers stop
  tripping on them);
- committed, but holding files the store did not write (not in the manifest, not a label file as
  EpisodeStore.label writes it): reported as strays; `--repair` moves just those files to
  `<root>/quarantine/<episode>.strays.<time>/`;
- in flight and locked by a live writer: left alone;
- in flight and unlocked (its writer died): with `--repair`, truncate every array to the journal's
  flushed tick count, verify those ticks decode, and commit it as `incomplete`; an episode with no
  flushed tick is moved to quarantine;
- leftover temporary files (`*.partial`) of dead writers are removed with `--repair`;
- committed, with what an interrupted transcode left (data/video.py): a half-written video, a
  verified video the manifest does not list yet, JPEG files of a camera the manifest lists as video
  only: reported under `transcode`; `--repair` deletes them (the manifest's tiers are whole, so the
  episode reads the same; the next transcode pass redoes the work). An episode locked by a live
  transcoder is left alone (`transcoding`).
The catalog is then checked against the store (see catalog.reconcile). One `--repair` pass
reaches a state in which a second pass finds nothing.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from data.video import clean_leftovers, interrupted_videos, transcode_leftovers, unlisted_jpeg, video_section_problem
from data.files import PARTIAL_SUFFIX, FileLock, fsync_dir, sha256_file
from data.schema import IMAGES, POLICY_VERSION, EpisodeInfo, EpisodeStatus, SchemaError, check_id
from data.store import (
    CREATING_SUFFIX,
    JOURNAL,
    LABELS,
    LOCK,
    MANIFEST,
    UNCHECKSUMMED,
    EpisodeStore,
    label_file_problem,
    manifest_checksum,
    place_events,
    write_manifest,
)


@dataclass
class FsckReport:
    checked: int = 0
    ok: list[str] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)  # episode -> what is wrong
    live: list[str] = field(default_factory=list)
    crashed: dict[str, str] = field(default_factory=dict)  # in flight, writer dead -> what fsck saw
    recovered: dict[str, int] = field(default_factory=dict)  # episode -> ticks kept
    quarantined: list[str] = field(default_factory=list)
    stray: dict[str, list[str]] = field(default_factory=dict)  # episode -> files the store did not write
    transcode: dict[str, str] = field(default_factory=dict)  # episode -> interrupted transcode left behind
    transcoding: list[str] = field(default_factory=list)  # committed, locked by a live transcoder
    partial_files_removed: int = 0
    actions: list[str] = field(default_factory=list)  # what --repair did, in words

    @property
    def clean(self) -> bool:
        return not self.corrupt and not self.crashed and not self.stray and not self.transcode

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"clean": self.clean}


def manifest_problem(manifest: object) -> str | None:
    """None if `manifest` has the shape write_manifest gives it, else what is wrong (no file is read)."""
    if not isinstance(manifest, dict):
        return "manifest is not a JSON object"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "manifest 'files' is not an object"
    for key, meta in files.items():
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            return f"manifest lists an unsafe path {key[:200]!r}"
        if key in UNCHECKSUMMED or parts[0] == LABELS:
            return f"manifest lists {key!r}, which the store never checksums"
        if (not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or len(meta["sha256"]) != 64
                or type(meta.get("size")) is not int or meta["size"] < 0):
            return f"manifest entry for {key[:200]!r} is not {{sha256: 64 hex, size: int >= 0}}"
    if not isinstance(manifest.get("checksum"), str) or manifest_checksum(files) != manifest["checksum"]:
        return "manifest checksum does not match its file list"
    if type(manifest.get("num_ticks")) is not int or manifest["num_ticks"] < 0:
        return "manifest 'num_ticks' is not a count"
    if not isinstance(manifest.get("episode_id"), str):
        return "manifest 'episode_id' is not a string"
    return video_section_problem(manifest)


def verify_episode(path: Path) -> str | None:
    """None if the committed episode at `path` matches its manifest, else what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"manifest unreadable: {type(e).__name__}"
    problem = manifest_problem(manifest)
    if problem:
        return problem
    if manifest["episode_id"] != path.name:
        return f"manifest names episode {manifest['episode_id'][:140]!r}, not its directory's"
    for key, meta in manifest["files"].items():
        f = path / key
        if f.is_symlink() or not f.is_file():
            return f"missing file {key}"
        if f.stat().st_size != meta["size"] or sha256_file(f) != meta["sha256"]:
            return f"file {key} changed (sha256 mismatch)"
    try:
        group = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        info = EpisodeInfo.from_attrs(group.attrs.asdict())
    except Exception as e:  # any failure to open is corruption to report
        return f"metadata unreadable: {type(e).__name__}: {e}"
    if info.episode_id != path.name:
        return f"attributes name episode {str(info.episode_id)[:140]!r}, not its directory's"
    if info.num_ticks != manifest["num_ticks"]:
        return "tick count in attributes and manifest differ"
    try:  # values no writer here makes (an imported episode's): they would reach catalog columns and lookups
        info.check_values()
    except SchemaError as e:
        return f"attribute {e}"
    try:
        versions = np.asarray(group[POLICY_VERSION][: info.num_ticks]) if info.num_ticks else np.zeros(0, np.int16)
    except Exception as e:
        return f"{POLICY_VERSION} unreadable: {type(e).__name__}"
    if versions.dtype.kind not in "iu" or versions.shape != (info.num_ticks,):
        return f"{POLICY_VERSION} is {versions.dtype} of shape {versions.shape}, not one integer per tick"
    if versions.size and not -1 <= int(versions.min()) <= int(versions.max()) < len(info.policy_versions):
        return (f"{POLICY_VERSION} holds {int(versions.min())}..{int(versions.max())}: not -1 (none) or a policy "
                f"version the attributes list ({len(info.policy_versions)})")
    return None


def stray_files(path: Path) -> list[str]:
    """Files in the committed episode at `path` that the store did not write: not in its manifest,
    not a label file as EpisodeStore.label writes it (temporary `*.partial` files are fsck's own
    business). Relative paths, sorted."""
    manifest = json.loads((path / MANIFEST).read_text())
    listed, committed_at = set(manifest["files"]), manifest.get("committed_at_ns")
    transitional = set(interrupted_videos(path, manifest))  # fsck's transcode states, not strays
    jpeg_left = tuple(f"{IMAGES}/{c}/" for c in unlisted_jpeg(path, manifest))
    committed_at = committed_at if type(committed_at) is int else None
    out = []
    for f in sorted(path.rglob("*")):
        key = f.relative_to(path).as_posix()
        if f.is_dir() and not f.is_symlink():
            continue
        if key in listed and not f.is_symlink() or key in UNCHECKSUMMED or f.name.endswith(PARTIAL_SUFFIX):
            continue
        if not f.is_symlink() and (key in transitional or key.startswith(jpeg_left)):
            continue
        if key.startswith(f"{LABELS}/") and key.count("/") == 1 and label_file_problem(f, committed_at) is None:
            continue
        out.append(key)
    return out


def _quarantine(store: EpisodeStore, path: Path) -> Path:
    qdir = store.root / "quarantine"
    qdir.mkdir(exist_ok=True)
    dest = qdir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:6]}"
    shutil.move(str(path), dest)
    fsync_dir(qdir)
    fsync_dir(path.parent)
    return dest


def _quarantine_strays(store: EpisodeStore, path: Path, keys: list[str]) -> Path:
    dest = store.root / "quarantine" / f"{path.name}.strays.{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:6]}"
    for key in keys:
        (dest / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path / key), dest / key)
    for d in sorted({(path / k).parent for k in keys}, key=lambda p: -len(p.parts)):
        fsync_dir(d)
    return dest


def _remove_partials(path: Path) -> int:
    n = 0
    for f in path.rglob(f"*{PARTIAL_SUFFIX}"):
        f.unlink(missing_ok=True)
        n += 1
    return n


def recover_episode(path: Path) -> int:
    """Commit a crashed episode as `incomplete`, keeping the ticks its journal says were flushed.

    Returns the number of ticks kept; raises if nothing can be kept."""
    journal = json.loads((path / JOURNAL).read_text())
    n = int(journal["flushed_ticks"])
    if n <= 0:
        raise ValueError("no flushed ticks")
    group = zarr.open_group(LocalStore(path), mode="r+")
    info = EpisodeInfo.from_attrs(group.attrs.asdict())
    with warnings.catch_warnings():  # journal.json and .lock sit beside the zarr arrays
        warnings.simplefilter("ignore")
        names = [k for k, _ in group.arrays()]
        if IMAGES in group:
            names += [f"{IMAGES}/{k}" for k, _ in group[IMAGES].arrays()]
    for name in names:
        arr = group[name]
        if arr.shape[0] < n:
            raise ValueError(f"array {name} holds {arr.shape[0]} ticks, journal says {n}")
        if arr.shape[0] != n:
            arr.resize((n, *arr.shape[1:]))
        arr[n - 1]  # the last kept tick must decode
    ts = group["timestamp_ns"][:n]
    info.num_ticks = n
    info.end_time_ns = int(ts[-1])
    info.status = EpisodeStatus.INCOMPLETE
    info.extra["recovered_at_ns"] = time.time_ns()
    info.policy_versions = list(journal.get("policy_versions", []))
    events = place_events([e for e in journal.get("events", []) if isinstance(e, dict) and isinstance(e.get("t_ns"), int)], ts)
    if events:
        info.extra["events"] = events
    used = group["policy_version_index"][:n]
    if used.size and int(used.max()) >= len(info.policy_versions):
        raise ValueError("journal lacks the names of policy versions used by flushed ticks")
    group.attrs.put(info.to_attrs())
    files = {}
    for f in sorted(path.rglob("*")):
        key = f.relative_to(path).as_posix()
        if f.is_file() and key not in UNCHECKSUMMED and not key.startswith("labels/"):
            files[key] = (sha256_file(f), f.stat().st_size)
    for d in sorted({f.parent for f in path.rglob("*") if f.is_file()}, key=lambda p: -len(p.parts)):
        fsync_dir(d)
    write_manifest(path, info, files)
    (path / JOURNAL).unlink(missing_ok=True)
    return n


def fsck(store: EpisodeStore, *, repair: bool = False, verify: bool = True) -> FsckReport:
    """`verify=False` skips re-hashing committed episodes (fast after a crash on a large store:
    only episodes left in flight need work); the full check reads every byte."""
    r = FsckReport()
    for eid in store.episode_ids():
        r.checked += 1
        path = store.episodes_dir / eid
        try:
            check_id("episode_id", eid)
        except ValueError:
            problem = "directory name is not an episode id"
        else:
            problem = verify_episode(path) if verify else None
        if problem is None:
            r.ok.append(eid)
            if FileLock.is_locked(path / LOCK):  # a transcoder is at work: its files are not leftovers
                r.transcoding.append(eid)
                continue
            left = transcode_leftovers(path)
            if left:
                r.transcode[eid] = left
            if repair:
                lock = FileLock(path / LOCK)
                if not lock.try_acquire():
                    r.transcoding.append(eid)
                    r.transcode.pop(eid, None)
                    continue
                try:
                    r.partial_files_removed += _remove_partials(path)
                    (path / JOURNAL).unlink(missing_ok=True)  # left if a crash fell between manifest and unlink
                    if left:
                        clean_leftovers(path)
                        r.actions.append(f"{eid}: interrupted transcode cleaned up ({left}); the next transcode pass redoes it")
                finally:
                    lock.release()
            strays = stray_files(path) if verify else []
            if strays:
                r.stray[eid] = strays
                if repair:
                    dest = _quarantine_strays(store, path, strays)
                    r.actions.append(f"{eid}: {len(strays)} file(s) the store did not write moved to {dest}")
            continue
        r.corrupt[eid] = problem
        if repair:
            dest = _quarantine(store, path)
            r.quarantined.append(eid)
            r.actions.append(f"{eid}: corrupt ({problem}); moved to {dest}")
    for tmp in store.episodes_dir.glob(f".*{CREATING_SUFFIX}"):  # a writer died while creating its episode
        if not FileLock.is_locked(tmp / LOCK):
            if repair:
                shutil.rmtree(tmp, ignore_errors=True)
                r.actions.append(f"{tmp.name}: removed; its writer died while creating the episode (no data yet)")
            else:
                r.crashed[tmp.name] = "writer died while creating the episode (no data yet)"
    for eid in store.in_flight_ids():
        path = store.episodes_dir / eid
        if FileLock.is_locked(path / LOCK):
            r.live.append(eid)
            continue
        r.checked += 1
        try:
            flushed = int(json.loads((path / JOURNAL).read_text())["flushed_ticks"])
        except (OSError, ValueError, KeyError):
            flushed = 0
        r.crashed[eid] = f"writer gone; {flushed} ticks flushed"
        if not repair:
            continue
        lock = FileLock(path / LOCK)
        if not lock.try_acquire():  # a writer started on it meanwhile
            del r.crashed[eid]
            r.live.append(eid)
            continue
        try:
            r.partial_files_removed += _remove_partials(path)
            try:
                kept = recover_episode(path)
            except Exception as e:  # unrecoverable: keep the bytes aside, out of readers' way
                lock.release()
                dest = _quarantine(store, path)
                r.quarantined.append(eid)
                r.actions.append(f"{eid}: could not recover ({e}); moved to {dest}")
                continue
            r.recovered[eid] = kept
            r.actions.append(f"{eid}: recovered {kept} ticks, committed as incomplete")
        finally:
            lock.release()
    return r
