"""Scripted human operators built on the task's expert, differing the way people do: a clean one,
a careful-but-slow one (scaled-down motions, hesitations) and a sloppy one (temporally correlated
errors, detours, some failures). Demonstrations come from a mix of them.

Calibration (10 seeds, 300-step limit; success / mean steps of successes):
    push:             clean 10 / 61,  slow(0.6, 2% pauses) 10 / 129,  sloppy(0.2-0.3) 3-6 / 97-138
    peg-insert-side:  clean 10 / 125, slow 9 / 154,                   sloppy 5-6 / 119-141
    pick-place:       clean 10 / 52
so the data holds systematically faster and slower, better and worse behaviour to tell apart."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Operator:
    name = "operator"

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def act(self, expert_action: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class CleanOperator(Operator):
    name = "clean"

    def act(self, expert_action: np.ndarray) -> np.ndarray:
        return expert_action


@dataclass
class SlowOperator(Operator):
    """Careful but slow: moves at `scale` of the expert's speed and hesitates now and then."""

    scale: float = 0.6
    pause_prob: float = 0.02
    pause_len: tuple[int, int] = (5, 15)
    name: str = "slow"

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        self._pause = 0

    def act(self, expert_action: np.ndarray) -> np.ndarray:
        a = expert_action.copy()
        if self._pause == 0 and self.rng.random() < self.pause_prob:
            self._pause = int(self.rng.integers(*self.pause_len))
        if self._pause > 0:
            self._pause -= 1
            a[:3] = 0.0  # hold the hand, keep the grip
            return a
        a[:3] *= self.scale
        return a


@dataclass
class SloppyOperator(Operator):
    """Temporally correlated errors (Ornstein-Uhlenbeck) and occasional detours."""

    sigma: float = 0.25
    theta: float = 0.15
    detour_prob: float = 0.015
    detour_len: tuple[int, int] = (8, 20)
    name: str = "sloppy"

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        self._noise = np.zeros(3)
        self._detour = 0
        self._dir = np.zeros(3)

    def act(self, expert_action: np.ndarray) -> np.ndarray:
        a = expert_action.copy()
        self._noise += -self.theta * self._noise + self.sigma * np.sqrt(2 * self.theta) * self.rng.normal(size=3)
        if self._detour == 0 and self.rng.random() < self.detour_prob:
            self._detour = int(self.rng.integers(*self.detour_len))
            d = self.rng.normal(size=3)
            self._dir = d / (np.linalg.norm(d) + 1e-9)
        a[:3] += self._noise
        if self._detour > 0:
            self._detour -= 1
            a[:3] = 0.3 * a[:3] + 0.8 * self._dir
        return np.clip(a, -1, 1).astype(np.float32)


def operator_mix(n: int, seed: int, mix: dict[str, float] | None = None) -> list[Operator]:
    """n operators drawn from the mix (default: 20% clean, 40% slow, 40% sloppy)."""
    mix = mix or {"clean": 0.2, "slow": 0.4, "sloppy": 0.4}
    kinds = {"clean": CleanOperator, "slow": SlowOperator, "sloppy": SloppyOperator}
    rng = np.random.default_rng(seed)
    names = list(mix)
    counts = np.floor(np.array([mix[k] for k in names]) * n).astype(int)
    counts[0] += n - counts.sum()
    ops = [kinds[k]() for k, c in zip(names, counts) for _ in range(c)]
    rng.shuffle(ops)
    return ops
