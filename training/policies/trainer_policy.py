"""Supervised training of any registered policy type on the ticks a method selects: raw ticks from
the StepTable -> the type's processor -> the type's loss. Seeded initialisation, so each round
refits from the same base weights; resumable from checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from data.stats import FeatureStats
from training import distributed
from training.checkpoint import load_checkpoint, maybe_checkpoint, optimise_step
from training.methods import PolicyData
from training.policies import registry
from training.policies.policy import Policy
from training.steps import StepTable


def policy_batch(policy: Policy, table: StepTable, idx: np.ndarray, device: torch.device) -> dict:
    chunks, pad = table.action_chunks(idx, policy.chunk)
    return policy.training_batch(table.state[idx], table.frames(idx), table.instructions_of(idx), chunks, pad, device)


def fit_policy(table: StepTable, data: PolicyData, cfg, *, device: str | torch.device = "cpu",
               progress: bool = True, checkpoint_dir: Path | None = None, checkpoint_every: int = 500,
               stop_after: int | None = None, on_step: Callable[[int, int], None] | None = None,
               ) -> tuple[Policy, list[float]]:
    """`cfg`: any registered type's config. `checkpoint_dir`: save every `checkpoint_every` steps and
    resume from there. `stop_after`: return after that many steps (with a checkpoint), as a crash
    would, for tests. `on_step(done, total)`: called after every step (raising from it stops the fit)."""
    if len(data.index) == 0:
        raise ValueError("the method selected no ticks to train on")
    stats = {"observation.state": FeatureStats.of(table.state), "action": FeatureStats.of(table.action)}
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and every round
    acc = distributed.accelerator(str(device))
    device = acc.device
    policy = Policy(registry.type_of(cfg), cfg, stats).to(device)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    model, opt = acc.prepare(policy.model, opt)
    rng = np.random.default_rng(cfg.seed + 1000 * acc.process_index)  # each rank its own batches
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1000 * acc.process_index)
    n = len(data.index)
    start, losses = (load_checkpoint(checkpoint_dir, model=acc.unwrap_model(model), opt=opt, sched=sched, rng=rng, gen=gen)
                     if checkpoint_dir else (0, []))
    model.train()
    for step in tqdm(range(start, cfg.steps), desc="policy", disable=not (progress and acc.is_main_process), leave=False,
                     initial=start, total=cfg.steps):
        if on_step is not None:
            on_step(step, cfg.steps)
        pick = rng.integers(0, n, size=min(cfg.batch_size, n))
        batch = policy_batch(policy, table, data.index[pick], device)
        batch["indicator"] = torch.from_numpy(data.indicator[pick]).to(device)
        if data.weight is not None:
            batch["weight"] = torch.from_numpy(data.weight[pick]).to(device)
        # forward = loss, so DDP all-reduces the gradients
        losses.append(optimise_step(acc, model, opt, sched, model(batch, gen)))
        done = step + 1
        maybe_checkpoint(checkpoint_dir, acc, done, checkpoint_every, stop_after, model=model, opt=opt, sched=sched,
                         rng=rng, gen=gen, losses=losses)
        if stop_after is not None and done >= stop_after:
            break
    policy.model = acc.unwrap_model(model)
    return policy.eval(), losses
