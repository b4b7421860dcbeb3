"""Run one episode on the simulated arm — an operator demonstrating, or a policy with a corrective
teleoperator — and record every tick through the real episode store."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from data.schema import ActionSource, CameraSpec, EpisodeFeatures, Outcome, Tick
from data.store import EpisodeStore
from training import recap
from training.policies.policy import Observation, Policy
from training.sim.arm import CONTROL_PERIOD_S, MetaWorldArm
from training.sim.operators import Operator
from training.sim.teleop import TakeoverRule, unstick_gripper


class PolicyActor:
    """Runs a policy of any registered type in chunks, through its contract (the processing and
    guidance the inference server uses): executes the first `execute` actions of each predicted
    chunk, then predicts again from the current observation; after a human takeover it starts
    from a fresh chunk (no stale queue). Each chunk's noise seed is drawn from `seed`."""

    def __init__(self, policy: Policy, instruction: str, *, execute: int | None = None, beta: float | None = None,
                 indicator: int = recap.INDICATOR_POSITIVE, seed: int = 0):
        self.policy, self.instruction = policy, instruction
        self.execute = execute or max(1, policy.chunk // 2)
        self.beta, self.indicator = beta, indicator  # beta None: the artifact's, as served
        self.seeds = np.random.default_rng(seed)
        self.queue: list[np.ndarray] = []
        self.last_chunk: np.ndarray | None = None

    @property
    def chunk(self) -> int:
        return self.policy.chunk

    def reset(self) -> None:
        self.queue = []

    def observation(self, obs: np.ndarray, images: dict[str, np.ndarray] | None = None) -> Observation:
        return Observation(np.asarray(obs, np.float32), dict(images or {}), self.instruction,
                           int(self.seeds.integers(0, 2**31 - 1)))

    def predict(self, obs: np.ndarray, images: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return self.policy.predict_chunk([self.observation(obs, images)], self.indicator, self.beta)[0]

    def act(self, obs: np.ndarray, images: dict[str, np.ndarray] | None = None) -> np.ndarray:
        if not self.queue:
            self.last_chunk = self.predict(obs, images)
            self.queue = list(self.last_chunk[: self.execute])
        return np.clip(self.queue.pop(0), -1, 1)


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    correction_ticks: int
    episode_id: str | None
    operator: str


def episode_features(arm: MetaWorldArm, chunk: int) -> EpisodeFeatures:
    cams = {"front": CameraSpec(*arm.image_size)} if arm.image_size else {}
    return EpisodeFeatures(arm.state_dim, arm.action_dim, cams, proposed_chunk=chunk)


def run_episode(arm: MetaWorldArm, seed: int, *, store: EpisodeStore | None, robot_id: str = "sim-arm",
                operator: Operator | None = None, actor: PolicyActor | None = None,
                rule: TakeoverRule | None = None, policy_version: str | None = None,
                on_tick: Callable[[int], None] | None = None) -> EpisodeResult:
    """Exactly one of `operator` (a demonstration) or `actor` (the policy, corrected by `rule`)."""
    if (operator is None) == (actor is None):
        raise ValueError("give an operator (demonstration) or an actor (policy), not both")
    obs = arm.reset(seed)
    rng = np.random.default_rng(seed + 7919)
    if operator is not None:
        operator.reset(rng)
    if actor is not None:
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
    success, corrections, was_engaged = False, 0, False
    try:
        for t in range(arm.max_steps):
            images = arm.images()
            expert = arm.expert(obs)
            proposed = None
            if operator is not None:
                action, source = operator.act(expert), ActionSource.DEMONSTRATION
            else:
                engaged_before = rule.engaged if rule else False
                policy_action = None if engaged_before else actor.act(obs, images)
                human = rule.update(obs[:3], policy_action, expert) if rule else False
                if human:
                    action, source = unstick_gripper(obs, expert), ActionSource.CORRECTION
                    corrections += 1
                    was_engaged = True
                else:
                    if was_engaged:  # hand-back: resume from a fresh chunk on the current observation
                        actor.reset()
                        policy_action = actor.act(obs, images)
                        was_engaged = False
                    action, source = policy_action, ActionSource.POLICY
                    proposed = actor.last_chunk
            action = np.clip(action, -1, 1).astype(np.float32)
            if writer is not None:
                writer.append(Tick(t0 + int(t * CONTROL_PERIOD_S * 1e9), obs, action, source, images,
                                   proposed if proposed is not None else None,
                                   policy_version if source == ActionSource.POLICY else None))
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
    return EpisodeResult(success, steps, corrections, eid, operator.name if operator else "policy")
