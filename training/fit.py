"""The one training loop every model of a run goes through (the value function and every policy
type): AdamW on the trainable parameters, a cosine schedule over `cfg.steps`, seeded per-rank batch
sampling, DDP through accelerate, step checkpoints to resume from, a progress bar, and `on_step`
for progress reporting and cancellation.

Invariants: the model is built by the caller right after `seed_init(cfg.seed)`, so every rank and
every round starts from the same weights; batches come from `next_batch(rng, device)` with the
rank's own numpy generator, which the checkpoints save with everything else, so a resumed fit
continues exactly where the stopped one was."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from tqdm import tqdm

from training import distributed
from training.checkpoint import load_checkpoint, maybe_checkpoint, optimise_step


class Schedule(Protocol):
    """The fields of a model config the loop reads (ValueConfig and every policy config have them)."""

    lr: float
    weight_decay: float
    steps: int
    seed: int


def scaled_steps(steps: int, epochs: float, ticks: int, batch_size: int) -> int:
    """The training budget rule, the same for the value function and every method's policy:
    max(steps, ceil(epochs x ticks / batch_size)); epochs 0 keeps the fixed `steps`. A dataset that
    grows each round gets proportionally more steps instead of fewer passes over it."""
    if epochs <= 0 or ticks <= 0:
        return int(steps)
    return max(int(steps), int(np.ceil(epochs * ticks / max(1, batch_size))))


def seed_init(seed: int) -> None:
    """Before building a model: the same initial weights on every rank and every round."""
    torch.manual_seed(seed)


def fit(model: torch.nn.Module, cfg: Schedule, next_batch: Callable[[np.random.Generator, torch.device], dict], *,
        desc: str, device: str | torch.device = "cpu", progress: bool = True, checkpoint_dir: Path | None = None,
        checkpoint_every: int = 500, stop_after: int | None = None, on_step: Callable[[int, int], None] | None = None,
        generator: bool = False) -> tuple[torch.nn.Module, list[float]]:
    """Train `model` (forward = the loss of a batch) for `cfg.steps` steps; returns the model (on the
    run's device, in eval mode) and the loss of every step.

    `next_batch(rng, device)`: a training batch, drawn with `rng`. `generator`: the model's forward
    also takes a seeded torch.Generator (a policy's noise, time and indicator dropout), saved with
    the checkpoints. `checkpoint_dir`: save every `checkpoint_every` steps and resume from there.
    `stop_after`: return after that many steps (with a checkpoint), as a crash would, for tests.
    `on_step(step, total)`: called before every step (raising from it stops the fit: cancellation)."""
    acc = distributed.accelerator(str(device))
    device = acc.device
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    wrapped, opt = acc.prepare(model, opt)
    rank_seed = cfg.seed + 1000 * acc.process_index  # each rank its own batches
    rng = np.random.default_rng(rank_seed)
    gen = torch.Generator(device=device).manual_seed(rank_seed) if generator else None
    start, losses = (load_checkpoint(checkpoint_dir, model=model, opt=opt, sched=sched, rng=rng, gen=gen)
                     if checkpoint_dir else (0, []))
    wrapped.train()
    for step in tqdm(range(start, cfg.steps), desc=desc, disable=not (progress and acc.is_main_process), leave=False,
                     initial=start, total=cfg.steps):
        if on_step is not None:
            on_step(step, cfg.steps)
        batch = next_batch(rng, device)
        # forward = loss, so DDP all-reduces the gradients
        loss = wrapped(batch, gen) if generator else wrapped(batch)
        losses.append(optimise_step(acc, wrapped, opt, sched, loss))
        done = step + 1
        maybe_checkpoint(checkpoint_dir, acc, done, checkpoint_every, stop_after, model=wrapped, opt=opt, sched=sched,
                         rng=rng, gen=gen, losses=losses)
        if stop_after is not None and done >= stop_after:
            break
    model = acc.unwrap_model(wrapped)
    model.eval()
    return model, losses
