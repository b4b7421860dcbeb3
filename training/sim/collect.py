"""Run one episode on the simulated arm — an operator demonstrating, or a policy with a corrective
teleoperator — and record every tick through the real episode store. A policy drives through the
robots' own control loop (robot_bridge/arbitration.py `ActionArbiter`: chunk queue, deadline and
hold, hand-back after a human release, refusal of non-finite chunks, clipping) with an in-process
runtime in place of the inference server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from data.schema import ActionSource, CameraSpec, EpisodeFeatures, Outcome, Tick
from data.store import EpisodeStore
from robot_bridge.arbitration import ActionArbiter, TickHistory, build_arbiter
from training import recap
from training.policies.policy import Observation, Policy
from training.sim.arm import CONTROL_PERIOD_S, MetaWorldArm
from training.sim.operators import Operator
from training.sim.teleop import TakeoverRule, unstick_gripper


class PolicyActor:
    """The in-process policy runtime of the simulated arm: a policy of any registered type through
    its contract (the processing and guidance the inference server's runtime uses; β None: the
    artifact's, as served), answering within the tick. Each chunk's noise seed is drawn from `seed`.
    Chunk execution, hold and hand-back are the robots' `ActionArbiter` (see `arm_arbiter`).

    A policy that reads a history (n_obs_steps > 1) gets the last n_obs_steps control ticks, as a robot's
    bridge sends them (robot_bridge/arbitration.py `TickHistory`: `observe` every tick, `reset` at the
    episode start; until the history is full the episode's first tick stands in for the missing ones).
    Value-guided chunk selection (`select`, the policy's contract) sees the tick within the episode."""

    def __init__(self, policy: Policy, instruction: str, *, beta: float | None = None,
                 indicator: int = recap.INDICATOR_POSITIVE, seed: int = 0, select: int | None = None):
        self.policy, self.instruction = policy, instruction
        self.beta, self.indicator = beta, indicator
        self.select = select  # value-guided chunk selection's K (None: the artifact's; 0: off)
        self.seeds = np.random.default_rng(seed)
        self.history = TickHistory(policy.n_obs_steps)  # the ticks before the current one
        self._tick = 0  # control ticks observed this episode: the chunk critic's time input

    @property
    def chunk(self) -> int:
        return self.policy.chunk

    def reset(self) -> None:
        """A new episode: no history."""
        self.history.reset()
        self._tick = 0

    def observe(self, obs: np.ndarray, images: dict[str, np.ndarray] | None = None) -> None:
        """Every control tick, after the tick's decision: it becomes history for the next ones."""
        self._tick += 1
        self.history.observe(np.asarray(obs, np.float32), images)

    def observation(self, obs: np.ndarray, images: dict[str, np.ndarray] | None = None) -> Observation:
        """This tick's input: `obs` and `images`, with the history before it for a policy that reads one."""
        state, images = np.asarray(obs, np.float32), dict(images or {})
        n = self.history.n_obs_steps
        if n > 1:
            ticks = TickHistory.window(self.history.past(), (state, images), n)
            state = np.stack([s for s, _ in ticks])
            images = {c: np.stack([im[c] for _, im in ticks]) for c in images}
        return Observation(state, images, self.instruction, int(self.seeds.integers(0, 2**31 - 1)), self._tick)

    def predict(self, obs: np.ndarray, images: dict[str, np.ndarray] | None = None) -> np.ndarray:
        o = [self.observation(obs, images)]
        if self.select is None:  # the artifact's own K (plain sampling without a chunk critic)
            return self.policy.predict_chunk(o, self.indicator, self.beta)[0]
        return self.policy.predict_chunk(o, self.indicator, self.beta, self.select)[0]


GRIPPER = 3  # the Meta-World arm's gripper command: kept, not zeroed, while the arm holds position


def arm_arbiter(arm: MetaWorldArm, chunk: int) -> ActionArbiter:
    """The simulated arm's arbiter, built as its ROS cell's bridge builds it (robot_bridge/cell.py:
    half of each chunk executed, the gripper kept on a hold), with an in-process policy that answers
    within the tick, so the next chunk is asked for when the queue is empty."""
    return build_arbiter(arm.action_dim, period_s=CONTROL_PERIOD_S, execute=max(1, chunk // 2), refill_below=1,
                         hold_keep=(GRIPPER,))


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    correction_ticks: int
    episode_id: str | None
    operator: str
    hold_ticks: int = 0  # the arm held position (no valid chunk queued, e.g. right after a hand-back)
    refused_chunks: int = 0  # policy chunks the arbiter refused (non-finite or malformed)
    takeovers: int = 0  # contiguous stretches of correction (data/effort.py count_takeovers)
    corrector: str | None = None  # the operator whose style the corrections had


def episode_features(arm: MetaWorldArm, chunk: int) -> EpisodeFeatures:
    cams = {"front": CameraSpec(*arm.image_size)} if arm.image_size else {}
    return EpisodeFeatures(arm.state_dim, arm.action_dim, cams, proposed_chunk=chunk)


def run_episode(arm: MetaWorldArm, seed: int, *, store: EpisodeStore | None, robot_id: str = "sim-arm",
                operator: Operator | None = None, actor: PolicyActor | None = None,
                rule: TakeoverRule | None = None, policy_version: str | None = None,
                on_tick: Callable[[int], None] | None = None, corrector: Operator | None = None) -> EpisodeResult:
    """Exactly one of `operator` (a demonstration) or `actor` (the policy, corrected by `rule`).
    `corrector`: the teleoperator's own style when correcting (a slow or sloppy operator applied to
    the expert's action); None: the expert's action itself (an oracle corrector)."""
    if (operator is None) == (actor is None):
        raise ValueError("give an operator (demonstration) or an actor (policy), not both")
    obs = arm.reset(seed)
    rng = np.random.default_rng(seed + 7919)
    if operator is not None:
        operator.reset(rng)
    if corrector is not None:
        corrector.reset(np.random.default_rng(seed + 104_729))
    arbiter = arm_arbiter(arm, actor.chunk) if actor is not None else None
    if arbiter is not None:
        arbiter.reset(0)
        actor.reset()
    if rule is not None:
        rule.reset_episode()
    chunk = actor.chunk if actor is not None else 1
    writer = None
    if store is not None:
        writer = store.new_episode(robot_id=robot_id, task_id=arm.task, features=episode_features(arm, chunk),
                                   fps=1.0 / CONTROL_PERIOD_S, instruction=arm.instruction, fsync=False,
                                   extra={"seed": int(seed), "operator": operator.name if operator else "policy"})
    t0 = time.time_ns()
    success, corrections, holds = False, 0, 0
    sources: list[int] = []
    try:
        for t in range(arm.max_steps):
            images = arm.images()
            expert = arm.expert(obs)
            proposed, version = None, None
            if operator is not None:
                action, source = np.clip(operator.act(expert), -1, 1).astype(np.float32), ActionSource.DEMONSTRATION
            else:  # the robots' loop: ask for a chunk when the queue runs low, then one decision per tick
                if not (rule is not None and rule.engaged) and arbiter.needs_chunk():
                    arbiter.offer_chunk(actor.predict(obs, images), policy_version, obs_tick=t)
                human = rule.update(obs[:3], arbiter.next_action(), expert) if rule else False
                if human and rule.mistake_lag is not None and writer is not None:  # as the station records it
                    writer.note_event("mistake", t0 + int(max(0, t - rule.mistake_lag) * CONTROL_PERIOD_S * 1e9),
                                      why=rule.mistake_why)
                correction = None
                if human:
                    correction = unstick_gripper(obs, expert)
                    if corrector is not None:
                        correction = np.clip(corrector.act(correction), -1, 1).astype(np.float32)
                d = arbiter.decide(t, obs, correction, human)
                action, source, proposed, version = d.action, d.source, d.proposed, d.policy_version
                corrections += source == ActionSource.CORRECTION
                sources.append(int(source))
                holds += source == ActionSource.HOLD
                actor.observe(obs, images)
            if writer is not None:
                writer.append(Tick(t0 + int(t * CONTROL_PERIOD_S * 1e9), obs, action, source, images, proposed,
                                   version))
            res = arm.step(action)
            obs = res.obs
            if on_tick:
                on_tick(t)
            if res.success:
                success = True
                break
        steps = arm.steps
        eid = None
        if writer is not None:
            eid = writer.commit(Outcome.SUCCESS if success else Outcome.FAILURE, "success-detector").episode_id
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    from data.effort import count_takeovers

    return EpisodeResult(success, steps, corrections, eid, operator.name if operator else "policy", holds,
                         arbiter.refused_chunks if arbiter is not None else 0,
                         count_takeovers(np.asarray(sources, np.int64)),
                         corrector.name if corrector is not None else None)
