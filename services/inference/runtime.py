"""A loaded policy version behind one call: a batch of validated observations -> action chunks.
Artifacts are verified (sha256 of every file, and the manifest digest the registry recorded)
before anything is loaded; weights are safetensors, configs JSON: nothing is unpickled."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.wire import MAX_INSTRUCTION

from services.inference.guard import Envelope
from training import recap
from training.artifacts import ArtifactError, load_artifact


@dataclass(frozen=True)
class InputSpec:
    state_dim: int
    action_dim: int
    chunk: int
    cameras: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (H, W, C) uint8
    envelope: Envelope = Envelope()  # what observations may hold and where actions are clipped

    def to_dict(self) -> dict:
        return {"state_dim": self.state_dim, "action_dim": self.action_dim, "chunk": self.chunk,
                "cameras": {k: list(v) for k, v in self.cameras.items()}, "envelope": self.envelope.to_dict()}

    def max_body_bytes(self) -> int:
        """The largest act request body this spec can need, in its most verbose form (JSON nested
        lists, up to 6 bytes a pixel and 32 a state value), doubled for whitespace, plus 64 KiB."""
        pixels = sum(h * w * c for h, w, c in self.cameras.values())
        return 2 * (32 * self.state_dim + 6 * pixels + 6 * MAX_INSTRUCTION) + (64 << 10)


@dataclass
class Observation:
    state: np.ndarray  # (state_dim,) float32
    images: dict[str, np.ndarray]  # name -> (H, W, C) uint8
    instruction: str
    seed: int  # the flow's starting noise: same seed, same chunk, batched or not


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


class NativeRuntime:
    """Our flow-matching policy, conditioned on the positive indicator (β from the run's recipe)."""

    def __init__(self, version: str, artifact_dir: Path, expected_manifest_sha256: str | None = None):
        from training.encoders import encode_texts
        from training.policies.native import NativeFlowPolicy, NativePolicyConfig

        d = Path(artifact_dir)
        check_registered_digest(d, expected_manifest_sha256)
        manifest, config, state, stats = load_artifact(d)
        cfg = NativePolicyConfig.from_dict({k: v for k, v in config.items() if k != "type"})
        self.device = torch.device(inference_device())
        self.model = NativeFlowPolicy(cfg)
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        self.version = version
        self.stats = stats
        self.beta = float(manifest.get("lineage", {}).get("recap", {}).get("cfg_beta", 1.0))
        self._encode = encode_texts
        h, w = cfg.image_size
        self.spec = InputSpec(cfg.state_dim, cfg.action_dim, cfg.chunk, {c: (h, w, 3) for c in cfg.cameras},
                              Envelope.from_stats(_stats_dict(stats.get("observation.state")),
                                                  _stats_dict(stats.get("action"))))

    @torch.inference_mode()
    def act(self, obs: list[Observation]) -> np.ndarray:
        """(B, chunk, action_dim) float32 in the robot's action units."""
        cfg = self.model.cfg
        states = np.stack([o.state for o in obs])
        ids, offsets = self._encode([o.instruction for o in obs], 4096)
        dev = self.device
        batch = {"state": torch.from_numpy(self.stats["observation.state"].normalize(states)).float().to(dev),
                 "text_ids": ids.to(dev), "text_offsets": offsets.to(dev)}
        if cfg.cameras:
            batch["images"] = {c: torch.from_numpy(np.stack([o.images[c] for o in obs])).to(dev).float().div(255)
                               .permute(0, 3, 1, 2) for c in cfg.cameras}
        # the noise is drawn on the CPU from each request's seed: the same answer on any device
        noise = torch.stack([torch.randn((cfg.chunk, cfg.action_dim), generator=torch.Generator().manual_seed(o.seed))
                             for o in obs]).to(dev)
        x = self.model.sample(batch, indicator=recap.INDICATOR_POSITIVE, beta=self.beta, noise=noise).cpu().numpy()
        return self.stats["action"].unnormalize(x).astype(np.float32)


def load_runtime(version: str, entry: dict):
    """`entry`: the serving state's record of a version (artifact_dir, manifest_sha256, policy_type)."""
    kind = entry.get("policy_type", "native_flow")
    if kind == "native_flow":
        return NativeRuntime(version, Path(entry["artifact_dir"]), entry.get("manifest_sha256"))
    if kind.startswith("lerobot"):
        from services.inference.runtime_lerobot import LeRobotRuntime

        return LeRobotRuntime(version, Path(entry["artifact_dir"]), entry.get("manifest_sha256"))
    raise ArtifactError(f"version {version}: unknown policy type {kind!r}")


def describe(runtime) -> str:
    return json.dumps(runtime.spec.to_dict())
