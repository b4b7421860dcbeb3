"""The native value function: observation encoder -> logits over B bins on [-1, 0] (DESIGN §5).
With `ValueConfig.chunk` > 0 the same network is the chunk critic Q(o_t, l, t, a_{t:t+H}): each member
adds an encoding of the (normalised) action chunk, read with the state, to its observation features, as
it adds the time."""

from __future__ import annotations

import torch
from torch import nn

from training import recap
from training.encoders import EncoderConfig, ObservationEncoder
from training.value.configuration_value import ValueConfig


def time_features(elapsed: torch.Tensor) -> torch.Tensor:
    """(B,) elapsed fraction of the time limit -> (B, 4) features a small layer turns into an offset."""
    e = elapsed.float().unsqueeze(-1)
    return torch.cat([e, e * e, torch.sin(torch.pi * e), torch.cos(torch.pi * e)], dim=-1)


TIME_FEATURES = 4


class ValueFunction(nn.Module):
    def __init__(self, cfg: ValueConfig):
        super().__init__()
        self.cfg = cfg
        enc = EncoderConfig(state_dim=cfg.state_dim, cameras=list(cfg.cameras), image_size=cfg.image_size,
                            hidden=cfg.hidden)
        self.members = nn.ModuleList()
        for _ in range(cfg.ensemble):
            self.members.append(nn.ModuleDict({
                "encoder": ObservationEncoder(enc),
                "head": nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
                                      nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.num_bins)),
                **({"time": nn.Linear(TIME_FEATURES, cfg.hidden)} if cfg.time_input else {}),
                # the chunk read together with the state, so which chunk is better may depend on where the arm is
                **({"chunk": nn.Sequential(nn.Linear(cfg.state_dim + cfg.chunk * cfg.action_dim, cfg.hidden),
                                           nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden))} if cfg.chunk else {}),
            }))

    def logits(self, batch: dict) -> torch.Tensor:
        """(ensemble, B, bins). `elapsed` NaN: the tick is not known (the time offset is left out);
        `chunk` (B, chunk, action_dim): the critic's action chunk."""
        out = []
        tf = known = None
        if self.cfg.time_input:
            if "elapsed" not in batch:
                raise ValueError("this value function reads the elapsed time: the batch has no 'elapsed'")
            elapsed = batch["elapsed"].float()
            known = (~torch.isnan(elapsed)).float().unsqueeze(-1)
            tf = time_features(torch.nan_to_num(elapsed))
        chunk = None
        if self.cfg.chunk:
            if "chunk" not in batch:
                raise ValueError("this chunk critic scores an action chunk: the batch has no 'chunk'")
            chunk = torch.cat([batch["state"], batch["chunk"].float().reshape(len(batch["chunk"]), -1)], dim=-1)
        for m in self.members:
            feat = m["encoder"](batch["state"], batch["text_ids"], batch["text_offsets"], batch.get("images"))
            if tf is not None:
                feat = feat + m["time"](tf) * known
            if chunk is not None:
                feat = feat + m["chunk"](chunk)
            out.append(m["head"](feat))
        return torch.stack(out)

    def loss(self, batch: dict) -> torch.Tensor:
        """Mean member loss; batch["member_mask"] (ensemble, B) keeps each member off its held-out fold."""
        logits = self.logits(batch)
        mask = batch.get("member_mask")
        if mask is None:
            return sum(recap.value_loss(lg, batch["return"]) for lg in logits) / len(logits)
        target = recap.two_hot(batch["return"], logits.shape[-1])
        ce = -(target * torch.log_softmax(logits, dim=-1)).sum(-1)  # (ensemble, B)
        return ((ce * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()

    def forward(self, batch: dict) -> torch.Tensor:  # the training loss (what DDP wraps)
        return self.loss(batch)

    @torch.no_grad()
    def member_values(self, batch: dict) -> torch.Tensor:
        """(ensemble, B) expected values, one row per member."""
        return recap.expected_value(self.logits(batch))

    @torch.no_grad()
    def value(self, batch: dict) -> torch.Tensor:
        """Expected value in normalised units, averaged over the ensemble."""
        return self.member_values(batch).mean(0)


def build_value_function(cfg: ValueConfig) -> nn.Module:
    """The configured backbone; both answer loss(batch), value(batch) and forward = loss."""
    if cfg.backbone == "native":
        return ValueFunction(cfg)
    if cfg.chunk:
        raise ValueError("the chunk critic has the native backbone only (value.backbone native)")
    if cfg.backbone == "vlm":
        from training.value.modeling_value_vlm import VLMValueConfig, VLMValueFunction

        return VLMValueFunction(VLMValueConfig(state_dim=cfg.state_dim, cameras=list(cfg.cameras),
                                               image_size=cfg.image_size[0], num_bins=cfg.num_bins,
                                               **({"time_input": cfg.time_input} | cfg.vlm)))
    raise ValueError(f"unknown value backbone {cfg.backbone!r}: native or vlm")
