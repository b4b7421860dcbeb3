"""Human-effort figures: how much a teleoperator had to do for what the robots achieved.

One place for the arithmetic that the catalog's dashboard, the demo's round table and the learning
benchmark all report, so that "takeovers per robot-hour" means the same thing everywhere.

- a **takeover** is one contiguous stretch of CORRECTION ticks (a hand-back and a new takeover are two);
- **return on human effort** (ROHE) follows Fleet-DAgger (Hoque et al., 2022): task reward per unit
  of human time, ``successes / (1 + human minutes)``; the ``1 +`` keeps a fleet that needed no human
  finite and still ranks more successes higher;
- **successes gained per human minute** compares with a baseline success rate over the same number of
  episodes (for a round: the previous round's policy; in the benchmark: behaviour cloning);
- **mistake to takeover** is the time from the tick where the policy went wrong to the takeover that
  followed it, *where known*: a teleoperator station that knows when its takeover condition first
  held records it with the episode (the simulated corrector does), or a reviewer marks the mistake on
  the review page; takeovers with no known mistake are left out of the mean and median, and
  `takeovers_mistake_known` says how many were counted.
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


def takeover_after(sources: np.ndarray, tick: int) -> int | None:
    """The first tick at or after `tick` where a takeover starts (a CORRECTION tick not preceded by
    one), or None when no takeover follows."""
    corr = np.asarray(sources) == int(ActionSource.CORRECTION)
    starts = np.flatnonzero(corr & ~np.concatenate([[False], corr[:-1]]))
    later = starts[starts >= tick]
    return int(later[0]) if later.size else None


@dataclass(frozen=True)
class EpisodeEffort:
    """What one episode cost a human: its ticks, the share a human drove and whether it succeeded;
    `mistake_to_takeover_s`: for each takeover whose mistake is known, the seconds between them."""

    ticks: int
    correction_ticks: int
    takeovers: int
    fps: float
    success: bool
    mistake_to_takeover_s: tuple[float, ...] = ()


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
    takeovers_mistake_known: int = 0
    mistake_to_takeover_s_mean: float | None = None  # None: no takeover's mistake is known
    mistake_to_takeover_s_median: float | None = None

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
    delays = np.array([d for e in eps for d in e.mistake_to_takeover_s if np.isfinite(d) and d >= 0], np.float64)
    return EffortFigures(
        episodes=len(eps), successes=successes, robot_hours=hours, human_minutes=human_s / 60.0,
        correction_ticks=corr, takeovers=takeovers,
        takeovers_per_robot_hour=takeovers / hours if hours > 0 else 0.0,
        correction_tick_share=corr / ticks if ticks else 0.0,
        return_on_human_effort=successes / (1.0 + human_s / 60.0),
        takeovers_mistake_known=int(delays.size),
        mistake_to_takeover_s_mean=float(delays.mean()) if delays.size else None,
        mistake_to_takeover_s_median=float(np.median(delays)) if delays.size else None)


def successes_gained_per_human_minute(figures: EffortFigures, baseline_success_rate: float) -> float | None:
    """Successes above what the baseline would have had over the same episodes, per minute of correction;
    None when no human time was spent (the ratio is undefined, not infinite)."""
    if figures.human_minutes <= 0:
        return None
    return (figures.successes - baseline_success_rate * figures.episodes) / figures.human_minutes
