"""Per-feature normalisation statistics over a selection of episodes, saved next to weights as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from data.schema import ACTION, STATE
from data.store import EpisodeData


@dataclass
class FeatureStats:
    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    q01: list[float]
    q99: list[float]
    count: int

    @classmethod
    def of(cls, x: np.ndarray) -> "FeatureStats":
        x = x.reshape(len(x), -1).astype(np.float64)
        return cls(mean=x.mean(0).tolist(), std=x.std(0).tolist(), min=x.min(0).tolist(), max=x.max(0).tolist(),
                   q01=np.quantile(x, 0.01, axis=0).tolist(), q99=np.quantile(x, 0.99, axis=0).tolist(), count=len(x))

    # Features that never varied in the data (padding, fixed joints) get this std instead of ~0,
    # so a small change at deployment does not blow up to a huge normalised value.
    MIN_STD = 1e-2

    def _scale(self) -> np.ndarray:
        return np.maximum(np.asarray(self.std, np.float32), self.MIN_STD)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return (x - np.asarray(self.mean, np.float32)) / self._scale()

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        return x * self._scale() + np.asarray(self.mean, np.float32)


@dataclass
class NormalizationStats:
    features: dict[str, FeatureStats] = field(default_factory=dict)

    def __getitem__(self, name: str) -> FeatureStats:
        return self.features[name]

    def to_json(self) -> str:
        return json.dumps({k: v.__dict__ for k, v in self.features.items()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "NormalizationStats":
        return cls({k: FeatureStats(**v) for k, v in json.loads(text).items()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "NormalizationStats":
        return cls.from_json(Path(path).read_text())


def compute_stats(episodes: Iterable[EpisodeData], *, image_samples_per_episode: int = 8, seed: int = 0) -> NormalizationStats:
    """Exact statistics of state and action; per-channel image statistics (in [0, 1]) from a few
    frames sampled per episode, which is what image normalisers need."""
    rng = np.random.default_rng(seed)
    states, actions, images = [], [], {}
    for ep in episodes:
        if len(ep) == 0:
            continue
        states.append(ep.state)
        actions.append(ep.action)
        for cam in ep.cameras:
            ts = rng.choice(len(ep), size=min(image_samples_per_episode, len(ep)), replace=False)
            frames = np.stack([ep.image(cam, int(t)) for t in ts]).astype(np.float32) / 255.0
            images.setdefault(cam, []).append(frames.reshape(-1, frames.shape[-1]))
    if not states:
        raise ValueError("no ticks in the selected episodes")
    stats = NormalizationStats({STATE: FeatureStats.of(np.concatenate(states)),
                                ACTION: FeatureStats.of(np.concatenate(actions))})
    for cam, chunks in images.items():
        px = np.concatenate(chunks)
        sub = px[rng.choice(len(px), size=min(len(px), 200_000), replace=False)]
        stats.features[f"observation.images.{cam}"] = FeatureStats.of(sub)
    return stats
