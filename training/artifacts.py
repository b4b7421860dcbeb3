"""Model artifacts: safetensors weights + JSON config + normalisation stats + a manifest with the
sha256 of every file, lineage (training run, data selection, parent version) and metrics.
Written into a temporary directory and renamed into place; verified before every load. No pickle.
The manifest and its verification are data/artifact_manifest.py (torch-free); this module adds the
weights."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from data.artifact_manifest import ARTIFACT_FORMAT, ArtifactError, verify_artifact, write_manifest
from data.files import fsync_dir
from data.stats import FeatureStats

__all__ = ["ARTIFACT_FORMAT", "ArtifactError", "load_artifact", "verify_artifact", "write_artifact"]


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
        manifest = write_manifest(tmp, kind=kind, lineage=lineage, metrics=metrics)
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


def load_artifact(directory: str | Path) -> tuple[dict, dict, dict[str, torch.Tensor], dict[str, FeatureStats]]:
    """(manifest, config, state_dict, stats), after verification."""
    d = Path(directory)
    manifest = verify_artifact(d)
    config = json.loads((d / "config.json").read_text())
    stats = {k: FeatureStats(**v) for k, v in json.loads((d / "stats.json").read_text()).items()}
    return manifest, config, load_file(str(d / "model.safetensors")), stats
