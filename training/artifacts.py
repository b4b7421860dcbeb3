"""Model artifacts: safetensors weights + JSON config + normalisation stats + a manifest with the
sha256 of every file, lineage (training run, data selection, parent version) and metrics.
Written into a temporary directory and renamed into place; verified before every load. No pickle."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from data.files import fsync_dir, sha256_file
from data.stats import FeatureStats

ARTIFACT_FORMAT = "recap-artifact/1"


class ArtifactError(RuntimeError):
    """An artifact is incomplete or does not match its manifest; the message names the file."""


def write_artifact(directory: str | Path, *, kind: str, model: torch.nn.Module, config: Mapping[str, Any],
                   stats: Mapping[str, FeatureStats], lineage: Mapping[str, Any] | None = None,
                   metrics: Mapping[str, Any] | None = None, extra_files: Mapping[str, Path] | None = None) -> dict:
    final = Path(directory)
    if final.exists():
        raise FileExistsError(f"artifact {final} exists")
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(dict(config), indent=1))
        (tmp / "stats.json").write_text(json.dumps({k: v.__dict__ for k, v in stats.items()}, indent=1))
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"format": ARTIFACT_FORMAT, "kind": kind, "created_at_ns": time.time_ns(), "files": files,
                    "lineage": dict(lineage or {}), "metrics": dict(metrics or {})}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def verify_artifact(directory: str | Path) -> dict:
    """Return the manifest if every listed file matches its sha256, else raise ArtifactError."""
    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{d}: manifest.json missing or unreadable ({e})") from e
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{d}: not a {ARTIFACT_FORMAT} artifact")
    for name, digest in manifest["files"].items():
        f = d / name
        if not f.is_file():
            raise ArtifactError(f"{d}: file {name} is missing")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{d}: file {name} does not match its sha256 (corrupt or tampered)")
    return manifest


def load_artifact(directory: str | Path) -> tuple[dict, dict, dict[str, torch.Tensor], dict[str, FeatureStats]]:
    """(manifest, config, state_dict, stats), after verification."""
    d = Path(directory)
    manifest = verify_artifact(d)
    config = json.loads((d / "config.json").read_text())
    stats = {k: FeatureStats(**v) for k, v in json.loads((d / "stats.json").read_text()).items()}
    return manifest, config, load_file(str(d / "model.safetensors")), stats
