"""A robot low on disk: the bridge (its own process, over DDS) refuses to start an episode with a
message naming the reserve, rather than failing mid-episode, and says so in ~/stats, beside the
shipping backlog (committed episodes the central store has not confirmed)."""

from __future__ import annotations

import subprocess

from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from tests.bridge.test_bridge_dds import Driver, _node, ns, ros_env  # noqa: F401  (fixtures)
from tests.services.ship_faults import RobotSide


def _stop(d: Driver, bridge: subprocess.Popen) -> None:
    d.close()
    bridge.terminate()
    try:
        bridge.wait(10)
    except subprocess.TimeoutExpired:
        bridge.kill()


def test_a_bridge_low_on_disk_refuses_to_start_and_reports_it(ros_env, ns, tmp_path):
    robot = RobotSide(tmp_path / "store", ticks=10)
    robot.record(2)  # committed, never shipped: the backlog
    bridge = _node("robot_bridge.bridge_node", {"robot_id": "robot-0", "store_root": str(robot.root), "fsync": False,
                                                "disk_reserve_mb": 1e12}, tmp_path / "bridge.log", ns)
    d = Driver(ns)
    try:
        r = d.call(Trigger, "recap_bridge/start_episode", Trigger.Request(), timeout=90)
        assert not r.success and "below the reserve" in r.message and "disk_reserve_mb" in r.message, r.message
        while not d.stats:
            d.spin(0.2)
        s = d.stats[-1]
        assert s["disk_low"] and s["disk_free_mb"] > 0 and s["episode"] is None, s
        assert s["ship_backlog"]["episodes"] == 2 and s["ship_backlog"]["bytes"] > 0, s
        ok = d.call(SetParameters, "recap_bridge/set_parameters", SetParameters.Request(
            parameters=[Parameter("disk_reserve_mb", value=1.0).to_parameter_msg()]))
        assert ok.results[0].successful
        r = d.call(Trigger, "recap_bridge/start_episode", Trigger.Request())
        assert r.success, r.message
        d.spin(1.5)
        assert d.stats[-1]["disk_low"] is False
    finally:
        _stop(d, bridge)
    assert "Traceback" not in (tmp_path / "bridge.log").read_text()


def test_a_store_failing_under_the_bridge_refuses_the_start_and_the_bridge_lives_on(ros_env, ns, tmp_path):
    """A store that fails under a running bridge (here its episodes directory replaced by a file; on a
    robot a read-only remount, a disk gone): start_episode is refused with the error, the bridge keeps
    running (stats on), and starts once the store is back."""
    import shutil

    store = tmp_path / "store"
    bridge = _node("robot_bridge.bridge_node", {"robot_id": "robot-0", "store_root": str(store), "fsync": False,
                                                "disk_reserve_mb": 1.0}, tmp_path / "bridge.log", ns)
    d = Driver(ns)
    try:
        while not d.stats:
            d.spin(0.2)
        shutil.rmtree(store / "episodes")
        (store / "episodes").write_text("not a directory")
        r = d.call(Trigger, "recap_bridge/start_episode", Trigger.Request(), timeout=90)
        assert not r.success and r.message.startswith("start_episode failed:") and "episodes" in r.message, r.message
        seen = len(d.stats)
        d.spin(2.5)
        assert bridge.poll() is None and len(d.stats) > seen  # alive, still reporting
        (store / "episodes").unlink()
        (store / "episodes").mkdir()
        r = d.call(Trigger, "recap_bridge/start_episode", Trigger.Request())
        assert r.success, r.message
        assert d.call(Trigger, "recap_bridge/abort_episode", Trigger.Request()).success
        # the whole store gone: stats and starts fail, logged and answered, and the bridge lives on
        shutil.rmtree(store)
        d.spin(2.5)
        r = d.call(Trigger, "recap_bridge/start_episode", Trigger.Request())
        assert not r.success and r.message.startswith("start_episode failed: FileNotFoundError"), r.message
        assert bridge.poll() is None
    finally:
        _stop(d, bridge)
    log = (tmp_path / "bridge.log").read_text()
    assert "start_episode failed" in log and log.count("stats failed: FileNotFoundError") == 1, log[-3000:]
