"""Action arbitration and causal alignment, without ROS (the bridge's decisions, tick by tick)."""

import numpy as np
import pytest

from data.schema import ActionSource
from robot_bridge.arbitration import ActionArbiter, SampleBuffer


def _arbiter(**kw):
    return ActionArbiter(2, np.array([-1, -1]), np.array([1, 1]), deadline_ticks=3, refill_below=2, **kw)


def test_latest_sample_at_or_before_the_tick_never_a_newer_one():
    buf = SampleBuffer()
    for stamp in (100, 300, 200):  # 200 arrives after 300
        buf.add(stamp, stamp)
    assert buf.at(50) is None
    assert buf.at(250).value == 200 and buf.at(300).value == 300 and buf.at(10_000).value == 300


def test_policy_chunk_then_hold_with_the_deadline_flag_and_clipping():
    arb = _arbiter()
    assert arb.needs_chunk()
    assert arb.offer_chunk(np.array([[0.5, 2.0], [0.1, 0.1], [0.2, 0.2]]), "v1", obs_tick=0)
    d = arb.decide(1, np.zeros(2), None, False)
    assert d.source == ActionSource.POLICY and d.policy_version == "v1" and np.allclose(d.action, [0.5, 1.0])
    arb.decide(2, np.zeros(2), None, False)
    assert arb.needs_chunk()  # one left: ask ahead of time
    arb.decide(3, np.zeros(2), None, False)
    holds = [arb.decide(t, np.zeros(2), None, False) for t in range(4, 9)]
    assert all(h.source == ActionSource.HOLD and np.allclose(h.action, 0) for h in holds)
    assert [h.late for h in holds] == [False, False, False, True, True]
    assert not arb.offer_chunk(np.ones((3, 2)), "v0", obs_tick=0)  # not newer than what we had


def test_takeover_mid_chunk_and_resumption_from_a_fresh_chunk():
    arb = _arbiter(hold_keep=(1,))
    arb.offer_chunk(np.full((5, 2), 0.3), "v1", obs_tick=0)
    assert arb.decide(1, np.zeros(2), None, False).source == ActionSource.POLICY
    d = arb.decide(2, np.zeros(2), np.array([-0.4, 0.9]), True)  # the human takes over mid-chunk
    assert d.source == ActionSource.CORRECTION and np.allclose(d.action, [-0.4, 0.9]) and d.policy_version is None
    assert not arb.needs_chunk()  # no requests while the human drives
    arb.decide(3, np.zeros(2), np.array([-0.4, 0.9]), True)
    # a chunk computed on an observation from before the release arrives late: dropped
    assert not arb.offer_chunk(np.full((5, 2), 0.3), "v1", obs_tick=3)
    d = arb.decide(4, np.zeros(2), None, False)  # released: nothing stale is executed
    assert d.source == ActionSource.HOLD and np.allclose(d.action, [0, 0.9])  # the gripper keeps its command
    assert arb.needs_chunk()
    assert arb.offer_chunk(np.full((5, 2), -0.2), "v2", obs_tick=5)  # computed on the current observation
    d = arb.decide(5, np.zeros(2), None, False)
    assert d.source == ActionSource.POLICY and d.policy_version == "v2" and np.allclose(d.action, -0.2)


def test_position_hold_keeps_the_measured_joint_positions():
    arb = ActionArbiter(3, -np.ones(3), np.ones(3), deadline_ticks=1, refill_below=1, hold_mode="position")
    d = arb.decide(0, np.array([0.1, -0.2, 0.3, 9.0]), None, False)
    assert d.source == ActionSource.HOLD and np.allclose(d.action, [0.1, -0.2, 0.3])


def test_a_new_episode_never_executes_what_was_planned_in_the_last_one():
    arb = _arbiter()
    arb.offer_chunk(np.full((5, 2), 0.3), "v1", obs_tick=10)
    assert arb.decide(11, np.zeros(2), None, False).source == ActionSource.POLICY
    arb.reset(12)  # the next episode starts with actions still queued and a request in flight
    assert arb.decide(12, np.zeros(2), None, False).source == ActionSource.HOLD
    assert not arb.offer_chunk(np.full((5, 2), 0.3), "v1", obs_tick=11)  # asked for in the last episode
    assert arb.offer_chunk(np.full((5, 2), -0.1), "v1", obs_tick=12)
    assert np.allclose(arb.decide(13, np.zeros(2), None, False).action, -0.1)


