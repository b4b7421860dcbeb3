"""The native policy's (and native value function's) processing: raw observations -> model inputs.
State: mean/std normalised with the run's stats; instruction: hashed words (training/encoders.py);
images: uint8 (B, H, W, C) -> float [0, 1] channels-first. Actions: mean/std in, back out. The stats
are saved with the artifact; training, serving and simulation all call this one class."""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import torch

from data.stats import FeatureStats
from training.encoders import hash_tokens

TEXT_BUCKETS = 4096


def image_tensor(frames: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1] (the division on the device: 4x fewer bytes moved)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).float().div_(255.0).permute(0, 3, 1, 2)


@lru_cache(maxsize=4096)
def _tokens(text: str, buckets: int) -> tuple[int, ...]:
    return tuple(hash_tokens(text, buckets))


class NativeProcessor:
    def __init__(self, stats: Mapping[str, FeatureStats], cameras: Sequence[str] = (), buckets: int = TEXT_BUCKETS):
        self.stats, self.cameras, self.buckets = dict(stats), list(cameras), buckets

    def text(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and offsets for nn.EmbeddingBag; each distinct instruction is hashed once."""
        seqs = [_tokens(t, self.buckets) for t in instructions]
        lengths = np.fromiter((len(q) for q in seqs), np.int64, len(seqs))
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return torch.from_numpy(np.fromiter((t for q in seqs for t in q), np.int64)), torch.from_numpy(offsets)

    def observations(self, states: np.ndarray, images: Mapping[str, np.ndarray], instructions: Sequence[str],
                     device: torch.device | str = "cpu") -> dict:
        ids, offsets = self.text(instructions)
        batch = {"state": torch.from_numpy(self.stats["observation.state"].normalize(states)).float().to(device),
                 "text_ids": ids.to(device), "text_offsets": offsets.to(device), "texts": list(instructions)}
        if self.cameras:
            batch["images"] = {c: image_tensor(images[c], device) for c in self.cameras}
        return batch

    def actions(self, chunks: np.ndarray, pad: np.ndarray, device: torch.device | str = "cpu") -> dict:
        return {"action": torch.from_numpy(self.stats["action"].normalize(chunks)).float().to(device),
                "action_is_pad": torch.from_numpy(pad).to(device)}

    def unnormalize(self, x: torch.Tensor) -> np.ndarray:
        return self.stats["action"].unnormalize(x.float().cpu().numpy()).astype(np.float32)
