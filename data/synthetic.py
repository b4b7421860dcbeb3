"""Synthetic recordings: smooth moving-object camera scenes with sensor noise, a slowly varying
joint state and actions. Used to check a store's recording speed and crash safety before real
robots are attached (`recap data record-synthetic`) and by the store benchmark; codecs behave on
these frames as on real camera footage (not white noise)."""

from __future__ import annotations

import numpy as np

from data.schema import ActionSource, CameraSpec, EpisodeFeatures, Tick


def scene(t: int, height: int, width: int, camera: int = 0, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sx, sy = width / 640.0, height / 480.0
    img = np.empty((height, width, 3), np.float32)
    phase = 0.7 * camera
    img[..., 0] = 120 + 60 * np.sin(x / (57 * sx) + t * 0.1 + phase) + 20 * np.cos(y / (31 * sy))
    img[..., 1] = 100 + 50 * np.cos(y / (43 * sy) - t * 0.07 + phase)
    img[..., 2] = 90 + 0.15 * x / sx
    cx = width / 2 + 150 * sx * np.sin(t * 0.05 + phase)
    cy = height / 2 + 80 * sy * np.cos(t * 0.04)
    img[(x - cx) ** 2 + (y - cy) ** 2 < (50 * sx) ** 2] = (200, 40, 40)
    img += np.random.default_rng(seed * 1_000_003 + t * 7 + camera).normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def features(num_cameras: int = 3, height: int = 480, width: int = 640, state_dim: int = 14,
             action_dim: int = 14, proposed_chunk: int = 1) -> EpisodeFeatures:
    names = ["top", "left_wrist", "right_wrist"] + [f"cam{i}" for i in range(3, num_cameras)]
    return EpisodeFeatures(state_dim, action_dim, {n: CameraSpec(height, width) for n in names[:num_cameras]},
                           proposed_chunk=proposed_chunk)


class SyntheticFrames:
    """Pre-rendered frames reused in a loop, so producing a tick costs (almost) nothing."""

    def __init__(self, feats: EpisodeFeatures, n_frames: int = 30, seed: int = 0):
        self.features = feats
        self.frames = {name: [scene(t, c.height, c.width, i, seed) for t in range(n_frames)]
                       for i, (name, c) in enumerate(feats.cameras.items())}
        self.n = n_frames

    def tick(self, t: int, timestamp_ns: int, source: ActionSource = ActionSource.POLICY,
             policy_version: str | None = "synthetic-v1") -> Tick:
        f = self.features
        phase = t * 0.05
        state = np.sin(phase + np.arange(f.state_dim)).astype(np.float32)
        action = np.cos(phase + np.arange(f.action_dim)).astype(np.float32)
        proposed = np.tile(action, (f.proposed_chunk, 1))
        images = {name: frames[t % self.n] for name, frames in self.frames.items()}
        return Tick(timestamp_ns, state, action, source, images, proposed, policy_version)