def test_a_decision_for_a_tick_before_the_reset_leaves_the_new_episode_alone():
    """The bridge's control loop may still be deciding the last episode's tick when the next episode
    starts (reset from the service thread): that decision still gives the human's command or a hold,
    but the new episode's queue, hand-over, deadline clock and kept gripper command stay as reset."""
    arb = _arbiter(hold_keep=(1,))
    arb.offer_chunk(np.full((5, 2), 0.7), "v1", obs_tick=10)
    assert arb.decide(11, np.zeros(2), None, False).source == ActionSource.POLICY  # gripper at 0.7
    arb.reset(13)
    d = arb.decide(12, np.zeros(2), np.array([0.2, 0.9]), True)  # the last episode's tick, the human driving
    assert d.source == ActionSource.CORRECTION and np.allclose(d.action, [0.2, 0.9])
    d = arb.decide(12, np.zeros(2), None, False)
    assert d.source == ActionSource.HOLD and np.allclose(d.action, 0) and not d.late
    assert arb.needs_chunk() and arb.offer_chunk(np.full((5, 2), -0.3), "v2", obs_tick=13)  # not a hand-back
    assert np.allclose(arb.decide(13, np.zeros(2), None, False).action, -0.3)
    arb.reset(20)
    arb.decide(19, np.zeros(2), None, False)  # starved in the last episode: the new one's clock starts at 20
    holds = [arb.decide(t, np.zeros(2), None, False) for t in range(20, 24)]
    assert [h.late for h in holds] == [False, False, False, True]
    assert all(np.allclose(h.action, 0) for h in holds)  # the gripper command reset: nothing kept from before


def test_tick_history_is_the_last_ticks_with_the_first_standing_in():
    """The ticks a policy reading n_obs_steps of them gets: the episode's last ones before the current,
    oldest first, its first tick standing in until there are enough (as training windows it)."""
    from robot_bridge.arbitration import TickHistory

    h = TickHistory(3)
    windows = []
    for t in range(4):
        windows.append([s for s, _ in TickHistory.window(h.past(), (t, {}), h.n_obs_steps)])
        h.observe(t, {"cam": t})
    assert windows == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]
    assert h.past() == [(2, {"cam": 2}), (3, {"cam": 3})]
    h.resize(2)  # another version reads 2 ticks: the newest kept
    assert h.past() == [(3, {"cam": 3})] and h.n_obs_steps == 2
    h.reset()  # a new episode
    assert h.past() == [] and TickHistory.window(h.past(), (9, {}), 2) == [(9, {}), (9, {})]
    one = TickHistory(1)
    one.observe(0)
    assert one.past() == [] and TickHistory.window([], (5, {}), 1) == [(5, {})]


def test_a_non_finite_or_wrong_size_command_never_reaches_the_arm():
    arb = _arbiter(hold_keep=(1,))
    for bad in (np.array([[0.1, np.nan]] * 3), np.array([[np.inf, 0.0]]), np.ones((3, 3)), np.ones(2),
                np.zeros((0, 2)), [["a", "b"]]):
        assert not arb.offer_chunk(bad, "v1", obs_tick=0)
    assert arb.refused_chunks == 6 and arb.needs_chunk()
    d = arb.decide(1, np.zeros(2), None, False)
    assert d.source == ActionSource.HOLD  # nothing was queued
    assert arb.offer_chunk(np.full((3, 2), 0.5), "v1", obs_tick=1)
    arb.decide(2, np.zeros(2), None, False)  # the gripper (dim 1) is now commanded at 0.5
    for t, human in enumerate((np.array([np.nan, 0.2]), np.array([0.1, -np.inf]), np.ones(3)), start=3):
        d = arb.decide(t, np.zeros(2), human, True)
        assert d.source == ActionSource.HOLD and d.refused and np.allclose(d.action, [0, 0.5])
    assert arb.refused_commands == 3
    d = arb.decide(6, np.zeros(2), np.array([0.3, 2.0]), True)  # a valid command drives again, clipped
    assert d.source == ActionSource.CORRECTION and not d.refused and np.allclose(d.action, [0.3, 1.0])


