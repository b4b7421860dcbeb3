"""The manifest of a model artifact, and its verification: torch-free (msgspec + hashlib), so the
control-plane API, the robot side and any tool that only checks artifacts never import the model
stack. training/artifacts.py writes and loads the weights around it; the inference server and the
registry verify through it.

Invariants:
- An artifact is a directory of plain files plus `manifest.json`, written last: `format`, `kind`,
  `files` (name -> sha256 of every other file), `lineage`, `metrics`, `created_at_ns`.
- A manifest names files inside its directory only (a plain file name: no separators, no `..`)
  and always lists the REQUIRED files; anything else is an ArtifactError naming the field.
- `verify_artifact` passes only when every listed file exists and matches its sha256; nothing of an
  artifact is read before it passes. No other exception than ArtifactError escapes it.
- `manifest_digest` (sha256 of the manifest's bytes) names one artifact exactly: the registry
  records it and a server checks it before loading.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping

import msgspec
from msgspec import Struct

from data.files import sha256_file

ARTIFACT_FORMAT = "recap-artifact/1"
MANIFEST = "manifest.json"
REQUIRED = ("config.json", "stats.json", "model.safetensors")
MAX_MANIFEST_BYTES = 4 << 20  # thousands of files and a large lineage still fit

FILE_NAME = re.compile(r"(?!\.\.?\Z)[^/\\\x00]{1,255}\Z")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class ArtifactError(RuntimeError):
    """An artifact is incomplete or does not match its manifest; the message names the file."""


class Manifest(Struct):
    """What `manifest.json` must hold (unknown keys are kept, for readers of a later format)."""

    format: str
    kind: str
    files: dict[str, str]
    lineage: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    created_at_ns: int = 0


def write_manifest(directory: str | Path, *, kind: str, lineage: Mapping[str, Any] | None = None,
                   metrics: Mapping[str, Any] | None = None) -> dict:
    """Digest every file in `directory` and write its manifest (the caller fsyncs and renames)."""
    d = Path(directory)
    files = {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": ARTIFACT_FORMAT, "kind": kind, "created_at_ns": time.time_ns(), "files": files,
                "lineage": dict(lineage or {}), "metrics": dict(metrics or {})}
    (d / MANIFEST).write_text(json.dumps(finite_json(manifest), indent=1, sort_keys=True, allow_nan=False))
    return manifest


def finite_json(value):
    """Standard JSON: a metric that came out NaN or infinite (no data for it) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def read_manifest(directory: str | Path) -> dict:
    """The manifest, checked for shape (not yet against the files)."""
    d = Path(directory)
    try:
        with open(d / MANIFEST, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise ArtifactError(f"{d}: {MANIFEST} missing or unreadable ({e.strerror or e})") from e
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{d}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(raw)  # stdlib: manifests written before metrics were made finite hold NaN
        checked = msgspec.convert(manifest, Manifest)
    except msgspec.ValidationError as e:
        raise ArtifactError(f"{d}: {MANIFEST} is malformed: {e}") from e
    except (ValueError, RecursionError) as e:  # json's JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ArtifactError(f"{d}: {MANIFEST} is not JSON ({e})") from e
    if checked.format != ARTIFACT_FORMAT:
        raise ArtifactError(f"{d}: not a {ARTIFACT_FORMAT} artifact")
    for name, digest in checked.files.items():
        if not FILE_NAME.match(name):
            raise ArtifactError(f"{d}: {MANIFEST} lists {name[:40]!r}, which is not a file name in the artifact")
        if not SHA256.match(digest):
            raise ArtifactError(f"{d}: {MANIFEST} gives file {name} the digest {digest[:70]!r}, not a sha256")
    missing = [name for name in REQUIRED if name not in checked.files]
    if missing:
        raise ArtifactError(f"{d}: {MANIFEST} does not list {', '.join(missing)}")
    return manifest


def verify_artifact(directory: str | Path) -> dict:
    """Return the manifest if every listed file matches its sha256, else raise ArtifactError."""
    d = Path(directory)
    manifest = read_manifest(d)
    for name, digest in manifest["files"].items():
        f = d / name
        if not f.is_file():
            raise ArtifactError(f"{d}: file {name} is missing")
        try:
            ok = sha256_file(f) == digest
        except OSError as e:
            raise ArtifactError(f"{d}: file {name} is unreadable ({e.strerror or e})") from e
        if not ok:
            raise ArtifactError(f"{d}: file {name} does not match its sha256 (corrupt or tampered)")
    return manifest


def manifest_digest(directory: str | Path) -> str:
    """The sha256 of the manifest's bytes: one artifact, exactly."""
    try:
        return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()
    except OSError as e:
        raise ArtifactError(f"{directory}: {MANIFEST} missing or unreadable ({e.strerror or e})") from e
