"""Every tick of a data selection, flattened in memory for training (states and actions are small;
camera frames are read from the store per batch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from data.store import EpisodeData, EpisodeStore
from training.encoders import hash_tokens


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
    _episodes: dict[int, EpisodeData] = field(default_factory=dict, repr=False)
    _tokens: list[list[int]] | None = field(default=None, repr=False)  # hashed words of each instruction

    def __len__(self) -> int:
        return len(self.tick)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    def episode_slice(self, e: int) -> slice:
        return slice(int(self.starts[e]), int(self.starts[e] + self.lengths[e]))

    def action_chunks(self, idx: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `horizon` actions from each tick in `idx` (vectorised data.windows.action_chunk):
        padded past the episode end with its last action; the mask is True on padding."""
        e = self.episode_index[idx]
        ticks = self.tick[idx][:, None] + np.arange(horizon)[None]
        lens = self.lengths[e][:, None]
        pad = ticks >= lens
        flat = self.starts[e][:, None] + np.minimum(ticks, lens - 1)
        return self.action[flat], pad

    def images(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        out = {}
        for cam in self.cameras:
            frames = []
            for i in idx:
                e = int(self.episode_index[i])
                if e not in self._episodes:
                    self._episodes[e] = self.store.open(self.episode_ids[e])
                frames.append(self._episodes[e].image(cam, int(self.tick[i])))
            out[cam] = torch.from_numpy(np.stack(frames)).float().div_(255.0).permute(0, 3, 1, 2)
        return out

    def text_batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and offsets for nn.EmbeddingBag; each distinct instruction is hashed once."""
        if self._tokens is None:
            self._tokens = [hash_tokens(t, 4096) for t in self.instructions]
        seqs = [self._tokens[e] for e in self.episode_index[idx]]
        lengths = np.fromiter((len(q) for q in seqs), np.int64, len(seqs))
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return torch.from_numpy(np.fromiter((t for q in seqs for t in q), np.int64)), torch.from_numpy(offsets)


def load_steps(store: EpisodeStore, episode_ids: Sequence[str], *, cameras: Sequence[str] = ()) -> StepTable:
    if not episode_ids:
        raise ValueError("no episodes selected")
    eps = [store.open(e) for e in episode_ids]
    lengths = np.array([len(ep) for ep in eps])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return StepTable(
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
