"""The check every language-conditioned LeRobot policy passes through the adapter: the indicator
changes the loss, a few steps on one batch lower it, and sampling returns a finite chunk."""

from __future__ import annotations

from typing import Callable

import torch

from training import recap


def check_trains_and_samples(model, make_batch: Callable[[int], dict], steps: int = 6,
                             chunk_shape: tuple[int, ...] = (4, 6, 3)) -> None:
    model.cfg.indicator_dropout = 0.0

    def loss_with(indicator: int) -> float:
        torch.manual_seed(1)
        return model(make_batch(indicator)).item()

    model.eval()
    assert loss_with(recap.INDICATOR_POSITIVE) != loss_with(recap.INDICATOR_NEGATIVE)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(2)  # the same flow-matching noise and time each step: the loss must fall
        loss = model(make_batch(recap.INDICATOR_POSITIVE))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    chunk = model.predict_chunk(make_batch(recap.INDICATOR_POSITIVE))  # sampling (LeRobot's KV-cache path)
    assert chunk.shape == chunk_shape and torch.isfinite(chunk).all()
