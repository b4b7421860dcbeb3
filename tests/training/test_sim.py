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
    driven = []
    for t in range(40):
        hand = hand + 0.01  # moving, so no stall
        driven.append(rule.update(hand, bad if t >= 5 else good, expert))
    # engages after 3 bad ticks, drives 4, hands back, engages again, then the episode cap stops it
    assert driven[:7] == [False] * 7 and driven[7:11] == [True] * 4
    assert sum(driven) == 8 and rule.takeovers == 2
    rule.reset_episode()
    tight = TakeoverRule(deviation=0.5, patience=1, takeover_ticks=4, round_budget=6)
    hand = np.zeros(3)
    n = 0
    for t in range(30):
        hand = hand + 0.01
        n += tight.update(hand, bad, expert)
    assert n == 4 and tight.round_used <= 6  # a second takeover would overrun the round budget


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
    assert set(np.unique(src)) <= {ActionSource.POLICY, ActionSource.CORRECTION}
    pol = np.flatnonzero(src == ActionSource.POLICY)
    if len(pol):
        assert ep.policy_version(int(pol[0])) == "recap-s0-r0"
        assert np.isfinite(ep.proposed_action[pol[0]]).all() and ep.proposed_action.shape[1] == 4
    demos = loop.catalog.episodes(robot="demo")
    assert len(demos) == 3 and all(r.num_demonstration_ticks == r.num_ticks for r in demos)
    assert recs[0]["run"]["positive_rate"] > 0


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
