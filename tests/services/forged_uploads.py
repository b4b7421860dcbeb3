"""Forged and malformed uploads, shared by tests/services/test_uploads_adversarial.py and
bench/probes/uploads.py. Each case builds a multipart upload from a real episode recorded in a
store "elsewhere" and says which answers are acceptable: a refusal at once (4xx), or 202 and then a
refused import ("refused"), or an accepted import whose forged parts the store neutralised
("neutralised": checked by the caller)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from data.files import sha256_file
from data.schema import Outcome
from data.store import MANIFEST, EpisodeStore, manifest_checksum, new_episode_id
from tests.store.helpers import record


@dataclass
class Upload:
    body: bytes
    fields: dict = field(default_factory=dict)
    expect: frozenset = frozenset()  # acceptable first answers (HTTP status codes)
    job: str | None = None  # for 202: "refused" or "neutralised"
    content_type: str | None = None  # raw body instead of multipart


class Kit:
    """Fresh real episodes to forge from; `victim` is an id already in the central store."""

    def __init__(self, work: Path, victim: str):
        self.work, self.victim = work, victim
        self.elsewhere = EpisodeStore(work / "elsewhere")
        self.n = 0

    def episode(self, **kw) -> Path:
        """A copy of a freshly recorded episode folder (named after its id), to mutate."""
        self.n += 1
        ep, _ = record(self.elsewhere, robot="forger", cameras=1, ticks=12, start=1_700_000_000_000_000_000 + self.n,
                       outcome=kw.pop("outcome", Outcome.SUCCESS), **kw)
        dst = self.work / f"case{self.n}" / ep.episode_id
        shutil.copytree(ep.path, dst)
        return dst


def recommit(path: Path, *, episode_id: str | None = None, add: list[str] = ()) -> None:
    """Rewrite the manifest of `path` so it matches its files again (a forger's consistent manifest)."""
    m = json.loads((path / MANIFEST).read_text())
    keys = list(m["files"]) + list(add)
    m["files"] = {k: {"sha256": sha256_file(path / k), "size": (path / k).stat().st_size} for k in sorted(keys)}
    m["checksum"] = manifest_checksum(m["files"])
    if episode_id:
        m["episode_id"] = episode_id
    (path / MANIFEST).write_text(json.dumps(m))


def set_attrs(path: Path, **attrs) -> None:
    z = json.loads((path / "zarr.json").read_text())
    z["attributes"].update(attrs)
    (path / "zarr.json").write_text(json.dumps(z))


def tar_bytes(path: Path, arcname: str | None = None, *, gz: bool = False, extra: Callable | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        tar.add(path, arcname=arcname or path.name)
        if extra:
            extra(tar)
    return buf.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kw.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def _zeros_gz(name: str, size: int) -> bytes:
    """A gzip'd tar of one member of `size` zero bytes (compresses ~1000:1)."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        info = tarfile.TarInfo(name)
        info.size = size

        class Zeros(io.RawIOBase):
            left = size

            def readinto(self, b):
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, Zeros())
    return raw.getvalue()


def _case(fn):
    CASES[fn.__name__] = fn
    return fn


CASES: dict[str, Callable[[Kit], Upload]] = {}
REFUSE_NOW = frozenset({400, 409, 413, 415, 422})


@_case
def folder_renamed_to_victim(k: Kit) -> Upload:
    return Upload(tar_bytes(k.episode(), k.victim), expect=frozenset({409, 422}))


@_case
def attributes_carry_victim_id(k: Kit) -> Upload:
    p = k.episode()
    set_attrs(p, episode_id=k.victim, robot_id="hijacked", task_id="hijacked")
    recommit(p)
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def manifest_names_victim(k: Kit) -> Upload:
    p = k.episode()
    recommit(p, episode_id=k.victim)
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def everything_says_victim(k: Kit) -> Upload:
    p = k.episode()
    set_attrs(p, episode_id=k.victim, robot_id="hijacked")
    recommit(p, episode_id=k.victim)
    return Upload(tar_bytes(p, k.victim), expect=frozenset({409}))


@_case
def folder_not_an_episode_id(k: Kit) -> Upload:
    p = k.episode()
    set_attrs(p, episode_id="my-demo")
    recommit(p, episode_id="my-demo")
    return Upload(tar_bytes(p, "my-demo"), expect=frozenset({422}))


@_case
def folder_with_odd_characters(k: Kit) -> Upload:
    return Upload(tar_bytes(k.episode(), "ep isode;$(id)"), expect=frozenset({400}))


@_case
def folder_with_unicode(k: Kit) -> Upload:
    return Upload(tar_bytes(k.episode(), "épisode\u202e"), expect=frozenset({400}))


@_case
def own_label_history(k: Kit) -> Upload:
    p = k.episode()
    (p / "labels").mkdir()
    (p / "labels" / f"{1:020d}-abcdef.json").write_text(
        json.dumps({"outcome": "success", "labeller": "admin", "labelled_at_ns": 1}))
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def label_history_listed_in_manifest(k: Kit) -> Upload:
    p = k.episode()
    (p / "labels").mkdir()
    (p / "labels" / f"{1:020d}-abcdef.json").write_text(
        json.dumps({"outcome": "failure", "labeller": "admin", "labelled_at_ns": 1}))
    recommit(p, add=[f"labels/{1:020d}-abcdef.json"])
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def unlisted_file(k: Kit) -> Upload:
    p = k.episode()
    (p / "notes.txt").write_text("not in the manifest")
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def unlisted_chunk(k: Kit) -> Upload:
    p = k.episode()
    (p / "action" / "c" / "7").mkdir(parents=True, exist_ok=True)
    (p / "action" / "c" / "7" / "0").write_bytes(b"\0" * 64)  # inside the array's grid once it is resized
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def manifest_not_json(k: Kit) -> Upload:
    p = k.episode()
    (p / MANIFEST).write_text("{not json")
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def manifest_files_is_a_list(k: Kit) -> Upload:
    p = k.episode()
    m = json.loads((p / MANIFEST).read_text())
    m["files"] = list(m["files"])
    (p / MANIFEST).write_text(json.dumps(m))
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def manifest_size_is_text(k: Kit) -> Upload:
    p = k.episode()
    m = json.loads((p / MANIFEST).read_text())
    for v in m["files"].values():
        v["size"] = str(v["size"])
    (p / MANIFEST).write_text(json.dumps(m))
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def manifest_is_a_number(k: Kit) -> Upload:
    p = k.episode()
    (p / MANIFEST).write_text("42")
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def manifest_wrong_checksum(k: Kit) -> Upload:
    p = k.episode()
    m = json.loads((p / MANIFEST).read_text())
    m["checksum"] = "0" * 64
    (p / MANIFEST).write_text(json.dumps(m))
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def manifest_lists_traversal(k: Kit) -> Upload:
    p = k.episode()
    m = json.loads((p / MANIFEST).read_text())
    m["files"]["../../escape"] = {"sha256": "0" * 64, "size": 1}
    m["checksum"] = manifest_checksum(m["files"])
    (p / MANIFEST).write_text(json.dumps(m))
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def attributes_malformed(k: Kit) -> Upload:
    p = k.episode()
    set_attrs(p, features="everything", num_ticks="many")
    recommit(p)
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def tick_count_disagrees(k: Kit) -> Upload:
    p = k.episode()
    set_attrs(p, num_ticks=5000)
    recommit(p)
    return Upload(tar_bytes(p), expect=frozenset({422}))


@_case
def attributes_out_of_range(k: Kit) -> Upload:
    """Values no writer here makes, in a consistent manifest: a start time past 64 bits (a catalog integer column),
    a rate of 0 (playback divides by it), ticks naming a policy version the attributes do not list."""
    p = k.episode()
    set_attrs(p, start_time_ns=2**64)
    recommit(p)
    return Upload(tar_bytes(p), expect=frozenset({202}), job="refused")


@_case
def attributes_zero_rate(k: Kit) -> Upload:
    p = k.episode()
    set_attrs(p, fps=0.0)
    recommit(p)
    return Upload(tar_bytes(p), expect=frozenset({202}), job="refused")


@_case
def ticks_name_an_unlisted_version(k: Kit) -> Upload:
    p = k.episode()
    set_attrs(p, policy_versions=[])
    recommit(p)
    return Upload(tar_bytes(p), expect=frozenset({202}), job="refused")


@_case
def data_changed_same_size(k: Kit) -> Upload:
    p = k.episode()
    key = next(k for k in sorted(json.loads((p / MANIFEST).read_text())["files"]) if k.startswith("action/c/"))
    f = p / key
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    return Upload(tar_bytes(p), expect=frozenset({202}), job="refused")


@_case
def forged_labeller_and_counts(k: Kit) -> Upload:
    """Accepted, but the outcome is recorded as labelled by the uploader and the counts recounted."""
    p = k.episode(corrections=range(2, 6))
    set_attrs(p, outcome_labeller="admin", outcome_labelled_at_ns=1,
              extra={"source_counts": {"policy": 12, "correction": 0, "demonstration": 0, "hold": 0}})
    recommit(p)
    return Upload(tar_bytes(p, gz=True), expect=frozenset({202}), job="neutralised")


@_case
def root_level_episode(k: Kit) -> Upload:
    p = k.episode()
    return Upload(tar_bytes(p, "."), expect=frozenset({400, 422}))


@_case
def not_a_tar(k: Kit) -> Upload:
    return Upload(b"PK\x03\x04 this is a zip, or nothing" * 20, expect=frozenset({400}))


@_case
def truncated_gzip(k: Kit) -> Upload:
    data = tar_bytes(k.episode(), gz=True)
    return Upload(data[: len(data) // 2], expect=frozenset({400}))


@_case
def duplicate_member(k: Kit) -> Upload:
    p = k.episode()
    return Upload(tar_bytes(p, extra=lambda t: _member(t, f"{p.name}/zarr.json", b"{}")), expect=frozenset({400}))


@_case
def symlink_member(k: Kit) -> Upload:
    p = k.episode()
    return Upload(tar_bytes(p, extra=lambda t: _member(t, f"{p.name}/link", type=tarfile.SYMTYPE,
                                                        linkname="/etc/passwd")), expect=frozenset({400}))


@_case
def hardlink_member(k: Kit) -> Upload:
    p = k.episode()
    return Upload(tar_bytes(p, extra=lambda t: _member(t, f"{p.name}/hard", type=tarfile.LNKTYPE,
                                                        linkname=f"{p.name}/zarr.json")), expect=frozenset({400}))


@_case
def absolute_path_member(k: Kit) -> Upload:
    p = k.episode()
    return Upload(tar_bytes(p, extra=lambda t: _member(t, "/tmp/recap-owned")), expect=frozenset({400}))


@_case
def dotdot_member(k: Kit) -> Upload:
    p = k.episode()
    return Upload(tar_bytes(p, extra=lambda t: _member(t, f"{p.name}/../../escape")), expect=frozenset({400}))


@_case
def fifo_member(k: Kit) -> Upload:
    p = k.episode()
    return Upload(tar_bytes(p, extra=lambda t: _member(t, f"{p.name}/pipe", type=tarfile.FIFOTYPE)),
                  expect=frozenset({400}))


@_case
def zip_bomb_one_member(k: Kit) -> Upload:
    return Upload(_zeros_gz(f"{time.strftime('%Y%m%dT%H%M%S')}-forger-abcdef/zarr.json", 200 << 20),
                  expect=frozenset({413}))


@_case
def empty_archive(k: Kit) -> Upload:
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    return Upload(buf.getvalue(), expect=frozenset({400, 422}))


@_case
def bad_robot_field(k: Kit) -> Upload:
    return Upload(tar_bytes(k.episode()), fields={"robot_id": "../../etc"}, expect=frozenset({422}))


@_case
def not_multipart(k: Kit) -> Upload:
    return Upload(tar_bytes(k.episode()), expect=frozenset({415}), content_type="application/x-tar")


def post(client, up: Upload):
    """POST an Upload through the API."""
    if up.content_type:
        return client.post("/v1/episodes/upload", content=up.body, headers={"Content-Type": up.content_type})
    return client.post("/v1/episodes/upload", files={"file": ("upload.tar", up.body)}, data=up.fields)


def wait_job(client, status_url: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        j = client.get(status_url).json()
        if j["status"] in ("finished", "refused", "failed") or time.monotonic() > deadline:
            return j
        time.sleep(0.2)


def catalog_rows(client) -> dict[str, dict]:
    return {e["id"]: e for e in client.get("/v1/episodes", params={"limit": 100_000}).json()}


def plant_forged_states(store: EpisodeStore, cat) -> dict[str, str]:
    """Write into `store` (and `cat`) the states unchecked uploads could leave: returns the ids."""
    a, _ = record(store, robot="arm-a", task="push", cameras=1)
    b, _ = record(store, robot="arm-b", task="pick", cameras=1)
    cat.register_many([store.open(a.episode_id), store.open(b.episode_id)])
    # a folder named C whose attributes (and manifest) carry A's id, as an old upload adopted it
    c_id = new_episode_id("arm-c")
    shutil.copytree(a.path, store.episodes_dir / c_id)
    set_attrs(store.episodes_dir / c_id, robot_id="hijacked")
    recommit(store.episodes_dir / c_id)
    # a folder whose manifest is malformed (files as a list), one whose manifest is not JSON
    bad = new_episode_id("arm-d")
    shutil.copytree(b.path, store.episodes_dir / bad)
    m = json.loads((store.episodes_dir / bad / "manifest.json").read_text())
    m["files"] = list(m["files"])
    (store.episodes_dir / bad / "manifest.json").write_text(json.dumps(m))
    nojson = new_episode_id("arm-e")
    shutil.copytree(b.path, store.episodes_dir / nojson)
    (store.episodes_dir / nojson / "manifest.json").write_text("{")
    # strays and label files the store did not write, inside B (whose data is intact)
    (b.path / "notes.txt").write_text("unlisted")
    (b.path / "state" / "c" / "9").mkdir(parents=True, exist_ok=True)
    (b.path / "state" / "c" / "9" / "0").write_bytes(b"\0")
    (b.path / "labels").mkdir(exist_ok=True)
    (b.path / "labels" / f"{1:020d}-abcdef.json").write_text(
        json.dumps({"outcome": "failure", "labeller": "admin", "labelled_at_ns": 1}))
    (b.path / "labels" / "forged.json").write_text("{}")
    store.label(b.episode_id, "failure", "teleop")  # a real label stays
    # the catalog as an unchecked upload left it: A's row rewritten from C's directory
    from sqlalchemy import update

    from data.catalog.models import Episode

    with cat._session.begin() as s:
        s.execute(update(Episode).where(Episode.id == a.episode_id).values(
            robot_id="arm-b", location=(store.episodes_dir / c_id).as_uri(), checksum="0" * 64))
    return {"a": a.episode_id, "b": b.episode_id, "c": c_id, "bad": bad, "nojson": nojson}
