"""Supervised training of the native policy on the ticks a method selects."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from training import distributed
from training.checkpoint import load_checkpoint, maybe_checkpoint, optimise_step

from data.stats import FeatureStats
from training.methods import PolicyData
from training.policies.native.configuration_native import NativePolicyConfig
from training.policies.native.modeling_native import NativeFlowPolicy
from training.steps import StepTable
from training.value.trainer_value import make_batch


def policy_batch(table: StepTable, idx: np.ndarray, cfg: NativePolicyConfig, sstats: FeatureStats,
                 astats: FeatureStats, device: torch.device) -> dict:
    batch = make_batch(table, idx, sstats, device)
    chunk, pad = table.action_chunks(idx, cfg.chunk)
    batch["action"] = torch.from_numpy(astats.normalize(chunk)).float().to(device)
    batch["action_is_pad"] = torch.from_numpy(pad).to(device)
    return batch


def fit_policy(table: StepTable, data: PolicyData, cfg: NativePolicyConfig, *, device: str | torch.device = "cpu",
               progress: bool = True, checkpoint_dir: Path | None = None, checkpoint_every: int = 500,
               stop_after: int | None = None, on_step: Callable[[int, int], None] | None = None,
               ) -> tuple[NativeFlowPolicy, FeatureStats, FeatureStats, list[float]]:
    """`checkpoint_dir`: save every `checkpoint_every` steps and resume from there. `stop_after`:
    return after that many steps (with a checkpoint), as a crash would, for tests. `on_step(done,
    total)`: called after every step (progress reports; raising from it stops the fit)."""
    """Train from a seeded initialisation (each round refits from the same base weights)."""
    if len(data.index) == 0:
        raise ValueError("the method selected no ticks to train on")
    device = torch.device(device)
    sstats, astats = FeatureStats.of(table.state), FeatureStats.of(table.action)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and every round
    acc = distributed.accelerator(str(device))
    device = acc.device
    model = NativeFlowPolicy(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    model, opt = acc.prepare(model, opt)
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
        idx = data.index[pick]
        batch = policy_batch(table, idx, cfg, sstats, astats, device)
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
    model = acc.unwrap_model(model)
    model.eval()
    return model, sstats, astats, losses