def test_position_hold_on_a_non_finite_measurement_keeps_the_last_command():
    arb = ActionArbiter(2, -np.ones(2), np.ones(2), deadline_ticks=1, refill_below=1, hold_mode="position")
    assert np.allclose(arb.decide(0, np.array([0.2, -0.3]), None, False).action, [0.2, -0.3])
    for t, state in enumerate((np.array([np.nan, 0.0]), np.array([0.1]), np.array([np.inf, np.inf])), start=1):
        d = arb.decide(t, state, None, False)
        assert d.source == ActionSource.HOLD and np.allclose(d.action, [0.2, -0.3])
        assert np.isfinite(d.action).all()


def test_policy_client_drops_malformed_or_non_finite_answers():
    import msgpack

    from data.wire import encode_answer
    from robot_bridge.policy_client import PolicyClient

    client = PolicyClient("http://127.0.0.1:9", "rcp_x", on_chunk=lambda *a: None, action_dim=2)
    try:
        good = client.check_answer(encode_answer(np.full((4, 2), 0.5), "v1", {"server_ms": 1.0}, binary=True))
        assert good["version"] == "v1" and good["actions"].shape == (4, 2) and good["actions"].dtype == np.float32
        bad = [encode_answer(np.array([[0.0, np.nan]]), "v1", {}, binary=True),
               encode_answer(np.full((4, 3), 0.5), "v1", {}, binary=True),  # action_dim 3, the arm has 2
               encode_answer(np.zeros((0, 2)), "v1", {}, binary=True),
               msgpack.packb({"actions": {"dtype": "float32", "shape": [4, 2], "data": b"\0" * 7}, "version": "v1"}),
               msgpack.packb({"actions": {"dtype": "float64", "shape": [1, 2], "data": b"\0" * 16}, "version": "v1"}),
               msgpack.packb({"actions": [[1.0, float("inf")]], "version": "v1"}),
               msgpack.packb({b"actions": [[1.0, 1.0]], "version": "v1"}),
               b"\x93\x01", b""]
        assert all(client.check_answer(b) is None for b in bad)
        assert client.dropped == len(bad)
    finally:
        client.close()


def test_joint_state_by_name_any_order_extra_ignored_missing_refused():
    from robot_bridge.arbitration import JointMap

    m = JointMap(["a", "b", "c"], 3)
    assert np.array_equal(m(["c", "a", "b"], [3, 1, 2]), [1, 2, 3])  # shuffled
    assert np.array_equal(m(["x", "b", "a", "y", "c"], [9, 2, 1, 8, 3]), [1, 2, 3])  # extra joints
    assert m(["a", "c"], [1, 3]).startswith("missing joints ['b']") and m.missing == {"b"}  # missing
    assert m(["a", "b", "c"], [1, float("nan"), 3]) == "non-finite position"
    assert m(["a", "b", "c"], [1, 2]) == "3 names, 2 positions"
    assert m(["a", "a", "b", "c"], [1, 1, 2, 3]) == "joint names repeat"
    assert np.array_equal(JointMap([""], 2)([], [5, 6]), [5, 6]) and JointMap([], 2)([], [5]) == "1 positions, expected 2"
    # commands in the controller's order
    assert np.array_equal(np.array([1, 2, 3])[m.order(["c", "a", "b"])], [3, 1, 2]) and m.order([""]) is None
    with pytest.raises(ValueError, match="are not the joints"):
        m.order(["a", "b", "d"])
    with pytest.raises(ValueError, match="2 joint names for 3"):
        JointMap(["a", "b"], 3)


