"""A PyTorch Dataset over committed episodes: (observation window, next-H action chunk) samples.

Only this module imports torch, so the robot-side writer never pulls it in. Non-image arrays of
every episode are loaded once (they are small); images are decoded per sample from the store.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data.stats import NormalizationStats
from data.store import EpisodeData, EpisodeStore
from data.windows import action_chunk, history


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_malloc_tuned = False


def keep_freed_frames() -> None:
    """Every sample allocates its frames afresh (a 480x640 frame is 0.9 MB decoded, 3.7 MB as float)
    and frees them when the batch is done. glibc serves blocks that large with mmap and hands them
    back to the kernel on free, so each sample page-faults its frames in again: measured on the
    store benchmark's 3-camera samples, 3343 page faults and 9.0 ms a sample, against 0 and 4.6 ms
    with freed blocks kept in the heap for the next sample (mmap only above 32 MB, the heap trimmed
    back to the kernel above 256 MB free). Process-wide, inherited by DataLoader workers; glibc only
    (elsewhere nothing changes)."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


class EpisodeDataset(Dataset):
    """Samples indexed by (episode, tick), flattened.

    Each sample holds `observation.state` (state_history x S, or S when state_history == 1),
    one image per camera as float CHW in [0, 1] (or uint8 with `uint8_images=True`), `action`
    (horizon x A) with `action_is_pad`, the tick's `action_source`, and `episode_index`/`tick`.
    """

    def __init__(self, store: EpisodeStore, episode_ids: Sequence[str], *, horizon: int = 50, state_history: int = 1,
                 cameras: Sequence[str] | None = None, uint8_images: bool = False,
                 stats: NormalizationStats | None = None, parallel_decode: bool = False):
        if not episode_ids:
            raise ValueError("no episodes selected")
        self.store = store
        self.episode_ids = list(episode_ids)
        self.horizon = horizon
        self.state_history = state_history
        self.uint8_images = uint8_images
        self.stats = stats
        self.parallel_decode = parallel_decode  # threads per camera; helps with spare cores and no loader workers
        eps = [store.open(e) for e in self.episode_ids]
        self.cameras = list(eps[0].cameras) if cameras is None else list(cameras)
        self._states = [ep.state for ep in eps]
        self._actions = [ep.action for ep in eps]
        self._sources = [ep.action_source for ep in eps]
        lengths = np.array([len(ep) for ep in eps])
        self._ends = np.cumsum(lengths)
        self._episodes: dict[int, EpisodeData] = {}  # opened lazily per worker process
        self._pool: ThreadPoolExecutor | None = None  # per process; cameras decode in parallel
        if self.cameras:
            keep_freed_frames()

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        e = int(np.searchsorted(self._ends, index, side="right"))
        start = 0 if e == 0 else int(self._ends[e - 1])
        return e, index - start

    def _episode(self, e: int) -> EpisodeData:
        if e not in self._episodes:
            self._episodes[e] = self.store.open(self.episode_ids[e])
        return self._episodes[e]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        e, t = self.locate(index)
        state, state_pad = history(self._states[e], t, self.state_history)
        actions, action_pad = action_chunk(self._actions[e], t, self.horizon)
        if self.stats is not None:
            state = self.stats["observation.state"].normalize(state)
            actions = self.stats["action"].normalize(actions)
        item = {
            "observation.state": torch.from_numpy(np.ascontiguousarray(state[0] if self.state_history == 1 else state, np.float32)),
            "action": torch.from_numpy(np.ascontiguousarray(actions, np.float32)),
            "action_is_pad": torch.from_numpy(action_pad),
            "action_source": torch.tensor(int(self._sources[e][t])),
            "episode_index": torch.tensor(e),
            "tick": torch.tensor(t),
        }
        if self.state_history > 1:
            item["observation.state_is_pad"] = torch.from_numpy(state_pad)
        if self.cameras:
            ep = self._episode(e)
            if len(self.cameras) > 1 and self.parallel_decode:
                if self._pool is None or self._pool_pid != os.getpid():
                    self._pool, self._pool_pid = ThreadPoolExecutor(len(self.cameras), thread_name_prefix="decode"), os.getpid()
                frames = list(self._pool.map(lambda cam: ep.image(cam, t), self.cameras))
            else:
                frames = [ep.image(cam, t) for cam in self.cameras]
            for cam, frame in zip(self.cameras, frames):
                if not self.uint8_images:  # convert while contiguous (HWC), then a CHW view; numpy in one pass
                    # and one thread: torch's intra-op threads made it 10x slower on a busy 2-core machine
                    frame = np.multiply(frame, np.float32(1.0 / 255.0), dtype=np.float32)
                item[f"observation.images.{cam}"] = torch.from_numpy(frame).permute(2, 0, 1)
        return item

    def __getstate__(self) -> dict:  # DataLoader workers get no thread pool or open episodes
        state = self.__dict__.copy()
        state["_pool"], state["_episodes"] = None, {}
        return state
