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
"""

from __future__ import annotations

import json
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

from data.files import fsync_dir, sha256_file
from data.fsck import manifest_problem, stray_files, verify_episode
from data.schema import ACTION_SOURCE, IMAGES, EpisodeInfo, Outcome
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


def adopt_episode(store: EpisodeStore, src: str | Path, *, uploaded_by: str, at_ns: int | None = None) -> str:
    """Copy the committed episode at `src` into `store` and re-commit it there (module invariants);
    returns its id. UploadRefused naming the problem for anything it will not take."""
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
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(LOCK, JOURNAL))
        _recommit(tmp, uploaded_by, at_ns)
        try:
            tmp.rename(final)
        except OSError:  # another import of the same id won the race
            raise EpisodeExists(f"episode {episode_id} is already in the store") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(final.parent)
    return episode_id


def _recommit(path: Path, uploaded_by: str, at_ns: int) -> None:
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
    info.extra = {k: v for k, v in info.extra.items() if k not in ("source_counts",)}
    info.extra["source_counts"] = {k: int((src == i).sum())
                                   for i, k in enumerate(("policy", "correction", "demonstration", "hold"))}
    info.extra["uploaded_by"], info.extra["uploaded_at_ns"] = uploaded_by, at_ns
    group.attrs.put(info.to_attrs())
    files = {k: (v["sha256"], v["size"]) for k, v in old["files"].items() if k != "zarr.json"}
    files["zarr.json"] = (sha256_file(path / "zarr.json"), (path / "zarr.json").stat().st_size)
    for d in sorted({(path / k).parent for k in files}, key=lambda p: -len(p.parts)):
        fsync_dir(d)
    write_manifest(path, info, files, video=old.get("video"))
