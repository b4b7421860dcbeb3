"""Supervised training of any registered policy type on the ticks a method selects: raw ticks from
the StepTable -> the type's processor -> the type's loss, through the shared loop (training/fit.py).
Seeded initialisation, so each round refits from the same base weights; resumable from checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.stats import FeatureStats
from training.fit import fit, seed_init
from training.methods import PolicyData
from training.policies import registry
from training.policies.policy import Policy
from training.steps import StepTable


def policy_batch(policy: Policy, table: StepTable, data: PolicyData, pick: np.ndarray, device: torch.device) -> dict:
    """The selected ticks `data.index[pick]` through the type's processor, with their indicators and
    (AWR) weights, which every type's loss applies per sample. A policy that reads a history gets each
    tick's last n_obs_steps ticks (states (B, n, S), frames (B, n, H, W, C))."""
    idx = data.index[pick]
    chunks, pad = table.action_chunks(idx, policy.train_horizon, policy.action_start)
    n = policy.n_obs_steps
    if n == 1:
        states, frames = table.state[idx], table.frames(idx)
    else:
        hist = table.history(idx, n)
        states = table.state[hist]
        frames = {c: f.reshape(len(idx), n, *f.shape[1:]) for c, f in table.frames(hist.reshape(-1)).items()}
    batch = policy.training_batch(states, frames, table.instructions_of(idx), chunks, pad, device)
    batch["indicator"] = torch.from_numpy(data.indicator[pick]).to(device)
    if data.weight is not None:
        batch["weight"] = torch.from_numpy(data.weight[pick]).to(device)
    return batch


def fit_policy(table: StepTable, data: PolicyData, cfg, *, device: str | torch.device = "cpu",
               progress: bool = True, checkpoint_dir: Path | None = None, checkpoint_every: int = 500,
               stop_after: int | None = None, on_step: Callable[[int, int], None] | None = None,
               ) -> tuple[Policy, list[float]]:
    """`cfg`: any registered type's config. `checkpoint_dir`, `checkpoint_every`, `stop_after`,
    `on_step`: as training.fit.fit (raising from `on_step` stops the fit)."""
    if len(data.index) == 0:
        raise ValueError("the method selected no ticks to train on")
    stats = {"observation.state": FeatureStats.of(table.state), "action": FeatureStats.of(table.action)}
    seed_init(cfg.seed)
    policy = Policy(registry.type_of(cfg), cfg, stats)
    n = len(data.index)

    def next_batch(rng: np.random.Generator, device: torch.device) -> dict:
        return policy_batch(policy, table, data, rng.integers(0, n, size=min(cfg.batch_size, n)), device)

    policy.model, losses = fit(policy.model, cfg, next_batch, desc="policy", device=device, progress=progress,
                               checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                               stop_after=stop_after, on_step=on_step, generator=True)
    return policy.to(next(policy.model.parameters()).device).eval(), losses
