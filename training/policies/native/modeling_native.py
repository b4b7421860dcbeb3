"""pi(a_{t:t+H} | o_t, l, I): a small flow-matching policy over action chunks, conditioned on the
advantage indicator through a learned embedding (negative / positive / none)."""

from __future__ import annotations

import math

import torch
from torch import nn

from training import recap
from training.encoders import EncoderConfig, ObservationEncoder
from training.policies.native.configuration_native import NativePolicyConfig


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
    ang = t[:, None] * freqs[None] * 2 * math.pi
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class NativeFlowPolicy(nn.Module):
    def __init__(self, cfg: NativePolicyConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.encoder = ObservationEncoder(EncoderConfig(state_dim=cfg.state_dim, cameras=list(cfg.cameras),
                                                        image_size=cfg.image_size, hidden=h))
        self.indicator = nn.Embedding(3, h)  # recap.INDICATOR_{NEGATIVE, POSITIVE, NONE}
        self.time = nn.Sequential(nn.Linear(64, h), nn.GELU(), nn.Linear(h, h))
        n = cfg.chunk * cfg.action_dim
        self.velocity = nn.Sequential(
            nn.Linear(2 * h + h + n, 2 * h), nn.GELU(),
            nn.Linear(2 * h, 2 * h), nn.GELU(),
            nn.Linear(2 * h, 2 * h), nn.GELU(),
            nn.Linear(2 * h, n),
        )

    def features(self, batch: dict) -> torch.Tensor:
        return self.encoder(batch["state"], batch["text_ids"], batch["text_offsets"], batch.get("images"))

    def _v(self, feat: torch.Tensor, indicator: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        h = torch.cat([feat, self.indicator(indicator), self.time(time_embedding(t, 64)), x.reshape(B, -1)], dim=-1)
        return self.velocity(h).reshape(x.shape)

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow matching (rectified flow): x_t = (1-t) noise + t a, target velocity a - noise.
        Padded actions are masked; `weight` (AWR) scales each sample; indicators drop to 'none'
        for cfg.indicator_dropout of the samples."""
        a = batch["action"]  # (B, H, A), normalised
        B = a.shape[0]
        noise = torch.randn(a.shape, generator=generator, device=a.device)
        t = torch.rand(B, generator=generator, device=a.device)
        x = (1 - t)[:, None, None] * noise + t[:, None, None] * a
        ind = recap.drop_indicators(batch["indicator"], self.cfg.indicator_dropout, generator)
        v = self._v(self.features(batch), ind, x, t)
        err = ((v - (a - noise)) ** 2).mean(-1)  # (B, H)
        keep = (~batch["action_is_pad"]).float()
        per_sample = (err * keep).sum(-1) / keep.sum(-1).clamp(min=1.0)
        w = batch.get("weight")
        # a batch whose weights are all ~0 (AWR far below its best ticks) teaches nothing rather than 0 / 0
        return (per_sample * w).sum() / w.sum().clamp_min(1e-12) if w is not None else per_sample.mean()

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:  # training loss
        return self.loss(batch, generator)

    @torch.no_grad()
    def sample(self, batch: dict, *, indicator: int = recap.INDICATOR_POSITIVE, beta: float = 1.0,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Integrate from noise to an action chunk (normalised). beta > 1: classifier-free guidance
        between the unconditional and the positive velocity (two passes per step). `noise` (B, H, A):
        the starting point, when each sample brings its own (a server batching robots)."""
        feat = self.features(batch)
        B = feat.shape[0]
        shape = (B, self.cfg.chunk, self.cfg.action_dim)
        x = noise.to(feat.device) if noise is not None else torch.randn(shape, generator=generator, device=feat.device)
        cond = torch.full((B,), indicator, dtype=torch.long, device=feat.device)
        none = torch.full((B,), recap.INDICATOR_NONE, dtype=torch.long, device=feat.device)
        dt = 1.0 / self.cfg.flow_steps
        for k in range(self.cfg.flow_steps):
            t = torch.full((B,), k * dt, device=feat.device)
            v = self._v(feat, cond, x, t)
            if beta != 1.0:
                v = recap.guided_velocity(self._v(feat, none, x, t), v, beta)
            x = x + dt * v
        return x
