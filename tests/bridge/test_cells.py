"""Cells of several robots on ONE ROS domain, each in its robot's namespace, driven by stations (as
the demo drives them): an episode on one leaves the other idle, each station hears only its own
robot, simulated clocks stay apart; a stuck arm (SIGSTOP) and a killed arm (SIGKILL) end the
station's episode within seconds, aborted on the bridge and kept as incomplete."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from data.store import EpisodeStore
from tests.bridge.test_bridge_dds import ros_env  # noqa: F401  (a domain from the tests' range)


def _wait_steps(station, layout: int, n: int, timeout: float = 60.0) -> None:
    """Until the arm is `n` steps into `layout` (another thread spins the station: only read here)."""
    deadline = time.monotonic() + timeout
    while not (station.status.get("layout") == layout and (station.status.get("steps") or 0) >= n):
        assert time.monotonic() < deadline, f"the arm did not reach step {n} of layout {layout}: {station.status}"
        time.sleep(0.02)


@pytest.mark.slow
def test_two_cells_on_one_domain_stay_apart_and_a_stuck_or_killed_arm_aborts_the_episode(ros_env, tmp_path):
    from robot_bridge.cell import CellSpec
    from std_srvs.srv import Trigger

    from robot_bridge.station import Station, StationError

    tag = secrets.token_hex(3)
    robots = [f"cell-{tag}-a", f"cell-{tag}-b"]
    store_root = tmp_path / "store"
    procs: dict[str, dict[str, subprocess.Popen]] = {}
    commands: dict[str, dict[str, list[str]]] = {}

    def start(robot: str, node: str) -> None:
        procs.setdefault(robot, {})[node] = subprocess.Popen(
            commands[robot][node], stdout=open(tmp_path / f"{robot}-{node}.log", "ab"), stderr=subprocess.STDOUT)

    for robot, max_steps in zip(robots, (40, 400)):
        cell = CellSpec(robot=robot, store=store_root, fast=True, stop_when_done=True, max_steps=max_steps, fsync=False)
        commands[robot] = cell.commands()
        for n in commands[robot]:
            start(robot, n)
    domain = int(os.environ["ROS_DOMAIN_ID"])
    a, b = stations = [Station(domain, robot) for robot in robots]
    try:
        for st in stations:
            st.wait_ready()
        # both cells' services are on the domain, under their own names; nothing under the old global one
        services = {n for n, _ in a.node.get_service_names_and_types() if n.endswith("/start_episode")}
        assert services == {f"/cell_{tag}_a/recap_bridge/start_episode", f"/cell_{tag}_b/recap_bridge/start_episode"}
        # an episode on A; B stays idle, and each station hears only its own robot's bridge
        first = a.run_episode("demonstration", layout=5, timeout_s=120)
        for st in stations:
            st.spin(1.5)
        assert a.stats["robot"] == robots[0] and a.stats["ticks"] > 10 and a.status["layout"] == 5
        assert first.steps > 10 and store_root.joinpath("episodes").is_dir()
        assert b.status == {"layout": 0, "reset": 0, "steps": 0, "success": False, "done": True}  # never reset, never moved
        # B's bridge times its stats on B's simulated clock, which (nearly) stood still: maybe none yet
        assert not b.stats or (b.stats["robot"] == robots[1] and b.stats["ticks"] == 0 and b.stats["episode"] is None)
        # an episode on the layout the arm already says is done (its first, never reset): the station waits
        # for this reset's end, not the status it had before (which ended an episode of 0 ticks, refused)
        on_zero = b.run_episode("demonstration", layout=0, timeout_s=120)
        assert on_zero.layout == 0 and on_zero.steps > 10
        # both at once: each simulated clock is its cell's own (exactly one period per tick)
        both: dict[str, object] = {}
        threads = [threading.Thread(target=lambda st=st: both.update({st.robot: st.run_episode(
            "demonstration", layout=7, timeout_s=120)})) for st in stations]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert set(both) == set(robots)
        store = EpisodeStore(store_root)
        for robot in robots:
            ep = store.open(both[robot].episode_id)
            assert ep.info.robot_id == robot
            dt = np.diff(ep.timestamps_ns)
            assert len(ep) > 10 and np.all(dt == dt[0]) and abs(dt[0] - 1e9 / 30) < 1e3

        def down(robot):
            return lambda: next((f"{n} exited with {p.returncode}" for n, p in procs[robot].items()
                                 if p.poll() is not None), None)

        # B's arm stops answering (SIGSTOP): no progress for stall_s -> aborted, B's bridge is free again
        arm_b = procs[robots[1]]["arm"]
        errors: list[str] = []

        def episode_b(layout: int):
            try:
                b.run_episode("autonomous", layout=layout, timeout_s=120, stall_s=3.0, alive=down(robots[1]))
            except StationError as e:
                errors.append(str(e))

        for stop, layout in ((signal.SIGSTOP, 9), (signal.SIGKILL, 11)):
            t = threading.Thread(target=episode_b, args=(layout,))
            t0 = time.monotonic()
            t.start()
            _wait_steps(b, layout, 25)
            arm_b.send_signal(stop)
            t.join(60)
            assert not t.is_alive() and time.monotonic() - t0 < 40
            if stop == signal.SIGSTOP:
                assert "no progress for 3 s" in errors[-1], errors
                arm_b.send_signal(signal.SIGCONT)
            else:
                assert "arm exited with -9" in errors[-1], errors
        assert len(errors) == 2
        assert b.stats["robot"] == robots[1]
        free = b.call(Trigger, f"{b.bridge}/abort_episode", Trigger.Request())
        assert not free.success and free.message == "no episode is running"  # both aborted, none left open
        incomplete = [e for e in store if e.info.status == "incomplete"]
        assert len(incomplete) == 2 and {e.info.robot_id for e in incomplete} == {robots[1]}
        assert all(len(e) >= 10 and e.info.outcome == "unknown" for e in incomplete)
        # B's cell restarted as the demo restarts it after a crash: the crashed arm's endpoints stay in the DDS
        # graph until its lease runs out (~20 s), so its reset service still looks ready and a request sent to it
        # is lost; the station must not call the cell ready until a live arm answers
        start(robots[1], "arm")
        b.wait_ready(timeout=60)
        crashed = procs[robots[1]]["arm"]
        crashed.send_signal(signal.SIGKILL)
        crashed.wait(10)
        for n in ("bridge", "teleop"):
            procs[robots[1]][n].send_signal(signal.SIGINT)
            procs[robots[1]][n].wait(15)
            start(robots[1], n)
        b.forget()
        deadline = time.monotonic() + 60
        while not {"recap_bridge", "scripted_teleop"} <= {n for n, ns in b.node.get_node_names_and_namespaces()
                                                          if ns == b.namespace}:  # the new bridge and teleoperator
            assert time.monotonic() < deadline, b.node.get_node_names_and_namespaces()
            b.spin(0.1)
        assert b._client(Trigger, f"{b.arm}/reset").service_is_ready()  # the crashed arm still looks present
        with pytest.raises(StationError, match="sim_arm did not answer within 10 s"):
            b.wait_ready(timeout=10)
        start(robots[1], "arm")
        b.wait_ready(timeout=60)
        again = b.run_episode("autonomous", layout=13, timeout_s=60, stall_s=10.0, alive=down(robots[1]))
        assert again.layout == 13 and again.steps > 0  # its requests reached the new arm
        assert all(p.poll() is None for p in procs[robots[0]].values())  # A's cell never noticed
    finally:
        for st in stations:
            st.close()
        for cell in procs.values():
            for p in cell.values():
                p.send_signal(signal.SIGINT)
        for cell in procs.values():
            for p in cell.values():
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    for f in tmp_path.glob("*.log"):
        assert "Traceback" not in f.read_text(), f"{f.name}:\n{f.read_text()[-3000:]}"


def test_a_cell_hands_its_bridge_the_token_in_a_file_never_on_the_command_line(tmp_path):
    from robot_bridge.cell import CellSpec

    cell = CellSpec(robot="sim-arm-7", store=tmp_path / "home" / "store", token="rcp_cell_secret",
                    inference_url="http://127.0.0.1:8001")
    cmds = cell.commands()
    assert not any("rcp_cell_secret" in " ".join(c) for c in cmds.values())
    bridge = " ".join(cmds["bridge"])
    f = cell.token_file()
    assert f'inference_token_file:="{f}"' in bridge and "inference_token:=" not in bridge
    assert f.read_text().strip() == "rcp_cell_secret" and f.stat().st_mode & 0o777 == 0o600
