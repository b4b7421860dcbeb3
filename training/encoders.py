"""Observation encoders shared by the native value function and policy: state MLP, a small CNN per
camera, and a hashed bag-of-words over the task text (no tokenizer to download)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

_WORD = re.compile(r"[a-z0-9]+")


def hash_tokens(text: str, buckets: int, max_tokens: int = 32) -> list[int]:
    """Stable token ids (crc32 of each lower-cased word and word pair) in [1, buckets)."""
    words = _WORD.findall(text.lower())[:max_tokens]
    grams = words + [f"{a}_{b}" for a, b in zip(words, words[1:])]
    return [1 + zlib.crc32(g.encode()) % (buckets - 1) for g in grams] or [0]


def encode_texts(texts: list[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened ids and offsets for nn.EmbeddingBag."""
    ids, offsets = [], []
    for t in texts:
        offsets.append(len(ids))
        ids.extend(hash_tokens(t, buckets))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


@dataclass
class EncoderConfig:
    state_dim: int
    cameras: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (64, 64)
    hidden: int = 256
    text_buckets: int = 4096
    text_dim: int = 64
    image_channels: int = 32


class ImageEncoder(nn.Module):
    def __init__(self, channels: int, out: int):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, H, W) in [0, 1]
        return self.net(x * 2.0 - 1.0)


class ObservationEncoder(nn.Module):
    """(normalised state, images, task text) -> one feature vector of size `hidden`."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.state = nn.Sequential(nn.Linear(cfg.state_dim, h), nn.GELU(), nn.Linear(h, h))
        self.text = nn.EmbeddingBag(cfg.text_buckets, cfg.text_dim, mode="mean")
        self.images = nn.ModuleDict({c: ImageEncoder(cfg.image_channels, h) for c in cfg.cameras})
        self.fuse = nn.Sequential(nn.Linear(h * (1 + len(cfg.cameras)) + cfg.text_dim, h), nn.GELU(),
                                  nn.Linear(h, h), nn.GELU())

    def forward(self, state: torch.Tensor, text_ids: torch.Tensor, text_offsets: torch.Tensor,
                images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        parts = [self.state(state), self.text(text_ids, text_offsets)]
        for cam, enc in self.images.items():
            parts.append(enc(images[cam]))
        return self.fuse(torch.cat(parts, dim=-1))
