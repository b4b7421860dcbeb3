"""Advantage labels of one training run: per-tick N-step advantages, per-task thresholds and the
indicators I_t. They belong to the run (saved with it, exportable as a LeRobot column) and never
rewrite an episode."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, get_args

import numpy as np
from safetensors.numpy import load_file, save_file

from data.schema import ActionSource, Outcome
from training import recap
from training.recap_config import PositiveCap
from training.steps import StepTable


@dataclass
class AdvantageLabels:
    episode_ids: list[str]
    lengths: np.ndarray
    advantages: np.ndarray  # (N,) normalised units; NaN for episodes of unknown outcome
    indicators: np.ndarray  # (N,) bool
    thresholds: dict[str, float]
    positive_fraction: float
    horizon: int
    values: np.ndarray | None = None  # (N,) V(s_t) the advantages were computed from (the review page draws it)
    fractions: dict[str, float] | None = None  # per task, the share its threshold was set for (None: positive_fraction)

    def per_episode(self, name: str = "indicators") -> dict[str, np.ndarray]:
        arr = getattr(self, name)
        ends = np.cumsum(self.lengths)
        return {eid: arr[e - n:e] for eid, n, e in zip(self.episode_ids, self.lengths, ends)}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"advantages": self.advantages.astype(np.float32), "indicators": self.indicators.astype(np.uint8),
                  "lengths": self.lengths.astype(np.int64)}
        if self.values is not None:
            arrays["values"] = np.asarray(self.values, np.float32)
        save_file(arrays, str(directory / "advantages.safetensors"))
        (directory / "advantages.json").write_text(json.dumps({
            "episode_ids": self.episode_ids, "thresholds": self.thresholds,
            "positive_fraction": self.positive_fraction, "horizon": self.horizon, "fractions": self.fractions}, indent=1))

    @classmethod
    def load(cls, directory: Path) -> "AdvantageLabels":
        arrays = load_file(str(directory / "advantages.safetensors"))
        meta = json.loads((directory / "advantages.json").read_text())
        return cls(meta["episode_ids"], arrays["lengths"], arrays["advantages"], arrays["indicators"].astype(bool),
                   meta["thresholds"], meta["positive_fraction"], meta["horizon"], arrays.get("values"),
                   meta.get("fractions"))


def label_advantages(table: StepTable, values: np.ndarray, *, max_len: Mapping[str, int], horizon: int,
                     positive_fraction: float, c_fail: float | None = None,
                     cap: PositiveCap = "none") -> AdvantageLabels:
    """A_t for every tick of known outcome, eps_l per task for the target positive share, then
    I_t = 1[A_t > eps_l], corrections forced positive. Unknown-outcome episodes get I_t = 0 only
    at their correction-free ticks (they carry no return to judge by).

    eps_l is the quantile over the task's *policy* ticks (the autonomous behaviour being judged):
    demonstrations and corrections are then labelled against the same bar, and corrections forced
    positive after, so `positive_fraction` is the share among the policy's own ticks. A task without
    policy ticks (demonstrations only) takes its quantile over all its ticks of known outcome.

    `cap` (recap.positive_fraction_cap): "success_share", a task's share is at most the share of the ticks
    its threshold is taken over (the policy's, or all of a demonstrations-only task's) that lie in successful
    episodes; "success_rate", at most the success rate of the episodes those ticks belong to; either only
    when one of them succeeded (else the target stands, the advantages being all there is to rank by).
    "none": the target."""
    if cap not in get_args(PositiveCap):
        raise ValueError(f"cap must be one of {', '.join(get_args(PositiveCap))}, got {cap!r}")
    adv = np.full(len(table), np.nan, np.float32)
    for e in range(table.num_episodes):
        if table.outcomes[e] == Outcome.UNKNOWN:
            continue
        sl = table.episode_slice(e)
        adv[sl] = recap.n_step_advantages(values[sl], int(table.lengths[e]), table.outcomes[e], horizon,
                                          max_len[table.task_ids[e]], c_fail)
    task_of_tick = np.asarray(table.task_ids, dtype=object)[table.episode_index]
    known, policy = ~np.isnan(adv), table.source == ActionSource.POLICY
    success = (np.asarray(table.outcomes, dtype=object) == Outcome.SUCCESS)[table.episode_index]
    by_task, fractions = {}, {}
    for t in sorted(set(table.task_ids)):
        of_task = (task_of_tick == t) & known
        ranked = of_task & policy if (of_task & policy).any() else of_task
        by_task[t] = adv[ranked]
        if not ranked.any():  # every episode of the task of unknown outcome: nothing to rank, nothing to cap by
            share = 0.0
        elif cap == "success_rate":
            share = float(success[ranked][np.unique(table.episode_index[ranked], return_index=True)[1]].mean())
        else:
            share = float(success[ranked].mean())
        fractions[t] = min(positive_fraction, share) if cap != "none" and share > 0 else positive_fraction
    eps = recap.thresholds(by_task, fractions)
    eps_tick = np.array([eps[t] for t in task_of_tick], np.float32) if len(table) else np.zeros(0, np.float32)
    with np.errstate(invalid="ignore"):
        ind = recap.indicators(np.nan_to_num(adv, nan=-np.inf), eps_tick, table.source)
    return AdvantageLabels(list(table.episode_ids), table.lengths.copy(), adv, ind, eps, positive_fraction, horizon,
                           np.asarray(values, np.float32).copy(), fractions)
