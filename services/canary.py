"""The canary gate: a version deployed to one robot is compared, after N episodes, with the version
the rest of the fleet runs over the same window, and widened to the fleet or rolled back by a stated
rule, automatically and audited.

The rule (a one-sided Bayesian comparison, fixed sample size):
- Episodes counted: committed episodes with policy ticks that started after the canary deployment;
  the canary's are the canary robot's with the canary version, the fleet's are the other robots'
  with the baseline version (what the rest of the fleet ran when the gate opened). An episode whose
  outcome is still unknown waits for its label.
- An episode is a success when its outcome is success **and** the arm held for want of an action
  (HOLD ticks: missed deadlines, an inference outage) for less than HOLD_FAILS (10 %) of its ticks:
  such holds count as failures, on both sides, so a version that is slow or unreachable cannot pass
  on the episodes it did finish.
- Success probability p ~ Beta(1 + successes, 1 + failures) per side (uniform prior);
  takeover rate λ (takeovers per robot-hour, data/effort.py) ~ Gamma(0.5 + takeovers, robot-hours)
  per side (Jeffreys prior).
- Once the canary has `min_episodes` counted episodes and the fleet at least as many:
  P_success = P(p_canary < p_fleet) and P_takeover = P(λ_canary > λ_fleet), both exact.
  **Rolled back** if max(P_success, P_takeover) >= threshold (default 0.8), or if the canary has not
  succeeded once (however badly the fleet does: no evidence it can do the task); **widened** otherwise.
  Before that the gate is open and says what it waits for.

How a decision is made safely: `GateKeeper.look` runs after every episode registration and label in
the API, and every `CHECK_S` in a thread of every API process (so a decision missed by a crash is made
by the next look). The decision's transaction first takes the serving sequence lock
(services/control/serving_sequence.py), then re-reads the gate: two looks at once serialise there, the
second finds it decided. A deployment to the canary robot (or its group, or the fleet) made before the
decision supersedes the gate: it decides nothing then. The decision, its deployment (widen or
rollback) and an audit row commit together; the serving state is published after.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from data.catalog.catalog import EpisodeRecord
from data.effort import EpisodeEffort, effort_figures
from services.control import serving_sequence
from services.control.models import AuditEntry, CanaryGate, Deployment, Robot

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.8
# An episode whose arm held (no fresh action by the deadline) for at least this share of its ticks is a
# failure for the gate: an outage or a version too slow to serve; the few hold ticks a hand-back costs are not.
HOLD_FAILS = 0.1
CHECK_S = 2.0
ACTOR = "canary-gate"
RULE = ("one-sided Bayesian: roll back if P(p_canary < p_fleet) or P(takeovers/h canary > fleet) >= threshold; "
        "p ~ Beta(1+s, 1+f), rate ~ Gamma(0.5+k, robot-hours); holding >= 10% of ticks makes an episode a failure; "
        "no success: rolled back")


@dataclass(frozen=True)
class GateEpisode:
    """One episode as the gate counts it."""

    success: bool  # outcome success and no HOLD tick
    takeovers: int
    ticks: int
    correction_ticks: int
    fps: float
    held: bool


def gate_episode(r: EpisodeRecord) -> GateEpisode | None:
    """None while the episode cannot be counted yet (outcome not labelled)."""
    if r.outcome == "unknown":
        return None
    held = r.num_hold_ticks >= HOLD_FAILS * r.num_ticks
    return GateEpisode(success=r.outcome == "success" and not held, takeovers=r.num_takeovers, ticks=r.num_ticks,
                       correction_ticks=r.num_correction_ticks, fps=r.fps, held=held)


def p_beta_below(s_a: int, f_a: int, s_b: int, f_b: int) -> float:
    """P(p_a < p_b) for p_a ~ Beta(1 + s_a, 1 + f_a), p_b ~ Beta(1 + s_b, 1 + f_b), exactly (the sum
    over the integer shape of b: Evan Miller's closed form)."""
    from scipy.special import betaln  # here: the API starts without scipy (~0.2 s of its import)

    a_a, b_a, a_b, b_b = 1 + s_a, 1 + f_a, 1 + s_b, 1 + f_b
    total = 0.0
    for i in range(a_b):
        total += math.exp(betaln(a_a + i, b_a + b_b) - math.log(b_b + i) - betaln(1 + i, b_b) - betaln(a_a, b_a))
    return min(1.0, max(0.0, total))


def p_rate_above(k_a: int, hours_a: float, k_b: int, hours_b: float) -> float:
    """P(λ_a > λ_b) for λ ~ Gamma(0.5 + k, rate = hours): with X ~ Gamma(shape, 1), λ_a > λ_b iff
    X_a / (X_a + X_b) > h_a / (h_a + h_b), and that fraction is Beta(0.5 + k_a, 0.5 + k_b)."""
    from scipy.special import betainc

    x = hours_a / (hours_a + hours_b)
    return float(1.0 - betainc(0.5 + k_a, 0.5 + k_b, x))


@dataclass(frozen=True)
class Verdict:
    decision: str  # wait | pass | fail
    reason: str
    figures: dict


def _side(eps: list[GateEpisode]) -> dict:
    f = effort_figures(EpisodeEffort(e.ticks, e.correction_ticks, e.takeovers, e.fps, e.success) for e in eps)
    return {"episodes": f.episodes, "successes": f.successes,
            "success_rate": f.successes / f.episodes if f.episodes else None,
            "held_episodes": sum(e.held for e in eps), "takeovers": f.takeovers, "robot_hours": f.robot_hours,
            "takeovers_per_robot_hour": f.takeovers_per_robot_hour}


def judge(canary: Iterable[GateEpisode], fleet: Iterable[GateEpisode], *, min_episodes: int,
          threshold: float = DEFAULT_THRESHOLD, unlabelled: int = 0) -> Verdict:
    """The rule on counted episodes (module docstring)."""
    canary, fleet = list(canary), list(fleet)
    figures = {"canary": _side(canary), "fleet": _side(fleet), "min_episodes": min_episodes, "threshold": threshold,
               "unlabelled": unlabelled, "rule": RULE}
    waits = []
    if len(canary) < min_episodes:
        waits.append(f"the canary has {len(canary)} of {min_episodes} episodes")
    if len(fleet) < min_episodes:
        waits.append(f"the rest of the fleet has {len(fleet)} of {min_episodes} episodes in the same window")
    if waits:
        more = f" ({unlabelled} await an outcome label)" if unlabelled else ""
        return Verdict("wait", "cannot decide yet: " + "; ".join(waits) + more, figures)
    c, b = figures["canary"], figures["fleet"]
    p_s = p_beta_below(c["successes"], c["episodes"] - c["successes"], b["successes"], b["episodes"] - b["successes"])
    p_t = p_rate_above(c["takeovers"], c["robot_hours"], b["takeovers"], b["robot_hours"])
    figures |= {"p_success_worse": p_s, "p_takeovers_worse": p_t}
    said = (f"success {c['successes']}/{c['episodes']} vs {b['successes']}/{b['episodes']} "
            f"(P worse {p_s:.2f}), takeovers/h {c['takeovers_per_robot_hour']:.1f} vs "
            f"{b['takeovers_per_robot_hour']:.1f} (P worse {p_t:.2f}), threshold {threshold:g}")
    if max(p_s, p_t) >= threshold:
        return Verdict("fail", "rolled back: " + said, figures)
    if c["successes"] == 0:  # nothing shows it can do the task, however bad the fleet is
        return Verdict("fail", "rolled back: no success in its episodes (a version is widened only once it has "
                               "succeeded); " + said, figures)
    return Verdict("pass", "widened: " + said, figures)


# -- the gate in the control plane ---------------------------------------------------------------

class GateError(ValueError):
    """A gate the registry refuses to open; the message says why."""


def open_gate(s: Session, canary: Deployment, *, min_episodes: int, threshold: float, baseline: str | None,
              created_by: str) -> CanaryGate:
    """Put a gate on a canary deployment just made in this transaction; `baseline`: what the rest of
    the fleet runs (services.registry decides)."""
    if canary.target_kind != "robot":
        raise GateError("a gate needs a canary on one robot (target_kind robot)")
    if not (isinstance(min_episodes, int) and 1 <= min_episodes <= 100_000):
        raise GateError(f"gate episodes: {min_episodes} is not in 1..100000")
    if not (math.isfinite(threshold) and 0.5 <= threshold < 1.0):
        raise GateError(f"gate threshold: {threshold} is not in [0.5, 1)")
    if baseline is None:
        raise GateError(f"no other robot runs a version to compare {canary.version_id} with; deploy to the fleet first")
    if baseline == canary.version_id:
        raise GateError(f"the rest of the fleet runs {baseline} already: nothing to compare")
    g = CanaryGate(deployment_id=canary.id, version_id=canary.version_id, robot_id=canary.target,
                   baseline_version=baseline, min_episodes=min_episodes, threshold=float(threshold),
                   started_at_ns=canary.created_at_ns, status="open",
                   reason=f"cannot decide yet: the canary has 0 of {min_episodes} episodes", figures={},
                   created_by=created_by)
    s.add(g)
    s.flush()
    return g


def gate_out(g: CanaryGate) -> dict:
    return {k: getattr(g, k) for k in ("id", "deployment_id", "version_id", "robot_id", "baseline_version",
                                      "min_episodes", "threshold", "started_at_ns", "status", "reason", "figures",
                                      "decided_at_ns", "decision_deployment_id", "created_by")}


def _counted(records: list[EpisodeRecord]) -> tuple[list[GateEpisode], int]:
    counted, unlabelled = [], 0
    for r in records:
        if r.status != "complete" or r.num_policy_ticks == 0:
            continue
        e = gate_episode(r)
        if e is None:
            unlabelled += 1
        else:
            counted.append(e)
    return counted, unlabelled


class GateKeeper:
    """Looks at the open gates and decides those that can be; `publish` is called after a decision
    changed what the fleet runs."""

    def __init__(self, db, catalog, publish=lambda: None, interval_s: float = CHECK_S):
        self.db, self.catalog, self.publish, self.interval_s = db, catalog, publish, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def look(self) -> list[dict]:
        """Evaluate every open gate; the gates decided by this look."""
        with self.db.session() as s:
            ids = s.scalars(select(CanaryGate.id).where(CanaryGate.status == "open").order_by(CanaryGate.id)).all()
        decided = [d for gid in ids if (d := self._look_at(gid)) is not None]
        if decided:
            self.publish()
        return decided

    def _look_at(self, gid: int) -> dict | None:
        from services.registry import deciding_deployment

        with self.db.session() as s:
            g = s.get(CanaryGate, gid)
            if g is None or g.status != "open":
                return None
            robot, version, baseline, since = g.robot_id, g.version_id, g.baseline_version, g.started_at_ns
            n, threshold = g.min_episodes, g.threshold
        canary, unl_c = _counted(self.catalog.episodes(robot=robot, policy_version=version, since_ns=since))
        fleet, unl_f = _counted([r for r in self.catalog.episodes(policy_version=baseline, since_ns=since)
                                 if r.robot_id != robot])
        v = judge(canary, fleet, min_episodes=n, threshold=threshold, unlabelled=unl_c + unl_f)
        with self.db.session() as s:
            if v.decision != "wait":
                serving_sequence.bump(s)  # the deployments' lock: one decision, never over a newer deployment
            g = s.get(CanaryGate, gid)
            if g.status != "open":
                return None
            current = deciding_deployment(s, robot) if s.get(Robot, robot) is not None else None
            if current is None or current.id != g.deployment_id:
                g.status, g.decided_at_ns = "superseded", time.time_ns()
                g.reason = (f"superseded by deployment #{current.id} ({current.stage} of {current.version_id})"
                            if current else "the robot left the fleet") + " before the gate decided"
                g.figures = v.figures
                self._audit(s, g)
                return gate_out(g)
            if v.decision == "wait":
                if (g.reason, g.figures) != (v.reason, v.figures):
                    g.reason, g.figures = v.reason, v.figures
                return None
            d = self._act(s, g, v)
            g.status = "passed" if v.decision == "pass" else "failed"
            g.reason, g.figures, g.decided_at_ns, g.decision_deployment_id = v.reason, v.figures, time.time_ns(), d.id
            self._audit(s, g)
            log.info("canary gate #%d (%s on %s): %s", gid, version, robot, v.reason)
            return gate_out(g)

    @staticmethod
    def _act(s: Session, g: CanaryGate, v: Verdict) -> Deployment:
        from services.registry import RegistryError, deploy, rollback

        note = f"canary gate #{g.id}: {v.reason}"
        if v.decision == "pass":
            canary = s.get(Deployment, g.deployment_id)
            return deploy(s, g.version_id, "fleet", "*", stage="widen", created_by=ACTOR, note=note, beta=canary.beta)
        try:
            d = rollback(s, "robot", g.robot_id, created_by=ACTOR)
        except RegistryError:  # nothing earlier applies to the robot any more: back to what the fleet ran
            return deploy(s, g.baseline_version, "robot", g.robot_id, stage="rollback", created_by=ACTOR, note=note)
        d.note = note
        return d

    @staticmethod
    def _audit(s: Session, g: CanaryGate) -> None:
        s.add(AuditEntry(at_ns=time.time_ns(), actor=ACTOR, role="system", action=f"GATE canary #{g.id}"[:256],
                         status=200, detail={"gate": g.id, "status": g.status, "version": g.version_id,
                                             "robot": g.robot_id, "baseline": g.baseline_version,
                                             "reason": g.reason, "figures": g.figures,
                                             "deployment": g.decision_deployment_id}))

    # -- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="canary-gates", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                self.look()
                failing = False
            except Exception as e:  # a database away: say so once, keep trying
                if not failing:
                    log.warning("canary gates: look failed, retrying every %.1f s: %s", self.interval_s, e)
                failing = True

