"""Run one episode on the simulated arm — an operator demonstrating, or a policy with a corrective
teleoperator — and record every tick through the real episode store."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from data.schema import ActionSource, CameraSpec, EpisodeFeatures, Outcome, Tick
from data.stats import FeatureStats
from data.store import EpisodeStore
from training import recap
from training.encoders import encode_texts
from training.policies.native.modeling_native import NativeFlowPolicy
from training.sim.arm import CONTROL_PERIOD_S, MetaWorldArm
from training.sim.operators import Operator
from training.sim.teleop import TakeoverRule, unstick_gripper


class PolicyActor:
    """Runs a native policy in chunks: executes the first `execute` actions of each predicted
    chunk, then predicts again from the current observation; after a human takeover it starts
    from a fresh chunk (no stale queue)."""

    def __init__(self, model: NativeFlowPolicy, stats: dict[str, FeatureStats], instruction: str, *,
                 execute: int | None = None, beta: float = 1.0, indicator: int = recap.INDICATOR_POSITIVE,
                 seed: int = 0, device: str = "cpu"):
        self.model, self.stats, self.instruction = model, stats, instruction
        self.execute = execute or max(1, model.cfg.chunk // 2)
        self.beta, self.indicator, self.device = beta, indicator, torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self._ids, self._offsets = encode_texts([instruction], 4096)
        self.queue: list[np.ndarray] = []
        self.last_chunk: np.ndarray | None = None

    @property
    def chunk(self) -> int:
        return self.model.cfg.chunk

    def reset(self) -> None:
        self.queue = []

    def predict(self, obs: np.ndarray, images: dict[str, np.ndarray] | None = None) -> np.ndarray:
        batch = {"state": torch.from_numpy(self.stats["observation.state"].normalize(obs[None])).float().to(self.device),
                 "text_ids": self._ids.to(self.device), "text_offsets": self._offsets.to(self.device)}
        if self.model.cfg.cameras:
            batch["images"] = {c: torch.from_numpy(images[c][None]).float().div(255).permute(0, 3, 1, 2).to(self.device)
                               for c in self.model.cfg.cameras}
        x = self.model.sample(batch, indicator=self.indicator, beta=self.beta, generator=self.gen)[0].cpu().numpy()
        return self.stats["action"].unnormalize(x).astype(np.float32)

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
