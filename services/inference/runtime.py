"""A loaded policy version (any registered type) behind one call: a batch of validated observations -> action chunks.
Artifacts are verified (sha256 of every file, and the manifest digest the registry recorded)
before anything is loaded; weights are safetensors, configs JSON: nothing is unpickled."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.wire import MAX_INSTRUCTION

from services.inference.guard import Envelope
from training import recap
from training.artifacts import ArtifactError
from training.policies.policy import Observation
from training.recap_config import SELECT_MAX

__all__ = ["InputSpec", "Observation", "PolicyRuntime", "load_runtime", "check_registered_digest"]


@dataclass(frozen=True)
class InputSpec:
    state_dim: int
    action_dim: int
    chunk: int
    cameras: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (H, W, C) uint8
    envelope: Envelope = Envelope()  # what observations may hold and where actions are clipped
    n_obs_steps: int = 1  # control ticks a request carries: the current one and n_obs_steps - 1 in `history`

    def to_dict(self) -> dict:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "chunk": self.chunk,
                "cameras": {k: list(v) for k, v in self.cameras.items()}, "envelope": self.envelope.to_dict(),
                "n_obs_steps": self.n_obs_steps}

    def max_body_bytes(self) -> int:
        """The largest act request body this spec can need, in its most verbose form (JSON nested
        lists, up to 6 bytes a pixel and 32 a state value, for each tick it reads), doubled for
        whitespace, plus 64 KiB."""
        pixels = sum(h * w * c for h, w, c in self.cameras.values())
        return 2 * (self.n_obs_steps * (32 * self.state_dim + 6 * pixels) + 6 * MAX_INSTRUCTION) + (64 << 10)


def _stats_dict(feature) -> dict | None:
    return None if feature is None else dict(vars(feature))


def check_registered_digest(artifact_dir: Path, expected_manifest_sha256: str | None) -> None:
    """The artifact on disk is the one the registry recorded (its manifest digest), before loading."""
    if expected_manifest_sha256 is None:
        return
    got = hashlib.sha256((Path(artifact_dir) / "manifest.json").read_bytes()).hexdigest()
    if got != expected_manifest_sha256:
        raise ArtifactError(f"{artifact_dir}: manifest digest {got[:12]} is not the registered {expected_manifest_sha256[:12]}")


def inference_device() -> str:
    """RECAP_INFERENCE_DEVICE: cpu (default) or cuda / cuda:N on a GPU box."""
    return os.environ.get("RECAP_INFERENCE_DEVICE", "cpu")


def inference_select_chunks() -> int | None:
    """RECAP_INFERENCE_SELECT_CHUNKS: K of value-guided chunk selection for every version served (0: off);
    unset: each artifact's own (the run's recap.select_chunks; off without a chunk critic)."""
    raw = os.environ.get("RECAP_INFERENCE_SELECT_CHUNKS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > SELECT_MAX:
        raise ValueError(f"RECAP_INFERENCE_SELECT_CHUNKS={raw[:16]!r}: a whole number of chunks in 0..{SELECT_MAX}")
    return int(raw)


class PolicyRuntime:
    """A version of any registered policy type behind the contract (training/policies/policy.py):
    the type's processor, its model, its guidance at the artifact's β, noise from each request's seed,
    and value-guided chunk selection when the artifact has a chunk critic (`select_chunks`: K, None for
    the artifact's own, 0 off; RECAP_INFERENCE_SELECT_CHUNKS sets it for a server)."""

    def __init__(self, version: str, artifact_dir: Path, expected_manifest_sha256: str | None = None,
                 select_chunks: int | None = None):
        from training.policies.lerobot_adapter.export import is_exported, load_exported_policy
        from training.policies.policy import load_policy

        d = Path(artifact_dir)
        check_registered_digest(d, expected_manifest_sha256)
        load = load_exported_policy if is_exported(d) else load_policy
        self.policy, self.manifest = load(d, inference_device())
        self.version = version
        self.beta = self.policy.beta
        chosen = inference_select_chunks() if select_chunks is None else int(select_chunks)
        # K in effect: the chosen one where the artifact has a critic, else plain sampling
        self.select_chunks = (getattr(self.policy, "select_chunks", 0) if chosen is None else chosen) \
            if getattr(self.policy, "critic", None) is not None else 0
        stats = self.policy.envelope_stats() if hasattr(self.policy, "envelope_stats") else {
            k: _stats_dict(v) for k, v in self.policy.stats.items()}
        self.spec = InputSpec(self.policy.state_dim, self.policy.action_dim, self.policy.chunk, self.policy.cameras,
                              Envelope.from_stats(stats.get("observation.state"), stats.get("action")),
                              int(getattr(self.policy, "n_obs_steps", 1)))

    def act(self, obs: list[Observation], beta: float | None = None) -> np.ndarray:
        """(B, chunk, action_dim) float32 in the robot's action units; `beta`: a deployment's guidance
        override, None for the artifact's."""
        if getattr(self.policy, "critic", None) is not None:  # K (0: off) given explicitly, over the artifact's
            return self.policy.predict_chunk(obs, recap.INDICATOR_POSITIVE, self.beta if beta is None else beta,
                                             self.select_chunks)
        return self.policy.predict_chunk(obs, recap.INDICATOR_POSITIVE, self.beta if beta is None else beta)


NativeRuntime = PolicyRuntime  # one runtime for every type; the older name stays importable


def load_runtime(version: str, entry: dict):
    """`entry`: the serving state's record of a version (artifact_dir, manifest_sha256, policy_type)."""
    return PolicyRuntime(version, Path(entry["artifact_dir"]), entry.get("manifest_sha256"))


def describe(runtime) -> str:
    return json.dumps(runtime.spec.to_dict())
