"""Human-effort figures: how much a teleoperator had to do for what the robots achieved.

One place for the arithmetic that the catalog's dashboard, the demo's round table and the learning
benchmark all report, so that "takeovers per robot-hour" means the same thing everywhere.

- a **takeover** is one contiguous stretch of CORRECTION ticks (a hand-back and a new takeover are two);
- **return on human effort** (ROHE) follows Fleet-DAgger (Hoque et al., 2022): task reward per unit
  of human time, ``successes / (1 + human minutes)``; the ``1 +`` keeps a fleet that needed no human
  finite and still ranks more successes higher;
- **successes gained per human minute** compares with a baseline success rate over the same number of
  episodes (for a round: the previous round's policy; in the benchmark: behaviour cloning).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from data.schema import ActionSource


def count_takeovers(sources: np.ndarray) -> int:
    """Contiguous runs of CORRECTION in a per-tick action-source array."""
    corr = np.asarray(sources) == int(ActionSource.CORRECTION)
    if corr.size == 0:
        return 0
    return int(corr[0]) + int(np.count_nonzero(corr[1:] & ~corr[:-1]))


@dataclass(frozen=True)
class EpisodeEffort:
    """What one episode cost a human: its ticks, the share a human drove and whether it succeeded."""

    ticks: int
    correction_ticks: int
    takeovers: int
    fps: float
    success: bool


@dataclass(frozen=True)
class EffortFigures:
    episodes: int
    successes: int
    robot_hours: float
    human_minutes: float
    correction_ticks: int
    takeovers: int
    takeovers_per_robot_hour: float
    correction_tick_share: float
    return_on_human_effort: float

    def as_dict(self) -> dict:
        return asdict(self)


def effort_figures(episodes: Iterable[EpisodeEffort]) -> EffortFigures:
    eps = list(episodes)
    ticks = sum(e.ticks for e in eps)
    robot_s = sum(e.ticks / e.fps for e in eps if e.fps > 0)
    human_s = sum(e.correction_ticks / e.fps for e in eps if e.fps > 0)
    successes = sum(bool(e.success) for e in eps)
    takeovers = sum(e.takeovers for e in eps)
    corr = sum(e.correction_ticks for e in eps)
    hours = robot_s / 3600.0
    return EffortFigures(
        episodes=len(eps), successes=successes, robot_hours=hours, human_minutes=human_s / 60.0,
        correction_ticks=corr, takeovers=takeovers,
        takeovers_per_robot_hour=takeovers / hours if hours > 0 else 0.0,
        correction_tick_share=corr / ticks if ticks else 0.0,
        return_on_human_effort=successes / (1.0 + human_s / 60.0))


def successes_gained_per_human_minute(figures: EffortFigures, baseline_success_rate: float) -> float | None:
    """Successes above what the baseline would have had over the same episodes, per minute of correction;
    None when no human time was spent (the ratio is undefined, not infinite)."""
    if figures.human_minutes <= 0:
        return None
    return (figures.successes - baseline_success_rate * figures.episodes) / figures.human_minutes
