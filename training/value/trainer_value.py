"""Fit V on all data of a selection (demos, autonomous successes and failures, corrections) by
cross-entropy against two-hot normalised Monte-Carlo returns; predict V for every tick. The chunk
critic (ValueConfig.chunk > 0) is fitted the same way, on the same targets, with each tick's executed
action chunk (the recorded actions from the tick on, the episode's last one repeated past its end)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from data.schema import Outcome
from data.stats import FeatureStats
from training import recap
from training.fit import fit, seed_init
from training.policies.native.processor_native import NativeProcessor
from training.steps import StepTable
from training.value.configuration_value import ValueConfig
from training.value.modeling_value import ValueFunction, build_value_function

log = logging.getLogger(__name__)


def task_max_lengths(table: StepTable, override: Mapping[str, int] | None = None) -> dict[str, int]:
    """L_l per task: given (the task's time limit), else the longest episode of the task seen."""
    out: dict[str, int] = {}
    for task, n in zip(table.task_ids, table.lengths):
        out[task] = max(out.get(task, 0), int(n))
    out.update(override or {})
    return out


def normalised_return_targets(table: StepTable, max_len: Mapping[str, int], c_fail: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per tick R_t / Z, and a mask of ticks whose episode has a known outcome (others excluded)."""
    ret = np.zeros(len(table), np.float32)
    known = np.zeros(len(table), bool)
    for e in range(table.num_episodes):
        if table.outcomes[e] == Outcome.UNKNOWN:
            continue
        sl = table.episode_slice(e)
        ret[sl] = recap.normalised_returns(int(table.lengths[e]), table.outcomes[e], max_len[table.task_ids[e]], c_fail)
        known[sl] = True
    return ret, known


def episode_folds(table: StepTable, folds: int, seed: int) -> np.ndarray:
    """Fold of every episode, stratified by (task, outcome) so each member sees every kind of
    episode; deterministic in (episodes, seed) so a resumed run labels with the same split."""
    out = np.zeros(table.num_episodes, np.int64)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for e in range(table.num_episodes):
        groups.setdefault((table.task_ids[e], str(table.outcomes[e])), []).append(e)
    offset = 0
    for key in sorted(groups):
        members = np.asarray(groups[key])[rng.permutation(len(groups[key]))]
        out[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # so small groups do not all start in fold 0
    return out


def held_out_members(model, table: StepTable, seed: int) -> np.ndarray | None:
    """(members, ticks) bool: True where the member never trained on the tick's episode, when `model`
    is a cross-fitted ensemble (ValueConfig.num_folds >= 2), else None. Member m holds out fold m % K
    of split m // K; split s shuffles with seed + 7919 s (split 0 with `seed`), deterministic in
    (episodes, seed) so a resumed run labels with the same split."""
    cfg = getattr(model, "cfg", None)
    members = len(getattr(model, "members", []))
    k = cfg.num_folds if isinstance(cfg, ValueConfig) else 0
    if k < 2 or members < 2:
        return None
    out = np.zeros((members, len(table)), bool)
    splits: dict[int, np.ndarray] = {}
    for m in range(members):
        s = m // k
        if s not in splits:
            splits[s] = episode_folds(table, k, seed + 7919 * s)[table.episode_index]
        out[m] = splits[s] == m % k
    return out


def elapsed_fraction(table: StepTable, max_len: Mapping[str, int]) -> np.ndarray:
    """Per tick t / L_task in [0, 1]: the value function's time input."""
    limit = np.array([max_len[t] for t in table.task_ids], np.float32)[table.episode_index]
    return np.clip(table.tick / np.maximum(limit, 1.0), 0.0, 1.0).astype(np.float32)


def make_batch(table: StepTable, idx: np.ndarray, state_stats: FeatureStats, device: torch.device,
               elapsed: np.ndarray | None = None, action_stats: FeatureStats | None = None, chunk: int = 0) -> dict:
    """V's inputs: the native processor's (V reads observations as the native policy does), and the
    elapsed fraction of the time limit (`elapsed`, per tick of the table) for a time-aware V; the chunk
    critic's also the `chunk` actions executed from each tick, normalised with `action_stats`."""
    proc = NativeProcessor({"observation.state": state_stats}, table.cameras)
    batch = proc.observations(table.state[idx], table.frames(idx), table.instructions_of(idx), device)
    if elapsed is not None:
        batch["elapsed"] = torch.from_numpy(elapsed[idx]).to(device)
    if chunk:
        actions, _ = table.action_chunks(idx, chunk)
        batch["chunk"] = torch.from_numpy(action_stats.normalize(actions)).float().to(device)
    return batch


def fit_value(table: StepTable, cfg: ValueConfig, *, max_len: Mapping[str, int], c_fail: float | None = None,
              device: str | torch.device = "cpu", progress: bool = True, checkpoint_dir: Path | None = None,
              checkpoint_every: int = 500, on_step: Callable[[int, int], None] | None = None,
              ) -> tuple[ValueFunction, FeatureStats, list[float]]:
    """Train from scratch (every round refits from the same initial weights: seeded init) through
    the shared loop (training/fit.py)."""
    returns, known = normalised_return_targets(table, max_len, c_fail)
    excluded = int((~known).sum())
    if excluded:
        log.info("value fit: %d ticks of episodes with unknown outcome excluded", excluded)
    usable = np.flatnonzero(known)
    if len(usable) == 0:
        raise ValueError("no episode with a known outcome in the selection")
    sstats = FeatureStats.of(table.state)
    astats = FeatureStats.of(table.action) if cfg.chunk else None  # the policy's action stats (fit_policy's)
    seed_init(cfg.seed)
    model = build_value_function(cfg)
    held_out = held_out_members(model, table, cfg.seed)
    elapsed = elapsed_fraction(table, max_len) if cfg.time_input else None

    def next_batch(rng: np.random.Generator, device: torch.device) -> dict:
        idx = rng.choice(usable, size=min(cfg.batch_size, len(usable)), replace=len(usable) < cfg.batch_size)
        batch = make_batch(table, idx, sstats, device, elapsed, astats, cfg.chunk)
        if elapsed is not None and cfg.time_dropout > 0:
            hide = torch.from_numpy(rng.random(len(idx)) < cfg.time_dropout).to(device)
            batch["elapsed"] = torch.where(hide, torch.full_like(batch["elapsed"], float("nan")), batch["elapsed"])
        batch["return"] = torch.from_numpy(returns[idx]).to(device)
        if held_out is not None:
            batch["member_mask"] = torch.from_numpy(~held_out[:, idx]).float().to(device)
        return batch

    model, losses = fit(model, cfg, next_batch, desc="value", device=device, progress=progress,
                        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, on_step=on_step)
    return model, sstats, losses


@torch.no_grad()
def predict_values(model: ValueFunction, table: StepTable, state_stats: FeatureStats, *,
                   max_len: Mapping[str, int] | None = None, device: str | torch.device = "cpu",
                   batch_size: int = 2048, held_out: np.ndarray | None = None,
                   action_stats: FeatureStats | None = None) -> np.ndarray:
    """V for every tick: the ensemble mean, or with `held_out` ((members, ticks) of the training table
    of a cross-fitted V, `held_out_members`) the mean of the members that did not train on the tick's
    episode (the out-of-fold mean). `max_len`: the tasks' time limits, needed by a time-aware V.
    A chunk critic scores each tick's executed chunk (`action_stats`: the actions' normalisation)."""
    time_input = bool(getattr(getattr(model, "cfg", None), "time_input", False))
    if time_input and max_len is None:
        raise ValueError("this value function reads the elapsed time: give the tasks' time limits (max_len)")
    elapsed = elapsed_fraction(table, max_len) if time_input else None
    chunk = int(getattr(getattr(model, "cfg", None), "chunk", 0) or 0)
    if chunk and action_stats is None:
        action_stats = FeatureStats.of(table.action)
    model.eval()
    out = np.empty(len(table), np.float32)
    for start in range(0, len(table), batch_size):
        idx = np.arange(start, min(start + batch_size, len(table)))
        batch = make_batch(table, idx, state_stats, torch.device(device), elapsed, action_stats, chunk)
        if held_out is None:
            out[idx] = model.value(batch).cpu().numpy()
        else:
            per_member = model.member_values(batch).cpu().numpy()
            mask = held_out[:, idx]
            out[idx] = (per_member * mask).sum(0) / np.maximum(mask.sum(0), 1)
    return out
