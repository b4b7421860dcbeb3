"""The simulated arm, operators, the corrective teleoperator's rule, and a small RECAP loop
through the real store, catalog and training runs."""

import numpy as np
import pytest

from data.schema import ActionSource
from training.sim.arm import MetaWorldArm
from training.sim.collect import run_episode
from training.sim.operators import CleanOperator, SlowOperator, operator_mix
from training.sim.teleop import TakeoverRule


def test_arm_layouts_are_seeded_and_the_expert_solves_push():
    arm = MetaWorldArm("push-v3", max_steps=200)
    a, b, c = arm.reset(3), arm.reset(3).copy(), arm.reset(4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    res = run_episode(arm, 5, store=None, operator=CleanOperator())
    assert res.success and res.steps < 150
    slow = run_episode(arm, 5, store=None, operator=SlowOperator())
    assert slow.steps > res.steps  # careful-but-slow is systematically slower
    with pytest.raises(KeyError, match="unknown Meta-World task"):
        MetaWorldArm("no-such-task-v3")


def test_takeover_rule_engages_on_deviation_and_respects_budgets():
    rule = TakeoverRule(deviation=0.5, patience=3, takeover_ticks=4, max_takeovers=2, round_budget=100)
    hand = np.zeros(3)
    good, bad, expert = np.zeros(4), np.ones(4), np.zeros(4)
    driven, mistakes = [], []
    for t in range(40):
        hand = hand + 0.01  # moving, so no stall
        driven.append(rule.update(hand, bad if t >= 5 else good, expert))
        if rule.mistake_lag is not None:
            mistakes.append((t, rule.mistake_lag, rule.mistake_why))
    # engages after 3 bad ticks, drives 4, hands back, engages again, then the episode cap stops it
    assert driven[:7] == [False] * 7 and driven[7:11] == [True] * 4
    # late, like a person: the mistake (the first bad tick, 5) 2 ticks before the takeover at 7; the same again
    # after the hand-back (bad from 11, taken over at 13)
    assert mistakes == [(7, 2, "deviation"), (13, 2, "deviation")]
    assert sum(driven) == 8 and rule.takeovers == 2
    rule.reset_episode()
    tight = TakeoverRule(deviation=0.5, patience=1, takeover_ticks=4, round_budget=6)
    hand = np.zeros(3)
    n = 0
    for t in range(30):
        hand = hand + 0.01
        n += tight.update(hand, bad, expert)
    assert n == 4 and tight.round_used <= 6  # a second takeover would overrun the round budget


def _tiny_policy(chunk: int = 8):
    """A small native policy with seeded random weights, predicting through its contract; every call's
    observation and chunk are kept in `calls`."""
    from data.stats import FeatureStats
    from training.policies.native import NativePolicyConfig
    from training.policies.policy import build_policy

    rng = np.random.default_rng(0)
    cfg = NativePolicyConfig(state_dim=39, action_dim=4, chunk=chunk, hidden=32, flow_steps=2, seed=0)
    policy = build_policy("native_flow", cfg, {"observation.state": FeatureStats.of(rng.normal(size=(64, 39))),
                                               "action": FeatureStats.of(rng.normal(size=(64, 4)))}).eval()
    policy.calls = []
    predict = policy.predict_chunk

    def recorded(observations, indicator, beta):
        out = predict(observations, indicator, beta)
        policy.calls.append((observations[0].state.copy(), out[0].copy()))
        return out
    policy.predict_chunk = recorded
    return policy


def test_a_non_finite_chunk_is_refused_by_the_arbiter_and_the_arm_holds(tmp_path):
    from data.store import EpisodeStore
    from training.sim.collect import PolicyActor

    arm, store = MetaWorldArm("push-v3", max_steps=10), EpisodeStore(tmp_path)
    policy = _tiny_policy()
    policy.predict_chunk = lambda obs, ind, beta: np.full((len(obs), 8, 4), np.nan, np.float32)
    res = run_episode(arm, 3, store=store, actor=PolicyActor(policy, arm.instruction), policy_version="v-nan")
    assert res.refused_chunks == 10 and res.hold_ticks == 10  # asked again every tick, refused every time
    ep = store.open(res.episode_id)
    assert (ep.action_source == ActionSource.HOLD).all() and np.isfinite(ep.action).all()
    assert (ep.action[:, :3] == 0).all()  # a zero-delta hold: the hand stays where it is
    assert np.abs(ep.state[-1, :3] - ep.state[0, :3]).max() < 0.01
    assert all(ep.policy_version(t) is None for t in range(len(ep)))


def test_after_a_hand_back_the_policy_resumes_from_a_chunk_of_the_current_observation(tmp_path):
    from data.store import EpisodeStore
    from training.sim.collect import PolicyActor

    arm, store = MetaWorldArm("push-v3", max_steps=20), EpisodeStore(tmp_path)
    policy = _tiny_policy()
    rule = TakeoverRule(deviation=0.0, patience=1, takeover_ticks=5, max_takeovers=1)  # takes over at once
    res = run_episode(arm, 3, store=store, actor=PolicyActor(policy, arm.instruction, seed=1), rule=rule,
                      policy_version="v1")
    ep = store.open(res.episode_id)
    src = ep.action_source
    # the human drives 5 ticks, the arbiter drops the plan of tick 0, holds on the release tick, then
    # the policy drives from a chunk computed on tick 6's observation
    assert list(src[:7]) == [ActionSource.CORRECTION] * 5 + [ActionSource.HOLD, ActionSource.POLICY]
    assert (src[6:] == ActionSource.POLICY).all() and res.correction_ticks == 5 and res.hold_ticks == 1
    first, resumed = policy.calls[0], policy.calls[1]
    assert np.array_equal(first[0], ep.state[0]) and np.array_equal(resumed[0], ep.state[6])
    assert np.array_equal(ep.proposed_action[6], resumed[1]) and not np.array_equal(resumed[1], first[1])
    assert np.allclose(ep.action[6], np.clip(resumed[1][0], -1, 1))
    assert ep.policy_version(6) == "v1" and ep.policy_version(2) is None
    # chunk // 2 executed per chunk: the next chunk is asked for on tick 10, then 14, 18
    assert [np.array_equal(c[0], ep.state[t]) for (c, t) in zip(policy.calls[2:], (10, 14, 18))] == [True] * 3
    assert len(policy.calls) == 5
    assert res.takeovers == 1 and res.corrector is None

    # an imperfect corrector: the same takeover, its own (slow) style on the expert's correction
    from training.sim.operators import SlowOperator

    rule = TakeoverRule(deviation=0.0, patience=1, takeover_ticks=5, max_takeovers=1)
    slow = run_episode(arm, 3, store=store, actor=PolicyActor(_tiny_policy(), arm.instruction, seed=1), rule=rule,
                       policy_version="v1", corrector=SlowOperator(pause_prob=0.0))
    slow_ep = store.open(slow.episode_id)
    assert slow.corrector == "slow" and slow.takeovers == 1 and slow.correction_ticks == 5
    assert np.allclose(slow_ep.action[0, :3], 0.6 * ep.action[0, :3], atol=1e-6)


def test_operator_mix_is_as_asked():
    ops = operator_mix(10, seed=0)
    names = sorted(o.name for o in ops)
    assert names.count("clean") == 2 and names.count("slow") == 4 and names.count("sloppy") == 4


@pytest.mark.slow
def test_small_loop_records_corrections_and_versions(tmp_path):
    from training.sim.loop import LoopConfig, SimLoop

    cfg = LoopConfig(tasks=["push-v3"], max_steps=120, demos_per_task=3, episodes_per_round=3, rounds=1, eval_episodes=3,
                     rule={"deviation": 0.3, "patience": 2}, value={"steps": 30, "hidden": 32},
                     policy={"steps": 60, "hidden": 32, "chunk": 4})
    loop = SimLoop(cfg, tmp_path)
    p0 = loop.round0(seed=0)
    recs = loop.run("recap", 0, p0)
    assert len(recs) == 1 and 0 <= recs[0]["eval"]["all"]["success_rate"] <= 1
    collected = loop.catalog.episodes(robot="recap-s0")
    assert len(collected) == 3
    corr = sum(r.num_correction_ticks for r in collected)
    assert corr > 0  # an untrained policy gets corrected
    ep = loop.store.open(collected[0].id)
    src = ep.action_source
    assert set(np.unique(src)) <= {ActionSource.POLICY, ActionSource.CORRECTION, ActionSource.HOLD}
    holds = np.flatnonzero(src == ActionSource.HOLD)
    assert (src[holds - 1] == ActionSource.CORRECTION).all()  # the arm holds only on the hand-back tick
    pol = np.flatnonzero(src == ActionSource.POLICY)
    if len(pol):
        assert ep.policy_version(int(pol[0])) == "recap-s0-r0"
        assert np.isfinite(ep.proposed_action[pol[0]]).all() and ep.proposed_action.shape[1] == 4
    demos = loop.catalog.episodes(robot="demo")
    assert len(demos) == 3 and all(r.num_demonstration_ticks == r.num_ticks for r in demos)
    assert recs[0]["run"]["positive_rate"] > 0
    # resumable per round: a finished round is read back; a round whose collection was cut short is
    # collected again without keeping the partial episodes
    import json

    def same(a, b):  # NaN-safe (a round without successes has no time to success)
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    assert same(loop.run("recap", 0, p0), recs)
    (tmp_path / "cells" / "recap-s0-r1.json").unlink()
    (tmp_path / "cells" / "recap-s0-r1.collected.json").unlink()
    again = loop.run("recap", 0, p0)
    assert len(loop.catalog.episodes(robot="recap-s0")) == 3 and same(again[0]["eval"], recs[0]["eval"])


def test_image_variant_records_frames_and_trains_on_them(tmp_path):
    from training.sim.loop import LoopConfig, SimLoop

    cfg = LoopConfig(tasks=["push-v3"], max_steps=40, demos_per_task=2, image_size=(32, 32),
                     policy={"steps": 5, "hidden": 32, "chunk": 4}, eval_episodes=1)
    loop = SimLoop(cfg, tmp_path)
    p0 = loop.round0(seed=0)
    ep = loop.store.open(loop.catalog.episodes(robot="demo")[0].id)
    assert ep.cameras == ["front"]
    frame = ep.image("front", 0)
    assert frame.shape == (32, 32, 3) and frame.std() > 5  # a rendered scene, not a blank frame
    from training.runs import load_policy

    policy, manifest = load_policy(p0)
    assert policy.cfg.cameras == ["front"] and manifest["lineage"]["first_fit"]
    ev = loop.evaluate_policy(p0, 1.0, 0)
    assert ev["all"]["episodes"] == 1
