"""Outcome metrics as the paper reports them: success rate, throughput (successes per hour of robot
time: steps x control period + a reset time per episode), mean time-to-success of successful
episodes, and correction rate (share of ticks driven by a human)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from training.sim.arm import CONTROL_PERIOD_S, MetaWorldArm
from training.sim.collect import EpisodeResult, PolicyActor, run_episode

RESET_S = 2.0  # small enough that speed counts (with 10 s, throughput just ranks like success)


@dataclass
class Metrics:
    episodes: int
    success_rate: float
    throughput_per_h: float
    time_to_success_s: float
    correction_rate: float

    def to_dict(self) -> dict:
        return asdict(self)


def metrics(results: Sequence[EpisodeResult], reset_s: float = RESET_S) -> Metrics:
    n = len(results)
    if n == 0:
        return Metrics(0, float("nan"), float("nan"), float("nan"), float("nan"))
    successes = [r for r in results if r.success]
    robot_s = sum(r.steps * CONTROL_PERIOD_S + reset_s for r in results)
    ticks = sum(r.steps for r in results)
    return Metrics(
        episodes=n,
        success_rate=len(successes) / n,
        throughput_per_h=len(successes) / robot_s * 3600.0,
        time_to_success_s=float(np.mean([r.steps * CONTROL_PERIOD_S for r in successes])) if successes else float("nan"),
        correction_rate=sum(r.correction_ticks for r in results) / max(1, ticks),
    )


def evaluate(actor_for_task, arms: dict[str, MetaWorldArm], seeds: Iterable[int]) -> dict[str, list[EpisodeResult]]:
    """Autonomous episodes (no corrections, nothing recorded) on held-out initial conditions;
    the same seeds for every method, so comparisons are paired."""
    seeds = list(seeds)
    out = {}
    for task, arm in arms.items():
        actor: PolicyActor = actor_for_task(task)
        out[task] = [run_episode(arm, s, store=None, actor=actor) for s in seeds]
    return out
