"""Every tick of a data selection, flattened in memory for training (states and actions are small;
camera frames are read from the store per batch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from data.schema import ActionSource
from data.store import EpisodeData, EpisodeStore


@dataclass
class StepTable:
    store: EpisodeStore
    episode_ids: list[str]
    task_ids: list[str]
    instructions: list[str]
    outcomes: list[str]
    lengths: np.ndarray  # (E,)
    starts: np.ndarray  # (E,) first flat index of each episode
    episode_index: np.ndarray  # (N,)
    tick: np.ndarray  # (N,)
    state: np.ndarray  # (N, S)
    action: np.ndarray  # (N, A)
    source: np.ndarray  # (N,)
    cameras: list[str] = field(default_factory=list)
    # (N,) True on ticks the policy must not learn from (a stretch marked as a bad correction): never a
    # training sample, and inside another tick's action chunk treated as padding (not a target)
    masked: np.ndarray | None = None
    _episodes: dict[int, EpisodeData] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.masked is None:
            self.masked = np.zeros(len(self.tick), bool)

    def __len__(self) -> int:
        return len(self.tick)

    @property
    def usable(self) -> np.ndarray:
        """(N,) True on the ticks a policy may learn from: not a hold (the arm only held position, which
        teaches nothing) and not masked (a stretch marked as a bad correction)."""
        return (self.source != ActionSource.HOLD) & ~self.masked

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    def episode_slice(self, e: int) -> slice:
        return slice(int(self.starts[e]), int(self.starts[e] + self.lengths[e]))

    def action_chunks(self, idx: np.ndarray, horizon: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`horizon` actions from `start` ticks after each tick in `idx` (vectorised
        data.windows.action_chunk; `start` < 0 reaches back): padded past the episode's ends with its
        first or last action; the mask is True on padding and on masked ticks (a marked bad
        correction's actions are never a target)."""
        e = self.episode_index[idx]
        ticks = self.tick[idx][:, None] + start + np.arange(horizon)[None]
        lens = self.lengths[e][:, None]
        flat = self.starts[e][:, None] + np.clip(ticks, 0, lens - 1)
        pad = (ticks >= lens) | (ticks < 0) | self.masked[flat]
        return self.action[flat], pad

    def history(self, idx: np.ndarray, length: int) -> np.ndarray:
        """(len(idx), length) flat indices of the `length` ticks ending at each tick in `idx`, oldest
        first, padded before the episode start by repeating its first tick (vectorised
        data.windows.history; as a robot's history fills at the start of an episode)."""
        e = self.episode_index[idx]
        ticks = self.tick[idx][:, None] + np.arange(1 - length, 1)[None]
        return self.starts[e][:, None] + np.maximum(ticks, 0)

    def frames(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Camera frames of the ticks in `idx` as stored: name -> uint8 (B, H, W, C) (the policy's
        processor turns them into model inputs)."""
        out = {}
        for cam in self.cameras:
            frames = []
            for i in idx:
                e = int(self.episode_index[i])
                if e not in self._episodes:
                    self._episodes[e] = self.store.open(self.episode_ids[e])
                frames.append(self._episodes[e].image(cam, int(self.tick[i])))
            out[cam] = np.stack(frames)
        return out

    def instructions_of(self, idx: np.ndarray) -> list[str]:
        return [self.instructions[int(e)] for e in self.episode_index[idx]]


def load_steps(store: EpisodeStore, episode_ids: Sequence[str], *, cameras: Sequence[str] = (),
               masked: Mapping[str, Sequence[Mapping[str, int]]] | None = None) -> StepTable:
    """`masked`: episode id -> stretches {start_tick, end_tick} (inclusive) the policy must not learn from
    (Catalog.select_for_training's `masked`)."""
    if not episode_ids:
        raise ValueError("no episodes selected")
    eps = [store.open(e) for e in episode_ids]
    lengths = np.array([len(ep) for ep in eps])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    mask = np.zeros(int(lengths.sum()), bool)
    for i, eid in enumerate(episode_ids):
        for m in (masked or {}).get(eid, []):
            a, b = max(0, int(m["start_tick"])), min(int(lengths[i]) - 1, int(m["end_tick"]))
            if a <= b:
                mask[starts[i] + a: starts[i] + b + 1] = True
    return StepTable(
        masked=mask,
        store=store,
        episode_ids=list(episode_ids),
        task_ids=[ep.info.task_id for ep in eps],
        instructions=[ep.info.instruction or ep.info.task_id for ep in eps],
        outcomes=[str(ep.info.outcome) for ep in eps],
        lengths=lengths,
        starts=starts,
        episode_index=np.repeat(np.arange(len(eps)), lengths),
        tick=np.concatenate([np.arange(n) for n in lengths]),
        state=np.concatenate([ep.state for ep in eps]).astype(np.float32),
        action=np.concatenate([ep.action for ep in eps]).astype(np.float32),
        source=np.concatenate([ep.action_source for ep in eps]),
        cameras=list(cameras),
    )
