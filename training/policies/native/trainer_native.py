"""Supervised training of the native policy on the ticks a method selects."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from training import distributed

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
               progress: bool = True) -> tuple[NativeFlowPolicy, FeatureStats, FeatureStats, list[float]]:
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
    losses = []
    n = len(data.index)
    model.train()
    for _ in tqdm(range(cfg.steps), desc="policy", disable=not (progress and acc.is_main_process), leave=False):
        pick = rng.integers(0, n, size=min(cfg.batch_size, n))
        idx = data.index[pick]
        batch = policy_batch(table, idx, cfg, sstats, astats, device)
        batch["indicator"] = torch.from_numpy(data.indicator[pick]).to(device)
        if data.weight is not None:
            batch["weight"] = torch.from_numpy(data.weight[pick]).to(device)
        loss = model(batch, gen)  # forward = loss, so DDP all-reduces the gradients
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model = acc.unwrap_model(model)
    model.eval()
    return model, sstats, astats, losses