def test_diagnostic_levels_follow_the_documented_thresholds():
    from robot_bridge.diagnostics import ERROR, OK, WARN, Window, assess

    def levels(**kw):
        w = Window(period_ms=20.0, ticks=50, lateness_ms=[0.5] * 50, state_age_ms=5.0, joint_states_received=100,
                   disk_free_bytes=100 << 30)
        for k, v in kw.items():
            setattr(w, k, v)
        return {s.name: s.level for s in assess(w)}

    assert set(levels().values()) == {OK}
    assert levels(lateness_ms=[6.0] * 50)["control loop"] == WARN and levels(lateness_ms=[25.0] * 50)["control loop"] == ERROR
    assert levels(dropped_ticks=1)["control loop"] == WARN and levels(dropped_ticks=5)["control loop"] == ERROR
    assert levels(state_age_ms=None)["joint state"] == ERROR and levels(state_age_ms=60.0)["joint state"] == WARN
    assert levels(joint_states_refused=3)["joint state"] == WARN and levels(joint_states_refused=100)["joint state"] == ERROR
    assert levels(stale_samples=10)["joint state"] == WARN and levels(stale_samples=30)["joint state"] == ERROR
    assert levels(policy=True, deadline_holds=1)["policy"] == WARN and levels(policy=True, deadline_holds=30)["policy"] == ERROR
    assert levels(policy=True, round_trips_ms=[60.0])["policy"] == WARN and levels(policy=True, round_trips_ms=[150.0])["policy"] == ERROR
    # requests the server refused (422): some of the window's -> WARN, all of them (only holds) -> ERROR
    assert levels(policy=True, policy_rejected=1, round_trips_ms=[5.0])["policy"] == WARN
    assert levels(policy=True, policy_rejected=3)["policy"] == ERROR
    assert levels(pending_registrations=6)["registration"] == WARN and levels(pending_registrations=101)["registration"] == ERROR
    assert "cameras" not in levels() and levels(camera_frames={"a": 30, "b": 29})["cameras"] == OK
    assert levels(camera_frames={"a": 30, "b": 0})["cameras"] == ERROR
    assert levels(camera_frames={"a": 30}, camera_refused=2)["cameras"] == WARN
    assert levels(disk_free_bytes=10 << 30)["disk"] == WARN and levels(disk_free_bytes=1 << 30)["disk"] == ERROR
    assert levels(disk_free_bytes=30 << 30, disk_reserve_bytes=40 << 30)["disk"] == ERROR  # below the reserve: refusing
    assert "shipping" not in levels()  # no shipper on this robot
    ship = lambda **b: levels(ship_backlog={"episodes": 0, "bytes": 0, "refused": 0, "oldest": None} | b)["shipping"]
    assert ship() == OK and ship(episodes=21) == WARN and ship(refused=1) == WARN and ship(episodes=501) == ERROR


def test_limits_and_holds_are_checked_where_every_arbiter_is_built():
    """build_arbiter (the ROS bridge's and the simulated loop's): limits finite, ordered, one or one per dimension;
    kept dimensions inside the action; anything else a ValueError naming the setting, never a pinned or NaN command."""
    from robot_bridge.arbitration import build_arbiter

    arb = build_arbiter(3, period_s=0.1, low=[-1, -2, -3], high=2.0, hold_keep=(-1, 2))
    assert np.allclose(arb.low, [-1, -2, -3]) and np.allclose(arb.high, 2) and arb.hold_keep == (2,)
    for kw, says in (({"low": 1.0, "high": -1.0}, "above action_high"), ({"high": float("nan")}, "finite"),
                     ({"low": [-float("inf")]}, "finite"), ({"high": 1e39}, "finite"), ({"low": [-1, -1]}, "2 values for 3"),
                     ({"hold_keep": (3,)}, "hold_keep"), ({"hold_keep": (-2,)}, "hold_keep"),
                     ({"hold_mode": "velocity"}, "hold_mode"), ({"period_s": 0.0}, "period"),
                     ({"deadline_s": float("nan")}, "deadline"), ({"refill_below": 0}, "refill_below")):
        with pytest.raises(ValueError, match=says):
            build_arbiter(3, **{"period_s": 0.1, **kw})
