"""A LeRobot policy version (ACT, diffusion, SmolVLA, ...) behind the same batched call as ours.

Batching never changes an answer: a sampling policy's starting noise is drawn per request from its
own seed (as the native runtime does), and language policies see right-padded prompts whose pads
LeRobot masks out of attention and position ids; a batch of 8 equals 8 single calls within float
tolerance (tests/services/test_language_batching.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from services.inference.guard import Envelope
from services.inference.runtime import InputSpec, Observation, check_registered_digest
from training.policies.lerobot_adapter.export import load_lerobot_artifact


def _processor_stats(pipeline, feature: str) -> dict | None:
    """A feature's statistics as LeRobot's (un)normaliser step saved them (mean, std, min, max, ...)."""
    for step in getattr(pipeline, "steps", []):
        stats = getattr(step, "stats", None)
        if isinstance(stats, dict) and feature in stats:
            return dict(stats[feature])
    return None


def _noise_shape(cfg) -> tuple[int, int] | None:
    """The per-sample starting noise a sampling policy draws: flow-matching VLAs (SmolVLA, pi0,
    pi05) over their padded action width, diffusion over its horizon; None for a deterministic one."""
    if hasattr(cfg, "max_action_dim") and hasattr(cfg, "num_steps"):
        return cfg.chunk_size, cfg.max_action_dim
    if cfg.type == "diffusion":
        return cfg.horizon, cfg.action_feature.shape[0]
    return None


class LeRobotRuntime:
    def __init__(self, version: str, artifact_dir: Path, expected_manifest_sha256: str | None = None):
        d = Path(artifact_dir)
        check_registered_digest(d, expected_manifest_sha256)
        self.policy, self.pre, self.post, cfg = load_lerobot_artifact(d)
        self.version = version
        cams = {c: (s[1], s[2], s[0]) for c, s in cfg["cameras"].items()}  # (C, H, W) -> wire (H, W, C)
        self.spec = InputSpec(cfg["state_dim"], cfg["action_dim"], cfg["chunk"], cams,
                              Envelope.from_stats(_processor_stats(self.pre, "observation.state"),
                                                  _processor_stats(self.post, "action")))
        self._noise_shape = _noise_shape(self.policy.config)

    @torch.inference_mode()
    def act(self, obs: list[Observation]) -> np.ndarray:
        batch = {"observation.state": torch.from_numpy(np.stack([o.state for o in obs])),
                 "task": [o.instruction for o in obs]}
        for c in self.spec.cameras:
            batch[f"observation.images.{c}"] = (torch.from_numpy(np.stack([o.images[c] for o in obs]))
                                                .permute(0, 3, 1, 2).float().div(255))
        kwargs = {}
        if self._noise_shape is not None:  # drawn on the CPU from each request's seed: alone or batched, the same
            kwargs["noise"] = torch.stack([torch.randn(self._noise_shape, generator=torch.Generator().manual_seed(o.seed))
                                           for o in obs]).to(next(self.policy.parameters()).device)
        chunk = self.policy.predict_action_chunk(self.pre(batch), **kwargs)  # (B, H, A), normalised
        B, H, A = chunk.shape
        out = self.post(chunk.reshape(B * H, A)).reshape(B, H, A)
        return out.float().cpu().numpy()
