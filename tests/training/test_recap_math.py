"""The RECAP equations on hand-computed cases."""

import numpy as np
import pytest
import torch

from data.schema import ActionSource
from training import recap


def test_returns_normalise_into_the_design_ranges():
    L = 100
    succ = recap.normalised_returns(40, "success", L)
    fail = recap.normalised_returns(100, "failure", L)
    assert succ[-1] == 0.0 and succ[0] == pytest.approx(-39 / 200)
    assert np.all((succ > -0.5) & (succ <= 0))
    assert np.all((fail >= -1) & (fail <= -0.5))
    assert fail[-1] == pytest.approx(-100 / 200) and fail[0] == pytest.approx(-(99 + 100) / 200)
    with pytest.raises(ValueError, match="unknown"):
        recap.rewards(5, "unknown", 1.0)


def test_two_hot_is_exact_in_expectation():
    v = torch.tensor([-1.0, -0.5, -0.123, 0.0, -0.9999])
    t = recap.two_hot(v, 201)
    assert torch.allclose(t.sum(-1), torch.ones(5))
    assert torch.allclose((t * recap.bin_centers(201)).sum(-1), v, atol=1e-6)
    logits = torch.log(t + 1e-12)
    assert torch.allclose(recap.expected_value(logits), v, atol=1e-4)
    assert recap.value_loss(logits, v) < recap.value_loss(torch.zeros_like(logits), v)


def test_n_step_advantage_by_hand():
    L, N, T = 10, 3, 5
    values = np.array([-0.3, -0.25, -0.2, -0.1, 0.0])
    a = recap.n_step_advantages(values, T, "success", N, L)
    z = 20.0  # L + C_fail
    # t=0: r0+r1+r2 = -3 -> -3/z, + V(3) - V(0)
    assert a[0] == pytest.approx(-3 / z + values[3] - values[0])
    # t=3: window stops at T: r3 + r4 = -1 + 0, V after the end = 0
    assert a[3] == pytest.approx(-1 / z - values[3])
    assert a[4] == pytest.approx(0 - values[4])


def test_thresholds_hit_the_target_fraction_and_corrections_are_positive():
    rng = np.random.default_rng(0)
    adv = {"push": rng.normal(size=1000), "pick": rng.normal(2, 1, size=500)}
    eps = recap.thresholds(adv, 0.3)
    for task, a in adv.items():
        assert (a > eps[task]).mean() == pytest.approx(0.3, abs=0.01)
    src = np.full(1000, ActionSource.POLICY)
    src[:10] = ActionSource.CORRECTION
    ind = recap.indicators(adv["push"], 1e9, src)
    assert ind[:10].all() and not ind[10:].any()


def test_indicator_dropout_prompt_and_guidance():
    g = torch.Generator().manual_seed(0)
    ind = torch.ones(10_000, dtype=torch.long)
    dropped = recap.drop_indicators(ind, 0.3, g)
    assert (dropped == recap.INDICATOR_NONE).float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert recap.advantage_prompt("push the block", recap.INDICATOR_POSITIVE).endswith("Advantage: positive")
    assert recap.advantage_prompt("push", recap.INDICATOR_NEGATIVE).endswith("Advantage: negative")
    vu, vp = torch.zeros(3), torch.ones(3)
    assert torch.equal(recap.guided_velocity(vu, vp, 1.0), vp)
    assert torch.allclose(recap.guided_velocity(vu, vp, 2.0), 2 * vp)


def test_positives_by_source_says_where_the_positive_labels_come_from():
    D, C, P, H = ActionSource.DEMONSTRATION, ActionSource.CORRECTION, ActionSource.POLICY, ActionSource.HOLD
    sources = np.array([D, D, C, P, P, P, P, P, P, H])
    outcomes = np.array(["success"] * 2 + ["failure"] + ["success"] * 2 + ["failure"] * 5, dtype=object)
    ind = np.array([1, 0, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    by = recap.positives_by_source(ind, sources, outcomes)
    assert by["demonstration"] == {"ticks": 2, "positive_rate": 0.5, "share_of_positives": 0.2}
    assert by["correction"] == {"ticks": 1, "positive_rate": 1.0, "share_of_positives": 0.2}
    assert by["policy_success"] == {"ticks": 2, "positive_rate": 1.0, "share_of_positives": 0.4}
    assert by["policy_failure"] == {"ticks": 4, "positive_rate": 0.25, "share_of_positives": 0.2}
    # the policy's ticks of an episode of unknown outcome are in neither policy group (their labels are 0 by rule);
    # ticks training leaves out (a hold labelled positive, a masked correction) count nowhere
    unknown = np.array(["success"] * 2 + ["failure"] + ["success"] * 2 + ["failure"] * 2 + ["unknown"] * 2 + ["failure"],
                       dtype=object)
    held = ind.copy()
    held[-1] = True
    keep = np.ones(len(ind), bool)
    keep[[2, -1]] = False
    by = recap.positives_by_source(held, sources, unknown, keep=keep)
    assert by["policy_failure"] == {"ticks": 2, "positive_rate": 0.5, "share_of_positives": 0.25}
    assert by["correction"]["ticks"] == 0 and sum(g["share_of_positives"] for g in by.values() if g["ticks"]) == 1
    # no positives at all, or an empty group: NaN, not a division error
    none = recap.positives_by_source(np.zeros(3, bool), np.array([P, P, P]), np.array(["failure"] * 3, dtype=object))
    assert np.isnan(none["policy_failure"]["share_of_positives"]) and np.isnan(none["correction"]["positive_rate"])
